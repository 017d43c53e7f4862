//! Signature schemes, one file each, built from a source's config.

mod hmac;
mod standard_webhooks;

use crate::config::{ConfigError, SchemeKind, SourceConfig};

use super::verify::Scheme;

pub use self::hmac::GenericHmac;
pub use standard_webhooks::StandardWebhooks;

/// Builds the scheme named by `config.scheme`, rejecting keys it does not use
/// so a typo'd or misplaced option is an error rather than silently ignored.
pub fn build(name: &str, config: &SourceConfig) -> Result<Box<dyn Scheme>, ConfigError> {
    let key = |field: &str| format!("sources.{name}.{field}");
    if config.secrets.is_empty() {
        return Err(ConfigError::invalid(
            key("secrets"),
            "at least one secret is required",
        ));
    }
    let unused = |fields: &[(&str, bool)]| -> Result<(), ConfigError> {
        match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(ConfigError::invalid(
                key(field),
                format!("not used by scheme {:?}", config.scheme.as_str()),
            )),
            None => Ok(()),
        }
    };
    match config.scheme {
        SchemeKind::StandardWebhooks => {
            unused(&[
                ("header", config.header.is_some()),
                ("algorithm", config.algorithm.is_some()),
                ("encoding", config.encoding.is_some()),
                ("prefix", config.prefix.is_some()),
            ])?;
            Ok(Box::new(
                StandardWebhooks::new(&config.secrets, config.tolerance).map_err(
                    |(i, message)| ConfigError::invalid(key(&format!("secrets[{i}]")), message),
                )?,
            ))
        }
        SchemeKind::Hmac => {
            unused(&[("tolerance", config.tolerance.is_some())])?;
            Ok(Box::new(GenericHmac::from_config(config).map_err(
                |(field, message)| ConfigError::invalid(key(field), message),
            )?))
        }
    }
}
