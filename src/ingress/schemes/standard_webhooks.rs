//! Standard Webhooks v1 (<https://www.standardwebhooks.com>): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, secrets `whsec_<base64>`, a
//! `webhook-signature` header of space-separated `v1,<base64>` entries.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

use crate::{
    config::Secret,
    ingress::verify::{Algorithm, Scheme, VerifyError, check_timestamp, header, unix_seconds},
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

pub struct StandardWebhooks {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl StandardWebhooks {
    /// Fails with the index of the first secret that is not valid base64.
    pub fn new(secrets: &[Secret], tolerance: Option<Duration>) -> Result<Self, (usize, String)> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                decode_secret(s.expose()).ok_or((
                    i,
                    "not a valid Standard Webhooks secret (whsec_ followed by base64)".to_owned(),
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
        })
    }
}

pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    LENIENT.decode(b64).ok().filter(|k| !k.is_empty())
}

/// `v1,<base64>` for one key.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = Algorithm::Sha256.mac(
        key,
        &[
            id.as_bytes(),
            b".",
            timestamp.to_string().as_bytes(),
            b".",
            body,
        ],
    );
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

impl Scheme for StandardWebhooks {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        let id = header(headers, ID)?;
        let timestamp = header(headers, TIMESTAMP)?;
        let signatures = header(headers, SIGNATURE)?;
        check_timestamp(timestamp, TIMESTAMP, now, self.tolerance)?;
        let timestamp = timestamp.trim();
        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        // Every pair is checked even after a match would be found, keeping the
        // work independent of which secret or signature matched.
        let mut matched = false;
        for key in &self.keys {
            for candidate in &candidates {
                matched |= Algorithm::Sha256.verify(key, &parts, candidate);
            }
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], now: SystemTime, id: &str) -> Vec<(String, String)> {
        let ts = unix_seconds(now);
        vec![
            (ID.to_owned(), id.to_owned()),
            (TIMESTAMP.to_owned(), ts.to_string()),
            (SIGNATURE.to_owned(), signature(&self.keys[0], id, ts, body)),
        ]
    }

    fn id_header(&self) -> Option<&'static str> {
        Some(ID)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use axum::http::{HeaderName, HeaderValue};
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

    fn scheme(secrets: &[&str]) -> StandardWebhooks {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        StandardWebhooks::new(&secrets, None).unwrap()
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [(ID, id), (TIMESTAMP, ts), (SIGNATURE, sig)] {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepts_the_spec_vector() {
        let s = scheme(&[SECRET]);
        assert_eq!(
            s.verify(&headers(MSG_ID, &TS.to_string(), SIG), BODY, at(TS)),
            Ok(())
        );
        assert_eq!(
            signature(&decode_secret(SECRET).unwrap(), MSG_ID, TS as i64, BODY),
            SIG
        );
    }

    #[test]
    fn accepts_secret_without_prefix_or_padding() {
        let s = scheme(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert!(
            s.verify(&headers(MSG_ID, &TS.to_string(), SIG), BODY, at(TS))
                .is_ok()
        );
        let padded = "whsec_c2VjcmV0LXZhbHVl"; // "secret-value" without its '=' padding
        assert!(decode_secret(padded).is_some());
    }

    #[test]
    fn any_of_several_secrets_and_signatures_matches() {
        let s = scheme(&["whsec_b3RoZXItc2VjcmV0", SECRET]);
        let multi = format!("v1,AAAA v1a,xyz {SIG}");
        assert!(
            s.verify(&headers(MSG_ID, &TS.to_string(), &multi), BODY, at(TS))
                .is_ok()
        );
    }

    #[test]
    fn rejects_tampering_wrong_secret_and_bad_headers() {
        let ok = headers(MSG_ID, &TS.to_string(), SIG);
        let s = scheme(&[SECRET]);
        assert_eq!(
            s.verify(&ok, br#"{"test": 2432232315}"#, at(TS)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            scheme(&["whsec_b3RoZXItc2VjcmV0"]).verify(&ok, BODY, at(TS)),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            s.verify(&headers("msg_other", &TS.to_string(), SIG), BODY, at(TS)),
            Err(VerifyError::BadSignature)
        );
        for bad in [
            "",
            " ",
            "v1,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE",
        ] {
            assert_eq!(
                s.verify(&headers(MSG_ID, &TS.to_string(), bad), BODY, at(TS)),
                Err(VerifyError::BadSignature),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.verify(&headers(MSG_ID, "yesterday", SIG), BODY, at(TS)),
            Err(VerifyError::MalformedHeader(TIMESTAMP))
        );
        let mut missing = ok.clone();
        missing.remove(SIGNATURE);
        assert_eq!(
            s.verify(&missing, BODY, at(TS)),
            Err(VerifyError::MissingHeader(SIGNATURE))
        );
    }

    #[test]
    fn rejects_stale_and_future_timestamps() {
        let s = scheme(&[SECRET]);
        let h = headers(MSG_ID, &TS.to_string(), SIG);
        assert!(s.verify(&h, BODY, at(TS + 300)).is_ok());
        assert_eq!(
            s.verify(&h, BODY, at(TS + 301)),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            s.verify(&h, BODY, at(TS - 301)),
            Err(VerifyError::StaleTimestamp)
        );
    }

    #[test]
    fn rejects_undecodable_secrets() {
        let err = StandardWebhooks::new(&[Secret::new(SECRET), Secret::new("whsec_!!!")], None)
            .err()
            .unwrap();
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
            let signed = s.sign(&body, now, "msg_1");
            let mut h = HeaderMap::new();
            for (k, v) in &signed {
                h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            prop_assert!(s.verify(&h, &body, now).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 0x01;
                prop_assert_eq!(s.verify(&h, &tampered, now), Err(VerifyError::BadSignature));
            }
        }
    }
}
