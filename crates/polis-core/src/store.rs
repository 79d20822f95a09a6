//! The event store contract.
//!
//! One trait, implemented by the SQLite (embedded) and PostgreSQL
//! (distributed) backends in `polis-store` and checked by one contract test
//! suite against both. The semantics every backend keeps:
//!
//! - an append is atomic: all of its events are stored or none is;
//! - stream versions are contiguous, starting at 1;
//! - global positions strictly increase in the order [`EventStore::read_all`]
//!   returns them, and a reader that advances its checkpoint past what
//!   `read_all` returned never misses an event that commits later
//!   (positions may have gaps where a transaction rolled back);
//! - `read_all` sees every append that completed before it was called.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::StoreError;

/// The version a writer expects the stream to be at before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version (no concurrency check).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version (`Exact(0)` = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// `NoStream` for version 0, `Exact(v)` otherwise: what a writer that
    /// loaded the stream at `version` expects.
    pub fn from_loaded(version: u64) -> Self {
        if version == 0 { Self::NoStream } else { Self::Exact(version) }
    }

    /// `Exact(0)` spelled as `NoStream`, so backends handle one form.
    pub fn normalized(self) -> Self {
        if self == Self::Exact(0) { Self::NoStream } else { self }
    }

    /// Whether a stream currently at `actual` (0 = absent) satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(v) => v == actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (the last event's version).
    pub stream_version: u64,
    /// Global position of the first appended event.
    pub first_position: u64,
    /// Global position of the last appended event.
    pub last_position: u64,
}

/// What the store knows about a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// Current version (number of events); a stream exists once it has one event.
    pub version: u64,
}

/// A serialized aggregate state at a stream version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream whose state this is.
    pub stream_id: String,
    /// Stream version the state reflects (all events up to and including it).
    pub version: u64,
    /// Version of the state's schema; a mismatch makes loading ignore the snapshot.
    pub schema_version: u16,
    /// The aggregate's state, serialized as JSON.
    pub state: serde_json::Value,
    /// When the snapshot was taken (wall clock; not the time of its last event).
    pub taken_at: DateTime<Utc>,
}

/// The event store contract.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The CloudEvents `source` stamped on this store's events (the service name).
    fn source(&self) -> &str;

    /// Appends `events` atomically to `stream` if its version satisfies `expected`.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Up to `max` events of `stream` with `stream_version >= from_version`, in version order.
    async fn read_stream(&self, stream: &str, from_version: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `max` events with `global_position > after`, in position order.
    ///
    /// A reader that feeds the last returned position back as `after` sees
    /// every committed event exactly once (see the module docs).
    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's version, or `None` if it does not exist.
    async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>, StoreError>;

    /// The highest global position handed out so far (0 if none).
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// A receiver that changes whenever new events may be available: a
    /// wake-up hint for catch-up readers, never the events themselves.
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Stores `snapshot`, replacing an older one of the same stream.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

/// Whether any string (or key) in `value` contains a NUL character, which
/// PostgreSQL cannot store.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// Rejects requests that no backend should store.
pub fn validate_append(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    if stream.is_empty() {
        return Err(StoreError::InvalidRequest("stream id is empty".into()));
    }
    if events.is_empty() {
        return Err(StoreError::InvalidRequest("append needs at least one event".into()));
    }
    if let Some(e) = events.iter().find(|e| e.event_type.is_empty()) {
        return Err(StoreError::InvalidRequest(format!("event {} has an empty type", e.id)));
    }
    // PostgreSQL cannot store NUL in text or JSON; refuse it on every backend
    // so both behave the same and the caller gets a clear reason.
    if stream.contains('\0') {
        return Err(StoreError::InvalidRequest("stream id contains a NUL character".into()));
    }
    for e in events {
        let nul_in_text =
            e.event_type.contains('\0') || e.metadata.traceparent.as_deref().is_some_and(|t| t.contains('\0'));
        if nul_in_text || json_has_nul(&e.data) {
            return Err(StoreError::InvalidRequest(format!("event {} contains a NUL character", e.id)));
        }
    }
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(StoreError::InvalidRequest(format!("event id {} appears twice in one append", pair[0])));
    }
    Ok(())
}
