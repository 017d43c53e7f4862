//! Static credentials rather than signatures: `basic` (HTTP Basic) and
//! `token` (a shared token in a header). Weaker than a signature — the body
//! is not authenticated — but some senders offer nothing else. Compared in
//! constant time over SHA-256 digests, so neither content nor length leaks.

use std::time::SystemTime;

use base64::Engine;

use crate::{
    config::Secret,
    ingress::verify::{Incoming, Scheme, VerifyError, header, secrets_equal, static_name},
};

/// `Authorization: Basic base64(user:password)`; secrets are `user:password`.
pub struct Basic {
    credentials: Vec<Vec<u8>>,
}

impl Basic {
    pub fn new(secrets: &[Secret]) -> Result<Self, (usize, String)> {
        if let Some(i) = secrets.iter().position(|s| !s.expose().contains(':')) {
            return Err((i, "basic credentials are written \"user:password\"".to_owned()));
        }
        Ok(Self { credentials: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect() })
    }
}

impl Scheme for Basic {
    fn verify(&self, request: &Incoming<'_>, _now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, "authorization")?.trim();
        let (kind, encoded) = value.split_once(' ').ok_or(VerifyError::MalformedHeader("authorization"))?;
        if !kind.eq_ignore_ascii_case("basic") {
            return Err(VerifyError::MalformedHeader("authorization"));
        }
        let given = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| VerifyError::MalformedHeader("authorization"))?;
        let mut matched = false;
        for expected in &self.credentials {
            matched |= secrets_equal(&given, expected);
        }
        if matched { Ok(()) } else { Err(VerifyError::BadSignature) }
    }

    fn sign(&self, _body: &[u8], _now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.credentials[0]);
        Some(vec![("authorization".to_owned(), format!("Basic {encoded}"))])
    }
}

/// A static token: `Authorization: Bearer <token>` by default, or the raw
/// value of a configured `header` (after an optional `prefix`).
pub struct Token {
    header: &'static str,
    prefix: String,
    tokens: Vec<Vec<u8>>,
}

impl Token {
    pub fn new(secrets: &[Secret], header: Option<&str>, prefix: Option<&str>) -> Self {
        let header = header.map(static_name).unwrap_or("authorization");
        let prefix = match prefix {
            Some(p) => p.to_owned(),
            None if header == "authorization" => "Bearer ".to_owned(),
            None => String::new(),
        };
        Self { header, prefix, tokens: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect() }
    }
}

impl Scheme for Token {
    fn verify(&self, request: &Incoming<'_>, _now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, self.header)?.trim();
        // The auth scheme word ("Bearer") is case-insensitive (RFC 9110).
        let given = match value.get(..self.prefix.len()) {
            Some(p) if p.eq_ignore_ascii_case(&self.prefix) => value[self.prefix.len()..].trim(),
            _ => return Err(VerifyError::BadSignature),
        };
        let mut matched = false;
        for expected in &self.tokens {
            matched |= secrets_equal(given.as_bytes(), expected);
        }
        if matched { Ok(()) } else { Err(VerifyError::BadSignature) }
    }

    fn sign(&self, _body: &[u8], _now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let token = String::from_utf8_lossy(&self.tokens[0]);
        Some(vec![(self.header.to_owned(), format!("{}{token}", self.prefix))])
    }
}

/// No verification at all. Must be chosen explicitly; `hookwire check` warns.
pub struct Unverified;

impl Scheme for Unverified {
    fn verify(&self, _request: &Incoming<'_>, _now: SystemTime) -> Result<(), VerifyError> {
        Ok(())
    }

    fn sign(&self, _body: &[u8], _now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        Some(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    fn check(scheme: &dyn Scheme, name: &'static str, value: &str) -> Result<(), VerifyError> {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        scheme.verify(&Incoming { headers: &h, body: b"{}", query: None }, SystemTime::now())
    }

    #[test]
    fn basic_accepts_any_configured_credential() {
        let s = Basic::new(&[Secret::new("old:pw1"), Secret::new("hook:s3cret")]).unwrap();
        // "hook:s3cret" in base64, as RFC 7617 encodes it.
        assert_eq!(check(&s, "authorization", "Basic aG9vazpzM2NyZXQ="), Ok(()));
        assert_eq!(check(&s, "authorization", "basic aG9vazpzM2NyZXQ="), Ok(()));
        assert_eq!(check(&s, "authorization", "Basic aG9vazpzM2NyZXU="), Err(VerifyError::BadSignature));
        assert_eq!(
            check(&s, "authorization", "Bearer aG9vazpzM2NyZXQ="),
            Err(VerifyError::MalformedHeader("authorization"))
        );
        assert_eq!(check(&s, "authorization", "Basic !!"), Err(VerifyError::MalformedHeader("authorization")));
        assert!(Basic::new(&[Secret::new("no-colon")]).is_err());
    }

    #[test]
    fn token_in_bearer_or_custom_header() {
        let bearer = Token::new(&[Secret::new("t0k3n")], None, None);
        assert_eq!(check(&bearer, "authorization", "Bearer t0k3n"), Ok(()));
        assert_eq!(check(&bearer, "authorization", "bearer t0k3n"), Ok(()));
        assert_eq!(check(&bearer, "authorization", "Bearer t0k3"), Err(VerifyError::BadSignature));
        assert_eq!(check(&bearer, "authorization", "t0k3n"), Err(VerifyError::BadSignature));
        let custom = Token::new(&[Secret::new("k")], Some("X-Api-Key"), None);
        assert_eq!(check(&custom, "x-api-key", "k"), Ok(()));
        assert_eq!(check(&custom, "x-api-key", "kk"), Err(VerifyError::BadSignature));
        assert_eq!(check(&custom, "authorization", "k"), Err(VerifyError::MissingHeader("x-api-key")));
    }
}
