//! A projector SIGKILLed between and during batches, as a real process, on
//! SQLite and PostgreSQL: nothing applied twice, nothing lost, and the live
//! read model complete to its readers while a rebuild is killed and resumed.
//!
//! `main` is the driver (the test has no harness). It appends a few thousand
//! events, then starts this same binary as a child with `POLIS_PROJECTION_CHILD`
//! set to the store to open (a SQLite path or a PostgreSQL URL); the child
//! runs a [`Projector`] with a slow [`Tally`] until it is killed. The driver
//! SIGKILLs children at several checkpoints of the first build and of a
//! rebuild, each time at another moment of a batch (timed from the batch
//! before), starts new ones (each waits out its dead predecessor's lease),
//! and lets the last one finish. All along it polls the store and checks:
//!
//! - in every generation, the read model holds exactly the events up to its
//!   checkpoint (one statement reads both, so one snapshot), and checkpoints
//!   never go backwards;
//! - once a generation is live, every read of the view gives every stream's
//!   full count, until and after the rebuild's cut-over;
//! - at the end, each stream's count equals its number of events and the
//!   checkpoint equals the log's head.
//!
//! [`Tally`] refuses an event out of its stream's order, so an event applied
//! twice (or skipped) after a kill stops the child, which exits with a
//! failure the driver reports.
#![allow(clippy::unwrap_used)]

mod tally;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polis_core::{EventStore, ExpectedVersion, Generation, NewEvent};
use polis_projection::{GenerationRow, Projector, ProjectorOptions, State};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use tally::Tally;

/// Set in a child: the store it opens (a SQLite file, or a `postgres://` URL).
const CHILD: &str = "POLIS_PROJECTION_CHILD";
/// A child that refuses an event (applied twice or out of order) exits with this.
const REFUSED: i32 = 3;

/// Streams of counted events; stream `i` gets `BASE + 2 i` of them.
const STREAMS: usize = 32;
const BASE: usize = 40;
/// Events the projection does not want, on streams of their own.
const NOISE: usize = 200;

/// The child's batches: 25 events of at least 500 µs each (about 1 ms with
/// the timer's resolution), so most of a child's time is spent inside a
/// batch's transaction.
const BATCH: usize = 25;
const APPLY_DELAY: Duration = Duration::from_micros(500);
/// How long a killed child holds the projection up.
const LEASE_TTL: Duration = Duration::from_millis(500);

/// The longest any stage may take.
const STAGE: Duration = Duration::from_secs(20);
/// How often the driver looks at the store.
const POLL: Duration = Duration::from_millis(5);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Ok(target) = std::env::var(CHILD) {
        runtime.block_on(child(&target));
        return;
    }
    runtime.block_on(async {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kill.db");
        let sqlite = Arc::new(SqliteEventStore::open(&path, SqliteOptions::new("kill")).await.unwrap());
        Driver::new("SQLite", sqlite, path.to_str().unwrap().to_owned()).await.run().await;

        let db = polis_testkit::postgres().await;
        let postgres = Arc::new(PgEventStore::connect(db.url(), PgOptions::new("kill")).await.unwrap());
        Driver::new("PostgreSQL", postgres, db.url().to_owned()).await.run().await;
        println!("kill: passed on SQLite and PostgreSQL in {:.1} s", started.elapsed().as_secs_f64());
    });
}

// ---------------------------------------------------------------- the child

/// Runs the projection over `target` until killed (or orphaned).
async fn child(target: &str) {
    if target.starts_with("postgres") {
        serve(Arc::new(PgEventStore::connect(target, PgOptions::new("kill")).await.unwrap())).await;
    } else {
        serve(Arc::new(SqliteEventStore::open(target, SqliteOptions::new("kill")).await.unwrap())).await;
    }
}

