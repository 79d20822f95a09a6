//! Delivery by the in-process bus: from its log or from the in-memory tail of
//! fresh messages, switching between them without a gap or a repeat; and
//! acknowledgements, of which only the floor outlives the process.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use polis_bus::InProcessBus;
use polis_core::Message;
use polis_core::bus::{Bus, Delivery, Subscription, Topic};
use polis_testkit::wait_for;
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn events(from: usize, n: usize) -> Vec<Message> {
    (from..from + n)
        .map(|i| Message::event("shop", "order.placed.v1", &format!("o-{}", i % 7), json!({ "n": i })))
        .collect()
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a delivery in time").unwrap()
}

fn ids(messages: &[Message]) -> Vec<Uuid> {
    messages.iter().map(|m| m.id).collect()
}

/// The stored ack floor of `consumer` on the shop's events, read beside the bus.
fn stored_floor(path: &std::path::Path, consumer: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT ack_floor FROM bus_consumers WHERE consumer = ?1", [consumer], |r| r.get(0)).ok()
}

/// A consumer far behind (more than the tail holds) reads the log, catches
/// up, and is then served fresh messages as they come: every message once,
/// in order, whichever way it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_reads_the_log_then_the_tail_without_gap_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let bus = InProcessBus::open(dir.path().join("bus.db")).await.unwrap();
    let topic = Topic::events_of("shop");
    // Registered first, so that it is owed everything published from here on.
    drop(bus.subscribe("billing", &topic).await.unwrap());

    let backlog = events(0, 3000);
    for batch in backlog.chunks(100) {
        bus.publish(batch).await.unwrap();
    }
    let fresh = events(3000, 500);
    let publisher = {
        let (bus, fresh) = (bus.clone(), fresh.clone());
        tokio::spawn(async move {
            for batch in fresh.chunks(10) {
                bus.publish(batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let mut sub = bus.subscribe("billing", &topic).await.unwrap();
    let mut received = Vec::new();
    while received.len() < 3500 {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt, 1);
        received.push(d.message.as_ref().unwrap().id);
        d.ack().await.unwrap();
    }
    publisher.await.unwrap();
    let expected: Vec<_> = ids(&backlog).into_iter().chain(ids(&fresh)).collect();
    assert_eq!(received, expected);
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(), "nothing more");
    assert_eq!(bus.unacknowledged("billing", &topic).await.unwrap(), 0);
}

/// Acknowledgements above the floor live in memory: the same process never
/// delivers them again, a restarted one delivers everything above the
/// stored floor (which the consumer's inbox absorbs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_above_the_floor_are_redelivered_after_a_restart_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let topic = Topic::events_of("shop");
    let sent = events(0, 10);
    {
        let bus = InProcessBus::open(&path).await.unwrap();
        let mut sub = bus.subscribe("billing", &topic).await.unwrap();
        bus.publish(&sent).await.unwrap();
        let mut deliveries = Vec::new();
        for _ in 0..10 {
            deliveries.push(next(&mut sub).await);
        }
        // All but the sixth: the floor stops at the fifth.
        let sixth = deliveries.remove(5);
        for d in deliveries {
            d.ack().await.unwrap();
        }
        assert_eq!(bus.unacknowledged("billing", &topic).await.unwrap(), 1);
        drop(sixth);

        // Resubscribed in the same process: only the unacknowledged one comes back.
        drop(sub);
        let mut again = bus.subscribe("billing", &topic).await.unwrap();
        let d = next(&mut again).await;
        assert_eq!(d.message.as_ref().unwrap().id, sent[5].id);
        assert!(tokio::time::timeout(Duration::from_millis(300), again.next()).await.is_err());
        drop(d);

        wait_for(WAIT, || async { stored_floor(&path, "billing") == Some(5) }).await.unwrap();
    }

    // Restarted: everything above the stored floor, in order.
    let bus = InProcessBus::open(&path).await.unwrap();
    let mut sub = bus.subscribe("billing", &topic).await.unwrap();
    for expected in &sent[5..] {
        let d = next(&mut sub).await;
        assert_eq!(d.message.as_ref().unwrap().id, expected.id);
        d.ack().await.unwrap();
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err());
    wait_for(WAIT, || async { stored_floor(&path, "billing") == Some(10) }).await.unwrap();
}

/// A new subscription of the same consumer and topic replaces the previous
/// one, which stops, and delivers again from the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_replaces_the_previous_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let bus = InProcessBus::open(dir.path().join("bus.db")).await.unwrap();
    let topic = Topic::events_of("shop");
    let mut first = bus.subscribe("billing", &topic).await.unwrap();
    let sent = events(0, 4);
    bus.publish(&sent).await.unwrap();
    next(&mut first).await.ack().await.unwrap();
    let _held = next(&mut first).await;

    let mut second = bus.subscribe("billing", &topic).await.unwrap();
    bus.publish(&events(4, 1)).await.unwrap();
    let stopped = tokio::time::timeout(WAIT, first.next()).await.expect("the old subscription answers");
    assert!(matches!(stopped, Err(polis_core::bus::BusError::Closed)), "{:?}", stopped.map(|d| d.message));
    for expected in &sent[1..] {
        assert_eq!(next(&mut second).await.message.as_ref().unwrap().id, expected.id);
    }
}

/// Messages the retention deleted are gone for a consumer subscribing later,
/// in memory as in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_consumer_starts_from_what_the_retention_left() {
    let dir = tempfile::tempdir().unwrap();
    let options = polis_bus::InProcessOptions {
        retention: Duration::ZERO,
        cleanup_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let bus = InProcessBus::open_with(dir.path().join("bus.db"), options).await.unwrap();
    let topic = Topic::events_of("shop");
    bus.publish(&events(0, 5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(bus.cleanup().await.unwrap(), 5, "no consumer holds them");
    let kept = events(5, 2);
    bus.publish(&kept).await.unwrap();

    let mut sub = bus.subscribe("audit", &topic).await.unwrap();
    for expected in &kept {
        assert_eq!(next(&mut sub).await.message.as_ref().unwrap().id, expected.id);
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err());
}
