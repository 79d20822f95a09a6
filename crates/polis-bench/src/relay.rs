//! `relay`: the outbox relay from PostgreSQL to NATS JetStream.
//!
//! Four measurements, all against a throwaway PostgreSQL (fsync on) and a
//! throwaway `nats-server -js` (file storage):
//!
//! 1. **Throughput.** Raw async-nats JetStream publishes (send everything,
//!    await the acks in windows of 1024, as `NatsBus` does) of messages of
//!    the relay's size and headers, against `Relay::step` in a loop draining
//!    a pre-filled outbox through `NatsBus`. Rounds alternate the two. The
//!    relay's drain is repeated with smaller and larger batches.
//! 2. **Where a step's time goes**: the three calls a step makes (read the
//!    batch, publish it, mark it published), run one after another and
//!    timed one by one with each process's CPU, and the drain's WAL as
//!    PostgreSQL counts it. (`Relay::step` itself overlaps them.)
//! 3. **Commit-to-publish latency** under a steady open-loop load of half the
//!    store's append rate, with the relay spawned as a service would run it:
//!    a core NATS subscriber notes when each message appears on the bus,
//!    the writers note when each commit returned.
//! 4. **Backlog drain**: a large unpublished outbox (`--events`) drained to
//!    JetStream, with the process's resident memory sampled throughout. It
//!    runs first and is reported last.
//!
//! CPU is read from `/proc` for this process, the PostgreSQL server's whole
//! process tree and nats-server, when they run on this machine.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use polis_bus::nats::{NatsOptions, stream_name};
use polis_bus::{NatsBus, Relay, RelayOptions};
use polis_core::bus::Bus as _;
use polis_core::outbox::{Transaction as _, TransactionalStore};
use polis_core::stats::percentile;
use polis_core::{Message, StoreError};
use polis_store::{PgEventStore, PgOptions};
use polis_testkit::NatsServer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::Options;
use crate::load::{self, Client, Plan};
use crate::machine::{self, RssSampler, rss};
use crate::pg::{Costs, Postgres};
use crate::report::{Check, Section, Table, Target, latency, mib, rate, ratio};
use crate::workload::{EVENT_TYPE, payload};

/// Messages per throughput run (split over the rounds), at most `--events`.
const THROUGHPUT_MESSAGES: u64 = 150_000;
/// Messages whose relay steps are timed call by call, at most `--events`.
const BREAKDOWN_MESSAGES: u64 = 50_000;
/// Relay batch sizes compared, and messages drained with each, at most `--events`.
const BATCH_SIZES: [usize; 3] = [100, 500, 2_000];
const BATCH_SWEEP_MESSAGES: u64 = 50_000;
/// Publishes in flight before the oldest ack is awaited: `NatsBus`'s window.
const PUBLISH_WINDOW: usize = 1024;
/// Ordering keys the messages rotate over.
const KEYS: u64 = 1_000;
/// Rows per bulk INSERT when pre-filling an outbox, and INSERTs in flight.
const FILL_BATCH: u64 = 5_000;
const FILL_IN_FLIGHT: usize = 2;
/// `Transaction::send`s per transaction, and transactions in flight, when
/// filling through the API (to compare with the bulk INSERT).
const SENDS_PER_TX: u64 = 1_000;
const TX_IN_FLIGHT: usize = 4;
/// Writers measuring the append rate and producing the steady load.
const WRITERS: usize = 8;
/// Latency target for commit-to-publish p99.
const P99_TARGET: Duration = Duration::from_millis(20);
/// Connections per store pool.
const POOL_SIZE: u32 = 16;

