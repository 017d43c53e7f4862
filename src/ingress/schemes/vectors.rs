//! Every scheme against its provider's own published, signed examples, plus
//! the negative cases (tampered body, wrong secret, stale timestamp,
//! malformed or empty signature lists). Each vector names where it was
//! published; "verified" below means recomputed independently as well.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::{
    config::Secret,
    ingress::verify::{Incoming, VerifyError},
};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn check(
    scheme: &dyn Scheme,
    h: &HeaderMap,
    body: &[u8],
    query: Option<&str>,
    now: SystemTime,
) -> Result<(), VerifyError> {
    scheme.verify(&Incoming { headers: h, body, query }, now)
}

fn secrets(s: &[&str]) -> Vec<Secret> {
    s.iter().map(|s| Secret::new(*s)).collect()
}

// ------------------------------------------------------------------ Stripe
// stripe/stripe-dotnet, src/StripeTests/Services/Events/EventUtilityTest.cs:
// secret "webhook_secret", t=1533204620 and the header below. The body is the
// SDKs' invoiceitem.created fixture (807 bytes, trailing newline), as
// reproduced by arlyon/async-stripe's test_webhook_construct_event with the
// same secret, timestamp and header (stripe-dotnet's copy of the fixture has
// since been replaced). The secret is used as raw bytes.
const STRIPE_BODY: &[u8] = include_bytes!("testdata/stripe_invoiceitem_created.json");
const STRIPE_HEADER: &str = "t=1533204620,v1=f0bdba6d4eacbd8ad8a3bbadd7248e633ec1477f7899c124c51b39405fa36613,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";

#[test]
fn stripe_published_vector() {
    let s = Stripe::new(&secrets(&["webhook_secret"]), None);
    let h = headers(&[("stripe-signature", STRIPE_HEADER)]);
    assert_eq!(check(&s, &h, STRIPE_BODY, None, at(1_533_204_620)), Ok(()));
    assert_eq!(check(&s, &h, STRIPE_BODY, None, at(1_533_204_620 + 300)), Ok(()));
    assert_eq!(check(&s, &h, STRIPE_BODY, None, at(1_533_204_620 + 301)), Err(VerifyError::StaleTimestamp));
    assert_eq!(check(&s, &h, STRIPE_BODY, None, at(1_533_204_620 - 301)), Err(VerifyError::StaleTimestamp));
    // Without the trailing newline the bytes differ: signatures are over bytes.
    let trimmed = &STRIPE_BODY[..STRIPE_BODY.len() - 1];
    assert_eq!(check(&s, &h, trimmed, None, at(1_533_204_620)), Err(VerifyError::BadSignature));
    let wrong = Stripe::new(&secrets(&["whsec_other"]), None);
    assert_eq!(check(&wrong, &h, STRIPE_BODY, None, at(1_533_204_620)), Err(VerifyError::BadSignature));
    // Rotation: any of several secrets, any of several v1 entries.
    let rotated = Stripe::new(&secrets(&["whsec_old", "webhook_secret"]), None);
    let multi = headers(&[(
        "stripe-signature",
        &format!("{},v1=00ff", STRIPE_HEADER.replace("t=1533204620,", "t=1533204620,v1=abcd,")),
    )]);
    assert_eq!(check(&rotated, &multi, STRIPE_BODY, None, at(1_533_204_620)), Ok(()));
    // Only v0 (legacy test mode) never passes; no t is malformed.
    let v0_only = headers(&[(
        "stripe-signature",
        "t=1533204620,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef",
    )]);
    assert_eq!(check(&s, &v0_only, STRIPE_BODY, None, at(1_533_204_620)), Err(VerifyError::BadSignature));
    let no_t = headers(&[("stripe-signature", "v1=f0bdba6d4eacbd8ad8a3bbadd7248e633ec1477f7899c124c51b39405fa36613")]);
    assert_eq!(
        check(&s, &no_t, STRIPE_BODY, None, at(1_533_204_620)),
        Err(VerifyError::MalformedHeader("stripe-signature"))
    );
    let empty = headers(&[("stripe-signature", "")]);
    assert_eq!(
        check(&s, &empty, STRIPE_BODY, None, at(1_533_204_620)),
        Err(VerifyError::MalformedHeader("stripe-signature"))
    );
}

// ------------------------------------------------------------------- Slack
// slackapi/python-slack-sdk, tests/signature/test_signature_verifier.py, whose
// comment cites api.slack.com/authentication/verifying-requests-from-slack.
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

