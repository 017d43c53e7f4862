//! Publishing with publisher confirms: a publish succeeds only when the broker
//! has acked it and did not return it as unroutable.
//!
//! Must not: retry on its own. A failed publish is reported to the caller,
//! who decides (ingress answers 503; a worker leaves the delivery unacked).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, options::BasicPublishOptions, options::ConfirmSelectOptions,
};
use tokio::sync::Mutex;

use super::connection::Broker;
use crate::telemetry::metric;

/// Publish channels per connection. Confirms are pipelined on each channel,
/// so a few are enough to keep the broker busy.
const POOL_SIZE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is not connected")]
    Unavailable,
    #[error("RabbitMQ did not confirm the publish in time")]
    Timeout,
    #[error("RabbitMQ blocks publishing: {0}")]
    Blocked(String),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ could not route the message: {0}")]
    Returned(String),
    #[error("channel error: {0}")]
    Channel(#[from] lapin::Error),
}

impl PublishError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Blocked(_) => "blocked",
            Self::Nacked => "nack",
            Self::Returned(_) => "returned",
            Self::Channel(_) => "channel_error",
        }
    }
}

/// Confirm-mode channels of one connection, opened lazily and replaced when
/// the broker closes one (a channel error closes only that channel).
pub struct ChannelPool {
    connection: Arc<Connection>,
    slots: Vec<Mutex<Option<Channel>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl ChannelPool {
    pub fn new(connection: Arc<Connection>, timeout: Duration) -> Self {
        Self {
            connection,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
        }
    }

    pub async fn get(&self) -> Result<Channel, PublishError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut guard = slot.lock().await;
        if let Some(channel) = guard.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = open_confirm_channel(&self.connection, self.timeout).await?;
        *guard = Some(channel.clone());
        Ok(channel)
    }
}

impl ChannelPool {
    /// Closes the open channels, before the connection itself is closed (lapin
    /// logs a spurious error when a connection closes under open channels).
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(channel) = slot.lock().await.take() {
                let _ = tokio::time::timeout(self.timeout, channel.close(200, "hookwire shutting down".into())).await;
            }
        }
    }
}

pub async fn open_confirm_channel(connection: &Connection, timeout: Duration) -> Result<Channel, PublishError> {
    let open = async {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>(channel)
    };
    Ok(tokio::time::timeout(timeout, open).await.map_err(|_| PublishError::Timeout)??)
}

/// Publishes with `mandatory` on a confirm channel and waits for the confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
    body: &[u8],
    timeout: Duration,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let publish = async {
        let confirm = channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?;
        Ok::<_, PublishError>(confirm.await?)
    };
    let Ok(confirmed) = tokio::time::timeout(timeout, publish).await else {
        discard(channel, timeout);
        return Err(PublishError::Timeout);
    };
    match confirmed? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishError::Returned(returned.reply_text.to_string()))
        }
        Confirmation::Nack(None) => {
            // hookwire's quorum queues overflow by `reject-publish` but set
            // no length limit, so a nack means the queue had no leader. A
            // channel keeps the leader it knew: after a node loss, RabbitMQ
            // 3.10 nacked every publish on it for over 40 s, where a new
            // channel reached the new leader in 0.2 s (docs/RELIABILITY.md).
            discard(channel, timeout);
            Err(PublishError::Nacked)
        }
        Confirmation::NotRequested => unreachable!("publish channels are always in confirm mode"),
    }
}

/// Closes a channel whose confirm its caller stopped waiting for. lapin keeps
/// the promise of a confirm dropped before it arrived until someone calls
/// `wait_for_confirms`, which a shared channel never does: every abandoned
/// confirm would leak one. Closing the channel frees them, and the pool opens
/// a fresh one for the next publish.
fn discard(channel: &Channel, timeout: Duration) {
    let channel = channel.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, channel.close(200, "confirm abandoned".into())).await;
    });
}

/// The ingress side's publisher: publishes on the current session's pool.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    timeout: Duration,
}

impl Publisher {
    pub fn new(broker: Broker, timeout: Duration) -> Self {
        Self { broker, timeout }
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = async {
            let session = self.broker.session().ok_or(PublishError::Unavailable)?;
            // A blocked connection would hold the publish for the whole
            // timeout and then fail anyway: fail now, the sender retries.
            if let Some(reason) = self.broker.blocked() {
                return Err(PublishError::Blocked(reason));
            }
            let channel = session.publish_channels.get().await?;
            tokio::select! {
                result = publish_confirmed(&channel, exchange, routing_key, properties, body, self.timeout) => result,
                reason = self.broker.until_blocked() => {
                    discard(&channel, self.timeout);
                    Err(PublishError::Blocked(reason))
                }
            }
        }
        .await;
        let outcome = match &result {
            Ok(()) => "confirmed",
            Err(e) => e.reason(),
        };
        metrics::histogram!(metric::PUBLISH_DURATION, "outcome" => outcome).record(started.elapsed().as_secs_f64());
        result
    }
}
