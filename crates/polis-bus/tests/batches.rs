//! Batches: deliveries of different keys that are ready together are handled
//! in one transaction, which commits as a whole or not at all; after a
//! rollback each delivery is handled on its own. Every store, since the
//! transaction is the store's.
//!
//! A gate holds the consumer's one batch worker inside a first delivery
//! while the others queue up behind it; released, the worker takes all of
//! them as one batch. What shows they shared a transaction: when one of
//! them fails, the others' handlers ran twice (in the batch that rolled
//! back, then alone), and their effects are there once.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Outcome};
use polis_core::Message;
use polis_core::bus::{Bus, Delivery, Topic};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Applied, Guard, NoAck, unique};
use tokio::sync::Notify;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Records what it applies; a message with `"gate": true` waits for the
/// gate first, one with `"poison": true` fails for good. Counts, per
/// message, how often the handler ran, and how many deliveries reached it.
struct Gated<S> {
    gate: Arc<Notify>,
    runs: Arc<Mutex<HashMap<Uuid, usize>>>,
    arrived: Arc<Mutex<HashSet<Uuid>>>,
    _store: std::marker::PhantomData<fn() -> S>,
}

#[async_trait]
impl<S: Applied> Handler<S::Tx> for Gated<S> {
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        *self.runs.lock().unwrap().entry(message.id).or_default() += 1;
        if message.data["gate"] == true {
            self.gate.notified().await;
        }
        if message.data["poison"] == true {
            return Err(HandlerError::Permanent("poison".into()));
        }
        S::record_in(tx, message).await?;
        if message.data["careless"] == true {
            S::fail_quietly_in(tx).await;
        }
        Ok(())
    }

    fn accepts(&self, message: &Message) -> bool {
        // Asked as a delivery starts, just before it queues for a batch.
        self.arrived.lock().unwrap().insert(message.id);
        true
    }
}

struct Setup<S: Applied> {
    store: Arc<S>,
    consumer: Arc<Consumer<S>>,
    handler: Arc<dyn Handler<S::Tx>>,
    gate: Arc<Notify>,
    runs: Arc<Mutex<HashMap<Uuid, usize>>>,
    arrived: Arc<Mutex<HashSet<Uuid>>>,
    /// The service whose events the consumer routes to the handler (what
    /// a dead letter's replay looks the handler up by).
    routed: String,
    _running: polis_bus::ConsumerHandle,
}

async fn setup<S: Applied>(store: Arc<S>, bus: Arc<dyn Bus>) -> Setup<S> {
    store.create_applied().await;
    let (gate, runs, arrived) = (Arc::new(Notify::new()), Arc::default(), Arc::default());
    let handler: Arc<dyn Handler<S::Tx>> = Arc::new(Gated::<S> {
        gate: gate.clone(),
        runs: Arc::clone(&runs),
        arrived: Arc::clone(&arrived),
        _store: std::marker::PhantomData,
    });
    let options = ConsumerOptions {
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        max_batch: Some(64),
        batch_workers: 1,
        ..ConsumerOptions::default()
    };
    struct Shared<Tx>(Arc<dyn Handler<Tx>>);
    #[async_trait]
    impl<Tx: Send + 'static> Handler<Tx> for Shared<Tx> {
        async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
            self.0.handle(tx, message).await
        }
    }
    // Spawned (on a topic nobody publishes to) so that its batch worker
    // runs; the deliveries are handed to it directly.
    let routed = unique("quiet");
    let consumer = Arc::new(
        Consumer::new(store.service().to_owned(), store.clone(), options)
            .route(Topic::events_of(&routed), Shared(handler.clone())),
    );
    let running = consumer.clone().spawn(bus).await.unwrap();
    Setup { store, consumer, handler, gate, runs, arrived, routed, _running: running }
}

fn event(key: &str, data: serde_json::Value) -> Message {
    Message::event("shop", "thing.happened.v1", key, data)
}

impl<S: Applied> Setup<S> {
    fn deliver(&self, message: &Message) -> tokio::task::JoinHandle<Outcome> {
        let (consumer, handler, message) = (self.consumer.clone(), self.handler.clone(), message.clone());
        tokio::spawn(async move { consumer.process(&handler, Delivery::new(Ok(message), 1, Box::new(NoAck))).await })
    }

