//! The subscription routes of the operator API: list, read, create,
//! replace, patch and delete subscriptions.
//!
//! Writes go to the catalog ([`crate::catalog`]) with the version they
//! replace (`If-Match`); the answer comes once this process's reconciler has
//! applied the change and the subscription's queues and bindings exist, so
//! an event accepted by any ingress after the answer is routed by it.
//! Definitions are checked exactly as the file's are, with every problem
//! listed. Subscriptions of the config file are read-only here.
//! Must not: return or log a secret (definitions serialize masked).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Bytes,
    extract::{Extension, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use lapin::Channel;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiState, Caller, QueueStats, SubscriptionStatus, unavailable};
use crate::{
    broker::{Topology, depth},
    catalog::{
        Change, Outcome,
        audit::{self, AuditRecord},
        reconcile::{Desired, ManagedBy, Wanted},
        sealed::{self, SecretKey},
    },
    config::{AccessToken, SubscriptionConfig},
    delivery::{http::Destination, transform::Jq},
    error::ApiError,
    operator::{OpError, letters::Pile},
};

/// How long a write waits for this process to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /api/v1/subscriptions`: every subscription the caller may see.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
) -> Result<Json<Vec<SubscriptionStatus>>, ApiError> {
    let desired = state.desired.borrow().clone();
    let channel = open_channel(&state).await?;
    let mut out = Vec::new();
    for (name, wanted) in desired.subscriptions.iter().filter(|(name, _)| caller.covers(name)) {
        out.push(status_of(&state, &channel, name, wanted).await?);
    }
    close(&state, channel).await;
    Ok(Json(out))
}

/// `GET /api/v1/subscriptions/{name}`: the definition (secrets masked), its
/// version and owner, and the live status.
pub async fn show(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let desired = state.desired.borrow().clone();
    let wanted = desired.subscriptions.get(&name).ok_or_else(|| not_found(&name))?;
    let channel = open_channel(&state).await?;
    let status = status_of(&state, &channel, &name, wanted).await;
    close(&state, channel).await;
    Ok(with_etag(StatusCode::OK, wanted.version, view(&name, wanted, Some(status?))))
}

/// `POST /api/v1/subscriptions`: create; `201` once it routes.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut object = object_body(&body)?;
    let name = match object.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(unprocessable(vec![problem("name", "required: the subscription's name")])),
    };
    covered(&caller, &name)?;
    refuse_file_managed(&state, &name)?;
    let definition = prepare(&state, &name, Value::Object(object))?;
    let change = Change::Put { name: name.clone(), expected_version: 0, definition };
    match write(&state, &caller, change).await? {
        Outcome::Applied { version } => {
            let wanted = applied(&state, &name, version).await?;
            let definition = masked(&wanted);
            let detail = json!({"version": version, "definition": definition});
            state.audit.record(AuditRecord::new(&caller.name, "create", &name, "ok", detail)).await;
            let mut response = with_etag(StatusCode::CREATED, version, view(&name, &wanted, None));
            let location = HeaderValue::from_str(&format!("/api/v1/subscriptions/{name}")).expect("names are ASCII");
            response.headers_mut().insert(header::LOCATION, location);
            Ok(response)
        }
        Outcome::Conflict { current } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "subscription-exists",
            "Subscription exists",
            format!("a subscription named {name:?} exists (version {current}); change it with PUT or PATCH"),
        )),
        Outcome::Synced => unreachable!("a put is never a sync"),
    }
}

/// `PUT /api/v1/subscriptions/{name}` with `If-Match`: replace.
pub async fn replace(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut object = object_body(&body)?;
    match object.remove("name") {
        None => {}
        Some(Value::String(given)) if given == name => {}
        Some(_) => return Err(renaming()),
    }
    update(&state, &caller, &name, &headers, Value::Object(object)).await
}

