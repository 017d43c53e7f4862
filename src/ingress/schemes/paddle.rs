//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]`,
//! HMAC-SHA256 over `{ts}:{body}` with the notification destination's secret
//! key as raw bytes.

use std::time::{Duration, SystemTime};

use crate::{
    config::Secret,
    ingress::verify::{
        Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, check_timestamp, header, timestamped_signatures,
        unix_seconds,
    },
};

pub const SIGNATURE: &str = "paddle-signature";
/// Paddle suggests a tight window; 5 minutes matches the other providers and
/// tolerates clock skew. Configurable with `tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

pub struct Paddle {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl Paddle {
    pub fn new(secrets: &[Secret], tolerance: Option<Duration>) -> Self {
        Self {
            keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(),
            tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
        }
    }
}

impl Scheme for Paddle {
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, SIGNATURE)?;
        let (timestamp, candidates) = timestamped_signatures(value, ';', "ts", "h1");
        let timestamp = timestamp.ok_or(VerifyError::MalformedHeader(SIGNATURE))?;
        check_timestamp(timestamp, SIGNATURE, now, self.tolerance)?;
        let parts: [&[u8]; 3] = [timestamp.as_bytes(), b":", request.body];
        if any_mac_matches(Algorithm::Sha256, &self.keys, &parts, &candidates) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let ts = unix_seconds(now).to_string();
        let mac = Algorithm::Sha256.mac(&self.keys[0], &[ts.as_bytes(), b":", body]);
        Some(vec![(SIGNATURE.to_owned(), format!("ts={ts};h1={}", hex::encode(mac)))])
    }
}
