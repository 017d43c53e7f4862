//! How many requests to one destination are out at once: adaptive, up to
//! the subscription's `concurrency`.
//!
//! A fixed number is wrong both ways. A destination that answers in
//! 200 ms and could take 50 requests at once gets what `concurrency` says;
//! one that is already saturated gets them all the same, and the extra
//! requests only wait in its queues (and ours), each holding a connection
//! and its buffers. At fan-out 10 × `concurrency = 64` that was 640
//! connections where a few dozen carried the same rate
//! (docs/BENCHMARKS.md, issue 12).
//!
//! So each subscription's limit follows an estimate of how many of its
//! requests wait at the destination rather than being worked on, the way
//! TCP Vegas sizes its window (Netflix's concurrency-limits and Envoy's
//! adaptive concurrency do the same for services):
//! - every window (the usual answer time, at least [`MIN_WINDOW`]) the
//!   window's mean answer time `rtt` is compared with the fastest window
//!   of the recent ones, `fastest`: `limit × (1 − TOLERANCE × fastest /
//!   rtt)` requests were queued. [`TOLERANCE`] is what Vegas lacks and
//!   Netflix's Gradient2 added: answer times vary on their own, and
//!   without it the variation alone reads as queueing, so a slow
//!   destination with many servers (100 ms ± 50%) would be held at a
//!   fraction of what it takes;
//! - few queued, and the limit was reached: it grows (fast while almost
//!   none wait);
//! - many queued: it shrinks by a step; pushed back (429, 503, a timeout):
//!   by a tenth.
//!
//! A destination that takes more requests at once without answering
//! slower (a slow API with many servers) gets up to `concurrency`; one that
//! only queues them (a saturated server, or a saturated machine) gets a
//! few.
//!
//! A request that takes far longer than usual ([`Slot::straggling`]) stops
//! counting against the limit, though not against `concurrency`: one
//! hanging request must not stall its subscription at a low limit.
//!
//! Must not: know about events, retries or the broker.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where an adaptive limit starts: enough that a subscription's first
/// events do not queue behind one request while the limit grows.
const INITIAL: usize = 4;
/// The shortest window: at loopback answer times (under a millisecond) a
/// window of one answer time holds too few answers to compare.
const MIN_WINDOW: Duration = Duration::from_millis(10);
/// The limit never goes below this (or `concurrency`, if lower): at one, a
/// slow answer stalls every request behind it until the straggler rule
/// lets the next one go.
const FLOOR: usize = 2;
/// How many recent windows the fastest is taken from: the answer time
/// without queueing is relearnt when the destination itself slows down.
const RECENT: usize = 100;
/// How much slower than the fastest recent window a window's answers may
/// come before any of its requests count as queued: a window's mean
/// varies by tens of percent with no queue at all.
const TOLERANCE: f64 = 2.0;
/// Weight of the newest window in the usual answer time.
const ALPHA: f64 = 0.4;
/// What a push-back keeps of the limit.
const PUSHED_BACK: f64 = 0.9;
/// A request out this many usual answer times (and at least
/// [`MIN_STRAGGLING`]) is a straggler.
const STRAGGLER: u32 = 5;
const MIN_STRAGGLING: Duration = Duration::from_millis(250);

/// One subscription's limit. Cheap to share (`Arc`).
pub struct Limit {
    permits: Arc<Semaphore>,
    adaptive: bool,
    state: Mutex<State>,
    gauge: metrics::Gauge,
}

struct State {
    limit: usize,
    /// `concurrency`: the most the limit may reach.
    max: usize,
    /// Slots handed out and still counting against the limit.
    out: usize,
    /// Permits to retire as they come back: a shrink below what is out.
    owed: usize,
    window: Window,
    /// The recent windows' mean answer times, in seconds, oldest first.
    recent: std::collections::VecDeque<f64>,
    /// The usual answer time (a running mean of windows), in seconds.
    usual: Option<f64>,
}

