//! What happens after an attempt: the one place retry decisions are made.
//!
//! - 2xx: delivered.
//! - A status in the subscription's `dead_letter_on` (410 Gone by default):
//!   dead-letter at once, retrying cannot help.
//! - Anything else (408, 425, 429, 5xx, other 4xx, timeouts, connection
//!   errors): the next delay of the schedule, or dead-letter when the
//!   schedule is exhausted.
//! - A `Retry-After` on 429/503 is a floor for the wait (capped at the
//!   schedule's largest delay).
//! - Waits are jittered so a recovering destination is not hit by every
//!   failed event at the same instant.

use std::time::{Duration, SystemTime};

/// The result of one HTTP attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered { status: u16 },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
    /// What the destination asked for, from `Retry-After` (on 429/503 only).
    pub retry_after: Option<Duration>,
    /// The start of the response body, size-capped.
    pub response: Option<String>,
}

/// How far below its nominal delay a scheduled retry may fire (20%).
const JITTER_BELOW: f64 = 0.2;
/// How far above a `Retry-After` a retry may fire (10%), within its queue.
const JITTER_ABOVE: f64 = 0.1;

/// A subscription's retry settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delays between attempts, in order.
    pub schedule: Vec<Duration>,
    pub dead_letter_on: Vec<u16>,
}

impl Policy {
    /// The distinct delays, one retry queue each, ascending.
    pub fn queue_delays(&self) -> Vec<Duration> {
        let mut delays = self.schedule.clone();
        delays.sort();
        delays.dedup();
        delays
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Delivered: ack.
    Ack,
    /// Park in the retry queue whose TTL is `queue`, for `wait` (≤ `queue`).
    Retry { queue: Duration, wait: Duration },
    /// Give up: move to the dead letters with this reason.
    DeadLetter { reason: &'static str },
}

/// Whether another attempt could succeed.
pub fn is_retriable(failure: &Failure, policy: &Policy) -> bool {
    !failure.status.is_some_and(|s| policy.dead_letter_on.contains(&s))
}

/// Decides the next step after attempt number `attempt` (1-based). `random`
/// is uniform in `[0, 1)` and places the wait within its jitter range.
pub fn next(outcome: &Outcome, attempt: u32, policy: &Policy, random: f64) -> Next {
    let Outcome::Failed(failure) = outcome else {
        return Next::Ack;
    };
    if !is_retriable(failure, policy) {
        return Next::DeadLetter { reason: "dead_letter_status" };
    }
    let Some(&scheduled) = policy.schedule.get(attempt as usize - 1) else {
        return Next::DeadLetter { reason: "retries_exhausted" };
    };
    let delays = policy.queue_delays();
    let longest = *delays.last().expect("a schedule with an entry has a longest delay");
    let asked = failure.retry_after.filter(|_| matches!(failure.status, Some(429 | 503)));
    match asked {
        Some(after) if after > scheduled => {
            // Wait at least what was asked, in the queue with the nearest
            // larger delay (the longest delay caps it).
            let target = after.min(longest);
            let queue = *delays.iter().find(|d| **d >= target).expect("target is at most the longest delay");
            let ceiling = target.mul_f64(1.0 + JITTER_ABOVE).min(queue);
            Next::Retry { queue, wait: target + (ceiling - target).mul_f64(random) }
        }
        _ => Next::Retry { queue: scheduled, wait: scheduled.mul_f64(1.0 - JITTER_BELOW * random) },
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &[u64]) -> Policy {
        Policy { schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(), dead_letter_on: vec![400, 410] }
    }

    fn failed(status: Option<u16>, retry_after: Option<u64>) -> Outcome {
        Outcome::Failed(Failure {
            status,
            error: "x".into(),
            retry_after: retry_after.map(Duration::from_secs),
            response: None,
        })
    }

    #[test]
    fn walks_the_schedule_then_dead_letters() {
        let p = policy(&[1, 5]);
        assert_eq!(next(&Outcome::Delivered { status: 200 }, 1, &p, 0.0), Next::Ack);
        let s = Duration::from_secs;
        assert_eq!(next(&failed(Some(503), None), 1, &p, 0.0), Next::Retry { queue: s(1), wait: s(1) });
        assert_eq!(next(&failed(None, None), 2, &p, 0.0), Next::Retry { queue: s(5), wait: s(5) });
        assert_eq!(next(&failed(Some(500), None), 3, &p, 0.0), Next::DeadLetter { reason: "retries_exhausted" });
        assert_eq!(
            next(&failed(Some(500), None), 1, &policy(&[]), 0.0),
            Next::DeadLetter { reason: "retries_exhausted" }
        );
    }

    #[test]
    fn dead_letter_on_statuses_skip_retries() {
        let p = policy(&[1, 5]);
        assert_eq!(next(&failed(Some(410), None), 1, &p, 0.5), Next::DeadLetter { reason: "dead_letter_status" });
        assert_eq!(next(&failed(Some(400), None), 1, &p, 0.5), Next::DeadLetter { reason: "dead_letter_status" });
        // Other 4xx, 408, 425 and 429 are retried.
        for status in [404, 408, 425, 429, 422] {
            assert!(matches!(next(&failed(Some(status), None), 1, &p, 0.5), Next::Retry { .. }), "{status}");
        }
    }

    #[test]
    fn jitter_stays_within_twenty_percent_below_the_delay() {
        let p = policy(&[10]);
        for r in [0.0, 0.5, 0.999] {
            let Next::Retry { queue, wait } = next(&failed(Some(500), None), 1, &p, r) else { panic!() };
            assert_eq!(queue, Duration::from_secs(10));
            assert!(wait <= queue && wait >= Duration::from_secs(8), "{wait:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor_in_the_nearest_larger_queue() {
        let p = policy(&[1, 5, 30, 120]);
        let s = Duration::from_secs;
        // Asked for 7s on attempt 1 (scheduled 1s): the 30s queue, waiting 7s–7.7s.
        for r in [0.0, 0.999] {
            let Next::Retry { queue, wait } = next(&failed(Some(429), Some(7)), 1, &p, r) else { panic!() };
            assert_eq!(queue, s(30));
            assert!(wait >= s(7) && wait <= Duration::from_millis(7700), "{wait:?}");
        }
        // Asking beyond the longest delay is capped by it.
        let Next::Retry { queue, wait } = next(&failed(Some(503), Some(3600)), 1, &p, 0.5) else { panic!() };
        assert_eq!((queue, wait), (s(120), s(120)));
        // Shorter than scheduled: the schedule wins.
        let Next::Retry { queue, .. } = next(&failed(Some(429), Some(2)), 3, &p, 0.0) else { panic!() };
        assert_eq!(queue, s(30));
        // Only 429 and 503 carry a meaningful Retry-After.
        let Next::Retry { queue, .. } = next(&failed(Some(500), Some(60)), 1, &p, 0.0) else { panic!() };
        assert_eq!(queue, s(1));
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
