//! A configurable HMAC over the raw body: header name, sha256/sha512,
//! hex/base64, optional prefix (`sha256=` as GitHub sends it).

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;

use crate::{
    config::{Secret, SourceConfig},
    ingress::verify::{Algorithm, Scheme, VerifyError},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

pub struct GenericHmac {
    header: HeaderName,
    /// `header` as a `&'static str` for error messages (leaked once per source
    /// at startup, so rejections never allocate).
    header_label: &'static str,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    keys: Vec<Vec<u8>>,
}

impl GenericHmac {
    /// Fails with the offending field name and what is wrong with it.
    pub fn from_config(config: &SourceConfig) -> Result<Self, (&'static str, String)> {
        let header = config.header.as_deref().ok_or((
            "header",
            "required for scheme \"hmac\" (the header carrying the signature)".to_owned(),
        ))?;
        let header_name = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map_err(|_| ("header", format!("{header:?} is not a valid header name")))?;
        let algorithm = match config.algorithm.as_deref().unwrap_or("sha256") {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err((
                    "algorithm",
                    format!("{other:?} is not supported; use \"sha256\" or \"sha512\""),
                ));
            }
        };
        let encoding = match config.encoding.as_deref().unwrap_or("hex") {
            "hex" => Encoding::Hex,
            "base64" => Encoding::Base64,
            other => {
                return Err((
                    "encoding",
                    format!("{other:?} is not supported; use \"hex\" or \"base64\""),
                ));
            }
        };
        Ok(Self::new(
            header_name,
            algorithm,
            encoding,
            config.prefix.clone().unwrap_or_default(),
            &config.secrets,
        ))
    }

    pub fn new(
        header: HeaderName,
        algorithm: Algorithm,
        encoding: Encoding,
        prefix: String,
        secrets: &[Secret],
    ) -> Self {
        Self {
            header_label: Box::leak(header.as_str().to_owned().into_boxed_str()),
            header,
            algorithm,
            encoding,
            prefix,
            keys: secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect(),
        }
    }

    fn encode(&self, mac: &[u8]) -> String {
        match self.encoding {
            Encoding::Hex => hex::encode(mac),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
        }
    }

    fn decode(&self, text: &str) -> Option<Vec<u8>> {
        match self.encoding {
            Encoding::Hex => hex::decode(text).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        }
    }
}

impl Scheme for GenericHmac {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        _now: SystemTime,
    ) -> Result<(), VerifyError> {
        let value = headers
            .get(&self.header)
            .ok_or(VerifyError::MissingHeader(self.header_label))?
            .to_str()
            .map_err(|_| VerifyError::MalformedHeader(self.header_label))?
            .trim();
        let signature = value
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| self.decode(s))
            .ok_or(VerifyError::BadSignature)?;
        let mut matched = false;
        for key in &self.keys {
            matched |= self.algorithm.verify(key, &[body], &signature);
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], _now: SystemTime, _id: &str) -> Vec<(String, String)> {
        let mac = self.algorithm.mac(&self.keys[0], &[body]);
        vec![(
            self.header.as_str().to_owned(),
            format!("{}{}", self.prefix, self.encode(&mac)),
        )]
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn github(secret: &str) -> GenericHmac {
        GenericHmac::new(
            HeaderName::from_static("x-hub-signature-256"),
            Algorithm::Sha256,
            Encoding::Hex,
            "sha256=".to_owned(),
            &[Secret::new(secret)],
        )
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    // GitHub's documented example ("Validating webhook deliveries",
    // docs.github.com): secret "It's a Secret to Everybody", payload
    // "Hello, World!".
    const GITHUB_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn accepts_githubs_documented_example() {
        let s = github("It's a Secret to Everybody");
        let h = headers("x-hub-signature-256", GITHUB_SIG);
        assert_eq!(s.verify(&h, b"Hello, World!", SystemTime::now()), Ok(()));
        assert_eq!(
            s.sign(b"Hello, World!", SystemTime::now(), "")[0].1,
            GITHUB_SIG
        );
    }

    #[test]
    fn rejects_tampering_wrong_secret_prefix_and_encoding() {
        let s = github("It's a Secret to Everybody");
        let now = SystemTime::now();
        let h = headers("x-hub-signature-256", GITHUB_SIG);
        assert_eq!(
            s.verify(&h, b"Hello, World?", now),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            github("wrong").verify(&h, b"Hello, World!", now),
            Err(VerifyError::BadSignature)
        );
        let no_prefix = headers("x-hub-signature-256", &GITHUB_SIG[7..]);
        assert_eq!(
            s.verify(&no_prefix, b"Hello, World!", now),
            Err(VerifyError::BadSignature)
        );
        let not_hex = headers("x-hub-signature-256", "sha256=zz");
        assert_eq!(
            s.verify(&not_hex, b"Hello, World!", now),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            s.verify(&HeaderMap::new(), b"Hello, World!", now),
            Err(VerifyError::MissingHeader("x-hub-signature-256"))
        );
    }

    #[test]
    fn rotation_accepts_any_secret() {
        let s = GenericHmac::new(
            HeaderName::from_static("x-sig"),
            Algorithm::Sha512,
            Encoding::Base64,
            String::new(),
            &[Secret::new("old"), Secret::new("new")],
        );
        let signed_with_new = GenericHmac::new(
            HeaderName::from_static("x-sig"),
            Algorithm::Sha512,
            Encoding::Base64,
            String::new(),
            &[Secret::new("new")],
        )
        .sign(b"{}", SystemTime::now(), "");
        let h = headers("x-sig", &signed_with_new[0].1);
        assert!(s.verify(&h, b"{}", SystemTime::now()).is_ok());
    }

    proptest! {
        #[test]
        fn sign_then_verify_and_any_byte_flip_fails(
            secret in "[ -~]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 1..512),
            flip in any::<prop::sample::Index>(),
            sha512 in any::<bool>(),
            b64 in any::<bool>(),
        ) {
            let s = GenericHmac::new(
                HeaderName::from_static("x-sig"),
                if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 },
                if b64 { Encoding::Base64 } else { Encoding::Hex },
                "v=".to_owned(),
                &[Secret::new(secret)],
            );
            let signed = s.sign(&body, SystemTime::now(), "");
            let h = headers("x-sig", &signed[0].1);
            prop_assert!(s.verify(&h, &body, SystemTime::now()).is_ok());
            let mut tampered = body.clone();
            tampered[flip.index(body.len())] ^= 0x80;
            prop_assert_eq!(s.verify(&h, &tampered, SystemTime::now()), Err(VerifyError::BadSignature));
        }
    }
}
