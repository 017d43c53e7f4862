//! The event log's query speed (issue 10): `cargo bench --bench eventlog
//! [-- --attempts N] [--backend sqlite|postgres]`. Fills the store (SQLite
//! in a temporary directory, PostgreSQL in a table of its own at
//! `HOOKWIRE_BENCH_POSTGRES`, default the local server; both unless
//! `--backend` says which) with N events (default 1,000,000), each with its two records (received, one
//! attempt that carries its outcome), spread over 7 days and 200 subscriptions, then times:
//! - an event's timeline by id (`GET /api/v1/events/{id}`);
//! - one subscription's attempts in a 1-hour window, a page of 50
//!   (`GET /api/v1/subscriptions/{name}/attempts`);
//! - a search by source and type pattern in a 1-hour window (`GET /api/v1/events`).
//!
//! 1,000 queries of each, random ids, subscriptions and windows; p50/p99.
//! The store is the one hookwire runs (`hookwire::eventlog::Store`), one
//! partition per day as in production.

use std::time::{Duration, Instant};

use hookwire::{
    config::{EventLogBackend, EventLogConfig, Secret},
    eventlog::{AttemptQuery, EventQuery, Record, StatusFilter, Store, What},
};

const DAY_MS: u64 = 24 * 3600 * 1000;
const SPAN_MS: u64 = 7 * DAY_MS;
const SUBSCRIPTIONS: u64 = 200;
const QUERIES: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let events: u64 = value("--attempts").and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let backends = match value("--backend").as_deref() {
        Some("sqlite") => vec![EventLogBackend::Sqlite],
        Some("postgres") => vec![EventLogBackend::Postgres],
        _ => vec![EventLogBackend::Sqlite, EventLogBackend::Postgres],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for backend in backends {
        runtime.block_on(run(backend, events));
    }
}

async fn run(backend: EventLogBackend, events: u64) {
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("HOOKWIRE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let config = EventLogConfig {
        enabled: true,
        backend,
        path: dir.path().join("events.db"),
        url: Some(Secret::new(url.clone())),
        ..Default::default()
    };
    let namespace = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let store = hookwire::eventlog::store::open(&config, &namespace).await.unwrap();
    let start_ms = 1_790_000_000_000u64;
    let step = SPAN_MS / events;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(2 * 10_000);
    for n in 0..events {
        let at_ms = start_ms + n * step;
        let event = format!("evt_{n:09}");
        let subscription = format!("sub-{}", n % SUBSCRIPTIONS);
        let failed = n % 10 == 0;
        batch.push(Record {
            event: event.clone(),
            at_ms,
            event_at_ms: None,
            what: What::Received {
                source: if n % 2 == 0 { "stripe" } else { "github" }.to_owned(),
                event_type: if n % 3 == 0 { "invoice.paid" } else { "customer.updated" }.to_owned(),
                bytes: 1024,
                process: "bench:1".to_owned(),
                routed: vec![subscription.clone()],
            },
        });
        batch.push(Record {
            event,
            at_ms: at_ms + 5,
            event_at_ms: Some(at_ms),
            what: What::Attempt {
                subscription,
                attempt: 1,
                duration_ms: 12.5,
                status: Some(if failed { 503 } else { 200 }),
                error: failed.then(|| "503 Service Unavailable".to_owned()),
                response: failed.then(|| "upstream busy".to_owned()),
                outcome: Some(if failed { "retrying" } else { "delivered" }.to_owned()),
                reason: None,
            },
        });
        if batch.len() >= 30_000 {
            store.write(std::mem::take(&mut batch).into()).await.unwrap();
        }
    }
    store.write(batch.into()).await.unwrap();
    let fill = started.elapsed();
    if backend == EventLogBackend::Postgres {
        // What autovacuum does within a minute of a bulk load; without
        // statistics the planner guesses, and a fresh table is all guesses.
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("ANALYZE {}", EventLogConfig::table(&namespace))).await.unwrap();
    }
    let size = std::fs::metadata(dir.path().join("events.db")).map(|m| m.len()).unwrap_or(0);
    println!(
        "{backend:?} event log store: {events} events, {} records ({events} attempts), filled in {:.1} s ({:.0} records/s), file {:.0} MiB",
        2 * events,
        fill.as_secs_f64(),
        (2 * events) as f64 / fill.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );

    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let hour = 3600 * 1000;
    let report = |label: &str, mut took: Vec<Duration>, rows: usize| {
        took.sort();
        let p = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({:.1} rows per query)",
            ms(p(0.5)),
            ms(p(0.99)),
            ms(p(1.0)),
            rows as f64 / QUERIES as f64
        );
    };
    // Times QUERIES runs of `$query` (an expression giving a row count).
    macro_rules! time {
        ($label:expr, $query:expr) => {{
            let mut took = Vec::with_capacity(QUERIES);
            let mut rows = 0;
            for _ in 0..QUERIES {
                let started = Instant::now();
                rows += $query;
                took.push(started.elapsed());
            }
            report($label, took, rows);
        }};
    }
    time!("timeline by event id", store.timeline(format!("evt_{:09}", random(events))).await.unwrap().len());
    time!("one subscription's attempts, 1-hour window, page of 50", {
        let from_ms = start_ms + random(SPAN_MS - hour);
        let query = AttemptQuery {
            subscription: format!("sub-{}", random(SUBSCRIPTIONS)),
            status: StatusFilter::Any,
            from_ms,
            to_ms: from_ms + hour,
            limit: 50,
            after: None,
        };
        store.attempts(query).await.unwrap().len()
    });
    time!("one subscription's failed attempts, 1-day window, page of 50", {
        let from_ms = start_ms + random(SPAN_MS - DAY_MS);
        let query = AttemptQuery {
            subscription: format!("sub-{}", random(SUBSCRIPTIONS)),
            status: StatusFilter::Failed,
            from_ms,
            to_ms: from_ms + DAY_MS,
            limit: 50,
            after: None,
        };
        store.attempts(query).await.unwrap().len()
    });
    time!("search source + type pattern, 1-hour window, page of 50", {
        let from_ms = start_ms + random(SPAN_MS - hour);
        let query = EventQuery {
            source: Some("stripe".to_owned()),
            event_type: Some("invoice.*".to_owned()),
            from_ms,
            to_ms: from_ms + hour,
            limit: 50,
            ..Default::default()
        };
        store.search(query).await.unwrap().len()
    });
    time!("search a subscription's events, 1-day window, page of 50", {
        let from_ms = start_ms + random(SPAN_MS - DAY_MS);
        let query = EventQuery {
            subscription: Some(format!("sub-{}", random(SUBSCRIPTIONS))),
            from_ms,
            to_ms: from_ms + DAY_MS,
            limit: 50,
            ..Default::default()
        };
        store.search(query).await.unwrap().len()
    });
    time!("search a subscription's events by outcome (retrying), whole span, page of 50", {
        let query = EventQuery {
            subscription: Some(format!("sub-{}", random(SUBSCRIPTIONS))),
            outcome: Some("retrying".to_owned()),
            from_ms: 0,
            to_ms: u64::MAX,
            limit: 50,
            ..Default::default()
        };
        store.search(query).await.unwrap().len()
    });
    if let Store::Postgres(store) = &store {
        store.drop_all().await.unwrap();
    }
}
