//! Reliable messaging end to end: outbox → relay → bus → consumer with inbox,
//! on every combination of store and bus, under the faults it must survive.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Outcome, Relay, RelayOptions};
use polis_core::bus::{Bus, Delivery, Malformed, Topic};
use polis_core::outbox::{DeadLetterStatus, Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Applied, NoAck, Recorder, RecorderFor, unique};

const WAIT: Duration = Duration::from_secs(30);

fn fast() -> ConsumerOptions {
    ConsumerOptions { retry_min: Duration::from_millis(5), retry_max: Duration::from_millis(50), ..Default::default() }
}

fn relay_options() -> RelayOptions {
    RelayOptions { poll_interval: Duration::from_millis(100), ..Default::default() }
}

async fn send_all<S: TransactionalStore>(store: &S, messages: Vec<Message>) {
    for m in messages {
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
    }
}

fn event(source: &str, key: &str, seq: i64) -> Message {
    Message::event(source, "thing.happened.v1", key, json!({ "seq": seq }))
}

async fn wait_applied<S: Applied>(store: &S, n: usize) -> Vec<(String, i64, uuid::Uuid)> {
    let reached = wait_for(WAIT, || async { store.applied().await.len() >= n }).await;
    let applied = store.applied().await;
    assert!(reached.is_ok(), "applied {} of {n}", applied.len());
    applied
}

macro_rules! combos {
    ($($name:ident => ($store:path, $bus:path)),* $(,)?) => {$(
        mod $name {
            combos!(@cases $store, $bus;
                effects_happen_once_end_to_end,
                a_relay_killed_mid_batch_delivers_everything_once_after_restart,
                every_message_delivered_three_times_has_its_effects_once,
                a_poison_message_is_dead_lettered_and_the_others_keep_flowing,
                malformed_and_unknown_messages_go_straight_to_dead_letters,
                transient_failures_are_retried,
                concurrent_producers_keep_per_key_order,
                a_command_gets_its_reply,
                a_redelivered_dead_letter_is_a_duplicate_and_replays_once,
                a_declined_message_is_acknowledged_without_a_transaction,
            );
        }
    )*};
    (@cases $store:path, $bus:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let producer_name = crate::unique("shop");
            let consumer_name = crate::unique("billing");
            let (producer, _p) = $store(&producer_name).await;
            let (consumer, _c) = $store(&consumer_name).await;
            crate::Applied::create_applied(&*consumer).await;
            let (bus, _b) = $bus().await;
            super::cases::$case(producer, consumer, bus).await;
        }
    )*};
}

combos! {
    sqlite_in_process => (crate::support::sqlite, crate::support::in_process_bus),
    postgres_nats => (crate::support::postgres, crate::support::nats_bus),
    sqlite_nats => (crate::support::sqlite, crate::support::nats_bus),
    postgres_in_process => (crate::support::postgres, crate::support::in_process_bus),
}

