//! The embedded store: one SQLite file with a table per UTC day
//! (`event_log_d{day}`), shared by the processes of one host (each commits
//! its own records; SQLite's lock takes turns, `busy_timeout` waits them).
//!
//! Queries walk the day tables newest first and stop once a page is full,
//! so a page costs what it would in one table; a timeline looks the id up
//! in each day (an index probe each, a handful of days). Dropping a day is
//! `DROP TABLE`. Indexes per day: event id of the rows without an arrival
//! time (`received`, `refused`), arrival time and event id of the rest
//! (attempts and outcomes: timelines), subscription and time (a
//! subscription's attempts), time of the `received` rows, source and time.
//! Each index is partial where it can be, and an attempt carries its
//! outcome in the same row (two rows for a delivered event, not three):
//! index entries are what a commit writes most, and an index whose keys
//! come in random order (event ids) dirties a page per row, so only one
//! row per event goes in the one by id.
//!
//! Day tables made before session 16 ([`Layout::ById`]) have one index on
//! the event id of every row and no arrival column; they are read and
//! written as they are until retention drops them.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, ToSql, params};

use super::{
    Record,
    store::{AttemptQuery, Columns, Cursor, DAY_MS, EventQuery, StatusFilter, day},
};

/// A handle on the file. Cheap to clone; calls block (see `store::blocking`).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    connection: Connection,
    /// The days that have a table, and how each is laid out.
    days: BTreeMap<u64, Layout>,
}

/// How a day table files its rows by event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// Before session 16: every row under its event id.
    ById,
    /// Rows with an `event_at_ms` (attempts, outcomes) under (that, event
    /// id); the others (`received`, `refused`) under the event id.
    ByArrival,
}

impl Layout {
    /// The condition that keeps a query on `column`'s table to the rows
    /// filed by event id alone (`received`, `refused`), so SQLite can use
    /// that partial index: `column` is the table's `event_at_ms`, as the
    /// query names it. Nothing in the old layout, where every row is.
    fn filed_by_id(self, column: &str) -> String {
        match self {
            Layout::ById => String::new(),
            Layout::ByArrival => format!(" AND {column} IS NULL"),
        }
    }
}

fn table(day: u64) -> String {
    format!("event_log_d{day}")
}

/// Whether SQLite says the file is damaged or not a database at all.
fn is_corrupt(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    matches!(error.sqlite_error_code(), Some(DatabaseCorrupt | NotADatabase))
}

/// The days that have a table in the file, with their layouts (read from
/// the table's definition).
fn day_tables(connection: &Connection) -> Result<BTreeMap<u64, Layout>, rusqlite::Error> {
    let mut select = connection
        .prepare_cached("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name GLOB 'event_log_d[0-9]*'")?;
    let tables = select
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tables
        .iter()
        .filter_map(|(name, sql)| {
            let layout = if sql.contains("event_at_ms") { Layout::ByArrival } else { Layout::ById };
            Some((name.strip_prefix("event_log_d")?.parse().ok()?, layout))
        })
        .collect())
}

