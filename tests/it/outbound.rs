//! What destinations see and how their answers steer retries: signed
//! deliveries (checked with the reference Standard Webhooks library),
//! credentials and static headers, `Retry-After`, and `dead_letter_on`.

use std::{process::Stdio, time::Duration};

use base64::Engine;
use tokio::io::AsyncWriteExt;

use crate::helpers::{Behavior, Received, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

/// The interpreter with the `standardwebhooks` package: the venv
/// `deploy/test.sh` makes, or `HOOKWIRE_TEST_PYTHON`.
fn python() -> String {
    std::env::var("HOOKWIRE_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python").to_owned())
}

/// Whether the reference library accepts the delivery under `secret`.
async fn reference_verifies(received: &Received, secret: &str) -> bool {
    let headers: serde_json::Map<String, serde_json::Value> =
        received.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().into())).collect();
    let input = serde_json::json!({
        "secret": secret,
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&received.body),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/verify_standard_webhooks.py");
    let mut child =
        tokio::process::Command::new(python()).arg(script).stdin(Stdio::piped()).spawn().unwrap_or_else(|e| {
            panic!("{}: {e}; run deploy/test.sh, which installs the standardwebhooks package", python())
        });
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.code() != Some(2), "the verifier script failed to run (is standardwebhooks installed?)");
    status.success()
}

#[tokio::test]
async fn signed_authenticated_deliveries_verify_with_the_reference_library() {
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!(
        r#"
[subscriptions.signed]
topics = ["acme.#"]
url = "{}"
method = "PUT"
signing_secret = ["whsec_c2VjcmV0LWN1cnJlbnQtMDEyMzQ1Njc4OWFi", "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA"]
auth = {{ bearer = "t0k3n" }}
headers = {{ X-Team = "billing" }}

[subscriptions.basic]
topics = ["acme.#"]
url = "{}"
auth = {{ basic = {{ user = "hook", password = "pa:ss" }} }}

[subscriptions.inline]
topics = ["acme.#"]
url = "{}"
"#,
        sink.url("/signed"),
        sink.url("/basic"),
        sink.url("/inline").replacen("http://", "http://hook:p%40ss@", 1)
    );
    let app = TestApp::start(&extra).await;
    let body = r#"{"type":"invoice.paid","amount":42}"#;
    assert_eq!(app.post_acme("msg_signed", body).await.status(), 202);
    let got = sink.wait_for(3, T).await;
    let signed = got.iter().find(|r| r.path == "/signed").unwrap();
    let basic = got.iter().find(|r| r.path == "/basic").unwrap();
    let inline = got.iter().find(|r| r.path == "/inline").unwrap();

    assert_eq!(signed.method, "PUT");
    assert_eq!(signed.header("authorization"), "Bearer t0k3n");
    assert_eq!(signed.header("x-team"), "billing");
    assert_eq!(signed.header("webhook-id"), "msg_signed");
    assert_eq!(signed.header("webhook-signature").split(' ').count(), 2, "one signature per secret");
    // Both the current and the rotating-out secret verify, with the reference library.
    assert!(reference_verifies(signed, "whsec_c2VjcmV0LWN1cnJlbnQtMDEyMzQ1Njc4OWFi").await);
    assert!(reference_verifies(signed, "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA").await);
    assert!(!reference_verifies(signed, "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA").await);

    assert_eq!(basic.method, "POST");
    // "hook:pa:ss" (RFC 7617: the password may contain ':').
    assert_eq!(basic.header("authorization"), "Basic aG9vazpwYTpzcw==");
    assert!(basic.headers.get("webhook-signature").is_none());

    // Credentials in the URL go as Basic auth, percent-decoded ("hook:p@ss"),
    // and not in the Host header.
    assert_eq!(inline.header("authorization"), "Basic aG9vazpwQHNz");
    let port = sink.url("/").trim_start_matches("http://127.0.0.1:").trim_end_matches('/').to_owned();
    assert_eq!(inline.header("host"), format!("127.0.0.1:{port}"));
    assert!(inline.header("user-agent").starts_with("hookwire/"));
    assert_eq!(inline.header("accept"), "*/*");
}

#[tokio::test]
async fn retry_after_delays_the_next_attempt_at_least_that_long() {
    let sink = Sink::start(Behavior::Respond {
        times: 1,
        status: 429,
        headers: vec![("retry-after", "2".to_owned())],
        body: "slow down",
    })
    .await;
    let app = TestApp::start(&format!(
        "[subscriptions.limited]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"100ms\", \"5s\"]\n",
        sink.url("/")
    ))
    .await;
    assert_eq!(app.post_acme("msg_429", r#"{"type":"a"}"#).await.status(), 202);
    let got = sink.wait_for(2, T).await;
    let waited = got[1].at - got[0].at;
    // Scheduled 100ms, asked 2s: at least 2s, within the 5s queue (+10% jitter).
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(waited < Duration::from_millis(2200 + 500), "retried after {waited:?}");
    assert_eq!(got[1].header("hookwire-attempt"), "2");
}

#[tokio::test]
async fn dead_letter_on_statuses_skip_retries_and_keep_the_response() {
    let sink = Sink::start(Behavior::Respond {
        times: 100,
        status: 422,
        headers: vec![],
        body: "{\"error\":\"amount must be positive\"}",
    })
    .await;
    let gone = Sink::start(Behavior::Status(410)).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.strict]
topics = ["acme.#"]
url = "{}"
retry = ["50ms", "50ms"]
dead_letter_on = [400, 422]
[subscriptions.gone]
topics = ["acme.#"]
url = "{}"
retry = ["50ms", "50ms"]
"#,
        sink.url("/"),
        gone.url("/")
    ))
    .await;
    assert_eq!(app.post_acme("msg_422", r#"{"type":"a"}"#).await.status(), 202);
    for name in ["strict", "gone"] {
        let dead = Pile::Dead(name.into());
        app.wait_letters(&dead, 1, T).await;
        let letters = app.letters(&dead).await;
        let state = &letters[0].1;
        assert_eq!(state.attempts, 1, "{name}: no retries");
        assert_eq!(state.dead_letter_reason.as_deref(), Some("dead_letter_status"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(gone.received().len(), 1, "410 Gone dead-letters by default");
    let strict = app.topology.subscription("strict").unwrap().clone();
    assert!(app.depth(&strict.retries[0].name).await == 0);
}

#[tokio::test]
async fn the_last_response_body_is_kept_in_the_history() {
    let sink =
        Sink::start(Behavior::Respond { times: 100, status: 500, headers: vec![], body: "database is down" }).await;
    let app = TestApp::start(&format!(
        "[subscriptions.broken]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"50ms\"]\n",
        sink.url("/")
    ))
    .await;
    assert_eq!(app.post_acme("msg_500", r#"{"type":"a"}"#).await.status(), 202);
    let dead = Pile::Dead("broken".into());
    app.wait_letters(&dead, 1, T).await;
    let letters = app.letters(&dead).await;
    let history = &letters[0].1.history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].response, None, "only the last attempt keeps its response");
    assert_eq!(history[1].response.as_deref(), Some("database is down"));
    assert_eq!(history[1].error, "HTTP 500");
}
