//! Issue 11. On the machine's broker: `rabbitmq.replicas` sizes the
//! replicated queues hookwire creates, a later change of it does not keep a
//! process from starting on the queues it made before, and a pause flag
//! made before they were replicated keeps its state. On a 3-node cluster of
//! this machine (deploy/rabbitmq-cluster.sh): with the node hookwire is
//! connected to killed, it fails over, and dead letters and the archive
//! still list, replay and purge.

use std::time::Duration;

use crate::{
    cluster_support::Cluster,
    helpers::{AMQP_URL, Behavior, Sink, TestApp, eventually},
};

const T: Duration = Duration::from_secs(30);

/// `name → {argument: value}` of every queue on the broker, as RabbitMQ
/// holds them (`rabbitmqctl` lists each argument as `[key, type, value]`).
fn queue_arguments() -> serde_json::Map<String, serde_json::Value> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--formatter", "json", "name", "arguments"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl list_queues: {}", String::from_utf8_lossy(&out.stderr));
    let queues: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("rabbitmqctl's JSON");
    let arguments = |list: &serde_json::Value| -> serde_json::Value {
        let triples = list.as_array().map(Vec::as_slice).unwrap_or_default();
        triples.iter().map(|t| (t[0].as_str().unwrap_or_default().to_owned(), t[2].clone())).collect()
    };
    queues
        .into_iter()
        .map(|q| (q["name"].as_str().unwrap_or_default().to_owned(), arguments(&q["arguments"])))
        .collect()
}

