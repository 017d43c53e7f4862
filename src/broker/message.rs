//! How an [`Envelope`] and its delivery history travel as an AMQP message.
//!
//! Body: the event, framed: [`MAGIC`], one line of JSON with the envelope's
//! metadata (id, source, event type, received time, content type, forwarded
//! headers), then the sender's bytes, exactly. It is what the event is, the
//! same in every copy.
//!
//! Properties: persistent delivery mode and, only when there is something
//! to say, flat `hookwire-*` headers with what has happened to this copy
//! (attempts, history, dead-letter reason, replay mark): a fresh event
//! carries no header table. RabbitMQ handles a message's header table and
//! properties on every delivery, and at fan-out 10 the envelope as headers
//! cost it 8–10 µs per delivery, a fifth of its deliveries/s
//! (docs/BENCHMARKS.md, session 14). Headers stay flat (strings, integers)
//! because RabbitMQ streams (the archive, the letters) do not keep nested
//! header tables.
//!
//! Messages written before bodies were framed (the metadata in headers and
//! properties, the body bare) still decode: across an upgrade they wait in
//! queues, the letters stream and the archive.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// How a framed body starts; the number is the frame's version.
pub const MAGIC: &[u8] = b"hookwire/1 ";
/// What [`DecodeError`]s call the framed metadata.
const ENVELOPE: &str = "hookwire envelope";

/// Where messages written before framing kept the envelope (read only).
const SOURCE: &str = "hookwire-source";
const EVENT_TYPE: &str = "hookwire-event-type";
const RECEIVED_AT: &str = "hookwire-received-at";
const HEADER_PREFIX: &str = "hookwire-header-";
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
    #[error("message's {0} is malformed")]
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

/// The message that carries `envelope` with `state`: its properties and
/// its body (the framed event).
pub fn encode(envelope: &Envelope, state: &DeliveryState) -> (BasicProperties, Vec<u8>) {
    (properties(state), frame(envelope))
}

/// The body of every copy of `envelope`: [`MAGIC`], the metadata as one
/// line of JSON, then the sender's bytes.
pub fn frame(envelope: &Envelope) -> Vec<u8> {
    let meta = Meta {
        id: Cow::Borrowed(&envelope.id),
        source: Cow::Borrowed(&envelope.source),
        event_type: Cow::Borrowed(&envelope.event_type),
        received_at_ms: envelope.received_at_ms(),
        content_type: envelope.content_type.as_deref().map(Cow::Borrowed),
        headers: Cow::Borrowed(&envelope.headers),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 192 + envelope.body.len());
    out.extend_from_slice(MAGIC);
    // JSON escapes every control character, so the line cannot hold a
    // newline of its own and the first one ends it.
    serde_json::to_writer(&mut out, &meta).expect("envelope metadata serializes");
    out.push(b'\n');
    out.extend_from_slice(&envelope.body);
    out
}

/// Persistent, with headers only for what has happened to this copy: a
/// fresh event's properties are its delivery mode alone.
pub fn properties(state: &DeliveryState) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: String| {
        headers.insert(key.to_owned().into(), AMQPValue::LongString(value.into()));
    };
    if !state.history.is_empty() {
        put(HISTORY, serde_json::to_string(&state.history).expect("attempts serialize"));
    }
    if let Some(reason) = &state.dead_letter_reason {
        put(DEAD_LETTER_REASON, reason.clone());
    }
    if let Some(Replayed { reason, at_ms }) = &state.replayed {
        put(REPLAYED, format!("{at_ms} {reason}"));
    }
    if state.attempts > 0 {
        headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(state.attempts)));
    }
    if headers.inner().is_empty() { properties } else { properties.with_headers(headers) }
}

/// The envelope metadata in a framed body. Unknown keys are ignored, so a
/// later version may add some without a new [`MAGIC`].
#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    id: Cow<'a, str>,
    source: Cow<'a, str>,
    event_type: Cow<'a, str>,
    /// Milliseconds since the epoch: the precision stored times keep.
    received_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    headers: Cow<'a, [(String, String)]>,
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

