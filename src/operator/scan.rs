//! Walking a pile of letters without disturbing what stays on it: the one
//! primitive under browsing, replay and purge of dead letters and unrouted
//! events.
//!
//! A scan reads the letters stream (`letters`) at the pile's unsettled
//! offsets, oldest first, and decides per letter:
//! - [`Decision::Keep`]: nothing happens; reading a stream changes nothing,
//!   so what stays keeps its place.
//! - [`Decision::Remove`]: settled as `purged`, in batches, each once the
//!   event log has committed the batch's `purged` records: a crash between
//!   the two leaves the letters in place, never gone without their record.
//! - [`Decision::Move`]: published to its new place with a publisher
//!   confirm, and settled as `replayed` only once confirmed. A crash between
//!   the two leaves the letter in place and its copy delivered (the same
//!   event id, so the destination can dedup), never neither.
//!
//! The scan looks at no more than the letters unsettled when it started, so
//! what arrives meanwhile is not scanned (and a move back cannot loop). One
//! scan runs at a time per process; a letter another process settled while
//! this scan ran is skipped.
//!
//! Must not: settle anything it was not told to remove or has not moved.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{BasicProperties, Confirmation, options::BasicPublishOptions};
use tokio::sync::watch;

use super::{
    OpError, Report, bounded,
    letters::{self, Letters, Pile, READ_TIMEOUT},
};
use crate::{
    broker::{
        message::{self, DecodeError, DeliveryState},
        publisher::open_confirm_channel,
        stream,
    },
    envelope::Envelope,
    eventlog::{Record, Recorder, What},
};

/// Publishes awaiting their confirm at once during a move: enough to keep the
/// broker busy, few enough that a replay killed midway leaves few letters
/// both replayed and unsettled (the measured trade-off is in
/// docs/DECISIONS.md).
const MAX_PENDING_MOVES: usize = 128;
/// Confirmed moves settled by one marker, at most: also the most a crash
/// can leave replayed but unsettled beyond the pending moves.
const SETTLE_BATCH: usize = 64;
/// Removals settled at once, at most: one commit of their records each.
const REMOVE_BATCH: usize = 256;
/// Letters the broker sends ahead, at most. Nothing is held any more, so
/// the window only has to cover the round trip; letters carry whole bodies
/// (up to the ingress's body limit), and a scan reads other piles' too.
const MAX_PREFETCH: u16 = 128;

/// Whether a scan may settle letters (replay, purge) or only reads them.
#[derive(Clone, Copy, PartialEq)]
pub enum Access {
    Read,
    Settle,
}

/// One message as a scan sees it.
pub struct Message {
    pub properties: BasicProperties,
    /// The body as stored (for hookwire's messages, the framed event).
    pub data: Bytes,
    /// The envelope and delivery history, or why the message is not ours.
    pub decoded: Result<(Envelope, DeliveryState), DecodeError>,
}

impl Message {
    /// The event id, also for messages that do not decode (when their
    /// `message-id` property has one).
    pub fn id(&self) -> Option<&str> {
        match &self.decoded {
            Ok((envelope, _)) => Some(&envelope.id),
            Err(_) => self.properties.message_id().as_ref().map(|id| id.as_str()),
        }
    }

    /// The sender's bytes; all of the stored body for a message that does
    /// not decode.
    pub fn payload(&self) -> &Bytes {
        match &self.decoded {
            Ok((envelope, _)) => &envelope.body,
            Err(_) => &self.data,
        }
    }
}

pub enum Decision {
    Keep,
    Remove,
    /// Publish `properties` and `body` to `exchange` with `routing_key`,
    /// confirmed, then remove.
    Move {
        exchange: String,
        routing_key: String,
        properties: Box<BasicProperties>,
        body: Bytes,
    },
}

pub enum Flow {
    Continue,
    Stop,
}

