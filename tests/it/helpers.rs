//! The test harness: a real hookwire (`app::start` on port 0) against the real
//! RabbitMQ, a real HTTP destination the test can make fail, and a TCP proxy
//! the test can cut to simulate a broker outage.
//!
//! Every `TestApp` gets its own namespace, deleted when it is dropped (even
//! when the test panics).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    routing::any,
};
use hookwire::{
    app::{self, App, Role},
    broker::{
        Topology,
        message::{self, DeliveryState},
    },
    config::Config,
    envelope::Envelope,
    ingress::Sources,
    operator::letters::{self, Pile},
};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The Standard Webhooks spec's sample secret, used by the `acme` test source.
pub const ACME_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";

/// A connection of the test's own to RabbitMQ at `url`, or a panic saying
/// why. Bounded: a broker out of file descriptors accepts TCP connections
/// but never answers the AMQP handshake, and an unbounded connect would
/// hang the test (and the suite) instead of failing it.
pub async fn connect_to(url: &str) -> Connection {
    const CONNECT: Duration = Duration::from_secs(30);
    match tokio::time::timeout(CONNECT, Connection::connect(url, ConnectionProperties::default())).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!("connecting to RabbitMQ: {error}"),
        Err(_) => panic!(
            "RabbitMQ accepted no AMQP connection within {CONNECT:?}; a broker out of file descriptors does \
             this (deploy/ensure-rabbitmq.sh)"
        ),
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

// ---------------------------------------------------------------- destination

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// How the destination answers.
#[derive(Debug, Clone)]
pub enum Behavior {
    Ok,
    /// Answer `status` this many more times, then 200.
    FailTimes(usize, u16),
    Status(u16),
    /// Answer 200 after a delay.
    Delay(Duration),
    /// Answer the first request after a delay, every later one at once.
    #[allow(dead_code)] // only tests/timing uses it
    HangFirst(Duration),
    /// Answer `status` with these headers and body this many more times, then 200.
    Respond {
        times: usize,
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    },
}

struct SinkState {
    received: Mutex<Vec<Received>>,
    behavior: Mutex<Behavior>,
    notify: Notify,
}

/// A real HTTP destination on loopback that records every request.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
    token: CancellationToken,
}

impl Sink {
    pub async fn start(behavior: Behavior) -> Self {
        let state = Arc::new(SinkState {
            received: Mutex::new(Vec::new()),
            behavior: Mutex::new(behavior),
            notify: Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(any(record)).with_state(state.clone());
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await.unwrap();
        });
        Self { addr, state, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!("destination got {} of {n} requests within {timeout:?}", self.received().len());
            }
        }
    }

    /// Waits until an event with each of `ids` (`webhook-id`) has arrived.
    pub async fn wait_for_ids(&self, ids: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            let got: std::collections::HashSet<String> =
                self.received().iter().map(|r| r.header("webhook-id").to_owned()).collect();
            let missing: Vec<&String> = ids.iter().filter(|id| !got.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!("destination never got {missing:?} within {timeout:?}");
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn record(
    State(state): State<Arc<SinkState>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.received.lock().unwrap().push(Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    state.notify.notify_waiters();
    let behavior = {
        let mut guard = state.behavior.lock().unwrap();
        let current = guard.clone();
        match &current {
            Behavior::FailTimes(n, status) => {
                *guard = if *n <= 1 { Behavior::Ok } else { Behavior::FailTimes(n - 1, *status) };
            }
            Behavior::HangFirst(_) => *guard = Behavior::Ok,
            Behavior::Respond { times, status, headers, body } => {
                *guard = if *times <= 1 {
                    Behavior::Ok
                } else {
                    Behavior::Respond { times: times - 1, status: *status, headers: headers.clone(), body }
                };
            }
            _ => {}
        }
        current
    };
    match behavior {
        Behavior::Ok => StatusCode::OK.into_response(),
        Behavior::FailTimes(_, status) | Behavior::Status(status) => {
            StatusCode::from_u16(status).unwrap().into_response()
        }
        Behavior::Delay(d) | Behavior::HangFirst(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Behavior::Respond { status, headers, body, .. } => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    }
}

// ---------------------------------------------------------------------- proxy

/// A TCP proxy in front of RabbitMQ that the test can cut and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Holds what the broker sends (confirms included) while set.
    stalled: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    token: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let token = CancellationToken::new();
        let (up2, cut2, stop, upstream) = (up.clone(), cut.clone(), token.clone(), upstream.to_owned());
        let stalled2 = stalled.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refuse while "down"
                    continue;
                }
                let conn_cut = cut2.lock().unwrap().clone();
                let (upstream, stalled) = (upstream.clone(), stalled2.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let upward = tokio::io::copy(&mut from_client, &mut to_server);
                    let downward = async {
                        let mut buf = vec![0; 16 * 1024];
                        loop {
                            let n = from_server.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            while stalled.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            to_client.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = conn_cut.cancelled() => {}
                        _ = upward => {}
                        _ = downward => {}
                    }
                });
            }
        });
        Self { addr, up, stalled, cut, token }
    }

    /// Stops passing on what the broker sends (publisher confirms among
    /// it), or starts again; what the client sends still goes through.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    pub fn up(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
        self.cut.lock().unwrap().cancel();
    }
}

