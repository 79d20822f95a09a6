//! The messaging metrics reach the `metrics` facade with the right values.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use polis_bus::{Consumer, ConsumerOptions, Handler, Relay, RelayOptions};
use polis_core::bus::{Delivery, Topic};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_store::SqliteEventStore;
use serde_json::json;
use support::{Applied, NoAck, Recorder, RecorderFor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_report_their_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let (producer, _p) = support::sqlite("metricshop").await;
    let (store, _c) = support::sqlite("metricbilling").await;
    store.create_applied().await;
    let (bus, _b) = support::in_process_bus().await;

    // Relay: 3 messages published; housekeeping reports an empty backlog.
    for seq in 0..3 {
        let m = Message::event("metricshop", "thing.happened.v1", "k", json!({ "seq": seq }));
        producer.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
    }
    let options = RelayOptions { housekeeping_interval: Duration::from_millis(20), ..Default::default() };
    let relay = Relay::new(producer.clone(), bus.clone(), options).spawn();
    polis_testkit::wait_for(Duration::from_secs(10), || async {
        producer.outbox_backlog().await.unwrap().unpublished == 0
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(relay);

    // Consumer: one handled, one duplicate (a redelivery), one dead letter.
    let consumer = Consumer::new("metricbilling", store.clone(), ConsumerOptions::default())
        .route(Topic::events_of("metricshop"), RecorderFor::<SqliteEventStore>::new(Arc::new(Recorder::new())));
    let handler: Arc<dyn Handler<<SqliteEventStore as TransactionalStore>::Tx>> =
        Arc::new(RecorderFor::<SqliteEventStore>::new(Arc::new(Recorder::new())));
    let ok = Message::event("metricshop", "thing.happened.v1", "a", json!({ "seq": 1 }));
    let unknown = Message::event("metricshop", "unknown.type.v1", "b", json!({}));
    consumer.process(&handler, Delivery::new(Ok(ok.clone()), 1, Box::new(NoAck))).await;
    consumer.process(&handler, Delivery::new(Ok(ok), 2, Box::new(NoAck))).await;
    consumer.process(&handler, Delivery::new(Ok(unknown), 1, Box::new(NoAck))).await;

    let mut counters = HashMap::new();
    let mut histograms = HashMap::new();
    let mut gauges = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(n) => *counters.entry(name).or_insert(0) += n,
            DebugValue::Histogram(values) => histograms.entry(name).or_insert_with(Vec::new).extend(values),
            DebugValue::Gauge(v) => {
                gauges.insert(name, v.into_inner());
            }
        }
    }
    assert_eq!(counters.get("polis_outbox_published_total"), Some(&3));
    assert_eq!(histograms.get("polis_outbox_commit_to_publish_seconds").map(Vec::len), Some(3));
    assert!(histograms["polis_outbox_commit_to_publish_seconds"].iter().all(|s| s.into_inner() >= 0.0));
    assert_eq!(gauges.get("polis_outbox_backlog"), Some(&0.0));
    assert!(gauges.contains_key("polis_outbox_oldest_age_seconds"));
    assert_eq!(counters.get("polis_messages_handled_total"), Some(&1));
    assert_eq!(counters.get("polis_inbox_duplicates_total"), Some(&1));
    assert_eq!(counters.get("polis_redeliveries_total"), Some(&1));
    assert_eq!(counters.get("polis_dead_letters_total"), Some(&1));
}