/// The envelope and this copy's delivery state, from a framed body or, for
/// a message written before bodies were framed, from its headers.
pub fn decode(properties: &BasicProperties, data: Bytes) -> Result<(Envelope, DeliveryState), DecodeError> {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty).inner();
    let envelope =
        if headers.contains_key(RECEIVED_AT) { unheader(properties, headers, data)? } else { unframe(data)? };
    let attempts = match headers.get(ATTEMPTS) {
        None => 0,
        Some(v) => integer(v).and_then(|i| u32::try_from(i).ok()).ok_or(DecodeError::Malformed(ATTEMPTS))?,
    };
    let history = match headers.get(HISTORY) {
        None => Vec::new(),
        Some(v) => string(v).and_then(|s| serde_json::from_str(&s).ok()).ok_or(DecodeError::Malformed(HISTORY))?,
    };
    let state = DeliveryState {
        attempts,
        history,
        dead_letter_reason: headers.get(DEAD_LETTER_REASON).and_then(string),
        // Malformed is ignored rather than refused: it only feeds the story.
        replayed: headers.get(REPLAYED).and_then(string).and_then(|value| {
            let (at_ms, reason) = value.split_once(' ')?;
            Some(Replayed { reason: reason.to_owned(), at_ms: at_ms.parse().ok()? })
        }),
    };
    Ok((envelope, state))
}

/// See [`frame`]. The body is a slice of `data`, not a copy.
fn unframe(data: Bytes) -> Result<Envelope, DecodeError> {
    let rest = data.strip_prefix(MAGIC).ok_or(DecodeError::Missing(ENVELOPE))?;
    let line = rest.iter().position(|&b| b == b'\n').ok_or(DecodeError::Malformed(ENVELOPE))?;
    let meta: Meta = serde_json::from_slice(&rest[..line]).map_err(|_| DecodeError::Malformed(ENVELOPE))?;
    Ok(Envelope {
        id: meta.id.into_owned(),
        source: meta.source.into_owned(),
        event_type: meta.event_type.into_owned(),
        received_at: UNIX_EPOCH + Duration::from_millis(meta.received_at_ms),
        content_type: meta.content_type.map(Cow::into_owned),
        headers: meta.headers.into_owned(),
        body: data.slice(MAGIC.len() + line + 1..),
    })
}

