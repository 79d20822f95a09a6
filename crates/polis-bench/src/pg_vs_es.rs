//! `pg-vs-postgres-es`: whole commands (load, decide, append) through
//! polis's `Repository` and through cqrs-es's `PostgresCqrs`, each on its own
//! database on the same server, with commands that emit 1, 5 and 20 events.
//!
//! Both sides run the same aggregate: a ledger whose `Record` command emits
//! `n` entries. Every aggregate takes [`COMMANDS_PER_AGGREGATE`] commands,
//! so most commands load a short existing history and some start a new one.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use polis_core::{Metadata, Repository};
use polis_store::PgEventStore;
use postgres_es::PostgresCqrs;
use serde::{Deserialize, Serialize};
use sqlx::Executor as _;
use sqlx::postgres::PgConnectOptions;

use crate::Options;
use crate::delay::DelayProxy;
use crate::load::{self, Client, Measurement, Plan};
use crate::pg::{COSTS_HEADER, COSTS_NOTE, Costs, Postgres};
use crate::report::{Check, Section, Table, Target, latency, rate, ratio};
use crate::workload::{EVENT_TYPE, Entry};

/// Commands each aggregate receives before a client moves to a new one.
const COMMANDS_PER_AGGREGATE: u64 = 4;
/// Events per command, with the polis / postgres-es events/s ratio wanted.
const BATCHES: [(usize, f64); 3] = [(1, 1.0), (5, 2.0), (20, 4.0)];
/// Unmeasured commands per client before each run.
const WARMUP_COMMANDS: u64 = 20;
const POOL_SIZE: u32 = 16;

/// postgres-es's `db/init.sql`, less its sample rows and user.
const POSTGRES_ES_SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
)";

/// The command both frameworks execute.
#[derive(Debug, Clone)]
struct Record {
    count: usize,
    first_seq: u64,
}

/// The polis aggregate.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    entries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum LedgerEvent {
    #[serde(rename = "bench.entry_recorded")]
    EntryRecorded(Entry),
}

impl polis_core::DomainEvent for LedgerEvent {
    fn event_type(&self) -> &'static str {
        EVENT_TYPE
    }
}

impl polis_core::Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = Record;
    type Event = LedgerEvent;
    type Error = Infallible;

    fn handle(&self, command: &Record) -> Result<Vec<LedgerEvent>, Infallible> {
        Ok(entries(command).map(LedgerEvent::EntryRecorded).collect())
    }

    fn apply(mut self, _event: &LedgerEvent) -> Self {
        self.entries += 1;
        self
    }
}

