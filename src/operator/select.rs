//! Which messages an operator means (selectors), and how a message looks in
//! the operator API (views).

use std::{
    collections::{BTreeMap, HashSet},
    time::SystemTime,
};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::scan::Message;
use crate::{
    broker::message::{self, Attempt},
    config::validate_topic,
    envelope::{routing_word, topic_matches},
};

/// How much of a body a listing shows.
pub const PREVIEW_BYTES: usize = 1024;

/// The selectors of a replay or purge. Criteria combine with AND; `all`
/// stands alone. An empty selector is refused, so a forgotten filter never
/// means "everything".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Exact event ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// A topic pattern over the event type: `invoice.*`, `customer.#`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The source the event came in through.
    pub source: Option<String>,
    /// The last attempt's HTTP status.
    pub status: Option<u16>,
    /// Why it was dead-lettered: `retries_exhausted`, `dead_letter_status`,
    /// `transform_failed`, `delivery_limit`, `malformed`.
    pub reason: Option<String>,
    /// The last failure happened at or after this time (RFC 3339).
    pub failed_after: Option<String>,
    /// The last failure happened before this time (RFC 3339).
    pub failed_before: Option<String>,
    #[serde(default)]
    pub all: bool,
    /// Count what would be affected; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A validated [`Selector`].
#[derive(Debug)]
pub struct Filter {
    ids: HashSet<String>,
    event_type: Option<String>,
    source: Option<String>,
    status: Option<u16>,
    reason: Option<String>,
    failed_after: Option<SystemTime>,
    failed_before: Option<SystemTime>,
    all: bool,
}

impl Selector {
    /// Checks the selector; the error is written for the operator.
    pub fn compile(&self) -> Result<Filter, String> {
        let time = |key: &str, value: &Option<String>| -> Result<Option<SystemTime>, String> {
            value
                .as_deref()
                .map(|text| {
                    humantime::parse_rfc3339_weak(text)
                        .map_err(|_| format!("{key}: {text:?} is not an RFC 3339 time like 2026-11-21T09:00:00Z"))
                })
                .transpose()
        };
        if let Some(pattern) = &self.event_type {
            validate_topic(pattern).map_err(|e| format!("type: {e}"))?;
        }
        let filter = Filter {
            ids: self.ids.iter().cloned().collect(),
            event_type: self.event_type.clone(),
            source: self.source.clone(),
            status: self.status,
            reason: self.reason.clone(),
            // Attempt times are stored in whole milliseconds.
            failed_after: time("failed_after", &self.failed_after)?.map(message::floor_stored),
            failed_before: time("failed_before", &self.failed_before)?.map(message::ceil_stored),
            all: self.all,
        };
        let narrowed = !filter.ids.is_empty()
            || filter.event_type.is_some()
            || filter.source.is_some()
            || filter.status.is_some()
            || filter.reason.is_some()
            || filter.failed_after.is_some()
            || filter.failed_before.is_some();
        match (filter.all, narrowed) {
            (true, true) => Err("\"all\": true cannot be combined with other selectors".to_owned()),
            (false, false) => Err("say which messages: \"ids\", \"type\", \"source\", \"status\", \"reason\", \
                 \"failed_after\", \"failed_before\", or \"all\": true"
                .to_owned()),
            _ => Ok(filter),
        }
    }
}

impl Filter {
    pub fn matches(&self, message: &Message) -> bool {
        if self.all {
            return true;
        }
        let Ok((envelope, state)) = &message.decoded else {
            // Not ours: only its id (when it has one), reason `malformed` or
            // `all` can select it; the other criteria need what it lacks.
            return (self.ids.is_empty() || message.id().is_some_and(|id| self.ids.contains(id)))
                && self.reason.as_deref().is_none_or(|r| r == "malformed")
                && self.event_type.is_none()
                && self.source.is_none()
                && self.status.is_none()
                && self.failed_after.is_none()
                && self.failed_before.is_none();
        };
        let last = state.history.last();
        let last_at = last.and_then(|a| humantime::parse_rfc3339_weak(&a.at).ok());
        (self.ids.is_empty() || self.ids.contains(&envelope.id))
            && self.event_type.as_deref().is_none_or(|p| topic_matches(p, &routing_word(&envelope.event_type)))
            && self.source.as_deref().is_none_or(|s| s == envelope.source)
            && self.status.is_none_or(|s| last.and_then(|a| a.status) == Some(s))
            && self.reason.as_deref().is_none_or(|r| reason(message, state).as_deref() == Some(r))
            && self.failed_after.is_none_or(|t| last_at.is_some_and(|at| at >= t))
            && self.failed_before.is_none_or(|t| last_at.is_some_and(|at| at < t))
    }
}

