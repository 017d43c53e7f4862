//! The chaos harness (issue 11): hookwire under signed load while things
//! are killed or fail, reporting accepted, refused, delivered, dead-lettered,
//! lost and duplicated events, counted by `webhook-id`. Not part of every CI
//! run (minutes each); one scenario at a time, on an otherwise idle machine:
//!
//! ```sh
//! cargo test --release --test chaos -- --ignored --nocapture --test-threads 1
//! cargo test --release --test chaos -- --ignored --nocapture role_kill_loop
//! ```
//!
//! - `cluster_node_kill`: a 3-node cluster (`deploy/rabbitmq-cluster.sh`,
//!   stopped and deleted afterwards), `serve --role all` given all three
//!   addresses and `rabbitmq.replicas = 3`, with 2% of events failing for
//!   good (retries, then a dead letter) and 5% failing once; the node
//!   hookwire is connected to is killed with `kill -9`, revived, and then the
//!   node it moved to.
//! - `role_kill_loop`: `serve --role worker` and `serve --role ingress` as
//!   two processes on the machine's broker (127.0.0.1:5672); the worker is
//!   killed with `kill -9` and restarted `HOOKWIRE_CHAOS_KILLS` times (default
//!   4), 5–10 s apart, then the ingress the same way. While the ingress is
//!   gone the senders' requests are refused (connection refused).
//! - `flapping_destination`: the destination cycles through answering `503`,
//!   hanging past the subscription's timeout, resetting the connection
//!   without answering, and `200`, `HOOKWIRE_CHAOS_FLAP_PHASE_SECS` (default
//!   4) each, for `HOOKWIRE_CHAOS_FLAP_SECS` (default 120); short retry delays
//!   and no circuit breaker, so events go through the retry queues and some
//!   are dead-lettered. Then it is healthy; dead letters are counted through
//!   the operator API only.
//! - `broker_kill_single`: a RabbitMQ node of the harness's own
//!   (`deploy/rabbitmq-node.sh`, `hookwire-chaos` on 127.0.0.1:5685, stopped
//!   and deleted afterwards), killed with `kill -9` under load and started
//!   again on its data, `HOOKWIRE_CHAOS_KILLS` times (default 2).
//! - `soak`: steady load for `HOOKWIRE_CHAOS_SOAK_SECS` (default 1,800) on
//!   the machine's broker, hookwire's RSS sampled every 10 s; fails if it
//!   grows (the rule is at [`rss_verdict`]).
//!
//! Load is paced at `HOOKWIRE_CHAOS_RATE` events/s (default 1,000; 500 for
//! `flapping_destination`) over 32 connections. Every scenario fails if an
//! event answered `202` is neither delivered nor dead-lettered, and prints a
//! table for docs/RELIABILITY.md with the command that reruns it. Scenarios
//! on the machine's broker use a fresh namespace and delete its queues and
//! exchanges at the end. hookwire's logs (`RUST_LOG=warn`, JSON) are kept
//! under `target/tmp/chaos/NAMESPACE/`, and their WARN and ERROR lines
//! counted by message after the table.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fs::OpenOptions,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use hookwire::{config::Secret, ingress::schemes::StandardWebhooks, ingress::verify::Scheme};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::Notify,
    task::{JoinHandle, block_in_place},
};

#[path = "support/cluster.rs"]
mod cluster_support;
use cluster_support::Cluster;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The operator API's token in every scenario's config.
const TOKEN: &str = "chaos-operator-token-0123456789";
const SUBSCRIPTION: &str = "sink";
const SENDERS: usize = 32;
/// The machine's own broker, which CI uses too: never disturbed, only used.
const MACHINE_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NODE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-node.sh");
/// `broker_kill_single`'s node: not 5681 (the resource-alarm test's) nor
/// 5691–5693 (the cluster's); Erlang distribution on 25685.
const OWN_NODE: (&str, u16) = ("hookwire-chaos", 5685);

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rate(default: f64) -> f64 {
    env_or("HOOKWIRE_CHAOS_RATE", default)
}

// ------------------------------------------------------------------- sink

/// What the destination does with the requests that arrive while it is set
/// so.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `200`: delivered.
    Ok,
    /// `503` at once.
    Unavailable,
    /// No answer until well past the subscription's timeout, then `503`.
    Hang,
    /// The connection is closed with a TCP reset, without an answer.
    Reset,
}

impl Mode {
    const ALL: [Self; 4] = [Self::Ok, Self::Unavailable, Self::Hang, Self::Reset];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "200",
            Self::Unavailable => "503",
            Self::Hang => "hung",
            Self::Reset => "reset",
        }
    }
}

/// What the sink delivered: every `200`'s id and when.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, u32>,
    arrivals: Vec<Instant>,
}

