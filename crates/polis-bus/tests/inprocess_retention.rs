//! Retention of the in-process bus: the log stays bounded while consumers
//! keep up, and nothing a consumer has not acknowledged is ever deleted.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use polis_bus::{InProcessBus, InProcessOptions};
use polis_core::Message;
use polis_core::bus::{Bus, Delivery, Subscription, Topic};
use polis_testkit::wait_for;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// A bus whose acknowledged messages and unsubscribed topics both keep
/// their messages for `retention`.
async fn open(dir: &tempfile::TempDir, retention: Duration, cleanup_interval: Duration) -> InProcessBus {
    InProcessBus::open_with(
        dir.path().join("bus.db"),
        InProcessOptions { retention, replay_window: retention, cleanup_interval, ..Default::default() },
    )
    .await
    .unwrap()
}

fn events(n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::event("shop", "order.placed.v1", &format!("o-{}", i % 7), json!({ "n": i }))).collect()
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a delivery in time").unwrap()
}

/// Acks everything it receives, counting.
fn keep_up(mut sub: Box<dyn Subscription>, received: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(d) = sub.next().await {
            d.ack().await.unwrap();
            received.fetch_add(1, Ordering::SeqCst);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_while_consumers_keep_up() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir, Duration::ZERO, Duration::from_millis(20)).await;
    let topic = Topic::events_of("shop");
    let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let consumers = [
        keep_up(bus.subscribe("billing", &topic).await.unwrap(), a.clone()),
        keep_up(bus.subscribe("shipping", &topic).await.unwrap(), b.clone()),
    ];
    let mut published = 0;
    for _ in 0..20 {
        bus.publish(&events(50)).await.unwrap();
        published += 50;
        let caught_up =
            wait_for(WAIT, || async { a.load(Ordering::SeqCst) == published && b.load(Ordering::SeqCst) == published })
                .await;
        assert!(caught_up.is_ok(), "consumers received {a:?} and {b:?} of {published}");
        // The background cleanup removes what both acknowledged.
        let bounded = wait_for(WAIT, || async { bus.stored_messages().await.unwrap() < 50 }).await;
        assert!(bounded.is_ok(), "{} messages still stored after {published}", bus.stored_messages().await.unwrap());
    }
    for c in consumers {
        c.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_some_consumer_has_not_acknowledged_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // No retention delay, and a cleanup this test runs itself.
    let bus = open(&dir, Duration::ZERO, Duration::from_secs(3600)).await;
    let topic = Topic::events_of("shop");
    let sent = events(30);
    let mut fast = bus.subscribe("billing", &topic).await.unwrap();
    let mut slow = bus.subscribe("shipping", &topic).await.unwrap();
    // Registered by its subscription alone: it has acknowledged nothing.
    let mut idle = bus.subscribe("audit", &topic).await.unwrap();
    bus.publish(&sent).await.unwrap();
    for _ in 0..30 {
        next(&mut fast).await.ack().await.unwrap();
    }
    for _ in 0..10 {
        next(&mut slow).await.ack().await.unwrap();
    }
    let unacked = next(&mut slow).await;
    assert_eq!(unacked.message.as_ref().unwrap().id, sent[10].id);
    drop(unacked);

    // Once the acknowledgements are stored, the idle consumer still holds
    // everything back.
    wait_for(WAIT, || async {
        bus.unacknowledged("billing", &topic).await.unwrap() == 0
            && bus.unacknowledged("shipping", &topic).await.unwrap() == 20
    })
    .await
    .unwrap();
    assert_eq!(bus.unacknowledged("audit", &topic).await.unwrap(), 30);
    assert_eq!(bus.cleanup().await.unwrap(), 0);
    assert_eq!(bus.stored_messages().await.unwrap(), 30);

    // Once it acknowledged the first 20, the slow consumer (at 10) is the limit.
    for _ in 0..20 {
        next(&mut idle).await.ack().await.unwrap();
    }
    let deleted = Arc::new(AtomicU64::new(0));
    wait_for(WAIT, || async {
        deleted.fetch_add(bus.cleanup().await.unwrap(), Ordering::SeqCst);
        deleted.load(Ordering::SeqCst) >= 10
    })
    .await
    .unwrap();
    assert_eq!(deleted.load(Ordering::SeqCst), 10, "only what all three acknowledged");
    assert_eq!(bus.cleanup().await.unwrap(), 0);
    assert_eq!(bus.stored_messages().await.unwrap(), 20);

    // The slow consumer, resumed, still gets every message it did not acknowledge.
    drop(slow);
    let mut resumed = bus.subscribe("shipping", &topic).await.unwrap();
    for expected in &sent[10..] {
        let d = next(&mut resumed).await;
        assert_eq!(d.message.as_ref().unwrap().id, expected.id);
        d.ack().await.unwrap();
    }
    // So does the idle one, for the ten it has left.
    for expected in &sent[20..] {
        assert_eq!(next(&mut idle).await.message.as_ref().unwrap().id, expected.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_acknowledged_messages_for_its_period_and_forgets_removed_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir, Duration::from_secs(3600), Duration::from_secs(3600)).await;
    let topic = Topic::events_of("shop");
    let mut sub = bus.subscribe("billing", &topic).await.unwrap();
    bus.publish(&events(5)).await.unwrap();
    for _ in 0..5 {
        next(&mut sub).await.ack().await.unwrap();
    }
    wait_for(WAIT, || async { bus.unacknowledged("billing", &topic).await.unwrap() == 0 }).await.unwrap();
    assert_eq!(bus.cleanup().await.unwrap(), 0, "acknowledged, but younger than the retention");
    assert_eq!(bus.stored_messages().await.unwrap(), 5);
    drop(sub);
    drop(bus);

    // Reopened with no delay: a consumer gone for good holds nothing back
    // once removed, and a topic nobody subscribes to keeps nothing.
    let bus = open(&dir, Duration::ZERO, Duration::from_secs(3600)).await;
    let _forgotten = bus.subscribe("gone", &topic).await.unwrap();
    bus.publish(&[Message::command("shop", "mailer", "mail.send.v1", "m-1", json!({}))]).await.unwrap();
    assert_eq!(bus.cleanup().await.unwrap(), 1, "the command nobody subscribed to");
    assert_eq!(bus.stored_messages().await.unwrap(), 5, "`gone` has acknowledged nothing");
    bus.remove_consumer("gone", &topic).await.unwrap();
    assert_eq!(bus.cleanup().await.unwrap(), 5);
    assert_eq!(bus.stored_messages().await.unwrap(), 0);
}

/// The defaults: what every consumer acknowledged goes at the next cleanup
/// (no replay window), while a topic nobody subscribed to keeps its
/// messages for the retention period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_unacknowledged_messages_and_unsubscribed_topics_stay() {
    let dir = tempfile::tempdir().unwrap();
    let options = InProcessOptions { cleanup_interval: Duration::from_secs(3600), ..Default::default() };
    let bus = InProcessBus::open_with(dir.path().join("bus.db"), options).await.unwrap();
    let topic = Topic::events_of("shop");
    let mut sub = bus.subscribe("billing", &topic).await.unwrap();
    bus.publish(&events(10)).await.unwrap();
    bus.publish(&[Message::event("nobody-listens", "x.happened.v1", "k", json!({}))]).await.unwrap();
    for _ in 0..6 {
        next(&mut sub).await.ack().await.unwrap();
    }
    // Once the floor is written (within moments), the cleanup takes them.
    cleaned_up(&bus, 6).await;
    assert_eq!(bus.stored_messages().await.unwrap(), 5, "four unacknowledged, one nobody subscribed to");
    for _ in 0..4 {
        next(&mut sub).await.ack().await.unwrap();
    }
    cleaned_up(&bus, 4).await;
    assert_eq!(bus.stored_messages().await.unwrap(), 1, "the retention keeps the unsubscribed topic's message");
}

/// Runs the cleanup until it has deleted `n` messages, and checks it
/// deletes no more.
async fn cleaned_up(bus: &InProcessBus, n: u64) {
    let deleted = Arc::new(AtomicU64::new(0));
    wait_for(WAIT, || async {
        deleted.fetch_add(bus.cleanup().await.unwrap(), Ordering::SeqCst);
        deleted.load(Ordering::SeqCst) >= n
    })
    .await
    .unwrap();
    assert_eq!(deleted.load(Ordering::SeqCst), n);
    assert_eq!(bus.cleanup().await.unwrap(), 0);
}
