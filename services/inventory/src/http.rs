//! The inventory service's HTTP API (bare routes; the host adds the standard
//! layer stack).
//!
//! | route | answer |
//! |---|---|
//! | `PUT /inventory/{sku}` `{available}` | 200 `StockLevel`; publishes `StockAdjusted`; 422 a sku the catalog's rule refuses |
//! | `GET /inventory/{sku}` | 200 `StockLevel` / 404 |
//! | `GET /inventory?limit=N&after=SKU` | 200 a page of `StockLevel`s by sku (admin list, see `polis_runtime::Page`) |
//! | `GET /reservations/{order_id}` | 200 `Reservation` / 404; 400 not an id |
//! | `GET /reservations?limit=N&after=ID` | 200 a page of `Reservation`s by order id (admin list) |
//!
//! A query parameter a route does not read is a 400 (`NoQuery`, `Page`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use contracts::inventory::{Reservation, SetStock, StockAdjusted, StockLevel};
use polis_core::{Message, Transaction};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId, PathText};
use polis_store::sql::{Sql, SqlStore};

use crate::error::InventoryError;
use crate::{SERVICE, db, rules};

pub(crate) fn router<S>(store: Arc<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/inventory", get(list_stock::<S>))
        .route("/inventory/{sku}", get(get_stock::<S>).put(set_stock::<S>))
        .route("/reservations", get(list_reservations::<S>))
        .route("/reservations/{order_id}", get(get_reservation::<S>))
        .with_state(store)
}

#[tracing::instrument(skip_all, fields(sku))]
async fn set_stock<S>(
    State(store): State<Arc<S>>,
    PathText(sku): PathText,
    _: NoQuery,
    Json(body): Json<SetStock>,
) -> Result<Json<StockLevel>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    tracing::Span::current().record("sku", sku.as_str());
    // Check before opening a transaction: bad input costs no writer time.
    rules::check_sku(&sku).map_err(|m| ApiError::validation("sku", m))?;
    let level = store
        .transaction::<_, _, InventoryError>(async move |tx| {
            let level = db::set_available(tx, &sku, body.available).await?;
            let adjusted = StockAdjusted { sku: level.sku.clone(), available: level.available };
            tx.send(&Message::typed_event(SERVICE, &level.sku, &adjusted)?).await?;
            Ok(level)
        })
        .await?;
    Ok(Json(level))
}

async fn get_stock<S>(
    State(store): State<Arc<S>>,
    PathText(sku): PathText,
    _: NoQuery,
) -> Result<Json<StockLevel>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    match db::stock_level_of(&*store, &sku).await? {
        Some(level) => Ok(Json(level)),
        None => Err(ApiError::not_found(format!("no stock is kept for sku `{sku}`"))),
    }
}

async fn list_stock<S>(State(store): State<Arc<S>>, page: Page<String>) -> Result<Json<Vec<StockLevel>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::stock_levels(&*store, &page).await?))
}

async fn get_reservation<S>(
    State(store): State<Arc<S>>,
    PathId(order_id): PathId,
    _: NoQuery,
) -> Result<Json<Reservation>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    match db::reservation(&*store, order_id).await? {
        Some(reservation) => Ok(Json(reservation)),
        None => Err(ApiError::not_found(format!("order {order_id} has no reservation"))),
    }
}

async fn list_reservations<S>(State(store): State<Arc<S>>, page: Page) -> Result<Json<Vec<Reservation>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::reservations(&*store, page).await?))
}