pub(crate) async fn run(pg: &Postgres, options: &Options) -> Result<Section> {
    eprintln!("relay: starting a throwaway nats-server…");
    let nats = NatsServer::start().await.context("starting a throwaway nats-server")?;
    let probe = CpuProbe::new(pg, &nats).await;
    let client = async_nats::ConnectOptions::new()
        .name("polis-bench")
        .connect(nats.url())
        .await
        .context("connecting to nats")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(16 * 1024)
        .backpressure_on_inflight(false)
        .build(client.clone());
    let bus = Arc::new(NatsBus::connect(&nats.url(), NatsOptions::default()).await.context("connecting NatsBus")?);
    let nats_version = client.server_info().version;

    // The drain runs first, before the other runs' allocations (the raw
    // baseline's pre-built messages above all) leave freed heap behind that
    // could hide growth; it is reported last.
    let drain = drain(pg, options, &js, &bus, &probe).await.context("backlog drain")?;
    let throughput = throughput(pg, options, &js, &bus, &probe).await.context("throughput")?;
    let sweep = batch_sweep(pg, options, &js, &bus).await.context("batch sizes")?;
    let breakdown = breakdown(pg, options, &js, &bus, &client, &probe).await.context("step breakdown")?;
    let steady = steady(pg, options, &client, &bus).await.context("commit-to-publish latency")?;
    drop(bus);
    drop(client);
    drop(nats);

    let mut body = String::new();
    let _ = writeln!(
        body,
        "nats-server {nats_version} (`-js`, file storage, a throwaway server from polis-testkit) on the same \
         machine as PostgreSQL. Every message carries the ~200-byte JSON payload of the other scenarios and the \
         `NatsBus` headers (`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-subject`, `ce-time`, \
         `content-type`, `Nats-Msg-Id`); the ordering keys rotate over {KEYS}. Streams use `NatsBus`'s settings \
         (file storage, 2-minute de-duplication window) and are deleted after each run.\n"
    );

    let _ = writeln!(body, "### Throughput\n");
    let _ = writeln!(
        body,
        "{} messages per run in all, in {} rounds that alternate the runs. Baseline: async-nats JetStream \
         publishes of pre-built messages into a stream of their own, all sent back to back, the oldest ack \
         awaited once {PUBLISH_WINDOW} are in flight (`NatsBus`'s window). polis: the outbox of a fresh \
         `PgEventStore` database pre-filled by bulk INSERTs of {FILL_BATCH} rows into `polis_outbox` (the \
         columns and values `Transaction::send` writes) at {} messages/s — the API path, {SENDS_PER_TX} sends \
         per transaction, {TX_IN_FLIGHT} in flight, ran at {} messages/s — then `ANALYZE polis_outbox`, as \
         autovacuum would have run by then (never analyzed, an outbox of this size gets a plan that reads every \
         unpublished row for each batch), then `Relay::step` (default options: batches of {}; each step reads \
         the next batch and marks the previous one while its own publishes) called until it publishes nothing, \
         through `NatsBus`. Afterwards each stream held every message and the outbox backlog was 0. CPU is user + \
         system time per message of this process, of the PostgreSQL server (postmaster and every backend and \
         helper process) and of nats-server; \"cores busy\" is their sum over the wall time (2 cores here).\n",
        throughput.relay.messages,
        options.rounds(),
        rate(throughput.fill_rate),
        rate(breakdown.send_fill_rate),
        RelayOptions::default().batch_size,
    );
    let mut table = Table::new([
        "run",
        "messages/s",
        "messages",
        "seconds",
        "CPU/msg: bench",
        "CPU/msg: PostgreSQL",
        "CPU/msg: nats-server",
        "cores busy",
    ]);
    table.row(throughput.raw.row("baseline: raw JetStream publish"));
    table.row(throughput.relay.row("polis: Relay::step → NatsBus"));
    table.row([
        "polis / baseline".to_owned(),
        ratio(throughput.relay.per_sec() / throughput.raw.per_sec()),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let _ = writeln!(body, "{table}");

    let mut table = Table::new(["batch size", "messages/s"]);
    for (size, per_sec) in &sweep {
        table.row([size.to_string(), rate(*per_sec)]);
    }
    let _ = writeln!(
        body,
        "The same drain with other batch sizes (`RelayOptions::batch_size`), {} messages each, one run each:\n\n\
         {table}",
        BATCH_SWEEP_MESSAGES.min(options.events)
    );

    let _ = writeln!(body, "### Where a relay step's time goes\n");
    let _ = writeln!(
        body,
        "{} messages sent through `Transaction::send`, then drained by the three calls a relay step makes, \
         here one after another and timed one by one ({} batches of up to {}; cloning the batch's messages is \
         timed too), with the CPU each process spent meanwhile (clock ticks of 10 ms, so a few µs/message of \
         noise). `Relay::step` overlaps them: it reads the next batch and marks the previous one while a batch \
         publishes.\n",
        breakdown.messages,
        breakdown.batches,
        RelayOptions::default().batch_size
    );
    let mut table = Table::new([
        "call",
        "per batch",
        "per message",
        "share",
        "CPU/msg: bench",
        "CPU/msg: PostgreSQL",
        "CPU/msg: nats-server",
    ]);
    let total: Duration = breakdown.parts.iter().map(|p| p.1).sum();
    let mut total_cpu = CpuSpent::default();
    let per_message = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / breakdown.messages.max(1) as f64);
    for (name, d, cpu) in &breakdown.parts {
        let c = cpu.per_message(breakdown.messages);
        table.row([
            (*name).to_owned(),
            latency(*d / breakdown.batches.max(1)),
            per_message(*d),
            format!("{:.0}%", d.as_secs_f64() * 100.0 / total.as_secs_f64().max(1e-9)),
            c.own,
            c.pg,
            c.nats,
        ]);
        total_cpu.add(*cpu);
    }
    let c = total_cpu.per_message(breakdown.messages);
    table.row([
        format!("total ({} messages/s)", rate(breakdown.messages as f64 / total.as_secs_f64().max(1e-9))),
        latency(total / breakdown.batches.max(1)),
        per_message(total),
        "100%".to_owned(),
        c.own,
        c.pg,
        c.nats,
    ]);
    let _ = writeln!(body, "{table}");

    let [client_cpu, server_cpu, fsyncs, records, bytes] = breakdown.costs.per_event();
    let _ = writeln!(
        body,
        "The same drain as PostgreSQL counts it (`pg_stat_wal`, server-wide, and the CPU of the drain's \
         backends, read once they exited), per message: {records} WAL records, {bytes} of WAL, {fsyncs} WAL \
         fsyncs, {server_cpu} of backend CPU ({client_cpu} in this process). Round trips, p50: PostgreSQL \
         `SELECT 1` {:.0} µs, NATS PING {:.0} µs.\n",
        breakdown.pg_round_trip.as_secs_f64() * 1e6,
        breakdown.nats_round_trip.as_secs_f64() * 1e6,
    );

    let _ = writeln!(body, "### Commit-to-publish latency\n");
    let _ = writeln!(
        body,
        "First the store's append rate: {WRITERS} writers, each committing transactions of one \
         `Transaction::send` back to back ({} s after {} s of warm-up, no relay). Then an open-loop load of \
         half that rate: {WRITERS} writers on a fixed schedule, each committing one `send` per transaction, for \
         {} s after {} s of warm-up, with `Relay::new(…, RelayOptions::default()).spawn()` running on the same \
         `PgEventStore` (woken in-process by the commit, as in a service). A core NATS subscription on the \
         service's subjects notes when each message reaches the bus; latency is that moment minus the moment \
         the writer's `transaction` returned, for every message committed in the measured window. The outbox's \
         own view is `published_at − created_at` in `polis_outbox_published` (transaction start to the relay's \
         mark).\n",
        steady.rate_window.as_secs_f64(),
        options.warmup,
        options.seconds,
        options.warmup,
    );
    let mut table = Table::new(["measure", "value"]);
    table.row([
        "append rate, 8 writers × (1 send / transaction)".to_owned(),
        format!(
            "{} messages/s (transaction p50 {}, p99 {})",
            rate(steady.append_rate),
            latency(steady.append_p50),
            latency(steady.append_p99)
        ),
    ]);
    table.row([
        "offered load (commits in the window / window)".to_owned(),
        format!(
            "{} messages/s (target {}; writers at most {} behind schedule)",
            rate(steady.offered_rate),
            rate(steady.target_rate),
            latency(steady.max_lateness)
        ),
    ]);
    table.row([
        "relayed (messages on the bus in the window / window)".to_owned(),
        format!("{} messages/s", rate(steady.relayed_rate)),
    ]);
    table.row([
        "commit → on the bus: p50 / p99 / max".to_owned(),
        format!("{} / {} / {}", latency(steady.p50), latency(steady.p99), latency(steady.max)),
    ]);
    table.row([
        "outbox created_at → published_at: p50 / p99".to_owned(),
        format!("{} / {}", latency(steady.db_p50), latency(steady.db_p99)),
    ]);
    table.row([
        "outbox backlog: largest sample (every 100 ms) / when the load stopped".to_owned(),
        format!("{} / {}", steady.max_backlog, steady.backlog_at_end),
    ]);
    table.row([
        "messages committed / received on the bus".to_owned(),
        format!("{} / {} (every one, none twice)", steady.committed, steady.committed),
    ]);
    let _ = writeln!(body, "{table}");

    let _ = writeln!(body, "### Backlog drain\n");
    let _ = writeln!(
        body,
        "{} unpublished messages, written by bulk INSERTs ({} messages/s) and analyzed, then drained by \
         `Relay::step` in a loop (what the spawned relay does while batches come back full) into `NatsBus`. This \
         runs first in the scenario, so that heap freed by the other runs cannot hide growth. Resident memory \
         (VmRSS) of this process is sampled every 5 ms. Afterwards the stream held every message and the \
         backlog was 0.\n",
        drain.messages,
        rate(drain.fill_rate)
    );
    let mut table = Table::new(["measure", "value"]);
    table.row([
        "drain rate".to_owned(),
        format!("{} messages/s over {:.1} s", rate(drain.per_sec()), drain.elapsed.as_secs_f64()),
    ]);
    table.row([
        "CPU per message: bench / PostgreSQL / nats-server".to_owned(),
        format!("{} / {} / {}", drain.cpu.own, drain.cpu.pg, drain.cpu.nats),
    ]);
    table.row([
        "RSS before / peak / after (peak − before)".to_owned(),
        format!(
            "{} / {} / {} ({})",
            mib(drain.rss_before),
            mib(drain.rss_peak),
            mib(drain.rss_after),
            mib(drain.rss_peak.saturating_sub(drain.rss_before))
        ),
    ]);
    table.row([
        "nats-server RSS before / after".to_owned(),
        format!(
            "{} / {}",
            drain.nats_rss_before.map_or_else(|| "?".to_owned(), mib),
            drain.nats_rss_after.map_or_else(|| "?".to_owned(), mib)
        ),
    ]);
    let _ = writeln!(body, "{table}");
    let mut table = Table::new(["tenth of the drain", "messages/s", "peak RSS"]);
    for (i, (per_sec, peak)) in drain.tenths.iter().enumerate() {
        table.row([format!("{}", i + 1), rate(*per_sec), mib(*peak)]);
    }
    let _ = writeln!(body, "Per tenth of the messages:\n\n{table}");

    Ok(Section {
        title: "relay".into(),
        body,
        checks: vec![
            Check::new(
                "messages/s, relay / raw JetStream publish",
                throughput.relay.per_sec() / throughput.raw.per_sec(),
                Target::AtLeast(0.4),
            ),
            Check::new(
                "messages/s, relay drain / store append rate",
                throughput.relay.per_sec() / steady.append_rate,
                Target::AtLeast(1.0),
            ),
            Check::new(
                "relayed / offered at half the append rate",
                steady.relayed_rate / steady.offered_rate,
                Target::AtLeast(0.99),
            ),
            Check::new(
                "p99 commit → publish / 20 ms",
                steady.p99.as_secs_f64() / P99_TARGET.as_secs_f64(),
                Target::AtMost(1.0),
            ),
        ],
    })
}

// ---------------------------------------------------------------------------
// Throughput

/// One run (or several, summed): messages, time and CPU.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    messages: u64,
    elapsed: Duration,
    cpu: CpuSpent,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, other: Run) {
        self.messages += other.messages;
        self.elapsed += other.elapsed;
        self.cpu.add(other.cpu);
    }

    fn row(&self, label: &str) -> [String; 8] {
        let per = self.cpu.per_message(self.messages);
        [
            label.to_owned(),
            rate(self.per_sec()),
            self.messages.to_string(),
            format!("{:.2}", self.elapsed.as_secs_f64()),
            per.own,
            per.pg,
            per.nats,
            format!("{:.2}", self.cpu.total().as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)),
        ]
    }
}

