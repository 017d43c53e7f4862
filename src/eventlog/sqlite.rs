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

use super::Record;

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
                 record TEXT NOT NULL
             );
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
                "INSERT INTO event_log (event_id, at_ms, kind, subscription, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for record in records {
                let json = serde_json::to_string(record).expect("records serialize");
                insert.execute(params![
                    record.event,
                    record.at_ms as i64,
                    record.what.kind(),
                    record.what.subscription(),
                    json
                ])?;
            }
        }
        transaction.commit()
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
