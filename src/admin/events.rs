//! `GET /api/v1/events/{id}`: one event's story from the event log
//! (issue 10): received, routed, every attempt per subscription, and where
//! it stands for each.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};

use super::api::{ApiState, Caller};
use crate::{
    broker::message::rfc3339,
    error::ApiError,
    eventlog::{Record, What},
};

fn at(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The timeline of `id`. A token limited to some subscriptions sees only
/// theirs.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(store) = state.events.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "event-log-unavailable",
            "Event log not here",
            "the event log is off ([event_log] enabled = false), or stored by the process running --role all; ask that one",
        ));
    };
    let lookup = id.clone();
    let failed =
        || ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "event-log-failed", "Event log failed", "see the log");
    let records =
        tokio::task::spawn_blocking(move || store.timeline(&lookup)).await.map_err(|_| failed())?.map_err(|error| {
            tracing::error!(%error, "reading the event log failed");
            failed()
        })?;
    if records.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "event-not-found",
            "Event not found",
            format!("the event log has nothing about {id:?} (not received, or older than its retention)"),
        ));
    }
    let visible = |name: &str| !caller.is_limited() || caller.covers(name);
    Ok(Json(timeline(&id, &records, visible)))
}

/// Folds records (oldest first) into the answer.
fn timeline(id: &str, records: &[Record], visible: impl Fn(&str) -> bool) -> Value {
    let mut received = Value::Null;
    let mut subscriptions: BTreeMap<String, Value> = BTreeMap::new();
    let entry = |subscriptions: &mut BTreeMap<String, Value>, name: &str| {
        subscriptions
            .entry(name.to_owned())
            .or_insert_with(|| json!({"outcome": "queued", "attempts": [], "history": []}))
            .clone()
    };
    for record in records {
        match &record.what {
            What::Received { source, event_type, bytes, process, routed } => {
                // Unrouted: no subscription matched, not only none visible.
                let unrouted = routed.is_empty();
                let routed: Vec<&String> = routed.iter().filter(|name| visible(name)).collect();
                for name in &routed {
                    entry(&mut subscriptions, name);
                }
                received = json!({
                    "at": at(record.at_ms), "source": source, "type": event_type, "bytes": bytes,
                    "process": process, "routed": routed, "unrouted": unrouted,
                });
            }
            What::Attempt { subscription, attempt, duration_ms, status, error, response } => {
                if !visible(subscription) {
                    continue;
                }
                let mut sub = entry(&mut subscriptions, subscription);
                sub["attempts"].as_array_mut().expect("an array").push(json!({
                    "attempt": attempt, "at": at(record.at_ms), "duration_ms": duration_ms,
                    "status": status, "error": error, "response": response,
                }));
                subscriptions.insert(subscription.clone(), sub);
            }
            What::Outcome { subscription, outcome, reason } => {
                if !visible(subscription) {
                    continue;
                }
                let mut sub = entry(&mut subscriptions, subscription);
                sub["outcome"] = json!(outcome);
                sub["history"].as_array_mut().expect("an array").push(json!({
                    "at": at(record.at_ms), "outcome": outcome, "reason": reason,
                }));
                subscriptions.insert(subscription.clone(), sub);
            }
        }
    }
    json!({ "id": id, "received": received, "subscriptions": subscriptions })
}
