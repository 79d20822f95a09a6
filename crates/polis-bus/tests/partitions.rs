//! Partitioned consumption on NATS JetStream (ADR 0011): a partition's
//! subscription holds one message at a time; instances of a consumer share
//! the partitions through leases, keep each key's order, and take over a
//! dead instance's partitions.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use polis_bus::{Consumer, ConsumerOptions, NatsBus, Relay, RelayOptions};
use polis_core::bus::{Bus, Topic, partition_of};
use polis_core::lease::LeaseOptions;
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_store::{PgEventStore, PgOptions};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Applied, Recorder, RecorderFor, unique};

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 4;

async fn bus(server: &polis_testkit::TestNats) -> Arc<NatsBus> {
    let options =
        polis_bus::nats::NatsOptions { ack_wait: Duration::from_secs(2), partitions: PARTITIONS, ..Default::default() };
    Arc::new(NatsBus::connect(server.url(), options).await.unwrap())
}

fn event(source: &str, key: &str, seq: i64) -> Message {
    Message::event(source, "thing.happened.v1", key, json!({ "seq": seq }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_holds_its_keys_one_message_at_a_time() {
    let server = polis_testkit::nats().await;
    let bus = bus(&server).await;
    let svc = unique("parts");
    let sent: Vec<_> = (0..40).map(|i| event(&svc, &format!("key-{i}"), i)).collect();
    bus.publish(&sent).await.unwrap();
    let topic = Topic::events_of(&svc);
    let mut seen = BTreeSet::new();
    for partition in 0..PARTITIONS {
        let mut sub = bus.subscribe_partition("c", &topic, partition).await.unwrap();
        let expected: Vec<_> = sent.iter().filter(|m| partition_of(&m.key, PARTITIONS) == partition).collect();
        assert!(!expected.is_empty(), "40 keys leave no partition empty");
        let first = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
        assert_eq!(first.message.as_ref().unwrap().id, expected[0].id);
        // Unacknowledged, it holds the partition back (only waiting can show that).
        assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(), "a second message came");
        first.ack().await.unwrap();
        for m in &expected[1..] {
            let d = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
            assert_eq!(d.message.as_ref().unwrap().id, m.id, "partition {partition} in order");
            d.ack().await.unwrap();
        }
        seen.extend(expected.iter().map(|m| m.id));
    }
    assert_eq!(seen.len(), sent.len(), "the partitions cover every message");
    // A plain subscription still sees every partition.
    let mut all = bus.subscribe("whole", &topic).await.unwrap();
    for m in &sent {
        let d = tokio::time::timeout(WAIT, all.next()).await.unwrap().unwrap();
        assert_eq!(d.message.as_ref().unwrap().id, m.id);
        d.ack().await.unwrap();
    }
    assert!(bus.subscribe_partition("c", &topic, PARTITIONS).await.is_err(), "no partition past the count");
}

/// Two instances of one consumer (two stores on one database, as two
/// processes would have) share the partitions, then one dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_share_the_partitions_keep_key_order_and_take_over_a_dead_one() {
    let server = polis_testkit::nats().await;
    let bus: Arc<dyn Bus> = bus(&server).await;
    let (producer, _p) = support::sqlite(&unique("shop")).await;
    let name = unique("billing");
    let db = polis_testkit::postgres().await;
    let connect = async || Arc::new(PgEventStore::connect(db.url(), PgOptions::new(&name)).await.unwrap());
    let (a, b) = (connect().await, connect().await);
    a.create_applied().await;
    let options = || ConsumerOptions { lease: Some(LeaseOptions::new(Duration::from_secs(1))), ..Default::default() };
    let instance =
        |store: &Arc<PgEventStore>| {
            Arc::new(Consumer::new(name.clone(), store.clone(), options()).route(
                Topic::events_of(producer.service()),
                RecorderFor::<PgEventStore>::new(Arc::new(Recorder::new())),
            ))
        };
    let _a = instance(&a).spawn(bus.clone()).await.unwrap();
    let b_handle = instance(&b).spawn(bus.clone()).await.unwrap();
    let _relay = Relay::new(producer.clone(), bus.clone(), RelayOptions::default()).spawn();

    // Both instances hold partitions: two each.
    let holders = async || {
        let prefix = format!("partition:{name}:");
        a.transaction::<_, _, StoreError>(async move |tx| tx.leases_held(&prefix, Utc::now()).await).await.unwrap()
    };
    let shared = wait_for(WAIT, || async {
        let held = holders().await;
        let owners: BTreeSet<_> = held.iter().map(|(_, owner)| *owner).collect();
        held.len() == PARTITIONS as usize && owners.len() == 2
    })
    .await;
    assert!(shared.is_ok(), "the partitions were not shared: {:?}", holders().await);

    let send = async |from: i64, to: i64| {
        for seq in from..to {
            let m = event(producer.service(), &format!("k{}", seq % 20), seq);
            producer.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
        }
    };
    send(0, 200).await;
    let applied_all = async |n: usize| {
        let done = wait_for(WAIT, || async { a.applied().await.len() >= n }).await;
        let applied = a.applied().await;
        assert!(done.is_ok(), "applied {} of {n}", applied.len());
        applied
    };
    applied_all(200).await;

    // One instance dies: nothing released, its partitions' leases expire.
    drop(b_handle);
    send(200, 300).await;
    let applied = applied_all(300).await;
    let taken_over = wait_for(WAIT, || async {
        let held = holders().await;
        held.len() == PARTITIONS as usize && held.iter().all(|(_, owner)| *owner == held[0].1)
    })
    .await;
    assert!(taken_over.is_ok(), "the survivor did not take every partition: {:?}", holders().await);

    assert_eq!(applied.len(), 300, "each message applied once");
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, seq, _) in &applied {
        by_key.entry(key.clone()).or_default().push(*seq);
    }
    for (key, seqs) in by_key {
        assert!(seqs.is_sorted(), "key {key} in order: {seqs:?}");
    }
}