/// `PATCH /api/v1/subscriptions/{name}` with `If-Match`: a JSON merge patch
/// (RFC 7396) over the stored definition.
pub async fn patch(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: Value = serde_json::from_slice(&body).map_err(|e| super::api::invalid(format!("request body: {e}")))?;
    if patch.get("name").is_some_and(|given| given != &Value::String(name.clone())) {
        return Err(renaming());
    }
    refuse_file_managed(&state, &name)?;
    let current = state.catalog.state().get(&name).map(|e| e.definition.clone()).ok_or_else(|| not_found(&name))?;
    let mut merged = current;
    merge_patch(&mut merged, &patch);
    if let Value::Object(object) = &mut merged {
        object.remove("name");
    }
    update(&state, &caller, &name, &headers, merged).await
}

async fn update(
    state: &ApiState,
    caller: &AccessToken,
    name: &str,
    headers: &HeaderMap,
    definition: Value,
) -> Result<Response, ApiError> {
    covered(caller, name)?;
    refuse_file_managed(state, name)?;
    let expected = if_match(headers)?;
    if state.catalog.state().get(name).is_none() {
        return Err(not_found(name));
    }
    let definition = prepare(state, name, definition)?;
    let before = state.desired.borrow().subscriptions.get(name).map(masked).unwrap_or_default();
    let change = Change::Put { name: name.to_owned(), expected_version: expected, definition };
    match write(state, caller, change).await? {
        Outcome::Applied { version } => {
            let wanted = applied(state, name, version).await?;
            let detail = json!({"version": version, "changed": audit::diff(&before, &masked(&wanted))});
            state.audit.record(AuditRecord::new(&caller.name, "update", name, "ok", detail)).await;
            Ok(with_etag(StatusCode::OK, version, view(name, &wanted, None)))
        }
        Outcome::Conflict { current: 0 } => Err(not_found(name)),
        Outcome::Conflict { current } => Err(stale(name, expected, current)),
        Outcome::Synced => unreachable!("a put is never a sync"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    discard: bool,
    #[serde(default)]
    drain: bool,
}

/// `DELETE /api/v1/subscriptions/{name}`: refused (`409`) while its queues
/// hold events, unless `?discard=true`.
pub async fn remove(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    covered(&caller, &name)?;
    refuse_file_managed(&state, &name)?;
    if query.discard && query.drain {
        return Err(super::api::invalid("choose one of discard=true and drain=true"));
    }
    let Some(entry) = state.catalog.state().get(&name).cloned() else {
        return Err(not_found(&name));
    };
    let expected = match headers.get(header::IF_MATCH) {
        Some(_) => if_match(&headers)?,
        None => entry.version,
    };
    let topology = state.broker.topology();
    let channel = open_channel(&state).await?;
    let held = match topology.subscription(&name) {
        Some(queues) => {
            let mut names = vec![queues.work.clone()];
            names.extend(queues.retries.iter().map(|r| r.name.clone()));
            let mut held = serde_json::Map::new();
            for queue in names {
                let stats = depth(&state, &channel, queue).await?;
                if stats.messages > 0 {
                    held.insert(stats.name, json!(stats.messages));
                }
            }
            let dead = dead_letters(&state, &name).await?;
            if dead > 0 {
                held.insert(DEAD_LETTERS_KEY.to_owned(), json!(dead));
            }
            for queue in &queues.retired {
                let messages = retired_depth(&state, &queue.name).await?;
                if messages > 0 {
                    held.insert(queue.name.clone(), json!(messages));
                }
            }
            held
        }
        None => serde_json::Map::new(),
    };
    let total: u64 = held.values().filter_map(Value::as_u64).sum();
    if query.drain {
        close(&state, channel).await;
        return start_drain(state, caller, name, expected, held).await;
    }
    if total > 0 && !query.discard {
        close(&state, channel).await;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "subscription-not-empty",
            "Subscription holds events",
            format!(
                "{name:?} still holds {total} event(s) in its work or retry queues or its dead letters; \
                 replay or purge them, or delete with ?discard=true"
            ),
        )
        .with("messages", Value::Object(held)));
    }
    let change = Change::Delete { name: name.clone(), expected_version: expected };
    let outcome = write(&state, &caller, change).await;
    let result = match outcome {
        Ok(Outcome::Applied { .. }) => {
            // Routing stops with the reconcile, and every process's worker
            // cancels its consumer; then the queues go. Deleting a queue
            // under a consumer that is cancelling itself makes lapin see an
            // unexpected cancel-ok and drop the whole connection, so wait
            // for the consumers to leave first.
            let gone = wait_applied(&state, &name, |w| w.is_none()).await;
            wait_for_no_consumers(&state, &channel, &topology, &name).await?;
            // With `discard`, its dead letters go with it (counted in
            // `discarded`), settled before the queues go so that a failure
            // leaves both; left unsettled they would come back with a
            // subscription of the same name.
            let mut deleted = if query.discard { discard_dead_letters(&state, &name).await } else { Ok(()) };
            if deleted.is_ok() {
                deleted = topology
                    .delete_subscription(&name, &channel, state.broker.operation_timeout)
                    .await
                    .map_err(|e| e.to_string());
            }
            if deleted.is_ok() && !query.discard {
                // Written after the check above (a delivery that failed while
                // the workers stopped): kept, never settled unasked.
                if let Ok(late) = dead_letters(&state, &name).await
                    && late > 0
                {
                    tracing::error!(subscription = %name, dead_letters = late, "dead letters arrived while the subscription was deleted; they are kept and listed again if a subscription of this name is made");
                }
            }
            match (gone, deleted) {
                (Ok(()), Ok(())) => {
                    tracing::info!(subscription = %name, by = %caller.name, discarded = total, "subscription deleted");
                    let detail = json!({"discarded": total, "messages": held});
                    state.audit.record(AuditRecord::new(&caller.name, "delete", &name, "ok", detail)).await;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                (Err(error), _) => Err(error),
                (_, Err(error)) => {
                    tracing::warn!(subscription = %name, %error, "deleting the subscription's queues failed");
                    Err(unavailable())
                }
            }
        }
        Ok(Outcome::Conflict { current: 0 }) => Err(not_found(&name)),
        Ok(Outcome::Conflict { current }) => Err(stale(&name, expected, current)),
        Ok(Outcome::Synced) => unreachable!("a delete is never a sync"),
        Err(error) => Err(error),
    };
    close(&state, channel).await;
    result
}

/// How long both signing secrets sign after a rotation, unless told.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the previous secrets keep signing ("24h").
    overlap: Option<String>,
}

