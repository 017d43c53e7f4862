//! What operators do: browse, replay and purge dead letters and unrouted
//! events, pause and resume subscriptions, replay from the archive.
//!
//! - `letters` — the stream of dead letters and unrouted events, followed
//!   by every process into an index of what is not yet settled.
//! - `scan` — the letter-walking primitive (keep / settle as purged / move
//!   and settle as replayed).
//! - `select` — selectors (`ids`, `type`, `status`, …) and the JSON views.
//! - `control` — pause/resume, broadcast to every process.
//! - `archive` — time-window replay from the archive stream.
//!
//! Everything here works on RabbitMQ state only, so any hookwire process of a
//! deployment can serve the operator API. The HTTP side is `admin::api`.
//! Must not: hold a message across calls; every operation leaves the queues
//! as it found them except for what it was asked to change.

pub mod archive;
pub mod control;
pub mod letters;
pub mod scan;
pub mod select;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::{
    letters::{Letters, Pile},
    scan::{Access, Decision, Flow, Message},
    select::{Detail, Filter, Summary},
};
use crate::{
    broker::{
        Broker, PublishError, Topology,
        message::{self, DeliveryState, Replayed},
    },
    envelope::topic_matches,
};

/// Listing page size when none is asked for, and the largest allowed.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Per-consumer prefetch of replays and purges.
const BULK_PREFETCH: u16 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("RabbitMQ is not connected")]
    Unavailable,
    #[error("a RabbitMQ operation timed out")]
    Timeout,
    #[error("queue {0} does not exist")]
    NoQueue(String),
    #[error("RabbitMQ error: {0}")]
    Broker(String),
    #[error(transparent)]
    Publish(PublishError),
    /// The `after` cursor of a listing is no longer in the queue.
    #[error("event {0} is not in the queue (replayed or purged since?); list again from the start")]
    CursorNotFound(String),
    #[error("{0}")]
    Invalid(String),
}

/// Counts of a replay or purge: its result, and its progress while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub dry_run: bool,
    /// Messages in the queue (or, for the archive, none known) when the
    /// operation started; the operation looks at no more than these.
    pub total: u64,
    pub scanned: u64,
    /// Messages the selector matched (what a dry run would affect).
    pub matched: u64,
    pub replayed: u64,
    pub purged: u64,
    /// Matched but left in place: malformed messages (replay), or unrouted
    /// events that still match no subscription.
    pub skipped: u64,
    /// Moves that were not confirmed; those messages stayed where they were.
    pub failed: u64,
}

/// One page of a listing of dead letters or unrouted events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    /// Where they are kept: the letters stream.
    pub queue: String,
    /// Letters on the pile (not yet replayed or purged) when the listing
    /// started.
    pub depth: u64,
    pub items: Vec<Summary>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// The operator's view of a deployment.
#[derive(Clone)]
pub struct Operator {
    pub broker: Broker,
    pub control: Arc<control::Control>,
    /// Dead letters and unrouted events, as this process follows them.
    pub letters: Letters,
    /// The event log's recorder (when the log is on): purges show in the
    /// stories of the events they touch. (Replays do too, recorded by the
    /// worker that takes the copy: see `message::Replayed`.)
    pub recorder: Option<crate::eventlog::Recorder>,
}

impl Operator {
    fn topology(&self) -> std::sync::Arc<Topology> {
        self.broker.topology()
    }

    /// Up to `limit` letters from the start of `pile`, or after the event
    /// `after`. Reading moves nothing.
    pub async fn page(&self, pile: &Pile, limit: usize, after: Option<&str>) -> Result<Page, OpError> {
        let limit = limit.clamp(1, MAX_LIMIT);
        let mut items = Vec::new();
        let mut found = after.is_none();
        let mut more = false;
        // A first page asks the broker for just enough; a later one walks on.
        let prefetch = if after.is_none() { limit as u16 + 1 } else { BULK_PREFETCH };
        let (progress, _) = watch::channel(Report::default());
        scan::scan(
            &self.letters,
            pile,
            Access::Read,
            prefetch,
            &progress,
            |message| {
                if !found {
                    found = message.id() == after;
                    return (Decision::Keep, Flow::Continue);
                }
                if items.len() == limit {
                    more = true;
                    return (Decision::Keep, Flow::Stop);
                }
                items.push(select::summary(message));
                (Decision::Keep, Flow::Continue)
            },
            None,
        )
        .await?;
        if !found {
            return Err(OpError::CursorNotFound(after.unwrap_or_default().to_owned()));
        }
        let next_after = if more { items.last().map(|s| s.event_id.clone()) } else { None };
        let queue = self.topology().letters.clone();
        Ok(Page { queue, depth: progress.borrow().total, items, next_after })
    }

    /// The letter with event id `id` on `pile`, whole.
    pub async fn find(&self, pile: &Pile, id: &str) -> Result<Option<Detail>, OpError> {
        let mut found = None;
        let (progress, _) = watch::channel(Report::default());
        scan::scan(
            &self.letters,
            pile,
            Access::Read,
            BULK_PREFETCH,
            &progress,
            |message| {
                if message.id() == Some(id) {
                    found = Some(select::detail(message));
                    return (Decision::Keep, Flow::Stop);
                }
                (Decision::Keep, Flow::Continue)
            },
            None,
        )
        .await?;
        Ok(found)
    }