async fn serve<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let mut tally = Tally::new(1, 1);
    tally.delay = APPLY_DELAY;
    let mut options = ProjectorOptions::default();
    options.batch_size = BATCH;
    options.poll_interval = Duration::from_millis(50);
    options.lease_ttl = LEASE_TTL;
    options.retry_max = Duration::from_millis(100);
    let handle = Projector::new(store, options).with(tally).spawn();
    let parent = std::os::unix::process::parent_id();
    let mut status = handle.subscribe();
    let mut last_error = None;
    loop {
        let error = status.borrow_and_update().get("tally").and_then(|s| s.error.clone());
        if let Some(error) = &error
            && last_error.as_ref() != Some(error)
        {
            eprintln!("kill: child {}: projection step failed: {error}", std::process::id());
            if error.contains("applied twice") {
                std::process::exit(REFUSED);
            }
        }
        last_error = error;
        tokio::select! {
            _ = status.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // The driver died (a failed assertion): don't outlive it.
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    }
}

// --------------------------------------------------------------- the driver

struct Driver<S> {
    backend: &'static str,
    store: Arc<S>,
    /// What a child opens.
    target: String,
    /// Each stream's number of counted events.
    expected: BTreeMap<String, i64>,
    /// The positions of the counted events, ascending.
    counted: Vec<u64>,
    head: u64,
    /// Each generation's highest checkpoint seen.
    seen: BTreeMap<u32, u64>,
    /// Whether a generation is live, so the view must be complete.
    live: bool,
    children: u32,
    kills: u32,
    consistency_checks: u64,
    view_reads: u64,
}

