//! The saga runner on both stores: state, commands and deadlines commit
//! together; deadlines survive as scheduled messages and stale ones are ignored.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{Duration, Utc};
use polis_core::Message;
use polis_core::outbox::TransactionalStore;
use polis_saga::{DEADLINE_TYPE, Deadline, Saga, SagaError, Sagas, Step};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde::{Deserialize, Serialize};

/// Waits for one "pong" per "ping" sent; gives up when its deadline passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PingSaga {
    pongs: u32,
    gave_up: bool,
}

impl Saga for PingSaga {
    const TYPE: &'static str = "ping";
    type Effect = &'static str;

    fn on_reply(&mut self, reply: &Message, now: chrono::DateTime<Utc>) -> Step<&'static str> {
        if reply.message_type != "pong" || self.gave_up {
            return Step::nothing();
        }
        self.pongs += 1;
        let ping = Message::command("pinger", "ponger", "ping", &reply.key, serde_json::json!({}));
        Step::default().send(ping).deadline(Deadline::At(now + Duration::seconds(60))).effect("ponged")
    }

    fn on_deadline(&mut self, _now: chrono::DateTime<Utc>) -> Step<&'static str> {
        self.gave_up = true;
        Step::default().deadline(Deadline::Clear).effect("gave up")
    }

    fn is_finished(&self) -> bool {
        self.gave_up
    }
}

async fn exercise<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sagas = Sagas::<PingSaga>::new("pinger");

    // Start: state and a deadline that is already due, in one transaction.
    let s = sagas.clone();
    store
        .transaction::<_, _, SagaError>(async move |tx| {
            let mut instance = s.begin("k1", PingSaga { pongs: 0, gave_up: false });
            let step: Step<&str> = Step::default().deadline(Deadline::At(Utc::now() - Duration::seconds(1)));
            s.save(tx, &mut instance, &step).await
        })
        .await
        .unwrap();

    // Starting the same instance again is refused, and rolls back.
    let s = sagas.clone();
    let again = store
        .transaction::<_, _, SagaError>(async move |tx| {
            let mut instance = s.begin("k1", PingSaga { pongs: 0, gave_up: false });
            s.save(tx, &mut instance, &Step::<&str>::nothing()).await
        })
        .await;
    assert!(matches!(again, Err(SagaError::AlreadyStarted { .. })), "{again:?}");

    // The deadline is a scheduled message: released into the outbox once due.
    assert_eq!(store.release_due(Utc::now(), 100).await.unwrap(), 1);
    let outbox = store.unpublished(100).await.unwrap();
    let first_deadline = outbox.iter().find(|e| e.message.message_type == DEADLINE_TYPE).unwrap().message.clone();
    // Keyed apart from the saga's own messages, so a dead letter of "k1" cannot park it.
    assert_eq!(first_deadline.key, polis_saga::deadline_key("ping", "k1"));
    assert_eq!(sagas.deadline_target(&first_deadline).as_deref(), Some("k1"));

    // A reply first moves the saga on and replaces the deadline: the old one is now stale.
    let s = sagas.clone();
    let pong = Message::command("ponger", "pinger", "pong", "k1", serde_json::json!({}));
    let effects = store
        .transaction::<_, _, SagaError>(async move |tx| s.on_reply(tx, "k1", &pong, Utc::now()).await)
        .await
        .unwrap();
    assert_eq!(effects, ["ponged"]);
    let s = sagas.clone();
    let stale = first_deadline.clone();
    let effects = store
        .transaction::<_, _, SagaError>(async move |tx| s.fire_deadline(tx, &stale, Utc::now()).await)
        .await
        .unwrap();
    assert!(effects.is_empty(), "a stale deadline must be ignored");

    // The current deadline is pending, not yet due; the ping went to the outbox.
    assert!(store.next_due().await.unwrap().is_some());
    assert!(store.unpublished(100).await.unwrap().iter().any(|e| e.message.message_type == "ping"));

    // Fire the current deadline by hand (as if due): the saga gives up, and
    // its state says so when loaded again.
    let s = sagas.clone();
    let effects = store
        .transaction::<_, _, SagaError>(async move |tx| {
            let instance = s.load(tx, "k1").await?.unwrap();
            let (id, _) = instance.deadline.unwrap();
            let mut current = Message::command(
                "pinger",
                "pinger",
                DEADLINE_TYPE,
                "k1",
                serde_json::json!({
                    "saga_type": "ping", "saga_id": "k1"
                }),
            );
            current.id = id;
            s.fire_deadline(tx, &current, Utc::now()).await
        })
        .await
        .unwrap();
    assert_eq!(effects, ["gave up"]);
    let s = sagas.clone();
    let loaded = store.transaction::<_, _, SagaError>(async move |tx| s.load(tx, "k1").await).await.unwrap().unwrap();
    assert_eq!(loaded.state, PingSaga { pongs: 1, gave_up: true });
    assert!(loaded.deadline.is_none());
    // Saved at the start, on the reply and on the deadline; the stale deadline saved nothing.
    assert_eq!(loaded.version, 3);

    // A late reply that changes nothing writes nothing.
    let s = sagas.clone();
    let late = Message::command("ponger", "pinger", "pong", "k1", serde_json::json!({}));
    let version = store
        .transaction::<_, _, SagaError>(async move |tx| {
            let effects = s.on_reply(tx, "k1", &late, Utc::now()).await?;
            assert!(effects.is_empty());
            Ok(s.load(tx, "k1").await?.unwrap().version)
        })
        .await
        .unwrap();
    assert_eq!(version, 3);

    // Two writers from one version: the second save is a conflict.
    let s = sagas.clone();
    let result = store
        .transaction::<_, _, SagaError>(async move |tx| {
            let mut a = s.load(tx, "k1").await?.unwrap();
            let mut b = a.clone();
            s.save(tx, &mut a, &Step::<&str>::nothing()).await?;
            s.save(tx, &mut b, &Step::<&str>::nothing()).await
        })
        .await;
    assert!(matches!(result, Err(SagaError::Conflict { .. })), "{result:?}");

    // Unknown instances: replies and deadlines are ignored.
    let s = sagas.clone();
    let pong = Message::command("ponger", "pinger", "pong", "nobody", serde_json::json!({}));
    let effects = store
        .transaction::<_, _, SagaError>(async move |tx| s.on_reply(tx, "nobody", &pong, Utc::now()).await)
        .await
        .unwrap();
    assert!(effects.is_empty());
}

