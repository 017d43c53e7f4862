//! Queue depths as metrics: how many events wait in each subscription's
//! work queue and in its retry queues (`hookwire_queue_messages`), and how
//! many consumers RabbitMQ counts on the work queue
//! (`hookwire_queue_consumers`: the exact "nobody consumes it", which no
//! worker can tell of itself).
//!
//! hookwire's own counters see deliveries, not the backlog behind them, and
//! a subscription falling behind shows first as a growing queue. RabbitMQ
//! answers a passive declare with the queue's ready messages without
//! touching the queue, so a poll every [`POLL_EVERY`] costs one round trip
//! per queue. Processes with the worker role poll (every one of them: the
//! value is the broker's, so each reports the same; dashboards take the
//! max). The API's subscription status reads the same numbers on demand,
//! through [`read`].

use std::{collections::HashSet, time::Duration};

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Broker, topology::SubscriptionQueues};
use crate::telemetry::metric;

/// Often enough for a dashboard (Prometheus scrapes every 15-30 s), rare
/// enough to cost RabbitMQ nothing measurable even at 100 subscriptions.
pub const POLL_EVERY: Duration = Duration::from_secs(15);

/// A queue's counts, as a passive declare answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Ready messages (not those delivered and unacked).
    pub messages: u32,
    pub consumers: u32,
}

/// Why a queue's counts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("RabbitMQ did not answer in time")]
    TimedOut,
    #[error("{0}")]
    Broker(lapin::Error),
}

/// Reads `queue`'s counts by a passive declare, which neither creates nor
/// touches it; `Ok(None)`: there is no such queue. A missing queue closes
/// `channel` (AMQP's rule), so a caller that reads on asks for another.
pub async fn read(channel: &Channel, queue: &str, timeout: Duration) -> Result<Option<Counts>, ReadError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match tokio::time::timeout(timeout, channel.queue_declare(queue.into(), passive, FieldTable::default())).await {
        Ok(Ok(declared)) => {
            Ok(Some(Counts { messages: declared.message_count(), consumers: declared.consumer_count() }))
        }
        Ok(Err(error)) if error.to_string().contains("NOT_FOUND") => Ok(None),
        Ok(Err(error)) => Err(ReadError::Broker(error)),
        Err(_) => Err(ReadError::TimedOut),
    }
}

/// Polls until `token` is cancelled.
pub fn spawn(broker: Broker, every: Duration, token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The first poll as soon as there is a connection, so the series
        // exist (at their depth) from the start, not a period later.
        let mut sessions = broker.watch();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = sessions.wait_for(Option::is_some) => {}
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poller = Poller { broker, channel: None, reported: HashSet::new() };
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => poller.poll().await,
            }
        }
        if let Some((_, channel)) = poller.channel.take() {
            let _ = tokio::time::timeout(poller.broker.operation_timeout, channel.close(200, "done".into())).await;
        }
    })
}

struct Poller {
    broker: Broker,
    /// A channel of the session (by generation) it was opened on.
    channel: Option<(u64, Channel)>,
    /// Subscriptions whose gauges this process has set.
    reported: HashSet<String>,
}

impl Poller {
    async fn poll(&mut self) {
        let Some(session) = self.broker.session() else { return };
        let topology = self.broker.topology();
        let mut seen = HashSet::new();
        for sub in &topology.subscriptions {
            seen.insert(sub.subscription.clone());
            // A queue that cannot be read now keeps its last value: a gauge
            // that drops to 0 on an error would read as "caught up".
            if let Some(work) = self.counts(&session, &sub.work).await {
                set(&sub.subscription, "work", u64::from(work.messages));
                consumers(&sub.subscription, work.consumers);
            }
            if let Some(retrying) = self.retrying(&session, sub).await {
                set(&sub.subscription, "retry", retrying);
            }
        }
        // A subscription this process no longer runs has no backlog here.
        for gone in self.reported.difference(&seen) {
            set(gone, "work", 0);
            set(gone, "retry", 0);
            consumers(gone, 0);
        }
        self.reported = seen;
    }

    /// Everything waiting out a delay: the schedule's retry queues and the
    /// retired ones of an earlier schedule (gone ones count 0).
    async fn retrying(&mut self, session: &super::Session, sub: &SubscriptionQueues) -> Option<u64> {
        let names = sub.retries.iter().map(|q| &q.name).chain(sub.retired.iter().map(|q| &q.name));
        let mut total = 0;
        for name in names {
            total += self.messages(session, name).await?;
        }
        Some(total)
    }

    /// Ready messages in `queue`: `Some(0)` if it does not exist (deleted or
    /// swept meanwhile), `None` if RabbitMQ did not answer.
    async fn messages(&mut self, session: &super::Session, queue: &str) -> Option<u64> {
        self.counts(session, queue).await.map(|counts| u64::from(counts.messages))
    }

    /// `queue`'s counts: zeros if it does not exist, `None` if RabbitMQ did
    /// not answer.
    async fn counts(&mut self, session: &super::Session, queue: &str) -> Option<Counts> {
        let timeout = self.broker.operation_timeout;
        let channel = match &self.channel {
            Some((generation, channel)) if *generation == session.generation && channel.status().connected() => {
                channel.clone()
            }
            _ => {
                let opened = tokio::time::timeout(timeout, session.connection.create_channel()).await;
                let Ok(Ok(channel)) = opened else {
                    tracing::debug!("opening a channel to read queue depths failed");
                    return None;
                };
                self.channel = Some((session.generation, channel.clone()));
                channel
            }
        };
        match read(&channel, queue, timeout).await {
            Ok(Some(counts)) => Some(counts),
            // A missing queue closed the channel; the next read opens another.
            Ok(None) => Some(Counts { messages: 0, consumers: 0 }),
            Err(error) => {
                tracing::debug!(%queue, %error, "reading a queue depth failed");
                None
            }
        }
    }
}

fn set(subscription: &str, queue: &'static str, messages: u64) {
    metrics::gauge!(metric::QUEUE_MESSAGES, "subscription" => subscription.to_owned(), "queue" => queue)
        .set(messages as f64);
}

fn consumers(subscription: &str, consumers: u32) {
    metrics::gauge!(metric::QUEUE_CONSUMERS, "subscription" => subscription.to_owned()).set(f64::from(consumers));
}