// ----------------------------------------------------------------- own node

/// A RabbitMQ node of the test's own (deploy/rabbitmq-node.sh), stopped and
/// deleted when dropped: what the test does to it (alarms, restarts) must
/// not reach other tests. Each test picks its own name and port.
pub struct OwnNode {
    name: &'static str,
    port: u16,
}

impl OwnNode {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-node.sh");

    pub fn start(name: &'static str, port: u16) -> Self {
        let status =
            std::process::Command::new(Self::SCRIPT).args(["start", name, &port.to_string()]).status().unwrap();
        assert!(status.success(), "starting RabbitMQ node {name}");
        Self { name, port }
    }

    pub fn ctl(&self, args: &[&str]) {
        let mut command = std::process::Command::new(Self::SCRIPT);
        let status = command.args(["ctl", self.name]).args(args).stdout(std::process::Stdio::null()).status().unwrap();
        assert!(status.success(), "rabbitmqctl {args:?}");
    }

    /// A clean stop and start, keeping the node's data.
    pub fn restart(&self) {
        let status = std::process::Command::new(Self::SCRIPT).args(["restart", self.name]).status().unwrap();
        assert!(status.success(), "restarting RabbitMQ node {}", self.name);
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::SCRIPT).args(["stop", self.name]).status();
    }
}

// ------------------------------------------------------------------------ app

/// Builds a test config: sources `acme` (standard-webhooks) and `github`
/// (hmac), a fresh namespace, ports 0, plus the test's own TOML.
pub fn config_text(namespace: &str, amqp_url: &str, extra: &str) -> String {
    format!(
        r#"
[ingress]
listen = "127.0.0.1:0"
max_body_bytes = 4096
publish_timeout = "2s"
retry_after = "3s"

[admin]
listen = "127.0.0.1:0"

[rabbitmq]
url = "{amqp_url}"
namespace = "{namespace}"
connect_timeout = "2s"
operation_timeout = "5s"

[shutdown]
drain_timeout = "5s"

[sources.acme]
scheme = "standard-webhooks"
secrets = ["{ACME_SECRET}"]
forward_headers = ["user-agent"]

[sources.github]
scheme = "hmac"
secrets = ["{GITHUB_SECRET}"]
header = "X-Hub-Signature-256"
prefix = "sha256="
event_type = "header:X-GitHub-Event"
event_id = "header:X-GitHub-Delivery"

{extra}
{event_log}"#,
        event_log = if extra.contains("[event_log]") {
            String::new()
        } else {
            format!("[event_log]\npath = {:?}\n", event_log_path(namespace))
        }
    )
}

