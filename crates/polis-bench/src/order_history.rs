//! `order-history-rebuild`: the order-history service's view
//! (`order_history::projection::OrderHistoryProjection`) rebuilt from zero
//! over a log of `--events` events (1,000,000 by default), on PostgreSQL and
//! SQLite, against a plain scan of the same log; then the cost of a rename's
//! fan-out.
//!
//! The log is what the service's consumer ingests from the shop
//! ([`crate::shop_log`]), appended with the store's own append. Baselines
//! read every event and do nothing else: on PostgreSQL one `COPY (SELECT …
//! ORDER BY position) TO STDOUT` read to the end by the client, on SQLite
//! one `SELECT … ORDER BY position` stepped through every row (rusqlite, as
//! the store reads). polis's `read_all` scan (500 per read, decoded into
//! events) is shown beside them. Each rebuild is the projection's first
//! build: its tables, generations and lease are dropped before each run,
//! and a `Projector` with default options builds generation 1 until it is
//! live at the head.
//!
//! The fan-out part measures one event applied in its own transaction
//! (`Projection::apply`, then commit) on the view the last rebuild left:
//! a `ProductRenamed` and a `CustomerUpdated` shown by 1 … 10,000 orders
//! against an `OrderApproved` and an `OrderCreated`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use async_trait::async_trait;
use contracts::catalog::{Product, ProductAdded, ProductRenamed};
use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
use contracts::order::{OrderApproved, OrderCreated};
use contracts::{Address, OrderLine};
use futures::TryStreamExt as _;
use order_history::projection::{NAME, OrderHistoryProjection, TABLES};
use polis_core::stats::percentile;
use polis_core::{
    EventStore, ExpectedVersion, Generation, MessageType, Metadata, Projection, RecordedEvent, StoreError,
    Transaction as _, TransactionalStore,
};
use polis_projection::{Projector, ProjectorOptions, State};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{SqliteEventStore, SqliteOptions};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Options;
use crate::machine::{ProcessCounters, RssSampler, rss};
use crate::pg::Postgres;
use crate::report::{Check, Section, Table, Target, latency, mib, rate, ratio};
use crate::shop_log::{Mix, ShopLog};

/// Events per transaction while writing the log.
const WRITE_CHUNK: usize = 2_000;
/// Events per `read_all` in polis's scan (the projector's default batch).
const READ_BATCH: usize = 500;
/// How long a rebuild may take before the run is given up.
const REBUILD_LIMIT: Duration = Duration::from_secs(3 * 3600);
/// Measured applications of each fan-out event (the median is quoted).
const FAN_OUT_REPEATS: usize = 21;
/// The columns of `polis_events` every scan reads, in the backends' names.
const PG_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, time, data, \
                          correlation_id, causation_id, traceparent";
const SQLITE_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, time_us, \
                              data, correlation_id, causation_id, traceparent";

const PG_SCAN: &str = "baseline: COPY (SELECT … ORDER BY position) TO STDOUT";
const SQLITE_SCAN: &str = "baseline: SELECT … ORDER BY position, every row stepped";

/// How the baseline reads the log.
enum RawScan {
    Copy(PgPool),
    Select(PathBuf),
}

impl RawScan {
    fn label(&self) -> &'static str {
        match self {
            Self::Copy(_) => PG_SCAN,
            Self::Select(_) => SQLITE_SCAN,
        }
    }

    /// Reads every event: how many, and how many bytes the client received.
    async fn run(&self) -> Result<(u64, u64)> {
        match self {
            Self::Copy(pool) => {
                let mut conn = pool.acquire().await.context("connecting for COPY")?;
                let sql = format!("COPY (SELECT {PG_COLUMNS} FROM polis_events ORDER BY position) TO STDOUT");
                let mut chunks = conn.copy_out_raw(&sql).await.context("starting COPY")?;
                let (mut rows, mut bytes) = (0_u64, 0_u64);
                while let Some(chunk) = chunks.try_next().await.context("reading COPY")? {
                    // Text format: one row per line, newlines inside values escaped.
                    rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                    bytes += chunk.len() as u64;
                }
                Ok((rows, bytes))
            }
            Self::Select(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || select_all(&path)).await.context("the SELECT thread")?
            }
        }
    }
}