#[derive(Default)]
struct Window {
    /// When the window's first request went out or its first answer came
    /// (`None`: neither yet, so an idle spell is not part of any window).
    started: Option<Instant>,
    total: Duration,
    answers: u32,
    /// The limit was reached at some point in the window.
    reached: bool,
    /// The destination pushed back in the window.
    pushed_back: bool,
}

/// What an answer (or its absence) says about the destination's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// An answer, in its time.
    Answered,
    /// 429, 503 or a timeout: the destination asks for less.
    PushedBack,
    /// Nothing to learn (the connection failed, the request was not sent).
    Unknown,
}

impl Load {
    /// 429 and 503 are a destination saying "less"; no answer within the
    /// timeout is one that cannot say it.
    pub fn of(status: Option<u16>, timed_out: bool) -> Self {
        match (status, timed_out) {
            (Some(429 | 503), _) | (None, true) => Self::PushedBack,
            (Some(_), _) => Self::Answered,
            (None, false) => Self::Unknown,
        }
    }
}

impl Limit {
    /// A limit of at most `max`; fixed at `max` unless `adaptive`.
    pub fn new(subscription: &str, max: u16, adaptive: bool) -> Self {
        let max = usize::from(max.max(1));
        let limit = if adaptive { INITIAL.min(max) } else { max };
        let gauge =
            metrics::gauge!(crate::telemetry::metric::CONCURRENCY_LIMIT, "subscription" => subscription.to_owned());
        gauge.set(limit as f64);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            adaptive,
            state: Mutex::new(State {
                limit,
                max,
                out: 0,
                owed: 0,
                window: Window::default(),
                recent: std::collections::VecDeque::with_capacity(RECENT),
                usual: None,
            }),
            gauge,
        }
    }

    /// The current limit.
    pub fn current(&self) -> usize {
        self.state.lock().expect("never poisoned").limit
    }

    /// Waits for a slot under the limit.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut state = self.state.lock().expect("never poisoned");
        state.out += 1;
        state.window.started.get_or_insert_with(Instant::now);
        if state.out >= state.limit {
            state.window.reached = true;
        }
        Slot { permit: Some(permit), limit: self.clone() }
    }

    /// How long a request may be out before it stops counting (see
    /// [`Slot::straggling`]); `None` for a fixed limit.
    pub fn straggler_after(&self) -> Option<Duration> {
        if !self.adaptive {
            return None;
        }
        let state = self.state.lock().expect("never poisoned");
        let usual = state.usual.map_or(Duration::ZERO, Duration::from_secs_f64);
        Some((usual * STRAGGLER).max(MIN_STRAGGLING))
    }

    fn answered(&self, took: Duration, load: Load) {
        if !self.adaptive || load == Load::Unknown {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock().expect("never poisoned");
        let window = &mut state.window;
        let started = *window.started.get_or_insert(now);
        window.total += took;
        window.answers += 1;
        window.pushed_back |= load == Load::PushedBack;
        let length = state.usual.map_or(MIN_WINDOW, |usual| Duration::from_secs_f64(usual).max(MIN_WINDOW));
        if now.duration_since(started) < length {
            return;
        }
        let before = state.limit;
        let after = state.adjust();
        drop(state);
        if after > before {
            self.permits.add_permits(after - before);
        } else if after < before {
            self.retire(before - after);
        }
        if after != before {
            self.gauge.set(after as f64);
        }
    }

    /// Takes `n` permits out of circulation: idle ones now, the rest as
    /// they come back.
    fn retire(&self, n: usize) {
        let idle = self.permits.forget_permits(n);
        self.state.lock().expect("never poisoned").owed += n - idle;
    }

    /// A slot's permit came back; `counted`: it still counted against the
    /// limit (it was not a straggler's).
    fn give_back(&self, permit: OwnedSemaphorePermit, counted: bool) {
        let mut state = self.state.lock().expect("never poisoned");
        if counted {
            state.out -= 1;
        }
        if state.owed > 0 {
            state.owed -= 1;
            permit.forget();
        }
    }
}