/// A message written before bodies were framed: the metadata in
/// `hookwire-*` headers and properties, the body bare.
fn unheader(
    properties: &BasicProperties,
    headers: &std::collections::BTreeMap<lapin::types::ShortString, AMQPValue>,
    body: Bytes,
) -> Result<Envelope, DecodeError> {
    let get = |key: &'static str| -> Result<String, DecodeError> {
        let value = headers.get(key).ok_or(DecodeError::Missing(key))?;
        string(value).ok_or(DecodeError::Malformed(key))
    };
    let id =
        properties.message_id().as_ref().map(|s| s.as_str().to_owned()).ok_or(DecodeError::Missing("message-id"))?;
    let received_at =
        humantime::parse_rfc3339_weak(&get(RECEIVED_AT)?).map_err(|_| DecodeError::Malformed(RECEIVED_AT))?;
    let forwarded = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix(HEADER_PREFIX)?.to_owned(), string(v)?)))
        .collect();
    Ok(Envelope {
        id,
        source: get(SOURCE)?,
        event_type: get(EVENT_TYPE)?,
        received_at,
        content_type: properties.content_type().as_ref().map(|s| s.as_str().to_owned()),
        headers: forwarded,
        body,
    })
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
            headers: vec![("user-agent".into(), "acme/1".into()), ("x-note".into(), "line\nbreak \"quoted\"".into())],
            body: Bytes::from_static(b"{\"a\": 1}\n{\"b\": 2}"),
        }
    }

    fn decode_encoded(envelope: &Envelope, state: &DeliveryState) -> (Envelope, DeliveryState) {
        let (properties, body) = encode(envelope, state);
        decode(&properties, Bytes::from(body)).unwrap()
    }

    #[test]
    fn a_malformed_replay_mark_is_ignored_not_refused() {
        let (props, body) = encode(&envelope(), &DeliveryState::default());
        let mut headers = FieldTable::default();
        headers.insert(REPLAYED.into(), AMQPValue::LongString("soon dead_letters".into()));
        let (_, state) = decode(&props.with_headers(headers), Bytes::from(body)).unwrap();
        assert_eq!(state.replayed, None);
    }

    #[test]
    fn round_trips_envelope_and_state() {
        let mut state = DeliveryState::default();
        state.record_failure(Attempt::new(SystemTime::now(), Some(503), "HTTP 503"));
        state.record_failure(Attempt::new(SystemTime::now(), None, &"x".repeat(1000)));
        state.dead_letter_reason = Some("retries_exhausted".into());
        state.replayed = Some(Replayed { reason: "dead_letters".into(), at_ms: 1_700_000_000_456 });
        let (decoded, decoded_state) = decode_encoded(&envelope(), &state);
        assert_eq!(decoded, envelope());
        assert_eq!(decoded_state, state);
        assert_eq!(decoded_state.attempts, 2);
        assert!(decoded_state.history[1].error.len() < 400);
    }

    #[test]
    fn a_fresh_event_is_its_body_and_a_delivery_mode() {
        let bare = Envelope { content_type: None, headers: Vec::new(), ..envelope() };
        let (props, body) = encode(&bare, &DeliveryState::default());
        assert_eq!(props, BasicProperties::default().with_delivery_mode(2));
        let line = format!(
            "hookwire/1 {}\n",
            r#"{"id":"evt_1","source":"acme","event_type":"invoice.paid","received_at_ms":1700000000123}"#
        );
        assert_eq!(body, [line.as_bytes(), &bare.body[..]].concat());
        assert_eq!(decode(&props, Bytes::from(body)).unwrap(), (bare, DeliveryState::default()));
    }

    #[test]
    fn the_body_is_a_slice_of_the_message_not_a_copy() {
        let (props, body) = encode(&envelope(), &DeliveryState::default());
        let data = Bytes::from(body);
        let (decoded, _) = decode(&props, data.clone()).unwrap();
        assert_eq!(decoded.body.as_ptr(), data[data.len() - decoded.body.len()..].as_ptr());
    }

    #[test]
    fn unknown_metadata_is_ignored() {
        let body =
            "hookwire/1 {\"id\":\"e\",\"source\":\"s\",\"event_type\":\"t\",\"received_at_ms\":5,\"later\":[1]}\nhi";
        let (decoded, _) = decode(&BasicProperties::default(), Bytes::from(body)).unwrap();
        assert_eq!((decoded.id.as_str(), &decoded.body[..]), ("e", &b"hi"[..]));
    }

    /// What hookwire wrote before bodies were framed, built by hand.
    fn unframed(state_headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (key, value) in [
            (SOURCE, "acme"),
            (EVENT_TYPE, "invoice.paid"),
            (RECEIVED_AT, "2023-11-14T22:13:20.123Z"),
            ("hookwire-header-user-agent", "acme/1"),
        ] {
            headers.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        for (key, value) in state_headers {
            headers.insert((*key).into(), value.clone());
        }
        BasicProperties::default()
            .with_message_id("evt_1".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_app_id("hookwire".into())
            .with_content_type("application/json".into())
            .with_headers(headers)
    }

    #[test]
    fn messages_written_before_framing_still_decode() {
        let history = r#"[{"at":"2023-11-14T22:14:00.000Z","status":503,"error":"HTTP 503"}]"#;
        let props = unframed(&[
            (ATTEMPTS, AMQPValue::LongLongInt(1)),
            (HISTORY, AMQPValue::LongString(history.into())),
            (DEAD_LETTER_REASON, AMQPValue::LongString("retries_exhausted".into())),
        ]);
        let (decoded, state) = decode(&props, Bytes::from_static(b"{\"a\": 1}")).unwrap();
        let expected = Envelope {
            headers: vec![("user-agent".into(), "acme/1".into())],
            body: Bytes::from_static(b"{\"a\": 1}"),
            ..envelope()
        };
        assert_eq!(decoded, expected);
        assert_eq!((state.attempts, state.history[0].status), (1, Some(503)));
        assert_eq!(state.dead_letter_reason.as_deref(), Some("retries_exhausted"));
        // Retried or replayed now, it travels framed, and decodes the same.
        assert_eq!(decode_encoded(&decoded, &state), (expected, state));
    }

    #[test]
    fn fresh_event_has_no_attempts() {
        let (_, state) = decode_encoded(&envelope(), &DeliveryState::default());
        assert_eq!(state, DeliveryState::default());
    }

    #[test]
    fn foreign_messages_are_rejected() {
        let none = BasicProperties::default();
        assert_eq!(decode(&none, Bytes::from_static(b"{}")).unwrap_err(), DecodeError::Missing(ENVELOPE));
        let cut = Bytes::from_static(b"hookwire/1 {\"id\":\"e\"");
        assert_eq!(decode(&none, cut).unwrap_err(), DecodeError::Malformed(ENVELOPE));
        let incomplete = Bytes::from_static(b"hookwire/1 {\"id\":\"e\"}\n{}");
        assert_eq!(decode(&none, incomplete).unwrap_err(), DecodeError::Malformed(ENVELOPE));
        let mut headers = FieldTable::default();
        headers.insert(RECEIVED_AT.into(), AMQPValue::LongString("2023-11-14T22:13:20Z".into()));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(decode(&props, Bytes::new()).unwrap_err(), DecodeError::Missing("message-id"));
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
