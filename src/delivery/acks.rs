//! Acks of one consumer channel, many at a time.
//!
//! A worker's deliveries settle out of order (destinations answer at their
//! own pace), and each used to send its own `basic.ack`: a hop through
//! lapin's internal RPC task, a frame, a wake of its I/O thread, and one
//! more frame for RabbitMQ to handle, per delivery. Here every settled
//! delivery hands its tag to one task per channel, which acks the longest
//! run of settled tags with a single `multiple` ack.
//!
//! Safety: a `multiple` ack up to tag `T` acks *every* unacked delivery of
//! the channel up to `T`, so `T` only ever ends a contiguous run of settled
//! tags (tags on a channel with one consumer count up from 1, one per
//! delivery). Its target is itself still unacked: RabbitMQ closes the
//! channel on an ack of an unknown tag. A delivery settled behind one that
//! is still running (a slow destination) is acked on its own after
//! [`STRAGGLER_WAIT`], or at once when half the prefetch is waiting so: a
//! slow head must not hold the others' prefetch slots, or the subscription
//! would stall behind it.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// How long a settled delivery behind an unsettled one waits for the gap to
/// close before it is acked on its own.
pub const STRAGGLER_WAIT: Duration = Duration::from_millis(50);

enum Settled {
    /// The outcome is safe: ack it.
    Ack(u64),
    /// The outcome could not be stored: hand it back to the queue.
    Requeue(u64),
}

/// Where a worker's tasks hand their settled deliveries; cheap to clone.
/// When every handle is dropped, what is settled is acked and the task ends
/// (the `JoinHandle` [`Acks::start`] returned completes).
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Settled>,
}

/// A tag above the acked run.
enum Tag {
    /// Settled, not acked yet (since when: see `State::order`).
    Settled,
    /// Acked on its own, or requeued: no longer unacked at the broker.
    Done,
}

impl Acks {
    /// Starts acking for `channel`, whose first delivery has tag 1 and
    /// which holds at most `prefetch` unacked deliveries. Every broker
    /// operation is bounded by `timeout`.
    pub fn start(channel: Channel, prefetch: u16, subscription: String, timeout: Duration) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let crowd = usize::from(prefetch / 2).max(1);
        let task = tokio::spawn(run(channel, rx, crowd, subscription, timeout));
        (Self { tx }, task)
    }

    /// Acks `tag` (its outcome is stored). If the channel is gone the broker
    /// redelivers it: a duplicate, not a loss.
    pub fn ack(&self, tag: u64) {
        self.send(Settled::Ack(tag));
    }

    /// Hands `tag` back to the queue.
    pub fn requeue(&self, tag: u64) {
        self.send(Settled::Requeue(tag));
    }

    fn send(&self, settled: Settled) {
        // The task ends only once every handle is gone, so this fails only
        // if it panicked: the delivery is redelivered when the channel
        // closes, but until then the consumer may stall at its prefetch.
        if self.tx.send(settled).is_err() {
            tracing::error!("the ack task is gone; deliveries stay unacked until the channel closes");
        }
    }
}

/// `crowd`: this many settled deliveries waiting behind a gap are acked at
/// once, without waiting out [`STRAGGLER_WAIT`].
async fn run(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<Settled>,
    crowd: usize,
    subscription: String,
    timeout: Duration,
) {
    let mut state = State::default();
    loop {
        let deadline = state.oldest_straggler().map(|since| since + STRAGGLER_WAIT);
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = sleep_until(deadline) => {
                let lone = state.take_stragglers(Instant::now(), STRAGGLER_WAIT);
                ack_each(&channel, &lone, timeout, &subscription).await;
                continue;
            }
        };
        let Some(first) = next else { break };
        // Everything that settled meanwhile goes in the same ack.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let now = Instant::now();
        for settled in batch {
            match settled {
                Settled::Ack(tag) => state.settle(tag, now),
                Settled::Requeue(tag) => {
                    // Sent before any multiple ack that could cover it.
                    let requeue = BasicNackOptions { requeue: true, multiple: false };
                    if !bounded(timeout, channel.basic_nack(tag, requeue)).await {
                        tracing::warn!(%subscription, "requeue failed; the broker will redeliver when the channel closes");
                    }
                    state.done(tag);
                }
            }
        }
        if let Some(upto) = state.advance() {
            ack_run(&channel, upto, timeout, &subscription).await;
        }
        if state.waiting >= crowd {
            let lone = state.take_stragglers(Instant::now(), Duration::ZERO);
            ack_each(&channel, &lone, timeout, &subscription).await;
        }
    }
    // Every sender is gone: ack what settled, the run at once and the rest
    // one by one, before the caller closes the channel.
    if let Some(upto) = state.advance() {
        ack_run(&channel, upto, timeout, &subscription).await;
    }
    let lone = state.take_stragglers(Instant::now(), Duration::ZERO);
    ack_each(&channel, &lone, timeout, &subscription).await;
}

/// Acks every unacked delivery up to `upto` with one `multiple` ack.
async fn ack_run(channel: &Channel, upto: u64, timeout: Duration, subscription: &str) {
    if !bounded(timeout, channel.basic_ack(upto, BasicAckOptions { multiple: true })).await {
        tracing::warn!(%subscription, "ack failed; the broker will redeliver (a duplicate, not a loss)");
    }
}

