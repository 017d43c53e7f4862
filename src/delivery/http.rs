//! HTTP out: one POST of one event to a subscription's destination.
//!
//! Each subscription has its own client (own connection pool, own timeouts),
//! so a destination that hangs holds only its own connections.

use std::time::Duration;

use reqwest::{Client, Url, header::HeaderValue};

use super::retry::Outcome;
use crate::{broker::message::unix_now, config::SubscriptionConfig, envelope::Envelope};

/// A response body is read (for connection reuse) up to this many bytes;
/// past that the connection is dropped instead.
const MAX_DRAIN: usize = 64 * 1024;
/// Bytes of an error response kept in the failure record.
const SNIPPET: usize = 200;

pub struct Destination {
    client: Client,
    url: Url,
}

impl Destination {
    pub fn new(config: &SubscriptionConfig) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(usize::from(config.concurrency))
            .pool_idle_timeout(Duration::from_secs(60))
            // A webhook that redirects is misconfigured: report it, do not follow.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookwire/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, url: Url::parse(&config.url).expect("validated when the config loaded") })
    }

    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    pub async fn send(&self, envelope: &Envelope, attempt: u32) -> Outcome {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("webhook-id", &envelope.id)
            .header("webhook-timestamp", unix_now().to_string())
            .header("hookwire-source", &envelope.source)
            .header("hookwire-attempt", attempt.to_string())
            .body(envelope.body.clone());
        if let Ok(value) = HeaderValue::from_str(&envelope.event_type) {
            request = request.header("hookwire-event-type", value);
        }
        if let Some(content_type) = &envelope.content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                let mut snippet = Vec::new();
                let mut read = 0;
                while read <= MAX_DRAIN {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            read += chunk.len();
                            let room = SNIPPET.saturating_sub(snippet.len());
                            snippet.extend_from_slice(&chunk[..room.min(chunk.len())]);
                        }
                        _ => break,
                    }
                }
                if status.is_success() {
                    Outcome::Delivered { status: status.as_u16() }
                } else {
                    let body = String::from_utf8_lossy(&snippet);
                    let error = if body.trim().is_empty() {
                        format!("HTTP {}", status.as_u16())
                    } else {
                        format!("HTTP {}: {}", status.as_u16(), body.trim())
                    };
                    Outcome::Failed { status: Some(status.as_u16()), error }
                }
            }
            Err(e) => Outcome::Failed { status: None, error: describe(&e) },
        }
    }
}

/// A short, secret-free description of a transport error.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_body() || error.is_decode() {
        "response body error".to_owned()
    } else {
        let mut text = String::from("request failed");
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            text = format!("request failed: {s}");
            source = s.source();
        }
        text
    }
}