impl<S> Driver<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn new(backend: &'static str, store: Arc<S>, target: String) -> Self {
        let expected = append(&store).await;
        let mut counted = Vec::new();
        let mut after = 0;
        loop {
            let batch = store.read_all(after, 1000).await.unwrap();
            let Some(last) = batch.last() else { break };
            after = last.global_position;
            counted.extend(batch.iter().filter(|e| e.event_type == "counted").map(|e| e.global_position));
        }
        let head = store.head_position().await.unwrap();
        assert_eq!(counted.len() as i64, expected.values().sum::<i64>(), "the log holds what was appended");
        Self {
            backend,
            store,
            target,
            expected,
            counted,
            head,
            seen: BTreeMap::new(),
            live: false,
            children: 0,
            kills: 0,
            consistency_checks: 0,
            view_reads: 0,
        }
    }

    async fn run(mut self) {
        let started = Instant::now();
        println!(
            "kill: {}: {} counted events on {STREAMS} streams and {NOISE} others, head {}; batches of {BATCH}, \
             at least {} µs per event, lease {} ms",
            self.backend,
            self.counted.len(),
            self.head,
            APPLY_DELAY.as_micros(),
            LEASE_TTL.as_millis()
        );
        let first = Generation::new(1);

        // The first build, killed five times, at different moments of a
        // batch: just after a checkpoint moved, and further into the next
        // batch, up to where its transaction is about to commit.
        let mut child = self.spawn();
        for (fraction, phase) in [(0.1, 0.0), (0.25, 0.3), (0.4, 0.6), (0.55, 0.8), (0.7, 0.95)] {
            child = self.kill_during(child, first, fraction, phase).await;
        }
        let head = self.head;
        self.wait(&mut child, "the first build to go live at the head", |rows| at_head(rows, first, head)).await;
        self.live = true;
        self.check_view().await;
        println!(
            "kill: {}: generation 1 live at the head after {} kills: every stream's count equals its events",
            self.backend, self.kills
        );

        // A rebuild, killed twice; the live view must stay complete all along.
        polis_projection::rebuild(&*self.store, "tally").await.unwrap();
        let second = Generation::new(2);
        for (fraction, phase) in [(0.3, 0.5), (0.65, 0.9)] {
            child = self.kill_during(child, second, fraction, phase).await;
        }
        self.wait(&mut child, "the rebuild to cut over at the head", |rows| at_head(rows, second, head)).await;
        self.kill(child, &[]).await;
        self.check_view().await;
        let rows = polis_projection::generations(&*self.store, "tally").await.unwrap();
        assert!(at_head(&rows, second, self.head), "{rows:?}");
        assert!(self.store.query("SELECT * FROM tally_g1", &[]).await.is_err(), "generation 1's table was dropped");

        println!(
            "kill: {}: passed in {:.1} s with {} children: each stream's count equals its events ({} streams, {} \
             events), the checkpoint equals the head ({}), generation 2 replaced generation 1; {} checks that a \
             generation's rows match its checkpoint, {} reads of the live view, all complete",
            self.backend,
            started.elapsed().as_secs_f64(),
            self.children,
            self.expected.len(),
            self.counted.len(),
            self.head,
            self.consistency_checks,
            self.view_reads
        );
    }

    /// The position `fraction` of the way through the log.
    fn fraction(&self, fraction: f64) -> u64 {
        (self.head as f64 * fraction) as u64
    }

    fn spawn(&mut self) -> Child {
        self.children += 1;
        Command::new(std::env::current_exe().unwrap()).env(CHILD, &self.target).spawn().unwrap()
    }

    /// Polls (and checks) the store until `done` holds of the generations.
    async fn wait(
        &mut self,
        child: &mut Child,
        what: &str,
        done: impl Fn(&[GenerationRow]) -> bool,
    ) -> Vec<GenerationRow> {
        let deadline = Instant::now() + STAGE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{}: a child exited while waiting for {what}: {}", self.backend, describe(status));
            }
            let rows = polis_projection::generations(&*self.store, "tally").await.unwrap();
            self.check(&rows).await;
            if done(&rows) {
                return rows;
            }
            assert!(Instant::now() < deadline, "{}: waited {STAGE:?} for {what}: {rows:?}", self.backend);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every generation holds exactly the events up to its checkpoint, and
    /// the view, once there is one, holds them all.
    async fn check(&mut self, rows: &[GenerationRow]) {
        for row in rows.iter().filter(|r| matches!(r.state, State::Building | State::Live)) {
            let number = row.generation.number();
            let sql = format!(
                "SELECT p.position AS position, \
                 (SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM {}) AS applied \
                 FROM polis_projections p WHERE p.name = 'tally' AND p.generation = $1",
                row.generation.table("tally")
            );
            // A generation retired since `rows` was read is gone, table and all.
            let Ok(Some(found)) = self.store.query_optional(&sql, args![number]).await else { continue };
            let position = u64::try_from(found.int("position").unwrap()).unwrap();
            let applied = found.int("applied").unwrap();
            let covered = self.counted.partition_point(|&p| p <= position) as i64;
            assert_eq!(
                applied, covered,
                "{}: generation {number} holds {applied} events, but its checkpoint {position} covers {covered}",
                self.backend
            );
            let seen = self.seen.entry(number).or_default();
            assert!(
                position >= *seen,
                "{}: generation {number}'s checkpoint went back from {seen} to {position}",
                self.backend
            );
            *seen = position;
            self.consistency_checks += 1;
        }
        if self.live {
            self.check_view().await;
        }
    }

    /// Readers see every stream's full count.
    async fn check_view(&mut self) {
        let rows = self.store.query("SELECT stream_id, events FROM tally", &[]).await.unwrap();
        let view: BTreeMap<String, i64> =
            rows.iter().map(|r| (r.text("stream_id").unwrap(), r.int("events").unwrap())).collect();
        if view != self.expected {
            let wrong = self.expected.iter().filter(|(s, n)| view.get(*s) != Some(n)).count();
            panic!(
                "{}: a reader saw {} events on {} streams, {wrong} of them wrong; expected {} on {}",
                self.backend,
                view.values().sum::<i64>(),
                view.len(),
                self.counted.len(),
                self.expected.len()
            );
        }
        self.view_reads += 1;
    }

    /// Lets `child` build `generation` past `fraction` of the log, SIGKILLs
    /// it `phase` of the way into a batch, and starts the next child.
    async fn kill_during(&mut self, mut child: Child, generation: Generation, fraction: f64, phase: f64) -> Child {
        let at = self.fraction(fraction);
        let what = format!("generation {} to pass position {at}", generation.number());
        let rows = self
            .wait(&mut child, &what, |rows| {
                building(rows).is_some_and(|g| g.generation == generation && g.position >= at)
            })
            .await;
        // A checkpoint has just moved: time the next batch, then kill `phase`
        // of the way into the one after.
        let (started, from) = (Instant::now(), building(&rows).unwrap().position);
        let rows = self
            .wait(&mut child, &format!("the batch after position {from}"), |rows| {
                building(rows).is_some_and(|g| g.position > from)
            })
            .await;
        let batch = started.elapsed();
        tokio::time::sleep(batch.mul_f64(phase)).await;
        let pid = child.id();
        let (seen, after) = self.kill(child, &rows).await;
        println!(
            "kill: {}: killed child {pid} {:.0}% into a batch of about {} ms, building generation {}: checkpoint {seen} \
             when last seen, {after} after the kill, of {}",
            self.backend,
            phase * 100.0,
            batch.as_millis(),
            generation.number(),
            self.head
        );
        self.kills += 1;
        self.spawn()
    }

    /// SIGKILLs `child` and reaps it; the building generation's checkpoint
    /// in `before`, and after the kill.
    async fn kill(&mut self, mut child: Child, before: &[GenerationRow]) -> (u64, u64) {
        let status = tokio::task::spawn_blocking(move || {
            child.kill().unwrap();
            child.wait().unwrap()
        })
        .await
        .unwrap();
        // Killed, not exited by itself (which `wait` would have reported).
        assert_eq!(status.signal(), Some(9), "{}: {}", self.backend, describe(status));
        let after = polis_projection::generations(&*self.store, "tally").await.unwrap();
        self.check(&after).await;
        let position = |rows: &[GenerationRow]| building(rows).map_or(0, |g| g.position);
        (position(before), position(&after))
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(REFUSED) => format!("{status}: it refused an event applied twice or out of order"),
        _ => status.to_string(),
    }
}

