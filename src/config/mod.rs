//! The configuration file: one TOML document, parsed once at startup into
//! typed values.
//!
//! Owns: reading the file, `${VAR}` interpolation, defaults, and every check
//! that needs nothing but the config itself (names, topic patterns, URLs,
//! durations). Scheme-specific checks (can this secret be decoded?) belong to
//! the scheme and run in [`crate::ingress::Sources::build`].
//! Must not: touch the network or the broker.
//!
//! Every error names the key it is about (`subscriptions.billing.timeout: ...`)
//! and never contains a secret: values that came from the environment are
//! scrubbed from messages.

pub mod access;
mod duration;
mod interpolate;
mod limits;
mod secret;

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

pub use access::{AccessToken, Scope};
pub use duration::{format as format_duration, parse as parse_duration};
pub use interpolate::InterpolateError;
pub use limits::{ByteSize, Cidr, Rate};
pub use secret::Secret;

/// Upper bound for `concurrency`: it becomes the consumer prefetch, and
/// beyond this a single subscription would monopolise the process.
pub const MAX_CONCURRENCY: u16 = 1024;
/// Bound on the retry schedule length; each distinct delay is a queue.
pub const MAX_RETRIES: usize = 25;
/// RabbitMQ's default `consumer_timeout`: a channel holding an unacked
/// delivery longer is closed by the broker.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TOML: {0}")]
    Syntax(String),
    #[error(transparent)]
    Interpolate(#[from] InterpolateError),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub rabbitmq: RabbitConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub event_log: EventLogConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub subscriptions: BTreeMap<String, SubscriptionConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long to wait for the broker's publisher confirm before answering 503.
    #[serde(with = "duration")]
    pub publish_timeout: Duration,
    /// The `Retry-After` sent with a 503 when the broker is unavailable.
    #[serde(with = "duration")]
    pub retry_after: Duration,
    /// Bound on receiving a request's headers, and again on its body: a
    /// sender that trickles bytes (slow loris) cannot hold a connection.
    #[serde(with = "duration")]
    pub read_timeout: Duration,
    /// Most headers a request may carry (more: 431).
    pub max_headers: usize,
    /// Most bytes of request line and headers (more: 431). At least 8192.
    pub max_header_bytes: usize,
    /// Proxies whose `X-Forwarded-For` is believed when deciding a client's IP
    /// for `allow_ips`. Empty: the socket's peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            publish_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer tokens accepted by the operator API (`/api/...`); without any,
    /// the API is disabled, never open. Empty entries are dropped. A plain
    /// list gives full access; named tables can be scoped (see [`access`]).
    #[serde(deserialize_with = "access::deserialize")]
    pub tokens: Vec<AccessToken>,
    /// Seals the secrets of subscriptions made through the API (32 bytes as
    /// 64 hex characters). Without it the API refuses definitions with
    /// secrets. Empty means unset.
    pub secret_key: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), tokens: Vec::new(), secret_key: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    /// The broker's address, or several (the nodes of a cluster): a process
    /// connects to one, in shuffled order, and fails over to the next when
    /// it loses it. Secrets because they usually carry the broker password.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<Secret>,
    pub namespace: String,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Timeout for every other broker round trip (declare, ack, publish confirm
    /// on the delivery side).
    #[serde(with = "duration")]
    pub operation_timeout: Duration,
    /// `x-delivery-limit` on work queues: a message redelivered this many times
    /// without being settled (a worker crashing on it) goes to the dead-letter
    /// queue instead of looping forever.
    pub delivery_limit: u32,
    /// Members of each new quorum queue (work, retry) and stream (archive,
    /// catalog, audit) on a cluster; unset, the broker's default. Taken
    /// when a queue is created: an existing queue keeps its members (the
    /// broker refuses to redeclare it with another count).
    pub replicas: Option<u32>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            url: vec![Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f")],
            namespace: "hookwire".to_owned(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            delivery_limit: 20,
            replicas: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight requests and deliveries; what is
    /// still running after that is abandoned unacked and returns to its queue.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout: Duration::from_secs(30) }
    }
}

/// The archive: a RabbitMQ stream keeping every accepted event for
/// time-window replay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    pub enabled: bool,
    /// Events older than this are discarded (segment by segment).
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// The stream is trimmed (oldest segments first) beyond this size.
    pub max_bytes: ByteSize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self { enabled: true, max_age: Duration::from_secs(7 * 24 * 3600), max_bytes: ByteSize(10_000_000_000) }
    }
}

