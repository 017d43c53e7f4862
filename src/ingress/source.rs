//! A configured source, built: its scheme plus where its event id and type
//! come from. Turns a verified request into an [`Envelope`].

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use axum::http::{HeaderMap, HeaderName};
use bytes::Bytes;

use super::{
    schemes,
    verify::{Incoming, Scheme, VerifiedRequest, VerifyError},
};
use crate::{
    config::{ConfigError, SourceConfig},
    envelope::Envelope,
};

/// Longest provider event id kept as-is (AMQP `message-id` is a short string).
const MAX_EVENT_ID_LEN: usize = 200;

/// Where a value is read from a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Extractor {
    Header(HeaderName),
    /// An RFC 6901 JSON pointer into the body.
    Json(String),
    Static(String),
}

impl Extractor {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (kind, arg) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: expected \"json:/pointer\", \"header:Name\" or \"static:value\""))?;
        match kind {
            "header" => HeaderName::from_bytes(arg.to_ascii_lowercase().as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("{arg:?} is not a valid header name")),
            "json" if arg.is_empty() || arg.starts_with('/') => Ok(Self::Json(arg.to_owned())),
            "json" => Err(format!("{arg:?} is not a JSON pointer (it must start with '/')")),
            "static" if !arg.is_empty() => Ok(Self::Static(arg.to_owned())),
            _ => Err(format!("{spec:?}: expected \"json:/pointer\", \"header:Name\" or \"static:value\"")),
        }
    }

    fn extract(&self, headers: &HeaderMap, json: &mut LazyJson<'_>) -> Option<String> {
        match self {
            Self::Header(name) => headers.get(name)?.to_str().ok().map(str::to_owned),
            Self::Json(pointer) => match json.get()?.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
            Self::Static(value) => Some(value.clone()),
        }
    }
}

impl std::fmt::Display for Extractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Json(pointer) => write!(f, "json:{pointer}"),
            Self::Static(value) => write!(f, "static:{value}"),
        }
    }
}

/// The body parsed as JSON at most once, and only if an extractor needs it.
struct LazyJson<'a> {
    body: &'a [u8],
    parsed: Option<Option<serde_json::Value>>,
}

impl LazyJson<'_> {
    fn get(&mut self) -> Option<&serde_json::Value> {
        self.parsed.get_or_insert_with(|| serde_json::from_slice(self.body).ok()).as_ref()
    }
}

/// Why an accepted-by-routing request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("the event id is not usable: {0}")]
    BadEventId(String),
    #[error("the body is not valid JSON")]
    NotJson,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Verify(e) => e.reason(),
            Self::BadEventId(_) | Self::NotJson => "malformed",
        }
    }
}

/// What a verified request turns into.
#[derive(Debug)]
pub enum Accepted {
    /// An event to publish.
    Event(Envelope),
    /// A provider handshake, answered with this JSON and not published.
    Challenge(serde_json::Value),
}

impl Accepted {
    /// The envelope; panics on a challenge. For tests.
    pub fn event(self) -> Envelope {
        match self {
            Self::Event(e) => e,
            Self::Challenge(c) => panic!("expected an event, got challenge {c}"),
        }
    }
}

pub struct Source {
    pub name: String,
    pub scheme: Box<dyn Scheme>,
    /// Client networks allowed to post (empty: any).
    pub allow_ips: Vec<crate::config::Cidr>,
    pub limiter: Option<crate::rate::RateLimiter>,
    require_json: bool,
    event_type: Option<Extractor>,
    event_id: Option<Extractor>,
    forward_headers: Vec<HeaderName>,
}