/// `POST /api/v1/subscriptions/{name}/signing-secret/rotate`: a new
/// Standard Webhooks secret, returned once. During `overlap` deliveries
/// carry a signature with the new secret and one with each previous one;
/// after it, only the new one signs.
pub async fn rotate_signing_secret(
    State(state): State<Arc<ApiState>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    covered(&caller, &name)?;
    refuse_file_managed(&state, &name)?;
    let request: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| super::api::invalid(format!("request body: {e}")))?
    };
    let overlap = match &request.overlap {
        Some(text) => crate::config::parse_duration(text).map_err(super::api::invalid)?,
        None => DEFAULT_OVERLAP,
    };
    let entry = state.catalog.state().get(&name).cloned().ok_or_else(|| not_found(&name))?;
    let key =
        state.config.borrow().admin.secret_key.as_ref().map(SecretKey::parse).transpose().map_err(|_| unavailable())?;
    let Some(key) = key else {
        return Err(unprocessable(vec![problem(
            "signing_secret",
            "signing secrets are stored sealed with admin.secret_key; the server has none",
        )]));
    };
    let mut definition = entry.definition.clone();
    key.open(&name, &mut definition).map_err(|_| {
        unprocessable(vec![problem("", "the stored secrets do not open with this process's admin.secret_key")])
    })?;
    let mut previous: Vec<Value> = match definition.get("signing_secret") {
        Some(Value::Array(list)) => list.clone(),
        Some(Value::String(one)) => vec![Value::String(one.clone())],
        _ => Vec::new(),
    };
    // Secrets whose overlap from an earlier rotation is over are gone for good.
    let earlier_overlap_over = definition
        .get("previous_signing_secrets_until")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .is_some_and(|until| std::time::SystemTime::now() >= until);
    if earlier_overlap_over {
        previous.truncate(1);
    }
    let mut random = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    let new = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random));
    let until = crate::broker::message::rfc3339(std::time::SystemTime::now() + overlap);
    let mut secrets = vec![Value::String(new.clone())];
    secrets.extend(previous.iter().cloned());
    definition["signing_secret"] = Value::Array(secrets);
    definition["previous_signing_secrets_until"] = Value::String(until.clone());
    let definition = prepare(&state, &name, definition)?;
    let change = Change::Put { name: name.clone(), expected_version: entry.version, definition };
    match write(&state, &caller, change).await? {
        Outcome::Applied { version } => {
            applied(&state, &name, version).await?;
            let detail = json!({"version": version, "previous_secrets": previous.len(), "previous_valid_until": until});
            state.audit.record(AuditRecord::new(&caller.name, "rotate_signing_secret", &name, "ok", detail)).await;
            let body = json!({
                "name": name,
                "version": version,
                "signing_secret": new,
                "previous_valid_until": until,
            });
            Ok(with_etag(StatusCode::OK, version, body))
        }
        Outcome::Conflict { current: 0 } => Err(not_found(&name)),
        Outcome::Conflict { current } => Err(stale(&name, entry.version, current)),
        Outcome::Synced => unreachable!("a put is never a sync"),
    }
}

