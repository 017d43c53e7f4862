//! Signature schemes, one file each, built from a source's config, plus
//! each provider's defaults for where the event type and id are found.
//!
//! | scheme | file |
//! | --- | --- |
//! | `standard-webhooks` (v1 HMAC, v1a ed25519) | `standard_webhooks.rs` |
//! | `github`, `shopify`, `hmac` | `hmac.rs` (presets of the generic scheme) |
//! | `stripe`, `slack`, `paddle`, `square`, `twilio` | one file each |
//! | `basic`, `token`, `none` | `credentials.rs` |

mod credentials;
mod hmac;
mod paddle;
mod slack;
mod square;
mod standard_webhooks;
mod stripe;
mod twilio;
#[cfg(test)]
mod vectors;

use std::time::Duration;

pub use self::hmac::{Encoding, GenericHmac, HmacOptions, Template};
pub use credentials::{Basic, Token, Unverified};
pub use paddle::Paddle;
pub use slack::Slack;
pub use square::Square;
pub use standard_webhooks::{StandardWebhooks, decode_secret as decode_standard_webhooks_secret};
pub use stripe::Stripe;
pub use twilio::Twilio;

use super::verify::{Algorithm, Scheme};
use crate::config::{ConfigError, SchemeKind, SourceConfig};

/// Where a provider puts the event type and id, as extractor specs
/// (`json:/pointer`, `header:Name`); the source's config can override both.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Defaults {
    pub event_type: Option<&'static str>,
    pub event_id: Option<&'static str>,
}

const fn defaults(event_type: Option<&'static str>, event_id: Option<&'static str>) -> Defaults {
    Defaults { event_type, event_id }
}

/// Scheme-specific keys, and which schemes accept each.
const OPTIONS: &[(&str, &[SchemeKind])] = {
    use SchemeKind::*;
    &[
        ("tolerance", &[StandardWebhooks, Stripe, Slack, Paddle, Hmac]),
        ("header", &[Hmac, Token]),
        ("algorithm", &[Hmac]),
        ("encoding", &[Hmac]),
        ("prefix", &[Hmac, Token]),
        ("template", &[Hmac]),
        ("timestamp_header", &[Hmac]),
        ("id_header", &[Hmac]),
        ("public_url", &[Square, Twilio]),
    ]
};

fn is_set(config: &SourceConfig, option: &str) -> bool {
    match option {
        "tolerance" => config.tolerance.is_some(),
        "header" => config.header.is_some(),
        "algorithm" => config.algorithm.is_some(),
        "encoding" => config.encoding.is_some(),
        "prefix" => config.prefix.is_some(),
        "template" => config.template.is_some(),
        "timestamp_header" => config.timestamp_header.is_some(),
        "id_header" => config.id_header.is_some(),
        "public_url" => config.public_url.is_some(),
        _ => unreachable!("every option is listed"),
    }
}

