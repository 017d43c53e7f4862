//! The admin listener: `/healthz`, `/readyz`, `/metrics` (open), and the
//! operator API under `/api/v1` (bearer tokens; see `api`). Kept apart from
//! the ingress so it can stay private.

pub mod api;
mod events;
mod subscriptions;

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;

/// What readiness depends on; each check must be cheap (no network I/O).
pub struct AdminState {
    pub metrics: PrometheusHandle,
    /// `Err(why)` while this process should get no traffic.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

pub fn router(state: Arc<AdminState>, api: Arc<api::ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(api::router(api))
        .layer(axum::middleware::map_response(crate::error::problem_json_rejections))
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