/// Removes the namespace's event log file, for tests that start hookwire
/// without a [`TestApp`] (whose guard does it).
pub fn remove_event_log(namespace: &str) {
    let db = event_log_path(namespace);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The test's own SQLite event log file (the log is on by default): one per
/// namespace, removed with the namespace's queues.
pub fn event_log_path(namespace: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{namespace}-events.db"))
}

pub struct TestApp {
    pub app: Option<App>,
    pub config: Config,
    pub sources: Sources,
    pub topology: Topology,
    pub http: reqwest::Client,
    _guard: NamespaceGuard,
}

impl TestApp {
    /// Starts hookwire (all roles) with `extra` TOML and waits until ready.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(AMQP_URL, extra).await
    }

    pub async fn start_with(amqp_url: &str, extra: &str) -> Self {
        Self::start_adjusted(amqp_url, extra, |_| {}).await
    }

    /// Like [`TestApp::start`], with a chance to adjust the parsed config
    /// (for keys of sections the base config already has, like `[ingress]`).
    pub async fn start_adjusted(amqp_url: &str, extra: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        // HOOKWIRE_TEST_LOG=debug shows hookwire's logs in failing tests' output.
        if let Ok(filter) = std::env::var("HOOKWIRE_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let namespace = format!("hwtest-{}", uuid::Uuid::now_v7().simple());
        let mut config = Config::from_toml(&config_text(&namespace, amqp_url, extra), &|_| None).unwrap();
        adjust(&mut config);
        let topology = Topology::from_config(&config);
        let guard = NamespaceGuard { topology: Arc::new(Mutex::new(topology.clone())) };
        let mut this = Self {
            app: None,
            sources: Sources::build(&config.sources).unwrap(),
            config,
            topology,
            http: reqwest::Client::new(),
            _guard: guard,
        };
        this.restart().await;
        this
    }

    /// Starts (again) on the same namespace, after [`TestApp::stop`].
    pub async fn restart(&mut self) {
        assert!(self.app.is_none(), "stop the running app first");
        let app = app::start(self.config.clone(), Role::All).await.unwrap();
        eventually(Duration::from_secs(15), "hookwire ready", || {
            let ready = app.ready().is_ok();
            async move { ready }
        })
        .await;
        self.app = Some(app);
    }

    /// Adds the subscriptions of `toml` to the config (for the next
    /// [`TestApp::restart`]), as an operator editing the file would.
    pub fn add_subscriptions(&mut self, toml: &str) {
        let added = Config::from_toml(&config_text("unused", AMQP_URL, toml), &|_| None).unwrap().subscriptions;
        self.config.subscriptions.extend(added);
        self.topology = Topology::from_config(&self.config);
        *self._guard.topology.lock().unwrap() = self.topology.clone();
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(&mut self) {
        self.app.take().expect("app is running").shutdown().await;
    }

    /// Makes the namespace cleanup also delete the queues of every
    /// subscription the running app has now (made through the API, or added
    /// by a reload), including ones removed later. Also done on drop.
    pub fn remember_live_topology(&self) {
        let Some(app) = &self.app else { return };
        let live = app.broker.topology();
        let mut known = self._guard.topology.lock().unwrap();
        for sub in &live.subscriptions {
            if known.subscription(&sub.subscription).is_none() {
                known.subscriptions.push(sub.clone());
            }
        }
    }

    /// A connection of the test's own to the app's broker.
    pub async fn connect(&self) -> Connection {
        connect_to(self.config.rabbitmq.url[0].expose()).await
    }

    /// The running app's catalog.
    pub fn catalog(&self) -> hookwire::catalog::Catalog {
        self.app().catalog.clone()
    }

    fn app(&self) -> &App {
        self.app.as_ref().expect("app is running")
    }

    pub fn webhook_url(&self, source: &str) -> String {
        format!("http://{}/webhooks/{source}", self.app().ingress_addr.unwrap())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app().admin_addr)
    }

    /// Waits up to 30 s until `/readyz` answers `status` (200: ready, 503:
    /// not).
    pub async fn wait_readyz(&self, status: u16, what: &str) {
        let ready = self.admin_url("/readyz");
        eventually(Duration::from_secs(30), what, || {
            let (http, ready) = (self.http.clone(), ready.clone());
            async move { http.get(ready).send().await.unwrap().status() == status }
        })
        .await;
    }

    /// Headers that make `body` valid for `source`, as `hookwire sign` makes them.
    pub fn sign(&self, source: &str, body: &[u8], id: &str) -> Vec<(String, String)> {
        self.sources.get(source).unwrap().scheme.sign(body, SystemTime::now(), id).expect("test sources can sign")
    }

    /// POSTs `body` signed for `acme` with the given event id.
    pub async fn post_acme(&self, id: &str, body: &str) -> reqwest::Response {
        let mut request =
            self.http.post(self.webhook_url("acme")).header("content-type", "application/json").body(body.to_owned());
        for (name, value) in self.sign("acme", body.as_bytes(), id) {
            request = request.header(name, value);
        }
        request.send().await.unwrap()
    }

    pub async fn post(
        &self,
        source: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.webhook_url(source)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http.get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Ready messages in `queue`, read from the real broker.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.declared(queue).await.message_count()
    }

    /// Consumers on `queue`: 0 once every process has paused it.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.declared(queue).await.consumer_count()
    }

    async fn declared(&self, queue: &str) -> lapin::Queue {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(queue.into(), options, FieldTable::default()).await.unwrap();
        let _ = conn.close(200, "".into()).await;
        queue
    }

    /// Whether `queue` exists.
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let exists = channel.queue_declare(queue.into(), options, FieldTable::default()).await.is_ok();
        let _ = conn.close(200, "".into()).await;
        exists
    }

    /// Deletes `queue` behind hookwire's back.
    pub async fn delete_queue(&self, queue: &str) {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel.queue_delete(queue.into(), Default::default()).await.unwrap();
        let _ = conn.close(200, "".into()).await;
    }

    /// Waits until `queue` holds exactly `n` ready messages.
    pub async fn wait_depth(&self, queue: &str, n: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.depth(queue).await;
            if depth == n {
                return;
            }
            assert!(Instant::now() < deadline, "{queue} holds {depth} messages, expected {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The letters on `pile` that no marker has settled, oldest first, as
    /// the letters stream holds them now (read up to a sync marker this
    /// call appends).
    pub async fn letters(&self, pile: &Pile) -> Vec<(Envelope, DeliveryState)> {
        use futures_util::StreamExt;
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let sync = uuid::Uuid::now_v7().simple().to_string();
        let mut headers = FieldTable::default();
        headers.insert(letters::MARKER.into(), AMQPValue::LongString("sync".into()));
        let properties = lapin::BasicProperties::default().with_headers(headers);
        let stream = self.topology.letters.as_str();
        let confirm = channel
            .basic_publish("".into(), stream.into(), BasicPublishOptions::default(), sync.as_bytes(), properties)
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
        channel.basic_qos(100, Default::default()).await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
        let mut consumer = channel.basic_consume(stream.into(), "".into(), Default::default(), args).await.unwrap();
        let (mut entries, mut settled) = (Vec::new(), std::collections::HashSet::new());
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("the sync marker arrives")
                .unwrap()
                .unwrap();
            channel.basic_ack(delivery.delivery_tag, Default::default()).await.unwrap();
            let offset = hookwire::broker::stream::offset(&delivery.properties).unwrap();
            let kind = delivery.properties.headers().as_ref().and_then(|h| h.inner().get(letters::MARKER).cloned());
            match kind {
                Some(AMQPValue::LongString(kind)) if kind.as_bytes() == b"sync" => {
                    if delivery.data == sync.as_bytes() {
                        break;
                    }
                }
                Some(_) => {
                    let marker: letters::Settled = serde_json::from_slice(&delivery.data).unwrap();
                    settled.extend(marker.offsets);
                }
                None => entries.push((offset, delivery)),
            }
        }
        let _ = conn.close(200, "".into()).await;
        entries
            .into_iter()
            .filter(|(offset, d)| {
                !settled.contains(offset) && letters::pile_of(&d.properties, &self.topology.namespace) == *pile
            })
            .map(|(_, d)| message::decode(&d.properties, d.data.into()).unwrap())
            .collect()
    }

    /// How many letters are on `pile`.
    pub async fn letter_count(&self, pile: &Pile) -> usize {
        self.letters(pile).await.len()
    }

    /// Waits until exactly `n` letters are on `pile`.
    pub async fn wait_letters(&self, pile: &Pile, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.letter_count(pile).await;
            if count == n {
                return;
            }
            assert!(Instant::now() < deadline, "{pile}: {count} letters, expected {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes every message out of `queue` (acking them) and decodes it.
    pub async fn drain_queue(&self, queue: &str) -> Vec<(Envelope, DeliveryState)> {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            let delivery = message.delivery;
            out.push(message::decode(&delivery.properties, delivery.data.into()).unwrap());
        }
        let _ = conn.close(200, "".into()).await;
        out
    }
}

impl TestApp {
    /// Operator token of [`TestApp::operator`].
    pub const TOKEN: &str = "operator-token-0123456789";

    /// Starts with the operator API enabled (token [`TestApp::TOKEN`]).
    pub async fn operator(extra: &str) -> Self {
        Self::operator_on(AMQP_URL, extra).await
    }

    /// [`TestApp::operator`] on the broker at `amqp_url`.
    pub async fn operator_on(amqp_url: &str, extra: &str) -> Self {
        Self::start_adjusted(amqp_url, extra, |c| {
            c.admin.tokens =
                vec![hookwire::config::AccessToken::full("operator", hookwire::config::Secret::new(Self::TOKEN))]
        })
        .await
    }

    /// An authorized operator API request.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.admin_url(path)).bearer_auth(Self::TOKEN)
    }

    /// `GET path` on the operator API, as JSON; panics unless 200.
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let response = self.api(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// `method path` with a JSON body; returns status and JSON body.
    pub async fn api_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self.api(method, path).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Publishes encoded events straight into `queue` (confirmed), as if
    /// hookwire had put them there: seeds dead-letter queues fast.
    /// Makes subscription `name`'s work queue again as a version before the
    /// letters stream made it: dead-lettering into its classic `NAME.dead`.
    /// Run while the app is stopped.
    pub async fn make_work_queue_of_an_earlier_version(&self, name: &str) {
        let work = self.topology.subscription(name).unwrap().work.clone();
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel.queue_delete(work.as_str().into(), Default::default()).await.unwrap();
        let mut args = FieldTable::default();
        let old_dead = format!("{work}.dead");
        for (key, value) in [
            ("x-queue-type", "quorum"),
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", old_dead.as_str()),
            ("x-dead-letter-strategy", "at-least-once"),
            ("x-overflow", "reject-publish"),
        ] {
            args.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(self.config.rabbitmq.delivery_limit)));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(work.as_str().into(), durable, args).await.unwrap();
        let _ = conn.close(200, "".into()).await;
    }

    /// Publishes `messages` straight into `queue`, confirmed.
    pub async fn seed(&self, queue: &str, messages: impl IntoIterator<Item = (Envelope, DeliveryState)>) {
        let encoded = messages.into_iter().map(|(envelope, state)| message::encode(&envelope, &state));
        self.publish_all(queue, encoded).await;
    }

    /// Puts `messages` on `pile` as a worker (dead letters) or the alternate
    /// exchange (unrouted events) would.
    pub async fn seed_letters(&self, pile: &Pile, messages: impl IntoIterator<Item = (Envelope, DeliveryState)>) {
        let encoded = messages.into_iter().map(|(envelope, state)| message::encode(&envelope, &state));
        self.put_letters(pile, encoded).await;
    }

    /// Puts messages already encoded on `pile`, as [`Self::seed_letters`].
    pub async fn put_letters(
        &self,
        pile: &Pile,
        messages: impl IntoIterator<Item = (lapin::BasicProperties, Vec<u8>)>,
    ) {
        let tagged = messages.into_iter().map(|(mut properties, body)| {
            if let Pile::Dead(name) = pile {
                let mut headers = properties.headers().clone().unwrap_or_default();
                headers.insert(message::DEAD_LETTER_OF.into(), AMQPValue::LongString(name.as_str().into()));
                properties = properties.with_headers(headers);
            }
            (properties, body)
        });
        self.publish_all(&self.topology.letters, tagged).await;
    }

    /// Publishes each `(properties, body)` to `queue`, all confirmed.
    pub async fn publish_all(
        &self,
        queue: &str,
        messages: impl IntoIterator<Item = (lapin::BasicProperties, Vec<u8>)>,
    ) {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let mut confirms = Vec::new();
        for (properties, body) in messages {
            let publish =
                channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, properties);
            confirms.push(publish.await.unwrap());
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
        let _ = conn.close(200, "".into()).await;
    }
}

