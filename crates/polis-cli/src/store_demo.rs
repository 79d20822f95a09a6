//! `polis demo`: an end-to-end run of the event store.
//!
//! Seeds stock items, drives reservations and releases through them from many
//! concurrent tasks (so optimistic concurrency conflicts really happen and are
//! retried), follows the global log with a catch-up projection, then checks
//! that the aggregates, the projection and the log all agree.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use polis_core::stats::percentile;
use polis_core::{
    CatchUpOptions, CommandError, EventStore, Metadata, Repository, SnapshotPolicy, catch_up, repository::decode,
};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::stock::{StockCommand, StockError, StockEvent, StockItem};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Orders to place (each reserves units of one sku; some are released again).
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct stock items; fewer means more contention.
    #[arg(long, default_value_t = 8)]
    skus: usize,
    /// Random seed, for a repeatable workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the embedded database here (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use this PostgreSQL database instead of the embedded SQLite file.
    #[arg(long, env = "POLIS_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    backend: String,
    orders: usize,
    reserved: usize,
    out_of_stock: usize,
    released: usize,
    commands: usize,
    retried_after_conflict: u64,
    events: u64,
    commands_per_second: f64,
    command_latency_p50_ms: f64,
    command_latency_p99_ms: f64,
    invariants: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    holds: bool,
    detail: String,
}

