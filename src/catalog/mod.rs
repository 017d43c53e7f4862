//! The catalog: the subscriptions made through the API, as a versioned,
//! totally ordered log that every hookwire process replays and follows.
//!
//! The log is the RabbitMQ stream `ns.catalog` ([`store`]). Each record is
//! one [`Change`] naming the version it expects to replace; whether it
//! applies is decided by [`State::apply`] in log order, the same way in every
//! process, so every process arrives at the same state and of two writers
//! racing on one version exactly one wins. A subscription's version is its
//! last applied record's stream offset plus one (0 means "does not exist").
//!
//! This module is pure data: no I/O, so the rules are unit-tested here.
//! Must not: talk to RabbitMQ (see [`store`]), or hold secrets in clear in
//! anything it logs.

pub mod audit;
pub mod reconcile;
pub mod sealed;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use store::{Catalog, CatalogError};

/// One change, as stored in the catalog stream (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Unique per write: how a writer recognises its own record when it
    /// reads the log back.
    pub id: String,
    /// The name of the token that wrote it (never its value), or `hookwire`.
    pub by: String,
    /// When it was written (RFC 3339).
    pub at: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Create (`expected_version` 0) or replace a subscription's definition.
    Put { name: String, expected_version: u64, definition: serde_json::Value },
    /// Stop routing new events to a subscription while its worker delivers
    /// what is queued; a `Delete` follows once its queues are empty.
    Drain { name: String, expected_version: u64 },
    /// Remove a subscription.
    Delete { name: String, expected_version: u64 },
    /// Changes nothing. A process writes one and reads until it sees it, to
    /// know it has read everything written before (it has caught up).
    Sync,
}

/// A subscription as the catalog holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub definition: serde_json::Value,
    pub version: u64,
    /// Being drained before a delete: not routed, still delivered.
    pub draining: bool,
    pub updated_at: String,
    pub updated_by: String,
}

/// What a record did when applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change took effect; the subscription's version is now `version`
    /// (0 after a delete).
    Applied { version: u64 },
    /// The record expected another version than the current one: nothing
    /// changed. `current` is 0 when the subscription does not exist.
    Conflict { current: u64 },
    /// A [`Change::Sync`] marker.
    Synced,
}

/// The catalog's content after applying a prefix of the log.
#[derive(Debug, Clone, Default)]
pub struct State {
    entries: BTreeMap<String, Entry>,
    /// Which catch-up of this process the state comes from (0: not caught
    /// up yet). Readiness waits until the reconciler has applied a state of
    /// the current catch-up, not only until the log was read.
    pub generation: u64,
    /// Where in the log this state stands: the offset of the last record
    /// applied, plus one (so a change's version is the position right after
    /// it). The same in every process that has read as far, unlike
    /// `generation`: it is how one tells how far each process has come.
    pub position: u64,
}