fn select_all(path: &std::path::Path) -> Result<(u64, u64)> {
    use rusqlite::types::ValueRef;
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags).context("opening the sqlite file")?;
    let mut statement = conn
        .prepare(&format!("SELECT {SQLITE_COLUMNS} FROM polis_events ORDER BY position"))
        .context("preparing the SELECT")?;
    let columns = statement.column_count();
    let mut cursor = statement.query([]).context("running the SELECT")?;
    let (mut rows, mut bytes) = (0_u64, 0_u64);
    while let Some(row) = cursor.next().context("stepping the SELECT")? {
        for i in 0..columns {
            bytes += match row.get_ref(i)? {
                ValueRef::Null => 0,
                ValueRef::Integer(_) | ValueRef::Real(_) => 8,
                ValueRef::Text(v) | ValueRef::Blob(v) => v.len() as u64,
            };
        }
        rows += 1;
    }
    Ok((rows, bytes))
}

/// One kind of run, summed over rounds.
#[derive(Debug, Default)]
struct Run {
    events: u64,
    elapsed: Duration,
    /// Time from one batch's (or read's) start to the next one's, sorted.
    batches: Vec<Duration>,
    cpu: Duration,
    server_cpu: Option<Duration>,
    /// Per round: RSS at start, peak, at end.
    memory: Vec<[u64; 3]>,
    /// Per round of a rebuild: RSS after each tenth of the log.
    tenths: Vec<Vec<u64>>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        percentile(&self.batches, q)
    }

    fn per_event(&self, d: Duration) -> String {
        format!("{:.1} µs", d.as_secs_f64() * 1e6 / self.events.max(1) as f64)
    }
}

/// Measures one run of `work` and adds it to `run`: (events, batch times).
async fn measured<F>(run: &mut Run, pg: Option<&Postgres>, sampler: &RssSampler, work: F) -> Result<()>
where
    F: Future<Output = Result<(u64, Vec<Duration>)>>,
{
    sampler.take_peak();
    let rss_start = rss();
    let before = ProcessCounters::read();
    let server_before = pg.and_then(Postgres::server_cpu_now);
    let started = Instant::now();
    let (events, mut batches) = work.await?;
    run.elapsed += started.elapsed();
    run.cpu += ProcessCounters::read().cpu_since(&before);
    if let (Some(a), Some(b)) = (server_before, pg.and_then(Postgres::server_cpu_now)) {
        run.server_cpu = Some(run.server_cpu.unwrap_or_default() + b.saturating_sub(a));
    }
    run.memory.push([rss_start, sampler.take_peak(), rss()]);
    run.events += events;
    run.batches.append(&mut batches);
    run.batches.sort_unstable();
    Ok(())
}

/// What one backend gave.
struct Backend {
    name: &'static str,
    scan: &'static str,
    mix: Mix,
    write: Duration,
    write_memory: [u64; 3],
    runs: [Run; 3],
    round_trip: Option<Duration>,
    fan_out: Vec<FanOut>,
}

pub(crate) async fn run(pg: &Postgres, options: &Options) -> Result<Section> {
    let events = options.events;
    ensure!(events > 0, "--events must be positive");
    let sampler = RssSampler::start();
    let mut backends = Vec::new();

    eprintln!("order-history-rebuild: PostgreSQL, writing {events} events…");
    let db = pg.database("order_history").await?;
    let store = Arc::new(pg.polis_store(&db, 8).await?);
    let (mix, write, write_memory) = write_log(&store, events, &sampler).await?;
    sqlx::query("VACUUM (ANALYZE) polis_events").execute(store.pool()).await.context("vacuuming the log")?;
    let round_trip = pg.round_trip(&db).await?;
    let scan = RawScan::Copy(store.pool().clone());
    let runs = rounds(store.clone(), "PostgreSQL", &scan, Some(pg), options, &sampler).await?;
    let fans = fan_out(&store, &options.fan_outs).await.context("fan-out on PostgreSQL")?;
    backends.push(Backend {
        name: "PostgreSQL",
        scan: scan.label(),
        mix,
        write,
        write_memory,
        runs,
        round_trip: Some(round_trip),
        fan_out: fans,
    });
    drop(scan);
    store.pool().close().await;

    eprintln!("order-history-rebuild: SQLite, writing {events} events…");
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a directory for the sqlite file")?;
    let path = dir.path().join("order-history.db");
    let store = Arc::new(
        SqliteEventStore::open(&path, SqliteOptions::new(order_history::SERVICE))
            .await
            .context("opening the polis store")?,
    );
    let (mix, write, write_memory) = write_log(&store, events, &sampler).await?;
    let scan = RawScan::Select(path);
    let runs = rounds(store.clone(), "SQLite", &scan, None, options, &sampler).await?;
    let fans = fan_out(&store, &options.fan_outs).await.context("fan-out on SQLite")?;
    backends.push(Backend {
        name: "SQLite",
        scan: scan.label(),
        mix,
        write,
        write_memory,
        runs,
        round_trip: None,
        fan_out: fans,
    });

    Ok(report(&backends, options))
}