impl State {
    /// Ends the window: the new limit, from what it showed.
    fn adjust(&mut self) -> usize {
        let window = std::mem::take(&mut self.window);
        let rtt = window.total.as_secs_f64() / f64::from(window.answers.max(1));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
        let fastest = self.recent.iter().copied().fold(f64::INFINITY, f64::min);
        self.usual = Some(self.usual.map_or(rtt, |usual| (1.0 - ALPHA) * usual + ALPHA * rtt));
        let limit = self.limit;
        let queued = if rtt > 0.0 { (limit as f64 * (1.0 - TOLERANCE * fastest / rtt)).max(0.0) } else { 0.0 };
        // Thresholds grow with the limit's order of magnitude, as Vegas's:
        // at 500 in flight, 3 queued is noise.
        let step = (limit as f64).log10().max(1.0) as usize;
        let (few, many) = (3 * step, 6 * step);
        let next = if window.pushed_back {
            (limit as f64 * PUSHED_BACK) as usize
        } else if queued > many as f64 {
            limit.saturating_sub(step)
        } else if !window.reached {
            // Not enough demand to learn whether more would help.
            limit
        } else if queued <= step as f64 {
            limit + many
        } else if queued < few as f64 {
            limit + step
        } else {
            limit
        };
        self.limit = next.clamp(FLOOR.min(self.max), self.max);
        self.limit
    }
}

/// One request's place under the limit, given back when dropped.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<Limit>,
}

impl Slot {
    /// Reports how the request went; the slot is given back.
    pub fn answered(mut self, took: Duration, load: Load) {
        self.limit.answered(took, load);
        if let Some(permit) = self.permit.take() {
            self.limit.give_back(permit, true);
        }
    }

