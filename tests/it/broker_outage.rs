//! Broker down → 503 with Retry-After, never 202; back up → recovery without
//! a restart, for both ingress and workers.

use std::time::Duration;

use crate::helpers::{AMQP_URL, Behavior, OwnNode, Proxy, Sink, TestApp, eventually};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn outage_gives_503_and_both_sides_recover() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start_adjusted(
        &proxy.url(),
        &format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/")),
        |c| {
            let token = hookwire::config::Secret::new(TestApp::TOKEN);
            c.admin.tokens = vec![hookwire::config::AccessToken::full("operator", token)];
        },
    )
    .await;
    assert_eq!(app.post_acme("before", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for(1, T).await;

    proxy.down();
    app.wait_readyz(503, "readyz reports the outage").await;
    for i in 0..5 {
        let response = app.post_acme(&format!("during-{i}"), r#"{"type":"a"}"#).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
    }

    proxy.up();
    app.wait_readyz(200, "readyz recovers").await;
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

    // The event log committed each `received` alongside its publish; the
    // story says it was refused, until the sender's retry is accepted.
    let story = |id: &'static str| {
        let request = app.api(reqwest::Method::GET, &format!("/api/v1/events/{id}"));
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let refused = story("during-0").await;
    assert_eq!(refused["received"]["refused"]["reason"], "unavailable", "{refused}");
    assert_eq!(app.post_acme("during-0", r#"{"type":"a"}"#).await.status(), 202);
    let accepted = story("during-0").await;
    assert!(accepted["received"]["refused"].is_null(), "{accepted}");
    assert_eq!(accepted["received"]["routed"], serde_json::json!(["billing"]), "{accepted}");
    // Search lists what was accepted, each once: not the refused requests.
    let found = app.api_get("/api/v1/events?source=acme&limit=100").await;
    let mut ids: Vec<&str> = found["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["after", "before", "during-0"], "{found}");
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
    let conn = crate::helpers::connect_to(AMQP_URL).await;
    namespace_topology.delete(&conn.create_channel().await.unwrap()).await.unwrap();
    crate::helpers::remove_event_log(&namespace_topology.namespace);
}

/// Issue 14: a disk alarm makes RabbitMQ block publishers. hookwire follows
/// `connection.blocked`: the ingress answers 503 at once instead of after
/// `publish_timeout`, `/readyz` says why, and everything resumes when the
/// alarm clears, with every accepted event delivered.
#[tokio::test]
async fn a_resource_alarm_gives_fast_503s_and_not_ready_until_it_clears() {
    const PORT: u16 = 5681;
    let node = OwnNode::start("hookwire-alarm-test", PORT);
    node.ctl(&["set_disk_free_limit", "50MB"]); // a node left over from a killed run
    let sink = Sink::start(Behavior::Ok).await;
    let publish_timeout = Duration::from_secs(10);
    let app = TestApp::start_adjusted(
        &node.url(),
        &format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/")),
        |c| c.ingress.publish_timeout = publish_timeout,
    )
    .await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(app.post_acme(&id, r#"{"type":"a"}"#).await.status(), 202);
        accepted.push(id);
    }
    sink.wait_for(5, T).await;

    node.ctl(&["set_disk_free_limit", "100000GB"]);
    // RabbitMQ blocks a connection when it next publishes; the first request
    // after the alarm is the one that finds out, and it too must not wait
    // for the publish timeout.
    for i in 0..10 {
        let started = std::time::Instant::now();
        let response = app.post_acme(&format!("during-{i}"), r#"{"type":"a"}"#).await;
        let took = started.elapsed();
        if response.status() == 202 {
            // Sent before the alarm took effect.
            accepted.push(format!("during-{i}"));
            continue;
        }
        assert_eq!(response.status(), 503, "during-{i}");
        assert!(response.headers().contains_key("retry-after"));
        assert!(took < publish_timeout / 4, "during-{i} waited {took:?} for its 503");
    }
    let ready = app.http.get(app.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("blocks publishing"), "{why}");
    assert!(app.metrics().await.contains("hookwire_broker_blocked"));

    node.ctl(&["set_disk_free_limit", "50MB"]);
    app.wait_readyz(200, "readyz recovers when the alarm clears").await;
    for i in 0..5 {
        let id = format!("after-{i}");
        assert_eq!(app.post_acme(&id, r#"{"type":"a"}"#).await.status(), 202);
        accepted.push(id);
    }
    sink.wait_for_ids(&accepted, T).await;
}

/// Issue 11: with several broker addresses a process fails over to the next
/// one when it loses its node, and comes back the same way: whichever
/// address it picked first (the order is shuffled), cutting it never stops
/// the pipeline for long, and no event answered `202` is lost.
#[tokio::test]
async fn several_broker_addresses_fail_over_to_the_next() {
    let (first, second) = (Proxy::start("127.0.0.1:5672").await, Proxy::start("127.0.0.1:5672").await);
    let sink = Sink::start(Behavior::Ok).await;
    let urls = vec![hookwire::config::Secret::new(first.url()), hookwire::config::Secret::new(second.url())];
    let app = TestApp::start_adjusted(
        AMQP_URL,
        &format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/")),
        |c| c.rabbitmq.url = urls,
    )
    .await;
    let mut accepted = Vec::new();
    // Each address goes down in turn while the other is up.
    for (round, (down, up)) in [(&first, &second), (&second, &first), (&first, &second)].into_iter().enumerate() {
        up.up();
        down.down();
        app.wait_readyz(200, "ready again on the other address").await;
        for i in 0..3 {
            let id = format!("round-{round}-{i}");
            // A 503 is allowed while the switch is in progress; a 202 is a promise.
            let mut status = 0;
            for _ in 0..50 {
                status = app.post_acme(&id, r#"{"type":"a"}"#).await.status().as_u16();
                if status == 202 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(status, 202, "{id}");
            accepted.push(id);
        }
    }
    sink.wait_for_ids(&accepted, T).await;
}

/// Issue 11: publishes whose confirms were pending when the connection was
/// lost are answered `503`, never `202`, even though RabbitMQ may have
/// stored them. The proxy holds back everything the broker sends (the
/// confirms) while the ingress publishes, then drops the connection; the
/// answers come at the loss, long before the publish timeout.
#[tokio::test]
async fn confirms_pending_at_a_lost_connection_are_answered_503() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sink = Sink::start(Behavior::Ok).await;
    let publish_timeout = Duration::from_secs(30);
    let app = TestApp::start_adjusted(
        &proxy.url(),
        &format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/")),
        |c| c.ingress.publish_timeout = publish_timeout,
    )
    .await;
    let app = std::sync::Arc::new(app);
    assert_eq!(app.post_acme("before", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for(1, T).await;

    proxy.stall(true);
    let started = std::time::Instant::now();
    let pending: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.post_acme(&format!("pending-{i}"), r#"{"type":"a"}"#).await })
        })
        .collect();
    // The publishes have gone out and wait for confirms that are held back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(pending.iter().all(|p| !p.is_finished()), "nothing is answered while the confirms are held");
    proxy.down();
    for answer in pending {
        let response = answer.await.unwrap();
        assert_eq!(response.status(), 503, "a publish whose confirm never came is not accepted");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert!(response.headers().contains_key("retry-after"));
    }
    assert!(started.elapsed() < publish_timeout / 2, "answered at the loss, not at the publish timeout");

    proxy.up();
    app.wait_readyz(200, "ready again").await;
    assert_eq!(app.post_acme("after", r#"{"type":"a"}"#).await.status(), 202);
    sink.wait_for_ids(&["after".to_owned()], T).await;
}
