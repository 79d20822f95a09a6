//! The scheduler: releases a service's scheduled messages when they are due.
//!
//! A transaction schedules a message with a due time
//! ([`Transaction::schedule`]); the
//! message waits in the store, across restarts, until this task moves it into
//! the outbox with [`TransactionalStore::release_due`]. From there the relay
//! publishes it like any sent message. That makes a durable deadline: "if
//! there is no reply within 5 s, time out" still fires after a crash, as soon
//! as a scheduler runs again.
//!
//! The loop releases what is due, then sleeps until the earliest due time or
//! for the poll interval, whichever comes first. The poll also bounds how late
//! a message scheduled *while* the scheduler sleeps (possibly due earlier than
//! what it is waiting for) is noticed: **a deadline fires within about one
//! poll interval of its due time** (plus the relay's and the consumer's own
//! latency), never before it. Store failures are logged and retried with
//! back-off; nothing is lost, deadlines just fire late.
//!
//! Running a scheduler in several processes of one service is safe: each due
//! message is released by exactly one of them. With
//! [`SchedulerOptions::lease`] set, only the holder of the service's
//! `scheduler` lease (polis-core's `lease` module) releases anything, and
//! every release is fenced: the transaction that moves due messages into the
//! outbox renews the lease with its token and releases nothing if that
//! tenure is over. A scheduler paused past its lease (a stopped process)
//! cannot fire a deadline on waking; another instance has taken over within
//! the lease's time-to-live.
//!
//! Metrics: `polis_scheduled_released_total` and `polis_scheduler_failures_total`
//! (counters), `polis_scheduled_pending` (gauge), each labelled with the service.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::StoreError;
use polis_core::lease::{Fence, LeaseKeeper, LeaseOptions, Release};
use polis_core::outbox::{Transaction, TransactionalStore};
use tokio::task::JoinHandle;

/// Tuning for a [`Scheduler`].
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Messages released per transaction.
    pub batch_size: usize,
    /// Longest sleep between two looks at the schedule; bounds how late a
    /// deadline fires.
    pub poll_interval: Duration,
    /// Back-off after a failure grows from `retry_min` to `retry_max`.
    pub retry_min: Duration,
    /// Longest back-off after repeated failures.
    pub retry_max: Duration,
    /// How often to refresh the pending gauge (a count over the schedule).
    pub gauge_interval: Duration,
    /// Release only while holding the service's [`SCHEDULER_LEASE`], every
    /// release fenced by it (module docs). `None` (the default): release
    /// unconditionally.
    pub lease: Option<LeaseOptions>,
}

/// The name of the scheduler's lease in the service's database.
pub const SCHEDULER_LEASE: &str = "scheduler";

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            gauge_interval: Duration::from_secs(10),
            lease: None,
        }
    }
}

/// Releases one service's scheduled messages into its outbox when they are due.
#[derive(Debug)]
pub struct Scheduler<S> {
    store: Arc<S>,
    options: SchedulerOptions,
}

/// A running scheduler; stops when dropped, or when
/// [`shutdown`](SchedulerHandle::shutdown), which waits for it to be gone.
#[derive(Debug)]
pub struct SchedulerHandle(JoinHandle<()>, Release);

