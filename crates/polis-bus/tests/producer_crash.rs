//! A producer process killed (SIGKILL) right after its commits: every message
//! it committed is delivered after the restart, each applied exactly once.
//!
//! The test binary plays both parts: run normally it is the parent; started
//! by the parent with `POLIS_CRASH_CHILD` set, it is the producer, which
//! commits messages as fast as it can, printing each committed id, with no
//! relay running, until the parent kills it.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use polis_bus::{Consumer, ConsumerOptions, Relay, RelayOptions};
use polis_core::bus::Topic;
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde_json::json;
use support::{Applied, Recorder, RecorderFor};
use uuid::Uuid;

const CHILD: &str = "POLIS_CRASH_CHILD";
const SERVICE: &str = "crashshop";

/// The producer: commits messages until killed; never returns.
async fn produce<S: TransactionalStore>(store: S) {
    for seq in 0i64.. {
        let m = Message::event(SERVICE, "thing.happened.v1", &format!("k{}", seq % 3), json!({ "seq": seq }));
        let id = m.id;
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
        println!("committed {id}");
    }
}

/// Starts this test as the producer process, lets it commit `at_least`
/// messages, kills it with SIGKILL, and returns the ids it reported committed.
fn run_and_kill(test: &str, target: &str, at_least: usize) -> Vec<Uuid> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut committed = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while committed.len() < at_least {
        let line = lines.next().expect("the producer printed its commits").unwrap();
        if let Some(id) = line.strip_prefix("committed ") {
            committed.push(id.parse().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no relay
    child.wait().unwrap();
    committed
}

async fn deliver_after_restart<S: Applied>(store: Arc<S>, committed: &[Uuid]) {
    let (consumer_store, _c) = support::sqlite("crashbilling").await;
    consumer_store.create_applied().await;
    let (bus, _b) = support::in_process_bus().await;
    let recorder = Arc::new(Recorder::new());
    let _consumer = Arc::new(
        Consumer::new("crashbilling", consumer_store.clone(), ConsumerOptions::default())
            .route(Topic::events_of(SERVICE), RecorderFor::<SqliteEventStore>::new(recorder)),
    )
    .spawn(bus.clone())
    .await
    .unwrap();
    let backlog = store.outbox_backlog().await.unwrap().unpublished as usize;
    assert!(backlog >= committed.len(), "the outbox kept every commit ({backlog} >= {})", committed.len());
    let _relay = Relay::new(store.clone(), bus, RelayOptions::default()).spawn();
    polis_testkit::wait_for(Duration::from_secs(30), || async { consumer_store.applied().await.len() >= backlog })
        .await
        .unwrap();
    let applied = consumer_store.applied().await;
    assert_eq!(applied.len(), backlog, "each committed message applied exactly once");
    let ids: std::collections::HashSet<_> = applied.iter().map(|a| a.2).collect();
    assert_eq!(ids.len(), applied.len());
    for id in committed {
        assert!(ids.contains(id), "committed message {id} was delivered");
    }
    let seqs: Vec<_> = applied.iter().map(|a| a.1).collect();
    for k in 0..3 {
        let of_key: Vec<_> = seqs.iter().filter(|s| *s % 3 == k).collect();
        assert!(of_key.windows(2).all(|w| w[0] < w[1]), "key k{k} in commit order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_producer_killed_after_commit_delivers_after_restart() {
    if let Ok(path) = std::env::var(CHILD) {
        produce(SqliteEventStore::open(path, SqliteOptions::new(SERVICE)).await.unwrap()).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let target = path.to_str().unwrap().to_owned();
    let committed = tokio::task::spawn_blocking(move || {
        run_and_kill("sqlite_producer_killed_after_commit_delivers_after_restart", &target, 200)
    })
    .await
    .unwrap();
    let store = Arc::new(SqliteEventStore::open(&path, SqliteOptions::new(SERVICE)).await.unwrap());
    deliver_after_restart(store, &committed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_producer_killed_after_commit_delivers_after_restart() {
    if let Ok(url) = std::env::var(CHILD) {
        produce(PgEventStore::connect(&url, PgOptions::new(SERVICE)).await.unwrap()).await;
        return;
    }
    let db = polis_testkit::postgres().await;
    // Migrate before the child starts, so the kill cannot land mid-migration.
    let store = Arc::new(PgEventStore::connect(db.url(), PgOptions::new(SERVICE)).await.unwrap());
    let url = db.url().to_owned();
    let committed = tokio::task::spawn_blocking(move || {
        run_and_kill("postgres_producer_killed_after_commit_delivers_after_restart", &url, 200)
    })
    .await
    .unwrap();
    deliver_after_restart(store, &committed).await;
}