#[test]
fn slack_published_vector() {
    let s = Slack::new(&secrets(&[SLACK_SECRET]), None);
    let h = headers(&[("x-slack-signature", SLACK_SIG), ("x-slack-request-timestamp", "1531420618")]);
    assert_eq!(check(&s, &h, SLACK_BODY.as_bytes(), None, at(1_531_420_618)), Ok(()));
    assert_eq!(s.sign(SLACK_BODY.as_bytes(), at(1_531_420_618), "").unwrap()[0].1, SLACK_SIG);
    assert_eq!(check(&s, &h, SLACK_BODY.as_bytes(), None, at(1_531_420_618 + 301)), Err(VerifyError::StaleTimestamp));
    assert_eq!(check(&s, &h, b"token=tampered", None, at(1_531_420_618)), Err(VerifyError::BadSignature));
    let other_ts = headers(&[("x-slack-signature", SLACK_SIG), ("x-slack-request-timestamp", "1531420619")]);
    assert_eq!(check(&s, &other_ts, SLACK_BODY.as_bytes(), None, at(1_531_420_618)), Err(VerifyError::BadSignature));
    let no_prefix = headers(&[("x-slack-signature", &SLACK_SIG[3..]), ("x-slack-request-timestamp", "1531420618")]);
    assert_eq!(check(&s, &no_prefix, SLACK_BODY.as_bytes(), None, at(1_531_420_618)), Err(VerifyError::BadSignature));
    let no_ts = headers(&[("x-slack-signature", SLACK_SIG)]);
    assert_eq!(
        check(&s, &no_ts, SLACK_BODY.as_bytes(), None, at(1_531_420_618)),
        Err(VerifyError::MissingHeader("x-slack-request-timestamp"))
    );
}