struct Throughput {
    raw: Run,
    relay: Run,
    fill_rate: f64,
}

async fn throughput(
    pg: &Postgres,
    options: &Options,
    js: &jetstream::Context,
    bus: &Arc<NatsBus>,
    probe: &CpuProbe,
) -> Result<Throughput> {
    let rounds = u64::from(options.rounds());
    let per_round = (THROUGHPUT_MESSAGES.min(options.events) / rounds).max(1);
    let (mut raw, mut relayed) = (Run::default(), Run::default());
    let (mut filled, mut fill_time) = (0, Duration::ZERO);
    for round in 1..=rounds {
        eprintln!("relay round {round}: raw JetStream publishes of {per_round} messages…");
        let service = format!("rawpub-{round}");
        let stream = create_raw_stream(js, &service).await?;
        let messages: Vec<_> = (0..per_round).map(|seq| raw_message(&service, seq)).collect();
        let subject = polis_core::message::subject(&service, polis_core::MessageKind::Event, EVENT_TYPE);
        let before = probe.read();
        let started = Instant::now();
        publish_raw(js, &subject, messages).await?;
        let elapsed = started.elapsed();
        raw.add(Run { messages: per_round, elapsed, cpu: probe.read().since(&before) });
        expect_stream(js, &stream, per_round).await?;
        js.delete_stream(&stream).await.context("deleting the raw stream")?;

        eprintln!("relay round {round}: Relay::step draining {per_round} messages…");
        let service = format!("relay-{round}");
        let db = pg.database(&format!("relay_{round}")).await?;
        let store = Arc::new(open_store(&db, &service).await?);
        let started = Instant::now();
        fill_bulk(&store, per_round).await?;
        fill_time += started.elapsed();
        filled += per_round;
        analyze(&store).await?;
        let relay = Relay::new(store.clone(), bus.clone(), RelayOptions::default());
        let before = probe.read();
        let started = Instant::now();
        let published = step_until_empty(&relay).await?;
        let elapsed = started.elapsed();
        relayed.add(Run { messages: published, elapsed, cpu: probe.read().since(&before) });
        ensure!(published == per_round, "the relay published {published} messages, {per_round} were in the outbox");
        expect_drained(js, &store, per_round).await?;
        store.pool().close().await;
    }
    Ok(Throughput { raw, relay: relayed, fill_rate: filled as f64 / fill_time.as_secs_f64().max(1e-9) })
}

