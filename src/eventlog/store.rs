//! Where the log is kept, and the questions it answers. Two backends behind
//! one handle: an embedded SQLite file (the default; one process writes it)
//! and PostgreSQL (for several processes: each one writes and answers).
//!
//! Both keep one row per record, the record itself as JSON beside the
//! columns the queries filter on, in **one partition per UTC day** of the
//! record's time. Retention (`max_age`) drops whole partitions: no row is
//! deleted one by one, so it costs the same at a thousand rows as at a
//! hundred million.

use std::time::Duration;

use super::{Record, postgres, sqlite};

/// A partition's width.
pub const DAY_MS: u64 = 86_400_000;

/// Which attempts [`Store::attempts`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatusFilter {
    Any,
    /// Answered 2xx.
    Succeeded,
    /// Anything else, no answer included.
    Failed,
    /// Answered exactly this.
    Exactly(u16),
}

/// Where a page ends: `at_ms:row` of its last row (`row` is unique within
/// the row's partition, and the partition follows from `at_ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub at_ms: u64,
    pub row: i64,
}

impl Cursor {
    /// `after` as SQL bounds `(at_ms, row)`: rows strictly before it
    /// (everything without one).
    pub fn before(after: Option<Cursor>) -> (i64, i64) {
        match after {
            Some(cursor) => (cursor.at_ms as i64, cursor.row),
            None => (i64::MAX, i64::MAX),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.at_ms, self.row)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        let (at, row) = text.split_once(':').ok_or(())?;
        Ok(Self { at_ms: at.parse().map_err(drop)?, row: row.parse().map_err(drop)? })
    }
}

/// A search over received events (`GET /api/v1/events`).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub source: Option<String>,
    /// An event type; `*` matches any run of characters.
    pub event_type: Option<String>,
    /// Events routed to this subscription (that it recorded anything for).
    pub subscription: Option<String>,
    /// With `subscription`: events that had this outcome for it at some
    /// point (`dead_lettered` finds one later replayed and delivered too).
    pub outcome: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// A page query over one subscription's attempts.
#[derive(Debug, Clone)]
pub struct AttemptQuery {
    pub subscription: String,
    pub status: StatusFilter,
    /// Milliseconds since the epoch, inclusive.
    pub from_ms: u64,
    /// Milliseconds since the epoch, exclusive.
    pub to_ms: u64,
    pub limit: usize,
    pub after: Option<Cursor>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the event log's store task failed")]
    Task,
}

/// A handle on the store. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

/// Runs a blocking SQLite call off the async threads.
async fn blocking<T: Send + 'static>(
    store: &sqlite::Store,
    call: impl FnOnce(&sqlite::Store) -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || call(&store)).await.map_err(|_| StoreError::Task)??)
}

impl Store {
    /// Stores `records` in one transaction.
    pub async fn write(&self, records: std::sync::Arc<[Record]>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => blocking(store, move |s| s.write(&records)).await,
            Store::Postgres(store) => Ok(store.write(&records).await?),
        }
    }

    /// Everything recorded about `event`, oldest first.
    pub async fn timeline(&self, event: String) -> Result<Vec<Record>, StoreError> {
        match self {
            Store::Sqlite(store) => blocking(store, move |s| s.timeline(&event)).await,
            Store::Postgres(store) => Ok(store.timeline(&event).await?),
        }
    }

    /// One subscription's attempts in a time window, newest first, a page
    /// at a time.
    pub async fn attempts(&self, query: AttemptQuery) -> Result<Vec<(Cursor, Record)>, StoreError> {
        match self {
            Store::Sqlite(store) => blocking(store, move |s| s.attempts(&query)).await,
            Store::Postgres(store) => Ok(store.attempts(&query).await?),
        }
    }

    /// Received events matching `query`, newest first, a page at a time;
    /// each row is the event's `received` record.
    pub async fn search(&self, query: EventQuery) -> Result<Vec<(Cursor, Record)>, StoreError> {
        match self {
            Store::Sqlite(store) => blocking(store, move |s| s.search(&query)).await,
            Store::Postgres(store) => Ok(store.search(&query).await?),
        }
    }

    /// Drops every partition whose day ended before `before_ms`; returns
    /// how many.
    pub async fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(store) => blocking(store, move |s| s.prune(before_ms)).await,
            Store::Postgres(store) => Ok(store.prune(before_ms).await?),
        }
    }
}

/// How often retention looks for a day to drop.
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Opens the configured store (creating its tables if missing).
pub async fn open(config: &crate::config::EventLogConfig, namespace: &str) -> Result<Store, StoreError> {
    use crate::config::EventLogBackend;
    match config.backend {
        EventLogBackend::Sqlite => {
            let path = config.path.clone();
            let store = tokio::task::spawn_blocking(move || sqlite::Store::open(&path))
                .await
                .map_err(|_| StoreError::Task)??;
            Ok(Store::Sqlite(store))
        }
        EventLogBackend::Postgres => {
            let url = config.url.as_ref().map(|u| u.expose()).unwrap_or_default();
            let table = crate::config::EventLogConfig::table(namespace);
            Ok(Store::Postgres(postgres::Store::open(url, &table).await?))
        }
    }
}

/// Enforces `max_age` every `every` until `token` is cancelled: partitions
/// whose whole day is older than `max_age` go.
pub fn spawn_retention(
    store: Store,
    max_age: Duration,
    every: Duration,
    token: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let before = super::now_ms().saturating_sub(max_age.as_millis() as u64);
            match store.prune(before).await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, ?max_age, "event log: dropped partitions past max_age"),
                Err(error) => tracing::warn!(%error, "event log retention failed; trying again later"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// The UTC day (days since the epoch) `at_ms` falls in.
pub fn day(at_ms: u64) -> u64 {
    at_ms / DAY_MS
}

/// The columns a record is filed under, besides its JSON.
pub struct Columns<'a> {
    pub status: Option<u16>,
    pub source: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub outcome: Option<&'a str>,
}

impl<'a> Columns<'a> {
    pub fn of(record: &'a Record) -> Self {
        use super::What;
        let mut columns = Columns { status: None, source: None, event_type: None, outcome: None };
        match &record.what {
            What::Attempt { status, .. } => columns.status = *status,
            What::Received { source, event_type, .. } => {
                (columns.source, columns.event_type) = (Some(source.as_str()), Some(event_type.as_str()))
            }
            What::Outcome { .. } | What::Refused { .. } => {}
        }
        columns.outcome = record.what.outcome();
        columns
    }
}