/// `DELETE …?drain=true`: stop routing now (`202`), let the workers deliver
/// what is queued, then delete, in a task of this process. Dead letters
/// cannot be delivered by draining: they must be replayed or purged first.
async fn start_drain(
    state: Arc<ApiState>,
    caller: Arc<AccessToken>,
    name: String,
    expected: u64,
    held: serde_json::Map<String, Value>,
) -> Result<Response, ApiError> {
    let dead = held.get(DEAD_LETTERS_KEY).and_then(Value::as_u64).unwrap_or(0);
    if dead > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "subscription-has-dead-letters",
            "Dead letters cannot be drained",
            format!(
                "{name:?} holds {dead} dead letter(s), which draining would not deliver; replay or purge them first"
            ),
        )
        .with("messages", Value::Object(held)));
    }
    let change = Change::Drain { name: name.clone(), expected_version: expected };
    let version = match write(&state, &caller, change).await? {
        Outcome::Applied { version } => version,
        Outcome::Conflict { current: 0 } => return Err(not_found(&name)),
        Outcome::Conflict { current } => return Err(stale(&name, expected, current)),
        Outcome::Synced => unreachable!("a drain is never a sync"),
    };
    wait_applied(&state, &name, |w| w.is_some_and(|w| w.version >= version)).await?;
    let queued: u64 = held.values().filter_map(Value::as_u64).sum();
    tracing::info!(subscription = %name, by = %caller.name, queued, "draining: routing stopped, delivering what is queued");
    let detail = json!({"version": version, "queued": queued});
    state.audit.record(AuditRecord::new(&caller.name, "drain", &name, "ok", detail)).await;
    tokio::spawn(finish_drain(state, caller, name.clone()));
    let body = json!({"name": name, "version": version, "draining": true, "queued": queued});
    Ok(with_etag(StatusCode::ACCEPTED, version, body))
}

