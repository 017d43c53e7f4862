//! The operator API under `/api/v1`, on the admin listener.
//!
//! Every route needs `Authorization: Bearer <token>` with one of
//! `admin.tokens`, compared in constant time. Without configured tokens the
//! API answers 404 to everything: disabled, never open. Each route needs a
//! scope ([`required_scope`]): reads `read`, acting on queued events
//! `operate`, changing subscriptions `manage`; a token limited to some
//! subscriptions gets `403` on any other, and on routes of no subscription.
//! Reads broker state (queue depths, consumers, dead letters) rather than
//! this process's memory, so any process of a deployment gives the same
//! answer. The routes are listed in `docs/openapi.json`, served at
//! `/api/v1/openapi.json`.
//!
//! Replays and purges run in a task of their own: a client that disconnects
//! does not stop them halfway. With `Accept: application/x-ndjson` the
//! response streams `{"progress": …}` lines and ends with `{"result": …}`
//! (or `{"error": …}`); otherwise it is the final report alone.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, RequestExt, Router,
    body::{Body, Bytes},
    extract::{Extension, MatchedPath, Path, Query, RawPathParams, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::stream;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

use super::subscriptions;
use crate::{
    broker::{Broker, topology::SubscriptionQueues},
    catalog::{
        Catalog,
        audit::{Audit, AuditRecord},
        reconcile::Desired,
    },
    config::{AccessToken, Config, Scope},
    delivery::set::Breakers,
    error::ApiError,
    ingress::verify::secrets_equal,
    operator::{
        DEFAULT_LIMIT, MAX_LIMIT, OpError, Operator, Page, Report,
        archive::Window,
        letters::Pile,
        select::{Filter, Selector},
    },
    telemetry::metric,
};

/// The OpenAPI document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");
/// How often a streamed operation reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often a running operation logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the operator API reads.
pub struct ApiState {
    pub broker: Broker,
    /// Circuit breakers of this process's workers (none for `--role ingress`).
    pub breakers: Breakers,
    pub operator: Operator,
    /// The catalog, for the subscription routes' writes.
    pub catalog: Catalog,
    pub audit: Audit,
    /// The subscriptions this process runs (file and catalog), as the
    /// reconciler last applied them.
    pub desired: watch::Receiver<Arc<Desired>>,
    /// The file's configuration as last (re)loaded: which subscriptions it owns.
    pub config: watch::Receiver<Arc<Config>>,
    /// The event log's store, in the process that writes it.
    pub events: Option<crate::eventlog::Store>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/subscriptions", get(subscriptions::list).post(subscriptions::create))
        .route(
            "/api/v1/subscriptions/{name}",
            get(subscriptions::show)
                .put(subscriptions::replace)
                .patch(subscriptions::patch)
                .delete(subscriptions::remove),
        )
        .route("/api/v1/subscriptions/{name}/dead-letters", get(list_dead_letters).delete(purge_dead_letters))
        .route("/api/v1/subscriptions/{name}/dead-letters/{event_id}", get(show_dead_letter))
        .route("/api/v1/subscriptions/{name}/dead-letters/replay", post(replay_dead_letters))
        .route("/api/v1/subscriptions/{name}/pause", post(pause))
        .route("/api/v1/subscriptions/{name}/resume", post(resume))
        .route("/api/v1/subscriptions/{name}/replay", post(replay_window))
        .route("/api/v1/subscriptions/{name}/signing-secret/rotate", post(subscriptions::rotate_signing_secret))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/events", get(super::events::search))
        .route("/api/v1/events/{id}", get(super::events::show))
        .route("/api/v1/events/{id}/resend", post(super::events::resend))
        .route("/api/v1/subscriptions/{name}/attempts", get(super::events::attempts))
        .route("/api/v1/unrouted", get(list_unrouted).delete(purge_unrouted))
        .route("/api/v1/unrouted/{event_id}", get(show_unrouted))
        .route("/api/v1/unrouted/replay", post(replay_unrouted))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn(require_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Request bodies are JSON. A body declared as something else (`curl -d`
/// sends a form type) gets a clear `415` rather than a parse error about
/// characters it never meant to send; no `Content-Type` at all is accepted.
async fn require_json(request: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(given) = request.headers().get(header::CONTENT_TYPE) {
        let essence = given.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("request bodies are JSON: send Content-Type: application/json, not {essence:?}"),
            ));
        }
    }
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such operator API route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "see /api/v1/openapi.json",
    )
}