/// `[event_log]`: every event's story, recorded and stored by every
/// process, in SQLite (a file shared by one host's processes) or
/// PostgreSQL. See `eventlog`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogConfig {
    /// On by default (its cost, docs/BENCHMARKS.md). `false` records
    /// nothing and stores nothing.
    pub enabled: bool,
    pub backend: EventLogBackend,
    /// The SQLite file (`backend = "sqlite"`).
    pub path: std::path::PathBuf,
    /// The PostgreSQL connection string (`backend = "postgres"`), e.g.
    /// `postgres://hookwire:${PGPASSWORD}@db:5432/hookwire`. A secret: it
    /// usually carries a password.
    pub url: Option<Secret>,
    /// Records older than this go, a whole UTC day at a time (so a record
    /// lives between `max_age` and `max_age` + 1 day). At least 1 day.
    #[serde(with = "duration")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventLogBackend {
    #[default]
    Sqlite,
    Postgres,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: EventLogBackend::Sqlite,
            path: "hookwire-events.db".into(),
            url: None,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

impl EventLogConfig {
    /// The PostgreSQL table for `namespace`: its name with anything but
    /// letters, digits and `_` turned into `_`, then `_event_log`.
    pub fn table(namespace: &str) -> String {
        let safe: String = namespace
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' })
            .collect();
        format!("{safe}_event_log")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeKind {
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    Paddle,
    Square,
    Twilio,
    Hmac,
    Basic,
    Token,
    None,
}

impl SchemeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard-webhooks",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Shopify => "shopify",
            Self::Slack => "slack",
            Self::Paddle => "paddle",
            Self::Square => "square",
            Self::Twilio => "twilio",
            Self::Hmac => "hmac",
            Self::Basic => "basic",
            Self::Token => "token",
            Self::None => "none",
        }
    }
}

