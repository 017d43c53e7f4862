//! RabbitMQ: the durable middle of the pipeline.
//!
//! - `topology` — names and declaration of every exchange and queue.
//! - `connection` — the supervised connection ([`Broker`], [`Session`]).
//! - `publisher` — publishing with confirms ([`Publisher`]).
//! - `message` — the envelope's AMQP encoding.
//! - `stream` — reading streams (the archive, catalog, letters).
//! - `depth` — queue depths as metrics ([`depth::spawn`]).

pub mod connection;
pub mod depth;
pub mod message;
pub mod publisher;
pub mod stream;
pub mod topology;

pub use connection::{Broker, Session};
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;
