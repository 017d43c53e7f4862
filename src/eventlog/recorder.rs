//! The recording side: a bounded in-process buffer and a task that
//! publishes it to `ns.eventlog` in confirmed batches. Never blocks the
//! caller.

use std::time::Duration;

use lapin::BasicProperties;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::Record;
use crate::{
    broker::{Broker, publisher::publish_confirmed},
    telemetry::metric,
};

/// Records buffered in memory before new ones are dropped (and counted):
/// several seconds of a saturated pipeline, a few MB.
const BUFFER: usize = 65_536;
/// Records per published message.
const BATCH: usize = 500;
/// How long a batch waits to fill before it goes.
const LINGER: Duration = Duration::from_millis(20);

/// Where a process's stages hand their records. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    /// `host:pid`, named in `received` records.
    pub process: String,
}

impl Recorder {
    /// Starts the publishing task; it flushes what it holds and stops when
    /// `token` is cancelled.
    pub fn spawn(broker: Broker, queue: String, token: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
        let process = format!("{host}:{}", std::process::id());
        (Self { tx, process }, tokio::spawn(publish(broker, queue, rx, token)))
    }

    /// Queues `record` for the log; drops it (counted) when the buffer is full.
    pub fn record(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            metrics::counter!(metric::EVENT_LOG_DROPPED).increment(1);
        }
    }
}

async fn publish(broker: Broker, queue: String, mut rx: mpsc::Receiver<Record>, token: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            record = rx.recv() => record,
            _ = token.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
        send(&broker, &queue, &batch).await;
        batch.clear();
    }
}

async fn send(broker: &Broker, queue: &str, batch: &[Record]) {
    let result = async {
        let session = broker.session().ok_or("RabbitMQ is not connected")?;
        let channel = session.publish_channels.get().await.map_err(|_| "no channel")?;
        let body = serde_json::to_vec(batch).expect("records serialize");
        let properties = BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&channel, "", queue, properties, &body, broker.operation_timeout)
            .await
            .map_err(|_| "not confirmed")
    }
    .await;
    if let Err(error) = result {
        metrics::counter!(metric::EVENT_LOG_DROPPED).increment(batch.len() as u64);
        tracing::warn!(error, records = batch.len(), "event log records dropped");
    }
}
