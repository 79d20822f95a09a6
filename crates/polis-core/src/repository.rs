//! Command execution for event-sourced aggregates.
//!
//! [`Repository::execute`] loads an aggregate (latest usable snapshot plus the
//! events after it, upcasted), lets it decide, and appends the decided events
//! with the loaded version as the expected version. If another writer got
//! there first it reloads and decides again, a bounded number of times: the
//! aggregate's rules are always checked against the state they will follow.

use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::envelope::{Metadata, NewEvent, RecordedEvent};
use crate::error::{CommandError, DecodeError, StoreError};
use crate::outbox::Transaction;
use crate::store::{AppendResult, EventStore, ExpectedVersion, Snapshot};
use crate::upcast::Upcasters;

/// How many events are read per round trip while loading a stream.
const LOAD_BATCH: usize = 512;

/// When to take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// No snapshots: every load replays the whole stream, and none is looked up.
    Never,
    /// After an append that reaches or crosses a multiple of N events.
    EveryNEvents(u64),
}

/// An aggregate's state at a stream version.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The aggregate after folding its events (`A::default()` for a new one).
    pub state: A,
    /// Number of events folded into `state` (0 = the aggregate does not exist).
    pub version: u64,
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// State after the new events.
    pub state: A,
    /// The events the command produced (possibly none).
    pub events: Vec<A::Event>,
    /// Stream version after the command.
    pub version: u64,
    /// `None` when the command produced no events (nothing was appended).
    pub append: Option<AppendResult>,
    /// Attempts used (1 unless a concurrency conflict forced a retry).
    pub attempts: u32,
}

