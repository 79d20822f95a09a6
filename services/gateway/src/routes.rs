//! The route table and the plain routes.
//!
//! [`endpoints`] is the one list of what the gateway serves: [`crate::router`]
//! registers it and [`crate::routes`] publishes it, so a test can hold the
//! OpenAPI document against exactly what is served.
//!
//! A plain route forwards its path with `/api` cut off (so `/api/products/x`
//! becomes the catalog's `/products/x`, percent-encoding and query kept) and
//! answers with the service's status, content type and body. A body is
//! checked to be JSON first (415, 400 and 413 come from the gateway), then
//! sent byte for byte: its shape is the service's to judge.
//!
//! What every route shares is checked before any call, with the services'
//! own rules: an `{id}` is a UUID in its canonical form
//! (`polis_runtime::PathId`, else 400), a query parameter the route does
//! not read is refused (`polis_runtime::NoQuery`, else 400 naming it), a
//! list's `limit` and `after` follow `polis_runtime::Page` (else 422; the
//! page is forwarded as `?limit=N&after=KEY`), a sku being stocked follows
//! the catalog's rule (else 422).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use contracts::catalog::{Product, SKU_FORM, UpdateProduct, is_sku};
use contracts::customer::{Customer, RegisterCustomer, UpdateCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, IDEMPOTENT_REPLAYED, MAX_WAIT_MS, OrderEvent, OrderView};
use polis_runtime::{ApiError, Json, NoQuery, Page, PathId, PathText, RequestId};
use serde_json::value::RawValue;

use crate::openapi::{EventPage, OrderWait, Problem, ProductPage, SkuPath};
use crate::upstream::{UpstreamError, UpstreamResponse, Upstreams};
use crate::{GatewayConfig, Upstream};
use crate::{admin, compose, dashboard};
use contracts::Service;

/// The router's state: cheap to clone.
#[derive(Clone)]
pub(crate) struct Gateway(Arc<Inner>);

struct Inner {
    upstreams: Upstreams,
    /// What [`Gateway::upstream`] answers for a service without an upstream.
    nowhere: Upstream,
    call_timeout: Duration,
    compose_timeout: Duration,
    /// The serialized OpenAPI document, or why it could not be serialized.
    openapi: Result<Bytes, Arc<String>>,
}

impl Gateway {
    pub(crate) fn new(upstreams: Upstreams, config: GatewayConfig, openapi: Result<Bytes, Arc<String>>) -> Self {
        Self(Arc::new(Inner {
            upstreams,
            nowhere: Upstream::local(
                axum::Router::new().fallback(|| async {
                    ApiError::service_unavailable("the gateway has no upstream for this service")
                }),
            ),
            call_timeout: config.call_timeout(),
            compose_timeout: config.compose_timeout(),
            openapi,
        }))
    }

    /// The upstream of `service`. Every route calls a business service, and
    /// [`Upstreams`] has one for each; the gateway itself has none, and a
    /// call to it would answer 503.
    pub(crate) fn upstream(&self, service: Service) -> &Upstream {
        self.0.upstreams.get(service).unwrap_or(&self.0.nowhere)
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.0.call_timeout
    }

    pub(crate) fn compose_timeout(&self) -> Duration {
        self.0.compose_timeout
    }
}

/// One served route.
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) handler: MethodRouter<Gateway>,
}

