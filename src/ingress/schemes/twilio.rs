//! Twilio: `X-Twilio-Signature: <base64 HMAC-SHA1>` with the auth token over
//! the full request URL followed by the form fields sorted by name (each
//! name, then its value). For JSON bodies Twilio adds a `bodySHA256` query
//! parameter instead: the signature covers the URL only, and the body must
//! hash to that parameter.
//!
//! The URL is `public_url` (what Twilio was configured with) plus the query
//! string of the request. As Twilio's own validators do, the URL is tried
//! with and without the scheme's default port.

use std::time::SystemTime;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{
    config::Secret,
    ingress::verify::{Algorithm, Incoming, Scheme, VerifyError, any_mac_matches, header, secrets_equal},
};

pub const SIGNATURE: &str = "x-twilio-signature";

pub struct Twilio {
    keys: Vec<Vec<u8>>,
    url: String,
}

impl Twilio {
    pub fn new(secrets: &[Secret], public_url: &str) -> Self {
        Self { keys: secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(), url: public_url.to_owned() }
    }

    fn full_url(&self, query: Option<&str>) -> String {
        match query.filter(|q| !q.is_empty()) {
            Some(q) if self.url.contains('?') => format!("{}&{q}", self.url),
            Some(q) => format!("{}?{q}", self.url),
            None => self.url.clone(),
        }
    }
}

/// The URL as given, plus the variant with the default port added (if
/// absent) or removed (if present).
pub fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let variant = match hostport.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') && port == default => {
            format!("{scheme}://{userinfo}{host}{tail}")
        }
        Some((_, port)) if !port.contains(']') => return out,
        _ => format!("{scheme}://{userinfo}{hostport}:{default}{tail}"),
    };
    out.push(variant);
    out
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// `name1value1name2value2…` over the form fields sorted by name (then value).
fn sorted_params(body: &[u8]) -> Vec<u8> {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    pairs.sort();
    pairs.into_iter().flat_map(|(k, v)| [k, v]).collect::<String>().into_bytes()
}

impl Scheme for Twilio {
    fn verify(&self, request: &Incoming<'_>, _now: SystemTime) -> Result<(), VerifyError> {
        let candidate = base64::engine::general_purpose::STANDARD
            .decode(header(request.headers, SIGNATURE)?.trim())
            .map_err(|_| VerifyError::BadSignature)?;
        let url = self.full_url(request.query);
        let params = match query_param(request.query, "bodySHA256") {
            // JSON body: the URL (with bodySHA256) is signed, the body is hashed.
            Some(expected) => {
                let actual = hex::encode(Sha256::digest(request.body));
                if !secrets_equal(actual.as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                    return Err(VerifyError::BadSignature);
                }
                Vec::new()
            }
            None => sorted_params(request.body),
        };
        let mut matched = false;
        for variant in port_variants(&url) {
            matched |= any_mac_matches(
                Algorithm::Sha1,
                &self.keys,
                &[variant.as_bytes(), &params],
                std::slice::from_ref(&candidate),
            );
        }
        if matched { Ok(()) } else { Err(VerifyError::BadSignature) }
    }

    /// Signs `body` as a form post to `public_url` (Twilio's usual request).
    fn sign(&self, body: &[u8], _now: SystemTime, _id: &str) -> Option<Vec<(String, String)>> {
        let mac = Algorithm::Sha1.mac(&self.keys[0], &[self.url.as_bytes(), &sorted_params(body)]);
        Some(vec![
            (SIGNATURE.to_owned(), base64::engine::general_purpose::STANDARD.encode(mac)),
            ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_variants_add_or_remove_the_default_port() {
        assert_eq!(port_variants("https://a.com/x?y=1"), ["https://a.com/x?y=1", "https://a.com:443/x?y=1"]);
        assert_eq!(port_variants("https://a.com:443/x"), ["https://a.com:443/x", "https://a.com/x"]);
        assert_eq!(port_variants("http://a.com"), ["http://a.com", "http://a.com:80"]);
        assert_eq!(port_variants("https://a.com:8443/x"), ["https://a.com:8443/x"]);
        assert_eq!(port_variants("https://u:p@a.com/x"), ["https://u:p@a.com/x", "https://u:p@a.com:443/x"]);
        assert_eq!(port_variants("https://[::1]/x"), ["https://[::1]/x", "https://[::1]:443/x"]);
    }
}