impl Source {
    pub fn build(name: &str, config: &SourceConfig) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("sources.{name}.{field}");
        let (scheme, defaults) = schemes::build(name, config)?;
        let event_type = match config.event_type.as_deref().or(defaults.event_type) {
            Some(spec) => Some(Extractor::parse(spec).map_err(|m| ConfigError::invalid(key("event_type"), m))?),
            None => None,
        };
        let event_id = match config.event_id.as_deref().or(defaults.event_id) {
            Some(spec) => match Extractor::parse(spec).map_err(|m| ConfigError::invalid(key("event_id"), m))? {
                Extractor::Static(_) => {
                    return Err(ConfigError::invalid(
                        key("event_id"),
                        "a static event id would make every event a duplicate",
                    ));
                }
                e => Some(e),
            },
            None => None,
        };
        let forward_headers = config
            .forward_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    ConfigError::invalid(
                        key(&format!("forward_headers[{i}]")),
                        format!("{h:?} is not a valid header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            scheme,
            allow_ips: config.allow_ips.clone(),
            limiter: config.rate_limit.map(|rate| crate::rate::RateLimiter::new(rate, config.rate_limit_burst)),
            require_json: config.require_json,
            event_type,
            event_id,
            forward_headers,
        })
    }

    /// Verifies the request and, only if it passes, builds its envelope.
    /// The effective settings, defaults resolved, for `hookwire check`.
    pub fn describe(&self) -> String {
        let show = |e: &Option<Extractor>, none: &str| e.as_ref().map_or(none.to_owned(), ToString::to_string);
        let mut text = format!(
            "event_type={} event_id={}",
            show(&self.event_type, "(none: \"unknown\")"),
            show(&self.event_id, "(none: generated UUIDv7)")
        );
        if !self.allow_ips.is_empty() {
            let nets: Vec<String> = self.allow_ips.iter().map(|n| n.0.to_string()).collect();
            text += &format!(" allow_ips=[{}]", nets.join(", "));
        }
        if let Some(limiter) = &self.limiter {
            text += &format!(" rate_limit={}", limiter.describe());
        }
        if self.require_json {
            text += " require_json";
        }
        text
    }

    /// Verifies the request and, only if it passes, decides what to do with
    /// it: answer a provider handshake, or publish an envelope.
    pub fn accept(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Bytes,
        now: SystemTime,
    ) -> Result<Accepted, Rejection> {
        let request = Incoming { headers, body: &body, query };
        let verified = VerifiedRequest::verify(self.scheme.as_ref(), request, now)?;
        if let Some(reply) = self.scheme.challenge(verified.body) {
            return Ok(Accepted::Challenge(reply));
        }
        if self.require_json && serde_json::from_slice::<serde::de::IgnoredAny>(verified.body).is_err() {
            return Err(Rejection::NotJson);
        }
        let envelope = self.envelope(verified, now)?;
        Ok(Accepted::Event(Envelope { body, ..envelope }))
    }

    fn envelope(&self, request: VerifiedRequest<'_>, now: SystemTime) -> Result<Envelope, Rejection> {
        let mut json = LazyJson { body: request.body, parsed: None };
        let id = match self.event_id.as_ref().and_then(|e| e.extract(request.headers, &mut json)) {
            Some(id) => {
                if id.is_empty() || id.len() > MAX_EVENT_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Rejection::BadEventId(format!(
                        "ids must be 1 to {MAX_EVENT_ID_LEN} visible ASCII characters"
                    )));
                }
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let event_type = self
            .event_type
            .as_ref()
            .and_then(|e| e.extract(request.headers, &mut json))
            .unwrap_or_else(|| "unknown".to_owned());
        let content_type =
            request.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let headers = self
            .forward_headers
            .iter()
            .filter_map(|name| {
                let value = request.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        Ok(Envelope {
            id,
            source: self.name.clone(),
            event_type,
            received_at: now,
            content_type,
            headers,
            body: Bytes::new(),
        })
    }
}

/// All configured sources by name.
#[derive(Clone, Default)]
pub struct Sources(HashMap<String, Arc<Source>>);

impl Sources {
    pub fn build(configs: &std::collections::BTreeMap<String, SourceConfig>) -> Result<Self, ConfigError> {
        configs
            .iter()
            .map(|(name, config)| Ok((name.clone(), Arc::new(Source::build(name, config)?))))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Source>> {
        self.0.get(name)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::Config;

    fn source(extra: &str) -> Source {
        let text = format!(
            "[sources.acme]\nscheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n{extra}"
        );
        let config = Config::from_toml(&text, &|_| None).unwrap();
        Source::build("acme", &config.sources["acme"]).unwrap()
    }

    fn signed(source: &Source, body: &[u8], id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in source.scheme.sign(body, SystemTime::now(), id).unwrap() {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
        }
        h
    }

    #[test]
    fn builds_envelope_from_defaults() {
        let s = source("forward_headers = [\"User-Agent\"]");
        let body = Bytes::from_static(br#"{"type":"invoice.paid","n":1}"#);
        let mut h = signed(&s, &body, "msg_1");
        h.insert("user-agent", HeaderValue::from_static("acme/1.0"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let e = s.accept(&h, None, body.clone(), SystemTime::now()).unwrap().event();
        assert_eq!(e.id, "msg_1");
        assert_eq!(e.event_type, "invoice.paid");
        assert_eq!(e.routing_key(), "acme.invoice.paid");
        assert_eq!(e.body, body);
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        assert_eq!(e.headers, vec![("user-agent".to_owned(), "acme/1.0".to_owned())]);
    }

    #[test]
    fn event_type_falls_back_to_unknown_and_can_come_from_a_header() {
        let s = source("");
        let body = Bytes::from_static(b"not json");
        let e = s.accept(&signed(&s, &body, "m"), None, body, SystemTime::now()).map(Accepted::event).unwrap();
        assert_eq!(e.event_type, "unknown");

        let s = source("event_type = \"header:X-Event-Type\"");
        let body = Bytes::from_static(b"{}");
        let mut h = signed(&s, &body, "m");
        h.insert("x-event-type", HeaderValue::from_static("push"));
        assert_eq!(s.accept(&h, None, body, SystemTime::now()).map(Accepted::event).unwrap().event_type, "push");
    }

    #[test]
    fn unusable_event_ids_are_rejected() {
        let s = source("event_id = \"json:/id\"");
        let body = Bytes::from(format!(r#"{{"id":"{}"}}"#, "x".repeat(300)));
        let err = s.accept(&signed(&s, &body, "m"), None, body, SystemTime::now()).map(Accepted::event).unwrap_err();
        assert_eq!(err.reason(), "malformed");
    }

    #[test]
    fn extractor_specs_are_checked() {
        assert!(Extractor::parse("json:type").is_err());
        assert!(Extractor::parse("cookie:x").is_err());
        assert!(Extractor::parse("header:bad header").is_err());
        assert_eq!(Extractor::parse("static:ping").unwrap(), Extractor::Static("ping".to_owned()));
    }

    #[test]
    fn scheme_rejects_foreign_keys_and_bad_secrets() {
        let text = "[sources.acme]\nscheme = \"standard-webhooks\"\nsecrets = [\"whsec_!!\"]\n";
        let config = Config::from_toml(text, &|_| None).unwrap();
        let e = Source::build("acme", &config.sources["acme"]).err().unwrap().to_string();
        assert!(e.starts_with("sources.acme.secrets[0]:"), "{e}");
        let text = "[sources.acme]\nscheme = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ\"]\nprefix = \"x\"";
        let config = Config::from_toml(text, &|_| None).unwrap();
        let e = Source::build("acme", &config.sources["acme"]).err().unwrap().to_string();
        assert!(e.starts_with("sources.acme.prefix:"), "{e}");
        let text = "[sources.gh]\nscheme = \"hmac\"\nsecrets = [\"s\"]\n";
        let config = Config::from_toml(text, &|_| None).unwrap();
        let e = Source::build("gh", &config.sources["gh"]).err().unwrap().to_string();
        assert!(e.starts_with("sources.gh.header:"), "{e}");
        let text = "[sources.gh]\nscheme = \"hmac\"\nheader = \"x\"\n";
        let config = Config::from_toml(text, &|_| None).unwrap();
        let e = Source::build("gh", &config.sources["gh"]).err().unwrap().to_string();
        assert!(e.starts_with("sources.gh.secrets:"), "{e}");
    }
}