impl Store {
    /// Opens (or creates) the file. A file SQLite finds corrupt or not a
    /// database (what a power loss can leave, see below) is moved aside
    /// as `PATH.corrupt-MILLIS` and a new one started: the log is a record
    /// of what the pipeline did, and must not keep it from starting.
    pub fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        match Self::open_file(path) {
            Err(error) if is_corrupt(&error) => {
                let aside = format!("{}.corrupt-{}", path.display(), super::now_ms());
                tracing::error!(%error, path = %path.display(), %aside, "event log file unreadable; moved aside, starting a new one");
                let _ = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Self::open_file(path)
            }
            other => other,
        }
    }

    fn open_file(path: &Path) -> Result<Self, rusqlite::Error> {
        let connection = Connection::open(path)?;
        // Another process on the same file (another role on this host, a
        // restart overlapping the old one) waits its turn instead of failing.
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers (the API) do not wait for the writers, and a commit
        // is one sequential write.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // No fsync, at commits or checkpoints. A committed record is in the
        // OS's hands, so a killed process loses nothing; an OS crash or a
        // power loss can lose the last records, or leave the file unreadable
        // (`open` then starts a new one). With `NORMAL` every checkpoint's
        // fsync (tens of MiB) queued behind RabbitMQ's own fsyncs on the same
        // disk: +2 ms on the end-to-end p99 at 1,000/s and 14% of saturated
        // throughput, against +0.06 ms and 9% without (docs/BENCHMARKS.md).
        // A log that must outlive its host's power belongs in PostgreSQL.
        connection.pragma_update(None, "synchronous", "OFF")?;
        // A checkpoint copies each page changed since the last one into the
        // file once, however often it changed: every 10,000 pages (40 MiB of
        // WAL) instead of SQLite's 1,000 rewrites the hot pages (the day's
        // newest rows and index leaves) a tenth as often.
        connection.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let days = day_tables(&connection)?;
        Ok(Self { inner: Arc::new(Mutex::new(Inner { connection, days })) })
    }

    /// Locks the handle with its list of days brought up to date: the
    /// other processes on this file create and drop days too.
    fn current(&self) -> Result<std::sync::MutexGuard<'_, Inner>, rusqlite::Error> {
        let mut inner = self.inner.lock().expect("event log lock");
        inner.days = day_tables(&inner.connection)?;
        Ok(inner)
    }

    /// Stores `records` in one transaction, each in its day's table.
    pub fn write(&self, records: &[Record]) -> Result<(), rusqlite::Error> {
        let mut inner = self.inner.lock().expect("event log lock");
        let result = Self::write_locked(&mut inner, records);
        if result.is_err() {
            // Perhaps another process dropped a day this one still knew:
            // the next write creates what is missing again.
            inner.days.clear();
        }
        result
    }

    fn write_locked(inner: &mut Inner, records: &[Record]) -> Result<(), rusqlite::Error> {
        let Inner { connection, days } = inner;
        // IMMEDIATE: take the write lock up front, waiting `busy_timeout`
        // for another process's commit. A deferred transaction that starts
        // with a read (`CREATE TABLE IF NOT EXISTS` of a table that exists)
        // and then writes gets SQLITE_BUSY at once, without waiting.
        let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for record in records {
            let day = day(record.at_ms);
            let layout = match days.get(&day) {
                Some(&layout) => layout,
                None => {
                    let t = table(day);
                    transaction.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS {t} (
                             event_id TEXT NOT NULL,
                             at_ms INTEGER NOT NULL,
                             kind TEXT NOT NULL,
                             subscription TEXT,
                             status INTEGER,
                             source TEXT,
                             event_type TEXT,
                             outcome TEXT,
                             record TEXT NOT NULL,
                             event_at_ms INTEGER
                         );
                         CREATE INDEX IF NOT EXISTS {t}_received ON {t} (at_ms) WHERE kind = 'received';
                         CREATE INDEX IF NOT EXISTS {t}_source ON {t} (source, at_ms) WHERE source IS NOT NULL;
                         CREATE INDEX IF NOT EXISTS {t}_event ON {t} (event_id) WHERE event_at_ms IS NULL;
                         CREATE INDEX IF NOT EXISTS {t}_arrival ON {t} (event_at_ms, event_id) WHERE event_at_ms IS NOT NULL;
                         CREATE INDEX IF NOT EXISTS {t}_subscription ON {t} (subscription, at_ms) WHERE subscription IS NOT NULL;"
                    ))?;
                    // Another process may have made it first, the old way.
                    let layout = day_tables(&transaction)?.get(&day).copied().unwrap_or(Layout::ByArrival);
                    // Known before the commit: if it fails, `write` forgets
                    // every day, and the next write looks again.
                    days.insert(day, layout);
                    layout
                }
            };
            let json = serde_json::to_string(record).expect("records serialize");
            let columns = Columns::of(record);
            let values = params![
                record.event,
                record.at_ms as i64,
                record.what.kind(),
                record.what.subscription(),
                columns.status,
                columns.source,
                columns.event_type,
                columns.outcome,
                json,
                record.event_at_ms.map(|at| at as i64)
            ];
            match layout {
                Layout::ByArrival => transaction
                    .prepare_cached(&format!(
                        "INSERT INTO {} (event_id, at_ms, kind, subscription, status, source, event_type, outcome, \
                         record, event_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        table(day)
                    ))?
                    .execute(values)?,
                Layout::ById => transaction
                    .prepare_cached(&format!(
                        "INSERT INTO {} (event_id, at_ms, kind, subscription, status, source, event_type, outcome, \
                         record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        table(day)
                    ))?
                    .execute(&values[..9])?,
            };
        }
        transaction.commit()?;
        Ok(())
    }

    /// The days with a table that overlap `[from_ms, to_ms)`, newest first.
    fn days_between(inner: &Inner, from_ms: u64, to_ms: u64) -> Vec<u64> {
        if to_ms == 0 || to_ms <= from_ms {
            return Vec::new();
        }
        inner.days.range(day(from_ms)..=day(to_ms - 1)).rev().map(|(&day, _)| day).collect()
    }

    /// One subscription's attempts in a time window, newest first, a page
    /// at a time. Served by each day's (subscription, at_ms) index.
    pub fn attempts(&self, query: &AttemptQuery) -> Result<Vec<(Cursor, Record)>, rusqlite::Error> {
        let status = match query.status {
            StatusFilter::Any => "",
            StatusFilter::Succeeded => " AND status BETWEEN 200 AND 299",
            StatusFilter::Failed => " AND (status IS NULL OR status NOT BETWEEN 200 AND 299)",
            StatusFilter::Exactly(_) => " AND status = ?6",
        };
        let (before_at, before_row) = Cursor::before(query.after);
        let code = match query.status {
            StatusFilter::Exactly(code) => Some(code),
            _ => None,
        };
        let inner = self.current()?;
        let mut out = Vec::new();
        for day in Self::days_between(&inner, query.from_ms, query.to_ms.min(before_at as u64 + 1)) {
            let sql = format!(
                "SELECT at_ms, rowid, record FROM {} \
                 WHERE subscription = ?1 AND kind = 'attempt' AND at_ms >= ?2 AND at_ms < ?3 \
                 AND (at_ms < ?4 OR (at_ms = ?4 AND rowid < ?5)){status} \
                 ORDER BY at_ms DESC, rowid DESC LIMIT {}",
                table(day),
                query.limit - out.len()
            );
            let mut select = inner.connection.prepare_cached(&sql)?;
            let mut values: Vec<&dyn ToSql> = Vec::new();
            let to = query.to_ms.min(i64::MAX as u64) as i64;
            let from = query.from_ms as i64;
            values.extend([&query.subscription as &dyn ToSql, &from, &to, &before_at, &before_row]);
            if let Some(code) = &code {
                values.push(code);
            }
            out.extend(rows(&mut select, values.as_slice())?);
            if out.len() >= query.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Received events matching `query`, newest first, a page at a time;
    /// each row is the event's `received` record.
    pub fn search(&self, query: &EventQuery) -> Result<Vec<(Cursor, Record)>, rusqlite::Error> {
        let (before_at, before_row) = Cursor::before(query.after);
        let inner = self.current()?;
        let days = Self::days_between(&inner, query.from_ms, query.to_ms.min(before_at as u64 + 1));
        let mut out = Vec::new();
        for (i, &day) in days.iter().enumerate() {
            let layout = inner.days[&day];
            let by_id = layout.filed_by_id("x.event_at_ms");
            let mut sql = format!(
                "SELECT at_ms, rowid, record FROM {t} \
                 WHERE kind = 'received' AND at_ms >= ?1 AND at_ms < ?2 \
                 AND (at_ms < ?3 OR (at_ms = ?3 AND rowid < ?4)) \
                 AND NOT EXISTS (SELECT 1 FROM {t} x WHERE x.event_id = {t}.event_id \
                                 AND x.at_ms = {t}.at_ms AND x.kind = 'refused'{by_id})",
                t = table(day)
            );
            let from = query.from_ms as i64;
            let to = query.to_ms.min(i64::MAX as u64) as i64;
            let mut values: Vec<&dyn ToSql> = vec![&from, &to, &before_at, &before_row];
            if let Some(source) = &query.source {
                values.push(source);
                sql += &format!(" AND source = ?{}", values.len());
            }
            // GLOB: `*` as in topic-like patterns, case-sensitive like the types.
            let pattern = query.event_type.as_ref().map(|t| t.replace('[', "[[]").replace('?', "[?]"));
            if let Some(pattern) = &pattern {
                values.push(pattern);
                sql += &format!(" AND event_type GLOB ?{}", values.len());
            }
            if let Some(subscription) = &query.subscription {
                // Driven from the subscription's own rows (its index), then
                // to each event's `received` row by event id: a scan of every
                // received row checking membership took 0.5 s at a million.
                // An event's later records may sit in a later day: this day
                // and every newer one are asked (`days` is newest first).
                values.push(subscription);
                let mut filter = format!("subscription = ?{}", values.len());
                if let Some(outcome) = &query.outcome {
                    values.push(outcome);
                    filter += &format!(" AND outcome = ?{}", values.len());
                }
                let ours: Vec<String> = days[..=i]
                    .iter()
                    .map(|&later| format!("SELECT event_id FROM {} WHERE {filter} AND at_ms >= ?1", table(later)))
                    .collect();
                let by_id = layout.filed_by_id("r.event_at_ms");
                sql += &format!(
                    " AND rowid IN (SELECT r.rowid FROM ({}) s JOIN {} r ON r.event_id = s.event_id \
                     WHERE r.kind = 'received'{by_id})",
                    ours.join(" UNION ALL "),
                    table(day)
                );
            }
            sql += &format!(" ORDER BY at_ms DESC, rowid DESC LIMIT {}", query.limit - out.len());
            let mut select = inner.connection.prepare(&sql)?;
            out.extend(rows(&mut select, values.as_slice())?);
            if out.len() >= query.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Everything recorded about `event`, oldest first.
    ///
    /// Two steps: the rows filed under the event id (its `received` and
    /// `refused` rows, in the old layout every row), whose times are the
    /// event's arrivals; then, in each day from the first arrival's on, the
    /// rows filed under (arrival, event id). What happened after an arrival
    /// whose day retention dropped is not found.
    pub fn timeline(&self, event: &str) -> Result<Vec<Record>, rusqlite::Error> {
        let inner = self.current()?;
        // (day, at_ms, rowid): the order of the days, then of the rows in one.
        let mut found: Vec<((u64, i64, i64), String)> = Vec::new();
        let mut arrivals: Vec<i64> = Vec::new();
        for (&day, &layout) in &inner.days {
            let by_id = layout.filed_by_id("event_at_ms");
            let mut select = inner.connection.prepare_cached(&format!(
                "SELECT at_ms, rowid, record, kind FROM {} WHERE event_id = ?1{by_id}",
                table(day)
            ))?;
            let rows = select.query_map(params![event], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?, row.get::<_, String>(3)?))
            })?;
            for row in rows {
                let (at_ms, rowid, json, kind) = row?;
                if matches!(kind.as_str(), "received" | "refused") && !arrivals.contains(&at_ms) {
                    arrivals.push(at_ms);
                }
                found.push(((day, at_ms, rowid), json));
            }
        }
        for &arrival in &arrivals {
            // From the day before the arrival's: a worker's clock a little
            // behind the ingress's may date an attempt just before midnight.
            let first = day(arrival as u64).saturating_sub(1);
            for (&day, _) in inner.days.range(first..).filter(|(_, l)| **l == Layout::ByArrival) {
                let mut select = inner.connection.prepare_cached(&format!(
                    "SELECT at_ms, rowid, record FROM {} WHERE event_at_ms = ?1 AND event_id = ?2",
                    table(day)
                ))?;
                let rows = select.query_map(params![arrival, event], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
                })?;
                for row in rows {
                    let (at_ms, rowid, json) = row?;
                    found.push(((day, at_ms, rowid), json));
                }
            }
        }
        found.sort_by_key(|(order, _)| *order);
        Ok(found.into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()).collect())
    }

    /// Drops the day tables that ended before `before_ms`.
    pub fn prune(&self, before_ms: u64) -> Result<usize, rusqlite::Error> {
        let mut inner = self.current()?;
        let old: Vec<u64> = inner.days.keys().copied().filter(|&d| (d + 1) * DAY_MS <= before_ms).collect();
        for &day in &old {
            inner.connection.execute_batch(&format!("DROP TABLE IF EXISTS {}", table(day)))?;
            inner.days.remove(&day);
        }
        Ok(old.len())
    }
}