/// Relay throughput with each of [`BATCH_SIZES`].
async fn batch_sweep(
    pg: &Postgres,
    options: &Options,
    js: &jetstream::Context,
    bus: &Arc<NatsBus>,
) -> Result<Vec<(usize, f64)>> {
    let count = BATCH_SWEEP_MESSAGES.min(options.events);
    let mut rates = Vec::new();
    for batch_size in BATCH_SIZES {
        eprintln!("relay: Relay::step with batches of {batch_size}, {count} messages…");
        let service = format!("relay-batch-{batch_size}");
        let db = pg.database(&format!("relay_batch_{batch_size}")).await?;
        let store = Arc::new(open_store(&db, &service).await?);
        fill_bulk(&store, count).await?;
        analyze(&store).await?;
        let relay = Relay::new(store.clone(), bus.clone(), RelayOptions { batch_size, ..Default::default() });
        let started = Instant::now();
        let published = step_until_empty(&relay).await?;
        rates.push((batch_size, published as f64 / started.elapsed().as_secs_f64()));
        ensure!(published == count, "the relay published {published} messages, {count} were in the outbox");
        expect_drained(js, &store, count).await?;
        store.pool().close().await;
    }
    Ok(rates)
}

/// A stream for raw publishes configured as `NatsBus` configures its own.
async fn create_raw_stream(js: &jetstream::Context, service: &str) -> Result<String> {
    let name = stream_name(service);
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("polis.{service}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: NatsOptions::default().duplicate_window,
        ..Default::default()
    })
    .await
    .context("creating the raw stream")?;
    Ok(name)
}

/// The headers and body `NatsBus` would send for message `seq`.
fn raw_message(service: &str, seq: u64) -> (HeaderMap, Vec<u8>) {
    let id = Uuid::now_v7().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-type", EVENT_TYPE);
    headers.insert("ce-source", service);
    headers.insert("ce-subject", key(seq).as_str());
    headers.insert("ce-time", Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true).as_str());
    headers.insert("content-type", "application/json");
    headers.insert("Nats-Msg-Id", id.as_str());
    let body = serde_json::to_vec(&payload(seq)).unwrap_or_default();
    (headers, body)
}

/// Sends every message, awaiting the oldest ack once the window is full.
async fn publish_raw(js: &jetstream::Context, subject: &str, messages: Vec<(HeaderMap, Vec<u8>)>) -> Result<()> {
    let mut pending: VecDeque<PublishAckFuture> = VecDeque::with_capacity(PUBLISH_WINDOW);
    for (headers, body) in messages {
        let ack = js
            .send_publish(subject.to_owned(), PublishMessage::build().headers(headers).payload(body.into()))
            .await
            .context("publishing")?;
        pending.push_back(ack);
        if pending.len() >= PUBLISH_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await.context("awaiting a publish ack")?;
        }
    }
    while let Some(oldest) = pending.pop_front() {
        oldest.await.context("awaiting a publish ack")?;
    }
    Ok(())
}

async fn expect_stream(js: &jetstream::Context, name: &str, expected: u64) -> Result<()> {
    let mut stream = js.get_stream(name).await.with_context(|| format!("looking up stream {name}"))?;
    let held = stream.info().await.with_context(|| format!("reading stream {name}"))?.state.messages;
    ensure!(held == expected, "stream {name} holds {held} messages, {expected} were published");
    Ok(())
}

