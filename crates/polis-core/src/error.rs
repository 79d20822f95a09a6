//! Typed errors.
//!
//! Three kinds of failure must never be confused: a *domain rejection* (the
//! command is invalid for the current state — tell the caller), a
//! *concurrency conflict* (someone else wrote first — reload and retry) and an
//! *infrastructure failure* (the database is down — back off, alert).

use crate::store::ExpectedVersion;

/// Boxed infrastructure error from a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from an [`EventStore`](crate::EventStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version did not match the expected version.
    #[error("concurrency conflict on stream {stream}: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the append expected the stream to be.
        expected: ExpectedVersion,
        /// The stream's version when the conflict was detected (0 = no stream).
        actual: u64,
    },
    /// An event with this id is already stored.
    #[error("duplicate event id {0}")]
    DuplicateEventId(uuid::Uuid),
    /// A row of the service's own tables with this unique key already exists
    /// (the constraint or message names which).
    #[error("unique constraint violated: {0}")]
    Unique(String),
    /// The request itself is invalid (empty stream id, no events, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A stored row could not be turned back into an envelope.
    #[error("corrupt stored event at position {position}: {reason}")]
    Corrupt {
        /// The event's global position (for an outbox row, its outbox position).
        position: u64,
        /// What could not be read, e.g. invalid JSON or an unknown kind.
        reason: String,
    },
    /// The backend failed (connection lost, disk full, ...).
    #[error("event store backend failure")]
    Backend(#[source] BoxError),
    /// The database file failed its integrity check at open: it is
    /// damaged (truncated, overwritten) and is not used.
    #[error("{file} is damaged ({detail}); restore it from a backup, or move it away to start that service empty")]
    Damaged {
        /// The database file.
        file: String,
        /// What the check reported.
        detail: String,
    },
}

impl StoreError {
    /// Wraps a driver error as [`StoreError::Backend`]: an infrastructure
    /// failure, worth retrying later.
    pub fn backend(err: impl Into<BoxError>) -> Self {
        Self::Backend(err.into())
    }

    /// Whether this is a [`StoreError::Conflict`]: reload and retry, the store is healthy.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// An event could not be decoded into the aggregate's event type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event {event_id} of type {event_type} v{schema_version}: {reason}")]
pub struct DecodeError {
    /// The id of the event (or snapshot) that could not be decoded.
    pub event_id: uuid::Uuid,
    /// Its envelope `type`.
    pub event_type: String,
    /// Its schema version as stored, before upcasting.
    pub schema_version: u16,
    /// serde's message, or the upcaster that failed.
    pub reason: String,
}

/// Errors from executing a command against an aggregate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate rejected the command: a business outcome, not a fault.
    #[error("command rejected")]
    Rejected(#[source] E),
    /// Every attempt lost a race with a concurrent writer.
    #[error("concurrency conflict on stream {stream} after {attempts} attempts")]
    Conflict {
        /// The aggregate's stream.
        stream: String,
        /// How many times the command was tried (load, decide, append).
        attempts: u32,
    },
    /// A stored event (or snapshot) could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The event store failed.
    #[error("event store failure")]
    Store(#[source] StoreError),
}

impl<E> CommandError<E> {
    /// The domain rejection, if that is what this is.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

/// Formats an error with its whole cause chain: `err: its source: its
/// source's source ...`. Logs use it so that the root reason (the OS error,
/// the server's message) is never lost behind a generic one such as "bus
/// backend failure": `tracing::warn!(error = %chain(&err), "...")`.
pub fn chain<'a>(err: &'a (dyn std::error::Error + 'a)) -> Chain<'a> {
    Chain(err)
}

/// An error and its causes, displayed on one line; see [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(source) = next {
            write!(f, ": {source}")?;
            next = source.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn a_chain_shows_every_cause_in_order() {
        let root = std::io::Error::other("connection refused");
        let err = crate::BusError::backend(root);
        assert_eq!(chain(&err).to_string(), "bus backend failure: connection refused");
        let plain = std::io::Error::other("plain");
        assert_eq!(chain(&plain).to_string(), "plain");
    }
}