/// How often a drain checks whether the queues are empty.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// How often a drain logs its progress.
const DRAIN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Waits until the work and retry queues are empty, then deletes the
/// subscription. If events reappear after the workers let go (a delivery
/// that was in flight and failed), the queues are kept and the log says so:
/// a drain never deletes an event.
async fn finish_drain(state: Arc<ApiState>, caller: Arc<AccessToken>, name: String) {
    let mut last_log = Instant::now();
    loop {
        tokio::time::sleep(DRAIN_POLL).await;
        match state.catalog.state().get(&name) {
            Some(entry) if entry.draining => {}
            _ => return, // deleted (discard) or re-created meanwhile
        }
        // Dead letters written while it drains stop the drain before the
        // delete: afterwards they would be listed under no subscription.
        match dead_letters(&state, &name).await {
            Ok(0) | Err(_) => {}
            Ok(dead) => {
                tracing::error!(subscription = %name, dead_letters = dead, "drain stopped: dead letters arrived, which draining would not deliver; replay or purge them, then delete again (the subscription stays draining: not routed, still delivering)");
                return;
            }
        }
        match queued(&state, &name).await {
            Ok(0) => break,
            Ok(left) if last_log.elapsed() >= DRAIN_LOG_EVERY => {
                tracing::info!(subscription = %name, left, "draining");
                last_log = Instant::now();
            }
            Ok(_) => {}
            Err(_) => {} // the broker is away; try again
        }
    }
    let Some(version) = state.catalog.state().get(&name).map(|e| e.version) else { return };
    let change = Change::Delete { name: name.clone(), expected_version: version };
    if !matches!(write(&state, &caller, change).await, Ok(Outcome::Applied { .. })) {
        tracing::warn!(subscription = %name, "drain: the delete did not apply (changed meanwhile?); queues kept");
        return;
    }
    let topology = state.broker.topology();
    let result = async {
        wait_applied(&state, &name, |w| w.is_none()).await?;
        let channel = open_channel(&state).await?;
        let left = wait_for_no_consumers(&state, &channel, &topology, &name).await;
        let left = match left {
            // Dead letters written while it drained keep it too: deleting
            // would leave them listed under no subscription.
            Ok(()) => queued_on(&state, &channel, &topology, &name).await? + dead_letters(&state, &name).await?,
            Err(error) => return Err(error),
        };
        if left > 0 {
            tracing::error!(subscription = %name, left, "drain: events came back after the workers stopped; its queues are kept, nothing deleted");
        } else {
            topology.delete_subscription(&name, &channel, state.broker.operation_timeout).await.map_err(|error| {
                tracing::warn!(subscription = %name, %error, "drain: deleting the queues failed");
                unavailable()
            })?;
            tracing::info!(subscription = %name, by = %caller.name, "drained and deleted");
            let detail = json!({"discarded": 0, "drained": true});
            state.audit.record(AuditRecord::new(&caller.name, "delete", &name, "ok", detail)).await;
        }
        close(&state, channel).await;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(subscription = %name, detail = %error.detail, "drain: finishing failed; its queues are kept");
    }
}

/// Ready events in a subscription's work and retry queues.
async fn queued(state: &ApiState, name: &str) -> Result<u64, ApiError> {
    let topology = state.broker.topology();
    let channel = open_channel(state).await?;
    let count = queued_on(state, &channel, &topology, name).await;
    close(state, channel).await;
    count
}

async fn queued_on(state: &ApiState, channel: &Channel, topology: &Topology, name: &str) -> Result<u64, ApiError> {
    let Some(queues) = topology.subscription(name) else { return Ok(0) };
    let mut total = u64::from(depth(state, channel, queues.work.clone()).await?.messages);
    for retry in &queues.retries {
        total += u64::from(depth(state, channel, retry.name.clone()).await?.messages);
    }
    for queue in &queues.retired {
        total += u64::from(retired_depth(state, &queue.name).await?);
    }
    Ok(total)
}

/// Waits (bounded) until no process consumes the subscription's work queue.
async fn wait_for_no_consumers(
    state: &ApiState,
    channel: &Channel,
    topology: &Topology,
    name: &str,
) -> Result<(), ApiError> {
    let Some(queues) = topology.subscription(name) else { return Ok(()) };
    let deadline = Instant::now() + state.config.borrow().shutdown.drain_timeout + Duration::from_secs(5);
    while depth(state, channel, queues.work.clone()).await?.consumers > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

// ------------------------------------------------------------------ helpers

fn object_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(super::api::invalid("the request body must be a JSON object")),
        Err(e) => Err(super::api::invalid(format!("request body: {e}"))),
    }
}

