//! The transactional outbox, inbox and dead letters: one suite, both backends.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::outbox::{DeadLetter, DeadLetterStatus, Purged, Transaction, TransactionalStore};
use polis_core::{EventStore, ExpectedVersion, Message, StoreError};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgTx, SqliteEventStore, SqliteTx};
use serde_json::json;
use support::event;
use uuid::Uuid;

/// A service's own table, to show its rows commit with the outbox.
#[async_trait]
trait Orders: TransactionalStore + EventStore {
    async fn create_table(&self);
    async fn insert_in(tx: &mut Self::Tx, id: &str) -> Result<(), StoreError>;
    async fn count(&self) -> i64;
}

#[async_trait]
impl Orders for SqliteEventStore {
    async fn create_table(&self) {
        self.transaction::<_, _, StoreError>(async move |tx: &mut SqliteTx| {
            tx.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)", &[]).await.unwrap();
            tx.execute("CREATE TABLE commit_clock (n BIGINT NOT NULL)", &[]).await.unwrap();
            tx.execute("INSERT INTO commit_clock (n) VALUES (0)", &[]).await.unwrap();
            Ok(())
        })
        .await
        .unwrap();
    }
    async fn insert_in(tx: &mut SqliteTx, id: &str) -> Result<(), StoreError> {
        tx.execute("INSERT INTO orders (id) VALUES ($1)", args![id]).await.unwrap();
        Ok(())
    }
    async fn count(&self) -> i64 {
        self.query("SELECT count(*) AS n FROM orders", &[]).await.unwrap()[0].int("n").unwrap()
    }
}

#[async_trait]
impl Orders for PgEventStore {
    async fn create_table(&self) {
        for statement in [
            "CREATE TABLE orders (id TEXT PRIMARY KEY)",
            "CREATE TABLE commit_clock (n BIGINT NOT NULL)",
            "INSERT INTO commit_clock (n) VALUES (0)",
        ] {
            sqlx::query(statement).execute(self.pool()).await.unwrap();
        }
    }
    async fn insert_in(tx: &mut PgTx, id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(id).execute(tx.conn()).await.unwrap();
        Ok(())
    }
    async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(self.pool()).await.unwrap()
    }
}

macro_rules! suite {
    ($($backend:ident => $open:path),*) => {$(
        mod $backend {
            suite!(@cases $open;
                row_events_and_messages_commit_together,
                a_failed_transaction_leaves_nothing,
                relay_view_of_the_outbox,
                inbox_recognizes_duplicates,
                a_batch_starts_in_one_call,
                a_repeated_message_id_fails_the_transaction,
                dead_letters_block_their_key_until_removed,
                dead_letters_are_read_a_page_or_one_at_a_time,
                purge_keeps_tables_bounded,
                per_key_order_is_commit_order,
            );
        }
    )*};
    (@cases $open:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _guard) = $open().await;
            super::Orders::create_table(&*store).await;
            super::cases::$case(store).await;
        }
    )*};
}

suite!(sqlite => crate::support::sqlite, postgres => crate::support::postgres);

