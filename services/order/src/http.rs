//! The order service's HTTP API (behind the gateway).
//!
//! | route | answer |
//! |---|---|
//! | `POST /orders` | 202 `Accepted` (`Idempotency-Key` optional); 422 |
//! | `GET /orders?limit=N&after=ID` | 200 a page of every order, by id (admin list) |
//! | `GET /orders/recent?limit=N` | 200 the `N` (default 10, at most 100) newest orders, newest first |
//! | `GET /orders/{id}?wait_ms=N` | 200 `OrderView`, once decided or after `N` ms; 404 |
//! | `GET /orders/{id}?version=N` or `?as_of=T` | 200 `OrderView` as it was then (event store); 404; 422 |
//! | `GET /orders/{id}/events?limit=N&after=V` | 200 a page of the order's events by version; 404 |
//! | `POST /orders/{id}/cancel` | 202 `Accepted`; 404; 409 not APPROVED |
//! | `GET /customers/{id}/orders?limit=N&after=ID` | 200 a page of the customer's orders, by id |
//!
//! Lists are paged with `polis_runtime::Page`; every `{id}` is a UUID in its
//! canonical form (`polis_runtime::PathId`), anything else a 400; so is a
//! query parameter a route does not read (`NoQuery`, `Page`, `wait_ms`).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::DateTime;
use contracts::order::{
    Accepted, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, OrderEvent, OrderStatus, OrderView, PlaceOrder, idempotency_key,
};
use contracts::{OrderLine, RejectionReason};
use polis_runtime::Service as _;
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId};
use polis_store::sql::{Row, Sql, SqlStore};

use crate::{AsOf, OrderService, OrderThen, Placed, db, decisions};

pub(crate) fn router<S>(service: OrderService<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/orders", post(place::<S>).get(list_all::<S>))
        .route("/orders/recent", get(recent::<S>))
        .route("/orders/{id}", get(get_one::<S>))
        .route("/orders/{id}/cancel", post(cancel::<S>))
        .route("/orders/{id}/events", get(events::<S>))
        .route("/customers/{id}/orders", get(list_for_customer::<S>))
        .with_state(service)
}

/// Places an order; with an `Idempotency-Key`, a repeated request answers
/// with the order placed the first time (its current status, and
/// `idempotent-replayed: true`).
async fn place<S>(
    State(service): State<OrderService<S>>,
    _: NoQuery,
    headers: HeaderMap,
    Json(body): Json<PlaceOrder>,
) -> Result<Response, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let key = idempotency_key(headers.get_all(IDEMPOTENCY_KEY).iter().map(HeaderValue::as_bytes))
        .map_err(|e| ApiError::validation("Idempotency-Key", e))?
        .map(str::to_owned);
    let placed = service.place(body.customer_id, body.lines, key).await?;
    let id = placed.id();
    let location = format!("/orders/{id}");
    let mut response = match placed {
        Placed::New(_) => Json(Accepted { id, status: OrderStatus::Pending }).into_response(),
        Placed::Replayed(_) => {
            let status = db::status(service.store().as_ref(), id).await?;
            let status =
                status.ok_or_else(|| ApiError::internal(format!("order {id} has a key but no read model row")))?;
            let status = parse_status(&status)?;
            ([(IDEMPOTENT_REPLAYED, "true")], Json(Accepted { id, status })).into_response()
        }
    };
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&location).map_err(ApiError::internal)?);
    Ok(response)
}

async fn cancel<S>(
    State(service): State<OrderService<S>>,
    PathId(id): PathId,
    _: NoQuery,
) -> Result<impl IntoResponse, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    service.cancel(id).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { id, status: OrderStatus::CancelPending })))
}

/// One order. With `?wait_ms=N`, an order not decided yet is answered once
/// it is decided, or after `N` ms as it is then (see [`crate::decisions`]).
async fn get_one<S>(
    State(service): State<OrderService<S>>,
    PathId(id): PathId,
    RawQuery(query): RawQuery,
) -> Result<Json<OrderView>, ApiError>
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    polis_runtime::query::refuse_unknown(query.as_deref(), &contracts::order::ORDER_PARAMETERS)?;
    if let Some(at) = as_of_param(query.as_deref())? {
        let then = service.as_it_was(id, at).await?;
        let then = then.ok_or_else(|| match at {
            AsOf::Version(v) => ApiError::not_found(format!("order {id} has no version {v}")),
            AsOf::Time(t) => ApiError::not_found(format!("order {id} did not exist at {}", rfc3339(t))),
        })?;
        return Ok(Json(view_then(id, &then)?));
    }
    let wait = decisions::wait_param(query.as_deref()).map_err(|e| ApiError::validation(decisions::WAIT_PARAM, e))?;
    let read = || async {
        let row = db::order(service.store().as_ref(), id).await?;
        row.ok_or_else(|| ApiError::not_found("no such order"))
    };
    let mut row = read().await?;
    if let Some(wait) = wait.filter(|w| !w.is_zero())
        && !decisions::is_decided(&row.text("status")?)
    {
        let decided = service.decisions().register(service.store(), id);
        // Read again: the decision may have committed before the wait was registered.
        row = read().await?;
        if !decisions::is_decided(&row.text("status")?) {
            let _ = tokio::time::timeout(wait, decided).await;
            row = read().await?;
        }
    }
    Ok(Json(view(&row)?))
}

