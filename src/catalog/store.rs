//! The catalog's log on RabbitMQ: the stream `ns.catalog`, followed by every
//! process.
//!
//! A stream, not a queue: every reader sees every record, in one order, and
//! the broker keeps it (replicated wherever the broker is) across restarts
//! of hookwire and of RabbitMQ. On every (re)connect the follower reads the
//! whole stream from the first record, rebuilding [`State`] from nothing, so
//! a process never carries state the log does not hold.
//!
//! Writes are optimistic: [`Catalog::write`] publishes a record (confirmed)
//! naming the version it replaces, then waits until this process's own
//! follower reads it back and [`State::apply`] decides. The answer is thus
//! what every process decides, and the writer's own view already holds it.
//!
//! Must not: validate definitions (callers do), or log definitions (they
//! may carry secrets).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use lapin::BasicProperties;
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{Change, Outcome, Record, State};
use crate::broker::{Broker, PublishError, message::rfc3339, publisher::publish_confirmed, stream};
use crate::telemetry::metric;

/// Records read ahead of the follower; the broker needs a prefetch to
/// deliver from a stream.
const PREFETCH: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("RabbitMQ is not connected")]
    Unavailable,
    #[error("storing the change failed: {0}")]
    Publish(#[from] PublishError),
    #[error("the change was stored but not read back in time; its outcome is unknown")]
    NotReadBack,
}

/// A handle on the catalog: its current state, and writes. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    stream: String,
    state: watch::Sender<Arc<State>>,
    /// True once this connection's follower has read its own sync marker:
    /// everything written before is in `state`.
    caught_up: watch::Sender<bool>,
    /// Writers waiting for their record (by id) to be read back.
    waiters: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Catch-ups so far ([`State::generation`]).
    generation: std::sync::atomic::AtomicU64,
}

impl Catalog {
    /// Starts following `stream`; the follower stops when `token` is cancelled.
    pub fn spawn(broker: Broker, stream: String, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            broker,
            stream,
            state: watch::channel(Arc::new(State::default())).0,
            caught_up: watch::channel(false).0,
            waiters: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        let task = tokio::spawn(inner.clone().follow(token));
        (Self { inner }, task)
    }

    /// The catalog as this process knows it now.
    pub fn state(&self) -> Arc<State> {
        self.inner.state.borrow().clone()
    }

    /// Sees every new state (what reconcilers follow).
    pub fn watch(&self) -> watch::Receiver<Arc<State>> {
        self.inner.state.subscribe()
    }

    /// Has read everything written before it connected.
    pub fn is_caught_up(&self) -> bool {
        *self.inner.caught_up.borrow()
    }

    /// The catch-up the current state comes from ([`State::generation`]).
    pub fn generation(&self) -> u64 {
        self.inner.state.borrow().generation
    }

    /// Appends `change` and returns what it did, as decided in log order.
    /// `by` is the writer's token name. Bounded by `timeout` overall.
    pub async fn write(&self, by: &str, change: Change, timeout: Duration) -> Result<Outcome, CatalogError> {
        let record =
            Record { id: uuid::Uuid::now_v7().to_string(), by: by.to_owned(), at: rfc3339(SystemTime::now()), change };
        // A write made before this process has read the whole log would be
        // decided in a state its view does not show yet.
        let mut caught_up = self.inner.caught_up.subscribe();
        tokio::time::timeout(timeout, caught_up.wait_for(|c| *c))
            .await
            .map_err(|_| CatalogError::Unavailable)?
            .map_err(|_| CatalogError::Unavailable)?;
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().expect("waiters lock").insert(record.id.clone(), tx);
        let outcome = async {
            self.inner.publish(&record, timeout).await?;
            tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| CatalogError::NotReadBack)?
                .map_err(|_| CatalogError::NotReadBack)
        }
        .await;
        self.inner.waiters.lock().expect("waiters lock").remove(&record.id);
        outcome
    }
}

impl Inner {
    async fn publish(&self, record: &Record, timeout: Duration) -> Result<(), CatalogError> {
        let session = self.broker.session().ok_or(CatalogError::Unavailable)?;
        let channel = session.publish_channels.get().await?;
        let body = serde_json::to_vec(record).expect("records serialize");
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(record.id.clone().into());
        publish_confirmed(&channel, "", &self.stream, properties, &body, timeout).await?;
        Ok(())
    }

    async fn follow(self: Arc<Self>, token: CancellationToken) {
        self.broker
            .clone()
            .on_every_session(&token.clone(), "catalog follower", |session| {
                let (this, token) = (self.clone(), token.clone());
                async move {
                    let result = this.read(&session, &token).await;
                    // Until the log is read again this process may miss changes.
                    this.caught_up.send_replace(false);
                    result
                }
            })
            .await;
    }

    /// Reads the stream from its first record, then follows it, until the
    /// connection or the token ends.
    async fn read(&self, session: &crate::broker::Session, token: &CancellationToken) -> Result<(), String> {
        let timeout = self.broker.operation_timeout;
        let (channel, mut records) = stream::from_first(session, &self.stream, PREFETCH, timeout).await?;
        // Rebuilt privately: readers keep the previous state until this one
        // has caught up, so no reconciler ever acts on half a log.
        let mut state = State::default();
        let mut caught_up = false;
        // The marker: once read back, everything written before it is in.
        let marker = Record {
            id: format!("sync-{}", uuid::Uuid::now_v7()),
            by: "hookwire".into(),
            at: rfc3339(SystemTime::now()),
            change: Change::Sync,
        };
        self.publish(&marker, timeout).await.map_err(|e| e.to_string())?;

        let result = stream::each(&channel, &mut records, &self.stream, token, timeout, |delivery| {
            let offset = stream::offset(&delivery.properties);
            match (offset, serde_json::from_slice::<Record>(&delivery.data)) {
                (Some(offset), Ok(record)) => {
                    let outcome = state.apply(offset, &record);
                    metrics::gauge!(metric::CATALOG_POSITION, "state" => "read").set(state.position as f64);
                    if record.id == marker.id {
                        tracing::info!(subscriptions = state.len(), "catalog read up to date");
                        caught_up = true;
                        state.generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        self.state.send_replace(Arc::new(state.clone()));
                        self.caught_up.send_replace(true);
                    } else if caught_up && !matches!(outcome, Outcome::Synced) {
                        self.state.send_replace(Arc::new(state.clone()));
                    }
                    if let Some(waiter) = self.waiters.lock().expect("waiters lock").remove(&record.id) {
                        let _ = waiter.send(outcome);
                    }
                }
                // Skipped the same way by every process, so states agree.
                (None, _) => tracing::warn!("catalog record without a stream offset; skipped"),
                (_, Err(error)) => tracing::warn!(%error, "malformed catalog record; skipped"),
            }
            Ok(())
        })
        .await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "catalog follower stopping".into())).await;
        result
    }
}
