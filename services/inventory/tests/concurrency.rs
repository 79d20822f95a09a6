//! Reservations under concurrency, on SQLite and PostgreSQL: many orders
//! racing for the last units of a sku, each in its own concurrent
//! transaction, never oversell; concurrent duplicates of one order's request
//! reserve once.

#![allow(clippy::unwrap_used)]

mod support;

use polis_runtime::Service as _;
use std::collections::HashSet;

use contracts::inventory::{ReservationStatus, ReserveStock, StockReservationFailed, StockReserved};
use contracts::{Quantity, RejectionReason};
use inventory::{Inventory, InventoryError, SERVICE, db};
use polis_core::Message;
use polis_store::sql::{Sql, SqlStore};
use support::{handle, open};
use testsupport::sent;
use uuid::Uuid;

const ORDERS: usize = 50;
const LAST_UNITS: i64 = 10;
const PLENTY: i64 = 1_000;

// Four worker threads, not the suites' two: the racers must really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_never_oversells() {
    let (store, _guard) = testsupport::sqlite(SERVICE).await;
    race_for_the_last_units(open(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_never_oversells() {
    let (store, _guard) = testsupport::postgres(SERVICE).await;
    race_for_the_last_units(open(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reserves_concurrent_duplicates_once() {
    let (store, _guard) = testsupport::sqlite(SERVICE).await;
    duplicates_race(open(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reserves_concurrent_duplicates_once() {
    let (store, _guard) = testsupport::postgres(SERVICE).await;
    duplicates_race(open(store).await).await;
}

/// Every order wants one unit of a plentiful sku and one of a scarce one.
/// The plentiful one sorts first, so losing orders take it and must put it
/// back; half the orders list the skus in the other order, which would
/// deadlock on PostgreSQL if rows were locked in listing order.
async fn race_for_the_last_units<S>(service: Inventory<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    service
        .store()
        .transaction::<_, _, InventoryError>(async move |tx| {
            db::set_available(tx, "a-plenty", PLENTY).await?;
            db::set_available(tx, "z-scarce", LAST_UNITS).await
        })
        .await
        .unwrap();

    let orders: Vec<Uuid> = (0..ORDERS).map(|_| Uuid::now_v7()).collect();
    let racers = orders.iter().enumerate().map(|(i, &order_id)| {
        let service = service.clone();
        let mut items =
            vec![Quantity { sku: "a-plenty".into(), quantity: 1 }, Quantity { sku: "z-scarce".into(), quantity: 1 }];
        if i % 2 == 1 {
            items.reverse();
        }
        let command = ReserveStock { order_id, customer_id: Uuid::now_v7(), items, total: 500 };
        let message = Message::typed_command("order", SERVICE, &order_id.to_string(), &command).unwrap();
        tokio::spawn(async move { handle(&service, &message).await })
    });
    for result in join_all(racers).await {
        result.unwrap();
    }

    // Exactly as many orders won as there were units, and the losers were told why.
    let outcomes = sent(&**service.store()).await;
    assert_eq!(outcomes.len(), ORDERS);
    let winners: HashSet<Uuid> = outcomes
        .iter()
        .filter(|m| m.is::<StockReserved>())
        .map(|m| m.decode::<StockReserved>().unwrap().order_id)
        .collect();
    assert_eq!(winners.len(), LAST_UNITS as usize);
    for message in outcomes.iter().filter(|m| !m.is::<StockReserved>()) {
        let failed: StockReservationFailed = message.decode().unwrap();
        assert_eq!((failed.reason, failed.sku.as_deref()), (RejectionReason::OutOfStock, Some("z-scarce")));
    }

    // Stock is conserved and never negative; reservations agree with the outcomes.
    let scarce = db::stock_level_of(&**service.store(), "z-scarce").await.unwrap().unwrap();
    assert_eq!((scarce.available, scarce.reserved), (0, LAST_UNITS));
    let plenty = db::stock_level_of(&**service.store(), "a-plenty").await.unwrap().unwrap();
    assert_eq!((plenty.available, plenty.reserved), (PLENTY - LAST_UNITS, LAST_UNITS));
    let reservations = db::reservations(&**service.store(), polis_runtime::Page::first(100)).await.unwrap();
    assert_eq!(reservations.len(), ORDERS);
    for reservation in reservations {
        let expected = if winners.contains(&reservation.order_id) {
            ReservationStatus::Reserved
        } else {
            ReservationStatus::Failed
        };
        assert_eq!(reservation.status, expected, "order {}", reservation.order_id);
    }
}

/// The same order's reservation, requested by many messages at once (each a
/// new message id, so the inbox cannot help): one reservation, every request
/// answered with its outcome.
async fn duplicates_race<S>(service: Inventory<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    const DUPLICATES: usize = 20;
    service
        .store()
        .transaction::<_, _, InventoryError>(async move |tx| db::set_available(tx, "z-scarce", LAST_UNITS).await)
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let command = ReserveStock {
        order_id,
        customer_id: Uuid::now_v7(),
        items: vec![Quantity { sku: "z-scarce".into(), quantity: 3 }],
        total: 500,
    };
    let racers = (0..DUPLICATES).map(|_| {
        let service = service.clone();
        let message = Message::typed_command("order", SERVICE, &order_id.to_string(), &command).unwrap();
        tokio::spawn(async move { handle(&service, &message).await })
    });
    for result in join_all(racers).await {
        result.unwrap();
    }

    let outcomes = sent(&**service.store()).await;
    assert_eq!(outcomes.len(), DUPLICATES);
    assert!(
        outcomes.iter().all(|m| m.is::<StockReserved>() && m.decode::<StockReserved>().unwrap().order_id == order_id)
    );
    let scarce = db::stock_level_of(&**service.store(), "z-scarce").await.unwrap().unwrap();
    assert_eq!((scarce.available, scarce.reserved), (LAST_UNITS - 3, 3), "reserved once");
}

/// Awaits every task (the join handles of `tokio::spawn`).
async fn join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.unwrap());
    }
    results
}