/// One webhook source. The fields are flat (as in the documented contract);
/// which of them a scheme accepts is checked when the scheme is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub scheme: SchemeKind,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Where the event type comes from: `json:/pointer`, `header:Name` or
    /// `static:value`. Default depends on the scheme.
    pub event_type: Option<String>,
    /// Where the event id comes from: `header:Name` or `json:/pointer`;
    /// when absent (or the header/field is missing) a UUIDv7 is generated.
    pub event_id: Option<String>,
    /// Request headers copied into the event envelope (case-insensitive names).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Timestamp tolerance, both directions (schemes with a timestamp).
    #[serde(default, with = "duration_opt")]
    pub tolerance: Option<Duration>,
    /// hmac, token: header carrying the signature or token.
    pub header: Option<String>,
    /// hmac: `sha256` (default), `sha512` or `sha1`.
    pub algorithm: Option<String>,
    /// hmac: `hex` (default) or `base64`.
    pub encoding: Option<String>,
    /// hmac, token: prefix before the signature or token, such as `sha256=`.
    pub prefix: Option<String>,
    /// hmac: signed content over `{body}`, `{timestamp}`, `{id}`.
    pub template: Option<String>,
    /// hmac: header holding `{timestamp}` (then checked against `tolerance`).
    pub timestamp_header: Option<String>,
    /// hmac: header holding `{id}`.
    pub id_header: Option<String>,
    /// square, twilio: the URL the provider was configured to call, which is
    /// part of what it signs (behind a proxy hookwire cannot see it).
    pub public_url: Option<String>,
    /// Only these client addresses may post (empty: any).
    #[serde(default)]
    pub allow_ips: Vec<Cidr>,
    /// Refuse bodies that are not valid JSON (400), before publishing.
    #[serde(default)]
    pub require_json: bool,
    /// Requests accepted per time unit (`"100/s"`); more get 429.
    pub rate_limit: Option<Rate>,
    /// Requests allowed in a burst above `rate_limit` (default: one
    /// second's worth, at least 1).
    pub rate_limit_burst: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub topics: Vec<String>,
    pub url: String,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    #[serde(
        default = "default_retry",
        deserialize_with = "duration::deserialize_list",
        serialize_with = "duration::serialize_list"
    )]
    pub retry: Vec<Duration>,
    /// Statuses that dead-letter at once instead of being retried.
    #[serde(default = "default_dead_letter_on")]
    pub dead_letter_on: Vec<u16>,
    /// HTTP method of deliveries: POST (default), PUT or PATCH.
    #[serde(default = "default_method")]
    pub method: String,
    /// Static headers added to every delivery (values are secrets: they
    /// often carry API keys).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Standard Webhooks secrets (`whsec_...`) to sign deliveries with; one
    /// string or a list (rotation: one signature per secret).
    #[serde(default, deserialize_with = "one_or_many")]
    pub signing_secret: Vec<Secret>,
    /// Set by a signing-secret rotation: until this time (RFC 3339) every
    /// `signing_secret` signs; after it, only the first (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_signing_secrets_until: Option<String>,
    /// Credentials the destination requires.
    pub auth: Option<DestinationAuth>,
    /// jq expression: the event is delivered only if it yields `true`.
    pub filter: Option<String>,
    /// jq program whose output becomes the (JSON) body.
    pub transform: Option<String>,
    /// Bound on running `filter` and `transform` for one event.
    #[serde(default = "default_transform_timeout", with = "duration")]
    pub transform_timeout: Duration,
    /// Deliveries per time unit to this destination (`"50/s"`), enforced
    /// across the subscription's concurrent deliveries in this process.
    pub rate_limit: Option<Rate>,
    /// Deliveries allowed at once above `rate_limit` (default one second's worth).
    pub rate_limit_burst: Option<u32>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// PEM file of extra certificate authorities to trust for this
    /// destination (an internal CA), on top of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The team that owns the subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whom to call when it misbehaves (an address, a channel, a rota).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
}

/// `circuit_breaker = { failures = 10, cooldown = "30s" }`; `failures = 0` disables it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failed attempts (timeouts, connection errors, 408, 429,
    /// 5xx) that open the breaker.
    pub failures: u32,
    /// How long an open breaker pauses deliveries before one probe.
    #[serde(with = "duration")]
    pub cooldown: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self { failures: 10, cooldown: Duration::from_secs(30) }
    }
}

fn default_transform_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `auth = { bearer = "..." }` or `auth = { basic = { user = "...", password = "..." } }`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationAuth {
    Bearer(Secret),
    Basic(BasicCredentials),
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentials {
    pub user: String,
    pub password: Secret,
}

fn default_dead_letter_on() -> Vec<u16> {
    vec![410]
}

/// Headers that frame a request or manage its connection (RFC 9110 and
/// 9112): a static one would contradict what hookwire writes, and a wrong
/// `Content-Length` or `Transfer-Encoding` desynchronises the connection.
pub const FRAMING_HEADERS: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "expect"];

fn default_method() -> String {
    "POST".to_owned()
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Secret),
        Many(Vec<Secret>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(secret) => vec![secret],
        OneOrMany::Many(secrets) => secrets,
    })
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_concurrency() -> u16 {
    16
}

fn default_retry() -> Vec<Duration> {
    ["1s", "5s", "30s", "2m", "10m"].iter().map(|d| duration::parse(d).expect("default durations parse")).collect()
}

mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::duration::parse(&text).map_err(D::Error::custom))
            .transpose()
    }
}

