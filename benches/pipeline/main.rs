//! The pipeline benchmark: `cargo bench --bench pipeline [-- --seconds N]`.
//!
//! In one run, on this machine, against the real RabbitMQ on 127.0.0.1:5672:
//! (a) the raw RabbitMQ ceiling: persistent 1 KiB messages published with
//!     confirms to a quorum queue by 64 concurrent publishers (lapin directly),
//!     then the same through a fanout exchange to a stream and a quorum
//!     queue: the two writes of an event the ingress accepts;
//! (b) hookwire's ingress alone (`serve --role ingress`, a child process),
//!     driven by 64 concurrent connections of signed 1 KiB webhooks: accepted/s,
//!     request latency p50/p99, peak RSS, and the ratio to (a);
//! (c) the whole pipeline (`serve --role all`) into a local sink: delivered/s,
//!     ingress→destination latency p50/p99, peak RSS;
//! (d) the same with 2 KiB events, without and with a transform that picks
//!     and renames 5 fields (jq), to show what a typical transform costs.
//! hookwire runs with its event log on (SQLite in a temporary directory), as
//! by default; `--no-event-log` turns it off;
//! `--compare-event-log [--fan-out S] [--rounds N]` runs only (c) with the
//! log off and on, to S subscriptions (default 1), alternated N times
//! (default 3), and prints the medians side by side.
//! `--baseline PATH [--fan-out N] [--rounds N]` does the same with another
//! hookwire binary (e.g. main's, built in a worktree) against this build,
//! with N subscriptions (default 1): a change measured side by side.
//! Every end-to-end phase also reports the CPU hookwire, RabbitMQ and the
//! bench itself (load generator and sink) used per delivery, and RabbitMQ's
//! share of the cores the other two left it (≥ 95%: RabbitMQ is the limit).
//! `--concurrency N` sets every bench subscription's `concurrency` (default
//! 64; hookwire's own default is 16).
//! `--no-archive` runs hookwire with `[archive] enabled = false`, to show what
//! keeping every event in the archive stream costs.
//!
//! `--soak MINUTES [--scrape SECONDS]` runs only a soak instead: one
//! `serve --role all` with two subscriptions to the sink under saturating
//! load, its RSS sampled every 10 s, and `/metrics` scraped every SECONDS or
//! never. Memory must not depend on the scrape schedule (issue 13).
//! `--fan-out N[,M...]` runs only (c) saturated with N subscriptions to the
//! same sink, for each N (issue 12): deliveries/s, CPU per delivery, peak
//! RSS, and the time to start and become ready with N subscriptions. Each
//! first measures RabbitMQ alone through the same fanout; `--raw-like
//! props,headers,args,topic` makes those queues carry hookwire's queue
//! arguments, the routing go through a topic exchange as hookwire's does,
//! and those messages carry what hookwire's carried until session 15 (any
//! subset), and `--raw-ack-every N` sets how many
//! deliveries its consumers ack at once (default 32).
//! `--ingress [--baseline PATH] [--rounds N]` runs only (a) and (b), in N
//! rounds (default 3): each round both raw ceilings, then the ingress (and
//! the baseline binary's), each ratio within its round; then the medians
//! (issue 12's "ingress ≥ 80% of raw").
//! `--raw-variants [--rounds N]` runs RabbitMQ alone doing what the
//! ingress asks of it (its topology, properties, mandatory flag, channel
//! count), one change at a time: where RabbitMQ's cost per event comes from.
//! `--churn [--seconds N]` runs only issue 9's benchmark instead: API
//! subscription changes under 1,000 events/s on three processes (see
//! `churn.rs`).
//! Results go to stdout; docs/BENCHMARKS.md records them with the machine.

mod churn;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use futures_util::future::join_all;
use hookwire::{config::Secret, ingress::schemes::StandardWebhooks, ingress::verify::Scheme};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CONCURRENCY: usize = 64;
const BODY_BYTES: usize = 1024;
/// The steady load at which end-to-end latency is reported (well below saturation).
const PACED_RATE: f64 = 1000.0;
/// `--no-archive`: run hookwire without the archive stream, to see its cost.
static NO_ARCHIVE: AtomicBool = AtomicBool::new(false);
/// Whether hookwire runs with the event log on (unless `--no-event-log`;
/// flipped by `--compare-event-log`).
static EVENT_LOG: AtomicBool = AtomicBool::new(false);
/// Each bench subscription's `concurrency` (`--concurrency N`, default 64).
static SUBSCRIPTION_CONCURRENCY: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(64);
/// `--raw-like WORDS`: what the raw fan-out's messages, queues and routing
/// share with hookwire's (`args`, `topic`), or with what hookwire's messages carried before
/// session 15 framed the envelope in the body (`props`, `headers`); see
/// `raw_fan_out`.
static RAW_LIKE: Mutex<String> = Mutex::new(String::new());
/// `--raw-ack-every N`: the raw fan-out's consumers ack N at a time (32).
static RAW_ACK_EVERY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(32);
/// The hookwire binary the phases run: this build's, or `--baseline`'s.
static BINARY: Mutex<Option<String>> = Mutex::new(None);

fn main() {
    // `cargo test` runs harness-less benches without `--bench`: do nothing then.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    NO_ARCHIVE.store(args.iter().any(|a| a == "--no-archive"), Ordering::Relaxed);
    EVENT_LOG.store(!args.iter().any(|a| a == "--no-event-log"), Ordering::Relaxed);
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Some(minutes) = value_of("--soak").map(|m| m.parse::<u64>().expect("--soak MINUTES")) {
        let scrape = value_of("--scrape").map(|s| Duration::from_secs(s.parse().expect("--scrape SECONDS")));
        runtime.block_on(soak(Duration::from_secs(minutes * 60), scrape));
        return;
    }
    if let Some(words) = value_of("--raw-like") {
        *RAW_LIKE.lock().unwrap() = words.clone();
    }
    if let Some(n) = value_of("--raw-ack-every") {
        RAW_ACK_EVERY.store(n.parse().expect("--raw-ack-every N"), Ordering::Relaxed);
    }
    if let Some(n) = value_of("--concurrency") {
        SUBSCRIPTION_CONCURRENCY.store(n.parse().expect("--concurrency N"), Ordering::Relaxed);
    }
    let rounds = value_of("--rounds").map_or(3, |n| n.parse().expect("--rounds N"));
    if args.iter().any(|a| a == "--compare-event-log") {
        let subscriptions = value_of("--fan-out").map_or(1, |n| n.parse().expect("--fan-out N"));
        let set = |on: bool| EVENT_LOG.store(on, Ordering::Relaxed);
        runtime.block_on(compare(Duration::from_secs(seconds), rounds, subscriptions, ["log off", "log on"], set));
        return;
    }
    if args.iter().any(|a| a == "--raw-variants") {
        runtime.block_on(raw_variants(Duration::from_secs(seconds), rounds));
        return;
    }
    if args.iter().any(|a| a == "--ingress") {
        let baseline = value_of("--baseline").cloned();
        runtime.block_on(ingress_rounds(Duration::from_secs(seconds), rounds, baseline));
        return;
    }
    if let Some(baseline) = value_of("--baseline") {
        let subscriptions = value_of("--fan-out").map_or(1, |n| n.parse().expect("--fan-out N"));
        let set = |this: bool| *BINARY.lock().unwrap() = (!this).then(|| baseline.clone());
        let labels = ["baseline", "this build"];
        runtime.block_on(compare(Duration::from_secs(seconds), rounds, subscriptions, labels, set));
        return;
    }
    if let Some(counts) = value_of("--fan-out") {
        let counts: Vec<usize> = counts.split(',').map(|n| n.parse().expect("--fan-out N[,M...]")).collect();
        runtime.block_on(fan_out(Duration::from_secs(seconds), &counts));
        return;
    }
    if args.iter().any(|a| a == "--churn") {
        runtime.block_on(churn::churn(Duration::from_secs(seconds)));
        return;
    }
    runtime.block_on(run(Duration::from_secs(seconds)));
}