/// Scans the unsettled letters of `pile`, oldest first. `prefetch` bounds
/// how many letters the broker sends ahead (a small page asks for few).
/// Progress (scanned, replayed, purged, failed) is written to `progress` as
/// it happens; `removals`: the recorder and the subscription in whose
/// stories each removal is recorded as `purged`, committed before the
/// removal is settled.
pub async fn scan(
    letters: &Letters,
    pile: &Pile,
    access: Access,
    prefetch: u16,
    progress: &watch::Sender<Report>,
    mut visit: impl FnMut(&Message) -> (Decision, Flow),
    removals: Option<(&Recorder, &str)>,
) -> Result<(), OpError> {
    // Two settling scans in one process would both move a letter; reads
    // need no turn.
    let _one_at_a_time = match access {
        Access::Settle => Some(letters.scan_lock().await),
        Access::Read => None,
    };
    letters.sync().await?;
    let wanted = letters.unsettled(pile);
    progress.send_modify(|r| r.total = wanted.len() as u64);
    let Some(&first) = wanted.first() else { return Ok(()) };
    let broker = letters.broker();
    let session = broker.session().ok_or(OpError::Unavailable)?;
    let timeout = broker.operation_timeout;
    let topology = broker.topology();
    let name = topology.letters.clone();
    let prefetch = prefetch.clamp(1, MAX_PREFETCH);
    let (channel, mut deliveries) =
        stream::from_offset(&session, &name, prefetch, first, timeout).await.map_err(OpError::Broker)?;
    let publisher = match open_confirm_channel(&session.connection, timeout).await {
        Ok(publisher) => publisher,
        Err(error) => {
            let _ = tokio::time::timeout(timeout, channel.close(200, "scan done".into())).await;
            return Err(OpError::Publish(error));
        }
    };
    let mut scan = Scanner { letters, timeout, progress, moved: Vec::new(), removing: Vec::new() };
    let recorder = removals.map(|(recorder, _)| recorder);
    let mut moving = FuturesUnordered::new();
    let mut next = 0;
    let mut stop = false;
    // On an error the loop stops reading, but the moves in flight are still
    // settled below: abandoning them would leave copies whose letters stay
    // unsettled (duplicates the report would not count).
    let mut result = loop {
        if stop || next >= wanted.len() {
            break Ok(());
        }
        if moving.len() >= MAX_PENDING_MOVES {
            if let Some(confirmed) = moving.next().await
                && let Err(error) = scan.settle_move(confirmed).await
            {
                break Err(error);
            }
            continue;
        }
        let delivery = tokio::select! {
            Some(confirmed) = moving.next(), if !moving.is_empty() => {
                if let Err(error) = scan.settle_move(confirmed).await {
                    break Err(error);
                }
                continue;
            }
            next = tokio::time::timeout(READ_TIMEOUT, deliveries.next()) => match next {
                Err(_) => break Err(OpError::Timeout),
                Ok(None) => break Err(OpError::Broker("the letters stream's consumer ended".to_owned())),
                Ok(Some(Err(error))) => break Err(OpError::Broker(error.to_string())),
                Ok(Some(Ok(delivery))) => delivery,
            },
        };
        // A stream ack only returns credit.
        let ack = channel.basic_ack(delivery.delivery_tag, lapin::options::BasicAckOptions::default());
        if let Err(error) = bounded(timeout, ack).await {
            break Err(error);
        }
        let Some(offset) = stream::offset(&delivery.properties) else { continue };
        // Other piles' letters, markers, and records before `first` (a
        // consumer starts at its chunk) are passed over.
        while next < wanted.len() && wanted[next] < offset {
            next += 1;
        }
        if wanted.get(next) != Some(&offset) {
            continue;
        }
        next += 1;
        if !letters.still_unsettled(offset) {
            continue; // another process settled it meanwhile
        }
        // The index named this offset; the record must agree (a stream made
        // anew under a running process would put other records there).
        if letters::marker_kind(&delivery.properties).is_some()
            || letters::pile_of(&delivery.properties, &topology.namespace) != *pile
        {
            tracing::warn!(offset, %pile, "the letters stream holds another record at this offset; skipped");
            continue;
        }
        let properties = without_stream_headers(delivery.properties);
        let data = Bytes::from(delivery.data);
        let message = Message { decoded: message::decode(&properties, data.clone()), properties, data };
        let (decision, flow) = visit(&message);
        stop = matches!(flow, Flow::Stop);
        progress.send_modify(|r| r.scanned += 1);
        match decision {
            Decision::Keep => {}
            Decision::Remove => {
                let record = removals.and_then(|(_, subscription)| purged(message.id()?, subscription));
                scan.removing.push((offset, record));
                if scan.removing.len() >= REMOVE_BATCH
                    && let Err(error) = scan.settle_removed(recorder).await
                {
                    break Err(error);
                }
            }
            Decision::Move { exchange, routing_key, properties, body } => {
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                let publish = publisher.basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &body,
                    *properties,
                );
                match bounded(timeout, publish).await {
                    Ok(confirm) => moving.push(async move { (offset, tokio::time::timeout(timeout, confirm).await) }),
                    Err(error) => {
                        progress.send_modify(|r| r.failed += 1);
                        break Err(error);
                    }
                }
            }
        }
    };
    while let Some(confirmed) = moving.next().await {
        let settled = scan.settle_move(confirmed).await;
        if result.is_ok() {
            result = settled;
        }
    }
    let moved = scan.flush_moved().await;
    if result.is_ok() {
        result = moved;
    }
    if result.is_ok() {
        result = scan.settle_removed(recorder).await;
    } else {
        // The broker failed: their markers would too, and their records
        // would say they are gone.
        scan.removing.clear();
    }
    let _ = tokio::time::timeout(timeout, publisher.close(200, "scan done".into())).await;
    let _ = tokio::time::timeout(timeout, channel.close(200, "scan done".into())).await;
    result
}

