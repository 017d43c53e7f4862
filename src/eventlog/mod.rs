//! The event log: every event's story, successful attempts included
//! (issue 10). What each stage did with an event is recorded as small
//! [`Record`]s; a writer stores them where they can be queried.
//!
//! ```text
//! ingress ─┐                                             ┌─ SQLite file (role all)
//!          ├─ Recorder ─ batches ─▶ ns.eventlog (quorum) ─┤
//! worker ──┘  (group commit; a                           └─ Writer: commit, then ack
//!              delivery's ack waits for the confirm)
//! ```
//!
//! A worker acks a delivery only after its records are confirmed by
//! RabbitMQ ([`Recorder::commit`], group commit, bounded by the operation
//! timeout; it gives back its attempt slot first), so no crash loses an
//! attempt or outcome record. The ingress hands its `received` record over
//! without waiting (waiting cost 20% of saturated throughput): an ingress
//! killed right after answering `202` can lose the `received` records of
//! its last few milliseconds. The writer acks a batch only after its
//! transaction committed. What the pipeline never does is stop for the
//! log: records not confirmed in time are counted as dropped
//! (`hookwire_event_log_dropped_total`) and the event goes on.
//!
//! Bodies are never recorded (the archive has them), nor are headers.

pub mod postgres;
pub mod recorder;
pub mod sqlite;
pub mod store;
pub mod writer;

use serde::{Deserialize, Serialize};

pub use recorder::Recorder;
pub use store::{AttemptQuery, Cursor, EventQuery, StatusFilter, Store, StoreError};

/// One thing that happened to one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The event's id (`webhook-id`).
    pub event: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// Accepted by an ingress (RabbitMQ confirmed it).
    /// `routed`: the subscriptions whose topics matched (in this process's
    /// view); empty: unrouted.
    Received { source: String, event_type: String, bytes: usize, process: String, routed: Vec<String> },
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
    },
    /// Where an event stands for a subscription after a step: `delivered`,
    /// `filtered`, `retrying`, `dead_lettered`.
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
            What::Attempt { .. } => "attempt",
            What::Outcome { .. } => "outcome",
        }
    }

    pub fn subscription(&self) -> Option<&str> {
        match self {
            What::Received { .. } => None,
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