/// Acks each of `tags` on its own. One failing does not stop the others
/// (they were marked done and no run will name them).
async fn ack_each(channel: &Channel, tags: &[u64], timeout: Duration, subscription: &str) {
    let mut failed = 0;
    for &tag in tags {
        if !bounded(timeout, channel.basic_ack(tag, BasicAckOptions { multiple: false })).await {
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::warn!(%subscription, failed, "acks failed; the broker will redeliver (duplicates, not losses)");
    }
}

/// Which tags are acked, pure so it can be tested without a broker.
#[derive(Default)]
struct State {
    /// Every tag up to this one is acked or requeued.
    acked: u64,
    above: BTreeMap<u64, Tag>,
    /// Settled tags in the order they settled, oldest first; entries whose
    /// tag has been acked since are skipped when met.
    order: VecDeque<(Instant, u64)>,
    /// How many tags in `above` are settled and unacked.
    waiting: usize,
}

impl State {
    fn settle(&mut self, tag: u64, now: Instant) {
        if tag > self.acked && !self.above.contains_key(&tag) {
            self.above.insert(tag, Tag::Settled);
            self.order.push_back((now, tag));
            self.waiting += 1;
        }
    }

    fn done(&mut self, tag: u64) {
        if tag > self.acked && matches!(self.above.insert(tag, Tag::Done), Some(Tag::Settled)) {
            self.waiting -= 1;
        }
    }

    /// Extends the acked run over every tag that follows it without a gap,
    /// and returns the tag a `multiple` ack must name to ack the settled
    /// ones among them: the highest still unacked, if any.
    fn advance(&mut self) -> Option<u64> {
        let mut target = None;
        while let Some(entry) = self.above.first_entry() {
            if *entry.key() != self.acked + 1 {
                break;
            }
            let (tag, what) = entry.remove_entry();
            if let Tag::Settled = what {
                target = Some(tag);
                self.waiting -= 1;
            }
            self.acked = tag;
        }
        target
    }

    /// When the longest-waiting settled tag behind a gap settled.
    fn oldest_straggler(&mut self) -> Option<Instant> {
        while let Some(&(at, tag)) = self.order.front() {
            if matches!(self.above.get(&tag), Some(Tag::Settled)) {
                return Some(at);
            }
            self.order.pop_front();
        }
        None
    }

    /// The settled tags behind a gap that have waited at least `wait` by
    /// `now`, marked done: the caller acks each on its own.
    fn take_stragglers(&mut self, now: Instant, wait: Duration) -> Vec<u64> {
        let mut lone = Vec::new();
        while let Some(&(at, tag)) = self.order.front() {
            if at + wait > now {
                break;
            }
            self.order.pop_front();
            if let Some(what @ Tag::Settled) = self.above.get_mut(&tag) {
                *what = Tag::Done;
                self.waiting -= 1;
                lone.push(tag);
            }
        }
        lone
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether `fut` succeeded within `timeout`.
async fn bounded(timeout: Duration, fut: impl Future<Output = lapin::Result<()>>) -> bool {
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_ack_covers_only_a_gapless_run_and_names_an_unacked_tag() {
        let now = Instant::now();
        let mut state = State::default();
        state.settle(2, now);
        state.settle(3, now);
        assert_eq!(state.advance(), None, "tag 1 still runs: nothing may be acked");
        state.settle(1, now);
        assert_eq!(state.advance(), Some(3));
        assert_eq!(state.acked, 3);

        // 4 runs long; 5 and 6 settle, wait, and go on their own.
        state.settle(5, now);
        state.settle(6, now);
        assert_eq!(state.advance(), None);
        assert_eq!(state.oldest_straggler(), Some(now));
        assert_eq!(state.waiting, 2);
        assert_eq!(state.take_stragglers(now, Duration::ZERO), [5, 6]);
        assert_eq!(state.waiting, 0);
        assert_eq!(state.oldest_straggler(), None);
        // 7 settles; then 4: the run reaches 7, and the ack names 7, not 6
        // (already acked: naming it would close the channel).
        state.settle(7, now);
        state.settle(4, now);
        assert_eq!(state.advance(), Some(7));
        // A requeued tag ends a run without being named by it.
        state.settle(8, now);
        state.done(9);
        assert_eq!(state.advance(), Some(8));
        assert_eq!(state.acked, 9);
        state.done(10);
        assert_eq!(state.advance(), None, "nothing unacked in the run: no ack at all");
        assert_eq!(state.acked, 10);
    }

    #[test]
    fn stragglers_wait_their_turn() {
        let start = Instant::now();
        let later = start + Duration::from_millis(30);
        let mut state = State::default();
        state.settle(2, start);
        state.settle(3, later);
        let wait = Duration::from_millis(20);
        assert_eq!(state.take_stragglers(start + wait, wait), [2], "3 has not waited as long");
        assert_eq!(state.oldest_straggler(), Some(later));
        assert_eq!(state.take_stragglers(later + wait, wait), [3]);
        assert_eq!(state.oldest_straggler(), None);
    }
}
