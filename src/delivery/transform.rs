//! Per-subscription `filter` and `transform`: jq programs (the jaq
//! implementation, no JavaScript engine), compiled when the config loads.
//!
//! A program sees the event as
//! `{ "id", "source", "type", "received_at", "headers", "body" }`, with `body`
//! parsed as JSON when it is JSON and a string otherwise.
//!
//! - `filter`: the event is delivered only if the first output is `true`.
//! - `transform`: its single output, as compact JSON, becomes the body.
//!
//! Programs run on a small pool of threads owned by the subscription, never
//! on the async executor, bounded by `transform_timeout` and by output size. A
//! program that errors or exceeds a bound fails the event (dead-letter reason
//! `transform_failed`, no retry: running it again gives the same answer).
//!
//! jq has no way to interrupt a running program: one stuck in an endless loop
//! times out here but keeps its thread. The threads are plain detached
//! threads rather than tokio's blocking pool, because tokio waits for blocking
//! tasks when the runtime shuts down, and one stuck program would then hang
//! hookwire's shutdown. Being the subscription's own, a stuck thread only
//! slows that subscription; when all of its threads are stuck, its events
//! time out and are dead-lettered while every other subscription carries on.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use bytes::Bytes;
use jaq_core::{
    Compiler, Ctx, Vars, data,
    load::{Arena, File, Loader},
};
use jaq_json::Val;

use crate::{broker::message::rfc3339, config::ConfigError, envelope::Envelope};

/// Largest transform output accepted as a delivery body.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program.
pub struct Program {
    filter: Filter,
}

impl Program {
    /// Compiles `code`; the error names the line and column.
    pub fn compile(code: &str) -> Result<Self, String> {
        // The compiled filter owns what it needs: the text and the arena
        // are dropped here, so compiling (an API validation, a reload)
        // leaks nothing.
        let arena = Arena::default();
        let arena = &arena;
        let position = |part: &str| {
            let offset = jaq_core::load::span(code, part).start;
            let before = &code[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            format!("line {line}, column {column}")
        };
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let modules = Loader::new(defs).load(arena, File { code, path: () }).map_err(|errors| {
            let mut messages = Vec::new();
            for (_, error) in errors {
                match error {
                    jaq_core::load::Error::Io(io) => {
                        messages.extend(io.into_iter().map(|(path, e)| format!("{path}: {e}")))
                    }
                    jaq_core::load::Error::Lex(lex) => messages.extend(
                        lex.into_iter().map(|(expect, at)| format!("{}: expected {}", position(at), expect.as_str())),
                    ),
                    jaq_core::load::Error::Parse(parse) => messages.extend(
                        parse.into_iter().map(|(expect, at)| format!("{}: expected {}", position(at), expect.as_str())),
                    ),
                }
            }
            messages.join("; ")
        })?;
        let filter = Compiler::default().with_funs(funs).compile(modules).map_err(|errors| {
            let messages: Vec<String> = errors
                .into_iter()
                .flat_map(|(_, undefined)| undefined)
                .map(|(name, _)| format!("{}: undefined {name}", position(name)))
                .collect();
            messages.join("; ")
        })?;
        Ok(Self { filter })
    }

    /// The first `limit` outputs (outputs are lazy: later ones are never
    /// computed, so `repeat(…)` stops).
    fn run(&self, input: Val, limit: usize) -> Result<Vec<Val>, String> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        self.filter
            .id
            .run((ctx, input))
            .map(jaq_core::unwrap_valr)
            .take(limit)
            .map(|output| output.map_err(|e| e.to_string()))
            .collect()
    }
}

/// The event as programs see it.
fn input(envelope: &Envelope) -> Val {
    let text = |s: &str| Val::utf8_str(s.as_bytes().to_vec());
    let mut headers = jaq_json::Map::default();
    for (name, value) in &envelope.headers {
        headers.insert(text(name), text(value));
    }
    // serde_json builds the value tree ~20% faster than jaq's own reader
    // (benches/transform.rs), and the body parse is most of a transform's cost.
    let body = serde_json::from_slice::<Val>(&envelope.body)
        .unwrap_or_else(|_| Val::utf8_str(String::from_utf8_lossy(&envelope.body).into_owned().into_bytes()));
    let mut event = jaq_json::Map::default();
    event.insert(text("id"), text(&envelope.id));
    event.insert(text("source"), text(&envelope.source));
    event.insert(text("type"), text(&envelope.event_type));
    event.insert(text("received_at"), text(&rfc3339(envelope.received_at)));
    event.insert(text("headers"), Val::obj(headers));
    event.insert(text("body"), body);
    Val::obj(event)
}

/// What the programs decided for one event.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Deliver, with this body (a transform's output) or the original one.
    Deliver(Option<Bytes>),
    /// The filter said no: ack without delivering.
    Filtered,
    /// A program failed: dead-letter with reason `transform_failed`.
    Failed(String),
}

