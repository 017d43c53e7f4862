//! Every signature scheme through the real ingress: a request signed as the
//! provider signs it is accepted (202) and published; the same request
//! tampered with is refused (401) and publishes nothing.

use std::time::Duration;

use crate::helpers::TestApp;
use hookwire::operator::letters::Pile;

/// One source per scheme, configured as a user would (see the README).
const SOURCES: &str = r#"
[sources.sw]
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[sources.swed]
scheme = "standard-webhooks"
secrets = ["whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="]
[sources.gh]
scheme = "github"
secrets = ["It's a Secret to Everybody"]
[sources.stripe]
scheme = "stripe"
secrets = ["whsec_test_secret"]
[sources.shop]
scheme = "shopify"
secrets = ["shpss_secret"]
[sources.slack]
scheme = "slack"
secrets = ["8f742231b10e8888abcd99yyyzzz85a5"]
[sources.paddle]
scheme = "paddle"
secrets = ["pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh"]
[sources.square]
scheme = "square"
secrets = ["Ibxx_5AKakO-3qeNVR61Dw"]
public_url = "https://hooks.example.com/webhooks/square"
[sources.twilio]
scheme = "twilio"
secrets = ["12345"]
public_url = "https://hooks.example.com/webhooks/twilio"
[sources.custom]
scheme = "hmac"
secrets = ["generic-secret"]
header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
template = "{timestamp}.{body}"
timestamp_header = "X-Timestamp"
[sources.basicauth]
scheme = "basic"
secrets = ["hooks:s3cret"]
[sources.tok]
scheme = "token"
secrets = ["t0k3n"]
header = "X-Api-Key"
[sources.open]
scheme = "none"
"#;

#[tokio::test]
async fn every_scheme_accepts_its_signature_and_refuses_tampering() {
    let app = TestApp::start(SOURCES).await;
    let unrouted = Pile::Unrouted;
    let cases: &[(&str, &[u8])] = &[
        ("sw", br#"{"type":"invoice.paid"}"#),
        ("swed", br#"{"type":"invoice.paid"}"#),
        ("gh", br#"{"zen":"Design for failure."}"#),
        ("stripe", br#"{"id":"evt_1","type":"charge.succeeded"}"#),
        ("shop", br#"{"id":1,"total":"9.99"}"#),
        ("slack", br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}"#),
        ("paddle", br#"{"event_id":"evt_01","event_type":"transaction.completed"}"#),
        ("square", br#"{"type":"payment.created","event_id":"e1"}"#),
        ("twilio", b"MessageSid=SM1&Body=hello+there&From=%2B15550001111"),
        ("custom", br#"{"kind":"x"}"#),
        ("basicauth", br#"{"a":1}"#),
        ("tok", br#"{"a":1}"#),
        ("open", br#"{"a":1}"#),
    ];
    let mut published = 0;
    for (source, body) in cases {
        let headers = app.sign(source, body, &format!("msg_{source}"));
        let mut refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if !refs.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            refs.push(("content-type", "application/json"));
        }
        let response = app.post(source, &refs, body.to_vec()).await;
        assert_eq!(response.status(), 202, "{source}: {}", response.text().await.unwrap());
        published += 1;
        app.wait_letters(&unrouted, published, Duration::from_secs(10)).await;

        if *source == "open" {
            continue; // verifies nothing by design
        }
        // The body is authenticated by every scheme but the credential ones,
        // which instead refuse the request without its header.
        let refused = if matches!(*source, "basicauth" | "tok") {
            let without: Vec<(&str, &str)> =
                refs.iter().copied().filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).collect();
            app.post(source, &without, body.to_vec()).await
        } else {
            let mut tampered = body.to_vec();
            let last = tampered.len() - 2;
            tampered[last] ^= 0x01;
            app.post(source, &refs, tampered).await
        };
        assert_eq!(refused.status(), 401, "{source}");
        assert_eq!(refused.headers()["content-type"], "application/problem+json");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.letter_count(&unrouted).await, published, "a refused request was published");

    // Provider defaults for event id and type reached the envelope.
    let events = app.letters(&unrouted).await;
    let find = |source: &str| events.iter().find(|(e, _)| e.source == source).unwrap().0.clone();
    assert_eq!(find("stripe").id, "evt_1");
    assert_eq!(find("stripe").event_type, "charge.succeeded");
    assert_eq!(find("paddle").event_type, "transaction.completed");
    assert_eq!(find("slack").id, "Ev1");
    assert_eq!(find("slack").event_type, "message");
    assert_eq!(find("square").event_type, "payment.created");
    assert_eq!(find("sw").id, "msg_sw");
    assert_eq!(find("twilio").content_type.as_deref(), Some("application/x-www-form-urlencoded"));
}

#[tokio::test]
async fn slack_url_verification_is_answered_and_not_published() {
    let app = TestApp::start(SOURCES).await;
    let body = br#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let headers = app.sign("slack", body, "");
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let response = app.post("slack", &refs, body.to_vec()).await;
    assert_eq!(response.status(), 200);
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
    // An unsigned handshake is refused like anything else.
    assert_eq!(app.post("slack", &[], body.to_vec()).await.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.letter_count(&Pile::Unrouted).await, 0);
}

#[tokio::test]
async fn twilio_signature_covers_the_query_string() {
    let app = TestApp::start(SOURCES).await;
    let body = b"MessageSid=SM1&Body=hi";
    // hookwire sign signs public_url without a query; the same signature
    // with a query added to the request URL no longer matches.
    let headers = app.sign("twilio", body, "");
    let mut request = app.http.post(format!("{}?extra=1", app.webhook_url("twilio"))).body(body.to_vec());
    for (k, v) in &headers {
        request = request.header(k, v);
    }
    assert_eq!(request.send().await.unwrap().status(), 401);
}
