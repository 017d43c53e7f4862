//! Protecting destinations and isolating failures: the subscription rate
//! limit as measured at the destination, the circuit breaker's cycle, a
//! hanging destination that must not slow a healthy neighbour, and one slow
//! delivery that must not stall the rest of its own subscription.

use hookwire::operator::letters::Pile;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::{Behavior, Sink, TestApp, eventually};

const T: Duration = Duration::from_secs(30);

/// Posts `n` events for `acme`, `parallel` at a time.
async fn post_many(app: &TestApp, n: usize, parallel: usize, prefix: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(parallel) {
        let posts = chunk.iter().map(|i| {
            let id = format!("{prefix}-{i}");
            async move { assert_eq!(app.post_acme(&id, r#"{"type":"invoice.paid"}"#).await.status(), 202) }
        });
        join_all(posts).await;
    }
}

/// Arrivals per second between the first and the last request.
fn arrival_rate(sink: &Sink) -> f64 {
    let got = sink.received();
    let span = got.last().unwrap().at - got.first().unwrap().at;
    (got.len() - 1) as f64 / span.as_secs_f64()
}

#[tokio::test]
async fn rate_limit_holds_at_the_destination() {
    let _serial = crate::serial().await;
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        "[subscriptions.gentle]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nconcurrency = 8\nrate_limit = \"20/s\"\nrate_limit_burst = 1\n",
        sink.url("/")
    ))
    .await;
    post_many(&app, 41, 8, "rl").await;
    sink.wait_for(41, T).await;
    let rate = arrival_rate(&sink);
    eprintln!("measured arrival rate: {rate:.2}/s (limit 20/s)");
    assert!((18.0..=22.0).contains(&rate), "arrival rate {rate:.2}/s is not within 10% of 20/s");
}

#[tokio::test]
async fn circuit_opens_after_failures_then_probes_and_closes() {
    let _serial = crate::serial().await;
    let sink = Sink::start(Behavior::Status(503)).await;
    let app = TestApp::start(&format!(
        r#"
[subscriptions.fragile]
topics = ["acme.#"]
url = "{}"
concurrency = 1
retry = ["50ms", "50ms", "50ms", "50ms", "50ms", "50ms"]
circuit_breaker = {{ failures = 3, cooldown = "1s" }}
"#,
        sink.url("/")
    ))
    .await;
    assert_eq!(app.post_acme("cb-1", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for(3, T).await;
    // Three consecutive failures: the breaker is open and nothing is sent.
    let metrics_url = app.admin_url("/metrics");
    eventually(T, "circuit open in metrics", || {
        let (http, url) = (app.http.clone(), metrics_url.clone());
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.contains("hookwire_circuit_open{subscription=\"fragile\"} 1")
        }
    })
    .await;
    sink.set(Behavior::Ok);
    let got = sink.wait_for(4, T).await;
    let paused = got[3].at - got[2].at;
    assert!(paused >= Duration::from_millis(900), "the probe came {paused:?} after the third failure");
    assert_eq!(got[3].header("webhook-id"), "cb-1");
    assert_eq!(got[3].header("hookwire-attempt"), "4");
    eventually(T, "circuit closed in metrics", || {
        let (http, url) = (app.http.clone(), metrics_url.clone());
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.contains("hookwire_circuit_open{subscription=\"fragile\"} 0")
                && text.contains("hookwire_circuit_transitions_total{subscription=\"fragile\",state=\"closed\"} 1")
        }
    })
    .await;
    // The breaker delayed the event; it never dead-lettered it.
    assert_eq!(app.letter_count(&Pile::Dead("fragile".into())).await, 0);
    // Closed again: new events flow at once.
    let started = Instant::now();
    assert_eq!(app.post_acme("cb-2", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for(5, T).await;
    assert!(started.elapsed() < Duration::from_millis(800));
}

async fn healthy_rate(with_hanging_neighbour: bool) -> f64 {
    const EVENTS: usize = 1000;
    let healthy = Sink::start(Behavior::Ok).await;
    let hanging = Sink::start(Behavior::Delay(Duration::from_secs(60))).await;
    let mut extra =
        format!("[subscriptions.healthy]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nconcurrency = 16\n", healthy.url("/"));
    if with_hanging_neighbour {
        extra += &format!(
            // Breaker off and quick retries: the neighbour keeps hammering.
            "[subscriptions.hanging]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nconcurrency = 16\ntimeout = \"500ms\"\nretry = [\"100ms\", \"100ms\", \"100ms\"]\ncircuit_breaker = {{ failures = 0 }}\n",
            hanging.url("/")
        );
    }
    let app = TestApp::start(&extra).await;
    post_many(&app, EVENTS, 16, "iso").await;
    healthy.wait_for(EVENTS, T).await;
    if with_hanging_neighbour {
        assert!(!hanging.received().is_empty(), "the neighbour was really being called");
    }
    arrival_rate(&healthy)
}

#[tokio::test]
async fn a_hanging_destination_does_not_slow_a_healthy_one() {
    let _serial = crate::serial().await;
    let alone = healthy_rate(false).await;
    let beside_hanging = healthy_rate(true).await;
    eprintln!("healthy subscription: {alone:.0}/s alone, {beside_hanging:.0}/s beside a hanging one");
    assert!(
        beside_hanging >= 0.7 * alone,
        "a hanging neighbour cut the healthy rate from {alone:.0}/s to {beside_hanging:.0}/s"
    );
}

/// Acks go out in runs of settled deliveries (`delivery::acks`); one that
/// hangs must not hold the prefetch slots of those settled after it. With
/// the event log off the prefetch is the concurrency (8 here), so this is
/// where a stalled run would show: with only a 50 ms wait per straggler the
/// subscription fell to 10% of its rate (121/s against 1,231/s). The hanging
/// delivery holds one of the 8 attempt slots, so 7/8 is the most to expect.
#[tokio::test]
async fn a_hanging_delivery_does_not_stall_its_own_subscription() {
    let _serial = crate::serial().await;
    let alone = own_rate(false).await;
    let behind_hanging = own_rate(true).await;
    eprintln!("subscription: {alone:.0}/s alone, {behind_hanging:.0}/s while one of its deliveries hangs");
    assert!(
        behind_hanging >= 0.5 * alone,
        "one hanging delivery cut its subscription from {alone:.0}/s to {behind_hanging:.0}/s"
    );
}

async fn own_rate(with_a_hanging_delivery: bool) -> f64 {
    const EVENTS: usize = 400;
    let behavior = if with_a_hanging_delivery { Behavior::HangFirst(Duration::from_secs(20)) } else { Behavior::Ok };
    let sink = Sink::start(behavior).await;
    let app = TestApp::start(&format!(
        "[event_log]\nenabled = false\n[subscriptions.steady]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nconcurrency = 8\ntimeout = \"30s\"\n",
        sink.url("/")
    ))
    .await;
    if with_a_hanging_delivery {
        assert_eq!(app.post_acme("hang", r#"{"type":"invoice.paid"}"#).await.status(), 202);
        sink.wait_for(1, T).await;
    }
    post_many(&app, EVENTS, 16, "own").await;
    let skip = usize::from(with_a_hanging_delivery);
    let got = sink.wait_for(EVENTS + skip, T).await;
    if with_a_hanging_delivery {
        assert_eq!(got[0].header("webhook-id"), "hang");
    }
    let (first, last) = (got[skip].at, got.last().unwrap().at);
    (EVENTS - 1) as f64 / (last - first).as_secs_f64()
}
