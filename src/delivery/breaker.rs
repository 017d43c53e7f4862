//! A circuit breaker per subscription: after `failures` consecutive failed
//! attempts it opens and the worker stops taking deliveries for `cooldown`;
//! then one probe delivery goes out, and its outcome closes the breaker or
//! opens it for another cooldown.
//!
//! While open, events wait in the subscription's queue (the worker simply does
//! not pull them): nothing is retried or dead-lettered because of the breaker.
//! Failures that say nothing about the destination's health (a 4xx for one
//! bad event) neither trip nor reset it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::telemetry::metric;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its outcome.
    Probing,
}

/// How an attempt bears on the destination's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    /// Says nothing about the destination (e.g. a 4xx for one event).
    Unknown,
}

impl Health {
    /// Timeouts, connection errors, 408, 429 and 5xx mean the destination is
    /// in trouble; 2xx that it is fine.
    pub fn of(status: Option<u16>, delivered: bool) -> Self {
        match (delivered, status) {
            (true, _) => Self::Up,
            (false, None | Some(408 | 429 | 500..)) => Self::Down,
            (false, Some(_)) => Self::Unknown,
        }
    }
}

pub struct Breaker {
    subscription: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
    changed: Notify,
}

impl Breaker {
    pub fn new(subscription: &str, threshold: u32, cooldown: Duration) -> Self {
        metrics::gauge!(metric::CIRCUIT_OPEN, "subscription" => subscription.to_owned()).set(0.0);
        Self {
            subscription: subscription.to_owned(),
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        }
    }

    /// Waits until a delivery may start: at once while closed; after the
    /// cooldown (as the single probe) while open; after the probe's outcome
    /// while probing. `true` when this admission is the probe: its holder
    /// must [`Breaker::release_probe`] if it ends up sending nothing.
    pub async fn admit(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut state = self.state.lock().expect("breaker lock poisoned");
                match *state {
                    State::Closed { .. } => return false,
                    State::Open { until } if Instant::now() >= until => {
                        *state = State::Probing;
                        tracing::info!(subscription = %self.subscription, "circuit half-open: sending one probe");
                        return true;
                    }
                    State::Open { until } => Some(until - Instant::now()),
                    State::Probing => None,
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The probe was not sent after all (filtered out, transform failed,
    /// paused, shutting down): let the next delivery probe instead, rather
    /// than wait forever for an outcome that will not come. A no-op once the
    /// probe's outcome was recorded.
    pub fn release_probe(&self) {
        let mut state = self.state.lock().expect("breaker lock poisoned");
        if *state == State::Probing {
            *state = State::Open { until: Instant::now() };
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// Records an attempt's bearing on the destination's health.
    pub fn record(&self, health: Health) {
        let mut state = self.state.lock().expect("breaker lock poisoned");
        let next = match (*state, health) {
            // A probe answered with a 4xx: the destination is up and answering.
            (State::Probing, Health::Unknown) => {
                tracing::info!(subscription = %self.subscription, "circuit closed: the destination answers again");
                self.transition("closed", 0.0);
                State::Closed { failures: 0 }
            }
            (_, Health::Unknown) => return,
            (State::Closed { .. }, Health::Up) => State::Closed { failures: 0 },
            (State::Closed { failures }, Health::Down) if failures + 1 >= self.threshold => self.open(),
            (State::Closed { failures }, Health::Down) => State::Closed { failures: failures + 1 },
            (State::Probing, Health::Up) => {
                tracing::info!(subscription = %self.subscription, "circuit closed: the destination recovered");
                self.transition("closed", 0.0);
                State::Closed { failures: 0 }
            }
            (State::Probing, Health::Down) => self.open(),
            // Outcomes of deliveries that started before the breaker opened.
            (State::Open { .. }, _) => return,
        };
        *state = next;
        drop(state);
        self.changed.notify_waiters();
    }

    fn open(&self) -> State {
        tracing::warn!(
            subscription = %self.subscription,
            cooldown = ?self.cooldown,
            "circuit open: the destination keeps failing; pausing deliveries (events wait in the queue)"
        );
        self.transition("open", 1.0);
        State::Open { until: Instant::now() + self.cooldown }
    }

    fn transition(&self, to: &'static str, open: f64) {
        metrics::gauge!(metric::CIRCUIT_OPEN, "subscription" => self.subscription.clone()).set(open);
        metrics::counter!(metric::CIRCUIT_TRANSITIONS, "subscription" => self.subscription.clone(), "state" => to)
            .increment(1);
    }

    /// `closed`, `open` or `half_open`, for operators.
    pub fn state_name(&self) -> &'static str {
        match *self.state.lock().expect("breaker lock poisoned") {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::Probing => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_threshold_then_probes_once_and_closes() {
        let breaker = Breaker::new("t", 3, Duration::from_millis(100));
        breaker.record(Health::Down);
        breaker.record(Health::Down);
        breaker.record(Health::Unknown); // a 4xx neither trips nor resets
        assert_eq!(breaker.state_name(), "closed");
        breaker.record(Health::Down);
        assert_eq!(breaker.state_name(), "open");

        let started = Instant::now();
        breaker.admit().await; // the probe, after the cooldown
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(breaker.state_name(), "half_open");
        // A second delivery waits for the probe's outcome.
        let second = tokio::time::timeout(Duration::from_millis(50), breaker.admit()).await;
        assert!(second.is_err(), "only one probe at a time");
        breaker.record(Health::Up);
        assert_eq!(breaker.state_name(), "closed");
        tokio::time::timeout(Duration::from_millis(50), breaker.admit()).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_probe_opens_again() {
        let breaker = Breaker::new("t", 1, Duration::from_millis(50));
        breaker.record(Health::Down);
        breaker.admit().await;
        breaker.record(Health::Down);
        assert_eq!(breaker.state_name(), "open");
        // Late outcomes of earlier deliveries do not change an open breaker.
        breaker.record(Health::Up);
        assert_eq!(breaker.state_name(), "open");
    }

    #[tokio::test]
    async fn a_probe_that_was_never_sent_lets_the_next_delivery_probe() {
        let breaker = Breaker::new("t", 1, Duration::from_millis(10));
        breaker.record(Health::Down);
        assert!(breaker.admit().await, "the first admission after the cooldown is the probe");
        breaker.release_probe();
        let next = tokio::time::timeout(Duration::from_millis(100), breaker.admit()).await;
        assert_eq!(next, Ok(true), "without the release this would wait forever");
        // A 4xx answer to the probe means the destination is back.
        breaker.record(Health::Unknown);
        assert_eq!(breaker.state_name(), "closed");
        breaker.release_probe(); // after the outcome: no effect
        assert_eq!(breaker.state_name(), "closed");
    }

    #[test]
    fn health_of_outcomes() {
        assert_eq!(Health::of(Some(200), true), Health::Up);
        assert_eq!(Health::of(None, false), Health::Down);
        assert_eq!(Health::of(Some(503), false), Health::Down);
        assert_eq!(Health::of(Some(429), false), Health::Down);
        assert_eq!(Health::of(Some(422), false), Health::Unknown);
    }
}
