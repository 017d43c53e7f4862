//! Graceful shutdown with deliveries in flight loses nothing: after a restart
//! every accepted event is delivered (duplicates allowed and counted).

use std::{collections::HashMap, time::Duration};

use crate::helpers::{Behavior, Sink, TestApp};

const EVENTS: usize = 40;

async fn shutdown_mid_flight(drain_timeout: &str, delay: Duration) -> (usize, usize) {
    let sink = Sink::start(Behavior::Delay(delay)).await;
    let extra = format!(
        "[subscriptions.slow]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nconcurrency = 4\nretry = [\"100ms\"]\n",
        sink.url("/")
    );
    let mut app = TestApp::start(&extra).await;
    app.config.shutdown.drain_timeout = hookwire::config::parse_duration(drain_timeout).unwrap();
    // Restart so the drain timeout applies (config is read at start).
    app.stop().await;
    app.restart().await;
    for i in 0..EVENTS {
        assert_eq!(app.post_acme(&format!("evt-{i}"), r#"{"type":"a"}"#).await.status(), 202);
    }
    sink.wait_for(6, Duration::from_secs(20)).await;
    app.stop().await; // deliveries are in flight right now
    let before_restart = sink.received().len();
    assert!(before_restart < EVENTS, "the shutdown should have interrupted the run");

    sink.set(Behavior::Ok);
    app.restart().await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < EVENTS && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.clear();
        for r in sink.received() {
            *seen.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        }
    }
    let missing: Vec<String> = (0..EVENTS).map(|i| format!("evt-{i}")).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost events: {missing:?}");
    let duplicates = seen.values().map(|n| n - 1).sum();
    app.wait_depth(&app.topology.subscription("slow").unwrap().work, 0, Duration::from_secs(10)).await;
    (before_restart, duplicates)
}

#[tokio::test]
async fn drained_shutdown_loses_nothing_and_duplicates_nothing() {
    // The drain deadline is long enough for in-flight deliveries to finish and
    // be acked, so nothing is delivered twice.
    let (before, duplicates) = shutdown_mid_flight("10s", Duration::from_millis(200)).await;
    assert!(before >= 6);
    assert_eq!(duplicates, 0, "a drained shutdown acks what it delivered");
}

#[tokio::test]
async fn shutdown_past_the_drain_deadline_loses_nothing() {
    // Deliveries take longer than the drain deadline: they are abandoned
    // unacked, return to the queue, and are delivered again after restart.
    let (_, duplicates) = shutdown_mid_flight("100ms", Duration::from_millis(1500)).await;
    assert!(duplicates <= 4 + 1, "at most the in-flight deliveries repeat, got {duplicates}");
}
