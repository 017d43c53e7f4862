//! End to end: signed POST → 202 → the destination, and what happens when the
//! destination fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::{Behavior, Sink, TestApp};
use hookwire::operator::letters::Pile;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn delivers_the_exact_body_with_event_headers() {
    let sink = Sink::start(Behavior::Ok).await;
    let app = TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.invoice.*\"]\nurl = \"{}\"\n",
        sink.url("/hooks")
    ))
    .await;
    // Odd spacing, key order and non-ASCII: any re-serialization would show.
    let body = "{\"type\":\"invoice.paid\",  \"b\":1,\"a\":\"ünïcode ✓\"}\n";
    let response = app.post_acme("msg_e2e_1", body).await;
    assert_eq!(response.status(), 202);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["id"], "msg_e2e_1");

    let got = sink.wait_for(1, T).await;
    let r = &got[0];
    assert_eq!(r.path, "/hooks");
    assert_eq!(r.body.as_ref(), body.as_bytes());
    assert_eq!(r.header("webhook-id"), "msg_e2e_1");
    assert_eq!(r.header("hookwire-source"), "acme");
    assert_eq!(r.header("hookwire-event-type"), "invoice.paid");
    assert_eq!(r.header("hookwire-attempt"), "1");
    assert_eq!(r.header("content-type"), "application/json");
    let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(ts) < 60, "webhook-timestamp {ts} is not current");

    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_ingress_requests_total{source=\"acme\",outcome=\"accepted\"}"), "{metrics}");
    assert!(metrics.contains("hookwire_deliveries_total{subscription=\"billing\",outcome=\"delivered\"}"));
    assert!(metrics.contains("hookwire_publish_duration_seconds_bucket"));
    assert!(metrics.contains("hookwire_broker_connected 1"));
    app.wait_depth(&app.topology.subscription("billing").unwrap().work, 0, T).await;
}

