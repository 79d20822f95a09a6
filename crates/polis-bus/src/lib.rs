//! polis-bus: moving messages between services.
//!
//! - [`inprocess`]: the embedded default, a durable bus in one SQLite file
//!   shared by the services of one process (messages survive a crash between
//!   relay and consumer, like on a broker).
//! - [`nats`]: NATS JetStream: one stream per service, durable consumers,
//!   explicit acks, broker-side de-duplication by message id.
//! - [`relay`]: publishes a service's outbox to a bus, in order, at least once.
//! - [`scheduler`]: releases a service's scheduled messages (durable
//!   deadlines) into its outbox when they are due.
//! - [`consumer`]: runs a service's handlers over a subscription with its
//!   inbox (effects once), retries with backoff, and dead letters.
//! - [`health`]: whether the relay and the consumer's readers make
//!   progress, for a host's readiness check.
//!
//! Both buses implement [`polis_core::Bus`] and pass one contract suite
//! (`tests/bus_contract.rs`).

#![warn(missing_docs)]

pub mod consumer;
pub mod health;
pub mod inprocess;
pub mod nats;
pub mod relay;
pub mod scheduler;

pub use consumer::{Consumer, ConsumerHandle, ConsumerOptions, DeadLetterError, Handler, HandlerError, Outcome};
pub use health::Progress;
pub use inprocess::{InProcessBus, InProcessOptions};
pub use nats::NatsBus;
pub use relay::{Relay, RelayHandle, RelayOptions};
pub use scheduler::{Scheduler, SchedulerHandle, SchedulerOptions};
