//! The HTTP API: decoding requests and encoding answers around the
//! service's methods. Errors become problems through `From<Error> for ApiError`.
//! A query parameter a route does not read is a 400 (`NoQuery`, `Page`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contracts::customer::{Customer as CustomerBody, RegisterCustomer, UpdateCustomer};
use polis_projection::SnapshotPage;
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId};
use polis_store::sql::{Sql, SqlStore};

use crate::Customer;

pub(crate) fn router<S>(service: Customer<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/customers", get(list::<S>).post(register::<S>))
        .route("/customers/{id}", get(fetch::<S>).put(update::<S>))
        .route(contracts::customer::SNAPSHOT_PATH, get(snapshot::<S>))
        .with_state(service)
}

async fn register<S>(
    State(service): State<Customer<S>>,
    _: NoQuery,
    Json(request): Json<RegisterCustomer>,
) -> Result<Response, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let customer = service.register(request).await?;
    let location = format!("/customers/{}", customer.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(customer)).into_response())
}

async fn list<S>(State(service): State<Customer<S>>, page: Page) -> Result<Json<Vec<CustomerBody>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.list(&page).await?))
}

/// `GET /customers/snapshot?after=<id>&limit=N`: a page of the snapshot
/// replicas bootstrap from (not behind the gateway: services only).
async fn snapshot<S>(State(service): State<Customer<S>>, page: Page) -> Result<Json<SnapshotPage>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.snapshot(&page).await?))
}

async fn fetch<S>(
    State(service): State<Customer<S>>,
    PathId(id): PathId,
    _: NoQuery,
) -> Result<Json<CustomerBody>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.get(id).await?))
}

async fn update<S>(
    State(service): State<Customer<S>>,
    PathId(id): PathId,
    _: NoQuery,
    Json(change): Json<UpdateCustomer>,
) -> Result<Json<CustomerBody>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.update(id, change).await?))
}
