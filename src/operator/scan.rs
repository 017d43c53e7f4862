//! Walking a queue without disturbing what stays in it: the one primitive
//! under browsing, replay and purge of dead letters and unrouted events.
//!
//! A scan consumes the queue with manual acks and decides per message:
//! - [`Decision::Keep`]: the message is held unacked until the scan ends, then
//!   handed back with `basic.nack(requeue)`. Scanned queues are classic
//!   queues, which requeue a message at its original position, so kept
//!   messages end up exactly where they were. (A quorum queue would append
//!   them to its back: measured on RabbitMQ 3.10, see docs/DECISIONS.md.)
//! - [`Decision::Remove`]: acked (purge), in batches, each once the event
//!   log has committed the batch's `purged` records: a crash between the two
//!   leaves the messages in place, never gone without their record.
//! - [`Decision::Move`]: published to its new place with a publisher confirm,
//!   and acked only once confirmed. A crash between the two leaves a copy in
//!   both places (the same event id, so the destination can dedup), never in
//!   neither.
//!
//! Holding kept messages counts against the consumer's prefetch, so when
//! every consumer of the scan is full of held messages another consumer is
//! added on the same channel: each has its own prefetch window, and delivery
//! tags stay in queue order across them. The scan looks at no more than the
//! messages ready when it started, so what arrives meanwhile is not scanned
//! (and a move back into the same queue cannot loop).
//!
//! Must not: ack anything it was not told to remove or has not moved.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use futures_util::{
    StreamExt,
    stream::{FuturesUnordered, SelectAll},
};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::sync::watch;

use super::{OpError, Report, bounded};
use crate::{
    broker::{
        Broker,
        message::{self, DecodeError, DeliveryState},
        publisher::open_confirm_channel,
    },
    envelope::Envelope,
    eventlog::{Record, Recorder, What},
};

/// Publishes awaiting their confirm at once during a move: enough to keep the
/// broker busy (10,000 moves in about 1 s here), few enough that a replay
/// killed midway leaves few messages in both queues (the measured trade-off
/// is in docs/DECISIONS.md).
const MAX_PENDING_MOVES: usize = 128;
/// No delivery for this long means the rest of the queue is held elsewhere
/// (another operator's scan, a consumer): stop rather than wait.
const IDLE: Duration = Duration::from_secs(2);
/// Longest wait for handed-back messages to be in the queue again (longer
/// only when another consumer takes messages meanwhile).
const RETURN_WAIT: Duration = Duration::from_secs(2);

/// One message as a scan sees it.
pub struct Message {
    pub properties: BasicProperties,
    pub body: Bytes,
    /// The envelope and delivery history, or why the message is not ours.
    pub decoded: Result<(Envelope, DeliveryState), DecodeError>,
}

impl Message {
    /// The event id, also for messages that do not decode (when they have one).
    pub fn id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|id| id.as_str())
    }
}

pub enum Decision {
    Keep,
    Remove,
    /// Publish to `exchange` with `routing_key`, confirmed, then remove.
    Move {
        exchange: String,
        routing_key: String,
        properties: Box<BasicProperties>,
    },
}

pub enum Flow {
    Continue,
    Stop,
}

/// Removals acked at once, at most: one commit of their records each.
const REMOVE_BATCH: usize = 256;

/// Scans `queue` from its head. `prefetch` bounds how many messages the broker
/// sends ahead per consumer (a small page asks for few). Progress (scanned,
/// replayed, purged, failed) is written to `progress` as it happens;
/// `removals`: the recorder and the subscription in whose stories each
/// removal is recorded as `purged`, committed before the removal's ack.
pub async fn scan(
    broker: &Broker,
    queue: &str,
    prefetch: u16,
    progress: &watch::Sender<Report>,
    mut visit: impl FnMut(&Message) -> (Decision, Flow),
    removals: Option<(&Recorder, &str)>,
) -> Result<(), OpError> {
    let session = broker.session().ok_or(OpError::Unavailable)?;
    let timeout = broker.operation_timeout;
    let channel = bounded(timeout, session.connection.create_channel()).await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let depth = match tokio::time::timeout(timeout, channel.queue_declare(queue.into(), passive, FieldTable::default()))
        .await
    {
        Err(_) => return Err(OpError::Timeout),
        Ok(Err(error)) if error.to_string().contains("NOT_FOUND") => return Err(OpError::NoQueue(queue.to_owned())),
        Ok(Err(error)) => return Err(OpError::Broker(error.to_string())),
        Ok(Ok(declared)) => declared.message_count(),
    };
    progress.send_modify(|r| r.total = u64::from(depth));
    if depth == 0 {
        let _ = tokio::time::timeout(timeout, channel.close(200, "scan done".into())).await;
        return Ok(());
    }
    let prefetch = prefetch.clamp(1, u16::try_from(depth).unwrap_or(u16::MAX));
    bounded(timeout, channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
    let publisher = open_confirm_channel(&session.connection, timeout).await.map_err(OpError::Publish)?;

    let mut scan = Scanner {
        channel: channel.clone(),
        queue,
        prefetch,
        timeout,
        consumers: SelectAll::new(),
        tags: Vec::new(),
        unsettled: Vec::new(),
        held: Vec::new(),
        removing: Vec::new(),
    };
    let result = scan.run(&publisher, depth, progress, &mut visit, removals).await;
    scan.finish().await;
    // The queue takes handed-back messages asynchronously (the nack goes
    // from the channel process to the queue process), so wait until it holds
    // them again: an operator who lists right after a replay must see the
    // untouched messages in place.
    let taken = { progress.borrow().replayed + progress.borrow().purged };
    let expected = u64::from(depth).saturating_sub(taken);
    let deadline = tokio::time::Instant::now() + RETURN_WAIT;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(timeout, channel.queue_declare(queue.into(), passive, FieldTable::default())).await {
            Ok(Ok(declared)) if u64::from(declared.message_count()) < expected => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => break,
        }
    }
    let _ = tokio::time::timeout(timeout, publisher.close(200, "scan done".into())).await;
    let _ = tokio::time::timeout(timeout, channel.close(200, "scan done".into())).await;
    result
}

