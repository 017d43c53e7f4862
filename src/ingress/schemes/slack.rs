//! Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 over
//! `v0:{X-Slack-Request-Timestamp}:{body}` with the app's signing secret.
//! Also answers Slack's `url_verification` handshake itself.

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::{
    config::Secret,
    ingress::verify::{
        Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, check_timestamp, header, unix_seconds,
    },
};

pub const SIGNATURE: &str = "x-slack-signature";
pub const TIMESTAMP: &str = "x-slack-request-timestamp";
/// Slack's documented replay window.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

pub struct Slack {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl Slack {
    pub fn new(secrets: &[Secret], tolerance: Option<Duration>) -> Self {
        Self {
            keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(),
            tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
        }
    }
}

impl Scheme for Slack {
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let signature = header(request.headers, SIGNATURE)?;
        let timestamp = header(request.headers, TIMESTAMP)?.trim();
        check_timestamp(timestamp, TIMESTAMP, now, self.tolerance)?;
        let candidate =
            signature.trim().strip_prefix("v0=").and_then(|h| hex::decode(h).ok()).ok_or(VerifyError::BadSignature)?;
        let parts: [&[u8]; 4] = [b"v0:", timestamp.as_bytes(), b":", request.body];
        if any_mac_matches(Algorithm::Sha256, &self.keys, &parts, &[candidate]) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let ts = unix_seconds(now).to_string();
        let mac = Algorithm::Sha256.mac(&self.keys[0], &[b"v0:", ts.as_bytes(), b":", body]);
        Some(vec![(SIGNATURE.to_owned(), format!("v0={}", hex::encode(mac))), (TIMESTAMP.to_owned(), ts)])
    }

    /// Slack sends `{"type":"url_verification","challenge":"…"}` when an
    /// Events API URL is configured and expects the challenge echoed back.
    fn challenge(&self, body: &[u8]) -> Option<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        if value.get("type")?.as_str()? != "url_verification" {
            return None;
        }
        Some(json!({ "challenge": value.get("challenge")?.as_str()? }))
    }
}
