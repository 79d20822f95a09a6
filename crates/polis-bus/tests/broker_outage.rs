//! NATS stopped for more than 10 seconds under load, then restarted: nothing
//! is lost, nothing applied twice, the backlog drains, per-key order holds.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use polis_bus::{Consumer, ConsumerOptions, NatsBus, Relay, RelayOptions};
use polis_core::bus::{Bus, Topic};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, MessageKind, StoreError};
use polis_testkit::{NatsServer, wait_for};
use serde_json::json;
use support::{Applied, Recorder, RecorderFor, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_for_ten_seconds_under_load_loses_nothing() {
    let mut server = NatsServer::start().await.unwrap();
    let options = polis_bus::nats::NatsOptions { ack_wait: Duration::from_secs(2), ..Default::default() };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&server.url(), options).await.unwrap());

    let (producer, _p) = support::postgres(&unique("shop")).await;
    let (store, _c) = support::sqlite(&unique("billing")).await;
    store.create_applied().await;
    let recorder = Arc::new(Recorder::new());
    let consumer = Arc::new(
        Consumer::new(store.service().to_owned(), store.clone(), ConsumerOptions::default())
            .route(Topic::events_of(producer.service()), RecorderFor::<polis_store::SqliteEventStore>::new(recorder)),
    );
    let _consuming = consumer.spawn(bus.clone()).await.unwrap();
    let relay_options = RelayOptions {
        poll_interval: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        ..Default::default()
    };
    let _relay = Relay::new(producer.clone(), bus.clone(), relay_options).spawn();

    // Load: a steady stream of commits on 5 keys, before, during and after the outage.
    let writer = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut seq = 0i64;
            while started.elapsed() < Duration::from_secs(16) {
                let src = producer.service().to_owned();
                let m = Message::event(&src, "thing.happened.v1", &format!("k{}", seq % 5), json!({ "seq": seq }));
                producer.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
                seq += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seq
        })
    };

    // Messages flowing before the outage.
    wait_for(Duration::from_secs(30), || async { store.applied().await.len() >= 50 }).await.unwrap();
    server.stop().await;
    let down_since = Instant::now();
    // The outage's length is the scenario itself, not a wait for something.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let backlog_during = producer.outbox_backlog().await.unwrap().unpublished;
    server.restart().await.unwrap();
    let down_for = down_since.elapsed();
    let sent = writer.await.unwrap() as usize;

    assert!(down_for >= Duration::from_secs(10), "NATS was down for {down_for:?}");
    assert!(backlog_during > 100, "messages piled up in the outbox while NATS was down ({backlog_during})");
    let drained = wait_for(Duration::from_secs(60), || async { store.applied().await.len() >= sent }).await;
    let applied = store.applied().await;
    assert!(drained.is_ok(), "applied {} of {sent} after the restart", applied.len());
    // Nothing is left for JetStream to redeliver: every delivery acknowledged.
    let jetstream = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = jetstream.get_stream(polis_bus::nats::stream_name(producer.service())).await.unwrap();
    let durable = polis_bus::nats::durable_name(store.service(), MessageKind::Event);
    let settled = wait_for(Duration::from_secs(30), || async {
        let info = stream.consumer_info(&durable).await.unwrap();
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    assert!(settled.is_ok(), "deliveries left unacknowledged");
    let applied = store.applied().await;
    assert_eq!(applied.len(), sent, "every message applied exactly once");
    for k in 0..5 {
        let seqs: Vec<_> = applied.iter().filter(|a| a.0 == format!("k{k}")).map(|a| a.1).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key k{k} in order: {seqs:?}");
    }
    wait_for(Duration::from_secs(10), || async { producer.outbox_backlog().await.unwrap().unpublished == 0 })
        .await
        .unwrap();
}
