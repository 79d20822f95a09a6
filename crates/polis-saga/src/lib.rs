//! polis-saga: orchestrated sagas.
//!
//! A saga coordinates a business transaction across services without a
//! distributed transaction: it sends commands, waits for their replies, and
//! when a step fails (or its reply does not come before a deadline) it sends
//! the compensations of the steps already done.
//!
//! The split follows the house style's "pure core, IO at the edges":
//!
//! - a [`Saga`] is a pure state machine: given its state and a reply (or its
//!   deadline passing) it returns a [`Step`] — the commands to send, the new
//!   deadline, and effects for the owning service to apply to its own data.
//!   It is tested without any database (see [`testing`]);
//! - [`Sagas`] persists instances in the service's own database
//!   (`polis_sagas`) *inside the transaction that handles the reply*, so the
//!   new state, the commands (written to the outbox), the deadline (a
//!   scheduled message, see `Transaction::schedule`) and the inbox record of
//!   the reply all commit together or not at all;
//! - a deadline is a scheduled command the service sends itself
//!   ([`DEADLINE_TYPE`], keyed by [`deadline_key`], never by the saga id, so
//!   a dead letter of the saga's key cannot park it); it survives restarts
//!   like any scheduled message.
//!   Setting a new deadline unschedules the old one, and a deadline that
//!   fires after its instance moved on is recognized as stale and ignored;
//! - [`listing`] reads instances back for operators: a page of them by
//!   state, finished or not, and the counts in flight by type and state,
//!   outside any transaction.

#![warn(missing_docs)]

pub mod listing;
pub mod testing;

pub use listing::{InFlight, SagaFilter, SagaKey, SagaSummary, in_flight, list};

use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use polis_core::{Message, StoreError, Transaction};
use polis_store::args;
use polis_store::sql::Sql;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The message type of every saga deadline.
pub const DEADLINE_TYPE: &str = "polis.saga-deadline.v1";

/// A saga's pure state machine.
pub trait Saga: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Names the saga in storage and in deadline messages, e.g. `create-order`:
    /// letters, digits, `-`, `_` and `.` ([`is_type_name`]), as it also
    /// appears in listings' cursors (`<type>:<id>`).
    const TYPE: &'static str;

    /// What the saga asks its own service to do to its data (approve an
    /// order, reject it, ...), applied in the same transaction.
    type Effect: Send;

    /// Reacts to a reply addressed to this instance (replies it does not
    /// expect — late, duplicated, or for an earlier step — must be ignored
    /// with an empty step, never an error).
    fn on_reply(&mut self, reply: &Message, now: DateTime<Utc>) -> Step<Self::Effect>;

    /// Reacts to the instance's current deadline passing.
    fn on_deadline(&mut self, now: DateTime<Utc>) -> Step<Self::Effect>;

    /// Whether the saga has nothing left to wait for.
    fn is_finished(&self) -> bool;

    /// The name of the instance's current state, stored with it so that
    /// operators (and metrics) can count and list sagas by state without
    /// decoding any: a phase such as `reserving` or `compensating`. By
    /// default `running`, or `finished` once [`is_finished`](Saga::is_finished).
    ///
    /// Names come from a small fixed set (they label metrics), in
    /// snake_case: 1 to 64 of `a-z`, `A-Z`, `0-9`, `_`, `-` and `.`
    /// ([`is_state_name`]).
    fn state_name(&self) -> &'static str {
        if self.is_finished() { "finished" } else { "running" }
    }
}

/// What to change about an instance's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deadline {
    /// Leave the current deadline (or its absence) as it is.
    #[default]
    Keep,
    /// Replace it: fire at this time.
    At(DateTime<Utc>),
    /// Remove it.
    Clear,
}

/// The outcome of one saga transition.
#[derive(Debug)]
pub struct Step<E> {
    /// Commands to send (through the outbox).
    pub send: Vec<Message>,
    /// What becomes of the instance's deadline.
    pub deadline: Deadline,
    /// Changes for the owning service to make to its own data, in order, in
    /// the same transaction.
    pub effects: Vec<E>,
}

impl<E> Default for Step<E> {
    fn default() -> Self {
        Self { send: Vec::new(), deadline: Deadline::Keep, effects: Vec::new() }
    }
}

impl<E> Step<E> {
    /// Nothing to do: the message was not for this state.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Adds a command to send (after those already added).
    pub fn send(mut self, message: Message) -> Self {
        self.send.push(message);
        self
    }

