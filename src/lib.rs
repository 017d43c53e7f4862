//! # hookwire
//!
//! A webhook broker. SaaS platforms POST signed events to the **ingress**,
//! which verifies them and answers `202` only once RabbitMQ has confirmed the
//! event as stored. Events go to a topic exchange keyed `{source}.{event_type}`;
//! every **subscription** has its own durable queue, consumed by a **worker**
//! that POSTs each event to the subscriber, retrying through delay queues and
//! finally parking what cannot be delivered with the **dead letters**, in the
//! replicated stream `ns.letters`.
//!
//! ```text
//!  sender ──POST──▶ ingress ──publish+confirm──▶ ns.accepted (fanout) ─▶ ns.archive (stream)
//!                   verify                        ▼
//!                                             ns.events (topic)
//!                                                 │ no match ─▶ ns.unrouted ─▶ ns.letters (stream)
//!                                                 ▼
//!                                      ns.sub.NAME (quorum) ◀── ns.sub.NAME.retry.D (TTL)
//!                                                 │                      ▲
//!                                         worker ─┴─ POST ─▶ destination │ failed
//!                                                 └──────────────────────┘
//!                                                 └─ exhausted ─▶ ns.letters (stream)
//! ```
//!
//! **Operators** browse, replay and purge the dead letters and unrouted
//! events, pause subscriptions, and replay time windows from the archive,
//! through the operator API on the admin listener.
//!
//! # Layout
//! The modules follow the data's path:
//!
//! - [`ingress`] — HTTP in: body limits, signature schemes, envelope building.
//! - [`broker`] — RabbitMQ: topology, the supervised connection, confirmed
//!   publishing, the message encoding, queue depths as metrics.
//! - [`delivery`] — workers: consume, POST, decide retry/dead-letter, settle.
//! - [`catalog`] — the desired subscriptions: the API-made ones as a
//!   versioned log (the stream `ns.catalog`) every process replays and
//!   follows, the reconciler that drives topology and workers toward
//!   file + catalog, secrets sealed at rest, and the audit log (`ns.audit`).
//! - [`eventlog`] — every event's story: records from the ingress, the
//!   workers and the operator routes, group-committed by each process to a
//!   store (SQLite or PostgreSQL) the API reads.
//! - [`operator`] — what operators do: the letters stream every process
//!   follows, scan (browse, move, settle), selectors, pause/resume across
//!   processes, archive replay.
//! - [`admin`] — `/healthz`, `/readyz`, `/metrics`, and the operator API's
//!   HTTP side (queues, and the subscriptions themselves).
//!
//! Cross-cutting: [`config`] (the TOML file), [`envelope`] (the event as it
//! travels), [`app`] (startup and ordered shutdown, callable from tests with
//! port 0), [`commands`] (the CLI subcommands), [`client`] (the operator
//! CLI, a client of the operator API), [`telemetry`] (logs, metric
//! names), [`shutdown`] (signals, bounded drains), [`error`] (the
//! problem+json edge).
//!
//! # Invariants
//! - A sender gets `2xx` only after the publisher confirm; otherwise `503`
//!   with `Retry-After`.
//! - A delivery is acked only after its outcome (delivered, or the retry or
//!   dead-letter publish) is confirmed. A crash can duplicate, never lose.
//! - Secrets are [`config::Secret`]s and never printed.

pub mod admin;
pub mod app;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod eventlog;
pub mod ingress;
pub mod operator;
pub mod rate;
pub mod shutdown;
pub mod telemetry;
