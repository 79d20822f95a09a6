//! Transactions, the transactional outbox, the inbox and dead letters.
//!
//! A service changes its data, appends events and writes outgoing messages in
//! one local [`Transaction`]; the messages land in its outbox table and a relay
//! publishes them afterwards. A consumer records each message id in its inbox
//! in the same transaction as the message's effects, so redeliveries are
//! recognized and skipped. Messages that cannot be handled end in the
//! consumer's dead letters with the reason, where they can be listed,
//! replayed or discarded.
//!
//! A transaction can also *schedule* a message for later (a durable
//! deadline): it waits in the store's schedule, survives restarts, can be
//! unscheduled until it is due, and is then moved into the outbox by
//! [`TransactionalStore::release_due`] (which polis-bus's `Scheduler` calls),
//! from where it travels like any sent message.

use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::NewEvent;
use crate::error::StoreError;
use crate::message::Message;
use crate::store::{AppendResult, ExpectedVersion};

/// What [`Transaction::begin_handling`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handling {
    /// The message was not in the inbox; it is recorded now.
    pub first: bool,
    /// The consumer has a dead letter with the message's key (asked only
    /// for a first delivery).
    pub blocked: bool,
}

/// One unit of work on a service's own database.
///
/// Backends add access to the raw connection for the service's own tables.
#[async_trait]
pub trait Transaction: Send {
    /// Appends events to a stream of the service's event store.
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError>;

    /// Reads up to `max` events of `stream` from version `from_version` on, as
    /// this transaction sees them (its own appends included): the read half of
    /// a read-decide-append inside one transaction.
    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<crate::envelope::RecordedEvent>, StoreError>;

    /// Writes `message` to the outbox; it is published after the commit.
    /// The write may wait until the commit ([`flush`](Self::flush)).
    async fn send(&mut self, message: &Message) -> Result<(), StoreError>;

