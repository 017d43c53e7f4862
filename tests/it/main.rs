//! Integration tests: the real hookwire against the real RabbitMQ on
//! 127.0.0.1:5672 and real HTTP destinations on loopback. See `helpers`.

mod broker_outage;
mod cli;
mod delivery;
mod edge;
mod helpers;
mod ingress;
mod operator;
mod outbound;
mod routing;
mod schemes;
mod shutdown;
mod tls;
mod transform;