struct SinkState {
    mode: AtomicU8,
    /// In [`Mode::Ok`], per 1,000 event ids: how many always get `503`
    /// (they go through every retry and are dead-lettered) and how many get
    /// `503` on their first attempt only (a retry delivers them).
    always_fail: AtomicU64,
    fail_once: AtomicU64,
    /// How long [`Mode::Hang`] holds a request.
    hang: Duration,
    seen: Mutex<Seen>,
    /// Requests per mode, in [`Mode::ALL`] order.
    requests: [AtomicU64; 4],
}

/// The destination: a real HTTP/1.1 server on loopback whose behavior the
/// scenario switches. Only a `200` counts as delivered.
struct Sink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    accept: JoinHandle<()>,
}

impl Sink {
    async fn start(hang: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SinkState {
            mode: AtomicU8::new(Mode::Ok as u8),
            always_fail: AtomicU64::new(0),
            fail_once: AtomicU64::new(0),
            hang,
            seen: Mutex::default(),
            requests: Default::default(),
        });
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(connection(stream, state.clone()));
                    }
                }
            }
        });
        Self { addr, state, accept }
    }

    fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Puts retries and dead letters in play: per 1,000 ids, `always`
    /// answered `503` every time and `once` on their first attempt.
    fn fail_some(&self, always: u64, once: u64) {
        self.state.always_fail.store(always, Ordering::Relaxed);
        self.state.fail_once.store(once, Ordering::Relaxed);
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.state.seen.lock().unwrap()
    }

    /// "200 ×N, 503 ×N, hung ×N, reset ×N" for the modes that saw requests.
    fn requests(&self) -> String {
        let counts = Mode::ALL.iter().zip(&self.state.requests).map(|(m, n)| (m, n.load(Ordering::Relaxed)));
        counts
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| format!("{} ×{}", m.label(), thousands(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn connection(mut stream: TcpStream, state: Arc<SinkState>) {
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |request| answer(state.clone(), reset.clone(), request))
    };
    let was_reset = tokio::select! {
        _ = http1::Builder::new().serve_connection(TokioIo::new(&mut stream), service) => false,
        () = reset.notified() => true,
    };
    if was_reset {
        // A reset (RST), as from a crashed destination or a middlebox, not
        // an orderly close.
        let _ = stream.set_zero_linger();
    }
}

async fn answer(
    state: Arc<SinkState>,
    reset: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mode = Mode::ALL[usize::from(state.mode.load(Ordering::Relaxed))];
    let id = request.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let first = request.headers().get("hookwire-attempt").is_none_or(|v| v.as_bytes() == b"1");
    let _ = request.into_body().collect().await;
    // Which ids fail is fixed by the id, so a redelivery fails the same way.
    let per_mille = id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 1000;
    let always = state.always_fail.load(Ordering::Relaxed);
    let once = state.fail_once.load(Ordering::Relaxed);
    let mode = match mode {
        Mode::Ok if per_mille < always || (per_mille < always + once && first) => Mode::Unavailable,
        other => other,
    };
    state.requests[mode as usize].fetch_add(1, Ordering::Relaxed);
    let status = match mode {
        Mode::Ok => {
            let mut seen = state.seen.lock().unwrap();
            *seen.ids.entry(id).or_default() += 1;
            seen.arrivals.push(Instant::now());
            200
        }
        Mode::Unavailable => 503,
        Mode::Hang => {
            tokio::time::sleep(state.hang).await;
            503
        }
        Mode::Reset => {
            // The connection's task drops the connection, and this with it.
            reset.notify_one();
            let never: Infallible = std::future::pending().await;
            match never {}
        }
    };
    Ok(Response::builder().status(status).body(Full::new(Bytes::from_static(b"ok"))).unwrap())
}

// ------------------------------------------------------------------- load

/// What the senders saw.
#[derive(Default)]
struct Sent {
    accepted: Vec<String>,
    /// When each other answer (a `503`) or connection error came.
    refused: Vec<Instant>,
}

/// Paced, signed load: `rate` events/s over [`SENDERS`] connections, ids
/// `chaos-{sender}-{seq}`. Anything but `202`, a connection refused
/// included, counts as refused.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Sent>>,
    senders: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(ingress: SocketAddr, rate: f64) -> Self {
        let scheme = Arc::new(StandardWebhooks::new(&[Secret::new(SECRET)], None).unwrap());
        let url = format!("http://{ingress}/webhooks/chaos");
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Sent::default())));
        let senders = (0..SENDERS)
            .map(|sender| {
                let (scheme, url, stop, sent) = (scheme.clone(), url.clone(), stop.clone(), sent.clone());
                tokio::spawn(async move {
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
                })
            })
            .collect();
        Self { stop, sent, senders }
    }

    async fn stop(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            sender.await.unwrap();
        }
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

// -------------------------------------------------------------- hookwire

