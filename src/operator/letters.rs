//! The letters log: dead letters and unrouted events, replicated, in the
//! order they arrived, until an operator settles them.
//!
//! Everything hookwire cannot deliver goes to one stream, `ns.letters`
//! (replicated like every stream, `rabbitmq.replicas`):
//! - a worker's dead letter, tagged with its subscription
//!   ([`message::DEAD_LETTER_OF`]);
//! - what a work queue dead-letters itself when its delivery limit is hit
//!   (at-least-once, so confirmed); its subscription is read from the queue
//!   name RabbitMQ records (`x-first-death-queue`);
//! - unrouted events, through the alternate exchange `ns.unrouted`.
//!
//! A stream never changes what it holds, so browsing cannot reorder, lose
//! or duplicate: it reads. What an operator replays or purges is *settled*
//! by a marker appended to the same stream, confirmed after the replay's
//! copy or the purge's record. Every process follows the stream into an
//! [`Index`] of what is still unsettled, per [`Pile`]: the counts the API
//! and the metrics show, and the offsets a scan reads. (Issue 11: a
//! classic queue kept the order but lived on one node; a quorum queue is
//! replicated but puts a browsed message at its back.)
//!
//! Freshness: a [`Letters::sync`] appends a sync marker and waits until the
//! follower has read it, so what any process wrote before is in the index.
//! Scans and the delete checks sync; counts for status read the index as it
//! stands (milliseconds behind).
//!
//! The cost, said out loud: the stream has no retention (it would drop
//! unsettled letters), so it keeps every letter ever written, settled or
//! not, and a process reads it from the start when it starts.
//!
//! Must not: settle an entry before what settles it (the copy, the record)
//! is confirmed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{
    BasicProperties,
    options::BasicAckOptions,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::OpError;
use crate::{
    broker::{Broker, Session, message, publisher::publish_confirmed, stream},
    telemetry::metric,
};

/// Header that marks hookwire's own markers in the stream (`settled`,
/// `sync`); entries do not have it.
pub const MARKER: &str = message::LETTERS_MARKER;
/// Deliveries the follower takes ahead. Letters carry whole bodies, of
/// which it reads only the headers: a small window bounds its memory.
const FOLLOW_PREFETCH: u16 = 32;

/// Which list a letter is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pile {
    /// The dead letters of a subscription.
    Dead(String),
    Unrouted,
}

impl std::fmt::Display for Pile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pile::Dead(name) => write!(f, "dead letters of {name}"),
            Pile::Unrouted => f.write_str("unrouted events"),
        }
    }
}

/// The body of a `settled` marker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Settled {
    /// Offsets of the entries it settles.
    pub offsets: Vec<u64>,
    /// `replayed`, `purged` or `discarded` (the subscription was deleted
    /// with `?discard=true`).
    pub outcome: String,
}

/// What is unsettled, as the follower has read it so far.
#[derive(Default)]
struct Index {
    piles: HashMap<Arc<Pile>, BTreeSet<u64>>,
    /// offset → pile, to settle an offset without knowing its pile. Piles
    /// are shared, not copied per letter.
    owner: BTreeMap<u64, Arc<Pile>>,
    /// The next offset the follower will read (resumes there on reconnect).
    next: Option<u64>,
}

impl Index {
    fn add(&mut self, offset: u64, pile: Pile) {
        if self.owner.contains_key(&offset) {
            return;
        }
        let pile = match self.piles.get_key_value(&pile) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(pile),
        };
        self.owner.insert(offset, pile.clone());
        let set = self.piles.entry(pile.clone()).or_default();
        set.insert(offset);
        gauge(&pile, set.len());
    }

    fn settle(&mut self, offset: u64) {
        if let Some(pile) = self.owner.remove(&offset)
            && let Some(set) = self.piles.get_mut(&pile)
        {
            set.remove(&offset);
            gauge(&pile, set.len());
            if set.is_empty() {
                self.piles.remove(&pile);
            }
        }
    }
}