#[tokio::test]
async fn replicas_size_new_queues_and_a_later_change_keeps_the_existing_ones() {
    let sink = Sink::start(Behavior::Ok).await;
    let extra =
        format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\nretry = [\"1s\"]\n", sink.url("/"));
    let mut app = TestApp::start_adjusted(AMQP_URL, &extra, |c| c.rabbitmq.replicas = Some(1)).await;
    let billing = app.topology.subscription("billing").unwrap().clone();
    let archive = app.topology.archive.clone().unwrap().name;
    let args = queue_arguments();
    // Everything that holds events or state is replicated: the letters
    // stream (dead letters, unrouted events) and the pauses stream too.
    for quorum in [&billing.work, &billing.retries[0].name] {
        assert_eq!(args[quorum.as_str()]["x-quorum-initial-group-size"], 1, "{quorum}: {}", args[quorum.as_str()]);
    }
    for stream in [&archive, &app.topology.catalog_stream, &app.topology.letters, &app.topology.pauses_stream] {
        assert_eq!(args[stream.as_str()]["x-initial-cluster-size"], 1, "{stream}: {}", args[stream.as_str()]);
    }

    // The broker refuses a redeclare with another count: the queues made
    // with 1 are kept, and the process starts and delivers.
    app.stop().await;
    app.config.rabbitmq.replicas = Some(3);
    app.restart().await;
    assert_eq!(app.post_acme("evt-after-change", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    sink.wait_for(1, T).await;
    assert_eq!(queue_arguments()[billing.work.as_str()]["x-quorum-initial-group-size"], 1, "kept as it was made");
    // And without the key at all (the broker's default) the same holds.
    app.stop().await;
    app.config.rabbitmq.replicas = None;
    app.restart().await;
    assert_eq!(app.post_acme("evt-without-key", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    sink.wait_for(2, T).await;
}

/// A subscription paused before the upgrade to the pauses stream stays
/// paused after it: the classic flag queue of earlier versions is read,
/// written to the stream and deleted.
#[tokio::test]
async fn a_pause_flag_of_an_earlier_version_moves_to_the_pauses_stream_and_keeps_the_pause() {
    use lapin::{
        BasicProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/"));
    let mut app = TestApp::operator(&extra).await;
    let flag = format!("{}.paused", app.topology.subscription("billing").unwrap().work);
    app.stop().await;
    // The flag as hookwire made it before: classic, max length 1, set; and
    // a pauses stream that has not been migrated into.
    app.delete_queue(&app.topology.pauses_stream).await;
    app.make_work_queue_of_an_earlier_version("billing").await;
    let conn = app.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(flag.as_str().into(), durable, args).await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let publish =
        channel.basic_publish("".into(), flag.as_str().into(), BasicPublishOptions::default(), b"", persistent);
    assert!(publish.await.unwrap().await.unwrap().is_ack());
    let _ = conn.close(200, "".into()).await;

    app.restart().await;
    assert_eq!(app.api_get("/api/v1/subscriptions/billing").await["status"]["paused"], true);
    assert!(!app.queue_exists(&flag).await, "the old flag is gone");
    assert_eq!(app.post_acme("evt-while-paused", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.received().is_empty(), "paused: nothing is delivered");
    // And it resumes as before.
    let (status, _) =
        app.api_send(reqwest::Method::POST, "/api/v1/subscriptions/billing/resume", serde_json::json!({})).await;
    assert_eq!(status, 200);
    sink.wait_for(1, T).await;
}

#[tokio::test]
async fn with_a_node_down_hookwire_fails_over_and_dead_letters_and_the_archive_still_replay() {
    use hookwire::config::{AccessToken, Secret};
    use reqwest::Method;
    use serde_json::json;
    let cluster = Cluster::start();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3, "{urls:?}");
    let sink = Sink::start(Behavior::Status(500)).await;
    let held = Sink::start(Behavior::Ok).await;
    // No breaker: its cooldown would hold evt_after back. `held` is paused
    // across the kill.
    let extra = format!(
        "[subscriptions.billing]\ntopics = [\"acme.invoice.*\"]\nurl = \"{}\"\nretry = []\ncircuit_breaker = {{ failures = 0 }}\n\
         [subscriptions.held]\ntopics = [\"acme.held.*\"]\nurl = \"{}\"\n",
        sink.url("/"),
        held.url("/")
    );
    let app = TestApp::start_adjusted(&urls[0], &extra, |c| {
        c.rabbitmq.url = urls.iter().map(|u| Secret::new(u.as_str())).collect();
        c.rabbitmq.replicas = Some(3);
        c.admin.tokens = vec![AccessToken::full("operator", Secret::new(TestApp::TOKEN))];
    })
    .await;
    let from = std::time::SystemTime::now();
    let ids: Vec<String> = (0..10).map(|i| format!("evt_{i}")).collect();
    for id in &ids {
        assert_eq!(app.post_acme(id, r#"{"type":"invoice.paid"}"#).await.status(), 202);
    }
    let dead = |app: &TestApp| {
        let request = app.api(Method::GET, "/api/v1/subscriptions/billing");
        async move {
            let status: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            status["status"]["dead"]["messages"].as_u64()
        }
    };
    eventually(T, "ten dead letters", || {
        let count = dead(&app);
        async move { count.await == Some(10) }
    })
    .await;
    let to = std::time::SystemTime::now();
    sink.set(Behavior::Ok);
    let (status, _) = app.api_send(Method::POST, "/api/v1/subscriptions/held/pause", json!({})).await;
    assert_eq!(status, 200);

    // Kill the node under hookwire: it fails over to another and goes on.
    let under = cluster.connected();
    assert_eq!(under.len(), 1, "one process, one node: {under:?}");
    cluster.kill(under[0]);
    eventually(T, "hookwire on another node", || {
        let app = &app;
        async move { app.post_acme("evt_after", r#"{"type":"invoice.paid"}"#).await.status() == 202 }
    })
    .await;
    sink.wait_for_ids(&["evt_after".to_owned()], T).await;
    assert!(!cluster.connected().contains(&under[0]));
    // The pause held through the failover: nothing reaches `held` until it
    // is resumed.
    assert_eq!(app.post_acme("evt_held", r#"{"type":"held.x"}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(held.received().is_empty(), "paused, yet delivered");
    assert_eq!(app.api_get("/api/v1/subscriptions/held").await["status"]["paused"], true);
    let (status, _) = app.api_send(Method::POST, "/api/v1/subscriptions/held/resume", json!({})).await;
    assert_eq!(status, 200);
    held.wait_for_ids(&["evt_held".to_owned()], T).await;

    // The dead letters are all there, once each, and replay and purge.
    let page = app.api_get("/api/v1/subscriptions/billing/dead-letters").await;
    // (In the order they were dead-lettered, 16 deliveries at a time.)
    let mut listed: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|i| i["event_id"].as_str().unwrap()).collect();
    listed.sort_unstable();
    assert_eq!(listed, ids, "{page}");
    let replay = "/api/v1/subscriptions/billing/dead-letters/replay";
    let (status, report) = app.api_send(Method::POST, replay, json!({"ids": &ids[..5]})).await;
    assert_eq!((status, report["replayed"].as_u64()), (200, Some(5)), "{report}");
    sink.wait_for_ids(&ids[..5], T).await;
    let (status, report) =
        app.api_send(Method::DELETE, "/api/v1/subscriptions/billing/dead-letters", json!({"all": true})).await;
    assert_eq!((status, report["purged"].as_u64()), (200, Some(5)), "{report}");
    assert_eq!(dead(&app).await, Some(0));

    // The archive replays the window the ten arrived in.
    let window = json!({
        "from": humantime::format_rfc3339_millis(from).to_string(),
        "to": humantime::format_rfc3339_millis(to).to_string(),
    });
    // Deliveries the kill left unacked come again (duplicates); let them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sink.received().len();
    let (status, report) = app.api_send(Method::POST, "/api/v1/subscriptions/billing/replay", window).await;
    assert_eq!((status, report["replayed"].as_u64()), (200, Some(10)), "{report}");
    let got = sink.wait_for(before + 10, T).await;
    // (Delivered 16 at a time, so not necessarily in order.)
    let mut again: Vec<&str> = got[before..].iter().map(|r| r.header("webhook-id")).collect();
    again.sort_unstable();
    assert_eq!(again, ids, "the archive's copies, with their original ids");
    cluster.revive(under[0]);
}
