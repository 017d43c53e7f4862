//! The embedded store: one SQLite file, written by one process.
//!
//! One row per record; the record itself is kept as JSON, with the columns
//! the queries filter on beside it. Indexed by event id (a timeline) and by
//! subscription and time (a subscription's attempts).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, params};

use super::{Record, What};

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

/// Where a page of attempts ends: `at_ms:rowid` of its last row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub at_ms: u64,
    pub row: i64,
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

/// A handle on the file. Cheap to clone; calls block, so async callers go
/// through `spawn_blocking`.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let connection = Connection::open(path)?;
        // WAL: readers (the API) do not wait for the writer, and a commit
        // is one sequential write.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS event_log (
                 event_id TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 subscription TEXT,
                 status INTEGER,
                 source TEXT,
                 event_type TEXT,
                 outcome TEXT,
                 record TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS event_log_kind ON event_log (kind, at_ms);
             CREATE INDEX IF NOT EXISTS event_log_source ON event_log (source, at_ms) WHERE source IS NOT NULL;
             CREATE INDEX IF NOT EXISTS event_log_event ON event_log (event_id);
             CREATE INDEX IF NOT EXISTS event_log_subscription ON event_log (subscription, at_ms);",
        )?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Stores `records` in one transaction.
    pub fn write(&self, records: &[Record]) -> Result<(), rusqlite::Error> {
        let mut connection = self.connection.lock().expect("event log lock");
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO event_log (event_id, at_ms, kind, subscription, status, source, event_type, outcome, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for record in records {
                let json = serde_json::to_string(record).expect("records serialize");
                let (mut status, mut source, mut event_type, mut outcome) = (None, None, None, None);
                match &record.what {
                    What::Attempt { status: s, .. } => status = *s,
                    What::Received { source: s, event_type: t, .. } => (source, event_type) = (Some(s), Some(t)),
                    What::Outcome { outcome: o, .. } => outcome = Some(o),
                }
                insert.execute(params![
                    record.event,
                    record.at_ms as i64,
                    record.what.kind(),
                    record.what.subscription(),
                    status,
                    source,
                    event_type,
                    outcome,
                    json
                ])?;
            }
        }
        transaction.commit()
    }

    /// One subscription's attempts in a time window, newest first, a page
    /// at a time. Served by the (subscription, at_ms) index.
    pub fn attempts(&self, query: &AttemptQuery) -> Result<Vec<(Cursor, Record)>, rusqlite::Error> {
        let status = match query.status {
            StatusFilter::Any => "",
            StatusFilter::Succeeded => " AND status BETWEEN 200 AND 299",
            StatusFilter::Failed => " AND (status IS NULL OR status NOT BETWEEN 200 AND 299)",
            StatusFilter::Exactly(_) => " AND status = ?6",
        };
        let sql = format!(
            "SELECT at_ms, rowid, record FROM event_log \
             WHERE subscription = ?1 AND kind = 'attempt' AND at_ms >= ?2 AND at_ms < ?3 \
             AND (at_ms < ?4 OR (at_ms = ?4 AND rowid < ?5)){status} \
             ORDER BY at_ms DESC, rowid DESC LIMIT {}",
            query.limit
        );
        let (before_at, before_row) = match query.after {
            Some(cursor) => (cursor.at_ms as i64, cursor.row),
            None => (i64::MAX, i64::MAX),
        };
        let connection = self.connection.lock().expect("event log lock");
        let mut select = connection.prepare_cached(&sql)?;
        let base = params![
            query.subscription,
            query.from_ms as i64,
            query.to_ms.min(i64::MAX as u64) as i64,
            before_at,
            before_row
        ];
        let map =
            |row: &rusqlite::Row<'_>| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?));
        let rows: Vec<(i64, i64, String)> = match query.status {
            StatusFilter::Exactly(code) => {
                let mut all: Vec<&dyn rusqlite::ToSql> = base.to_vec();
                all.push(&code);
                select.query_map(all.as_slice(), map)?.collect::<Result<_, _>>()?
            }
            _ => select.query_map(base, map)?.collect::<Result<_, _>>()?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(at, row, json)| {
                let record = serde_json::from_str(&json).ok()?;
                Some((Cursor { at_ms: at as u64, row }, record))
            })
            .collect())
    }

    /// Received events matching `query`, newest first, a page at a time;
    /// each row is the event's `received` record.
    pub fn search(&self, query: &EventQuery) -> Result<Vec<(Cursor, Record)>, rusqlite::Error> {
        let (before_at, before_row) = match query.after {
            Some(cursor) => (cursor.at_ms as i64, cursor.row),
            None => (i64::MAX, i64::MAX),
        };
        let mut sql = "SELECT at_ms, rowid, record FROM event_log \
                       WHERE kind = 'received' AND at_ms >= ?1 AND at_ms < ?2 \
                       AND (at_ms < ?3 OR (at_ms = ?3 AND rowid < ?4))"
            .to_owned();
        let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
            Box::new(query.from_ms as i64),
            Box::new(query.to_ms.min(i64::MAX as u64) as i64),
            Box::new(before_at),
            Box::new(before_row),
        ];
        let mut bind = |clause: &str, value: String, values: &mut Vec<Box<dyn rusqlite::ToSql>>| {
            values.push(Box::new(value));
            sql += &clause.replace('?', &format!("?{}", values.len()));
        };
        if let Some(source) = &query.source {
            bind(" AND source = ?", source.clone(), &mut values);
        }
        if let Some(kind) = &query.event_type {
            // GLOB: `*` as in topic-like patterns, case-sensitive like the types.
            let pattern = kind.replace('[', "[[]").replace('?', "[?]");
            bind(" AND event_type GLOB ?", pattern, &mut values);
        }
        if let Some(subscription) = &query.subscription {
            // Driven from the subscription's own rows (its index), then to
            // each event's `received` row by event id: a scan of every
            // received row checking membership took 0.5 s at a million.
            values.push(Box::new(subscription.clone()));
            let mut inner = format!(
                " AND rowid IN (SELECT r.rowid FROM event_log s JOIN event_log r ON r.event_id = s.event_id \
                 WHERE s.subscription = ?{} AND r.kind = 'received'",
                values.len()
            );
            if let Some(outcome) = &query.outcome {
                values.push(Box::new(outcome.clone()));
                inner += &format!(" AND s.kind = 'outcome' AND s.outcome = ?{}", values.len());
            }
            sql += &inner;
            sql += ")";
        }
        sql += &format!(" ORDER BY at_ms DESC, rowid DESC LIMIT {}", query.limit);
        let connection = self.connection.lock().expect("event log lock");
        let mut select = connection.prepare(&sql)?;
        let params: Vec<&dyn rusqlite::ToSql> = values.iter().map(|v| v.as_ref()).collect();
        let rows = select
            .query_map(params.as_slice(), |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, row, json)| Some((Cursor { at_ms: at as u64, row }, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// Everything recorded about `event`, oldest first.
    pub fn timeline(&self, event: &str) -> Result<Vec<Record>, rusqlite::Error> {
        let connection = self.connection.lock().expect("event log lock");
        let mut select =
            connection.prepare_cached("SELECT record FROM event_log WHERE event_id = ?1 ORDER BY at_ms, rowid")?;
        let rows = select.query_map(params![event], |row| row.get::<_, String>(0))?;
        let mut records = Vec::new();
        for json in rows {
            if let Ok(record) = serde_json::from_str(&json?) {
                records.push(record);
            }
        }
        Ok(records)
    }
}