/// Writes the log in transactions of [`WRITE_CHUNK`] events, each event
/// appended to its own stream as `Ingest` would.
async fn write_log<S>(store: &Arc<S>, events: u64, sampler: &RssSampler) -> Result<(Mix, Duration, [u64; 3])>
where
    S: TransactionalStore + EventStore,
{
    sampler.take_peak();
    let rss_start = rss();
    let started = Instant::now();
    let mut log = ShopLog::new(events);
    loop {
        let chunk: Vec<_> = log.by_ref().take(WRITE_CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        store
            .transaction(async move |tx| {
                for entry in &chunk {
                    tx.append(&entry.stream, ExpectedVersion::Any, std::slice::from_ref(&entry.event)).await?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .context("writing the log")?;
    }
    let elapsed = started.elapsed();
    let head = store.head_position().await.context("reading the head")?;
    ensure!(log.mix.events() == events, "generated {} events, wanted {events}", log.mix.events());
    ensure!(head >= events, "the log's head is {head} after writing {events} events");
    Ok((log.mix, elapsed, [rss_start, sampler.take_peak(), rss()]))
}

/// The rounds on one backend: the raw scan, polis's `read_all` scan, a rebuild.
async fn rounds<S>(
    store: Arc<S>,
    name: &str,
    scan: &RawScan,
    pg: Option<&Postgres>,
    options: &Options,
    sampler: &RssSampler,
) -> Result<[Run; 3]>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let head = store.head_position().await.context("reading the head")?;
    let events = options.events;
    let mut runs: [Run; 3] = Default::default();
    let mut runs_memory = Vec::new();
    for round in 1..=options.rounds() {
        eprintln!("order-history-rebuild round {round}: {name}, raw scan…");
        measured(&mut runs[0], pg, sampler, async {
            let (rows, _bytes) = scan.run().await?;
            ensure!(rows == events, "the scan read {rows} events, the log holds {events}");
            Ok((rows, Vec::new()))
        })
        .await?;
        eprintln!("order-history-rebuild round {round}: {name}, read_all scan…");
        measured(&mut runs[1], pg, sampler, read_all_scan(&*store)).await?;
        eprintln!("order-history-rebuild round {round}: {name}, rebuilding the view…");
        measured(&mut runs[2], pg, sampler, async {
            let (batches, memory) = rebuild(store.clone(), head).await?;
            runs_memory.push(memory);
            Ok((events, batches))
        })
        .await?;
        let [scan, _, rebuild] = &runs;
        eprintln!(
            "order-history-rebuild round {round}: {name}: scan {} events/s, rebuild {} events/s so far",
            rate(scan.per_sec()),
            rate(rebuild.per_sec())
        );
    }
    runs[2].tenths = runs_memory;
    Ok(runs)
}

/// Reads the whole log with `read_all`, [`READ_BATCH`] events at a time.
async fn read_all_scan<S: EventStore>(store: &S) -> Result<(u64, Vec<Duration>)> {
    let mut reads = Vec::new();
    let (mut after, mut events) = (0, 0);
    loop {
        let started = Instant::now();
        let batch = store.read_all(after, READ_BATCH).await.context("read_all")?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        events += batch.len() as u64;
        reads.push(started.elapsed());
    }
    Ok((events, reads))
}

/// Drops the view (views, every generation's tables, generations, lease),
/// then builds it from zero with a `Projector` until it is live at `head`:
/// the time between batch starts, and the resident memory at every tenth.
async fn rebuild<S>(store: Arc<S>, head: u64) -> Result<(Vec<Duration>, Vec<u64>)>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let generations = polis_projection::generations(&*store, NAME).await.context("reading the generations")?;
    store
        .transaction(async move |tx| {
            for table in TABLES {
                tx.execute(&format!("DROP VIEW IF EXISTS {table}"), &[]).await?;
                for row in &generations {
                    tx.execute(&format!("DROP TABLE IF EXISTS {}", row.generation.table(table)), &[]).await?;
                }
            }
            tx.execute("DELETE FROM polis_projections WHERE name = $1", args![NAME]).await?;
            tx.execute("DELETE FROM polis_leases WHERE name = $1", args![format!("projection:{NAME}")]).await?;
            Ok::<_, StoreError>(())
        })
        .await
        .context("dropping the view")?;

    let options = ProjectorOptions::default();
    let projection = Timed::new(OrderHistoryProjection, options.batch_size, head);
    let (starts, applied, memory) = (projection.starts.clone(), projection.applied.clone(), projection.rss.clone());
    let handle = Projector::new(store, options).with(projection).spawn();
    let mut status = handle.subscribe();
    let live = matches!(
        tokio::time::timeout(
            REBUILD_LIMIT,
            status.wait_for(|all| all.get(NAME).and_then(|s| s.live.as_ref()).is_some_and(|g| g.position >= head)),
        )
        .await,
        Ok(Ok(_))
    );
    let error = status.borrow().get(NAME).and_then(|s| s.error.clone());
    handle.shutdown().await;
    ensure!(live, "the view did not catch up (last error: {error:?})");
    let applied = applied.load(Ordering::SeqCst);
    ensure!(applied == head, "the view applied {applied} events, the log holds {head}");
    let starts = std::mem::take(&mut *starts.lock().unwrap_or_else(|e| e.into_inner()));
    let mut batches: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    batches.sort_unstable();
    let memory = std::mem::take(&mut *memory.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((batches, memory))
}

/// A projection, timed: notes when each batch starts (every `batch_size`-th
/// event; every event of this log is applied, and no batch fails), and the
/// resident memory at every tenth of the log.
struct Timed<P> {
    inner: P,
    batch_size: u64,
    tenth: u64,
    applied: Arc<AtomicU64>,
    starts: Arc<Mutex<Vec<Instant>>>,
    rss: Arc<Mutex<Vec<u64>>>,
}

impl<P> Timed<P> {
    fn new(inner: P, batch_size: usize, events: u64) -> Self {
        Self {
            inner,
            batch_size: batch_size as u64,
            tenth: (events / 10).max(1),
            applied: Arc::default(),
            starts: Arc::default(),
            rss: Arc::default(),
        }
    }
}

#[async_trait]
impl<Tx: Send + 'static, P: Projection<Tx>> Projection<Tx> for Timed<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> u32 {
        self.inner.version()
    }

    fn tables(&self) -> &[&'static str] {
        self.inner.tables()
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        self.inner.create(tx, generation).await
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        self.inner.wants(event)
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        let applied = self.applied.fetch_add(1, Ordering::SeqCst);
        if applied.is_multiple_of(self.batch_size) {
            self.starts.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
        }
        if (applied + 1).is_multiple_of(self.tenth) {
            self.rss.lock().unwrap_or_else(|e| e.into_inner()).push(rss());
        }
        self.inner.apply(tx, generation, event).await
    }
}

/// One fan-out (or ordinary) event's measurements.
struct FanOut {
    what: String,
    rows: u64,
    /// `apply` alone, and begin → apply → commit; sorted.
    apply: Vec<Duration>,
    transaction: Vec<Duration>,
}

/// Makes events for `apply` outside the log, at positions past its head.
struct Events {
    position: u64,
}

impl Events {
    fn event<T: MessageType + Serialize>(&mut self, source: &str, key: &str, body: &T) -> RecordedEvent {
        self.position += 1;
        RecordedEvent {
            id: Uuid::now_v7(),
            source: source.to_owned(),
            event_type: T::TYPE.to_owned(),
            stream_id: format!("{source}/{key}"),
            stream_version: 1,
            global_position: self.position,
            schema_version: 1,
            time: chrono::Utc::now(),
            data: serde_json::to_value(body).expect("contract types serialize"),
            metadata: Metadata::default(),
        }
    }

    fn customer(&mut self, id: Uuid, name: String, updated: bool) -> RecordedEvent {
        let customer = Customer {
            id,
            email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
            name,
            address: Address {
                line1: "1 Main Street".to_owned(),
                city: "Springfield".to_owned(),
                postal_code: "00001".to_owned(),
                country: "US".to_owned(),
            },
            credit_limit: 1_000_000,
        };
        let key = id.to_string();
        if updated {
            self.event("customer", &key, &CustomerUpdated { customer, version: 2 })
        } else {
            self.event("customer", &key, &CustomerRegistered { customer, version: 1 })
        }
    }

    fn order(&mut self, order_id: Uuid, customer_id: Uuid, skus: &[&str]) -> RecordedEvent {
        let lines: Vec<OrderLine> =
            skus.iter().map(|sku| OrderLine { sku: (*sku).to_owned(), quantity: 1, unit_price: 1_000 }).collect();
        let total = 1_000 * lines.len() as i64;
        self.event("order", &order_id.to_string(), &OrderCreated { order_id, customer_id, lines, total, saga: None })
    }
}

/// Applies `events` to generation `g` of the view in one transaction.
async fn apply_all<S>(store: &Arc<S>, g: Generation, events: Vec<RecordedEvent>) -> Result<(), StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    store
        .transaction(async move |tx| {
            for event in &events {
                Projection::<S::Tx>::apply(&OrderHistoryProjection, tx, g, event).await?;
            }
            Ok(())
        })
        .await
}

