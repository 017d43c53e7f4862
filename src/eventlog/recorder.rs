//! The recording side: a bounded in-process buffer and a task that commits
//! it to the [`Store`] in batches.
//!
//! Group commit: a batch gathers for [`LINGER`] once it has a record, then
//! goes as soon as the previous batch is committed ([`IN_FLIGHT`]), with up
//! to [`BATCH`] records per transaction. A record waits about the linger
//! plus one or two commits; one somebody's answer waits on, one or two
//! commits and at most [`URGENT_PERIOD`].
//!
//! Three ways in: [`Recorder::commit_then`] calls back once the records are
//! committed (a worker acks its delivery only then, so a crash cannot lose
//! them); [`Recorder::commit_now`] returns only then and cuts the linger
//! short, for a caller whose answer waits on it (the ingress's `202`, an
//! operator's ack);
//! [`Recorder::record`] hands a record over and returns at once (for records
//! nothing waits on, e.g. an attempt whose delivery goes back to the queue
//! anyway).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
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
/// How often batches go, at most, while answers wait on them
/// ([`Recorder::commit_now`]): a waited-on record goes at once when no
/// batch went in the last `URGENT_PERIOD`, so a quiet ingress answers
/// after one commit; a busy one shares a commit every `URGENT_PERIOD`
/// among everything that arrived, and its answers, which wait for the
/// publisher confirm anyway, wait for that too. Senders are latency-bound
/// (each connection waits for its answer), so this period caps the
/// ingress at connections / period: 20 ms held 64 senders to 3,000
/// events/s on a machine that moves 7,300 with 5 ms (docs/BENCHMARKS.md).
/// 5 ms leaves that cap above what the ingress can take and still
/// commits at most 200 batches a second.
const URGENT_PERIOD: Duration = Duration::from_millis(5);
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
    /// Whether the newest batch was committed: while the store fails,
    /// [`Self::commit_now`] stops waiting (its records are still counted
    /// if they are dropped), so a store outage does not hold every answer.
    store_ok: Arc<AtomicBool>,
    /// Wakes the committing task from its linger for an urgent entry.
    wake: Arc<Notify>,
    /// `host:pid`, named in `received` records.
    pub process: String,
}

/// Records handed over together, and who waits for their commit.
struct Entry {
    records: Vec<Record>,
    committed: Option<Waiter>,
}

impl Entry {
    /// Whether its batch goes without waiting out the linger: somebody's
    /// answer waits on it.
    fn urgent(&self) -> bool {
        matches!(self.committed, Some(Waiter::Answer(_)))
    }
}

/// What [`Recorder::commit_then`] calls with the outcome: `true` once the
/// records are committed, `false` if they were given up on.
pub type Then = Box<dyn FnOnce(bool) + Send>;

enum Waiter {
    /// A caller awaiting the outcome (it has its own timeout).
    Answer(oneshot::Sender<bool>),
    /// Called with the outcome, by `deadline` at the latest (`false` then:
    /// the records may still be committed after it).
    Then { then: Then, deadline: Instant },
}

impl Waiter {
    fn tell(self, committed: bool) {
        match self {
            Waiter::Answer(answer) => {
                let _ = answer.send(committed);
            }
            Waiter::Then { then, .. } => then(committed),
        }
    }
}

impl Recorder {
    /// Starts the committing task; it flushes what it holds and stops when
    /// `token` is cancelled.
    pub fn spawn(store: Store, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        let process = format!("{host}:{}", std::process::id());
        let store_ok = Arc::new(AtomicBool::new(true));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(commit_batches(store, rx, store_ok.clone(), wake.clone(), token));
        (Self { tx, process, store_ok, wake }, task)
    }

    /// Hands `record` over without waiting; drops it (counted) when the
    /// buffer is full.
    pub fn record(&self, record: Record) {
        self.record_all(vec![record]);
    }

    /// Hands `records` over and returns `true` once the store has committed
    /// them, `false` if that did not happen within `wait` (they may still be
    /// committed; if they are not, they are counted as dropped). For a
    /// caller whose answer waits on it: its batch
    /// goes at once if no batch went in the last [`URGENT_PERIOD`], else
    /// that long after the last one, taking whatever gathered meanwhile.
    /// It waits that and one or two commits, or not at all while the store
    /// is failing (the newest batch was not committed): then the records
    /// are handed over as by [`Self::record`].
    pub async fn commit_now(&self, records: Vec<Record>, wait: Duration) -> bool {
        if records.is_empty() {
            return true;
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            self.record_all(records);
            return false;
        }
        self.hand_over(records, wait).await
    }

    /// Hands `records` over and returns once they are in the buffer (at
    /// once, unless it is full); `then` is called when the store has
    /// committed them (`true`) or within `wait` of now if it has not
    /// (`false`; so is it when they never reach the buffer, and they count
    /// as dropped). For a caller with nothing left to do but react: a
    /// worker acks a delivery from `then`, and no task of its waits for the
    /// commit (a timer, a channel and a wakeup per delivery when one did).
    pub async fn commit_then(&self, records: Vec<Record>, wait: Duration, then: Then) {
        if records.is_empty() {
            return then(true);
        }
        let deadline = Instant::now() + wait;
        match tokio::time::timeout_at(deadline, self.tx.reserve()).await {
            Ok(Ok(slot)) => {
                let committed = Some(Waiter::Then { then, deadline });
                slot.send(Entry { records, committed });
            }
            _ => {
                metrics::counter!(metric::EVENT_LOG_DROPPED).increment(records.len() as u64);
                tracing::warn!(
                    records = records.len(),
                    "event log buffer full; records dropped, their delivery acked anyway"
                );
                then(false);
            }
        }
    }