impl Report {
    pub(crate) fn all_invariants_hold(&self) -> bool {
        self.invariants.iter().all(|c| c.holds)
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Report> {
    if args.orders == 0 || args.concurrency == 0 || args.skus == 0 {
        bail!("--orders, --concurrency and --skus must be at least 1");
    }
    let report = match &args.postgres_url {
        Some(url) => {
            let store = PgEventStore::connect(url, PgOptions::new("polis-demo"))
                .await
                .with_context(|| "connecting to the PostgreSQL event store")?;
            scenario(Arc::new(store), "postgresql", &args).await?
        }
        None => {
            let temp;
            let dir = match &args.data_dir {
                Some(dir) => dir.clone(),
                None => {
                    temp = tempfile::tempdir().context("creating a temporary data directory")?;
                    temp.path().to_path_buf()
                }
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("demo-events.db");
            let store = SqliteEventStore::open(&path, SqliteOptions::new("polis-demo"))
                .await
                .with_context(|| format!("opening the SQLite event store at {}", path.display()))?;
            scenario(Arc::new(store), &format!("sqlite ({})", path.display()), &args).await?
        }
    };
    print(&report, args.json)?;
    Ok(report)
}

/// Units each order holds at the end, as the driver saw the commands succeed.
type Holdings = Arc<Mutex<BTreeMap<String, BTreeMap<String, u64>>>>;

async fn scenario<S: EventStore>(store: Arc<S>, backend: &str, args: &DemoArgs) -> anyhow::Result<Report> {
    let run_id = uuid_suffix();
    let repo = Repository::<StockItem, S>::new(store.clone())
        .with_snapshots(SnapshotPolicy::EveryNEvents(25))
        .with_max_attempts(64);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let skus: Vec<String> = (0..args.skus).map(|i| format!("{run_id}-sku-{i}")).collect();
    // Stock for roughly 70% of the demand, so some orders must be turned away.
    let demand = args.orders as u64 * 3;
    let mut received = HashMap::new();
    for sku in &skus {
        let quantity = (demand * 7 / 10 / args.skus as u64).max(1) + rng.random_range(0..5);
        repo.execute(sku, &StockCommand::Receive { quantity }, Metadata::default()).await?;
        received.insert(sku.clone(), quantity);
    }

    let start_position = 0;
    let projection = spawn_projection(store.clone(), start_position);

    let holdings: Holdings = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.orders * 2)));
    let mut outcomes = Outcomes::default();
    let started = Instant::now();
    let plans: Vec<_> = (0..args.orders)
        .map(|i| {
            let sku = skus[rng.random_range(0..skus.len())].clone();
            (format!("order-{i}"), sku, rng.random_range(1..=5u64), rng.random_bool(0.2))
        })
        .collect();
    let results = futures::stream::iter(plans)
        .map(|(order_id, sku, quantity, release)| {
            let (repo, holdings, latencies) = (repo.clone(), holdings.clone(), latencies.clone());
            async move { place_order(&repo, &holdings, &latencies, order_id, sku, quantity, release).await }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed();
    for result in results {
        outcomes.add(result?);
    }

    let head = store.head_position().await?;
    let caught_up =
        wait_until(Duration::from_secs(30), || projection.lock().map(|p| p.last >= head).unwrap_or(true)).await;
    let view = projection.lock().map_err(|_| anyhow::anyhow!("projection task panicked"))?.clone();

    let mut checks = Vec::new();
    let mut check = |name: &str, holds: bool, detail: String| checks.push(Check { name: name.into(), holds, detail });
    check(
        "projection caught up with the log",
        caught_up && view.error.is_none(),
        format!(
            "head {head}, projected up to {}{}",
            view.last,
            view.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default()
        ),
    );
    check(
        "global positions strictly increase",
        view.out_of_order == 0,
        format!("{} events read, {} out of order", view.events, view.out_of_order),
    );

    let holdings = holdings.lock().map_err(|_| anyhow::anyhow!("a driver task panicked"))?.clone();
    let mut conserved = true;
    let mut matches_projection = true;
    let mut matches_driver = true;
    let mut snapshot_equal = true;
    let mut total_versions = 0;
    let mut projected = 0;
    let full_replay = Repository::<StockItem, S>::new(store.clone());
    for sku in &skus {
        let loaded = repo.load(sku).await?;
        let item = &loaded.state;
        total_versions += loaded.version;
        projected += view.counts.get(sku).copied().unwrap_or(0);
        conserved &= item.available + item.reserved() == received[sku] && item.received == received[sku];
        matches_projection &= view.items.get(sku) == Some(&(item.available, item.reserved()));
        let held: u64 = holdings.get(sku).map(|h| h.values().sum()).unwrap_or(0);
        matches_driver &= held == item.reserved();
        snapshot_equal &= full_replay.load(sku).await?.state == loaded.state;
    }
    check("stock conserved per sku (received = available + reserved)", conserved, format!("{} skus", skus.len()));
    check("projection equals every aggregate", matches_projection, "available and reserved per sku".into());
    check(
        "reserved units = units of orders still holding stock",
        matches_driver,
        format!("{} reservations held", holdings.values().map(|h| h.len()).sum::<usize>()),
    );
    check("snapshot + tail load equals a full replay", snapshot_equal, "snapshots every 25 events".into());
    check(
        "every event of every stream was projected once",
        projected == total_versions,
        format!("{total_versions} events in streams, {projected} projected"),
    );
    let first = &skus[0];
    let at_one = repo.load_at_version(first, 1).await?;
    check(
        "state as of version 1 is the initial receipt",
        at_one.state.available == received[first] && at_one.state.reserved() == 0,
        format!("{first} v1: {} available", at_one.state.available),
    );

    let mut latencies = latencies.lock().map_err(|_| anyhow::anyhow!("a driver task panicked"))?.clone();
    latencies.sort_unstable_by(f64::total_cmp);
    Ok(Report {
        backend: backend.into(),
        orders: args.orders,
        reserved: outcomes.reserved,
        out_of_stock: outcomes.out_of_stock,
        released: outcomes.released,
        commands: outcomes.commands,
        retried_after_conflict: outcomes.retries,
        events: total_versions,
        commands_per_second: outcomes.commands as f64 / elapsed.as_secs_f64(),
        command_latency_p50_ms: percentile(&latencies, 0.50).unwrap_or_default(),
        command_latency_p99_ms: percentile(&latencies, 0.99).unwrap_or_default(),
        invariants: checks,
    })
}

#[derive(Debug, Default)]
struct Outcomes {
    reserved: usize,
    out_of_stock: usize,
    released: usize,
    commands: usize,
    retries: u64,
}

#[derive(Debug)]
struct OrderOutcome {
    reserved: bool,
    released: bool,
    commands: usize,
    retries: u64,
}

impl Outcomes {
    fn add(&mut self, o: OrderOutcome) {
        self.reserved += usize::from(o.reserved);
        self.out_of_stock += usize::from(!o.reserved);
        self.released += usize::from(o.released);
        self.commands += o.commands;
        self.retries += o.retries;
    }
}

async fn place_order<S: EventStore>(
    repo: &Repository<StockItem, S>,
    holdings: &Holdings,
    latencies: &Mutex<Vec<f64>>,
    order_id: String,
    sku: String,
    quantity: u64,
    release: bool,
) -> anyhow::Result<OrderOutcome> {
    let mut outcome = OrderOutcome { reserved: false, released: false, commands: 1, retries: 0 };
    let timed = Instant::now();
    let reserve = StockCommand::Reserve { order_id: order_id.clone(), quantity };
    match repo.execute(&sku, &reserve, Metadata::default()).await {
        Ok(done) => {
            outcome.reserved = true;
            outcome.retries += u64::from(done.attempts - 1);
            lock(holdings)?.entry(sku.clone()).or_default().insert(order_id.clone(), quantity);
        }
        Err(CommandError::Rejected(StockError::OutOfStock { .. })) => {}
        Err(e) => return Err(e).with_context(|| format!("reserving {quantity} of {sku} for {order_id}")),
    }
    lock(latencies)?.push(timed.elapsed().as_secs_f64() * 1000.0);
    if outcome.reserved && release {
        let timed = Instant::now();
        let done = repo
            .execute(&sku, &StockCommand::Release { order_id: order_id.clone() }, Metadata::default())
            .await
            .with_context(|| format!("releasing {sku} for {order_id}"))?;
        outcome.commands += 1;
        outcome.released = true;
        outcome.retries += u64::from(done.attempts - 1);
        lock(holdings)?.entry(sku).or_default().remove(&order_id);
        lock(latencies)?.push(timed.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(outcome)
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow::anyhow!("a demo task panicked"))
}

/// The read model the catch-up projection builds from the global log.
#[derive(Debug, Clone, Default)]
struct View {
    /// sku -> (available, reserved)
    items: HashMap<String, (u64, u64)>,
    /// sku -> events projected
    counts: HashMap<String, u64>,
    last: u64,
    events: u64,
    out_of_order: u64,
    error: Option<String>,
}

fn spawn_projection<S: EventStore>(store: Arc<S>, after: u64) -> Arc<Mutex<View>> {
    let view = Arc::new(Mutex::new(View::default()));
    let shared = view.clone();
    tokio::spawn(async move {
        let options = CatchUpOptions { batch_size: 500, poll_interval: Duration::from_millis(100) };
        let mut log = Box::pin(catch_up(store, after, options));
        while let Some(next) = log.next().await {
            let Ok(mut view) = shared.lock() else { return };
            let event = match next {
                Ok(event) => event,
                Err(e) => {
                    view.error = Some(e.to_string());
                    return;
                }
            };
            view.out_of_order += u64::from(event.global_position <= view.last);
            view.last = event.global_position;
            view.events += 1;
            let Some(sku) = event.stream_id.strip_prefix("stock-") else { continue };
            let decoded: Result<StockEvent, _> = decode(&polis_core::Upcasters::new(), &event);
            *view.counts.entry(sku.to_owned()).or_default() += 1;
            let entry = view.items.entry(sku.to_owned()).or_default();
            match decoded {
                Ok(StockEvent::Received { quantity }) => entry.0 += quantity,
                Ok(StockEvent::Reserved { quantity, .. }) => {
                    entry.0 -= quantity;
                    entry.1 += quantity;
                }
                Ok(StockEvent::Released { quantity, .. }) => {
                    entry.0 += quantity;
                    entry.1 -= quantity;
                }
                Err(e) => view.error = Some(e.to_string()),
            }
        }
    });
    view
}

async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A short random tag so repeated runs on one database don't share streams.
fn uuid_suffix() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 8..].to_owned()
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("polis demo — event store on {}", report.backend);
    println!("  orders             {:>8}", report.orders);
    println!("  reserved           {:>8}", report.reserved);
    println!("  out of stock       {:>8}", report.out_of_stock);
    println!("  released again     {:>8}", report.released);
    println!("  commands           {:>8}  ({:.0}/s)", report.commands, report.commands_per_second);
    println!("  conflict retries   {:>8}", report.retried_after_conflict);
    println!("  events in the log  {:>8}", report.events);
    println!(
        "  command latency    p50 {:.2} ms, p99 {:.2} ms",
        report.command_latency_p50_ms, report.command_latency_p99_ms
    );
    println!("invariants:");
    for c in &report.invariants {
        println!("  [{}] {} — {}", if c.holds { "ok" } else { "FAILED" }, c.name, c.detail);
    }
    println!("{}", if report.all_invariants_hold() { "all invariants hold" } else { "SOME INVARIANTS FAILED" });
    Ok(())
}
