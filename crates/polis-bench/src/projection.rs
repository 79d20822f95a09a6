//! `projection`: a `Projector` catching up from zero on a log of N events,
//! with `batch_size` 1 (a transaction per event) and 500, on SQLite and
//! PostgreSQL. The baseline is a plain scan of the same log: `read_all` in a
//! loop, with no writes, 500 and 1 event per read.
//!
//! The projection is a small read model, one upsert per event (entries and
//! amount per sku, 10,000 skus). Each run is a new projection (its own name
//! and tables) over the same log, so the log is written once per backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use async_trait::async_trait;
use polis_core::stats::percentile;
use polis_core::{EventStore, Generation, Projection, RecordedEvent, StoreError};
use polis_projection::{ProjectionStatus, Projector, ProjectorOptions};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{SqliteEventStore, SqliteOptions};

use crate::Options;
use crate::machine::{ProcessCosts, ProcessCounters};
use crate::pg::Postgres;
use crate::report::{Section, Table, latency, rate, ratio};

/// Events per read in the scan baseline (and the projector's default batch).
const SCAN_BATCH: usize = 500;
/// How long a catch-up may take before the run is given up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// One run, summed over rounds.
#[derive(Debug, Default)]
struct Run {
    events: u64,
    elapsed: Duration,
    /// Time from one batch's (or read's) start to the next one's, sorted.
    batches: Vec<Duration>,
    costs: ProcessCosts,
}

impl Run {
    fn add(&mut self, events: u64, elapsed: Duration, mut batches: Vec<Duration>, costs: ProcessCosts) {
        self.events += events;
        self.elapsed += elapsed;
        self.batches.append(&mut batches);
        self.batches.sort_unstable();
        self.costs.add(costs);
    }

    fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> Duration {
        percentile(&self.batches, q).unwrap_or_default()
    }
}

pub(crate) async fn run(pg: &Postgres, options: &Options) -> Result<Section> {
    let events = options.projection_events;
    let sizes = options.batch_sizes.clone();
    ensure!(!sizes.is_empty() && sizes.iter().all(|&b| b > 0), "--batch-sizes needs positive sizes");
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{events} events of ~200 bytes per backend (appends of 1000 over 1000 streams), then, {}: a scan with `read_all` ({SCAN_BATCH} and 1 events per read, no writes), and a \
         `Projector` catching up from zero with `batch_size` {}, each time a new projection over the same log. The \
         projection upserts one row per event (entries and amount per sku, 10,000 skus); a batch is one \
         transaction that renews the lease, applies the events and moves the checkpoint. A run ends when the \
         generation is live at the head. \"Per batch\" is the time from one batch's start (a read's, for the \
         scans) to the next one's: read, transaction, commit. CPU is this process's (the projector and, for \
         SQLite, the database); PostgreSQL's server CPU is not in it.\n",
        match options.rounds() {
            1 => "in one round".to_owned(),
            n => format!("in {n} rounds that alternate the runs"),
        },
        sizes.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" and "),
    );

    eprintln!("projection: PostgreSQL, writing {events} events…");
    let db = pg.database("projection").await?;
    let store = Arc::new(pg.polis_store(&db, 8).await?);
    crate::memory::fill(&store, events).await?;
    let runs = backend(store.clone(), "PostgreSQL", &sizes, options).await?;
    let _ = writeln!(body, "### PostgreSQL\n\n{}", table(&runs, &sizes));
    store.pool().close().await;

    eprintln!("projection: SQLite, writing {events} events…");
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a directory for the sqlite file")?;
    let store = SqliteEventStore::open(dir.path().join("projection.db"), SqliteOptions::new("bench"))
        .await
        .context("opening the polis store")?;
    let store = Arc::new(store);
    crate::memory::fill(&store, events).await?;
    let runs = backend(store, "SQLite", &sizes, options).await?;
    let _ = writeln!(body, "### SQLite\n\n{}", table(&runs, &sizes));

    Ok(Section { title: "projection".into(), body, checks: Vec::new() })
}

/// The runs on one backend: the two scans, then one per batch size.
async fn backend<S>(store: Arc<S>, name: &str, sizes: &[usize], options: &Options) -> Result<Vec<Run>>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let head = store.head_position().await.context("reading the head")?;
    let mut runs: Vec<Run> = (0..2 + sizes.len()).map(|_| Run::default()).collect();
    for round in 0..options.rounds() {
        for (i, per_read) in [SCAN_BATCH, 1].into_iter().enumerate() {
            eprintln!("projection round {}: {name}, read_all scan, {per_read} per read…", round + 1);
            let before = ProcessCounters::read();
            let (events, elapsed, reads) = scan(&*store, per_read).await?;
            runs[i].add(events, elapsed, reads, ProcessCounters::read().since(&before, events));
        }
        for (i, &size) in sizes.iter().enumerate() {
            eprintln!("projection round {}: {name}, Projector, batch_size {size}…", round + 1);
            let before = ProcessCounters::read();
            let (elapsed, batches) = catch_up(store.clone(), head, size, &format!("r{round}_b{size}")).await?;
            let events = head;
            runs[2 + i].add(events, elapsed, batches, ProcessCounters::read().since(&before, events));
        }
    }
    Ok(runs)
}