/// Two states are equal when they hold the same subscriptions, whichever
/// process or catch-up they come from.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl State {
    /// Applies the record read at stream `offset`. Deterministic: the same
    /// log gives the same state in every process.
    pub fn apply(&mut self, offset: u64, record: &Record) -> Outcome {
        self.position = offset + 1;
        let current = |entries: &BTreeMap<String, Entry>, name: &str| entries.get(name).map_or(0, |e| e.version);
        match &record.change {
            Change::Sync => Outcome::Synced,
            Change::Put { name, expected_version, definition } => {
                let now = current(&self.entries, name);
                if now != *expected_version {
                    return Outcome::Conflict { current: now };
                }
                let version = offset + 1;
                let entry = Entry {
                    definition: definition.clone(),
                    version,
                    draining: false,
                    updated_at: record.at.clone(),
                    updated_by: record.by.clone(),
                };
                self.entries.insert(name.clone(), entry);
                Outcome::Applied { version }
            }
            Change::Drain { name, expected_version } => {
                let now = current(&self.entries, name);
                let Some(entry) = self.entries.get_mut(name).filter(|_| now == *expected_version) else {
                    return Outcome::Conflict { current: now };
                };
                entry.version = offset + 1;
                entry.draining = true;
                entry.updated_at = record.at.clone();
                entry.updated_by = record.by.clone();
                Outcome::Applied { version: entry.version }
            }
            Change::Delete { name, expected_version } => {
                let now = current(&self.entries, name);
                if now == 0 || now != *expected_version {
                    return Outcome::Conflict { current: now };
                }
                self.entries.remove(name);
                Outcome::Applied { version: 0 }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Every subscription, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(name, entry)| (name.as_str(), entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: &str, change: Change) -> Record {
        Record { id: id.into(), by: "ops".into(), at: "2026-11-30T10:00:00.000Z".into(), change }
    }

    fn put(name: &str, expected_version: u64, url: &str) -> Change {
        Change::Put { name: name.into(), expected_version, definition: json!({"topics": ["a.#"], "url": url}) }
    }

    #[test]
    fn versions_are_offsets_and_stale_writes_conflict() {
        let mut state = State::default();
        assert_eq!(state.apply(0, &record("1", put("billing", 0, "http://a/"))), Outcome::Applied { version: 1 });
        // A second create of the same name expects 0: conflict.
        assert_eq!(state.apply(1, &record("2", put("billing", 0, "http://b/"))), Outcome::Conflict { current: 1 });
        assert_eq!(state.apply(2, &record("3", Change::Sync)), Outcome::Synced);
        assert_eq!(state.apply(3, &record("4", put("billing", 1, "http://c/"))), Outcome::Applied { version: 4 });
        let entry = state.get("billing").unwrap();
        assert_eq!((entry.version, entry.definition["url"].as_str()), (4, Some("http://c/")));
        // Two writers raced on version 4: the one read first wins.
        assert_eq!(state.apply(4, &record("5", put("billing", 4, "http://d/"))), Outcome::Applied { version: 5 });
        assert_eq!(state.apply(5, &record("6", put("billing", 4, "http://e/"))), Outcome::Conflict { current: 5 });
        assert_eq!(state.get("billing").unwrap().definition["url"], "http://d/");
    }

    #[test]
    fn a_drain_marks_the_entry_and_bumps_its_version() {
        let mut state = State::default();
        state.apply(0, &record("1", put("orders", 0, "http://a/")));
        let drain = |v| record("d", Change::Drain { name: "orders".into(), expected_version: v });
        assert_eq!(state.apply(1, &drain(9)), Outcome::Conflict { current: 1 });
        assert_eq!(state.apply(2, &drain(1)), Outcome::Applied { version: 3 });
        assert!(state.get("orders").unwrap().draining);
        assert_eq!(state.apply(3, &drain(0)), Outcome::Conflict { current: 3 });
    }

    #[test]
    fn deletes_need_the_current_version() {
        let mut state = State::default();
        state.apply(0, &record("1", put("orders", 0, "http://a/")));
        let delete = |v| record("d", Change::Delete { name: "orders".into(), expected_version: v });
        assert_eq!(state.apply(1, &delete(7)), Outcome::Conflict { current: 1 });
        assert_eq!(state.apply(2, &delete(1)), Outcome::Applied { version: 0 });
        assert!(state.get("orders").is_none());
        assert_eq!(state.apply(3, &delete(1)), Outcome::Conflict { current: 0 }, "already gone");
        // Re-creating after a delete starts from "absent".
        assert_eq!(state.apply(4, &record("r", put("orders", 0, "http://b/"))), Outcome::Applied { version: 5 });
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_state() {
        let log = [
            record("1", put("a", 0, "http://a/")),
            record("2", put("b", 0, "http://b/")),
            record("3", put("a", 1, "http://a2/")),
            record("4", Change::Delete { name: "b".into(), expected_version: 2 }),
            record("5", put("a", 1, "http://stale/")),
        ];
        let replay = || {
            let mut state = State::default();
            for (offset, r) in log.iter().enumerate() {
                state.apply(offset as u64, r);
            }
            state
        };
        assert_eq!(replay(), replay());
        assert_eq!(replay().entries().map(|(n, _)| n).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = record("x", put("billing", 3, "http://a/"));
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"op\":\"put\""), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }
}
