//! Owns the one RabbitMQ connection of the process and keeps it alive.
//!
//! With several broker addresses (the nodes of a cluster) the process takes
//! them in a shuffled order, so a deployment's processes spread over the
//! nodes, and moves to the next address whenever a connect fails or an
//! established connection is lost.
//!
//! lapin's own auto-recovery is young, so hookwire runs its own loop: connect
//! (bounded), declare the topology, publish a [`Session`] to everyone watching,
//! then wait for the connection to fail; on failure withdraw the session, back
//! off with jitter, and start over. Publishers and workers never reconnect
//! themselves: they wait for the next session.
//! It also tracks RabbitMQ's `connection.blocked` / `connection.unblocked`
//! notifications (a memory or disk alarm): while blocked, publishes would
//! hang until their timeout, so publishers fail fast and `/readyz` says so.
//! Must not: publish or consume.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{publisher::ChannelPool, topology::Topology};
use crate::{config::RabbitConfig, telemetry::metric};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between attempts. Shorter than the ingress's default
/// `Retry-After` (5 s), so a sender told to come back finds the process
/// connected if the broker was back a few seconds before: with 10 s, the
/// process was ready 4-6 s after the broker (docs/RELIABILITY.md). An
/// attempt against a broker that is down is a refused TCP connect.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// How often the supervisor double-checks the connection status, in case a
/// failure event is missed.
const STATUS_POLL: Duration = Duration::from_millis(500);
/// Pause before a per-connection follower starts again after failing.
const FOLLOWER_RETRY: Duration = Duration::from_secs(1);

/// A live, topology-declared connection. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    /// Increases with every reconnect, so holders can tell sessions apart.
    pub generation: u64,
    pub connection: Arc<Connection>,
    /// Confirm-mode channels for publishing, shared by the whole process.
    pub publish_channels: Arc<ChannelPool>,
    /// The declare met queues of a version before `ns.letters` and
    /// `ns.pauses` (see `operator::letters` and `operator::control`).
    pub earlier_version: bool,
}

/// A handle on the supervised connection.
#[derive(Clone)]
pub struct Broker {
    session: watch::Receiver<Option<Session>>,
    /// The broker's reason while it blocks this connection's publishes.
    blocked: watch::Receiver<Option<String>>,
    /// What must exist on the broker: replaced as subscriptions come and go.
    topology: Arc<watch::Sender<Arc<Topology>>>,
    pub operation_timeout: Duration,
}

impl Broker {
    /// Starts the supervisor. It stops (closing the connection) when `token`
    /// is cancelled; cancel it only after every user of the connection is done.
    pub fn spawn(config: &RabbitConfig, topology: Arc<Topology>, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let topology = Arc::new(watch::channel(topology).0);
        let (tx, rx) = watch::channel(None);
        let (blocked_tx, blocked) = watch::channel(None);
        let mut urls: Vec<String> = config.url.iter().map(|u| u.expose().to_owned()).collect();
        rand::seq::SliceRandom::shuffle(urls.as_mut_slice(), &mut rand::rng());
        let supervisor = Supervisor {
            blocked: blocked_tx,
            urls,
            next: std::sync::atomic::AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            operation_timeout: config.operation_timeout,
            topology: topology.subscribe(),
            tx,
            generation: AtomicU64::new(0),
        };
        let handle = tokio::spawn(supervisor.run(token));
        let broker = Self { session: rx, blocked, topology, operation_timeout: config.operation_timeout };
        (broker, handle)
    }

    /// The current session, if connected.
    pub fn session(&self) -> Option<Session> {
        self.session.borrow().clone()
    }

    /// A receiver that sees every session change.
    pub fn watch(&self) -> watch::Receiver<Option<Session>> {
        self.session.clone()
    }

    /// The topology as it is meant to be now: everything a reconnect declares.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Replaces the topology that reconnects declare (declaring what is new
    /// on the current connection is the caller's job).
    pub fn set_topology(&self, topology: Arc<Topology>) {
        self.topology.send_replace(topology);
    }