/// `?version=N` or `?as_of=T`: which past state of the order to answer
/// with, if any. Either alone; neither with `wait_ms` (a past state does not
/// change).
fn as_of_param(query: Option<&str>) -> Result<Option<AsOf>, ApiError> {
    let mut at = None;
    let mut waits = false;
    for (name, value) in polis_runtime::query::pairs(query) {
        let this = match name {
            "version" => {
                let version =
                    value.parse::<u64>().ok().filter(|v| *v >= 1 && value.bytes().all(|b| b.is_ascii_digit()));
                AsOf::Version(version.ok_or_else(|| ApiError::validation("version", "must be a whole number from 1"))?)
            }
            "as_of" => {
                let invalid =
                    || ApiError::validation("as_of", "must be an RFC 3339 time, such as 2026-12-05T10:00:00Z");
                let value = polis_runtime::query::decode(value).ok_or_else(invalid)?;
                let time = DateTime::parse_from_rfc3339(&value).map_err(|_| invalid())?;
                AsOf::Time(time.with_timezone(&chrono::Utc))
            }
            name if name == decisions::WAIT_PARAM => {
                waits = true;
                continue;
            }
            _ => continue,
        };
        if at.replace(this).is_some() {
            return Err(ApiError::validation(name, "give one of `version` and `as_of`, once"));
        }
    }
    if waits && at.is_some() {
        return Err(ApiError::validation(
            decisions::WAIT_PARAM,
            "a past state does not change: no `wait_ms` with `version` or `as_of`",
        ));
    }
    Ok(at)
}

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A past state in the shape of the current one.
fn view_then(id: uuid::Uuid, then: &OrderThen) -> Result<OrderView, ApiError> {
    let order = &then.order;
    let (Some(customer_id), Some(status)) = (order.customer_id, order.status) else {
        return Err(ApiError::internal(format!("order {id} at version {} has no customer or status", then.version)));
    };
    Ok(OrderView {
        id,
        customer_id,
        status,
        reason: order.reason,
        items: order.lines.clone(),
        total: order.total,
        created_at: rfc3339(then.created_at),
        updated_at: rfc3339(then.updated_at),
    })
}

/// The order's events, a page at a time by version (`?limit=N&after=V`):
/// its audit trail.
async fn events<S>(
    State(service): State<OrderService<S>>,
    PathId(id): PathId,
    page: Page<u64>,
) -> Result<Json<Vec<OrderEvent>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let events = service.events(id, page.after_key(), page.limit).await?;
    let events = events.ok_or_else(|| ApiError::not_found("no such order"))?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| OrderEvent {
                event_type: e.event_type,
                version: e.stream_version,
                time: rfc3339(e.time),
                data: e.data,
            })
            .collect(),
    ))
}

/// Every order, a page at a time in id order (an admin view the demo's
/// invariant checks read).
async fn list_all<S>(State(service): State<OrderService<S>>, page: Page) -> Result<Json<Vec<OrderView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let rows = db::all(service.store().as_ref(), &page).await?;
    Ok(Json(rows.iter().map(view).collect::<Result<_, _>>()?))
}

/// How many orders `GET /orders/recent` lists by default, and at most.
const RECENT: (usize, usize) = (10, 100);

/// The newest orders, newest first (ids are UUIDv7: the order they were
/// placed in, to the millisecond): what an operator's dashboard shows.
async fn recent<S>(
    State(service): State<OrderService<S>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<OrderView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    polis_runtime::query::refuse_unknown(query.as_deref(), &["limit"])?;
    let mut limit = RECENT.0;
    for (_, value) in polis_runtime::query::pairs(query.as_deref()) {
        limit =
            value.parse::<usize>().ok().filter(|n| (1..=RECENT.1).contains(n)).ok_or_else(|| {
                ApiError::validation("limit", format!("must be a whole number from 1 to {}", RECENT.1))
            })?;
    }
    let rows = db::newest(service.store().as_ref(), limit).await?;
    Ok(Json(rows.iter().map(view).collect::<Result<_, _>>()?))
}

/// A page of a customer's orders in id order: UUIDv7, so the order they
/// were placed in (to the millisecond). A customer without orders (or
/// unknown here) has an empty list; the gateway answers 404 for a
/// customer the customer service does not know.
async fn list_for_customer<S>(
    State(service): State<OrderService<S>>,
    PathId(customer_id): PathId,
    page: Page,
) -> Result<Json<Vec<OrderView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let rows = db::of_customer(service.store().as_ref(), customer_id, &page).await?;
    Ok(Json(rows.iter().map(view).collect::<Result<_, _>>()?))
}

fn view(row: &Row) -> Result<OrderView, ApiError> {
    let status = parse_status(&row.text("status")?)?;
    let reason = row.opt_text("reason")?.map(|r| parse_reason(&r)).transpose()?;
    let lines: Vec<OrderLine> = row.json("lines")?;
    let time = |column: &str| -> Result<String, ApiError> {
        let micros = row.int(column)?;
        DateTime::from_timestamp_micros(micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .ok_or_else(|| ApiError::internal(format!("bad time {micros} in column {column}")))
    };
    Ok(OrderView {
        id: row.uuid("order_id")?,
        customer_id: row.uuid("customer_id")?,
        status,
        reason,
        items: lines,
        total: row.int("total")?,
        created_at: time("created_at_us")?,
        updated_at: time("updated_at_us")?,
    })
}

fn parse_status(s: &str) -> Result<OrderStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| ApiError::internal(format!("unknown order status {s} in the read model")))
}

fn parse_reason(s: &str) -> Result<RejectionReason, ApiError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| ApiError::internal(format!("unknown rejection reason {s} in the read model")))
}
