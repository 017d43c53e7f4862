//! The HTTP edge's error: every failure a client can see becomes an RFC 7807
//! `application/problem+json` body with `type`, `title`, `status`, `detail`.
//!
//! Internal causes are logged where they happen and never put in `detail`;
//! `detail` is written for the sender and never carries a secret.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short kebab-case slug; the problem `type` is `urn:hookwire:problem:{slug}`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<Duration>,
    /// Adds `WWW-Authenticate: Bearer` (a 401 from the operator API).
    pub www_authenticate: bool,
    /// Extension members of the problem (RFC 7807 §3.2), e.g. `errors`.
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            retry_after: None,
            www_authenticate: false,
            extensions: serde_json::Map::new(),
        }
    }

    /// Adds an extension member to the problem body.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl ApiError {
    /// The RFC 7807 body.
    pub fn problem(&self) -> serde_json::Value {
        let mut problem = json!({
            "type": format!("urn:hookwire:problem:{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        for (key, value) in &self.extensions {
            problem[key] = value.clone();
        }
        problem
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.www_authenticate {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Longest framework message carried into `detail`.
const MAX_REJECTION_DETAIL: usize = 300;

/// Turns any error response that is not problem+json yet (axum's own
/// rejections: a body over the limit, a path that does not decode, a query
/// that does not parse) into one, so a client meets one error format only.
/// The framework's text becomes `detail`: it describes the request, never
/// the server's state, so it is safe to send.
pub async fn problem_json_rejections(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut detail = String::from_utf8_lossy(&text).trim().to_owned();
    if detail.len() > MAX_REJECTION_DETAIL {
        let cut = (0..=MAX_REJECTION_DETAIL).rev().find(|&i| detail.is_char_boundary(i)).unwrap_or(0);
        detail.truncate(cut);
    }
    let slug = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "invalid-request",
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = if detail.is_empty() { title.to_owned() } else { detail };
    let mut response = ApiError::new(status, slug, title, detail).into_response();
    // Keep what the framework said besides the body (e.g. `Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().entry(name).or_insert_with(|| value.clone());
        }
    }
    response
}
