//! Pause and resume, for every process of a deployment at once.
//!
//! The durable truth is a flag queue per subscription (`ns.sub.NAME.paused`,
//! max length 1) that holds a message exactly while the subscription is
//! paused; each process reads the flags whenever it (re)connects. (A queue
//! that exists only while paused would need a passive declare that fails
//! with NOT_FOUND, closing a channel and logging an error each time.) Changes reach running processes
//! through the fanout exchange `ns.control`, where every process binds its
//! own exclusive queue. The listener binds before it reads the markers, so
//! no change falls between the two.
//!
//! A paused worker stops taking deliveries from its queue (events keep
//! queueing); deliveries already in flight finish. Until the listener has
//! read the markers on the current connection the state is unknown (`None`),
//! and workers wait: a process started while a subscription is paused must
//! not deliver even one event.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    Connection,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{OpError, bounded};
use crate::{
    broker::{
        Broker, PublishError, Topology,
        publisher::{open_confirm_channel, publish_confirmed},
        topology::declare_queue,
    },
    telemetry::metric,
};

/// A broadcast on `ns.control`: "subscription X changed". Receivers read
/// the flag rather than trust `paused`, so two operators pausing and
/// resuming at once cannot leave processes disagreeing with the flag.
#[derive(Debug, Serialize, Deserialize)]
struct Command {
    subscription: String,
    paused: bool,
}

pub struct Control {
    broker: Broker,
    /// Per subscription; `None`: not read yet on this connection. Entries
    /// appear as workers ask ([`Control::watch`]), since subscriptions come
    /// and go while the process runs; the lock is never held across an await.
    states: Mutex<HashMap<String, watch::Sender<Option<bool>>>>,
    /// Wakes the listener to read the flags of subscriptions it has not read.
    learn: Notify,
}

impl Control {
    /// Starts the listener; it stops when `token` is cancelled.
    pub fn spawn(broker: Broker, token: CancellationToken) -> (Arc<Self>, JoinHandle<()>) {
        let states =
            broker.topology().subscriptions.iter().map(|s| (s.subscription.clone(), watch::channel(None).0)).collect();
        let control = Arc::new(Self { broker, states: Mutex::new(states), learn: Notify::new() });
        let task = tokio::spawn(control.clone().listen(token));
        (control, task)
    }

    /// Follows subscription `name`'s paused flag (as this process knows it).
    /// A name seen for the first time starts unknown (`None`) until the
    /// listener has read its flag.
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<Option<bool>>> {
        let mut states = self.states.lock().expect("control states lock");
        if let Some(state) = states.get(name) {
            return Some(state.subscribe());
        }
        let (tx, rx) = watch::channel(None);
        states.insert(name.to_owned(), tx);
        drop(states);
        self.learn.notify_one();
        Some(rx)
    }

    /// Stops following a subscription that no longer exists.
    pub fn forget(&self, name: &str) {
        self.states.lock().expect("control states lock").remove(name);
        metrics::gauge!(metric::PAUSED, "subscription" => name.to_owned()).set(0.0);
    }

    /// Names whose flag this connection has not read yet.
    fn unread(&self) -> Vec<String> {
        let states = self.states.lock().expect("control states lock");
        states.iter().filter(|(_, state)| state.borrow().is_none()).map(|(name, _)| name.clone()).collect()
    }

    /// Whether subscription `name` is paused, read from the broker (the
    /// marker), not from this process's view.
    pub async fn is_paused(&self, name: &str) -> Result<bool, OpError> {
        let topology = self.broker.topology();
        let queues = topology.subscription(name).ok_or_else(|| OpError::NoQueue(name.to_owned()))?;
        let session = self.broker.session().ok_or(OpError::Unavailable)?;
        flag_set(&session.connection, &topology, &queues.paused_marker, self.broker.operation_timeout).await
    }

    /// Pauses or resumes subscription `name` everywhere.
    pub async fn set(&self, name: &str, paused: bool) -> Result<(), OpError> {
        let topology = self.broker.topology();
        let queues = topology.subscription(name).ok_or_else(|| OpError::NoQueue(name.to_owned()))?;
        let session = self.broker.session().ok_or(OpError::Unavailable)?;
        let timeout = self.broker.operation_timeout;
        let marker = queues.paused_marker.as_str();
        let body = serde_json::to_vec(&Command { subscription: name.to_owned(), paused }).expect("serializes");
        // A channel of its own: an error here must not close a channel that
        // ingress publishes share.
        let channel = open_confirm_channel(&session.connection, timeout).await.map_err(OpError::Publish)?;
        let result = async {
            if paused {
                let persistent = lapin::BasicProperties::default().with_delivery_mode(2);
                publish_confirmed(&channel, "", marker, persistent, &body, timeout).await.map_err(OpError::Publish)
            } else {
                bounded(timeout, channel.queue_purge(marker.into(), QueuePurgeOptions::default())).await.map(drop)
            }
        }
        .await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
        result?;
        let channel = session.publish_channels.get().await.map_err(OpError::Publish)?;
        let exchange = &self.broker.topology().control_exchange;
        match publish_confirmed(&channel, exchange, "", Default::default(), &body, timeout).await {
            // Returned: no process listens right now; each reads the marker
            // when it connects.
            Ok(()) | Err(PublishError::Returned(_)) => {}
            Err(error) => return Err(OpError::Publish(error)),
        }
        self.apply(name, paused);
        Ok(())
    }