type Deliveries = futures_util::stream::Map<
    lapin::Consumer,
    Box<
        dyn FnMut(
                Result<lapin::message::Delivery, lapin::Error>,
            ) -> (usize, Result<lapin::message::Delivery, lapin::Error>)
            + Send,
    >,
>;

/// The story's record of a message purged from `subscription`'s queue.
fn purged(event: &str, subscription: &str) -> Option<Record> {
    let what = What::Outcome {
        subscription: subscription.to_owned(),
        outcome: "purged".to_owned(),
        reason: Some("operator".to_owned()),
    };
    Some(Record { event: event.to_owned(), at_ms: crate::eventlog::now_ms(), what })
}

/// A removal awaiting its ack: the consumer that holds it, and its record.
struct Removing {
    tag: u64,
    index: usize,
    record: Option<Record>,
}

struct Scanner<'a> {
    channel: Channel,
    queue: &'a str,
    prefetch: u16,
    timeout: Duration,
    consumers: SelectAll<Deliveries>,
    tags: Vec<String>,
    /// Per consumer: deliveries not yet acked (held or moving). When every
    /// consumer is full, the broker sends nothing more, so a consumer is added.
    unsettled: Vec<u16>,
    /// Delivery tags to hand back when the scan ends.
    held: Vec<u64>,
    /// Removals whose records are not committed yet.
    removing: Vec<Removing>,
}

