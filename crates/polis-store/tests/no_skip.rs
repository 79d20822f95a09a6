//! No skipped events: a catch-up reader of the global log sees every committed
//! event exactly once, in strictly increasing position order, while many
//! writers commit concurrently — on PostgreSQL even though their transactions
//! commit out of position order (a sequence value is taken at insert time).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use polis_core::{CatchUpOptions, EventStore, ExpectedVersion, NewEvent, catch_up};
use polis_store::{PgEventStore, PgOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::event;
use uuid::Uuid;

const WRITERS: usize = 16;
const TRANSACTIONS_PER_WRITER: usize = 40;
const STREAMS: usize = 6;

/// What the writers committed: event id -> the position range of its append
/// (concurrent appends may interleave within a range), and, per transaction
/// in commit-completion order, its first position.
#[derive(Default)]
struct Ledger {
    committed: HashMap<Uuid, (u64, u64)>,
    commits: Vec<(u64, u64)>,
    rolled_back: Vec<Uuid>,
}

fn random_events(rng: &mut impl Rng) -> Vec<NewEvent> {
    (0..rng.random_range(1..=3)).map(|i| event("stress.happened", i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reader_never_skips_or_repeats_under_out_of_order_commits() {
    let (store, _guard) = support::postgres().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let commit_clock = Arc::new(AtomicU64::new(0));
    let reader = spawn_reader(store.clone());

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, ledger, clock) = (store.clone(), ledger.clone(), commit_clock.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::from_os_rng();
            for _ in 0..TRANSACTIONS_PER_WRITER {
                let events = random_events(&mut rng);
                let stream = format!("stress-{}", rng.random_range(0..STREAMS));
                let before = Duration::from_micros(rng.random_range(0..3_000));
                let after = Duration::from_micros(rng.random_range(0..12_000));
                let roll_back = rng.random_bool(0.1);

                // Half the appends are single autocommit statements: then the newest
                // xid is often the only one running, a case the in-transaction
                // appends (which keep older xids alive) rarely produce.
                let appended = if rng.random_bool(0.5) {
                    store.append(&stream, ExpectedVersion::Any, events.clone()).await.unwrap()
                } else {
                    let mut tx = store.pool().begin().await.unwrap();
                    tokio::time::sleep(before).await;
                    let appended = store.append_in_tx(&mut tx, &stream, ExpectedVersion::Any, &events).await.unwrap();
                    // The delay after the insert is what makes commits overtake each other.
                    tokio::time::sleep(after).await;
                    if roll_back {
                        tx.rollback().await.unwrap();
                        ledger.lock().unwrap().rolled_back.extend(events.iter().map(|e| e.id));
                        continue;
                    }
                    tx.commit().await.unwrap();
                    store.signal_new_events();
                    appended
                };
                let seq = clock.fetch_add(1, Ordering::SeqCst);
                let mut ledger = ledger.lock().unwrap();
                ledger.commits.push((seq, appended.first_position));
                for e in &events {
                    ledger.committed.insert(e.id, (appended.first_position, appended.last_position));
                }
            }
            w
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    check(&store, ledger, reader, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reader_never_skips_or_repeats_under_concurrent_group_commits() {
    let (store, _guard) = support::sqlite().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let commit_clock = Arc::new(AtomicU64::new(0));
    let reader = spawn_reader(store.clone());

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (store, ledger, clock) = (store.clone(), ledger.clone(), commit_clock.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::from_os_rng();
            for _ in 0..TRANSACTIONS_PER_WRITER {
                let events = random_events(&mut rng);
                let stream = format!("stress-{}", rng.random_range(0..STREAMS));
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..3_000))).await;
                // Exact versions from a possibly stale read: some appends lose the race and must leave no trace.
                let version = store.stream_info(&stream).await.unwrap().map_or(0, |s| s.version);
                match store.append(&stream, ExpectedVersion::Exact(version), events.clone()).await {
                    Ok(appended) => {
                        let seq = clock.fetch_add(1, Ordering::SeqCst);
                        let mut ledger = ledger.lock().unwrap();
                        ledger.commits.push((seq, appended.first_position));
                        for e in &events {
                            ledger.committed.insert(e.id, (appended.first_position, appended.last_position));
                        }
                    }
                    Err(e) if e.is_conflict() => ledger.lock().unwrap().rolled_back.extend(events.iter().map(|e| e.id)),
                    Err(e) => panic!("append failed: {e}"),
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    check(&store, ledger, reader, false).await;
}

/// Single-statement appends from a few writers, back to back: the newest xid
/// is often the only one running, which is exactly when a horizon built on the
/// snapshot's `xmax` (latest *completed* xid + 1) would pass a running writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reader_never_skips_back_to_back_autocommit_appends() {
    let (store, _guard) = support::postgres().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let reader = spawn_reader(store.clone());
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, ledger) = (store.clone(), ledger.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..400u64 {
                let e = event("stress.happened", i);
                let appended = store.append(&format!("auto-{w}"), ExpectedVersion::Any, vec![e.clone()]).await.unwrap();
                ledger.lock().unwrap().committed.insert(e.id, (appended.first_position, appended.last_position));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    check(&store, ledger, reader, false).await;
}

/// The horizon, step by step: an open transaction holding a lower position
/// keeps a later, already committed event from being read past it.
#[tokio::test]
async fn postgres_reader_does_not_pass_an_open_transaction_below_a_committed_event() {
    let db = polis_testkit::postgres().await;
    let options = PgOptions { horizon_wait: Duration::from_millis(300), ..PgOptions::new("test") };
    let store = PgEventStore::connect(db.url(), options).await.unwrap();

    // D draws position 1, then E draws position 2; both stay open, and they
    // hold the newest xids: nothing newer has completed.
    let mut d_tx = store.pool().begin().await.unwrap();
    let d = event("t", 1);
    let held = store.append_in_tx(&mut d_tx, "d", ExpectedVersion::Any, std::slice::from_ref(&d)).await.unwrap();
    let mut e_tx = store.pool().begin().await.unwrap();
    let e = event("t", 2);
    let committed = store.append_in_tx(&mut e_tx, "e", ExpectedVersion::Any, std::slice::from_ref(&e)).await.unwrap();
    assert!(committed.first_position > held.last_position);
    assert!(store.read_all(0, 10).await.unwrap().is_empty(), "nothing is final while D and E are open");

    // E commits; D, holding the lower position, is still open.
    e_tx.commit().await.unwrap();
    let early = store.read_all(0, 10).await.unwrap();
    assert!(early.is_empty(), "E must not be read past D's unsettled position: {early:?}");

    d_tx.commit().await.unwrap();
    let both: Vec<_> = store.read_all(0, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(both, vec![d.id, e.id]);
}

/// (event id, global position, stream, stream version) in the order the reader saw them.
type Seen = Arc<Mutex<Vec<(Uuid, u64, String, u64)>>>;

/// A catch-up reader started before the writers, recording what it sees.
fn spawn_reader<S: EventStore>(store: Arc<S>) -> Seen {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let options = CatchUpOptions { batch_size: 50, poll_interval: Duration::from_millis(50) };
    tokio::spawn(async move {
        let mut events = Box::pin(catch_up(store, 0, options));
        while let Some(event) = events.next().await {
            let event = event.expect("catch-up read failed");
            sink.lock().unwrap().push((event.id, event.global_position, event.stream_id, event.stream_version));
        }
    });
    seen
}

async fn check<S: EventStore>(store: &Arc<S>, ledger: Arc<Mutex<Ledger>>, seen: Seen, must_overtake: bool) {
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let expected = ledger.committed.len();
    assert!(expected > 300, "most transactions commit ({expected} events)");

    let reached = polis_testkit::wait_for(Duration::from_secs(60), || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().len() >= expected }
    })
    .await;
    // Give a would-be duplicate a moment to show up before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(reached.is_ok(), "the reader saw {} of {expected} committed events", seen.len());

    assert_eq!(seen.len(), expected, "every committed event exactly once, nothing else");
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "positions strictly increase");
    let mut stream_versions: HashMap<&str, u64> = HashMap::new();
    for (id, position, stream, version) in &seen {
        let (first, last) = ledger.committed.get(id).copied().unwrap_or_else(|| panic!("{id} was never committed"));
        assert!((first..=last).contains(position), "event {id} at {position}, outside its append's {first}..={last}");
        let previous = stream_versions.insert(stream, *version).unwrap_or(0);
        assert_eq!(*version, previous + 1, "stream {stream} is read in version order, without gaps");
    }
    for id in &ledger.rolled_back {
        assert!(!ledger.committed.contains_key(id), "rolled-back event {id} is not reported committed");
    }
    assert_eq!(store.read_all(0, expected + 10).await.unwrap().len(), expected, "read_all agrees");

    // The test only means something if commits really did overtake each other.
    let mut commits = ledger.commits.clone();
    commits.sort_unstable();
    let mut highest = 0;
    let overtaken = commits
        .iter()
        .filter(|&&(_, position)| {
            let late = position < highest;
            highest = highest.max(position);
            late
        })
        .count();
    eprintln!("{expected} events, {} transactions, {overtaken} committed after a higher position", commits.len());
    if must_overtake {
        assert!(overtaken > 0, "no transaction committed out of position order; the stress did not stress");
    }
}
