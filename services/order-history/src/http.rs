//! The HTTP API (behind the gateway).
//!
//! | route | answer |
//! |---|---|
//! | `GET /customers/{id}/orders?status=S&limit=N&after=ID&order=ID&wait_ms=N` | 200 `CustomerOrders`; 400 unknown parameter; 422; 503 while the view is first built |
//! | `GET /orders?limit=N&after=ID` | 200 a page of every order the view has, by id (for the auditor) |
//! | `GET /orders/{id}` | 200 `HistoryOrder`; 404 |
//!
//! `order=ID` waits (up to `wait_ms`, 2 s when absent, at most 10 s) until
//! the view shows order `ID`, then answers: a client that just placed an order can
//! read its own write. Every answer says how fresh the view is.

use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use contracts::order_history::{CustomerOrders, HistoryOrder};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId};
use polis_store::sql::{Sql, SqlStore};
use uuid::Uuid;

use crate::{OrderHistory, db, rules};

pub(crate) fn router<S>(service: OrderHistory<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/customers/{id}/orders", get(customer_orders::<S>))
        .route("/orders", get(orders::<S>))
        .route("/orders/{id}", get(order::<S>))
        .with_state(service)
}

async fn customer_orders<S>(
    State(service): State<OrderHistory<S>>,
    PathId(customer_id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<CustomerOrders>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let query = rules::CustomerOrdersQuery::parse(query.as_deref())?;
    let store = service.store.as_ref();
    if let Some((order_id, wait)) = query.wait {
        wait_for_order(store, order_id, wait).await?;
    }
    let freshness = db::freshness(store).await?;
    let orders = db::customer_orders(store, customer_id, query.status, &query.page).await?;
    Ok(Json(CustomerOrders { orders, freshness }))
}

async fn order<S>(
    State(service): State<OrderHistory<S>>,
    PathId(id): PathId,
    _: NoQuery,
) -> Result<Json<HistoryOrder>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let order = db::order(service.store.as_ref(), id).await?;
    Ok(Json(order.ok_or_else(|| ApiError::not_found(format!("the view has no order {id}")))?))
}

/// Every order the view has, a page at a time by id: how the auditor holds
/// the view against the services it is built from.
async fn orders<S>(State(service): State<OrderHistory<S>>, page: Page) -> Result<Json<Vec<HistoryOrder>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::orders(service.store.as_ref(), &page).await?))
}

/// Polls the view until it shows `order_id`, for at most `wait`.
async fn wait_for_order<S>(store: &S, order_id: Uuid, wait: Duration) -> Result<(), ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        if db::order(store, order_id).await?.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
