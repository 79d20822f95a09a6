//! Reliable messaging end to end: outbox → relay → bus → consumer with inbox,
//! on every combination of store and bus, under the faults it must survive.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Outcome, Relay, RelayOptions};
use polis_core::bus::{Acker, Bus, BusError, Delivery, Malformed, Topic};
use polis_core::outbox::{DeadLetterStatus, Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Applied, Recorder, RecorderFor, unique};

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
                a_producer_killed_between_commit_and_publish_delivers_after_restart,
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

#[derive(Debug)]
struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _: Duration) -> Result<(), BusError> {
        Ok(())
    }
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn effects_happen_once_end_to_end<S: Applied>(producer: Arc<S>, store: Arc<S>, bus: Arc<dyn Bus>) {
        let recorder = Arc::new(Recorder::new());
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(bus.clone()).await.unwrap();
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let sent: Vec<_> = (0..20).map(|i| event(producer.service(), &format!("k{}", i % 4), i)).collect();
        send_all(&*producer, sent.clone()).await;
        let applied = wait_applied(&*store, 20).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.applied().await.len(), 20, "no effect twice");
        let mut ids: Vec<_> = applied.iter().map(|a| a.2).collect();
        ids.sort();
        let mut expected: Vec<_> = sent.iter().map(|m| m.id).collect();
        expected.sort();
        assert_eq!(ids, expected);
        wait_for(WAIT, || async { producer.outbox_backlog().await.unwrap().unpublished == 0 }).await.unwrap();
    }

    pub async fn a_producer_killed_between_commit_and_publish_delivers_after_restart<S: Applied>(
        producer: Arc<S>,
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let recorder = Arc::new(Recorder::new());
        let _consumer =
            consumer(&store, Topic::events_of(producer.service()), &recorder).spawn(bus.clone()).await.unwrap();
        // Committed while no relay runs: the process died right after the commit.
        send_all(&*producer, (0..5).map(|i| event(producer.service(), "k", i)).collect()).await;
        let relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        drop(relay);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The restarted relay finds the outbox as the commit left it.
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let applied = wait_applied(&*store, 5).await;
        assert_eq!(applied.iter().map(|a| a.1).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
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
        // the send, which takes the key lock on PostgreSQL; SQLite runs one
        // transaction at a time), so it numbers the key's commits in order.
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