/// The same aggregate for cqrs-es.
#[derive(Debug, Default, Serialize, Deserialize)]
struct EsLedger {
    entries: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum EsLedgerEvent {
    EntryRecorded(Entry),
}

impl cqrs_es::DomainEvent for EsLedgerEvent {
    fn event_type(&self) -> String {
        EVENT_TYPE.to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl cqrs_es::Aggregate for EsLedger {
    const TYPE: &'static str = "ledger";
    type Command = Record;
    type Event = EsLedgerEvent;
    type Error = Infallible;
    type Services = ();

    async fn handle(&mut self, command: Record, _: &(), sink: &EventSink<Self>) -> Result<(), Infallible> {
        for entry in entries(&command) {
            sink.write(EsLedgerEvent::EntryRecorded(entry), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, _event: EsLedgerEvent) {
        self.entries += 1;
    }
}

fn entries(command: &Record) -> impl Iterator<Item = Entry> + '_ {
    (0..command.count as u64).map(|i| Entry::new(command.first_seq + i))
}

/// A client's sequence of commands: which aggregate, which entries.
#[derive(Debug)]
struct Commands {
    prefix: String,
    count: usize,
    issued: u64,
}

impl Commands {
    fn new(framework: &str, round: u32, client: usize, count: usize) -> Self {
        Self { prefix: format!("{framework}-{count}-{round}-{client}"), count, issued: 0 }
    }

    fn next(&mut self) -> (String, Record) {
        let id = format!("{}-{}", self.prefix, self.issued / COMMANDS_PER_AGGREGATE);
        let command = Record { count: self.count, first_seq: self.issued * self.count as u64 };
        self.issued += 1;
        (id, command)
    }
}

struct PolisCommander {
    repository: Repository<Ledger, PgEventStore>,
    commands: Commands,
}

#[async_trait]
impl Client for PolisCommander {
    async fn op(&mut self) -> Result<u64> {
        let (id, command) = self.commands.next();
        let done =
            self.repository.execute(&id, &command, Metadata::default()).await.context("executing a polis command")?;
        Ok(done.events.len() as u64)
    }
}

struct EsCommander {
    cqrs: Arc<PostgresCqrs<EsLedger>>,
    commands: Commands,
}

#[async_trait]
impl Client for EsCommander {
    async fn op(&mut self) -> Result<u64> {
        let (id, command) = self.commands.next();
        let count = command.count as u64;
        self.cqrs.execute(&id, command).await.map_err(|e| anyhow!("executing a postgres-es command: {e}"))?;
        Ok(count)
    }
}

#[derive(Default)]
struct Pair {
    events_per_command: usize,
    wanted: f64,
    es: Measurement,
    es_costs: Costs,
    polis: Measurement,
    polis_costs: Costs,
}

pub(crate) async fn run(pg: &Postgres, options: &Options) -> Result<Section> {
    let clients = options.clients;
    let rounds = options.rounds();
    let per_client = options.commands.div_ceil(clients as u64 * u64::from(rounds)).max(1);
    let plan = Plan::Counted { warmup: WARMUP_COMMANDS, ops: per_client };

    let es_db = pg.database("postgres_es").await?;
    let pool = pg.pool(&es_db, 1).await?;
    pool.execute(POSTGRES_ES_SCHEMA).await.context("creating the postgres-es tables")?;
    pool.close().await;
    let polis_db = pg.database("polis").await?;

    // Clients reach the server through a delaying proxy when a network is simulated.
    let proxy = match options.rtt_ms {
        rtt if rtt > 0.0 => Some(DelayProxy::start(pg.address().await?, Duration::from_secs_f64(rtt / 2000.0))?),
        _ => None,
    };
    let route = |db: &PgConnectOptions| match &proxy {
        Some(proxy) => db.clone().host("127.0.0.1").port(proxy.port()),
        None => db.clone(),
    };
    let round_trip = pg.round_trip(&route(&polis_db)).await?;

    let mut pairs = Vec::new();
    for (count, wanted) in BATCHES {
        let mut pair = Pair { events_per_command: count, wanted, ..Pair::default() };
        for round in 0..rounds {
            eprintln!("pg-vs-postgres-es round {}: {count} event(s) per command, postgres-es…", round + 1);
            let pool = pg.pool(&route(&es_db), POOL_SIZE).await?;
            let cqrs = Arc::new(postgres_es::postgres_cqrs(pool.clone(), vec![], ()));
            let before = pg.counters().await?;
            let commanders = (0..clients)
                .map(|i| EsCommander { cqrs: cqrs.clone(), commands: Commands::new("es", round, i, count) })
                .collect();
            let m = load::run(commanders, plan).await?;
            drop(cqrs);
            pool.close().await;
            pair.es_costs.add(pg.counters_after_close(&es_db).await?.since(&before, m.all_events));
            pair.es.merge(m);

            eprintln!("pg-vs-postgres-es round {}: {count} event(s) per command, polis…", round + 1);
            let store = pg.polis_store(&route(&polis_db), POOL_SIZE).await?;
            let repository = Repository::<Ledger, _>::new(Arc::new(store.clone()));
            let before = pg.counters().await?;
            let commanders = (0..clients)
                .map(|i| PolisCommander {
                    repository: repository.clone(),
                    commands: Commands::new("polis", round, i, count),
                })
                .collect();
            let m = load::run(commanders, plan).await?;
            drop(repository);
            store.pool().close().await;
            drop(store);
            pair.polis_costs.add(pg.counters_after_close(&polis_db).await?.since(&before, m.all_events));
            pair.polis.merge(m);
        }
        pairs.push(pair);
    }
    let written = |m: fn(&Pair) -> &Measurement| pairs.iter().map(|p| m(p).all_events).sum();
    pg.expect_rows(&es_db, "events", written(|p| &p.es)).await?;
    pg.expect_rows(&polis_db, "polis_events", written(|p| &p.polis)).await?;
    Ok(section(options, per_client, round_trip, &pairs))
}

fn section(options: &Options, per_client: u64, round_trip: Duration, pairs: &[Pair]) -> Section {
    let mut body = String::new();
    let network = if options.rtt_ms > 0.0 { "through a proxy that delays each direction" } else { "over loopback" };
    let _ = writeln!(body, "Clients reach the server {network}: `SELECT 1` takes {} (p50).\n", latency(round_trip));
    let _ = writeln!(
        body,
        "{} concurrent clients; per framework and batch size, {} rounds that alternate the frameworks, in each of \
         which every client runs {WARMUP_COMMANDS} unmeasured commands, then {} measured ones; every aggregate takes {COMMANDS_PER_AGGREGATE} commands (the first creates it), so a command \
         loads 0 to {} earlier events. polis: `Repository::execute` on `PgEventStore`; postgres-es 0.5: \
         `PostgresCqrs::execute` (no queries, no snapshots), each in its own database on the same server.\n",
        options.clients,
        options.rounds(),
        per_client,
        COMMANDS_PER_AGGREGATE - 1,
    );
    let mut table = Table::new([
        "events/command",
        "postgres-es events/s",
        "polis events/s",
        "polis / postgres-es",
        "postgres-es p50 / p99",
        "polis p50 / p99",
    ]);
    let mut costs = Table::new([
        "events/command",
        "run",
        COSTS_HEADER[0],
        COSTS_HEADER[1],
        COSTS_HEADER[2],
        COSTS_HEADER[3],
        COSTS_HEADER[4],
    ]);
    let mut checks = Vec::new();
    for p in pairs {
        let events_ratio = p.polis.events_per_sec() / p.es.events_per_sec();
        table.row([
            p.events_per_command.to_string(),
            rate(p.es.events_per_sec()),
            rate(p.polis.events_per_sec()),
            ratio(events_ratio),
            format!("{} / {}", latency(p.es.p50()), latency(p.es.p99())),
            format!("{} / {}", latency(p.polis.p50()), latency(p.polis.p99())),
        ]);
        for (label, run_costs) in [("postgres-es", &p.es_costs), ("polis", &p.polis_costs)] {
            let [a, b, c, d, e] = run_costs.per_event();
            costs.row([p.events_per_command.to_string(), label.to_owned(), a, b, c, d, e]);
        }
        checks.push(Check::new(
            format!("events/s at {} events/command, polis / postgres-es", p.events_per_command),
            events_ratio,
            Target::AtLeast(p.wanted),
        ));
    }
    let _ = writeln!(body, "{table}");
    let _ = writeln!(body, "What each event cost, warm-up included:\n\n{costs}{COSTS_NOTE}");
    Section { title: "pg-vs-postgres-es".into(), body, checks }
}
