//! The outbox relay: publishes a service's outbox to a bus.
//!
//! One relay publishes a service's outbox at a time. It reads unpublished outbox entries in
//! position order (commit order per key), publishes them as one ordered
//! batch, and only then marks them published. A crash in between publishes
//! the batch again on restart; the bus drops the duplicates by message id, so
//! delivery is at least once and the order per key holds.
//!
//! **Pipelining.** The three calls of a batch (read, publish, mark) would
//! leave the database, this process and the broker idle two thirds of the
//! time each, so they overlap: while batch *k* publishes, batch *k+1* is read
//! (when batch *k* was full: a backlog is draining) and batch *k−1* is marked. Batches are still *published* one after
//! another, each only once the previous one is stored. The read of batch
//! *k+1* asks for the oldest unpublished entries *other than* those of
//! batches *k* and *k−1*, never for "entries after the last position read":
//! on PostgreSQL a lower position can commit after a higher one (different
//! keys), and a cursor would skip it for good. For one key nothing can be
//! skipped or overtaken: its positions are its commit order (ADR 0003), so an
//! entry visible to a read has every earlier entry of its key visible too,
//! and those are either in that read (older, so not cut by the limit) or in
//! flight ahead of it. When a publish fails, the batch read ahead is thrown
//! away and the relay starts again from the oldest unpublished entry.
//!
//! It wakes on the store's outbox hint (in-process on SQLite, LISTEN/NOTIFY on
//! PostgreSQL) and polls as a fallback. It also purges published entries,
//! inbox records and finished saga instances older than the retention
//! period, so tables stay bounded.
//!
//! **One instance at a time.** With [`RelayOptions::lease`] set, the relay
//! publishes only while it holds the service's `relay` lease (polis-core's
//! `lease` module); in the other instances of the service it stands by, and
//! takes over within the lease's time-to-live of the owner dying (at once
//! when the owner shut down cleanly). A publish is a call to the broker,
//! which no database transaction can fence, so the relay publishes a batch
//! only before its own conservative view of the lease runs out
//! ([`LeaseKeeper::valid_until`]); after that it renews first. A relay paused
//! in the middle of a publish (a stopped process) can, on waking, finish
//! sending the batch it held: only entries still unpublished when it read
//! them. Those the new owner sent already are copies, which the bus drops
//! by message id (past its de-duplication window, the consumers' inboxes
//! do), so nothing takes effect twice and each message's first delivery
//! keeps its key's order. It reads, marks or starts no further batch.
//!
//! Metrics: `polis_outbox_backlog` and `polis_outbox_oldest_age_seconds`
//! (gauges), `polis_outbox_commit_to_publish_seconds` (histogram),
//! `polis_outbox_published_total` and `polis_relay_failures_total` (counters),
//! each labelled with the service.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use polis_core::StoreError;
use polis_core::bus::{Bus, BusError};
use polis_core::lease::{LeaseKeeper, LeaseOptions, Release};
use polis_core::outbox::{OutboxEntry, TransactionalStore};
use tokio::sync::{Mutex, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::health::Progress;

/// Tuning for a [`Relay`].
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Entries published per batch.
    pub batch_size: usize,
    /// Fallback poll when no hint arrives.
    pub poll_interval: Duration,
    /// Back-off after a failure grows from `retry_min` to `retry_max`.
    pub retry_min: Duration,
    /// Longest back-off after repeated failures.
    pub retry_max: Duration,
    /// Published outbox entries, inbox records and finished saga instances
    /// older than this are deleted. Keep it longer than any redelivery can
    /// take, or a very late duplicate is no longer recognized, and longer
    /// than any participant can be late, or its late reply finds no saga to
    /// compensate it.
    pub retention: Duration,
    /// How often to purge and to refresh the backlog gauges.
    pub housekeeping_interval: Duration,
    /// Publish only while holding the service's [`RELAY_LEASE`] (module
    /// docs): set it wherever several instances of a service may run. `None`
    /// (the default) publishes unconditionally.
    pub lease: Option<LeaseOptions>,
}

