//! Idempotency keys on PostgreSQL: a repeat that arrives while the first
//! request's transaction still holds the key waits for it, then answers
//! with the first request's order if it committed, or places the order
//! itself if it rolled back.

#![allow(clippy::unwrap_used)]

use polis_runtime::Service as _;
use std::time::Duration;

use contracts::OrderLine;
use order::{Config, OrderService, Placed};
use polis_store::PgEventStore;
use uuid::Uuid;

/// A transaction holding `key` for `customer` the way `place` records it,
/// not yet committed, and the order id it names.
async fn first_request_in_flight(
    store: &PgEventStore,
    service: &OrderService<PgEventStore>,
    customer: Uuid,
    lines: &[OrderLine],
    key: &str,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, Uuid) {
    // The canonical request text, as `place` wrote it for an earlier key.
    let earlier = service.place(customer, lines.to_vec(), Some(format!("{key}-earlier"))).await.unwrap();
    assert!(matches!(earlier, Placed::New(_)));
    let request: String =
        sqlx::query_scalar("SELECT request FROM order_requests WHERE customer_id = $1 AND idempotency_key = $2")
            .bind(customer.to_string())
            .bind(format!("{key}-earlier"))
            .fetch_one(store.pool())
            .await
            .unwrap();
    let order_id = Uuid::now_v7();
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO order_requests (customer_id, idempotency_key, order_id, request, created_at_us) \
         VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(customer.to_string())
    .bind(key)
    .bind(order_id.to_string())
    .bind(request)
    .execute(&mut *tx)
    .await
    .unwrap();
    (tx, order_id)
}

async fn open() -> (std::sync::Arc<PgEventStore>, OrderService<PgEventStore>, testsupport::Guard) {
    let (store, guard) = testsupport::postgres(contracts::order::SERVICE).await;
    let service = OrderService::open(store.clone(), Config::default()).await.unwrap();
    (store, service, guard)
}

fn lines() -> Vec<OrderLine> {
    vec![OrderLine { sku: "A-1".into(), quantity: 2, unit_price: 150 }]
}

/// A repeat of `key` sent while the first request's transaction holds the
/// key; the first then commits or rolls back. Returns what the repeat did,
/// with the first request's order id.
async fn repeat_while_held(
    service: &OrderService<PgEventStore>,
    store: &PgEventStore,
    customer: Uuid,
    commit: bool,
) -> (Placed, Uuid) {
    let (first, first_order) = first_request_in_flight(store, service, customer, &lines(), "k").await;
    let repeat = tokio::spawn({
        let service = service.clone();
        async move { service.place(customer, lines(), Some("k".into())).await }
    });
    // Waiting, not merely slow: a backend of this database waits for a lock
    // (the key's row, which the first request's transaction holds).
    let waiting = polis_testkit::wait_for_lock_waiter(store.pool(), Duration::from_secs(10)).await;
    assert!(waiting.is_ok(), "the repeat never waited for the key's lock");
    assert!(!repeat.is_finished(), "the repeat must wait for the transaction holding its key");
    if commit {
        first.commit().await.unwrap();
    } else {
        first.rollback().await.unwrap();
    }
    let placed = tokio::time::timeout(Duration::from_secs(10), repeat).await.unwrap().unwrap().unwrap();
    (placed, first_order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_waits_for_the_first_request_and_answers_with_its_order() {
    let (store, service, _guard) = open().await;
    let (placed, first_order) = repeat_while_held(&service, &store, Uuid::now_v7(), true).await;
    assert_eq!(placed, Placed::Replayed(first_order));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_places_the_order_when_the_first_request_rolled_back() {
    let (store, service, _guard) = open().await;
    let customer = Uuid::now_v7();
    let (placed, first_order) = repeat_while_held(&service, &store, customer, false).await;
    let Placed::New(id) = placed else { panic!("expected a new order, got {placed:?}") };
    assert_ne!(id, first_order);
    let again = service.place(customer, lines(), Some("k".into())).await.unwrap();
    assert_eq!(again, Placed::Replayed(id));
}

/// Keys expire: once deleted, the same key places a new order, with the
/// same lines or others; keys recorded after the cut-off stay. On both
/// backends (the deletion is one portable statement per chunk).
async fn keys_expire<S>(service: OrderService<S>)
where
    S: polis_store::sql::SqlStore,
    S::Tx: polis_store::sql::Sql,
{
    let customer = Uuid::now_v7();
    let Placed::New(first) = service.place(customer, lines(), Some("k".into())).await.unwrap() else {
        panic!("a new key places an order")
    };
    assert_eq!(service.place(customer, lines(), Some("k".into())).await.unwrap(), Placed::Replayed(first));
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Placed::New(kept) = service.place(customer, lines(), Some("later".into())).await.unwrap() else {
        panic!("a new key places an order")
    };
    assert_eq!(service.expire_idempotency_keys(cut - chrono::Duration::hours(1)).await.unwrap(), 0);
    assert_eq!(service.expire_idempotency_keys(cut).await.unwrap(), 1, "only the key recorded before the cut");
    let again = service.place(customer, lines(), Some("k".into())).await.unwrap();
    assert!(matches!(again, Placed::New(id) if id != first), "an expired key places a new order: {again:?}");
    let other = vec![OrderLine { sku: "B-2".into(), quantity: 1, unit_price: 90 }];
    assert!(
        service.place(customer, other, Some("later".into())).await.is_err(),
        "a kept key is refused for other lines"
    );
    assert_eq!(service.place(customer, lines(), Some("later".into())).await.unwrap(), Placed::Replayed(kept));
}

#[tokio::test]
async fn sqlite_idempotency_keys_expire() {
    let (store, _guard) = testsupport::sqlite(contracts::order::SERVICE).await;
    keys_expire(OrderService::open(store, Config::default()).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_idempotency_keys_expire() {
    let (_, service, _guard) = open().await;
    keys_expire(service).await;
}
