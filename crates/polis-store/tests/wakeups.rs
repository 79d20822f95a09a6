//! Wake-up hints reach readers in other processes (PostgreSQL LISTEN/NOTIFY),
//! and a reader without any hint still catches up by polling.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use polis_core::{CatchUpOptions, EventStore, ExpectedVersion, catch_up};
use polis_store::{PgEventStore, PgOptions};
use support::event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_reader_connected_through_another_store() {
    let db = polis_testkit::postgres().await;
    let writer = PgEventStore::connect(db.url(), PgOptions::new("w")).await.unwrap();
    let reader = std::sync::Arc::new(PgEventStore::connect(db.url(), PgOptions::new("r")).await.unwrap());
    // A 60 s poll interval: only the NOTIFY hint can deliver within the timeout.
    let options = CatchUpOptions { batch_size: 10, poll_interval: Duration::from_secs(60) };
    let mut sub = Box::pin(catch_up(reader, 0, options));
    // Let the subscription go idle (caught up, LISTENing) before writing.
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err());
    for i in 0..3u64 {
        writer.append("s", ExpectedVersion::Any, vec![event("t", i)]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("woken by NOTIFY");
        assert_eq!(got.unwrap().unwrap().data["n"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_catches_up_without_any_hint() {
    let db = polis_testkit::postgres().await;
    let writer = PgEventStore::connect(db.url(), PgOptions::new("w")).await.unwrap();
    let reader = std::sync::Arc::new(PgEventStore::connect(db.url(), PgOptions::new("r")).await.unwrap());
    let options = CatchUpOptions { batch_size: 10, poll_interval: Duration::from_millis(100) };
    let mut sub = Box::pin(catch_up(reader, 0, options));
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err());
    // Appended inside a transaction with no hint sent afterwards.
    let mut tx = writer.pool().begin().await.unwrap();
    writer.append_in_tx(&mut tx, "s", ExpectedVersion::Any, &[event("t", 7)]).await.unwrap();
    tx.commit().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("found by polling");
    assert_eq!(got.unwrap().unwrap().data["n"], 7);
}

/// A store's outbox hint wakes another store's relay, but not, a second
/// time, its own: the local relay was woken directly when the hint was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_skips_its_own_outbox_hint() {
    use polis_core::outbox::TransactionalStore;

    let db = polis_testkit::postgres().await;
    let sender = PgEventStore::connect(db.url(), PgOptions::new("a")).await.unwrap();
    let other = PgEventStore::connect(db.url(), PgOptions::new("b")).await.unwrap();
    let mut own = sender.outbox_wakeups();
    let mut elsewhere = other.outbox_wakeups();
    // Until both listen and have greeted each other, hints are not sent:
    // the other store's hint reaching the sender says they have.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < until, "the stores never heard each other");
        other.signal_outbox();
        if tokio::time::timeout(Duration::from_secs(1), own.changed()).await.is_ok() {
            break;
        }
    }
    own.borrow_and_update();
    elsewhere.borrow_and_update();
    let wakes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = tokio::spawn({
        let wakes = wakes.clone();
        async move {
            while own.changed().await.is_ok() {
                wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // Let the counter task start waiting on `own` before the signal. (Were
    // it to start late, the direct wake is still counted: `changed` reports
    // a value sent before it was first polled.)
    tokio::time::sleep(Duration::from_millis(50)).await;

    sender.signal_outbox();
    tokio::time::timeout(Duration::from_secs(10), elsewhere.changed()).await.expect("woken by NOTIFY").unwrap();
    // The NOTIFY reached the other store; this store's listener got it too.
    // That it did not wake this store again is an absence, which no
    // condition can wait for: 300 ms is many times a local NOTIFY's round trip
    // (milliseconds), and a second wake that came later would be the bug seen
    // only on a slower machine, never a false failure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.abort();
    assert_eq!(wakes.load(std::sync::atomic::Ordering::SeqCst), 1, "woken directly, and not again by its own hint");
}

/// A store sends hints only while another store of the database is there
/// to hear them: alone, a commit costs no NOTIFY; once a second store has
/// said hello, hints flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_store_sends_no_hints_until_another_is_there() {
    use polis_store::postgres::{NOTIFY_CHANNEL, OUTBOX_CHANNEL};

    let db = polis_testkit::postgres().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    // A bare LISTEN, not a store: it takes part in no greeting.
    let mut overhearing = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    overhearing.listen_all([NOTIFY_CHANNEL, OUTBOX_CHANNEL]).await.unwrap();
    let alone = PgEventStore::connect(db.url(), PgOptions::new("a")).await.unwrap();
    alone.signal_outbox();
    alone.append("s", ExpectedVersion::Any, vec![event("t", 1)]).await.unwrap();
    // An absence: 300 ms is many times a local NOTIFY's round trip, and a
    // hint sent later would be the bug seen only on a slower machine.
    let heard = tokio::time::timeout(Duration::from_millis(300), overhearing.recv()).await;
    assert!(heard.is_err(), "a lone store sent a hint: {heard:?}");

    let _other = PgEventStore::connect(db.url(), PgOptions::new("b")).await.unwrap();
    // The greeting takes a round trip or two; until then, signals are unheard.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut hinted = false;
    while !hinted && std::time::Instant::now() < until {
        alone.signal_outbox();
        let heard = tokio::time::timeout(Duration::from_millis(100), overhearing.recv()).await;
        hinted = matches!(heard, Ok(Ok(n)) if n.channel() == OUTBOX_CHANNEL);
    }
    assert!(hinted, "no hint once another store was there");
}
