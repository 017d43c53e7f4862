//! Who may use the operator API: `admin.tokens`.
//!
//! Two shapes, so older files keep working:
//! - `tokens = ["…", "…"]`: full-access tokens, named `tokens[0]`, `tokens[1]`…
//! - `[admin.tokens.NAME]` with `token`, `scopes` and optionally
//!   `subscriptions = ["billing-*"]`: a token limited to what it lists.
//!
//! The name is what logs and audit records show; the token value never is.
//! Must not: decide routes' scopes (the operator API does that).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::Secret;

/// What a token may do. `operate` and `manage` include `read`: changing what
/// one cannot see is never useful, and a team's token should see what it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// List and inspect: subscriptions, dead letters, unrouted events.
    Read,
    /// Act on queued events: replay, purge, pause, resume.
    Operate,
    /// Create, change and delete subscriptions.
    Manage,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Manage => "manage",
        }
    }
}

/// One operator API token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub name: String,
    pub token: Secret,
    pub scopes: Vec<Scope>,
    /// Name patterns (`*` matches any run of characters) of the
    /// subscriptions this token may touch; `None`: all of them, and the
    /// routes that belong to no subscription (unrouted events).
    pub subscriptions: Option<Vec<String>>,
}

impl AccessToken {
    /// A token with every scope and no limit, as the plain list gives.
    pub fn full(name: impl Into<String>, token: Secret) -> Self {
        Self { name: name.into(), token, scopes: vec![Scope::Read, Scope::Operate, Scope::Manage], subscriptions: None }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        scope == Scope::Read || self.scopes.contains(&scope)
    }

    /// May this token touch subscription `name`?
    pub fn covers(&self, name: &str) -> bool {
        self.subscriptions.as_ref().is_none_or(|patterns| patterns.iter().any(|p| glob_matches(p, name)))
    }

    /// Limited to some subscriptions (so not to routes of none).
    pub fn is_limited(&self) -> bool {
        self.subscriptions.is_some()
    }
}

/// `*` matches any run of characters (including none); everything else
/// matches itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no '*': exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    token: Secret,
    scopes: Vec<Scope>,
    subscriptions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    List(Vec<Secret>),
    Named(BTreeMap<String, Named>),
}

/// `admin.tokens` in either shape. Empty token values are dropped, so
/// `["${HOOKWIRE_ADMIN_TOKEN:-}"]` turns the API on exactly when the
/// variable is set.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AccessToken>, D::Error> {
    let shape = Shape::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a list of tokens, or tables [admin.tokens.NAME] with token, scopes and optional subscriptions",
        )
    })?;
    let tokens = match shape {
        Shape::List(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, token)| AccessToken::full(format!("tokens[{i}]"), token))
            .collect::<Vec<_>>(),
        Shape::Named(named) => named
            .into_iter()
            .map(|(name, n)| AccessToken { name, token: n.token, scopes: n.scopes, subscriptions: n.subscriptions })
            .collect(),
    };
    Ok(tokens.into_iter().filter(|t| !t.token.expose().trim().is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, name, expected) in [
            ("billing-*", "billing-eu", true),
            ("billing-*", "billing-", true),
            ("billing-*", "orders", false),
            ("billing-*", "xbilling-eu", false),
            ("*-eu", "billing-eu", true),
            ("*-eu", "billing-us", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("a*a", "a", false),
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("*", "anything", true),
        ] {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn manage_and_operate_include_read() {
        let token = AccessToken {
            name: "t".into(),
            token: Secret::new("x"),
            scopes: vec![Scope::Manage],
            subscriptions: Some(vec!["billing-*".into()]),
        };
        assert!(token.allows(Scope::Read) && token.allows(Scope::Manage) && !token.allows(Scope::Operate));
        assert!(token.covers("billing-eu") && !token.covers("orders") && token.is_limited());
        let full = AccessToken::full("f", Secret::new("x"));
        assert!(full.allows(Scope::Operate) && full.covers("orders") && !full.is_limited());
    }
}
