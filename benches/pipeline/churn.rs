//! `--churn`: issue 9's benchmark. Subscriptions made, changed and deleted
//! through the API while events flow, on three processes of one namespace
//! (`all`, which takes the API calls; `ingress`, which takes the events;
//! `worker`).
//!
//! Two phases of the same length at 1,000 events/s into the ingress process,
//! each event delivered to the two file subscriptions that exist throughout
//! (`/a` and `/b` on the bench's sink):
//! 1. steady: no changes;
//! 2. churn: 50 subscriptions are each created, changed (topics, url, timeout)
//!    and deleted, 150 changes spread evenly over the phase by 5 concurrent
//!    operators.
//!
//! Reported per phase: events lost (accepted, never delivered to a
//! subscription that existed throughout) and the ingress→destination p50/p99.
//! Per change: the API's answer time, and the time until every process runs
//! the change, from the request: the bench polls each process's
//! `hookwire_catalog_position{state="applied"}` every 10 ms (in both phases,
//! so the polling costs both the same) and waits until the other two reach
//! the position the answering process had once it answered.
//!
//! The churned subscriptions match topics the load does not send: the phase
//! measures what the control plane costs the data plane, not what 50 more
//! destinations would.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
    routing::post,
};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;

use crate::{BODY_BYTES, Hookwire, PACED_RATE, drive_keeping_ids, new_namespace, percentile};

const TOKEN: &str = "churn-bench-operator-token-0123456789";
const CHURNED: usize = 50;
const OPERATORS: usize = 5;
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Deliveries by sink path (`a`, `b`, or a churned subscription's), with the
/// ingress→destination latency of each.
#[derive(Default)]
struct Received {
    by_path: HashMap<String, HashMap<String, u32>>,
    latencies_us: Vec<u64>,
}

async fn receive(
    State(received): State<Arc<Mutex<Received>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    _body: Bytes,
) -> &'static str {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let sent_ns: u128 = id.rsplit('-').next().and_then(|ns| ns.parse().ok()).unwrap_or(now_ns);
    let mut received = received.lock().unwrap();
    received.latencies_us.push(((now_ns - sent_ns) / 1000) as u64);
    *received.by_path.entry(path).or_default().entry(id).or_default() += 1;
    "ok"
}

struct Phase {
    accepted: usize,
    errors: u64,
    lost: usize,
    duplicates: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Drives `duration` at [`PACED_RATE`] into `ingress`, waits for the
/// deliveries to settle, and checks every accepted id reached `/a` and `/b`.
async fn phase(received: &Arc<Mutex<Received>>, ingress: SocketAddr, duration: Duration) -> Phase {
    *received.lock().unwrap() = Received::default();
    let load = drive_keeping_ids(ingress, duration, Some(PACED_RATE), BODY_BYTES, true).await;
    let expected = 2 * load.accepted_ids.len();
    let mut seen = 0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received.lock().unwrap().latencies_us.len();
        if now >= expected || (now == seen && now > 0) {
            break;
        }
        seen = now;
    }
    let mut received = received.lock().unwrap();
    let (mut lost, mut duplicates) = (0, 0);
    for path in ["a", "b"] {
        let got = received.by_path.remove(path).unwrap_or_default();
        lost += load.accepted_ids.iter().filter(|id| !got.contains_key(*id)).count();
        duplicates += got.values().filter(|n| **n > 1).count();
    }
    received.latencies_us.sort_unstable();
    Phase {
        accepted: load.accepted_ids.len(),
        errors: load.errors,
        lost,
        duplicates,
        p50_ms: percentile(&received.latencies_us, 0.50),
        p99_ms: percentile(&received.latencies_us, 0.99),
    }
}

/// Each process's applied catalog position, polled from `/metrics`.
fn follow_positions(admins: Vec<SocketAddr>) -> watch::Receiver<Vec<u64>> {
    let (tx, rx) = watch::channel(vec![0; admins.len()]);
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(POLL_EVERY);
        while !tx.is_closed() {
            tick.tick().await;
            let positions = join_all(admins.iter().map(|admin| applied_position(&client, *admin))).await;
            tx.send_replace(positions);
        }
    });
    rx
}

