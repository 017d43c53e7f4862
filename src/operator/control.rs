//! Pause and resume, for every process of a deployment at once.
//!
//! The durable truth is the stream `ns.pauses`: a pause or a resume appends
//! a record `{subscription, paused}`, confirmed, and a subscription's state
//! is its newest record (none: not paused). Every process follows the
//! stream, so a change reaches every process as the record does. A stream
//! because it is replicated and keeps answering when a node goes: a quorum
//! flag queue's message count reads 0 while the queue has no leader
//! (RabbitMQ answers `{ok, 0, 0}` when it cannot ask), which would have
//! resumed every paused subscription of a process reconnecting just then.
//!
//! A paused worker stops taking deliveries from its queue (events keep
//! queueing); deliveries already in flight finish. On every (re)connect the
//! state is unknown (`None`) until the follower has read the stream up to a
//! sync marker it appended, and workers wait: a process started while a
//! subscription is paused must not deliver even one event.
//!
//! Pause flag queues (`ns.sub.NAME.paused`, classic) of earlier versions
//! are read once, written to the stream and deleted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{
    BasicProperties,
    options::QueueDeleteOptions,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{OpError, bounded};
use crate::{
    broker::{Broker, Session, publisher::publish_confirmed, stream},
    telemetry::metric,
};

/// Header of the follower's sync markers (records do not have it).
const SYNC: &str = "hookwire-pauses-sync";

/// One record of `ns.pauses`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    subscription: String,
    paused: bool,
}

/// The record that says the flag queues of earlier versions were moved in.
const MIGRATED: &str = "";

/// The stream as this process has read it on the current connection.
#[derive(Default)]
struct Followed {
    /// Up to a sync marker of this connection: the states are known.
    caught_up: bool,
    /// Newest record per subscription.
    paused: HashMap<String, bool>,
}

pub struct Control {
    broker: Broker,
    /// Per subscription; `None`: not known yet on this connection. Entries
    /// appear as workers ask ([`Control::watch`]), since subscriptions come
    /// and go while the process runs; the locks are never held across an
    /// await, and `followed` is taken before `states`.
    states: Mutex<HashMap<String, watch::Sender<Option<bool>>>>,
    followed: Mutex<Followed>,
    /// Sync markers this process waits for.
    syncs: stream::Syncs,
}

impl Control {
    /// Starts the follower; it stops when `token` is cancelled.
    pub fn spawn(broker: Broker, token: CancellationToken) -> (Arc<Self>, JoinHandle<()>) {
        let states =
            broker.topology().subscriptions.iter().map(|s| (s.subscription.clone(), watch::channel(None).0)).collect();
        let control = Arc::new(Self {
            broker,
            states: Mutex::new(states),
            followed: Mutex::default(),
            syncs: stream::Syncs::default(),
        });
        let task = tokio::spawn(control.clone().listen(token));
        (control, task)
    }

    /// Follows subscription `name`'s state (as this process knows it).
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<Option<bool>>> {
        let followed = self.followed.lock().expect("control lock");
        let mut states = self.states.lock().expect("control states lock");
        if let Some(state) = states.get(name) {
            return Some(state.subscribe());
        }
        let known = followed.caught_up.then(|| followed.paused.get(name).copied().unwrap_or(false));
        let (tx, rx) = watch::channel(known);
        states.insert(name.to_owned(), tx);
        Some(rx)
    }

    /// Stops following a subscription that no longer exists.
    pub fn forget(&self, name: &str) {
        self.states.lock().expect("control states lock").remove(name);
        metrics::gauge!(metric::PAUSED, "subscription" => name.to_owned()).set(0.0);
    }