    /// Connected and topology declared.
    pub fn is_ready(&self) -> bool {
        self.session.borrow().as_ref().is_some_and(|s| s.connection.status().connected())
    }

    /// The broker's reason (e.g. a disk alarm) while it blocks publishing.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    /// Resolves once the connection is blocked (at once if it is now).
    pub async fn until_blocked(&self) -> String {
        let mut blocked = self.blocked.clone();
        let reason = blocked.wait_for(Option::is_some).await.map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The supervisor is gone; nothing will ever block again.
            Err(_) => std::future::pending().await,
        }
    }

    /// Calls `read` with every new session until `token` is cancelled, for
    /// the followers that hold something per connection (the catalog, the
    /// audit log, pause control). `read` runs until its session ends or
    /// fails; an error is logged as `what`, and a second passes before the
    /// next attempt, so a broken channel does not spin.
    pub async fn on_every_session<F, Fut>(&self, token: &CancellationToken, what: &str, mut read: F)
    where
        F: FnMut(Session) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut sessions = self.watch();
        loop {
            let session = tokio::select! {
                _ = token.cancelled() => return,
                changed = sessions.wait_for(Option::is_some) => match changed {
                    Ok(session) => session.clone().expect("waited for Some"),
                    Err(_) => return,
                },
            };
            if let Err(error) = read(session).await {
                tracing::warn!(%error, "{what} failed; starting again");
            }
            if token.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(FOLLOWER_RETRY) => {}
            }
        }
    }

    /// Resolves once the connection is not blocked (at once if it is not).
    pub async fn until_unblocked(&self) {
        let mut blocked = self.blocked.clone();
        let _ = blocked.wait_for(Option::is_none).await;
    }
}

struct Supervisor {
    blocked: watch::Sender<Option<String>>,
    /// Broker addresses, shuffled once per process.
    urls: Vec<String>,
    /// Index into `urls` of the next address to try.
    next: std::sync::atomic::AtomicUsize,
    connect_timeout: Duration,
    operation_timeout: Duration,
    topology: watch::Receiver<Arc<Topology>>,
    tx: watch::Sender<Option<Session>>,
    generation: AtomicU64,
}