    fn apply(&self, name: &str, paused: bool) {
        let before = {
            let states = self.states.lock().expect("control states lock");
            let Some(state) = states.get(name) else { return };
            state.send_replace(Some(paused))
        };
        metrics::gauge!(metric::PAUSED, "subscription" => name.to_owned()).set(if paused { 1.0 } else { 0.0 });
        match (before, paused) {
            (Some(false), true) => tracing::info!(subscription = %name, "subscription paused by an operator"),
            (Some(true), false) => tracing::info!(subscription = %name, "subscription resumed by an operator"),
            (None, true) => {
                tracing::warn!(subscription = %name, "subscription is paused: not delivering until resumed")
            }
            _ => {}
        }
    }

    async fn listen(self: Arc<Self>, token: CancellationToken) {
        self.broker
            .clone()
            .on_every_session(&token.clone(), "operator control listener", |session| {
                let (this, token) = (self.clone(), token.clone());
                async move {
                    let result = this.follow(&session.connection, &token).await.map_err(|e| e.to_string());
                    // Changes may be missed until the next connection reads the
                    // markers again: workers wait meanwhile.
                    for state in this.states.lock().expect("control states lock").values() {
                        state.send_replace(None);
                    }
                    result
                }
            })
            .await;
    }

    /// Binds this process's control queue, reads the markers, then applies
    /// broadcasts until the connection or the token ends.
    async fn follow(&self, connection: &Connection, token: &CancellationToken) -> Result<(), OpError> {
        let timeout = self.broker.operation_timeout;
        let channel = bounded(timeout, connection.create_channel()).await?;
        let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = bounded(timeout, channel.queue_declare("".into(), private, FieldTable::default())).await?;
        let topology = self.broker.topology();
        let exchange = topology.control_exchange.as_str();
        let bind = channel.queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        bounded(timeout, bind).await?;
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut commands =
            bounded(timeout, channel.basic_consume(queue.name().clone(), "".into(), no_ack, FieldTable::default()))
                .await?;
        for subscription in &topology.subscriptions {
            let paused = flag_set(connection, &topology, &subscription.paused_marker, timeout).await?;
            self.apply(&subscription.subscription, paused);
        }
        loop {
            let delivery = tokio::select! {
                _ = token.cancelled() => break,
                _ = self.learn.notified() => {
                    // Subscriptions added since: read their flags.
                    let topology = self.broker.topology();
                    for name in self.unread() {
                        if let Some(queues) = topology.subscription(&name) {
                            let paused = flag_set(connection, &topology, &queues.paused_marker, timeout).await?;
                            self.apply(&name, paused);
                        }
                    }
                    continue;
                }
                next = commands.next() => next,
            };
            match delivery {
                Some(Ok(delivery)) => match serde_json::from_slice::<Command>(&delivery.data) {
                    Ok(command) => {
                        let topology = self.broker.topology();
                        let Some(queues) = topology.subscription(&command.subscription) else { continue };
                        let paused = flag_set(connection, &topology, &queues.paused_marker, timeout).await?;
                        self.apply(&command.subscription, paused);
                    }
                    Err(error) => tracing::warn!(%error, "ignoring a malformed control message"),
                },
                Some(Err(error)) => return Err(OpError::Broker(error.to_string())),
                None => return Err(OpError::Unavailable),
            }
        }
        let _ = tokio::time::timeout(timeout, channel.close(200, "hookwire shutting down".into())).await;
        Ok(())
    }
}

/// Whether a pause flag queue holds its message. Declared (not only
/// passively: one deleted by hand must not stop every worker of the process
/// until the next reconnect) the way the topology declares it, which keeps
/// a flag made with another replica count; then counted. On a channel of
/// its own, since a refused declare closes its channel.
async fn flag_set(
    connection: &Connection,
    topology: &Topology,
    flag: &str,
    timeout: Duration,
) -> Result<bool, OpError> {
    let spec = topology.queues().into_iter().find(|q| q.name == flag).expect("flags are part of the topology");
    let mut channel = bounded(timeout, connection.create_channel()).await?;
    let result = async {
        declare_queue(connection, &mut channel, &spec, timeout).await.map_err(|e| OpError::Broker(e.to_string()))?;
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let declared = bounded(timeout, channel.queue_declare(flag.into(), passive, FieldTable::default())).await?;
        Ok(declared.message_count() > 0)
    }
    .await;
    let _ = tokio::time::timeout(timeout, channel.close(200, "flag read".into())).await;
    result
}