    /// Writes what [`send`](Self::send) accepted so far to the outbox. A
    /// backend may keep sent messages until the commit and write them all
    /// in one statement (PostgreSQL does); it writes them at the latest
    /// just before committing, and an error there (an id already in the
    /// outbox) fails the transaction. After a flush the messages' keys are
    /// held until the end of the transaction, as position order is commit
    /// order per key. The default has nothing to write.
    async fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`flush`](Self::flush)es, and fails if the transaction can no longer
    /// commit. On PostgreSQL a statement that failed (even one whose error
    /// the caller caught and ignored) leaves the transaction able only to
    /// roll back, and its `COMMIT` then rolls back *without an error*: a
    /// consumer calls this before committing a handler's work, so that a
    /// swallowed error cannot make it acknowledge effects that never
    /// happened. It costs PostgreSQL a round trip only when nothing was
    /// pending. The default flushes: elsewhere a failed statement leaves
    /// the transaction usable.
    async fn ensure_committable(&mut self) -> Result<(), StoreError> {
        self.flush().await
    }

    /// Stores `message` in the schedule, to be sent once `due_at` has come.
    ///
    /// Validated like [`send`](Self::send) (plus [`validate_scheduled`]); an
    /// id already scheduled or in the outbox is refused. Until it is due the
    /// message is not in the outbox; when [`TransactionalStore::release_due`]
    /// releases it, it joins the outbox behind whatever its key already has
    /// there, so per-key order is the order of *release*, not of scheduling.
    async fn schedule(&mut self, message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Removes a scheduled message before it is released. Returns `true` if it
    /// was still pending (it is then never sent), `false` if the id is unknown
    /// or already released.
    async fn unschedule(&mut self, message_id: Uuid) -> Result<bool, StoreError>;

    /// Replaces a deadline: [`unschedule`](Self::unschedule)s `old`, then
    /// [`schedule`](Self::schedule)s `message`, due at `due_at`. Returns
    /// whether `old` was still pending. A backend may do both in one
    /// statement (PostgreSQL does: a round trip fewer per saga step).
    async fn reschedule(&mut self, old: Uuid, message: &Message, due_at: DateTime<Utc>) -> Result<bool, StoreError> {
        let removed = self.unschedule(old).await?;
        self.schedule(message, due_at).await?;
        Ok(removed)
    }

    /// Records that `consumer` processed `message_id`. Returns `false` if it
    /// had already been recorded: the message is a duplicate.
    async fn record_processed(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError>;

    /// Whether `consumer` has a dead letter with ordering key `key`: later
    /// messages with that key must park behind it.
    async fn key_blocked(&mut self, consumer: &str, key: &str) -> Result<bool, StoreError>;

    /// [`Transaction::record_processed`], then [`Transaction::key_blocked`]
    /// for `key`: how a consumer starts on a message. Backends that pay a
    /// round trip per statement answer both in one.
    async fn begin_handling(&mut self, consumer: &str, message_id: Uuid, key: &str) -> Result<Handling, StoreError> {
        let first = self.record_processed(consumer, message_id).await?;
        let blocked = if first { self.key_blocked(consumer, key).await? } else { false };
        Ok(Handling { first, blocked })
    }

    /// [`Transaction::begin_handling`] for several messages at once, each
    /// given as (message id, key), answered in the same order: how a
    /// consumer starts on a batch of deliveries of different keys that it
    /// handles in one transaction. Backends that pay a round trip per
    /// statement answer all of them in one.
    async fn begin_handling_many(
        &mut self,
        consumer: &str,
        messages: &[(Uuid, String)],
    ) -> Result<Vec<Handling>, StoreError> {
        let mut handlings = Vec::with_capacity(messages.len());
        for (message_id, key) in messages {
            handlings.push(self.begin_handling(consumer, *message_id, key).await?);
        }
        Ok(handlings)
    }

    /// [`Transaction::begin_handling`] as the holder of `fence`'s lease (a
    /// consumer partition's): renews the lease until `now + ttl` first
    /// ([`Transaction::hold_lease`]) and records nothing, answering `None`,
    /// if that tenure is over. Backends that pay a round trip per statement
    /// answer all of it in one.
    async fn begin_handling_as(
        &mut self,
        fence: &crate::lease::Fence,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
        consumer: &str,
        message_id: Uuid,
        key: &str,
    ) -> Result<Option<Handling>, StoreError> {
        if !self.hold_lease(fence, now, ttl).await? {
            return Ok(None);
        }
        self.begin_handling(consumer, message_id, key).await.map(Some)
    }

    /// Serializes, until the end of the transaction, every transaction that
    /// parks or releases messages of `consumer`'s `key`. Backends with a single
    /// writer need nothing; the default does nothing.
    async fn lock_key(&mut self, consumer: &str, key: &str) -> Result<(), StoreError> {
        let _ = (consumer, key);
        Ok(())
    }

    /// Stores (or replaces, by id) a dead letter of `consumer`.
    async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// Removes a dead letter (after a successful replay, or a discard).
    async fn remove_dead_letter(&mut self, id: Uuid) -> Result<bool, StoreError>;

    /// [`TransactionalStore::release_due`] inside this transaction, so that
    /// it commits with whatever else the transaction does (a lease check:
    /// [`Transaction::hold_lease`]).
    async fn release_due(&mut self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError>;

    /// Takes the lease `name` for `owner` until `now + ttl` if it is free,
    /// expired or already `owner`'s, and returns its fencing token; `None`
    /// if another owner holds it. Every acquisition is a new tenure with the
    /// next token, even by the same owner (two processes that share an
    /// identity by mistake then fence each other out rather than share a
    /// tenure); renewing a tenure is [`Transaction::hold_lease`].
    async fn acquire_lease(
        &mut self,
        name: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError>;

    /// Renews `fence`'s lease until `now + ttl` if that tenure still holds
    /// it (same owner, same token, not expired); `false` if it was lost, and
    /// then the transaction must not commit what it did on the lease's behalf.
    async fn hold_lease(
        &mut self,
        fence: &crate::lease::Fence,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Lets `owner`'s lease `name` go (a clean shutdown): another owner can
    /// take it at once. Nothing happens if `owner` does not hold it.
    async fn release_lease(&mut self, name: &str, owner: Uuid) -> Result<(), StoreError>;

    /// The leases whose name starts with `prefix` that are held at `now`
    /// (not expired), as (name, owner), by name.
    async fn leases_held(&mut self, prefix: &str, now: DateTime<Utc>) -> Result<Vec<(String, Uuid)>, StoreError>;
}

/// The work a transaction runs, boxed: what a backend's
/// [`TransactionalStore::transaction_boxed`] receives. Callers write a plain
/// async closure and call [`TransactionalStore::transaction`], which boxes it.
pub type Work<Tx, T, E> = Box<dyn for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send>;

/// The bound [`TransactionalStore::transaction`] puts on its closure: called
/// with the transaction, it returns a `Send` future that may borrow it.
///
/// Every `async move |tx| { ... }` closure whose captures and held values are
/// `Send` has it; nobody implements it by hand. (It exists because an
/// `AsyncFnOnce` bound cannot say that the future it returns is `Send`.)
pub trait TxWork<'t, Tx: 't, T, E>: FnOnce(&'t mut Tx) -> <Self as TxWork<'t, Tx, T, E>>::Future {
    /// The future the closure returns.
    type Future: Future<Output = Result<T, E>> + Send + 't;
}

impl<'t, Tx: 't, F, Fut, T, E> TxWork<'t, Tx, T, E> for F
where
    F: FnOnce(&'t mut Tx) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 't,
{
    type Future = Fut;
}

/// A store that runs [`Transaction`]s and keeps an outbox, an inbox and dead letters.
#[async_trait]
pub trait TransactionalStore: Send + Sync + 'static {
    /// The backend's transaction, handed to the work of [`TransactionalStore::transaction`].
    type Tx: Transaction;

    /// The service that owns this database (the `source` of its messages).
    fn service(&self) -> &str;

    /// Whether the store itself commits concurrent transactions in groups
    /// (SQLite's single writer does, ADR 0002): then a consumer gains
    /// nothing by batching deliveries into one transaction, and by default
    /// it does not. `false` by default.
    fn groups_commits(&self) -> bool {
        false
    }

    /// Runs `work` in one transaction: commits if it returns `Ok`, rolls back
    /// everything it did otherwise.
    ///
    /// ```
    /// use polis_core::{Message, StoreError, Transaction, TransactionalStore};
    ///
    /// async fn announce<S: TransactionalStore>(store: &S, message: Message) -> Result<uuid::Uuid, StoreError> {
    ///     store
    ///         .transaction(async move |tx| {
    ///             tx.send(&message).await?;
    ///             Ok(message.id)
    ///         })
    ///         .await
    /// }
    /// ```
    fn transaction<F, T, E>(&self, work: F) -> impl Future<Output = Result<T, E>> + Send
    where
        Self: Sized,
        F: AsyncFnOnce(&mut Self::Tx) -> Result<T, E> + for<'t> TxWork<'t, Self::Tx, T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.transaction_boxed(Box::new(move |tx| Box::pin(work(tx))))
    }

    /// [`TransactionalStore::transaction`] with the work already boxed: what
    /// a backend implements.
    async fn transaction_boxed<T, E>(&self, work: Work<Self::Tx, T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static;

    /// Up to `max` unpublished outbox entries, oldest first.
    async fn unpublished(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Like [`unpublished`](Self::unpublished), leaving out the entries at
    /// `in_flight` (sorted positions a pipelining relay is still publishing
    /// or marking). It is "the oldest others", never "those after the last
    /// position read": on PostgreSQL a lower position can commit after a
    /// higher one. The default over-fetches and filters; backends exclude in
    /// their query.
    async fn unpublished_excluding(&self, max: usize, in_flight: &[u64]) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries = self.unpublished(max.saturating_add(in_flight.len())).await?;
        entries.retain(|e| in_flight.binary_search(&e.position).is_err());
        entries.truncate(max);
        Ok(entries)
    }

    /// Marks outbox entries as published.
    async fn mark_published(&self, positions: &[u64]) -> Result<(), StoreError>;

    /// Changes whenever messages may have been written to the outbox.
    fn outbox_wakeups(&self) -> watch::Receiver<u64>;

    /// Changes whenever *another process* may have written to the outbox
    /// (on PostgreSQL, another instance's hint): a subset of
    /// [`outbox_wakeups`](Self::outbox_wakeups), for whoever must look at
    /// what other instances committed, not only at its own commits. `None`
    /// (the default) for a store no other process writes.
    fn peer_outbox_wakeups(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Unpublished messages and the age of the oldest.
    async fn outbox_backlog(&self) -> Result<Backlog, StoreError>;

    /// Deletes published outbox rows, inbox records and finished saga
    /// instances older than `before`.
    async fn purge(&self, before: DateTime<Utc>) -> Result<Purged, StoreError>;

    /// Moves up to `max` scheduled messages whose due time is at or before
    /// `now` into the outbox, earliest due first (scheduling order among equal
    /// due times), in one transaction, and wakes the relay. Returns how many
    /// it moved. A message whose id reached the outbox by another way (a
    /// `send` with the same id) is dropped from the schedule without a second
    /// outbox entry, as the bus would drop it as a duplicate anyway.
    ///
    /// Safe to call from several processes at once: each due message is
    /// released by exactly one call, and the messages of a key still reach
    /// the outbox in due order.
    async fn release_due(&self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError>;

    /// The earliest due time in the schedule, if anything is scheduled.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// How many messages are scheduled and not yet released.
    async fn scheduled_count(&self) -> Result<u64, StoreError>;

    /// The dead letters of `consumer` (all consumers if `None`), oldest first.
    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError>;

    /// A page of the dead letters of `consumer` (all consumers if `None`)
    /// in id order: those whose id is greater than `after` (all if `None`),
    /// at most `limit`. Ids are UUIDv7, so id order is about the order they
    /// were given up on; a reader pages through any number of them in
    /// bounded answers.
    async fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// The dead letter `id`, whichever consumer's it is; `None` if there is
    /// none (any more).
    async fn find_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError>;
}

/// Rejects what [`Transaction::schedule`] must not store: an invalid message
/// (as for `send`), a NUL in its data, or a due time outside the years
/// 1–9999 (which every backend can store and compare).
pub fn validate_scheduled(message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError> {
    crate::message::validate_message(message).map_err(StoreError::InvalidRequest)?;
    if crate::store::json_has_nul(&message.data) {
        return Err(StoreError::InvalidRequest(format!("message {} contains a NUL character", message.id)));
    }
    if !(1..=9999).contains(&chrono::Datelike::year(&due_at)) {
        return Err(StoreError::InvalidRequest(format!(
            "message {} is scheduled for {due_at}, outside the years 1 to 9999",
            message.id
        )));
    }
    Ok(())
}

/// A message waiting in (or relayed from) the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox: commit order per key.
    pub position: u64,
    /// The message as sent.
    pub message: Message,
    /// When the sending transaction wrote it (for a scheduled message: when it
    /// was released into the outbox).
    pub created_at: DateTime<Utc>,
}

/// Size of the unpublished part of an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// How many outbox entries wait to be published.
    pub unpublished: u64,
    /// When the oldest of them was written; `None` when nothing waits. Its
    /// age is how far the relay is behind.
    pub oldest: Option<DateTime<Utc>>,
}

/// What a [`TransactionalStore::purge`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Rows of already published outbox entries deleted.
    pub outbox: u64,
    /// Inbox records (processed message ids) deleted; a message redelivered
    /// after its record is purged would be handled again.
    pub inbox: u64,
    /// Finished saga instances deleted (`polis_sagas`, last changed before
    /// the cut-off); a reply arriving for one later is ignored, as for any
    /// unknown instance.
    pub sagas: u64,
}

/// Why a dead letter is in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterStatus {
    /// Handling failed (after every retry), or the message was malformed.
    Dead,
    /// Parked behind an earlier dead letter with the same key, to keep the
    /// key's order; it is replayed after that one is resolved.
    Parked,
}

impl DeadLetterStatus {
    /// The status as stores keep it: `dead` or `parked` (what [`DeadLetterStatus::parse`] reads).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Parked => "parked",
        }
    }

    /// The status named by [`DeadLetterStatus::as_str`]; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dead" => Some(Self::Dead),
            "parked" => Some(Self::Parked),
            _ => None,
        }
    }
}

/// A message a consumer could not handle.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The dead letter's own id (UUIDv7), by which it is replayed or
    /// discarded; not the message's id.
    pub id: Uuid,
    /// The consumer that could not handle the message.
    pub consumer: String,
    /// Failed itself, or parked behind an earlier failure of its key.
    pub status: DeadLetterStatus,
    /// The message, when it could be decoded.
    pub message: Option<Message>,
    /// Its id, when known.
    pub message_id: Option<Uuid>,
    /// Its ordering key, when known; later messages with this key park behind it.
    pub key: Option<String>,
    /// The raw payload of a malformed message.
    pub raw: Option<String>,
    /// Why it is here: the handler's last error, the decoding error of a
    /// malformed message, or the dead letter it is parked behind.
    pub error: String,
    /// How many times handling was tried before it was given up on (1 for a
    /// malformed message, 0 for a parked one, which was never handled).
    pub attempts: u32,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
}
