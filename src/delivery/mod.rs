//! Delivery out: consume each subscription's queue and POST every event to
//! its destination, with retries through the retry queues and a dead-letter
//! queue at the end.
//!
//! - `worker` — the consumer loop and the settle rules.
//! - `acks` — a consumer channel's acks, one `multiple` ack per run of
//!   settled deliveries.
//! - `http` — one attempt against a destination.
//! - `client` — a destination's HTTP/1.1 connections, kept open and reused,
//!   written and read by the delivering task itself.
//! - `retry` — what follows an attempt (`is_retriable`, `next`).
//! - `set` — the process's workers by subscription name, reconciled toward
//!   the desired subscriptions.

pub mod acks;
pub mod breaker;
pub mod client;
pub mod http;
pub mod retry;
pub mod set;
pub mod transform;
pub mod worker;

pub use worker::Worker;