#[tokio::test]
async fn failing_destination_is_retried_then_delivered_once() {
    let sink = Sink::start(Behavior::FailTimes(2, 503)).await;
    let app = TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"100ms\", \"300ms\", \"10s\"]\n",
        sink.url("/")
    ))
    .await;
    assert_eq!(app.post_acme("msg_retry_1", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    let got = sink.wait_for(3, T).await;
    let attempts: Vec<&str> = got.iter().map(|r| r.header("hookwire-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got.iter().all(|r| r.header("webhook-id") == "msg_retry_1"));
    // The delays of the schedule were waited out (100ms, then 300ms), less
    // at most 20% of jitter.
    assert!(got[1].at - got[0].at >= Duration::from_millis(80), "{:?}", got[1].at - got[0].at);
    assert!(got[2].at - got[1].at >= Duration::from_millis(240), "{:?}", got[2].at - got[1].at);
    // Delivered: nothing more arrives, nothing is dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 3);
    let queues = app.topology.subscription("billing").unwrap().clone();
    assert_eq!(app.letter_count(&Pile::Dead("billing".into())).await, 0);
    for retry in &queues.retries {
        assert_eq!(app.depth(&retry.name).await, 0, "{}", retry.name);
    }
}

#[tokio::test]
async fn exhausted_retries_dead_letter_with_failure_history() {
    let sink = Sink::start(Behavior::Status(500)).await;
    let app = TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"50ms\", \"50ms\"]\n",
        sink.url("/")
    ))
    .await;
    let body = r#"{"type":"invoice.paid","n":7}"#;
    assert_eq!(app.post_acme("msg_dead_1", body).await.status(), 202);
    let dead = Pile::Dead("billing".into());
    app.wait_letters(&dead, 1, T).await;
    assert_eq!(sink.received().len(), 3, "1 attempt + 2 retries");

    let letters = app.letters(&dead).await;
    let (envelope, state) = &letters[0];
    assert_eq!(envelope.id, "msg_dead_1");
    assert_eq!(envelope.body.as_ref(), body.as_bytes());
    assert_eq!(envelope.event_type, "invoice.paid");
    assert_eq!(state.attempts, 3);
    assert_eq!(state.dead_letter_reason.as_deref(), Some("retries_exhausted"));
    assert_eq!(state.history.len(), 3);
    assert!(state.history.iter().all(|a| a.status == Some(500) && a.error.starts_with("HTTP 500")));
    assert!(state.history[0].at <= state.history[2].at);
    let metrics = app.metrics().await;
    assert!(metrics.contains("hookwire_dead_lettered_total{subscription=\"billing\",reason=\"retries_exhausted\"}"));
}

#[tokio::test]
async fn unreachable_destination_counts_as_a_failure() {
    // A port nobody listens on: connection refused on every attempt.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = TestApp::start(&format!(
        "[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"http://{closed}/\"\nretry = [\"50ms\"]\n"
    ))
    .await;
    assert_eq!(app.post_acme("msg_refused", r#"{"type":"x"}"#).await.status(), 202);
    let dead = Pile::Dead("billing".into());
    app.wait_letters(&dead, 1, T).await;
    let letters = app.letters(&dead).await;
    assert_eq!(letters[0].1.history[0].status, None);
    assert!(letters[0].1.history[0].error.starts_with("connection failed"), "{:?}", letters[0].1.history);
}

/// The worker acks runs of settled deliveries with one `multiple` ack
/// (`delivery::acks`). Against the real broker: a delivery still running is
/// never covered by a neighbour's ack, a settled one behind it is acked on
/// its own after a short wait, a requeue goes back at once, and the ack that
/// later closes a gap names a tag the broker still holds unacked (naming an
/// acked one would close the channel, handing everything back).
#[tokio::test]
async fn batched_acks_ack_only_what_settled() {
    use futures_util::StreamExt;
    use hookwire::delivery::acks::{Acks, STRAGGLER_WAIT};
    use lapin::{options::*, types::FieldTable};

    let connection = crate::helpers::connect_to(crate::helpers::AMQP_URL).await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let queue = format!("it-acks-{}", uuid::Uuid::now_v7().simple());
    let declare = QueueDeclareOptions { durable: false, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), declare, FieldTable::default()).await.unwrap();
    for i in 1..=10 {
        let body = i.to_string();
        channel
            .basic_publish("".into(), queue.as_str().into(), Default::default(), body.as_bytes(), Default::default())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consuming = connection.create_channel().await.unwrap();
    consuming.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consuming
        .basic_consume(queue.as_str().into(), "it".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut tags = Vec::new();
    for _ in 0..10 {
        let delivery = tokio::time::timeout(T, consumer.next()).await.unwrap().unwrap().unwrap();
        // Body i arrived with tag i.
        assert_eq!(String::from_utf8_lossy(&delivery.data), delivery.delivery_tag.to_string());
        tags.push(delivery.delivery_tag);
    }
    assert_eq!(tags, (1..=10).collect::<Vec<u64>>(), "one consumer per channel: tags count up from 1");

    let (acks, _task) = Acks::start(consuming.clone(), 100, "it".into(), T);
    // 4 and 6 are still running; 1..=3 settle (one ack names 3); 5, 7, 9
    // and 10 settle behind the gaps (each acked alone after a while); 8
    // could not be stored and goes back to the queue.
    for tag in [1, 2, 3, 5, 7, 9, 10] {
        acks.ack(tag);
    }
    acks.requeue(8);
    // The requeued 8 comes straight back to this consumer, marked redelivered.
    let again = tokio::time::timeout(T, consumer.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((String::from_utf8_lossy(&again.data).as_ref(), again.redelivered), ("8", true));
    tokio::time::sleep(STRAGGLER_WAIT * 4).await;
    // 4 settles: its run is 4 alone (5 went on its own), so the ack names
    // 4, never 5, which the broker no longer holds, nor 6, still running.
    acks.ack(4);
    tokio::time::sleep(STRAGGLER_WAIT * 2).await;
    assert!(consuming.status().connected(), "an ack named a tag the broker did not hold");
    // Closing hands back what is unacked: 6 (running) and the redelivered 8.
    consuming.close(200, "test".into()).await.unwrap();
    let mut back = Vec::new();
    while let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
    {
        back.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    back.sort();
    assert_eq!(back, ["6", "8"]);
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

/// `hookwire_queue_messages` says how many events wait in a subscription's
/// work queue and its retry queues, as RabbitMQ counts them: here two
/// failed events waiting out a one-minute retry and three behind a pause.
/// The poller runs here with a short period; `serve` polls every 15 s.
#[tokio::test]
async fn queue_depths_are_exported_per_subscription() {
    use reqwest::Method;
    let sink = Sink::start(Behavior::Status(500)).await;
    let app = TestApp::operator(&format!(
        "[subscriptions.backlog]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"1m\"]\n",
        sink.url("/")
    ))
    .await;
    let token = tokio_util::sync::CancellationToken::new();
    let broker = app.app.as_ref().unwrap().broker.clone();
    let poller = hookwire::broker::depth::spawn(broker, Duration::from_millis(200), token.clone());
    let gauge = |queue: &'static str| {
        let app = &app;
        async move {
            let line = format!("hookwire_queue_messages{{subscription=\"backlog\",queue=\"{queue}\"}} ");
            let metrics = app.metrics().await;
            metrics.lines().find_map(|l| l.strip_prefix(line.as_str())).map(|v| v.trim().to_owned())
        }
    };
    crate::helpers::eventually(T, "both series at 0 once connected", || async {
        gauge("work").await.as_deref() == Some("0") && gauge("retry").await.as_deref() == Some("0")
    })
    .await;

    for id in ["evt_retry_1", "evt_retry_2"] {
        assert_eq!(app.post_acme(id, r#"{"type":"invoice.paid"}"#).await.status(), 202);
    }
    sink.wait_for(2, T).await;
    crate::helpers::eventually(T, "two events in the retry queue", || async {
        gauge("retry").await.as_deref() == Some("2")
    })
    .await;

    let (status, _) = app.api_send(Method::POST, "/api/v1/subscriptions/backlog/pause", serde_json::json!({})).await;
    assert_eq!(status, 200);
    let work = app.topology.subscription("backlog").unwrap().work.clone();
    crate::helpers::eventually(T, "the worker gone from the work queue", || {
        let (app, work) = (&app, &work);
        async move { app.consumers(work).await == 0 }
    })
    .await;
    for id in ["evt_held_1", "evt_held_2", "evt_held_3"] {
        assert_eq!(app.post_acme(id, r#"{"type":"invoice.paid"}"#).await.status(), 202);
    }
    app.wait_depth(&work, 3, T).await;
    crate::helpers::eventually(T, "three events behind the pause", || async {
        gauge("work").await.as_deref() == Some("3")
    })
    .await;
    assert_eq!(gauge("retry").await.as_deref(), Some("2"), "the retry queue still holds its two");
    token.cancel();
    poller.await.unwrap();
}
