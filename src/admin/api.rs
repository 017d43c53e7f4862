//! The operator API under `/api/v1`, on the admin listener.
//!
//! Every route needs `Authorization: Bearer <token>` with one of
//! `admin.tokens`, compared in constant time. Without configured tokens the
//! API answers 404 to everything: disabled, never open.
//! Reads broker state (queue depths, consumers) rather than this process's
//! memory, so any process of a deployment gives the same answer.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use serde::Serialize;

use crate::{
    broker::{Broker, topology::SubscriptionQueues},
    config::{Config, Secret},
    delivery::breaker::Breaker,
    error::ApiError,
    ingress::verify::secrets_equal,
};

/// What the operator API reads.
pub struct ApiState {
    pub tokens: Vec<Secret>,
    pub broker: Broker,
    /// Topics and destination host per subscription, from the config.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Circuit breakers of this process's workers (none for `--role ingress`).
    pub breakers: HashMap<String, Arc<Breaker>>,
}

pub struct SubscriptionInfo {
    pub name: String,
    pub topics: Vec<String>,
    pub destination_host: String,
}

impl SubscriptionInfo {
    pub fn from_config(config: &Config) -> Vec<Self> {
        config
            .subscriptions
            .iter()
            .map(|(name, sub)| Self {
                name: name.clone(),
                topics: sub.topics.clone(),
                destination_host: reqwest::Url::parse(&sub.url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default(),
            })
            .collect()
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/subscriptions", get(subscriptions))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such operator API route")
}

async fn authorize(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Result<Response, ApiError> {
    if state.tokens.is_empty() {
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
    let mut valid = false;
    if let Some(given) = given {
        // Every token is compared, so timing says nothing about which matched.
        for token in &state.tokens {
            valid |= secrets_equal(given.as_bytes(), token.expose().as_bytes());
        }
    }
    if !valid {
        let mut error =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", "a valid bearer token is required");
        error.www_authenticate = true;
        return Err(error);
    }
    Ok(next.run(request).await)
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
    pub topics: Vec<String>,
    pub destination_host: String,
    pub work: QueueStats,
    pub retry: Vec<QueueStats>,
    pub dead: QueueStats,
    /// `closed`, `open`, `half_open`; `null` where this process runs no worker
    /// for it (or its breaker is disabled).
    pub circuit: Option<String>,
}

async fn subscriptions(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<SubscriptionStatus>>, ApiError> {
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Broker unavailable",
            "RabbitMQ is not reachable",
        )
        .retry_after(std::time::Duration::from_secs(5))
    };
    let session = state.broker.session().ok_or_else(unavailable)?;
    let timeout = state.broker.operation_timeout;
    let channel = tokio::time::timeout(timeout, session.connection.create_channel())
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    let stats = |name: String| {
        let channel = channel.clone();
        async move {
            let passive = QueueDeclareOptions { passive: true, ..Default::default() };
            let declared = tokio::time::timeout(
                timeout,
                channel.queue_declare(name.as_str().into(), passive, FieldTable::default()),
            )
            .await
            .map_err(|_| unavailable())?
            .map_err(|e| {
                tracing::warn!(queue = %name, error = %e, "reading queue depth failed");
                unavailable()
            })?;
            Ok::<_, ApiError>(QueueStats {
                name,
                messages: declared.message_count(),
                consumers: declared.consumer_count(),
            })
        }
    };
    let mut out = Vec::new();
    for info in &state.subscriptions {
        let queues: &SubscriptionQueues =
            state.broker.topology.subscription(&info.name).expect("planned from the same config");
        let mut retry = Vec::new();
        for queue in &queues.retries {
            retry.push(stats(queue.name.clone()).await?);
        }
        out.push(SubscriptionStatus {
            name: info.name.clone(),
            topics: info.topics.clone(),
            destination_host: info.destination_host.clone(),
            work: stats(queues.work.clone()).await?,
            retry,
            dead: stats(queues.dead.clone()).await?,
            circuit: state.breakers.get(&info.name).map(|b| b.state_name().to_owned()),
        });
    }
    let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
    Ok(Json(out))
}