/// Every route the gateway serves. Paths registered twice with different
/// methods are merged by axum into one method router.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint(Method::POST, "/api/customers", on(MethodFilter::POST, register_customer)),
        endpoint(Method::GET, "/api/customers/{id}", on(MethodFilter::GET, get_customer)),
        endpoint(Method::PUT, "/api/customers/{id}", on(MethodFilter::PUT, update_customer)),
        endpoint(Method::GET, "/api/customers/{id}/orders", on(MethodFilter::GET, compose::customer_orders)),
        endpoint(Method::POST, "/api/products", on(MethodFilter::POST, add_product)),
        endpoint(Method::GET, "/api/products", on(MethodFilter::GET, list_products)),
        endpoint(Method::GET, "/api/products/{sku}", on(MethodFilter::GET, get_product)),
        endpoint(Method::PATCH, "/api/products/{sku}", on(MethodFilter::PATCH, update_product)),
        endpoint(Method::PUT, "/api/inventory/{sku}", on(MethodFilter::PUT, set_stock)),
        endpoint(Method::GET, "/api/inventory/{sku}", on(MethodFilter::GET, get_stock)),
        endpoint(Method::POST, "/api/orders", on(MethodFilter::POST, compose::create_order)),
        endpoint(Method::GET, "/api/orders/{id}", on(MethodFilter::GET, get_order)),
        endpoint(Method::POST, "/api/orders/{id}/cancel", on(MethodFilter::POST, cancel_order)),
        endpoint(Method::GET, "/api/orders/{id}/details", on(MethodFilter::GET, compose::order_details)),
        endpoint(Method::GET, "/api/orders/{id}/events", on(MethodFilter::GET, order_events)),
        endpoint(Method::GET, "/api/admin/dead-letters", on(MethodFilter::GET, admin::list_dead_letters)),
        endpoint(Method::GET, "/api/admin/dead-letters/{id}", on(MethodFilter::GET, admin::get_dead_letter)),
        endpoint(
            Method::POST,
            "/api/admin/dead-letters/{id}/replay",
            on(MethodFilter::POST, admin::replay_dead_letter),
        ),
        endpoint(
            Method::POST,
            "/api/admin/dead-letters/{id}/discard",
            on(MethodFilter::POST, admin::discard_dead_letter),
        ),
        endpoint(Method::GET, "/api/admin/sagas", on(MethodFilter::GET, admin::list_sagas)),
        endpoint(Method::GET, "/api/admin/sagas/in-flight", on(MethodFilter::GET, admin::sagas_in_flight)),
        endpoint(Method::GET, "/api/admin/events/{stream}", on(MethodFilter::GET, admin::stream_events)),
        endpoint(Method::GET, "/api/openapi.json", on(MethodFilter::GET, openapi_document)),
        endpoint(Method::GET, polis_runtime::ready::READY_PATH, on(MethodFilter::GET, crate::ready::readyz)),
        endpoint(Method::GET, "/api/audit", on(MethodFilter::GET, last_audit)),
        endpoint(Method::POST, "/api/audit/runs", on(MethodFilter::POST, run_audit)),
        endpoint(Method::GET, "/api/dashboard", on(MethodFilter::GET, dashboard::snapshot)),
        endpoint(Method::GET, "/api/dashboard/stream", on(MethodFilter::GET, dashboard::stream)),
        endpoint(Method::GET, "/dashboard", on(MethodFilter::GET, dashboard::page)),
    ]
}

fn endpoint(method: Method, path: &'static str, handler: MethodRouter<Gateway>) -> Endpoint {
    Endpoint { method, path, handler }
}

/// The request id the standard stack assigned, if the router runs behind it.
pub(crate) type MaybeRequestId = Option<Extension<RequestId>>;

pub(crate) fn request_id(id: &MaybeRequestId) -> Option<&RequestId> {
    id.as_ref().map(|Extension(id)| id)
}

/// A JSON request body, kept as sent.
type RawJson = Json<Box<RawValue>>;

#[utoipa::path(
    post, path = "/api/customers", tag = "customers",
    request_body = RegisterCustomer,
    responses(
        (status = 201, description = "The customer is registered.", body = Customer,
            headers(("location" = String, description = "`/api/customers/{id}`"))),
        (status = 409, description = "A customer with this email exists.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register_customer(
    State(gateway): State<Gateway>,
    uri: Uri,
    id: MaybeRequestId,
    _: NoQuery,
    Json(body): RawJson,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Customer, Method::POST, &uri, Some(raw_bytes(&body)), request_id(&id)).await
}

