//! Scheduled messages (durable deadlines): one suite, both backends, plus
//! restarts and concurrent releases.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde_json::json;
use uuid::Uuid;

macro_rules! suite {
    ($($backend:ident => $open:path),*) => {$(
        mod $backend {
            suite!(@cases $open;
                a_message_waits_until_it_is_due,
                equal_due_times_release_in_scheduling_order,
                unscheduled_messages_are_never_released,
                a_reschedule_replaces_the_pending_message,
                a_rolled_back_transaction_schedules_nothing,
                bad_schedules_are_refused,
            );
        }
    )*};
    (@cases $open:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _guard) = $open().await;
            super::cases::$case(store).await;
        }
    )*};
}

suite!(sqlite => crate::support::sqlite, postgres => crate::support::postgres);

fn timeout(key: &str) -> Message {
    Message::command("test", "test", "order.payment-timed-out.v1", key, json!({ "order": key }))
}

/// A fixed reference time, at microsecond precision like the stores.
fn base() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

async fn schedule_one<S: TransactionalStore>(store: &S, message: &Message, due_at: DateTime<Utc>) {
    let message = message.clone();
    store.transaction::<_, _, StoreError>(async move |tx| tx.schedule(&message, due_at).await).await.unwrap();
}

async fn unschedule<S: TransactionalStore>(store: &S, id: Uuid) -> bool {
    store.transaction::<_, _, StoreError>(async move |tx| tx.unschedule(id).await).await.unwrap()
}

