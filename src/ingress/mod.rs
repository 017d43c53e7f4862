//! HTTP in: `POST /webhooks/{source}`.
//!
//! Owns: reading the body (bounded), verifying it with the source's scheme,
//! building the envelope, and answering the sender. The answer is `202` only
//! after RabbitMQ confirmed the event as stored; anything short of that is a
//! `503` with `Retry-After`, so the sender retries and nothing is lost.
//! Must not: know about subscriptions beyond counting unrouted events.
//!
//! - `verify` — the [`verify::Scheme`] seam and its helpers.
//! - `schemes/` — one file per signature scheme.
//! - `source` — a built source: scheme + event id/type extraction.

pub mod schemes;
pub mod source;
pub mod verify;

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use serde_json::json;

pub use source::{Source, Sources};

use crate::{
    broker::{Publisher, message},
    envelope::{Envelope, topic_matches},
    error::ApiError,
    telemetry::metric,
};

/// Everything the ingress handler needs, shared by all requests.
pub struct IngressState {
    pub sources: Sources,
    pub publisher: Publisher,
    pub events_exchange: String,
    /// Every subscription's topic patterns, to count unrouted events.
    pub topics: Vec<String>,
    pub max_body_bytes: usize,
    pub retry_after: std::time::Duration,
}

pub fn router(state: Arc<IngressState>) -> Router {
    Router::new()
        .route("/webhooks/{source}", post(receive))
        .with_state(state)
}

fn count(source: &str, outcome: &'static str) {
    metrics::counter!(metric::INGRESS_REQUESTS, "source" => source.to_owned(), "outcome" => outcome).increment(1);
}

#[tracing::instrument(skip_all, fields(source = %source_name, event_id))]
async fn receive(
    State(state): State<Arc<IngressState>>,
    Path(source_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Some(source) = state.sources.get(&source_name) else {
        // One fixed label for all unknown names: they are sender-controlled.
        count("_unknown", "unknown_source");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!("no source named {source_name:?} is configured"),
        ));
    };
    let body = read_body(body, &headers, state.max_body_bytes)
        .await
        .inspect_err(|e| {
            count(
                &source.name,
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "malformed"
                },
            );
        })?;
    let envelope = source
        .accept(&headers, body, SystemTime::now())
        .map_err(|rejection| {
            count(&source.name, rejection.reason());
            tracing::info!(reason = rejection.reason(), "rejected webhook");
            let status = match rejection.reason() {
                "malformed" => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            let (slug, title) = match rejection.reason() {
                "stale_timestamp" => ("stale-timestamp", "Timestamp outside tolerance"),
                "missing_header" => ("missing-header", "Missing signature header"),
                "malformed" => ("malformed-request", "Malformed request"),
                _ => ("bad-signature", "Invalid signature"),
            };
            ApiError::new(status, slug, title, rejection.to_string())
        })?;
    tracing::Span::current().record("event_id", envelope.id.as_str());
    publish(&state, &envelope).await?;
    count(&source.name, "accepted");
    if !state
        .topics
        .iter()
        .any(|t| topic_matches(t, &envelope.routing_key()))
    {
        metrics::counter!(metric::UNROUTED, "source" => source.name.clone()).increment(1);
        tracing::info!(routing_key = %envelope.routing_key(), "no subscription matches; kept in the unrouted queue");
    }
    tracing::debug!(event_type = %envelope.event_type, "accepted webhook");
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": envelope.id }))))
}

async fn publish(state: &IngressState, envelope: &Envelope) -> Result<(), ApiError> {
    let properties = message::encode(envelope, &Default::default());
    let routing_key = envelope.routing_key();
    state
        .publisher
        .publish(
            &state.events_exchange,
            &routing_key,
            properties,
            &envelope.body,
        )
        .await
        .map_err(|error| {
            count(&envelope.source, "unavailable");
            tracing::warn!(%error, reason = error.reason(), "publish failed; answering 503");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "Event not stored",
                "the event could not be stored durably; retry later",
            )
            .retry_after(state.retry_after)
        })
}

/// Reads the whole body, refusing more than `limit` bytes (early from
/// `Content-Length` when the sender declares it).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Body too large",
            format!("the body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = err.source();
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            "the request body could not be read",
        )
    })
}