#[utoipa::path(
    get, path = "/api/customers/{id}", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "The customer's id.")),
    responses(
        (status = 200, description = "The customer.", body = Customer),
        (status = 404, description = "No such customer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_customer(
    State(gateway): State<Gateway>,
    _: PathId,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Customer, Method::GET, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    put, path = "/api/customers/{id}", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "The customer's id.")),
    request_body(content = UpdateCustomer, description = "The fields to change; what is left out stays. A change \
        is announced (`CustomerUpdated`): payment's and shipping's replicas follow it, and the order-history view \
        shows the new name and email on every order of the customer."),
    responses(
        (status = 200, description = "The customer as it now is.", body = Customer),
        (status = 404, description = "No such customer.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another customer has this email.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_customer(
    State(gateway): State<Gateway>,
    _: PathId,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
    Json(body): RawJson,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Customer, Method::PUT, &uri, Some(raw_bytes(&body)), request_id(&id)).await
}

#[utoipa::path(
    post, path = "/api/products", tag = "catalog",
    request_body = Product,
    responses(
        (status = 201, description = "The product is added.", body = Product,
            headers(("location" = String, description = "`/api/products/{sku}`"))),
        (status = 409, description = "A product with this sku exists.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn add_product(
    State(gateway): State<Gateway>,
    uri: Uri,
    id: MaybeRequestId,
    _: NoQuery,
    Json(body): RawJson,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Catalog, Method::POST, &uri, Some(raw_bytes(&body)), request_id(&id)).await
}