impl Scanner<'_> {
    async fn add_consumer(&mut self) -> Result<(), OpError> {
        let index = self.tags.len();
        let tag = format!("hookwire-scan-{}-{index}", uuid::Uuid::now_v7().simple());
        let consumer = bounded(
            self.timeout,
            self.channel.basic_consume(
                self.queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        self.consumers.push(consumer.map(Box::new(move |delivery| (index, delivery))));
        self.tags.push(tag);
        self.unsettled.push(0);
        Ok(())
    }

    async fn run(
        &mut self,
        publisher: &Channel,
        depth: u32,
        progress: &watch::Sender<Report>,
        visit: &mut impl FnMut(&Message) -> (Decision, Flow),
        removals: Option<(&Recorder, &str)>,
    ) -> Result<(), OpError> {
        let recorder = removals.map(|(recorder, _)| recorder);
        let mut scanned = 0u32;
        let mut moving = FuturesUnordered::new();
        // tag → the consumer holding the original of a move awaiting its confirm.
        let mut owners: HashMap<u64, usize> = HashMap::new();
        let mut stop = false;
        // On an error the loop stops taking deliveries, but the moves in
        // flight are still settled below: abandoning them would hand their
        // originals back although their copies may be confirmed (duplicates
        // that the report would not count).
        let result = loop {
            if stop || scanned >= depth {
                break Ok(());
            }
            if moving.len() >= MAX_PENDING_MOVES {
                if let Some(confirmed) = moving.next().await {
                    self.settle_move(confirmed, &mut owners, progress).await;
                }
                continue;
            }
            if self.unsettled.iter().all(|&n| n >= self.prefetch) {
                // Acking what is removed may be enough to make room.
                if !self.removing.is_empty() {
                    if let Err(error) = self.ack_removed(recorder, progress).await {
                        break Err(error);
                    }
                    continue;
                }
                if let Err(error) = self.add_consumer().await {
                    break Err(error);
                }
            }
            let delivery = tokio::select! {
                Some(confirmed) = moving.next(), if !moving.is_empty() => {
                    self.settle_move(confirmed, &mut owners, progress).await;
                    continue;
                }
                next = tokio::time::timeout(IDLE, self.consumers.next()) => match next {
                    Err(_) | Ok(None) => break Ok(()),
                    Ok(Some((_, Err(error)))) => break Err(OpError::Broker(error.to_string())),
                    Ok(Some((index, Ok(delivery)))) => (index, delivery),
                },
            };
            let (index, delivery) = delivery;
            scanned += 1;
            self.unsettled[index] += 1;
            let tag = delivery.delivery_tag;
            let body = Bytes::from(delivery.data);
            let message = Message {
                decoded: message::decode(&delivery.properties, body.clone()),
                properties: delivery.properties,
                body,
            };
            let (decision, flow) = visit(&message);
            stop = matches!(flow, Flow::Stop);
            match decision {
                Decision::Keep => self.held.push(tag),
                Decision::Remove => {
                    let record = removals.and_then(|(_, subscription)| purged(message.id()?, subscription));
                    self.removing.push(Removing { tag, index, record });
                    if self.removing.len() >= REMOVE_BATCH
                        && let Err(error) = self.ack_removed(recorder, progress).await
                    {
                        break Err(error);
                    }
                }
                Decision::Move { exchange, routing_key, properties } => {
                    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                    let confirm = bounded(
                        self.timeout,
                        publisher.basic_publish(
                            exchange.as_str().into(),
                            routing_key.as_str().into(),
                            options,
                            &message.body,
                            *properties,
                        ),
                    )
                    .await;
                    match confirm {
                        Ok(confirm) => {
                            owners.insert(tag, index);
                            let timeout = self.timeout;
                            moving.push(async move { (tag, tokio::time::timeout(timeout, confirm).await) });
                        }
                        Err(error) => {
                            self.held.push(tag);
                            progress.send_modify(|r| r.failed += 1);
                            break Err(error);
                        }
                    }
                }
            }
            progress.send_modify(|r| r.scanned += 1);
        };
        while let Some(confirmed) = moving.next().await {
            self.settle_move(confirmed, &mut owners, progress).await;
        }
        if result.is_err() {
            // The channel failed: their acks would too, and their records
            // would say they are gone. Handed back with the rest.
            self.held.extend(self.removing.drain(..).map(|r| r.tag));
            return result;
        }
        self.ack_removed(recorder, progress).await
    }

    /// Acks the removals gathered so far, once their records are committed
    /// (or not in time: then they are counted as dropped, and the purge an
    /// operator asked for still happens). A failed ack leaves the rest in
    /// place, handed back at the end.
    async fn ack_removed(
        &mut self,
        recorder: Option<&Recorder>,
        progress: &watch::Sender<Report>,
    ) -> Result<(), OpError> {
        let mut removing = std::mem::take(&mut self.removing);
        let records: Vec<Record> = removing.iter_mut().filter_map(|r| r.record.take()).collect();
        if let Some(recorder) = recorder
            && !recorder.commit_now(records, self.timeout).await
        {
            tracing::warn!(queue = %self.queue, "purge records not committed in time; removing anyway");
        }
        let mut result = Ok(());
        for Removing { tag, index, .. } in removing {
            if result.is_ok() {
                match bounded(self.timeout, self.channel.basic_ack(tag, BasicAckOptions::default())).await {
                    Ok(()) => {
                        self.unsettled[index] -= 1;
                        progress.send_modify(|r| r.purged += 1);
                        continue;
                    }
                    Err(error) => result = Err(error),
                }
            }
            self.held.push(tag);
        }
        result
    }

    /// Acks a moved message once its copy is confirmed; otherwise holds it
    /// (it goes back to the queue when the scan ends).
    async fn settle_move(
        &mut self,
        (tag, confirmed): (u64, Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>),
        owners: &mut HashMap<u64, usize>,
        progress: &watch::Sender<Report>,
    ) {
        let index = owners.remove(&tag).expect("every move has an owner");
        if let Ok(Ok(Confirmation::Ack(None))) = confirmed
            && let Ok(()) = bounded(self.timeout, self.channel.basic_ack(tag, BasicAckOptions::default())).await
        {
            self.unsettled[index] -= 1;
            progress.send_modify(|r| r.replayed += 1);
            return;
        }
        tracing::warn!(queue = %self.queue, "a moved message was not confirmed; it stays where it was");
        self.held.push(tag);
        progress.send_modify(|r| r.failed += 1);
    }

    /// Stops the consumers and hands every held message back, in order.
    async fn finish(&mut self) {
        for tag in &self.tags {
            let cancel = self.channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(self.timeout, cancel).await;
        }
        // Deliveries already sent ahead (prefetch) are held too.
        while let Ok(Some((_, Ok(delivery)))) =
            tokio::time::timeout(Duration::from_millis(100), self.consumers.next()).await
        {
            self.held.push(delivery.delivery_tag);
        }
        // Everything still unacked on the channel is held now (moves are
        // settled, removals acked), so one multiple nack hands it all back.
        // A classic queue requeues each message at its original position.
        if let Some(&last) = self.held.iter().max() {
            let requeue = BasicNackOptions { requeue: true, multiple: true };
            let _ = tokio::time::timeout(self.timeout, self.channel.basic_nack(last, requeue)).await;
        }
        self.held.clear();
    }
}
