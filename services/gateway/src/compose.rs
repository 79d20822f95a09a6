//! The routes that need more than one service.
//!
//! Two kinds of upstream call meet here:
//!
//! - an **essential** call, without whose answer the route cannot answer
//!   (the customer and products of a new order, the order of a details
//!   call): 200 is used, 404 means "no such thing" and becomes the route's
//!   own 404 or 422, and anything else fails the route: 504 on a timeout,
//!   503 when the service is unreachable or answers 5xx, 502 when it answers
//!   off-contract (another status, or a body that does not parse);
//! - an **optional** part of the details call: whatever goes wrong, the part
//!   is `null` and named in `partial`, the route still answers 200. A 404 of
//!   the payment or the shipment is no failure: that step has not happened
//!   (yet), so the part is `null` without being partial.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::OrderLine;
use contracts::catalog::Product;
use contracts::customer::Customer;
use contracts::inventory::MAX_QUANTITY;
use contracts::order::{Accepted, CreateOrder, IDEMPOTENCY_KEY, OrderView, PlaceOrder, idempotency_key};
use contracts::order_history::{CustomerOrders, QueryError, ViewQuery};
use contracts::payment::Payment;
use contracts::shipping::Shipment;
use futures::{StreamExt, stream};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId, RequestId, Violations};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::openapi::{IdempotencyKey, OrderPage, Problem};
use crate::routes::{Gateway, MaybeRequestId, bad_gateway, call_failed, pass_through, request_id, service_failed};
use crate::upstream::encode_segment;
use contracts::Service;

/// Most items one order may have (the contracts' limit, which the
/// document's schema of `items` says too).
pub use contracts::order::MAX_ITEMS;

/// Most catalog lookups in flight for one request: an order of 100
/// distinct skus should not open 100 connections at once.
const MAX_PARALLEL_LOOKUPS: usize = 16;

/// `GET /api/orders/{id}/details`: an order with everything around it.
/// Every member is always present; a missing part is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderDetails {
    pub order: OrderView,
    /// `null` if the customer service failed or timed out.
    #[schema(required = true)]
    pub customer: Option<Customer>,
    /// The product of each distinct sku, in the order's line order; `null`
    /// if any of them could not be fetched.
    #[schema(required = true)]
    pub products: Option<Vec<Product>>,
    /// `null` if no payment exists yet, or (then named in `partial`) if the
    /// payment service failed or timed out.
    #[schema(required = true)]
    pub payment: Option<Payment>,
    /// Like `payment`, for the shipment.
    #[schema(required = true)]
    pub shipment: Option<Shipment>,
    /// Every part that failed or timed out, hence `null`.
    pub partial: Vec<Part>,
}

/// An optional part of [`OrderDetails`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Customer,
    Products,
    Payment,
    Shipment,
}

/// An essential call's answer: the thing, or `None` for a 404.
pub(crate) async fn essential<T: DeserializeOwned>(
    gateway: &Gateway,
    service: Service,
    path: &str,
    request_id: Option<&RequestId>,
    timeout: Duration,
) -> Result<Option<T>, ApiError> {
    let called = gateway.upstream(service).call(Method::GET, path, None, request_id, timeout).await;
    essential_answer(service, path, called)
}

/// What [`essential`] makes of `GET path`'s answer.
pub(crate) fn essential_answer<T: DeserializeOwned>(
    service: Service,
    path: &str,
    called: Result<crate::UpstreamResponse, crate::UpstreamError>,
) -> Result<Option<T>, ApiError> {
    let answer = called.map_err(|err| call_failed(service, err))?;
    match answer.status {
        StatusCode::OK => serde_json::from_slice(&answer.body).map(Some).map_err(|err| bad_gateway(service, err)),
        StatusCode::NOT_FOUND => Ok(None),
        status if status.is_server_error() => Err(service_failed(service, status)),
        status => Err(bad_gateway(service, format!("GET {path} answered {status}"))),
    }
}

/// A product for a new order: an essential call.
async fn product(
    gateway: &Gateway,
    sku: &str,
    request_id: Option<&RequestId>,
    timeout: Duration,
) -> Result<Option<Product>, ApiError> {
    let path = format!("/products/{}", encode_segment(sku));
    essential(gateway, Service::Catalog, &path, request_id, timeout).await
}