#[utoipa::path(
    get, path = "/api/products", tag = "catalog",
    params(ProductPage),
    responses(
        (status = 200, description = "A page of products, by sku (byte order). A page shorter than `limit` is the \
            last one.", body = Vec<Product>),
        (status = 422, description = PAGE_422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_products(
    State(gateway): State<Gateway>,
    id: MaybeRequestId,
    page: Page<String>,
) -> Result<Response, ApiError> {
    let path = format!("/products?{}", page.query());
    let answer = gateway
        .upstream(Service::Catalog)
        .call(Method::GET, &path, None, request_id(&id), gateway.call_timeout())
        .await
        .map_err(|err| call_failed(Service::Catalog, err))?;
    Ok(pass_through(answer))
}

/// How a list's 422 is described.
pub(crate) const PAGE_422: &str = "`limit` or `after` is invalid; `errors` names the parameter.";

#[utoipa::path(
    get, path = "/api/products/{sku}", tag = "catalog",
    params(SkuPath),
    responses(
        (status = 200, description = "The product.", body = Product),
        (status = 404, description = "No such product.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_product(
    State(gateway): State<Gateway>,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Catalog, Method::GET, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    patch, path = "/api/products/{sku}", tag = "catalog",
    params(SkuPath),
    request_body(content = UpdateProduct, description = "A new name, a new price, or both; what is left out stays. \
        Each change is announced (`ProductRenamed`, `PriceChanged`), and the order-history view shows the new name \
        on every order with the product."),
    responses(
        (status = 200, description = "The product as it now is.", body = Product),
        (status = 404, description = "No such product.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_product(
    State(gateway): State<Gateway>,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
    Json(body): RawJson,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Catalog, Method::PATCH, &uri, Some(raw_bytes(&body)), request_id(&id)).await
}

#[utoipa::path(
    put, path = "/api/inventory/{sku}", tag = "inventory",
    params(SkuPath),
    request_body(content = SetStock, description = "The quantity available for sale; reservations are kept."),
    responses(
        (status = 200, description = "The sku's stock level.", body = StockLevel),
        (status = 422, description = "The sku (`sku`) or a field of the body is invalid; `errors` names each one.",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_stock(
    State(gateway): State<Gateway>,
    uri: Uri,
    id: MaybeRequestId,
    PathText(sku): PathText,
    _: NoQuery,
    Json(body): RawJson,
) -> Result<Response, ApiError> {
    // The catalog's rule, checked before the call: stock for what can never
    // be a product is refused here as the inventory would refuse it.
    if !is_sku(&sku) {
        return Err(ApiError::validation("sku", SKU_FORM));
    }
    forward(&gateway, Service::Inventory, Method::PUT, &uri, Some(raw_bytes(&body)), request_id(&id)).await
}

#[utoipa::path(
    get, path = "/api/inventory/{sku}", tag = "inventory",
    params(SkuPath),
    responses(
        (status = 200, description = "The sku's stock level.", body = StockLevel),
        (status = 404, description = "No stock was ever set for this sku.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_stock(
    State(gateway): State<Gateway>,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Inventory, Method::GET, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    get, path = "/api/orders/{id}", tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "The order's id."), OrderWait),
    responses(
        (status = 200, description = "The order (as it was, with `version` or `as_of`: from its event stream); \
            `reason` only when it is REJECTED.", body = OrderView),
        (status = 404, description = "No such order; or it had no such version, or did not exist at `as_of`.",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`wait_ms`, `version` or `as_of` is invalid, or more than one of them is \
            given; `errors` names it.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_order(
    State(gateway): State<Gateway>,
    _: PathId,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    polis_runtime::query::refuse_unknown(uri.query(), &contracts::order::ORDER_PARAMETERS)?;
    // A read that waits for the decision may take that long on top of the
    // call. The value is the order service's to judge (422); one it refuses
    // waits for nothing.
    let wait = polis_runtime::query::pairs(uri.query())
        .find_map(|(name, value)| (name == WAIT_PARAM).then_some(value))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.min(MAX_WAIT_MS)));
    let timeout = gateway.call_timeout() + wait;
    forward_within(&gateway, Service::Order, Method::GET, &uri, None, request_id(&id), timeout).await
}

/// The query parameter of `GET /api/orders/{id}` that waits.
pub(crate) const WAIT_PARAM: &str = "wait_ms";

#[utoipa::path(
    get, path = "/api/orders/{id}/events", tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "The order's id."), EventPage),
    responses(
        (status = 200, description = "A page of the order's events in stream order: its audit trail, from the \
            order service's event store. A page shorter than `limit` is the last one.", body = Vec<OrderEvent>),
        (status = 404, description = "No such order.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = PAGE_422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn order_events(
    State(gateway): State<Gateway>,
    _: PathId,
    page: Page<u64>,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    let _ = page; // checked here, before the call; the order service reads it again
    forward(&gateway, Service::Order, Method::GET, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "The order's id.")),
    responses(
        (status = 202, description = "The cancellation started; the order is CANCEL_PENDING.", body = Accepted),
        (status = 404, description = "No such order.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Only an APPROVED order can be cancelled; `current_status` says what it is.",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn cancel_order(
    State(gateway): State<Gateway>,
    _: PathId,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Order, Method::POST, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_document(State(gateway): State<Gateway>, _: NoQuery) -> Result<Response, ApiError> {
    match &gateway.0.openapi {
        Ok(document) => {
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document.clone())
                .into_response())
        }
        Err(reason) => Err(ApiError::internal(format!("cannot serialize the openapi document: {reason}"))),
    }
}

fn raw_bytes(body: &RawValue) -> Bytes {
    Bytes::copy_from_slice(body.get().as_bytes())
}

/// Calls `service` on the request's own path without `/api`, and answers
/// with what it answered.
/// How long an audit pass may take: it reads every service's admin lists.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(120);

#[utoipa::path(
    get, path = "/api/audit", tag = "operations",
    responses(
        (status = 200, description = "The audit service's last pass: each rule's part, the findings still within \
            their settle time by kind, and the drifts (kind, subject, detail, since when, what was done about it).",
            body = Object),
        (status = 503, description = "The first pass has not finished yet.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn last_audit(
    State(gateway): State<Gateway>,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward(&gateway, Service::Audit, Method::GET, &uri, None, request_id(&id)).await
}

#[utoipa::path(
    post, path = "/api/audit/runs", tag = "operations",
    responses(
        (status = 200, description = "A pass of the audit run now, as `GET /api/audit` shows it; repairs due \
            are sent.", body = Object),
    )
)]
pub(crate) async fn run_audit(
    State(gateway): State<Gateway>,
    _: NoQuery,
    uri: Uri,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    forward_within(&gateway, Service::Audit, Method::POST, &uri, None, request_id(&id), AUDIT_TIMEOUT).await
}

async fn forward(
    gateway: &Gateway,
    service: Service,
    method: Method,
    uri: &Uri,
    body: Option<Bytes>,
    request_id: Option<&RequestId>,
) -> Result<Response, ApiError> {
    forward_within(gateway, service, method, uri, body, request_id, gateway.call_timeout()).await
}

/// [`forward`], the call bounded by `timeout`.
async fn forward_within(
    gateway: &Gateway,
    service: Service,
    method: Method,
    uri: &Uri,
    body: Option<Bytes>,
    request_id: Option<&RequestId>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let path = upstream_path(uri)?;
    let answer = gateway
        .upstream(service)
        .call(method, &path, body, request_id, timeout)
        .await
        .map_err(|err| call_failed(service, err))?;
    Ok(pass_through(answer))
}

/// `/api/x/y?q` → `/x/y?q`, still percent-encoded as the client sent it.
fn upstream_path(uri: &Uri) -> Result<String, ApiError> {
    let path = uri
        .path()
        .strip_prefix("/api")
        .filter(|rest| rest.starts_with('/'))
        .ok_or_else(|| ApiError::internal(format!("gateway route {} is not under /api", uri.path())))?;
    Ok(match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    })
}

/// The service's answer as the client's: status, content type, body, and a
/// `location` moved under `/api` (a service names its own paths; only the
/// gateway's are public).
pub(crate) fn pass_through(answer: UpstreamResponse) -> Response {
    let mut response = (answer.status, answer.body).into_response();
    let headers = response.headers_mut();
    match answer.content_type {
        Some(content_type) => {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        None => {
            headers.remove(header::CONTENT_TYPE);
        }
    }
    if let Some(location) = answer.location.as_ref().and_then(public_location) {
        headers.insert(header::LOCATION, location);
    }
    if answer.replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// `/orders/1` → `/api/orders/1`. Anything else (an absolute URL naming an
/// internal host) is dropped rather than leaked.
fn public_location(location: &HeaderValue) -> Option<HeaderValue> {
    let path = location.to_str().ok()?;
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    HeaderValue::from_str(&format!("/api{path}")).ok()
}

/// A call that got no answer, as the client's problem.
pub(crate) fn call_failed(service: Service, err: UpstreamError) -> ApiError {
    match err {
        UpstreamError::Timeout(timeout) => {
            ApiError::gateway_timeout(format!("the {service} service did not answer within {} ms", timeout.as_millis()))
        }
        err @ UpstreamError::Unavailable(_) => {
            ApiError::service_unavailable(format!("the {service} service is unavailable; retry later")).with_cause(err)
        }
        err @ UpstreamError::ResponseTooLarge { .. } => bad_gateway(service, err),
        err => ApiError::internal(err),
    }
}

/// 502: the service answered, but not as its contract says.
pub(crate) fn bad_gateway(service: Service, cause: impl Into<crate::upstream::BoxError>) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway")
        .with_detail(format!("the {service} service gave an unexpected answer"))
        .with_cause(cause)
}

/// 503 for a service that answered with a server error where the gateway
/// needed an answer to go on.
pub(crate) fn service_failed(service: Service, status: StatusCode) -> ApiError {
    ApiError::service_unavailable(format!("the {service} service failed; retry later"))
        .with_cause(format!("the {service} service answered {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths_drop_the_api_prefix_and_keep_encoding_and_query() {
        let path = |uri: &str| upstream_path(&uri.parse::<Uri>().unwrap()).unwrap();
        assert_eq!(path("/api/products/A%2FB"), "/products/A%2FB");
        assert_eq!(path("/api/products?limit=5"), "/products?limit=5");
        assert!(upstream_path(&"/apix".parse::<Uri>().unwrap()).is_err());
    }

    #[test]
    fn locations_move_under_api_and_absolute_ones_are_dropped() {
        let location = |value: &'static str| public_location(&HeaderValue::from_static(value));
        assert_eq!(location("/orders/1"), Some(HeaderValue::from_static("/api/orders/1")));
        assert_eq!(location("http://10.0.0.7:8086/orders/1"), None);
        assert_eq!(location("//evil/orders/1"), None);
    }
}
