//! Startup and orderly shutdown of a whole hookwire process.
//!
//! [`start`] is what `hookwire serve` runs and what the integration tests
//! call with port 0: it returns the bound addresses and a handle whose
//! [`App::shutdown`] drains in the order that loses nothing:
//! 1. ingress stops accepting and finishes in-flight requests (their
//!    publishes still need the broker);
//! 2. workers stop consuming and settle in-flight deliveries;
//! 3. the pause/resume listener and the catalog follower stop, then the
//!    broker connection closes
//!    (unsettled deliveries return to queues);
//! 4. the admin listener stops last, so probes see the drain.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    broker::{Broker, Publisher, Topology},
    catalog::{
        Catalog,
        audit::{Audit, AuditRecord},
        reconcile::{Desired, Reconciler},
    },
    config::{Config, ConfigError},
    delivery::{http::Destination, set::WorkerSet},
    eventlog::{self, Recorder},
    ingress::{self, IngressState, Sources},
    operator::{Operator, control::Control, letters::Letters},
    telemetry,
};

/// Which side(s) of the pipeline this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Role {
    /// Only the HTTP ingress (webhooks in → RabbitMQ).
    Ingress,
    /// Only the delivery workers (RabbitMQ → destinations).
    Worker,
    /// Both.
    #[default]
    All,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::All)
    }

    fn worker(self) -> bool {
        matches!(self, Self::Worker | Self::All)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the event log ({place}): {source}")]
    EventLog {
        /// The SQLite file, or `event_log.url` (never the URL itself: it
        /// may carry a password).
        place: String,
        #[source]
        source: eventlog::StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running hookwire.
pub struct App {
    /// Where webhooks are received (`None` for `--role worker`).
    pub ingress_addr: Option<SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    pub broker: Broker,
    /// The subscriptions catalog as this process follows it.
    pub catalog: Catalog,
    /// The audit log (writes, and the newest records of every process).
    pub audit: Audit,
    audit_task: JoinHandle<()>,
    letters_task: JoinHandle<()>,
    /// The queue depth poller (`--role worker` and `all`).
    depth_task: Option<JoinHandle<()>>,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    http_token: CancellationToken,
    control_token: CancellationToken,
    broker_token: CancellationToken,
    admin_token: CancellationToken,
    ingress_task: Option<JoinHandle<()>>,
    reconciler_token: CancellationToken,
    reconciler_task: JoinHandle<()>,
    /// The subscriptions this process runs (file and catalog).
    pub desired: tokio::sync::watch::Receiver<Arc<Desired>>,
    /// The file's configuration as last (re)loaded.
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    sources_tx: tokio::sync::watch::Sender<Arc<Sources>>,
    /// Cancelled after the ingress and the workers stop: the recorder
    /// flushes, the writer stops.
    event_log_token: CancellationToken,
    event_log_tasks: Vec<JoinHandle<()>>,
    control_task: JoinHandle<()>,
    catalog_task: JoinHandle<()>,
    broker_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

pub async fn start(config: Config, role: Role) -> Result<App, StartError> {
    // Build everything that can fail on config before touching the network.
    let sources = Sources::build(&config.sources)?;
    let (sources_tx, sources) = tokio::sync::watch::channel(Arc::new(sources));
    let (config_tx, live_config) = tokio::sync::watch::channel(Arc::new(config.clone()));
    for (name, sub) in &config.subscriptions {
        Destination::new(name, sub)?;
        crate::delivery::transform::Jq::validate(name, sub)?;
    }
    let topology = Arc::new(Topology::from_config(&config));
    let metrics = telemetry::metrics_handle();

    let broker_token = CancellationToken::new();
    let (broker, broker_task) = Broker::spawn(&config.rabbitmq, topology.clone(), broker_token.clone());
    // Every process follows pause/resume: workers obey it, the API reports it.
    let control_token = CancellationToken::new();
    let (control, control_task) = Control::spawn(broker.clone(), control_token.clone());
    // Every process follows the catalog; readiness waits until it has read it.
    let (catalog, catalog_task) =
        Catalog::spawn(broker.clone(), topology.catalog_stream.clone(), control_token.clone());
    let (audit, audit_task) = Audit::spawn(broker.clone(), topology.audit_stream.clone(), control_token.clone());
    // Every process follows the letters stream: any process answers the
    // operator API and exports the dead-letter gauges.
    let (letters, letters_task) = Letters::spawn(broker.clone(), control_token.clone());
    // Workers export the depth of the queues they consume.
    let depth_task = role
        .worker()
        .then(|| crate::broker::depth::spawn(broker.clone(), crate::broker::depth::POLL_EVERY, control_token.clone()));
    // The event log: every process commits its own records straight to the
    // store (an SQLite file shared by the processes of one host, or
    // PostgreSQL) and answers queries. Stopped after the ingress and
    // workers, so their last records are still committed.
    let event_log_token = CancellationToken::new();
    let mut event_log_tasks = Vec::new();
    let (recorder, events) = if config.event_log.enabled {
        let store = eventlog::store::open(&config.event_log, &config.rabbitmq.namespace).await.map_err(|source| {
            let place = match config.event_log.backend {
                crate::config::EventLogBackend::Sqlite => config.event_log.path.display().to_string(),
                crate::config::EventLogBackend::Postgres => "event_log.url".to_owned(),
            };
            StartError::EventLog { place, source }
        })?;
        let (recorder, task) = Recorder::spawn(store.clone(), event_log_token.clone());
        event_log_tasks.push(task);
        event_log_tasks.push(eventlog::store::spawn_retention(
            store.clone(),
            config.event_log.max_age,
            eventlog::store::RETENTION_EVERY,
            event_log_token.clone(),
        ));
        (Some(recorder), Some(store))
    } else {
        (None, None)
    };

    let draining = Arc::new(AtomicBool::new(false));
    let admin_token = CancellationToken::new();
    let admin_listener = bind(config.admin.listen).await?;
    let admin_addr = admin_listener.local_addr().expect("bound socket has an address");
    // The reconciler owns the workers and follows the catalog: the file's
    // subscriptions start now, the catalog's once it has been read.
    if let Some(variable) = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .find(|name| std::env::var_os(name).is_some())
    {
        // Deliveries connect to destinations directly (docs/DECISIONS.md):
        // say so rather than let egress control be bypassed in silence.
        tracing::warn!(variable, "deliveries do not go through a proxy; this variable is ignored");
    }
    let workers = WorkerSet::new(broker.clone(), control.clone(), config.shutdown.drain_timeout, recorder.clone());
    let breakers = workers.breakers();
    let reconciler_token = CancellationToken::new();
    let (desired, reconciler_task) = Reconciler::spawn(
        live_config.clone(),
        broker.clone(),
        catalog.clone(),
        role.worker().then_some(workers),
        reconciler_token.clone(),
    );
    let ready = {
        let (broker, catalog, desired, draining) = (broker.clone(), catalog.clone(), desired.clone(), draining.clone());
        Box::new(move || readiness(&broker, &catalog, &desired, &draining))
    };
    let api = Arc::new(admin::api::ApiState {
        broker: broker.clone(),
        breakers,
        operator: Operator {
            broker: broker.clone(),
            control: control.clone(),
            letters: letters.clone(),
            recorder: recorder.clone(),
        },
        catalog: catalog.clone(),
        audit: audit.clone(),
        desired: desired.clone(),
        config: live_config.clone(),
        events,
    });
    let admin_router = admin::router(Arc::new(AdminState { metrics, ready }), api);
    let admin_task = serve(admin_listener, admin_router, admin_token.clone());

    let http_token = CancellationToken::new();
    let (ingress_addr, ingress_task) = if role.ingress() {
        let listener = bind(config.ingress.listen).await?;
        let addr = listener.local_addr().expect("bound socket has an address");
        let state = IngressState {
            sources,
            publisher: Publisher::new(broker.clone(), config.ingress.publish_timeout),
            accepted_exchange: topology.accepted_exchange.clone(),
            broker: broker.clone(),
            max_body_bytes: config.ingress.max_body_bytes,
            read_timeout: config.ingress.read_timeout,
            retry_after: config.ingress.retry_after,
            trusted_proxies: config.ingress.trusted_proxies.clone(),
            recorder,
        };
        let limits = ingress::server::Limits {
            header_read_timeout: config.ingress.read_timeout,
            max_headers: config.ingress.max_headers,
            max_header_bytes: config.ingress.max_header_bytes,
        };
        let task = ingress::server::spawn(listener, ingress::router(Arc::new(state)), limits, http_token.clone());
        tracing::info!(%addr, "ingress listening");
        (Some(addr), Some(task))
    } else {
        (None, None)
    };

    tracing::info!(%admin_addr, ?role, "admin listening");
    Ok(App {
        ingress_addr,
        admin_addr,
        broker,
        catalog,
        audit,
        audit_task,
        letters_task,
        depth_task,
        draining,
        drain_timeout: config.shutdown.drain_timeout,
        http_token,
        control_token,
        broker_token,
        admin_token,
        ingress_task,
        event_log_token,
        event_log_tasks,
        reconciler_token,
        reconciler_task,
        desired,
        config_tx,
        sources_tx,
        control_task,
        catalog_task,
        broker_task,
        admin_task,
    })
}

/// What `/readyz` answers: `Err(why)` while this process should get no
/// traffic. Ready means connected, not blocked, and running the catalog as
/// read on this connection (its subscriptions route and deliver).
fn readiness(
    broker: &Broker,
    catalog: &Catalog,
    desired: &tokio::sync::watch::Receiver<Arc<Desired>>,
    draining: &AtomicBool,
) -> Result<(), String> {
    if draining.load(Ordering::Relaxed) {
        Err("draining".to_owned())
    } else if !broker.is_ready() {
        Err("RabbitMQ not connected".to_owned())
    } else if let Some(reason) = broker.blocked() {
        Err(format!("RabbitMQ blocks publishing (resource alarm: {reason})"))
    } else if !catalog.is_caught_up() || desired.borrow().catalog_generation != catalog.generation() {
        Err("reading the subscriptions catalog".to_owned())
    } else {
        Ok(())
    }
}

impl App {
    /// Whether this process is ready for traffic (what `/readyz` answers).
    pub fn ready(&self) -> Result<(), String> {
        readiness(&self.broker, &self.catalog, &self.desired, &self.draining)
    }

    /// Applies a re-read config file without a restart: sources (new,
    /// changed, removed, rotated secrets) swap at once; subscriptions go to
    /// the reconciler, which restarts only the workers whose definition
    /// changed. A file that does not build is refused whole and the running
    /// configuration stays. `admin.tokens` apply at once (a leaked token is
    /// revoked by a reload). Listeners, `[rabbitmq]`, `[archive]`,
    /// `[shutdown]` and the rest of `[admin]` need a restart: their changes
    /// are reported and left for the next start.
    pub fn reload(&self, config: Config) -> Result<Vec<String>, ConfigError> {
        let before = self.config_tx.borrow().clone();
        let result = self.try_reload(config);
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        metrics::counter!(telemetry::metric::CONFIG_RELOADS, "outcome" => outcome).increment(1);
        let detail = match &result {
            Ok(_) => {
                let after = self.config_tx.borrow().clone();
                let names = |c: &Config| -> serde_json::Value {
                    serde_json::json!({
                        "sources": c.sources.keys().collect::<Vec<_>>(),
                        "subscriptions": c.subscriptions.keys().collect::<Vec<_>>(),
                        "admin_tokens": c.admin.tokens.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    })
                };
                crate::catalog::audit::diff(&names(&before), &names(&after))
            }
            // A config error names the key, never a secret's value.
            Err(error) => serde_json::json!({ "error": error.to_string() }),
        };
        let audit = self.audit.clone();
        tokio::spawn(async move { audit.record(AuditRecord::new("file", "reload", "config", outcome, detail)).await });
        result
    }

    fn try_reload(&self, config: Config) -> Result<Vec<String>, ConfigError> {
        let sources = Sources::build(&config.sources)?;
        for (name, sub) in &config.subscriptions {
            Destination::new(name, sub)?;
            crate::delivery::transform::Jq::validate(name, sub)?;
        }
        if let Some((name, _)) =
            self.catalog.state().entries().find(|(name, _)| config.subscriptions.contains_key(*name))
        {
            return Err(ConfigError::invalid(
                format!("subscriptions.{name}"),
                "a subscription of this name was made through the API; delete it there or rename this one",
            ));
        }
        let old = self.config_tx.borrow().clone();
        let mut restart_needed = Vec::new();
        let text = |c: &Config| {
            format!(
                "{:?}{:?}{:?}{:?}{:?}{:?}",
                c.ingress, c.admin.listen, c.admin.secret_key, c.rabbitmq, c.archive, c.shutdown
            )
        };
        if text(&old) != text(&config) {
            restart_needed.push(
                "[ingress], [admin], [rabbitmq], [archive] or [shutdown] changed: those apply at the next restart"
                    .to_owned(),
            );
        }
        // Keep the restart-only sections as running, so the reconciler plans
        // with the namespace and limits the broker really has.
        let mut live = config;
        live.ingress = old.ingress.clone();
        let tokens = std::mem::take(&mut live.admin.tokens);
        live.admin = old.admin.clone();
        live.admin.tokens = tokens;
        live.rabbitmq = old.rabbitmq.clone();
        live.archive = old.archive.clone();
        live.shutdown = old.shutdown.clone();
        self.sources_tx.send_replace(Arc::new(sources));
        self.config_tx.send_replace(Arc::new(live));
        Ok(restart_needed)
    }

    /// Drains and stops everything (see the module docs for the order).
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(drain_timeout = ?self.drain_timeout, "shutting down");
        self.http_token.cancel();
        if let Some(task) = self.ingress_task.take() {
            join_within(task, self.drain_timeout, "ingress").await;
        }
        // The reconciler stops the workers; each bounds its own drain.
        self.reconciler_token.cancel();
        join_within(self.reconciler_task, self.drain_timeout + Duration::from_secs(5), "workers").await;
        self.event_log_token.cancel();
        for task in self.event_log_tasks.drain(..) {
            join_within(task, Duration::from_secs(5), "event log").await;
        }
        self.control_token.cancel();
        join_within(self.control_task, Duration::from_secs(5), "operator control listener").await;
        join_within(self.catalog_task, Duration::from_secs(5), "catalog follower").await;
        join_within(self.audit_task, Duration::from_secs(5), "audit follower").await;
        join_within(self.letters_task, Duration::from_secs(5), "letters follower").await;
        if let Some(task) = self.depth_task.take() {
            join_within(task, Duration::from_secs(5), "queue depth poller").await;
        }
        self.broker_token.cancel();
        join_within(self.broker_task, Duration::from_secs(15), "broker connection").await;
        self.admin_token.cancel();
        join_within(self.admin_task, Duration::from_secs(5), "admin").await;
        tracing::info!("shutdown complete");
    }
}

async fn join_within(task: JoinHandle<()>, deadline: Duration, what: &str) {
    let abort = task.abort_handle();
    if tokio::time::timeout(deadline, task).await.is_err() {
        abort.abort();
        tracing::warn!(what, "did not stop within the deadline; aborted");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

fn serve(listener: TcpListener, router: axum::Router, token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = axum::serve(listener, router).with_graceful_shutdown(async move { token.cancelled().await }).await;
        if let Err(error) = result {
            tracing::error!(%error, "HTTP server failed");
        }
    })
}
