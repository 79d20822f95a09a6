//! polis-core: the pure heart of polis.
//!
//! This crate holds the types and traits every other polis crate agrees on,
//! and no I/O of its own (no SQL driver, no broker client, no HTTP):
//!
//! - [`envelope`]: the event envelope — CloudEvents attributes plus stream
//!   version, global position, schema version, correlation, causation and
//!   `traceparent`.
//! - [`aggregate`]: the [`Aggregate`] trait (pure `handle` / `apply`) and the
//!   [`DomainEvent`] trait that maps a Rust event enum onto envelopes.
//! - [`store`]: the [`EventStore`] contract that the SQLite and PostgreSQL
//!   backends in `polis-store` implement, with its [`ExpectedVersion`] rules.
//! - [`subscription`]: the catch-up subscription built on top of any store.
//! - [`upcast`]: chains of upcasters that turn old event versions into new
//!   ones on read.
//! - [`repository`]: command execution — load (snapshot + later events),
//!   decide, append with an expected version, retry on conflict — plus
//!   snapshots and state as of a version or a time.
//! - [`testing`]: the given/when/then fixture for aggregates.
//! - [`message`]: messages between services (events, commands, replies) as
//!   CloudEvents, and their bus subjects.
//! - [`outbox`]: transactions that write state, events and outgoing messages
//!   together; the outbox, inbox and dead-letter contract of the stores.
//! - [`projection`]: the [`Projection`] trait — events into a read model,
//!   built in [`Generation`]s.
//! - [`bus`]: the message bus contract (durable, at-least-once, ordered).
//! - [`error`]: typed errors that keep domain rejection, concurrency conflict
//!   and infrastructure failure apart.
//! - [`stats`]: the one percentile function every report uses (nearest-rank).
//! - [`trace`]: the W3C trace context a message carries from the span that
//!   wrote it to the span that handles it (OpenTelemetry API only).

#![warn(missing_docs)]

pub mod aggregate;
pub mod bus;
pub mod envelope;
pub mod error;
pub mod lease;
pub mod message;
pub mod outbox;
pub mod projection;
pub mod repository;
pub mod stats;
pub mod store;
pub mod subscription;
pub mod testing;
pub mod trace;
pub mod upcast;

pub use aggregate::{Aggregate, DomainEvent};
pub use bus::{Bus, BusError, Delivery, Topic};
pub use envelope::{Metadata, NewEvent, RecordedEvent};
pub use error::{CommandError, StoreError};
pub use message::{Message, MessageKind, MessageType};
pub use outbox::{DeadLetter, DeadLetterStatus, OutboxEntry, Transaction, TransactionalStore, Work};
pub use projection::{Generation, Projection};
pub use repository::{Loaded, Repository, SnapshotPolicy};
pub use store::{AppendResult, EventStore, ExpectedVersion, Snapshot, StreamInfo};
pub use subscription::{CatchUpOptions, catch_up};
pub use upcast::Upcasters;
