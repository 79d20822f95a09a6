//! Leases (polis-core's `lease` module): one suite, both backends. Times
//! are passed in, so expiry is tested without waiting for it.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::lease::{Fence, LeaseKeeper, LeaseOptions};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use serde_json::json;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(10);

macro_rules! suite {
    ($($backend:ident => $open:path),*) => {$(
        mod $backend {
            suite!(@cases $open;
                one_owner_at_a_time,
                an_expired_lease_changes_hands_and_fences_its_old_owner,
                a_released_lease_is_free_at_once,
                a_fenced_transaction_of_a_lost_lease_commits_nothing,
                contenders_get_one_lease,
                a_keeper_holds_renews_and_hands_over,
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

async fn acquire<S: TransactionalStore>(store: &S, name: &str, owner: Uuid, now: DateTime<Utc>) -> Option<u64> {
    let name = name.to_owned();
    store.transaction::<_, _, StoreError>(async move |tx| tx.acquire_lease(&name, owner, now, TTL).await).await.unwrap()
}

async fn hold<S: TransactionalStore>(store: &S, fence: &Fence, now: DateTime<Utc>) -> bool {
    let fence = fence.clone();
    store.transaction::<_, _, StoreError>(async move |tx| tx.hold_lease(&fence, now, TTL).await).await.unwrap()
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn one_owner_at_a_time<S: TransactionalStore>(store: Arc<S>) {
        let (a, b, t0) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        assert_eq!(acquire(&*store, "relay", a, t0).await, Some(1), "a free lease is taken");
        assert_eq!(acquire(&*store, "relay", b, t0 + secs(5)).await, None, "held until it expires");
        assert_eq!(acquire(&*store, "relay", a, t0 + secs(5)).await, Some(2), "its owner takes it again: a new tenure");
        // Renewed at t0 + 5: still held at t0 + 12.
        assert_eq!(acquire(&*store, "relay", b, t0 + secs(12)).await, None);
        assert_eq!(acquire(&*store, "scheduler", b, t0).await, Some(1), "leases are independent by name");
    }

    pub async fn an_expired_lease_changes_hands_and_fences_its_old_owner<S: TransactionalStore>(store: Arc<S>) {
        let (a, b, t0) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        let first = Fence { name: "relay".into(), owner: a, token: acquire(&*store, "relay", a, t0).await.unwrap() };
        assert!(hold(&*store, &first, t0 + secs(4)).await, "held: renewed until t0 + 14");
        assert_eq!(acquire(&*store, "relay", b, t0 + secs(13)).await, None);
        let taken = acquire(&*store, "relay", b, t0 + secs(15)).await;
        assert_eq!(taken, Some(first.token + 1), "expired: the next owner, the next token");
        assert!(!hold(&*store, &first, t0 + secs(16)).await, "the old tenure is over");
        assert_eq!(acquire(&*store, "relay", a, t0 + secs(16)).await, None, "and cannot take it back while held");
        let second = Fence { name: "relay".into(), owner: b, token: taken.unwrap() };
        assert!(hold(&*store, &second, t0 + secs(16)).await);
        // Even the same owner's old token is refused once the lease changed hands twice.
        let back = acquire(&*store, "relay", a, t0 + secs(40)).await;
        assert_eq!(back, Some(first.token + 2));
        assert_eq!(acquire(&*store, "relay", a, t0 + secs(40)).await, Some(first.token + 3), "again: a new tenure");
        let back = first.token + 3;
        let previous = Fence { token: first.token + 2, ..first.clone() };
        assert!(!hold(&*store, &previous, t0 + secs(41)).await, "the same owner's previous tenure is over too");
        assert!(!hold(&*store, &first, t0 + secs(41)).await, "a token names one tenure");
        assert!(hold(&*store, &Fence { token: back, ..first }, t0 + secs(41)).await);
    }

    pub async fn a_released_lease_is_free_at_once<S: TransactionalStore>(store: Arc<S>) {
        let (a, b, t0) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        acquire(&*store, "relay", a, t0).await.unwrap();
        // Someone else's release changes nothing.
        store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease("relay", b).await).await.unwrap();
        assert_eq!(acquire(&*store, "relay", b, t0 + secs(1)).await, None);
        store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease("relay", a).await).await.unwrap();
        assert_eq!(acquire(&*store, "relay", b, t0 + secs(1)).await, Some(2));
    }

    /// What a transaction does on a lost lease's behalf rolls back with it.
    pub async fn a_fenced_transaction_of_a_lost_lease_commits_nothing<S: TransactionalStore>(store: Arc<S>) {
        let (a, b, t0) = (Uuid::now_v7(), Uuid::now_v7(), Utc::now());
        let stale = Fence { name: "relay".into(), owner: a, token: acquire(&*store, "relay", a, t0).await.unwrap() };
        acquire(&*store, "relay", b, t0 + secs(11)).await.unwrap();
        let message = Message::event("leases", "thing.happened.v1", "k", json!({}));
        let result = store
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.send(&message).await?;
                if !tx.hold_lease(&stale, t0 + secs(12), TTL).await? {
                    return Err(StoreError::InvalidRequest("the lease was lost".into()));
                }
                Ok(())
            })
            .await;
        assert!(result.is_err());
        assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 0, "nothing of it committed");
    }

    pub async fn contenders_get_one_lease<S: TransactionalStore>(store: Arc<S>) {
        let t0 = Utc::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { acquire(&*store, "scheduler", Uuid::now_v7(), t0).await })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap().is_some());
        }
        assert_eq!(winners, 1);
    }

    pub async fn a_keeper_holds_renews_and_hands_over<S: TransactionalStore>(store: Arc<S>) {
        let ttl = Duration::from_secs(3);
        let mut a = LeaseKeeper::new(store.clone(), "relay", LeaseOptions::new(ttl));
        let mut b = LeaseKeeper::new(store.clone(), "relay", LeaseOptions::new(ttl));
        let first = a.keep().await.unwrap().expect("a free lease is taken");
        assert!(a.valid_until().unwrap() > tokio::time::Instant::now());
        assert_eq!(b.keep().await.unwrap(), None);
        assert_eq!(b.valid_until(), None);
        // Past a third of the ttl, keeping renews (same tenure, same token).
        tokio::time::sleep(ttl / 2).await;
        assert_eq!(a.keep().await.unwrap(), Some(first.clone()));
        tokio::time::sleep(ttl / 2).await;
        assert_eq!(b.keep().await.unwrap(), None, "renewed in time: still a's");
        a.release().await.unwrap();
        assert_eq!(a.fence(), None);
        let second = b.keep().await.unwrap().expect("released: free at once");
        assert_eq!(second.token, first.token + 1);
        assert_eq!(a.keep().await.unwrap(), None, "b holds it now");
    }
}
