//! `pg-append`: `PgEventStore::append` of one event with an expected-version
//! check, against the cheapest durable write PostgreSQL offers for the same
//! row: one autocommitted INSERT into a table with polis_events' columns and
//! indexes.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::{Executor as _, PgPool};

use crate::Options;
use crate::load::{self, Client, Measurement};
use crate::pg::{COSTS_HEADER, COSTS_NOTE, Costs, Postgres};
use crate::report::{Check, RUN_HEADER, Section, Table, Target, ratio_row, run_row};
use crate::workload::{Appender, EVENT_TYPE, payload};

/// polis_events as the polis migration creates it, under another name.
const RAW_TABLE: &str = "CREATE TABLE raw_events (
    position        BIGSERIAL   PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    time            TIMESTAMPTZ NOT NULL,
    data            JSONB       NOT NULL,
    correlation_id  UUID,
    causation_id    UUID,
    traceparent     TEXT,
    UNIQUE (stream_id, stream_version)
)";

/// Connections per pool: more than the writers, as a service would configure.
const POOL_SIZE: u32 = 16;

pub(crate) async fn run(pg: &Postgres, options: &Options) -> Result<Section> {
    let plan = options.timed_round();
    let clients = options.clients;
    let raw_db = pg.database("raw").await?;
    let pool = pg.pool(&raw_db, 1).await?;
    pool.execute(RAW_TABLE).await.context("creating raw_events")?;
    pool.close().await;
    let polis_db = pg.database("polis").await?;

    let (mut raw, mut raw_costs) = (Measurement::default(), Costs::default());
    let (mut polis, mut polis_costs) = (Measurement::default(), Costs::default());
    for round in 0..options.rounds() {
        eprintln!("pg-append round {}: INSERT baseline, {clients} writers…", round + 1);
        let pool = pg.pool(&raw_db, POOL_SIZE).await?;
        let before = pg.counters().await?;
        let writers = (0..clients).map(|i| RawWriter::new(pool.clone(), format!("raw-{round}-{i}"))).collect();
        let m = load::run(writers, plan).await?;
        pool.close().await;
        raw_costs.add(pg.counters_after_close(&raw_db).await?.since(&before, m.all_events));
        raw.merge(m);

        eprintln!("pg-append round {}: polis PgEventStore::append, {clients} writers…", round + 1);
        let store = pg.polis_store(&polis_db, POOL_SIZE).await?;
        let before = pg.counters().await?;
        let writers = (0..clients).map(|i| Appender::new(store.clone(), format!("polis-{round}-{i}"))).collect();
        let m = load::run(writers, plan).await?;
        store.pool().close().await;
        drop(store);
        polis_costs.add(pg.counters_after_close(&polis_db).await?.since(&before, m.all_events));
        polis.merge(m);
    }

    pg.expect_rows(&raw_db, "raw_events", raw.all_events).await?;
    pg.expect_rows(&polis_db, "polis_events", polis.all_events).await?;

    let mut body = String::new();
    let _ = writeln!(
        body,
        "{clients} concurrent writers, each appending to its own stream, one ~200-byte event per operation; {}.\n",
        options.timed_description()
    );
    let mut table = Table::new(RUN_HEADER);
    table.row(run_row("baseline: INSERT, autocommit", &raw));
    table.row(run_row("polis: PgEventStore::append", &polis));
    table.row(ratio_row("polis / baseline", &polis, &raw));
    let _ = writeln!(body, "{table}");
    let mut costs =
        Table::new(["run", COSTS_HEADER[0], COSTS_HEADER[1], COSTS_HEADER[2], COSTS_HEADER[3], COSTS_HEADER[4]]);
    for (label, c) in [("baseline", &raw_costs), ("polis", &polis_costs)] {
        let [a, b, c, d, e] = c.per_event();
        costs.row([label.to_owned(), a, b, c, d, e]);
    }
    let _ = writeln!(body, "What each event cost, warm-up included:\n\n{costs}{COSTS_NOTE}");
    Ok(Section {
        title: "pg-append".into(),
        body,
        checks: vec![
            Check::new(
                "events/s, polis / INSERT",
                polis.events_per_sec() / raw.events_per_sec(),
                Target::AtLeast(0.85),
            ),
            Check::new("p99, polis / INSERT", polis.p99().as_secs_f64() / raw.p99().as_secs_f64(), Target::AtMost(1.5)),
        ],
    })
}

/// One autocommitted INSERT per event, tracking its stream's version itself.
struct RawWriter {
    pool: PgPool,
    stream: String,
    version: i64,
}

impl RawWriter {
    fn new(pool: PgPool, stream: String) -> Self {
        Self { pool, stream, version: 0 }
    }
}

#[async_trait]
impl Client for RawWriter {
    async fn op(&mut self) -> Result<u64> {
        let version = self.version + 1;
        sqlx::query(
            "INSERT INTO raw_events (event_id, stream_id, stream_version, event_type, schema_version, time, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(&self.stream)
        .bind(version)
        .bind(EVENT_TYPE)
        .bind(1_i32)
        .bind(chrono::Utc::now())
        .bind(payload(version as u64))
        .execute(&self.pool)
        .await
        .context("inserting into raw_events")?;
        self.version = version;
        Ok(1)
    }
}
