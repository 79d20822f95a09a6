//! The relay and the scheduler under their leases (polis-core's `lease`
//! module), on both stores: one instance publishes and fires at a time,
//! another takes over when it stops or dies, and a scheduler whose lease was
//! taken from it fires nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use polis_bus::{Relay, RelayOptions, Scheduler, SchedulerOptions};
use polis_core::bus::Bus;
use polis_core::lease::LeaseOptions;
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Counting, unique};
use tokio::time::Instant;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(1);

macro_rules! suite {
    ($($backend:ident => $open:path),*) => {$(
        mod $backend {
            suite!(@cases $open;
                a_standby_relay_publishes_nothing_while_another_holds_the_lease,
                relays_hand_over_when_the_owner_stops_or_dies,
                a_scheduler_whose_lease_was_taken_fires_nothing,
            );
        }
    )*};
    (@cases $open:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _s) = $open(&crate::unique("leased")).await;
            let (bus, _b) = crate::support::in_process_bus().await;
            super::cases::$case(store, bus).await;
        }
    )*};
}

suite!(sqlite => crate::support::sqlite, postgres => crate::support::postgres);

fn leased_relay() -> RelayOptions {
    RelayOptions { poll_interval: Duration::from_millis(50), lease: Some(LeaseOptions::new(TTL)), ..Default::default() }
}

async fn send_some<S: TransactionalStore>(store: &S, n: usize) {
    for i in 0..n {
        let m = Message::event(store.service(), "thing.happened.v1", &format!("k{}", i % 3), json!({ "i": i }));
        store.transaction::<_, _, StoreError>(async move |tx| tx.send(&m).await).await.unwrap();
    }
}

async fn unpublished<S: TransactionalStore>(store: &S) -> u64 {
    store.outbox_backlog().await.unwrap().unpublished
}

/// Takes `name` for an owner that is not a relay or scheduler, until `ttl` from now.
async fn hold_elsewhere<S: TransactionalStore>(store: &S, name: &'static str, owner: Uuid, ttl: Duration) {
    let taken = store
        .transaction::<_, _, StoreError>(async move |tx| tx.acquire_lease(name, owner, Utc::now(), ttl).await)
        .await
        .unwrap();
    assert!(taken.is_some(), "{name} was free");
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn a_standby_relay_publishes_nothing_while_another_holds_the_lease<S: TransactionalStore>(
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let held_until = Instant::now() + Duration::from_secs(2);
        hold_elsewhere(&*store, "relay", Uuid::now_v7(), Duration::from_secs(2)).await;
        let _relay = Relay::new(store.clone(), bus, leased_relay()).spawn();
        send_some(&*store, 5).await;
        // Just before the other owner's lease runs out, nothing has gone.
        tokio::time::sleep_until(held_until - Duration::from_millis(300)).await;
        assert_eq!(unpublished(&*store).await, 5, "published while another instance held the lease");
        // It was never renewed: the standby takes over.
        wait_for(WAIT, || async { unpublished(&*store).await == 0 }).await.unwrap();
    }

    pub async fn relays_hand_over_when_the_owner_stops_or_dies<S: TransactionalStore>(
        store: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let buses = [Counting::new(bus.clone()), Counting::new(bus.clone()), Counting::new(bus)];
        let mut relays: Vec<_> =
            buses[..2].iter().map(|bus| Some(Relay::new(store.clone(), bus.clone(), leased_relay()).spawn())).collect();
        send_some(&*store, 10).await;
        wait_for(WAIT, || async { unpublished(&*store).await == 0 }).await.unwrap();
        let counts = [buses[0].published(), buses[1].published()];
        assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "one relay published: {counts:?}");
        let owner = usize::from(counts[1] > 0);

        // A clean stop lets the lease go: the other takes over at once.
        relays[owner].take().unwrap().shutdown().await;
        let started = Instant::now();
        send_some(&*store, 10).await;
        wait_for(WAIT, || async { unpublished(&*store).await == 0 }).await.unwrap();
        assert!(started.elapsed() < TTL, "handed over without waiting for the lease to expire");
        let next = 1 - owner;
        assert_eq!(buses[next].published(), 10, "the other relay took over");

        // A death does not: its lease runs out, then a third relay (or any
        // standby) takes over.
        let _third = Relay::new(store.clone(), buses[2].clone(), leased_relay()).spawn();
        drop(relays[next].take());
        send_some(&*store, 10).await;
        wait_for(WAIT, || async { unpublished(&*store).await == 0 }).await.unwrap();
        assert_eq!(buses[2].published(), 10, "the standby took over once the dead owner's lease expired");
    }

    pub async fn a_scheduler_whose_lease_was_taken_fires_nothing<S: TransactionalStore>(
        store: Arc<S>,
        _bus: Arc<dyn Bus>,
    ) {
        let lease = LeaseOptions::new(Duration::from_secs(30));
        let options =
            SchedulerOptions { poll_interval: Duration::from_millis(50), lease: Some(lease), ..Default::default() };
        let _scheduler = Scheduler::new(store.clone(), options).spawn();
        // It holds the lease once it has fired something.
        let first = Message::event(store.service(), "deadline.passed.v1", "k", json!({}));
        store.transaction::<_, _, StoreError>(async move |tx| tx.schedule(&first, Utc::now()).await).await.unwrap();
        wait_for(WAIT, || async { store.scheduled_count().await.unwrap() == 0 }).await.unwrap();

        // Its lease is taken from it, as after a pause past the expiry.
        let other = Uuid::now_v7();
        store
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.release_lease("scheduler", lease.owner).await?;
                tx.acquire_lease("scheduler", other, Utc::now(), Duration::from_secs(30)).await
            })
            .await
            .unwrap()
            .unwrap();
        let second = Message::event(store.service(), "deadline.passed.v1", "k", json!({}));
        store.transaction::<_, _, StoreError>(async move |tx| tx.schedule(&second, Utc::now()).await).await.unwrap();
        // Ten polls: it tries, and its fenced release is refused each time.
        // Only time can show that something does not happen.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.scheduled_count().await.unwrap(), 1, "fired after its lease was taken");
        assert_eq!(store.outbox_backlog().await.unwrap().unpublished, 1, "only the first deadline reached the outbox");

        // Given back, the lease is taken again and the deadline fires.
        store
            .transaction::<_, _, StoreError>(async move |tx| tx.release_lease("scheduler", other).await)
            .await
            .unwrap();
        wait_for(WAIT, || async { store.scheduled_count().await.unwrap() == 0 }).await.unwrap();
    }
}
