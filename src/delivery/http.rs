//! HTTP out: one request of one event to a subscription's destination.
//!
//! Each subscription has its own connections ([`client::Connections`]) and
//! timeouts, so a destination that hangs holds only its own connections. Deliveries
//! carry the event id (stable across retries, for dedup), and, when the
//! subscription has a `signing_secret`, a Standard Webhooks signature any
//! Standard Webhooks library can verify.

use std::{
    io::Write as _,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine;
use bytes::Bytes;
use hyper::{
    Method, Uri,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT},
};
use url::{Position, Url};

use super::{
    client::{self, Connections, Host, Origin},
    retry::{Failure, Outcome, parse_retry_after},
};
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
/// An idle connection is closed after this long unused: less than the
/// keep-alive timeout of common servers (Node's is 5 s), so a connection is
/// seldom taken in the moment the destination closes it, which would fail
/// that attempt.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Once a destination has answered, how long its body may take at least
/// (within the attempt's timeout otherwise): a `2xx` is a delivery even if
/// the rest of its body never comes.
const BODY_GRACE: Duration = Duration::from_secs(1);

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const SOURCE: HeaderName = HeaderName::from_static("hookwire-source");
const ATTEMPT: HeaderName = HeaderName::from_static("hookwire-attempt");
const EVENT_TYPE: HeaderName = HeaderName::from_static("hookwire-event-type");
/// The headers a delivery sets itself. A static header of one of these
/// names (`headers` in the config) is sent only when the delivery has no
/// value of its own, as when each replaced it in a header map.
const PER_DELIVERY: [HeaderName; 7] =
    [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE, SOURCE, ATTEMPT, EVENT_TYPE, CONTENT_TYPE];

