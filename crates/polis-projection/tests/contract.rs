//! The projection runtime's contract, on SQLite and PostgreSQL: effects
//! exactly once whatever fails, one owner at a time, a killed owner
//! replaced, and rebuilds and new versions built beside the live read model
//! and cut over without a reader ever seeing a partial one.
#![allow(clippy::unwrap_used)]

mod tally;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use polis_core::{EventStore, ExpectedVersion, Generation, NewEvent, StoreError, Transaction as _};
use polis_projection::{Projector, ProjectorHandle, ProjectorOptions, State};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use polis_testkit::wait_for;
use tally::Tally;

const WAIT: Duration = Duration::from_secs(30);

fn options() -> ProjectorOptions {
    let mut options = ProjectorOptions::default();
    options.batch_size = 100;
    options.poll_interval = Duration::from_millis(100);
    options.lease_ttl = Duration::from_secs(1);
    options.retry_max = Duration::from_millis(200);
    options
}

/// Appends `per_stream` events to each of `streams` new streams (plus an
/// event the projection does not want), `writers` at a time.
async fn append<S: EventStore>(store: &Arc<S>, streams: usize, per_stream: usize) {
    let tasks = (0..streams).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let stream = uuid::Uuid::now_v7().to_string();
            for i in 0..per_stream {
                let expected = ExpectedVersion::from_loaded(i as u64);
                let event = NewEvent::new("counted", serde_json::json!({ "i": i }));
                store.append(&stream, expected, vec![event]).await.unwrap();
            }
            let other = NewEvent::new("ignored", serde_json::json!({}));
            store.append(&stream, ExpectedVersion::Any, vec![other]).await.unwrap();
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
}

/// The view's event count and total (through the view readers use).
async fn view<S>(store: &S) -> Result<(i64, i64), StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store
        .query_optional(
            "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) AS events, \
             CAST(COALESCE(SUM(total), 0) AS BIGINT) AS total FROM tally",
            &[],
        )
        .await?
        .unwrap();
    Ok((row.int("events")?, row.int("total")?))
}

/// Counted events in the log.
async fn counted<S: EventStore>(store: &S) -> i64 {
    let mut after = 0;
    let mut n = 0;
    loop {
        let batch = store.read_all(after, 1000).await.unwrap();
        let Some(last) = batch.last() else { return n };
        after = last.global_position;
        n += batch.iter().filter(|e| e.event_type == "counted").count() as i64;
    }
}

async fn wait_view<S>(store: &Arc<S>, expected: (i64, i64))
where
    S: SqlStore,
    S::Tx: Sql,
{
    let s = store.clone();
    let result = wait_for(WAIT, || {
        let s = s.clone();
        async move { view(&*s).await.is_ok_and(|v| v == expected) }
    })
    .await;
    assert!(result.is_ok(), "the view never reached {expected:?}: {:?}", view(&**store).await);
}

fn live(handle: &ProjectorHandle) -> Option<(Generation, u32)> {
    handle.status().get("tally").and_then(|s| s.live.as_ref().map(|g| (g.generation, g.version)))
}

async fn catches_up_then_follows_exactly_once<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    append(&store, 20, 30).await;
    let handle = Projector::new(store.clone(), options()).with(Tally::new(1, 1)).spawn();
    wait_view(&store, (600, 600)).await;
    // Live: new events, from concurrent writers, arrive one batch at a time.
    append(&store, 10, 20).await;
    wait_view(&store, (800, 800)).await;
    let status = handle.status()["tally"].clone();
    let live = status.live.clone().unwrap();
    assert!(status.owner && status.building.is_none() && status.error.is_none(), "{status:?}");
    assert_eq!(live.generation, Generation::new(1));
    assert!(live.lag().is_some(), "{live:?}");
    // The checkpoint is stored with the rows, and reaches the head (past
    // the events the projection does not want).
    let head = store.head_position().await.unwrap();
    let s = store.clone();
    let at_head = wait_for(WAIT, || {
        let s = s.clone();
        async move {
            let rows = polis_projection::generations(&*s, "tally").await.unwrap();
            rows.len() == 1 && rows[0].state == State::Live && rows[0].position == head
        }
    })
    .await;
    assert!(at_head.is_ok(), "{:?}", polis_projection::generations(&*store, "tally").await);
    handle.shutdown().await;
}