/// One event in its own transaction: (`apply`, begin → commit).
async fn apply_one<S>(store: &Arc<S>, g: Generation, event: RecordedEvent) -> Result<(Duration, Duration)>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let started = Instant::now();
    let apply = store
        .transaction(async move |tx| {
            let started = Instant::now();
            Projection::<S::Tx>::apply(&OrderHistoryProjection, tx, g, &event).await?;
            Ok::<_, StoreError>(started.elapsed())
        })
        .await?;
    Ok((apply, started.elapsed()))
}

async fn count<S>(store: &Arc<S>, sql: &str, args: &[polis_store::sql::Value]) -> Result<u64>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store.query_optional(sql, args).await?.context("count(*) returned no row")?;
    Ok(u64::try_from(row.int("n")?).unwrap_or(0))
}

/// On the live view: per size N, a product on N order lines and a customer
/// with N orders, then [`FAN_OUT_REPEATS`] rounds that alternate renaming
/// each product, updating each customer, placing an order (3 lines) and
/// approving it, each in its own transaction.
async fn fan_out<S>(store: &Arc<S>, sizes: &[u64]) -> Result<Vec<FanOut>>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let live = polis_projection::generations(&**store, NAME)
        .await?
        .into_iter()
        .find(|g| g.state == State::Live)
        .context("no live generation of the view")?;
    let g = live.generation;
    let (orders, items) = (g.table("history_orders"), g.table("history_items"));
    let mut events = Events { position: store.head_position().await? + 1_000_000 };
    eprintln!("order-history-rebuild: fan-out on generation {}, setting up {sizes:?}…", g.number());

    let ordinary: Vec<String> = (0..3).map(|i| format!("sku-{i:05}")).collect();
    let ordinary_customer = Uuid::now_v7();
    apply_all(store, g, vec![events.customer(ordinary_customer, "Ordinary Customer".to_owned(), false)]).await?;
    let mut fans = Vec::new();
    for &n in sizes {
        let sku = format!("fan-{n}");
        let customer = Uuid::now_v7();
        let product = Product { sku: sku.clone(), name: format!("Fan {n}"), price: 1_000 };
        let mut setup = vec![
            events.event("catalog", &sku, &ProductAdded { product }),
            events.customer(customer, format!("Fan {n}"), false),
        ];
        for _ in 0..n {
            setup.push(events.order(Uuid::now_v7(), customer, &[sku.as_str(), ordinary[0].as_str()]));
            if setup.len() >= 1_000 {
                apply_all(store, g, std::mem::take(&mut setup)).await?;
            }
        }
        apply_all(store, g, setup).await?;
        let lines =
            count(store, &format!("SELECT count(*) AS n FROM {items} WHERE sku = $1"), args![sku.as_str()]).await?;
        let shown =
            count(store, &format!("SELECT count(*) AS n FROM {orders} WHERE customer_id = $1"), args![customer])
                .await?;
        ensure!(lines == n && shown == n, "fan-out {n}: {lines} lines and {shown} orders set up");
        fans.push((n, sku, customer));
    }

    let mut measured: Vec<FanOut> = Vec::new();
    let mut add = |what: String, rows: u64, (apply, transaction): (Duration, Duration)| {
        let entry = match measured.iter_mut().find(|m| m.what == what) {
            Some(entry) => entry,
            None => {
                measured.push(FanOut { what, rows, apply: Vec::new(), transaction: Vec::new() });
                measured.last_mut().expect("just pushed")
            }
        };
        entry.apply.push(apply);
        entry.transaction.push(transaction);
    };
    eprintln!("order-history-rebuild: fan-out, {FAN_OUT_REPEATS} rounds…");
    for round in 0..FAN_OUT_REPEATS {
        let order_id = Uuid::now_v7();
        let skus: Vec<&str> = ordinary.iter().map(String::as_str).collect();
        let created = events.order(order_id, ordinary_customer, &skus);
        add("ordinary: OrderCreated, 3 lines".into(), 1, apply_one(store, g, created).await?);
        let approved = events.event("order", &order_id.to_string(), &OrderApproved { order_id });
        add("ordinary: OrderApproved".into(), 1, apply_one(store, g, approved).await?);
        for (n, sku, customer) in &fans {
            let renamed = ProductRenamed {
                sku: sku.clone(),
                old_name: format!("Fan {n} ({})", round.wrapping_sub(1)),
                new_name: format!("Fan {n} ({round})"),
            };
            let renamed = events.event("catalog", sku, &renamed);
            add(format!("ProductRenamed, on {n} order lines"), *n, apply_one(store, g, renamed).await?);
            let updated = events.customer(*customer, format!("Fan {n} ({round})"), true);
            add(format!("CustomerUpdated, {n} orders"), *n, apply_one(store, g, updated).await?);
        }
    }
    let last = FAN_OUT_REPEATS - 1;
    for (n, sku, customer) in &fans {
        let name = format!("Fan {n} ({last})");
        let renamed = count(
            store,
            &format!("SELECT count(*) AS n FROM {items} WHERE sku = $1 AND product_name = $2"),
            args![sku.as_str(), name.as_str()],
        )
        .await?;
        let updated = count(
            store,
            &format!("SELECT count(*) AS n FROM {orders} WHERE customer_id = $1 AND customer_name = $2"),
            args![*customer, name.as_str()],
        )
        .await?;
        ensure!(renamed == *n && updated == *n, "fan-out {n}: {renamed} lines and {updated} orders show the new name");
    }
    for m in &mut measured {
        m.apply.sort_unstable();
        m.transaction.sort_unstable();
    }
    Ok(measured)
}