fn consumer<S: Applied>(store: &Arc<S>, topic: Topic, recorder: &Arc<Recorder>) -> Arc<Consumer<S>> {
    Arc::new(
        Consumer::new(store.service().to_owned(), store.clone(), fast())
            .route(topic, RecorderFor::<S>::new(recorder.clone())),
    )
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    /// Every delivery reaches the consumer twice (the second as a
    /// redelivery, as after a lost acknowledgement): each effect happens once.
    pub async fn effects_happen_once_end_to_end<S: Applied>(producer: Arc<S>, store: Arc<S>, bus: Arc<dyn Bus>) {
        let recorder = Arc::new(Recorder::new());
        let duplicating = support::Duplicating::new(bus.clone());
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(duplicating.clone()).await.unwrap();
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let sent: Vec<_> = (0..20).map(|i| event(producer.service(), &format!("k{}", i % 4), i)).collect();
        send_all(&*producer, sent.clone()).await;
        wait_applied(&*store, 20).await;
        // Every second copy handled (as a duplicate, or this fails below).
        wait_for(WAIT, || async { duplicating.copies_acked.load(Ordering::SeqCst) == 20 }).await.unwrap();
        let applied = store.applied().await;
        assert_eq!(applied.len(), 20, "no effect twice");
        let mut ids: Vec<_> = applied.iter().map(|a| a.2).collect();
        ids.sort();
        let mut expected: Vec<_> = sent.iter().map(|m| m.id).collect();
        expected.sort();
        assert_eq!(ids, expected);
        for k in 0..4 {
            let seqs: Vec<_> = applied.iter().filter(|a| a.0 == format!("k{k}")).map(|a| a.1).collect();
            assert!(seqs.is_sorted(), "key k{k} in order: {seqs:?}");
        }
        wait_for(WAIT, || async { producer.outbox_backlog().await.unwrap().unpublished == 0 }).await.unwrap();
    }

    /// The relay dies in the middle of a batch: some of it is on the bus,
    /// the rest never left, nothing is marked published. A new relay sends
    /// the whole batch again; the bus drops what it already had, and each
    /// message takes effect once, in order. (A producer *process* killed
    /// right after its commits is `producer_crash.rs`.)
    pub async fn a_relay_killed_mid_batch_delivers_everything_once_after_restart<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(bus.clone()).await.unwrap();
        let src = producer.service().to_owned();
        send_all(&*producer, (0..10).map(|i| event(&src, "k", i)).collect()).await;
        let stalling = support::Stalling::new(bus.clone(), 4);
        let relay = Relay::new(producer.clone(), stalling.clone(), relay_options()).spawn();
        wait_for(WAIT, || async { stalling.stalled() }).await.unwrap();
        relay.shutdown().await;
        let before = wait_applied(&*store, 4).await;
        assert_eq!(before.iter().map(|a| a.1).collect::<Vec<_>>(), vec![0, 1, 2, 3], "the part that got out");
        assert_eq!(producer.outbox_backlog().await.unwrap().unpublished, 10, "nothing was marked published");

        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        wait_for(WAIT, || async { producer.outbox_backlog().await.unwrap().unpublished == 0 }).await.unwrap();
        // A last message of the key: once it is applied, anything published
        // before it on this key has been delivered (per-key order).
        send_all(&*producer, vec![event(&src, "k", 10)]).await;
        let applied = wait_applied(&*store, 11).await;
        assert_eq!(applied.iter().map(|a| a.1).collect::<Vec<_>>(), (0..11).collect::<Vec<_>>(), "once each, in order");
    }

    /// A message its handler declines leaves nothing behind: no effect, and
    /// no inbox record (its redelivery is declined again, not a duplicate).
    pub async fn a_declined_message_is_acknowledged_without_a_transaction<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        _bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let consumer = consumer(&store, Topic::events_of(producer.service()), &recorder);
        let handler: Arc<dyn Handler<S::Tx>> = Arc::new(RecorderFor::<S>::new(recorder.clone()));
        let declined =
            Message::event(producer.service(), "thing.happened.v1", "k", json!({ "seq": 1, "declined": true }));
        for attempt in 1..=2 {
            let delivery = Delivery::new(Ok(declined.clone()), attempt, Box::new(NoAck));
            assert_eq!(consumer.process(&handler, delivery).await, Outcome::Declined);
        }
        let accepted = event(producer.service(), "k", 2);
        let delivery = Delivery::new(Ok(accepted), 1, Box::new(NoAck));
        assert_eq!(consumer.process(&handler, delivery).await, Outcome::Handled);
        assert_eq!(store.applied().await.iter().map(|a| a.1).collect::<Vec<_>>(), vec![2]);
    }

    pub async fn every_message_delivered_three_times_has_its_effects_once<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        _bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let consumer = consumer(&store, Topic::events_of(producer.service()), &recorder);
        let handler: Arc<dyn Handler<S::Tx>> = Arc::new(RecorderFor::<S>::new(recorder.clone()));
        let messages: Vec<_> = (0..10).map(|i| event(producer.service(), &format!("k{}", i % 3), i)).collect();
        let mut outcomes = Vec::new();
        for round in 1..=3 {
            for m in &messages {
                let delivery = Delivery::new(Ok(m.clone()), round, Box::new(NoAck));
                outcomes.push(consumer.process(&handler, delivery).await);
            }
        }
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Handled).count(), 10);
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Duplicate).count(), 20);
        assert_eq!(store.applied().await.len(), 10);
    }

    pub async fn a_poison_message_is_dead_lettered_and_the_others_keep_flowing<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let consumer = consumer(&store, Topic::events_of(producer.service()), &recorder);
        let _running = consumer.clone().spawn(bus.clone()).await.unwrap();
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let src = producer.service().to_owned();
        let mut poison = event(&src, "a", 1);
        poison.data["poison"] = json!(true);
        let poison_id = poison.id;
        send_all(
            &*producer,
            vec![event(&src, "a", 0), poison, event(&src, "a", 2), event(&src, "b", 0), event(&src, "b", 1)],
        )
        .await;
        // a:0, b:0, b:1 go through; a:1 is dead; a:2 parks behind it.
        let applied = wait_applied(&*store, 3).await;
        wait_for(WAIT, || async { consumer.dead_letters().await.unwrap().len() == 2 }).await.unwrap();
        let letters = consumer.dead_letters().await.unwrap();
        assert_eq!(applied.iter().filter(|a| a.0 == "b").count(), 2, "other keys keep flowing");
        let dead = letters.iter().find(|l| l.status == DeadLetterStatus::Dead).unwrap();
        assert_eq!((dead.message_id, dead.error.as_str()), (Some(poison_id), "poison"));
        let parked = letters.iter().find(|l| l.status == DeadLetterStatus::Parked).unwrap();
        assert_eq!(parked.message.as_ref().unwrap().data["seq"], 2);
        assert!(parked.error.contains("parked"));

        // Replaying while the cause persists fails and keeps the letter.
        assert!(consumer.replay(dead.id).await.is_err());
        assert_eq!(consumer.dead_letters().await.unwrap().len(), 2);
        // Fixed: the replay applies a:1, then the parked a:2, in order.
        recorder.poison_active.store(false, Ordering::SeqCst);
        consumer.replay(dead.id).await.unwrap();
        assert!(consumer.dead_letters().await.unwrap().is_empty());
        let a: Vec<_> = store.applied().await.into_iter().filter(|x| x.0 == "a").map(|x| x.1).collect();
        assert_eq!(a, vec![0, 1, 2], "key order is kept across the failure");
        // A later message of the key flows again.
        send_all(&*producer, vec![event(&src, "a", 3)]).await;
        wait_applied(&*store, 6).await;
    }

    pub async fn malformed_and_unknown_messages_go_straight_to_dead_letters<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        _bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let consumer = consumer(&store, Topic::events_of(producer.service()), &recorder);
        let handler: Arc<dyn Handler<S::Tx>> = Arc::new(RecorderFor::<S>::new(recorder));
        let unknown = Message::event(producer.service(), "unknown.type.v1", "k", json!({}));
        let outcome = consumer.process(&handler, Delivery::new(Ok(unknown.clone()), 1, Box::new(NoAck))).await;
        assert_eq!(outcome, Outcome::DeadLettered);
        let malformed = Malformed { id: None, raw: "{not json".into(), reason: "body is not JSON".into() };
        let outcome = consumer.process(&handler, Delivery::new(Err(malformed), 1, Box::new(NoAck))).await;
        assert_eq!(outcome, Outcome::DeadLettered);
        let letters = consumer.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].attempts, 1, "permanent errors are not retried");
        assert!(letters[0].error.contains("unknown message type"));
        assert_eq!(letters[1].raw.as_deref(), Some("{not json"));
        assert!(letters[1].error.contains("body is not JSON"));
        // A malformed message cannot be replayed, only discarded.
        assert!(consumer.replay(letters[1].id).await.is_err());
        consumer.discard(letters[1].id).await.unwrap();
        consumer.discard(letters[0].id).await.unwrap();
        assert!(consumer.dead_letters().await.unwrap().is_empty());
        assert!(store.applied().await.is_empty());
    }

    pub async fn transient_failures_are_retried<S: Applied>(producer: Arc<S>, store: Arc<S>, bus: Arc<dyn Bus>) {
        let recorder = Arc::new(Recorder::new());
        recorder.flaky_left.store(3, Ordering::SeqCst);
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(bus.clone()).await.unwrap();
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let mut flaky = event(producer.service(), "k", 0);
        flaky.data["flaky"] = json!(true);
        send_all(&*producer, vec![flaky, event(producer.service(), "k", 1)]).await;
        let applied = wait_applied(&*store, 2).await;
        assert_eq!(applied.iter().map(|a| a.1).collect::<Vec<_>>(), vec![0, 1], "retried in place, order kept");
        assert_eq!(recorder.flaky_left.load(Ordering::SeqCst), 0);
        assert!(store.dead_letters(None).await.unwrap().is_empty());
    }

    pub async fn concurrent_producers_keep_per_key_order<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(bus.clone()).await.unwrap();
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        // Per key, the sequence number is taken while the key is held (after
        // the flush of a send, which takes the key lock on PostgreSQL;
        // SQLite runs one transaction at a time), so it numbers the key's
        // commits in order.
        let counters: Arc<Vec<std::sync::atomic::AtomicI64>> = Arc::new((0..4).map(|_| Default::default()).collect());
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let (producer, counters) = (producer.clone(), counters.clone());
                tokio::spawn(async move {
                    for i in 0..15usize {
                        let k = (w + i) % 4;
                        let src = producer.service().to_owned();
                        let counters = counters.clone();
                        producer
                            .transaction::<_, _, StoreError>(async move |tx| {
                                let mut m = event(&src, &format!("k{k}"), -1);
                                // Take the key first with a marker message, then number it.
                                tx.send(&Message::event(&src, "key.taken.v1", &m.key, json!({}))).await?;
                                tx.flush().await?;
                                m.data["seq"] = json!(counters[k].fetch_add(1, Ordering::SeqCst));
                                tx.send(&m).await
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 120 numbered messages plus 120 markers (seq -1).
        let applied = wait_applied(&*store, 240).await;
        for k in 0..4 {
            let seqs: Vec<_> = applied.iter().filter(|a| a.0 == format!("k{k}") && a.1 >= 0).map(|a| a.1).collect();
            assert_eq!(seqs, (0..30).collect::<Vec<_>>(), "key k{k} applied in commit order");
        }
    }

    pub async fn a_command_gets_its_reply<S: Applied>(requester: Arc<S>, responder: Arc<S>, bus: Arc<dyn Bus>) {
        struct Respond;
        #[async_trait]
        impl<Tx: Transaction> Handler<Tx> for Respond {
            async fn handle(&self, tx: &mut Tx, command: &Message) -> Result<(), HandlerError> {
                let amount = command.data["amount"].as_i64().ok_or(HandlerError::Permanent("no amount".into()))?;
                let reply = Message::reply_to(command, "payment.authorized.v1", json!({ "authorized": amount }));
                tx.send(&reply).await?;
                Ok(())
            }
        }
        struct Collect(tokio::sync::mpsc::UnboundedSender<Message>);
        #[async_trait]
        impl<Tx: Transaction> Handler<Tx> for Collect {
            async fn handle(&self, _tx: &mut Tx, reply: &Message) -> Result<(), HandlerError> {
                self.0.send(reply.clone()).map_err(|e| HandlerError::Transient(e.to_string()))
            }
        }
        let responder_service = responder.service().to_owned();
        let _responding = Arc::new(
            Consumer::new(responder_service.clone(), responder.clone(), fast())
                .route(Topic::commands_to(&responder_service), Respond),
        )
        .spawn(bus.clone())
        .await
        .unwrap();
        let (replies, mut received) = tokio::sync::mpsc::unbounded_channel();
        let _requesting = Arc::new(
            Consumer::new(requester.service().to_owned(), requester.clone(), fast())
                .route(Topic::replies_to(requester.service()), Collect(replies)),
        )
        .spawn(bus.clone())
        .await
        .unwrap();
        let _relays = (
            Relay::new(requester.clone(), bus.clone(), relay_options()).spawn(),
            Relay::new(responder.clone(), bus.clone(), relay_options()).spawn(),
        );
        let command = Message::command(
            requester.service(),
            &responder_service,
            "payment.authorize.v1",
            "order-7",
            json!({ "amount": 1999 }),
        );
        send_all(&*requester, vec![command.clone()]).await;
        let reply = tokio::time::timeout(WAIT, received.recv()).await.unwrap().unwrap();
        assert_eq!(reply.kind, polis_core::MessageKind::Reply);
        assert_eq!((reply.source.as_str(), reply.target.as_str()), (responder_service.as_str(), requester.service()));
        assert_eq!(reply.metadata.causation_id, Some(command.id), "correlated to the command by id");
        assert_eq!(reply.metadata.correlation_id, Some(command.id));
        assert_eq!((reply.key.as_str(), &reply.data), ("order-7", &json!({ "authorized": 1999 })));
    }

    pub async fn a_redelivered_dead_letter_is_a_duplicate_and_replays_once<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        _bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let consumer = consumer(&store, Topic::events_of(producer.service()), &recorder);
        let handler: Arc<dyn Handler<S::Tx>> = Arc::new(RecorderFor::<S>::new(recorder.clone()));
        let mut poison = event(producer.service(), "p", 0);
        poison.data["poison"] = json!(true);
        let first = consumer.process(&handler, Delivery::new(Ok(poison.clone()), 1, Box::new(NoAck))).await;
        assert_eq!(first, Outcome::DeadLettered);
        // Its ack was lost: the bus brings it again.
        let again = consumer.process(&handler, Delivery::new(Ok(poison), 2, Box::new(NoAck))).await;
        assert_eq!(again, Outcome::Duplicate, "not parked behind itself");
        let letters = consumer.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        // Two operators replay it at once: it is applied once.
        recorder.poison_active.store(false, Ordering::SeqCst);
        let (a, b) = tokio::join!(consumer.replay(letters[0].id), consumer.replay(letters[0].id));
        assert!(a.is_ok() != b.is_ok(), "exactly one replay wins: {a:?} / {b:?}");
        assert_eq!(store.applied().await.len(), 1);
        assert!(consumer.dead_letters().await.unwrap().is_empty());
    }
}

/// A message of a blocked key arrives while the key's dead letter is being
/// replayed: its first look still sees the dead letter, but by the time it
/// would park, the replay (and the release of whatever was parked) is over.
/// Parking it then would strand it behind nothing; the consumer looks again
/// under the key's lock and handles it. PostgreSQL only: SQLite runs one
/// transaction at a time, so no replay can finish inside a delivery's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_message_meeting_a_finishing_replay_is_handled_not_parked() {
    let (store, _guard) = support::postgres(&unique("billing")).await;
    store.create_applied().await;
    let recorder = Arc::new(Recorder::new());
    let consumer = consumer(&store, Topic::events_of("shop"), &recorder);
    let handler: Arc<dyn Handler<polis_store::PgTx>> =
        Arc::new(RecorderFor::<polis_store::PgEventStore>::new(recorder.clone()));
    let mut poison = event("shop", "a", 0);
    poison.data["poison"] = json!(true);
    let first = consumer.process(&handler, Delivery::new(Ok(poison), 1, Box::new(NoAck))).await;
    assert_eq!(first, Outcome::DeadLettered);
    let dead = consumer.dead_letters().await.unwrap()[0].id;

    // Hold the next message's first look back: another transaction has
    // inserted its inbox row and not committed, so the delivery's insert
    // waits there, with its snapshot (which sees the dead letter) taken.
    let next = event("shop", "a", 1);
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO polis_inbox (consumer, message_id) VALUES ($1, $2)")
        .bind(store.service())
        .bind(next.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let delivering = consumer.process(&handler, Delivery::new(Ok(next), 1, Box::new(NoAck)));
    let meanwhile = async {
        let waiting = polis_testkit::wait_for_lock_waiter(store.pool(), WAIT).await;
        assert!(waiting.is_ok(), "the delivery never waited on its inbox row");
        // Meanwhile the cause is fixed and the dead letter replayed: nothing
        // is parked behind it yet, so its release finds nothing to release.
        recorder.poison_active.store(false, Ordering::SeqCst);
        consumer.replay(dead).await.unwrap();
        holder.rollback().await.unwrap();
    };
    let (outcome, ()) = tokio::time::timeout(WAIT, async { tokio::join!(delivering, meanwhile) }).await.unwrap();
    assert_eq!(outcome, Outcome::Handled, "parked behind a dead letter that was already gone");
    assert!(consumer.dead_letters().await.unwrap().is_empty());
    let applied: Vec<_> = store.applied().await.into_iter().map(|a| a.1).collect();
    assert_eq!(applied, vec![0, 1]);
}