/// Runs a `SELECT at_ms, rowid, record`, skipping records it cannot read.
fn rows(select: &mut rusqlite::Statement<'_>, values: &[&dyn ToSql]) -> Result<Vec<(Cursor, Record)>, rusqlite::Error> {
    let raw = select
        .query_map(values, |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(raw
        .into_iter()
        .filter_map(|(at, row, json)| Some((Cursor { at_ms: at as u64, row }, serde_json::from_str(&json).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::{What, now_ms};

    fn received(id: &str) -> Record {
        let what = What::Received {
            source: "acme".into(),
            event_type: "invoice.paid".into(),
            bytes: 10,
            process: "test:1".into(),
            routed: vec![],
        };
        Record::new(id, now_ms(), what)
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let store = Store::open(&path).unwrap();
        store.write(&[received("evt-1")]).unwrap();
        assert_eq!(store.timeline("evt-1").unwrap().len(), 1);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("events.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the unreadable file is kept for a look: {aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), vec![0x5a; 8192]);
    }

    fn attempt(id: &str, arrived: u64, at_ms: u64, subscription: &str) -> Record {
        let what = What::Attempt {
            subscription: subscription.into(),
            attempt: 1,
            duration_ms: 1.0,
            status: Some(200),
            error: None,
            response: None,
            outcome: Some("delivered".into()),
            reason: None,
        };
        Record::after(id, arrived, at_ms, what)
    }

    fn at(id: &str, at_ms: u64) -> Record {
        Record { at_ms, ..received(id) }
    }

    fn described(timeline: &[Record]) -> Vec<(u64, &'static str, Option<&str>)> {
        timeline.iter().map(|r| (r.at_ms, r.what.kind(), r.what.subscription())).collect()
    }

    #[test]
    fn a_timeline_finds_what_followed_each_arrival_across_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("events.db")).unwrap();
        let arrived = 20_000 * DAY_MS + DAY_MS - 10; // ten ms before midnight
        let refused = Record::new("evt-1", arrived - 5_000, What::Refused { reason: "unavailable".into() });
        store
            .write(&[
                Record { at_ms: arrived - 5_000, ..received("evt-1") },
                refused,
                at("evt-1", arrived),
                // Another event that arrived in the same millisecond.
                at("evt-2", arrived),
                attempt("evt-2", arrived, arrived + 3, "billing"),
                attempt("evt-1", arrived, arrived + 4, "billing"),
                // The next day's table, still filed under the arrival.
                attempt("evt-1", arrived, arrived + 20, "audit"),
            ])
            .unwrap();
        let timeline = store.timeline("evt-1").unwrap();
        assert_eq!(
            described(&timeline),
            [
                (arrived - 5_000, "received", None),
                (arrived - 5_000, "refused", None),
                (arrived, "received", None),
                (arrived + 4, "attempt", Some("billing")),
                (arrived + 20, "attempt", Some("audit")),
            ]
        );
        assert_eq!(described(&store.timeline("evt-2").unwrap()).len(), 2);

        // Each step probes an index, and attempts are not filed by id.
        let inner = store.current().unwrap();
        let t = table(20_000);
        let plan = |sql: &str| -> String {
            let mut select = inner.connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = select.query_map([], |row| row.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let by_id = plan(&format!("SELECT record FROM {t} WHERE event_id = 'evt-1' AND event_at_ms IS NULL"));
        assert!(by_id.contains(&format!("USING INDEX {t}_event")), "{by_id}");
        let refused = plan(&format!(
            "SELECT 1 FROM {t} x WHERE x.event_id = 'evt-1' AND x.at_ms = 1 AND x.kind = 'refused' \
             AND x.event_at_ms IS NULL"
        ));
        assert!(refused.contains(&format!("USING INDEX {t}_event")), "search's refused check: {refused}");
        let after = plan(&format!("SELECT record FROM {t} WHERE event_at_ms = 1 AND event_id = 'evt-1'"));
        assert!(after.contains(&format!("USING INDEX {t}_arrival")), "{after}");
        let filed_by_id: i64 = inner
            .connection
            .query_row(&format!("SELECT count(*) FROM {t} INDEXED BY {t}_event WHERE event_at_ms IS NULL"), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(filed_by_id, 4, "only the received and refused rows are filed by id");
    }

    #[test]
    fn day_tables_of_the_old_layout_are_read_and_written_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let day = 20_000;
        let t = table(day);
        // As a version before session 16 made them.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&format!(
            "CREATE TABLE {t} (event_id TEXT NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
                 subscription TEXT, status INTEGER, source TEXT, event_type TEXT, outcome TEXT, record TEXT NOT NULL);
             CREATE INDEX {t}_event ON {t} (event_id);"
        ))
        .unwrap();
        let arrived = day * DAY_MS + 1_000;
        let json = serde_json::to_string(&at("evt-1", arrived)).unwrap();
        old.execute(
            &format!(
                "INSERT INTO {t} (event_id, at_ms, kind, source, record) VALUES ('evt-1', ?1, 'received', 'acme', ?2)"
            ),
            params![arrived as i64, json],
        )
        .unwrap();
        drop(old);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.current().unwrap().days[&day], Layout::ById);
        // Written into the old table the old way; the next day's is new.
        store
            .write(&[
                attempt("evt-1", arrived, arrived + 5, "billing"),
                attempt("evt-1", arrived, arrived + DAY_MS, "audit"),
            ])
            .unwrap();
        assert_eq!(store.current().unwrap().days[&(day + 1)], Layout::ByArrival);
        assert_eq!(
            described(&store.timeline("evt-1").unwrap()),
            [
                (arrived, "received", None),
                (arrived + 5, "attempt", Some("billing")),
                (arrived + DAY_MS, "attempt", Some("audit")),
            ]
        );
        // Found through a subscription whose attempt is in the new table.
        let query = EventQuery {
            source: None,
            event_type: None,
            subscription: Some("audit".into()),
            outcome: None,
            from_ms: day * DAY_MS,
            to_ms: (day + 2) * DAY_MS,
            limit: 10,
            after: None,
        };
        let found = store.search(&query).unwrap();
        assert_eq!(found.iter().map(|(_, r)| r.event.as_str()).collect::<Vec<_>>(), ["evt-1"]);
    }

    #[test]
    fn two_handles_on_one_file_see_each_others_days() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let (a, b) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        // `b` opened before `a` created today's table.
        a.write(&[received("evt-a")]).unwrap();
        assert_eq!(b.timeline("evt-a").unwrap().len(), 1);
        b.write(&[received("evt-b")]).unwrap();
        assert_eq!(a.timeline("evt-b").unwrap().len(), 1);
    }
}
