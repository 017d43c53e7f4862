//! What happens after an attempt: the one place retry decisions are made.

use std::time::Duration;

/// The result of one HTTP attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered { status: u16 },
    Failed { status: Option<u16>, error: String },
}

/// Whether another attempt could succeed. Every failure is retriable for now:
/// timeouts, connection errors, 5xx, 429 and also other 4xx (a destination
/// mid-deploy often answers 404 for a minute).
pub fn is_retriable(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failed { .. })
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Delivered: ack.
    Ack,
    /// Park in the retry queue of this delay, then try again.
    Retry { delay: Duration },
    /// Give up: move to the dead-letter queue with this reason.
    DeadLetter { reason: &'static str },
}

/// Decides the next step after attempt number `attempt` (1-based) of a
/// schedule of delays between attempts.
pub fn next(outcome: &Outcome, attempt: u32, schedule: &[Duration]) -> Next {
    if !matches!(outcome, Outcome::Failed { .. }) {
        return Next::Ack;
    }
    if !is_retriable(outcome) {
        return Next::DeadLetter { reason: "not_retriable" };
    }
    match schedule.get(attempt as usize - 1) {
        Some(&delay) => Next::Retry { delay },
        None => Next::DeadLetter { reason: "retries_exhausted" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Outcome {
        Outcome::Failed { status: Some(503), error: "HTTP 503".into() }
    }

    #[test]
    fn walks_the_schedule_then_dead_letters() {
        let schedule = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(next(&Outcome::Delivered { status: 200 }, 1, &schedule), Next::Ack);
        assert_eq!(next(&failed(), 1, &schedule), Next::Retry { delay: Duration::from_secs(1) });
        assert_eq!(next(&failed(), 2, &schedule), Next::Retry { delay: Duration::from_secs(5) });
        assert_eq!(next(&failed(), 3, &schedule), Next::DeadLetter { reason: "retries_exhausted" });
        assert_eq!(next(&failed(), 1, &[]), Next::DeadLetter { reason: "retries_exhausted" });
    }
}