async fn outbox_ids<S: TransactionalStore>(store: &S) -> Vec<Uuid> {
    store.unpublished(1000).await.unwrap().into_iter().map(|e| e.message.id).collect()
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn a_message_waits_until_it_is_due<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        let (late, early, middle) = (timeout("o-3"), timeout("o-1"), timeout("o-2"));
        for (m, due) in [(&late, t + secs(3)), (&early, t + secs(1)), (&middle, t + secs(2))] {
            schedule_one(&*store, m, due).await;
        }
        assert!(store.unpublished(10).await.unwrap().is_empty(), "nothing is sent before it is due");
        assert_eq!(store.scheduled_count().await.unwrap(), 3);
        assert_eq!(store.next_due().await.unwrap(), Some(t + secs(1)));
        assert_eq!(store.release_due(t, 10).await.unwrap(), 0, "nothing is due yet");
        assert_eq!(store.release_due(t + secs(1) - chrono::Duration::microseconds(1), 10).await.unwrap(), 0);

        let mut wakeups = store.outbox_wakeups();
        wakeups.borrow_and_update();
        // Everything is due now; the batch limit takes the two earliest.
        assert_eq!(store.release_due(t + secs(10), 2).await.unwrap(), 2);
        tokio::time::timeout(Duration::from_secs(5), wakeups.changed()).await.unwrap().unwrap();
        let pending = store.unpublished(10).await.unwrap();
        assert_eq!(pending.iter().map(|e| &e.message).collect::<Vec<_>>(), [&early, &middle], "earliest due first");
        assert_eq!(store.next_due().await.unwrap(), Some(t + secs(3)));
        assert_eq!(store.release_due(t + secs(10), 10).await.unwrap(), 1);
        assert_eq!(outbox_ids(&*store).await, [early.id, middle.id, late.id]);
        assert_eq!(store.unpublished(10).await.unwrap()[2].message, late, "the message round-trips exactly");
        assert_eq!(store.scheduled_count().await.unwrap(), 0);
        assert_eq!(store.next_due().await.unwrap(), None);
        assert_eq!(store.release_due(t + secs(10), 10).await.unwrap(), 0);
        assert_eq!(store.release_due(t + secs(10), 0).await.unwrap(), 0);
    }

    pub async fn equal_due_times_release_in_scheduling_order<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        // Random-looking ids, so neither id order nor insertion luck can pass for scheduling order.
        let messages: Vec<_> =
            (0..5).map(|i| Message { id: Uuid::new_v4(), ..timeout(&format!("k-{}", i % 2)) }).collect();
        let batch = messages.clone();
        store
            .transaction::<_, _, StoreError>(async move |tx| {
                for m in &batch {
                    tx.schedule(m, t).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.release_due(t, 10).await.unwrap(), 5);
        assert_eq!(outbox_ids(&*store).await, messages.iter().map(|m| m.id).collect::<Vec<_>>());
    }

    pub async fn unscheduled_messages_are_never_released<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        let (cancelled, kept) = (timeout("o-1"), timeout("o-2"));
        schedule_one(&*store, &cancelled, t + secs(1)).await;
        schedule_one(&*store, &kept, t + secs(2)).await;
        assert!(unschedule(&*store, cancelled.id).await, "it was pending");
        assert!(!unschedule(&*store, cancelled.id).await, "already gone");
        assert!(!unschedule(&*store, Uuid::now_v7()).await, "never scheduled");
        assert_eq!(store.next_due().await.unwrap(), Some(t + secs(2)));
        assert_eq!(store.release_due(t + secs(10), 10).await.unwrap(), 1);
        assert_eq!(outbox_ids(&*store).await, [kept.id]);
        assert!(!unschedule(&*store, kept.id).await, "already released: too late to unschedule");
        assert_eq!(outbox_ids(&*store).await, [kept.id], "a late unschedule leaves the outbox alone");

        // Unscheduling in a transaction that rolls back keeps the schedule.
        let again = timeout("o-3");
        schedule_one(&*store, &again, t).await;
        let id = again.id;
        let result = store
            .transaction::<_, (), StoreError>(async move |tx| {
                assert!(tx.unschedule(id).await?);
                Err(StoreError::InvalidRequest("changed my mind".into()))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(store.scheduled_count().await.unwrap(), 1);
    }

    pub async fn a_reschedule_replaces_the_pending_message<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        let reschedule = |old: Uuid, message: Message, due_at: DateTime<Utc>| {
            let store = store.clone();
            async move {
                store.transaction::<_, _, StoreError>(async move |tx| tx.reschedule(old, &message, due_at).await).await
            }
        };
        let (first, second, third) = (timeout("o-1"), timeout("o-1"), timeout("o-1"));
        schedule_one(&*store, &first, t + secs(1)).await;
        assert!(reschedule(first.id, second.clone(), t + secs(2)).await.unwrap(), "the first was pending");
        assert_eq!(store.scheduled_count().await.unwrap(), 1);
        assert_eq!(store.next_due().await.unwrap(), Some(t + secs(2)));
        // An old id no longer pending still schedules the new message.
        assert!(!reschedule(first.id, third.clone(), t + secs(3)).await.unwrap(), "the first is gone");
        assert_eq!(store.scheduled_count().await.unwrap(), 2);
        // Rescheduling an id as itself moves its due time.
        assert!(reschedule(third.id, third.clone(), t + secs(4)).await.unwrap());
        assert_eq!(store.release_due(t + secs(3), 10).await.unwrap(), 1);
        assert_eq!(outbox_ids(&*store).await, [second.id]);
        // A refused new message leaves the old one scheduled: the transaction rolls back.
        let refused = reschedule(third.id, second.clone(), t + secs(5)).await;
        assert!(matches!(refused, Err(StoreError::InvalidRequest(_))), "{refused:?}");
        assert_eq!(store.scheduled_count().await.unwrap(), 1);
        assert_eq!(store.release_due(t + secs(10), 10).await.unwrap(), 1);
        assert_eq!(outbox_ids(&*store).await, [second.id, third.id]);
    }

    pub async fn a_rolled_back_transaction_schedules_nothing<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        let message = timeout("o-1");
        let scheduled = message.clone();
        let result = store
            .transaction::<_, (), StoreError>(async move |tx| {
                tx.schedule(&scheduled, t).await?;
                tx.send(&timeout("o-2")).await?;
                Err(StoreError::InvalidRequest("the handler failed".into()))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(store.scheduled_count().await.unwrap(), 0);
        assert_eq!(store.next_due().await.unwrap(), None);
        assert_eq!(store.release_due(t + secs(10), 10).await.unwrap(), 0);
        assert!(store.unpublished(10).await.unwrap().is_empty());
        // The id is free again: scheduling it for real works.
        schedule_one(&*store, &message, t).await;
        assert_eq!(store.scheduled_count().await.unwrap(), 1);
    }

    pub async fn bad_schedules_are_refused<S: TransactionalStore>(store: Arc<S>) {
        let t = base();
        let refused = |message: Message, due_at: DateTime<Utc>| {
            let store = store.clone();
            async move {
                let result =
                    store.transaction::<_, (), StoreError>(async move |tx| tx.schedule(&message, due_at).await).await;
                match result {
                    Err(StoreError::InvalidRequest(reason)) => reason,
                    other => panic!("expected a refusal, got {other:?}"),
                }
            }
        };
        let mut bad_type = timeout("o-1");
        bad_type.message_type = "has space".into();
        assert!(refused(bad_type, t).await.contains("invalid message type"));
        let mut nul = timeout("o-1");
        nul.data = json!({ "note": "a\0b" });
        assert!(refused(nul, t).await.contains("NUL"));
        let far = DateTime::from_timestamp(300_000_000_000, 0).unwrap();
        assert!(refused(timeout("o-1"), far).await.contains("outside the years"));

        let twice = timeout("o-2");
        schedule_one(&*store, &twice, t).await;
        assert!(refused(twice.clone(), t + secs(1)).await.contains("already scheduled"));
        let sent = timeout("o-3");
        let to_send = sent.clone();
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&to_send).await).await.unwrap();
        assert!(refused(sent.clone(), t).await.contains("already in the outbox"));
        assert_eq!(store.scheduled_count().await.unwrap(), 1, "only the first schedule stuck");

        // A send that reuses a scheduled id wins; the release then adds no second entry.
        let both = timeout("o-4");
        schedule_one(&*store, &both, t).await;
        let to_send = both.clone();
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&to_send).await).await.unwrap();
        assert_eq!(store.release_due(t, 10).await.unwrap(), 2);
        assert_eq!(outbox_ids(&*store).await, [sent.id, both.id, twice.id]);
    }
}

