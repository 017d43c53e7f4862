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
    for quorum in [&billing.work, &billing.retries[0].name] {
        assert_eq!(args[quorum.as_str()]["x-quorum-initial-group-size"], 1, "{quorum}: {}", args[quorum.as_str()]);
    }
    for stream in [&archive, &app.topology.catalog_stream] {
        assert_eq!(args[stream.as_str()]["x-initial-cluster-size"], 1, "{stream}: {}", args[stream.as_str()]);
    }
    // Classic queues have no replicas to size.
    assert!(args[billing.dead.as_str()].get("x-quorum-initial-group-size").is_none());

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