/// Threads per subscription evaluating its programs.
const POOL_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a thread. Deliveries in flight are bounded by the
/// subscription's concurrency, so a full queue means the threads are stuck on
/// programs that outlived their timeout; refusing more keeps the queue (and
/// the event bodies its jobs hold) bounded.
const QUEUE_CAPACITY: usize = 1024;

/// A fixed set of detached threads taking jobs from one bounded queue.
struct Pool {
    jobs: Mutex<mpsc::SyncSender<Job>>,
}

impl Pool {
    fn new(name: &str, threads: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("jq-{name}-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock().map(|rx| rx.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return, // the subscription is gone
                        };
                        job();
                    }
                })
                .expect("spawning a jq thread");
        }
        Self { jobs: Mutex::new(tx) }
    }

    /// Queues a job; `false` when the queue is full or the threads are gone.
    fn submit(&self, job: Job) -> bool {
        self.jobs.lock().map(|tx| tx.try_send(job).is_ok()).unwrap_or(false)
    }
}

/// A subscription's programs.
pub struct Jq {
    filter: Option<Program>,
    transform: Option<Program>,
    timeout: Duration,
    pool: Pool,
}

impl Jq {
    /// Compiles a subscription's programs without starting threads, for
    /// `hookwire check`.
    pub fn validate(name: &str, config: &crate::config::SubscriptionConfig) -> Result<(), ConfigError> {
        Self::compile_all(name, config.filter.as_deref(), config.transform.as_deref()).map(|_| ())
    }

    /// Every program's compile error (filter and transform), for the API's
    /// `422`; each names the line and column.
    pub fn problems(name: &str, config: &crate::config::SubscriptionConfig) -> Vec<ConfigError> {
        [("filter", config.filter.as_deref()), ("transform", config.transform.as_deref())]
            .into_iter()
            .filter_map(|(field, code)| {
                let error = Program::compile(code?).err()?;
                Some(ConfigError::invalid(format!("subscriptions.{name}.{field}"), error))
            })
            .collect()
    }

    pub fn from_config(name: &str, config: &crate::config::SubscriptionConfig) -> Result<Option<Self>, ConfigError> {
        Self::build(name, config.filter.as_deref(), config.transform.as_deref(), config.transform_timeout)
    }

    fn compile_all(
        name: &str,
        filter: Option<&str>,
        transform: Option<&str>,
    ) -> Result<(Option<Program>, Option<Program>), ConfigError> {
        let compile = |field: &str, code: Option<&str>| {
            code.map(Program::compile)
                .transpose()
                .map_err(|e| ConfigError::invalid(format!("subscriptions.{name}.{field}"), e))
        };
        Ok((compile("filter", filter)?, compile("transform", transform)?))
    }