/// Checks that the store's stream holds `expected` messages and its outbox
/// is empty, then deletes the stream.
async fn expect_drained(js: &jetstream::Context, store: &PgEventStore, expected: u64) -> Result<()> {
    let name = stream_name(store.service());
    expect_stream(js, &name, expected).await?;
    let backlog = store.outbox_backlog().await.context("reading the outbox backlog")?.unpublished;
    ensure!(backlog == 0, "{backlog} messages are still unpublished");
    js.delete_stream(&name).await.context("deleting the relay's stream")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Outbox

/// A polis store for `service`, with a pool configured as
/// `PgEventStore::connect` configures its own (no ping before each use).
async fn open_store(db: &PgConnectOptions, service: &str) -> Result<PgEventStore> {
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .test_before_acquire(false)
        .connect_with(db.clone())
        .await
        .context("connecting a pool")?;
    PgEventStore::from_pool(pool, PgOptions::new(service)).await.context("opening the polis store")
}

fn key(seq: u64) -> String {
    format!("order-{:04}", seq % KEYS)
}

fn message(service: &str, seq: u64) -> Message {
    Message::event(service, EVENT_TYPE, &key(seq), payload(seq))
}

/// Calls `Relay::step` until it publishes nothing; returns how many it published.
async fn step_until_empty(relay: &Relay<PgEventStore, NatsBus>) -> Result<u64> {
    let mut published = 0;
    loop {
        match relay.step().await.context("relay step")? {
            0 => return Ok(published),
            n => published += n as u64,
        }
    }
}

/// Gives the planner the outbox's statistics, as autovacuum would have by
/// the time a real backlog is drained. On a table never analyzed, PostgreSQL
/// guesses that few rows are unpublished and, for tables of some 10⁴–10⁵
/// rows, reads *every* unpublished row (bitmap scan + top-N sort) for each
/// batch of 500: a drain slower by the size of the backlog.
async fn analyze(store: &PgEventStore) -> Result<()> {
    sqlx::query("ANALYZE polis_outbox").execute(store.pool()).await.context("analyzing polis_outbox")?;
    Ok(())
}

/// Writes `count` unpublished messages with bulk INSERTs of the columns
/// `Transaction::send` writes.
async fn fill_bulk(store: &PgEventStore, count: u64) -> Result<()> {
    let service = store.service().to_owned();
    futures::stream::iter(0..count.div_ceil(FILL_BATCH))
        .map(|k| {
            let (pool, service) = (store.pool().clone(), service.clone());
            async move {
                let first = k * FILL_BATCH;
                let messages: Vec<Message> =
                    (first..count.min(first + FILL_BATCH)).map(|s| message(&service, s)).collect();
                insert_messages(&pool, &messages).await
            }
        })
        .buffered(FILL_IN_FLIGHT)
        .try_for_each(|()| async { Ok(()) })
        .await
}

async fn insert_messages(pool: &sqlx::PgPool, messages: &[Message]) -> Result<()> {
    let column = |f: fn(&Message) -> String| messages.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time, data, \
         correlation_id, causation_id, traceparent) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                              $7::timestamptz[], $8::jsonb[], $9::uuid[], $10::uuid[], $11::text[])",
    )
    .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
    .bind(column(|m| m.kind.as_str().to_owned()))
    .bind(column(|m| m.source.clone()))
    .bind(column(|m| m.target.clone()))
    .bind(column(|m| m.message_type.clone()))
    .bind(column(|m| m.key.clone()))
    .bind(messages.iter().map(|m| m.time).collect::<Vec<DateTime<Utc>>>())
    .bind(messages.iter().map(|m| m.data.clone()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.metadata.correlation_id).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.metadata.causation_id).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.metadata.traceparent.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await
    .context("bulk-inserting into polis_outbox")?;
    Ok(())
}

/// Writes `count` messages through `Transaction::send`, many per transaction.
async fn fill_with_sends(store: &PgEventStore, count: u64) -> Result<()> {
    futures::stream::iter(0..count.div_ceil(SENDS_PER_TX))
        .map(|k| {
            let store = store.clone();
            async move {
                let service = store.service().to_owned();
                let first = k * SENDS_PER_TX;
                let seqs = first..count.min(first + SENDS_PER_TX);
                store
                    .transaction::<_, _, StoreError>(async move |tx| {
                        for seq in seqs {
                            tx.send(&message(&service, seq)).await?;
                        }
                        Ok(())
                    })
                    .await
                    .context("sending through the outbox")
            }
        })
        .buffer_unordered(TX_IN_FLIGHT)
        .try_for_each(|()| async { Ok(()) })
        .await
}

// ---------------------------------------------------------------------------
// Where a step's time goes

