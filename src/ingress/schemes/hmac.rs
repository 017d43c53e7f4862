//! The generic, fully configurable HMAC scheme, and the provider presets that
//! are just a configuration of it (GitHub, Shopify).
//!
//! Signed content is a template over `{body}`, `{timestamp}` (from
//! `timestamp_header`, checked against `tolerance`) and `{id}` (from
//! `id_header`); the signature sits in `header`, after `prefix`, encoded as
//! hex or base64.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use base64::Engine;

use crate::{
    config::Secret,
    ingress::verify::{
        Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, check_timestamp, header, static_name, unix_seconds,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hex" => Some(Self::Hex),
            "base64" => Some(Self::Base64),
            _ => None,
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Hex => hex::encode(bytes),
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    pub fn decode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Self::Hex => hex::decode(text).ok(),
            Self::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(Vec<u8>),
    Body,
    Timestamp,
    Id,
}

/// A parsed signed-content template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Segment>);

impl Template {
    /// Parses `{body}`, `{timestamp}` and `{id}` placeholders; `{body}` must
    /// appear exactly once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                segments.push(Segment::Literal(rest.as_bytes()[..open].to_vec()));
            }
            let close = rest[open..].find('}').ok_or("unclosed '{'")? + open;
            segments.push(match &rest[open + 1..close] {
                "body" => Segment::Body,
                "timestamp" => Segment::Timestamp,
                "id" => Segment::Id,
                other => {
                    return Err(format!("unknown placeholder {{{other}}}; use {{body}}, {{timestamp}} or {{id}}"));
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.as_bytes().to_vec()));
        }
        if segments.iter().filter(|s| **s == Segment::Body).count() != 1 {
            return Err("the template must contain {body} exactly once".to_owned());
        }
        Ok(Self(segments))
    }

    fn uses(&self, segment: &Segment) -> bool {
        self.0.contains(segment)
    }

    fn parts<'a>(&'a self, body: &'a [u8], timestamp: &'a str, id: &'a str) -> Vec<&'a [u8]> {
        self.0
            .iter()
            .map(|s| match s {
                Segment::Literal(bytes) => bytes.as_slice(),
                Segment::Body => body,
                Segment::Timestamp => timestamp.as_bytes(),
                Segment::Id => id.as_bytes(),
            })
            .collect()
    }
}

/// Everything the generic scheme can be configured with.
pub struct HmacOptions {
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub prefix: String,
    pub template: Template,
    pub timestamp_header: Option<String>,
    pub id_header: Option<String>,
    pub tolerance: Duration,
}

pub struct GenericHmac {
    header: &'static str,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    template: Template,
    timestamp_header: Option<&'static str>,
    id_header: Option<&'static str>,
    tolerance: Duration,
    keys: Vec<Vec<u8>>,
}