/// The gauges follow the index: what is unsettled, per pile.
fn gauge(pile: &Pile, len: usize) {
    match pile {
        Pile::Dead(name) => metrics::gauge!(metric::DEAD_LETTERS, "subscription" => name.clone()).set(len as f64),
        Pile::Unrouted => metrics::gauge!(metric::UNROUTED_HELD).set(len as f64),
    }
}

/// The letters log, as one process follows it. Cheap to clone.
#[derive(Clone)]
pub struct Letters {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    index: Mutex<Index>,
    /// Sync markers this process waits for.
    syncs: stream::Syncs,
    /// True once the follower has read a sync marker it wrote after
    /// starting: the index then holds everything written before.
    caught_up: watch::Sender<bool>,
    /// One scan at a time per process: two scans of one pile would both
    /// move an entry.
    scanning: tokio::sync::Mutex<()>,
    /// Queues of earlier versions found holding letters, swept again every
    /// [`LEGACY_SWEEP`]; `None` until this process has looked for them.
    legacy: Mutex<Option<Vec<(String, Pile)>>>,
}

/// How often the queues of earlier versions are swept into the stream (a
/// work queue made before keeps dead-lettering into its old queue).
const LEGACY_SWEEP: Duration = Duration::from_secs(60);

impl Letters {
    /// Starts following the stream; stops when `token` is cancelled.
    pub fn spawn(broker: Broker, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let inner = Inner {
            broker,
            index: Mutex::default(),
            syncs: stream::Syncs::default(),
            caught_up: watch::channel(false).0,
            scanning: tokio::sync::Mutex::new(()),
            legacy: Mutex::default(),
        };
        let this = Self { inner: Arc::new(inner) };
        let task = tokio::spawn(this.clone().follow(token));
        (this, task)
    }

    fn stream(&self) -> String {
        self.inner.broker.topology().letters.clone()
    }

    /// Unsettled letters on `pile`, once the follower has caught up (waits
    /// for that at most the operation timeout).
    pub async fn count(&self, pile: &Pile) -> Result<u64, OpError> {
        let mut caught_up = self.inner.caught_up.subscribe();
        match tokio::time::timeout(self.inner.broker.operation_timeout, caught_up.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(self.unsettled_count(pile)),
            Ok(Err(_)) => Err(OpError::Unavailable),
            Err(_) => Err(OpError::Timeout),
        }
    }

    fn unsettled_count(&self, pile: &Pile) -> u64 {
        let index = self.inner.index.lock().expect("letters lock");
        index.piles.get(pile).map_or(0, |s| s.len() as u64)
    }