/// A dead letter as a worker would have left it: `attempts` failures with
/// `status`, the last at `failed_at`.
pub fn dead_letter(
    id: &str,
    event_type: &str,
    status: u16,
    attempts: u32,
    failed_at: SystemTime,
) -> (Envelope, DeliveryState) {
    let envelope = Envelope {
        id: id.to_owned(),
        source: "acme".into(),
        event_type: event_type.to_owned(),
        received_at: failed_at - Duration::from_secs(60),
        content_type: Some("application/json".into()),
        headers: vec![("user-agent".into(), "acme/1".into())],
        body: Bytes::from(format!(r#"{{"type":"{event_type}","id":"{id}"}}"#)),
    };
    let mut state = DeliveryState::default();
    for i in 0..attempts {
        let at = failed_at - Duration::from_secs(u64::from(attempts - 1 - i));
        state.record_failure(message::Attempt::new(at, Some(status), &format!("HTTP {status}")));
    }
    state.dead_letter_reason = Some("retries_exhausted".into());
    (envelope, state)
}

/// `envelope` and `state` as hookwire wrote them before bodies were framed
/// (session 15): the envelope in `hookwire-*` headers and properties, the
/// body bare. Written out by hand, as that version's `message::encode` did,
/// so the test of reading them does not depend on today's code.
pub fn unframed(envelope: &Envelope, state: &DeliveryState) -> (lapin::BasicProperties, Vec<u8>) {
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: String| {
        headers.insert(key.to_owned().into(), AMQPValue::LongString(value.into()));
    };
    put("hookwire-source", envelope.source.clone());
    put("hookwire-event-type", envelope.event_type.clone());
    put("hookwire-received-at", message::rfc3339(envelope.received_at));
    for (name, value) in &envelope.headers {
        put(&format!("hookwire-header-{name}"), value.clone());
    }
    if !state.history.is_empty() {
        put("hookwire-history", serde_json::to_string(&state.history).unwrap());
    }
    if let Some(reason) = &state.dead_letter_reason {
        put("hookwire-dead-letter-reason", reason.clone());
    }
    headers.insert("hookwire-attempts".into(), AMQPValue::LongLongInt(i64::from(state.attempts)));
    let received = envelope.received_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut properties = lapin::BasicProperties::default()
        .with_message_id(envelope.id.as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(received)
        .with_app_id("hookwire".into())
        .with_headers(headers);
    if let Some(content_type) = &envelope.content_type {
        properties = properties.with_content_type(content_type.as_str().into());
    }
    (properties, envelope.body.to_vec())
}

/// Deletes the namespace's queues and exchanges on drop, panicking test or
/// not. Runs on its own thread and runtime since `Drop` cannot await.
struct NamespaceGuard {
    /// Shared with [`TestApp::add_subscriptions`], which grows it.
    topology: Arc<Mutex<Topology>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.remember_live_topology();
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let topology = self.topology.lock().unwrap().clone();
        remove_event_log(&topology.namespace);
        let namespace = topology.namespace.clone();
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // Bounded, so that a sick broker fails the test rather than
            // hanging it in its cleanup.
            // (The timer is made inside the runtime: `timeout` needs one.)
            runtime.block_on(async {
                let clean = async {
                    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    topology.delete(&channel).await?;
                    conn.close(200, "".into()).await
                };
                tokio::time::timeout(Duration::from_secs(60), clean).await
            })
        })
        .join();
        match cleaned {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("namespace {namespace} left behind: {error}"),
            Ok(Err(_)) => eprintln!("namespace {namespace} left behind: RabbitMQ did not answer within 60 s"),
            Err(_) => eprintln!("namespace {namespace} left behind: its cleanup panicked"),
        }
    }
}