struct Breakdown {
    messages: u64,
    batches: u32,
    /// Each call: its name, wall time and CPU, summed over the batches.
    parts: [(&'static str, Duration, CpuSpent); 4],
    send_fill_rate: f64,
    /// The drain's WAL and CPU as the server counts them.
    costs: Costs,
    pg_round_trip: Duration,
    nats_round_trip: Duration,
}

async fn breakdown(
    pg: &Postgres,
    options: &Options,
    js: &jetstream::Context,
    bus: &Arc<NatsBus>,
    client: &async_nats::Client,
    probe: &CpuProbe,
) -> Result<Breakdown> {
    let count = BREAKDOWN_MESSAGES.min(options.events);
    eprintln!("relay: {count} messages through Transaction::send, then timing each call of a step…");
    let db = pg.database("relay_breakdown").await?;
    let store = open_store(&db, "relay-steps").await?;
    let started = Instant::now();
    fill_with_sends(&store, count).await?;
    let send_fill_rate = count as f64 / started.elapsed().as_secs_f64();
    analyze(&store).await?;
    // A fresh pool, so that the server's counters cover the drain alone.
    store.pool().close().await;
    let wal_before = pg.counters_after_close(&db).await?;
    let store = open_store(&db, "relay-steps").await?;
    let batch = RelayOptions::default().batch_size;
    let mut parts = [
        ("`unpublished(500)`: SELECT + decode", Duration::ZERO, CpuSpent::default()),
        ("clone the messages", Duration::ZERO, CpuSpent::default()),
        ("`NatsBus::publish`: encode, send, await acks", Duration::ZERO, CpuSpent::default()),
        ("`mark_published`: DELETE + record", Duration::ZERO, CpuSpent::default()),
    ];
    // Adds the time and CPU since the previous call to part `i`.
    let mut last = (probe.read(), Instant::now());
    let mut tally = |i: usize| {
        let elapsed = last.1.elapsed();
        let cpu = probe.read();
        let part: &mut (&str, Duration, CpuSpent) = &mut parts[i];
        part.1 += elapsed;
        part.2.add(cpu.since(&last.0));
        last = (cpu, Instant::now());
    };
    let (mut messages, mut batches) = (0, 0);
    loop {
        let entries = store.unpublished(batch).await.context("reading the outbox")?;
        tally(0);
        if entries.is_empty() {
            break;
        }
        let batch_messages: Vec<Message> = entries.iter().map(|e| e.message.clone()).collect();
        tally(1);
        bus.publish(&batch_messages).await.context("publishing")?;
        tally(2);
        let positions: Vec<u64> = entries.iter().map(|e| e.position).collect();
        store.mark_published(&positions).await.context("marking published")?;
        tally(3);
        messages += entries.len() as u64;
        batches += 1;
    }
    ensure!(messages == count, "drained {messages} messages, {count} were sent");
    store.pool().close().await;
    let costs = pg.counters_after_close(&db).await?.since(&wal_before, messages);
    let store = open_store(&db, "relay-steps").await?;
    expect_drained(js, &store, count).await?;
    let pg_round_trip = pg.round_trip(&db).await?;
    store.pool().close().await;
    let nats_round_trip = nats_round_trip(client).await?;
    Ok(Breakdown { messages, batches, parts, send_fill_rate, costs, pg_round_trip, nats_round_trip })
}

/// The median round trip of a NATS PING (a flush) on `client`'s connection.
async fn nats_round_trip(client: &async_nats::Client) -> Result<Duration> {
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        client.flush().await.context("timing a nats round trip")?;
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

// ---------------------------------------------------------------------------
// Commit-to-publish latency

struct Steady {
    rate_window: Duration,
    append_rate: f64,
    append_p50: Duration,
    append_p99: Duration,
    target_rate: f64,
    offered_rate: f64,
    relayed_rate: f64,
    max_lateness: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    db_p50: Duration,
    db_p99: Duration,
    max_backlog: u64,
    backlog_at_end: u64,
    committed: u64,
}

/// One transaction with one `send` per operation.
struct Sender {
    store: PgEventStore,
    seq: u64,
    stride: u64,
}

#[async_trait]
impl Client for Sender {
    async fn op(&mut self) -> Result<u64> {
        let m = message(self.store.service(), self.seq);
        self.seq += self.stride;
        self.store
            .transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await)
            .await
            .context("sending through the outbox")?;
        Ok(1)
    }
}

async fn steady(pg: &Postgres, options: &Options, client: &async_nats::Client, bus: &Arc<NatsBus>) -> Result<Steady> {
    let warmup = Duration::from_secs_f64(options.warmup);
    let rate_window = Duration::from_secs_f64((options.seconds / 2.0).max(1.0));
    eprintln!("relay: append rate of {WRITERS} writers, one send per transaction…");
    let db = pg.database("relay_rate").await?;
    let store = open_store(&db, "relay-rate").await?;
    let writers =
        (0..WRITERS).map(|i| Sender { store: store.clone(), seq: i as u64, stride: WRITERS as u64 }).collect();
    let m = load::run(writers, Plan::Timed { warmup, measure: rate_window }).await?;
    store.pool().close().await;
    let append_rate = m.events_per_sec();
    let target_rate = append_rate / 2.0;

    eprintln!("relay: steady load of {} messages/s with the relay running…", rate(target_rate));
    let db = pg.database("relay_steady").await?;
    let service = "relay-steady";
    let store = open_store(&db, service).await?;
    let mut subscriber = client.subscribe(format!("polis.{service}.>")).await.context("subscribing")?;
    client.flush().await.context("flushing the subscription")?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let collector = tokio::spawn(async move {
        let mut received: Vec<(Uuid, Instant)> = Vec::new();
        loop {
            tokio::select! {
                message = subscriber.next() => {
                    let Some(message) = message else { break };
                    let now = Instant::now();
                    let id = message.headers.as_ref().and_then(|h| h.get("ce-id")).and_then(|v| Uuid::parse_str(v.as_str()).ok());
                    if let Some(id) = id {
                        received.push((id, now));
                    }
                }
                _ = stop_rx.changed() => break,
            }
        }
        received
    });
    let backlog_store = store.clone();
    let mut stop_backlog = stop_tx.subscribe();
    let backlog_sampler = tokio::spawn(async move {
        let mut max = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Ok(b) = backlog_store.outbox_backlog().await {
                        max = max.max(b.unpublished);
                    }
                }
                _ = stop_backlog.changed() => break,
            }
        }
        max
    });
    let relay = Relay::new(Arc::new(store.clone()), bus.clone(), RelayOptions::default()).spawn();

    let start = Instant::now() + Duration::from_millis(50);
    let window_start = start + warmup;
    let end = window_start + Duration::from_secs_f64(options.seconds);
    let wall_window_start = Utc::now() + chrono::Duration::from_std(window_start - Instant::now()).unwrap_or_default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| tokio::spawn(paced_writer(store.clone(), i, target_rate, start, window_start, end)))
        .collect();
    let mut commits = Vec::new();
    let mut max_lateness = Duration::ZERO;
    for w in writers {
        let (c, lateness) = w.await.context("a writer panicked")??;
        commits.extend(c);
        max_lateness = max_lateness.max(lateness);
    }
    let backlog_at_end = store.outbox_backlog().await.context("reading the backlog")?.unpublished;
    let drained = Instant::now();
    loop {
        if store.outbox_backlog().await.context("reading the backlog")?.unpublished == 0 {
            break;
        }
        if drained.elapsed() > Duration::from_secs(60) {
            bail!("the relay left messages unpublished for 60 s after the load stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last publishes reach the subscriber.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(relay);
    let _ = stop_tx.send(true);
    let received = collector.await.context("the collector panicked")?;
    let max_backlog = backlog_sampler.await.context("the backlog sampler panicked")?;

    let committed = commits.len() as u64;
    let received: HashMap<Uuid, Instant> = received.into_iter().collect();
    ensure!(
        received.len() as u64 == committed,
        "{committed} messages were committed, {} distinct ones reached the subscriber",
        received.len()
    );
    let mut latencies = Vec::new();
    let mut in_window = 0u64;
    for (id, committed_at, measured) in &commits {
        let arrived = *received.get(id).with_context(|| format!("message {id} never reached the bus"))?;
        if *measured {
            in_window += 1;
            latencies.push(arrived.saturating_duration_since(*committed_at));
        }
    }
    latencies.sort_unstable();
    let window = end - window_start;
    let relayed = received.values().filter(|t| **t >= window_start && **t < end).count();

    let row: (f64, f64) = sqlx::query_as(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)::float8), \
                percentile_disc(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)::float8) \
         FROM polis_outbox_published WHERE created_at >= $1",
    )
    .bind(wall_window_start)
    .fetch_one(store.pool())
    .await
    .context("reading outbox latencies")?;
    let name = stream_name(service);
    let js = jetstream::new(client.clone());
    expect_stream(&js, &name, committed).await?;
    js.delete_stream(&name).await.context("deleting the steady stream")?;
    store.pool().close().await;

    Ok(Steady {
        rate_window,
        append_rate,
        append_p50: m.p50(),
        append_p99: m.p99(),
        target_rate,
        offered_rate: in_window as f64 / window.as_secs_f64(),
        relayed_rate: relayed as f64 / window.as_secs_f64(),
        max_lateness,
        p50: percentile(&latencies, 0.5).unwrap_or_default(),
        p99: percentile(&latencies, 0.99).unwrap_or_default(),
        max: latencies.last().copied().unwrap_or_default(),
        db_p50: Duration::from_secs_f64(row.0.max(0.0)),
        db_p99: Duration::from_secs_f64(row.1.max(0.0)),
        max_backlog,
        backlog_at_end,
        committed,
    })
}