/// One message in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub event_id: String,
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub received_at: Option<String>,
    /// Delivery attempts made before it was dead-lettered.
    pub attempts: u32,
    /// Why it is dead-lettered (`null` for unrouted events).
    pub reason: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub first_failure_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub content_type: Option<String>,
    pub body_bytes: usize,
    /// The body's first bytes as text (invalid UTF-8 replaced).
    pub body_preview: String,
    pub body_truncated: bool,
}

/// One message, whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    /// Request headers kept with the event (`forward_headers`).
    pub headers: BTreeMap<String, String>,
    /// Every failed attempt kept, oldest first.
    pub history: Vec<Attempt>,
    /// The body as text when it is UTF-8, else `null` and see `body_base64`.
    pub body: Option<String>,
    pub body_base64: Option<String>,
}

pub fn summary(message: &Message) -> Summary {
    let body = message.payload();
    let preview_end = floor_char_boundary(body, PREVIEW_BYTES);
    let preview = String::from_utf8_lossy(&body[..preview_end]).into_owned();
    let base = Summary {
        event_id: message.id().unwrap_or_default().to_owned(),
        source: None,
        event_type: None,
        received_at: None,
        attempts: 0,
        reason: Some("malformed".to_owned()),
        last_status: None,
        last_error: None,
        first_failure_at: None,
        last_failure_at: None,
        content_type: message.properties.content_type().as_ref().map(|c| c.as_str().to_owned()),
        body_bytes: body.len(),
        body_truncated: preview_end < body.len(),
        body_preview: preview,
    };
    let Ok((envelope, state)) = &message.decoded else {
        return base;
    };
    let last = state.history.last();
    Summary {
        source: Some(envelope.source.clone()),
        event_type: Some(envelope.event_type.clone()),
        received_at: Some(message::rfc3339(envelope.received_at)),
        content_type: envelope.content_type.clone(),
        attempts: state.attempts,
        reason: reason(message, state),
        last_status: last.and_then(|a| a.status),
        last_error: last.map(|a| a.error.clone()),
        first_failure_at: state.history.first().map(|a| a.at.clone()),
        last_failure_at: last.map(|a| a.at.clone()),
        ..base
    }
}

/// hookwire's own reason, or the broker's for what it dead-lettered itself
/// (`delivery_limit`: a worker kept crashing on the message). The broker's
/// is the newest `x-death` entry's (it lists the most recent first;
/// `x-first-death-reason` would say `expired` for anything that once waited
/// in a retry queue). The letters stream does not keep the nested `x-death`
/// table, only the flat `x-first-death-*`; and the one thing RabbitMQ
/// dead-letters into it is a work queue's message over its delivery limit.
fn reason(message: &Message, state: &crate::broker::message::DeliveryState) -> Option<String> {
    use lapin::types::AMQPValue;
    state.dead_letter_reason.clone().or_else(|| {
        let headers = message.properties.headers().as_ref()?;
        match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(deaths)) => {
                let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else { return None };
                match newest.inner().get("reason")? {
                    AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                    _ => None,
                }
            }
            _ => headers.inner().contains_key("x-first-death-queue").then(|| "delivery_limit".to_owned()),
        }
    })
}

pub fn detail(message: &Message) -> Detail {
    let (headers, history) = match &message.decoded {
        Ok((envelope, state)) => (envelope.headers.iter().cloned().collect(), state.history.clone()),
        Err(_) => (BTreeMap::new(), Vec::new()),
    };
    let body = message.payload();
    let text = std::str::from_utf8(body).ok().map(str::to_owned);
    Detail {
        summary: summary(message),
        headers,
        history,
        body_base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(body)),
        body: text,
    }
}