/// Builds the scheme named by `config.scheme`, rejecting keys it does not use
/// so a misplaced option is an error rather than silently ignored.
pub fn build(name: &str, config: &SourceConfig) -> Result<(Box<dyn Scheme>, Defaults), ConfigError> {
    let key = |field: &str| format!("sources.{name}.{field}");
    let kind = config.scheme;
    for (option, schemes) in OPTIONS {
        if is_set(config, option) && !schemes.contains(&kind) {
            return Err(ConfigError::invalid(key(option), format!("not used by scheme {:?}", kind.as_str())));
        }
    }
    match (kind, config.secrets.is_empty()) {
        (SchemeKind::None, false) => {
            return Err(ConfigError::invalid(key("secrets"), "scheme \"none\" verifies nothing; remove the secrets"));
        }
        (SchemeKind::None, true) => {}
        (_, true) => {
            return Err(ConfigError::invalid(key("secrets"), "at least one secret is required"));
        }
        (_, false) => {}
    }
    let secrets = &config.secrets;
    let public_url = || -> Result<&str, ConfigError> {
        let url = config.public_url.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                key("public_url"),
                format!("required by scheme {:?}: the URL the provider calls", kind.as_str()),
            )
        })?;
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url),
            _ => Err(ConfigError::invalid(key("public_url"), "must be an absolute http:// or https:// URL")),
        }
    };
    let secret_error = |(i, message): (usize, String)| ConfigError::invalid(key(&format!("secrets[{i}]")), message);
    let built: (Box<dyn Scheme>, Defaults) = match kind {
        SchemeKind::StandardWebhooks => (
            Box::new(StandardWebhooks::new(secrets, config.tolerance).map_err(secret_error)?),
            defaults(Some("json:/type"), Some("header:webhook-id")),
        ),
        SchemeKind::Github => (
            Box::new(GenericHmac::github(secrets)),
            defaults(Some("header:x-github-event"), Some("header:x-github-delivery")),
        ),
        SchemeKind::Shopify => (
            Box::new(GenericHmac::shopify(secrets)),
            defaults(Some("header:x-shopify-topic"), Some("header:x-shopify-webhook-id")),
        ),
        SchemeKind::Stripe => {
            (Box::new(Stripe::new(secrets, config.tolerance)), defaults(Some("json:/type"), Some("json:/id")))
        }
        SchemeKind::Slack => (
            Box::new(Slack::new(secrets, config.tolerance)),
            defaults(Some("json:/event/type"), Some("json:/event_id")),
        ),
        SchemeKind::Paddle => (
            Box::new(Paddle::new(secrets, config.tolerance)),
            defaults(Some("json:/event_type"), Some("json:/event_id")),
        ),
        SchemeKind::Square => {
            (Box::new(Square::new(secrets, public_url()?)), defaults(Some("json:/type"), Some("json:/event_id")))
        }
        SchemeKind::Twilio => {
            (Box::new(Twilio::new(secrets, public_url()?)), defaults(None, Some("header:i-twilio-idempotency-token")))
        }
        SchemeKind::Hmac => {
            (Box::new(generic(config).map_err(|(field, m)| ConfigError::invalid(key(field), m))?), Defaults::default())
        }
        SchemeKind::Basic => (Box::new(Basic::new(secrets).map_err(secret_error)?), Defaults::default()),
        SchemeKind::Token => {
            (Box::new(Token::new(secrets, config.header.as_deref(), config.prefix.as_deref())), Defaults::default())
        }
        SchemeKind::None => (Box::new(Unverified), Defaults::default()),
    };
    Ok(built)
}

fn generic(config: &SourceConfig) -> Result<GenericHmac, (&'static str, String)> {
    let header = config
        .header
        .clone()
        .ok_or(("header", "required for scheme \"hmac\" (the header carrying the signature)".to_owned()))?;
    if axum::http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()).is_err() {
        return Err(("header", format!("{header:?} is not a valid header name")));
    }
    let algorithm = Algorithm::parse(config.algorithm.as_deref().unwrap_or("sha256"))
        .ok_or(("algorithm", "use \"sha256\", \"sha512\" or \"sha1\" (legacy senders only)".to_owned()))?;
    let encoding = Encoding::parse(config.encoding.as_deref().unwrap_or("hex"))
        .ok_or(("encoding", "use \"hex\" or \"base64\"".to_owned()))?;
    let template = Template::parse(config.template.as_deref().unwrap_or("{body}")).map_err(|m| ("template", m))?;
    if config.tolerance.is_some() && config.timestamp_header.is_none() {
        return Err(("tolerance", "needs timestamp_header (there is no timestamp to check)".to_owned()));
    }
    GenericHmac::new(
        HmacOptions {
            header,
            algorithm,
            encoding,
            prefix: config.prefix.clone().unwrap_or_default(),
            template,
            timestamp_header: config.timestamp_header.clone(),
            id_header: config.id_header.clone(),
            tolerance: config.tolerance.unwrap_or(Duration::from_secs(300)),
        },
        &config.secrets,
    )
}