fn problem(field: &str, message: impl Into<String>) -> Value {
    json!({"field": field, "message": message.into()})
}

fn unprocessable(errors: Vec<Value>) -> ApiError {
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e["field"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-subscription", "Invalid subscription", detail)
        .with("errors", Value::Array(errors))
}

/// Checks a definition exactly as the file's are checked, listing every
/// problem. Secrets are refused: storing them needs encryption at rest,
/// which this version does not have yet.
fn check(name: &str, definition: &Value) -> Result<SubscriptionConfig, ApiError> {
    let sub: SubscriptionConfig = serde_path_to_error::deserialize(definition).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        unprocessable(vec![problem(&field, e.into_inner().to_string())])
    })?;
    let prefix = format!("subscriptions.{name}.");
    let mut errors: Vec<Value> = sub
        .problems(name)
        .into_iter()
        .chain(Jq::problems(name, &sub))
        .map(|e| match e {
            crate::config::ConfigError::Invalid { key, message } => {
                let field = key.strip_prefix(&prefix).unwrap_or(if key.ends_with(name) { "name" } else { &key });
                problem(field, message)
            }
            other => problem("", other.to_string()),
        })
        .collect();
    if errors.is_empty()
        && let Err(e) = Destination::new(name, &sub)
    {
        errors.push(problem("", e.to_string()));
    }
    if errors.is_empty() { Ok(sub) } else { Err(unprocessable(errors)) }
}

/// What is stored for a definition: checked in clear (sealed values of a
/// patched definition opened first), then with every secret sealed under
/// `admin.secret_key`. Without a key, a definition with secrets is refused.
fn prepare(state: &ApiState, name: &str, definition: Value) -> Result<Value, ApiError> {
    let key = state.config.borrow().admin.secret_key.as_ref().map(SecretKey::parse).transpose().map_err(|_| {
        tracing::error!("admin.secret_key does not parse");
        unavailable()
    })?;
    let mut plain = definition;
    if sealed::has_sealed(&mut plain) {
        let opened =
            key.as_ref().ok_or_else(|| "admin.secret_key is not set".to_owned()).and_then(|k| k.open(name, &mut plain));
        if let Err(error) = opened {
            tracing::error!(subscription = %name, %error, "cannot open the stored secrets");
            return Err(unprocessable(vec![problem(
                "",
                "the stored secrets do not open with this process's admin.secret_key",
            )]));
        }
    }
    let sub = check(name, &plain)?;
    if !sub.has_secrets() {
        return Ok(plain);
    }
    let Some(key) = key else {
        return Err(unprocessable(vec![problem(
            "signing_secret, headers, auth",
            "this definition carries secrets, which are stored sealed with admin.secret_key; \
             the server has none (set admin.secret_key = \"${HOOKWIRE_SECRET_KEY}\", from openssl rand -hex 32)",
        )]));
    };
    key.seal(name, &mut plain);
    Ok(plain)
}

fn covered(caller: &AccessToken, name: &str) -> Result<(), ApiError> {
    if caller.covers(name) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        format!("token {:?} may not touch subscription {name:?}", caller.name),
    ))
}

fn refuse_file_managed(state: &ApiState, name: &str) -> Result<(), ApiError> {
    if state.config.borrow().subscriptions.contains_key(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed-by-file",
            "Managed by the config file",
            format!("subscription {name:?} is defined in the config file; change it there"),
        ));
    }
    Ok(())
}

/// A body whose `name` differs from the path's.
fn renaming() -> ApiError {
    unprocessable(vec![problem("name", "must match the name in the path (renaming is delete and create)")])
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown-subscription",
        "Unknown subscription",
        format!("no subscription named {name:?}"),
    )
}

fn stale(name: &str, expected: u64, current: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "stale-version",
        "Stale version",
        format!("{name:?} is at version {current}, not {expected}: read it again and reapply your change"),
    )
    .with("current_version", json!(current))
}