    /// The request has been out far longer than usual: from now on it does
    /// not count against the limit, so the requests behind it can go.
    /// (Still against `concurrency`: the worker's own budget.) What it
    /// finally answers is not a sample either: its time says more about
    /// the one request than about the destination's load.
    pub fn straggling(mut self) {
        let Some(permit) = self.permit.take() else { return };
        // Its permit leaves circulation; a fresh one takes its place unless
        // a shrink was waiting for one to come back.
        permit.forget();
        let replace = {
            let mut state = self.limit.state.lock().expect("never poisoned");
            state.out -= 1;
            if state.owed > 0 {
                state.owed -= 1;
                false
            } else {
                true
            }
        };
        if replace {
            self.limit.permits.add_permits(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.limit.give_back(permit, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u16) -> Arc<Limit> {
        Arc::new(Limit::new("test", max, true))
    }

    /// Runs `windows` windows in which every slot is taken and one answer
    /// comes, in `took`, pushed back or not (the others' requests are
    /// dropped unanswered, so each window holds that one answer).
    async fn windows(limit: &Arc<Limit>, windows: usize, took: Duration, load: Load) {
        for _ in 0..windows {
            let mut slots = Vec::new();
            for _ in 0..limit.current() {
                slots.push(limit.acquire().await);
            }
            // The window closes on the first answer past its length.
            tokio::time::sleep(MIN_WINDOW.max(took)).await;
            slots.remove(0).answered(took, load);
        }
    }

    #[tokio::test]
    async fn grows_while_answers_are_no_slower_and_the_limit_is_reached() {
        let limit = limit(64);
        assert_eq!(limit.current(), INITIAL);
        windows(&limit, 2, Duration::from_millis(1), Load::Answered).await;
        assert_eq!(limit.current(), 16, "nothing queued: grows by 6 a window");
        windows(&limit, 12, Duration::from_millis(1), Load::Answered).await;
        assert_eq!(limit.current(), 64, "never past concurrency");
    }

    #[tokio::test]
    async fn shrinks_when_pushed_back() {
        let limit = limit(64);
        windows(&limit, 2, Duration::from_millis(1), Load::Answered).await;
        assert_eq!(limit.current(), 16);
        windows(&limit, 1, Duration::from_millis(1), Load::PushedBack).await;
        assert_eq!(limit.current(), 14);
    }

    #[tokio::test]
    async fn shrinks_while_answers_queue_and_holds_when_a_few_do() {
        let limit = limit(64);
        windows(&limit, 2, Duration::from_millis(2), Load::Answered).await;
        assert_eq!(limit.current(), 16);
        // Four times as slow at 16: 16 × (1 − 2 × 2/8) = 8 queued, more
        // than 6.
        windows(&limit, 1, Duration::from_millis(8), Load::Answered).await;
        assert_eq!(limit.current(), 15);
        // 15 × (1 − 4/5.7) = 4.5 queued, between few and many.
        windows(&limit, 1, Duration::from_micros(5700), Load::Answered).await;
        assert_eq!(limit.current(), 15);
        // Twenty times as slow: down by a step a window until no more than
        // `many` wait (at 6, 6 × 0.9 = 5.4 queued), and there it holds.
        windows(&limit, 12, Duration::from_millis(40), Load::Answered).await;
        assert_eq!(limit.current(), 6);
    }

    #[tokio::test]
    async fn answers_that_vary_without_queueing_do_not_hold_it_back() {
        let limit = limit(64);
        // A slow destination with many servers: windows between 2 and
        // 3.9 ms, whatever the limit.
        for window in 0..12 {
            let took = if window % 2 == 0 { 2000 } else { 3900 };
            windows(&limit, 1, Duration::from_micros(took), Load::Answered).await;
        }
        assert_eq!(limit.current(), 64);
    }

    #[tokio::test]
    async fn does_not_grow_when_the_limit_is_not_reached() {
        let limit = limit(64);
        for _ in 0..5 {
            let slot = limit.acquire().await;
            tokio::time::sleep(MIN_WINDOW).await;
            slot.answered(Duration::from_millis(1), Load::Answered);
        }
        assert_eq!(limit.current(), INITIAL);
    }

    #[tokio::test]
    async fn a_shrink_below_what_is_out_takes_effect_as_slots_come_back() {
        let limit = limit(64);
        windows(&limit, 2, Duration::from_millis(1), Load::Answered).await;
        let mut slots = Vec::new();
        for _ in 0..16 {
            slots.push(limit.acquire().await);
        }
        tokio::time::sleep(MIN_WINDOW).await;
        slots.pop().unwrap().answered(Duration::from_millis(1), Load::PushedBack);
        assert_eq!(limit.current(), 14);
        // 15 out, limit 14: one more coming back frees nothing.
        slots.pop().unwrap().answered(Duration::from_millis(1), Load::Answered);
        assert_eq!(limit.permits.available_permits(), 0);
        drop(slots);
        assert_eq!(limit.permits.available_permits(), 14);
    }

    #[tokio::test]
    async fn a_straggler_stops_counting_against_the_limit() {
        let limit = limit(64);
        let mut slots = Vec::new();
        for _ in 0..INITIAL {
            slots.push(limit.acquire().await);
        }
        assert_eq!(limit.permits.available_permits(), 0);
        slots.pop().unwrap().straggling();
        let next = tokio::time::timeout(Duration::from_secs(1), limit.acquire()).await;
        assert!(next.is_ok(), "the straggler's place was given to the next request");
    }

    #[tokio::test]
    async fn a_fixed_limit_never_moves() {
        let limit = Arc::new(Limit::new("test", 8, false));
        windows(&limit, 3, Duration::from_millis(1), Load::PushedBack).await;
        assert_eq!(limit.current(), 8);
        assert_eq!(limit.straggler_after(), None);
    }

    #[test]
    fn push_back_is_429_503_and_timeouts() {
        assert_eq!(Load::of(Some(429), false), Load::PushedBack);
        assert_eq!(Load::of(Some(503), false), Load::PushedBack);
        assert_eq!(Load::of(None, true), Load::PushedBack);
        assert_eq!(Load::of(Some(500), false), Load::Answered);
        assert_eq!(Load::of(Some(200), false), Load::Answered);
        assert_eq!(Load::of(None, false), Load::Unknown);
    }
}