    /// Sets what becomes of the deadline (the last call wins).
    pub fn deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = deadline;
        self
    }

    /// Adds an effect for the owning service (after those already added).
    pub fn effect(mut self, effect: E) -> Self {
        self.effects.push(effect);
        self
    }

    /// Whether the step sends nothing, keeps the deadline and has no effects.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.deadline == Deadline::Keep && self.effects.is_empty()
    }
}

/// A saga instance as stored.
#[derive(Debug, Clone)]
pub struct Instance<S> {
    /// The instance's id within its saga type (the shop uses the order id);
    /// also the key of the replies it receives.
    pub id: String,
    /// The saga's state machine.
    pub state: S,
    /// Optimistic-concurrency version: 0 until first saved, then +1 per save.
    pub version: i64,
    /// The scheduled message that fires the current deadline, and when.
    pub deadline: Option<(Uuid, DateTime<Utc>)>,
}

/// Whether `name` can be a [`Saga::TYPE`]: 1 to 64 of `a-z`, `A-Z`, `0-9`,
/// `-`, `_` and `.`.
pub fn is_type_name(name: &str) -> bool {
    is_state_name(name)
}

/// What a state name must be, as a refusal says it.
pub const STATE_NAME_FORM: &str = "must be 1 to 64 of A-Z, a-z, 0-9, '_', '-' and '.'";

/// Whether `name` can be a [`Saga::state_name`] (see [`STATE_NAME_FORM`]).
pub fn is_state_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The ordering key of an instance's deadlines: apart from the key of the
/// saga's other messages (its id), so that a dead letter parked on that key —
/// an unreadable reply, say — cannot hold back the deadline that bounds it.
pub fn deadline_key(saga_type: &str, saga_id: &str) -> String {
    format!("deadline:{saga_type}:{saga_id}")
}

/// The body of a deadline message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineNotice {
    /// The [`Saga::TYPE`] of the instance the deadline is for.
    pub saga_type: String,
    /// The instance's id.
    pub saga_id: String,
}

/// Errors of the saga runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// Another transaction changed the instance first; retry with fresh state.
    #[error("saga {saga_type}/{saga_id} was changed concurrently")]
    Conflict {
        /// The saga's [`Saga::TYPE`].
        saga_type: &'static str,
        /// The instance's id.
        saga_id: String,
    },
    /// A new instance (from [`Sagas::begin`]) was saved under an id that is
    /// already taken: the saga was started before (a redelivered request, say).
    #[error("saga {saga_type}/{saga_id} already exists")]
    AlreadyStarted {
        /// The saga's [`Saga::TYPE`].
        saga_type: &'static str,
        /// The instance's id.
        saga_id: String,
    },
    /// The stored state no longer deserializes into the saga's type (or the
    /// state, or its deadline, cannot be serialized): a bug or an
    /// incompatible change of the state's shape, not something a retry fixes.
    #[error("saga state of {saga_type}/{saga_id} cannot be (de)serialized: {reason}")]
    Corrupt {
        /// The saga's [`Saga::TYPE`].
        saga_type: &'static str,
        /// The instance's id.
        saga_id: String,
        /// serde's message, or the stored value that is invalid.
        reason: String,
    },
    /// The store failed while loading or saving the instance, sending its
    /// commands or scheduling its deadline.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads and saves instances of saga `S` for the service `service`, inside
/// the service's transactions.
#[derive(Debug)]
pub struct Sagas<S> {
    service: String,
    /// The statement [`Sagas::lock_with`] runs with each load, if any.
    lock: Option<Arc<str>>,
    _saga: PhantomData<fn() -> S>,
}

impl<S> Clone for Sagas<S> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), lock: self.lock.clone(), _saga: PhantomData }
    }
}

impl<S: Saga> Sagas<S> {
    /// `service` is the owning service: deadlines are commands it sends itself.
    pub fn new(service: impl Into<String>) -> Self {
        debug_assert!(is_type_name(S::TYPE), "saga type {:?} is not a valid type name", S::TYPE);
        Self { service: service.into(), lock: None, _saga: PhantomData }
    }

