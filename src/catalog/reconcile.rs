//! Drives one process toward the desired subscriptions: the file's plus the
//! catalog's.
//!
//! On every new catalog state, and every reload of the file, it builds the [`Desired`] set, plans the
//! topology for it, applies the difference on the live connection
//! (declares new queues and bindings, removes stale bindings), hands the plan
//! to the broker for future reconnects, and reconciles the process's workers.
//! Each pass is idempotent: a pass that fails half-way (the broker went
//! away) is repaired by the reconnect, which declares the whole plan, and by
//! the next pass.
//! Must not: delete queues (a removed subscription's queues may hold events;
//! the API's delete decides), or write to the catalog.

use std::{collections::BTreeMap, sync::Arc};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{Catalog, State};
use crate::{
    broker::{Broker, Topology},
    config::{Config, SubscriptionConfig},
    delivery::set::WorkerSet,
    telemetry::metric,
};

/// Who owns a subscription's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// `[subscriptions.NAME]` in the config file; the API does not change it.
    File,
    /// Made through the API; lives in the catalog.
    Api,
}

/// A subscription this process should run.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub definition: SubscriptionConfig,
    pub managed_by: ManagedBy,
    /// The catalog version; 0 for the file's.
    pub version: u64,
    /// Being drained: its worker delivers what is queued, nothing new is
    /// routed to it.
    pub draining: bool,
}

/// The desired subscriptions, by name.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub subscriptions: BTreeMap<String, Wanted>,
    /// The catalog catch-up it was built from ([`State::generation`]).
    pub catalog_generation: u64,
    /// The catalog log position it was built from ([`State::position`]).
    pub catalog_position: u64,
}

impl Desired {
    /// The file's subscriptions, then the catalog's. A catalog entry that
    /// does not parse (written by a newer hookwire?) or that reuses a file
    /// subscription's name is left out and logged: the API refuses both, so
    /// neither happens through this version.
    pub fn build(config: &Config, catalog: &State) -> Self {
        let mut subscriptions: BTreeMap<String, Wanted> = config
            .subscriptions
            .iter()
            .map(|(name, sub)| {
                let wanted =
                    Wanted { definition: sub.clone(), managed_by: ManagedBy::File, version: 0, draining: false };
                (name.clone(), wanted)
            })
            .collect();
        for (name, entry) in catalog.entries() {
            if subscriptions.contains_key(name) {
                tracing::error!(subscription = %name, "the catalog has a subscription the file also defines; the file's is used");
                continue;
            }
            let mut definition = entry.definition.clone();
            if super::sealed::has_sealed(&mut definition) {
                let key = config.admin.secret_key.as_ref().map(super::sealed::SecretKey::parse);
                let opened = match key {
                    Some(Ok(key)) => key.open(name, &mut definition),
                    _ => Err("admin.secret_key is not set".to_owned()),
                };
                if let Err(error) = opened {
                    tracing::error!(subscription = %name, %error, "cannot open the subscription's sealed secrets; left out");
                    continue;
                }
            }
            match serde_json::from_value::<SubscriptionConfig>(definition) {
                Ok(definition) => {
                    let wanted = Wanted {
                        definition,
                        managed_by: ManagedBy::Api,
                        version: entry.version,
                        draining: entry.draining,
                    };
                    subscriptions.insert(name.to_owned(), wanted);
                }
                Err(error) => tracing::error!(subscription = %name, %error, "unreadable catalog entry; left out"),
            }
        }
        Self { subscriptions, catalog_generation: catalog.generation, catalog_position: catalog.position }
    }

    pub fn definitions(&self) -> BTreeMap<String, SubscriptionConfig> {
        self.subscriptions.iter().map(|(name, w)| (name.clone(), w.definition.clone())).collect()
    }

