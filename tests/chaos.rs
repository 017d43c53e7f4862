//! The chaos harness (issue 11): hookwire under signed load while things
//! are killed, reporting accepted, delivered, lost and duplicated events.
//! Not part of every CI run (minutes each, and a cluster of its own):
//!
//! ```sh
//! cargo test --release --test chaos -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `cluster_node_kill`: a 3-node cluster (`deploy/rabbitmq-cluster.sh`),
//!   `serve --role all` given all three addresses and `rabbitmq.replicas =
//!   3`, load paced at `HOOKWIRE_CHAOS_RATE` events/s (default 1,000); the
//!   node hookwire is connected to is killed with `kill -9`, revived, and
//!   then the node it moved to. Reports the `503` window and the delivery
//!   gap per kill; fails if any event answered `202` is not delivered.
//!
//! Results and what they mean: docs/RELIABILITY.md.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use hookwire::{config::Secret, ingress::schemes::StandardWebhooks, ingress::verify::Scheme};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-cluster.sh");
const BASE_PORT: u16 = 5690;
const SENDERS: usize = 32;

fn cluster(args: &[&str]) -> String {
    let out = Command::new(CLUSTER).args(args).output().expect("deploy/rabbitmq-cluster.sh runs");
    assert!(out.status.success(), "rabbitmq-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The nodes (1..=3) hookwire has connections to, from the cluster's view.
fn connected_nodes() -> Vec<u16> {
    let node = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-node.sh");
    for name in ["hookwire-c1", "hookwire-c2", "hookwire-c3"] {
        let Ok(out) = Command::new(node).args(["ctl", name, "list_connections", "-q", "port"]).output() else {
            continue;
        };
        if !out.status.success() {
            continue; // that node is down: ask the next
        }
        let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u16>().ok())
            .map(|port| port - BASE_PORT)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        return ports;
    }
    Vec::new()
}

/// What the sink saw: every delivery's id and when.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, u32>,
    arrivals: Vec<Instant>,
}

async fn sink(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, _body: Bytes) -> &'static str {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut seen = seen.lock().unwrap();
    *seen.ids.entry(id).or_default() += 1;
    seen.arrivals.push(Instant::now());
    "ok"
}

/// What the senders saw.
#[derive(Default)]
struct Sent {
    accepted: Vec<String>,
    /// When each 503 (or connection error) was answered.
    refused: Vec<Instant>,
}

