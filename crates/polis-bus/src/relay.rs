//! The outbox relay: publishes a service's outbox to a bus.
//!
//! One relay runs per service. It reads unpublished outbox entries in
//! position order (commit order per key), publishes them as one ordered
//! batch, and only then marks them published. A crash in between publishes
//! the batch again on restart; the bus drops the duplicates by message id, so
//! delivery is at least once and the order per key holds.
//!
//! It wakes on the store's outbox hint (in-process on SQLite, LISTEN/NOTIFY on
//! PostgreSQL) and polls as a fallback. It also purges published entries and
//! inbox records older than the retention period, so tables stay bounded.
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
use polis_core::outbox::TransactionalStore;
use tokio::task::JoinHandle;

/// Tuning for a [`Relay`].
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Entries published per batch.
    pub batch_size: usize,
    /// Fallback poll when no hint arrives.
    pub poll_interval: Duration,
    /// Back-off after a failure grows from `retry_min` to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Published outbox entries and inbox records older than this are deleted.
    /// Keep it longer than any redelivery can take, or a very late duplicate
    /// is no longer recognized.
    pub retention: Duration,
    /// How often to purge and to refresh the backlog gauges.
    pub housekeeping_interval: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            housekeeping_interval: Duration::from_secs(10),
        }
    }
}

/// Why one relay step failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or updating the outbox failed")]
    Store(#[from] StoreError),
    #[error("publishing to the bus failed")]
    Bus(#[from] BusError),
}

/// Publishes one service's outbox to a bus.
#[derive(Debug)]
pub struct Relay<S, B: ?Sized> {
    store: Arc<S>,
    bus: Arc<B>,
    options: RelayOptions,
}

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct RelayHandle(JoinHandle<()>);

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: TransactionalStore, B: Bus + ?Sized> Relay<S, B> {
    pub fn new(store: Arc<S>, bus: Arc<B>, options: RelayOptions) -> Self {
        Self { store, bus, options }
    }

    /// Publishes one batch; returns how many entries it published.
    pub async fn step(&self) -> Result<usize, RelayError> {
        let entries = self.store.unpublished(self.options.batch_size.max(1)).await?;
        if entries.is_empty() {
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
        // On failure nothing is marked: the whole batch is published again, and
        // the bus drops what it already stored (de-duplication by message id).
        // A message the bus refuses outright (over its size limit, say) blocks
        // the relay rather than being skipped: skipping would break "nothing
        // lost" and the key's order; the failure metric and log make it loud.
        self.bus.publish(&messages).await?;
        self.store.mark_published(&positions).await?;
        let service = self.store.service().to_owned();
        let now = Utc::now();
        let histogram = metrics::histogram!("polis_outbox_commit_to_publish_seconds", "service" => service.clone());
        for created_at in created {
            histogram.record((now - created_at).to_std().unwrap_or_default().as_secs_f64());
        }
        metrics::counter!("polis_outbox_published_total", "service" => service).increment(count as u64);
        Ok(count)
    }

    /// Runs until the task is aborted (or the handle dropped).
    pub async fn run(self) {
        let mut wakeups = self.store.outbox_wakeups();
        let mut backoff = self.options.retry_min;
        let mut last_housekeeping = tokio::time::Instant::now();
        loop {
            // Also while draining a backlog or while the bus is down: that is
            // when the gauges matter most.
            if last_housekeeping.elapsed() >= self.options.housekeeping_interval {
                self.housekeeping().await;
                last_housekeeping = tokio::time::Instant::now();
            }
            wakeups.borrow_and_update();
            match self.step().await {
                Ok(n) if n >= self.options.batch_size.max(1) => {
                    backoff = self.options.retry_min;
                    continue;
                }
                Ok(_) => backoff = self.options.retry_min,
                Err(e) => {
                    metrics::counter!("polis_relay_failures_total", "service" => self.store.service().to_owned())
                        .increment(1);
                    tracing::warn!(service = self.store.service(), error = %e, retry_in = ?backoff, "relay step failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.retry_max);
                    continue;
                }
            }
            let until_housekeeping = self.options.housekeeping_interval.saturating_sub(last_housekeeping.elapsed());
            tokio::select! {
                _ = wakeups.changed() => {}
                () = tokio::time::sleep(self.options.poll_interval.min(until_housekeeping)) => {}
            }
        }
    }

    /// Starts the relay on the runtime.
    pub fn spawn(self) -> RelayHandle
    where
        S: 'static,
        B: 'static,
    {
        RelayHandle(tokio::spawn(self.run()))
    }

    async fn housekeeping(&self) {
        let service = self.store.service().to_owned();
        let retention = chrono::Duration::from_std(self.options.retention).unwrap_or(chrono::Duration::days(7));
        match self.store.purge(Utc::now() - retention).await {
            Ok(p) if p.outbox + p.inbox > 0 => {
                tracing::debug!(service, outbox = p.outbox, inbox = p.inbox, "purged old outbox and inbox rows");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(service, error = %e, "purge failed"),
        }
        match self.store.outbox_backlog().await {
            Ok(backlog) => {
                let age = backlog.oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()).unwrap_or_default();
                metrics::gauge!("polis_outbox_backlog", "service" => service.clone()).set(backlog.unpublished as f64);
                metrics::gauge!("polis_outbox_oldest_age_seconds", "service" => service).set(age.as_secs_f64());
            }
            Err(e) => tracing::warn!(service, error = %e, "reading the outbox backlog failed"),
        }
    }
}