/// An instance whose partition lease was taken (as after a pause past its
/// expiry) commits nothing of that partition, and picks it up again once
/// it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_lost_a_partition_commits_nothing_of_it() {
    let server = polis_testkit::nats().await;
    let bus: Arc<dyn Bus> = bus(&server).await;
    let (producer, _p) = support::sqlite(&unique("shop")).await;
    let name = unique("billing");
    let (store, _db) = support::postgres(&name).await;
    store.create_applied().await;
    let lease = LeaseOptions::new(Duration::from_secs(3));
    let options = ConsumerOptions { lease: Some(lease), ..Default::default() };
    let consumer = Arc::new(
        Consumer::new(name.clone(), store.clone(), options)
            .route(Topic::events_of(producer.service()), RecorderFor::<PgEventStore>::new(Arc::new(Recorder::new()))),
    );
    let _running = consumer.spawn(bus.clone()).await.unwrap();
    let _relay = Relay::new(producer.clone(), bus.clone(), RelayOptions::default()).spawn();
    let held = async || {
        let prefix = format!("partition:{name}:");
        store.transaction::<_, _, StoreError>(async move |tx| tx.leases_held(&prefix, Utc::now()).await).await.unwrap()
    };
    wait_for(WAIT, || async { held().await.len() == PARTITIONS as usize }).await.unwrap();

    // Two keys in different partitions; the first one's partition is taken.
    let (stolen_key, other_key) = (
        "k-stolen",
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_of(k, PARTITIONS) != partition_of("k-stolen", PARTITIONS))
            .unwrap(),
    );
    let partition = partition_of(stolen_key, PARTITIONS);
    let stolen = format!("partition:{name}:{}:events:{partition}", producer.service());
    let thief = uuid::Uuid::now_v7();
    let name_for_tx = stolen.clone();
    store
        .transaction::<_, _, StoreError>(async move |tx| {
            tx.release_lease(&name_for_tx, lease.owner).await?;
            tx.acquire_lease(&name_for_tx, thief, Utc::now(), Duration::from_secs(60)).await
        })
        .await
        .unwrap()
        .unwrap();
    for seq in 0..5 {
        for key in [stolen_key, other_key.as_str()] {
            let m = event(producer.service(), key, seq);
            producer.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
        }
    }
    wait_for(WAIT, || async { store.applied().await.len() >= 5 }).await.unwrap();
    // A round of renewals (a third of the ttl) and more: only waiting can
    // show that something does not happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let applied = store.applied().await;
    assert!(applied.iter().all(|a| a.0 == other_key), "applied from a partition it had lost: {applied:?}");

    // Given back, it is taken again and its messages applied, in order.
    store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease(&stolen, thief).await).await.unwrap();
    wait_for(WAIT, || async { store.applied().await.len() >= 10 }).await.unwrap();
    let seqs: Vec<_> = store.applied().await.into_iter().filter(|a| a.0 == stolen_key).map(|a| a.1).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
}

/// A clean stop lets every partition go at once, for the other instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_releases_every_partition() {
    let server = polis_testkit::nats().await;
    let bus: Arc<dyn Bus> = bus(&server).await;
    let name = unique("billing");
    let (store, _db) = support::postgres(&name).await;
    store.create_applied().await;
    let options = ConsumerOptions { lease: Some(LeaseOptions::new(Duration::from_secs(30))), ..Default::default() };
    let consumer = Arc::new(
        Consumer::new(name.clone(), store.clone(), options)
            .route(Topic::events_of("shop"), RecorderFor::<PgEventStore>::new(Arc::new(Recorder::new()))),
    );
    let running = consumer.spawn(bus).await.unwrap();
    let held = async || {
        let prefix = format!("partition:{name}:");
        store.transaction::<_, _, StoreError>(async move |tx| tx.leases_held(&prefix, Utc::now()).await).await.unwrap()
    };
    wait_for(WAIT, || async { held().await.len() == PARTITIONS as usize }).await.unwrap();
    running.shutdown().await;
    assert_eq!(held().await, vec![], "held after a clean stop (30 s leases)");
}
