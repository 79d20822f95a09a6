//! The service's HTTP API: read-only views of payments and credit.
//!
//! Payments change only through messages (the saga's steps), so there is no
//! write endpoint. The host adds the standard layers; this is the bare router.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use contracts::payment::{Credit, Payment as PaymentView};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId};
use polis_store::sql::{Sql, SqlStore};

use crate::{Payment, db};

pub(crate) fn router<S>(service: Payment<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/payments", get(list_payments::<S>))
        .route("/payments/{order_id}", get(get_payment::<S>))
        .route("/credit", get(list_credit::<S>))
        .route("/credit/{customer_id}", get(get_credit::<S>))
        .with_state(service)
}

/// `{order_id}` and `{customer_id}` are UUIDs in their canonical form
/// (`PathId`): anything else is a 400 naming the parameter; so is a query
/// parameter (`NoQuery`).
async fn get_payment<S>(
    State(service): State<Payment<S>>,
    PathId(order_id): PathId,
    _: NoQuery,
) -> Result<Json<PaymentView>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    match db::find(&*service.store, order_id).await? {
        Some(payment) => Ok(Json(payment.view())),
        None => Err(ApiError::not_found(format!("no payment for order {order_id}"))),
    }
}

/// Every payment, a page at a time in order id order: an admin view the
/// demo uses to check invariants across all orders.
async fn list_payments<S>(State(service): State<Payment<S>>, page: Page) -> Result<Json<Vec<PaymentView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let payments = db::page(&*service.store, page).await?;
    Ok(Json(payments.iter().map(db::Stored::view).collect()))
}

async fn get_credit<S>(
    State(service): State<Payment<S>>,
    PathId(customer_id): PathId,
    _: NoQuery,
) -> Result<Json<Credit>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    match db::credit(&*service.store, customer_id).await? {
        Some(credit) => Ok(Json(credit)),
        None => Err(ApiError::not_found(format!("customer {customer_id} is not known to the payment service"))),
    }
}

/// Every replicated customer's credit, a page at a time by customer id: how
/// the auditor holds the replica against the customer service.
async fn list_credit<S>(State(service): State<Payment<S>>, page: Page) -> Result<Json<Vec<Credit>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(db::credits(&*service.store, page).await?))
}