/// Commits one message per transaction on writer `i`'s share of a fixed
/// schedule of `rate` messages/s; returns each message's id, when its commit
/// returned and whether it was due in the measured window, and how late the
/// writer started its latest transaction at worst.
async fn paced_writer(
    store: PgEventStore,
    i: usize,
    rate: f64,
    start: Instant,
    window_start: Instant,
    end: Instant,
) -> Result<(Vec<(Uuid, Instant, bool)>, Duration)> {
    let mut commits = Vec::new();
    let mut lateness = Duration::ZERO;
    for k in 0.. {
        let seq = k * WRITERS as u64 + i as u64;
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        lateness = lateness.max(Instant::now().saturating_duration_since(due));
        let m = message(store.service(), seq);
        let id = m.id;
        store
            .transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await)
            .await
            .context("sending through the outbox")?;
        commits.push((id, Instant::now(), due >= window_start));
    }
    Ok((commits, lateness))
}

// ---------------------------------------------------------------------------
// Backlog drain

struct Drain {
    messages: u64,
    fill_rate: f64,
    elapsed: Duration,
    cpu: CpuPerMessage,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    nats_rss_before: Option<u64>,
    nats_rss_after: Option<u64>,
    /// Rate and peak RSS per tenth of the messages.
    tenths: Vec<(f64, u64)>,
}

