//! The pipelined relay: what it reads ahead and marks behind never costs a
//! message, its key's order, or a mark before the bus stored the message.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Relay, RelayOptions};
use polis_core::bus::{Bus, BusError, Subscription, Topic};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_testkit::wait_for;
use serde_json::json;
use support::unique;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A bus that records what it stored, in order. Every `fail_every`-th publish
/// stores the first half of its batch and then fails, like a broker that went
/// away mid-batch.
#[derive(Default)]
struct RecordingBus {
    stored: Mutex<Vec<Message>>,
    calls: AtomicU32,
    fail_every: u32,
}

impl RecordingBus {
    fn failing_every(n: u32) -> Self {
        Self { fail_every: n, ..Self::default() }
    }

    fn stored(&self) -> Vec<Message> {
        self.stored.lock().unwrap().clone()
    }

    /// Ids in the order they were first stored (a real bus drops the rest).
    fn first_stored(&self) -> Vec<Uuid> {
        let mut seen = HashSet::new();
        self.stored().into_iter().map(|m| m.id).filter(|id| seen.insert(*id)).collect()
    }
}

#[async_trait]
impl Bus for RecordingBus {
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        // Give the read ahead and the mark behind time to run meanwhile.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stored = self.stored.lock().unwrap();
        if self.fail_every > 0 && call.is_multiple_of(self.fail_every) {
            stored.extend_from_slice(&messages[..messages.len() / 2]);
            return Err(BusError::backend("injected failure after half the batch"));
        }
        stored.extend_from_slice(messages);
        Ok(())
    }

    async fn subscribe(&self, _: &str, _: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        Err(BusError::Closed)
    }
}

fn event(source: &str, key: &str, seq: u64) -> Message {
    Message::event(source, "thing.happened.v1", key, json!({ "seq": seq }))
}

async fn send<S: TransactionalStore>(store: &S, message: Message) {
    store.transaction::<_, _, StoreError>(async move |tx| tx.send(&message).await).await.unwrap();
}

fn options(batch_size: usize) -> RelayOptions {
    RelayOptions {
        batch_size,
        poll_interval: Duration::from_millis(50),
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Groups ids by key, keeping their order.
fn by_key(ids: &[Uuid], keys: &HashMap<Uuid, String>) -> HashMap<String, Vec<Uuid>> {
    let mut grouped: HashMap<String, Vec<Uuid>> = HashMap::new();
    for id in ids {
        grouped.entry(keys[id].clone()).or_default().push(*id);
    }
    grouped
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = crate::support::sqlite(&crate::unique("relay")).await;
                super::cases::$case(store).await;
            }
        )*}
        mod postgres {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = crate::support::postgres(&crate::unique("relay")).await;
                super::cases::$case(store).await;
            }
        )*}
    };
}