    /// The unsettled offsets of `pile`, oldest first.
    pub fn unsettled(&self, pile: &Pile) -> Vec<u64> {
        let index = self.inner.index.lock().expect("letters lock");
        index.piles.get(pile).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    fn is_unsettled(&self, offset: u64) -> bool {
        self.inner.index.lock().expect("letters lock").owner.contains_key(&offset)
    }

    /// Settles in this process's index what a confirmed marker settled
    /// (the follower will read the marker too; settling twice is nothing).
    fn settle_here(&self, offsets: &[u64]) {
        let mut index = self.inner.index.lock().expect("letters lock");
        for &offset in offsets {
            index.settle(offset);
        }
    }

    /// Returns once the index holds everything written to the stream before
    /// the call (by any process): appends a sync marker and waits for the
    /// follower to read it.
    pub async fn sync(&self) -> Result<(), OpError> {
        self.sync_within(Some(self.inner.broker.operation_timeout)).await
    }

    /// [`Letters::sync`], waiting for the follower at most `wait` (`None`:
    /// as long as it takes, for the follower's own catch-up on a long stream).
    async fn sync_within(&self, wait: Option<Duration>) -> Result<(), OpError> {
        let append = |id: String| async move { self.append(marker("sync"), id.as_bytes()).await };
        Ok(self.inner.syncs.sync(wait, append).await?)
    }

    /// Appends a `settled` marker for `offsets`, confirmed, then settles
    /// them here.
    pub async fn settle(&self, offsets: &[u64], outcome: &str) -> Result<(), OpError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&Settled { offsets: offsets.to_vec(), outcome: outcome.to_owned() })
            .expect("markers serialize");
        self.append(marker("settled"), &body).await?;
        self.settle_here(offsets);
        Ok(())
    }

    async fn append(&self, properties: BasicProperties, body: &[u8]) -> Result<(), OpError> {
        let session = self.inner.broker.session().ok_or(OpError::Unavailable)?;
        let channel = session.publish_channels.get().await.map_err(OpError::Publish)?;
        let timeout = self.inner.broker.operation_timeout;
        publish_confirmed(&channel, "", &self.stream(), properties, body, timeout).await.map_err(OpError::Publish)
    }

    /// Held while a scan that may settle runs in this process.
    pub(super) async fn scan_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.scanning.lock().await
    }

    pub(super) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    pub(super) fn still_unsettled(&self, offset: u64) -> bool {
        self.is_unsettled(offset)
    }

    async fn follow(self, token: CancellationToken) {
        let broker = self.inner.broker.clone();
        broker
            .on_every_session(&token.clone(), "letters follower", |session| {
                let (this, token) = (self.clone(), token.clone());
                async move { this.read(&session, &token).await }
            })
            .await;
    }

    /// Reads the stream on `session` from where the index stops, and sends
    /// a sync marker of its own to learn when it has caught up.
    async fn read(&self, session: &Session, token: &CancellationToken) -> Result<(), String> {
        let timeout = self.inner.broker.operation_timeout;
        let stream_name = self.stream();
        let next = self.inner.index.lock().expect("letters lock").next;
        let (channel, mut deliveries) = match next {
            Some(offset) => stream::from_offset(session, &stream_name, FOLLOW_PREFETCH, offset, timeout).await?,
            None => stream::from_first(session, &stream_name, FOLLOW_PREFETCH, timeout).await?,
        };
        // Reading a long stream from its start can take longer than any
        // operation timeout: the catch-up waits as long as it takes (the
        // task ends with the session), and only its append is retried.
        let catch_up = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    match this.sync_within(None).await {
                        Ok(()) => {
                            this.inner.caught_up.send_replace(true);
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "letters follower could not check it has caught up; trying again")
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        // Only a namespace made before the letters stream has old queues to
        // sweep; looking for them elsewhere would fail (and log) per queue.
        let legacy = tokio::spawn({
            let (this, session) = (self.clone(), session.clone());
            async move {
                if session.earlier_version {
                    this.sweep_legacy(&session).await;
                }
            }
        });
        let result = stream::each(&channel, &mut deliveries, &stream_name, token, timeout, |delivery| {
            match stream::offset(&delivery.properties) {
                Some(offset) => match self.take(offset, &delivery.properties, &delivery.data) {
                    Recreated::Yes => {
                        Err("the letters stream was made anew; reading it again from its start".to_owned())
                    }
                    Recreated::No => Ok(()),
                },
                None => Ok(()),
            }
        })
        .await;
        catch_up.abort();
        legacy.abort();
        result
    }

    /// Moves letters out of the classic queues of a namespace made before
    /// issue 11 (`ns.sub.NAME.dead`, `ns.unrouted`) into the stream: each
    /// is published, confirmed, then acked, so a crash between leaves a copy
    /// in both, never in neither. The unrouted queue is unbound first (its
    /// exchange now feeds the stream) and deleted once empty; old dead-letter
    /// queues stay, since a kept work queue still dead-letters into them.
    async fn sweep_legacy(&self, session: &Session) {
        let topology = self.inner.broker.topology();
        loop {
            let known = self.inner.legacy.lock().expect("letters lock").clone();
            let candidates = known.unwrap_or_else(|| {
                let mut all: Vec<(String, Pile)> = topology
                    .subscriptions
                    .iter()
                    .map(|s| (format!("{}.dead", s.work), Pile::Dead(s.subscription.clone())))
                    .collect();
                all.push((topology.unrouted_exchange.clone(), Pile::Unrouted));
                all
            });
            let mut found = Vec::new();
            for (queue, pile) in candidates {
                match self.move_legacy(session, &queue, &pile).await {
                    Ok(Some(moved)) => {
                        if moved > 0 {
                            tracing::info!(queue = %queue, moved, "letters of an earlier version moved into the letters stream");
                        }
                        if pile != Pile::Unrouted {
                            found.push((queue, pile));
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(queue = %queue, %error, "moving letters of an earlier version failed; trying again later");
                        found.push((queue, pile));
                    }
                }
            }
            *self.inner.legacy.lock().expect("letters lock") = Some(found);
            tokio::time::sleep(LEGACY_SWEEP).await;
        }
    }

    /// `None`: `queue` does not exist; else how many letters were moved.
    async fn move_legacy(&self, session: &Session, queue: &str, pile: &Pile) -> Result<Option<u64>, String> {
        use lapin::options::{BasicGetOptions, QueueDeleteOptions};
        let timeout = self.inner.broker.operation_timeout;
        let bounded = |what: &'static str| move |_| format!("{what} timed out");
        // A channel of its own: asking about a missing queue closes it.
        let channel = tokio::time::timeout(timeout, session.connection.create_channel())
            .await
            .map_err(bounded("opening a channel"))?
            .map_err(|e| e.to_string())?;
        let exists = match crate::broker::depth::read(&channel, queue, timeout).await {
            Ok(counts) => counts.is_some(),
            Err(crate::broker::depth::ReadError::TimedOut) => return Err("queue.declare timed out".to_owned()),
            // As before: a declare RabbitMQ refused for another reason
            // counts as no queue to move from.
            Err(crate::broker::depth::ReadError::Broker(_)) => false,
        };
        if !exists {
            return Ok(None);
        }
        let topology = self.inner.broker.topology();
        if *pile == Pile::Unrouted {
            let unbind = channel.queue_unbind(
                queue.into(),
                topology.unrouted_exchange.as_str().into(),
                "".into(),
                FieldTable::default(),
            );
            tokio::time::timeout(timeout, unbind).await.map_err(bounded("queue.unbind"))?.map_err(|e| e.to_string())?;
        }
        let publisher = session.publish_channels.get().await.map_err(|e| e.to_string())?;
        let mut moved = 0;
        loop {
            let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
            let Some(message) =
                tokio::time::timeout(timeout, get).await.map_err(bounded("basic.get"))?.map_err(|e| e.to_string())?
            else {
                break;
            };
            let delivery = message.delivery;
            let mut headers: FieldTable = delivery
                .properties
                .headers()
                .as_ref()
                .map(|h| h.inner().iter().filter(|(k, _)| k.as_str() != MARKER).map(|(k, v)| (k.clone(), v.clone())))
                .into_iter()
                .flatten()
                .collect::<BTreeMap<_, _>>()
                .into();
            if let Pile::Dead(name) = pile {
                headers.insert(message::DEAD_LETTER_OF.into(), AMQPValue::LongString(name.as_str().into()));
            }
            let properties = delivery.properties.clone().with_headers(headers);
            publish_confirmed(&publisher, "", &topology.letters, properties, &delivery.data, timeout)
                .await
                .map_err(|e| e.to_string())?;
            let ack = channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default());
            tokio::time::timeout(timeout, ack).await.map_err(bounded("basic.ack"))?.map_err(|e| e.to_string())?;
            moved += 1;
        }
        if *pile == Pile::Unrouted {
            let delete =
                channel.queue_delete(queue.into(), QueueDeleteOptions { if_empty: true, ..Default::default() });
            let _ = tokio::time::timeout(timeout, delete).await;
        }
        let _ = tokio::time::timeout(timeout, channel.close(200, "swept".into())).await;
        Ok(Some(moved))
    }

    /// Applies one record of the stream to the index.
    fn take(&self, offset: u64, properties: &BasicProperties, body: &[u8]) -> Recreated {
        let topology = self.inner.broker.topology();
        let mut index = self.inner.index.lock().expect("letters lock");
        if index.next.is_some_and(|next| offset < next) {
            // A resumed consumer starts at its chunk's first record: those
            // were read. But a sync marker this process is waiting for is new,
            // so below `next` it means the stream was deleted and declared
            // again (offsets start over): the index is of another stream.
            let waited_for = marker_kind(properties).as_deref() == Some("sync")
                && self.inner.syncs.awaits(String::from_utf8_lossy(body).as_ref());
            if waited_for {
                tracing::warn!(offset, "the letters stream was made anew; its index is rebuilt");
                *index = Index::default();
                self.inner.caught_up.send_replace(false);
                return Recreated::Yes;
            }
            return Recreated::No;
        }
        index.next = Some(offset + 1);
        match marker_kind(properties).as_deref() {
            Some("settled") => match serde_json::from_slice::<Settled>(body) {
                Ok(settled) => settled.offsets.iter().for_each(|&o| index.settle(o)),
                Err(error) => tracing::warn!(offset, %error, "unreadable settled marker in the letters stream"),
            },
            Some("sync") => {
                drop(index);
                self.inner.syncs.arrived(String::from_utf8_lossy(body).as_ref());
            }
            Some(other) => tracing::warn!(offset, kind = other, "unknown marker in the letters stream; skipped"),
            None => index.add(offset, pile_of(properties, &topology.namespace)),
        }
        Recreated::No
    }
}

