//! HTTP out: one request of one event to a subscription's destination.
//!
//! Each subscription has its own client (own connection pool, own timeouts),
//! so a destination that hangs holds only its own connections. Deliveries
//! carry the event id (stable across retries, for dedup), and, when the
//! subscription has a `signing_secret`, a Standard Webhooks signature any
//! Standard Webhooks library can verify.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use reqwest::{
    Client, Method, Url,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};

use super::retry::{Failure, Outcome, parse_retry_after};
use crate::{
    config::{ConfigError, DestinationAuth, SubscriptionConfig},
    envelope::Envelope,
    ingress::{schemes::decode_standard_webhooks_secret, verify::Algorithm},
};

/// A response body is read (so the connection can be reused) up to this many
/// bytes; past that the connection is dropped instead.
const MAX_DRAIN: usize = 64 * 1024;
/// Bytes of a failed response's body kept in the attempt history.
const SNIPPET: usize = 256;

pub struct Destination {
    client: Client,
    url: Url,
    method: Method,
    /// Static headers plus `Authorization`, built once.
    headers: HeaderMap,
    /// Standard Webhooks keys (decoded `whsec_` secrets), in rotation order.
    signing_keys: Vec<Vec<u8>>,
    /// After this, only the first key signs (the overlap of a rotation).
    previous_keys_until: Option<SystemTime>,
}

/// What is sent: the envelope's body, or a transform's output.
pub struct Outgoing<'a> {
    pub envelope: &'a Envelope,
    pub body: Bytes,
    pub content_type: Option<&'a str>,
    pub attempt: u32,
}

impl Destination {
    pub fn new(name: &str, config: &SubscriptionConfig) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("subscriptions.{name}.{field}");
        let mut builder = Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ConfigError::invalid(key("ca_file"), format!("cannot read {}: {e}", path.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).ok().filter(|roots| !roots.is_empty()).ok_or_else(
                || ConfigError::invalid(key("ca_file"), format!("{} holds no PEM certificate", path.display())),
            )?;
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(usize::from(config.concurrency))
            .pool_idle_timeout(Duration::from_secs(60))
            // A webhook URL that redirects is misconfigured: report it rather
            // than send the payload somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookwire/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConfigError::invalid(format!("subscriptions.{name}"), format!("cannot build an HTTP client: {e}"))
            })?;
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let (Ok(header), Ok(mut value)) =
                (HeaderName::from_bytes(header.as_bytes()), HeaderValue::from_str(value.expose()))
            else {
                return Err(ConfigError::invalid(key(&format!("headers.{header}")), "not a valid HTTP header"));
            };
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        if let Some(auth) = &config.auth {
            let credentials = match auth {
                DestinationAuth::Bearer(token) => format!("Bearer {}", token.expose()),
                DestinationAuth::Basic(basic) => {
                    let pair = format!("{}:{}", basic.user, basic.password.expose());
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
                }
            };
            let mut value = HeaderValue::from_str(&credentials)
                .map_err(|_| ConfigError::invalid(key("auth"), "credentials must be visible ASCII"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let signing_keys = config
            .signing_secret
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                decode_standard_webhooks_secret(secret.expose()).ok_or_else(|| {
                    ConfigError::invalid(
                        key(&format!("signing_secret[{i}]")),
                        "not a Standard Webhooks secret (whsec_ followed by base64)",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            client,
            url: Url::parse(&config.url).map_err(|_| ConfigError::invalid(key("url"), "not a valid URL"))?,
            method: Method::from_bytes(config.method.as_bytes())
                .map_err(|_| ConfigError::invalid(key("method"), "invalid"))?,
            headers,
            signing_keys,
            previous_keys_until: config
                .previous_signing_secrets_until
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
        })
    }

    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// `webhook-signature` for this delivery: one `v1,` entry per key.
    fn signature(&self, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
        if self.signing_keys.is_empty() {
            return None;
        }
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        let overlap_over = self.previous_keys_until.is_some_and(|until| SystemTime::now() >= until);
        let keys = if overlap_over { &self.signing_keys[..1] } else { &self.signing_keys[..] };
        let entries: Vec<String> = keys
            .iter()
            .map(|key| {
                format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(Algorithm::Sha256.mac(key, &parts)))
            })
            .collect();
        Some(entries.join(" "))
    }

    pub async fn send(&self, outgoing: Outgoing<'_>) -> Outcome {
        let envelope = outgoing.envelope;
        let now = SystemTime::now();
        let timestamp = crate::ingress::verify::unix_seconds(now).to_string();
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header("webhook-id", &envelope.id)
            .header("webhook-timestamp", &timestamp)
            .header("hookwire-source", &envelope.source)
            .header("hookwire-attempt", outgoing.attempt.to_string());
        if let Some(signature) = self.signature(&envelope.id, &timestamp, &outgoing.body) {
            request = request.header("webhook-signature", signature);
        }
        if let Ok(value) = HeaderValue::from_str(&envelope.event_type) {
            request = request.header("hookwire-event-type", value);
        }
        if let Some(content_type) = outgoing.content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let mut response = match request.body(outgoing.body).send().await {
            Ok(response) => response,
            Err(e) => return Outcome::Failed(Failure { error: describe(&e), ..Default::default() }),
        };
        let status = response.status();
        let retry_after =
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
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
            return Outcome::Delivered { status: status.as_u16() };
        }
        let text = String::from_utf8_lossy(&snippet).trim().to_owned();
        Outcome::Failed(Failure {
            status: Some(status.as_u16()),
            error: format!("HTTP {}", status.as_u16()),
            retry_after,
            response: (!text.is_empty()).then_some(text),
        })
    }
}

/// A short, secret-free description of a transport error (never the URL,
/// which may carry credentials).
fn describe(error: &reqwest::Error) -> String {
    let root = {
        let mut source = std::error::Error::source(error);
        let mut deepest = None;
        while let Some(s) = source {
            deepest = Some(s.to_string());
            source = s.source();
        }
        deepest
    };
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response body error"
    } else {
        "request failed"
    };
    match root {
        Some(root) if !error.is_timeout() => format!("{kind}: {root}"),
        _ => kind.to_owned(),
    }
}
