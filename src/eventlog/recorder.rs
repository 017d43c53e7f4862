//! The recording side: a bounded in-process buffer and a task that
//! publishes it to `ns.eventlog` in confirmed batches.
//!
//! Group commit: a batch gathers for [`LINGER`] once it has a record, then
//! goes as soon as fewer than [`IN_FLIGHT`] batches await their confirm,
//! with up to [`BATCH`] records per message. A record waits about the
//! linger plus one confirm round trip.
//!
//! Two ways in: [`Recorder::commit`] returns once the records are confirmed
//! (a worker acks its delivery only then, so a crash cannot lose them);
//! [`Recorder::record`] hands a record over and returns at once (for
//! records nothing waits on, e.g. an attempt whose delivery goes back to the
//! queue anyway).

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::BasicProperties;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::Record;
use crate::{
    broker::{Broker, publisher::publish_confirmed},
    telemetry::metric,
};

/// Entries buffered before callers wait (`commit`) or records are dropped
/// and counted (`record`): several seconds of a saturated pipeline.
const BUFFER: usize = 16_384;
/// Records per published message.
const BATCH: usize = 500;
/// How long a batch waits for company once it has a record.
const LINGER: Duration = Duration::from_millis(5);
/// Batches awaiting their confirm at once. One would make a record wait
/// for the batch before it as well as its own (1.5 round trips on average,
/// and a worker's ack waits for its records); a few keep that near one.
const IN_FLIGHT: usize = 4;
/// Publish attempts for one batch before its records count as dropped: a
/// broker that refuses three times over ~2 s is not coming back soon, and
/// the callers waiting on the batch must not wait forever.
const ATTEMPTS: u32 = 3;

/// Where a process's stages hand their records. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    /// `host:pid`, named in `received` records.
    pub process: String,
}

/// Records handed over together, and who waits for their confirm.
struct Entry {
    records: Vec<Record>,
    confirmed: Option<oneshot::Sender<bool>>,
}

impl Recorder {
    /// Starts the publishing task; it flushes what it holds and stops when
    /// `token` is cancelled.
    pub fn spawn(broker: Broker, queue: String, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        let process = format!("{host}:{}", std::process::id());
        (Self { tx, process }, tokio::spawn(publish(broker, queue, rx, token)))
    }

    /// Hands `record` over without waiting; drops it (counted) when the
    /// buffer is full.
    pub fn record(&self, record: Record) {
        if self.tx.try_send(Entry { records: vec![record], confirmed: None }).is_err() {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(1);
        }
    }

    /// Hands `records` over and returns `true` once RabbitMQ has confirmed
    /// them, `false` if that did not happen within `wait` (they may still be
    /// published; if they are not, they are counted as dropped).
    pub async fn commit(&self, records: Vec<Record>, wait: Duration) -> bool {
        if records.is_empty() {
            return true;
        }
        let (confirmed, answer) = oneshot::channel();
        let handed = async {
            self.tx.send(Entry { records, confirmed: Some(confirmed) }).await.ok()?;
            answer.await.ok()
        };
        matches!(tokio::time::timeout(wait, handed).await, Ok(Some(true)))
    }
}

async fn publish(broker: Broker, queue: String, mut rx: mpsc::Receiver<Entry>, token: CancellationToken) {
    let mut flying = FuturesUnordered::new();
    let mut closed = false;
    loop {
        // With IN_FLIGHT batches out, wait for one to be confirmed first.
        let first = if flying.len() >= IN_FLIGHT || closed {
            if flying.next().await.is_none() {
                break; // closed and nothing left in flight
            }
            continue;
        } else {
            tokio::select! {
                entry = rx.recv() => entry,
                Some(()) = flying.next(), if !flying.is_empty() => continue,
                _ = token.cancelled() => { rx.close(); rx.recv().await }
            }
        };
        let Some(first) = first else {
            closed = true;
            continue;
        };
        let mut records = first.records.len();
        let mut batch = vec![first];
        // A moment for more to gather: every message costs RabbitMQ (a
        // quorum write, a delivery, an ack) the same whatever it holds, and
        // the pipeline shares that broker.
        tokio::time::sleep(LINGER).await;
        // Everything that gathered meanwhile, and while earlier batches were in flight.
        while records < BATCH {
            match rx.try_recv() {
                Ok(entry) => {
                    records += entry.records.len();
                    batch.push(entry);
                }
                Err(_) => break,
            }
        }
        let (broker, queue) = (broker.clone(), queue.clone());
        flying.push(async move {
            let confirmed = send(&broker, &queue, &batch).await;
            if !confirmed {
                metrics::counter!(metric::EVENT_LOG_DROPPED).increment(records as u64);
                tracing::warn!(records, "event log records dropped: RabbitMQ did not confirm them");
            }
            for entry in batch {
                if let Some(waiting) = entry.confirmed {
                    let _ = waiting.send(confirmed);
                }
            }
        });
    }
}

/// Publishes one batch as one message; retries a refusal twice.
async fn send(broker: &Broker, queue: &str, batch: &[Entry]) -> bool {
    let all: Vec<&Record> = batch.iter().flat_map(|entry| &entry.records).collect();
    let body = serde_json::to_vec(&all).expect("records serialize");
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let result = async {
            let session = broker.session().ok_or("RabbitMQ is not connected")?;
            let channel = session.publish_channels.get().await.map_err(|_| "no channel")?;
            let properties = BasicProperties::default().with_delivery_mode(2);
            publish_confirmed(&channel, "", queue, properties, &body, broker.operation_timeout)
                .await
                .map_err(|_| "not confirmed")
        }
        .await;
        match result {
            Ok(()) => return true,
            Err(error) if attempt < ATTEMPTS => {
                tracing::debug!(error, attempt, "event log batch not confirmed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
            Err(error) => tracing::warn!(error, "event log batch not confirmed"),
        }
    }
    false
}
