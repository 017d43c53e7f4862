//! Logs and metrics.
//!
//! Metric names live in [`metric`], and the README's metrics table lists
//! them with their labels. Labels are fixed and low-cardinality (source,
//! subscription, outcome, reason): never an event id or a URL.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod metric {
    /// Counter; labels `source`, `outcome` (`accepted` or a rejection reason).
    pub const INGRESS_REQUESTS: &str = "hookwire_ingress_requests_total";
    /// Histogram (seconds); label `outcome` (`confirmed` or a failure reason).
    pub const PUBLISH_DURATION: &str = "hookwire_publish_duration_seconds";
    /// Counter; label `source`. Accepted events that matched no subscription.
    pub const UNROUTED: &str = "hookwire_unrouted_total";
    /// Counter; labels `subscription`, `outcome`.
    pub const DELIVERIES: &str = "hookwire_deliveries_total";
    /// Histogram (seconds) of one HTTP attempt; labels `subscription`, `outcome`.
    pub const DELIVERY_DURATION: &str = "hookwire_delivery_duration_seconds";
    /// Histogram (seconds) from ingress receipt to successful delivery; label `subscription`.
    pub const END_TO_END: &str = "hookwire_end_to_end_seconds";
    /// Counter; labels `subscription`, `reason`.
    pub const DEAD_LETTERED: &str = "hookwire_dead_lettered_total";
    /// Gauge: 1 while connected to RabbitMQ with the topology declared.
    pub const BROKER_CONNECTED: &str = "hookwire_broker_connected";
    /// Gauge: 1 while RabbitMQ blocks this process's publishes (resource alarm).
    pub const BROKER_BLOCKED: &str = "hookwire_broker_blocked";
    /// Counter: connections lost and re-established.
    pub const BROKER_RECONNECTS: &str = "hookwire_broker_reconnects_total";
    /// Gauge; label `subscription`: deliveries being processed now.
    pub const IN_FLIGHT: &str = "hookwire_deliveries_in_flight";
    /// Gauge; label `subscription`: 1 while the circuit breaker is open.
    pub const CIRCUIT_OPEN: &str = "hookwire_circuit_open";
    /// Counter; labels `subscription`, `state` (`open`, `closed`).
    pub const CIRCUIT_TRANSITIONS: &str = "hookwire_circuit_transitions_total";
    /// Gauge; label `subscription`: dead letters not yet replayed or purged
    /// (as this process has read the letters stream).
    pub const DEAD_LETTERS: &str = "hookwire_dead_letters";
    /// Gauge: unrouted events not yet replayed or purged.
    pub const UNROUTED_HELD: &str = "hookwire_unrouted_held";
    /// Gauge; labels `subscription`, `queue` (`work`, `retry`): messages
    /// waiting in the subscription's queues, as RabbitMQ last said
    /// (`broker::depth`, workers only).
    pub const QUEUE_MESSAGES: &str = "hookwire_queue_messages";
    pub const QUEUE_CONSUMERS: &str = "hookwire_queue_consumers";
    /// Gauge per subscription: 1 while an operator has it paused.
    pub const PAUSED: &str = "hookwire_subscription_paused";
    /// Counter: audit records that could not be stored.
    pub const AUDIT_FAILURES: &str = "hookwire_audit_failures_total";
    /// Gauge: the catalog log position (offset of the last record + 1) this
    /// process has `state="read"` and `state="applied"` (its topology and
    /// workers run it). Equal across converged processes.
    pub const CATALOG_POSITION: &str = "hookwire_catalog_position";
    /// Counter: event log records dropped before they reached RabbitMQ
    /// (buffer full, publish refused or not confirmed).
    pub const EVENT_LOG_DROPPED: &str = "hookwire_event_log_dropped_total";
    /// Counter: event log records committed to the store.
    pub const EVENT_LOG_WRITTEN: &str = "hookwire_event_log_written_total";
    /// Gauge: at the last commit, how old its oldest record was: how far
    /// behind the queryable log is.
    pub const EVENT_LOG_LAG: &str = "hookwire_event_log_lag_seconds";
    /// Counter: config file reloads by `outcome` (`applied`, `refused`).
    pub const CONFIG_RELOADS: &str = "hookwire_config_reloads_total";
    /// Counter: operator operations by `operation` and `outcome`; the
    /// messages they moved or removed are in `hookwire_operator_messages_total`.
    pub const OPERATIONS: &str = "hookwire_operator_operations_total";
    /// Counter: messages replayed or purged by operators, by `operation`.
    pub const OPERATOR_MESSAGES: &str = "hookwire_operator_messages_total";
}

/// How often histogram samples are folded into their buckets when nobody
/// scrapes. The exporter buffers every observation until then: at 7,000
/// events/s with a handful of histograms per event, one second holds about a
/// megabyte, where no upkeep at all held 28 MiB more every minute.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// How many upkeep passes have completed; lets a test wait for one.
pub fn upkeep_runs() -> u64 {
    UPKEEP_RUNS.load(Ordering::Acquire)
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
/// Several apps in one process (the integration tests) share it.
///
/// It also starts the upkeep thread: metrics-exporter-prometheus keeps every
/// histogram observation until something drains it, and only `render` or
/// `run_upkeep` do. Memory must not depend on whether, or how often,
/// Prometheus scrapes. A plain thread rather than a task because the recorder
/// is process-wide and outlives any one runtime.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test
            // harness); metrics then go there and ours stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                        UPKEEP_RUNS.fetch_add(1, Ordering::Release);
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use metric::*;
    metrics::describe_counter!(INGRESS_REQUESTS, "Webhook requests by source and outcome");
    metrics::describe_histogram!(PUBLISH_DURATION, metrics::Unit::Seconds, "Publish-to-confirm latency");
    metrics::describe_counter!(UNROUTED, "Accepted events that matched no subscription");
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by subscription and outcome");
    metrics::describe_histogram!(DELIVERY_DURATION, metrics::Unit::Seconds, "Duration of one HTTP delivery attempt");
    metrics::describe_histogram!(END_TO_END, metrics::Unit::Seconds, "Ingress receipt to successful delivery");
    metrics::describe_counter!(DEAD_LETTERED, "Events moved to the dead letters");
    metrics::describe_gauge!(BROKER_CONNECTED, "1 while connected to RabbitMQ");
    metrics::describe_counter!(CONFIG_RELOADS, "Config file reloads by outcome");
    metrics::describe_counter!(AUDIT_FAILURES, "Audit records that could not be stored");
    metrics::describe_gauge!(BROKER_BLOCKED, "1 while RabbitMQ blocks publishing (memory or disk alarm)");
    metrics::describe_counter!(BROKER_RECONNECTS, "RabbitMQ connections lost");
    metrics::describe_gauge!(IN_FLIGHT, "Deliveries being processed");
    metrics::describe_gauge!(QUEUE_MESSAGES, "Messages waiting in a subscription's work or retry queues");
    metrics::describe_gauge!(QUEUE_CONSUMERS, "Consumers RabbitMQ counts on a subscription's work queue");
    metrics::describe_gauge!(DEAD_LETTERS, "Dead letters not yet replayed or purged, per subscription");
    metrics::describe_gauge!(UNROUTED_HELD, "Unrouted events not yet replayed or purged");
    metrics::describe_gauge!(CIRCUIT_OPEN, "1 while a subscription's circuit breaker is open");
    metrics::describe_counter!(CIRCUIT_TRANSITIONS, "Circuit breaker state changes");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the tracing subscriber. Level from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}