/// The version in `If-Match: "N"` (required for changes).
fn if_match(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if-match-required",
            "If-Match required",
            "send If-Match: \"<version>\" with the version (ETag) you read, so no change is overwritten unseen",
        ));
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| super::api::invalid("If-Match must be a version as the ETag gives it, e.g. \"42\""))
}

fn with_etag(status: StatusCode, version: u64, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    let etag = HeaderValue::from_str(&format!("\"{version}\"")).expect("digits");
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// A definition as answers and audit records show it: defaults filled in,
/// secrets masked.
fn masked(wanted: &Wanted) -> Value {
    serde_json::to_value(&wanted.definition).expect("definitions serialize")
}

fn view(name: &str, wanted: &Wanted, status: Option<SubscriptionStatus>) -> Value {
    let mut body = json!({
        "name": name,
        "version": wanted.version,
        "managed_by": wanted.managed_by,
        "draining": wanted.draining,
        "definition": masked(wanted),
    });
    if let Some(status) = status {
        body["status"] = serde_json::to_value(status).expect("status serializes");
    }
    body
}

async fn write(state: &ApiState, caller: &AccessToken, change: Change) -> Result<Outcome, ApiError> {
    state.catalog.write(&caller.name, change, state.broker.operation_timeout).await.map_err(|error| {
        tracing::warn!(%error, "writing to the catalog failed");
        unavailable()
    })
}

/// Waits until this process runs `version` of `name`, then makes sure its
/// queues and bindings exist (the reconciler declared them; declaring again
/// is idempotent and covers a reconcile that found no connection).
async fn applied(state: &ApiState, name: &str, version: u64) -> Result<Wanted, ApiError> {
    wait_applied(state, name, |w| w.is_some_and(|w| w.version >= version)).await?;
    let topology = state.broker.topology();
    let mut without = (*topology).clone();
    without.subscriptions.retain(|s| s.subscription != name);
    let session = state.broker.session().ok_or_else(unavailable)?;
    let declared = topology.reconcile(&without, &session.connection, state.broker.operation_timeout).await;
    declared.map_err(|error| {
        tracing::warn!(subscription = %name, %error, "declaring the subscription's queues failed");
        unavailable()
    })?;
    let desired = state.desired.borrow().clone();
    desired.subscriptions.get(name).cloned().ok_or_else(|| not_found(name))
}

async fn wait_applied(state: &ApiState, name: &str, done: impl Fn(Option<&Wanted>) -> bool) -> Result<(), ApiError> {
    let mut desired = state.desired.clone();
    let wait = desired.wait_for(|d: &Arc<Desired>| done(d.subscriptions.get(name)));
    match tokio::time::timeout(APPLY_TIMEOUT, wait).await {
        Ok(Ok(_)) => Ok(()),
        _ => {
            tracing::warn!(subscription = %name, "the change is stored but this process has not applied it in time");
            Err(unavailable())
        }
    }
}

async fn open_channel(state: &ApiState) -> Result<Channel, ApiError> {
    let session = state.broker.session().ok_or_else(unavailable)?;
    tokio::time::timeout(state.broker.operation_timeout, session.connection.create_channel())
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
}

async fn close(state: &ApiState, channel: Channel) {
    let _ = tokio::time::timeout(state.broker.operation_timeout, channel.close(200, "done".into())).await;
}

async fn depth(state: &ApiState, channel: &Channel, name: String) -> Result<QueueStats, ApiError> {
    match depth::read(channel, &name, state.broker.operation_timeout).await {
        Ok(Some(counts)) => Ok(QueueStats { name, messages: counts.messages, consumers: counts.consumers }),
        // The topology declares every queue it lists: missing is a broker
        // that lost it (or a declare still to come), not an empty queue.
        Ok(None) => {
            tracing::warn!(queue = %name, "reading queue depth failed: no such queue");
            Err(unavailable())
        }
        Err(error) => {
            tracing::warn!(queue = %name, %error, "reading queue depth failed");
            Err(unavailable())
        }
    }
}

/// The key of a subscription's dead letters in a `409`'s `messages` (the
/// others are queue names; dead letters live in the shared letters stream).
const DEAD_LETTERS_KEY: &str = "dead_letters";

/// Dead letters of `name` not yet replayed or purged, with everything any
/// process wrote before the call (a delete must not miss one).
async fn dead_letters(state: &ApiState, name: &str) -> Result<u64, ApiError> {
    let letters = &state.operator.letters;
    letters.sync().await?;
    Ok(letters.count(&Pile::Dead(name.to_owned())).await?)
}

/// Settles what is left of a deleted subscription's dead letters as
/// `discarded` (`?discard=true`).
async fn discard_dead_letters(state: &ApiState, name: &str) -> Result<(), String> {
    let letters = &state.operator.letters;
    let settle = async {
        letters.sync().await?;
        letters.settle(&letters.unsettled(&Pile::Dead(name.to_owned())), "discarded").await
    };
    settle.await.map_err(|error: OpError| format!("discarding the dead letters of {name}: {error}"))
}

/// Events waiting in a retired retry queue; 0 once it is gone (another
/// process may have swept it before this one noticed). On a channel of its
/// own, since asking about a missing queue closes the channel.
async fn retired_depth(state: &ApiState, queue: &str) -> Result<u32, ApiError> {
    let channel = open_channel(state).await?;
    let messages = match depth::read(&channel, queue, state.broker.operation_timeout).await {
        Ok(counts) => counts.map_or(0, |counts| counts.messages),
        Err(error) => {
            tracing::warn!(%queue, %error, "reading queue depth failed");
            return Err(unavailable());
        }
    };
    close(state, channel).await;
    Ok(messages)
}

async fn status_of(
    state: &ApiState,
    channel: &Channel,
    name: &str,
    wanted: &Wanted,
) -> Result<SubscriptionStatus, ApiError> {
    let topology = state.broker.topology();
    let queues = topology.subscription(name).ok_or_else(|| not_found(name))?.clone();
    let mut retry = Vec::new();
    for queue in &queues.retries {
        retry.push(depth(state, channel, queue.name.clone()).await?);
    }
    let circuit = state.breakers.read().expect("breakers lock").get(name).map(|b| b.state_name().to_owned());
    Ok(SubscriptionStatus {
        name: name.to_owned(),
        managed_by: match wanted.managed_by {
            ManagedBy::File => "file".to_owned(),
            ManagedBy::Api => "api".to_owned(),
        },
        version: wanted.version,
        owner: wanted.definition.owner.clone(),
        topics: wanted.definition.topics.clone(),
        destination_host: reqwest::Url::parse(&wanted.definition.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default(),
        work: depth(state, channel, queues.work.clone()).await?,
        retry,
        dead: QueueStats {
            name: topology.letters.clone(),
            messages: u32::try_from(state.operator.letters.count(&Pile::Dead(name.to_owned())).await?)
                .unwrap_or(u32::MAX),
            consumers: 0,
        },
        circuit,
        paused: state.operator.control.is_paused(name).await?,
    })
}

/// RFC 7396: objects merge member by member, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let target = target.as_object_mut().expect("made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The RFC's own example (section 3).
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"topics": ["a.#"], "retry": ["1s"]});
        merge_patch(&mut target, &json!({"topics": ["b.#"], "retry": null, "owner": "billing"}));
        assert_eq!(target, json!({"topics": ["b.#"], "owner": "billing"}));
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let definition = json!({
            "topics": ["acme..x"],
            "url": "ftp://nope",
            "concurrency": 0,
            "transform": "{id, kind: .type",
        });
        let error = check("billing", &definition).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        let errors = error.extensions["errors"].as_array().unwrap().clone();
        let fields: Vec<&str> = errors.iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["topics[0]", "url", "concurrency", "transform"], "{errors:?}");
        assert!(errors[3]["message"].as_str().unwrap().contains("line 1, column"), "{errors:?}");
        let unknown = check("billing", &json!({"topics": ["a.#"], "url": "http://h/", "colour": 1})).unwrap_err();
        assert!(unknown.detail.contains("colour"), "{}", unknown.detail);
    }
}
