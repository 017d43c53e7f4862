//! Fuzzes every signature scheme's `verify` (and `challenge`) with arbitrary
//! headers, query string, body and clock. See ../README.md for the input
//! format.
#![no_main]

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hookwire::{
    config::Secret,
    ingress::{
        schemes::{
            Basic, Encoding, GenericHmac, HmacOptions, Paddle, Slack, Square, StandardWebhooks, Stripe, Template,
            Token, Twilio, Unverified,
        },
        verify::{Algorithm, Incoming, Scheme},
    },
};
use libfuzzer_sys::fuzz_target;

/// Header names the schemes read. A header line starting with a byte below
/// 0x20 picks one of these by index, so every parser is reached often.
const KNOWN: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "paddle-signature",
    "x-square-hmacsha256-signature",
    "x-twilio-signature",
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "authorization",
    "x-sig",
    "x-ts",
    "x-id",
    "x-sig1",
    "x-api-key",
    "content-type",
];

/// A fixed clock near today, used when the input asks for it.
const FIXED_NOW: u64 = 1_700_000_000;

fn secrets(list: &[&str]) -> Vec<Secret> {
    list.iter().map(|s| Secret::new(*s)).collect()
}

fn schemes() -> &'static [(&'static str, Box<dyn Scheme>)] {
    static SCHEMES: OnceLock<Vec<(&'static str, Box<dyn Scheme>)>> = OnceLock::new();
    SCHEMES.get_or_init(|| {
        // The Standard Webhooks spec's sample secret, plus a second one.
        let sw_hmac = secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_b3RoZXItc2VjcmV0"]);
        // ed25519: a signing key (32-byte seed) first, so `sign` produces v1a.
        let sw_ed = secrets(&["whsk_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        let plain = secrets(&["It's a Secret to Everybody", "second-secret"]);
        let generic = |template: &str, algorithm, encoding, prefix: &str, ts: Option<&str>, id: Option<&str>, header: &str| {
            GenericHmac::new(
                HmacOptions {
                    header: header.into(),
                    algorithm,
                    encoding,
                    prefix: prefix.into(),
                    template: Template::parse(template).expect("valid template"),
                    timestamp_header: ts.map(str::to_owned),
                    id_header: id.map(str::to_owned),
                    tolerance: Duration::from_secs(300),
                },
                &plain,
            )
            .expect("consistent options")
        };
        vec![
            ("standard-webhooks", Box::new(StandardWebhooks::new(&sw_hmac, None).expect("valid secrets")) as Box<dyn Scheme>),
            (
                "standard-webhooks-ed25519",
                Box::new(StandardWebhooks::new(&sw_ed, Some(Duration::from_secs(60))).expect("valid secrets")),
            ),
            ("github", Box::new(GenericHmac::github(&plain))),
            ("shopify", Box::new(GenericHmac::shopify(&plain))),
            (
                "hmac-sha512-template",
                Box::new(generic(
                    "{id}.{timestamp}.{body}",
                    Algorithm::Sha512,
                    Encoding::Base64,
                    "v1=",
                    Some("X-Ts"),
                    Some("X-Id"),
                    "X-Sig",
                )),
            ),
            ("hmac-sha1", Box::new(generic("pre:{body}:post", Algorithm::Sha1, Encoding::Hex, "", None, None, "X-Sig1"))),
            ("stripe", Box::new(Stripe::new(&secrets(&["whsec_test_secret"]), None))),
            ("slack", Box::new(Slack::new(&plain, Some(Duration::from_secs(300))))),
            ("paddle", Box::new(Paddle::new(&plain, None))),
            ("square", Box::new(Square::new(&plain, "https://example.com/webhooks/square"))),
            ("twilio", Box::new(Twilio::new(&plain, "https://example.com/webhooks/twilio"))),
            ("twilio-port-query", Box::new(Twilio::new(&plain, "http://[::1]:80/t?a=b"))),
            ("basic", Box::new(Basic::new(&secrets(&["hook:s3cret", "old:pw"])).expect("user:password"))),
            ("token-bearer", Box::new(Token::new(&plain, None, None))),
            ("token-custom", Box::new(Token::new(&plain, Some("X-Api-Key"), Some("Key ")))),
            ("none", Box::new(Unverified)),
        ]
    })
}

/// The first run of ASCII digits in any header value, as seconds.
fn first_number(headers: &HeaderMap) -> Option<u64> {
    headers.values().find_map(|v| {
        let bytes = v.as_bytes();
        let start = bytes.iter().position(u8::is_ascii_digit)?;
        let len = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&bytes[start..start + len.min(19)]).ok()?.parse().ok()
    })
}

/// `HOOKWIRE_FUZZ_DEBUG=1` prints each scheme's verdict (for triage).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("HOOKWIRE_FUZZ_DEBUG").is_some())
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs)).unwrap_or(UNIX_EPOCH + Duration::from_secs(FIXED_NOW))
}

