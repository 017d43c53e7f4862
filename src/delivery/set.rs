//! The workers of one process, kept in a map by subscription name and
//! driven toward the desired set of subscriptions.
//!
//! [`WorkerSet::reconcile`] is idempotent: it starts a worker for each new
//! subscription, replaces the worker of a subscription whose definition
//! changed (the old one finishes its in-flight deliveries; what it had
//! prefetched returns to the queue for the new one), stops those that are
//! gone, and leaves every unchanged worker running.
//! Must not: declare or delete queues (the topology reconciler does), or
//! decide what the desired set is (the catalog and the file do).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Worker, breaker::Breaker, http::Destination, retry, transform::Jq};
use crate::{
    broker::Broker,
    config::{ConfigError, SubscriptionConfig},
    operator::control::Control,
    rate::RateLimiter,
    telemetry::metric,
};

/// Circuit breakers of the running workers, by subscription (the operator
/// API shows their state).
pub type Breakers = Arc<RwLock<HashMap<String, Arc<Breaker>>>>;

struct Running {
    definition: SubscriptionConfig,
    token: CancellationToken,
}

pub struct WorkerSet {
    broker: Broker,
    control: Arc<Control>,
    drain_timeout: Duration,
    running: HashMap<String, Running>,
    breakers: Breakers,
    /// Every worker task, running or draining; reaped as they end.
    tasks: JoinSet<()>,
    /// Cancelled at shutdown: every worker's token is its child.
    token: CancellationToken,
    recorder: Option<crate::eventlog::Recorder>,
}

impl WorkerSet {
    pub fn new(
        broker: Broker,
        control: Arc<Control>,
        drain_timeout: Duration,
        recorder: Option<crate::eventlog::Recorder>,
    ) -> Self {
        Self {
            broker,
            control,
            drain_timeout,
            running: HashMap::new(),
            breakers: Arc::default(),
            tasks: JoinSet::new(),
            token: CancellationToken::new(),
            recorder,
        }
    }

    pub fn breakers(&self) -> Breakers {
        self.breakers.clone()
    }

    /// Names of the running workers.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.keys().cloned().collect();
        names.sort();
        names
    }

    /// Drives the running workers toward `desired`. The broker's topology
    /// must already hold every desired subscription's queues. A definition
    /// that cannot be built (a destination's CA file went missing) keeps its
    /// old worker, if any, and is reported.
    pub fn reconcile(&mut self, desired: &BTreeMap<String, SubscriptionConfig>) -> Vec<ConfigError> {
        while self.tasks.try_join_next().is_some() {}
        let gone: Vec<String> = self.running.keys().filter(|name| !desired.contains_key(*name)).cloned().collect();
        for name in gone {
            self.stop(&name);
            self.control.forget(&name);
            tracing::info!(subscription = %name, "subscription removed: its worker drains and stops");
        }
        let mut errors = Vec::new();
        for (name, definition) in desired {
            if self.running.get(name).is_some_and(|r| &r.definition == definition) {
                continue;
            }
            match self.start(name, definition) {
                Ok(()) => {}
                Err(error) => {
                    tracing::error!(subscription = %name, %error, "cannot start the subscription's worker");
                    errors.push(error);
                }
            }
        }
        errors
    }

    fn stop(&mut self, name: &str) {
        if let Some(running) = self.running.remove(name) {
            running.token.cancel();
        }
        if self.breakers.write().expect("breakers lock").remove(name).is_some() {
            // A gone subscription's breaker must not look open forever (an
            // alert on it would never clear); a replacement starts closed.
            metrics::gauge!(metric::CIRCUIT_OPEN, "subscription" => name.to_owned()).set(0.0);
        }
    }

    fn start(&mut self, name: &str, sub: &SubscriptionConfig) -> Result<(), ConfigError> {
        let topology = self.broker.topology();
        let queues = topology
            .subscription(name)
            .ok_or_else(|| ConfigError::invalid(format!("subscriptions.{name}"), "its queues are not planned"))?
            .clone();
        // Build everything that can fail before stopping the old worker.
        let destination = Arc::new(Destination::new(name, sub)?);
        let jq = Jq::from_config(name, sub)?.map(Arc::new);
        let replacing = self.running.contains_key(name);
        self.stop(name);
        let breaker = (sub.circuit_breaker.failures > 0)
            .then(|| Arc::new(Breaker::new(name, sub.circuit_breaker.failures, sub.circuit_breaker.cooldown)));
        if let Some(breaker) = &breaker {
            self.breakers.write().expect("breakers lock").insert(name.to_owned(), breaker.clone());
        }
        let worker = Worker {
            queues,
            limiter: sub.rate_limit.map(|rate| RateLimiter::new(rate, sub.rate_limit_burst)),
            breaker,
            paused: self.control.watch(name),
            name: name.to_owned(),
            destination,
            jq,
            policy: retry::Policy { schedule: sub.retry.clone(), dead_letter_on: sub.dead_letter_on.clone() },
            concurrency: sub.concurrency,
            broker: self.broker.clone(),
            drain_timeout: self.drain_timeout,
            recorder: self.recorder.clone(),
            meters: super::worker::Meters::new(name),
        };
        let token = self.token.child_token();
        self.tasks.spawn(worker.run(token.clone()));
        self.running.insert(name.to_owned(), Running { definition: sub.clone(), token });
        if replacing {
            tracing::info!(subscription = %name, "subscription changed: its worker was replaced");
        }
        Ok(())
    }

    /// Stops every worker and waits for them (each bounds its own drain;
    /// the extra second covers closing). Returns how many did not stop.
    pub async fn shutdown(mut self) -> usize {
        self.token.cancel();
        crate::shutdown::drain(&mut self.tasks, self.drain_timeout + Duration::from_secs(1)).await
    }
}
