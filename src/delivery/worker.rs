//! One worker per subscription: consume its work queue, deliver each event,
//! and settle each delivery only after its outcome is safe.
//!
//! Settling rules (the "never lose an event" invariant):
//! - delivered (2xx) → ack;
//! - failed → publish to the retry queue (or to the dead letters when the
//!   schedule is exhausted), wait for the broker's confirm, then ack;
//! - if that publish fails → nack with requeue (the delivery comes back);
//! - if the ack itself fails → nothing to do: the broker redelivers it
//!   (a duplicate is possible, a loss is not).
//!
//! "Ack" means handing the tag to the channel's [`Acks`], which acks runs of
//! settled deliveries with one `multiple` ack each.
//!
//! Must not: share its consumer channel, HTTP client or concurrency budget
//! with any other subscription.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    acks::Acks,
    breaker::{Breaker, Health},
    http::{Destination, Outgoing},
    retry::{self, Next, Outcome},
    transform::{Jq, Verdict},
};
use crate::{
    broker::{
        Broker, Session,
        message::{self, Attempt, DeliveryState},
        publisher::publish_confirmed,
        topology::SubscriptionQueues,
    },
    eventlog::Record,
    rate::RateLimiter,
    shutdown,
    telemetry::metric,
};

/// Pause before handing a delivery back after its outcome could not be
/// stored, so a broker in trouble is not hammered in a tight loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

pub struct Worker {
    pub name: String,
    pub queues: SubscriptionQueues,
    pub destination: Arc<Destination>,
    /// The subscription's filter and transform, if any.
    pub jq: Option<Arc<Jq>>,
    /// The destination's rate limit, shared by all of its deliveries.
    pub limiter: Option<RateLimiter>,
    pub breaker: Option<Arc<Breaker>>,
    /// The operator's pause flag for this subscription (see `operator::control`).
    /// `None` inside: not known yet (see `operator::control`); wait.
    pub paused: Option<tokio::sync::watch::Receiver<Option<bool>>>,
    pub policy: retry::Policy,
    pub concurrency: u16,
    pub broker: Broker,
    /// How long shutdown waits for in-flight deliveries.
    pub drain_timeout: Duration,
    /// The event log's recorder, when the log is on.
    pub recorder: Option<crate::eventlog::Recorder>,
    /// This subscription's metric handles ([`Meters::new`]).
    pub meters: Meters,
}

/// The handles of the metrics every delivery touches, looked up once per
/// worker: through the macros each was a label string copied, hashed and
/// looked up in the registry, four or five times a delivery.
pub struct Meters {
    in_flight: metrics::Gauge,
    delivered: metrics::Counter,
    retried: metrics::Counter,
    filtered: metrics::Counter,
    dead_lettered: metrics::Counter,
    requeued: metrics::Counter,
    succeeded_in: metrics::Histogram,
    failed_in: metrics::Histogram,
    end_to_end: metrics::Histogram,
}

impl Meters {
    pub fn new(subscription: &str) -> Self {
        let outcome = |outcome: &'static str| metrics::counter!(metric::DELIVERIES, "subscription" => subscription.to_owned(), "outcome" => outcome);
        let attempt = |outcome: &'static str| metrics::histogram!(metric::DELIVERY_DURATION, "subscription" => subscription.to_owned(), "outcome" => outcome);
        Self {
            in_flight: metrics::gauge!(metric::IN_FLIGHT, "subscription" => subscription.to_owned()),
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            filtered: outcome("filtered"),
            dead_lettered: outcome("dead_lettered"),
            requeued: outcome("requeued"),
            succeeded_in: attempt("success"),
            failed_in: attempt("failure"),
            end_to_end: metrics::histogram!(metric::END_TO_END, "subscription" => subscription.to_owned()),
        }
    }
}

/// Why a consume loop ended.
enum Ended {
    Shutdown,
    ConnectionLost,
    /// Paused by an operator: consume again once resumed.
    Paused,
}

