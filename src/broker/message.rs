//! How an [`Envelope`] and its delivery history travel as an AMQP message.
//!
//! Body: the sender's raw bytes. Properties: `message-id` = event id,
//! `content-type`, `timestamp`, persistent delivery mode. Everything else is a
//! flat `hookwire-*` header with a string or integer value: flat because
//! RabbitMQ streams (the archive, later) do not keep nested header tables.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

pub const SOURCE: &str = "hookwire-source";
pub const EVENT_TYPE: &str = "hookwire-event-type";
pub const RECEIVED_AT: &str = "hookwire-received-at";
/// Prefix of forwarded request headers: `hookwire-header-user-agent`.
pub const HEADER_PREFIX: &str = "hookwire-header-";
/// Attempts made so far (0 for a fresh event).
pub const ATTEMPTS: &str = "hookwire-attempts";
/// JSON array of [`Attempt`]s, oldest first.
pub const HISTORY: &str = "hookwire-history";
/// Why a message is a dead letter.
pub const DEAD_LETTER_REASON: &str = "hookwire-dead-letter-reason";
/// On a worker's dead letter: the subscription it is a dead letter of (all
/// dead letters share one stream, `ns.letters`).
pub const DEAD_LETTER_OF: &str = "hookwire-dead-letter-of";
/// On hookwire's own markers in the letters stream (`settled`, `sync`;
/// see `operator::letters`); letters never carry it.
pub const LETTERS_MARKER: &str = "hookwire-letters";
/// On a replayed copy: `"{millis} {reason}"`, when and why an operator
/// sent it again. The worker that takes the copy records `replayed` in the
/// event's story from it, in the commit its ack waits for.
pub const REPLAYED: &str = "hookwire-replayed";

/// Attempt records kept in the history header (oldest dropped first), and
/// the longest error text kept per record: the header must stay small.
const MAX_HISTORY: usize = 30;
const MAX_ERROR_LEN: usize = 300;

/// One failed delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// RFC 3339.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub error: String,
    /// The start of the destination's response body, size-capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

impl Attempt {
    pub fn new(at: SystemTime, status: Option<u16>, error: &str) -> Self {
        let mut error = error.to_owned();
        if error.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
            error.push('…');
        }
        Self { at: rfc3339(at), status, error, response: None }
    }

    pub fn with_response(mut self, response: Option<String>) -> Self {
        self.response = response;
        self
    }
}

/// What the broker remembers about an event's delivery between attempts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryState {
    pub attempts: u32,
    /// Failed attempts, oldest first (capped at the most recent ones).
    pub history: Vec<Attempt>,
    pub dead_letter_reason: Option<String>,
    /// Set on a copy an operator replayed; not carried into retries.
    pub replayed: Option<Replayed>,
}

/// Why and when an operator sent an event again.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// `dead_letters`, `archive` or `resend`.
    pub reason: String,
    pub at_ms: u64,
}

impl Replayed {
    pub fn now(reason: &str) -> Self {
        Self { reason: reason.to_owned(), at_ms: crate::eventlog::now_ms() }
    }
}