impl SchedulerHandle {
    /// Stops the scheduler and returns once its task has ended. A release in
    /// progress is rolled back; its messages stay scheduled. With a lease,
    /// lets it go afterwards: another instance takes over at once.
    pub async fn shutdown(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await; // cancelled at its next await
        self.1.run().await;
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: TransactionalStore> Scheduler<S> {
    /// A scheduler for `store`'s schedule; it does nothing until
    /// [`step`](Self::step)ped or spawned.
    pub fn new(store: Arc<S>, options: SchedulerOptions) -> Self {
        Self { store, options }
    }

    /// Releases one batch of messages due at `now`; returns how many.
    pub async fn step(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        Ok(self.step_fenced(now, None).await?.unwrap_or_default())
    }

    /// [`step`](Self::step) as the tenure `fence` of the scheduler's lease:
    /// `None` (nothing released) if that tenure is over.
    async fn step_fenced(
        &self,
        now: DateTime<Utc>,
        fence: Option<(Fence, Duration)>,
    ) -> Result<Option<usize>, StoreError> {
        let max = self.options.batch_size.max(1);
        let released = match fence {
            None => self.store.release_due(now, max).await?,
            Some((fence, ttl)) => {
                let released = self
                    .store
                    .transaction::<_, _, StoreError>(async move |tx| {
                        if !tx.hold_lease(&fence, Utc::now(), ttl).await? {
                            return Ok(None);
                        }
                        tx.release_due(now, max).await.map(Some)
                    })
                    .await?;
                let Some(released) = released else { return Ok(None) };
                released
            }
        };
        if released > 0 {
            metrics::counter!("polis_scheduled_released_total", "service" => self.store.service().to_owned())
                .increment(released as u64);
        }
        Ok(Some(released))
    }

    /// Runs until the task is aborted (or the handle dropped).
    pub async fn run(self) {
        let batch = self.options.batch_size.max(1);
        let mut backoff = self.options.retry_min;
        let mut last_gauge: Option<tokio::time::Instant> = None;
        let mut keeper = self.options.lease.map(|lease| LeaseKeeper::new(self.store.clone(), SCHEDULER_LEASE, lease));
        loop {
            let fence = match &mut keeper {
                None => None,
                Some(keeper) => match keeper.keep().await {
                    Ok(Some(fence)) => Some((fence, keeper.ttl())),
                    Ok(None) => {
                        // Another instance releases: stand by, ready to take over.
                        tokio::time::sleep(keeper.ttl() / 3).await;
                        continue;
                    }
                    Err(e) => {
                        self.failed(&e, backoff, "checking the scheduler's lease failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.options.retry_max);
                        continue;
                    }
                },
            };
            if last_gauge.is_none_or(|at| at.elapsed() >= self.options.gauge_interval) {
                self.refresh_gauge().await;
                last_gauge = Some(tokio::time::Instant::now());
            }
            let now = Utc::now();
            match self.step_fenced(now, fence).await {
                Ok(None) => {
                    // The lease was lost between its check and the release.
                    if let Some(keeper) = &mut keeper {
                        keeper.lost();
                    }
                    continue;
                }
                Ok(Some(n)) if n >= batch => {
                    backoff = self.options.retry_min;
                    continue;
                }
                Ok(Some(_)) => backoff = self.options.retry_min,
                Err(e) => {
                    self.failed(&e, backoff, "releasing due messages failed");
                    // Never so long that the lease held meanwhile runs out.
                    tokio::time::sleep(keeper.as_ref().map_or(backoff, |k| backoff.min(k.ttl() / 3))).await;
                    backoff = (backoff * 2).min(self.options.retry_max);
                    continue;
                }
            }
            let pause = match self.store.next_due().await {
                // Due after this round's `now`: sleep until then (or the poll).
                Ok(Some(due)) if due > now => {
                    (due - Utc::now()).to_std().unwrap_or_default().min(self.options.poll_interval)
                }
                // Due but not released: another process holds it right now.
                // Waiting a poll avoids spinning on it.
                Ok(_) => self.options.poll_interval,
                Err(e) => {
                    self.failed(&e, self.options.poll_interval, "reading the next due time failed");
                    self.options.poll_interval
                }
            };
            // A lease is renewed on time even while nothing is due.
            let pause = keeper.as_ref().map_or(pause, |keeper| pause.min(keeper.ttl() / 3));
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts the scheduler on the runtime.
    pub fn spawn(self) -> SchedulerHandle
    where
        S: 'static,
    {
        let release = match self.options.lease {
            Some(lease) => Release::of(self.store.clone(), SCHEDULER_LEASE, lease.owner),
            None => Release::none(),
        };
        SchedulerHandle(tokio::spawn(self.run()), release)
    }

    fn failed(&self, error: &StoreError, retry_in: Duration, what: &'static str) {
        let service = self.store.service();
        metrics::counter!("polis_scheduler_failures_total", "service" => service.to_owned()).increment(1);
        tracing::warn!(service, error = %polis_core::error::chain(&error), ?retry_in, "{what}");
    }

    async fn refresh_gauge(&self) {
        let service = self.store.service().to_owned();
        match self.store.scheduled_count().await {
            Ok(n) => metrics::gauge!("polis_scheduled_pending", "service" => service).set(n as f64),
            Err(e) => {
                tracing::warn!(service, error = %polis_core::error::chain(&e), "counting scheduled messages failed")
            }
        }
    }
}
