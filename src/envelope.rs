//! The event as hookwire carries it from ingress to delivery.
//!
//! Built only from a verified request (see [`crate::ingress::Source::accept`]);
//! the body is the sender's bytes, exactly, never re-serialized.

use std::time::SystemTime;

use bytes::Bytes;

/// Longest event type kept in a routing key. AMQP routing keys are at most
/// 255 bytes and the source name and a dot come first.
const MAX_EVENT_TYPE_LEN: usize = 180;

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Stable across retries and replays: destinations dedup on it.
    pub id: String,
    pub source: String,
    /// The event type as the provider named it (sanitized only in the routing key).
    pub event_type: String,
    pub received_at: SystemTime,
    pub content_type: Option<String>,
    /// The configured subset of request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Envelope {
    /// `received_at` in milliseconds since the Unix epoch: how messages
    /// carry it, and the `at_ms` of the event's `received` record.
    pub fn received_at_ms(&self) -> u64 {
        self.received_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// `{source}.{event_type}`, the key subscriptions' topic patterns match.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.source, routing_word(&self.event_type))
    }
}

/// Makes an event type safe as the tail of an AMQP routing key: `/` becomes
/// `.` (so `orders/create` matches `shop.orders.*`), characters outside
/// `[A-Za-z0-9_.:-]` become `_`, empty words are dropped, length is capped, and
/// an empty result is `unknown`.
///
/// ```
/// use hookwire::envelope::routing_word;
/// assert_eq!(routing_word("orders/create"), "orders.create");
/// assert_eq!(routing_word("invoice paid!"), "invoice_paid_");
/// assert_eq!(routing_word(""), "unknown");
/// ```
pub fn routing_word(event_type: &str) -> String {
    let mapped: String = event_type
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.') => c,
            _ => '_',
        })
        .collect();
    let mut out = mapped.split('.').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(".");
    if out.len() > MAX_EVENT_TYPE_LEN {
        out.truncate(MAX_EVENT_TYPE_LEN);
        out = out.trim_end_matches('.').to_owned();
    }
    if out.is_empty() { "unknown".to_owned() } else { out }
}

/// A topic-pattern matcher with RabbitMQ's semantics, used to count unrouted
/// events at ingress.
///
/// ```
/// use hookwire::envelope::topic_matches;
/// assert!(topic_matches("acme.invoice.*", "acme.invoice.paid"));
/// assert!(topic_matches("acme.#", "acme"));
/// assert!(!topic_matches("acme.*", "acme.invoice.paid"));
/// ```
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    // Dynamic programming over (pattern words, key words): O(p·k) time, where
    // the naive recursion on `#` is exponential (found by fuzzing: 14 `#`
    // words took seconds), and routing keys come from senders.
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    // row[j]: whether the pattern words processed so far match k[..j].
    let mut row = vec![false; k.len() + 1];
    row[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        for j in 0..=k.len() {
            next[j] = match *word {
                // `#` matches zero words (row[j]) or one more (next[j - 1]).
                "#" => row[j] || (j > 0 && next[j - 1]),
                "*" => j > 0 && row[j - 1],
                literal => j > 0 && row[j - 1] && k[j - 1] == literal,
            };
        }
        row = next;
    }
    row[k.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_words_are_amqp_safe() {
        assert_eq!(routing_word("invoice.paid"), "invoice.paid");
        assert_eq!(routing_word("orders/create"), "orders.create");
        assert_eq!(routing_word("a b*#c"), "a_b__c");
        assert_eq!(routing_word(""), "unknown");
        assert_eq!(routing_word("..x.."), "x");
        assert_eq!(routing_word("ü"), "_");
        assert!(routing_word(&"a".repeat(1000)).len() <= MAX_EVENT_TYPE_LEN);
    }

    #[test]
    fn topic_matching_follows_rabbitmq() {
        assert!(topic_matches("acme.invoice.*", "acme.invoice.paid"));
        assert!(!topic_matches("acme.invoice.*", "acme.invoice.paid.late"));
        assert!(!topic_matches("acme.invoice.*", "acme.invoice"));
        assert!(topic_matches("acme.customer.#", "acme.customer"));
        assert!(topic_matches("acme.customer.#", "acme.customer.a.b"));
        assert!(topic_matches("#", "x.y"));
        assert!(topic_matches("*.push", "github.push"));
        assert!(!topic_matches("acme.#", "other.x"));
        assert!(topic_matches("#.paid", "acme.invoice.paid"));
        assert!(topic_matches("a.#.b.#", "a.b"));
        assert!(topic_matches("a.#.b.#", "a.x.y.b.z"));
        assert!(!topic_matches("a.#.b", "a.x.y"));
        assert!(topic_matches("*.*", "a.b") && !topic_matches("*.*", "a"));
    }

    /// The definition the fast matcher must agree with.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => reference(&p[1..], k) || (!k.is_empty() && reference(p, &k[1..])),
            (Some(&"*"), Some(_)) => reference(&p[1..], &k[1..]),
            (Some(pw), Some(kw)) => pw == kw && reference(&p[1..], &k[1..]),
            _ => false,
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_recursive_definition(
            pattern in proptest::collection::vec(proptest::sample::select(vec!["#", "*", "a", "b"]), 1..7),
            key in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c"]), 1..7),
        ) {
            let (p, k) = (pattern.join("."), key.join("."));
            proptest::prop_assert_eq!(topic_matches(&p, &k), reference(&pattern, &key), "{} vs {}", p, k);
        }
    }

    #[test]
    fn topic_matching_is_not_exponential() {
        // The fuzzer's input: 14 `#` words against a key that cannot match.
        let pattern = format!("{}z", "#.".repeat(40));
        let key = vec!["a"; 90].join(".");
        let started = std::time::Instant::now();
        assert!(!topic_matches(&pattern, &key));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "{:?}", started.elapsed());
    }
}