/// What every hookwire process of a scenario shares: broker, namespace,
/// destination, the event log's SQLite file, and where logs go.
struct Setup {
    dir: tempfile::TempDir,
    logs: PathBuf,
    urls: Vec<String>,
    namespace: String,
    sink: SocketAddr,
    /// More `[rabbitmq]` keys.
    rabbitmq: String,
    /// More `[subscriptions.sink]` keys.
    subscription: String,
}

impl Setup {
    fn new(urls: Vec<String>, namespace: &str, sink: SocketAddr) -> Self {
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos").join(namespace);
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            logs,
            urls,
            namespace: namespace.to_owned(),
            sink,
            rabbitmq: String::new(),
            subscription: String::new(),
        }
    }

    fn config(&self, ingress: SocketAddr, admin: SocketAddr) -> String {
        format!(
            r#"
[ingress]
listen = "{ingress}"
[admin]
listen = "{admin}"
tokens = ["{TOKEN}"]
[rabbitmq]
url = [{urls}]
namespace = "{namespace}"
operation_timeout = "5s"
{rabbitmq}
[event_log]
path = "{log}"
[sources.chaos]
scheme = "standard-webhooks"
secrets = ["{SECRET}"]
[subscriptions.{SUBSCRIPTION}]
topics = ["chaos.#"]
url = "http://{sink}/"
concurrency = 32
{subscription}
"#,
            urls = self.urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "),
            namespace = self.namespace,
            rabbitmq = self.rabbitmq,
            log = self.dir.path().join("events.db").display(),
            sink = self.sink,
            subscription = self.subscription,
        )
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// One `hookwire serve` process, restartable on the same config and ports.
struct Hookwire {
    role: &'static str,
    config: PathBuf,
    log: PathBuf,
    ingress: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

impl Hookwire {
    /// Starts `serve --role ROLE` and waits until it is ready.
    async fn start(setup: &Setup, role: &'static str) -> Self {
        let (ingress, admin) = (free_port(), free_port());
        let config = setup.dir.path().join(format!("{role}.toml"));
        std::fs::write(&config, setup.config(ingress, admin)).unwrap();
        let log = setup.logs.join(format!("{role}.log"));
        let child = Self::spawn(role, &config, &log);
        let this = Self { role, config, log, ingress, admin, child };
        this.ready().await;
        this
    }

    fn spawn(role: &str, config: &Path, log: &Path) -> Child {
        let log = OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_hookwire"))
            .args(["serve", "--log-format", "json", "--role", role, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Waits until `/readyz` answers 200: connected, topology declared.
    async fn ready(&self) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let url = format!("http://{}/readyz", self.admin);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(
                Instant::now() < deadline,
                "hookwire --role {} did not become ready; see {}",
                self.role,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, as a crashed host or an OOM kill does.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same config and ports, and waits until ready.
    async fn restart(&mut self) {
        self.child = Self::spawn(self.role, &self.config, &self.log);
        self.ready().await;
    }

    /// Resident set size, KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap()
    }

    fn api(&self) -> Api {
        Api { base: format!("http://{}/api/v1", self.admin), http: reqwest::Client::new() }
    }

    /// Its log's WARN and ERROR lines (all its runs), counted by message,
    /// most frequent first.
    fn log_summary(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for line in text.lines() {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let level = record["level"].as_str().unwrap_or("?").to_owned();
            if level == "WARN" || level == "ERROR" {
                // The message is at the top or under `fields`, by formatter version.
                let message = record["message"].as_str().or(record["fields"]["message"].as_str()).unwrap_or("?");
                let message = format!("{}: {message}", record["target"].as_str().unwrap_or("?"));
                *counts.entry((level, message)).or_default() += 1;
            }
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut out = format!("{}:", self.log.display());
        if counts.is_empty() {
            out += " no WARN or ERROR lines";
        }
        for ((level, message), n) in counts {
            out += &format!("\n  {n:>7} {level} {message}");
        }
        out
    }
}

impl Drop for Hookwire {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------- operator API

/// The operator API, the only way the harness looks at dead letters: their
/// storage is hookwire's business.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: {status} {}", response.text().await.unwrap_or_default()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// The subscription's queues as `GET /subscriptions` reports them.
    async fn status(&self) -> Result<serde_json::Value, String> {
        let all = self.get("/subscriptions").await?;
        let found = all.as_array().into_iter().flatten().find(|s| s["name"] == SUBSCRIPTION);
        found.cloned().ok_or_else(|| format!("no subscription {SUBSCRIPTION} in {all}"))
    }

    /// Every dead letter's event id, paging through `GET .../dead-letters`.
    async fn dead_letters(&self) -> Result<HashSet<String>, String> {
        let mut ids = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/subscriptions/{SUBSCRIPTION}/dead-letters?limit=1000");
            if let Some(after) = &after {
                path += &format!("&after={}", form_urlencoded::byte_serialize(after.as_bytes()).collect::<String>());
            }
            let page = self.get(&path).await?;
            let items = page["items"].as_array().ok_or_else(|| format!("no items in {page}"))?;
            ids.extend(items.iter().filter_map(|i| i["event_id"].as_str().map(str::to_owned)));
            match page["next_after"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(ids),
            }
        }
    }
}

/// Stops the load, drains (see [`drain`]) and counts what became of every
/// event it sent: the end of each scenario.
async fn settle(load: Load, sink: &Sink, api: &Api) -> (Sent, Tally) {
    let sent = load.stop().await;
    let dead = drain(sink, &sent.accepted, api).await;
    let tally = Tally::new(&sent, &sink.seen(), &dead);
    (sent, tally)
}

/// Waits until every accepted event is delivered or dead-lettered (checked
/// through the API once nothing waits in the work or retry queues), or
/// nothing changed for 30 s, or 10 minutes passed. Returns the dead
/// letters' ids.
async fn drain(sink: &Sink, accepted: &[String], api: &Api) -> HashSet<String> {
    let started = Instant::now();
    let mut last = (usize::MAX, u64::MAX, Instant::now());
    loop {
        let undelivered: Vec<&String> = {
            let seen = sink.seen();
            accepted.iter().filter(|id| !seen.ids.contains_key(*id)).collect()
        };
        let status = api.status().await;
        let (waiting, dead) = match &status {
            Ok(s) => {
                let retrying: u64 =
                    s["retry"].as_array().into_iter().flatten().filter_map(|q| q["messages"].as_u64()).sum();
                (
                    s["work"]["messages"].as_u64().unwrap_or(u64::MAX).saturating_add(retrying),
                    s["dead"]["messages"].as_u64().unwrap_or(0),
                )
            }
            Err(_) => (u64::MAX, 0),
        };
        if undelivered.is_empty() || (waiting == 0 && undelivered.len() as u64 <= dead) {
            match api.dead_letters().await {
                Ok(letters) if undelivered.iter().all(|id| letters.contains(*id)) => return letters,
                Ok(_) => {}
                Err(e) => println!("drain: listing dead letters: {e}"),
            }
        }
        if (undelivered.len(), dead) != (last.0, last.1) {
            last = (undelivered.len(), dead, Instant::now());
        }
        if last.2.elapsed() > Duration::from_secs(30) || started.elapsed() > Duration::from_secs(600) {
            println!(
                "drain: gave up after {:.0} s: {} undelivered, status {status:?}",
                started.elapsed().as_secs_f64(),
                undelivered.len()
            );
            return api.dead_letters().await.unwrap_or_else(|e| panic!("listing dead letters: {e}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------- brokers

/// A fresh namespace on the machine's broker; every queue and exchange
/// whose name starts with it is deleted when dropped (after the hookwire
/// processes, so declare it before them). Names are read from
/// `rabbitmqctl`, so whatever hookwire declared goes.
struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        Self(fresh_namespace())
    }
}

fn fresh_namespace() -> String {
    format!("chaos-{}", uuid::Uuid::now_v7().simple())
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let prefix = format!("{}.", self.0);
        let list = |what: &str| -> Result<Vec<String>, String> {
            let args = [what, "-q", "--no-table-headers", "name"];
            let out = Command::new("rabbitmqctl")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .or_else(|| Command::new("sudo").args(["-n", "rabbitmqctl"]).args(args).output().ok())
                .ok_or("rabbitmqctl does not run")?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|n| n.starts_with(&prefix))
                .map(str::to_owned)
                .collect())
        };
        let (queues, exchanges) = match (list("list_queues"), list("list_exchanges")) {
            (Ok(q), Ok(e)) => (q, e),
            (Err(e), _) | (_, Err(e)) => return println!("namespace {}: not deleted, cannot list it: {e}", self.0),
        };
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let conn = lapin::Connection::connect(MACHINE_BROKER, lapin::ConnectionProperties::default()).await?;
                let channel = conn.create_channel().await?;
                for queue in &queues {
                    channel.queue_delete(queue.as_str().into(), Default::default()).await?;
                }
                for exchange in &exchanges {
                    channel.exchange_delete(exchange.as_str().into(), Default::default()).await?;
                }
                conn.close(200, "".into()).await?;
                Ok::<_, lapin::Error>((queues.len(), exchanges.len()))
            })
        })
        .join()
        .unwrap();
        match deleted {
            Ok((q, e)) => println!("namespace {}: deleted {q} queues, {e} exchanges", self.0),
            Err(e) => println!("namespace {}: deleting it failed: {e}", self.0),
        }
    }
}

async fn script(path: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(path).args(args).output().await.expect("the deploy script runs");
    assert!(out.status.success(), "{path} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A single RabbitMQ node of the harness's own (`deploy/rabbitmq-node.sh`),
/// stopped and its data deleted when dropped.
struct OwnNode {
    name: &'static str,
    port: u16,
}

impl OwnNode {
    async fn start((name, port): (&'static str, u16)) -> Self {
        println!("{}", script(NODE, &["start", name, &port.to_string()]).await);
        Self { name, port }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `kill -9` of the node's Erlang VM: what a crashed host does.
    fn kill(&self) {
        let base = std::env::var("HOOKWIRE_NODES_DIR").unwrap_or_else(|_| "/tmp/hookwire-rabbitmq".to_owned());
        let pid = std::fs::read_to_string(Path::new(&base).join(self.name).join("pid")).unwrap();
        let status = Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Starts it again on its data; returns when it answers AMQP.
    async fn revive(&self) {
        println!("{}", script(NODE, &["start", self.name, &self.port.to_string()]).await);
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = Command::new(NODE).args(["stop", self.name]).status();
    }
}

// ----------------------------------------------------------------- report

fn thousands(n: impl Into<u64>) -> String {
    let digits = n.into().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The longest time without a delivery within `[from, to)`: a pause that
/// began before `from` counts from the last delivery before it, one still
/// going on at `to` until `to`.
fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    let before = arrivals.iter().copied().filter(|t| *t < from).max().unwrap_or(from);
    let mut points: Vec<Instant> = arrivals.iter().copied().filter(|t| *t >= from && *t < to).collect();
    points.extend([before, to]);
    points.sort_unstable();
    points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// The refused answers in `[from, to)`: from the first to the last, and how
/// many.
fn refused_window(refused: &[Instant], from: Instant, to: Instant) -> String {
    let window: Vec<Instant> = refused.iter().copied().filter(|t| *t >= from && *t < to).collect();
    match (window.iter().min(), window.iter().max()) {
        (Some(first), Some(last)) => {
            format!("refused for {} ({} answers)", secs(*last - *first), thousands(window.len() as u64))
        }
        _ => "nothing refused".to_owned(),
    }
}

/// The counts every scenario reports, by `webhook-id`.
struct Tally {
    accepted: usize,
    refused: usize,
    delivered: usize,
    /// Delivered, though the sender did not get a `202` (the answer was lost
    /// with the process or the connection).
    delivered_unanswered: usize,
    dead: usize,
    delivered_and_dead: usize,
    /// Accepted, and neither delivered nor dead-lettered.
    lost: Vec<String>,
    duplicates: usize,
}

impl Tally {
    fn new(sent: &Sent, seen: &Seen, dead: &HashSet<String>) -> Self {
        let accepted: HashSet<&str> = sent.accepted.iter().map(String::as_str).collect();
        let lost =
            sent.accepted.iter().filter(|id| !seen.ids.contains_key(*id) && !dead.contains(*id)).cloned().collect();
        Self {
            accepted: sent.accepted.len(),
            refused: sent.refused.len(),
            delivered: seen.ids.len(),
            delivered_unanswered: seen.ids.keys().filter(|id| !accepted.contains(id.as_str())).count(),
            dead: dead.len(),
            delivered_and_dead: dead.iter().filter(|id| seen.ids.contains_key(*id)).count(),
            lost,
            duplicates: seen.ids.values().filter(|&&n| n > 1).count(),
        }
    }

    fn rows(&self, report: &mut Report) {
        let n = |n: usize| thousands(n as u64);
        report.row("accepted / refused", format!("{} / {}", n(self.accepted), n(self.refused)));
        let mut delivered = n(self.delivered);
        if self.delivered_unanswered > 0 {
            delivered +=
                &format!(" ({} not answered `202`: stored, but the answer was lost)", n(self.delivered_unanswered));
        }
        report.row("delivered (distinct ids)", delivered);
        let mut dead = n(self.dead);
        if self.delivered_and_dead > 0 {
            dead += &format!(" ({} of them also delivered: a duplicate copy)", n(self.delivered_and_dead));
        }
        report.row("dead-lettered (distinct ids, operator API)", dead);
        report.row("**lost** (accepted, neither delivered nor dead-lettered)", format!("**{}**", n(self.lost.len())));
        report.row("delivered more than once", n(self.duplicates));
    }

    fn assert_nothing_lost(&self) {
        let lost = &self.lost;
        assert!(
            lost.is_empty(),
            "{} accepted events neither delivered nor dead-lettered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

/// A scenario's result as a table for docs/RELIABILITY.md, with the command
/// that reruns it.
struct Report {
    scenario: &'static str,
    setup: String,
    rows: Vec<(String, String)>,
}

impl Report {
    fn new(scenario: &'static str, setup: String) -> Self {
        Self { scenario, setup, rows: Vec::new() }
    }

    fn row(&mut self, what: impl Into<String>, result: impl Into<String>) {
        self.rows.push((what.into(), result.into()));
    }

    fn print(&self) {
        let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let build = if cfg!(debug_assertions) { "debug" } else { "release" };
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut env: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("HOOKWIRE_CHAOS_"))
            .map(|(k, v)| format!("{k}={v} "))
            .collect();
        env.sort();
        println!("\n## `{}`\n\n{}\n\n{}, {build} build, {cores} cores:\n", self.scenario, self.setup, &date[..10]);
        println!("| | result |\n| --- | --- |");
        for (what, result) in &self.rows {
            println!("| {what} | {result} |");
        }
        println!(
            "\nrerun: {}cargo test --release --test chaos -- --ignored --nocapture --exact {}\n",
            env.concat(),
            self.scenario
        );
    }
}

// -------------------------------------------------------------- scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long, with a RabbitMQ cluster of its own: cargo test --release --test chaos -- --ignored"]
async fn cluster_node_kill() {
    let rate = rate(1000.0);
    let cluster = block_in_place(Cluster::start);
    let sink = Sink::start(Duration::ZERO).await;
    // Retries and dead letters in play: 2% of events fail for good (three
    // retries, then a dead letter), 5% fail once and are delivered by a retry.
    sink.fail_some(20, 50);
    let mut setup = Setup::new(cluster.urls(), &fresh_namespace(), sink.addr);
    // The cluster goes with its data at the end: no namespace to clean.
    setup.rabbitmq = "replicas = 3".to_owned();
    setup.subscription = "retry = [\"200ms\", \"500ms\", \"1s\"]\ncircuit_breaker = { failures = 0 }".to_owned();
    let hookwire = Hookwire::start(&setup, "all").await;

    let load = Load::start(hookwire.ingress, rate);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut kills = Vec::new();
    for round in 1..=2 {
        // The cluster's calls block (scripts, rabbitmqctl): off the runtime's
        // workers, so the load keeps going meanwhile.
        let connected = block_in_place(|| cluster.connected());
        let victim = *connected.first().expect("hookwire is connected to a node");
        println!("kill {round}: hookwire is connected to node {victim} (all: {connected:?}); kill -9");
        let killed_at = Instant::now();
        println!("{}", block_in_place(|| cluster.kill(victim)));
        tokio::time::sleep(Duration::from_secs(20)).await;
        println!("kill {round}: {}", block_in_place(|| cluster.revive(victim)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        kills.push((victim, killed_at, Instant::now()));
    }
    let (sent, tally) = settle(load, &sink, &hookwire.api()).await;
    let tally = {
        let seen = sink.seen();
        let mut report = Report::new(
            "cluster_node_kill",
            format!(
                "`serve --role all` on a 3-node cluster (`rabbitmq.replicas = 3`), {rate} events/s, 2% of events \
             failing for good (retries, then a dead letter) and 5% failing once; the node hookwire is \
             connected to is killed (`kill -9`), revived 20 s later, twice."
            ),
        );
        tally.rows(&mut report);
        for (round, (victim, killed_at, until)) in kills.iter().enumerate() {
            report.row(
                format!("kill {}: node {victim}, which hookwire was connected to", round + 1),
                format!(
                    "{}; longest delivery gap {}",
                    refused_window(&sent.refused, *killed_at, *until),
                    secs(longest_gap(&seen.arrivals, *killed_at, *until))
                ),
            );
        }
        report.print();
        println!("{}", hookwire.log_summary());
        tally
    };
    if !tally.lost.is_empty() {
        // Where the missing events are, while the cluster still runs.
        let node = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-node.sh");
        let queues =
            &["ctl", "hookwire-c1", "list_queues", "name", "type", "messages", "consumers", "leader", "online"];
        println!("{}", script(node, queues).await);
        let api = hookwire.api();
        println!("unrouted: {:?}", api.get("/unrouted?limit=5").await.map(|p| p["depth"].clone()));
        println!("status: {:?}", api.status().await);
    }
    tally.assert_nothing_lost();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --release --test chaos -- --ignored role_kill_loop"]
async fn role_kill_loop() {
    let rate = rate(1000.0);
    let kills: usize = env_or("HOOKWIRE_CHAOS_KILLS", 4);
    // Down this long before the restart, like a supervisor's restart delay.
    const DOWN: Duration = Duration::from_secs(2);
    let sink = Sink::start(Duration::ZERO).await;
    let namespace = Namespace::new();
    let setup = Setup::new(vec![MACHINE_BROKER.to_owned()], &namespace.0, sink.addr);
    let mut worker = Hookwire::start(&setup, "worker").await;
    let mut ingress = Hookwire::start(&setup, "ingress").await;

    let load = Load::start(ingress.ingress, rate);
    let origin = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut rounds = Vec::new();
    for process in [&mut worker, &mut ingress] {
        for round in 1..=kills {
            tokio::time::sleep(Duration::from_secs_f64(rand::random_range(5.0..10.0))).await;
            let killed = Instant::now();
            process.kill();
            tokio::time::sleep(DOWN).await;
            process.restart().await;
            let back = Instant::now();
            println!(
                "{} kill {round} at {}: ready again after {}",
                process.role,
                secs(killed - origin),
                secs(back - killed)
            );
            rounds.push((process.role, round, killed, back));
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (sent, tally) = settle(load, &sink, &worker.api()).await;
    let seen = sink.seen();
    let mut report = Report::new(
        "role_kill_loop",
        format!(
            "`serve --role worker` and `serve --role ingress` as two processes on one RabbitMQ node, {rate} events/s; \
             the worker is killed (`kill -9`) {kills} times 5–10 s apart and restarted {} s later, then the ingress the same way.",
            DOWN.as_secs()
        ),
    );
    tally.rows(&mut report);
    for (role, round, killed, back) in &rounds {
        let settle = *back + Duration::from_secs(3);
        report.row(
            format!("{role} kill {round} (at {})", secs(*killed - origin)),
            format!(
                "ready again after {}; {}; longest delivery gap {}",
                secs(*back - *killed),
                refused_window(&sent.refused, *killed, settle),
                secs(longest_gap(&seen.arrivals, *killed, settle))
            ),
        );
    }
    report.print();
    println!("{}\n{}", worker.log_summary(), ingress.log_summary());
    tally.assert_nothing_lost();
    assert_eq!(tally.dead, 0, "the destination never failed, yet events were dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --release --test chaos -- --ignored flapping_destination"]
async fn flapping_destination() {
    let rate = rate(500.0);
    let flap = Duration::from_secs(env_or("HOOKWIRE_CHAOS_FLAP_SECS", 120));
    let phase = Duration::from_secs(env_or("HOOKWIRE_CHAOS_FLAP_PHASE_SECS", 4));
    // Hangs outlast the subscription's 1 s timeout three times over.
    let sink = Sink::start(Duration::from_secs(3)).await;
    let namespace = Namespace::new();
    let mut setup = Setup::new(vec![MACHINE_BROKER.to_owned()], &namespace.0, sink.addr);
    // The breaker is off: with it on, events wait in the queue while it is
    // open, and hardly any reach a retry queue, let alone the dead letters
    // (60 s with `failures = 20, cooldown = "1s"`: 30,036 delivered, 131
    // failed attempts, nothing dead-lettered).
    setup.subscription = r#"timeout = "1s"
retry = ["250ms", "500ms", "1s", "2s"]
circuit_breaker = { failures = 0 }"#
        .to_owned();
    let hookwire = Hookwire::start(&setup, "all").await;
    let api = hookwire.api();

    let load = Load::start(hookwire.ingress, rate);
    let until = Instant::now() + flap;
    let cycle = [Mode::Unavailable, Mode::Hang, Mode::Reset, Mode::Ok];
    for mode in cycle.iter().cycle() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sink.set(*mode);
        tokio::time::sleep(phase.min(left)).await;
    }
    sink.set(Mode::Ok);
    let sent = load.stop().await;
    let healthy = Instant::now();
    let dead = drain(&sink, &sent.accepted, &api).await;
    let drained = healthy.elapsed();
    let counted = api.status().await.map(|s| s["dead"]["messages"].as_u64().unwrap_or(0));

    let seen = sink.seen();
    let tally = Tally::new(&sent, &seen, &dead);
    let mut report = Report::new(
        "flapping_destination",
        format!(
            "`serve --role all`, {rate} events/s for {} s while the destination cycles through `503`, hanging 3 s \
             (timeout 1 s), resetting connections and `200`, {} s each; retries 250 ms, 500 ms, 1 s, 2 s, then \
             dead-letter; no circuit breaker. Then the destination is healthy.",
            flap.as_secs(),
            phase.as_secs()
        ),
    );
    tally.rows(&mut report);
    report.row(
        "dead letters counted by `GET /subscriptions`",
        counted.map_or_else(|e| format!("unavailable: {e}"), thousands),
    );
    report.row("requests the destination saw", sink.requests());
    report.row("drained after the destination became healthy", secs(drained));
    report.print();
    println!("{}", hookwire.log_summary());
    tally.assert_nothing_lost();
    assert!(tally.dead > 0, "nothing was dead-lettered: the scenario did not exercise dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long, with a RabbitMQ node of its own: cargo test --release --test chaos -- --ignored broker_kill_single"]
async fn broker_kill_single() {
    let rate = rate(1000.0);
    let kills: usize = env_or("HOOKWIRE_CHAOS_KILLS", 2);
    const DOWN: Duration = Duration::from_secs(15);
    let node = OwnNode::start(OWN_NODE).await;
    let sink = Sink::start(Duration::ZERO).await;
    // The node goes with its data at the end: no namespace to clean.
    let setup = Setup::new(vec![node.url()], &fresh_namespace(), sink.addr);
    let hookwire = Hookwire::start(&setup, "all").await;

    let load = Load::start(hookwire.ingress, rate);
    let origin = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut rounds = Vec::new();
    for round in 1..=kills {
        let killed = Instant::now();
        node.kill();
        println!("kill {round} at {}: node {} killed", secs(killed - origin), node.name);
        tokio::time::sleep(DOWN).await;
        node.revive().await;
        let revived = Instant::now();
        hookwire.ready().await;
        let back = Instant::now();
        println!(
            "kill {round}: node up after {}, hookwire ready {} later",
            secs(revived - killed),
            secs(back - revived)
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        rounds.push((killed, revived, back, Instant::now()));
    }
    let (sent, tally) = settle(load, &sink, &hookwire.api()).await;
    let seen = sink.seen();
    let mut report = Report::new(
        "broker_kill_single",
        format!(
            "`serve --role all` on a single RabbitMQ node, {rate} events/s; the node is killed (`kill -9`) and \
             started again on its data {} s later, {kills} times, 15 s apart.",
            DOWN.as_secs()
        ),
    );
    tally.rows(&mut report);
    for (round, (killed, revived, back, until)) in rounds.iter().enumerate() {
        report.row(
            format!("kill {} (at {})", round + 1, secs(*killed - origin)),
            format!(
                "node answering again after {}, hookwire ready {} later; {}; longest delivery gap {}",
                secs(*revived - *killed),
                secs(*back - *revived),
                refused_window(&sent.refused, *killed, *until),
                secs(longest_gap(&seen.arrivals, *killed, *until))
            ),
        );
    }
    report.print();
    println!("{}", hookwire.log_summary());
    tally.assert_nothing_lost();
    assert_eq!(tally.dead, 0, "the destination never failed, yet events were dead-lettered");
}

/// The soak's memory rule: the first sixth of the samples is warm-up
/// (connection pools, caches, the allocator's arenas and SQLite's page
/// cache fill) and is dropped; the rest is cut in thirds, and the last
/// third's highest RSS may be at most 10% above the first third's highest.
/// A leak that grows with traffic grows steadily and fails it; noise within
/// a third does not. Returns (first third's max, last third's max) in KiB.
fn rss_verdict(samples: &[u64]) -> (u64, u64) {
    let steady = &samples[samples.len() / 6..];
    assert!(steady.len() >= 3, "too few RSS samples ({}) for a verdict: run longer", samples.len());
    let third = steady.len() / 3;
    let first = *steady[..third].iter().max().unwrap();
    let last = *steady[steady.len() - third..].iter().max().unwrap();
    (first, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 minutes: cargo test --release --test chaos -- --ignored soak"]
async fn soak() {
    let rate = rate(1000.0);
    let duration = Duration::from_secs(env_or("HOOKWIRE_CHAOS_SOAK_SECS", 1800));
    const EVERY: Duration = Duration::from_secs(10);
    let sink = Sink::start(Duration::ZERO).await;
    let namespace = Namespace::new();
    let setup = Setup::new(vec![MACHINE_BROKER.to_owned()], &namespace.0, sink.addr);
    let hookwire = Hookwire::start(&setup, "all").await;

    let load = Load::start(hookwire.ingress, rate);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    while started.elapsed() < duration {
        tick.tick().await;
        let rss = hookwire.rss_kib();
        let delivered = sink.seen().ids.len();
        println!(
            "{:>6.0} s  RSS {:>7} KiB  delivered {}",
            started.elapsed().as_secs_f64(),
            rss,
            thousands(delivered as u64)
        );
        samples.push(rss);
    }
    let (_, tally) = settle(load, &sink, &hookwire.api()).await;
    let (first, last) = rss_verdict(&samples);
    let growth = (last as f64 / first as f64 - 1.0) * 100.0;
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let mut report = Report::new(
        "soak",
        format!(
            "`serve --role all` on one RabbitMQ node, {rate} events/s for {} s, RSS sampled every 10 s.",
            duration.as_secs()
        ),
    );
    tally.rows(&mut report);
    report.row(
        "RSS after warm-up (the first sixth): max of the first third → of the last third",
        format!("{} → {} ({growth:+.1}%; at most +10% passes)", mib(first), mib(last)),
    );
    report.row(
        "RSS samples, every 10 s",
        samples.iter().map(|&s| format!("{:.1}", s as f64 / 1024.0)).collect::<Vec<_>>().join(" ") + " MiB",
    );
    report.print();
    println!("{}", hookwire.log_summary());
    tally.assert_nothing_lost();
    assert!(last * 10 <= first * 11, "RSS grew from {} to {} ({growth:+.1}%)", mib(first), mib(last));
}