impl Config {
    /// Reads, interpolates from the process environment, parses and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses a config document; `env` resolves `${VAR}` references.
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let subs = interpolate::interpolate_table(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = subs.scrub(&e.into_inner().to_string());
            ConfigError::Invalid { key, message }
        })?;
        // `"${HOOKWIRE_SECRET_KEY:-}"` unset: no key, like an empty token.
        if config.admin.secret_key.as_ref().is_some_and(|k| k.expose().trim().is_empty()) {
            config.admin.secret_key = None;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !is_name(&self.rabbitmq.namespace, true) {
            return Err(ConfigError::invalid(
                "rabbitmq.namespace",
                "must be non-empty and use only letters, digits, '_', '-' and '.'",
            ));
        }
        if self.rabbitmq.url.is_empty() {
            return Err(ConfigError::invalid("rabbitmq.url", "give at least one amqp:// or amqps:// URL"));
        }
        for (i, url) in self.rabbitmq.url.iter().enumerate() {
            if url.expose().parse::<lapin::uri::AMQPUri>().is_err() {
                let key =
                    if self.rabbitmq.url.len() == 1 { "rabbitmq.url".to_owned() } else { format!("rabbitmq.url[{i}]") };
                return Err(ConfigError::invalid(key, "not a valid amqp:// or amqps:// URL"));
            }
        }
        if self.ingress.max_body_bytes == 0 {
            return Err(ConfigError::invalid("ingress.max_body_bytes", "must be greater than 0"));
        }
        for (key, d) in [
            ("ingress.publish_timeout", self.ingress.publish_timeout),
            ("rabbitmq.connect_timeout", self.rabbitmq.connect_timeout),
            ("rabbitmq.operation_timeout", self.rabbitmq.operation_timeout),
            ("ingress.read_timeout", self.ingress.read_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.event_log.enabled {
            if self.event_log.max_age < Duration::from_secs(86_400) {
                return Err(ConfigError::invalid("event_log.max_age", "must be at least 1d (a day is dropped whole)"));
            }
            match (self.event_log.backend, &self.event_log.url) {
                (EventLogBackend::Postgres, None) => {
                    return Err(ConfigError::invalid("event_log.url", "backend = \"postgres\" needs a url"));
                }
                (EventLogBackend::Postgres, Some(url))
                    if !url.expose().starts_with("postgres://") && !url.expose().starts_with("postgresql://") =>
                {
                    return Err(ConfigError::invalid("event_log.url", "not a postgres:// URL"));
                }
                _ => {}
            }
        }
        if let Some(key) = &self.admin.secret_key
            && let Err(message) = crate::catalog::sealed::SecretKey::parse(key)
        {
            return Err(ConfigError::invalid("admin.secret_key", message));
        }
        for token in &self.admin.tokens {
            let key = if token.name.starts_with("tokens[") {
                format!("admin.{}", token.name)
            } else {
                format!("admin.tokens.{}", token.name)
            };
            if token.token.expose().trim().len() < 16 {
                return Err(ConfigError::invalid(
                    key,
                    "operator tokens must be at least 16 characters (generate one: openssl rand -hex 24)",
                ));
            }
            if token.scopes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.scopes"),
                    "list at least one of \"read\", \"operate\", \"manage\"",
                ));
            }
            if token.subscriptions.as_ref().is_some_and(|p| p.is_empty() || p.iter().any(|p| p.is_empty())) {
                return Err(ConfigError::invalid(
                    format!("{key}.subscriptions"),
                    "name patterns like \"billing-*\"; leave the key out for all subscriptions",
                ));
            }
        }
        let mut values: Vec<&str> = self.admin.tokens.iter().map(|t| t.token.expose()).collect();
        values.sort_unstable();
        if values.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::invalid("admin.tokens", "two entries have the same token value"));
        }
        if self.ingress.max_headers == 0 {
            return Err(ConfigError::invalid("ingress.max_headers", "must be at least 1"));
        }
        if self.ingress.max_header_bytes < 8192 {
            return Err(ConfigError::invalid("ingress.max_header_bytes", "must be at least 8192"));
        }
        if self.archive.enabled {
            if self.archive.max_age < Duration::from_secs(1) {
                return Err(ConfigError::invalid("archive.max_age", "must be at least 1s"));
            }
            if self.archive.max_bytes.0 < 1_000_000 {
                return Err(ConfigError::invalid("archive.max_bytes", "must be at least 1MB"));
            }
        }
        if self.rabbitmq.replicas == Some(0) {
            return Err(ConfigError::invalid("rabbitmq.replicas", "must be at least 1"));
        }
        if self.rabbitmq.delivery_limit == 0 {
            return Err(ConfigError::invalid("rabbitmq.delivery_limit", "must be at least 1"));
        }
        for (name, source) in &self.sources {
            if source.rate_limit_burst == Some(0) {
                return Err(ConfigError::invalid(format!("sources.{name}.rate_limit_burst"), "must be at least 1"));
            }
            if source.rate_limit_burst.is_some() && source.rate_limit.is_none() {
                return Err(ConfigError::invalid(format!("sources.{name}.rate_limit_burst"), "needs rate_limit"));
            }
            if !is_name(name, false) {
                return Err(ConfigError::invalid(
                    format!("sources.{name}"),
                    "source names use only letters, digits, '_' and '-' (they are the first word of routing keys)",
                ));
            }
        }
        for (name, sub) in &self.subscriptions {
            sub.validate(name)?;
        }
        Ok(())
    }

    /// Human-readable problems that do not stop hookwire from running.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, source) in &self.sources {
            if source.scheme == SchemeKind::None {
                out.push(format!(
                    "sources.{name}: scheme \"none\" verifies nothing: anyone who can reach the ingress can publish to it"
                ));
            }
        }
        if self.subscriptions.is_empty() {
            out.push("no subscriptions: every accepted event is kept as unrouted".to_owned());
        }
        for (name, sub) in &self.subscriptions {
            for (i, topic) in sub.topics.iter().enumerate() {
                let first = topic.split('.').next().unwrap_or_default();
                if first != "*" && first != "#" && !self.sources.contains_key(first) {
                    out.push(format!(
                        "subscriptions.{name}.topics[{i}]: {topic:?} names source {first:?}, which is not configured"
                    ));
                }
            }
            // While the breaker is open the worker holds up to `concurrency`
            // prefetched events and probes with one per cooldown; an event can
            // wait that long unacked, and RabbitMQ closes channels that hold
            // deliveries past consumer_timeout (30 min by default), counting a
            // delivery toward delivery_limit each time.
            let breaker = &sub.circuit_breaker;
            let hold = breaker.cooldown * u32::from(sub.concurrency);
            if breaker.failures > 0 && hold >= CONSUMER_TIMEOUT {
                out.push(format!(
                    "subscriptions.{name}: circuit_breaker.cooldown x concurrency = {} while the breaker is open; \
                     prefetched events may exceed RabbitMQ's consumer_timeout (30m by default) and count toward \
                     rabbitmq.delivery_limit; shorten the cooldown or lower the concurrency",
                    format_duration(hold)
                ));
            }
        }
        out
    }
}

