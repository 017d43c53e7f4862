//! The seam between an untrusted request and a trusted one.
//!
//! A [`Scheme`] checks a request's signature; [`VerifiedRequest`] can only be
//! made by a successful check, and only a verified request can become an
//! [`Envelope`](crate::envelope::Envelope). Schemes live in `schemes/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

/// Why a request was not trusted. The `Display` text is what the sender sees:
/// it names the header at fault but never a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing required header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("timestamp outside tolerance")]
    StaleTimestamp,
    #[error("no signature matched")]
    BadSignature,
}

impl VerifyError {
    /// The metric label for this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::MalformedHeader(_) => "malformed",
            Self::StaleTimestamp => "stale_timestamp",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// A webhook signature scheme. One implementation per provider family, built
/// from the source's config.
pub trait Scheme: Send + Sync {
    /// Checks the request. Must compare signatures in constant time and over
    /// the raw body bytes.
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError>;

    /// Headers that make `body` pass [`Scheme::verify`], signed with the first
    /// secret: what `hookwire sign` prints.
    fn sign(&self, body: &[u8], now: SystemTime, id: &str) -> Vec<(String, String)>;

    /// Header that carries the provider's event id, if the scheme defines one.
    fn id_header(&self) -> Option<&'static str> {
        None
    }
}

/// Proof that a request passed its source's scheme.
pub struct VerifiedRequest<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl<'a> VerifiedRequest<'a> {
    pub fn verify(
        scheme: &dyn Scheme,
        headers: &'a HeaderMap,
        body: &'a [u8],
        now: SystemTime,
    ) -> Result<Self, VerifyError> {
        scheme.verify(headers, body, now)?;
        Ok(Self { headers, body })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha256 => mac::<Hmac<Sha256>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
            Self::Sha512 => mac::<Hmac<Sha512>>(key, parts)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    /// Constant-time comparison of `signature` with the MAC of `parts`.
    pub fn verify(self, key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
        match self {
            Self::Sha256 => mac::<Hmac<Sha256>>(key, parts)
                .verify_slice(signature)
                .is_ok(),
            Self::Sha512 => mac::<Hmac<Sha512>>(key, parts)
                .verify_slice(signature)
                .is_ok(),
        }
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> M {
    let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// A header as a string, or `MissingHeader` (absent or not visible ASCII).
pub fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    match headers.get(name) {
        None => Err(VerifyError::MissingHeader(name)),
        Some(v) => v.to_str().map_err(|_| VerifyError::MalformedHeader(name)),
    }
}

/// Checks a Unix timestamp in seconds against `now`, in both directions:
/// stale requests are replays, future ones are pre-signed replays.
pub fn check_timestamp(
    value: &str,
    header_name: &'static str,
    now: SystemTime,
    tolerance: Duration,
) -> Result<i64, VerifyError> {
    let ts: i64 = value
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(header_name))?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(VerifyError::StaleTimestamp);
    }
    Ok(ts)
}

pub fn unix_seconds(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}
