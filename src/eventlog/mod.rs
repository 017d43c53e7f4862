//! The event log: every event's story, successful attempts included
//! (issue 10). What each stage did with an event is recorded as small
//! [`Record`]s, which every process commits straight to the store.
//!
//! ```text
//! ingress ──┐                                   ┌─ SQLite file (one host's processes)
//! worker ───┼─ Recorder ─ group commit ─ Store ─┤
//! operator ─┘  (a delivery's ack waits          └─ PostgreSQL (any number of hosts)
//!               for its records' commit)
//! ```
//!
//! No process crash loses a record: each is committed before the step it
//! records is acknowledged to anyone.
//! - A worker acks a delivery only after its records are committed
//!   ([`Recorder::commit`], group commit, bounded by the operation timeout;
//!   it gives back its attempt slot first): RabbitMQ redelivers what was not
//!   acked, and the attempt is recorded again.
//! - The ingress answers `202` only after the event's `received` record is
//!   committed ([`Recorder::commit_now`]: no linger, at most one batch every
//!   5 ms). The commit runs alongside the publish, so the answer waits for
//!   whichever takes longer; a publish that fails after all adds `refused`.
//! - A replayed copy carries when and why it was replayed, and the worker
//!   that takes it records `replayed` with its attempt; a purge acks each
//!   removal only after its `purged` record is committed.
//!
//! (SQLite is written without fsync: an OS crash or power loss can lose the
//! last records; see `sqlite`.) What the pipeline never does is stop for
//! the log: records not committed in time are counted as dropped
//! (`hookwire_event_log_dropped_total`) and the event goes on.
//!
//! Bodies are never recorded (the archive has them), nor are headers.

pub mod postgres;
pub mod recorder;
pub mod sqlite;
pub mod store;

use serde::{Deserialize, Serialize};

pub use recorder::{Recorder, Then};
pub use store::{AttemptQuery, Cursor, EventQuery, StatusFilter, Store, StoreError};

/// One thing that happened to one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The event's id (`webhook-id`).
    pub event: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// For what happens to an event after it arrived (attempts,
    /// outcomes): when it arrived, the `at_ms` of its `received` record.
    /// The SQLite store files these rows under (arrival, id), which grows
    /// at one end like the time it is written in, instead of under the id
    /// alone, whose random order costs a commit an index page per row
    /// (docs/BENCHMARKS.md, session 16). A timeline finds them from the
    /// arrivals. Not part of the record's JSON: its `received` says it.
    #[serde(skip)]
    pub event_at_ms: Option<u64>,
    #[serde(flatten)]
    pub what: What,
}

impl Record {
    /// A record that has no arrival to file it under (a `received` or
    /// `refused` one, or one about a message whose envelope is unreadable).
    pub fn new(event: impl Into<String>, at_ms: u64, what: What) -> Self {
        Self { event: event.into(), at_ms, event_at_ms: None, what }
    }

    /// A record of what happened to an event after it arrived at
    /// `event_at_ms`.
    pub fn after(event: impl Into<String>, event_at_ms: u64, at_ms: u64, what: What) -> Self {
        Self { event: event.into(), at_ms, event_at_ms: Some(event_at_ms), what }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// Accepted by an ingress (RabbitMQ confirmed it).
    /// `routed`: the subscriptions whose topics matched (in this process's
    /// view); empty: unrouted.
    Received { source: String, event_type: String, bytes: usize, process: String, routed: Vec<String> },
    /// The broker did not confirm an event whose `received` record was
    /// committed alongside its publish: the sender was answered `503` and
    /// will send it again. Dated like that `received` (same event, same
    /// `at_ms`), which pairs them; search leaves such a `received` out.
    /// `reason`: why (`unavailable`, `blocked`, `nack`, `timeout`, ...).
    Refused { reason: String },
    /// One HTTP attempt to a subscription's destination.
    Attempt {
        subscription: String,
        attempt: u32,
        duration_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The first bytes of the answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<String>,
        /// Where the event stands for the subscription after this attempt
        /// (`delivered`, `retrying`, `dead_lettered`), when the attempt
        /// settled it: one record (one row) instead of an attempt and an
        /// outcome.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Where an event stands for a subscription after a step without an
    /// attempt: `filtered`, `dead_lettered` (a transform failed),
    /// `replayed`, `purged`.
    Outcome {
        subscription: String,
        outcome: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl What {
    pub fn kind(&self) -> &'static str {
        match self {
            What::Received { .. } => "received",
            What::Refused { .. } => "refused",
            What::Attempt { .. } => "attempt",
            What::Outcome { .. } => "outcome",
        }
    }

    /// The outcome this record gives its subscription, if any.
    pub fn outcome(&self) -> Option<&str> {
        match self {
            What::Received { .. } | What::Refused { .. } => None,
            What::Attempt { outcome, .. } => outcome.as_deref(),
            What::Outcome { outcome, .. } => Some(outcome),
        }
    }

    pub fn subscription(&self) -> Option<&str> {
        match self {
            What::Received { .. } | What::Refused { .. } => None,
            What::Attempt { subscription, .. } | What::Outcome { subscription, .. } => Some(subscription),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How many bytes of a destination's answer are kept in an attempt record.
pub const RESPONSE_BYTES: usize = 256;

/// The first [`RESPONSE_BYTES`] of `text`, cut at a character boundary.
pub fn head(text: &str) -> String {
    let mut end = text.len().min(RESPONSE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
