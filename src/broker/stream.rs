//! Reading a RabbitMQ stream from its first record: what the catalog and
//! the audit log do to rebuild their state from a log on every connection
//! (with [`Broker::on_every_session`](super::Broker::on_every_session)).
//!
//! Must not: interpret records (the followers do).

use std::{collections::HashMap, future::Future, sync::Mutex, time::Duration};

use futures_util::StreamExt;
use lapin::message::Delivery;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Session;
use lapin::{
    BasicProperties, Channel, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};

/// A consumer on `stream` from its first record. Streams need a prefetch,
/// and every delivery must be acked to keep the credit flowing.
pub async fn from_first(
    session: &Session,
    stream: &str,
    prefetch: u16,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    from(session, stream, prefetch, AMQPValue::LongString("first".into()), timeout).await
}

/// Like [`from_first`], from record `offset` on (or the first record the
/// stream still has, if retention removed that one). A consumer may also
/// get records just before `offset` (delivery starts at its chunk).
pub async fn from_offset(
    session: &Session,
    stream: &str,
    prefetch: u16,
    offset: u64,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let offset = i64::try_from(offset).map_err(|_| "offset out of range".to_owned())?;
    from(session, stream, prefetch, AMQPValue::LongLongInt(offset), timeout).await
}

async fn from(
    session: &Session,
    stream: &str,
    prefetch: u16,
    offset: AMQPValue,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    consume(session, stream, prefetch, args, timeout).await
}

/// A consumer of `queue` on a channel of its own, at most `prefetch`
/// unacked, every step bounded by `timeout`. Manual acks.
pub async fn consume(
    session: &Session,
    queue: &str,
    prefetch: u16,
    args: FieldTable,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let bounded = |what: &'static str| move |_| format!("{what} timed out");
    let channel = tokio::time::timeout(timeout, session.connection.create_channel())
        .await
        .map_err(bounded("opening a channel"))?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, channel.basic_qos(prefetch, BasicQosOptions::default()))
        .await
        .map_err(bounded("basic.qos"))?
        .map_err(|e| e.to_string())?;
    let consume = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), args);
    let consumer =
        tokio::time::timeout(timeout, consume).await.map_err(bounded("basic.consume"))?.map_err(|e| e.to_string())?;
    Ok((channel, consumer))
}

/// A follower's loop: hands each delivery of `stream` to `take`, then acks
/// it (on a stream an ack only returns credit), until `token` is cancelled
/// (`Ok`), the consumer fails or ends, or `take` says to start again (its
/// `Err`, with the reason).
pub async fn each(
    channel: &Channel,
    deliveries: &mut Consumer,
    stream: &str,
    token: &CancellationToken,
    timeout: Duration,
    mut take: impl FnMut(&Delivery) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let delivery = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            next = deliveries.next() => next,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err(format!("the consumer of {stream} ended")),
        };
        take(&delivery)?;
        let ack = channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default());
        match tokio::time::timeout(timeout, ack).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("ack timed out".to_owned()),
        }
    }
}

/// The record's position in the stream, which RabbitMQ adds to every
/// message it delivers from a stream.
pub fn offset(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Sync markers a follower waits for, by id: a process appends a marker
/// with a fresh id to the stream it follows and waits until its follower has
/// read it, so everything appended before (by any process) is applied. Used
/// by the letters and pauses followers.
#[derive(Default)]
pub struct Syncs {
    waiting: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

/// Why a sync did not complete.
#[derive(Debug)]
pub enum SyncError<E> {
    /// Appending the marker failed.
    Append(E),
    /// The follower did not read it within the wait.
    Timeout,
    /// The follower stopped (its session ended) first.
    Gone,
}

impl Syncs {
    /// Appends a marker with a fresh id (`append`) and waits for
    /// [`Syncs::arrived`] with that id, at most `wait` (`None`: as long as it
    /// takes). The id is forgotten however this ends, an aborted wait
    /// included: a stale id would make a re-read marker look new.
    pub async fn sync<E, F>(&self, wait: Option<Duration>, append: impl FnOnce(String) -> F) -> Result<(), SyncError<E>>
    where
        F: Future<Output = Result<(), E>>,
    {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("syncs lock").insert(id.clone(), tx);
        let _forget = Forget { syncs: self, id: &id };
        append(id.clone()).await.map_err(SyncError::Append)?;
        let read = match wait {
            Some(wait) => tokio::time::timeout(wait, rx).await.map_err(|_| SyncError::Timeout)?,
            None => rx.await,
        };
        read.map_err(|_| SyncError::Gone)
    }

    /// The follower read marker `id`: wakes its waiter, if this process has
    /// one.
    pub fn arrived(&self, id: &str) {
        if let Some(waiter) = self.waiting.lock().expect("syncs lock").remove(id) {
            let _ = waiter.send(());
        }
    }

    /// Whether this process waits for marker `id`.
    pub fn awaits(&self, id: &str) -> bool {
        self.waiting.lock().expect("syncs lock").contains_key(id)
    }
}

struct Forget<'a> {
    syncs: &'a Syncs,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.syncs.waiting.lock().expect("syncs lock").remove(self.id);
    }
}