/// Whether a record showed the stream was deleted and made again.
enum Recreated {
    Yes,
    No,
}

fn marker(kind: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(MARKER.into(), AMQPValue::LongString(kind.into()));
    BasicProperties::default().with_delivery_mode(2).with_headers(headers)
}

pub(super) fn marker_kind(properties: &BasicProperties) -> Option<String> {
    header_string(properties, MARKER)
}

fn header_string(properties: &BasicProperties, key: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Which pile an entry belongs on: the subscription a worker named, or the
/// one whose queue RabbitMQ dead-lettered it from (`ns.sub.NAME` or, if it
/// once waited in a retry queue, `ns.sub.NAME.retry.DELAY`: subscription
/// names have no dots); anything else came through the alternate exchange.
pub fn pile_of(properties: &BasicProperties, namespace: &str) -> Pile {
    if let Some(name) = header_string(properties, message::DEAD_LETTER_OF) {
        return Pile::Dead(name);
    }
    let prefix = format!("{namespace}.sub.");
    header_string(properties, "x-first-death-queue")
        .and_then(|queue| {
            let rest = queue.strip_prefix(&prefix)?;
            Some(Pile::Dead(rest.split('.').next().unwrap_or(rest).to_owned()))
        })
        .unwrap_or(Pile::Unrouted)
}

/// How long a scan waits for the stream's next record before it gives up.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn with_headers(pairs: &[(&str, &str)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (k, v) in pairs {
            headers.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn an_entry_goes_on_the_pile_its_headers_name() {
        let worker = with_headers(&[(message::DEAD_LETTER_OF, "billing")]);
        assert_eq!(pile_of(&worker, "hw"), Pile::Dead("billing".into()));
        let limit = with_headers(&[("x-first-death-queue", "hw.sub.billing")]);
        assert_eq!(pile_of(&limit, "hw"), Pile::Dead("billing".into()));
        let via_retry = with_headers(&[("x-first-death-queue", "hw.sub.billing.retry.5s")]);
        assert_eq!(pile_of(&via_retry, "hw"), Pile::Dead("billing".into()));
        // Another namespace's queue, or no header at all: unrouted.
        assert_eq!(pile_of(&with_headers(&[("x-first-death-queue", "other.sub.x")]), "hw"), Pile::Unrouted);
        assert_eq!(pile_of(&BasicProperties::default(), "hw"), Pile::Unrouted);
    }

    #[test]
    fn the_index_settles_an_offset_once_and_forgets_empty_piles() {
        let mut index = Index::default();
        index.add(3, Pile::Unrouted);
        index.add(5, Pile::Dead("a".into()));
        index.add(5, Pile::Dead("a".into())); // read twice after a reconnect
        assert_eq!(index.piles[&Pile::Dead("a".into())].len(), 1);
        index.settle(5);
        index.settle(5);
        index.settle(99); // settled already, or never ours
        assert!(!index.piles.contains_key(&Pile::Dead("a".into())));
        assert_eq!(index.owner.keys().copied().collect::<Vec<_>>(), vec![3]);
    }
}