impl SubscriptionConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        match self.problems(name).into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem with this definition, not only the first: the API's
    /// `422` lists them all. Keys are `subscriptions.NAME.FIELD`. (The jq
    /// programs and the destination's CA file are checked by their owners.)
    pub fn problems(&self, name: &str) -> Vec<ConfigError> {
        let key = |field: &str| format!("subscriptions.{name}.{field}");
        let mut out = Vec::new();
        if !is_name(name, false) {
            out.push(ConfigError::invalid(
                format!("subscriptions.{name}"),
                "subscription names use only letters, digits, '_' and '-' (at most 64)",
            ));
        }
        if self.topics.is_empty() {
            out.push(ConfigError::invalid(key("topics"), "at least one topic pattern is required"));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            if let Err(m) = validate_topic(topic) {
                out.push(ConfigError::invalid(key(&format!("topics[{i}]")), m));
            }
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => out.push(ConfigError::invalid(key("url"), "must be an absolute http:// or https:// URL")),
        }
        if self.timeout.is_zero() {
            out.push(ConfigError::invalid(key("timeout"), "must be greater than 0"));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            out.push(ConfigError::invalid(key("concurrency"), format!("must be between 1 and {MAX_CONCURRENCY}")));
        }
        if self.retry.len() > MAX_RETRIES {
            out.push(ConfigError::invalid(key("retry"), format!("at most {MAX_RETRIES} delays")));
        }
        if self.rate_limit_burst == Some(0) || (self.rate_limit_burst.is_some() && self.rate_limit.is_none()) {
            out.push(ConfigError::invalid(key("rate_limit_burst"), "must be at least 1, with rate_limit set"));
        }
        if self.circuit_breaker.failures > 0 && self.circuit_breaker.cooldown.is_zero() {
            out.push(ConfigError::invalid(key("circuit_breaker.cooldown"), "must be greater than 0"));
        }
        if self.transform_timeout.is_zero() {
            out.push(ConfigError::invalid(key("transform_timeout"), "must be greater than 0"));
        }
        if !matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            out.push(ConfigError::invalid(key("method"), "use \"POST\", \"PUT\" or \"PATCH\""));
        }
        if let Some(status) = self.dead_letter_on.iter().find(|s| !(400..=599).contains(*s)) {
            out.push(ConfigError::invalid(key("dead_letter_on"), format!("{status} is not a 4xx or 5xx status")));
        }
        for (name, value) in &self.headers {
            let valid_name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !valid_name || reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                out.push(ConfigError::invalid(
                    key(&format!("headers.{name}")),
                    "not a valid HTTP header name and value",
                ));
            } else if FRAMING_HEADERS.iter().any(|framing| name.eq_ignore_ascii_case(framing)) {
                out.push(ConfigError::invalid(
                    key(&format!("headers.{name}")),
                    "says how the request is framed or the connection kept; hookwire sets it",
                ));
            }
        }
        if let Some(i) = self.retry.iter().position(|d| d.as_millis() == 0) {
            out.push(ConfigError::invalid(key(&format!("retry[{i}]")), "delays must be at least 1ms"));
        }
        if let Some(until) = &self.previous_signing_secrets_until
            && humantime::parse_rfc3339_weak(until).is_err()
        {
            out.push(ConfigError::invalid(key("previous_signing_secrets_until"), "not an RFC 3339 time"));
        }
        for (field, value) in [("owner", &self.owner), ("description", &self.description), ("contact", &self.contact)] {
            if value.as_ref().is_some_and(|v| v.len() > 1024) {
                out.push(ConfigError::invalid(key(field), "at most 1024 characters"));
            }
        }
        out
    }

    /// Whether the definition carries any secret (signing secrets, header
    /// values, destination credentials).
    pub fn has_secrets(&self) -> bool {
        !self.signing_secret.is_empty() || !self.headers.is_empty() || self.auth.is_some()
    }
}

