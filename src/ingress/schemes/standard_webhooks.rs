//! Standard Webhooks (<https://www.standardwebhooks.com>): the content
//! `{webhook-id}.{webhook-timestamp}.{body}` is signed with
//! - `v1`: HMAC-SHA256, secrets `whsec_<base64>`;
//! - `v1a`: ed25519, public keys `whpk_<base64>` (verify only) or secret keys
//!   `whsk_<base64>` (verify and sign);
//!
//! and `webhook-signature` carries space-separated `v1,<base64>` /
//! `v1a,<base64>` entries, any of which may match any configured key.

use std::time::{Duration, SystemTime};

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{
    config::Secret,
    ingress::verify::{
        Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, check_timestamp, header, unix_seconds,
    },
};

pub const ID: &str = "webhook-id";
pub const TIMESTAMP: &str = "webhook-timestamp";
pub const SIGNATURE: &str = "webhook-signature";

/// The spec's default replay window.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Secrets are pasted by hand: accept base64 with or without `=` padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

enum Key {
    Hmac(Vec<u8>),
    Public(VerifyingKey),
    Signing(SigningKey),
}

pub struct StandardWebhooks {
    keys: Vec<Key>,
    tolerance: Duration,
}

impl StandardWebhooks {
    /// Fails with the index of the first secret that is not valid base64.
    pub fn new(secrets: &[Secret], tolerance: Option<Duration>) -> Result<Self, (usize, String)> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| decode_key(s.expose()).map_err(|message| (i, message.to_owned())))
            .collect::<Result<_, _>>()?;
        Ok(Self { keys, tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE) })
    }
}

fn decode_key(secret: &str) -> Result<Key, &'static str> {
    if let Some(b64) = secret.strip_prefix("whpk_") {
        let bytes: [u8; 32] = LENIENT
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("whpk_ keys are base64 of a 32-byte ed25519 public key")?;
        return VerifyingKey::from_bytes(&bytes).map(Key::Public).map_err(|_| "not a valid ed25519 public key");
    }
    if let Some(b64) = secret.strip_prefix("whsk_") {
        let bytes = LENIENT.decode(b64).map_err(|_| "whsk_ keys are base64")?;
        // A 32-byte seed, or the 64-byte seed+public-key form.
        let seed: [u8; 32] = bytes
            .get(..32)
            .filter(|_| bytes.len() == 32 || bytes.len() == 64)
            .and_then(|s| s.try_into().ok())
            .ok_or("whsk_ keys are base64 of a 32-byte (or 64-byte) ed25519 secret key")?;
        return Ok(Key::Signing(SigningKey::from_bytes(&seed)));
    }
    decode_secret(secret).map(Key::Hmac).ok_or("not a valid Standard Webhooks secret (whsec_ followed by base64)")
}

pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    LENIENT.decode(b64).ok().filter(|k| !k.is_empty())
}

/// `v1,<base64>` for one key.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = Algorithm::Sha256.mac(key, &[id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body]);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

