//! Every exchange, queue and binding hookwire uses, derived from the config.
//!
//! The plan is pure data (so `hookwire check` can print it without a broker);
//! [`Topology::declare`] applies it idempotently at every (re)connect.
//!
//! Names, all under the namespace `ns`:
//! - `ns.events` — topic exchange; routing key `{source}.{event_type}`;
//!   alternate exchange `ns.unrouted`, so events no subscription matches are kept.
//! - `ns.unrouted` — fanout exchange and quorum queue holding unmatched events.
//! - `ns.sub.NAME` — a subscription's quorum work queue, bound to `ns.events`
//!   with each topic pattern.
//! - `ns.sub.NAME.retry.DELAY` — one quorum queue per distinct retry delay; a
//!   message waits out the queue's TTL and is dead-lettered back to the work
//!   queue. At-least-once dead-lettering makes that move itself confirmed.
//! - `ns.sub.NAME.dead` — the subscription's dead-letter queue (quorum).

use std::{collections::BTreeSet, time::Duration};

use lapin::{
    Channel,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

use crate::config::{Config, format_duration};

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
    pub dead: String,
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
    pub events_exchange: String,
    pub unrouted_exchange: String,
    pub unrouted_queue: String,
    pub subscriptions: Vec<SubscriptionQueues>,
    delivery_limit: u32,
}

impl Topology {
    pub fn from_config(config: &Config) -> Self {
        let ns = &config.rabbitmq.namespace;
        let subscriptions = config
            .subscriptions
            .iter()
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
                    dead: format!("{work}.dead"),
                    work,
                }
            })
            .collect();
        Self {
            namespace: ns.clone(),
            events_exchange: format!("{ns}.events"),
            unrouted_exchange: format!("{ns}.unrouted"),
            unrouted_queue: format!("{ns}.unrouted"),
            subscriptions,
            delivery_limit: config.rabbitmq.delivery_limit,
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
        let quorum = || vec![("x-queue-type", Arg::Str("quorum".into()))];
        let mut out = vec![QueueSpec { name: self.unrouted_queue.clone(), args: quorum() }];
        for sub in &self.subscriptions {
            let mut work = Self::dead_lettering_to(&sub.dead);
            work.push(("x-delivery-limit", Arg::Int(i64::from(self.delivery_limit))));
            out.push(QueueSpec { name: sub.work.clone(), args: work });
            for retry in &sub.retries {
                let mut args = Self::dead_lettering_to(&sub.work);
                args.push(("x-message-ttl", Arg::Int(retry.delay.as_millis() as i64)));
                out.push(QueueSpec { name: retry.name.clone(), args });
            }
            out.push(QueueSpec { name: sub.dead.clone(), args: quorum() });
        }
        out
    }

    /// `(exchange, queue, binding key)`.
    pub fn bindings(&self) -> Vec<(String, String, String)> {
        let mut out = vec![(self.unrouted_exchange.clone(), self.unrouted_queue.clone(), String::new())];
        for sub in &self.subscriptions {
            for topic in &sub.topics {
                out.push((self.events_exchange.clone(), sub.work.clone(), topic.clone()));
            }
        }
        out
    }

    /// Declares everything; safe to run at every connect and from every
    /// process. Each call is bounded by `timeout`.
    pub async fn declare(&self, channel: &Channel, timeout: Duration) -> Result<(), TopologyError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let unrouted = format!("exchange {}", self.unrouted_exchange);
        bounded(&unrouted, timeout, async {
            channel
                .exchange_declare(
                    self.unrouted_exchange.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await
        })
        .await?;
        let mut args = FieldTable::default();
        args.insert("alternate-exchange".into(), AMQPValue::LongString(self.unrouted_exchange.clone().into()));
        bounded(&format!("exchange {}", self.events_exchange), timeout, async {
            channel
                .exchange_declare(self.events_exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, args)
                .await
        })
        .await?;
        for queue in self.queues() {
            bounded(&format!("queue {}", queue.name), timeout, async {
                channel
                    .queue_declare(
                        queue.name.as_str().into(),
                        QueueDeclareOptions { durable: true, ..Default::default() },
                        field_table(&queue.args),
                    )
                    .await
            })
            .await?;
        }
        for (exchange, queue, key) in self.bindings() {
            bounded(&format!("binding {exchange} -> {queue} ({key})"), timeout, async {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace, messages included.
    /// For tests and for operators retiring a namespace.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in self.queues() {
            channel.queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        for exchange in [&self.events_exchange, &self.unrouted_exchange] {
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// The plan as text, for `hookwire check`.
    pub fn describe(&self) -> String {
        let mut out = String::from("exchanges:\n");
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

fn field_table(args: &[(&'static str, Arg)]) -> FieldTable {
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
    fn plans_queues_per_subscription_and_distinct_delay() {
        let config = Config::from_toml(
            r#"
[rabbitmq]
namespace = "t"
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
        assert_eq!(sub.dead, "t.sub.billing.dead");
        let retry_names: Vec<_> = sub.retries.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(retry_names, ["t.sub.billing.retry.1s", "t.sub.billing.retry.5s", "t.sub.billing.retry.2m"]);
        assert_eq!(t.queues().len(), 1 + 1 + 3 + 1);
        let retry = t.queues().into_iter().find(|q| q.name == "t.sub.billing.retry.2m").unwrap();
        assert!(retry.args.contains(&("x-message-ttl", Arg::Int(120_000))));
        assert!(retry.args.contains(&("x-dead-letter-routing-key", Arg::Str("t.sub.billing".into()))));
        assert!(retry.args.contains(&("x-dead-letter-strategy", Arg::Str("at-least-once".into()))));
        let work = t.queues().into_iter().find(|q| q.name == "t.sub.billing").unwrap();
        assert!(work.args.contains(&("x-delivery-limit", Arg::Int(20))));
        assert_eq!(t.bindings().len(), 3);
        let text = t.describe();
        assert!(text.contains("t.events (topic, durable, alternate-exchange=t.unrouted)"));
        assert!(text.contains("t.events -> t.sub.billing  acme.customer.#"));
    }
}