/// The name of the relay's lease in the service's database.
pub const RELAY_LEASE: &str = "relay";

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            housekeeping_interval: Duration::from_secs(10),
            lease: None,
        }
    }
}

/// Why one relay step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Reading unpublished entries or marking published ones failed.
    #[error("reading or updating the outbox failed")]
    Store(#[from] StoreError),
    /// The bus did not store the batch; it is published again on the next step.
    #[error("publishing to the bus failed")]
    Bus(#[from] BusError),
    /// A read or mark running beside a publish panicked or was cancelled.
    #[error("a relay task failed")]
    Task(#[from] JoinError),
    /// The relay's view of its lease ran out before it could publish the
    /// batch; it renews (or stands by) and reads again.
    #[error("the relay's lease must be renewed before it publishes")]
    LeaseExpired,
}

/// Publishes one service's outbox to a bus.
#[derive(Debug)]
pub struct Relay<S, B: ?Sized> {
    store: Arc<S>,
    bus: Arc<B>,
    options: RelayOptions,
    pipeline: Mutex<Pipeline>,
    progress: Progress,
}

/// A read of unpublished entries running as a task of its own.
type Read = JoinHandle<Result<Vec<OutboxEntry>, StoreError>>;
/// A mark running as a task of its own, with the (sorted) positions it marks.
type Mark = (Vec<u64>, JoinHandle<Result<(), StoreError>>);

/// What runs beside the batch being published.
#[derive(Debug, Default)]
struct Pipeline {
    /// The read of the next batch, started when the current one was taken.
    next: Option<Read>,
    /// The last published batch and the task marking it.
    marking: Option<Mark>,
    /// The store's outbox hint, seen as of the start of the latest read: a
    /// hint after that read began may be for an entry it missed.
    wakeups: Option<watch::Receiver<u64>>,
}

impl Pipeline {
    /// Forgets the batch read ahead; a mark in flight finishes on its own.
    fn reset(&mut self) {
        if let Some(next) = self.next.take() {
            next.abort();
        }
        self.marking = None;
    }
}

/// A running relay; stops when dropped, or when
/// [`shutdown`](RelayHandle::shutdown), which waits for it to be gone.
#[derive(Debug)]
pub struct RelayHandle(JoinHandle<()>, Progress, Release);

impl RelayHandle {
    /// Whether the relay is publishing (or has nothing to publish), for a
    /// readiness check ([`Progress::check`]).
    pub fn progress(&self) -> Progress {
        self.1.clone()
    }

    /// Stops the relay and returns once its task has ended. A batch being
    /// published is cut short: its entries stay unpublished in the outbox
    /// and go out again later (the bus drops what had already arrived).
    ///
    /// With a lease, lets it go afterwards: another instance takes over at
    /// once rather than when it expires.
    pub async fn shutdown(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await; // cancelled at its next await
        self.2.run().await;
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: TransactionalStore, B: Bus + ?Sized> Relay<S, B> {
    /// A relay from `store`'s outbox to `bus`; it does nothing until
    /// [`step`](Self::step)ped or spawned.
    pub fn new(store: Arc<S>, bus: Arc<B>, options: RelayOptions) -> Self {
        Self { store, bus, options, pipeline: Mutex::default(), progress: Progress::default() }
    }

    /// Publishes the next batch; returns how many entries it published.
    ///
    /// While the batch publishes, the next one is read and the previous one
    /// marked published (see the module docs). `Ok(0)` means the outbox had
    /// nothing left and every entry published so far is marked. After an
    /// error the next step starts again from the oldest unpublished entry;
    /// whatever was published and not yet marked goes out again, and the bus
    /// drops it as a duplicate.
    pub async fn step(&self) -> Result<usize, RelayError> {
        self.step_until(None).await
    }

    /// [`step`](Self::step), publishing nothing at or after `deadline`.
    async fn step_until(&self, deadline: Option<Instant>) -> Result<usize, RelayError> {
        let mut pipeline = self.pipeline.lock().await;
        let result = self.advance(&mut pipeline, deadline).await;
        if result.is_err() {
            pipeline.reset();
        }
        result
    }

    async fn advance(&self, pipeline: &mut Pipeline, deadline: Option<Instant>) -> Result<usize, RelayError> {
        let entries = match pipeline.next.take() {
            Some(next) => next.await??,
            None => {
                let in_flight = pipeline.marking.as_ref().map(|(positions, _)| positions.clone()).unwrap_or_default();
                self.read(pipeline, in_flight).await??
            }
        };
        if entries.is_empty() {
            if let Some((_, mark)) = pipeline.marking.take() {
                mark.await??;
            }
            return Ok(0);
        }
        let count = entries.len();
        let mut positions = Vec::with_capacity(count);
        let mut created = Vec::with_capacity(count);
        let messages: Vec<_> = entries
            .into_iter()
            .map(|e| {
                positions.push(e.position);
                created.push(e.created_at);
                e.message
            })
            .collect();
        positions.sort_unstable();

        // Read ahead, leaving out this batch and the one still being marked,
        // while draining a backlog: after a batch that was not full the outbox
        // is (nearly) empty, and a read started now would miss what commits
        // during the publish, holding it back a whole step. The next step
        // reads afresh instead.
        if count >= self.options.batch_size.max(1) {
            let mut in_flight = positions.clone();
            if let Some((marking, _)) = &pipeline.marking {
                in_flight.extend_from_slice(marking);
                in_flight.sort_unstable();
            }
            pipeline.next = Some(self.read(pipeline, in_flight));
        }

        // On failure nothing of this batch is marked: it is published again,
        // and the bus drops what it already stored (de-duplication by message
        // id). A message the bus refuses outright (over its size limit, say)
        // blocks the relay rather than being skipped: skipping would break
        // "nothing lost" and the key's order; the failure metric and log make
        // it loud.
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(RelayError::LeaseExpired);
        }
        self.bus.publish(&messages).await?;
        drop(messages);
        let service = self.store.service().to_owned();
        let now = Utc::now();
        let histogram = metrics::histogram!("polis_outbox_commit_to_publish_seconds", "service" => service.clone());
        for created_at in created {
            histogram.record((now - created_at).to_std().unwrap_or_default().as_secs_f64());
        }
        metrics::counter!("polis_outbox_published_total", "service" => service).increment(count as u64);

        // The previous batch's mark ran during the publish; this one's runs
        // during the next.
        if let Some((_, mark)) = pipeline.marking.take() {
            mark.await??;
        }
        let store = Arc::clone(&self.store);
        let marked = positions.clone();
        let mark = tokio::spawn(async move { store.mark_published(&marked).await });
        pipeline.marking = Some((positions, mark));
        Ok(count)
    }

    /// Starts reading the oldest unpublished entries not `in_flight` (sorted).
    fn read(&self, pipeline: &mut Pipeline, in_flight: Vec<u64>) -> Read {
        let wakeups = pipeline.wakeups.get_or_insert_with(|| self.store.outbox_wakeups());
        wakeups.borrow_and_update();
        let store = Arc::clone(&self.store);
        let max = self.options.batch_size.max(1);
        tokio::spawn(async move { store.unpublished_excluding(max, &in_flight).await })
    }

    /// Runs until the task is aborted (or the handle dropped).
    pub async fn run(self) {
        let _ended = self.progress.on_drop("the relay's task ended");
        let mut backoff = self.options.retry_min;
        let mut last_housekeeping = tokio::time::Instant::now();
        let mut keeper = self.options.lease.map(|lease| LeaseKeeper::new(self.store.clone(), RELAY_LEASE, lease));
        loop {
            let deadline = match &mut keeper {
                None => None,
                Some(keeper) => match keeper.keep().await {
                    Ok(Some(_)) => keeper.valid_until(),
                    Ok(None) => {
                        // Another instance publishes: stand by, ready to take over.
                        self.pipeline.lock().await.reset();
                        self.progress.ok();
                        tokio::time::sleep(keeper.ttl() / 3).await;
                        continue;
                    }
                    Err(e) => {
                        let e = RelayError::Store(e);
                        self.progress.failed(&e);
                        tracing::warn!(service = self.store.service(), error = %polis_core::error::chain(&e), retry_in = ?backoff, "relay lease check failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.options.retry_max);
                        continue;
                    }
                },
            };
            // Also while draining a backlog or while the bus is down: that is
            // when the gauges matter most.
            if last_housekeeping.elapsed() >= self.options.housekeeping_interval {
                self.housekeeping().await;
                last_housekeeping = tokio::time::Instant::now();
            }
            match self.step_until(deadline).await {
                // Renew (or stand by) before publishing again.
                Err(RelayError::LeaseExpired) => continue,
                // A batch read ahead may be waiting: keep going until a read
                // finds nothing.
                Ok(n) if n > 0 => {
                    self.progress.ok();
                    backoff = self.options.retry_min;
                    continue;
                }
                Ok(_) => {
                    self.progress.ok();
                    backoff = self.options.retry_min;
                }
                Err(e) => {
                    self.progress.failed(&e);
                    metrics::counter!("polis_relay_failures_total", "service" => self.store.service().to_owned())
                        .increment(1);
                    tracing::warn!(service = self.store.service(), error = %polis_core::error::chain(&e), retry_in = ?backoff, "relay step failed");
                    // Never so long that a lease held meanwhile runs out.
                    tokio::time::sleep(keeper.as_ref().map_or(backoff, |k| backoff.min(k.ttl() / 3))).await;
                    backoff = (backoff * 2).min(self.options.retry_max);
                    continue;
                }
            }
            // Seen as of the read that found nothing: any hint since then wakes us.
            let mut wakeups = match self.pipeline.lock().await.wakeups.clone() {
                Some(wakeups) => wakeups,
                None => self.store.outbox_wakeups(),
            };
            let until_housekeeping = self.options.housekeeping_interval.saturating_sub(last_housekeeping.elapsed());
            // A lease is renewed on time even while nothing happens.
            let until_renewal = keeper.as_ref().map_or(Duration::MAX, |keeper| keeper.ttl() / 3);
            let pause = self.options.poll_interval.min(until_housekeeping).min(until_renewal);
            tokio::select! {
                _ = wakeups.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Starts the relay on the runtime.
    pub fn spawn(self) -> RelayHandle
    where
        S: 'static,
        B: 'static,
    {
        let progress = self.progress.clone();
        let release = match self.options.lease {
            Some(lease) => Release::of(self.store.clone(), RELAY_LEASE, lease.owner),
            None => Release::none(),
        };
        RelayHandle(tokio::spawn(self.run()), progress, release)
    }

    async fn housekeeping(&self) {
        let service = self.store.service().to_owned();
        let retention = chrono::Duration::from_std(self.options.retention).unwrap_or(chrono::Duration::days(7));
        match self.store.purge(Utc::now() - retention).await {
            Ok(p) if p.outbox + p.inbox + p.sagas > 0 => {
                tracing::debug!(
                    service,
                    outbox = p.outbox,
                    inbox = p.inbox,
                    sagas = p.sagas,
                    "purged old outbox and inbox rows and finished sagas"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(service, error = %polis_core::error::chain(&e), "purge failed"),
        }
        match self.store.outbox_backlog().await {
            Ok(backlog) => {
                let age = backlog.oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()).unwrap_or_default();
                metrics::gauge!("polis_outbox_backlog", "service" => service.clone()).set(backlog.unpublished as f64);
                metrics::gauge!("polis_outbox_oldest_age_seconds", "service" => service).set(age.as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(service, error = %polis_core::error::chain(&e), "reading the outbox backlog failed")
            }
        }
    }
}