/// Loads and executes commands against aggregates of type `A` stored in `S`.
#[derive(Debug)]
pub struct Repository<A, S: ?Sized> {
    store: Arc<S>,
    upcasters: Upcasters,
    snapshots: SnapshotPolicy,
    max_attempts: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A, S: ?Sized> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            upcasters: self.upcasters.clone(),
            snapshots: self.snapshots,
            max_attempts: self.max_attempts,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore + ?Sized> Repository<A, S> {
    /// A repository over `store`: no upcasters, no snapshots, up to 5 attempts
    /// per command.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            upcasters: Upcasters::new(),
            snapshots: SnapshotPolicy::Never,
            max_attempts: 5,
            _aggregate: PhantomData,
        }
    }

    /// Upcasts every event read (loads, [`Repository::decode`]) through `upcasters`
    /// before decoding it.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Takes snapshots after appends as `policy` says, and starts loads from
    /// the latest usable one (same [`Aggregate::SNAPSHOT_VERSION`], not past
    /// the version asked for; never for [`Repository::load_as_of`]). A
    /// snapshot is a cache: one that fails to save or to decode is logged and
    /// the stream is replayed instead.
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    /// Attempts per command before a concurrency conflict is reported (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The event store this repository reads and appends to.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Executes `command` on aggregate `id`, retrying on concurrency conflicts.
    ///
    /// Loads the aggregate, lets it decide, and appends the events tagged
    /// with `metadata`, expecting the version it loaded; if another writer
    /// appended first it reloads and decides again, up to the configured
    /// number of attempts. A command that decides no events appends nothing.
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] with the aggregate's error,
    /// [`CommandError::Conflict`] once every attempt lost its race,
    /// [`CommandError::Decode`] for a stored event that no longer decodes,
    /// [`CommandError::Store`] for a store failure (or an event that cannot
    /// be serialized, as [`StoreError::InvalidRequest`]).
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let stream = A::stream_id(id);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let loaded = self.load_stream(&stream, u64::MAX, None).await?;
            let events = loaded.state.handle(command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed { state: loaded.state, events, version: loaded.version, append: None, attempts });
            }
            let new_events =
                events.iter().map(|e| encode(e, &metadata)).collect::<Result<Vec<_>, _>>().map_err(|e| {
                    CommandError::Store(StoreError::InvalidRequest(format!("cannot encode event: {e}")))
                })?;
            match self.store.append(&stream, ExpectedVersion::from_loaded(loaded.version), new_events).await {
                Ok(append) => {
                    let state = events.iter().fold(loaded.state, |s, e| s.apply(e));
                    self.maybe_snapshot(&stream, loaded.version, append.stream_version, &state).await;
                    return Ok(Executed {
                        state,
                        events,
                        version: append.stream_version,
                        append: Some(append),
                        attempts,
                    });
                }
                Err(e) if e.is_conflict() && attempts < self.max_attempts => {
                    let pause = conflict_backoff(attempts);
                    tracing::debug!(stream = %stream, attempts, ?pause, "concurrency conflict, retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(e) if e.is_conflict() => return Err(CommandError::Conflict { stream, attempts }),
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// Executes `command` on aggregate `id` inside `tx`: reads the stream as
    /// the transaction sees it, decides, and appends with the expected
    /// version, so the events commit (or not) with everything else `tx` does.
    /// Returns the appended envelopes too, e.g. to send them as messages
    /// through the outbox in the same transaction. A concurrency conflict is
    /// returned, not retried: the transaction's other work depends on the
    /// state it read, so the caller retries the whole transaction.
    pub async fn execute_in<Tx: Transaction + ?Sized>(
        &self,
        tx: &mut Tx,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<(Executed<A>, Vec<NewEvent>), CommandError<A::Error>> {
        let stream = A::stream_id(id);
        let loaded = self.load_in(tx, id).await?;
        let events = loaded.state.handle(command).map_err(CommandError::Rejected)?;
        if events.is_empty() {
            let executed = Executed { state: loaded.state, events, version: loaded.version, append: None, attempts: 1 };
            return Ok((executed, Vec::new()));
        }
        let new_events = events
            .iter()
            .map(|e| encode(e, metadata))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommandError::Store(StoreError::InvalidRequest(format!("cannot encode event: {e}"))))?;
        let append = tx
            .append(&stream, ExpectedVersion::from_loaded(loaded.version), &new_events)
            .await
            .map_err(CommandError::Store)?;
        let state = events.iter().fold(loaded.state, |s, e| s.apply(e));
        let executed = Executed { state, events, version: append.stream_version, append: Some(append), attempts: 1 };
        Ok((executed, new_events))
    }

    /// The current state of aggregate `id` as `tx` sees it (no snapshots:
    /// they are written outside transactions and could be ahead of `tx`).
    pub async fn load_in<Tx: Transaction + ?Sized>(
        &self,
        tx: &mut Tx,
        id: &str,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = A::stream_id(id);
        let mut loaded = Loaded { state: A::default(), version: 0 };
        loop {
            let batch = tx.read_stream(&stream, loaded.version + 1, LOAD_BATCH).await.map_err(CommandError::Store)?;
            let done = batch.len() < LOAD_BATCH;
            for recorded in &batch {
                let event = self.decode(recorded)?;
                loaded.state = loaded.state.apply(&event);
                loaded.version = recorded.stream_version;
            }
            if done {
                return Ok(loaded);
            }
        }
    }

    /// The current state of aggregate `id`.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&A::stream_id(id), u64::MAX, None).await
    }

    /// The state of aggregate `id` after its first `version` events.
    pub async fn load_at_version(&self, id: &str, version: u64) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&A::stream_id(id), version, None).await
    }

    /// The state of aggregate `id` as it was at `time` (events with `time <= at`).
    pub async fn load_as_of(&self, id: &str, at: DateTime<Utc>) -> Result<Loaded<A>, CommandError<A::Error>> {
        self.load_stream(&A::stream_id(id), u64::MAX, Some(at)).await
    }

    /// Decodes a recorded event of this aggregate (upcasting it first).
    pub fn decode(&self, event: &RecordedEvent) -> Result<A::Event, DecodeError> {
        decode::<A::Event>(&self.upcasters, event)
    }

    async fn load_stream(
        &self,
        stream: &str,
        up_to_version: u64,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded { state: A::default(), version: 0 };
        // With snapshots off there is nothing to look up: save the round trip.
        let snapshot = match self.snapshots {
            SnapshotPolicy::Never => None,
            SnapshotPolicy::EveryNEvents(_) => self.store.load_snapshot(stream).await.map_err(CommandError::Store)?,
        };
        if let Some(snapshot) = snapshot {
            // As-of-time loads replay from the start: a snapshot's `taken_at` is a
            // wall clock, not the time of the events folded into it.
            let usable =
                snapshot.schema_version == A::SNAPSHOT_VERSION && snapshot.version <= up_to_version && as_of.is_none();
            if usable {
                match serde_json::from_value::<A>(snapshot.state) {
                    Ok(state) => loaded = Loaded { state, version: snapshot.version },
                    // A snapshot is only a cache: if it no longer decodes, rebuild from events.
                    Err(e) => tracing::warn!(stream, error = %e, "ignoring undecodable snapshot"),
                }
            }
        }
        'read: while loaded.version < up_to_version {
            let batch =
                self.store.read_stream(stream, loaded.version + 1, LOAD_BATCH).await.map_err(CommandError::Store)?;
            let done = batch.len() < LOAD_BATCH;
            for recorded in &batch {
                if recorded.stream_version > up_to_version || as_of.is_some_and(|at| recorded.time > at) {
                    break 'read;
                }
                let event = self.decode(recorded)?;
                loaded.state = loaded.state.apply(&event);
                loaded.version = recorded.stream_version;
            }
            if done {
                break;
            }
        }
        Ok(loaded)
    }

    async fn maybe_snapshot(&self, stream: &str, before: u64, after: u64, state: &A) {
        let SnapshotPolicy::EveryNEvents(n) = self.snapshots else { return };
        if n == 0 || before / n == after / n {
            return;
        }
        let state = match serde_json::to_value(state) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(stream, error = %e, "cannot serialize aggregate state for a snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream.to_owned(),
            version: after,
            schema_version: A::SNAPSHOT_VERSION,
            state,
            taken_at: chrono::Utc::now(),
        };
        // The events are committed; a failed snapshot only costs a longer load later.
        if let Err(e) = self.store.save_snapshot(&snapshot).await {
            tracing::warn!(stream, error = %e, "failed to save snapshot");
        }
    }
}

