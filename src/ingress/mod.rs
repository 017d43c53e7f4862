//! HTTP in: `POST /webhooks/{source}`.
//!
//! Owns: the listener and its limits, per-source edge checks (client IP, rate
//! limit), reading the body (bounded in size and time), verifying it with the
//! source's scheme, building the envelope, and answering the sender. The
//! answer is `202` only after RabbitMQ confirmed the event as stored; anything
//! short of that is a `503` with `Retry-After`, so the sender retries and
//! nothing is lost.
//! Must not: know about subscriptions beyond counting unrouted events.
//!
//! - `server` — the hyper server with header limits and timeouts.
//! - `guard` — client IP and rate limiting.
//! - `verify` — the [`verify::Scheme`] seam and its helpers.
//! - `schemes/` — one file per signature scheme.
//! - `source` — a built source: scheme, limits, event id/type extraction.

pub mod guard;
pub mod schemes;
pub mod server;
pub mod source;
pub mod verify;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::SystemTime};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use serde_json::json;

pub use source::{Accepted, Rejection, Source, Sources};

use crate::{
    broker::{Publisher, message, publisher::PublishError},
    config::Cidr,
    envelope::{Envelope, topic_matches},
    error::ApiError,
    eventlog::{Record, What},
    telemetry::metric,
};

/// Everything the ingress handler needs, shared by all requests.
pub struct IngressState {
    /// Replaced whole when the file is reloaded.
    pub sources: tokio::sync::watch::Receiver<Arc<Sources>>,
    pub publisher: Publisher,
    /// `ns.accepted`: routes to the subscriptions and the archive.
    pub accepted_exchange: String,
    /// The live topology: which topics subscriptions want now (for the
    /// unrouted count; RabbitMQ itself does the routing).
    pub broker: crate::broker::Broker,
    pub max_body_bytes: usize,
    pub read_timeout: Duration,
    pub retry_after: Duration,
    pub trusted_proxies: Vec<Cidr>,
    /// The event log's recorder, when the log is on.
    pub recorder: Option<crate::eventlog::Recorder>,
}

pub fn router(state: Arc<IngressState>) -> Router {
    Router::new()
        .route("/webhooks/{source}", post(receive))
        .with_state(state)
        .layer(axum::middleware::map_response(crate::error::problem_json_rejections))
}

fn count(source: &str, outcome: &'static str) {
    metrics::counter!(metric::INGRESS_REQUESTS, "source" => source.to_owned(), "outcome" => outcome).increment(1);
}

/// A rejection, counted under `reason`.
fn reject(source: &str, reason: &'static str, error: ApiError) -> ApiError {
    count(source, reason);
    tracing::info!(reason, status = error.status.as_u16(), "rejected webhook");
    error
}

/// Longest an accepted event's `202` waits for its `received` record's
/// commit: the store's usual one or two commits take milliseconds, and a
/// store that fails stops being waited for at all (see `Recorder`).
const RECORD_WAIT: Duration = Duration::from_secs(1);

