//! The consuming side: handlers, the inbox, retries and dead letters.
//!
//! A [`Consumer`] subscribes a service to topics and runs each delivery
//! through its handler inside one transaction of the service's own store:
//!
//! 1. if the message's key is blocked by an earlier dead letter, the message
//!    is *parked* behind it (stored as a parked dead letter) — later messages
//!    with the same key never overtake an unresolved failure;
//! 2. the message id is recorded in the inbox; if it was already there, the
//!    delivery is a duplicate and is acknowledged without effects;
//! 3. the handler runs; its writes, its outgoing messages and the inbox
//!    record commit together, so effects happen exactly once.
//!
//! A transient handler error is retried in place with exponential back-off
//! (holding the key, so order is kept) up to `max_attempts`; then, or at once
//! for a permanent error or a malformed message, the message becomes a dead
//! letter with its error, attempts and time, and the consumer moves on.
//! Dead letters can be listed, replayed and discarded; resolving one replays
//! the messages parked behind it, in order.
//!
//! Messages with different keys are handled concurrently (up to
//! `max_in_flight`), messages with one key one at a time, in delivery order.
//!
//! **Batches.** Deliveries of different keys that are ready together are
//! handled in one transaction (group commit): up to `batch_workers`
//! transactions run at once, and each takes what queued while they were
//! busy, up to `max_batch` deliveries — so an idle consumer handles each
//! delivery at once, alone, and a busy one pays one `BEGIN`, one inbox
//! statement and one `COMMIT` for many ([`Transaction::begin_handling_many`]).
//! The handlers run one after the other in the transaction, each in its
//! delivery's span. A batch commits as a whole or not at all: if anything
//! fails (a handler's error, a key blocked by a dead letter, a conflict or
//! deadlock, the commit), every delivery of it is handled again on its own,
//! as above, with the retries and dead letters described there. A
//! partition's deliveries (below) are handled alone, and so, by default,
//! are deliveries on a store that commits in groups itself (SQLite).
//!
//! **Instances.** Several instances of a service run one consumer (one
//! name) together when the bus splits topics into partitions
//! ([`Bus::partitions`]) and [`ConsumerOptions::lease`] is set (ADR 0011).
//! Each instance announces itself with a member lease and holds its fair
//! share of the routed topics' partitions (their count over the instances
//! announced; half a share for the instance whose lease owner also holds
//! the service's relay lease, since publishing the outbox is work too),
//! each under a lease `partition:<consumer>:<service>:<kind>:<n>`
//! in the store; a third of the lease's time-to-live at a time it renews
//! them, gives back what exceeds its share (a newcomer's turn) and takes
//! free or expired ones (a dead instance's). A partition is read one
//! delivery at a time (its subscription holds one unacknowledged message),
//! and every transaction of a delivery renews the partition's lease with
//! its token first: an instance that lost the lease commits nothing more
//! of it ([`Outcome::NotOwner`]) and hands the message back.
//!
//! Metrics (labelled with the consumer): `polis_messages_handled_total`,
//! `polis_inbox_duplicates_total`, `polis_redeliveries_total`,
//! `polis_handler_retries_total`, `polis_dead_letters_total`.
//!
//! Traces (ADR 0010): each delivery is handled in a `handle_message` span
//! (consumer, message id, type, key, attempt, and the outcome once known;
//! at `debug` for a message the handler declines, which is no hop)
//! that continues the trace of the message's `traceparent`, as the remote
//! child of the span that wrote the message; the handler runs in it, so what
//! the handler sends continues the same trace. A redelivery (attempt > 1) is
//! such a child too, whichever delivery's effects the inbox keeps, and
//! carries a link (`polis.link = redelivery`) to the message's context; an
//! in-place retry runs in a `retry_message` span linked (`polis.link =
//! retry`) to the attempt it repeats, never nested in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::FutureExt;
use polis_core::bus::{Bus, BusError, Delivery, Malformed, Topic};
use polis_core::lease::{Fence, LeaseOptions, Release};
use polis_core::outbox::{DeadLetter, DeadLetterStatus, Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::health::Progress;
use crate::relay::RELAY_LEASE;
use uuid::Uuid;

/// [`ConsumerOptions::max_batch`] unless set otherwise.
const DEFAULT_MAX_BATCH: usize = 64;

/// Why a handler could not handle a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (a conflict, a dependency down): retried.
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (unknown type, invalid content): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidRequest(reason) => Self::Permanent(reason),
            StoreError::Unique(what) => Self::Permanent(format!("unique constraint violated: {what}")),
            other => Self::Transient(polis_core::error::chain(&other).to_string()),
        }
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        Self::Permanent(format!("invalid message data: {e}"))
    }
}

/// Handles messages of one topic inside the consumer's transaction.
#[async_trait]
pub trait Handler<Tx: Send>: Send + Sync + 'static {
    /// Applies `message`'s effects through `tx`: its writes, and the messages
    /// it sends, commit together with the inbox record, or not at all.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Transient`] to have the message retried (with back-off,
    /// up to [`ConsumerOptions::max_attempts`]), [`HandlerError::Permanent`] to
    /// dead-letter it at once. Either way the transaction is rolled back.
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError>;

    /// Whether `message` can have any effect here. A message the handler
    /// declines is acknowledged without a transaction (no inbox record,
    /// nothing written; [`Outcome::Declined`]), which is safe because
    /// handling it would have changed nothing, and saves a commit per
    /// message on topics a service subscribes to for a few of their
    /// messages. It must decide from the message alone. The default accepts
    /// every message.
    fn accepts(&self, message: &Message) -> bool {
        let _ = message;
        true
    }

    /// Called once the transaction that handled `message` has committed
    /// (not for a duplicate, a declined or a dead-lettered message): where
    /// a handler records what should count only once it is certain, such as
    /// a business metric. Handling may have been tried, and rolled back,
    /// before. The default does nothing.
    fn committed(&self, message: &Message) {
        let _ = message;
    }
}