async fn applied_position(client: &reqwest::Client, admin: SocketAddr) -> u64 {
    let Ok(response) = client.get(format!("http://{admin}/metrics")).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("hookwire_catalog_position{state=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// One change's timings.
struct Change {
    method: Method,
    answered: Duration,
    everywhere: Duration,
}

/// One operator: creates, changes and deletes its subscriptions, one change
/// every `every`, and times how long each takes to reach every process.
async fn operate(
    operator: usize,
    api: SocketAddr,
    sink: SocketAddr,
    every: Duration,
    positions: watch::Receiver<Vec<u64>>,
) -> (Vec<Change>, usize) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(every);
    let (mut changes, mut failures) = (Vec::new(), 0);
    for i in (operator..CHURNED).step_by(OPERATORS) {
        let name = format!("churn-{i}");
        let path = format!("/api/v1/subscriptions/{name}");
        let create = json!({
            "name": name, "topics": [format!("bench.churn-{i}.*")], "url": format!("http://{sink}/{name}"),
            "description": "churn benchmark",
        });
        let update = json!({
            "topics": [format!("bench.churn-{i}-moved.*")], "url": format!("http://{sink}/{name}-moved"),
            "timeout": "5s",
        });
        let mut version = 0;
        for (method, path, body) in [
            (Method::POST, "/api/v1/subscriptions".to_owned(), Some(create)),
            (Method::PATCH, path.clone(), Some(update)),
            (Method::DELETE, path, None),
        ] {
            tick.tick().await;
            let started = Instant::now();
            let mut request = client.request(method.clone(), format!("http://{api}{path}")).bearer_auth(TOKEN);
            if version > 0 {
                request = request.header("if-match", format!("\"{version}\""));
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let answered = started.elapsed();
            if !response.status().is_success() {
                eprintln!("{method} {name}: {} {}", response.status(), response.text().await.unwrap_or_default());
                failures += 1;
                break;
            }
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            version = body["version"].as_u64().unwrap_or(0);
            // The answering process runs the change once it answers; its
            // position then is where the others must get to.
            let target = applied_position(&client, api).await;
            let mut positions = positions.clone();
            let reached = tokio::time::timeout(
                Duration::from_secs(30),
                positions.wait_for(|p| p.iter().all(|position| *position >= target)),
            )
            .await;
            match reached {
                Ok(Ok(_)) => changes.push(Change { method: method.clone(), answered, everywhere: started.elapsed() }),
                _ => {
                    eprintln!("{method} {name}: not applied everywhere within 30 s");
                    failures += 1;
                }
            }
        }
    }
    (changes, failures)
}

pub async fn churn(duration: Duration) {
    println!(
        "churn: 3 processes (all, ingress, worker), {PACED_RATE:.0} events/s, 2 file subscriptions throughout, \
         {CHURNED} API subscriptions created, changed and deleted by {OPERATORS} operators, {duration:?} per phase"
    );
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/{path}", post(receive)).with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let namespace = new_namespace();
    let tail = format!(
        "[subscriptions.sink]\ntopics = [\"bench.#\"]\nurl = \"http://{sink}/a\"\nconcurrency = 64\n\
         [subscriptions.sink-2]\ntopics = [\"bench.#\"]\nurl = \"http://{sink}/b\"\nconcurrency = 64\n\
         [admin.tokens.operator]\ntoken = \"{TOKEN}\"\nscopes = [\"read\", \"operate\", \"manage\"]\n"
    );
    let all = Hookwire::launch("all", namespace.clone(), &tail, 2).await;
    let ingress = Hookwire::launch("ingress", namespace.clone(), &tail, 2).await;
    let worker = Hookwire::launch("worker", namespace, &tail, 2).await;
    let positions = follow_positions(vec![all.admin, ingress.admin, worker.admin]);

    drive_keeping_ids(ingress.ingress, Duration::from_secs(3), Some(PACED_RATE), BODY_BYTES, false).await;
    let steady = phase(&received, ingress.ingress, duration).await;

    let every = duration / (3 * CHURNED / OPERATORS) as u32;
    let operators: Vec<_> = (0..OPERATORS)
        .map(|operator| tokio::spawn(operate(operator, all.admin, sink, every, positions.clone())))
        .collect();
    let churned = phase(&received, ingress.ingress, duration).await;
    let (mut changes, mut failures) = (Vec::new(), 0);
    for (done, failed) in join_all(operators).await.into_iter().map(Result::unwrap) {
        changes.extend(done);
        failures += failed;
    }

    for (label, phase) in [("steady", &steady), ("churn", &churned)] {
        println!(
            "{label:>7}: accepted {} (errors {}), lost {}, delivered twice {}, ingress→destination p50 {:.2} ms p99 {:.2} ms",
            phase.accepted, phase.errors, phase.lost, phase.duplicates, phase.p50_ms, phase.p99_ms
        );
    }
    println!("changes: {} applied, {failures} failed (±{} ms polling)", changes.len(), POLL_EVERY.as_millis());
    for method in [None, Some(Method::POST), Some(Method::PATCH), Some(Method::DELETE)] {
        let of = changes.iter().filter(|c| method.as_ref().is_none_or(|m| *m == c.method));
        let (mut answered, mut everywhere): (Vec<u64>, Vec<u64>) =
            of.map(|c| (c.answered.as_micros() as u64, c.everywhere.as_micros() as u64)).unzip();
        answered.sort_unstable();
        everywhere.sort_unstable();
        println!(
            "{:>8}: API answer p50 {:.1} ms p99 {:.1} ms; in every process p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            method.map_or("all".to_owned(), |m| m.to_string()),
            percentile(&answered, 0.50),
            percentile(&answered, 0.99),
            percentile(&everywhere, 0.50),
            percentile(&everywhere, 0.99),
            percentile(&everywhere, 1.0),
        );
    }
    worker.terminate().await;
    ingress.terminate().await;
    all.stop().await;
}