    /// Takes the instance's lock in the statement that loads it, one round
    /// trip instead of two: `lock` is a data-modifying statement
    /// (PostgreSQL: it runs as a `WITH` query of the load, so SQLite, which
    /// has no such queries and needs no locks, must not be given one) with
    /// the instance id as `$1`, typically an `UPDATE` of the row every
    /// transaction about the instance locks first.
    ///
    /// The load reads the snapshot its statement started with. If the lock
    /// was held by another transaction that changed the instance and
    /// committed while this one waited, the state read is the one before
    /// that change: [`save`](Self::save) then fails with
    /// [`SagaError::Conflict`] (retry), and a step that writes nothing (a
    /// late reply) is what the transaction would have done had it taken the
    /// lock first.
    #[must_use]
    pub fn lock_with(mut self, lock: impl Into<String>) -> Self {
        self.lock = Some(lock.into().into());
        self
    }

    /// A new instance of `state` under `id`, not stored yet (version 0, no
    /// deadline): [`save`](Self::save) inserts it, or fails with
    /// [`SagaError::AlreadyStarted`] if `id` is taken.
    pub fn begin(&self, id: impl Into<String>, state: S) -> Instance<S> {
        Instance { id: id.into(), state, version: 0, deadline: None }
    }

    /// The instance `id`, if it exists, as `tx` sees it (having taken the
    /// lock of [`lock_with`](Self::lock_with) first, if there is one).
    ///
    /// # Errors
    ///
    /// [`SagaError::Corrupt`] if its stored state or deadline cannot be read,
    /// [`SagaError::Store`] if the query fails.
    pub async fn load<Tx: Transaction + Sql>(&self, tx: &mut Tx, id: &str) -> Result<Option<Instance<S>>, SagaError> {
        let row = match &self.lock {
            None => {
                let sql = "SELECT state, version, deadline_id, deadline_at_us FROM polis_sagas \
                           WHERE saga_type = $1 AND saga_id = $2";
                tx.fetch_optional(sql, args![S::TYPE, id]).await?
            }
            Some(lock) => {
                let sql = format!(
                    "WITH polis_lock AS ({lock}) SELECT state, version, deadline_id, deadline_at_us \
                     FROM polis_sagas WHERE saga_id = $1 AND saga_type = $2"
                );
                tx.fetch_optional(&sql, args![id, S::TYPE]).await?
            }
        };
        let Some(row) = row else { return Ok(None) };
        let corrupt = |reason: String| SagaError::Corrupt { saga_type: S::TYPE, saga_id: id.to_owned(), reason };
        let state: S = serde_json::from_str(&row.text("state")?).map_err(|e| corrupt(e.to_string()))?;
        let deadline = match (row.opt_text("deadline_id")?, row.opt_int("deadline_at_us")?) {
            (Some(message_id), Some(at)) => {
                let message_id = Uuid::parse_str(&message_id).map_err(|e| corrupt(e.to_string()))?;
                let at = DateTime::from_timestamp_micros(at).ok_or_else(|| corrupt(format!("bad deadline {at}")))?;
                Some((message_id, at))
            }
            _ => None,
        };
        Ok(Some(Instance { id: id.to_owned(), state, version: row.int("version")?, deadline }))
    }

