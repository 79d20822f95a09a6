//! polis-store: the event store backends.
//!
//! - [`sqlite`]: the embedded default, one SQLite file per service (WAL, one
//!   writer thread with group commit, read connections used in place).
//! - [`postgres`]: the distributed backend, one PostgreSQL database per
//!   service, with a visibility horizon so catch-up readers never skip events
//!   that commit out of position order.
//! - Both also keep the service's transactional outbox, inbox and dead
//!   letters ([`polis_core::TransactionalStore`]): a [`SqliteTx`] / [`PgTx`]
//!   writes the service's own rows, events and outgoing messages together.
//! - [`sql`]: portable SQL for the service's own tables, so one service's
//!   code runs on both backends.
//! - [`migrations`]: each backend's schema as embedded, versioned migrations,
//!   applied when a store opens.
//!
//! Both implement [`polis_core::EventStore`] and pass the same contract suite
//! (`tests/contract.rs`).

#![warn(missing_docs)]

mod lease;
pub mod migrations;
pub mod postgres;
pub mod sql;
pub mod sqlite;

pub use postgres::{PgEventStore, PgOptions, PgTx};
pub use sqlite::{Durability, SqliteEventStore, SqliteOptions, SqliteTx};

use polis_core::StoreError;

/// Wraps a driver error as an infrastructure failure.
pub(crate) fn backend(e: impl Into<polis_core::error::BoxError>) -> StoreError {
    StoreError::Backend(e.into())
}
