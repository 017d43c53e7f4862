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
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiState, Caller, invalid, json_body, known};
use crate::{
    broker::message::rfc3339,
    catalog::audit::AuditRecord,
    envelope::{routing_word, topic_matches},
    error::ApiError,
    eventlog::{AttemptQuery, Cursor, EventQuery, Record, StatusFilter, Store, StoreError, What},
    operator::{DEFAULT_LIMIT, MAX_LIMIT, Report, archive::Window},
    telemetry::metric,
};

fn at(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The store, in the process that holds it.
fn store(state: &ApiState) -> Result<Store, ApiError> {
    state.events.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "event-log-unavailable",
            "Event log not here",
            "the event log is off ([event_log] enabled = false), or kept in SQLite by the process running --role all; ask that one",
        )
    })
}

/// Runs `read` on the store; a failure is logged and answered 500 (its
/// cause stays in the log).
async fn read<T, Fut>(state: &ApiState, read: impl FnOnce(Store) -> Fut) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    read(store(state)?).await.map_err(|error| {
        tracing::error!(%error, "reading the event log failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "event-log-failed", "Event log failed", "see the log")
    })
}

/// The paging and window parameters the list routes share.
struct Page {
    limit: usize,
    after: Option<Cursor>,
    from_ms: u64,
    to_ms: u64,
}

impl Page {
    fn parse(
        limit: Option<usize>,
        after: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let after = match after {
            Some(text) => Some(text.parse().map_err(|()| invalid("after must be a previous page's next_after"))?),
            None => None,
        };
        Ok(Self {
            limit,
            after,
            from_ms: from.map(|t| millis("from", t)).transpose()?.unwrap_or(0),
            to_ms: to.map(|t| millis("to", t)).transpose()?.unwrap_or(u64::MAX),
        })
    }