async fn a_failed_batch_rolls_back_with_its_checkpoint<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let tally = Tally::new(1, 1);
    let (fail, calls) = (tally.fail_once.clone(), tally.calls.clone());
    let handle = Projector::new(store.clone(), options()).with(tally).spawn();
    for round in 1..=5 {
        fail.store(true, Ordering::SeqCst);
        append(&store, 5, 10).await;
        wait_view(&store, (round * 50, round * 50)).await;
    }
    // Every failure re-applied its batch, and none of it counted twice.
    assert!(calls.load(Ordering::SeqCst) > 250, "no batch was ever retried");
    assert_eq!(view(&*store).await.unwrap(), (counted(&*store).await, 250));
    handle.shutdown().await;
}

async fn one_owner_at_a_time_and_a_dead_one_is_replaced<S>(store: Arc<S>, second: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    append(&store, 10, 20).await;
    let first = Projector::new(store.clone(), options()).with(Tally::new(1, 1)).spawn();
    let other = Projector::new(second.clone(), options()).with(Tally::new(1, 1)).spawn();
    wait_view(&store, (200, 200)).await;
    append(&second, 10, 20).await;
    wait_view(&store, (400, 400)).await;
    let owners = [&first, &other].iter().filter(|h| h.status()["tally"].owner).count();
    assert_eq!(owners, 1, "exactly one instance applies the projection");
    let (dead, standby) = if first.status()["tally"].owner { (first, other) } else { (other, first) };
    // The owner dies without a word (its tasks are aborted, its lease stays):
    // the standby takes over once the lease expires.
    drop(dead);
    append(&store, 10, 10).await;
    wait_view(&store, (500, 500)).await;
    assert!(standby.status()["tally"].owner);
    standby.shutdown().await;
}

/// Reads the view over and over until told to stop; every read must be one
/// of `allowed` (complete generations), never something in between.
fn reader<S>(store: Arc<S>, allowed: Vec<(i64, i64)>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64>
where
    S: SqlStore,
    S::Tx: Sql,
{
    tokio::spawn(async move {
        let mut reads = 0;
        while !stop.load(Ordering::SeqCst) {
            let seen = view(&*store).await.unwrap();
            assert!(allowed.contains(&seen), "a reader saw {seen:?}, not one of {allowed:?}");
            reads += 1;
            tokio::task::yield_now().await;
        }
        reads
    })
}

async fn a_new_version_is_built_beside_the_live_one<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    append(&store, 20, 25).await;
    let v1 = Projector::new(store.clone(), options()).with(Tally::new(1, 1)).spawn();
    wait_view(&store, (500, 500)).await;
    assert_eq!(live(&v1), Some((Generation::new(1), 1)));
    v1.shutdown().await;

    // Version 2 weighs each event 3: readers see version 1's totals until
    // the cut-over, then version 2's, and nothing else.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3).map(|_| reader(store.clone(), vec![(500, 500), (500, 1500)], stop.clone())).collect();
    let mut v2 = Tally::new(2, 3);
    v2.delay = Duration::from_micros(200);
    let v2 = Projector::new(store.clone(), options()).with(v2).spawn();
    wait_view(&store, (500, 1500)).await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let cut_over = wait_for(WAIT, || async { live(&v2) == Some((Generation::new(2), 2)) }).await;
    assert!(cut_over.is_ok(), "{:?}", v2.status());
    // The old generation is gone, tables and all.
    let rows = polis_projection::generations(&*store, "tally").await.unwrap();
    assert_eq!(rows.iter().map(|r| (r.generation, r.state)).collect::<Vec<_>>(), [(Generation::new(2), State::Live)]);
    assert!(store.query("SELECT * FROM tally_g1", &[]).await.is_err(), "generation 1's table was dropped");
    // And version 2 follows new events.
    append(&store, 5, 4).await;
    wait_view(&store, (520, 1560)).await;
    v2.shutdown().await;
}