fn order_created(id: &str) -> Message {
    Message::event("test", "order.created.v1", id, json!({ "id": id }))
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn row_events_and_messages_commit_together<S: Orders>(store: Arc<S>) {
        let mut wakeups = store.outbox_wakeups();
        wakeups.borrow_and_update();
        let message = order_created("o-1");
        let sent = message.clone();
        let appended = store
            .transaction::<_, _, StoreError>(async move |tx| {
                S::insert_in(tx, "o-1").await?;
                let r = tx.append("order-o-1", ExpectedVersion::NoStream, &[event("order.created", 1)]).await?;
                tx.send(&sent).await?;
                Ok(r)
            })
            .await
            .unwrap();
        assert_eq!(appended.stream_version, 1);
        assert_eq!(store.count().await, 1);
        assert_eq!(store.stream_info("order-o-1").await.unwrap().unwrap().version, 1);
        let pending = store.unpublished(10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, message, "the message round-trips exactly");
        tokio::time::timeout(Duration::from_secs(5), wakeups.changed()).await.unwrap().unwrap();
    }

    pub async fn a_failed_transaction_leaves_nothing<S: Orders>(store: Arc<S>) {
        store.append("order-x", ExpectedVersion::NoStream, vec![event("t", 0)]).await.unwrap();
        let result = store
            .transaction::<_, (), StoreError>(async move |tx| {
                S::insert_in(tx, "o-2").await?;
                tx.send(&order_created("o-2")).await?;
                // A stale expected version: the whole transaction must roll back.
                tx.append("order-x", ExpectedVersion::NoStream, &[event("t", 1)]).await?;
                Ok(())
            })
            .await;
        assert!(result.unwrap_err().is_conflict());
        assert_eq!(store.count().await, 0, "the row rolled back");
        assert!(store.unpublished(10).await.unwrap().is_empty(), "the message rolled back");
        assert_eq!(store.stream_info("order-x").await.unwrap().unwrap().version, 1);

        // A domain error of the caller's own type rolls back too.
        #[derive(Debug)]
        enum AppError {
            Store(StoreError),
            Rejected,
        }
        impl From<StoreError> for AppError {
            fn from(e: StoreError) -> Self {
                Self::Store(e)
            }
        }
        let result = store
            .transaction::<_, (), AppError>(async move |tx| {
                tx.send(&order_created("o-3")).await?;
                Err(AppError::Rejected)
            })
            .await;
        assert!(matches!(result, Err(AppError::Rejected)));
        assert!(store.unpublished(10).await.unwrap().is_empty());
        // Invalid messages are refused with a reason.
        let mut bad = order_created("o-4");
        bad.message_type = "has space".into();
        let result = store.transaction::<_, (), AppError>(async move |tx| Ok(tx.send(&bad).await?)).await;
        assert!(matches!(result, Err(AppError::Store(StoreError::InvalidRequest(_)))), "{result:?}");
    }

    pub async fn relay_view_of_the_outbox<S: Orders>(store: Arc<S>) {
        for i in 0..5 {
            let m = order_created(&format!("o-{i}"));
            store.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
        }
        let backlog = store.outbox_backlog().await.unwrap();
        assert_eq!(backlog.unpublished, 5);
        assert!(backlog.oldest.is_some());
        let first = store.unpublished(3).await.unwrap();
        assert_eq!(first.iter().map(|e| e.message.key.as_str()).collect::<Vec<_>>(), ["o-0", "o-1", "o-2"]);
        store.mark_published(&first.iter().map(|e| e.position).collect::<Vec<_>>()).await.unwrap();
        let rest = store.unpublished(10).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.message.key.as_str()).collect::<Vec<_>>(), ["o-3", "o-4"]);
        assert!(rest[0].position > first[2].position);
        assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 2);
    }

    pub async fn inbox_recognizes_duplicates<S: Orders>(store: Arc<S>) {
        let id = Uuid::now_v7();
        let first =
            store.transaction::<_, _, StoreError>(async move |tx| tx.record_processed("c", id).await).await.unwrap();
        let again =
            store.transaction::<_, _, StoreError>(async move |tx| tx.record_processed("c", id).await).await.unwrap();
        let other_consumer =
            store.transaction::<_, _, StoreError>(async move |tx| tx.record_processed("d", id).await).await.unwrap();
        assert_eq!((first, again, other_consumer), (true, false, true));

        // Concurrent duplicates: exactly one transaction gets to apply the effects.
        let applied = Arc::new(AtomicU64::new(0));
        let id = Uuid::now_v7();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, applied) = (store.clone(), applied.clone());
                tokio::spawn(async move {
                    store
                        .transaction::<_, _, StoreError>(async move |tx| {
                            if tx.record_processed("c", id).await? {
                                S::insert_in(tx, &id.to_string()).await?;
                                applied.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(applied.load(Ordering::SeqCst), 1);
        assert_eq!(store.count().await, 1);
    }

    /// `begin_handling_many` answers like `begin_handling` would, one by
    /// one, in the order asked: new or duplicate, blocked or not.
    pub async fn a_batch_starts_in_one_call<S: Orders>(store: Arc<S>) {
        let (seen, fresh, blocked, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            consumer: "c".into(),
            status: DeadLetterStatus::Dead,
            message: None,
            message_id: None,
            key: Some("stuck".into()),
            raw: Some("{".into()),
            error: "malformed".into(),
            attempts: 1,
            failed_at: Utc::now(),
        };
        store
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.record_processed("c", seen).await?;
                tx.dead_letter(&letter).await
            })
            .await
            .unwrap();
        let asked = vec![
            (fresh, "a".to_owned()),
            (seen, "b".to_owned()),
            (blocked, "stuck".to_owned()),
            (other, "stuck".to_owned()),
        ];
        let handlings = store
            .transaction::<_, _, StoreError>(async move |tx| tx.begin_handling_many("c", &asked).await)
            .await
            .unwrap();
        let answers: Vec<_> = handlings.iter().map(|h| (h.first, h.blocked)).collect();
        assert_eq!(answers, [(true, false), (false, false), (true, true), (true, true)]);
        let again = store
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.begin_handling_many("c", &[(fresh, "a".to_owned()), (other, "d".to_owned())]).await
            })
            .await
            .unwrap();
        assert_eq!(again.iter().map(|h| h.first).collect::<Vec<_>>(), [false, false], "recorded by the first call");
        let none = store.transaction::<_, _, StoreError>(async move |tx| tx.begin_handling_many("c", &[]).await);
        assert!(none.await.unwrap().is_empty());
    }

    /// A message id sent twice, or sent again once in the outbox, fails the
    /// transaction (however late the backend writes it): none of its
    /// messages or rows commit.
    pub async fn a_repeated_message_id_fails_the_transaction<S: Orders>(store: Arc<S>) {
        let first = order_created("o-1");
        let sent = first.clone();
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&sent).await).await.unwrap();
        let (again, other) = (first.clone(), order_created("o-2"));
        let result = store
            .transaction::<_, _, StoreError>(async move |tx| {
                S::insert_in(tx, "o-2").await?;
                tx.send(&other).await?;
                tx.send(&again).await
            })
            .await;
        assert!(
            matches!(&result, Err(StoreError::InvalidRequest(r)) if r.contains("already in the outbox")),
            "{result:?}"
        );
        let twice = order_created("o-3");
        let result = store
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.send(&twice).await?;
                tx.send(&twice).await
            })
            .await;
        assert!(
            matches!(&result, Err(StoreError::InvalidRequest(r)) if r.contains("already in the outbox")),
            "{result:?}"
        );
        assert_eq!(store.count().await, 0, "the row rolled back with the messages");
        assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 1, "only the first send");
    }

    pub async fn dead_letters_block_their_key_until_removed<S: Orders>(store: Arc<S>) {
        let message = order_created("o-9");
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            consumer: "c".into(),
            status: DeadLetterStatus::Dead,
            message: Some(message.clone()),
            message_id: Some(message.id),
            key: Some("o-9".into()),
            raw: None,
            error: "handler failed: boom".into(),
            attempts: 5,
            failed_at: Utc::now(),
        };
        let stored = letter.clone();
        store.transaction::<_, _, StoreError>(async move |tx| tx.dead_letter(&stored).await).await.unwrap();
        let listed = store.dead_letters(Some("c")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].message, Some(message));
        assert_eq!((listed[0].attempts, listed[0].error.as_str()), (5, "handler failed: boom"));
        assert!(store.dead_letters(Some("other")).await.unwrap().is_empty());
        assert_eq!(store.dead_letters(None).await.unwrap().len(), 1);
        let id = letter.id;
        let (blocked, other_key, removed, unblocked) = store
            .transaction::<_, _, StoreError>(async move |tx| {
                let blocked = tx.key_blocked("c", "o-9").await?;
                let other_key = tx.key_blocked("c", "o-8").await?;
                let removed = tx.remove_dead_letter(id).await?;
                Ok((blocked, other_key, removed, !tx.key_blocked("c", "o-9").await?))
            })
            .await
            .unwrap();
        assert_eq!((blocked, other_key, removed, unblocked), (true, false, true, true));
    }

    pub async fn dead_letters_are_read_a_page_or_one_at_a_time<S: Orders>(store: Arc<S>) {
        // Five letters, two consumers; a malformed one (no message) among them.
        let letters: Vec<DeadLetter> = (0..5)
            .map(|i| {
                let message = order_created(&format!("o-{i}"));
                DeadLetter {
                    id: Uuid::now_v7(),
                    consumer: if i == 3 { "other".into() } else { "c".into() },
                    status: if i == 1 { DeadLetterStatus::Parked } else { DeadLetterStatus::Dead },
                    message: (i != 4).then(|| message.clone()),
                    message_id: (i != 4).then_some(message.id),
                    key: (i != 4).then(|| message.key.clone()),
                    raw: (i == 4).then(|| "{not json".to_owned()),
                    error: format!("failure {i}"),
                    attempts: i,
                    failed_at: DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap(),
                }
            })
            .collect();
        let stored = letters.clone();
        store
            .transaction::<_, _, StoreError>(async move |tx| {
                for letter in &stored {
                    tx.dead_letter(letter).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let mut by_id = letters.clone();
        by_id.sort_by_key(|l| l.id);
        // Every consumer's, in id order, a page at a time.
        let first = store.dead_letters_page(None, None, 2).await.unwrap();
        assert_eq!(first, by_id[..2]);
        let rest = store.dead_letters_page(None, Some(first[1].id), 10).await.unwrap();
        assert_eq!(rest, by_id[2..]);
        assert!(store.dead_letters_page(None, Some(by_id[4].id), 10).await.unwrap().is_empty());
        // One consumer's.
        let of_c = store.dead_letters_page(Some("c"), None, 10).await.unwrap();
        let expected: Vec<_> = by_id.iter().filter(|l| l.consumer == "c").cloned().collect();
        assert_eq!(of_c, expected);
        // One by id, as stored; an unknown id is none.
        for letter in &letters {
            assert_eq!(store.find_dead_letter(letter.id).await.unwrap().as_ref(), Some(letter));
        }
        assert_eq!(store.find_dead_letter(Uuid::now_v7()).await.unwrap(), None);
    }

    pub async fn purge_keeps_tables_bounded<S: Orders>(store: Arc<S>)
    where
        S::Tx: Sql,
    {
        store
            .transaction::<_, _, StoreError>(async move |tx| {
                let now = Utc::now().timestamp_micros();
                for (id, finished) in [("done", true), ("waiting", false)] {
                    tx.execute(
                        "INSERT INTO polis_sagas (saga_type, saga_id, state, finished, version, created_at_us, \
                         updated_at_us, state_name) VALUES ('t', $1, '{}', $2, 1, $3, $3, 'x')",
                        args![id, finished, now],
                    )
                    .await?;
                }
                Ok(())
            })
            .await
            .unwrap();
        for i in 0..3 {
            let m = order_created(&format!("p-{i}"));
            store
                .transaction::<_, _, StoreError>(async move |tx| {
                    tx.send(&m).await?;
                    tx.record_processed("c", Uuid::now_v7()).await
                })
                .await
                .unwrap();
        }
        let pending = store.unpublished(10).await.unwrap();
        store.mark_published(&[pending[0].position, pending[1].position]).await.unwrap();
        let none = store.purge(Utc::now() - chrono::Duration::hours(1)).await.unwrap();
        assert_eq!(none, Purged::default(), "nothing is old enough yet");
        let purged = store.purge(Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        assert_eq!(
            purged,
            Purged { outbox: 2, inbox: 3, sagas: 1 },
            "published rows, inbox records and finished sagas go"
        );
        assert_eq!(store.unpublished(10).await.unwrap().len(), 1, "unpublished messages are never purged");
        let left = store
            .transaction::<_, _, StoreError>(async |tx| {
                tx.fetch_one("SELECT saga_id FROM polis_sagas", &[]).await?.text("saga_id")
            })
            .await
            .unwrap();
        assert_eq!(left, "waiting", "a saga in flight is never purged, however old");
    }

    pub async fn per_key_order_is_commit_order<S: Orders>(store: Arc<S>)
    where
        S::Tx: Sql,
    {
        // Writers race on three keys; each transaction holds on a while after
        // writing its message. Per key, outbox position order must equal the
        // order the transactions commit in. Each one's last statement takes
        // the next number of a one-row clock, whose row stays locked until
        // that transaction ends: the numbers are handed out in commit order.
        // (Without the key lock on PostgreSQL, positions would follow the
        // sends and the numbers the varied holds, and they would differ.)
        let noted = Arc::new(std::sync::Mutex::new(Vec::<(i64, Uuid)>::new()));
        let tasks: Vec<_> = (0..24u64)
            .map(|i| {
                let (store, noted) = (store.clone(), noted.clone());
                tokio::spawn(async move {
                    let m = order_created(&format!("k-{}", i % 3));
                    let id = m.id;
                    let committed_as = store
                        .transaction::<_, _, StoreError>(async move |tx| {
                            tx.send(&m).await?;
                            tokio::time::sleep(Duration::from_millis(3 + (i * 7) % 11)).await;
                            tx.fetch_one("UPDATE commit_clock SET n = n + 1 RETURNING n", &[]).await?.int("n")
                        })
                        .await
                        .unwrap();
                    noted.lock().unwrap().push((committed_as, id));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut noted = noted.lock().unwrap().clone();
        noted.sort_unstable();
        assert_eq!(noted.iter().map(|n| n.0).collect::<Vec<_>>(), (1..=24).collect::<Vec<_>>());
        let outbox = store.unpublished(100).await.unwrap();
        for key in ["k-0", "k-1", "k-2"] {
            let by_position: Vec<_> = outbox.iter().filter(|e| e.message.key == key).map(|e| e.message.id).collect();
            let by_commit: Vec<_> = noted.iter().map(|(_, id)| *id).filter(|id| by_position.contains(id)).collect();
            assert_eq!(by_position.len(), 8);
            assert_eq!(by_position, by_commit, "key {key}: outbox order = commit order");
        }
    }
}

/// On SQLite a transaction runs on the store's single writer: calling the
/// store from inside it would wait for itself. It fails instead of hanging.
#[tokio::test]
async fn sqlite_refuses_a_store_call_from_inside_its_own_transaction() {
    let (store, _guard) = support::sqlite().await;
    let inner = store.clone();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        store.transaction::<_, _, StoreError>(async move |_tx| {
            inner.append("s", ExpectedVersion::Any, vec![event("t", 1)]).await
        }),
    )
    .await
    .expect("no deadlock");
    assert!(matches!(result, Err(StoreError::InvalidRequest(_))), "{result:?}");
    assert!(store.stream_info("s").await.unwrap().is_none());
    // The writer is still healthy.
    store.append("s", ExpectedVersion::NoStream, vec![event("t", 2)]).await.unwrap();
}