impl Drain {
    fn per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn drain(
    pg: &Postgres,
    options: &Options,
    js: &jetstream::Context,
    bus: &Arc<NatsBus>,
    probe: &CpuProbe,
) -> Result<Drain> {
    let count = options.events.max(1);
    eprintln!("relay: filling an outbox with {count} messages…");
    let db = pg.database("relay_drain").await?;
    let store = Arc::new(open_store(&db, "relay-drain").await?);
    let started = Instant::now();
    fill_bulk(&store, count).await?;
    let fill_rate = count as f64 / started.elapsed().as_secs_f64();
    analyze(&store).await?;

    eprintln!("relay: draining {count} messages…");
    let relay = Relay::new(store.clone(), bus.clone(), RelayOptions::default());
    let sampler = RssSampler::start();
    let nats_rss_before = probe.nats_rss();
    let rss_before = rss();
    sampler.take_peak();
    let before = probe.read();
    let started = Instant::now();
    let mut published = 0;
    let mut tenths = Vec::new();
    let (mut mark_count, mut mark_time) = (0, started);
    let mut rss_peak = 0;
    loop {
        let n = relay.step().await.context("relay step")?;
        if n == 0 {
            break;
        }
        published += n as u64;
        let next = count * (tenths.len() as u64 + 1) / 10;
        if published >= next && tenths.len() < 10 {
            let now = Instant::now();
            let peak = sampler.take_peak();
            rss_peak = rss_peak.max(peak);
            tenths.push(((published - mark_count) as f64 / (now - mark_time).as_secs_f64().max(1e-9), peak));
            (mark_count, mark_time) = (published, now);
        }
    }
    let elapsed = started.elapsed();
    let cpu = probe.read().since(&before).per_message(published);
    rss_peak = rss_peak.max(sampler.take_peak());
    let rss_after = rss();
    let nats_rss_after = probe.nats_rss();
    drop(sampler);
    ensure!(published == count, "the relay published {published} messages, {count} were in the outbox");
    expect_drained(js, &store, count).await?;
    // Write the drain's dirty pages out now rather than during the next runs
    // (a superuser's right; skipped on a server given by URL without it).
    let _ = sqlx::query("CHECKPOINT").execute(store.pool()).await;
    store.pool().close().await;
    Ok(Drain {
        messages: count,
        fill_rate,
        elapsed,
        cpu,
        rss_before,
        rss_peak,
        rss_after,
        nats_rss_before,
        nats_rss_after,
        tenths,
    })
}

// ---------------------------------------------------------------------------
// CPU of the three processes

/// Finds the PostgreSQL server's and nats-server's processes, when they run
/// on this machine.
struct CpuProbe {
    postmaster: Option<String>,
    nats: Option<String>,
}

impl CpuProbe {
    async fn new(pg: &Postgres, nats: &NatsServer) -> Self {
        Self { postmaster: postmaster_pid(pg).await, nats: nats_pid(nats) }
    }

    /// Reads this process's CPU before and after scanning for the others',
    /// so that [`Cpu::since`] leaves the scans out.
    fn read(&self) -> Cpu {
        let own = || machine::cpu_times("self").map_or(Duration::ZERO, |(own, _)| own);
        let own_start = own();
        let pg = self.postmaster.as_deref().and_then(tree_cpu);
        let nats = self.nats.as_deref().and_then(|pid| machine::cpu_times(pid).map(|(own, _)| own));
        Cpu { own_start, own_end: own(), pg, nats }
    }

    fn nats_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.nats.as_deref()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

/// Cumulative CPU time of the three processes.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    own_start: Duration,
    own_end: Duration,
    pg: Option<Duration>,
    nats: Option<Duration>,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> CpuSpent {
        let diff = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a.saturating_sub(b));
        CpuSpent {
            own: self.own_start.saturating_sub(before.own_end),
            pg: diff(self.pg, before.pg),
            nats: diff(self.nats, before.nats),
        }
    }
}

/// CPU spent during a run.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSpent {
    own: Duration,
    pg: Option<Duration>,
    nats: Option<Duration>,
}

struct CpuPerMessage {
    own: String,
    pg: String,
    nats: String,
}

impl CpuSpent {
    fn add(&mut self, other: CpuSpent) {
        let sum = |a: Option<Duration>, b: Option<Duration>, first: bool| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) if first => b,
            _ => None,
        };
        let first = self.own.is_zero() && self.pg.is_none() && self.nats.is_none();
        self.own += other.own;
        self.pg = sum(self.pg, other.pg, first);
        self.nats = sum(self.nats, other.nats, first);
    }

    fn total(&self) -> Duration {
        self.own + self.pg.unwrap_or_default() + self.nats.unwrap_or_default()
    }

    fn per_message(&self, messages: u64) -> CpuPerMessage {
        let per = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / messages.max(1) as f64);
        CpuPerMessage {
            own: per(self.own),
            pg: self.pg.map_or_else(|| "?".to_owned(), per),
            nats: self.nats.map_or_else(|| "?".to_owned(), per),
        }
    }
}

/// The postmaster: the parent of one of our backends, if it runs here.
async fn postmaster_pid(pg: &Postgres) -> Option<String> {
    let db = pg.database("relay_probe").await.ok()?;
    let pool = PgPoolOptions::new().max_connections(1).connect_with(db).await.ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.ok()?;
    // Read while the backend still runs.
    let parent = parent_pid(&backend.to_string());
    pool.close().await;
    let parent = parent?;
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    (comm.trim() == "postgres").then_some(parent)
}

fn parent_pid(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned())
}

/// CPU of `root`, its exited children, and its live children.
fn tree_cpu(root: &str) -> Option<Duration> {
    let (own, reaped) = machine::cpu_times(root)?;
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if parent_pid(pid).as_deref() == Some(root)
            && let Some((own, reaped)) = machine::cpu_times(pid)
        {
            total += own + reaped;
        }
    }
    Some(total)
}

/// The nats-server process serving `server`'s store directory.
fn nats_pid(server: &NatsServer) -> Option<String> {
    let dir = server.store_dir();
    let dir = dir.to_str()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|arg| arg == dir.as_bytes()) {
            return Some(pid.to_owned());
        }
    }
    None
}