    /// Moves the matching dead letters of subscription `name` back to its
    /// work queue with a fresh attempt count (the history stays, for the
    /// record).
    pub async fn replay_dead_letters(
        &self,
        name: &str,
        filter: &Filter,
        dry_run: bool,
        progress: &watch::Sender<Report>,
    ) -> Result<(), OpError> {
        let topology = self.topology();
        let queues = topology.subscription(name).ok_or_else(|| OpError::NoQueue(name.to_owned()))?;
        progress.send_modify(|r| r.dry_run = dry_run);
        scan::scan(
            &self.letters,
            &Pile::Dead(name.to_owned()),
            Access::Settle,
            BULK_PREFETCH,
            progress,
            |message| {
                if !filter.matches(message) {
                    return (Decision::Keep, Flow::Continue);
                }
                progress.send_modify(|r| r.matched += 1);
                let Ok((envelope, state)) = &message.decoded else {
                    // A message hookwire cannot read would only come back here.
                    progress.send_modify(|r| r.skipped += 1);
                    return (Decision::Keep, Flow::Continue);
                };
                if dry_run {
                    return (Decision::Keep, Flow::Continue);
                }
                let fresh = DeliveryState {
                    attempts: 0,
                    history: state.history.clone(),
                    dead_letter_reason: None,
                    replayed: Some(Replayed::now("dead_letters")),
                };
                let (properties, body) = message::encode(envelope, &fresh);
                (
                    Decision::Move {
                        exchange: String::new(),
                        routing_key: queues.work.clone(),
                        properties: Box::new(properties),
                        body: body.into(),
                    },
                    Flow::Continue,
                )
            },
            None,
        )
        .await
    }

    /// Sends the matching unrouted events through routing again (to every
    /// subscription whose topics now match). Events that still match none
    /// stay where they are, counted as skipped.
    pub async fn replay_unrouted(
        &self,
        filter: &Filter,
        dry_run: bool,
        progress: &watch::Sender<Report>,
    ) -> Result<(), OpError> {
        let topology = self.topology();
        progress.send_modify(|r| r.dry_run = dry_run);
        scan::scan(
            &self.letters,
            &Pile::Unrouted,
            Access::Settle,
            BULK_PREFETCH,
            progress,
            |message| {
                if !filter.matches(message) {
                    return (Decision::Keep, Flow::Continue);
                }
                progress.send_modify(|r| r.matched += 1);
                let routing_key = match &message.decoded {
                    Ok((envelope, _)) => envelope.routing_key(),
                    Err(_) => {
                        progress.send_modify(|r| r.skipped += 1);
                        return (Decision::Keep, Flow::Continue);
                    }
                };
                let routable = topology
                    .subscriptions
                    .iter()
                    .flat_map(|s| &s.topics)
                    .any(|topic| topic_matches(topic, &routing_key));
                if !routable {
                    progress.send_modify(|r| r.skipped += 1);
                    return (Decision::Keep, Flow::Continue);
                }
                if dry_run {
                    return (Decision::Keep, Flow::Continue);
                }
                // Straight to the topic exchange: the archive has it already.
                let exchange = topology.events_exchange.clone();
                (
                    Decision::Move {
                        exchange,
                        routing_key,
                        // As it came: the event unchanged, no history to reset.
                        properties: Box::new(message.properties.clone()),
                        body: message.data.clone(),
                    },
                    Flow::Continue,
                )
            },
            None,
        )
        .await
    }

    /// Removes the matching letters from `pile` (for dead letters, the event
    /// log records `purged` in their subscription's stories).
    pub async fn purge(
        &self,
        pile: &Pile,
        filter: &Filter,
        dry_run: bool,
        progress: &watch::Sender<Report>,
    ) -> Result<(), OpError> {
        progress.send_modify(|r| r.dry_run = dry_run);
        let subscription = match pile {
            Pile::Dead(name) => Some(name.as_str()),
            Pile::Unrouted => None,
        };
        scan::scan(
            &self.letters,
            pile,
            Access::Settle,
            BULK_PREFETCH,
            progress,
            |message: &Message| {
                if !filter.matches(message) {
                    return (Decision::Keep, Flow::Continue);
                }
                progress.send_modify(|r| r.matched += 1);
                let decision = if dry_run { Decision::Keep } else { Decision::Remove };
                (decision, Flow::Continue)
            },
            self.recorder.as_ref().zip(subscription),
        )
        .await
    }
}

impl From<crate::broker::stream::SyncError<OpError>> for OpError {
    fn from(error: crate::broker::stream::SyncError<OpError>) -> Self {
        use crate::broker::stream::SyncError;
        match error {
            SyncError::Append(error) => error,
            SyncError::Timeout => OpError::Timeout,
            SyncError::Gone => OpError::Unavailable,
        }
    }
}

/// A broker round trip, bounded by the operation timeout.
async fn bounded<T>(
    timeout: std::time::Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(|e| OpError::Broker(e.to_string())),
        Err(_) => Err(OpError::Timeout),
    }
}