    /// Carries out `step` for `instance` and saves its state, in `tx`:
    /// sends the step's commands, replaces or clears the deadline, and writes
    /// the instance with an optimistic version check. The caller applies the
    /// step's effects in the same transaction.
    ///
    /// # Errors
    ///
    /// [`SagaError::AlreadyStarted`] for a new instance whose id is taken,
    /// [`SagaError::Conflict`] if the stored version is no longer
    /// `instance.version` (roll back and retry the transaction), and
    /// [`SagaError::Corrupt`] / [`SagaError::Store`]. On error, `tx` must be
    /// rolled back: commands may already be in its outbox.
    pub async fn save<Tx: Transaction + Sql, E>(
        &self,
        tx: &mut Tx,
        instance: &mut Instance<S>,
        step: &Step<E>,
    ) -> Result<(), SagaError> {
        for message in &step.send {
            tx.send(message).await?;
        }
        match step.deadline {
            Deadline::Keep => {}
            Deadline::Clear => {
                if let Some((old, _)) = instance.deadline.take() {
                    tx.unschedule(old).await?;
                }
            }
            Deadline::At(at) => {
                let notice = DeadlineNotice { saga_type: S::TYPE.to_owned(), saga_id: instance.id.clone() };
                let data = serde_json::to_value(&notice).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
                let key = deadline_key(S::TYPE, &instance.id);
                let message = Message::command(&self.service, &self.service, DEADLINE_TYPE, &key, data);
                match instance.deadline.take() {
                    Some((old, _)) => {
                        tx.reschedule(old, &message, at).await?;
                    }
                    None => tx.schedule(&message, at).await?,
                }
                instance.deadline = Some((message.id, at));
            }
        }
        let state = serde_json::to_string(&instance.state).map_err(|e| SagaError::Corrupt {
            saga_type: S::TYPE,
            saga_id: instance.id.clone(),
            reason: e.to_string(),
        })?;
        let now = Utc::now().timestamp_micros();
        let (deadline_id, deadline_at) = match instance.deadline {
            Some((id, at)) => (Some(id), Some(at.timestamp_micros())),
            None => (None, None),
        };
        let finished = instance.state.is_finished();
        let state_name = instance.state.state_name();
        debug_assert!(is_state_name(state_name), "saga state name {state_name:?} is not a valid state name");
        if instance.version == 0 {
            let inserted = tx
                .execute(
                    "INSERT INTO polis_sagas (saga_type, saga_id, state, finished, deadline_id, deadline_at_us, \
                     version, created_at_us, updated_at_us, state_name) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7, $8) \
                     ON CONFLICT (saga_type, saga_id) DO NOTHING",
                    args![S::TYPE, instance.id.as_str(), state, finished, deadline_id, deadline_at, now, state_name],
                )
                .await?;
            if inserted == 0 {
                return Err(SagaError::AlreadyStarted { saga_type: S::TYPE, saga_id: instance.id.clone() });
            }
        } else {
            let updated = tx
                .execute(
                    "UPDATE polis_sagas SET state = $1, finished = $2, deadline_id = $3, deadline_at_us = $4, \
                     version = version + 1, updated_at_us = $5, state_name = $9 \
                     WHERE saga_type = $6 AND saga_id = $7 AND version = $8",
                    args![
                        state,
                        finished,
                        deadline_id,
                        deadline_at,
                        now,
                        S::TYPE,
                        instance.id.as_str(),
                        instance.version,
                        state_name
                    ],
                )
                .await?;
            if updated == 0 {
                return Err(SagaError::Conflict { saga_type: S::TYPE, saga_id: instance.id.clone() });
            }
        }
        instance.version += 1;
        Ok(())
    }

    /// If `message` is a deadline of this saga type, the instance it is for.
    pub fn deadline_target(&self, message: &Message) -> Option<String> {
        if message.message_type != DEADLINE_TYPE {
            return None;
        }
        let notice: DeadlineNotice = serde_json::from_value(message.data.clone()).ok()?;
        (notice.saga_type == S::TYPE).then_some(notice.saga_id)
    }

    /// Handles a deadline message: loads its instance and, if the deadline is
    /// still the instance's current one, runs `on_deadline` and saves. Returns
    /// the step's effects for the caller to apply (none for a stale deadline).
    pub async fn fire_deadline<Tx: Transaction + Sql>(
        &self,
        tx: &mut Tx,
        message: &Message,
        now: DateTime<Utc>,
    ) -> Result<Vec<S::Effect>, SagaError> {
        let Some(id) = self.deadline_target(message) else { return Ok(Vec::new()) };
        let Some(mut instance) = self.load(tx, &id).await? else { return Ok(Vec::new()) };
        if instance.deadline.map(|(current, _)| current) != Some(message.id) {
            return Ok(Vec::new());
        }
        // This deadline has fired: it is no longer pending.
        instance.deadline = None;
        let step = instance.state.on_deadline(now);
        self.save(tx, &mut instance, &step).await?;
        Ok(step.effects)
    }

    /// Handles a reply for instance `id` (its key); unknown instances are
    /// ignored. Returns the step's effects for the caller to apply.
    pub async fn on_reply<Tx: Transaction + Sql>(
        &self,
        tx: &mut Tx,
        id: &str,
        reply: &Message,
        now: DateTime<Utc>,
    ) -> Result<Vec<S::Effect>, SagaError> {
        let Some(mut instance) = self.load(tx, id).await? else { return Ok(Vec::new()) };
        let before = serde_json::to_value(&instance.state).ok();
        let step = instance.state.on_reply(reply, now);
        // A late or duplicated reply changes nothing: don't write, so it
        // can't conflict with a deadline or a request handled meanwhile.
        if step.is_empty() && before.is_some() && serde_json::to_value(&instance.state).ok() == before {
            return Ok(Vec::new());
        }
        self.save(tx, &mut instance, &step).await?;
        Ok(step.effects)
    }
}