    /// Whether subscription `name` is paused, once this process has read
    /// the stream on its connection (waits for that at most the operation
    /// timeout).
    pub async fn is_paused(&self, name: &str) -> Result<bool, OpError> {
        let deadline = tokio::time::Instant::now() + self.broker.operation_timeout;
        loop {
            {
                let followed = self.followed.lock().expect("control lock");
                if followed.caught_up {
                    return Ok(followed.paused.get(name).copied().unwrap_or(false));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OpError::Unavailable);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pauses or resumes subscription `name` everywhere: the record is
    /// appended (confirmed), and the answer waits until this process has
    /// applied it.
    pub async fn set(&self, name: &str, paused: bool) -> Result<(), OpError> {
        if self.broker.topology().subscription(name).is_none() {
            return Err(OpError::NoQueue(name.to_owned()));
        }
        self.append(name, paused).await?;
        self.sync().await
    }

    async fn append(&self, name: &str, paused: bool) -> Result<(), OpError> {
        let body = serde_json::to_vec(&Record { subscription: name.to_owned(), paused }).expect("serializes");
        let properties = BasicProperties::default().with_delivery_mode(2);
        self.publish(properties, &body).await
    }

    async fn publish(&self, properties: BasicProperties, body: &[u8]) -> Result<(), OpError> {
        let session = self.broker.session().ok_or(OpError::Unavailable)?;
        let channel = session.publish_channels.get().await.map_err(OpError::Publish)?;
        let stream = self.broker.topology().pauses_stream.clone();
        publish_confirmed(&channel, "", &stream, properties, body, self.broker.operation_timeout)
            .await
            .map_err(OpError::Publish)
    }

    /// Returns once this process has read everything appended before the
    /// call: appends a sync marker and waits (at most `wait`, or as long as
    /// it takes) for the follower to read it.
    async fn sync_within(&self, wait: Option<Duration>) -> Result<(), OpError> {
        Ok(self.syncs.sync(wait, |id: String| async move { self.append_sync(&id).await }).await?)
    }

    async fn append_sync(&self, id: &str) -> Result<(), OpError> {
        let mut headers = FieldTable::default();
        headers.insert(SYNC.into(), AMQPValue::LongString(id.into()));
        self.publish(BasicProperties::default().with_headers(headers), b"").await
    }

    async fn sync(&self) -> Result<(), OpError> {
        self.sync_within(Some(self.broker.operation_timeout)).await
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
            .on_every_session(&token.clone(), "operator control follower", |session| {
                let (this, token) = (self.clone(), token.clone());
                async move {
                    let result = this.follow(&session, &token).await;
                    // Changes may be missed until the next connection has
                    // read the stream again: workers wait meanwhile.
                    *this.followed.lock().expect("control lock") = Followed::default();
                    for state in this.states.lock().expect("control states lock").values() {
                        state.send_replace(None);
                    }
                    result
                }
            })
            .await;
    }

    /// Reads the stream from its start on `session`; once the sync marker
    /// it appends comes back, every state is known, and each record after
    /// that applies at once.
    async fn follow(self: &Arc<Self>, session: &Session, token: &CancellationToken) -> Result<(), String> {
        let timeout = self.broker.operation_timeout;
        let name = self.broker.topology().pauses_stream.clone();
        let (channel, mut records) = stream::from_first(session, &name, 100, timeout).await?;
        let caught_up_id = uuid::Uuid::now_v7().simple().to_string();
        let catch_up = tokio::spawn({
            let (this, id, earlier) = (self.clone(), caught_up_id.clone(), session.earlier_version);
            async move { this.catch_up(&id, earlier).await }
        });
        let result = stream::each(&channel, &mut records, &name, token, timeout, |delivery| {
            self.take(&delivery.properties, &delivery.data, &caught_up_id);
            Ok(())
        })
        .await;
        catch_up.abort();
        let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
        result
    }

    /// Reads up to now, moves in the flag queues of an earlier version
    /// (`earlier`: the declare met its queues) if no process has, then
    /// appends the marker that makes the states known. Waits as long as
    /// reading takes; appends are retried.
    async fn catch_up(&self, caught_up_id: &str, earlier: bool) {
        while let Err(error) = self.sync_within(None).await {
            tracing::warn!(%error, "pause follower could not read the stream up to now; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let migrated = self.followed.lock().expect("control lock").paused.contains_key(MIGRATED);
        if earlier && !migrated {
            while let Err(error) = self.migrate_flags().await {
                tracing::warn!(%error, "moving the pause flags of an earlier version failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        while let Err(error) = self.append_sync(caught_up_id).await {
            tracing::warn!(%error, "pause follower could not mark its catch-up; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Earlier versions kept each state in a classic queue
    /// `ns.sub.NAME.paused` holding one message while paused. Each is read,
    /// written as a record when set (unless the stream has one already), and
    /// deleted; then a record says it is done, so later starts skip it.
    async fn migrate_flags(&self) -> Result<(), OpError> {
        let session = self.broker.session().ok_or(OpError::Unavailable)?;
        let timeout = self.broker.operation_timeout;
        let topology = self.broker.topology();
        for subscription in &topology.subscriptions {
            let flag = format!("{}.paused", subscription.work);
            // A channel per look: asking about a missing queue closes it.
            let channel = bounded(timeout, session.connection.create_channel()).await?;
            if let Ok(Some(declared)) = crate::broker::depth::read(&channel, &flag, timeout).await {
                let recorded =
                    self.followed.lock().expect("control lock").paused.contains_key(&subscription.subscription);
                if declared.messages > 0 && !recorded {
                    self.append(&subscription.subscription, true).await?;
                }
                bounded(timeout, channel.queue_delete(flag.as_str().into(), QueueDeleteOptions::default())).await?;
                tracing::info!(subscription = %subscription.subscription, paused = declared.messages > 0, "pause flag of an earlier version moved to the pauses stream");
            }
            let _ = tokio::time::timeout(timeout, channel.close(200, "looked".into())).await;
        }
        self.append(MIGRATED, true).await
    }

    /// Applies one record of the stream.
    fn take(&self, properties: &BasicProperties, body: &[u8], caught_up_id: &str) {
        if let Some(id) = sync_id(properties) {
            if id == caught_up_id {
                let mut followed = self.followed.lock().expect("control lock");
                followed.caught_up = true;
                let names: Vec<String> = self.states.lock().expect("control states lock").keys().cloned().collect();
                for name in names {
                    self.apply(&name, followed.paused.get(&name).copied().unwrap_or(false));
                }
            } else {
                self.syncs.arrived(&id);
            }
            return;
        }
        let Ok(record) = serde_json::from_slice::<Record>(body) else {
            tracing::warn!("unreadable record in the pauses stream; skipped");
            return;
        };
        let mut followed = self.followed.lock().expect("control lock");
        followed.paused.insert(record.subscription.clone(), record.paused);
        if followed.caught_up {
            self.apply(&record.subscription, record.paused);
        }
    }
}

fn sync_id(properties: &BasicProperties) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(SYNC)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}
