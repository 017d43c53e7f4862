//! Every exchange, queue and binding hookwire uses, derived from the config.
//!
//! The plan is pure data (so `hookwire check` can print it without a broker);
//! [`Topology::declare`] applies it idempotently at every (re)connect.
//!
//! Names, all under the namespace `ns`:
//! - `ns.accepted` — fanout exchange the ingress publishes every accepted
//!   event to. It feeds `ns.events` and, when enabled, the archive. The
//!   archive hangs here rather than on `ns.events` because a catch-all
//!   binding on `ns.events` would route everything and so silence the
//!   alternate exchange that catches unrouted events.
//! - `ns.events` — topic exchange; routing key `{source}.{event_type}`;
//!   alternate exchange `ns.unrouted`, so events no subscription matches are kept.
//! - `ns.archive` — stream (retention by age and size) of every accepted event.
//! - `ns.catalog` — stream of the subscriptions catalog's changes (see
//!   `catalog`), kept forever: it is the API-made subscriptions' only copy.
//! - `ns.audit` — stream of audit records (who changed what), up to 1 GB.
//! - `ns.pauses` — stream of pause and resume records, followed by every
//!   process (`operator::control`).
//! - `ns.unrouted` — fanout exchange that catches unmatched events and puts
//!   them in `ns.letters`.
//! - `ns.letters` — stream of everything hookwire could not deliver: every
//!   subscription's dead letters and the unrouted events, with markers that
//!   settle what operators replayed or purged (`operator::letters`). A
//!   stream, so it is replicated and browsing it moves nothing; no
//!   retention, since it would drop unsettled letters.
//! - `ns.sub.NAME` — a subscription's quorum work queue, bound to `ns.events`
//!   with each topic pattern.
//! - `ns.sub.NAME.retry.DELAY` — one quorum queue per distinct retry delay; a
//!   message waits out the queue's TTL and is dead-lettered back to the work
//!   queue. At-least-once dead-lettering makes that move itself confirmed.
//!   The work queue dead-letters to `ns.letters` (delivery limit exceeded).

use std::{collections::BTreeSet, time::Duration};

use lapin::{
    Channel, Connection,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

use crate::config::{ArchiveConfig, Config, format_duration};

/// The arguments that size a replicated queue (`rabbitmq.replicas`).
const REPLICAS_QUORUM: &str = "x-quorum-initial-group-size";
const REPLICAS_STREAM: &str = "x-initial-cluster-size";

/// Declares `queue`. A queue that exists with another replica count (made
/// before `rabbitmq.replicas` was set or changed) is kept as it is: the
/// broker refuses a redeclare that differs in it, and that must not stop a
/// process from starting. Its members change with `rabbitmq-queues grow`
/// and `shrink`. Every other argument is still checked: RabbitMQ names only
/// the first difference, so the queue is declared again without the count,
/// and only if that too is refused over the count (the queue has one of its
/// own) is it taken as it stands, with a warning. A refusal closes the
/// channel, so it is opened again.
async fn declare_queue(
    connection: &Connection,
    channel: &mut Channel,
    queue: &QueueSpec,
    timeout: Duration,
) -> Result<Declared, TopologyError> {
    let object = format!("queue {}", queue.name);
    let is_count = |error: &TopologyError| {
        matches!(error, TopologyError::Conflict { reason, .. }
            if reason.contains(REPLICAS_QUORUM) || reason.contains(REPLICAS_STREAM))
    };
    let declare = |channel: &Channel, args: FieldTable| {
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        let name = queue.name.clone();
        let channel = channel.clone();
        let object = object.clone();
        async move { bounded(&object, timeout, channel.queue_declare(name.as_str().into(), options, args)).await }
    };
    let first = declare(channel, field_table(&queue.args)).await;
    match first {
        Err(error) if is_count(&error) => {}
        // A work queue of a namespace made before issue 11 dead-letters into
        // its classic `NAME.dead` queue; queue arguments cannot change, and
        // recreating the queue would drop what it holds. It is kept, and the
        // letters follower moves what lands there into `ns.letters`.
        Err(TopologyError::Conflict { reason, .. }) if reason.contains("x-dead-letter-routing-key") => {
            keep_as_it_is(connection, channel, queue, timeout).await?;
            tracing::warn!(queue = %queue.name, "work queue of an earlier version: it dead-letters into its old dead-letter queue, whose messages are moved into the letters stream");
            return Ok(Declared { earlier_version: true });
        }
        other => return other.map(|_| Declared::default()),
    }
    *channel = bounded("a channel", timeout, connection.create_channel()).await?;
    let uncounted: Vec<_> =
        queue.args.iter().filter(|(key, _)| *key != REPLICAS_QUORUM && *key != REPLICAS_STREAM).cloned().collect();
    match declare(channel, field_table(&uncounted)).await {
        Err(error) if is_count(&error) => {
            keep_as_it_is(connection, channel, queue, timeout).await?;
            tracing::warn!(queue = %queue.name, "queue exists with a replica count other than rabbitmq.replicas; kept as it is (its other arguments unchecked)");
            Ok(Declared::default())
        }
        Ok(_) => {
            tracing::info!(queue = %queue.name, "queue exists without a replica count; kept (rabbitmq.replicas applies to new queues)");
            Ok(Declared::default())
        }
        Err(error) => Err(error),
    }
}

/// After a refused declare (which closed `channel`): a new channel, and a
/// check that `queue` exists, taken with the arguments it has.
async fn keep_as_it_is(
    connection: &Connection,
    channel: &mut Channel,
    queue: &QueueSpec,
    timeout: Duration,
) -> Result<(), TopologyError> {
    *channel = bounded("a channel", timeout, connection.create_channel()).await?;
    let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let declare = channel.queue_declare(queue.name.as_str().into(), passive, FieldTable::default());
    bounded(&format!("queue {}", queue.name), timeout, declare).await.map(drop)
}

/// What a declare found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Declared {
    /// Some queue was made by a version before dead letters moved to
    /// `ns.letters`: its letters and pause flags are still to be moved.
    pub earlier_version: bool,
}