    /// The cursor of the next page, when this one is full.
    fn next_after(&self, rows: &[(Cursor, Record)]) -> Option<String> {
        (rows.len() == self.limit).then(|| rows.last().map(|(cursor, _)| cursor.to_string())).flatten()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    /// `succeeded` (2xx), `failed` (anything else), or one HTTP status.
    status: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    limit: Option<usize>,
    /// The previous page's `next_after`.
    after: Option<String>,
}

fn millis(field: &str, text: &str) -> Result<u64, ApiError> {
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|_| invalid(format!("{field} must be an RFC 3339 time, like 2026-11-30T12:00:00Z")))?;
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// `GET /api/v1/subscriptions/{name}/attempts`: what a subscriber looks at
/// when its endpoint misbehaved. Newest first, a page at a time.
pub async fn attempts(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Json<Value>, ApiError> {
    if caller.is_limited() && !caller.covers(&name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("token {:?} may not read subscription {name:?}", caller.name),
        ));
    }
    let page = Page::parse(query.limit, query.after.as_deref(), query.from.as_deref(), query.to.as_deref())?;
    let status = match query.status.as_deref() {
        None => StatusFilter::Any,
        Some("succeeded") => StatusFilter::Succeeded,
        Some("failed") => StatusFilter::Failed,
        Some(code) => StatusFilter::Exactly(
            code.parse().map_err(|_| invalid("status must be succeeded, failed, or an HTTP status like 503"))?,
        ),
    };
    let query = AttemptQuery {
        subscription: name,
        status,
        from_ms: page.from_ms,
        to_ms: page.to_ms,
        limit: page.limit,
        after: page.after,
    };
    let rows = read(&state, |store| async move { store.attempts(query).await }).await?;
    let next_after = page.next_after(&rows);
    let attempts: Vec<Value> = rows
        .into_iter()
        .filter_map(|(_, record)| match record.what {
            What::Attempt { attempt, duration_ms, status, error, response, .. } => Some(json!({
                "event": record.event, "attempt": attempt, "at": at(record.at_ms), "duration_ms": duration_ms,
                "status": status, "error": error, "response": response,
            })),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "attempts": attempts, "next_after": next_after })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    source: Option<String>,
    /// An event type; `*` matches any run of characters (`invoice.*`).
    #[serde(rename = "type")]
    event_type: Option<String>,
    subscription: Option<String>,
    /// With `subscription`: `delivered`, `filtered`, `retrying`, `dead_lettered`.
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

const OUTCOMES: [&str; 4] = ["delivered", "filtered", "retrying", "dead_lettered"];

/// `GET /api/v1/events`: received events, newest first, a page at a time.
/// A token limited to some subscriptions must name one of them: the
/// others' events are not its to see.
pub async fn search(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    if caller.is_limited() && !query.subscription.as_deref().is_some_and(|name| caller.covers(name)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("token {:?} may search only its own subscriptions' events: add ?subscription=NAME", caller.name),
        ));
    }
    if let Some(outcome) = &query.outcome {
        if query.subscription.is_none() {
            return Err(invalid("outcome needs subscription: an outcome is per subscription"));
        }
        if !OUTCOMES.contains(&outcome.as_str()) {
            return Err(invalid(format!("outcome must be one of {}", OUTCOMES.join(", "))));
        }
    }
    let page = Page::parse(query.limit, query.after.as_deref(), query.from.as_deref(), query.to.as_deref())?;
    let search = EventQuery {
        source: query.source,
        event_type: query.event_type,
        subscription: query.subscription,
        outcome: query.outcome,
        from_ms: page.from_ms,
        to_ms: page.to_ms,
        limit: page.limit,
        after: page.after,
    };
    let rows = read(&state, |store| async move { store.search(search).await }).await?;
    let next_after = page.next_after(&rows);
    let events: Vec<Value> = rows
        .into_iter()
        .filter_map(|(_, record)| match record.what {
            What::Received { source, event_type, bytes, routed, .. } => Some(json!({
                "id": record.event, "at": at(record.at_ms), "source": source, "type": event_type, "bytes": bytes,
                "unrouted": routed.is_empty(),
                "routed": routed.into_iter().filter(|name| !caller.is_limited() || caller.covers(name)).collect::<Vec<_>>(),
            })),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}

/// The timeline of `id`. A token limited to some subscriptions sees only
/// theirs.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lookup = id.clone();
    let records = read(&state, |store| async move { store.timeline(lookup).await }).await?;
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
    // Every time the event was received (a sender may send it again).
    let mut receptions: Vec<(u64, Value)> = Vec::new();
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
                receptions.push((
                    record.at_ms,
                    json!({
                        "at": at(record.at_ms), "source": source, "type": event_type, "bytes": bytes,
                        "process": process, "routed": routed, "unrouted": unrouted,
                    }),
                ));
            }
            What::Attempt { subscription, attempt, duration_ms, status, error, response, outcome, reason } => {
                if !visible(subscription) {
                    continue;
                }
                let mut sub = entry(&mut subscriptions, subscription);
                sub["attempts"].as_array_mut().expect("an array").push(json!({
                    "attempt": attempt, "at": at(record.at_ms), "duration_ms": duration_ms,
                    "status": status, "error": error, "response": response,
                }));
                // The attempt that settled the event carries where it stands.
                if let Some(outcome) = outcome {
                    sub["outcome"] = json!(outcome);
                    sub["history"].as_array_mut().expect("an array").push(json!({
                        "at": at(record.at_ms), "outcome": outcome, "reason": reason,
                    }));
                }
                subscriptions.insert(subscription.clone(), sub);
            }
            // Its `received` (same `at_ms`) was answered `503`.
            What::Refused { reason } => {
                if let Some((_, received)) = receptions.iter_mut().rev().find(|(at_ms, _)| *at_ms == record.at_ms) {
                    received["refused"] = json!({ "reason": reason });
                }
            }
            What::Outcome { subscription, outcome, reason } => {
                if !visible(subscription) {
                    continue;
                }
                let mut sub = entry(&mut subscriptions, subscription);
                let step = json!({ "at": at(record.at_ms), "outcome": outcome, "reason": reason });
                let history = sub["history"].as_array_mut().expect("an array");
                // A copy delivered twice (its process died before the ack)
                // records its `replayed` twice: the same step, shown once.
                if !history.contains(&step) {
                    history.push(step);
                    sub["outcome"] = json!(outcome);
                }
                subscriptions.insert(subscription.clone(), sub);
            }
        }
    }
    // The newest accepted reception; else the newest, refused.
    let received = receptions
        .iter()
        .rev()
        .find(|(_, r)| r.get("refused").is_none())
        .or(receptions.last())
        .map_or(Value::Null, |(_, r)| r.clone());
    json!({ "id": id, "received": received, "subscriptions": subscriptions })
}

