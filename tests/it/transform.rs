//! Filters and transforms (jq) through the real pipeline.

use std::time::Duration;

use crate::helpers::{Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn filter_delivers_only_what_yields_true() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.big]
topics = ["acme.#"]
url = "{}"
filter = '.body.amount > 100 and .headers["user-agent"] == "acme-billing/1"'
"#,
        sink.url("/")
    ))
    .await;
    let post = |id: &'static str, amount: u32, agent: &'static str| {
        let app = &app;
        async move {
            let body = format!(r#"{{"type":"invoice.paid","amount":{amount}}}"#);
            let mut headers = app.sign("acme", body.as_bytes(), id);
            headers.push(("user-agent".into(), agent.into()));
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(app.post("acme", &refs, body).await.status(), 202);
        }
    };
    post("small", 50, "acme-billing/1").await;
    post("other-agent", 500, "curl/8").await;
    post("big", 500, "acme-billing/1").await;
    let got = sink.wait_for(1, T).await;
    let work = app.topology.subscription("big").unwrap().clone();
    app.wait_depth(&work.work, 0, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = sink.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
    assert_eq!(ids, ["big"]);
    assert_eq!(got[0].header("webhook-id"), "big");
    assert_eq!(app.letter_count(&Pile::Dead("big".into())).await, 0, "filtered events are acked, not dead-lettered");
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_deliveries_total{subscription=\"big\",outcome=\"filtered\"} 2"), "{metrics}");
}

#[tokio::test]
async fn transform_output_is_the_body_byte_for_byte() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.shaped]
topics = ["acme.#"]
url = "{}"
transform = '{{id, kind: .type, amount: .body.data.amount, currency: (.body.data.currency | ascii_upcase), customer: .body.data.customer}}'
"#,
        sink.url("/")
    ))
    .await;
    let body = r#"{"type":"invoice.paid","data":{"amount":4200,"currency":"eur","customer":"cus_42","lines":[1,2,3]}}"#;
    assert_eq!(app.post_acme("msg_shape", body).await.status(), 202);
    let got = sink.wait_for(1, T).await;
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        r#"{"id":"msg_shape","kind":"invoice.paid","amount":4200,"currency":"EUR","customer":"cus_42"}"#
    );
    assert_eq!(got[0].header("content-type"), "application/json");
    assert_eq!(got[0].header("webhook-id"), "msg_shape");
}

#[tokio::test]
async fn failing_transform_dead_letters_without_retrying() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.broken]
topics = ["acme.#"]
url = "{}"
retry = ["50ms", "50ms"]
transform = '{{total: (.body.amount + "x")}}'
"#,
        sink.url("/")
    ))
    .await;
    let body = r#"{"type":"invoice.paid","amount":1}"#;
    assert_eq!(app.post_acme("msg_broken", body).await.status(), 202);
    let dead = Pile::Dead("broken".into());
    app.wait_letters(&dead, 1, T).await;
    let letters = app.letters(&dead).await;
    let (envelope, state) = &letters[0];
    assert_eq!(envelope.body.as_ref(), body.as_bytes(), "the original event is kept");
    assert_eq!(state.dead_letter_reason.as_deref(), Some("transform_failed"));
    assert_eq!(state.attempts, 1);
    assert!(state.history[0].error.starts_with("transform:"), "{:?}", state.history);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty(), "nothing is sent when the transform fails");
}

#[test]
fn check_rejects_a_syntax_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[subscriptions.billing]\ntopics = [\"a.#\"]\nurl = \"http://x/\"\nfilter = \".body.amount >\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("subscriptions.billing.filter: line 1, column 15: expected term"), "{stderr}");
}
