//! `sqlite-append`: `SqliteEventStore::append` (Durability::Full) against a
//! plain loop of autocommitted INSERTs into an equivalent table, in another
//! file opened with the same pragmas (WAL, synchronous=FULL).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use polis_store::{SqliteEventStore, SqliteOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection as _, Executor as _, SqliteConnection};

use crate::Options;
use crate::load::{self, Client, Measurement, Plan};
use crate::machine::{PROCESS_COSTS_HEADER, ProcessCosts, ProcessCounters};
use crate::report::{Check, RUN_HEADER, Section, Table, Target, ratio_row, run_row};
use crate::workload::{Appender, EVENT_TYPE, payload};

/// polis's SQLite polis_events, under another name.
const RAW_TABLE: &str = "CREATE TABLE IF NOT EXISTS raw_events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BLOB    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    time_us         INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    correlation_id  BLOB,
    causation_id    BLOB,
    traceparent     TEXT,
    UNIQUE (stream_id, stream_version)
)";

const MANY_WRITERS: usize = 16;

pub(crate) async fn run(options: &Options) -> Result<Section> {
    let plan = options.timed_round();
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a directory for the sqlite files")?;

    let mut runs: [(Measurement, ProcessCosts); 3] = Default::default();
    for round in 0..options.rounds() {
        eprintln!("sqlite-append round {}: INSERT loop, 1 writer…", round + 1);
        let writer = RawWriter::open(&dir.path().join("raw.db"), format!("raw-{round}")).await?;
        measure(&mut runs[0], vec![writer], plan).await?;

        eprintln!("sqlite-append round {}: polis, 1 writer…", round + 1);
        let store = open_store(&dir.path().join("polis-1.db")).await?;
        measure(&mut runs[1], vec![Appender::new(store, format!("polis-{round}"))], plan).await?;

        eprintln!("sqlite-append round {}: polis, {MANY_WRITERS} writers…", round + 1);
        let store = open_store(&dir.path().join("polis-16.db")).await?;
        let writers = (0..MANY_WRITERS).map(|i| Appender::new(store.clone(), format!("polis-{round}-{i}"))).collect();
        measure(&mut runs[2], writers, plan).await?;
    }
    let [(raw, raw_costs), (one, one_costs), (many, many_costs)] = &runs;

    let mut body = String::new();
    let _ = writeln!(
        body,
        "One ~200-byte event per operation, each writer on its own stream; {}. Each run has its own file in {}.\n",
        options.timed_description(),
        dir.path().parent().unwrap_or(dir.path()).display()
    );
    let mut table = Table::new(RUN_HEADER);
    let labels = [
        "baseline: INSERT loop, 1 writer".to_owned(),
        "polis: append, 1 writer".to_owned(),
        format!("polis: append, {MANY_WRITERS} writers"),
    ];
    table.row(run_row(&labels[0], raw));
    table.row(run_row(&labels[1], one));
    table.row(run_row(&labels[2], many));
    table.row(ratio_row("polis 1 writer / baseline", one, raw));
    table.row(ratio_row(&format!("polis {MANY_WRITERS} writers / baseline"), many, raw));
    let _ = writeln!(body, "{table}");
    let [h0, h1, h2] = PROCESS_COSTS_HEADER;
    let mut costs = Table::new(["run", h0, h1, h2]);
    for (label, c) in labels.iter().zip([raw_costs, one_costs, many_costs]) {
        let [a, b, c] = c.per_event();
        costs.row([label.clone(), a, b, c]);
    }
    let _ = writeln!(
        body,
        "What each event cost the process (everything runs in it), warm-up included; bytes written are what \
         reached the storage layer (`/proc/self/io`):\n\n{costs}"
    );
    Ok(Section {
        title: "sqlite-append".into(),
        body,
        checks: vec![
            Check::new("events/s, polis 1 writer / INSERT loop", ratio_of(one, raw), Target::AtLeast(0.8)),
            Check::new(
                format!("events/s, polis {MANY_WRITERS} writers / INSERT loop"),
                ratio_of(many, raw),
                Target::AtLeast(3.0),
            ),
        ],
    })
}

/// Runs `clients` once and adds the figures to `run`.
async fn measure<C: Client>(run: &mut (Measurement, ProcessCosts), clients: Vec<C>, plan: Plan) -> Result<()> {
    let before = ProcessCounters::read();
    let m = load::run(clients, plan).await?;
    run.1.add(ProcessCounters::read().since(&before, m.all_events));
    run.0.merge(m);
    Ok(())
}

async fn open_store(path: &Path) -> Result<SqliteEventStore> {
    SqliteEventStore::open(path, SqliteOptions::new("bench")).await.context("opening the polis store")
}

fn ratio_of(a: &Measurement, b: &Measurement) -> f64 {
    a.events_per_sec() / b.events_per_sec()
}

/// One connection, one autocommitted INSERT per event.
struct RawWriter {
    conn: SqliteConnection,
    stream: String,
    version: i64,
}

impl RawWriter {
    async fn open(path: &Path, stream: String) -> Result<Self> {
        // The pragmas SqliteEventStore uses with Durability::Full.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let mut conn = SqliteConnection::connect_with(&options).await.context("opening the baseline file")?;
        conn.execute(RAW_TABLE).await.context("creating raw_events")?;
        Ok(Self { conn, stream, version: 0 })
    }
}

#[async_trait]
impl Client for RawWriter {
    async fn op(&mut self) -> Result<u64> {
        let version = self.version + 1;
        sqlx::query(
            "INSERT INTO raw_events (event_id, stream_id, stream_version, event_type, schema_version, time_us, data) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(&self.stream)
        .bind(version)
        .bind(EVENT_TYPE)
        .bind(1_i64)
        .bind(chrono::Utc::now().timestamp_micros())
        .bind(payload(version as u64).to_string())
        .execute(&mut self.conn)
        .await
        .context("inserting into raw_events")?;
        self.version = version;
        Ok(1)
    }
}
