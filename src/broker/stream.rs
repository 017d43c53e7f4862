//! Following a RabbitMQ stream from its first record: what the catalog and
//! the audit log do to rebuild their state from a log on every connection.
//!
//! Must not: interpret records (the followers do).

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Consumer,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

use super::{Broker, Session};

/// Pause between attempts after a follower failed on a live connection.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Calls `read` with every new session until `token` is cancelled. `read`
/// reads until its session ends or fails; an error is logged as `what`.
pub async fn on_every_session<F, Fut>(broker: &Broker, token: &CancellationToken, what: &str, mut read: F)
where
    F: FnMut(Session) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut sessions = broker.watch();
    loop {
        let session = tokio::select! {
            _ = token.cancelled() => return,
            changed = sessions.wait_for(Option::is_some) => match changed {
                Ok(session) => session.clone().expect("waited for Some"),
                Err(_) => return,
            },
        };
        if let Err(error) = read(session).await {
            tracing::warn!(%error, "{what} failed; reading the log again");
        }
        if token.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}

/// A consumer on `stream` from its first record. Streams need a prefetch,
/// and every delivery must be acked to keep the credit flowing.
pub async fn from_first(
    session: &Session,
    stream: &str,
    prefetch: u16,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let bounded = |what: &'static str| move |_| format!("{what} timed out");
    let channel = tokio::time::timeout(timeout, session.connection.create_channel())
        .await
        .map_err(bounded("opening a channel"))?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, channel.basic_qos(prefetch, BasicQosOptions::default()))
        .await
        .map_err(bounded("basic.qos"))?
        .map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let consume = channel.basic_consume(stream.into(), "".into(), BasicConsumeOptions::default(), args);
    let consumer =
        tokio::time::timeout(timeout, consume).await.map_err(bounded("basic.consume"))?.map_err(|e| e.to_string())?;
    Ok((channel, consumer))
}

/// The record's position in the stream, which RabbitMQ adds to every
/// message it delivers from a stream.
pub fn offset(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}