pub struct Destination {
    connections: Connections,
    /// The URL's host, for the breaker's log lines and the API.
    host: String,
    /// The request line, `Host`, `User-Agent`, the static headers and
    /// `Authorization`, written once as they go on the wire.
    head: Vec<u8>,
    /// Static headers a delivery's own header of the same name replaces
    /// ([`PER_DELIVERY`]).
    defaults: HeaderMap,
    /// Bounds a whole attempt: connecting, the request and reading the answer.
    timeout: Duration,
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
        let url = Url::parse(&config.url).map_err(|_| ConfigError::invalid(key("url"), "not a valid URL"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(ConfigError::invalid(key("url"), "must be http or https")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) => Host::Name(name.to_owned()),
            Some(url::Host::Ipv4(ip)) => Host::Address(ip.into()),
            Some(url::Host::Ipv6(ip)) => Host::Address(ip.into()),
            None => return Err(ConfigError::invalid(key("url"), "has no host")),
        };
        let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = Vec::new();
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::invalid(key("ca_file"), format!("cannot read {}: {e}", path.display()))
                })?;
                use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
                // A bundle with a broken entry is refused whole, not half loaded.
                roots = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| {
                    ConfigError::invalid(key("ca_file"), format!("{}: not valid PEM: {e}", path.display()))
                })?;
                if roots.is_empty() {
                    return Err(ConfigError::invalid(
                        key("ca_file"),
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
            }
            let connector = client::tls_config(roots).map_err(|e| {
                ConfigError::invalid(format!("subscriptions.{name}"), format!("cannot set up TLS: {e}"))
            })?;
            let server_name = tokio_rustls::rustls::pki_types::ServerName::try_from(
                url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned(),
            )
            .map_err(|_| ConfigError::invalid(key("url"), "its host is not a valid TLS server name"))?;
            Some((connector, server_name))
        } else {
            None
        };
        let target: Uri = url[Position::BeforePath..Position::AfterQuery]
            .parse()
            .map_err(|_| ConfigError::invalid(key("url"), "its path is not valid in a request"))?;
        let mut headers = HeaderMap::new();
        // Host as the URL writes it (the port only when not the default).
        let authority = &url[Position::BeforeHost..Position::AfterPort];
        headers.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|_| ConfigError::invalid(key("url"), "not a valid host"))?,
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("hookwire/", env!("CARGO_PKG_VERSION"))));
        // Some servers and firewalls refuse a request without one.
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        for (header, value) in &config.headers {
            let (Ok(header), Ok(mut value)) =
                (HeaderName::from_bytes(header.as_bytes()), HeaderValue::from_str(value.expose()))
            else {
                return Err(ConfigError::invalid(key(&format!("headers.{header}")), "not a valid HTTP header"));
            };
            // Refused in configs and by the API; a definition stored before
            // that still runs, without the header (hookwire writes the
            // framing, and a second `Content-Length` or `Transfer-Encoding`
            // would make the request ambiguous to the destination).
            if crate::config::FRAMING_HEADERS.contains(&header.as_str()) {
                tracing::warn!(subscription = %name, header = %header, "a static header that frames the request is not sent");
                continue;
            }
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
        } else if !url.username().is_empty() || url.password().is_some() {
            // Credentials in the URL (`https://user:pass@host/`) are sent as
            // Basic auth, as HTTP clients do; `auth` takes precedence.
            let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
            let pair = format!("{}:{}", decode(url.username()), decode(url.password().unwrap_or_default()));
            let credentials = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            let mut value = HeaderValue::from_str(&credentials)
                .map_err(|_| ConfigError::invalid(key("url"), "its credentials are not valid in a header"))?;
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
        let connect_timeout = config.timeout.min(Duration::from_secs(5));
        let origin = Origin { host, port, tls };
        let method =
            Method::from_bytes(config.method.as_bytes()).map_err(|_| ConfigError::invalid(key("method"), "invalid"))?;
        let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        let mut defaults = HeaderMap::new();
        for (name, value) in headers {
            let name = name.expect("each name once: built with insert");
            if PER_DELIVERY.contains(&name) {
                defaults.insert(name, value);
            } else {
                write_header(&mut head, name.as_str(), value.as_bytes());
            }
        }
        Ok(Self {
            connections: Connections::new(origin, usize::from(config.concurrency), IDLE_TIMEOUT, connect_timeout),
            host: url.host_str().unwrap_or_default().to_owned(),
            head,
            defaults,
            timeout: config.timeout,
            signing_keys,
            previous_keys_until: config
                .previous_signing_secrets_until
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
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

    /// One attempt, bounded by the subscription's `timeout` until the
    /// destination answers, and then by what is left of it (at least
    /// [`BODY_GRACE`]) for the answer's body.
    pub async fn send(&self, outgoing: Outgoing<'_>) -> Outcome {
        let (now, started) = (SystemTime::now(), Instant::now());
        let request = match self.request(&outgoing, now) {
            Ok(request) => request,
            Err(error) => return Outcome::Failed(Failure { error, ..Default::default() }),
        };
        let failed = |error: String| Outcome::Failed(Failure { error, ..Default::default() });
        let mut answer = match tokio::time::timeout(self.timeout, self.connections.send(&request)).await {
            Ok(Ok(answer)) => answer,
            Err(_) | Ok(Err(client::Failure::ConnectTimeout)) => return failed("timed out".to_owned()),
            Ok(Err(client::Failure::Connect(error))) => return failed(format!("connection failed: {error}")),
            Ok(Err(client::Failure::Request(error))) => return failed(format!("request failed: {error}")),
        };
        let status = answer.status;
        let retry_after = answer.retry_after.as_deref().and_then(|v| parse_retry_after(v, now));
        // Read the answer to its end (so the connection can be reused),
        // keeping the first bytes of a failure's.
        let mut snippet = Vec::new();
        let left = self.timeout.saturating_sub(started.elapsed()).max(BODY_GRACE);
        let read = answer.read_body(&mut snippet, SNIPPET, MAX_DRAIN);
        if let Ok(true) = tokio::time::timeout(left, read).await {
            answer.finish();
        }
        if (200..300).contains(&status) {
            return Outcome::Delivered { status };
        }
        let text = String::from_utf8_lossy(&snippet).trim().to_owned();
        Outcome::Failed(Failure {
            status: Some(status),
            error: format!("HTTP {status}"),
            retry_after,
            response: (!text.is_empty()).then_some(text),
        })
    }

    /// The request as it goes on the wire: the head built once, then this
    /// delivery's headers, `Content-Length` and the body.
    fn request(&self, outgoing: &Outgoing<'_>, now: SystemTime) -> Result<client::Request, String> {
        let envelope = outgoing.envelope;
        let timestamp = crate::ingress::verify::unix_seconds(now).to_string();
        let mut head = Vec::with_capacity(self.head.len() + 256);
        head.extend_from_slice(&self.head);
        // The id, source and type came through the ingress as header-safe
        // text; one that is not is a bug upstream, reported on the attempt.
        let mut own = |name: &HeaderName, text: Option<&str>| -> Result<(), String> {
            match text {
                Some(text) if valid_value(text) => write_header(&mut head, name.as_str(), text.as_bytes()),
                Some(text) => return Err(format!("not a valid header value: {text:?}")),
                None => {
                    if let Some(value) = self.defaults.get(name) {
                        write_header(&mut head, name.as_str(), value.as_bytes());
                    }
                }
            }
            Ok(())
        };
        own(&WEBHOOK_ID, Some(&envelope.id))?;
        own(&WEBHOOK_TIMESTAMP, Some(&timestamp))?;
        own(&SOURCE, Some(&envelope.source))?;
        own(&ATTEMPT, Some(&outgoing.attempt.to_string()))?;
        own(&WEBHOOK_SIGNATURE, self.signature(&envelope.id, &timestamp, &outgoing.body).as_deref())?;
        // An event type that is not a valid header value is left out, as before.
        own(&EVENT_TYPE, Some(envelope.event_type.as_str()).filter(|t| valid_value(t)))?;
        own(&CONTENT_TYPE, outgoing.content_type)?;
        // Then the blank line that ends the head.
        let _ = write!(head, "content-length: {}\r\n\r\n", outgoing.body.len());
        Ok(client::Request { head, body: outgoing.body.clone() })
    }
}

/// `name: value` and its line end, as HTTP/1.1 writes a header field.
fn write_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// What a per-delivery header value may hold: visible ASCII, space and
/// tab. No control character can end its line early, and no byte outside
/// ASCII reaches a destination that would read it in another charset.
fn valid_value(text: &str) -> bool {
    text.bytes().all(|b| (b' '..=b'~').contains(&b) || b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(definition: serde_json::Value) -> Destination {
        let config: SubscriptionConfig = serde_json::from_value(definition).unwrap();
        Destination::new("s", &config).unwrap()
    }

    #[test]
    fn the_head_is_written_once_with_static_headers_and_without_framing_ones() {
        // A definition stored before framing headers were refused still loads.
        let d = destination(serde_json::json!({
            "topics": ["a.#"], "url": "http://user:pw@example.test:8080/hook?x=1", "method": "PUT",
            "headers": {"X-Team": "billing", "Transfer-Encoding": "chunked", "Content-Type": "text/plain"}
        }));
        let head = String::from_utf8(d.head.clone()).unwrap();
        assert!(head.starts_with("PUT /hook?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: example.test:8080\r\n"), "{head}");
        assert!(head.contains("\r\nx-team: billing\r\n"), "{head}");
        assert!(head.contains("\r\nauthorization: Basic dXNlcjpwdw==\r\n"), "{head}");
        assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
        assert!(!head.contains("content-type"), "a header a delivery sets is not in the fixed head: {head}");
        assert_eq!(d.defaults.get(CONTENT_TYPE).unwrap(), "text/plain");
    }

    #[test]
    fn per_delivery_values_are_visible_ascii() {
        assert!(valid_value("evt_01H a\tb ~"));
        for bad in ["a\r\nx-injected: 1", "a\n", "\u{7f}", "tÿpe", "\0"] {
            assert!(!valid_value(bad), "{bad:?}");
        }
    }
}