/// The largest `end <= max` that does not split a UTF-8 sequence (for text
/// bodies; binary bodies are cut anywhere and shown lossily).
fn floor_char_boundary(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut end = max;
    // UTF-8 continuation bytes are 0b10xx_xxxx; step back at most 3.
    while end > max.saturating_sub(3) && end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_ambiguous_selectors() {
        assert!(Selector::default().compile().unwrap_err().contains("say which messages"));
        let both = Selector { all: true, status: Some(500), ..Default::default() };
        assert!(both.compile().unwrap_err().contains("cannot be combined"));
        let bad_time = Selector { failed_after: Some("yesterday".into()), ..Default::default() };
        assert!(bad_time.compile().unwrap_err().contains("failed_after"));
        let bad_pattern = Selector { event_type: Some("invoice.pa*".into()), ..Default::default() };
        assert!(bad_pattern.compile().unwrap_err().starts_with("type:"));
        // dry_run alone selects nothing.
        assert!(Selector { dry_run: true, ..Default::default() }.compile().is_err());
    }

    fn message(id: &str, event_type: &str, status: u16, failed_at: SystemTime) -> Message {
        let envelope = crate::envelope::Envelope {
            id: id.into(),
            source: "acme".into(),
            event_type: event_type.into(),
            received_at: failed_at,
            content_type: None,
            headers: vec![],
            body: bytes::Bytes::from_static(b"{}"),
        };
        let mut state = crate::broker::message::DeliveryState::default();
        state.record_failure(Attempt::new(failed_at, Some(status), "HTTP error"));
        state.dead_letter_reason = Some("retries_exhausted".into());
        let (properties, body) = message::encode(&envelope, &state);
        let data = bytes::Bytes::from(body);
        Message { decoded: message::decode(&properties, data.clone()), properties, data }
    }

    #[test]
    fn criteria_combine_with_and() {
        let now = SystemTime::now();
        let hour_ago = now - std::time::Duration::from_secs(3600);
        let paid = message("a", "invoice.paid", 503, now);
        let old_paid = message("b", "invoice.paid", 410, hour_ago);
        let created = message("c", "customer/created", 503, now);
        let select = |s: Selector| {
            let filter = s.compile().unwrap();
            [&paid, &old_paid, &created]
                .iter()
                .filter(|m| filter.matches(m))
                .map(|m| m.id().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(select(Selector { event_type: Some("invoice.*".into()), ..Default::default() }), ["a", "b"]);
        // Types match as routing words: `customer/created` is `customer.created`.
        assert_eq!(select(Selector { event_type: Some("customer.#".into()), ..Default::default() }), ["c"]);
        assert_eq!(select(Selector { status: Some(503), ..Default::default() }), ["a", "c"]);
        let cutoff = humantime::format_rfc3339(now - std::time::Duration::from_secs(60)).to_string();
        assert_eq!(select(Selector { failed_before: Some(cutoff.clone()), ..Default::default() }), ["b"]);
        assert_eq!(select(Selector { failed_after: Some(cutoff), status: Some(410), ..Default::default() }), [""; 0]);
        assert_eq!(select(Selector { ids: vec!["c".into(), "x".into()], ..Default::default() }), ["c"]);
        assert_eq!(select(Selector { reason: Some("retries_exhausted".into()), ..Default::default() }).len(), 3);
        assert_eq!(select(Selector { all: true, ..Default::default() }).len(), 3);
    }

    #[test]
    fn the_brokers_reason_is_its_newest_death() {
        use lapin::types::{AMQPValue, FieldArray, FieldTable};
        let death = |reason: &str| {
            let mut entry = FieldTable::default();
            entry.insert("reason".into(), AMQPValue::LongString(reason.into()));
            AMQPValue::FieldTable(entry)
        };
        // Waited in a retry queue (expired), then hit the delivery limit:
        // RabbitMQ lists the newest death first.
        let mut message = message("a", "invoice.paid", 503, SystemTime::now());
        if let Ok((_, state)) = &mut message.decoded {
            state.dead_letter_reason = None;
        }
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death("delivery_limit"), death("expired")])),
        );
        headers.insert("x-first-death-reason".into(), AMQPValue::LongString("expired".into()));
        message.properties = message.properties.clone().with_headers(headers);
        assert_eq!(summary(&message).reason.as_deref(), Some("delivery_limit"));
        let filter = Selector { reason: Some("delivery_limit".into()), ..Default::default() }.compile().unwrap();
        assert!(filter.matches(&message));
    }

    #[test]
    fn undecodable_messages_match_only_by_id_reason_or_all() {
        let properties = lapin::BasicProperties::default().with_message_id("junk".into());
        let junk = Message {
            decoded: message::decode(&properties, bytes::Bytes::new()),
            properties,
            data: bytes::Bytes::new(),
        };
        let matches = |s: Selector| s.compile().unwrap().matches(&junk);
        assert!(matches(Selector { reason: Some("malformed".into()), ..Default::default() }));
        assert!(matches(Selector { ids: vec!["junk".into()], ..Default::default() }));
        assert!(matches(Selector { all: true, ..Default::default() }));
        assert!(!matches(Selector { status: Some(500), ..Default::default() }));
        assert!(!matches(Selector { event_type: Some("#".into()), ..Default::default() }));
        assert_eq!(summary(&junk).reason.as_deref(), Some("malformed"));
    }

    #[test]
    fn previews_stop_at_a_character_boundary() {
        let text = "é".repeat(PREVIEW_BYTES);
        let end = floor_char_boundary(text.as_bytes(), PREVIEW_BYTES);
        assert!(text.is_char_boundary(end));
        assert_eq!(floor_char_boundary(b"short", PREVIEW_BYTES), 5);
    }
}
