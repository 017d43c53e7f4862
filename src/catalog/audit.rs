//! The audit log: who changed what, when, and how it ended.
//!
//! Records go to the stream `ns.audit`, confirmed, by the process that did
//! the action; every process follows the stream and keeps the newest
//! [`KEPT`] records in memory for `GET /api/v1/audit`, so any process
//! answers with every process's actions. A record names the token by its
//! name, never its value, and carries no secret: diffs are built from
//! definitions whose secrets serialize masked.
//! Must not: fail the action it records. An audit publish that fails is
//! logged and counted (`hookwire_audit_failures_total`).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use futures_util::StreamExt;
use lapin::{BasicProperties, options::BasicAckOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, message::rfc3339, publisher::publish_confirmed, stream},
    telemetry::metric,
};

/// Records each process keeps in memory; older pages are read back from the
/// stream.
pub const KEPT: usize = 10_000;

/// How far back one read of the stream goes at first, in records; each
/// further read goes twice as far, up to [`MAX_SPAN`].
const FIRST_SPAN: u64 = 1_024;
const MAX_SPAN: u64 = 65_536;

/// One audited action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Position in the stream (set when read); the `after` cursor.
    #[serde(default)]
    pub id: u64,
    pub at: String,
    /// The token's name (`[admin.tokens.NAME]`), `file` for reloads.
    pub by: String,
    /// `create`, `update`, `delete`, `drain`, `pause`, `resume`,
    /// `replay_dead_letters`, …, `reload`, `denied`.
    pub action: String,
    /// The subscription (or `unrouted`, or the config file).
    pub target: String,
    /// `ok`, `refused`, `error`, or the status answered.
    pub outcome: String,
    /// What changed or what it did (masked diff, counts, reason).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl AuditRecord {
    pub fn new(by: &str, action: &str, target: &str, outcome: &str, detail: Value) -> Self {
        Self {
            id: 0,
            at: rfc3339(SystemTime::now()),
            by: by.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail,
        }
    }
}

/// A handle on the audit log. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    broker: Broker,
    stream: String,
    recent: Arc<Mutex<VecDeque<AuditRecord>>>,
    kept: usize,
}

impl Audit {
    /// Starts following `stream`; stops when `token` is cancelled.
    pub fn spawn(broker: Broker, stream: String, token: CancellationToken) -> (Self, JoinHandle<()>) {
        Self::spawn_keeping(broker, stream, KEPT, token)
    }

    /// [`Audit::spawn`], keeping the newest `kept` records in memory.
    pub fn spawn_keeping(
        broker: Broker,
        stream: String,
        kept: usize,
        token: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let this = Self { broker, stream, recent: Arc::default(), kept };
        let task = tokio::spawn(this.clone().follow(token));
        (this, task)
    }

    /// Records `record` durably (publisher confirm). Never fails the caller.
    pub async fn record(&self, record: AuditRecord) {
        let result = async {
            let session = self.broker.session().ok_or("RabbitMQ is not connected")?;
            let channel = session.publish_channels.get().await.map_err(|_| "no channel")?;
            let body = serde_json::to_vec(&record).expect("records serialize");
            let properties = BasicProperties::default().with_delivery_mode(2);
            publish_confirmed(&channel, "", &self.stream, properties, &body, self.broker.operation_timeout)
                .await
                .map_err(|_| "not confirmed")
        }
        .await;
        if let Err(error) = result {
            metrics::counter!(metric::AUDIT_FAILURES).increment(1);
            tracing::error!(error, action = %record.action, target = %record.target, by = %record.by, "audit record not stored");
        }
    }

