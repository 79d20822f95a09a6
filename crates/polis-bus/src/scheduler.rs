//! The scheduler: releases a service's scheduled messages when they are due.
//!
//! A transaction schedules a message with a due time
//! ([`Transaction::schedule`](polis_core::Transaction::schedule)); the
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
//! message is released by exactly one of them.
//!
//! Metrics: `polis_scheduled_released_total` and `polis_scheduler_failures_total`
//! (counters), `polis_scheduled_pending` (gauge), each labelled with the service.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::StoreError;
use polis_core::outbox::TransactionalStore;
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
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            gauge_interval: Duration::from_secs(10),
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
pub struct SchedulerHandle(JoinHandle<()>);

impl SchedulerHandle {
    /// Stops the scheduler and returns once its task has ended. A release in
    /// progress is rolled back; its messages stay scheduled.
    pub async fn shutdown(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await; // cancelled at its next await
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
        let released = self.store.release_due(now, self.options.batch_size.max(1)).await?;
        if released > 0 {
            metrics::counter!("polis_scheduled_released_total", "service" => self.store.service().to_owned())
                .increment(released as u64);
        }
        Ok(released)
    }

    /// Runs until the task is aborted (or the handle dropped).
    pub async fn run(self) {
        let batch = self.options.batch_size.max(1);
        let mut backoff = self.options.retry_min;
        let mut last_gauge: Option<tokio::time::Instant> = None;
        loop {
            if last_gauge.is_none_or(|at| at.elapsed() >= self.options.gauge_interval) {
                self.refresh_gauge().await;
                last_gauge = Some(tokio::time::Instant::now());
            }
            let now = Utc::now();
            match self.step(now).await {
                Ok(n) if n >= batch => {
                    backoff = self.options.retry_min;
                    continue;
                }
                Ok(_) => backoff = self.options.retry_min,
                Err(e) => {
                    self.failed(&e, backoff, "releasing due messages failed");
                    tokio::time::sleep(backoff).await;
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
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts the scheduler on the runtime.
    pub fn spawn(self) -> SchedulerHandle
    where
        S: 'static,
    {
        SchedulerHandle(tokio::spawn(self.run()))
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
