//! Reading a RabbitMQ stream from its first record: what the catalog and
//! the audit log do to rebuild their state from a log on every connection
//! (with [`Broker::on_every_session`](super::Broker::on_every_session)).
//!
//! Must not: interpret records (the followers do).

use std::time::Duration;

use super::Session;
use lapin::{
    BasicProperties, Channel, Consumer,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};

/// A consumer on `stream` from its first record. Streams need a prefetch,
/// and every delivery must be acked to keep the credit flowing.
pub async fn from_first(
    session: &Session,
    stream: &str,
    prefetch: u16,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    from(session, stream, prefetch, AMQPValue::LongString("first".into()), timeout).await
}

/// Like [`from_first`], from record `offset` on (or the first record the
/// stream still has, if retention removed that one). A consumer may also
/// get records just before `offset` (delivery starts at its chunk).
pub async fn from_offset(
    session: &Session,
    stream: &str,
    prefetch: u16,
    offset: u64,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let offset = i64::try_from(offset).map_err(|_| "offset out of range".to_owned())?;
    from(session, stream, prefetch, AMQPValue::LongLongInt(offset), timeout).await
}

async fn from(
    session: &Session,
    stream: &str,
    prefetch: u16,
    offset: AMQPValue,
    timeout: Duration,
) -> Result<(Channel, Consumer), String> {
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    consume(session, stream, prefetch, args, timeout).await
}

/// A consumer of `queue` on a channel of its own, at most `prefetch`
/// unacked, every step bounded by `timeout`. Manual acks.
pub async fn consume(
    session: &Session,
    queue: &str,
    prefetch: u16,
    args: FieldTable,
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
    let consume = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), args);
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
