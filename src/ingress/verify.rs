//! The seam between an untrusted request and a trusted one.
//!
//! A [`Scheme`] checks a request's signature; [`VerifiedRequest`] can only be
//! made by a successful check, and only a verified request can become an
//! [`Envelope`](crate::envelope::Envelope). Schemes live in `schemes/`, one
//! file each; this file holds what they share: the request view, the error,
//! constant-time matching and timestamp checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

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

/// What a scheme may look at: the raw body bytes, the headers, and the query
/// string of the URL the request was sent to (Twilio signs it).
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub query: Option<&'a str>,
}

/// A webhook signature scheme, built from a source's config.
pub trait Scheme: Send + Sync {
    /// Checks the request. Must compare in constant time, over the raw bytes.
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError>;

    /// Headers that make `body` pass [`Scheme::verify`], signed with the first
    /// secret: what `hookwire sign` prints. `None` when this source cannot
    /// sign (it holds only public keys).
    fn sign(&self, body: &[u8], now: SystemTime, id: &str) -> Option<Vec<(String, String)>>;

    /// A reply to send instead of publishing, for a provider's handshake
    /// request (Slack's `url_verification`). Asked only after `verify` passed.
    fn challenge(&self, _body: &[u8]) -> Option<serde_json::Value> {
        None
    }
}

/// Proof that a request passed its source's scheme.
pub struct VerifiedRequest<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl<'a> VerifiedRequest<'a> {
    pub fn verify(scheme: &dyn Scheme, request: Incoming<'a>, now: SystemTime) -> Result<Self, VerifyError> {
        scheme.verify(&request, now)?;
        Ok(Self { headers: request.headers, body: request.body })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Only for legacy senders that offer nothing better (Twilio).
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha1 => mac::<Hmac<Sha1>>(key, parts).finalize().into_bytes().to_vec(),
            Self::Sha256 => mac::<Hmac<Sha256>>(key, parts).finalize().into_bytes().to_vec(),
            Self::Sha512 => mac::<Hmac<Sha512>>(key, parts).finalize().into_bytes().to_vec(),
        }
    }

    /// Constant-time comparison of `signature` with the MAC of `parts`.
    pub fn verify(self, key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
        match self {
            Self::Sha1 => mac::<Hmac<Sha1>>(key, parts).verify_slice(signature).is_ok(),
            Self::Sha256 => mac::<Hmac<Sha256>>(key, parts).verify_slice(signature).is_ok(),
            Self::Sha512 => mac::<Hmac<Sha512>>(key, parts).verify_slice(signature).is_ok(),
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

/// Whether any candidate signature is the MAC of `parts` under any key.
///
/// Every pair is checked, without stopping at a match, so the time taken does
/// not reveal which secret or which signature matched.
pub fn any_mac_matches(algorithm: Algorithm, keys: &[Vec<u8>], parts: &[&[u8]], candidates: &[Vec<u8>]) -> bool {
    let mut matched = false;
    for key in keys {
        for candidate in candidates {
            matched |= algorithm.verify(key, parts, candidate);
        }
    }
    matched
}

/// Parses a `key=value` list such as Stripe's `t=…,v1=…,v1=…` or Paddle's
/// `ts=…;h1=…;h1=…`: the value of `timestamp_key` and every hex-decodable
/// value of `signature_key`. Other keys (legacy or future schemes) are skipped.
pub fn timestamped_signatures<'v>(
    value: &'v str,
    separator: char,
    timestamp_key: &str,
    signature_key: &str,
) -> (Option<&'v str>, Vec<Vec<u8>>) {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in value.split(separator) {
        match item.trim().split_once('=') {
            Some((key, ts)) if key == timestamp_key => timestamp = Some(ts),
            Some((key, hex)) if key == signature_key => signatures.extend(hex::decode(hex).ok()),
            _ => {}
        }
    }
    (timestamp, signatures)
}

/// Constant-time equality of two secrets of possibly different lengths:
/// compares their SHA-256 digests, so neither content nor length leaks.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// A header as a string, or `MissingHeader` / `MalformedHeader`.
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
    let ts: i64 = value.trim().parse().map_err(|_| VerifyError::MalformedHeader(header_name))?;
    if unix_seconds(now).abs_diff(ts) > tolerance.as_secs() {
        return Err(VerifyError::StaleTimestamp);
    }
    Ok(ts)
}

pub fn unix_seconds(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// A configured header name as `&'static str`, so rejections can name it
/// without allocating. Leaked once per source at startup.
pub fn static_name(name: &str) -> &'static str {
    Box::leak(name.to_ascii_lowercase().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_equal_is_exact() {
        assert!(secrets_equal(b"token", b"token"));
        assert!(!secrets_equal(b"token", b"token2"));
        assert!(!secrets_equal(b"", b"x"));
    }

    #[test]
    fn any_mac_matches_tries_every_key_and_candidate() {
        let keys = vec![b"old".to_vec(), b"new".to_vec()];
        let good = Algorithm::Sha256.mac(b"new", &[b"body"]);
        assert!(any_mac_matches(Algorithm::Sha256, &keys, &[b"body"], &[vec![0; 32], good.clone()]));
        assert!(!any_mac_matches(Algorithm::Sha256, &keys, &[b"other"], &[good]));
        assert!(!any_mac_matches(Algorithm::Sha256, &keys, &[b"body"], &[]));
    }
}
