//! Operators beyond dead letters: pause/resume across processes, unrouted
//! events routed again after a subscription is added, time-window replay from
//! the archive, and the API's refusals.

use std::time::{Duration, SystemTime};

use hookwire::app::{self, Role};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

fn subscription(name: &str, topics: &str, sink: &Sink) -> String {
    format!("[subscriptions.{name}]\ntopics = [{topics}]\nurl = \"{}\"\nretry = [\"1s\"]\n", sink.url("/hooks"))
}

#[tokio::test]
async fn pause_stops_deliveries_in_every_process_and_resume_restarts_them() {
    let sink = Sink::start(Behavior::Ok).await;
    // Metrics are one registry per test process, labelled by subscription
    // name: a name no other test uses keeps their gauges apart.
    // Small prefetch, so most events wait in the queue itself.
    let app = TestApp::operator(&(subscription("payroll", "\"acme.#\"", &sink) + "concurrency = 2\n")).await;
    // A second worker process on the same namespace: pause must reach it too.
    let second = app::start(app.config.clone(), Role::Worker).await.unwrap();

    let (status, paused) = app.api_send(Method::POST, "/api/v1/subscriptions/payroll/pause", json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused, json!({"subscription": "payroll", "paused": true}));
    let list = app.api_get("/api/v1/subscriptions").await;
    assert_eq!(list[0]["paused"], true);

    for i in 0..20 {
        assert_eq!(app.post_acme(&format!("evt_p{i}"), r#"{"type":"invoice.paid"}"#).await.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sink.received().is_empty(), "paused, yet {} delivered", sink.received().len());
    let work = app.topology.subscription("payroll").unwrap().work.clone();
    assert!(app.depth(&work).await > 0, "events keep queueing while paused");
    assert!(app.metrics().await.contains("hookwire_subscription_paused{subscription=\"payroll\"} 1"));

    let (status, resumed) = app.api_send(Method::POST, "/api/v1/subscriptions/payroll/resume", json!({})).await;
    assert_eq!((status, resumed["paused"].as_bool()), (200, Some(false)));
    sink.wait_for(20, T).await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_process_started_while_paused_stays_paused() {
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator(&subscription("billing", "\"acme.#\"", &sink)).await;
    app.api_send(Method::POST, "/api/v1/subscriptions/billing/pause", json!({})).await;
    app.stop().await;
    app.restart().await;
    assert_eq!(app.post_acme("evt_1", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(sink.received().is_empty());
    assert_eq!(app.api_get("/api/v1/subscriptions").await[0]["paused"], true);
    app.api_send(Method::POST, "/api/v1/subscriptions/billing/resume", json!({})).await;
    sink.wait_for(1, T).await;
}

#[tokio::test]
async fn unrouted_events_are_listed_and_routed_again_once_a_subscription_wants_them() {
    let sink = Sink::start(Behavior::Ok).await;
    let mut app = TestApp::operator(&subscription("billing", "\"acme.invoice.*\"", &sink)).await;
    // The archive is on (the default) and still, unmatched events are kept.
    assert!(app.topology.archive.is_some());
    assert_eq!(app.post_acme("evt_routed", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    for i in 0..3 {
        let response = app.post_acme(&format!("evt_ship{i}"), r#"{"type":"shipment.sent"}"#).await;
        assert_eq!(response.status(), 202);
    }
    assert_eq!(app.post_acme("evt_other", r#"{"type":"other.thing"}"#).await.status(), 202);
    sink.wait_for(1, T).await;
    app.wait_letters(&Pile::Unrouted, 4, T).await;
    let page = app.api_get("/api/v1/unrouted").await;
    let ids: Vec<&str> = page["items"].as_array().unwrap().iter().map(|i| i["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt_ship0", "evt_ship1", "evt_ship2", "evt_other"]);
    assert_eq!(page["items"][0]["type"], "shipment.sent");

    // Nothing wants them yet: a replay leaves them where they are.
    let (_, nothing) = app.api_send(Method::POST, "/api/v1/unrouted/replay", json!({"all": true})).await;
    assert_eq!((nothing["matched"].as_u64(), nothing["skipped"].as_u64()), (Some(4), Some(4)), "{nothing}");

    // Add a subscription for shipments, restart, replay.
    app.stop().await;
    let shipping = Sink::start(Behavior::Ok).await;
    app.add_subscriptions(&subscription("shipping", "\"acme.shipment.*\"", &shipping));
    app.restart().await;
    let (_, dry) =
        app.api_send(Method::POST, "/api/v1/unrouted/replay", json!({"type": "shipment.*", "dry_run": true})).await;
    assert_eq!((dry["matched"].as_u64(), dry["replayed"].as_u64()), (Some(3), Some(0)));
    let (_, replayed) = app.api_send(Method::POST, "/api/v1/unrouted/replay", json!({"all": true})).await;
    assert_eq!((replayed["replayed"].as_u64(), replayed["skipped"].as_u64()), (Some(3), Some(1)), "{replayed}");
    let got = shipping.wait_for(3, T).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    assert_eq!(ids, ["evt_ship0", "evt_ship1", "evt_ship2"]);
    app.wait_letters(&Pile::Unrouted, 1, T).await;
    // Routed again through the topic exchange only: billing got no copies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn archive_replay_redelivers_exactly_the_window_with_original_ids() {
    let sink = Sink::start(Behavior::Ok).await;
    let other = Sink::start(Behavior::Ok).await;
    let extra = format!(
        "{}{}",
        subscription("billing", "\"acme.invoice.*\"", &sink),
        subscription("audit", "\"acme.#\"", &other)
    );
    let app = TestApp::operator(&extra).await;
    let post = |id: &'static str, kind: &'static str| {
        let app = &app;
        async move {
            let body = format!(r#"{{"type":"{kind}"}}"#);
            assert_eq!(app.post_acme(id, &body).await.status(), 202);
        }
    };
    post("evt_before", "invoice.paid").await;
    sink.wait_for(1, T).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let from = SystemTime::now();
    post("evt_in1", "invoice.paid").await;
    post("evt_skip", "customer.created").await; // not billing's topic
    post("evt_in2", "invoice.failed").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let to = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    post("evt_after", "invoice.paid").await;
    sink.wait_for(4, T).await;
    other.wait_for(5, T).await;

    let window = json!({
        "from": humantime::format_rfc3339_millis(from).to_string(),
        "to": humantime::format_rfc3339_millis(to).to_string(),
    });
    let mut dry = window.clone();
    dry["dry_run"] = json!(true);
    let (status, counted) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", dry).await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!((counted["matched"].as_u64(), counted["replayed"].as_u64()), (Some(2), Some(0)), "{counted}");
    let mut narrow = window.clone();
    narrow["type"] = json!("invoice.failed");
    narrow["dry_run"] = json!(true);
    let (_, narrowed) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", narrow).await;
    assert_eq!(narrowed["matched"], 1);

    let (_, replayed) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", window).await;
    assert_eq!(replayed["replayed"], 2, "{replayed}");
    let got = sink.wait_for(6, T).await;
    let again: Vec<&str> = got[4..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(again, ["evt_in1", "evt_in2"], "original ids, in order");
    assert!(got[4..].iter().all(|r| r.header("hookwire-attempt") == "1"));
    // Only the chosen subscription gets the replay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(other.received().len(), 5);
    assert_eq!(sink.received().len(), 6);

    // Bad windows are refused.
    for (bad, why) in [
        (json!({}), "from"),
        (json!({"from": "last tuesday"}), "from"),
        (json!({"from": "2026-11-21T10:00:00Z", "to": "2026-11-21T09:00:00Z"}), "later"),
    ] {
        let (status, problem) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", bad).await;
        assert_eq!(status, 400);
        assert!(problem["detail"].as_str().unwrap().contains(why), "{problem}");
    }
}

#[tokio::test]
async fn window_replay_without_an_archive_is_a_conflict() {
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!("{}[archive]\nenabled = false\n", subscription("billing", "\"acme.#\"", &sink));
    let app = TestApp::operator(&extra).await;
    let (status, problem) = app
        .api_send(Method::POST, "/api/v1/subscriptions/billing/replay", json!({"from": "2026-11-21T09:00:00Z"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(problem["type"], "urn:hookwire:problem:archive-disabled");
}

#[tokio::test]
async fn every_operator_route_needs_a_valid_token() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription("billing", "\"acme.#\"", &sink)).await;
    let routes = [
        (Method::GET, "/api/v1/subscriptions"),
        (Method::GET, "/api/v1/subscriptions/billing/dead-letters"),
        (Method::DELETE, "/api/v1/subscriptions/billing/dead-letters"),
        (Method::GET, "/api/v1/subscriptions/billing/dead-letters/evt_1"),
        (Method::POST, "/api/v1/subscriptions/billing/dead-letters/replay"),
        (Method::POST, "/api/v1/subscriptions/billing/pause"),
        (Method::POST, "/api/v1/subscriptions/billing/resume"),
        (Method::POST, "/api/v1/subscriptions/billing/replay"),
        (Method::GET, "/api/v1/unrouted"),
        (Method::DELETE, "/api/v1/unrouted"),
        (Method::GET, "/api/v1/unrouted/evt_1"),
        (Method::POST, "/api/v1/unrouted/replay"),
        (Method::GET, "/api/v1/openapi.json"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token-0123456789")] {
            let mut request = app.http.request(method.clone(), app.admin_url(path)).json(&json!({"all": true}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
        }
    }
    // Nothing was paused by the refused calls.
    assert_eq!(app.api_get("/api/v1/subscriptions").await[0]["paused"], false);
}

/// A pause while the circuit breaker's probe waits for an event must not
/// wedge the subscription: after resume, deliveries flow again.
#[tokio::test]
async fn pausing_while_the_breaker_probes_does_not_wedge_the_subscription() {
    let sink = Sink::start(Behavior::Status(503)).await;
    let extra = format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"2s\"]\n\
         circuit_breaker = {{ failures = 1, cooldown = \"100ms\" }}\n",
        sink.url("/hooks")
    );
    let app = TestApp::operator(&extra).await;
    // The first failure opens the breaker. The worker was already waiting
    // for the next event (admitted while closed), so the second one goes
    // out too; only then does the worker meet the open breaker.
    assert_eq!(app.post_acme("evt_1", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    sink.wait_for(1, T).await;
    assert_eq!(app.post_acme("evt_2", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    sink.wait_for(2, T).await;
    // After the cooldown the worker holds the probe slot and waits for an
    // event (both failed ones sit in the retry queue). Pause it there.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.api_send(Method::POST, "/api/v1/subscriptions/billing/pause", json!({})).await;
    sink.set(Behavior::Ok);
    app.api_send(Method::POST, "/api/v1/subscriptions/billing/resume", json!({})).await;
    let got = sink.wait_for(4, T).await;
    let mut retried: Vec<&str> = got[2..].iter().map(|r| r.header("webhook-id")).collect();
    retried.sort();
    assert_eq!(retried, ["evt_1", "evt_2"]);
}

/// Issue 14: `from` taken with microseconds right before an event arrives in
/// the same millisecond. Stored times keep milliseconds, so a bound compared
/// at full precision used to miss that event.
#[tokio::test]
async fn a_window_starting_within_the_first_events_millisecond_includes_it() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription("edge", "\"acme.#\"", &sink)).await;
    const ROUNDS: usize = 20;
    let mut starts = Vec::new();
    for i in 0..ROUNDS {
        let (id, body) = (format!("evt_edge_{i}"), format!(r#"{{"type":"edge.n{i}"}}"#));
        let mut request = app.http.post(app.webhook_url("acme")).header("content-type", "application/json");
        for (name, value) in app.sign("acme", body.as_bytes(), &id) {
            request = request.header(name, value);
        }
        let request = request.body(body);
        // Start just after a millisecond begins, so the event, sent at once,
        // arrives within the same millisecond as `from`.
        let from = loop {
            let now = SystemTime::now();
            if now.duration_since(std::time::UNIX_EPOCH).unwrap().subsec_micros() % 1000 < 50 {
                break humantime::format_rfc3339_micros(now).to_string();
            }
        };
        assert_eq!(request.send().await.unwrap().status(), 202);
        starts.push(from);
    }
    sink.wait_for(ROUNDS, T).await;
    let replays = starts.iter().enumerate().map(|(i, from)| {
        let window = json!({"from": from, "type": format!("edge.n{i}"), "dry_run": true});
        app.api_send(Method::POST, "/api/v1/subscriptions/edge/replay", window)
    });
    for (i, (status, report)) in futures_util::future::join_all(replays).await.into_iter().enumerate() {
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["matched"], 1, "round {i}, from {}: {report}", starts[i]);
    }
}

/// An archive kept across an upgrade holds events written before bodies
/// were framed (the envelope in headers): a window replay finds and
/// delivers them as it does today's.
#[tokio::test]
async fn archived_events_written_before_framing_replay_by_window() {
    use crate::helpers::unframed;
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::operator(&subscription("billing", "\"acme.#\"", &sink)).await;
    let from = SystemTime::now();
    let envelope = hookwire::envelope::Envelope {
        id: "evt_archived".into(),
        source: "acme".into(),
        event_type: "invoice.paid".into(),
        received_at: SystemTime::now(),
        content_type: Some("application/json".into()),
        headers: vec![],
        body: bytes::Bytes::from_static(br#"{"type":"invoice.paid","old":true}"#),
    };
    let archive = app.topology.archive.as_ref().expect("the archive is on by default").name.clone();
    app.publish_all(&archive, [unframed(&envelope, &Default::default())]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let window = json!({
        "from": humantime::format_rfc3339_millis(from).to_string(),
        "to": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    let (status, report) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", window).await;
    assert_eq!((status, report["replayed"].as_u64()), (200, Some(1)), "{report}");
    let got = sink.wait_for(1, T).await;
    assert_eq!((got[0].header("webhook-id"), &got[0].body), ("evt_archived", &envelope.body));
    assert_eq!(got[0].header("content-type"), "application/json");
}