on_both_stores!(
    steps_publish_everything_in_order_and_leave_it_marked,
    concurrent_producers_keep_per_key_order_across_pipelined_batches,
    failed_publishes_lose_nothing_and_keep_per_key_order,
);

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn steps_publish_everything_in_order_and_leave_it_marked<S: TransactionalStore>(store: Arc<S>) {
        let sent: Vec<Message> = (0..23).map(|i| event(store.service(), &format!("k{}", i % 3), i)).collect();
        for m in &sent {
            send(&*store, m.clone()).await;
        }
        let bus = Arc::new(RecordingBus::default());
        let relay = Relay::new(store.clone(), bus.clone(), options(5));
        let mut steps = Vec::new();
        loop {
            match relay.step().await.unwrap() {
                0 => break,
                n => steps.push(n),
            }
        }
        assert_eq!(steps, [5, 5, 5, 5, 3]);
        assert_eq!(bus.first_stored(), sent.iter().map(|m| m.id).collect::<Vec<_>>());
        assert_eq!(bus.stored().len(), 23, "nothing twice");
        // `Ok(0)` waited for the last mark.
        assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 0);
        assert!(store.unpublished(10).await.unwrap().is_empty());

        // Marked entries count as published for the retention period.
        let purged = store.purge(chrono::Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        assert_eq!(purged.outbox, 23);
    }

    pub async fn concurrent_producers_keep_per_key_order_across_pipelined_batches<S: TransactionalStore>(
        store: Arc<S>,
    ) {
        let bus = Arc::new(RecordingBus::default());
        let _relay = Relay::new(store.clone(), bus.clone(), options(7)).spawn();
        // Per key, the order transactions commit in is noted while the key is
        // still held (the writer on SQLite, the key lock on PostgreSQL,
        // taken by the flush).
        let clock = Arc::new(AtomicU64::new(0));
        let noted = Arc::new(Mutex::new(Vec::<(u64, Uuid)>::new()));
        let keys: Arc<Mutex<HashMap<Uuid, String>>> = Arc::default();
        let producers: Vec<_> = (0..8u64)
            .map(|p| {
                let (store, clock, noted, keys) = (store.clone(), clock.clone(), noted.clone(), keys.clone());
                tokio::spawn(async move {
                    for i in 0..40u64 {
                        let m = event(store.service(), &format!("k{}", (p + i) % 5), p * 1000 + i);
                        keys.lock().unwrap().insert(m.id, m.key.clone());
                        let (clock, noted) = (clock.clone(), noted.clone());
                        store
                            .transaction::<_, _, StoreError>(async move |tx| {
                                tx.send(&m).await?;
                                tx.flush().await?;
                                let at = clock.fetch_add(1, Ordering::SeqCst);
                                noted.lock().unwrap().push((at, m.id));
                                Ok(())
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let reached = wait_for(WAIT, || async { bus.first_stored().len() == 320 }).await;
        assert!(reached.is_ok(), "{} of 320 published", bus.first_stored().len());
        wait_for(WAIT, || async { store.outbox_backlog().await.unwrap().unpublished == 0 }).await.unwrap();

        let keys = keys.lock().unwrap().clone();
        let mut noted = noted.lock().unwrap().clone();
        noted.sort_unstable();
        let committed: Vec<Uuid> = noted.into_iter().map(|(_, id)| id).collect();
        let published = by_key(&bus.first_stored(), &keys);
        for (key, in_commit_order) in by_key(&committed, &keys) {
            assert_eq!(published[&key], in_commit_order, "key {key}: published in commit order");
        }
        assert_eq!(bus.stored().len(), 320, "no failure, so nothing twice");
    }

    pub async fn failed_publishes_lose_nothing_and_keep_per_key_order<S: TransactionalStore>(store: Arc<S>) {
        let sent: Vec<Message> = (0..60).map(|i| event(store.service(), &format!("k{}", i % 4), i)).collect();
        let keys: HashMap<Uuid, String> = sent.iter().map(|m| (m.id, m.key.clone())).collect();
        for m in &sent[..30] {
            send(&*store, m.clone()).await;
        }
        let bus = Arc::new(RecordingBus::failing_every(3));
        let _relay = Relay::new(store.clone(), bus.clone(), options(4)).spawn();
        for m in &sent[30..] {
            send(&*store, m.clone()).await;
        }
        let reached = wait_for(WAIT, || async { store.outbox_backlog().await.unwrap().unpublished == 0 }).await;
        assert!(reached.is_ok(), "{} still unpublished", store.outbox_backlog().await.unwrap().unpublished);

        // Everything was stored before it was marked: the outbox is empty
        // and the bus has every message, each key in send order.
        let first = bus.first_stored();
        assert_eq!(first.len(), 60, "every message stored");
        let expected = by_key(&sent.iter().map(|m| m.id).collect::<Vec<_>>(), &keys);
        assert_eq!(by_key(&first, &keys), expected);
        assert!(bus.stored().len() > 60, "the failed halves were published again");
        assert!(bus.calls.load(Ordering::SeqCst) >= 3, "failures were injected");
    }
}

/// On PostgreSQL a position is drawn at insert and becomes visible at commit,
/// so a lower position can become visible after a higher one was published.
/// A relay that read "after the last position" would skip it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_publishes_a_lower_position_that_commits_late() {
    let (store, _guard) = support::postgres(&unique("late")).await;
    let bus = Arc::new(RecordingBus::default());
    let relay = Relay::new(store.clone(), bus.clone(), options(10));
    let late = event(store.service(), "slow-key", 1);
    let early = event(store.service(), "other-key", 2);

    // The late transaction draws its position first and holds its commit.
    let (inserted_tx, inserted) = tokio::sync::oneshot::channel();
    let (commit_tx, commit) = tokio::sync::oneshot::channel::<()>();
    let late_message = late.clone();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transaction::<_, _, StoreError>(async move |tx| {
                    tx.send(&late_message).await?;
                    inserted_tx.send(()).unwrap();
                    commit.await.unwrap();
                    Ok(())
                })
                .await
                .unwrap();
        })
    };
    inserted.await.unwrap();
    send(&*store, early.clone()).await;

    // The relay publishes the higher position, and reads ahead meanwhile.
    assert_eq!(relay.step().await.unwrap(), 1);
    commit_tx.send(()).unwrap();
    holder.await.unwrap();
    // A few steps: the batch read ahead before the commit comes back empty,
    // the next read must find the late entry.
    let mut published = 0;
    for _ in 0..4 {
        published += relay.step().await.unwrap();
    }
    assert_eq!(published, 1);
    assert_eq!(bus.first_stored(), [early.id, late.id]);
    assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 0);
}