/// `(exchange, queue, key)` as [`Topology::bindings`] lists them.
async fn bind(
    channel: &Channel,
    (exchange, queue, key): &(String, String, String),
    timeout: Duration,
) -> Result<(), TopologyError> {
    bounded(&format!("binding {exchange} -> {queue} ({key})"), timeout, async {
        let options = QueueBindOptions::default();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                options,
                FieldTable::default(),
            )
            .await
    })
    .await
}

/// The audit stream's size bound: years of human actions.
const AUDIT_MAX_BYTES: i64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "{object} already exists with different settings ({reason}); \
         delete it or choose another rabbitmq.namespace"
    )]
    Conflict { object: String, reason: String },
    #[error("declaring {object} failed: {source}")]
    Broker {
        object: String,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring {object} timed out")]
    Timeout { object: String },
    #[error("{object}: {reason}")]
    Publish { object: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub args: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone)]
pub struct RetryQueue {
    pub name: String,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct SubscriptionQueues {
    pub subscription: String,
    pub topics: Vec<String>,
    pub work: String,
    /// Sorted by delay, one per distinct delay in the schedule.
    pub retries: Vec<RetryQueue>,
    /// Retry queues of an earlier schedule ([`Topology::retire_from`]).
    /// Events waiting in them still return to `work` when their delay is
    /// up; a queue goes once it is empty ([`Topology::sweep_retired`]).
    pub retired: Vec<RetiredQueue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetiredQueue {
    pub name: String,
    /// When this process saw it leave the schedule.
    pub since: std::time::Instant,
}

impl SubscriptionQueues {
    /// The retry queue that waits `delay`.
    pub fn retry_queue(&self, delay: Duration) -> Option<&RetryQueue> {
        self.retries.iter().find(|q| q.delay == delay)
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub namespace: String,
    /// Where the ingress publishes: feeds `events_exchange` and the archive.
    pub accepted_exchange: String,
    /// Routes by topic to the subscriptions' work queues.
    pub events_exchange: String,
    pub unrouted_exchange: String,
    /// Dead letters and unrouted events (a stream).
    pub letters: String,
    pub subscriptions: Vec<SubscriptionQueues>,
    /// The archive stream, when enabled.
    pub archive: Option<ArchiveStream>,
    /// Pause and resume records (a stream).
    pub pauses_stream: String,
    /// The catalog's log (a stream).
    pub catalog_stream: String,
    /// The audit log (a stream, bounded by size).
    pub audit_stream: String,
    delivery_limit: u32,
    /// `rabbitmq.replicas`: members of each new quorum queue and stream.
    replicas: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ArchiveStream {
    pub name: String,
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl ArchiveStream {
    /// Retention applies to whole segments, so segments are kept to a
    /// twentieth of the size limit (RabbitMQ's default is 500 MB): small
    /// limits would otherwise never trim anything.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 20).clamp(1_000_000, 500_000_000)
    }

    fn args(&self) -> Vec<(&'static str, Arg)> {
        vec![
            ("x-queue-type", Arg::Str("stream".into())),
            ("x-max-age", Arg::Str(format!("{}s", self.max_age.as_secs().max(1)))),
            ("x-max-length-bytes", Arg::Int(self.max_bytes as i64)),
            ("x-stream-max-segment-size-bytes", Arg::Int(self.segment_bytes() as i64)),
        ]
    }
}

impl Topology {
    pub fn from_config(config: &Config) -> Self {
        Self::plan(config, config.subscriptions.iter())
    }

    /// The plan for `subscriptions` (the file's and the catalog's), with
    /// everything else from `config`.
    pub fn plan<'a>(
        config: &Config,
        subscriptions: impl IntoIterator<Item = (&'a String, &'a crate::config::SubscriptionConfig)>,
    ) -> Self {
        let ns = &config.rabbitmq.namespace;
        let subscriptions = subscriptions
            .into_iter()
            .map(|(name, sub)| {
                let work = format!("{ns}.sub.{name}");
                let delays: BTreeSet<Duration> = sub.retry.iter().copied().collect();
                SubscriptionQueues {
                    subscription: name.clone(),
                    topics: sub.topics.clone(),
                    retries: delays
                        .into_iter()
                        .map(|delay| RetryQueue { name: format!("{work}.retry.{}", format_duration(delay)), delay })
                        .collect(),
                    work,
                    retired: Vec::new(),
                }
            })
            .collect();
        let ArchiveConfig { enabled, max_age, max_bytes } = config.archive;
        Self {
            namespace: ns.clone(),
            accepted_exchange: format!("{ns}.accepted"),
            events_exchange: format!("{ns}.events"),
            unrouted_exchange: format!("{ns}.unrouted"),
            letters: format!("{ns}.letters"),
            subscriptions,
            archive: enabled.then(|| ArchiveStream { name: format!("{ns}.archive"), max_age, max_bytes: max_bytes.0 }),
            pauses_stream: format!("{ns}.pauses"),
            catalog_stream: format!("{ns}.catalog"),
            audit_stream: format!("{ns}.audit"),
            delivery_limit: config.rabbitmq.delivery_limit,
            replicas: config.rabbitmq.replicas,
        }
    }

    pub fn subscription(&self, name: &str) -> Option<&SubscriptionQueues> {
        self.subscriptions.iter().find(|s| s.subscription == name)
    }

    /// Quorum queues that dead-letter somewhere do it at-least-once: the
    /// broker keeps the message until the target queue confirms it.
    fn dead_lettering_to(target: &str) -> Vec<(&'static str, Arg)> {
        vec![
            ("x-queue-type", Arg::Str("quorum".into())),
            ("x-dead-letter-exchange", Arg::Str(String::new())),
            ("x-dead-letter-routing-key", Arg::Str(target.to_owned())),
            ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
            // at-least-once dead-lettering requires reject-publish overflow.
            ("x-overflow", Arg::Str("reject-publish".into())),
        ]
    }

    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut out = vec![
            QueueSpec { name: self.letters.clone(), args: vec![("x-queue-type", Arg::Str("stream".into()))] },
            QueueSpec { name: self.pauses_stream.clone(), args: vec![("x-queue-type", Arg::Str("stream".into()))] },
            QueueSpec { name: self.catalog_stream.clone(), args: vec![("x-queue-type", Arg::Str("stream".into()))] },
            QueueSpec {
                name: self.audit_stream.clone(),
                args: vec![
                    ("x-queue-type", Arg::Str("stream".into())),
                    ("x-max-length-bytes", Arg::Int(AUDIT_MAX_BYTES)),
                    ("x-stream-max-segment-size-bytes", Arg::Int(AUDIT_MAX_BYTES / 20)),
                ],
            },
        ];
        if let Some(archive) = &self.archive {
            out.push(QueueSpec { name: archive.name.clone(), args: archive.args() });
        }
        for sub in &self.subscriptions {
            let mut work = Self::dead_lettering_to(&self.letters);
            work.push(("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))));
            out.push(QueueSpec { name: sub.work.clone(), args: work });
            for retry in &sub.retries {
                let mut args = Self::dead_lettering_to(&sub.work);
                args.push(("x-message-ttl", Arg::Int(retry.delay.as_millis() as i64)));
                out.push(QueueSpec { name: retry.name.clone(), args });
            }
        }
        if let Some(replicas) = self.replicas {
            // Replicated queue types take their size when created (every
            // queue hookwire makes is a quorum queue or a stream).
            for spec in &mut out {
                let size = match spec.args.iter().find(|(key, _)| *key == "x-queue-type") {
                    Some((_, Arg::Str(kind))) if kind == "quorum" => REPLICAS_QUORUM,
                    Some((_, Arg::Str(kind))) if kind == "stream" => REPLICAS_STREAM,
                    _ => continue,
                };
                spec.args.push((size, Arg::Int(i64::from(replicas))));
            }
        }
        out
    }

    /// `(exchange, queue, binding key)`.
    pub fn bindings(&self) -> Vec<(String, String, String)> {
        let mut out = vec![(self.unrouted_exchange.clone(), self.letters.clone(), String::new())];
        if let Some(archive) = &self.archive {
            out.push((self.accepted_exchange.clone(), archive.name.clone(), String::new()));
        }
        for sub in &self.subscriptions {
            for topic in &sub.topics {
                out.push((self.events_exchange.clone(), sub.work.clone(), topic.clone()));
            }
        }
        out
    }

    /// Declares everything; safe to run at every connect and from every
    /// process. Each call is bounded by `timeout`.
    pub async fn declare(&self, connection: &Connection, timeout: Duration) -> Result<Declared, TopologyError> {
        let mut channel = bounded("a channel", timeout, connection.create_channel()).await?;
        let result = self.declare_on(connection, &mut channel, timeout).await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "declared".into())).await;
        result
    }

    async fn declare_on(
        &self,
        connection: &Connection,
        channel: &mut Channel,
        timeout: Duration,
    ) -> Result<Declared, TopologyError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for fanout in [&self.unrouted_exchange, &self.accepted_exchange] {
            bounded(&format!("exchange {fanout}"), timeout, async {
                channel
                    .exchange_declare(
                        fanout.as_str().into(),
                        lapin::ExchangeKind::Fanout,
                        durable,
                        FieldTable::default(),
                    )
                    .await
            })
            .await?;
        }
        let mut args = FieldTable::default();
        args.insert("alternate-exchange".into(), AMQPValue::LongString(self.unrouted_exchange.clone().into()));
        bounded(&format!("exchange {}", self.events_exchange), timeout, async {
            channel
                .exchange_declare(self.events_exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, args)
                .await
        })
        .await?;
        // The fanout ignores routing keys but passes them on, so the topic
        // exchange still routes by `{source}.{event_type}`.
        bounded(&format!("binding {} -> {}", self.accepted_exchange, self.events_exchange), timeout, async {
            channel
                .exchange_bind(
                    self.events_exchange.as_str().into(),
                    self.accepted_exchange.as_str().into(),
                    "".into(),
                    lapin::options::ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await?;
        let mut declared = Declared::default();
        for queue in self.queues() {
            declared.earlier_version |= declare_queue(connection, channel, &queue, timeout).await?.earlier_version;
        }
        for binding in self.bindings() {
            bind(channel, &binding, timeout).await?;
        }
        Ok(declared)
    }

    /// Brings the broker from the plan `old` to this one, on a live
    /// connection: declares the queues and bindings that are new and removes
    /// the bindings that are gone, so routing follows at once. The queues of
    /// a removed subscription stay: they may hold events, and deleting them
    /// is the deleting operator's decision ([`Topology::delete_subscription`]).
    pub async fn reconcile(
        &self,
        old: &Topology,
        connection: &Connection,
        timeout: Duration,
    ) -> Result<(), TopologyError> {
        let mut channel = bounded("a channel", timeout, connection.create_channel()).await?;
        let result = self.reconcile_on(old, connection, &mut channel, timeout).await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "reconciled".into())).await;
        result
    }

    async fn reconcile_on(
        &self,
        old: &Topology,
        connection: &Connection,
        channel: &mut Channel,
        timeout: Duration,
    ) -> Result<(), TopologyError> {
        let existing: BTreeSet<String> = old.queues().into_iter().map(|q| q.name).collect();
        for queue in self.queues().into_iter().filter(|q| !existing.contains(&q.name)) {
            declare_queue(connection, channel, &queue, timeout).await?;
        }
        let (new, old) = (self.bindings(), old.bindings());
        for binding in new.iter().filter(|b| !old.contains(b)) {
            bind(channel, binding, timeout).await?;
        }
        for (exchange, queue, key) in old.iter().filter(|b| !new.contains(b)) {
            bounded(&format!("unbinding {exchange} -> {queue} ({key})"), timeout, async {
                channel
                    .queue_unbind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        FieldTable::default(),
                    )
                    .await
            })
            .await?;
        }
        Ok(())
    }

    /// Carries over, as retired, the retry queues `current` has for a
    /// subscription that this plan no longer has (its schedule changed).
    /// Deleting them at once would drop the events waiting in them.
    pub fn retire_from(&mut self, current: &Topology) {
        let now = std::time::Instant::now();
        for sub in &mut self.subscriptions {
            let Some(was) = current.subscription(&sub.subscription) else { continue };
            let scheduled: BTreeSet<&str> = sub.retries.iter().map(|r| r.name.as_str()).collect();
            let newly = was.retries.iter().map(|r| RetiredQueue { name: r.name.clone(), since: now });
            let mut seen = BTreeSet::new();
            sub.retired = was
                .retired
                .iter()
                .cloned()
                .chain(newly)
                .filter(|r| !scheduled.contains(r.name.as_str()) && seen.insert(r.name.clone()))
                .collect();
        }
    }

    /// Whether any subscription has retired retry queues left.
    pub fn has_retired(&self) -> bool {
        self.subscriptions.iter().any(|s| !s.retired.is_empty())
    }

    /// Deletes the retired retry queues that have been retired for at least
    /// `grace` and are empty. The grace outlasts the replaced workers: one
    /// still finishing an attempt may put the event into its old retry
    /// queue, and a publish to a queue just deleted would be lost. Returns
    /// whether any went.
    pub async fn sweep_retired(&mut self, connection: &lapin::Connection, grace: Duration, timeout: Duration) -> bool {
        let mut swept = false;
        for sub in &mut self.subscriptions {
            let mut kept = Vec::new();
            for queue in std::mem::take(&mut sub.retired) {
                if queue.since.elapsed() < grace {
                    kept.push(queue);
                    continue;
                }
                match delete_if_empty(connection, &queue.name, timeout).await {
                    Ok(true) => {
                        tracing::info!(subscription = %sub.subscription, queue = %queue.name, "deleted a retired retry queue");
                        swept = true;
                    }
                    Ok(false) => kept.push(queue),
                    Err(error) => {
                        tracing::debug!(queue = %queue.name, %error, "retired retry queue not swept yet");
                        kept.push(queue);
                    }
                }
            }
            sub.retired = kept;
        }
        swept
    }

    /// Deletes subscription `name`'s queues (work, retries, retired
    /// retries), messages included. Its dead letters are settled by the
    /// caller (they live in the shared letters stream).
    pub async fn delete_subscription(
        &self,
        name: &str,
        channel: &Channel,
        timeout: Duration,
    ) -> Result<(), TopologyError> {
        let Some(sub) = self.subscription(name) else { return Ok(()) };
        let mut queues = vec![sub.work.clone()];
        queues.extend(sub.retries.iter().map(|r| r.name.clone()));
        queues.extend(sub.retired.iter().map(|r| r.name.clone()));
        for queue in queues {
            bounded(&format!("deleting queue {queue}"), timeout, async {
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.map(drop)
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace, messages included.
    /// For tests and for operators retiring a namespace.
    ///
    /// Also the queues an earlier version made that this one only drains
    /// (each subscription's classic `NAME.dead` and `NAME.paused`, and the
    /// `ns.unrouted` queue): a namespace first run by an old binary would
    /// otherwise leave them behind. Deleting a queue that does not exist is
    /// not an error in AMQP.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let retired = self.subscriptions.iter().flat_map(|s| s.retired.iter().map(|r| r.name.clone()));
        let earlier = self
            .subscriptions
            .iter()
            .flat_map(|s| [format!("{}.dead", s.work), format!("{}.paused", s.work)])
            .chain([self.unrouted_exchange.clone()]);
        for queue in self.queues().into_iter().map(|q| q.name).chain(retired).chain(earlier) {
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        for exchange in [&self.accepted_exchange, &self.events_exchange, &self.unrouted_exchange] {
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// The plan as text, for `hookwire check`.
    pub fn describe(&self) -> String {
        let mut out = String::from("exchanges:\n");
        out += &format!("  {} (fanout, durable) -> {}\n", self.accepted_exchange, self.events_exchange);
        out += &format!("  {} (topic, durable, alternate-exchange={})\n", self.events_exchange, self.unrouted_exchange);
        out += &format!("  {} (fanout, durable)\n", self.unrouted_exchange);
        out += "queues:\n";
        for queue in self.queues() {
            let args: Vec<String> = queue
                .args
                .iter()
                .map(|(k, v)| match v {
                    Arg::Str(s) if s.is_empty() => format!("{k}=\"\""),
                    Arg::Str(s) => format!("{k}={s}"),
                    Arg::Int(i) => format!("{k}={i}"),
                })
                .collect();
            out += &format!("  {} ({})\n", queue.name, args.join(", "));
        }
        out += "bindings:\n";
        for (exchange, queue, key) in self.bindings() {
            let key = if key.is_empty() { "(any)".to_owned() } else { key };
            out += &format!("  {exchange} -> {queue}  {key}\n");
        }
        out
    }
}

/// Queue arguments as AMQP wants them.
pub fn field_table(args: &[(&'static str, Arg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let value = match value {
            Arg::Str(s) => AMQPValue::LongString(s.clone().into()),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert((*key).into(), value);
    }
    table
}

/// Deletes `queue` if it holds nothing and nobody consumes it; true also
/// when it is already gone (another process swept it). On a channel of its
/// own: a passive declare of a missing queue closes the channel. Quorum
/// queues refuse `if_empty`, so the check is a passive declare; nothing
/// publishes to a retired queue once its grace is over.
async fn delete_if_empty(
    connection: &lapin::Connection,
    queue: &str,
    timeout: Duration,
) -> Result<bool, TopologyError> {
    let channel = bounded("a channel", timeout, connection.create_channel()).await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = bounded(&format!("queue {queue}"), timeout, async {
        channel.queue_declare(queue.into(), passive, FieldTable::default()).await
    })
    .await;
    let result = match declared {
        Ok(q) if q.message_count() == 0 && q.consumer_count() == 0 => {
            bounded(&format!("deleting queue {queue}"), timeout, async {
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await
            })
            .await
            .map(|_| true)
        }
        Ok(_) => Ok(false),
        Err(error) if error.to_string().contains("NOT_FOUND") => Ok(true),
        Err(error) => Err(error),
    };
    let _ = tokio::time::timeout(timeout, channel.close(200, "swept".into())).await;
    result
}

async fn bounded<T>(
    object: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, TopologyError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(TopologyError::Timeout { object: object.to_owned() }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains("PRECONDITION_FAILED") || text.contains("406") {
                Err(TopologyError::Conflict { object: object.to_owned(), reason: text })
            } else {
                Err(TopologyError::Broker { object: object.to_owned(), source: e })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_size_quorum_queues_and_streams_only() {
        let config = Config::from_toml(
            r#"
[rabbitmq]
namespace = "t"
replicas = 3
[subscriptions.billing]
topics = ["acme.#"]
url = "http://127.0.0.1:9000/"
retry = ["1s"]
"#,
            &|_| None,
        )
        .unwrap();
        let queues = Topology::from_config(&config).queues();
        let arg = |name: &str, key: &str| {
            let spec = queues.iter().find(|q| q.name == name).unwrap();
            spec.args.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        // Everything hookwire keeps is replicated: no classic queue is left.
        for quorum in ["t.sub.billing", "t.sub.billing.retry.1s"] {
            assert_eq!(arg(quorum, "x-quorum-initial-group-size"), Some(Arg::Int(3)), "{quorum}");
        }
        for stream in ["t.archive", "t.catalog", "t.audit", "t.letters", "t.pauses"] {
            assert_eq!(arg(stream, "x-initial-cluster-size"), Some(Arg::Int(3)), "{stream}");
        }
        assert!(queues.iter().all(|q| {
            q.args.iter().any(|(k, v)| {
                *k == "x-queue-type" && matches!(v, Arg::Str(kind) if kind == "quorum" || kind == "stream")
            })
        }));
        let unset = Config::from_toml("[rabbitmq]\nnamespace = \"t\"\n", &|_| None).unwrap();
        assert!(
            Topology::from_config(&unset)
                .queues()
                .iter()
                .all(|q| q.args.iter().all(|(k, _)| *k != REPLICAS_QUORUM && *k != REPLICAS_STREAM)),
            "unset: the broker's defaults"
        );
        assert!(Config::from_toml("[rabbitmq]\nreplicas = 0\n", &|_| None).is_err());
    }

    #[test]
    fn plans_queues_per_subscription_and_distinct_delay() {
        let config = Config::from_toml(
            r#"
[rabbitmq]
namespace = "t"
[event_log]
enabled = true
[subscriptions.billing]
topics = ["acme.invoice.*", "acme.customer.#"]
url = "http://127.0.0.1:9000/"
retry = ["1s", "5s", "1s", "2m"]
"#,
            &|_| None,
        )
        .unwrap();
        let t = Topology::from_config(&config);
        let sub = t.subscription("billing").unwrap();
        assert_eq!(sub.work, "t.sub.billing");
        let retry_names: Vec<_> = sub.retries.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(retry_names, ["t.sub.billing.retry.1s", "t.sub.billing.retry.5s", "t.sub.billing.retry.2m"]);
        // letters, pauses, catalog, audit, archive, work, three retries
        assert_eq!(t.queues().len(), 1 + 1 + 1 + 1 + 1 + 1 + 3);
        let letters = t.queues().into_iter().find(|q| q.name == "t.letters").unwrap();
        assert_eq!(
            letters.args,
            [("x-queue-type", Arg::Str("stream".into()))],
            "no retention: it holds unsettled letters"
        );
        let work = t.queues().into_iter().find(|q| q.name == "t.sub.billing").unwrap();
        assert!(work.args.contains(&("x-dead-letter-routing-key", Arg::Str("t.letters".into()))));
        let catalog = t.queues().into_iter().find(|q| q.name == "t.catalog").unwrap();
        assert_eq!(catalog.args, [("x-queue-type", Arg::Str("stream".into()))], "kept forever: no retention");
        let archive = t.queues().into_iter().find(|q| q.name == "t.archive").unwrap();
        assert!(archive.args.contains(&("x-max-age", Arg::Str("604800s".into()))));
        assert!(archive.args.contains(&("x-stream-max-segment-size-bytes", Arg::Int(500_000_000))));
        let retry = t.queues().into_iter().find(|q| q.name == "t.sub.billing.retry.2m").unwrap();
        assert!(retry.args.contains(&("x-message-ttl", Arg::Int(120_000))));
        assert!(retry.args.contains(&("x-dead-letter-routing-key", Arg::Str("t.sub.billing".into()))));
        assert!(retry.args.contains(&("x-dead-letter-strategy", Arg::Str("at-least-once".into()))));
        let work = t.queues().into_iter().find(|q| q.name == "t.sub.billing").unwrap();
        assert!(work.args.contains(&("x-delivery-limit", Arg::Int(20))));
        assert_eq!(t.bindings().len(), 4);
        let text = t.describe();
        assert!(text.contains("t.events (topic, durable, alternate-exchange=t.unrouted)"));
        assert!(text.contains("t.unrouted -> t.letters  (any)"));
        assert!(text.contains("t.events -> t.sub.billing  acme.customer.#"));
    }
}