#[tokio::test]
async fn the_runner_keeps_state_commands_and_deadlines_together_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("saga.db"), SqliteOptions::new("pinger")).await.unwrap();
    exercise(Arc::new(store)).await;
}

#[tokio::test]
async fn the_runner_keeps_state_commands_and_deadlines_together_on_postgres() {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new("pinger")).await.unwrap();
    exercise(Arc::new(store)).await;
}

/// `lock_with`: the load takes the lock in its own statement. It waits for
/// a transaction holding it; if that one changed the instance meanwhile,
/// the load read the state before the change, and saving over it is a
/// conflict, which a retry resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_takes_the_lock_waits_for_it_and_a_stale_read_conflicts_on_postgres() {
    let db = polis_testkit::postgres().await;
    let store = Arc::new(PgEventStore::connect(db.url(), PgOptions::new("pinger")).await.unwrap());
    sqlx::query("CREATE TABLE things (id TEXT PRIMARY KEY, touched BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO things VALUES ('k1', 0)").execute(store.pool()).await.unwrap();
    let sagas = Sagas::<PingSaga>::new("pinger").lock_with("UPDATE things SET touched = touched + 1 WHERE id = $1");
    let s = sagas.clone();
    store
        .transaction::<_, _, SagaError>(async move |tx| {
            let mut instance = s.begin("k1", PingSaga { pongs: 0, gave_up: false });
            s.save(tx, &mut instance, &Step::<&str>::nothing()).await
        })
        .await
        .unwrap();

    // Another transaction holds the lock and moves the instance on.
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("UPDATE things SET touched = touched + 1 WHERE id = 'k1'").execute(&mut *holder).await.unwrap();
    sqlx::query("UPDATE polis_sagas SET version = version + 1 WHERE saga_id = 'k1'")
        .execute(&mut *holder)
        .await
        .unwrap();
    let pong = || Message::command("ponger", "pinger", "pong", "k1", serde_json::json!({}));
    let (s, first) = (sagas.clone(), pong());
    let replying = tokio::spawn({
        let store = store.clone();
        async move {
            store.transaction::<_, _, SagaError>(async move |tx| s.on_reply(tx, "k1", &first, Utc::now()).await).await
        }
    });
    let waited = polis_testkit::wait_for_lock_waiter(store.pool(), std::time::Duration::from_secs(30)).await;
    assert!(waited.is_ok(), "the load did not wait for the lock");
    holder.commit().await.unwrap();
    let result = replying.await.unwrap();
    assert!(matches!(result, Err(SagaError::Conflict { .. })), "{result:?}");

    let (s, again) = (sagas.clone(), pong());
    let effects =
        store.transaction::<_, _, SagaError>(async move |tx| s.on_reply(tx, "k1", &again, Utc::now()).await).await;
    assert_eq!(effects.unwrap(), ["ponged"], "the retry reads the state as it is now");
    let touched: i64 = sqlx::query_scalar("SELECT touched FROM things").fetch_one(store.pool()).await.unwrap();
    assert_eq!(touched, 2, "the holder's and the retry's (the conflict rolled back)");
}