async fn authorize(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    // Read per request: a reload of the file adds and revokes tokens live.
    let config = state.config.borrow().clone();
    let tokens = &config.admin.tokens;
    if tokens.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "api-disabled",
            "Operator API disabled",
            "no admin.tokens are configured, so the operator API is disabled",
        ));
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let mut found = None;
    if let Some(given) = given {
        // Every token is compared, so timing says nothing about which matched.
        for token in tokens {
            if secrets_equal(given.as_bytes(), token.token.expose().as_bytes()) {
                found = Some(token);
            }
        }
    }
    let Some(token) = found else {
        let mut error =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", "a valid bearer token is required");
        error.www_authenticate = true;
        return Err(error);
    };
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let scope = required_scope(request.method(), &path);
    if !token.allows(scope) {
        tracing::info!(token = %token.name, scope = scope.as_str(), %path, "operator API: scope denied");
        if scope == Scope::Manage {
            let target = request.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            let detail = serde_json::json!({"method": request.method().as_str(), "path": request.uri().path(), "missing_scope": "manage"});
            state.audit.record(AuditRecord::new(&token.name, "denied", &target, "403", detail)).await;
        }
        return Err(forbidden(format!("token {:?} lacks the {:?} scope this route needs", token.name, scope.as_str())));
    }
    if token.is_limited() {
        let name = match request.extract_parts::<RawPathParams>().await {
            Ok(params) => params.iter().find(|(key, _)| *key == "name").map(|(_, value)| value.to_owned()),
            Err(_) => None,
        };
        match name {
            Some(name) if !token.covers(&name) => {
                return Err(forbidden(format!("token {:?} may not touch subscription {name:?}", token.name)));
            }
            Some(_) => {}
            // The list filters itself and a create checks the name in its
            // body; the OpenAPI document is public knowledge.
            None if path == "/api/v1/subscriptions" || path == "/api/v1/audit" => {}
            // The event routes show a limited token only its subscriptions'
            // part (a search must name one), and a resend names its
            // subscription in the body: each checks for itself.
            None if path.starts_with("/api/v1/events") => {}
            None if path == "/api/v1/openapi.json" => {}
            None => {
                return Err(forbidden(format!(
                    "token {:?} is limited to some subscriptions; this route is not about one",
                    token.name
                )));
            }
        }
    }
    request.extensions_mut().insert(Caller(Arc::new(token.clone())));
    Ok(next.run(request).await)
}

/// The token a request was authorized with (its name, scopes and limits).
#[derive(Clone)]
pub struct Caller(pub Arc<AccessToken>);

/// The scope a route needs: reading is `read`; creating, changing or
/// deleting a subscription itself is `manage`; every other change (replay,
/// purge, pause, resume) acts on queued events and is `operate`.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    if matches!(*method, Method::GET | Method::HEAD) {
        Scope::Read
    } else if route == "/api/v1/subscriptions"
        || route == "/api/v1/subscriptions/{name}"
        || route == "/api/v1/subscriptions/{name}/signing-secret/rotate"
    {
        Scope::Manage
    } else {
        Scope::Operate
    }
}

fn forbidden(detail: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct QueueStats {
    pub name: String,
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct SubscriptionStatus {
    pub name: String,
    /// `file` or `api`.
    #[serde(default)]
    pub managed_by: String,
    /// The catalog version (the `ETag`); 0 for the file's subscriptions.
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub topics: Vec<String>,
    pub destination_host: String,
    pub work: QueueStats,
    pub retry: Vec<QueueStats>,
    pub dead: QueueStats,
    /// `closed`, `open`, `half_open`; `null` where this process runs no worker
    /// for it (or its breaker is disabled).
    pub circuit: Option<String>,
    /// Paused by an operator (deliveries stop, events keep queueing).
    pub paused: bool,
}

pub(super) fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker-unavailable",
        "Broker unavailable",
        "RabbitMQ is not reachable",
    )
    .retry_after(Duration::from_secs(5))
}

pub(super) fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail)
}

impl From<OpError> for ApiError {
    fn from(error: OpError) -> Self {
        match error {
            OpError::Unavailable | OpError::Timeout | OpError::Broker(_) | OpError::Publish(_) => {
                tracing::warn!(%error, "operator operation failed on the broker");
                unavailable()
            }
            OpError::NoQueue(queue) => ApiError::new(
                StatusCode::NOT_FOUND,
                "queue-not-found",
                "Queue not found",
                format!("queue {queue} does not exist (has hookwire connected since it was configured?)"),
            ),
            OpError::CursorNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "cursor-not-found", "Cursor not found", error.to_string())
            }
            OpError::Invalid(detail) => invalid(detail),
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The subscription's name, checked against the config.
pub(super) fn known(state: &ApiState, name: &str) -> Result<SubscriptionQueues, ApiError> {
    state.broker.topology().subscription(name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-subscription",
            "Unknown subscription",
            format!("no subscription named {name:?} is configured"),
        )
    })
}