/// `POST /api/v1/events/{id}/resend`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    pub subscription: String,
}

/// Sends one event again to one subscription, from the archive, with its
/// original id (`webhook-id`), whatever became of it before (delivered
/// included). The event log says when it was received, which is where the
/// archive is read; `202` once the copy is confirmed in the work queue.
pub async fn resend(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Resend { subscription } = json_body(&body)?;
    if caller.is_limited() && !caller.covers(&subscription) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("token {:?} may not touch subscription {subscription:?}", caller.name),
        ));
    }
    let queues = known(&state, &subscription)?;
    if state.broker.topology().archive.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archive-disabled",
            "Archive disabled",
            "the archive is disabled ([archive] enabled = false), so there is nothing to resend from",
        ));
    }
    let lookup = id.clone();
    let records = read(&state, |store| async move { store.timeline(lookup).await }).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "event-not-found",
            "Event not found",
            format!("the event log has nothing about {id:?} (not received, or older than its retention)"),
        )
    };
    // The newest `received` that was not refused: the copy in the archive.
    // (Else the newest refused one: a publish that timed out may have been
    // stored after all.)
    let refused: Vec<u64> =
        records.iter().filter(|r| matches!(r.what, What::Refused { .. })).map(|r| r.at_ms).collect();
    let receptions = records.iter().rev().filter_map(|r| match &r.what {
        What::Received { source, event_type, .. } => Some((r.at_ms, source, event_type)),
        _ => None,
    });
    let accepted =
        receptions.clone().find(|(at_ms, _, _)| !refused.contains(at_ms)).or_else(|| receptions.clone().next());
    let (at_ms, source, event_type) = accepted.ok_or_else(not_found)?;
    let routing_key = format!("{source}.{}", routing_word(event_type));
    if !queues.topics.iter().any(|topic| topic_matches(topic, &routing_key)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-subscribed",
            "Not subscribed",
            format!("subscription {subscription:?} does not subscribe to {routing_key:?}"),
        ));
    }
    // The `received` record's time is the event's own `received_at`, to
    // the millisecond: a one-millisecond window finds it.
    let window = Window {
        from: at(at_ms),
        to: Some(at(at_ms + 1)),
        event_type: None,
        dry_run: false,
        event_id: Some(id.clone()),
    };
    let (progress, report) = tokio::sync::watch::channel(Report::default());
    let result = state.operator.replay_window(&subscription, &window, &progress).await;
    let report = report.borrow().clone();
    let outcome = match (&result, report.replayed) {
        (Ok(()), 1) => "ok",
        _ => "error",
    };
    let detail = json!({ "event_id": id });
    state.audit.record(AuditRecord::new(&caller.name, "resend", &subscription, outcome, detail)).await;
    metrics::counter!(metric::OPERATIONS, "operation" => "resend", "outcome" => outcome).increment(1);
    result?;
    match (report.matched, report.replayed) {
        (_, 1) => {
            tracing::info!(event_id = %id, %subscription, "resent from the archive");
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "subscription": subscription, "resent": true }))))
        }
        (0, _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-in-archive",
            "Not in the archive",
            format!("{id:?} is no longer in the archive (older than its max_age or max_bytes)"),
        )),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Not resent",
            "RabbitMQ did not confirm the copy; try again",
        )),
    }
}