    fn record_all(&self, records: Vec<Record>) {
        let len = records.len() as u64;
        if self.tx.try_send(Entry { records, committed: None }).is_err() {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(len);
        }
    }

    async fn hand_over(&self, records: Vec<Record>, wait: Duration) -> bool {
        if records.is_empty() {
            return true;
        }
        let (committed, answer) = oneshot::channel();
        // Counts the records as dropped unless they reach the buffer, also
        // when the caller is dropped while waiting (a sender hung up).
        let mut entry = Unsent(Some(Entry { records, committed: Some(Waiter::Answer(committed)) }));
        // One timer for the whole wait.
        let handed_over = tokio::time::timeout(wait, async {
            // A slot first: records that never reach the buffer (full for
            // the whole wait, or the recorder gone) are dropped, and counted.
            let slot = self.tx.reserve().await.ok()?;
            slot.send(entry.0.take().expect("sent once"));
            self.wake.notify_one();
            // Handed over: from here the recorder counts them if they fail.
            answer.await.ok()
        })
        .await;
        matches!(handed_over, Ok(Some(true)))
    }
}

/// An entry not yet in the buffer; its records count as dropped if it
/// never gets there.
struct Unsent(Option<Entry>);

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some(entry) = &self.0 {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(entry.records.len() as u64);
        }
    }
}

async fn commit_batches(
    store: Store,
    mut rx: mpsc::Receiver<Entry>,
    store_ok: Arc<AtomicBool>,
    wake: Arc<Notify>,
    token: CancellationToken,
) {
    let mut flying = FuturesUnordered::new();
    let mut closed = false;
    let mut last_went = Instant::now();
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
        let mut urgent = first.urgent();
        let mut batch = vec![first];
        // Everything that gathered while earlier batches were in flight,
        // then a moment for more: the linger, or, once somebody's answer
        // waits on the batch, until URGENT_PERIOD after the previous batch
        // went, so a stream of urgent entries still shares commits.
        // It sleeps meanwhile rather than wake for every entry (thousands a
        // second, each costing a wakeup and a timer: +27% CPU per delivery
        // when it did); only an urgent entry wakes it early.
        let deadline = Instant::now() + LINGER;
        loop {
            while records < BATCH
                && let Ok(entry) = rx.try_recv()
            {
                records += entry.records.len();
                urgent |= entry.urgent();
                batch.push(entry);
            }
            let until = if urgent { deadline.min(last_went + URGENT_PERIOD) } else { deadline };
            if records >= BATCH || Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = wake.notified(), if !urgent => {}
            }
        }
        last_went = Instant::now();
        let store = store.clone();
        let store_ok = store_ok.clone();
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
            let writing = write(&store, all);
            tokio::pin!(writing);
            // Those called back must not wait past their deadline for a store
            // that hangs (a stalled disk): they hear `false` then, and this
            // batch's commit goes on. Those awaiting an answer time out themselves.
            let first_deadline = waiting
                .iter()
                .filter_map(|w| match w {
                    Waiter::Then { deadline, .. } => Some(*deadline),
                    Waiter::Answer(_) => None,
                })
                .min();
            let committed = match first_deadline {
                None => writing.await,
                Some(deadline) => tokio::select! {
                    committed = &mut writing => committed,
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(records, "event log batch not committed in time; its deliveries are acked anyway");
                        let (late, answers): (Vec<_>, Vec<_>) =
                            waiting.into_iter().partition(|w| matches!(w, Waiter::Then { .. }));
                        late.into_iter().for_each(|w| w.tell(false));
                        waiting = answers;
                        writing.await
                    }
                },
            };
            store_ok.store(committed, Ordering::Relaxed);
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
                waiting.tell(committed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::{What, sqlite};

    fn refused(id: &str) -> Record {
        Record::new(id, super::now_ms(), What::Refused { reason: "test".into() })
    }

    /// Each way in leaves its records in the store by the time it returns
    /// `true`, an urgent one among lingering ones included; and the task
    /// flushes what it holds when cancelled.
    #[tokio::test]
    async fn committed_means_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(sqlite::Store::open(&dir.path().join("events.db")).unwrap());
        let token = CancellationToken::new();
        let (recorder, task) = Recorder::spawn(store.clone(), token.clone());
        let wait = Duration::from_secs(5);

        let (told, lingering) = oneshot::channel();
        let then: Then = Box::new(move |committed| told.send(committed).unwrap());
        recorder.commit_then(vec![refused("evt-linger")], wait, then).await;
        assert!(recorder.commit_now(vec![refused("evt-urgent")], wait).await);
        assert_eq!(store.timeline("evt-urgent".into()).await.unwrap().len(), 1);
        assert!(lingering.await.unwrap());
        assert_eq!(store.timeline("evt-linger".into()).await.unwrap().len(), 1);
        assert!(recorder.commit_now(Vec::new(), wait).await, "nothing to commit is committed");

        recorder.record(refused("evt-handed-over"));
        token.cancel();
        task.await.unwrap();
        assert_eq!(store.timeline("evt-handed-over".into()).await.unwrap().len(), 1);
    }
}
