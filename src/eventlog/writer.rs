//! The storing side: drains `ns.eventlog` into the [`Store`], a batch of
//! messages per transaction, and acks them only after the commit.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{options::BasicAckOptions, types::FieldTable};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Record, Store, now_ms};
use crate::{
    broker::{Broker, Session, stream},
    telemetry::metric,
};

/// Messages (each up to 500 records) unacked at once, and per transaction.
const PREFETCH: u16 = 32;
/// How long a transaction waits for more messages once it has one.
const GATHER: Duration = Duration::from_millis(10);

/// Starts writing; stops when `token` is cancelled.
pub fn spawn(broker: Broker, queue: String, store: Store, token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        broker
            .clone()
            .on_every_session(&token.clone(), "event log writer", |session| {
                let (queue, store, token, broker) = (queue.clone(), store.clone(), token.clone(), broker.clone());
                async move { drain(&broker, &session, &queue, &store, &token).await }
            })
            .await;
    })
}

async fn drain(
    broker: &Broker,
    session: &Session,
    queue: &str,
    store: &Store,
    token: &CancellationToken,
) -> Result<(), String> {
    let timeout = broker.operation_timeout;
    let (channel, mut deliveries) = stream::consume(session, queue, PREFETCH, FieldTable::default(), timeout).await?;
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            next = deliveries.next() => next,
        };
        let mut batch = vec![first.ok_or("the event log consumer ended")?.map_err(|e| e.to_string())?];
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < usize::from(PREFETCH) {
            match tokio::time::timeout_at(deadline, deliveries.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
                Ok(Some(Err(error))) => return Err(error.to_string()),
                Ok(None) => return Err("the event log consumer ended".to_owned()),
                Err(_) => break,
            }
        }
        let mut records: Vec<Record> = Vec::new();
        for delivery in &batch {
            match serde_json::from_slice::<Vec<Record>>(&delivery.data) {
                Ok(more) => records.extend(more),
                // Written by a newer hookwire? Not ours to read: skipped, said.
                Err(error) => tracing::warn!(%error, "unreadable event log message; skipped"),
            }
        }
        let oldest = records.iter().map(|r| r.at_ms).min();
        let count = records.len() as u64;
        if let Err(error) = store.write(records).await {
            // Not acked: RabbitMQ hands them back after the reconnect.
            return Err(format!("writing the event log failed: {error}"));
        }
        metrics::counter!(metric::EVENT_LOG_WRITTEN).increment(count);
        if let Some(oldest) = oldest {
            metrics::gauge!(metric::EVENT_LOG_LAG).set(now_ms().saturating_sub(oldest) as f64 / 1000.0);
        }
        let last = batch.last().expect("a batch has a first").delivery_tag;
        let ack = channel.basic_ack(last, BasicAckOptions { multiple: true });
        tokio::time::timeout(timeout, ack).await.map_err(|_| "ack timed out".to_owned())?.map_err(|e| e.to_string())?;
    }
}