/// An optional part: `Ok(None)` for a 404, `Err(())` for anything that
/// makes the part partial (logged here, with the reason). The call gets
/// the time left until `deadline` when it starts.
async fn optional<T: DeserializeOwned>(
    gateway: &Gateway,
    service: Service,
    path: &str,
    request_id: Option<&RequestId>,
    deadline: Instant,
) -> Result<Option<T>, ()> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let failed = |reason: &dyn std::fmt::Display| {
        tracing::warn!(service = service.as_str(), path, reason = %reason, "a part of the order details is missing");
    };
    let answer = match gateway.upstream(service).call(Method::GET, path, None, request_id, timeout).await {
        Ok(answer) => answer,
        Err(err) => {
            failed(&err);
            return Err(());
        }
    };
    match answer.status {
        StatusCode::OK => serde_json::from_slice(&answer.body).map(Some).map_err(|err| failed(&err)),
        StatusCode::NOT_FOUND => Ok(None),
        status => {
            failed(&format_args!("answered {status}"));
            Err(())
        }
    }
}

#[utoipa::path(
    get, path = "/api/customers/{id}/orders", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "The customer's id."), OrderPage),
    responses(
        (status = 200, description = "A page of the customer's orders in id order, which is the order they were \
            placed in (ids are UUIDv7), from the order-history view: items with product names, the customer's name \
            and email, payment and shipment status; and how fresh the view is. A page shorter than `limit` is the \
            last one.", body = CustomerOrders),
        (status = 400, description = "An unknown query parameter.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad `limit`, `after`, `status`, `order` or `wait_ms`.", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The view is being built for the first time, or a service is unavailable.",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn customer_orders(
    State(gateway): State<Gateway>,
    id: MaybeRequestId,
    PathId(customer_id): PathId,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let request_id = request_id(&id);
    let timeout = gateway.call_timeout();
    let customer_path = format!("/customers/{customer_id}");
    // The view's rules, checked before any call; the query goes on as sent.
    polis_runtime::query::refuse_unknown(uri.query(), &contracts::order_history::PARAMETERS)?;
    let (view, paging) = ViewQuery::parse(uri.query()).map_err(|e| match e {
        QueryError::Unknown(name) => ApiError::bad_request(format!("unknown query parameter `{name}`")),
        QueryError::Invalid(name, message) => ApiError::validation(name, message),
    })?;
    Page::<uuid::Uuid>::from_query(Some(&paging.join("&")))?;
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let orders_path = format!("/customers/{customer_id}/orders{query}");
    // A read that waits for an order may take that long on top of the call.
    let wait = Duration::from_millis(view.wait.map_or(0, |(_, ms)| ms));
    // Both at once: the list is wasted only for an unknown customer.
    let (customer, orders) = tokio::join!(
        essential::<Customer>(&gateway, Service::Customer, &customer_path, request_id, timeout),
        gateway.upstream(Service::OrderHistory).call(Method::GET, &orders_path, None, request_id, timeout + wait),
    );
    if customer?.is_none() {
        return Err(ApiError::not_found(format!("no customer with id {customer_id}")));
    }
    Ok(pass_through(orders.map_err(|err| call_failed(Service::OrderHistory, err))?))
}

/// One line of the order being built: a distinct sku, its summed
/// quantity, and the request's item indexes that named it.
#[derive(Debug)]
struct Line {
    sku: String,
    quantity: i64,
    items: Vec<usize>,
}

/// Checks the body's rules and merges items of the same sku.
fn lines(request: &CreateOrder) -> Result<Vec<Line>, ApiError> {
    let mut report = Violations::new();
    if request.items.is_empty() {
        report.add("items", "must contain at least one item");
    } else if request.items.len() > MAX_ITEMS {
        report.add("items", format!("must contain at most {MAX_ITEMS} items"));
    }
    for (i, item) in request.items.iter().enumerate() {
        report.check(!item.sku.trim().is_empty(), format!("items[{i}].sku"), "must not be empty");
        report.check(
            (1..=MAX_QUANTITY).contains(&item.quantity),
            format!("items[{i}].quantity"),
            format!("must be between 1 and {MAX_QUANTITY}"),
        );
    }
    report.into_result()?;

    let mut report = Violations::new();
    let mut lines: Vec<Line> = Vec::new();
    let mut by_sku: HashMap<&str, usize> = HashMap::new();
    for (i, item) in request.items.iter().enumerate() {
        match by_sku.get(item.sku.as_str()) {
            Some(&at) => {
                let line = &mut lines[at];
                // The inventory reserves at most MAX_QUANTITY of one sku.
                match line.quantity.checked_add(item.quantity).filter(|sum| *sum <= MAX_QUANTITY) {
                    Some(sum) => line.quantity = sum,
                    None => report.add(format!("items[{i}].quantity"), "adds up to too much of one sku"),
                }
                line.items.push(i);
            }
            None => {
                by_sku.insert(&item.sku, lines.len());
                lines.push(Line { sku: item.sku.clone(), quantity: item.quantity, items: vec![i] });
            }
        }
    }
    report.into_result()?;
    Ok(lines)
}

#[utoipa::path(
    post, path = "/api/orders", tag = "orders",
    params(IdempotencyKey),
    request_body(content = CreateOrder, description = "Who orders what. Items of the same sku are merged into one \
        line (quantities added); each line is priced at the catalog's current price."),
    responses(
        (status = 202, description = "The order is placed and PENDING; its saga runs in the background. A repeated \
            request answers with the earlier order and its current status.",
            body = Accepted, headers(("location" = String, description = "`/api/orders/{id}`"),
                ("idempotent-replayed" = String, description = "`true` when the answer repeats an earlier request's"))),
        (status = 409, description = "The order service met a concurrent change placing the order; retry with the \
            same `Idempotency-Key`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid, or names an unknown customer (`customer_id`) or product \
            (`items[i].sku`); `errors` lists every field. Also: the `Idempotency-Key` is malformed, or was first \
            used with a different request.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_order(
    State(gateway): State<Gateway>,
    id: MaybeRequestId,
    _: NoQuery,
    headers: HeaderMap,
    Json(request): Json<CreateOrder>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(headers.get_all(IDEMPOTENCY_KEY).iter().map(HeaderValue::as_bytes))
        .map_err(|e| ApiError::validation("Idempotency-Key", e))?;
    let lines = lines(&request)?;
    let request_id = request_id(&id);
    let timeout = gateway.call_timeout();

    let customer_path = format!("/customers/{}", request.customer_id);
    let customer = essential::<Customer>(&gateway, Service::Customer, &customer_path, request_id, timeout);
    let lookups: Vec<_> = lines.iter().map(|line| product(&gateway, &line.sku, request_id, timeout)).collect();
    let products = stream::iter(lookups).buffered(MAX_PARALLEL_LOOKUPS).collect::<Vec<_>>();
    let (customer, products) = tokio::join!(customer, products);

    // A lookup that failed leaves the order unjudged: that failure, not a 422.
    let customer = customer?;
    let products = products.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut report = Violations::new();
    if customer.is_none() {
        report.add("customer_id", "unknown customer");
    }
    let mut priced = Vec::with_capacity(lines.len());
    for (line, product) in lines.iter().zip(products) {
        match product {
            Some(product) => {
                priced.push(OrderLine { sku: line.sku.clone(), quantity: line.quantity, unit_price: product.price })
            }
            None => {
                for i in &line.items {
                    report.add(format!("items[{i}].sku"), format!("unknown product `{}`", line.sku));
                }
            }
        }
    }
    report.into_result()?;
    let total = priced.iter().try_fold(0i64, |sum, line| sum.checked_add(line.quantity.checked_mul(line.unit_price)?));
    if total.is_none() {
        return Err(ApiError::validation("items", "the order total is too large"));
    }

    let place = PlaceOrder { customer_id: request.customer_id, lines: priced };
    let body = serde_json::to_vec(&place).map_err(ApiError::internal)?;
    let forwarded: Vec<_> = idempotency_key.iter().map(|key| (IDEMPOTENCY_KEY, *key)).collect();
    let answer = gateway
        .upstream(Service::Order)
        .call_with(Method::POST, "/orders", Some(Bytes::from(body)), request_id, &forwarded, timeout)
        .await
        .map_err(|err| call_failed(Service::Order, err))?;
    // The order service's own refusals (409, 422) and failures pass
    // through; any other answer breaks its contract.
    let refused = matches!(answer.status, StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY);
    if refused || answer.status.is_server_error() {
        return Ok(pass_through(answer));
    }
    if answer.status != StatusCode::ACCEPTED {
        return Err(bad_gateway(Service::Order, format!("POST /orders answered {}", answer.status)));
    }
    let accepted: Accepted = serde_json::from_slice(&answer.body).map_err(|err| bad_gateway(Service::Order, err))?;
    let location = HeaderValue::from_str(&format!("/api/orders/{}", accepted.id)).map_err(ApiError::internal)?;
    let mut response = pass_through(answer);
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

#[utoipa::path(
    get, path = "/api/orders/{id}/details", tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "The order's id.")),
    responses(
        (status = 200, description = "The order with its customer, products, payment and shipment. A part that \
            failed or timed out is `null` and named in `partial`; a payment or shipment that does not exist yet is \
            `null` without being partial.", body = OrderDetails),
        (status = 404, description = "No such order.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn order_details(
    State(gateway): State<Gateway>,
    id: MaybeRequestId,
    PathId(order_id): PathId,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let request_id = request_id(&id);
    let order_path = format!("/orders/{order_id}");
    let order =
        essential::<OrderView>(&gateway, Service::Order, &order_path, request_id, gateway.call_timeout()).await?;
    let Some(order) = order else {
        return Err(ApiError::not_found(format!("no order with id {order_id}")));
    };

    // Every part gets the same deadline, and every call in it the time left.
    let deadline = Instant::now() + gateway.compose_timeout();
    let customer_path = format!("/customers/{}", order.customer_id);
    let payment_path = format!("/payments/{}", order.id);
    let shipment_path = format!("/shipments/{}", order.id);
    let mut skus: Vec<&str> = Vec::new();
    for line in &order.items {
        if !skus.contains(&line.sku.as_str()) {
            skus.push(&line.sku);
        }
    }
    let product_paths: Vec<String> = skus.iter().map(|sku| format!("/products/{}", encode_segment(sku))).collect();
    let lookups: Vec<_> = product_paths
        .iter()
        .map(|path| optional::<Product>(&gateway, Service::Catalog, path, request_id, deadline))
        .collect();
    let products = async {
        let fetched = stream::iter(lookups).buffered(MAX_PARALLEL_LOOKUPS).collect::<Vec<_>>().await;
        // A product of an existing order that the catalog does not know is a failure too.
        fetched.into_iter().map(|product| product?.ok_or(())).collect::<Result<Vec<_>, ()>>()
    };
    let (customer, products, payment, shipment) = tokio::join!(
        optional::<Customer>(&gateway, Service::Customer, &customer_path, request_id, deadline),
        products,
        optional::<Payment>(&gateway, Service::Payment, &payment_path, request_id, deadline),
        optional::<Shipment>(&gateway, Service::Shipping, &shipment_path, request_id, deadline),
    );

    let mut partial = Vec::new();
    let customer = part(&mut partial, Part::Customer, customer);
    let products = part(&mut partial, Part::Products, products.map(Some));
    let payment = part(&mut partial, Part::Payment, payment);
    let shipment = part(&mut partial, Part::Shipment, shipment);
    Ok(Json(OrderDetails { order, customer, products, payment, shipment, partial }).into_response())
}

/// The part's value, or `None` with the part named in `partial`.
fn part<T>(partial: &mut Vec<Part>, name: Part, fetched: Result<Option<T>, ()>) -> Option<T> {
    fetched.unwrap_or_else(|()| {
        partial.push(name);
        None
    })
}

#[cfg(test)]
mod tests {
    use contracts::Quantity;
    use uuid::Uuid;

    use super::*;

    fn order(items: &[(&str, i64)]) -> CreateOrder {
        CreateOrder {
            customer_id: Uuid::now_v7(),
            items: items.iter().map(|(sku, quantity)| Quantity { sku: (*sku).into(), quantity: *quantity }).collect(),
        }
    }

    fn fields(problem: &ApiError) -> Vec<&str> {
        problem.errors().iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn duplicate_skus_merge_into_one_line_in_first_seen_order() {
        let lines = lines(&order(&[("B", 1), ("A", 2), ("B", 3)])).unwrap();
        let merged: Vec<_> = lines.iter().map(|l| (l.sku.as_str(), l.quantity, l.items.clone())).collect();
        assert_eq!(merged, [("B", 4, vec![0, 2]), ("A", 2, vec![1])]);
    }

    #[test]
    fn every_broken_rule_is_named() {
        let problem = lines(&order(&[("A", 0), (" ", 1), ("", -2)])).unwrap_err();
        assert_eq!(fields(&problem), ["items[0].quantity", "items[1].sku", "items[2].sku", "items[2].quantity"]);
        assert_eq!(fields(&lines(&order(&[])).unwrap_err()), ["items"]);
        let many: Vec<(&str, i64)> = (0..=MAX_ITEMS).map(|_| ("A", 1)).collect();
        assert_eq!(fields(&lines(&order(&many)).unwrap_err()), ["items"]);
        let most: Vec<(&str, i64)> = (0..MAX_ITEMS).map(|_| ("A", 1)).collect();
        assert!(lines(&order(&most)).is_ok());
    }

    #[test]
    fn quantities_beyond_what_the_inventory_holds_are_refused() {
        let problem = lines(&order(&[("A", i64::MAX), ("A", 1)])).unwrap_err();
        assert_eq!(fields(&problem), ["items[0].quantity"], "more than the inventory holds of one sku");
        let problem = lines(&order(&[("A", MAX_QUANTITY), ("A", 1)])).unwrap_err();
        assert_eq!(fields(&problem), ["items[1].quantity"]);
        assert!(lines(&order(&[("A", MAX_QUANTITY - 1), ("A", 1)])).is_ok());
    }
}