/// `crashing` is the first instance's own connection to the database, gone
/// with it when it is killed (as a process's would be); `store` is the
/// readers' and the next instance's.
async fn a_rebuild_resumes_after_a_crash_and_cuts_over<S>(store: Arc<S>, crashing: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    append(&store, 20, 50).await;
    // Slow enough that the crash below comes while the rebuild is under way.
    let mut tally = Tally::new(1, 1);
    tally.delay = Duration::from_micros(300);
    let first = Projector::new(crashing.clone(), options()).with(tally).spawn();
    wait_view(&store, (1000, 1000)).await;
    polis_projection::rebuild(&*store, "tally").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2).map(|_| reader(store.clone(), vec![(1000, 1000)], stop.clone())).collect();
    // Crash half-way through the rebuild: the new generation has a
    // checkpoint of its own, and the live one keeps serving.
    let s = store.clone();
    let building = wait_for(WAIT, || {
        let s = s.clone();
        async move {
            let rows = polis_projection::generations(&*s, "tally").await.unwrap();
            rows.iter().any(|r| r.state == State::Building && r.position > 0)
        }
    })
    .await;
    assert!(building.is_ok(), "the rebuild never started");
    drop(first);
    drop(crashing);
    let rows = polis_projection::generations(&*store, "tally").await.unwrap();
    let crashed_at = rows.iter().find(|r| r.state == State::Building).map(|r| r.position).unwrap();

    let mut slow = Tally::new(1, 1);
    slow.delay = Duration::from_micros(100);
    let calls = slow.calls.clone();
    let second = Projector::new(store.clone(), options()).with(slow).spawn();
    let s = store.clone();
    let done = wait_for(WAIT, || {
        let s = s.clone();
        async move {
            let rows = polis_projection::generations(&*s, "tally").await.unwrap();
            rows.len() == 1 && rows[0].generation == Generation::new(2) && rows[0].state == State::Live
        }
    })
    .await;
    assert!(done.is_ok(), "{:?}", polis_projection::generations(&*store, "tally").await);
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert_eq!(view(&*store).await.unwrap(), (1000, 1000));
    // It resumed from its checkpoint rather than starting over.
    let all = counted(&*store).await as u64;
    assert!(calls.load(Ordering::SeqCst) < all, "the rebuild started over (crashed at position {crashed_at})");
    second.shutdown().await;
}

/// On PostgreSQL an append whose transaction rolls back has drawn a
/// position no event will ever have, so the head can stay above the last
/// event: a first build must still go live once it has read to the end.
async fn a_first_build_goes_live_after_a_rolled_back_append<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    append(&store, 5, 10).await;
    let failed = store
        .transaction(async move |tx| {
            let event = NewEvent::new("counted", serde_json::json!({}));
            tx.append("rolled-back", ExpectedVersion::NoStream, &[event]).await?;
            Err::<(), _>(StoreError::backend("the handler failed after appending"))
        })
        .await;
    assert!(failed.is_err());
    let handle = Projector::new(store.clone(), options()).with(Tally::new(1, 1)).spawn();
    wait_view(&store, (50, 50)).await;
    handle.shutdown().await;
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<SqliteEventStore> {
    Arc::new(SqliteEventStore::open(dir.path().join("view.db"), SqliteOptions::new("viewer")).await.unwrap())
}

async fn pg_store(url: &str) -> Arc<PgEventStore> {
    Arc::new(PgEventStore::connect(url, PgOptions::new("viewer")).await.unwrap())
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(sqlite_store(&dir).await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = polis_testkit::postgres().await;
                    super::$case(pg_store(db.url()).await).await;
                }
            )*
        }
    };
}

contract![
    catches_up_then_follows_exactly_once,
    a_failed_batch_rolls_back_with_its_checkpoint,
    a_new_version_is_built_beside_the_live_one,
    a_first_build_goes_live_after_a_rolled_back_append,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_rebuild_resumes_after_a_crash_and_cuts_over() {
    let dir = tempfile::tempdir().unwrap();
    let (store, crashing) = (sqlite_store(&dir).await, sqlite_store(&dir).await);
    a_rebuild_resumes_after_a_crash_and_cuts_over(store, crashing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rebuild_resumes_after_a_crash_and_cuts_over() {
    let db = polis_testkit::postgres().await;
    a_rebuild_resumes_after_a_crash_and_cuts_over(pg_store(db.url()).await, pg_store(db.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_owner_at_a_time_and_a_dead_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (sqlite_store(&dir).await, sqlite_store(&dir).await);
    one_owner_at_a_time_and_a_dead_one_is_replaced(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_owner_at_a_time_and_a_dead_one_is_replaced() {
    let db = polis_testkit::postgres().await;
    one_owner_at_a_time_and_a_dead_one_is_replaced(pg_store(db.url()).await, pg_store(db.url()).await).await;
}
