//! Issue 11, on the machine's broker: `rabbitmq.replicas` sizes the
//! replicated queues hookwire creates, and a later change of it does not
//! keep a process from starting on the queues it made before.

use std::time::Duration;

use crate::helpers::{AMQP_URL, Behavior, Sink, TestApp};

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
    // Everything that holds events or state is replicated: the pause flag
    // too, and the letters stream that holds dead letters and unrouted events.
    for quorum in [&billing.work, &billing.retries[0].name, &billing.paused_marker] {
        assert_eq!(args[quorum.as_str()]["x-quorum-initial-group-size"], 1, "{quorum}: {}", args[quorum.as_str()]);
    }
    for stream in [&archive, &app.topology.catalog_stream, &app.topology.letters] {
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

/// A subscription paused before the upgrade to replicated pause flags stays
/// paused after it: the classic flag queue is replaced by a quorum one that
/// holds the same state.
#[tokio::test]
async fn a_classic_pause_flag_becomes_a_replicated_one_and_keeps_the_pause() {
    use lapin::{
        BasicProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };
    let sink = Sink::start(Behavior::Ok).await;
    let extra = format!("[subscriptions.billing]\ntopics = [\"acme.#\"]\nurl = \"{}\"\n", sink.url("/"));
    let mut app = TestApp::operator(&extra).await;
    let flag = app.topology.subscription("billing").unwrap().paused_marker.clone();
    app.stop().await;
    // The flag as hookwire made it before: classic, max length 1, set.
    app.delete_queue(&flag).await;
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
    assert_eq!(queue_arguments()[flag.as_str()]["x-queue-type"], "quorum");
    assert_eq!(app.post_acme("evt-while-paused", r#"{"type":"invoice.paid"}"#).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.received().is_empty(), "paused: nothing is delivered");
    // And it resumes as before.
    let (status, _) =
        app.api_send(reqwest::Method::POST, "/api/v1/subscriptions/billing/resume", serde_json::json!({})).await;
    assert_eq!(status, 200);
    sink.wait_for(1, T).await;
}