/// Reads the whole log, `per_read` events at a time.
async fn scan<S: EventStore>(store: &S, per_read: usize) -> Result<(u64, Duration, Vec<Duration>)> {
    let mut reads = Vec::new();
    let (mut after, mut events) = (0, 0);
    let started = Instant::now();
    loop {
        let read_started = Instant::now();
        let batch = store.read_all(after, per_read).await.context("read_all")?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        events += batch.len() as u64;
        reads.push(read_started.elapsed());
    }
    Ok((events, started.elapsed(), reads))
}

/// Runs a new projection from zero until it is live at `head`: the time it
/// took, and the time between batch starts.
async fn catch_up<S>(store: Arc<S>, head: u64, batch_size: usize, label: &str) -> Result<(Duration, Vec<Duration>)>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let name = format!("by_sku_{label}");
    let projection = BySku::new(&name, batch_size);
    let (starts, applied) = (projection.starts.clone(), projection.applied.clone());
    let mut options = ProjectorOptions::default();
    options.batch_size = batch_size;
    let started = Instant::now();
    let handle = Projector::new(store, options).with(projection).spawn();
    let mut status = handle.subscribe();
    let caught_up = |all: &BTreeMap<String, ProjectionStatus>| {
        all.get(&name).and_then(|s| s.live.as_ref()).is_some_and(|g| g.position >= head)
    };
    let live = matches!(tokio::time::timeout(CATCH_UP_LIMIT, status.wait_for(caught_up)).await, Ok(Ok(_)));
    let elapsed = started.elapsed();
    let error = status.borrow().get(&name).and_then(|s| s.error.clone());
    handle.shutdown().await;
    ensure!(live, "projection {name} did not catch up (last error: {error:?})");
    let applied = applied.load(Ordering::SeqCst);
    ensure!(applied == head, "projection {name} applied {applied} events, the log holds {head}");
    let starts = std::mem::take(&mut *starts.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((elapsed, starts.windows(2).map(|w| w[1] - w[0]).collect()))
}

/// Entries and amount per sku; notes when each batch starts (every
/// `batch_size`-th event: the log has nothing it skips, and no batch fails).
struct BySku {
    name: String,
    table: [&'static str; 1],
    batch_size: u64,
    applied: Arc<AtomicU64>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl BySku {
    fn new(name: &str, batch_size: usize) -> Self {
        // Table names are static in the Projection trait; a few runs leak a few bytes.
        let table: &'static str = Box::leak(name.to_owned().into_boxed_str());
        Self {
            name: name.to_owned(),
            table: [table],
            batch_size: batch_size as u64,
            applied: Arc::default(),
            starts: Arc::default(),
        }
    }
}

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for BySku {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        &self.table
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (sku TEXT PRIMARY KEY, entries BIGINT NOT NULL, amount_cents BIGINT NOT NULL)",
            generation.table(self.table[0])
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        if self.applied.fetch_add(1, Ordering::SeqCst).is_multiple_of(self.batch_size) {
            self.starts.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
        }
        let sku = event.data["sku"].as_str().unwrap_or_default();
        let amount = event.data["amount_cents"].as_i64().unwrap_or_default();
        let table = generation.table(self.table[0]);
        tx.execute(
            &format!(
                "INSERT INTO {table} (sku, entries, amount_cents) VALUES ($1, 1, $2) ON CONFLICT (sku) DO UPDATE \
                 SET entries = {table}.entries + 1, amount_cents = {table}.amount_cents + excluded.amount_cents"
            ),
            args![sku, amount],
        )
        .await?;
        Ok(())
    }
}

fn table(runs: &[Run], sizes: &[usize]) -> Table {
    let mut table = Table::new(["run", "events/s", "per batch p50", "per batch p99", "batches timed", "CPU/event"]);
    let mut labels = vec![
        format!("baseline: read_all scan, {SCAN_BATCH} per read"),
        "baseline: read_all scan, 1 per read".to_owned(),
    ];
    labels.extend(sizes.iter().map(|b| format!("polis: Projector, batch_size {b}")));
    for (label, run) in labels.iter().zip(runs) {
        let [cpu, _, _] = run.costs.per_event();
        table.row([
            label.clone(),
            rate(run.per_sec()),
            latency(run.quantile(0.5)),
            latency(run.quantile(0.99)),
            run.batches.len().to_string(),
            cpu,
        ]);
    }
    let (scan, projectors) = (&runs[0], &runs[2..]);
    for (size, run) in sizes.iter().zip(projectors) {
        table.row(ratio_cells(format!("batch_size {size} / scan"), run.per_sec() / scan.per_sec()));
    }
    if let (Some(first), Some(last)) = (projectors.first(), projectors.last())
        && projectors.len() > 1
    {
        let (a, b) = (sizes[sizes.len() - 1], sizes[0]);
        table.row(ratio_cells(format!("batch_size {a} / batch_size {b}"), last.per_sec() / first.per_sec()));
    }
    table
}

fn ratio_cells(label: String, events_per_sec: f64) -> [String; 6] {
    // A transaction per event is hundreds of times slower than a scan: keep a digit.
    let cell = if events_per_sec < 0.1 { format!("{events_per_sec:.4}×") } else { ratio(events_per_sec) };
    [label, cell, String::new(), String::new(), String::new(), String::new()]
}