    pub fn build(
        name: &str,
        filter: Option<&str>,
        transform: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Self>, ConfigError> {
        let (filter, transform) = Self::compile_all(name, filter, transform)?;
        if filter.is_none() && transform.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { filter, transform, timeout, pool: Pool::new(name, POOL_THREADS) }))
    }

    /// Runs filter then transform for one event (synchronously: call it off
    /// the async executor, as [`Jq::decide`] does).
    pub fn evaluate(&self, envelope: &Envelope) -> Verdict {
        let event = input(envelope);
        if let Some(filter) = &self.filter {
            match filter.run(event.clone(), 1) {
                Ok(outputs) if matches!(outputs.first(), Some(Val::Bool(true))) => {}
                Ok(_) => return Verdict::Filtered,
                Err(e) => return Verdict::Failed(format!("filter: {e}")),
            }
        }
        let Some(transform) = &self.transform else {
            return Verdict::Deliver(None);
        };
        // Two outputs are enough to tell "exactly one" from "more".
        match transform.run(event, 2) {
            Ok(mut outputs) if outputs.len() == 1 => {
                let body = outputs.pop().expect("one output").to_string();
                if body.len() > MAX_OUTPUT_BYTES {
                    return Verdict::Failed(format!("transform: output exceeds {MAX_OUTPUT_BYTES} bytes"));
                }
                Verdict::Deliver(Some(Bytes::from(body)))
            }
            Ok(outputs) if outputs.is_empty() => Verdict::Failed("transform: produced no output".to_owned()),
            Ok(_) => Verdict::Failed("transform: produced more than one output, expected exactly one".to_owned()),
            Err(e) => Verdict::Failed(format!("transform: {e}")),
        }
    }

    /// [`Jq::evaluate`] on the subscription's threads, bounded by the timeout.
    pub async fn decide(self: &Arc<Self>, envelope: &Envelope) -> Verdict {
        let (this, envelope) = (self.clone(), envelope.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // Its caller gave up waiting (timeout): do not spend a thread on it.
            if tx.is_closed() {
                return;
            }
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| this.evaluate(&envelope)))
                .unwrap_or_else(|_| Verdict::Failed("the program panicked".to_owned()));
            let _ = tx.send(verdict);
        });
        if !self.pool.submit(job) {
            return Verdict::Failed("the program's threads are busy with programs past their timeout".to_owned());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(_)) => Verdict::Failed("the program's thread stopped".to_owned()),
            Err(_) => Verdict::Failed(format!("took longer than {}", crate::config::format_duration(self.timeout))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn envelope(body: &str) -> Envelope {
        Envelope {
            id: "evt_1".into(),
            source: "acme".into(),
            event_type: "invoice.paid".into(),
            received_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            content_type: Some("application/json".into()),
            headers: vec![("user-agent".into(), "acme/2".into())],
            body: Bytes::from(body.to_owned()),
        }
    }

    fn jq(filter: Option<&str>, transform: Option<&str>) -> Jq {
        Jq::build("t", filter, transform, Duration::from_secs(1)).unwrap().unwrap()
    }

    #[test]
    fn filter_sees_headers_and_body() {
        let e = envelope(r#"{"amount": 500}"#);
        assert_eq!(jq(Some(".body.amount > 100"), None).evaluate(&e), Verdict::Deliver(None));
        assert_eq!(jq(Some(".body.amount > 1000"), None).evaluate(&e), Verdict::Filtered);
        assert_eq!(
            jq(Some(r#".headers["user-agent"] | startswith("acme")"#), None).evaluate(&e),
            Verdict::Deliver(None)
        );
        assert_eq!(
            jq(Some(".type == \"invoice.paid\" and .source == \"acme\""), None).evaluate(&e),
            Verdict::Deliver(None)
        );
        // Only `true` passes: truthy values and empty output do not.
        assert_eq!(jq(Some("1"), None).evaluate(&e), Verdict::Filtered);
        assert_eq!(jq(Some("empty"), None).evaluate(&e), Verdict::Filtered);
    }

    #[test]
    fn transform_output_is_compact_json() {
        let e = envelope(r#"{"amount": 500, "currency": "eur", "noise": [1,2,3]}"#);
        let t = jq(
            None,
            Some(
                "{id, kind: .type, amount: .body.amount, currency: (.body.currency | ascii_upcase), at: .received_at}",
            ),
        );
        assert_eq!(
            t.evaluate(&e),
            Verdict::Deliver(Some(Bytes::from_static(
                br#"{"id":"evt_1","kind":"invoice.paid","amount":500,"currency":"EUR","at":"2023-11-14T22:13:20.000Z"}"#
            )))
        );
    }

    #[test]
    fn non_json_bodies_are_strings() {
        let e = envelope("a=1&b=2");
        assert_eq!(
            jq(None, Some("{raw: .body}")).evaluate(&e),
            Verdict::Deliver(Some(Bytes::from_static(br#"{"raw":"a=1&b=2"}"#)))
        );
    }

    #[test]
    fn failures_are_verdicts_not_panics() {
        let e = envelope(r#"{"a": 1}"#);
        assert!(matches!(jq(None, Some(r#"error("boom")"#)).evaluate(&e), Verdict::Failed(m) if m.contains("boom")));
        assert!(
            matches!(jq(None, Some(".body.a, .body.a")).evaluate(&e), Verdict::Failed(m) if m.contains("more than one"))
        );
        assert!(matches!(jq(None, Some("repeat(1)")).evaluate(&e), Verdict::Failed(m) if m.contains("more than one")));
        assert!(matches!(jq(None, Some("empty")).evaluate(&e), Verdict::Failed(m) if m.contains("no output")));
        assert!(matches!(jq(Some(".body.a.b"), None).evaluate(&e), Verdict::Failed(m) if m.starts_with("filter:")));
        assert!(matches!(jq(Some("repeat(true)"), None).evaluate(&e), Verdict::Deliver(None)));
        assert!(
            matches!(jq(None, Some("[range(200000)] | tostring")).evaluate(&e), Verdict::Failed(m) if m.contains("exceeds"))
        );
    }

    #[tokio::test]
    async fn endless_programs_time_out() {
        let slow =
            Arc::new(Jq::build("t", None, Some("last(range(1e12))"), Duration::from_millis(50)).unwrap().unwrap());
        let started = std::time::Instant::now();
        let verdict = slow.decide(&envelope("{}")).await;
        assert!(matches!(verdict, Verdict::Failed(m) if m.contains("took longer than 50ms")));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn syntax_errors_name_the_key_and_position() {
        let e = Jq::build("billing", Some(".a ==\n  | .b"), None, Duration::from_secs(1)).err().unwrap().to_string();
        assert!(e.starts_with("subscriptions.billing.filter: line 2, column 3: expected"), "{e}");
        let e = Jq::build("billing", None, Some("{a: nosuch(1)}"), Duration::from_secs(1)).err().unwrap().to_string();
        assert_eq!(e, "subscriptions.billing.transform: line 1, column 5: undefined nosuch");
        assert!(Jq::build("billing", None, None, Duration::from_secs(1)).unwrap().is_none());
    }
}