/// A JSON request body, with a problem+json answer when it does not parse.
pub(super) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(text).map_err(|e| invalid(format!("request body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

fn list_query(uri: &Uri) -> Result<ListQuery, ApiError> {
    let Query(query) = Query::<ListQuery>::try_from_uri(uri).map_err(|e| invalid(e.body_text()))?;
    if query.limit.is_some_and(|l| l == 0 || l > MAX_LIMIT) {
        return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    Ok(query)
}

async fn list(state: &ApiState, pile: &Pile, uri: &Uri) -> Result<Json<Page>, ApiError> {
    let query = list_query(uri)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    Ok(Json(state.operator.page(pile, limit, query.after.as_deref()).await?))
}

async fn show(state: &ApiState, pile: &Pile, id: &str) -> Result<Response, ApiError> {
    match state.operator.find(pile, id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "event-not-found",
            "Event not found",
            format!("no event {id:?} in the {pile}"),
        )),
    }
}

async fn list_dead_letters(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<Page>, ApiError> {
    known(&state, &name)?;
    list(&state, &Pile::Dead(name), &uri).await
}

async fn show_dead_letter(
    State(state): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    known(&state, &name)?;
    show(&state, &Pile::Dead(name), &id).await
}

async fn list_unrouted(State(state): State<Arc<ApiState>>, uri: Uri) -> Result<Json<Page>, ApiError> {
    list(&state, &Pile::Unrouted, &uri).await
}

async fn show_unrouted(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    show(&state, &Pile::Unrouted, &id).await
}

/// A replay's or purge's selector body, checked.
fn selection(body: &Bytes) -> Result<(Filter, bool), ApiError> {
    let selector: Selector = json_body(body)?;
    Ok((selector.compile().map_err(invalid)?, selector.dry_run))
}

async fn replay_dead_letters(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    known(&state, &name)?;
    let (filter, dry_run) = selection(&body)?;
    let operator = state.operator.clone();
    let audit = (state.audit.clone(), caller.name.clone());
    Ok(run(&headers, audit, "replay_dead_letters", Some(name.clone()), move |progress| async move {
        operator.replay_dead_letters(&name, &filter, dry_run, &progress).await
    })
    .await)
}

async fn replay_unrouted(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (filter, dry_run) = selection(&body)?;
    let operator = state.operator.clone();
    let audit = (state.audit.clone(), caller.name.clone());
    Ok(run(&headers, audit, "replay_unrouted", None, move |progress| async move {
        operator.replay_unrouted(&filter, dry_run, &progress).await
    })
    .await)
}

async fn purge_dead_letters(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    known(&state, &name)?;
    purge(&state, &caller, Pile::Dead(name.clone()), "purge_dead_letters", Some(name), &headers, &body).await
}

async fn purge_unrouted(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    purge(&state, &caller, Pile::Unrouted, "purge_unrouted", None, &headers, &body).await
}

async fn purge(
    state: &ApiState,
    caller: &AccessToken,
    pile: Pile,
    operation: &'static str,
    subscription: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (filter, dry_run) = selection(body)?;
    let operator = state.operator.clone();
    let audit = (state.audit.clone(), caller.name.clone());
    Ok(run(headers, audit, operation, subscription, move |progress| async move {
        operator.purge(&pile, &filter, dry_run, &progress).await
    })
    .await)
}

async fn replay_window(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    known(&state, &name)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("request body: give at least \"from\" (RFC 3339)"));
    }
    let window: Window = json_body(&body)?;
    window.bounds().map_err(invalid)?;
    if state.broker.topology().archive.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archive-disabled",
            "Archive disabled",
            "the archive is disabled ([archive] enabled = false), so there is nothing to replay from",
        ));
    }
    let operator = state.operator.clone();
    let audit = (state.audit.clone(), caller.name.clone());
    Ok(run(&headers, audit, "replay_window", Some(name.clone()), move |progress| async move {
        operator.replay_window(&name, &window, &progress).await
    })
    .await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
    after: Option<u64>,
    target: Option<String>,
}

/// `GET /api/v1/audit`: newest first, from this process's copy of the audit
/// stream (every process's actions). A token limited to some subscriptions
/// sees the records of those only.
async fn audit_log(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = Query::<AuditQuery>::try_from_uri(&uri).map_err(|e| invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let visible = |r: &AuditRecord| !caller.is_limited() || caller.covers(&r.target);
    let records = state.audit.page(limit, query.after, query.target.as_deref(), visible).await.map_err(|error| {
        tracing::warn!(%error, "reading older audit records from the stream failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Broker unavailable",
            "older audit records are read from RabbitMQ, which did not answer",
        )
    })?;
    let next_after = (records.len() == limit).then(|| records.last().map(|r| r.id)).flatten();
    Ok(Json(serde_json::json!({ "records": records, "next_after": next_after })))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PauseState {
    pub subscription: String,
    pub paused: bool,
}

async fn pause(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, &caller, name, true).await
}

async fn resume(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, &caller, name, false).await
}