impl Scheme for StandardWebhooks {
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let id = header(request.headers, ID)?;
        let timestamp = header(request.headers, TIMESTAMP)?;
        let signatures = header(request.headers, SIGNATURE)?;
        check_timestamp(timestamp, TIMESTAMP, now, self.tolerance)?;
        let timestamp = timestamp.trim();
        let decode = |prefix: &str| -> Vec<Vec<u8>> {
            signatures
                .split(' ')
                .filter_map(|entry| entry.strip_prefix(prefix))
                .filter_map(|b64| STANDARD.decode(b64).ok())
                .collect()
        };
        let (v1, v1a) = (decode("v1,"), decode("v1a,"));
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", request.body];
        let hmac_keys: Vec<Vec<u8>> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                Key::Hmac(bytes) => Some(bytes.clone()),
                _ => None,
            })
            .collect();
        let mut matched = any_mac_matches(Algorithm::Sha256, &hmac_keys, &parts, &v1);
        if !v1a.is_empty() {
            let message = parts.concat();
            for key in &self.keys {
                let public = match key {
                    Key::Public(public) => *public,
                    Key::Signing(secret) => secret.verifying_key(),
                    Key::Hmac(_) => continue,
                };
                for candidate in &v1a {
                    if let Ok(signature) = Signature::from_slice(candidate) {
                        matched |= public.verify_strict(&message, &signature).is_ok();
                    }
                }
            }
        }
        if matched { Ok(()) } else { Err(VerifyError::BadSignature) }
    }

    fn sign(&self, body: &[u8], now: SystemTime, id: &str) -> Option<Vec<(String, String)>> {
        let ts = unix_seconds(now);
        let signature = match &self.keys[0] {
            Key::Hmac(key) => signature(key, id, ts, body),
            Key::Signing(key) => {
                let message = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
                format!("v1a,{}", STANDARD.encode(key.sign(&message).to_bytes()))
            }
            Key::Public(_) => return None,
        };
        Some(vec![
            (ID.to_owned(), id.to_owned()),
            (TIMESTAMP.to_owned(), ts.to_string()),
            (SIGNATURE.to_owned(), signature),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;

    use super::*;

    // The Standard Webhooks specification's published test vector
    // (github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md
    // and the reference libraries' tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(s: &StandardWebhooks, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        s.verify(&Incoming { headers, body, query: None }, now)
    }

    fn scheme(secrets: &[&str]) -> StandardWebhooks {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        StandardWebhooks::new(&secrets, None).unwrap()
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [(ID, id), (TIMESTAMP, ts), (SIGNATURE, sig)] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accepts_the_spec_vector() {
        let s = scheme(&[SECRET]);
        assert_eq!(check(&s, &headers(MSG_ID, &TS.to_string(), SIG), BODY, at(TS)), Ok(()));
        assert_eq!(signature(&decode_secret(SECRET).unwrap(), MSG_ID, TS as i64, BODY), SIG);
    }

    #[test]
    fn accepts_secret_without_prefix_or_padding() {
        let s = scheme(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert!(check(&s, &headers(MSG_ID, &TS.to_string(), SIG), BODY, at(TS)).is_ok());
        let padded = "whsec_c2VjcmV0LXZhbHVl"; // "secret-value" without its '=' padding
        assert!(decode_secret(padded).is_some());
    }

    #[test]
    fn any_of_several_secrets_and_signatures_matches() {
        let s = scheme(&["whsec_b3RoZXItc2VjcmV0", SECRET]);
        let multi = format!("v1,AAAA v1a,xyz {SIG}");
        assert!(check(&s, &headers(MSG_ID, &TS.to_string(), &multi), BODY, at(TS)).is_ok());
    }

    #[test]
    fn rejects_tampering_wrong_secret_and_bad_headers() {
        let ok = headers(MSG_ID, &TS.to_string(), SIG);
        let s = scheme(&[SECRET]);
        assert_eq!(check(&s, &ok, br#"{"test": 2432232315}"#, at(TS)), Err(VerifyError::BadSignature));
        assert_eq!(check(&scheme(&["whsec_b3RoZXItc2VjcmV0"]), &ok, BODY, at(TS)), Err(VerifyError::BadSignature));
        assert_eq!(
            check(&s, &headers("msg_other", &TS.to_string(), SIG), BODY, at(TS)),
            Err(VerifyError::BadSignature)
        );
        for bad in ["", " ", "v1,", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "g0hM9SsE"] {
            assert_eq!(
                check(&s, &headers(MSG_ID, &TS.to_string(), bad), BODY, at(TS)),
                Err(VerifyError::BadSignature),
                "{bad:?}"
            );
        }
        assert_eq!(
            check(&s, &headers(MSG_ID, "yesterday", SIG), BODY, at(TS)),
            Err(VerifyError::MalformedHeader(TIMESTAMP))
        );
        let mut missing = ok.clone();
        missing.remove(SIGNATURE);
        assert_eq!(check(&s, &missing, BODY, at(TS)), Err(VerifyError::MissingHeader(SIGNATURE)));
    }

    #[test]
    fn rejects_stale_and_future_timestamps() {
        let s = scheme(&[SECRET]);
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert!(check(&s, &h, BODY, at(TS + 300)).is_ok());
        assert_eq!(check(&s, &h, BODY, at(TS + 301)), Err(VerifyError::StaleTimestamp));
        assert_eq!(check(&s, &h, BODY, at(TS - 301)), Err(VerifyError::StaleTimestamp));
    }

    #[test]
    fn rejects_undecodable_secrets() {
        let err = StandardWebhooks::new(&[Secret::new(SECRET), Secret::new("whsec_!!!")], None).err().unwrap();
        assert_eq!(err.0, 1);
        assert!(!err.1.contains("!!!"));
    }

    proptest! {
        #[test]
        fn sign_then_verify_and_any_byte_flip_fails(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
        ) {
            let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
            let s = scheme(&[&secret]);
            let now = at(TS);
            let signed = s.sign(&body, now, "msg_1").unwrap();
            let mut h = HeaderMap::new();
            for (k, v) in &signed {
                h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            prop_assert!(check(&s, &h, &body, now).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 0x01;
                prop_assert_eq!(check(&s, &h, &tampered, now), Err(VerifyError::BadSignature));
            }
        }
    }
}

#[cfg(test)]
mod v1a_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use ed25519_dalek::SigningKey;

    use super::*;

    fn headers(pairs: &[(String, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn ed25519_signatures_verify_with_the_public_key_only() {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let whsk = format!("whsk_{}", STANDARD.encode(signing.to_bytes()));
        let whpk = format!("whpk_{}", STANDARD.encode(signing.verifying_key().to_bytes()));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sender = StandardWebhooks::new(&[Secret::new(whsk)], None).unwrap();
        let signed = headers(&sender.sign(b"{\"a\":1}", now, "msg_ed").unwrap());
        assert!(signed["webhook-signature"].to_str().unwrap().starts_with("v1a,"));

        let receiver =
            StandardWebhooks::new(&[Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Secret::new(whpk)], None)
                .unwrap();
        let ok = Incoming { headers: &signed, body: b"{\"a\":1}", query: None };
        assert_eq!(receiver.verify(&ok, now), Ok(()));
        let tampered = Incoming { headers: &signed, body: b"{\"a\":2}", query: None };
        assert_eq!(receiver.verify(&tampered, now), Err(VerifyError::BadSignature));
        // A public-key-only source cannot sign.
        assert!(
            StandardWebhooks::new(
                &[Secret::new(format!("whpk_{}", STANDARD.encode(signing.verifying_key().to_bytes())))],
                None
            )
            .unwrap()
            .sign(b"", now, "x")
            .is_none()
        );
        // A v1a entry is never checked as an HMAC, nor a v1 entry as ed25519.
        let mut swapped = signed.clone();
        let sig = signed["webhook-signature"].to_str().unwrap().replacen("v1a,", "v1,", 1);
        swapped.insert("webhook-signature", HeaderValue::from_str(&sig).unwrap());
        let swapped = Incoming { headers: &swapped, body: b"{\"a\":1}", query: None };
        assert_eq!(receiver.verify(&swapped, now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert!(StandardWebhooks::new(&[Secret::new("whpk_AAAA")], None).is_err());
        assert!(StandardWebhooks::new(&[Secret::new("whsk_AAAA")], None).is_err());
    }
}
