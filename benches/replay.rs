//! The operator benchmark: `cargo bench --bench replay [-- --count N --runs R]`.
//!
//! Against the real RabbitMQ on 127.0.0.1:5672, in a throwaway namespace:
//! N dead letters (1 KiB bodies, five failed attempts of history each) are
//! seeded into the letters stream as a subscription's, then through the operator
//! API of an in-process hookwire (`--role ingress`: no worker drains the work
//! queue, so the move itself is what is timed):
//! - the first page of a listing (50),
//! - a dry-run count of everything (a full scan that changes nothing),
//! - replay all: every dead letter published to the work queue with a
//!   confirm, then settled; checked by the counts afterwards,
//! - purge all, after seeding again.
//!
//! Target (issue 5): replaying 10,000 dead letters takes under 10 s.
//! Results go to stdout; docs/BENCHMARKS.md records them with the machine.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hookwire::{
    app::{self, Role},
    broker::{
        Topology,
        message::{self, Attempt, DeliveryState},
    },
    config::{Config, Secret},
    envelope::Envelope,
};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOKEN: &str = "bench-operator-token-0123456789";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test` runs harness-less benches without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (count, runs) = (flag("--count", 10_000), flag("--runs", 3));
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    tokio::runtime::Runtime::new().unwrap().block_on(run(count, runs));
}

async fn run(count: usize, runs: usize) {
    println!(
        "replay benchmark: {count} dead letters, {runs} runs, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let namespace = format!("hwbench-{}", uuid::Uuid::now_v7().simple());
    let config = Config::from_toml(
        &format!(
            r#"
[ingress]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[rabbitmq]
url = "{AMQP}"
namespace = "{namespace}"
[subscriptions.bench]
topics = ["bench.#"]
url = "http://127.0.0.1:9/"
"#
        ),
        &|_| None,
    )
    .unwrap();
    let mut config = config;
    config.admin.tokens = vec![hookwire::config::AccessToken::full("bench", Secret::new(TOKEN))];
    let topology = Topology::from_config(&config);
    let queues = topology.subscription("bench").unwrap().clone();
    let app = app::start(config, Role::Ingress).await.unwrap();
    while !app.broker.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = format!("http://{}/api/v1/subscriptions/bench", app.admin_addr);
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http.request(method, format!("{api}{path}")).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<Value>().await.unwrap()
        }
    };

    for run in 1..=runs {
        seed(&topology.letters, count).await;
        let started = Instant::now();
        let page = call(reqwest::Method::GET, "/dead-letters?limit=50", None).await;
        let list_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(page["items"].as_array().unwrap().len(), 50);

        let started = Instant::now();
        let dry =
            call(reqwest::Method::POST, "/dead-letters/replay", Some(json!({"all": true, "dry_run": true}))).await;
        let dry_s = started.elapsed().as_secs_f64();
        assert_eq!(dry["matched"], count);

        let started = Instant::now();
        let replayed = call(reqwest::Method::POST, "/dead-letters/replay", Some(json!({"all": true}))).await;
        let replay_s = started.elapsed().as_secs_f64();
        assert_eq!(replayed["replayed"], count, "{replayed}");
        let status = call(reqwest::Method::GET, "", None).await;
        assert_eq!(status["status"]["dead"]["messages"], 0, "{status}");
        assert_eq!(depth(&queues.work).await as usize, count);

        // Empty the work queue for the next run, then time a purge.
        purge_queue(&queues.work).await;
        seed(&topology.letters, count).await;
        let started = Instant::now();
        let purged = call(reqwest::Method::DELETE, "/dead-letters", Some(json!({"all": true}))).await;
        let purge_s = started.elapsed().as_secs_f64();
        assert_eq!(purged["purged"], count);
        println!(
            "run {run}: first page {list_ms:.1} ms | dry run {dry_s:.2} s | replay all {replay_s:.2} s \
             ({:.0}/s) | purge all {purge_s:.2} s",
            count as f64 / replay_s
        );
    }
    app.shutdown().await;
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    topology.delete(&channel).await.unwrap();
    // Channel first: lapin logs an error for a connection closed under an open channel.
    let _ = channel.close(200, "".into()).await;
    let _ = conn.close(200, "".into()).await;
}

/// Publishes `count` realistic dead letters of subscription `bench` into the
/// letters stream `queue`, confirmed.
async fn seed(queue: &str, count: usize) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let now = SystemTime::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let body = format!(r#"{{"type":"invoice.paid","id":"evt_{i:06}","pad":"{}"}}"#, "x".repeat(980));
        let envelope = Envelope {
            id: format!("evt_{i:06}"),
            source: "bench".into(),
            event_type: "invoice.paid".into(),
            received_at: now,
            content_type: Some("application/json".into()),
            headers: vec![("user-agent".into(), "bench/1".into())],
            body: Bytes::from(body),
        };
        let mut state = DeliveryState::default();
        for _ in 0..5 {
            state.record_failure(Attempt::new(now, Some(503), "HTTP 503 Service Unavailable"));
        }
        state.dead_letter_reason = Some("retries_exhausted".into());
        let (mut properties, body) = message::encode(&envelope, &state);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(message::DEAD_LETTER_OF.into(), lapin::types::AMQPValue::LongString("bench".into()));
        properties = properties.with_headers(headers);
        let confirm = channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, properties)
            .await
            .unwrap();
        pending.push(confirm);
    }
    for confirm in pending {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = conn.close(200, "".into()).await;
}

async fn depth(queue: &str) -> u32 {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap();
    let _ = conn.close(200, "".into()).await;
    declared.message_count()
}

async fn purge_queue(queue: &str) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.queue_purge(queue.into(), Default::default()).await.unwrap();
    let _ = conn.close(200, "".into()).await;
}