fn building(rows: &[GenerationRow]) -> Option<&GenerationRow> {
    rows.iter().find(|r| r.state == State::Building)
}

/// Only `generation` is left, live, at `head`.
fn at_head(rows: &[GenerationRow], generation: Generation, head: u64) -> bool {
    matches!(rows, [row] if row.generation == generation && row.state == State::Live && row.position == head)
}

/// Appends `BASE + 2 i` counted events to stream `i` in appends of up to 4,
/// all streams at once so the log interleaves them, and `NOISE` events the
/// projection skips; returns each stream's count.
async fn append<S: EventStore>(store: &Arc<S>) -> BTreeMap<String, i64> {
    let streams: Vec<(String, usize)> =
        (0..STREAMS).map(|i| (format!("tally-{}", uuid::Uuid::now_v7()), BASE + 2 * i)).collect();
    let writers = streams.iter().cloned().map(|(stream, n)| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut done = 0;
            while done < n {
                let chunk = (n - done).min(1 + done % 4);
                let events = (done..done + chunk).map(|i| NewEvent::new("counted", serde_json::json!({ "i": i })));
                store.append(&stream, ExpectedVersion::from_loaded(done as u64), events.collect()).await.unwrap();
                done += chunk;
            }
        })
    });
    let noise = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..NOISE {
                let event = NewEvent::new("ignored", serde_json::json!({ "i": i }));
                store.append(&format!("noise-{}", i % 7), ExpectedVersion::Any, vec![event]).await.unwrap();
            }
        })
    };
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    noise.await.unwrap();
    streams.into_iter().map(|(stream, n)| (stream, n as i64)).collect()
}