impl Worker {
    /// Runs until `token` is cancelled, then drains in-flight deliveries.
    pub async fn run(self, token: CancellationToken) {
        let this = Arc::new(self);
        let mut sessions = this.broker.watch();
        let mut tasks = JoinSet::new();
        // One budget for the worker's lifetime, not per connection: tasks of a
        // lost session still hold their permits until they finish, so a
        // reconnect never runs more than `concurrency` deliveries at once.
        let permits = Arc::new(Semaphore::new(usize::from(this.concurrency)));
        // The ack tasks of sessions whose connection was lost: their
        // deliveries may still be settling, and are acked before exit.
        let mut ackers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut paused = this.paused.clone();
        loop {
            // While paused (or before this process knows), hold no consumer at
            // all: a consumer would keep prefetched events unacked, and the
            // broker closes channels that sit on unacked deliveries past its
            // consumer_timeout (30 min), counting a delivery attempt each time.
            if let Some(paused) = &mut paused {
                tokio::select! {
                    _ = token.cancelled() => break,
                    resumed = paused.wait_for(|p| *p == Some(false)) => if resumed.is_err() { break },
                }
            }
            let session = tokio::select! {
                _ = token.cancelled() => break,
                changed = sessions.wait_for(Option::is_some) => match changed {
                    Ok(session) => session.clone().expect("waited for Some"),
                    Err(_) => break, // the supervisor is gone
                },
            };
            ackers.retain(|acking| !acking.is_finished());
            match this.clone().consume(&session, &token, &permits, &mut tasks, &mut ackers).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Paused) => {
                    tracing::info!(subscription = %this.name, "paused: stopped consuming");
                    continue;
                }
                Ok(Ended::ConnectionLost) => {}
                Err(error) => {
                    tracing::warn!(subscription = %this.name, %error, "consumer failed; restarting")
                }
            }
            // Consume again once this session is gone or replaced; meanwhile
            // back off a little so a broken channel does not spin.
            let generation = session.generation;
            drop(session);
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = sessions.wait_for(|s| s.as_ref().is_none_or(|s| s.generation != generation)) => {}
                // The session may still be fine (only our channel failed).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let abandoned = shutdown::drain(&mut tasks, this.drain_timeout).await;
        if abandoned > 0 {
            tracing::warn!(subscription = %this.name, abandoned, "drain deadline passed; unfinished deliveries return to the queue");
        }
        // Every task is gone, so each ack task acks what settled and ends.
        for acking in ackers {
            let _ = tokio::time::timeout(this.broker.operation_timeout, acking).await;
        }
    }

    async fn consume(
        self: Arc<Self>,
        session: &Session,
        token: &CancellationToken,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        ackers: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<Ended, lapin::Error> {
        let timeout = self.broker.operation_timeout;
        let channel = bounded(timeout, session.connection.create_channel()).await?;
        // With the event log on, a settled delivery waits for its records'
        // commit (the recorder's linger, 20 ms, and a commit) before its
        // ack, after giving back its attempt slot: the prefetch leaves room
        // for those, or they would hold the slots anyway. 4× was not enough
        // at saturation (~8,000/s × 25 ms ≈ 200 waiting per subscription).
        let prefetch = if self.recorder.is_some() { self.concurrency.saturating_mul(8) } else { self.concurrency };
        bounded(timeout, channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let tag = format!("hookwire-{}-{}", self.name, uuid::Uuid::now_v7().simple());
        let mut consumer = bounded(
            timeout,
            channel.basic_consume(
                self.queues.work.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        tracing::info!(subscription = %self.name, queue = %self.queues.work, "consuming");
        let (acks, acking) = Acks::start(channel.clone(), prefetch, self.name.clone(), timeout);
        let mut paused = self.paused.clone();
        let ended = loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = token.cancelled() => break Ended::Shutdown,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            if paused.as_ref().is_some_and(|p| *p.borrow() != Some(false)) {
                break Ended::Paused;
            }
            // While RabbitMQ blocks publishing (a resource alarm), a failed
            // attempt's retry or dead-letter publish could not be confirmed:
            // start none. Attempts already running finish.
            if self.broker.blocked().is_some() {
                tokio::select! {
                    _ = token.cancelled() => break Ended::Shutdown,
                    _ = until_paused(&mut paused) => break Ended::Paused,
                    _ = self.broker.until_unblocked() => {}
                }
            }
            // An open breaker stops consumption here: events wait in the queue.
            let probe = match &self.breaker {
                None => false,
                Some(breaker) => tokio::select! {
                    _ = token.cancelled() => break Ended::Shutdown,
                    _ = until_paused(&mut paused) => break Ended::Paused,
                    probe = breaker.admit() => probe,
                },
            };
            let release = || {
                if let (true, Some(breaker)) = (probe, &self.breaker) {
                    breaker.release_probe();
                }
            };
            let delivery = tokio::select! {
                biased;
                _ = token.cancelled() => {
                    release();
                    break Ended::Shutdown;
                }
                // A pause must win over a message that arrives at the same
                // time: that one goes back to the queue with the prefetch.
                _ = until_paused(&mut paused) => {
                    release();
                    break Ended::Paused;
                }
                next = consumer.next() => next,
            };
            match delivery {
                // Deliveries lapin buffered before the broker closed the
                // channel were requeued by the broker already: handling them
                // would deliver twice.
                Some(Ok(_)) if !channel.status().connected() => {
                    release();
                    break Ended::ConnectionLost;
                }
                Some(Ok(delivery)) => {
                    let this = self.clone();
                    let session = session.clone();
                    let acks = acks.clone();
                    // Boxed: the task then holds a pointer instead of the
                    // ~3 KiB future, and tokio copies a task's whole stage when
                    // it is spawned, when it ends and when it is joined (the
                    // copies were the profile's top entry, docs/BENCHMARKS.md).
                    let handling = async move { this.handle(session, delivery, &acks, permit, probe).await };
                    tasks.spawn(Box::pin(handling));
                }
                Some(Err(error)) => {
                    release();
                    tracing::warn!(subscription = %self.name, %error, "consumer stream failed");
                    break Ended::ConnectionLost;
                }
                None => {
                    release();
                    break Ended::ConnectionLost;
                }
            }
        };
        if let Ended::Shutdown | Ended::Paused = ended {
            // Stop new deliveries, let the in-flight ones settle, then close:
            // anything prefetched but never started returns to the queue.
            let _ =
                tokio::time::timeout(timeout, channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()))
                    .await;
            let abandoned = shutdown::drain(tasks, self.drain_timeout).await;
            if abandoned > 0 {
                tracing::warn!(subscription = %self.name, abandoned, "drain deadline passed; unfinished deliveries return to the queue");
            }
            // The settled deliveries' acks go out before the close, which
            // would hand them back to the queue.
            drop(acks);
            let _ = tokio::time::timeout(timeout, acking).await;
            let _ = tokio::time::timeout(timeout, channel.close(200, "hookwire shutting down".into())).await;
        } else {
            ackers.push(acking);
        }
        Ok(ended)
    }

    /// Delivers one event and settles it. `probe`: this delivery is the
    /// circuit breaker's probe, released if it ends without an attempt.
    async fn handle(
        self: Arc<Self>,
        session: Session,
        delivery: Delivery,
        acks: &Acks,
        permit: OwnedSemaphorePermit,
        probe: bool,
    ) {
        self.meters.in_flight.increment(1.0);
        // What happened, for the event log (empty when it is off).
        let mut story = Vec::new();
        let Delivery { properties, data, delivery_tag, .. } = delivery;
        // Bytes: keeping the body for the undecodable path costs a reference
        // count, not a copy of every delivery's body.
        let data = bytes::Bytes::from(data);
        let settle = match message::decode(&properties, data.clone()) {
            Ok((envelope, state)) => {
                let span = tracing::info_span!("delivery", subscription = %self.name, event_id = %envelope.id, attempt = state.attempts + 1);
                self.deliver(&session, envelope, state, &mut story).instrument(span).await
            }
            Err(error) => {
                // Not ours to interpret: keep it, untouched, for an operator.
                tracing::error!(%error, "undecodable message; dead-lettering it as is");
                let mut headers = properties.headers().clone().unwrap_or_default();
                headers.insert(
                    message::DEAD_LETTER_REASON.into(),
                    lapin::types::AMQPValue::LongString("malformed".into()),
                );
                let properties = properties.with_headers(headers);
                Box::pin(self.store_dead(&session, properties, &data)).await.map(|()| {
                    metrics::counter!(metric::DEAD_LETTERED, "subscription" => self.name.clone(), "reason" => "malformed").increment(1);
                })
            }
        };
        // The body is not needed any more: not kept while the ack waits.
        drop(data);
        let timeout = self.broker.operation_timeout;
        match settle {
            Ok(()) => match &self.recorder {
                // The ack waits for the records' commit, so a process crash
                // cannot lose them; the attempt slot and this task do not (the
                // prefetch has room for deliveries waiting so, see `consume`).
                Some(recorder) => {
                    drop(permit);
                    // Acked either way: a record the store did not take in time
                    // is the recorder's to count and report, once per batch.
                    let acks = acks.clone();
                    let then: crate::eventlog::Then = Box::new(move |_committed| acks.ack(delivery_tag));
                    recorder.commit_then(story, timeout, then).await;
                }
                None => acks.ack(delivery_tag),
            },
            Err(error) => {
                if let Some(recorder) = &self.recorder {
                    // The delivery comes back; what was tried is still worth keeping.
                    story.drain(..).for_each(|record| recorder.record(record));
                }
                tracing::warn!(%error, "could not store the outcome; handing the delivery back");
                self.meters.requeued.increment(1);
                tokio::time::sleep(REQUEUE_PAUSE).await;
                acks.requeue(delivery_tag);
            }
        }
        if let (true, Some(breaker)) = (probe, &self.breaker) {
            // Filtered, transform failed, malformed: no attempt was recorded.
            breaker.release_probe();
        }
        self.meters.in_flight.decrement(1.0);
    }

    /// Attempts the delivery and stores its outcome; `Ok` means the delivery
    /// may be acked.
    async fn deliver(
        &self,
        session: &Session,
        envelope: crate::envelope::Envelope,
        mut state: DeliveryState,
        story: &mut Vec<Record>,
    ) -> Result<(), crate::broker::PublishError> {
        let attempt = state.attempts + 1;
        // Taken, so a retry or dead letter of this copy does not carry it.
        if let Some(replayed) = state.replayed.take() {
            self.record_replayed(story, &envelope, replayed);
        }
        let (body, content_type) = match &self.jq {
            None => (envelope.body.clone(), envelope.content_type.as_deref()),
            Some(jq) => match jq.decide(&envelope).await {
                Verdict::Deliver(None) => (envelope.body.clone(), envelope.content_type.as_deref()),
                Verdict::Deliver(Some(body)) => (body, Some("application/json")),
                Verdict::Filtered => {
                    self.meters.filtered.increment(1);
                    tracing::debug!("filtered out");
                    self.record_outcome(story, &envelope, "filtered", None);
                    return Ok(());
                }
                Verdict::Failed(error) => {
                    // Deterministic: running the program again cannot help.
                    state.record_failure(Attempt::new(SystemTime::now(), None, &error));
                    let reason = "transform_failed";
                    return Box::pin(self.dead_letter(session, &envelope, state, reason, (None, &error), story)).await;
                }
            },
        };
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let started = Instant::now();
        let outgoing = Outgoing { envelope: &envelope, body, content_type, attempt };
        let outcome = self.destination.send(outgoing).await;
        self.record_attempt(story, &envelope, attempt, started.elapsed(), &outcome);
        if let Some(breaker) = &self.breaker {
            let (status, delivered) = match &outcome {
                Outcome::Delivered { status } => (Some(*status), true),
                Outcome::Failed(failure) => (failure.status, false),
            };
            breaker.record(Health::of(status, delivered));
        }
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Outcome::Delivered { .. } => self.meters.succeeded_in.record(took),
            Outcome::Failed(_) => self.meters.failed_in.record(took),
        }
        let failure = match &outcome {
            Outcome::Delivered { status } => {
                let age = SystemTime::now().duration_since(envelope.received_at).unwrap_or_default();
                self.meters.end_to_end.record(age.as_secs_f64());
                self.meters.delivered.increment(1);
                tracing::debug!(status, "delivered");
                self.record_outcome(story, &envelope, "delivered", None);
                return Ok(());
            }
            Outcome::Failed(failure) => failure.clone(),
        };
        let next = retry::next(&outcome, attempt, &self.policy, rand::random::<f64>());
        let (status, error) = (failure.status, failure.error.as_str());
        state.record_failure(Attempt::new(SystemTime::now(), status, error).with_response(failure.response.clone()));
        match next {
            Next::Ack => unreachable!("a failed attempt is never simply acked"),
            Next::Retry { queue, wait } => {
                let queue = &self.queues.retry_queue(queue).expect("every scheduled delay has a queue").name;
                // The queue's TTL caps the wait; the message's own expiration
                // places it (jitter, Retry-After) within that cap.
                let (properties, body) = message::encode(&envelope, &state);
                let properties = properties.with_expiration(wait.as_millis().max(1).to_string().into());
                // Boxed, as the dead letter below: publishing is the rare path,
                // and its future would otherwise size every delivery's task.
                Box::pin(self.store(session, queue, properties, &body)).await?;
                self.meters.retried.increment(1);
                tracing::info!(?status, %error, retry_in = ?wait, "delivery failed; scheduled a retry");
                self.record_outcome(story, &envelope, "retrying", None);
            }
            Next::DeadLetter { reason } => {
                return Box::pin(self.dead_letter(session, &envelope, state, reason, (status, error), story)).await;
            }
        }
        Ok(())
    }

    /// Moves the event to the dead letters (confirmed) with its history;
    /// `(status, error)`: the last attempt's answer, for the log line.
    async fn dead_letter(
        &self,
        session: &Session,
        envelope: &crate::envelope::Envelope,
        mut state: DeliveryState,
        reason: &'static str,
        (status, error): (Option<u16>, &str),
        story: &mut Vec<Record>,
    ) -> Result<(), crate::broker::PublishError> {
        state.dead_letter_reason = Some(reason.to_owned());
        let (properties, body) = message::encode(envelope, &state);
        self.store_dead(session, properties, &body).await?;
        self.meters.dead_lettered.increment(1);
        metrics::counter!(metric::DEAD_LETTERED, "subscription" => self.name.clone(), "reason" => reason).increment(1);
        tracing::warn!(?status, %error, reason, attempts = state.attempts, "dead-lettered");
        self.record_outcome(story, envelope, "dead_lettered", Some(reason));
        Ok(())
    }

    /// Records one attempt in the event log (when it is on): status or
    /// error, duration, the first bytes of the answer. Never headers.
    fn record_attempt(
        &self,
        story: &mut Vec<Record>,
        event: &crate::envelope::Envelope,
        attempt: u32,
        took: Duration,
        outcome: &Outcome,
    ) {
        if self.recorder.is_none() {
            return;
        }
        let (status, error, response) = match outcome {
            Outcome::Delivered { status } => (Some(*status), None, None),
            Outcome::Failed(failure) => {
                (failure.status, Some(failure.error.clone()), failure.response.as_deref().map(crate::eventlog::head))
            }
        };
        let what = crate::eventlog::What::Attempt {
            subscription: self.name.clone(),
            attempt,
            duration_ms: took.as_secs_f64() * 1000.0,
            status,
            error,
            response,
            outcome: None,
            reason: None,
        };
        story.push(Record::after(&event.id, event.received_at_ms(), crate::eventlog::now_ms(), what));
    }

    /// Records that an operator sent this copy again (when the log is on),
    /// dated when it was sent: here rather than by the operator, so it is
    /// committed before the copy's ack like the rest of the story, and a
    /// crash of either process cannot lose it. (A copy delivered twice
    /// after a crash records it twice; the story shows it once.)
    fn record_replayed(&self, story: &mut Vec<Record>, event: &crate::envelope::Envelope, replayed: message::Replayed) {
        if self.recorder.is_none() {
            return;
        }
        let what = crate::eventlog::What::Outcome {
            subscription: self.name.clone(),
            outcome: "replayed".to_owned(),
            reason: Some(replayed.reason),
        };
        story.push(Record::after(&event.id, event.received_at_ms(), replayed.at_ms, what));
    }

    /// Records where the event stands for this subscription (when the log
    /// is on): in the attempt that settled it, if there was one (one row to
    /// store instead of two), else on its own.
    fn record_outcome(
        &self,
        story: &mut Vec<Record>,
        event: &crate::envelope::Envelope,
        outcome: &str,
        reason: Option<&str>,
    ) {
        if self.recorder.is_none() {
            return;
        }
        if let Some(Record {
            what: crate::eventlog::What::Attempt { outcome: settled @ None, reason: why, .. }, ..
        }) = story.last_mut()
        {
            *settled = Some(outcome.to_owned());
            *why = reason.map(str::to_owned);
            return;
        }
        let what = crate::eventlog::What::Outcome {
            subscription: self.name.clone(),
            outcome: outcome.to_owned(),
            reason: reason.map(str::to_owned),
        };
        story.push(Record::after(&event.id, event.received_at_ms(), crate::eventlog::now_ms(), what));
    }

    /// Publishes to one of this subscription's queues (through the default
    /// exchange) and waits for the confirm.
    async fn store(
        &self,
        session: &Session,
        queue: &str,
        properties: lapin::BasicProperties,
        body: &[u8],
    ) -> Result<(), crate::broker::PublishError> {
        let channel: Channel = session.publish_channels.get().await?;
        publish_confirmed(&channel, "", queue, properties, body, self.broker.operation_timeout).await
    }

    /// Stores a dead letter of this subscription in the letters stream
    /// (shared by every subscription, so it is tagged with whose it is).
    async fn store_dead(
        &self,
        session: &Session,
        properties: lapin::BasicProperties,
        body: &[u8],
    ) -> Result<(), crate::broker::PublishError> {
        // A malformed message keeps the headers it came with: one that
        // poses as a marker of the letters stream must not become one.
        let mut headers: lapin::types::FieldTable = properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .filter(|(k, _)| k.as_str() != message::LETTERS_MARKER)
                    .map(|(k, v)| (k.clone(), v.clone()))
            })
            .into_iter()
            .flatten()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        headers.insert(message::DEAD_LETTER_OF.into(), lapin::types::AMQPValue::LongString(self.name.as_str().into()));
        let letters = self.broker.topology().letters.clone();
        self.store(session, &letters, properties.with_headers(headers), body).await
    }
}

/// Returns once the subscription is paused (or its state unknown); never
/// without a pause flag.
async fn until_paused(paused: &mut Option<tokio::sync::watch::Receiver<Option<bool>>>) {
    let Some(paused) = paused else { return std::future::pending().await };
    if paused.wait_for(|p| *p != Some(false)).await.is_err() {
        // The flag's owner is gone (shutdown): the token ends the loop.
        std::future::pending::<()>().await;
    }
}

async fn bounded<T>(timeout: Duration, fut: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, lapin::Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "broker operation timed out",
        ))))),
    }
}
