//! polis-bench: measures polis's event stores against baselines run in the
//! same process, on the same server, with the same payload.
//!
//! Each scenario prints a markdown section: the baseline and the polis runs
//! side by side, their ratios and the target each ratio is held to. `all`
//! runs every scenario and ends with a summary of the targets, ready for
//! `docs/benchmarks.md`.
//!
//! Layout: `load` drives closed-loop clients and collects latencies,
//! `report` formats sections and target checks, `machine` describes the host
//! (including how long an fsync takes) and samples CPU, writes and resident
//! memory, `pg` provides PostgreSQL databases and per-event costs, `delay` is
//! a proxy that simulates network latency, `workload` holds the shared
//! payload and polis writer, and one module per scenario (`pg_append`,
//! `pg_vs_es`, `sqlite_append`, `memory`, `relay`, `projection`,
//! `order_history`) holds its baseline and its runs; `shop_log` generates
//! the order-history service's log.
//!
//! PostgreSQL is a throwaway server started from the installed binaries
//! (fsync on) unless `--postgres-url` names another one; the machine's own
//! server on port 5432 is never used implicitly. The relay scenario starts a
//! throwaway nats-server of its own, likewise.

#![warn(missing_docs)]

mod delay;
mod load;
mod machine;
mod memory;
mod order_history;
mod pg;
mod pg_append;
mod pg_vs_es;
mod projection;
mod relay;
mod report;
mod shop_log;
mod sqlite_append;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::load::Plan;
use crate::pg::Postgres;

#[derive(Debug, Parser)]
#[command(name = "polis-bench", about = "Benchmarks polis's event stores against same-process baselines")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// PgEventStore::append (one event, expected-version check) vs one-row INSERTs.
    PgAppend,
    /// Repository::execute vs postgres-es commands emitting 1, 5 and 20 events.
    PgVsPostgresEs,
    /// SqliteEventStore::append vs one INSERT per transaction, 1 and 16 writers.
    SqliteAppend,
    /// Resident memory while writing, reading and catching up on many events.
    Memory,
    /// Outbox relay from PostgreSQL to NATS JetStream vs raw JetStream
    /// publishes; commit-to-publish latency; draining a large backlog.
    Relay,
    /// A Projector catching up from zero with batch_size 1 and 500, on
    /// PostgreSQL and SQLite, vs a plain read_all scan of the same log.
    Projection,
    /// The order-history service's view rebuilt from zero over a log of
    /// --events events (default 1,000,000), on PostgreSQL and SQLite, vs a
    /// raw scan of the same log (COPY / SELECT); then the cost of a rename's
    /// fan-out. Not part of `all` (it takes tens of minutes).
    OrderHistoryRebuild,
    /// Every scenario in order (but order-history-rebuild), then a markdown
    /// summary of the targets.
    All,
}

#[derive(Debug, Clone, Args)]
struct Options {
    /// Use this PostgreSQL server (an admin URL) instead of a throwaway one.
    #[arg(long, global = true)]
    postgres_url: Option<String>,
    /// Measured seconds per timed run (split over the rounds).
    #[arg(long, global = true, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured warm-up seconds before each round of a timed run.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds that alternate baseline and polis, so drift on a shared
    /// machine hits both alike.
    #[arg(long, global = true, default_value_t = 3)]
    rounds: u32,
    /// Concurrent writers in pg-append and pg-vs-postgres-es.
    #[arg(long, global = true, default_value_t = 8)]
    clients: usize,
    /// Commands per batch size and framework in pg-vs-postgres-es.
    #[arg(long, global = true, default_value_t = 12_000)]
    commands: u64,
    /// Round-trip time to add between client and PostgreSQL in
    /// pg-vs-postgres-es, through a delaying proxy (the effective round trip
    /// is measured and printed).
    #[arg(long, global = true, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Events written and read back per backend in memory; messages in the
    /// backlog the relay scenario drains; events in the log the view is
    /// rebuilt from in order-history-rebuild.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    events: u64,
    /// Events in the log a projection catches up on in projection.
    #[arg(long, global = true, default_value_t = 100_000)]
    projection_events: u64,
    /// The projector batch sizes compared in projection.
    #[arg(long, global = true, value_delimiter = ',', default_values_t = [1, 500])]
    batch_sizes: Vec<usize>,
    /// How many orders show the renamed product or updated customer in
    /// order-history-rebuild's fan-out measurement.
    #[arg(long, global = true, value_delimiter = ',', default_values_t = [1, 100, 1_000, 10_000])]
    fan_outs: Vec<u64>,
    /// Directory for the SQLite files (default: the system temp dir).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

impl Options {
    fn rounds(&self) -> u32 {
        self.rounds.max(1)
    }

    /// One round of a timed run.
    fn timed_round(&self) -> Plan {
        Plan::Timed {
            warmup: Duration::from_secs_f64(self.warmup),
            measure: Duration::from_secs_f64(self.seconds / f64::from(self.rounds())),
        }
    }

    /// How timed runs are sliced, for the scenario descriptions.
    fn timed_description(&self) -> String {
        format!(
            "{} s measured per run, as {} rounds that alternate the runs, each after {} s of unmeasured warm-up",
            self.seconds,
            self.rounds(),
            self.warmup
        )
    }
}

fn main() -> Result<()> {
    let _telemetry = polis_runtime::telemetry::init_tracing_with("warn").context("reading RUST_LOG")?;
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let options = &cli.options;
    let needs_postgres = !matches!(cli.scenario, Scenario::SqliteAppend);
    let postgres = if needs_postgres { Some(Postgres::start(options.postgres_url.as_deref()).await?) } else { None };
    let postgres_version = match &postgres {
        Some(pg) => Some(pg.version().await?),
        None => None,
    };
    let dir = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    println!("{}", machine::header(postgres_version.as_deref(), &dir).await);

    let mut sections = Vec::new();
    let pg = || postgres.as_ref().context("postgres was not started");
    let scenarios: &[Scenario] = match cli.scenario {
        Scenario::All => &[
            Scenario::PgAppend,
            Scenario::PgVsPostgresEs,
            Scenario::SqliteAppend,
            Scenario::Memory,
            Scenario::Relay,
            Scenario::Projection,
        ],
        ref one => std::slice::from_ref(one),
    };
    for scenario in scenarios {
        let disk_before = machine::fsync_latency(&dir).await;
        let mut section = match scenario {
            Scenario::PgAppend => pg_append::run(pg()?, options).await.context("pg-append")?,
            Scenario::PgVsPostgresEs => pg_vs_es::run(pg()?, options).await.context("pg-vs-postgres-es")?,
            Scenario::SqliteAppend => sqlite_append::run(options).await.context("sqlite-append")?,
            Scenario::Memory => memory::run(postgres.as_ref(), options).await.context("memory")?,
            Scenario::Relay => relay::run(pg()?, options).await.context("relay")?,
            Scenario::Projection => projection::run(pg()?, options).await.context("projection")?,
            Scenario::OrderHistoryRebuild => {
                order_history::run(pg()?, options).await.context("order-history-rebuild")?
            }
            Scenario::All => unreachable!("`all` is expanded above"),
        };
        let disk_after = machine::fsync_latency(&dir).await;
        section.body = format!(
            "Disk: a 4 KiB write + fdatasync took {disk_before} before this scenario, {disk_after} after.\n\n{}",
            section.body
        );
        println!("{section}");
        sections.push(section);
    }
    if matches!(cli.scenario, Scenario::All) {
        println!("{}", report::summary(&sections));
    }
    if let Some(pg) = postgres {
        pg.shutdown().await;
    }
    Ok(())
}