#[test]
fn slack_url_verification_is_answered() {
    let s = Slack::new(&secrets(&[SLACK_SECRET]), None);
    // The handshake body from Slack's Events API documentation.
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    assert_eq!(
        s.challenge(body),
        Some(serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}))
    );
    assert_eq!(s.challenge(br#"{"type":"event_callback","event":{"type":"message"}}"#), None);
    assert_eq!(s.challenge(b"not json"), None);
}

// ----------------------------------------------------------------- Shopify
// Shopify/shopify-api-js, packages/shopify-api/lib/webhooks/__tests__/
// validate.test.ts, with apiSecretKey "test_secret_key" from
// lib/__tests__/test-config.ts.
#[test]
fn shopify_published_vector() {
    let s = GenericHmac::shopify(&secrets(&["test_secret_key"]));
    let h = headers(&[("x-shopify-hmac-sha256", "B23tXN681gZ0qIWNRrgtzBE9XSDo5yaUu6wfmhu3a7g=")]);
    assert_eq!(check(&s, &h, br#"{"foo": "bar"}"#, None, SystemTime::now()), Ok(()));
    assert_eq!(check(&s, &h, br#"{"foo":"bar"}"#, None, SystemTime::now()), Err(VerifyError::BadSignature));
    let wrong = GenericHmac::shopify(&secrets(&["other"]));
    assert_eq!(check(&wrong, &h, br#"{"foo": "bar"}"#, None, SystemTime::now()), Err(VerifyError::BadSignature));
    let hex = headers(&[("x-shopify-hmac-sha256", "076ded5cdebcd6067")]);
    assert_eq!(check(&s, &hex, br#"{"foo": "bar"}"#, None, SystemTime::now()), Err(VerifyError::BadSignature));
}

// ------------------------------------------------------------------ Paddle
// PaddleHQ/paddle-python-sdk, tests/Unit/Notification/test_Verifier.py: two
// h1 entries, the first junk; one secret passes, two others must fail.
#[test]
fn paddle_published_vector() {
    let header = "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02";
    let h = headers(&[("paddle-signature", header)]);
    let now = at(1_696_195_954);
    let good = Paddle::new(&secrets(&["pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh"]), None);
    assert_eq!(check(&good, &h, b"hello-world", None, now), Ok(()));
    for bad in [
        "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_TjIG2BXbm83HPXqNfziwe506sBEdqL/4",
        "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_vB/yIOnTOCWIvpBadM5jzBZPHc7OmdSo",
    ] {
        let s = Paddle::new(&secrets(&[bad]), None);
        assert_eq!(check(&s, &h, b"hello-world", None, now), Err(VerifyError::BadSignature));
    }
    assert_eq!(check(&good, &h, b"hello-world!", None, now), Err(VerifyError::BadSignature));
    assert_eq!(check(&good, &h, b"hello-world", None, at(1_696_195_954 + 301)), Err(VerifyError::StaleTimestamp));
    let no_ts = headers(&[("paddle-signature", "h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02")]);
    assert_eq!(check(&good, &no_ts, b"hello-world", None, now), Err(VerifyError::MalformedHeader("paddle-signature")));
    let no_h1 = headers(&[("paddle-signature", "ts=1696195954")]);
    assert_eq!(check(&good, &no_h1, b"hello-world", None, now), Err(VerifyError::BadSignature));
}

// ------------------------------------------------------------------ Square
// square/square-python-sdk, tests/utilities/test_webhooks_helper.py (and
// tests/integration/test_webhooks_helper.py for the escaped body). The key is
// used as raw UTF-8, not base64-decoded.
const SQUARE_BODY: &str = r#"{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}"#;
const SQUARE_URL: &str = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9";

#[test]
fn square_published_vectors() {
    let h = headers(&[("x-square-hmacsha256-signature", "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4=")]);
    let s = Square::new(&secrets(&["Ibxx_5AKakO-3qeNVR61Dw"]), SQUARE_URL);
    let now = SystemTime::now();
    assert_eq!(check(&s, &h, SQUARE_BODY.as_bytes(), None, now), Ok(()));
    let other_url =
        Square::new(&secrets(&["Ibxx_5AKakO-3qeNVR61Dw"]), "https://webhook.site/79a4f3a-dcfa-49ee-bac5-9d0edad886b9");
    assert_eq!(check(&other_url, &h, SQUARE_BODY.as_bytes(), None, now), Err(VerifyError::BadSignature));
    let other_key = Square::new(&secrets(&["MCmhFRxGX82xMwg5FsaoQA"]), SQUARE_URL);
    assert_eq!(check(&other_key, &h, SQUARE_BODY.as_bytes(), None, now), Err(VerifyError::BadSignature));
    let tampered = SQUARE_BODY.replace("2022-07-13", "2022-06-13");
    assert_eq!(check(&s, &h, tampered.as_bytes(), None, now), Err(VerifyError::BadSignature));

    let escaped = Square::new(&secrets(&["signature-key"]), "https://webhook.site/webhooks");
    let h = headers(&[("x-square-hmacsha256-signature", "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U=")]);
    assert_eq!(check(&escaped, &h, br#"{"data":{"type":"webhooks","id":">id<"}}"#, None, now), Ok(()));
}

// ------------------------------------------------------------------ Twilio
// twilio/twilio-python, tests/unit/test_request_validator.py: token "12345",
// URL https://mycompany.com/myapp.php?foo=1&bar=2 and five form fields.
const TWILIO_FORM: &str =
    "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

fn twilio(public_url: &str) -> Twilio {
    Twilio::new(&secrets(&["12345"]), public_url)
}

#[test]
fn twilio_published_vectors() {
    let now = SystemTime::now();
    let query = Some("foo=1&bar=2");
    let sig = |s: &str| headers(&[("x-twilio-signature", s)]);
    let form = TWILIO_FORM.as_bytes();
    // The plain URL.
    assert_eq!(
        check(&twilio("https://mycompany.com/myapp.php"), &sig("RSOYDt4T1cUTdK1PDd93/VVr8B8="), form, query, now),
        Ok(())
    );
    // Signed with ":443", validated without it, and the other way round.
    assert_eq!(
        check(&twilio("https://mycompany.com/myapp.php"), &sig("kvajT1Ptam85bY51eRf/AJRuM3w="), form, query, now),
        Ok(())
    );
    assert_eq!(
        check(&twilio("https://mycompany.com:443/myapp.php"), &sig("RSOYDt4T1cUTdK1PDd93/VVr8B8="), form, query, now),
        Ok(())
    );
    // http with :80 written out.
    assert_eq!(
        check(&twilio("http://mycompany.com:80/myapp.php"), &sig("0ZXoZLH/DfblKGATFgpif+LLRf4="), form, query, now),
        Ok(())
    );
    // A non-default port is part of what is signed.
    assert_eq!(
        check(&twilio("http://mycompany.com:1234/myapp.php"), &sig("Zmvh+3yNM1Phv2jhDCwEM3q5ebU="), form, query, now),
        Ok(())
    );
    // Repeated fields sort by name, then value.
    let dup = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
    assert_eq!(
        check(&twilio("https://mycompany.com/myapp.php"), &sig("IK+Dwps556ElfBT0I3Rgjkr1wJU="), dup, query, now),
        Ok(())
    );
    // Negative: other query, other field value, other token.
    assert_eq!(
        check(
            &twilio("https://mycompany.com/myapp.php"),
            &sig("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            form,
            Some("foo=2&bar=2"),
            now
        ),
        Err(VerifyError::BadSignature)
    );
    let tampered = TWILIO_FORM.replace("Digits=1234", "Digits=1235");
    assert_eq!(
        check(
            &twilio("https://mycompany.com/myapp.php"),
            &sig("RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            tampered.as_bytes(),
            query,
            now
        ),
        Err(VerifyError::BadSignature)
    );
    let other = Twilio::new(&secrets(&["54321"]), "https://mycompany.com/myapp.php");
    assert_eq!(check(&other, &sig("RSOYDt4T1cUTdK1PDd93/VVr8B8="), form, query, now), Err(VerifyError::BadSignature));
}

#[test]
fn twilio_json_body_with_body_sha256() {
    let body = br#"{"property": "value", "boolean": true}"#;
    let query = "foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    let h = headers(&[("x-twilio-signature", "a9nBmqA0ju/hNViExpshrM61xv4=")]);
    let s = twilio("https://mycompany.com/myapp.php");
    assert_eq!(check(&s, &h, body, Some(query), SystemTime::now()), Ok(()));
    // A body that does not hash to bodySHA256 fails even with a valid URL signature.
    assert_eq!(
        check(&s, &h, br#"{"property": "value", "boolean": false}"#, Some(query), SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
}

// ------------------------------------------------------- Standard Webhooks
// standard-webhooks/standard-webhooks, libraries/go/webhook_asymmetric_test.go
// (TestAsymmetricWebhookSign): the seed is the 32 ASCII bytes
// "TESTSIGNINGKEYDONOTUSETHISFORANY", signing the spec's sample message.
#[test]
fn standard_webhooks_v1a_published_vector() {
    let signer = StandardWebhooks::new(&secrets(&["whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="]), None).unwrap();
    let expected = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
    let body = br#"{"test": 2432232314}"#;
    let signed = signer.sign(body, at(1_614_265_330), "msg_p5jXN8AQM9LWM0D4loKWxJek").unwrap();
    assert_eq!(signed[2].1, expected);
    // Verified with the public key alone (derived from that seed).
    let verifier =
        StandardWebhooks::new(&secrets(&["whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="]), None).unwrap();
    let h = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", expected),
    ]);
    assert_eq!(check(&verifier, &h, body, None, at(1_614_265_330)), Ok(()));
    assert_eq!(
        check(&verifier, &h, br#"{"test": 2432232315}"#, None, at(1_614_265_330)),
        Err(VerifyError::BadSignature)
    );
}

// ------------------------------------------------ every scheme, round trip

/// One of each scheme, configured as a user would.
pub(crate) fn all_schemes() -> Vec<(&'static str, Box<dyn Scheme>)> {
    let hmac = HmacOptions {
        header: "X-Signature".into(),
        algorithm: crate::ingress::verify::Algorithm::Sha1,
        encoding: Encoding::Base64,
        prefix: "sha1=".into(),
        template: Template::parse("{id}.{timestamp}.{body}").unwrap(),
        timestamp_header: Some("X-Timestamp".into()),
        id_header: Some("X-Id".into()),
        tolerance: Duration::from_secs(300),
    };
    vec![
        (
            "standard-webhooks",
            Box::new(StandardWebhooks::new(&secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]), None).unwrap()),
        ),
        (
            "standard-webhooks-v1a",
            Box::new(
                StandardWebhooks::new(&secrets(&["whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="]), None).unwrap(),
            ),
        ),
        ("github", Box::new(GenericHmac::github(&secrets(&["gh"])))),
        ("shopify", Box::new(GenericHmac::shopify(&secrets(&["shp"])))),
        ("stripe", Box::new(Stripe::new(&secrets(&["whsec_stripe"]), None))),
        ("slack", Box::new(Slack::new(&secrets(&["slk"]), None))),
        ("paddle", Box::new(Paddle::new(&secrets(&["pdl_ntf_x"]), None))),
        ("square", Box::new(Square::new(&secrets(&["sq"]), "https://hooks.example.com/webhooks/square"))),
        ("twilio", Box::new(Twilio::new(&secrets(&["tw"]), "https://hooks.example.com/webhooks/twilio"))),
        ("hmac", Box::new(GenericHmac::new(hmac, &secrets(&["generic"])).unwrap())),
        ("basic", Box::new(Basic::new(&secrets(&["user:pass"])).unwrap())),
        ("token", Box::new(Token::new(&secrets(&["tok"]), None, None))),
    ]
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Schemes that authenticate the body (basic and token do not).
    fn body_signing() -> Vec<(&'static str, Box<dyn Scheme>)> {
        all_schemes().into_iter().filter(|(n, _)| !matches!(*n, "basic" | "token")).collect()
    }

    fn signed(scheme: &dyn Scheme, body: &[u8], now: SystemTime) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in scheme.sign(body, now, "msg_prop").unwrap() {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
        }
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sign_then_verify_then_any_byte_flip_fails(
            body in proptest::collection::vec(any::<u8>(), 1..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let now = SystemTime::now();
            for (name, scheme) in body_signing() {
                // Twilio signs form fields, not bytes: give it a form body.
                let body = if name == "twilio" { format!("Body={}", hex::encode(&body)).into_bytes() } else { body.clone() };
                let h = signed(scheme.as_ref(), &body, now);
                prop_assert_eq!(check(scheme.as_ref(), &h, &body, None, now), Ok(()), "{}", name);
                let mut tampered = body.clone();
                let i = flip.index(body.len());
                tampered[i] ^= 1 << bit;
                if name == "twilio" && form_urlencoded::parse(&tampered).eq(form_urlencoded::parse(&body)) {
                    continue; // a flip that decodes to the same fields is the same request
                }
                prop_assert_eq!(check(scheme.as_ref(), &h, &tampered, None, now), Err(VerifyError::BadSignature), "{}", name);
            }
        }

        #[test]
        fn credentials_round_trip_and_others_fail(token in "[!-~]{1,40}") {
            let s = Token::new(&secrets(&[&token]), Some("X-Api-Key"), None);
            let h = headers(&[("x-api-key", &token)]);
            prop_assert_eq!(check(&s, &h, b"", None, SystemTime::now()), Ok(()));
            let h = headers(&[("x-api-key", &format!("{token}x"))]);
            prop_assert_eq!(check(&s, &h, b"", None, SystemTime::now()), Err(VerifyError::BadSignature));
        }
    }
}

// ----------------------------------------------- duplicated and empty lists

#[test]
fn duplicated_and_empty_signature_lists() {
    let now = at(1_614_265_330);
    let sw = StandardWebhooks::new(&secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]), None).unwrap();
    let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let sw_headers = |sig: &str| {
        headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", sig),
        ])
    };
    let body = br#"{"test": 2432232314}"#;
    // The same valid signature twice is still valid; a bad one repeated is not.
    assert_eq!(check(&sw, &sw_headers(&format!("{good} {good}")), body, None, now), Ok(()));
    assert_eq!(check(&sw, &sw_headers("v1,AAAA v1,AAAA v1,AAAA"), body, None, now), Err(VerifyError::BadSignature));
    // Empty lists and separators only.
    for empty in ["", " ", "  ", "v1,", "v1, v1,", ","] {
        assert_eq!(check(&sw, &sw_headers(empty), body, None, now), Err(VerifyError::BadSignature), "{empty:?}");
    }
    // Stripe: repeated v1 entries, a repeated t (the last one wins, and it is signed).
    let stripe = Stripe::new(&secrets(&["webhook_secret"]), None);
    let v1 = "v1=f0bdba6d4eacbd8ad8a3bbadd7248e633ec1477f7899c124c51b39405fa36613";
    let h = headers(&[("stripe-signature", &format!("t=1533204620,{v1},{v1}"))]);
    assert_eq!(check(&stripe, &h, STRIPE_BODY, None, at(1_533_204_620)), Ok(()));
    let h = headers(&[("stripe-signature", &format!("t=1533204620,t=1533204621,{v1}"))]);
    assert_eq!(check(&stripe, &h, STRIPE_BODY, None, at(1_533_204_620)), Err(VerifyError::BadSignature));
    for empty in ["t=1533204620", "t=1533204620,", "t=1533204620,v1=", ",,,"] {
        let h = headers(&[("stripe-signature", empty)]);
        assert!(check(&stripe, &h, STRIPE_BODY, None, at(1_533_204_620)).is_err(), "{empty:?}");
    }
    // Paddle: only separators.
    let paddle = Paddle::new(&secrets(&["k"]), None);
    let h = headers(&[("paddle-signature", "ts=1614265330;;;h1=;")]);
    assert_eq!(check(&paddle, &h, b"x", None, now), Err(VerifyError::BadSignature));
}