async fn set_paused(
    state: &ApiState,
    caller: &AccessToken,
    name: String,
    paused: bool,
) -> Result<Json<PauseState>, ApiError> {
    known(state, &name)?;
    state.operator.control.set(&name, paused).await?;
    let operation = if paused { "pause" } else { "resume" };
    metrics::counter!(metric::OPERATIONS, "operation" => operation, "outcome" => "ok").increment(1);
    state.audit.record(AuditRecord::new(&caller.name, operation, &name, "ok", Value::Null)).await;
    Ok(Json(PauseState { subscription: name, paused }))
}

/// Runs a replay or purge in its own task and answers with its report, or
/// streams its progress (see the module docs).
async fn run<F, Fut>(
    headers: &HeaderMap,
    (audit, by): (Audit, String),
    operation: &'static str,
    subscription: Option<String>,
    work: F,
) -> Response
where
    F: FnOnce(watch::Sender<Report>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), OpError>> + Send,
{
    let (progress, updates) = watch::channel(Report::default());
    let task: JoinHandle<Result<Report, ApiError>> = tokio::spawn(async move {
        let started = std::time::Instant::now();
        // Long operations also show their progress in the logs.
        let work = work(progress.clone());
        tokio::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + LOG_EVERY, LOG_EVERY);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = ticker.tick() => {
                    let r = progress.borrow().clone();
                    tracing::info!(
                        operation,
                        subscription = subscription.as_deref().unwrap_or("-"),
                        scanned = r.scanned,
                        total = r.total,
                        replayed = r.replayed,
                        purged = r.purged,
                        "operator operation in progress"
                    );
                }
            }
        };
        let report = progress.borrow().clone();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        let target = subscription.clone().unwrap_or_else(|| "unrouted".to_owned());
        let detail = serde_json::to_value(&report).unwrap_or_default();
        audit.record(AuditRecord::new(&by, operation, &target, outcome, detail)).await;
        metrics::counter!(metric::OPERATIONS, "operation" => operation, "outcome" => outcome).increment(1);
        metrics::counter!(metric::OPERATOR_MESSAGES, "operation" => operation)
            .increment(report.replayed + report.purged);
        tracing::info!(
            operation,
            subscription = subscription.as_deref().unwrap_or("-"),
            dry_run = report.dry_run,
            scanned = report.scanned,
            matched = report.matched,
            replayed = report.replayed,
            purged = report.purged,
            skipped = report.skipped,
            failed = report.failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "operator operation finished"
        );
        result.map(|()| report.clone()).map_err(|error| {
            // Say what was already done: a failed replay may have moved some.
            let mut problem = ApiError::from(error);
            problem.detail = format!(
                "{} (before it stopped: {} scanned, {} matched, {} replayed, {} purged; \
                 running the same request again is safe)",
                problem.detail, report.scanned, report.matched, report.replayed, report.purged
            );
            problem
        })
    });
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/x-ndjson"));
    if !streaming {
        return match task.await {
            Ok(Ok(report)) => Json(report).into_response(),
            Ok(Err(error)) => error.into_response(),
            Err(_) => internal().into_response(),
        };
    }
    ndjson(task, updates)
}

fn internal() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "the operation failed")
}

/// `{"progress": …}` every [`PROGRESS_EVERY`], then `{"result": …}` or
/// `{"error": <problem>}`, one JSON document per line.
fn ndjson(task: JoinHandle<Result<Report, ApiError>>, updates: watch::Receiver<Report>) -> Response {
    let line = |value: serde_json::Value| {
        let mut line = serde_json::to_vec(&value).expect("serializes");
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    };
    let lines = stream::unfold(Some((task, updates)), move |running| async move {
        let (mut task, updates) = running?;
        tokio::select! {
            joined = &mut task => {
                let last = match joined {
                    Ok(Ok(report)) => serde_json::json!({ "result": report }),
                    Ok(Err(error)) => serde_json::json!({ "error": error.problem() }),
                    Err(_) => serde_json::json!({ "error": internal().problem() }),
                };
                Some((line(last), None))
            }
            _ = tokio::time::sleep(PROGRESS_EVERY) => {
                let progress = serde_json::json!({ "progress": *updates.borrow() });
                Some((line(progress), Some((task, updates))))
            }
        }
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}