struct Hookwire {
    child: Child,
    ingress: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Hookwire {
    async fn start(sink: SocketAddr, namespace: &str) -> Self {
        let (ingress, admin) = (free_port(), free_port());
        let urls: Vec<String> =
            (1..=3).map(|n| format!("\"amqp://guest:guest@127.0.0.1:{}/%2f\"", BASE_PORT + n)).collect();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[ingress]
listen = "{ingress}"
[admin]
listen = "{admin}"
[rabbitmq]
url = [{urls}]
namespace = "{namespace}"
replicas = 3
operation_timeout = "5s"
[event_log]
path = "{log}"
[sources.chaos]
scheme = "standard-webhooks"
secrets = ["{SECRET}"]
[subscriptions.sink]
topics = ["chaos.#"]
url = "http://{sink}/"
concurrency = 32
"#,
            urls = urls.join(", "),
            log = dir.path().join("events.db").display(),
        );
        let path = dir.path().join("hookwire.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hookwire"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let this = Self { child, ingress, admin, _dir: dir };
        let ready = format!("http://{}/readyz", this.admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "hookwire did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }
}

impl Drop for Hookwire {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Paced, signed load until `stop`: `rate` events/s over [`SENDERS`] connections.
async fn drive(ingress: SocketAddr, rate: f64, stop: Arc<AtomicBool>, sent: Arc<Mutex<Sent>>) {
    let scheme = Arc::new(StandardWebhooks::new(&[Secret::new(SECRET)], None).unwrap());
    let url = format!("http://{ingress}/webhooks/chaos");
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (scheme, url, stop, sent) = (scheme.clone(), url.clone(), stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
            let mut pace = tokio::time::interval(Duration::from_secs_f64(SENDERS as f64 / rate));
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                seq += 1;
                let id = format!("chaos-{sender}-{seq}");
                let body = format!(r#"{{"type":"order.created","seq":{seq}}}"#);
                let mut request = client.post(&url).header("content-type", "application/json");
                for (name, value) in scheme.sign(body.as_bytes(), SystemTime::now(), &id).unwrap() {
                    request = request.header(name, value);
                }
                match request.body(body).send().await {
                    Ok(r) if r.status() == 202 => sent.lock().unwrap().accepted.push(id),
                    _ => sent.lock().unwrap().refused.push(Instant::now()),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The longest pause between two deliveries in `[from, to)`.
fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut window: Vec<Instant> = arrivals.iter().copied().filter(|t| *t >= from && *t < to).collect();
    window.sort_unstable();
    window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long, with a RabbitMQ cluster of its own: cargo test --release --test chaos -- --ignored"]
async fn cluster_node_kill() {
    let rate: f64 = std::env::var("HOOKWIRE_CHAOS_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(1000.0);
    println!("{}", cluster(&["start"]).trim());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", post(sink)).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let namespace = format!("chaos-{}", uuid::Uuid::now_v7().simple());
    let hookwire = Hookwire::start(sink_addr, &namespace).await;

    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Sent::default())));
    let load = tokio::spawn(drive(hookwire.ingress, rate, stop.clone(), sent.clone()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut kills = Vec::new();
    for round in 1..=2 {
        let connected = connected_nodes();
        let victim = *connected.first().expect("hookwire is connected to a node");
        println!("kill {round}: hookwire is connected to node {victim} (all: {connected:?}); kill -9");
        let killed_at = Instant::now();
        cluster(&["kill", &victim.to_string()]);
        tokio::time::sleep(Duration::from_secs(20)).await;
        println!("kill {round}: node {victim} revived; {}", cluster(&["revive", &victim.to_string()]).trim());
        tokio::time::sleep(Duration::from_secs(10)).await;
        kills.push((victim, killed_at, Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Drain: until every accepted event arrived, or nothing arrives for 20 s.
    let accepted = sent.lock().unwrap().accepted.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0, Instant::now());
    loop {
        let delivered = accepted.iter().filter(|id| seen.lock().unwrap().ids.contains_key(*id)).count();
        if delivered == accepted.len() || Instant::now() > deadline || last.1.elapsed() > Duration::from_secs(20) {
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let seen = seen.lock().unwrap();
    let sent = sent.lock().unwrap();
    let lost: Vec<&String> = accepted.iter().filter(|id| !seen.ids.contains_key(*id)).collect();
    let duplicates = seen.ids.values().filter(|&&n| n > 1).count();
    println!(
        "accepted {}, refused {}, delivered {} distinct, lost {}, delivered more than once {}",
        accepted.len(),
        sent.refused.len(),
        seen.ids.len(),
        lost.len(),
        duplicates
    );
    for (round, (victim, killed_at, until)) in kills.iter().enumerate() {
        let refused: Vec<Instant> = sent.refused.iter().copied().filter(|t| t >= killed_at && t < until).collect();
        let window = match (refused.iter().min(), refused.iter().max()) {
            (Some(first), Some(last)) => format!("{:.2} s ({} answers)", (*last - *first).as_secs_f64(), refused.len()),
            _ => "none".to_owned(),
        };
        println!(
            "kill {}: node {victim}: 503 window {window}; longest delivery gap {:.2} s",
            round + 1,
            longest_gap(&seen.arrivals, *killed_at, *until).as_secs_f64()
        );
    }
    drop(hookwire);
    println!("{}", cluster(&["stop"]).trim());
    assert!(lost.is_empty(), "{} accepted events never delivered, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}
