//! Integration tests: the real hookwire against the real RabbitMQ on
//! 127.0.0.1:5672 and real HTTP destinations on loopback. See `helpers`.

mod broker_outage;
mod catalog;
mod cli;
mod cluster;
#[path = "../support/cluster.rs"]
mod cluster_support;
mod connections;
mod dead_letters;
mod delivery;
mod deploy;
mod edge;
mod events;
mod helpers;
mod ingress;
mod openapi;
mod operator;
mod outbound;
mod replay;
mod routing;
mod schemes;
mod self_service;
mod shutdown;
mod tls;
mod transform;