/// Turns a domain event into an envelope ready to append.
pub fn encode<E: DomainEvent>(event: &E, metadata: &Metadata) -> Result<NewEvent, serde_json::Error> {
    Ok(NewEvent::new(event.event_type(), event.to_data()?)
        .with_schema_version(event.schema_version())
        .with_metadata(metadata.clone()))
}

/// Upcasts and decodes a recorded event into a domain event.
pub fn decode<E: DomainEvent>(upcasters: &Upcasters, event: &RecordedEvent) -> Result<E, DecodeError> {
    let fail = |reason: String| DecodeError {
        event_id: event.id,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        reason,
    };
    let (_, data) = upcasters.upcast(&event.event_type, event.schema_version, event.data.clone()).map_err(fail)?;
    E::from_data(&event.event_type, data).map_err(|e| fail(e.to_string()))
}

/// The pause before retrying a command that lost a concurrency conflict for
/// the `attempt`-th time: a random time in the upper half of a window that
/// doubles from 1 ms up to 64 ms. Writers that collided then spread out
/// instead of colliding again in lockstep, which otherwise exhausts the
/// attempts of every writer of a hot stream (200 concurrent commands on one
/// stream did, with 64 attempts each).
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    const FIRST_WINDOW_US: u64 = 1_000;
    const DOUBLINGS: u32 = 6;
    let window = FIRST_WINDOW_US << attempt.saturating_sub(1).min(DOUBLINGS);
    // A UUIDv7's low 62 bits are random (the thread-local generator behind ids).
    let random = uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 62) - 1);
    std::time::Duration::from_micros(window / 2 + random % (window / 2 + 1))
}

#[cfg(test)]
mod backoff_tests {
    use super::conflict_backoff;

    #[test]
    fn conflict_backoff_doubles_from_half_a_millisecond_and_stays_bounded() {
        for _ in 0..100 {
            let first = conflict_backoff(1).as_micros();
            assert!((500..=1_000).contains(&first), "{first}");
            let later = conflict_backoff(40).as_micros();
            assert!((32_000..=64_000).contains(&later), "{later}");
        }
    }
}
