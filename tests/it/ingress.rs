//! Bad input gets a clear problem+json error and publishes nothing.

use hookwire::operator::letters::Pile;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::{ACME_SECRET, TestApp};

async fn problem(response: reqwest::Response, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("urn:hookwire:problem:{slug}"), "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string());
    let text = body.to_string();
    assert!(!text.contains(ACME_SECRET) && !text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "secret leaked: {text}");
    body
}

#[tokio::test]
async fn rejections_are_problems_and_publish_nothing() {
    // No subscriptions: anything published would be kept as unrouted.
    let app = TestApp::start("").await;
    let body = r#"{"type":"invoice.paid"}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let valid = app.sign("acme", body.as_bytes(), "msg_1");
    let header = |name: &str| valid.iter().find(|(k, _)| k == name).unwrap().1.clone();

    // Wrong signature (signed over another body): the detail must not reveal
    // the expected signature.
    let expected = header("webhook-signature");
    let other = app.sign("acme", b"{}", "msg_1");
    let wrong_sig = other.iter().find(|(k, _)| k == "webhook-signature").unwrap().1.clone();
    let ts = header("webhook-timestamp");
    let r = app
        .post("acme", &[("webhook-id", "msg_1"), ("webhook-timestamp", &ts), ("webhook-signature", &wrong_sig)], body)
        .await;
    let p = problem(r, 401, "bad-signature").await;
    assert!(!p.to_string().contains(&expected[3..]));

    // Missing signature header.
    let r = app.post("acme", &[("webhook-id", "msg_1"), ("webhook-timestamp", &ts)], body).await;
    let p = problem(r, 401, "missing-header").await;
    assert!(p["detail"].as_str().unwrap().contains("webhook-signature"));

    // Stale timestamp, correctly signed for it: rejected for its age alone.
    let stale = (now - 600).to_string();
    let key =
        hookwire::ingress::schemes::StandardWebhooks::new(&[hookwire::config::Secret::new(ACME_SECRET)], None).unwrap();
    let stale_sig = {
        use hookwire::ingress::verify::Scheme;
        key.sign(body.as_bytes(), UNIX_EPOCH + Duration::from_secs(now - 600), "msg_1").unwrap()[2].1.clone()
    };
    let r = app
        .post(
            "acme",
            &[("webhook-id", "msg_1"), ("webhook-timestamp", &stale), ("webhook-signature", &stale_sig)],
            body,
        )
        .await;
    let p = problem(r, 401, "stale-timestamp").await;
    assert_eq!(p["detail"], "timestamp outside tolerance");

    // Future-dated the same way.
    let future = (now + 600).to_string();
    let r = app
        .post(
            "acme",
            &[("webhook-id", "msg_1"), ("webhook-timestamp", &future), ("webhook-signature", &stale_sig)],
            body,
        )
        .await;
    problem(r, 401, "stale-timestamp").await;

    // Oversized body (limit 4096 in tests), declared and streamed.
    let big = format!(r#"{{"type":"x","pad":"{}"}}"#, "a".repeat(5000));
    let signed = app.sign("acme", big.as_bytes(), "msg_big");
    let refs: Vec<(&str, &str)> = signed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    problem(app.post("acme", &refs, big.clone()).await, 413, "too-large").await;
    let stream = futures_util::stream::iter(
        big.into_bytes().chunks(1000).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let r = app.post("acme", &refs, reqwest::Body::wrap_stream(stream)).await;
    problem(r, 413, "too-large").await;

    // Unknown source.
    let p = problem(app.post("nosuch", &[], body).await, 404, "unknown-source").await;
    assert!(p["detail"].as_str().unwrap().contains("nosuch"));

    // An unusable event id (spaces) even though correctly signed.
    let bad_id = app.sign("acme", body.as_bytes(), "has space");
    let refs: Vec<(&str, &str)> = bad_id.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    problem(app.post("acme", &refs, body).await, 400, "malformed-request").await;

    // Nothing was published by any of that...
    let unrouted = Pile::Unrouted;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.letter_count(&unrouted).await, 0);
    // ...while one valid request is, so the check above can see a publish.
    assert_eq!(app.post_acme("msg_ok", body).await.status(), 202);
    app.wait_letters(&unrouted, 1, Duration::from_secs(10)).await;

    let metrics = app.metrics().await;
    for outcome in ["bad_signature", "missing_header", "stale_timestamp", "too_large", "malformed"] {
        assert!(
            metrics.contains(&format!("hookwire_ingress_requests_total{{source=\"acme\",outcome=\"{outcome}\"}}")),
            "no {outcome} count in {metrics}"
        );
    }
    assert!(metrics.contains("hookwire_ingress_requests_total{source=\"_unknown\",outcome=\"unknown_source\"}"));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start("").await;
    let health = app.http.get(app.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_message_the_broker_returns_is_a_503_never_a_202() {
    // No subscriptions: events reach only the alternate exchange's queue.
    // (With the archive on, the archive's copy counts as stored: see
    // docs/DECISIONS.md, "The archive hangs off ns.accepted".)
    let app = TestApp::start("[archive]\nenabled = false\n").await;
    assert_eq!(app.post_acme("msg_kept", r#"{"type":"a"}"#).await.status(), 202);
    // Without that queue the broker cannot route the mandatory publish and
    // returns it (basic.return) before acking: the sender must not get a 202.
    app.delete_queue(&app.topology.letters).await;
    let response = app.post_acme("msg_returned", r#"{"type":"a"}"#).await;
    let p = problem(response, 503, "broker-unavailable").await;
    assert!(p["detail"].as_str().unwrap().contains("retry"));
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_publish_duration_seconds_count{outcome=\"returned\"}"), "{metrics}");
}