#[tokio::test]
async fn sqlite_schedule_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let t = base();
    let message = timeout("o-1");
    {
        let store = SqliteEventStore::open(&path, SqliteOptions::new("test")).await.unwrap();
        schedule_one(&store, &message, t + secs(1)).await;
    }
    let store = SqliteEventStore::open(&path, SqliteOptions::new("test")).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t + secs(1)));
    assert_eq!(store.release_due(t + secs(1), 10).await.unwrap(), 1);
    assert_eq!(store.unpublished(10).await.unwrap()[0].message, message);
}

#[tokio::test]
async fn postgres_schedule_survives_a_new_store() {
    let db = polis_testkit::postgres().await;
    let t = base();
    let message = timeout("o-1");
    {
        let store = PgEventStore::connect(db.url(), PgOptions::new("test")).await.unwrap();
        schedule_one(&store, &message, t + secs(1)).await;
    }
    let store = PgEventStore::connect(db.url(), PgOptions::new("test")).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t + secs(1)));
    assert_eq!(store.release_due(t + secs(1), 10).await.unwrap(), 1);
    assert_eq!(store.unpublished(10).await.unwrap()[0].message, message);
}

/// Four "processes" (stores with their own pools) release one schedule at
/// once, in small batches: every message comes out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_releases_take_each_message_once() {
    let db = polis_testkit::postgres().await;
    let first = PgEventStore::connect(db.url(), PgOptions::new("test")).await.unwrap();
    let t = base();
    let messages: Vec<_> = (0..300).map(|i| timeout(&format!("k-{}", i % 7))).collect();
    let batch = messages.clone();
    first
        .transaction::<_, _, StoreError>(async move |tx| {
            for (i, m) in batch.iter().enumerate() {
                tx.schedule(m, t - chrono::Duration::milliseconds(300 - i as i64)).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let mut releasers = Vec::new();
    for _ in 0..4 {
        let store = PgEventStore::connect(db.url(), PgOptions::new("test")).await.unwrap();
        releasers.push(tokio::spawn(async move {
            let mut released = 0;
            while store.scheduled_count().await.unwrap() > 0 {
                released += store.release_due(t, 7).await.unwrap();
            }
            released
        }));
    }
    let mut total = 0;
    for r in releasers {
        total += r.await.unwrap();
    }
    assert_eq!(total, messages.len(), "the releases together moved each message once");
    let mut ids = outbox_ids(&first).await;
    assert_eq!(ids.len(), messages.len());
    ids.sort();
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(ids, expected);
    // Per key, the outbox keeps due order (each releaser took its keys' locks).
    let entries = first.unpublished(1000).await.unwrap();
    for k in 0..7 {
        let key = format!("k-{k}");
        let by_position: Vec<_> = entries.iter().filter(|e| e.message.key == key).map(|e| e.message.id).collect();
        let by_due: Vec<_> = messages.iter().filter(|m| m.key == key).map(|m| m.id).collect();
        assert_eq!(by_position, by_due, "key {key}");
    }
}
