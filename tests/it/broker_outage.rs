//! Broker down → 503 with Retry-After, never 202; back up → recovery without
//! a restart, for both ingress and workers.

use std::time::Duration;

use crate::helpers::{AMQP_URL, Behavior, Proxy, Sink, TestApp, eventually};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn outage_gives_503_and_both_sides_recover() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start_with(
        &proxy.url(),
        &format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/")),
    )
    .await;
    assert_eq!(app.post_acme("before", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for(1, T).await;

    proxy.down();
    let ready = app.admin_url("/readyz");
    eventually(T, "readyz reports the outage", || {
        let (http, ready) = (app.http.clone(), ready.clone());
        async move { http.get(ready).send().await.unwrap().status() == 503 }
    })
    .await;
    for i in 0..5 {
        let response = app.post_acme(&format!("during-{i}"), r#"{"type":"a"}"#).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }

    proxy.up();
    eventually(T, "readyz recovers", || {
        let (http, ready) = (app.http.clone(), ready.clone());
        async move { http.get(ready).send().await.unwrap().status() == 200 }
    })
    .await;
    assert_eq!(app.post_acme("after", r#"{"type":"a"}"#).await.status(), 202);
    eventually(T, "the event accepted after recovery is delivered", || {
        let delivered = sink.received().iter().any(|r| r.header("webhook-id") == "after");
        async move { delivered }
    })
    .await;
    // "before" may arrive twice: if the cut lands between the destination's
    // 200 and the broker receiving our ack, it is redelivered (at-least-once).
    let mut ids: Vec<String> = sink.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["after", "before"], "events refused with 503 must never be delivered");
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_ingress_requests_total{source=\"acme\",outcome=\"unavailable\"}"));
    assert!(metrics.contains("hookwire_broker_reconnects_total"));
}

#[tokio::test]
async fn starts_without_the_broker_and_connects_when_it_appears() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    proxy.down();
    let config = hookwire::config::Config::from_toml(
        &crate::helpers::config_text(&format!("hwtest-{}", uuid::Uuid::now_v7().simple()), &proxy.url(), ""),
        &|_| None,
    )
    .unwrap();
    let namespace_topology = hookwire::broker::Topology::from_config(&config);
    let app = hookwire::app::start(config, hookwire::app::Role::All).await.unwrap();
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", app.admin_addr);
    assert_eq!(http.get(&ready).send().await.unwrap().status(), 503);
    proxy.up();
    eventually(T, "ready once the broker is reachable", || {
        let (http, ready) = (http.clone(), ready.clone());
        async move { http.get(ready).send().await.unwrap().status() == 200 }
    })
    .await;
    app.shutdown().await;
    // Clean up the namespace this test declared.
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await.unwrap();
    namespace_topology.delete(&conn.create_channel().await.unwrap()).await.unwrap();
}