    /// The topology for these subscriptions; a draining one keeps its
    /// queues but loses its bindings.
    pub fn plan(&self, config: &Config) -> Topology {
        let planned: Vec<(&String, SubscriptionConfig)> = self
            .subscriptions
            .iter()
            .map(|(name, w)| {
                let mut definition = w.definition.clone();
                if w.draining {
                    definition.topics.clear();
                }
                (name, definition)
            })
            .collect();
        Topology::plan(config, planned.iter().map(|(name, definition)| (*name, definition)))
    }
}

/// How often retired retry queues are checked for emptiness.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a retry queue stays after it left the schedule, at least: longer
/// than a replaced worker takes to finish its attempts (their timeouts are
/// seconds), so none of them still puts events into it.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

pub struct Reconciler {
    /// The file's configuration as last (re)loaded.
    config: watch::Receiver<Arc<Config>>,
    broker: Broker,
    catalog: Catalog,
    /// `None` in a process without workers (`--role ingress`).
    workers: Option<WorkerSet>,
    desired: watch::Sender<Arc<Desired>>,
}

impl Reconciler {
    /// Applies the file's subscriptions at once, then follows the catalog
    /// until `token` is cancelled, when it stops the workers (draining).
    pub fn spawn(
        config: watch::Receiver<Arc<Config>>,
        broker: Broker,
        catalog: Catalog,
        workers: Option<WorkerSet>,
        token: CancellationToken,
    ) -> (watch::Receiver<Arc<Desired>>, JoinHandle<()>) {
        let initial = Desired::build(&config.borrow(), &State::default());
        let (desired, rx) = watch::channel(Arc::new(initial));
        let mut this = Self { config, broker, catalog, workers, desired };
        if let Some(workers) = &mut this.workers {
            workers.reconcile(&this.desired.borrow().definitions());
        }
        (rx, tokio::spawn(this.run(token)))
    }

    async fn run(mut self, token: CancellationToken) {
        let mut states = self.catalog.watch();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let state = states.borrow_and_update().clone();
            let config = self.config.borrow_and_update().clone();
            self.apply(&config, &state).await;
            // Sweeps come back here; a change re-applies, the end ends.
            let go_on = loop {
                tokio::select! {
                    _ = token.cancelled() => break false,
                    changed = states.changed() => break changed.is_ok(),
                    changed = self.config.changed() => break changed.is_ok(),
                    _ = sweep.tick() => self.sweep_retired().await,
                }
            };
            if !go_on {
                break;
            }
        }
        if let Some(workers) = self.workers.take() {
            let left = workers.shutdown().await;
            if left > 0 {
                tracing::warn!(left, "workers did not stop in time");
            }
        }
    }

    /// Deletes the retired retry queues that have emptied (see
    /// [`Topology::sweep_retired`]).
    async fn sweep_retired(&mut self) {
        let current = self.broker.topology();
        let Some(session) = self.broker.session().filter(|_| current.has_retired()) else { return };
        let mut swept = (*current).clone();
        if swept.sweep_retired(&session.connection, RETIRE_GRACE, self.broker.operation_timeout).await {
            self.broker.set_topology(Arc::new(swept));
        }
    }

    async fn apply(&mut self, config: &Config, state: &State) {
        let desired = Desired::build(config, state);
        let current = self.broker.topology();
        let mut planned = desired.plan(config);
        planned.retire_from(&current);
        let planned = Arc::new(planned);
        if let Some(session) = self.broker.session() {
            let timeout = self.broker.operation_timeout;
            if let Err(error) = planned.reconcile(&current, &session.connection, timeout).await {
                tracing::warn!(%error, "applying subscription changes to RabbitMQ failed; the next reconnect declares them");
            }
        }
        self.broker.set_topology(planned);
        let definitions = desired.definitions();
        metrics::gauge!(metric::CATALOG_POSITION, "state" => "applied").set(desired.catalog_position as f64);
        self.desired.send_replace(Arc::new(desired));
        if let Some(workers) = &mut self.workers {
            workers.reconcile(&definitions);
        }
    }
}
