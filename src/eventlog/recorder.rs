//! The recording side: a bounded in-process buffer and a task that commits
//! it to the [`Store`] in batches.
//!
//! Group commit: a batch gathers for [`LINGER`] once it has a record, then
//! goes as soon as the previous batch is committed ([`IN_FLIGHT`]), with up
//! to [`BATCH`] records per transaction. A record waits about the linger
//! plus one or two commits.
//!
//! Two ways in: [`Recorder::commit`] returns once the records are committed
//! (a worker acks its delivery only then, so a crash cannot lose them);
//! [`Recorder::record`] hands a record over and returns at once (for
//! records nothing waits on, e.g. an attempt whose delivery goes back to the
//! queue anyway).

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{Record, Store, now_ms};
use crate::telemetry::metric;

/// Entries buffered before callers wait (`commit`) or records are dropped
/// and counted (`record`): several seconds of a saturated pipeline.
const BUFFER: usize = 16_384;
/// Records per transaction, at most: under load a batch takes what
/// gathered during the previous commit, and a larger one shares that
/// commit's page writes among more records.
const BATCH: usize = 2_000;
/// How long a batch waits for company once it has a record. A commit's
/// cost is mostly the pages it writes (an index leaf per random event id,
/// the table's and the other indexes' newest pages), so records that share
/// a commit share those. Nothing on the delivery path waits for it; a
/// settled delivery's ack does (the worker's prefetch leaves room).
const LINGER: Duration = Duration::from_millis(20);
/// Transactions awaiting their commit at once: one. An SQLite file takes
/// one writer at a time and the PostgreSQL store writes on one connection,
/// so a second would only queue, and both would be smaller; meanwhile the
/// next batch gathers everything that arrives (group commit).
const IN_FLIGHT: usize = 1;
/// Attempts to commit one batch before its records count as dropped: a
/// store that fails three times over ~2 s is not coming back soon, and the
/// callers waiting on the batch must not wait forever.
const ATTEMPTS: u32 = 3;

/// Where a process's stages hand their records. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    /// `host:pid`, named in `received` records.
    pub process: String,
}

/// Records handed over together, and who waits for their commit.
struct Entry {
    records: Vec<Record>,
    committed: Option<oneshot::Sender<bool>>,
}

impl Recorder {
    /// Starts the committing task; it flushes what it holds and stops when
    /// `token` is cancelled.
    pub fn spawn(store: Store, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        let process = format!("{host}:{}", std::process::id());
        (Self { tx, process }, tokio::spawn(commit_batches(store, rx, token)))
    }

    /// Hands `record` over without waiting; drops it (counted) when the
    /// buffer is full.
    pub fn record(&self, record: Record) {
        if self.tx.try_send(Entry { records: vec![record], committed: None }).is_err() {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(1);
        }
    }

    /// Hands `records` over and returns `true` once the store has committed
    /// them, `false` if that did not happen within `wait` (they may still be
    /// committed; if they are not, they are counted as dropped).
    pub async fn commit(&self, records: Vec<Record>, wait: Duration) -> bool {
        if records.is_empty() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        // A slot first: records that never reach the buffer (full for the
        // whole wait, or the recorder gone) are dropped here, and counted.
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, self.tx.reserve()).await else {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(records.len() as u64);
            return false;
        };
        let (committed, answer) = oneshot::channel();
        slot.send(Entry { records, committed: Some(committed) });
        // Handed over: from here the recorder counts them if they fail.
        matches!(tokio::time::timeout_at(deadline, answer).await, Ok(Ok(true)))
    }
}

async fn commit_batches(store: Store, mut rx: mpsc::Receiver<Entry>, token: CancellationToken) {
    let mut flying = FuturesUnordered::new();
    let mut closed = false;
    loop {
        // With IN_FLIGHT batches out, wait for one to be committed first.
        let first = if flying.len() >= IN_FLIGHT || closed {
            if flying.next().await.is_none() {
                break; // closed and nothing left in flight
            }
            continue;
        } else {
            tokio::select! {
                entry = rx.recv() => entry,
                Some(_) = flying.next(), if !flying.is_empty() => continue,
                _ = token.cancelled() => { rx.close(); rx.recv().await }
            }
        };
        let Some(first) = first else {
            closed = true;
            continue;
        };
        let mut records = first.records.len();
        let mut batch = vec![first];
        // A moment for more to gather, and everything that gathered
        // meanwhile and while earlier batches were in flight.
        tokio::time::sleep(LINGER).await;
        while records < BATCH {
            match rx.try_recv() {
                Ok(entry) => {
                    records += entry.records.len();
                    batch.push(entry);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        // A task of its own, so the commit makes progress (PostgreSQL's
        // round trips need polling) while this loop lingers for the next.
        flying.push(tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(batch.len());
            let mut all = Vec::with_capacity(records);
            for entry in batch {
                all.extend(entry.records);
                waiting.extend(entry.committed);
            }
            let oldest = all.iter().map(|r| r.at_ms).min();
            let committed = write(&store, all).await;
            if committed {
                metrics::counter!(metric::EVENT_LOG_WRITTEN).increment(records as u64);
                if let Some(oldest) = oldest {
                    metrics::gauge!(metric::EVENT_LOG_LAG).set(now_ms().saturating_sub(oldest) as f64 / 1000.0);
                }
            } else {
                metrics::counter!(metric::EVENT_LOG_DROPPED).increment(records as u64);
                tracing::warn!(records, "event log records dropped: the store did not commit them");
            }
            for waiting in waiting {
                let _ = waiting.send(committed);
            }
        }));
    }
}

/// Commits one batch; tries again twice after a failure.
async fn write(store: &Store, records: Vec<Record>) -> bool {
    // Shared, not copied, between the attempts (SQLite's run on a blocking thread).
    let records: std::sync::Arc<[Record]> = records.into();
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        match store.write(records.clone()).await {
            Ok(()) => return true,
            Err(error) if attempt < ATTEMPTS => {
                tracing::debug!(%error, attempt, "event log batch not committed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
            Err(error) => tracing::warn!(%error, "event log batch not committed"),
        }
    }
    false
}