fuzz_target!(|data: &[u8]| {
    // Layout: [flags][delta: i16 LE][header lines '\n'-separated]["\n\n" body]
    let (&flags, rest) = match data.split_first() {
        Some(x) => x,
        None => return,
    };
    let (delta, rest) = match rest {
        [a, b, rest @ ..] => (i16::from_le_bytes([*a, *b]), rest),
        _ => (0, rest),
    };
    let (head, body): (&[u8], &[u8]) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[]),
    };

    let mut headers = HeaderMap::new();
    let mut query: Option<&str> = None;
    for line in head.split(|&b| b == b'\n') {
        let (name, value): (&[u8], &[u8]) = match line.first() {
            // '?': the rest of the line is the query string.
            Some(b'?') => {
                query = std::str::from_utf8(&line[1..]).ok();
                continue;
            }
            // A control byte picks a known header name.
            Some(&c) if c < 0x20 => (KNOWN[c as usize % KNOWN.len()].as_bytes(), &line[1..]),
            Some(_) => match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
                None => continue,
            },
            None => continue,
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else {
            continue;
        };
        headers.append(name, value);
    }

    let now = match flags & 3 {
        // Near the first number in the headers (a timestamp, usually).
        0 => first_number(&headers)
            .map(|n| at(n.saturating_add_signed(i64::from(delta))))
            .unwrap_or_else(|| at(FIXED_NOW)),
        1 => at(FIXED_NOW.saturating_add_signed(i64::from(delta))),
        2 => at(delta as u16 as u64),
        // Beyond i64::MAX seconds: unix_seconds wraps negative.
        _ => at((i64::MAX as u64).saturating_add_signed(i64::from(delta))),
    };

    let request = Incoming { headers: &headers, body, query };
    for (name, scheme) in schemes() {
        let result = scheme.verify(&request, now);
        let challenge = scheme.challenge(body);
        if debug() {
            eprintln!("{name:>26}: {result:?} challenge={challenge:?}");
        }
    }

    // The library's own helpers over the same bytes.
    if let Some(q) = query {
        let _ = Template::parse(q);
        let _ = Algorithm::parse(q);
        for encoding in [Encoding::Hex, Encoding::Base64] {
            let _ = encoding.decode(q);
        }
    }

    // Round trip: what a scheme signs, it must accept.
    if flags & 4 != 0 {
        let id = query.unwrap_or("msg_fuzz");
        for (name, scheme) in schemes() {
            let Some(signed) = scheme.sign(body, now, id) else { continue };
            let mut h = HeaderMap::new();
            let mut valid = true;
            for (k, v) in &signed {
                // Only values a receiver can read back (`to_str` wants visible
                // ASCII); a non-ASCII id is legitimately MalformedHeader.
                match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    (Ok(k), Ok(v)) if v.to_str().is_ok() => {
                        h.insert(k, v);
                    }
                    _ => valid = false,
                }
            }
            if !valid {
                continue;
            }
            let result = scheme.verify(&Incoming { headers: &h, body, query: None }, now);
            assert!(result.is_ok(), "{name}: rejected its own signature {signed:?}: {result:?}");
        }
    }
});
