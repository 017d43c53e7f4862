//! Square: `x-square-hmacsha256-signature: <base64>`, HMAC-SHA256 over the
//! notification URL followed by the body. The URL is the one configured in
//! Square (`public_url`), not the one hookwire sees behind a proxy.

use std::time::SystemTime;

use base64::Engine;

use crate::{
    config::Secret,
    ingress::verify::{Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, header},
};

pub const SIGNATURE: &str = "x-square-hmacsha256-signature";

pub struct Square {
    keys: Vec<Vec<u8>>,
    url: String,
}

impl Square {
    pub fn new(secrets: &[Secret], public_url: &str) -> Self {
        Self { keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(), url: public_url.to_owned() }
    }
}

impl Scheme for Square {
    fn verify(&self, request: &Incoming<'_>, _now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, SIGNATURE)?;
        let candidate =
            base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|_| VerifyError::BadSignature)?;
        if any_mac_matches(Algorithm::Sha256, &self.keys, &[self.url.as_bytes(), request.body], &[candidate]) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], _now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let mac = Algorithm::Sha256.mac(&self.keys[0], &[self.url.as_bytes(), body]);
        Some(vec![(SIGNATURE.to_owned(), base64::engine::general_purpose::STANDARD.encode(mac))])
    }
}
