//! Closed-loop load: each client runs one operation after another, as fast
//! as the system under test answers, and every measured operation's latency
//! is kept (a few hundred thousand durations at most, so percentiles are exact).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use polis_core::stats::percentile;
use tokio::sync::Barrier;

/// One concurrent writer (or commander) of a benchmark.
#[async_trait]
pub(crate) trait Client: Send + 'static {
    /// Runs one operation; returns how many events it wrote.
    async fn op(&mut self) -> Result<u64>;
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plan {
    /// Unrecorded operations for `warmup`, then recorded ones for `measure`.
    Timed { warmup: Duration, measure: Duration },
    /// Each client runs `warmup` unrecorded operations, waits for the others,
    /// then runs `ops` recorded ones.
    Counted { warmup: u64, ops: u64 },
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measurement {
    pub(crate) ops: u64,
    pub(crate) events: u64,
    /// Events written including the warm-up (for per-event server counters).
    pub(crate) all_events: u64,
    /// From the start of the measured window to the last measured completion.
    pub(crate) elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
}

impl Measurement {
    pub(crate) fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0.5 = median), nearest-rank.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q).unwrap_or_default()
    }

    /// Adds another run's figures, as if both had been one run.
    pub(crate) fn merge(&mut self, other: Measurement) {
        self.ops += other.ops;
        self.events += other.events;
        self.all_events += other.all_events;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    pub(crate) fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    pub(crate) fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

struct ClientResult {
    ops: u64,
    events: u64,
    all_events: u64,
    latencies: Vec<Duration>,
    window_start: Instant,
    last_end: Instant,
}

/// Runs `clients` concurrently, one task each, under `plan`.
pub(crate) async fn run<C: Client>(clients: Vec<C>, plan: Plan) -> Result<Measurement> {
    let barrier = Arc::new(Barrier::new(clients.len()));
    let start = Instant::now();
    let tasks: Vec<_> =
        clients.into_iter().map(|client| tokio::spawn(drive(client, plan, start, barrier.clone()))).collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a client task panicked")??);
    }
    let window_start = results.iter().map(|r| r.window_start).min().unwrap_or(start);
    let last_end = results.iter().map(|r| r.last_end).max().unwrap_or(window_start);
    let mut latencies: Vec<Duration> = results.iter_mut().flat_map(|r| std::mem::take(&mut r.latencies)).collect();
    latencies.sort_unstable();
    Ok(Measurement {
        ops: results.iter().map(|r| r.ops).sum(),
        events: results.iter().map(|r| r.events).sum(),
        all_events: results.iter().map(|r| r.all_events).sum(),
        elapsed: last_end.saturating_duration_since(window_start).max(Duration::from_micros(1)),
        latencies,
    })
}

async fn drive<C: Client>(mut client: C, plan: Plan, start: Instant, barrier: Arc<Barrier>) -> Result<ClientResult> {
    let mut result =
        ClientResult { ops: 0, events: 0, all_events: 0, latencies: Vec::new(), window_start: start, last_end: start };
    match plan {
        Plan::Timed { warmup, measure } => {
            result.window_start = start + warmup;
            let end = result.window_start + measure;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let events = client.op().await?;
                result.all_events += events;
                if began >= result.window_start {
                    result.record(began, events);
                }
            }
        }
        Plan::Counted { warmup, ops } => {
            for _ in 0..warmup {
                result.all_events += client.op().await?;
            }
            barrier.wait().await;
            result.window_start = Instant::now();
            result.latencies.reserve(ops as usize);
            for _ in 0..ops {
                let began = Instant::now();
                let events = client.op().await?;
                result.all_events += events;
                result.record(began, events);
            }
        }
    }
    Ok(result)
}

impl ClientResult {
    fn record(&mut self, began: Instant, events: u64) {
        let now = Instant::now();
        self.ops += 1;
        self.events += events;
        self.latencies.push(now - began);
        self.last_end = now;
    }
}