    /// Holds the batch worker in `gate`'s handler while `queued` arrive
    /// (in any order among themselves), then `last` after all of them,
    /// then lets it go: they form the next batch. Their outcomes, in order,
    /// `last`'s at the end.
    async fn behind_the_gate(&self, gate: &Message, queued: &[Message], last: &[Message]) -> (Outcome, Vec<Outcome>) {
        let holding = self.deliver(gate);
        let runs = Arc::clone(&self.runs);
        wait_for(WAIT, || async { runs.lock().unwrap().contains_key(&gate.id) }).await.unwrap();
        let mut waiting = Vec::new();
        for group in [queued, last] {
            waiting.extend(group.iter().map(|m| self.deliver(m)));
            let arrived = Arc::clone(&self.arrived);
            let all_arrived = || async { group.iter().all(|m| arrived.lock().unwrap().contains(&m.id)) };
            wait_for(WAIT, all_arrived).await.unwrap();
            // `accepts` runs just before a delivery queues, with no await in
            // between; this pause lets those tasks take that last step.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.gate.notify_one();
        let gate_outcome = holding.await.unwrap();
        let mut outcomes = Vec::new();
        for w in waiting {
            outcomes.push(w.await.unwrap());
        }
        (gate_outcome, outcomes)
    }

    fn runs_of(&self, message: &Message) -> usize {
        self.runs.lock().unwrap().get(&message.id).copied().unwrap_or(0)
    }

    async fn applied_ids(&self) -> Vec<Uuid> {
        self.store.applied().await.into_iter().map(|(_, _, id)| id).collect()
    }
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    /// Ready deliveries commit together: each handled once, a duplicate
    /// among them recognized, a key blocked by a dead letter parked — the
    /// blocked key rolls the batch back before any handler ran, so nobody
    /// else ran twice.
    pub async fn ready_deliveries_commit_together<S: Applied>(store: Arc<S>, bus: Arc<dyn Bus>) {
        let s = setup(store, bus).await;
        let seen = event("seen", json!({}));
        assert_eq!(s.deliver(&seen).await.unwrap(), Outcome::Handled);

        let gate = event("gate", json!({ "gate": true }));
        let good: Vec<_> = (0..6).map(|i| event(&format!("k{i}"), json!({ "seq": i }))).collect();
        let mut queued = good.clone();
        queued.push(seen.clone());
        let (gate_outcome, outcomes) = s.behind_the_gate(&gate, &queued, &[]).await;
        assert_eq!(gate_outcome, Outcome::Handled);
        assert_eq!(outcomes[..6], [Outcome::Handled; 6]);
        assert_eq!(outcomes[6], Outcome::Duplicate, "the inbox has it");
        for m in &good {
            assert_eq!(s.runs_of(m), 1, "handled once, in the batch");
        }
        let applied = s.applied_ids().await;
        assert_eq!(applied.len(), 8, "seen, gate and six: {applied:?}");

        // Now a dead letter blocks key `p`; a later `p` in a batch is parked.
        let poison = event("p", json!({ "poison": true }));
        assert_eq!(s.deliver(&poison).await.unwrap(), Outcome::DeadLettered);
        let gate = event("gate", json!({ "gate": true }));
        let after = event("p", json!({}));
        let others: Vec<_> = (0..3).map(|i| event(&format!("q{i}"), json!({}))).collect();
        let mut queued = vec![after.clone()];
        queued.extend(others.clone());
        let (gate_outcome, outcomes) = s.behind_the_gate(&gate, &queued, &[]).await;
        assert_eq!(gate_outcome, Outcome::Handled);
        assert_eq!(outcomes, [Outcome::Parked, Outcome::Handled, Outcome::Handled, Outcome::Handled]);
        assert_eq!(s.runs_of(&after), 0, "parked, never handled");
        for m in &others {
            assert_eq!(s.runs_of(m), 1, "the batch rolled back before any handler ran");
        }
        assert_eq!(s.applied_ids().await.len(), 12);
    }

    /// A handler failing in a batch rolls the whole batch back; every
    /// delivery of it is then handled alone: the others' effects are there
    /// once (their handlers ran twice), the failing one is a dead letter.
    pub async fn a_failure_in_a_batch_leaves_nothing_of_it<S: Applied>(store: Arc<S>, bus: Arc<dyn Bus>) {
        let s = setup(store, bus).await;
        let gate = event("gate", json!({ "gate": true }));
        let good: Vec<_> = (0..8).map(|i| event(&format!("k{i}"), json!({ "seq": i }))).collect();
        let poison = event("p", json!({ "poison": true }));
        // The poison queues last, so the whole batch runs before it fails.
        let (gate_outcome, outcomes) = s.behind_the_gate(&gate, &good, std::slice::from_ref(&poison)).await;
        assert_eq!(gate_outcome, Outcome::Handled);
        assert_eq!(outcomes[..8], [Outcome::Handled; 8]);
        assert_eq!(outcomes[8], Outcome::DeadLettered);
        for m in &good {
            assert_eq!(s.runs_of(m), 2, "ran in the batch that rolled back, then alone");
        }
        let mut applied = s.applied_ids().await;
        applied.sort();
        let mut expected: Vec<Uuid> = good.iter().map(|m| m.id).chain([gate.id]).collect();
        expected.sort();
        assert_eq!(applied, expected, "each effect once, nothing of the poison");
        let letters = s.consumer.dead_letters().await.unwrap();
        assert_eq!(letters.iter().map(|l| l.message_id).collect::<Vec<_>>(), [Some(poison.id)]);
    }

    /// A handler that ignores a failed statement's error and returns `Ok`.
    /// On PostgreSQL that transaction can only roll back, and its `COMMIT`
    /// rolls back without an error; the batch must not take that for a
    /// commit and acknowledge everyone's effects. Whatever counts as
    /// handled has its effect; the others' effects are there once.
    pub async fn a_swallowed_error_never_passes_for_a_commit<S: Applied>(store: Arc<S>, bus: Arc<dyn Bus>) {
        let s = setup(store, bus).await;
        let gate = event("gate", json!({ "gate": true }));
        let good: Vec<_> = (0..4).map(|i| event(&format!("k{i}"), json!({ "seq": i }))).collect();
        // Last, so that everything else in the batch ran before it; of
        // the routed service, so that a replay finds its handler.
        let careless = Message::event(&s.routed, "thing.happened.v1", "c", json!({ "careless": true }));
        let (gate_outcome, outcomes) = s.behind_the_gate(&gate, &good, std::slice::from_ref(&careless)).await;
        assert_eq!(gate_outcome, Outcome::Handled);
        assert_eq!(outcomes[..4], [Outcome::Handled; 4]);
        let applied = s.applied_ids().await;
        for m in good.iter().chain([&gate]) {
            assert_eq!(applied.iter().filter(|id| **id == m.id).count(), 1, "{} applied once: {applied:?}", m.key);
        }
        match outcomes[4] {
            // SQLite: a failed statement leaves the transaction usable.
            Outcome::Handled => assert!(applied.contains(&careless.id), "handled, so its effect is there"),
            outcome => {
                // PostgreSQL: it cannot commit, so it ends as a dead letter.
                assert_eq!(outcome, Outcome::DeadLettered);
                assert!(!applied.contains(&careless.id));
                let letters = s.consumer.dead_letters().await.unwrap();
                assert_eq!(letters.iter().map(|l| l.message_id).collect::<Vec<_>>(), [Some(careless.id)]);
                assert!(letters[0].error.contains("its error was ignored"), "says why: {}", letters[0].error);
                // Replaying it cannot commit either: an error, and the letter stays.
                assert!(s.consumer.replay(letters[0].id).await.is_err(), "the replay did not take effect");
                let letters = s.consumer.dead_letters().await.unwrap();
                assert_eq!(letters.iter().map(|l| l.message_id).collect::<Vec<_>>(), [Some(careless.id)]);
            }
        }
    }
}

macro_rules! for_every_store {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _s): (_, Guard) = support::sqlite(&unique("batch")).await;
                    let (bus, _b) = support::in_process_bus().await;
                    cases::$case(store, bus).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _s) = support::postgres(&unique("batch")).await;
                    let (bus, _b) = support::nats_bus().await;
                    cases::$case(store, bus).await;
                }
            )*
        }
    };
}

for_every_store!(
    ready_deliveries_commit_together,
    a_failure_in_a_batch_leaves_nothing_of_it,
    a_swallowed_error_never_passes_for_a_commit,
);
