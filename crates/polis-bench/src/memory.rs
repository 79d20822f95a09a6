//! `memory`: resident memory while a store is filled with many events, then
//! read back through `read_all` and through a `catch_up` subscription, on
//! both backends. Reading in bounded batches should keep the peak flat
//! whatever the number of events.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use polis_core::{CatchUpOptions, EventStore, ExpectedVersion, NewEvent, catch_up};
use polis_store::{SqliteEventStore, SqliteOptions};

use crate::Options;
use crate::machine::{RssSampler, rss};
use crate::pg::Postgres;
use crate::report::{Section, Table, mib, rate};
use crate::workload::{EVENT_TYPE, payload};

/// Events per append while filling the store.
const APPEND_SIZE: u64 = 1_000;
/// Appends in flight while filling.
const WRITERS: usize = 4;
/// Streams the appends rotate over.
const STREAMS: u64 = 1_000;
/// Events per read, for `read_all` and the subscription.
const BATCH: usize = 1_000;

/// One phase: its rate and the resident memory around it.
struct Phase {
    name: &'static str,
    per_sec: f64,
    rss_start: u64,
    rss_peak: u64,
    rss_end: u64,
}

pub(crate) async fn run(pg: Option<&Postgres>, options: &Options) -> Result<Section> {
    let events = options.events;
    let sampler = RssSampler::start();
    let mut rows = Vec::new();

    if let Some(pg) = pg {
        eprintln!("memory: PostgreSQL, {events} events…");
        let db = pg.database("memory").await?;
        let store = pg.polis_store(&db, 8).await?;
        rows.push(("PostgreSQL", phases(Arc::new(store), events, &sampler).await?));
    }

    eprintln!("memory: SQLite, {events} events…");
    let dir = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("creating a directory for the sqlite file")?;
    let store = SqliteEventStore::open(dir.path().join("memory.db"), SqliteOptions::new("bench"))
        .await
        .context("opening the polis store")?;
    rows.push(("SQLite", phases(Arc::new(store), events, &sampler).await?));

    let mut body = String::new();
    let _ = writeln!(
        body,
        "{events} events of ~200 bytes per backend, written in appends of {APPEND_SIZE} (ExpectedVersion::Any, \
         {WRITERS} in flight, over {STREAMS} streams), then read back in batches of {BATCH}: first with \
         `read_all`, then with a `catch_up` subscription until the last position. Resident memory (VmRSS) is \
         sampled every 5 ms; \"start\" and \"end\" are taken at the phase's edges.\n"
    );
    let mut table =
        Table::new(["backend", "phase", "events/s", "RSS at start", "peak RSS", "RSS at end", "peak − start"]);
    for (backend, phases) in &rows {
        for p in phases {
            table.row([
                (*backend).to_owned(),
                p.name.to_owned(),
                rate(p.per_sec),
                mib(p.rss_start),
                mib(p.rss_peak),
                mib(p.rss_end),
                mib(p.rss_peak.saturating_sub(p.rss_start)),
            ]);
        }
    }
    let _ = writeln!(body, "{table}");
    Ok(Section { title: "memory".into(), body, checks: Vec::new() })
}

async fn phases<S: EventStore>(store: Arc<S>, events: u64, sampler: &RssSampler) -> Result<Vec<Phase>> {
    let mut phases = Vec::new();

    let (rss_start, started) = (rss(), Instant::now());
    sampler.take_peak();
    fill(&store, events).await?;
    phases.push(finish("write", events, started, rss_start, sampler));

    let (rss_start, started) = (rss(), Instant::now());
    sampler.take_peak();
    let mut after = 0;
    let mut read = 0;
    loop {
        let batch = store.read_all(after, BATCH).await.context("read_all")?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        read += batch.len() as u64;
    }
    ensure!(read == events, "read_all returned {read} events, expected {events}");
    phases.push(finish("read_all", events, started, rss_start, sampler));

    let (rss_start, started) = (rss(), Instant::now());
    sampler.take_peak();
    let head = store.head_position().await.context("reading the head position")?;
    let options = CatchUpOptions { batch_size: BATCH, poll_interval: Duration::from_millis(500) };
    let mut subscription = std::pin::pin!(catch_up(store.clone(), 0, options));
    let mut seen = 0;
    while let Some(event) = subscription.next().await {
        seen += 1;
        if event.context("catch-up subscription")?.global_position >= head {
            break;
        }
    }
    ensure!(seen == events, "the subscription delivered {seen} events up to the head, expected {events}");
    phases.push(finish("catch_up", events, started, rss_start, sampler));
    Ok(phases)
}

fn finish(name: &'static str, events: u64, started: Instant, rss_start: u64, sampler: &RssSampler) -> Phase {
    Phase {
        name,
        per_sec: events as f64 / started.elapsed().as_secs_f64(),
        rss_start,
        rss_peak: sampler.take_peak(),
        rss_end: rss(),
    }
}

/// Appends `events` events, building each batch only when its append starts.
pub(crate) async fn fill<S: EventStore>(store: &Arc<S>, events: u64) -> Result<()> {
    futures::stream::iter(0..events.div_ceil(APPEND_SIZE))
        .map(|k| {
            let store = store.clone();
            async move {
                let first = k * APPEND_SIZE;
                let batch: Vec<NewEvent> = (first..events.min(first + APPEND_SIZE))
                    .map(|seq| NewEvent::new(EVENT_TYPE, payload(seq)))
                    .collect();
                store.append(&format!("mem-{}", k % STREAMS), ExpectedVersion::Any, batch).await
            }
        })
        .buffer_unordered(WRITERS)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("filling the store")
}
