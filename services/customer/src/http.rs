//! The HTTP API: decoding requests and encoding answers around the
//! service's methods. Errors become problems through `From<Error> for ApiError`.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contracts::customer::{Customer as CustomerBody, RegisterCustomer, UpdateCustomer};
use polis_runtime::{ApiError, Json};
use polis_store::sql::{Sql, SqlStore};
use uuid::Uuid;

use crate::{Customer, Error};

pub(crate) fn router<S>(service: Customer<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/customers", get(list::<S>).post(register::<S>))
        .route("/customers/{id}", get(fetch::<S>).put(update::<S>))
        .with_state(service)
}

async fn register<S>(
    State(service): State<Customer<S>>,
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

async fn list<S>(State(service): State<Customer<S>>) -> Result<Json<Vec<CustomerBody>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.list().await?))
}

async fn fetch<S>(
    State(service): State<Customer<S>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CustomerBody>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.get(customer_id(id)?).await?))
}

async fn update<S>(
    State(service): State<Customer<S>>,
    id: Result<Path<String>, PathRejection>,
    Json(change): Json<UpdateCustomer>,
) -> Result<Json<CustomerBody>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(service.update(customer_id(id)?, change).await?))
}

/// A path segment that is not a UUID names no customer: 404, like an unknown one.
fn customer_id(segment: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(segment) = segment.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    Uuid::parse_str(&segment).map_err(|_| Error::NotFound(segment).into())
}