impl DeliveryState {
    /// Appends a failed attempt. Only the latest attempt keeps its response
    /// snippet, so the history header stays small.
    pub fn record_failure(&mut self, attempt: Attempt) {
        for earlier in &mut self.history {
            earlier.response = None;
        }
        self.attempts += 1;
        self.history.push(attempt);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message has no {0}")]
    Missing(&'static str),
    #[error("message header {0} is malformed")]
    Malformed(&'static str),
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Stored times ([`rfc3339`]) keep whole milliseconds, truncated. A window's
/// bounds may carry more precision, so they are widened to the stored
/// precision before comparing: the start rounded down ([`floor_stored`]),
/// the end rounded up ([`ceil_stored`]). Nothing received inside the window
/// is then missed; at worst an event of a bound's own millisecond is
/// included, which a replay may duplicate but never lose.
pub fn floor_stored(at: SystemTime) -> SystemTime {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// See [`floor_stored`].
pub fn ceil_stored(at: SystemTime) -> SystemTime {
    let floor = floor_stored(at);
    if floor == at { floor } else { floor + Duration::from_millis(1) }
}

pub fn encode(envelope: &Envelope, state: &DeliveryState) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: &str| {
        headers.insert(key.to_owned().into(), AMQPValue::LongString(value.to_owned().into()));
    };
    put(SOURCE, &envelope.source);
    put(EVENT_TYPE, &envelope.event_type);
    put(RECEIVED_AT, &rfc3339(envelope.received_at));
    for (name, value) in &envelope.headers {
        put(&format!("{HEADER_PREFIX}{name}"), value);
    }
    if !state.history.is_empty() {
        put(HISTORY, &serde_json::to_string(&state.history).expect("attempts serialize"));
    }
    if let Some(reason) = &state.dead_letter_reason {
        put(DEAD_LETTER_REASON, reason);
    }
    if let Some(Replayed { reason, at_ms }) = &state.replayed {
        put(REPLAYED, &format!("{at_ms} {reason}"));
    }
    headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(state.attempts)));
    let mut properties = BasicProperties::default()
        .with_message_id(envelope.id.as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(envelope.received_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
        .with_app_id("hookwire".into())
        .with_headers(headers);
    if let Some(content_type) = &envelope.content_type {
        properties = properties.with_content_type(content_type.as_str().into());
    }
    properties
}

fn string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::LongLongInt(i) => Some(i),
        AMQPValue::LongInt(i) => Some(i64::from(i)),
        AMQPValue::LongUInt(i) => Some(i64::from(i)),
        AMQPValue::ShortInt(i) => Some(i64::from(i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(i)),
        AMQPValue::ShortShortInt(i) => Some(i64::from(i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(i)),
        _ => None,
    }
}

pub fn decode(properties: &BasicProperties, body: Bytes) -> Result<(Envelope, DeliveryState), DecodeError> {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let get = |key: &'static str| -> Result<String, DecodeError> {
        let value = headers.inner().get(key).ok_or(DecodeError::Missing(key))?;
        string(value).ok_or(DecodeError::Malformed(key))
    };
    let id =
        properties.message_id().as_ref().map(|s| s.as_str().to_owned()).ok_or(DecodeError::Missing("message-id"))?;
    let received_at =
        humantime::parse_rfc3339_weak(&get(RECEIVED_AT)?).map_err(|_| DecodeError::Malformed(RECEIVED_AT))?;
    let forwarded = headers
        .inner()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix(HEADER_PREFIX)?.to_owned(), string(v)?)))
        .collect();
    let envelope = Envelope {
        id,
        source: get(SOURCE)?,
        event_type: get(EVENT_TYPE)?,
        received_at,
        content_type: properties.content_type().as_ref().map(|s| s.as_str().to_owned()),
        headers: forwarded,
        body,
    };
    let attempts = match headers.inner().get(ATTEMPTS) {
        None => 0,
        Some(v) => integer(v).and_then(|i| u32::try_from(i).ok()).ok_or(DecodeError::Malformed(ATTEMPTS))?,
    };
    let history = match headers.inner().get(HISTORY) {
        None => Vec::new(),
        Some(v) => string(v).and_then(|s| serde_json::from_str(&s).ok()).ok_or(DecodeError::Malformed(HISTORY))?,
    };
    let state = DeliveryState {
        attempts,
        history,
        dead_letter_reason: headers.inner().get(DEAD_LETTER_REASON).and_then(string),
        // Malformed is ignored rather than refused: it only feeds the story.
        replayed: headers.inner().get(REPLAYED).and_then(string).and_then(|value| {
            let (at_ms, reason) = value.split_once(' ')?;
            Some(Replayed { reason: reason.to_owned(), at_ms: at_ms.parse().ok()? })
        }),
    };
    Ok((envelope, state))
}

/// Seconds since the epoch, for `webhook-timestamp`.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: "evt_1".into(),
            source: "acme".into(),
            event_type: "invoice.paid".into(),
            received_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            content_type: Some("application/json".into()),
            headers: vec![("user-agent".into(), "acme/1".into())],
            body: Bytes::from_static(b"{\"a\": 1}"),
        }
    }

    #[test]
    fn a_malformed_replay_mark_is_ignored_not_refused() {
        let mut props = encode(&envelope(), &DeliveryState::default());
        let mut headers = props.headers().clone().unwrap();
        headers.insert(REPLAYED.into(), AMQPValue::LongString("soon dead_letters".into()));
        props = props.with_headers(headers);
        let (_, state) = decode(&props, Bytes::new()).unwrap();
        assert_eq!(state.replayed, None);
    }

    #[test]
    fn round_trips_envelope_and_state() {
        let mut state = DeliveryState::default();
        state.record_failure(Attempt::new(SystemTime::now(), Some(503), "HTTP 503"));
        state.record_failure(Attempt::new(SystemTime::now(), None, &"x".repeat(1000)));
        state.dead_letter_reason = Some("retries_exhausted".into());
        state.replayed = Some(Replayed { reason: "dead_letters".into(), at_ms: 1_700_000_000_456 });
        let props = encode(&envelope(), &state);
        let (decoded, decoded_state) = decode(&props, Bytes::from_static(b"{\"a\": 1}")).unwrap();
        assert_eq!(decoded, envelope());
        assert_eq!(decoded_state, state);
        assert_eq!(decoded_state.attempts, 2);
        assert!(decoded_state.history[1].error.len() < 400);
    }

    #[test]
    fn fresh_event_has_no_attempts() {
        let props = encode(&envelope(), &DeliveryState::default());
        let (_, state) = decode(&props, Bytes::new()).unwrap();
        assert_eq!(state, DeliveryState::default());
    }

    #[test]
    fn foreign_messages_are_rejected() {
        assert_eq!(decode(&BasicProperties::default(), Bytes::new()).unwrap_err(), DecodeError::Missing("message-id"));
        let props = BasicProperties::default().with_message_id("x".into());
        assert_eq!(decode(&props, Bytes::new()).unwrap_err(), DecodeError::Missing(RECEIVED_AT));
    }

    #[test]
    fn history_is_capped() {
        let mut state = DeliveryState::default();
        for i in 0..100 {
            state.record_failure(Attempt::new(SystemTime::now(), Some(500), &i.to_string()));
        }
        assert_eq!(state.attempts, 100);
        assert_eq!(state.history.len(), MAX_HISTORY);
        assert_eq!(state.history.last().unwrap().error, "99");
    }
}
