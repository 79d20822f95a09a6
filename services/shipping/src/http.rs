//! The shipping service's HTTP API (bare routes; the host adds the standard
//! layer stack).
//!
//! | route | answer |
//! |---|---|
//! | `GET /shipments/{order_id}` | 200 `Shipment` / 404; 400 not an id (`polis_runtime::PathId`) |
//! | `GET /shipments?limit=N&after=ID` | 200 a page of `Shipment`s by order id (admin list, see `polis_runtime::Page`) |
//! | `GET /addresses?limit=N&after=ID` | 200 a page of the address replica (`CustomerAddress`) by customer id (for the auditor) |
//!
//! A query parameter a route does not read is a 400 (`NoQuery`, `Page`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use contracts::shipping::{CustomerAddress, Shipment};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId};
use polis_store::sql::{Sql, SqlStore};

use crate::db;

pub(crate) fn router<S>(store: Arc<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/shipments", get(list_shipments::<S>))
        .route("/addresses", get(list_addresses::<S>))
        .route("/shipments/{order_id}", get(get_shipment::<S>))
        .with_state(store)
}

async fn get_shipment<S>(
    State(store): State<Arc<S>>,
    PathId(order_id): PathId,
    _: NoQuery,
) -> Result<Json<Shipment>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    match db::shipment(&*store, order_id).await? {
        Some(shipment) => Ok(Json(shipment)),
        None => Err(ApiError::not_found(format!("order {order_id} has no shipment"))),
    }
}

async fn list_shipments<S>(State(store): State<Arc<S>>, page: Page) -> Result<Json<Vec<Shipment>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::shipments(&*store, page).await?))
}

async fn list_addresses<S>(State(store): State<Arc<S>>, page: Page) -> Result<Json<Vec<CustomerAddress>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::addresses(&*store, page).await?))
}