/// Tuning for a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Attempts per delivery before the message becomes a dead letter.
    pub max_attempts: u32,
    /// Wait before the first retry of a transient failure; doubles per retry.
    pub retry_min: Duration,
    /// Longest wait between two retries.
    pub retry_max: Duration,
    /// Deliveries being handled at once (across keys).
    pub max_in_flight: usize,
    /// On a bus with partitions ([`Bus::partitions`]), share them with the
    /// consumer's other instances through leases in the store (module
    /// docs). `None`, or a bus without partitions: subscribe to whole topics.
    /// The instance whose owner also holds the service's relay lease takes
    /// half a share: give the relay ([`crate::RelayOptions::lease`]) the
    /// same owner.
    pub lease: Option<LeaseOptions>,
    /// Most deliveries handled together in one transaction (module docs,
    /// *Batches*); 1 handles each in a transaction of its own. `None`: 64,
    /// or 1 on a store that groups commits itself
    /// ([`TransactionalStore::groups_commits`]).
    pub max_batch: Option<usize>,
    /// Batches being handled at once, each in its own transaction.
    pub batch_workers: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            max_in_flight: 256,
            lease: None,
            max_batch: None,
            batch_workers: 1,
        }
    }
}

/// Errors of the dead-letter API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// This consumer has no dead letter with that id (never had, or it was
    /// already replayed or discarded).
    #[error("no dead letter {0} for this consumer")]
    NotFound(Uuid),
    /// The dead letter is a payload that never decoded into a message; it can
    /// only be discarded.
    #[error("dead letter {0} holds a malformed message; there is nothing to replay")]
    NotReplayable(Uuid),
    /// The message's topic has no route on this consumer (the subject filter
    /// is named).
    #[error("no handler for {0}")]
    NoHandler(String),
    /// The dead letter is parked behind an earlier one of its key: replaying
    /// it first would break the key's order.
    #[error("dead letter {0} is parked behind an earlier one of its key; resolve that first")]
    Blocked(Uuid),
    /// The handler failed again; the dead letter stays, with the new error.
    #[error("replay failed: {0}")]
    ReplayFailed(HandlerError),
    /// The dead letter was resolved (replayed or discarded), but a message
    /// parked behind it failed when it was replayed in turn: that message is
    /// now a dead letter of its own, `parked`, with `error`, and the key
    /// stays blocked behind it.
    #[error("resolved, but the parked message {parked} failed when replayed: {error}")]
    ParkedFailed {
        /// The parked message's dead-letter id (kept, now `dead`).
        parked: Uuid,
        /// Why it failed.
        error: HandlerError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its effects committed.
    Handled,
    /// The inbox already had the message id: acknowledged without effects.
    Duplicate,
    /// Stored as a parked dead letter behind an unresolved one of its key.
    Parked,
    /// Stored as a dead letter: malformed, permanently failed, or out of retries.
    DeadLettered,
    /// The handler declined it ([`Handler::accepts`]): acknowledged without
    /// a transaction.
    Declined,
    /// Its partition's lease was no longer this instance's: nothing was
    /// committed, and the message goes back to the bus for the new owner.
    NotOwner,
}

impl Outcome {
    /// The outcome's name as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Parked => "parked",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Declined => "declined",
            Outcome::NotOwner => "not_owner",
        }
    }
}

/// A handler as the consumer stores it.
pub type SharedHandler<Tx> = Arc<dyn Handler<Tx>>;

/// A service's consumer: its name, its store, and a handler per topic.
pub struct Consumer<S: TransactionalStore> {
    name: String,
    store: Arc<S>,
    routes: Vec<(Topic, SharedHandler<S::Tx>)>,
    options: ConsumerOptions,
    /// Where deliveries queue for a batch, once [`spawn`](Self::spawn)
    /// started the batch workers.
    batches: std::sync::OnceLock<mpsc::UnboundedSender<Job<S::Tx>>>,
}

impl<S: TransactionalStore> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topics: Vec<_> = self.routes.iter().map(|(t, _)| t.filter()).collect();
        f.debug_struct("Consumer").field("name", &self.name).field("topics", &topics).finish()
    }
}

/// A running consumer; stops when dropped, or when
/// [`shutdown`](ConsumerHandle::shutdown), which also waits for the messages
/// being handled.
#[derive(Debug)]
pub struct ConsumerHandle {
    readers: Vec<JoinHandle<()>>,
    /// Each reader's progress, in `readers` order.
    progress: Vec<(Topic, Progress)>,
    /// Tells the key lanes to stop taking deliveries (what they hold unacknowledged comes back).
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// One permit per delivery in flight: holding them all means none is.
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    /// The partition and member leases to let go at a clean stop.
    release: Release,
}

impl ConsumerHandle {
    /// Each subscription's reader's progress, by topic, for a readiness
    /// check ([`Progress::check`]).
    pub fn progress(&self) -> &[(Topic, Progress)] {
        &self.progress
    }

    fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in &self.readers {
            task.abort();
        }
    }

    /// Stops taking deliveries and returns once every message being handled
    /// has finished (committed, or rolled back for redelivery). What was
    /// delivered and not yet started stays unacknowledged and comes again.
    pub async fn shutdown(mut self) {
        self.stop();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.await; // aborted: cancelled at its next await
        }
        // Every permit back means no lane is inside a handler any more.
        let _all = self.permits.acquire_many(self.max_in_flight).await;
        // Then the partitions go to the other instances at once.
        self.release.run().await;
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<S: TransactionalStore> Consumer<S> {
    /// A consumer named `name` (its durable subscriptions and inbox use the name).
    pub fn new(name: impl Into<String>, store: Arc<S>, options: ConsumerOptions) -> Self {
        Self { name: name.into(), store, routes: Vec::new(), options, batches: std::sync::OnceLock::new() }
    }

    /// Handles messages of `topic` with `handler`.
    pub fn route(mut self, topic: Topic, handler: impl Handler<S::Tx>) -> Self {
        self.routes.push((topic, Arc::new(handler)));
        self
    }

    /// The consumer's name: its durable subscriptions, inbox records and dead
    /// letters are kept under it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Subscribes to every routed topic and handles deliveries until dropped.
    ///
    /// On a bus with partitions ([`Bus::partitions`]) and with
    /// [`ConsumerOptions::lease`] set, it takes this instance's share of the
    /// topics' partitions instead, and keeps rebalancing it as instances
    /// come and go (module docs).
    pub async fn spawn(self: Arc<Self>, bus: Arc<dyn Bus>) -> Result<ConsumerHandle, BusError> {
        let max_in_flight = u32::try_from(self.options.max_in_flight.max(1)).unwrap_or(u32::MAX >> 3);
        let permits = Arc::new(Semaphore::new(max_in_flight as usize));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(lease) = self.options.lease
            && bus.partitions() > 1
        {
            let progress: Vec<_> = self.routes.iter().map(|(topic, _)| (topic.clone(), Progress::default())).collect();
            let sharing = Sharing { bus, lease, progress: progress.clone(), permits: permits.clone() };
            let prefixes = vec![format!("partition:{}:", self.name), format!("member:{}:", self.name)];
            let release = Release::held_by(self.store.clone(), prefixes, lease.owner);
            let task = tokio::spawn(self.share_partitions(sharing));
            return Ok(ConsumerHandle { readers: vec![task], progress, stopped, permits, max_in_flight, release });
        }
        self.start_batches();
        let mut tasks = Vec::new();
        let mut readers = Vec::new();
        for (topic, handler) in &self.routes {
            let subscription = bus.subscribe(&self.name, topic).await?;
            let lanes = Arc::new(Lanes { open: Mutex::default(), stopped: stopped.clone() });
            let progress = Progress::default();
            readers.push((topic.clone(), progress.clone()));
            let (consumer, handler, permits, topic) = (self.clone(), handler.clone(), permits.clone(), topic.clone());
            tasks.push(tokio::spawn(async move {
                let _ended = progress.on_drop("the subscription's reader ended");
                let mut subscription = subscription;
                loop {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    match subscription.next().await {
                        Ok(delivery) => {
                            progress.ok();
                            lanes.dispatch(&consumer, &handler, delivery, permit);
                        }
                        Err(BusError::Closed) => {
                            progress.ended("the subscription was closed");
                            return;
                        }
                        Err(e) => {
                            progress.failed(&e);
                            tracing::warn!(consumer = consumer.name, topic = %topic, error = %polis_core::error::chain(&e), "subscription failed");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }));
        }
        let release = Release::none();
        Ok(ConsumerHandle { readers: tasks, progress: readers, stopped, permits, max_in_flight, release })
    }

    /// The labels of this consumer's series: its service and its name.
    fn labels(&self) -> [(&'static str, String); 2] {
        [("service", self.store.service().to_owned()), ("consumer", self.name.clone())]
    }

    /// Runs one delivery to the end: handled, duplicate, parked or dead-lettered;
    /// then acknowledges it.
    ///
    /// Records `polis_consumer_lag_seconds` (from the message's creation at
    /// its source to the start of its handling here: how far behind the
    /// consumer is) and `polis_consumer_handling_seconds` by outcome, and
    /// runs in the delivery's `handle_message` span (module docs).
    pub async fn process(&self, handler: &Arc<dyn Handler<S::Tx>>, delivery: Delivery) -> Outcome {
        self.process_fenced(handler, delivery, None).await
    }

    /// [`process`](Self::process) as the holder of a partition's lease:
    /// every transaction renews it with its token first, and the delivery
    /// is [`Outcome::NotOwner`] (handed back to the bus, nothing committed)
    /// if that tenure is over.
    async fn process_fenced(
        &self,
        handler: &Arc<dyn Handler<S::Tx>>,
        delivery: Delivery,
        fence: Option<&(Fence, Duration)>,
    ) -> Outcome {
        let declined = delivery.message.as_ref().is_ok_and(|message| !handler.accepts(message));
        let span = self.message_span(&delivery, declined);
        let outcome = self.process_in_span(handler, delivery, fence).instrument(span.clone()).await;
        span.record("outcome", outcome.as_str());
        outcome
    }

    /// The span a delivery is handled in: a new root in `tracing`'s terms
    /// (whatever task it runs on), continuing the message's trace. A
    /// message the handler declines is no hop of its trace (nothing
    /// happens here): its span is at `debug`, so a debug log shows it and
    /// the traces' default filter leaves it out.
    fn message_span(&self, delivery: &Delivery, declined: bool) -> tracing::Span {
        let Ok(message) = &delivery.message else {
            return tracing::info_span!(
                parent: None,
                "handle_message",
                otel.kind = "consumer",
                consumer = self.name,
                attempt = delivery.attempt,
                outcome = tracing::field::Empty,
            );
        };
        macro_rules! message_span {
            ($span:ident) => {
                tracing::$span!(
                    parent: None,
                    "handle_message",
                    otel.kind = "consumer",
                    consumer = self.name,
                    message_id = %message.id,
                    message_type = message.message_type,
                    key = message.key,
                    attempt = delivery.attempt,
                    outcome = tracing::field::Empty,
                )
            };
        }
        let span = if declined { message_span!(debug_span) } else { message_span!(info_span) };
        let traceparent = message.metadata.traceparent.as_deref();
        polis_core::trace::set_remote_parent(&span, traceparent);
        if delivery.attempt > 1 {
            polis_core::trace::add_link(&span, traceparent, "redelivery", delivery.attempt);
        }
        span
    }

    async fn process_in_span(
        &self,
        handler: &Arc<dyn Handler<S::Tx>>,
        delivery: Delivery,
        fence: Option<&(Fence, Duration)>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        if delivery.attempt > 1 {
            metrics::counter!("polis_redeliveries_total", &self.labels()).increment(1);
        }
        if let Ok(message) = &delivery.message {
            let lag = (Utc::now() - message.time).to_std().unwrap_or_default();
            metrics::histogram!("polis_consumer_lag_seconds", &self.labels()).record(lag.as_secs_f64());
        }
        // Until the message is handled or stored as a dead letter, keep at it
        // here, holding its key: handing it back to the bus (a nack) would let
        // later messages of the key overtake it.
        let mut pause = self.options.retry_min;
        let mut first_try = true;
        let outcome = loop {
            let settled = match &delivery.message {
                Err(malformed) => self.bury_malformed(malformed, fence).await,
                Ok(message) if !handler.accepts(message) => {
                    metrics::counter!("polis_messages_declined_total", &self.labels()).increment(1);
                    Ok(Outcome::Declined)
                }
                Ok(message) if fence.is_none() && first_try => match self.handle_in_batch(handler, message).await {
                    Some(outcome) => Ok(outcome),
                    None => self.handle_with_retries(handler, message, fence).await,
                },
                Ok(message) => self.handle_with_retries(handler, message, fence).await,
            };
            first_try = false;
            match settled {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::error!(consumer = self.name, error = %polis_core::error::chain(&e), retry_in = ?pause, "cannot settle a message");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.options.retry_max);
                }
            }
        };
        let settled = if outcome == Outcome::NotOwner {
            // Not ours to settle: straight back to the bus, for the new owner.
            delivery.nack(Duration::ZERO).await
        } else {
            delivery.ack().await
        };
        if let Err(e) = settled {
            // The message will come again; the inbox recognizes it.
            tracing::warn!(consumer = self.name, error = %polis_core::error::chain(&e), "settling a delivery failed");
        }
        let [service, consumer] = self.labels();
        metrics::histogram!(
            "polis_consumer_handling_seconds",
            &[service, consumer, ("outcome", outcome.as_str().to_owned())]
        )
        .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn handle_with_retries(
        &self,
        handler: &Arc<dyn Handler<S::Tx>>,
        message: &Message,
        fence: Option<&(Fence, Duration)>,
    ) -> Result<Outcome, StoreError> {
        let mut pause = self.options.retry_min;
        let mut attempt = 0;
        let mut previous = tracing::Span::current();
        loop {
            attempt += 1;
            let handling = self.handle_once(handler, message, fence.cloned());
            let handled = if attempt == 1 {
                handling.await
            } else {
                // A sibling of the failed attempt, linked to it: not its child.
                let retry = tracing::info_span!("retry_message", attempt);
                polis_core::trace::add_link(&retry, polis_core::trace::of(&previous).as_deref(), "retry", attempt);
                previous = retry.clone();
                handling.instrument(retry).await
            };
            match handled {
                Ok(Outcome::NotOwner) => return Ok(Outcome::NotOwner),
                Ok(outcome) => return Ok(self.committed(handler, message, outcome)),
                Err(HandlerError::Transient(reason)) if attempt < self.options.max_attempts => {
                    metrics::counter!("polis_handler_retries_total", &self.labels()).increment(1);
                    tracing::debug!(consumer = self.name, message_id = %message.id, attempt, reason, "retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.options.retry_max);
                }
                Err(e) => return self.bury(message, &e, attempt, fence).await,
            }
        }
    }

    /// What follows a committed transaction of `message`: the handler's
    /// [`Handler::committed`] and the counters.
    fn committed(&self, handler: &Arc<dyn Handler<S::Tx>>, message: &Message, outcome: Outcome) -> Outcome {
        if outcome == Outcome::Handled {
            handler.committed(message);
        }
        let counter = match outcome {
            Outcome::Duplicate => "polis_inbox_duplicates_total",
            _ => "polis_messages_handled_total",
        };
        metrics::counter!(counter, &self.labels()).increment(1);
        outcome
    }

    /// Starts the batch workers (module docs, *Batches*), unless batches
    /// are off or they run already. They end once the consumer is dropped.
    fn start_batches(&self) {
        let max = match self.options.max_batch {
            Some(max) => max,
            None if self.store.groups_commits() => 1,
            None => DEFAULT_MAX_BATCH,
        };
        if max <= 1 {
            return;
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        if self.batches.set(sender).is_err() {
            return;
        }
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..self.options.batch_workers.max(1) {
            let (store, labels, receiver) = (self.store.clone(), self.labels(), receiver.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::new();
                    {
                        // One worker gathers at a time: what queued while
                        // every worker was busy goes into one batch.
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else { return };
                        jobs.push(first);
                        while jobs.len() < max
                            && let Ok(job) = receiver.try_recv()
                        {
                            jobs.push(job);
                        }
                    }
                    run_batch(&*store, &labels, jobs).await;
                }
            });
        }
    }

    /// Hands `message` to a batch. `Some` outcome once that batch's
    /// transaction committed (handled or duplicate); `None` if there are no
    /// batches or the batch could not commit as a whole: nothing of it was
    /// committed, and the message is handled on its own.
    async fn handle_in_batch(&self, handler: &Arc<dyn Handler<S::Tx>>, message: &Message) -> Option<Outcome> {
        let batches = self.batches.get()?;
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job = Job { handler: handler.clone(), message: message.clone(), span: tracing::Span::current(), done };
        batches.send(job).ok()?;
        let outcome = outcome.await.ok().flatten()?;
        Some(self.committed(handler, message, outcome))
    }

    async fn handle_once(
        &self,
        handler: &Arc<dyn Handler<S::Tx>>,
        message: &Message,
        fence: Option<(Fence, Duration)>,
    ) -> Result<Outcome, HandlerError> {
        let (name, handler, message) = (self.name.clone(), handler.clone(), message.clone());
        self.store
            .transaction::<_, _, HandlerError>(async move |tx| {
                // The inbox first: a redelivery of a message that is already
                // a dead letter (or parked) is a duplicate, not a new letter.
                // As a partition's holder, the lease's renewal comes with it.
                let handling = match &fence {
                    None => tx.begin_handling(&name, message.id, &message.key).await?,
                    Some((fence, ttl)) => {
                        let handling = tx.begin_handling_as(fence, Utc::now(), *ttl, &name, message.id, &message.key);
                        match handling.await? {
                            Some(handling) => handling,
                            None => return Ok(Outcome::NotOwner),
                        }
                    }
                };
                if !handling.first {
                    return Ok(Outcome::Duplicate);
                }
                // Blocked? Check again under the key's lock before parking, so a
                // release finishing at the same time cannot miss this message.
                if handling.blocked && {
                    tx.lock_key(&name, &message.key).await?;
                    tx.key_blocked(&name, &message.key).await?
                } {
                    let reason = format!("parked behind an unresolved dead letter with key `{}`", message.key);
                    tx.dead_letter(&letter(&name, DeadLetterStatus::Parked, &message, reason, 0)).await?;
                    return Ok(Outcome::Parked);
                }
                guarded(handler.handle(tx, &message)).await?;
                tx.ensure_committable().await?;
                Ok(Outcome::Handled)
            })
            .await
    }

    /// Stores `message` as a dead letter (and as processed, so redeliveries skip it).
    async fn bury(
        &self,
        message: &Message,
        error: &HandlerError,
        attempts: u32,
        fence: Option<&(Fence, Duration)>,
    ) -> Result<Outcome, StoreError> {
        let (name, message, reason, fence) = (self.name.clone(), message.clone(), error.to_string(), fence.cloned());
        tracing::warn!(consumer = self.name, message_id = %message.id, attempts, reason, "dead-lettering a message");
        let stored = self
            .store
            .transaction::<_, _, StoreError>(async move |tx| {
                if !holds(tx, fence.as_ref()).await? {
                    return Ok(false);
                }
                tx.record_processed(&name, message.id).await?;
                tx.dead_letter(&letter(&name, DeadLetterStatus::Dead, &message, reason, attempts)).await?;
                Ok(true)
            })
            .await;
        self.after_burial(stored)
    }

    async fn bury_malformed(
        &self,
        malformed: &Malformed,
        fence: Option<&(Fence, Duration)>,
    ) -> Result<Outcome, StoreError> {
        let fence = fence.cloned();
        let dead = DeadLetter {
            id: Uuid::now_v7(),
            consumer: self.name.clone(),
            status: DeadLetterStatus::Dead,
            message: None,
            message_id: malformed.id,
            key: None,
            raw: Some(malformed.raw.clone()),
            error: format!("malformed message: {}", malformed.reason),
            attempts: 1,
            failed_at: Utc::now(),
        };
        tracing::warn!(consumer = self.name, reason = malformed.reason, "dead-lettering a malformed message");
        let stored = self
            .store
            .transaction::<_, _, StoreError>(async move |tx| {
                if !holds(tx, fence.as_ref()).await? {
                    return Ok(false);
                }
                // With a readable id, a redelivery is recognized as a duplicate.
                if let Some(id) = dead.message_id
                    && !tx.record_processed(&dead.consumer, id).await?
                {
                    return Ok(true);
                }
                tx.dead_letter(&dead).await?;
                Ok(true)
            })
            .await;
        self.after_burial(stored)
    }

    /// `stored`: whether the burial's transaction ran as the owner.
    fn after_burial(&self, stored: Result<bool, StoreError>) -> Result<Outcome, StoreError> {
        if !stored? {
            return Ok(Outcome::NotOwner);
        }
        metrics::counter!("polis_dead_letters_total", &self.labels()).increment(1);
        Ok(Outcome::DeadLettered)
    }

    /// This consumer's dead letters (and parked messages), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.dead_letters(Some(&self.name)).await
    }

    /// Runs a dead letter's message through its handler again. On success the
    /// dead letter is removed and the messages parked behind it are replayed
    /// in order; on failure it stays, with the new error and attempt count
    /// ([`DeadLetterError::ReplayFailed`]). A parked message failing in turn
    /// is [`DeadLetterError::ParkedFailed`]: this one was replayed all the same.
    pub async fn replay(&self, id: Uuid) -> Result<(), DeadLetterError> {
        let letter = self.find(id).await?;
        let message = letter.message.clone().ok_or(DeadLetterError::NotReplayable(id))?;
        if letter.status == DeadLetterStatus::Parked {
            // A parked message goes only after everything ahead of it in its key.
            let ahead = self.dead_letters().await?.into_iter().take_while(|l| l.id != id).any(|l| l.key == letter.key);
            if ahead {
                return Err(DeadLetterError::Blocked(id));
            }
        }
        self.replay_one(&letter, &message).await?;
        self.release_parked(&message.key).await
    }

    /// Drops a dead letter without handling it, then replays what was parked
    /// behind it ([`DeadLetterError::ParkedFailed`] if one of those fails: the
    /// discard itself is done).
    pub async fn discard(&self, id: Uuid) -> Result<(), DeadLetterError> {
        let letter = self.find(id).await?;
        self.store.transaction::<_, _, StoreError>(async move |tx| tx.remove_dead_letter(id).await).await?;
        if let Some(key) = &letter.key {
            self.release_parked(key).await?;
        }
        Ok(())
    }

    async fn find(&self, id: Uuid) -> Result<DeadLetter, DeadLetterError> {
        let letter = self.store.find_dead_letter(id).await?;
        letter.filter(|l| l.consumer == self.name).ok_or(DeadLetterError::NotFound(id))
    }

    fn handler_for(&self, message: &Message) -> Result<Arc<dyn Handler<S::Tx>>, DeadLetterError> {
        self.routes
            .iter()
            .find(|(t, _)| t.service == message.target && t.kind == message.kind)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| DeadLetterError::NoHandler(message.subject()))
    }

    async fn replay_one(&self, letter: &DeadLetter, message: &Message) -> Result<(), DeadLetterError> {
        let handler = self.handler_for(message)?;
        let (id, replayed, after) = (letter.id, message.clone(), handler.clone());
        let result = self
            .store
            .transaction::<_, _, HandlerError>(async move |tx| {
                // Claim the letter first: of two replays (or a replay and a
                // discard) racing, only the one that removes it handles it.
                if !tx.remove_dead_letter(id).await? {
                    return Ok(false);
                }
                guarded(handler.handle(tx, &replayed)).await?;
                tx.ensure_committable().await?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) => {
                after.committed(message);
                Ok(())
            }
            Ok(false) => Err(DeadLetterError::NotFound(id)),
            Err(e) => {
                // The failed attempt rolled back, so the letter is still there:
                // record this attempt on it.
                let mut failed = letter.clone();
                failed.status = DeadLetterStatus::Dead;
                failed.error = e.to_string();
                failed.attempts += 1;
                failed.failed_at = Utc::now();
                self.store.transaction::<_, _, StoreError>(async move |tx| tx.dead_letter(&failed).await).await?;
                Err(DeadLetterError::ReplayFailed(e))
            }
        }
    }

    /// Replays the parked messages of `key`, oldest first, while they succeed.
    async fn release_parked(&self, key: &str) -> Result<(), DeadLetterError> {
        loop {
            let letters = self.dead_letters().await?;
            let same_key: Vec<_> = letters.into_iter().filter(|l| l.key.as_deref() == Some(key)).collect();
            if same_key.iter().any(|l| l.status == DeadLetterStatus::Dead) {
                return Ok(()); // still blocked by an unresolved failure
            }
            let Some(next) = same_key.into_iter().next() else {
                // Nothing left, as far as we saw: look again under the key's lock,
                // after any transaction that was parking a message of the key.
                let (name, key) = (self.name.clone(), key.to_owned());
                let parked_meanwhile = self
                    .store
                    .transaction::<_, _, StoreError>(async move |tx| {
                        tx.lock_key(&name, &key).await?;
                        tx.key_blocked(&name, &key).await
                    })
                    .await?;
                if parked_meanwhile {
                    continue;
                }
                return Ok(());
            };
            match &next.message {
                Some(message) => match self.replay_one(&next, message).await {
                    // Another replay or discard resolved it meanwhile: go on with the rest.
                    Ok(()) | Err(DeadLetterError::NotFound(_)) => {}
                    Err(DeadLetterError::ReplayFailed(error)) => {
                        return Err(DeadLetterError::ParkedFailed { parked: next.id, error });
                    }
                    Err(other) => return Err(other),
                },
                None => return Err(DeadLetterError::NotReplayable(next.id)),
            }
        }
    }
}

/// Whether this transaction runs as the holder of `fence`'s lease (renewing
/// it): always, without one.
/// A delivery waiting for a batch: its handler, its message, the span it
/// is handled in, and where its outcome goes (`None`: handle it alone).
struct Job<Tx> {
    handler: SharedHandler<Tx>,
    message: Message,
    span: tracing::Span,
    done: tokio::sync::oneshot::Sender<Option<Outcome>>,
}

/// Why a batch's transaction did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("a key of the batch is blocked by a dead letter")]
    Blocked,
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handles `jobs` (of different keys: each lane has one delivery in
/// flight) in one transaction, in order: one inbox statement for all of
/// them, each handler in its delivery's span, one commit. Anything but a
/// commit — a handler's error, a blocked key, a conflict, a failed commit —
/// leaves nothing behind, and every job is then handled on its own.
async fn run_batch<S: TransactionalStore>(store: &S, labels: &[(&'static str, String); 2], jobs: Vec<Job<S::Tx>>) {
    let work: Vec<_> = jobs.iter().map(|job| (job.handler.clone(), job.message.clone(), job.span.clone())).collect();
    let consumer = labels[1].1.clone();
    let handled = store
        .transaction::<_, _, BatchError>(async move |tx| {
            let messages: Vec<(Uuid, String)> = work.iter().map(|(_, m, _)| (m.id, m.key.clone())).collect();
            let handlings = tx.begin_handling_many(&consumer, &messages).await?;
            if handlings.iter().any(|h| h.blocked) {
                return Err(BatchError::Blocked);
            }
            let mut outcomes = Vec::with_capacity(work.len());
            for ((handler, message, span), handling) in work.iter().zip(handlings) {
                if !handling.first {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                guarded(handler.handle(tx, message)).instrument(span.clone()).await?;
                outcomes.push(Outcome::Handled);
            }
            // Nothing to check when every delivery was a duplicate.
            if outcomes.contains(&Outcome::Handled) {
                tx.ensure_committable().await?;
            }
            Ok(outcomes)
        })
        .await;
    match handled {
        Ok(outcomes) => {
            metrics::histogram!("polis_consumer_batch_size", labels).record(jobs.len() as f64);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.done.send(Some(outcome));
            }
        }
        Err(e) => {
            tracing::debug!(consumer = labels[1].1, deliveries = jobs.len(), reason = %e, "a batch rolled back; its deliveries are handled one by one");
            for job in jobs {
                let _ = job.done.send(None);
            }
        }
    }
}

async fn holds<Tx: Transaction>(tx: &mut Tx, fence: Option<&(Fence, Duration)>) -> Result<bool, StoreError> {
    match fence {
        Some((fence, ttl)) => tx.hold_lease(fence, Utc::now(), *ttl).await,
        None => Ok(true),
    }
}

/// Runs a handler, turning a panic into a permanent failure: a panicking
/// handler must not take its key's lane (and the deliveries queued in it) down.
async fn guarded(handling: impl std::future::Future<Output = Result<(), HandlerError>>) -> Result<(), HandlerError> {
    match std::panic::AssertUnwindSafe(handling).catch_unwind().await {
        Ok(result) => result,
        Err(_) => Err(HandlerError::Permanent("the handler panicked".into())),
    }
}

fn letter(consumer: &str, status: DeadLetterStatus, message: &Message, error: String, attempts: u32) -> DeadLetter {
    DeadLetter {
        id: Uuid::now_v7(),
        consumer: consumer.to_owned(),
        status,
        message: Some(message.clone()),
        message_id: Some(message.id),
        key: Some(message.key.clone()),
        raw: None,
        error,
        attempts,
        failed_at: Utc::now(),
    }
}

/// One sequential lane per key: deliveries of a key are handled in order,
/// different keys concurrently.
struct Lanes {
    open: Mutex<HashMap<String, mpsc::UnboundedSender<(Delivery, OwnedSemaphorePermit)>>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Lanes {
    fn dispatch<S: TransactionalStore>(
        self: &Arc<Self>,
        consumer: &Arc<Consumer<S>>,
        handler: &Arc<dyn Handler<S::Tx>>,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
    ) {
        let key = match &delivery.message {
            Ok(m) => m.key.clone(),
            // Malformed messages have no key to order by: a lane of their own.
            Err(_) => format!("\0malformed-{}", Uuid::now_v7()),
        };
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let item = match open.get(&key) {
            Some(lane) => match lane.send((delivery, permit)) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => item,
            },
            None => (delivery, permit),
        };
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let _ = sender.send(item);
        open.insert(key.clone(), sender);
        drop(open);
        let (lanes, consumer, handler) = (self.clone(), consumer.clone(), handler.clone());
        tokio::spawn(async move {
            loop {
                let next = receiver.try_recv().ok().or_else(|| {
                    // Close the lane under the lock, so no delivery slips in unseen.
                    let mut open = lanes.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match receiver.try_recv() {
                        Ok(item) => Some(item),
                        Err(_) => {
                            open.remove(&key);
                            None
                        }
                    }
                });
                let Some((delivery, permit)) = next else { return };
                if lanes.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    // The consumer was stopped: leave the rest unacknowledged for the bus.
                    return;
                }
                consumer.process(&handler, delivery).await;
                drop(permit);
            }
        });
    }
}

/// How much of a consumer's partitions the instance that also holds the
/// service's relay lease takes: half of another instance's share, as
/// publishing the service's outbox costs it about as much as half its
/// consumer work in the shop's order service (`docs/benchmarks.md`,
/// session 14).
const RELAY_HOLDER_HALVES: usize = 1;

/// How many of `units` partitions instance `me` of `instances` (the owners
/// announced) holds: an even share, or a lighter one for the instance
/// that holds the service's relay lease (`relay`, its owner), whose
/// publishing would otherwise make it the bound. Rounded up, so that the
/// shares cover every partition.
fn share_of(units: usize, instances: &[Uuid], relay: Option<Uuid>, me: Uuid) -> usize {
    let n = instances.len().max(1);
    match relay.filter(|r| n > 1 && instances.contains(r)) {
        None => units.div_ceil(n),
        Some(relay) => {
            let total = 2 * (n - 1) + RELAY_HOLDER_HALVES;
            let mine = if relay == me { RELAY_HOLDER_HALVES } else { 2 };
            (units * mine).div_ceil(total)
        }
    }
}

/// What [`Consumer::share_partitions`] works with.
struct Sharing {
    bus: Arc<dyn Bus>,
    lease: LeaseOptions,
    /// Each route's progress, shared by its partitions' readers.
    progress: Vec<(Topic, Progress)>,
    permits: Arc<Semaphore>,
}

/// One partition this instance reads: its lease's tenure and its reader.
struct Partition {
    fence: Fence,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    /// Stops pulling, lets the message being handled finish (up to `grace`),
    /// hands back what had already arrived.
    async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: TransactionalStore> Consumer<S> {
    /// The lease of one partition of route `route`'s topic.
    fn partition_lease(&self, route: usize, partition: u32) -> String {
        let topic = &self.routes[route].0;
        format!("partition:{}:{}:{}:{partition}", self.name, topic.service, topic.kind.segment())
    }

    /// Holds this instance's fair share of the partitions of every routed
    /// topic, a third of the lease's time-to-live at a time, until aborted.
    async fn share_partitions(self: Arc<Self>, sharing: Sharing) {
        let count = sharing.bus.partitions();
        let units: Vec<(usize, u32)> =
            (0..self.routes.len()).flat_map(|route| (0..count).map(move |partition| (route, partition))).collect();
        let mut running: std::collections::BTreeMap<usize, Partition> = std::collections::BTreeMap::new();
        loop {
            if let Err(e) = self.rebalance(&sharing, &units, &mut running).await {
                tracing::warn!(consumer = self.name, error = %polis_core::error::chain(&e), "sharing the partitions failed");
            }
            tokio::time::sleep(sharing.lease.ttl / 3).await;
        }
    }

    /// One round: announces this instance, renews what it holds (dropping
    /// what it lost), then gives back or takes partitions towards its share.
    async fn rebalance(
        self: &Arc<Self>,
        sharing: &Sharing,
        units: &[(usize, u32)],
        running: &mut std::collections::BTreeMap<usize, Partition>,
    ) -> Result<(), StoreError> {
        let LeaseOptions { owner, ttl } = sharing.lease;
        let members = format!("member:{}:", self.name);
        let me = format!("{members}{owner}");
        let held: Vec<(usize, Fence)> = running.iter().map(|(unit, p)| (*unit, p.fence.clone())).collect();
        let partitions = format!("partition:{}:", self.name);
        let (instances, relay, kept, taken_by_others) = self
            .store
            .transaction::<_, _, StoreError>(async move |tx| {
                let now = Utc::now();
                // Announce this instance (nothing is fenced by this lease).
                tx.acquire_lease(&me, owner, now, ttl).await?;
                let instances: Vec<Uuid> = tx.leases_held(&members, now).await?.into_iter().map(|(_, o)| o).collect();
                let relay = tx.leases_held(RELAY_LEASE, now).await?.into_iter().find(|(n, _)| n == RELAY_LEASE);
                let mut kept = Vec::with_capacity(held.len());
                for (unit, fence) in held {
                    if tx.hold_lease(&fence, now, ttl).await? {
                        kept.push(unit);
                    }
                }
                // Read without a lock: only free or expired ones are tried below.
                let others: Vec<String> = tx
                    .leases_held(&partitions, now)
                    .await?
                    .into_iter()
                    .filter(|(_, o)| *o != owner)
                    .map(|(n, _)| n)
                    .collect();
                Ok((instances, relay.map(|(_, o)| o), kept, others))
            })
            .await?;
        // Lost (taken after a pause) or ended: its reader stops, if it has not.
        running.retain(|unit, partition| kept.contains(unit) && !partition.task.is_finished());
        let share = share_of(units.len(), &instances, relay, owner);
        while running.len() > share {
            let Some((unit, partition)) = running.pop_last() else { break };
            let name = self.partition_lease(units[unit].0, units[unit].1);
            // Not a whole ttl: the other leases wait for this round's end.
            partition.stop(ttl / 3).await;
            self.store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease(&name, owner).await).await?;
            tracing::info!(
                consumer = self.name,
                lease = self.partition_lease(units[unit].0, units[unit].1),
                "partition handed back"
            );
        }
        if running.len() >= share {
            return Ok(());
        }
        let wanted = share - running.len();
        // Free or expired ones only, in one order for every instance: an
        // upsert on a row another instance holds would lock it.
        let candidates: Vec<(usize, String)> = (0..units.len())
            .filter(|unit| !running.contains_key(unit))
            .map(|unit| (unit, self.partition_lease(units[unit].0, units[unit].1)))
            .filter(|(_, name)| !taken_by_others.contains(name))
            .collect();
        let taken = self
            .store
            .transaction::<_, _, StoreError>(async move |tx| {
                let now = Utc::now();
                let mut taken = Vec::new();
                for (unit, name) in candidates {
                    if let Some(token) = tx.acquire_lease(&name, owner, now, ttl).await? {
                        taken.push((unit, Fence { name, owner, token }));
                        if taken.len() == wanted {
                            break;
                        }
                    }
                }
                Ok(taken)
            })
            .await?;
        for (unit, fence) in taken {
            let (route, partition) = units[unit];
            tracing::info!(consumer = self.name, lease = fence.name, token = fence.token, "partition taken");
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let reader = self.clone().read_partition(sharing, route, partition, (fence.clone(), ttl), stopped);
            running.insert(unit, Partition { fence, stop, task: tokio::spawn(reader) });
        }
        Ok(())
    }

    /// Reads one partition, one delivery at a time, as the holder of
    /// `fence`, until told to stop or the lease turns out lost.
    fn read_partition(
        self: Arc<Self>,
        sharing: &Sharing,
        route: usize,
        partition: u32,
        fence: (Fence, Duration),
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (bus, permits, progress) =
            (sharing.bus.clone(), sharing.permits.clone(), sharing.progress[route].1.clone());
        async move {
            let (topic, handler) = &self.routes[route];
            let mut subscription = loop {
                match bus.subscribe_partition(&self.name, topic, partition).await {
                    Ok(subscription) => break subscription,
                    Err(e) => {
                        progress.failed(&e);
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    next = subscription.next() => next,
                };
                match next {
                    Ok(delivery) => {
                        progress.ok();
                        let Ok(_permit) = permits.acquire().await else { return };
                        if self.process_fenced(handler, delivery, Some(&fence)).await == Outcome::NotOwner {
                            return;
                        }
                    }
                    Err(BusError::Closed) => return,
                    Err(e) => {
                        progress.failed(&e);
                        tracing::warn!(consumer = self.name, topic = %topic, partition, error = %polis_core::error::chain(&e), "partition subscription failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            // Handing the partition back. A message that had arrived and was
            // not started comes back once its acknowledgement wait runs out:
            // handing it back now (a nack) would have it redelivered at once
            // to the pull request this subscription still has open at the
            // broker, which nobody reads any more.
            drop(subscription);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_holder_takes_a_lighter_share_and_the_shares_cover_every_partition() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(share_of(40, &[a], Some(a), a), 40, "alone, it holds everything");
        assert_eq!(share_of(40, &[], None, a), 40);
        assert_eq!([share_of(40, &[a, b], None, a), share_of(40, &[a, b], None, b)], [20, 20]);
        // The relay held by an instance that does not consume: even shares.
        assert_eq!(share_of(40, &[a, b], Some(c), a), 20);
        assert_eq!([share_of(40, &[a, b], Some(a), a), share_of(40, &[a, b], Some(a), b)], [14, 27]);
        assert_eq!([share_of(8, &[a, b, c], Some(c), a), share_of(8, &[a, b, c], Some(c), c)], [4, 2]);
        for units in 1..=64 {
            for n in 1..=8 {
                let instances: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
                let shares: usize =
                    instances.iter().map(|me| share_of(units, &instances, Some(instances[0]), *me)).sum();
                assert!(shares >= units, "{units} partitions, {n} instances: shares {shares}");
                assert!(instances.iter().all(|me| share_of(units, &instances, Some(instances[0]), *me) <= units));
            }
        }
    }
}