#[tracing::instrument(skip_all, fields(source = %source_name, event_id))]
async fn receive(
    State(state): State<Arc<IngressState>>,
    Path(source_name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let sources = state.sources.borrow().clone();
    let Some(source) = sources.get(&source_name) else {
        // One fixed label for all unknown names: they are sender-controlled.
        return Err(reject(
            "_unknown",
            "unknown_source",
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown-source",
                "Unknown source",
                format!("no source named {source_name:?} is configured"),
            ),
        ));
    };
    let name = source.name.as_str();
    if !source.allow_ips.is_empty() {
        let client = guard::client_ip(peer, &headers, &state.trusted_proxies);
        if !source.allow_ips.iter().any(|net| net.contains(client)) {
            let detail = format!("{client} may not post to this source");
            return Err(reject(
                name,
                "ip_denied",
                ApiError::new(StatusCode::FORBIDDEN, "ip-denied", "Client not allowed", detail),
            ));
        }
    }
    if let Some(limiter) = &source.limiter
        && let Err(wait) = limiter.check()
    {
        let error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            "this source's rate limit is exceeded; retry later",
        );
        return Err(reject(name, "rate_limited", error.retry_after(wait)));
    }
    let body = read_body(body, &headers, state.max_body_bytes, state.read_timeout)
        .await
        .map_err(|(reason, error)| reject(name, reason, error))?;
    let accepted = source
        .accept(&headers, query.as_deref(), body, SystemTime::now())
        .map_err(|rejection| reject(name, rejection.reason(), rejection_error(&rejection)))?;
    let envelope = match accepted {
        Accepted::Event(envelope) => envelope,
        Accepted::Challenge(reply) => {
            count(name, "challenge");
            tracing::info!("answered the provider's verification challenge");
            return Ok((StatusCode::OK, Json(reply)));
        }
    };
    tracing::Span::current().record("event_id", envelope.id.as_str());
    let routing_key = envelope.routing_key();
    let topology = state.broker.topology();
    let matches =
        |s: &&crate::broker::topology::SubscriptionQueues| s.topics.iter().any(|t| topic_matches(t, &routing_key));
    // The event log wants the names; without it, whether any matches is enough.
    let (unrouted, received) = match &state.recorder {
        Some(recorder) => {
            let routed: Vec<String> =
                topology.subscriptions.iter().filter(matches).map(|s| s.subscription.clone()).collect();
            let unrouted = routed.is_empty();
            let what = What::Received {
                source: name.to_owned(),
                event_type: envelope.event_type.clone(),
                bytes: envelope.body.len(),
                process: recorder.process.clone(),
                routed,
            };
            // The event's own `received_at`: `resend` finds it in the archive by it.
            (unrouted, Some(Record::new(envelope.id.clone(), envelope.received_at_ms(), what)))
        }
        None => (!topology.subscriptions.iter().any(|s| matches(&s)), None),
    };
    // The `received` record is committed before the answer, so an ingress
    // killed right after its `202` has lost nothing; alongside the publish,
    // so the answer waits for whichever takes longer rather than for both
    // in turn (the senders are latency-bound: docs/BENCHMARKS.md). An
    // accepted event is answered `202` even if its record is not committed
    // in time: the event is stored, the record counted as dropped.
    let received_ms = received.as_ref().map(|r| r.at_ms);
    let commit = async {
        match (&state.recorder, received) {
            (Some(recorder), Some(record)) => recorder.commit_now(vec![record], RECORD_WAIT).await,
            _ => true,
        }
    };
    let (published, committed) = tokio::join!(publish(&state, &envelope, &routing_key), commit);
    if !committed {
        tracing::debug!("received record not committed in time; answering anyway");
    }
    if let Err((reason, error)) = published {
        // The story says the `received` above was answered `503`: dated
        // like it, which pairs the two (a sender may send the same id again
        // meanwhile, accepted or not).
        if let (Some(recorder), Some(at_ms)) = (&state.recorder, received_ms) {
            let what = What::Refused { reason: reason.to_owned() };
            let record = Record::new(envelope.id.clone(), at_ms, what);
            recorder.commit_now(vec![record], RECORD_WAIT).await;
        }
        return Err(error);
    }
    count(name, "accepted");
    if unrouted {
        metrics::counter!(metric::UNROUTED, "source" => name.to_owned()).increment(1);
        tracing::info!(%routing_key, "no subscription matches; kept as unrouted");
    }
    tracing::debug!(event_type = %envelope.event_type, "accepted webhook");
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": envelope.id }))))
}

fn rejection_error(rejection: &Rejection) -> ApiError {
    let (status, slug, title) = match rejection.reason() {
        "stale_timestamp" => (StatusCode::UNAUTHORIZED, "stale-timestamp", "Timestamp outside tolerance"),
        "missing_header" => (StatusCode::UNAUTHORIZED, "missing-header", "Missing signature header"),
        "bad_signature" => (StatusCode::UNAUTHORIZED, "bad-signature", "Invalid signature"),
        // A malformed signature header is an authentication failure too.
        "malformed" if matches!(rejection, Rejection::Verify(_)) => {
            (StatusCode::UNAUTHORIZED, "bad-signature", "Invalid signature")
        }
        _ => (StatusCode::BAD_REQUEST, "malformed-request", "Malformed request"),
    };
    ApiError::new(status, slug, title, rejection.to_string())
}

/// Publishes the event and waits for its confirm; on failure, the reason
/// (for the event log) and the `503`.
async fn publish(state: &IngressState, envelope: &Envelope, routing_key: &str) -> Result<(), (&'static str, ApiError)> {
    let (properties, body) = message::encode(envelope, &Default::default());
    state.publisher.publish(&state.accepted_exchange, routing_key, properties, &body).await.map_err(|error| {
        count(&envelope.source, "unavailable");
        match error {
            // No connection, or a resource alarm: the broker supervisor has
            // said so once, `/readyz` says so, and the 503s are counted. A
            // warning per request would be thousands a second in an outage
            // (28,623 in 28 s in the chaos harness's cluster run).
            PublishError::Unavailable | PublishError::Blocked(_) => {
                tracing::debug!(%error, reason = error.reason(), "publish failed; answering 503")
            }
            _ => tracing::warn!(%error, reason = error.reason(), "publish failed; answering 503"),
        }
        let answer = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Event not stored",
            "the event could not be stored durably; retry later",
        )
        .retry_after(state.retry_after);
        (error.reason(), answer)
    })
}

/// Reads the whole body, refusing more than `limit` bytes (early from
/// `Content-Length` when the sender declares it) or taking longer than
/// `timeout`. Errors carry their metric reason.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, (&'static str, ApiError)> {
    let too_large = || {
        let detail = format!("the body exceeds the limit of {limit} bytes");
        ("too_large", ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Body too large", detail))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        let detail = format!("the body did not arrive within {}", crate::config::format_duration(timeout));
        ("timeout", ApiError::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request timeout", detail))
    })?;
    read.map_err(|e| {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = err.source();
        }
        let detail = "the request body could not be read";
        ("malformed", ApiError::new(StatusCode::BAD_REQUEST, "malformed-request", "Malformed request", detail))
    })
}