async fn run(duration: Duration) {
    println!(
        "pipeline benchmark: {CONCURRENCY} concurrent senders, {BODY_BYTES} B bodies, {duration:?} per phase, archive {}",
        if NO_ARCHIVE.load(Ordering::Relaxed) { "off" } else { "on" }
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        rabbitmq_version()
    );

    let raw = raw_ceiling(duration, false).await;
    println!("(a) raw RabbitMQ ceiling: {:.0} msg/s (confirmed, persistent, quorum queue)", raw.rate);
    println!("    {}", raw.cpu_line());
    let raw_both = raw_ceiling(duration, true).await;
    println!(
        "(a) raw, an accepted event's two writes: {:.0} msg/s (a fanout exchange to a stream and a quorum queue)",
        raw_both.rate
    );
    println!("    {}", raw_both.cpu_line());

    let ingress = ingress_only(duration).await;
    println!(
        "(b) ingress: {:.0} accepted/s, latency p50 {:.2} ms p99 {:.2} ms, peak RSS {:.1} MiB, hookwire CPU {:.0} µs/request, errors {}",
        ingress.rate, ingress.p50_ms, ingress.p99_ms, ingress.rss_mib, ingress.cpu_us_per_request, ingress.errors
    );
    println!(
        "    cores busy: hookwire {:.2}, RabbitMQ {:.2} ({:.0} µs/request), load {:.2} ({:.0} µs/request)",
        ingress.cpu.hookwire / ingress.span,
        ingress.cpu.rabbitmq / ingress.span,
        ingress.cpu.rabbitmq * 1e6 / ingress.accepted.max(1) as f64,
        ingress.cpu.bench / ingress.span,
        ingress.cpu.bench * 1e6 / ingress.accepted.max(1) as f64,
    );
    println!(
        "    ingress / raw = {:.0}%; ingress / raw with the same two writes = {:.0}%",
        100.0 * ingress.rate / raw.rate,
        100.0 * ingress.rate / raw_both.rate
    );

    let e2e = end_to_end(duration, None, BODY_BYTES, None, 1).await;
    println!(
        "(c) end to end, saturated: {:.0} delivered/s ({} events), accepted {:.0}/s, ingress→destination p50 {:.2} ms p99 {:.2} ms (queueing), peak RSS {:.1} MiB",
        e2e.delivered_rate, e2e.delivered, e2e.accepted_rate, e2e.p50_ms, e2e.p99_ms, e2e.rss_mib
    );
    println!("    {}", e2e.cpu_line());
    let paced = end_to_end(duration, Some(PACED_RATE), BODY_BYTES, None, 1).await;
    println!(
        "(c) end to end at {PACED_RATE:.0}/s: {:.0} delivered/s ({} events), ingress→destination p50 {:.2} ms p99 {:.2} ms, peak RSS {:.1} MiB",
        paced.delivered_rate, paced.delivered, paced.p50_ms, paced.p99_ms, paced.rss_mib
    );
    for (label, transform) in [("no transform", None), ("pick 5 fields", Some(TRANSFORM))] {
        let run = end_to_end(duration, None, 2048, transform, 1).await;
        println!(
            "(d) 2 KiB events, {label}: {:.0} delivered/s ({} events), accepted {:.0}/s, peak RSS {:.1} MiB",
            run.delivered_rate, run.delivered, run.accepted_rate, run.rss_mib
        );
    }
}