impl Supervisor {
    async fn run(self, token: CancellationToken) {
        metrics::gauge!(metric::BROKER_CONNECTED).set(0.0);
        metrics::gauge!(metric::BROKER_BLOCKED).set(0.0);
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt = tokio::select! {
                _ = token.cancelled() => break,
                result = self.connect() => result,
            };
            match attempt {
                Ok(session) => {
                    backoff = MIN_BACKOFF;
                    let connection = session.connection.clone();
                    let channels = session.publish_channels.clone();
                    tracing::info!(generation = session.generation, broker = %self.current_url(), "connected to RabbitMQ, topology declared");
                    metrics::gauge!(metric::BROKER_CONNECTED).set(1.0);
                    self.tx.send_replace(Some(session));
                    let lost = wait_for_failure(&connection, &token, &self.blocked).await;
                    self.tx.send_replace(None);
                    // A new connection starts unblocked; a lost one is
                    // reported as disconnected, not as blocked.
                    set_blocked(&self.blocked, None);
                    metrics::gauge!(metric::BROKER_CONNECTED).set(0.0);
                    if !lost {
                        channels.close().await;
                        let close = connection.close(200, "hookwire shutting down".into());
                        let _ = tokio::time::timeout(self.operation_timeout, close).await;
                        tracing::info!("RabbitMQ connection closed");
                        break;
                    }
                    metrics::counter!(metric::BROKER_RECONNECTS).increment(1);
                    self.advance();
                    tracing::warn!(next = %self.current_url(), "lost the RabbitMQ connection; reconnecting");
                }
                Err(error) => {
                    let failed = self.current_url();
                    self.advance();
                    tracing::warn!(%error, broker = %failed, next = %self.current_url(), retry_in = ?backoff, "cannot reach RabbitMQ");
                }
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(jittered) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.tx.send_replace(None);
    }

    /// The address the next attempt uses, redacted for logs.
    fn current_url(&self) -> String {
        let i = self.next.load(Ordering::Relaxed) % self.urls.len();
        crate::config::redact_url(&self.urls[i])
    }

    /// Moves to the next address (round robin over the shuffled list).
    fn advance(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    async fn connect(&self) -> Result<Session, String> {
        let url = &self.urls[self.next.load(Ordering::Relaxed) % self.urls.len()];
        let properties = ConnectionProperties::default().with_connection_name("hookwire".into());
        let uri = with_frame_max(url)?;
        let connection = tokio::time::timeout(self.connect_timeout, Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let topology = self.topology.borrow().clone();
        let declared = match topology.declare(&connection, self.operation_timeout).await {
            Ok(declared) => declared,
            Err(e) => {
                tracing::error!(error = %e, "declaring the RabbitMQ topology failed");
                let _ = tokio::time::timeout(self.operation_timeout, connection.close(200, "topology".into())).await;
                return Err(e.to_string());
            }
        };
        let connection = Arc::new(connection);
        Ok(Session {
            earlier_version: declared.earlier_version,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            publish_channels: Arc::new(ChannelPool::new(connection.clone(), self.operation_timeout)),
            connection,
        })
    }
}

fn set_blocked(blocked: &watch::Sender<Option<String>>, reason: Option<String>) {
    metrics::gauge!(metric::BROKER_BLOCKED).set(if reason.is_some() { 1.0 } else { 0.0 });
    blocked.send_replace(reason);
}

/// Returns `true` when the connection failed, `false` when shutdown was asked.
/// Follows the blocked / unblocked notifications meanwhile.
async fn wait_for_failure(
    connection: &Connection,
    token: &CancellationToken,
    blocked: &watch::Sender<Option<String>>,
) -> bool {
    let mut events = connection.events_listener();
    let mut poll = tokio::time::interval(STATUS_POLL);
    loop {
        tokio::select! {
            _ = token.cancelled() => return false,
            event = events.next() => match event {
                // lapin reports channel-level (soft) errors here too, such as
                // the NOT_FOUND of a passive declare probing for a queue; they
                // close one channel, not the connection.
                Some(lapin::Event::Error(error)) if connection.status().connected() => {
                    tracing::debug!(%error, "RabbitMQ closed a channel; the connection is fine");
                }
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, "RabbitMQ connection error");
                    return true;
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked the connection (resource alarm): publishes fail fast until it lifts");
                    set_blocked(blocked, Some(reason));
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("RabbitMQ unblocked the connection");
                    set_blocked(blocked, None);
                }
                Some(_) => {}
                None => return true,
            },
            _ = poll.tick() => {
                if !connection.status().connected() {
                    return true;
                }
            }
        }
    }
}

/// The largest AMQP frame hookwire asks for, unless the URL names one
/// (`?frame_max=`). lapin keeps a send and a receive buffer of 32 frames
/// for each connection, and RabbitMQ's default frame of 128 KiB made them
/// 4 MiB each: 8 MiB of a worker's heap, a tenth of its peak at fan-out 10
/// (docs/BENCHMARKS.md). A 1 KiB event still goes in one frame; a larger
/// body is split, at 8 bytes per extra frame.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, with [`FRAME_MAX`] unless it asks for its own frame size
/// (the broker's limit applies either way: the smaller one is used).
fn with_frame_max(url: &str) -> Result<lapin::uri::AMQPUri, String> {
    let mut uri: lapin::uri::AMQPUri =
        url.parse().map_err(|e: String| format!("{}: {e}", crate::config::redact_url(url)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_unless_the_url_asks_otherwise() {
        let uri = with_frame_max("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let own = with_frame_max("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072&heartbeat=10").unwrap();
        assert_eq!(own.query.frame_max, Some(131_072));
        assert_eq!(own.query.heartbeat, Some(10));
        let error = with_frame_max("amqp://guest:s3cret@[::1/%2f").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
