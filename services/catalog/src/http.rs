//! The HTTP API: decoding requests and encoding answers around the
//! service's methods. Errors become problems through `From<Error> for ApiError`.
//! A query parameter a route does not read is a 400 (`NoQuery`, `Page`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use contracts::catalog::{ChangePrice, Product, UpdateProduct};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathText};
use polis_store::sql::{Sql, SqlStore};

use crate::Catalog;

pub(crate) fn router<S>(service: Catalog<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/products", get(list::<S>).post(add::<S>))
        .route("/products/{sku}", get(fetch::<S>).patch(update::<S>))
        .route("/products/{sku}/price", put(change_price::<S>))
        .with_state(service)
}

async fn add<S>(
    State(service): State<Catalog<S>>,
    _: NoQuery,
    Json(product): Json<Product>,
) -> Result<Response, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let product = service.add(product).await?;
    // A valid sku needs no percent-encoding in a path.
    let location = format!("/products/{}", product.sku);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(product)).into_response())
}

async fn list<S>(State(service): State<Catalog<S>>, page: Page<String>) -> Result<Json<Vec<Product>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.list(&page).await?))
}

async fn fetch<S>(
    State(service): State<Catalog<S>>,
    PathText(sku): PathText,
    _: NoQuery,
) -> Result<Json<Product>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.get(&sku).await?))
}

async fn update<S>(
    State(service): State<Catalog<S>>,
    PathText(sku): PathText,
    _: NoQuery,
    Json(update): Json<UpdateProduct>,
) -> Result<Json<Product>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.update(&sku, update).await?))
}

async fn change_price<S>(
    State(service): State<Catalog<S>>,
    PathText(sku): PathText,
    _: NoQuery,
    Json(change): Json<ChangePrice>,
) -> Result<Json<Product>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.change_price(&sku, change).await?))
}
