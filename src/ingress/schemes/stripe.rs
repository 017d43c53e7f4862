//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`,
//! HMAC-SHA256 over `{t}.{body}`. The `whsec_…` secret is used as raw UTF-8
//! bytes, prefix included (unlike Standard Webhooks, which base64-decodes it).

use std::time::{Duration, SystemTime};

use crate::{
    config::Secret,
    ingress::verify::{
        Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, check_timestamp, header, timestamped_signatures,
        unix_seconds,
    },
};

pub const SIGNATURE: &str = "stripe-signature";
/// Stripe's libraries' default tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

pub struct Stripe {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl Stripe {
    pub fn new(secrets: &[Secret], tolerance: Option<Duration>) -> Self {
        Self {
            keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(),
            tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
        }
    }
}

impl Scheme for Stripe {
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, SIGNATURE)?;
        // v0 (Stripe's legacy test mode) and future schemes are skipped.
        let (timestamp, candidates) = timestamped_signatures(value, ',', "t", "v1");
        let timestamp = timestamp.ok_or(VerifyError::MalformedHeader(SIGNATURE))?;
        check_timestamp(timestamp, SIGNATURE, now, self.tolerance)?;
        let parts: [&[u8]; 3] = [timestamp.as_bytes(), b".", request.body];
        if any_mac_matches(Algorithm::Sha256, &self.keys, &parts, &candidates) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let t = unix_seconds(now).to_string();
        let mac = Algorithm::Sha256.mac(&self.keys[0], &[t.as_bytes(), b".", body]);
        Some(vec![(SIGNATURE.to_owned(), format!("t={t},v1={}", hex::encode(mac)))])
    }
}