impl GenericHmac {
    /// Fails when the template needs a header that is not configured.
    pub fn new(options: HmacOptions, secrets: &[Secret]) -> Result<Self, (&'static str, String)> {
        if options.template.uses(&Segment::Timestamp) && options.timestamp_header.is_none() {
            return Err(("timestamp_header", "required when the template uses {timestamp}".to_owned()));
        }
        if options.template.uses(&Segment::Id) && options.id_header.is_none() {
            return Err(("id_header", "required when the template uses {id}".to_owned()));
        }
        Ok(Self {
            header: static_name(&options.header),
            algorithm: options.algorithm,
            encoding: options.encoding,
            prefix: options.prefix,
            template: options.template,
            timestamp_header: options.timestamp_header.as_deref().map(static_name),
            id_header: options.id_header.as_deref().map(static_name),
            tolerance: options.tolerance,
            keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(),
        })
    }

    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the raw body.
    pub fn github(secrets: &[Secret]) -> Self {
        Self::over_body("x-hub-signature-256", Encoding::Hex, "sha256=", secrets)
    }

    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>` over the raw body.
    pub fn shopify(secrets: &[Secret]) -> Self {
        Self::over_body("x-shopify-hmac-sha256", Encoding::Base64, "", secrets)
    }

    /// A preset: HMAC-SHA256 of the raw body in `header`, after `prefix`.
    fn over_body(header: &str, encoding: Encoding, prefix: &str, secrets: &[Secret]) -> Self {
        let options = HmacOptions {
            header: header.to_owned(),
            algorithm: Algorithm::Sha256,
            encoding,
            prefix: prefix.to_owned(),
            template: Template::parse("{body}").expect("valid"),
            timestamp_header: None,
            id_header: None,
            tolerance: Duration::ZERO,
        };
        Self::new(options, secrets).expect("a body-only template needs no extra header")
    }

    fn optional<'h>(&self, headers: &'h HeaderMap, name: Option<&'static str>) -> Result<&'h str, VerifyError> {
        match name {
            Some(name) => header(headers, name),
            None => Ok(""),
        }
    }
}

impl Scheme for GenericHmac {
    fn verify(&self, request: &Incoming<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let value = header(request.headers, self.header)?.trim();
        let timestamp = self.optional(request.headers, self.timestamp_header)?;
        let id = self.optional(request.headers, self.id_header)?;
        if let Some(name) = self.timestamp_header {
            check_timestamp(timestamp, name, now, self.tolerance)?;
        }
        let signature = value
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| self.encoding.decode(s.trim()))
            .ok_or(VerifyError::BadSignature)?;
        let parts = self.template.parts(request.body, timestamp.trim(), id);
        if any_mac_matches(self.algorithm, &self.keys, &parts, &[signature]) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn sign(&self, body: &[u8], now: SystemTime, id: &str) -> Option<Vec<(String, String)>> {
        let timestamp = unix_seconds(now).to_string();
        let mac = self.algorithm.mac(&self.keys[0], &self.template.parts(body, &timestamp, id));
        let mut headers = vec![(self.header.to_owned(), format!("{}{}", self.prefix, self.encoding.encode(&mac)))];
        if let Some(name) = self.timestamp_header {
            headers.push((name.to_owned(), timestamp));
        }
        if let Some(name) = self.id_header {
            headers.push((name.to_owned(), id.to_owned()));
        }
        Some(headers)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, HeaderValue};

    use super::*;

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Incoming<'a> {
        Incoming { headers, body, query: None }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    // GitHub's documented example ("Validating webhook deliveries",
    // docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries):
    // secret "It's a Secret to Everybody", payload "Hello, World!".
    const GITHUB_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_preset_accepts_the_documented_example() {
        let s = GenericHmac::github(&[Secret::new("It's a Secret to Everybody")]);
        let h = headers(&[("x-hub-signature-256", GITHUB_SIG)]);
        assert_eq!(s.verify(&request(&h, b"Hello, World!"), SystemTime::now()), Ok(()));
        assert_eq!(s.sign(b"Hello, World!", SystemTime::now(), "").unwrap()[0].1, GITHUB_SIG);
    }

    #[test]
    fn github_rejects_tampering_wrong_secret_prefix_and_encoding() {
        let s = GenericHmac::github(&[Secret::new("It's a Secret to Everybody")]);
        let now = SystemTime::now();
        let h = headers(&[("x-hub-signature-256", GITHUB_SIG)]);
        assert_eq!(s.verify(&request(&h, b"Hello, World?"), now), Err(VerifyError::BadSignature));
        let wrong = GenericHmac::github(&[Secret::new("wrong")]);
        assert_eq!(wrong.verify(&request(&h, b"Hello, World!"), now), Err(VerifyError::BadSignature));
        for bad in [&GITHUB_SIG[7..], "sha256=zz", "sha256=", "sha1=757107ea", ""] {
            let h = headers(&[("x-hub-signature-256", bad)]);
            assert_eq!(s.verify(&request(&h, b"Hello, World!"), now), Err(VerifyError::BadSignature), "{bad:?}");
        }
        assert_eq!(
            s.verify(&request(&HeaderMap::new(), b"Hello, World!"), now),
            Err(VerifyError::MissingHeader("x-hub-signature-256"))
        );
    }

    #[test]
    fn template_with_timestamp_and_id() {
        let options = HmacOptions {
            header: "X-Sig".into(),
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: "v1=".into(),
            template: Template::parse("{id}.{timestamp}.{body}").unwrap(),
            timestamp_header: Some("X-Ts".into()),
            id_header: Some("X-Id".into()),
            tolerance: Duration::from_secs(300),
        };
        let s = GenericHmac::new(options, &[Secret::new("old"), Secret::new("new")]).unwrap();
        let now = SystemTime::now();
        let signed = s.sign(b"{}", now, "evt_1").unwrap();
        let pairs: Vec<(&str, &str)> = signed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let h = headers(&pairs);
        assert!(s.verify(&request(&h, b"{}"), now).is_ok());
        assert_eq!(s.verify(&request(&h, b"{}"), now + Duration::from_secs(301)), Err(VerifyError::StaleTimestamp));
        let mut other_id = h.clone();
        other_id.insert("x-id", HeaderValue::from_static("evt_2"));
        assert_eq!(s.verify(&request(&other_id, b"{}"), now), Err(VerifyError::BadSignature));
        let mut no_ts = h.clone();
        no_ts.remove("x-ts");
        assert_eq!(s.verify(&request(&no_ts, b"{}"), now), Err(VerifyError::MissingHeader("x-ts")));
    }

    #[test]
    fn templates_are_checked() {
        assert!(Template::parse("{timestamp}.{body}").is_ok());
        assert!(Template::parse("{timestamp}").is_err());
        assert!(Template::parse("{body}{body}").is_err());
        assert!(Template::parse("{bdy}").is_err());
        assert!(Template::parse("{body").is_err());
        let options = |ts: Option<&str>| HmacOptions {
            header: "x".into(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: String::new(),
            template: Template::parse("{timestamp}.{body}").unwrap(),
            timestamp_header: ts.map(str::to_owned),
            id_header: None,
            tolerance: Duration::from_secs(1),
        };
        assert_eq!(GenericHmac::new(options(None), &[]).err().unwrap().0, "timestamp_header");
        assert!(GenericHmac::new(options(Some("x-ts")), &[]).is_ok());
    }
}