/// The letter as it was written: without what the stream adds on delivery.
fn without_stream_headers(properties: BasicProperties) -> BasicProperties {
    let Some(mut headers) = properties.headers().clone() else { return properties };
    let stream_added = ["x-stream-offset"];
    let kept: lapin::types::FieldTable = std::mem::take(&mut headers)
        .inner()
        .iter()
        .filter(|(key, _)| !stream_added.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    properties.with_headers(kept)
}

/// The story's record of a message purged from `subscription`'s queue.
fn purged(event: &str, subscription: &str) -> Option<Record> {
    let what = What::Outcome {
        subscription: subscription.to_owned(),
        outcome: "purged".to_owned(),
        reason: Some("operator".to_owned()),
    };
    Some(Record::new(event, crate::eventlog::now_ms(), what))
}

/// What a scan has done that still needs settling.
struct Scanner<'a> {
    letters: &'a Letters,
    timeout: Duration,
    progress: &'a watch::Sender<Report>,
    /// Letters whose copies are confirmed, not yet settled.
    moved: Vec<u64>,
    /// Letters to remove, with the records their settling waits for.
    removing: Vec<(u64, Option<Record>)>,
}

impl Scanner<'_> {
    /// A move's copy is confirmed: its letter joins the next `replayed`
    /// marker. Otherwise the letter stays where it was.
    async fn settle_move(
        &mut self,
        (offset, confirmed): (u64, Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>),
    ) -> Result<(), OpError> {
        if let Ok(Ok(Confirmation::Ack(None))) = confirmed {
            self.moved.push(offset);
            if self.moved.len() >= SETTLE_BATCH {
                return self.flush_moved().await;
            }
            return Ok(());
        }
        tracing::warn!(offset, "a moved letter's copy was not confirmed; the letter stays where it was");
        self.progress.send_modify(|r| r.failed += 1);
        Ok(())
    }

    async fn flush_moved(&mut self) -> Result<(), OpError> {
        let moved = std::mem::take(&mut self.moved);
        match self.letters.settle(&moved, "replayed").await {
            Ok(()) => {
                self.progress.send_modify(|r| r.replayed += moved.len() as u64);
                Ok(())
            }
            Err(error) => {
                // Delivered, but still on the pile: a later replay sends
                // them again (the same event ids).
                tracing::warn!(%error, letters = moved.len(), "replayed letters could not be settled; they stay listed");
                self.progress.send_modify(|r| r.failed += moved.len() as u64);
                Err(error)
            }
        }
    }

    /// Settles the removals gathered so far, once their records are
    /// committed (or not in time: then they are counted as dropped, and the
    /// purge an operator asked for still happens).
    async fn settle_removed(&mut self, recorder: Option<&Recorder>) -> Result<(), OpError> {
        if self.removing.is_empty() {
            return Ok(());
        }
        let removing = std::mem::take(&mut self.removing);
        let (offsets, records): (Vec<u64>, Vec<Option<Record>>) = removing.into_iter().unzip();
        if let Some(recorder) = recorder
            && !recorder.commit_now(records.into_iter().flatten().collect(), self.timeout).await
        {
            tracing::warn!("purge records not committed in time; removing anyway");
        }
        self.letters.settle(&offsets, "purged").await?;
        self.progress.send_modify(|r| r.purged += offsets.len() as u64);
        Ok(())
    }
}