    /// Newest first: at most `limit` records older than `after` (an id),
    /// for `target` if given, that `visible` allows. Served from memory
    /// while it reaches; older records are read back from the stream, in
    /// growing spans, until the page is full or the stream's start.
    pub async fn page(
        &self,
        limit: usize,
        after: Option<u64>,
        target: Option<&str>,
        visible: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Vec<AuditRecord>, String> {
        let wanted = |r: &AuditRecord| {
            after.is_none_or(|after| r.id < after) && target.is_none_or(|t| r.target == t) && visible(r)
        };
        let (mut found, oldest_kept) = {
            let recent = self.recent.lock().expect("audit lock");
            let found: Vec<AuditRecord> = recent.iter().rev().filter(|r| wanted(r)).take(limit).cloned().collect();
            (found, recent.front().map(|r| r.id))
        };
        // Older than memory reaches: everything before the oldest kept id.
        let Some(mut until) = oldest_kept else { return Ok(found) };
        if let Some(after) = after {
            until = until.min(after);
        }
        let mut span = FIRST_SPAN;
        while found.len() < limit && until > 0 {
            let from = until.saturating_sub(span);
            let older = self.read_range(from, until).await?;
            let room = limit - found.len();
            found.extend(older.into_iter().rev().filter(|r| wanted(r)).take(room));
            until = from;
            span = (span * 2).min(MAX_SPAN);
        }
        Ok(found)
    }

    /// The records with ids in `from..until`, oldest first, read from the
    /// stream on a consumer of their own.
    async fn read_range(&self, from: u64, until: u64) -> Result<Vec<AuditRecord>, String> {
        let session = self.broker.session().ok_or("RabbitMQ is not connected")?;
        let timeout = self.broker.operation_timeout;
        let (channel, mut deliveries) = stream::from_offset(&session, &self.stream, 500, from, timeout).await?;
        let mut records = Vec::new();
        let result = loop {
            let delivery = match tokio::time::timeout(timeout, deliveries.next()).await {
                Err(_) => break Err("reading the audit stream timed out".to_owned()),
                Ok(None) => break Err("the audit stream's consumer ended".to_owned()),
                Ok(Some(Err(error))) => break Err(error.to_string()),
                Ok(Some(Ok(delivery))) => delivery,
            };
            let ack = channel.basic_ack(delivery.delivery_tag, BasicAckOptions::default());
            if let Err(error) = tokio::time::timeout(timeout, ack).await.map_err(|_| "ack timed out".to_owned()) {
                break Err(error);
            }
            let Some(offset) = stream::offset(&delivery.properties) else { continue };
            if offset >= until {
                break Ok(records); // retention took the rest of the range
            }
            if offset >= from
                && let Ok(mut record) = serde_json::from_slice::<AuditRecord>(&delivery.data)
            {
                record.id = offset;
                records.push(record);
            }
            if offset + 1 == until {
                break Ok(records);
            }
        };
        let _ = tokio::time::timeout(timeout, channel.close(200, "page read".into())).await;
        result
    }

    async fn follow(self, token: CancellationToken) {
        self.broker
            .clone()
            .on_every_session(&token.clone(), "audit follower", |session| {
                let (this, token) = (self.clone(), token.clone());
                async move { this.read(&session, &token).await }
            })
            .await;
    }

    async fn read(&self, session: &crate::broker::Session, token: &CancellationToken) -> Result<(), String> {
        let timeout = self.broker.operation_timeout;
        let (channel, mut records) = stream::from_first(session, &self.stream, 500, timeout).await?;
        // Rebuilt from the stream: the newest KEPT.
        let mut fresh = true;
        stream::each(&channel, &mut records, &self.stream, token, timeout, |delivery| {
            let offset = stream::offset(&delivery.properties);
            if let (Some(offset), Ok(mut record)) = (offset, serde_json::from_slice::<AuditRecord>(&delivery.data)) {
                record.id = offset;
                let mut recent = self.recent.lock().expect("audit lock");
                if fresh {
                    recent.clear();
                    fresh = false;
                }
                if recent.back().is_none_or(|last| last.id < offset) {
                    recent.push_back(record);
                    if recent.len() > self.kept {
                        recent.pop_front();
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

/// Fields whose value differs between two definitions (as JSON, secrets
/// already masked): `{field: {"from": …, "to": …}}`.
pub fn diff(before: &Value, after: &Value) -> Value {
    let empty = serde_json::Map::new();
    let (before, after) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut out = serde_json::Map::new();
    for key in before.keys().chain(after.keys()) {
        let (from, to) = (before.get(key).unwrap_or(&Value::Null), after.get(key).unwrap_or(&Value::Null));
        if from != to && !out.contains_key(key) {
            out.insert(key.clone(), serde_json::json!({"from": from, "to": to}));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn diff_names_each_changed_field_once() {
        let before = json!({"url": "http://a/", "retry": ["1s"], "owner": "x"});
        let after = json!({"url": "http://b/", "retry": ["1s"], "description": "d"});
        assert_eq!(
            diff(&before, &after),
            json!({
                "url": {"from": "http://a/", "to": "http://b/"},
                "owner": {"from": "x", "to": null},
                "description": {"from": null, "to": "d"},
            })
        );
    }
}
