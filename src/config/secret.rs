//! A string that must never be printed: webhook secrets, tokens, passwords.
//!
//! `Debug` and `Display` both print `***`, so a secret that ends up in a log
//! line, an error or `hookwire check` output leaks nothing. The only way to the
//! bytes is [`Secret::expose`], which is greppable on purpose.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call it only where the bytes are fed to a MAC or
    /// sent to the party that owns them.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// What may be shown of a secret: a short type prefix and its last four
    /// characters (`whsec_…a1b2`), enough to tell two apart, never enough to
    /// use one. Short secrets show nothing but `…`.
    pub fn masked(&self) -> String {
        let value = &self.0;
        let chars = value.chars().count();
        if chars < 16 {
            return "…".to_owned();
        }
        let prefix = match value.split_once('_') {
            Some((prefix, _)) if prefix.len() <= 8 && chars - prefix.len() > 12 => format!("{prefix}_"),
            _ => String::new(),
        };
        let tail: String = value.chars().skip(chars - 4).collect();
        format!("{prefix}…{tail}")
    }
}

/// Serializes masked ([`Secret::masked`]): nothing that serializes a
/// configuration for a reader (the API, `check`) can leak a secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_shows_a_prefix_and_four_characters_at_most() {
        assert_eq!(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa1b2").masked(), "whsec_…a1b2");
        assert_eq!(Secret::new("0123456789abcdef0123").masked(), "…0123");
        assert_eq!(Secret::new("short").masked(), "…");
        assert_eq!(serde_json::to_string(&Secret::new("short")).unwrap(), "\"…\"");
    }

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("whsec_hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", vec![secret.clone()]), "[***]");
        assert_eq!(secret.expose(), "whsec_hunter2");
    }
}