fn report(backends: &[Backend], options: &Options) -> Section {
    let mut body = String::new();
    let mut checks = Vec::new();
    let events = options.events;
    let _ = writeln!(
        body,
        "{events} events per backend: the order-history service's log (what its consumer ingests from the \
         customer, catalog, order, payment and shipping services, in streams `<source>/<key>`), written in \
         transactions of {WRITE_CHUNK} appends. Then, {}: a raw scan of the log (PostgreSQL: `COPY (SELECT … \
         ORDER BY position) TO STDOUT` read to the end; SQLite: one `SELECT … ORDER BY position` stepped \
         through every row), polis's `read_all` scan ({READ_BATCH} per read), and a rebuild of the view from \
         zero: its tables, generations and lease dropped, then a `Projector` with default options \
         (`batch_size` 500) building generation 1 until it is live at the head. \"Per batch\" is the time from \
         one batch's start to the next one's (read, transaction, commit); for `read_all`, one read. CPU is \
         this process's; server CPU is every PostgreSQL process's (backends, walwriter, checkpointer, \
         autovacuum). Memory is this process's resident set per round (start / peak / end).\n",
        match options.rounds() {
            1 => "in one round".to_owned(),
            n => format!("in {n} rounds that alternate the runs"),
        },
    );
    for b in backends {
        let _ = writeln!(body, "### {}\n", b.name);
        let mix = &b.mix;
        let _ = writeln!(
            body,
            "The log: {} events written in {:.1} s ({} events/s; RSS {} → peak {} → {}); {} orders placed, {:.2} \
             lines per order. Events by type:\n",
            mix.events(),
            b.write.as_secs_f64(),
            rate(mix.events() as f64 / b.write.as_secs_f64()),
            mib(b.write_memory[0]),
            mib(b.write_memory[1]),
            mib(b.write_memory[2]),
            mix.count(OrderCreated::TYPE),
            mix.lines as f64 / mix.count(OrderCreated::TYPE).max(1) as f64,
        );
        let mut types = Table::new(["event type", "events", "share"]);
        for (event_type, n) in &mix.by_type {
            types.row([
                event_type.clone(),
                n.to_string(),
                format!("{:.2}%", *n as f64 * 100.0 / mix.events().max(1) as f64),
            ]);
        }
        let _ = writeln!(body, "{types}");
        if let Some(rtt) = b.round_trip {
            let _ = writeln!(body, "Round trip (`SELECT 1`, p50): {:.0} µs.\n", rtt.as_secs_f64() * 1e6);
        }

        let mut table = Table::new([
            "run",
            "events/s",
            "/ raw scan",
            "per batch p50",
            "per batch p99",
            "CPU/event",
            "server CPU/event",
        ]);
        let labels =
            [b.scan, "polis: read_all scan, 500 per read", "polis: Projector rebuilding the view (batch_size 500)"];
        let scan = b.runs[0].per_sec();
        for (label, run) in labels.iter().zip(&b.runs) {
            table.row([
                (*label).to_owned(),
                rate(run.per_sec()),
                ratio(run.per_sec() / scan),
                run.quantile(0.5).map_or_else(|| "—".to_owned(), latency),
                run.quantile(0.99).map_or_else(|| "—".to_owned(), latency),
                run.per_event(run.cpu),
                run.server_cpu.map_or_else(|| "—".to_owned(), |d| run.per_event(d)),
            ]);
        }
        let _ = writeln!(body, "{table}");
        let mut memory = Table::new(["run", "round", "RSS at start", "peak RSS", "RSS at end", "peak − start"]);
        for (label, run) in labels.iter().zip(&b.runs) {
            for (i, [start, peak, end]) in run.memory.iter().enumerate() {
                memory.row([
                    (*label).to_owned(),
                    (i + 1).to_string(),
                    mib(*start),
                    mib(*peak),
                    mib(*end),
                    mib(peak.saturating_sub(*start)),
                ]);
            }
        }
        let _ = writeln!(body, "{memory}");
        for (i, tenths) in b.runs[2].tenths.iter().enumerate() {
            let tenths: Vec<String> = tenths.iter().map(|&r| format!("{:.1}", r as f64 / (1024.0 * 1024.0))).collect();
            let _ = writeln!(
                body,
                "Rebuild, round {}: RSS after each tenth of the log, MiB: {}.\n",
                i + 1,
                tenths.join(", ")
            );
        }
        checks.push(Check::new(
            format!("{}: rebuild events/s / raw scan", b.name),
            b.runs[2].per_sec() / scan,
            Target::AtLeast(0.25),
        ));

        let _ = writeln!(
            body,
            "Fan-out: one event applied in its own transaction on the rebuilt view, {FAN_OUT_REPEATS} times each, \
             alternating; \"apply\" is `Projection::apply` alone, \"transaction\" adds begin and commit.\n"
        );
        let ordinary = b
            .fan_out
            .iter()
            .find(|m| m.what == "ordinary: OrderApproved")
            .and_then(|m| percentile(&m.apply, 0.5))
            .unwrap_or_default();
        let mut fan = Table::new([
            "event",
            "rows rewritten",
            "apply p50",
            "apply max",
            "transaction p50",
            "apply p50 / OrderApproved's",
        ]);
        for m in &b.fan_out {
            let p50 = percentile(&m.apply, 0.5).unwrap_or_default();
            fan.row([
                m.what.clone(),
                m.rows.to_string(),
                latency(p50),
                latency(m.apply.last().copied().unwrap_or_default()),
                latency(percentile(&m.transaction, 0.5).unwrap_or_default()),
                format!("{:.1}×", p50.as_secs_f64() / ordinary.as_secs_f64().max(1e-9)),
            ]);
        }
        let _ = writeln!(body, "{fan}");
    }
    Section { title: "order-history-rebuild".into(), body, checks }
}
