//! Time-window replay from the archive stream `ns.archive`.
//!
//! The stream holds every accepted event as the ingress published it (flat
//! headers, so nothing is lost in the stream). A replay reads it from the
//! window's start, picks the events that fall in the window and match the
//! subscription's topics (and an optional narrower type pattern), and
//! publishes each to that subscription's work queue, confirmed, as a fresh
//! delivery that keeps its original event id, so destinations can dedup.
//!
//! Streams are read with a prefetch and manual acks (an ack there only grants
//! credit; nothing is removed). A stream offset by timestamp is only as
//! precise as a stream chunk, so reading starts a little early and filters
//! on each event's own `received_at`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Confirmation,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::sync::watch;

use super::{OpError, Operator, Report, bounded};
use crate::{
    broker::{
        message::{self, DeliveryState, Replayed},
        publisher::open_confirm_channel,
    },
    envelope::{routing_word, topic_matches},
};

const PREFETCH: u16 = 1000;
const MAX_PENDING: usize = 512;
/// Reading stops after an event this much newer than the window's end: the
/// stream is in publish order, and concurrent ingress requests can publish
/// slightly out of `received_at` order.
const REORDER_SLACK: Duration = Duration::from_secs(5);
/// No new event for this long means the reader reached the stream's end.
const IDLE: Duration = Duration::from_secs(1);

/// A time-window replay request.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start of the window (RFC 3339), inclusive.
    pub from: String,
    /// End of the window (RFC 3339), exclusive; default, and at most, now.
    pub to: Option<String>,
    /// A topic pattern over the event type, narrowing the subscription's own topics.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Only this event (a resend, `POST /api/v1/events/{id}/resend`): the
    /// read stops once it is found. Not part of the replay request body.
    #[serde(skip)]
    pub event_id: Option<String>,
}

impl Window {
    /// `(from, to)`, checked.
    pub fn bounds(&self) -> Result<(SystemTime, SystemTime), String> {
        let parse = |key: &str, text: &str| {
            humantime::parse_rfc3339_weak(text)
                .map_err(|_| format!("{key}: {text:?} is not an RFC 3339 time like 2026-11-21T09:00:00Z"))
        };
        let from = parse("from", &self.from)?;
        // Never past now: a window into the future would keep the replay
        // reading (and re-delivering) live traffic until then.
        let now = SystemTime::now();
        let to = match &self.to {
            Some(to) => parse("to", to)?.min(now),
            None => now,
        };
        if to <= from {
            return Err("\"to\" must be later than \"from\"".to_owned());
        }
        if let Some(pattern) = &self.event_type {
            crate::config::validate_topic(pattern).map_err(|e| format!("type: {e}"))?;
        }
        Ok((message::floor_stored(from), message::ceil_stored(to)))
    }
}

impl Operator {
    /// Re-delivers the archived events of `window` to subscription `name`.
    pub async fn replay_window(
        &self,
        name: &str,
        window: &Window,
        progress: &watch::Sender<Report>,
    ) -> Result<(), OpError> {
        let topology = self.broker.topology();
        let queues = topology.subscription(name).ok_or_else(|| OpError::NoQueue(name.to_owned()))?;
        let archive = topology
            .archive
            .as_ref()
            .ok_or_else(|| OpError::Invalid("the archive is disabled ([archive] enabled = false)".to_owned()))?;
        let (from, to) = window.bounds().map_err(OpError::Invalid)?;
        progress.send_modify(|r| r.dry_run = window.dry_run);
        let reason = if window.event_id.is_some() { "resend" } else { "archive" };

        let session = self.broker.session().ok_or(OpError::Unavailable)?;
        let timeout = self.broker.operation_timeout;
        let channel = bounded(timeout, session.connection.create_channel()).await?;
        bounded(timeout, channel.basic_qos(PREFETCH, BasicQosOptions::default())).await?;
        let start = from.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().saturating_sub(1);
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), AMQPValue::Timestamp(start));
        let tag = format!("hookwire-archive-{}", uuid::Uuid::now_v7().simple());
        let mut events = bounded(
            timeout,
            channel.basic_consume(
                archive.name.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                args,
            ),
        )
        .await?;
        let publisher = open_confirm_channel(&session.connection, timeout).await.map_err(OpError::Publish)?;
        let mut pending = FuturesUnordered::new();
        let result = async {
            loop {
                while pending.len() >= MAX_PENDING {
                    settle(pending.next().await, progress);
                }
                let delivery = match tokio::time::timeout(IDLE, events.next()).await {
                    Err(_) | Ok(None) => break,
                    Ok(Some(Err(error))) => return Err(OpError::Broker(error.to_string())),
                    Ok(Some(Ok(delivery))) => delivery,
                };
                bounded(timeout, channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default())).await?;
                progress.send_modify(|r| r.scanned += 1);
                let Ok((envelope, _)) = message::decode(&delivery.properties, delivery.data.into()) else {
                    continue;
                };
                if envelope.received_at >= to + REORDER_SLACK {
                    break;
                }
                if envelope.received_at < from || envelope.received_at >= to {
                    continue;
                }
                if window.event_id.as_ref().is_some_and(|id| *id != envelope.id) {
                    continue;
                }
                let routing_key = envelope.routing_key();
                let wanted = queues.topics.iter().any(|t| topic_matches(t, &routing_key))
                    && window
                        .event_type
                        .as_deref()
                        .is_none_or(|p| topic_matches(p, &routing_word(&envelope.event_type)));
                if !wanted {
                    continue;
                }
                progress.send_modify(|r| r.matched += 1);
                if window.dry_run {
                    continue;
                }
                let replayed = DeliveryState { replayed: Some(Replayed::now(reason)), ..Default::default() };
                let (properties, body) = message::encode(&envelope, &replayed);
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                let confirm = bounded(
                    timeout,
                    publisher.basic_publish("".into(), queues.work.as_str().into(), options, &body, properties),
                )
                .await?;
                pending.push(async move { tokio::time::timeout(timeout, confirm).await });
                if window.event_id.is_some() {
                    break; // the one event asked for
                }
            }
            Ok(())
        }
        .await;
        while let Some(confirmed) = pending.next().await {
            settle(Some(confirmed), progress);
        }
        let _ = tokio::time::timeout(timeout, publisher.close(200, "replay done".into())).await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "replay done".into())).await;
        result
    }
}

type Confirmed = Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>;

/// Counts a confirmed (or failed) copy. (Its story's `replayed` is recorded
/// by the worker that takes it.)
fn settle(confirmed: Option<Confirmed>, progress: &watch::Sender<Report>) {
    match confirmed {
        Some(Ok(Ok(Confirmation::Ack(None)))) => progress.send_modify(|r| r.replayed += 1),
        Some(_) => progress.send_modify(|r| r.failed += 1),
        None => {}
    }
}