fn rabbitmq_version() -> String {
    Command::new("rabbitmqctl")
        .args(["version"])
        .output()
        .ok()
        .map(|o| format!("RabbitMQ {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "RabbitMQ (version unknown)".into())
}

fn body(seq: u64) -> Vec<u8> {
    body_of(seq, BODY_BYTES)
}

/// An invoice-like JSON event of `size` bytes.
fn body_of(seq: u64, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"type":"invoice.paid","seq":{seq},"data":{{"object":{{"id":"in_{seq}","amount":4200,"currency":"eur","customer":"cus_42","status":"paid"}}}},"pad":""#
    );
    let mut body = head.into_bytes();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// The transform of phase (d): pick and rename 5 fields.
const TRANSFORM: &str = "{id, kind: .type, amount: .body.data.object.amount, currency: .body.data.object.currency, customer: .body.data.object.customer}";

// ---------------------------------------------------------------- (a) raw

/// Persistent 1 KiB messages published with confirms by 64 publishers to a
/// quorum queue; with `archive`, to a fanout exchange bound to a stream and
/// to that queue: what RabbitMQ does for each event the ingress accepts
/// (its `ns.accepted` feeds the archive stream and, through the topic
/// exchange, a subscription's quorum queue).
async fn raw_ceiling(duration: Duration, archive: bool) -> Raw {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let setup = conn.create_channel().await.unwrap();
    let queue = format!("bench-raw-{}", uuid::Uuid::now_v7().simple());
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    setup.queue_declare(queue.as_str().into(), durable, args).await.unwrap();
    let (exchange, stream) = (format!("{queue}.accepted"), format!("{queue}.archive"));
    if archive {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
        setup.queue_declare(stream.as_str().into(), durable, args).await.unwrap();
        let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        let kind = lapin::ExchangeKind::Fanout;
        setup.exchange_declare(exchange.as_str().into(), kind, options, FieldTable::default()).await.unwrap();
        for target in [&queue, &stream] {
            let bind = lapin::options::QueueBindOptions::default();
            setup
                .queue_bind(target.as_str().into(), exchange.as_str().into(), "".into(), bind, FieldTable::default())
                .await
                .unwrap();
        }
    }
    let (to_exchange, key) = if archive { (exchange.clone(), String::new()) } else { (String::new(), queue.clone()) };
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = body(0);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let (sent, stop, payload) = (sent.clone(), stop.clone(), payload.clone());
        let (to_exchange, key) = (to_exchange.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let props = BasicProperties::default().with_delivery_mode(2);
                let options = BasicPublishOptions::default();
                let confirm = channel
                    .basic_publish(to_exchange.as_str().into(), key.as_str().into(), options, &payload, props)
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let rabbitmq = *RABBITMQ_PID.get_or_init(rabbitmq_pid);
    let (started, cpu_before) = (Instant::now(), CpuReading::now(std::process::id(), rabbitmq));
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    join_all(tasks).await;
    let span = started.elapsed().as_secs_f64();
    let cpu = CpuReading::now(std::process::id(), rabbitmq).since(cpu_before);
    let rate = sent.load(Ordering::Relaxed) as f64 / span;
    setup.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    if archive {
        setup.queue_delete(stream.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        let options = lapin::options::ExchangeDeleteOptions::default();
        setup.exchange_delete(exchange.as_str().into(), options).await.unwrap();
    }
    // The publishers are the bench process itself (read as "hookwire" too).
    Raw { rate, rabbitmq_cores: cpu.rabbitmq / span, publishers_cores: cpu.bench / span }
}

/// Phase (a): the rate, and the cores RabbitMQ and the publishers used.
struct Raw {
    rate: f64,
    rabbitmq_cores: f64,
    publishers_cores: f64,
}

impl Raw {
    fn cpu_line(&self) -> String {
        format!(
            "cores busy: RabbitMQ {:.2} ({:.0} µs/msg), publishers {:.2} ({:.0} µs/msg)",
            self.rabbitmq_cores,
            self.rabbitmq_cores * 1e6 / self.rate,
            self.publishers_cores,
            self.publishers_cores * 1e6 / self.rate
        )
    }
}

/// What the ingress's publish asks of RabbitMQ, without the ingress: an
/// idle `serve --role ingress` declares its topology (`ns.accepted` fanout
/// to the archive stream and to the topic exchange `ns.events`, with its
/// alternate exchange, bound to a subscription's quorum queue), and 64
/// lapin publishers publish to it as the ingress does: `properties` the
/// message hookwire makes of an envelope (since session 15 the envelope
/// framed in the body, see `broker::message`) or the bare body with
/// persistent delivery mode, `mandatory` or not, on `channels`
/// confirm channels (the ingress uses a pool of a few).
#[derive(Clone, Copy)]
struct AsIngress {
    properties: bool,
    mandatory: bool,
    channels: usize,
}

async fn raw_as_ingress(duration: Duration, variant: AsIngress) -> Raw {
    let hookwire = Hookwire::start("ingress", None, None, 1).await;
    let exchange = format!("{}.accepted", hookwire.namespace);
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let envelope = hookwire::envelope::Envelope {
        id: "msg_2mYb3xXWkQ9T0a1BcDeFgHiJkLm".into(),
        source: "bench".into(),
        event_type: "invoice.paid".into(),
        received_at: SystemTime::now(),
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: body(0).into(),
    };
    let (properties, payload) = if variant.properties {
        let (properties, body) = hookwire::broker::message::encode(&envelope, &Default::default());
        (properties, bytes::Bytes::from(body))
    } else {
        (BasicProperties::default().with_delivery_mode(2), envelope.body.clone())
    };
    let key = envelope.routing_key();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut channels = Vec::new();
    for _ in 0..variant.channels {
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        channels.push(channel);
    }
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let channel = channels[i % channels.len()].clone();
        let (sent, stop, payload) = (sent.clone(), stop.clone(), payload.clone());
        let (exchange, key, properties) = (exchange.clone(), key.clone(), properties.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let options = BasicPublishOptions { mandatory: variant.mandatory, ..Default::default() };
                let confirm = channel
                    .basic_publish(exchange.as_str().into(), key.as_str().into(), options, &payload, properties.clone())
                    .await
                    .unwrap();
                let confirmation = confirm.await.unwrap();
                assert!(confirmation.is_ack() && confirmation.take_message().is_none(), "published and routed");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let rabbitmq = *RABBITMQ_PID.get_or_init(rabbitmq_pid);
    let (started, cpu_before) = (Instant::now(), CpuReading::now(std::process::id(), rabbitmq));
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    join_all(tasks).await;
    let span = started.elapsed().as_secs_f64();
    let cpu = CpuReading::now(std::process::id(), rabbitmq).since(cpu_before);
    let _ = conn.close(200, "done".into()).await;
    hookwire.stop().await;
    Raw {
        rate: sent.load(Ordering::Relaxed) as f64 / span,
        rabbitmq_cores: cpu.rabbitmq / span,
        publishers_cores: cpu.bench / span,
    }
}

/// `--raw-variants`: the plain raw ceilings, then [`raw_as_ingress`] with
/// one thing at a time changed toward what the ingress does, alternated
/// `rounds` times: where RabbitMQ's cost per accepted event comes from.
async fn raw_variants(duration: Duration, rounds: usize) {
    let variants: [(&str, Option<AsIngress>); 6] = [
        ("raw: one quorum queue", None),
        ("raw: fanout to stream + queue", None),
        ("as ingress: bare, 64 channels", Some(AsIngress { properties: false, mandatory: false, channels: 64 })),
        ("  + envelope properties", Some(AsIngress { properties: true, mandatory: false, channels: 64 })),
        ("  + mandatory", Some(AsIngress { properties: true, mandatory: true, channels: 64 })),
        ("  on 4 channels (the ingress)", Some(AsIngress { properties: true, mandatory: true, channels: 4 })),
    ];
    let mut results: Vec<Vec<Raw>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (label, variant)) in variants.iter().enumerate() {
            let raw = match variant {
                None => raw_ceiling(duration, i == 1).await,
                Some(variant) => raw_as_ingress(duration, *variant).await,
            };
            println!("round {round}, {label:<32} {:>7.0} msg/s, {}", raw.rate, raw.cpu_line());
            results[i].push(raw);
        }
    }
    println!("medians of {rounds} rounds:");
    for ((label, _), rows) in variants.iter().zip(&results) {
        let median_of = |f: &dyn Fn(&Raw) -> f64| median(rows.iter().map(f).collect());
        println!(
            "  {label:<32} {:>7.0} msg/s, RabbitMQ {:.0} µs/msg, publishers {:.0} µs/msg",
            median_of(&|r| r.rate),
            median_of(&|r| r.rabbitmq_cores * 1e6 / r.rate),
            median_of(&|r| r.publishers_cores * 1e6 / r.rate)
        );
    }
}

// ------------------------------------------------------------ hookwire child

/// The event log's cost (issue 10): end to end at [`PACED_RATE`], then
/// saturated, log off and on, alternated `rounds` times in one run; then
/// the medians side by side. Every phase starts from a flushed disk
/// (`sync`): a saturated phase leaves tens of MiB of dirty pages (the
/// log's file, RabbitMQ's segments) whose writeback would otherwise land
/// in the next phase's latencies.
/// Two variants of hookwire (`set(false)`, `set(true)`) alternated `rounds`
/// times, paced then saturated, with `subscriptions` subscriptions; prints
/// the medians side by side.
/// Which variant goes first in `round`: the first in odd rounds, the second
/// in even ones, so a machine that slows down (or speeds up) during a run
/// does not favour one of the two.
fn order(round: usize) -> [bool; 2] {
    if round % 2 == 1 { [false, true] } else { [true, false] }
}

async fn compare(duration: Duration, rounds: usize, subscriptions: usize, labels: [&str; 2], set: impl Fn(bool)) {
    println!(
        "{} vs {}: end to end, {CONCURRENCY} senders, {BODY_BYTES} B bodies, {subscriptions} subscription(s), {duration:?} per phase, {rounds} rounds",
        labels[0], labels[1]
    );
    let phase = |second: bool, rate: Option<f64>| {
        set(second);
        let _ = Command::new("sync").status();
        end_to_end(duration, rate, BODY_BYTES, None, subscriptions)
    };
    let mut paced: [Vec<EndToEnd>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for second in order(round) {
            let run = phase(second, Some(PACED_RATE)).await;
            println!(
                "round {round}, {:<10}: at {PACED_RATE:.0}/s p50 {:.2} ms p99 {:.2} ms",
                labels[usize::from(second)],
                run.p50_ms,
                run.p99_ms
            );
            paced[usize::from(second)].push(run);
        }
    }
    let mut saturated: [Vec<EndToEnd>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for second in order(round) {
            let run = phase(second, None).await;
            println!(
                "round {round}, {:<10}: saturated {:.0} delivered/s (accepted {:.0}/s), peak RSS {:.1} MiB",
                labels[usize::from(second)],
                run.delivered_rate,
                run.accepted_rate,
                run.rss_mib
            );
            println!("    {}", run.cpu_line());
            saturated[usize::from(second)].push(run);
        }
    }
    let results: [Vec<(EndToEnd, EndToEnd)>; 2] =
        [0, 1].map(|i| std::mem::take(&mut saturated[i]).into_iter().zip(std::mem::take(&mut paced[i])).collect());
    /// One number out of a round's (saturated, paced) pair.
    type Pick<'a> = &'a dyn Fn(&(EndToEnd, EndToEnd)) -> f64;
    let median_of = |second: bool, value: Pick| median(results[usize::from(second)].iter().map(value).collect());
    let rows: [(&str, Pick); 7] = [
        ("saturated delivered/s", &|r| r.0.delivered_rate),
        ("hookwire CPU µs/delivery", &|r| r.0.hookwire_us()),
        ("RabbitMQ CPU µs/delivery", &|r| r.0.rabbitmq_us()),
        ("RabbitMQ % of what's left", &|r| r.0.rabbitmq_share()),
        ("peak RSS MiB", &|r| r.0.rss_mib),
        ("p50 ms at 1,000/s", &|r| r.1.p50_ms),
        ("p99 ms at 1,000/s", &|r| r.1.p99_ms),
    ];
    println!("medians of {rounds} rounds:     {:>10} {:>10}     change", labels[0], labels[1]);
    for (label, value) in rows {
        let (first, second) = (median_of(false, value), median_of(true, value));
        println!("  {label:<26} {first:>10.2} {second:>10.2} {:>+9.1}%", 100.0 * (second - first) / first);
    }
}

/// Issue 12: one event fanned out to N subscriptions (all to one sink),
/// saturated, for each N in `counts`.
async fn fan_out(duration: Duration, counts: &[usize]) {
    println!("fan-out: {CONCURRENCY} senders, {BODY_BYTES} B bodies, {duration:?} saturated per scenario");
    for &n in counts {
        let _ = Command::new("sync").status();
        let raw = raw_fan_out(duration, n).await;
        println!(
            "raw fan-out {n}: {:.0} deliveries/s ({:.0} events/s confirmed); RabbitMQ {:.1} µs/delivery, {:.2} cores busy ({:.0}% of what the bench left)",
            raw.deliveries_rate, raw.events_rate, raw.rabbitmq_us, raw.rabbitmq_cores, raw.rabbitmq_share
        );
        let _ = Command::new("sync").status();
        let run = end_to_end(duration, None, BODY_BYTES, None, n).await;
        println!(
            "fan-out {n}: {:.0} deliveries/s ({:.0} events/s accepted), p50 {:.2} ms p99 {:.2} ms (queueing), peak RSS {:.1} MiB; ready in {:.2} s at {:.1} MiB",
            run.delivered_rate, run.accepted_rate, run.p50_ms, run.p99_ms, run.rss_mib, run.ready_s, run.ready_rss_mib
        );
        println!("    {}", run.cpu_line());
        println!("    hookwire / raw = {:.0}% of the deliveries/s", 100.0 * run.delivered_rate / raw.deliveries_rate);
    }
}

struct RawFanOut {
    events_rate: f64,
    deliveries_rate: f64,
    rabbitmq_us: f64,
    rabbitmq_cores: f64,
    rabbitmq_share: f64,
}

/// RabbitMQ alone doing what fan-out to `n` subscriptions asks of it: the
/// same 64 confirmed publishers through a fanout exchange to a stream and
/// `n` quorum queues, each queue drained by a consumer that acks in runs
/// (as hookwire's workers do), with hookwire's prefetch. The ceiling the
/// fan-out scenarios compare with: no HTTP, no hookwire.
async fn raw_fan_out(duration: Duration, n: usize) -> RawFanOut {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let setup = conn.create_channel().await.unwrap();
    let base = format!("bench-fan-{}", uuid::Uuid::now_v7().simple());
    let (exchange, stream) = (format!("{base}.accepted"), format!("{base}.archive"));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    setup
        .exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Fanout, options, FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    setup.queue_declare(stream.as_str().into(), durable, args).await.unwrap();
    let queues: Vec<String> = (0..n).map(|i| format!("{base}.q{i}")).collect();
    // `--raw-like`: `args`, the arguments hookwire's work queues carry
    // (at-least-once dead-lettering, reject-publish, a delivery limit);
    // `props` and `headers`, the properties and the header table that
    // carried hookwire's envelope until session 15 (a sender's id, timestamp
    // and user agent among them). What each costs RabbitMQ, apart
    // (docs/BENCHMARKS.md, session 14); hookwire's messages now carry
    // neither, only the envelope framed in the body. `topic`: hookwire's
    // routing, the queues bound by pattern (`bench.#`) to a topic exchange
    // with an alternate exchange, itself bound to the fanout.
    let variant = RAW_LIKE.lock().unwrap().clone();
    let routed_by = if variant.contains("topic") {
        let topic = format!("{base}.events");
        let (unrouted, mut args) = (format!("{base}.unrouted"), FieldTable::default());
        setup
            .exchange_declare(unrouted.as_str().into(), lapin::ExchangeKind::Fanout, options, args.clone())
            .await
            .unwrap();
        args.insert("alternate-exchange".into(), AMQPValue::LongString(unrouted.into()));
        setup.exchange_declare(topic.as_str().into(), lapin::ExchangeKind::Topic, options, args).await.unwrap();
        let bind = lapin::options::ExchangeBindOptions::default();
        setup
            .exchange_bind(topic.as_str().into(), exchange.as_str().into(), "".into(), bind, FieldTable::default())
            .await
            .unwrap();
        (topic, "bench.#")
    } else {
        (exchange.clone(), "")
    };
    for queue in &queues {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        if variant.contains("args") {
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(format!("{queue}.dead").into()));
            args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
            args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
        }
        setup.queue_declare(queue.as_str().into(), durable, args).await.unwrap();
    }
    for (target, source, key) in queues.iter().map(|q| (q, &routed_by.0, routed_by.1)).chain([(&stream, &exchange, "")])
    {
        let bind = lapin::options::QueueBindOptions::default();
        setup
            .queue_bind(target.as_str().into(), source.as_str().into(), key.into(), bind, FieldTable::default())
            .await
            .unwrap();
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for queue in &queues {
        let channel = conn.create_channel().await.unwrap();
        // hookwire's prefetch with the event log on: 8 × concurrency.
        let prefetch = 8 * SUBSCRIPTION_CONCURRENCY.load(Ordering::Relaxed);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.unwrap();
        let options = BasicConsumeOptions::default();
        let mut deliveries =
            channel.basic_consume(queue.as_str().into(), "".into(), options, FieldTable::default()).await.unwrap();
        let delivered = delivered.clone();
        let ack_every = RAW_ACK_EVERY.load(Ordering::Relaxed);
        consumers.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut unacked = 0;
            while let Some(Ok(delivery)) = deliveries.next().await {
                delivered.fetch_add(1, Ordering::Relaxed);
                unacked += 1;
                if unacked == ack_every {
                    delivery.acker.ack(BasicAckOptions { multiple: true }).await.unwrap();
                    unacked = 0;
                }
            }
        }));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let payload = body(0);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let (sent, stop, payload, exchange) = (sent.clone(), stop.clone(), payload.clone(), exchange.clone());
        let with_headers = variant.contains("headers");
        let with_props = variant.contains("props");
        // As the ingress publishes: a routing key, and `mandatory` (which
        // the alternate exchange answers).
        let (key, mandatory) = if variant.contains("topic") { ("bench.invoice.paid", true) } else { ("", false) };
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut props = BasicProperties::default().with_delivery_mode(2);
                if with_headers {
                    let mut h = FieldTable::default();
                    for (k, v) in [
                        ("hookwire-source", "acme"),
                        ("hookwire-event-type", "invoice.paid"),
                        ("hookwire-received-at", "2026-12-07T12:00:00.123456Z"),
                        ("hookwire-h-webhook-id", "msg_2mAbCdEfGhIjKlMnOpQrStUvWx"),
                        ("hookwire-h-webhook-timestamp", "1733572800"),
                        ("hookwire-h-user-agent", "acme-webhooks/1.0"),
                    ] {
                        h.insert(k.into(), AMQPValue::LongString(v.into()));
                    }
                    h.insert("hookwire-attempts".into(), AMQPValue::LongLongInt(0));
                    props = props.with_headers(h);
                }
                if with_props {
                    props = props
                        .with_message_id("msg_2mAbCdEfGhIjKlMnOpQrStUvWx".into())
                        .with_timestamp(1733572800)
                        .with_app_id("hookwire".into())
                        .with_content_type("application/json".into());
                }
                let options = BasicPublishOptions { mandatory, ..Default::default() };
                let confirm = channel
                    .basic_publish(exchange.as_str().into(), key.into(), options, &payload, props)
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let rabbitmq = *RABBITMQ_PID.get_or_init(rabbitmq_pid);
    let (cpu_before, started) = (CpuReading::now(std::process::id(), rabbitmq), Instant::now());
    let delivered_before = delivered.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let (events, deliveries) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed) - delivered_before);
    let (cpu, span) =
        (CpuReading::now(std::process::id(), rabbitmq).since(cpu_before), started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    join_all(tasks).await;
    for queue in queues.iter().chain([&stream]) {
        setup.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
    for name in [format!("{base}.events"), format!("{base}.unrouted"), exchange] {
        // The topic exchanges exist only with `topic`; deleting one that
        // does not is not an error in RabbitMQ.
        setup.exchange_delete(name.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    for consumer in consumers {
        consumer.abort();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    // The bench process is the publishers and consumers here: its CPU is
    // in `hookwire` (`now` was given its own pid), so count it once.
    let bench = cpu.hookwire;
    RawFanOut {
        events_rate: events as f64 / span,
        deliveries_rate: deliveries as f64 / span,
        rabbitmq_us: cpu.rabbitmq * 1e6 / deliveries.max(1) as f64,
        rabbitmq_cores: cpu.rabbitmq / span,
        rabbitmq_share: 100.0 * (cpu.rabbitmq / span) / (cores - bench / span),
    }
}

struct Hookwire {
    child: Child,
    ingress: SocketAddr,
    admin: SocketAddr,
    namespace: String,
    subscriptions: usize,
    /// From spawning the process until `/readyz` answered 200.
    ready_after: Duration,
    _dir: tempfile::TempDir,
}

/// `[subscriptions.*]` tables: `sink`, then `sink-2`, `sink-3`, ... all to `url`.
fn subscriptions_toml(count: usize, url: &str) -> String {
    (1..=count)
        .map(|i| {
            let name = if i == 1 { "sink".to_owned() } else { format!("sink-{i}") };
            let concurrency = SUBSCRIPTION_CONCURRENCY.load(Ordering::Relaxed);
            format!("[subscriptions.{name}]\ntopics = [\"bench.#\"]\nurl = \"{url}\"\nconcurrency = {concurrency}\n")
        })
        .collect()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn new_namespace() -> String {
    format!("bench-{}", uuid::Uuid::now_v7().simple())
}

impl Hookwire {
    async fn start(role: &str, sink: Option<SocketAddr>, transform: Option<&str>, subscriptions: usize) -> Self {
        let url = match sink {
            Some(addr) => format!("http://{addr}/"),
            None => "http://127.0.0.1:9/".to_owned(), // never consumed in role=ingress
        };
        let tail = subscriptions_toml(subscriptions, &url);
        let tail = match transform {
            Some(program) => format!("{tail}transform = '{program}'\n"),
            None => tail,
        };
        Self::launch(role, new_namespace(), &tail, subscriptions).await
    }

    /// `serve --role ROLE` on `namespace` with the bench source, fresh
    /// listeners, and `tail` (TOML after `[sources.bench]`) naming
    /// `subscriptions` file subscriptions; returns once it is ready.
    async fn launch(role: &str, namespace: String, tail: &str, subscriptions: usize) -> Self {
        let (ingress, admin) = (free_port(), free_port());
        let config = format!(
            r#"
[ingress]
listen = "{ingress}"
[admin]
listen = "{admin}"
[rabbitmq]
url = "{AMQP}"
namespace = "{namespace}"
[sources.bench]
scheme = "standard-webhooks"
secrets = ["{SECRET}"]
{tail}"#
        );
        let config =
            if NO_ARCHIVE.load(Ordering::Relaxed) { format!("{config}[archive]\nenabled = false\n") } else { config };
        let dir = tempfile::tempdir().unwrap();
        let config = if EVENT_LOG.load(Ordering::Relaxed) {
            let path = dir.path().join("events.db");
            format!("{config}[event_log]\nenabled = true\npath = \"{}\"\n", path.display())
        } else {
            format!("{config}[event_log]\nenabled = false\n")
        };
        let path = dir.path().join("hookwire.toml");
        std::fs::write(&path, config).unwrap();
        let binary = BINARY.lock().unwrap().clone().unwrap_or_else(|| env!("CARGO_BIN_EXE_hookwire").to_owned());
        let child = Command::new(binary)
            .args(["serve", "--config", path.to_str().unwrap(), "--role", role])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let spawned = Instant::now();
        let mut this = Self { child, ingress, admin, namespace, subscriptions, ready_after: Duration::ZERO, _dir: dir };
        let client = reqwest::Client::new();
        let ready = format!("http://{}/readyz", this.admin);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !client.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "hookwire did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        this.ready_after = spawned.elapsed();
        this
    }

    /// Peak resident set size (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }

    /// Resident set size now (VmRSS) in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }

    /// SIGTERM, and wait until it has drained and exited.
    async fn terminate(self) -> Self {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        tokio::task::spawn_blocking(move || {
            let mut this = self;
            let _ = this.child.wait();
            this
        })
        .await
        .unwrap()
    }

    /// [`Hookwire::terminate`], then delete the namespace the run declared
    /// (the last process of a namespace does this).
    async fn stop(self) {
        let this = self.terminate().await;
        let config = hookwire::config::Config::from_toml(
            &format!(
                "[rabbitmq]\nnamespace = \"{}\"\n{}",
                this.namespace,
                subscriptions_toml(this.subscriptions, "http://127.0.0.1:9/")
            ),
            &|_| None,
        )
        .unwrap();
        let topology = hookwire::broker::Topology::from_config(&config);
        let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
        topology.delete(&conn.create_channel().await.unwrap()).await.unwrap();
    }
}

/// A run that fails (a panic, e.g. "did not become ready") must not leave its
/// hookwire running: a stray process keeps redeclaring its namespace and
/// takes CPU from every later run. Its queues stay; the message says which.
impl Drop for Hookwire {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("bench: killed hookwire; namespace {} is left in RabbitMQ", self.namespace);
        }
    }
}

/// User + system CPU seconds process `pid` has used so far (0 if it is gone).
fn cpu_seconds_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The local RabbitMQ node's OS process, to report its share of the CPU.
fn rabbitmq_pid() -> Option<u32> {
    let out = Command::new("rabbitmqctl").args(["eval", "os:getpid()."]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().trim_matches('"').parse().ok()
}

/// CPU used by hookwire, RabbitMQ and this bench (load generator and sink)
/// between two readings.
#[derive(Clone, Copy, Default)]
struct CpuReading {
    hookwire: f64,
    rabbitmq: f64,
    bench: f64,
}

impl CpuReading {
    fn now(hookwire: u32, rabbitmq: Option<u32>) -> Self {
        Self {
            hookwire: cpu_seconds_of(hookwire),
            rabbitmq: rabbitmq.map_or(0.0, cpu_seconds_of),
            bench: cpu_seconds_of(std::process::id()),
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            hookwire: self.hookwire - earlier.hookwire,
            rabbitmq: self.rabbitmq - earlier.rabbitmq,
            bench: self.bench - earlier.bench,
        }
    }
}

// ------------------------------------------------------------------- load

struct Load {
    accepted: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    /// The ids answered 202, when asked for (a soak would hold millions).
    accepted_ids: Vec<String>,
}

/// 64 senders, each on its own connection, for `duration`: closed-loop (as
/// fast as answers come) or, with `rate`, paced to that many requests/s in all.
async fn drive(ingress: SocketAddr, duration: Duration, rate: Option<f64>, body_bytes: usize) -> Load {
    drive_keeping_ids(ingress, duration, rate, body_bytes, false).await
}

/// [`drive`], keeping the ids answered 202 when `keep_ids`.
async fn drive_keeping_ids(
    ingress: SocketAddr,
    duration: Duration,
    rate: Option<f64>,
    body_bytes: usize,
    keep_ids: bool,
) -> Load {
    let scheme = Arc::new(StandardWebhooks::new(&[Secret::new(SECRET)], None).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{ingress}/webhooks/bench");
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let (scheme, stop, url) = (scheme.clone(), stop.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let (mut accepted, mut errors, mut latencies, mut ids) = (0u64, 0u64, Vec::new(), Vec::new());
            let mut seq = 0u64;
            let mut pace = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(CONCURRENCY as f64 / r)));
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                seq += 1;
                let payload = body_of(seq, body_bytes);
                let sent_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
                let id = format!("b{task}-{seq}-{sent_ns}");
                let mut request = client.post(&url).header("content-type", "application/json");
                for (name, value) in scheme.sign(&payload, SystemTime::now(), &id).expect("HMAC sources sign") {
                    request = request.header(name, value);
                }
                let started = Instant::now();
                match request.body(payload).send().await {
                    Ok(r) if r.status() == 202 => {
                        accepted += 1;
                        latencies.push(started.elapsed().as_micros() as u64);
                        if keep_ids {
                            ids.push(id);
                        }
                    }
                    _ => errors += 1,
                }
            }
            (accepted, errors, latencies, ids)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut load =
        Load { accepted: 0, errors: 0, elapsed: Duration::ZERO, latencies_us: Vec::new(), accepted_ids: Vec::new() };
    for (accepted, errors, latencies, ids) in join_all(tasks).await.into_iter().map(Result::unwrap) {
        load.accepted += accepted;
        load.errors += errors;
        load.latencies_us.extend(latencies);
        load.accepted_ids.extend(ids);
    }
    load.elapsed = started.elapsed();
    load
}

/// The median of the rounds' values: of an even number, the mean of the
/// two middle ones (the upper one alone leaned every 4-round median up).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

// --------------------------------------------------------------- (b) ingress

struct IngressResult {
    rate: f64,
    accepted: u64,
    cpu_us_per_request: f64,
    /// CPU of hookwire, RabbitMQ and the load generator (the bench) while
    /// the load ran, over `span` seconds.
    cpu: CpuReading,
    span: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    errors: u64,
}

async fn ingress_only(duration: Duration) -> IngressResult {
    let hookwire = Hookwire::start("ingress", None, None, 1).await;
    let rabbitmq = *RABBITMQ_PID.get_or_init(rabbitmq_pid);
    let (started, cpu_before) = (Instant::now(), CpuReading::now(hookwire.child.id(), rabbitmq));
    let mut load = drive(hookwire.ingress, duration, None, BODY_BYTES).await;
    let (span, cpu) =
        (started.elapsed().as_secs_f64(), CpuReading::now(hookwire.child.id(), rabbitmq).since(cpu_before));
    load.latencies_us.sort_unstable();
    let result = IngressResult {
        rate: load.accepted as f64 / load.elapsed.as_secs_f64(),
        accepted: load.accepted,
        cpu_us_per_request: cpu.hookwire * 1e6 / load.accepted.max(1) as f64,
        cpu,
        span,
        p50_ms: percentile(&load.latencies_us, 0.50),
        p99_ms: percentile(&load.latencies_us, 0.99),
        rss_mib: hookwire.peak_rss_mib(),
        errors: load.errors,
    };
    hookwire.stop().await;
    result
}

/// Issue 12's ingress target, in rounds: each round measures both raw
/// ceilings and then the ingress (this build, and `baseline` when given),
/// so every ratio compares phases minutes apart, not a raw phase of one
/// run with an ingress phase of another (the raw ceiling alone moves by
/// 30% between runs on this machine). Prints the medians.
async fn ingress_rounds(duration: Duration, rounds: usize, baseline: Option<String>) {
    println!(
        "ingress against the raw ceilings: {CONCURRENCY} senders, {BODY_BYTES} B bodies, {duration:?} per phase, {rounds} rounds"
    );
    let builds: Vec<Option<String>> = match baseline {
        Some(path) => vec![Some(path), None],
        None => vec![None],
    };
    let label = |build: &Option<String>| if build.is_some() { "baseline" } else { "this build" };
    // Per build: (rate, % of raw, % of raw with two writes, hookwire µs, RabbitMQ µs, p50 ms)
    let mut results: Vec<Vec<[f64; 6]>> = vec![Vec::new(); builds.len()];
    for round in 1..=rounds {
        let raw = raw_ceiling(duration, false).await;
        let both = raw_ceiling(duration, true).await;
        println!(
            "round {round}: raw {:.0}/s ({}), two writes {:.0}/s ({})",
            raw.rate,
            raw.cpu_line(),
            both.rate,
            both.cpu_line()
        );
        for (i, build) in builds.iter().enumerate() {
            *BINARY.lock().unwrap() = build.clone();
            let ingress = ingress_only(duration).await;
            let rabbitmq_us = ingress.cpu.rabbitmq * 1e6 / ingress.accepted.max(1) as f64;
            println!(
                "  {:<10}: {:.0} accepted/s ({:.0}% of raw, {:.0}% of two writes), p50 {:.2} ms, hookwire {:.0} µs, RabbitMQ {:.0} µs, load {:.0} µs per request; cores: hookwire {:.2}, RabbitMQ {:.2}, load {:.2}",
                label(build),
                ingress.rate,
                100.0 * ingress.rate / raw.rate,
                100.0 * ingress.rate / both.rate,
                ingress.p50_ms,
                ingress.cpu_us_per_request,
                rabbitmq_us,
                ingress.cpu.bench * 1e6 / ingress.accepted.max(1) as f64,
                ingress.cpu.hookwire / ingress.span,
                ingress.cpu.rabbitmq / ingress.span,
                ingress.cpu.bench / ingress.span,
            );
            results[i].push([
                ingress.rate,
                100.0 * ingress.rate / raw.rate,
                100.0 * ingress.rate / both.rate,
                ingress.cpu_us_per_request,
                rabbitmq_us,
                ingress.p50_ms,
            ]);
        }
    }
    *BINARY.lock().unwrap() = None;
    let names = ["accepted/s", "% of raw", "% of two writes", "hookwire µs/request", "RabbitMQ µs/request", "p50 ms"];
    println!("medians of {rounds} rounds: {}", builds.iter().map(label).collect::<Vec<_>>().join(" | "));
    for (k, name) in names.iter().enumerate() {
        let medians: Vec<String> =
            results.iter().map(|rows| format!("{:>10.1}", median(rows.iter().map(|r| r[k]).collect()))).collect();
        println!("  {name:<22} {}", medians.join(" "));
    }
}

// ----------------------------------------------------------- (c) end to end

#[derive(Default)]
struct SinkStats {
    latencies_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

async fn sink(State(stats): State<Arc<Mutex<SinkStats>>>, headers: HeaderMap, _body: Bytes) -> &'static str {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let sent_ns: u128 = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|id| id.rsplit('-').next())
        .and_then(|ns| ns.parse().ok())
        .unwrap_or(now_ns);
    let mut stats = stats.lock().unwrap();
    stats.latencies_us.push(((now_ns - sent_ns) / 1000) as u64);
    let now = Instant::now();
    stats.first.get_or_insert(now);
    stats.last = Some(now);
    "ok"
}

struct EndToEnd {
    delivered: usize,
    delivered_rate: f64,
    accepted_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    /// CPU used from the first request until the backlog drained.
    cpu: CpuReading,
    /// Wall time of that span, seconds.
    span: f64,
    /// Start to ready, seconds, and the RSS when ready (before any load).
    ready_s: f64,
    ready_rss_mib: f64,
}

impl EndToEnd {
    /// Microseconds of hookwire's CPU per delivery.
    fn hookwire_us(&self) -> f64 {
        self.cpu.hookwire * 1e6 / self.delivered.max(1) as f64
    }

    /// Microseconds of RabbitMQ's CPU per delivery.
    fn rabbitmq_us(&self) -> f64 {
        self.cpu.rabbitmq * 1e6 / self.delivered.max(1) as f64
    }

    /// RabbitMQ's CPU as a share of what hookwire and the bench left it of
    /// the machine's cores: issue 12's "RabbitMQ saturated" is ≥ 95%.
    fn rabbitmq_share(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let left = cores - (self.cpu.hookwire + self.cpu.bench) / self.span;
        100.0 * (self.cpu.rabbitmq / self.span) / left
    }

    /// `hookwire X µs, RabbitMQ Y µs, bench Z µs per delivery; cores busy: ...`
    fn cpu_line(&self) -> String {
        let per = |seconds: f64| seconds * 1e6 / self.delivered.max(1) as f64;
        let cores = |seconds: f64| seconds / self.span;
        format!(
            "CPU per delivery: hookwire {:.1} µs, RabbitMQ {:.1} µs, load+sink {:.1} µs; cores busy: hookwire {:.2}, RabbitMQ {:.2} ({:.0}% of what the others left), load+sink {:.2}",
            per(self.cpu.hookwire),
            per(self.cpu.rabbitmq),
            per(self.cpu.bench),
            cores(self.cpu.hookwire),
            cores(self.cpu.rabbitmq),
            self.rabbitmq_share(),
            cores(self.cpu.bench)
        )
    }
}

/// The RabbitMQ node's process id, read once.
static RABBITMQ_PID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// `serve --role all` with `subscriptions` subscriptions to one sink, driven
/// for `duration` (saturated, or paced to `rate` events/s), until the
/// backlog has drained.
async fn end_to_end(
    duration: Duration,
    rate: Option<f64>,
    body_bytes: usize,
    transform: Option<&str>,
    subscriptions: usize,
) -> EndToEnd {
    let stats = Arc::new(Mutex::new(SinkStats::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", post(sink)).with_state(stats.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let hookwire = Hookwire::start("all", Some(sink_addr), transform, subscriptions).await;
    let (ready_s, ready_rss_mib) = (hookwire.ready_after.as_secs_f64(), hookwire.rss_mib());
    let rabbitmq = *RABBITMQ_PID.get_or_init(rabbitmq_pid);
    let (cpu_before, started) = (CpuReading::now(hookwire.child.id(), rabbitmq), Instant::now());
    let load = drive(hookwire.ingress, duration, rate, body_bytes).await;
    // Let the backlog drain: wait until deliveries stop growing.
    let expected = load.accepted * subscriptions as u64;
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.lock().unwrap().latencies_us.len();
        if now as u64 >= expected {
            break;
        }
        if now == seen {
            // Nothing for 100 ms: give it a little longer before calling it done.
            tokio::time::sleep(Duration::from_millis(400)).await;
            if stats.lock().unwrap().latencies_us.len() == now {
                break;
            }
        }
        seen = now;
    }
    let (cpu, span) = (CpuReading::now(hookwire.child.id(), rabbitmq).since(cpu_before), started.elapsed());
    let rss_mib = hookwire.peak_rss_mib();
    if EVENT_LOG.load(Ordering::Relaxed) {
        // Whether the log kept up: records written, dropped, and its lag.
        let text = reqwest::get(format!("http://{}/metrics", hookwire.admin)).await.unwrap().text().await.unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("hookwire_event_log")).collect();
        println!("    event log: {}", lines.join(", "));
    }
    hookwire.stop().await;
    let mut stats = stats.lock().unwrap();
    stats.latencies_us.sort_unstable();
    let window = match (stats.first, stats.last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    EndToEnd {
        delivered: stats.latencies_us.len(),
        delivered_rate: stats.latencies_us.len() as f64 / window,
        accepted_rate: load.accepted as f64 / load.elapsed.as_secs_f64(),
        p50_ms: percentile(&stats.latencies_us, 0.50),
        p99_ms: percentile(&stats.latencies_us, 0.99),
        rss_mib,
        cpu,
        span: span.as_secs_f64(),
        ready_s,
        ready_rss_mib,
    }
}

// ------------------------------------------------------------------- soak

/// Counts deliveries and nothing else, so the bench's own memory stays flat.
async fn counting_sink(State(count): State<Arc<AtomicU64>>) -> &'static str {
    count.fetch_add(1, Ordering::Relaxed);
    "ok"
}

async fn soak(duration: Duration, scrape: Option<Duration>) {
    const SAMPLE_EVERY: Duration = Duration::from_secs(10);
    println!(
        "soak: {duration:?} saturated, 2 subscriptions, {CONCURRENCY} senders, {BODY_BYTES} B bodies, /metrics scraped {}",
        scrape.map(|s| format!("every {s:?}")).unwrap_or_else(|| "never".into())
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", post(counting_sink)).with_state(delivered.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let hookwire = Hookwire::start("all", Some(sink_addr), None, 2).await;
    let scraper = scrape.map(|every| {
        let url = format!("http://{}/metrics", hookwire.admin);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = client.get(&url).send().await.map(|r| r.bytes());
            }
        })
    });
    let load = tokio::spawn(drive(hookwire.ingress, duration, None, BODY_BYTES));
    let started = Instant::now();
    let mut samples = Vec::new();
    println!("   t (s)   RSS (MiB)   delivered");
    while started.elapsed() < duration {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let (t, rss) = (started.elapsed().as_secs(), hookwire.rss_mib());
        println!("{t:>8} {rss:>11.1} {:>11}", delivered.load(Ordering::Relaxed));
        samples.push((t, rss));
    }
    let load = load.await.unwrap();
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let after_first_minute: Vec<f64> = samples.iter().filter(|(t, _)| *t >= 60).map(|(_, rss)| *rss).collect();
    let level = after_first_minute.first().copied().unwrap_or(f64::NAN);
    let (low, high) = after_first_minute.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "soak result: accepted {} ({:.0}/s), errors {}, delivered {}; RSS at 60 s {level:.1} MiB, after it {low:.1}..{high:.1} MiB (max drift {:.1} MiB), peak {:.1} MiB",
        load.accepted,
        load.accepted as f64 / load.elapsed.as_secs_f64(),
        load.errors,
        delivered.load(Ordering::Relaxed),
        (high - level).max(level - low),
        hookwire.peak_rss_mib()
    );
    hookwire.stop().await;
}