/// `amqp://user:***@host/vhost`: a URL fit for logs and `check`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://{userinfo}@{host}"),
    }
}

fn is_name(name: &str, allow_dot: bool) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (allow_dot && c == '.'))
}

/// A RabbitMQ topic binding pattern over `{source}.{event_type}`: dot-separated
/// words, where `*` matches one word and `#` zero or more.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 255 {
        return Err("a topic pattern must be 1 to 255 characters".to_owned());
    }
    for word in topic.split('.') {
        if word.is_empty() {
            return Err(format!("{topic:?} has an empty word (\"..\" or a leading/trailing dot)"));
        }
        if word != "*" && word != "#" && (word.contains('*') || word.contains('#')) {
            return Err(format!("{topic:?}: '*' and '#' must stand alone as a whole word"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[ingress]
listen = "127.0.0.1:8080"
max_body_bytes = 1048576

[admin]
listen = "127.0.0.1:9090"

[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
namespace = "hookwire"

[sources.acme]
scheme = "standard-webhooks"
secrets = ["${ACME_WEBHOOK_SECRET}"]
event_type = "json:/type"

[subscriptions.billing]
topics = ["acme.invoice.*", "acme.customer.#"]
url = "http://127.0.0.1:9000/hooks"
timeout = "10s"
concurrency = 16
retry = ["1s", "5s", "30s", "2m", "10m"]
"#;

    fn env(name: &str) -> Option<String> {
        (name == "ACME_WEBHOOK_SECRET").then(|| "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==".to_owned())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &env)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn rabbitmq_url_takes_one_address_or_a_list() {
        let one = parse("[rabbitmq]\nurl = \"amqp://a:b@h1/%2f\"").unwrap();
        assert_eq!(one.rabbitmq.url.len(), 1);
        let many = parse("[rabbitmq]\nurl = [\"amqp://a:b@h1/%2f\", \"amqp://a:b@h2/%2f\"]").unwrap();
        assert_eq!(
            many.rabbitmq.url.iter().map(|u| u.expose()).collect::<Vec<_>>(),
            ["amqp://a:b@h1/%2f", "amqp://a:b@h2/%2f"]
        );
        let bad = error("[rabbitmq]\nurl = [\"amqp://a:b@h1/%2f\", \"http://nope\"]");
        assert!(bad.starts_with("rabbitmq.url[1]:"), "{bad}");
        assert!(error("[rabbitmq]\nurl = []").starts_with("rabbitmq.url:"));
    }

    #[test]
    fn named_tokens_are_scoped_and_the_list_is_full_access() {
        let list = parse("[admin]\ntokens = [\"0123456789abcdef01\", \"\"]").unwrap();
        assert_eq!(list.admin.tokens.len(), 1, "empty entries are dropped");
        assert_eq!(list.admin.tokens[0].name, "tokens[0]");
        assert!(list.admin.tokens[0].allows(Scope::Manage) && !list.admin.tokens[0].is_limited());
        let named = parse(
            "[admin.tokens.team]\ntoken = \"0123456789abcdef01\"\nscopes = [\"operate\"]\nsubscriptions = [\"billing-*\"]",
        )
        .unwrap();
        let team = &named.admin.tokens[0];
        assert_eq!(team.name, "team");
        assert!(team.allows(Scope::Operate) && !team.allows(Scope::Manage) && team.covers("billing-eu"));
        let e = error("[admin.tokens.team]\ntoken = \"0123456789abcdef01\"\nscopes = []");
        assert!(e.starts_with("admin.tokens.team.scopes:"), "{e}");
        let e = error("[admin.tokens.team]\ntoken = \"short\"\nscopes = [\"read\"]");
        assert!(e.starts_with("admin.tokens.team:") && !e.contains("short\""), "{e}");
        let e = error("[admin.tokens.team]\ntoken = \"0123456789abcdef01\"\nscopes = [\"admin\"]");
        assert!(e.contains("admin.tokens"), "{e}");
        let e = error(
            "[admin.tokens.a]\ntoken = \"0123456789abcdef01\"\nscopes = [\"read\"]\n[admin.tokens.b]\ntoken = \"0123456789abcdef01\"\nscopes = [\"read\"]",
        );
        assert!(e.contains("same token value"), "{e}");
    }

    #[test]
    fn parses_the_documented_contract() {
        let config = parse(EXAMPLE).unwrap();
        let sub = &config.subscriptions["billing"];
        assert_eq!(sub.topics, ["acme.invoice.*", "acme.customer.#"]);
        assert_eq!(sub.timeout, Duration::from_secs(10));
        assert_eq!(sub.retry.len(), 5);
        assert_eq!(sub.retry[3], Duration::from_secs(120));
        let source = &config.sources["acme"];
        assert_eq!(source.scheme, SchemeKind::StandardWebhooks);
        assert_eq!(source.secrets[0].expose(), "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw==");
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn static_headers_may_not_frame_the_request() {
        for name in ["Content-Length", "transfer-encoding", "Connection", "expect"] {
            let e = error(
                &EXAMPLE.replace("concurrency = 16", &format!("concurrency = 16\nheaders = {{ {name} = \"x\" }}")),
            );
            assert!(e.starts_with(&format!("subscriptions.billing.headers.{name}:")), "{e}");
        }
        let fine = EXAMPLE.replace("concurrency = 16", "concurrency = 16\nheaders = { Content-Type = \"text/plain\" }");
        assert!(parse(&fine).is_ok(), "a header a delivery may replace is allowed");
    }

    #[test]
    fn defaults_fill_missing_sections() {
        let config = parse("").unwrap();
        assert_eq!(config.ingress.max_body_bytes, 1024 * 1024);
        assert_eq!(config.rabbitmq.namespace, "hookwire");
        assert_eq!(config.warnings().len(), 1);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = error(&EXAMPLE.replace("timeout = \"10s\"", "timeout = \"10s\"\ntimout = \"1s\""));
        assert!(e.starts_with("subscriptions.billing"), "{e}");
        assert!(e.contains("timout"), "{e}");
        let e = error("[ingres]\nlisten = \"127.0.0.1:1\"");
        assert!(e.contains("ingres"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = error(&EXAMPLE.replace("timeout = \"10s\"", "timeout = \"10x\""));
        assert!(e.starts_with("subscriptions.billing.timeout:"), "{e}");
        let e = error(&EXAMPLE.replace("\"acme.invoice.*\"", "\"acme.inv*\""));
        assert!(e.starts_with("subscriptions.billing.topics[0]:"), "{e}");
        let e = error(&EXAMPLE.replace("http://127.0.0.1:9000/hooks", "ftp://x"));
        assert!(e.starts_with("subscriptions.billing.url:"), "{e}");
        let e = error(&EXAMPLE.replace("concurrency = 16", "concurrency = 0"));
        assert!(e.starts_with("subscriptions.billing.concurrency:"), "{e}");
        let e = error(&EXAMPLE.replace("\"standard-webhooks\"", "\"carrier-pigeon\""));
        assert!(e.starts_with("sources.acme.scheme:"), "{e}");
        let e = error(&EXAMPLE.replace("namespace = \"hookwire\"", "namespace = \"a b\""));
        assert!(e.starts_with("rabbitmq.namespace:"), "{e}");
        let e = error(&EXAMPLE.replace("[sources.acme]", "[sources.\"ac.me\"]"));
        assert!(e.starts_with("sources.ac.me:"), "{e}");
        let e = error("[admin]\ntokens = [\"${SHORT:-short}\"]");
        assert!(e.starts_with("admin.tokens[0]:") && !e.contains("short"), "{e}");
        let unset = Config::from_toml("[admin]\ntokens = [\"${UNSET_TOKEN:-}\"]", &|_| None).unwrap();
        assert!(unset.admin.tokens.is_empty(), "an empty token disables the API");
        let e = error("[ingress\nlisten=1");
        assert!(e.starts_with("invalid TOML"), "{e}");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let e = Config::from_toml(EXAMPLE, &|_| None).unwrap_err().to_string();
        assert_eq!(e, "sources.acme.secrets[0]: environment variable ACME_WEBHOOK_SECRET is not set");
    }

    #[test]
    fn errors_never_echo_interpolated_secrets() {
        // A secret put where a list is expected: serde's message would quote it.
        let text = EXAMPLE.replace("secrets = [\"${ACME_WEBHOOK_SECRET}\"]", "secrets = \"${ACME_WEBHOOK_SECRET}\"");
        let e = error(&text);
        assert!(e.starts_with("sources.acme.secrets"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "secret leaked: {e}");
        assert!(format!("{:?}", parse(EXAMPLE).unwrap()).contains("***"));
        assert!(!format!("{:?}", parse(EXAMPLE).unwrap()).contains("c2VjcmV0"));
    }

    #[test]
    fn warns_about_topics_naming_unknown_sources() {
        let config = parse(&EXAMPLE.replace("\"acme.customer.#\"", "\"github.push\"")).unwrap();
        assert_eq!(config.warnings().len(), 1);
        assert!(config.warnings()[0].contains("github"));
    }

    #[test]
    fn warns_when_an_open_breaker_could_outlast_the_consumer_timeout() {
        let long = EXAMPLE.replace("concurrency = 16", "concurrency = 16\ncircuit_breaker = { cooldown = \"2m\" }");
        let warnings = parse(&long).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("subscriptions.billing: circuit_breaker.cooldown x concurrency = 32m"),
            "{warnings:?}"
        );
        // The default (30 s x 16 = 8 min) is fine.
        assert!(parse(EXAMPLE).unwrap().warnings().is_empty());
    }
}
