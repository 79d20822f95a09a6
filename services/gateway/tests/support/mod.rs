//! Stand-ins for the six services, and a gateway in front of them.
//!
//! Each fake is a small axum router that imitates its service's paths and
//! bodies (the contracts' types) over a fixed data set, behind the standard
//! stack like a real service, and records every request it receives. The
//! gateway's job is routing and composition; the real services are tested
//! in their own crates and end to end by the lead.

// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing;
pub use contracts::Service;
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, OrderStatus, OrderView, PlaceOrder};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, OrderLine};
use gateway::{GatewayConfig, Upstream, Upstreams};
use http_body_util::BodyExt;
use polis_runtime::{ApiError, HttpOptions, Json, Page, with_standard_stack};
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

/// The customer every fake knows.
pub const CUSTOMER: &str = "0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70";
/// An approved order of [`CUSTOMER`] with lines A-1 ×2, B-2 ×1, A-1 ×1, a
/// payment and a shipment.
pub const ORDER: &str = "0190a4b2-7d5e-7c3a-9f1e-000000000001";
/// A pending order of [`CUSTOMER`]: no payment or shipment yet.
pub const NEW_ORDER: &str = "0190a4b2-7d5e-7c3a-9f1e-000000000002";
/// The id the fake order service gives every order it places.
pub const PLACED: &str = "0190a4b2-7d5e-7c3a-9f1e-0000000000ff";
/// The id the fake customer service gives every customer it registers.
pub const REGISTERED: &str = "0190a4b2-7d5e-7c3a-9f1e-0000000000ee";

/// One request a fake service received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub service: &'static str,
    pub method: Method,
    /// Path and query, as received (still percent-encoded).
    pub target: String,
    pub request_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// What the fakes received, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// `"service METHOD target"` per request, sorted: parallel calls
    /// arrive in any order.
    pub fn calls(&self) -> Vec<String> {
        let mut calls: Vec<String> =
            self.seen().iter().map(|s| format!("{} {} {}", s.service, s.method, s.target)).collect();
        calls.sort();
        calls
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

async fn record(State((service, recorder)): State<(&'static str, Recorder)>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    recorder.0.lock().unwrap().push(Seen {
        service,
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        request_id: header("x-request-id"),
        content_type: header("content-type"),
        body: body.clone(),
    });
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// A fake as a real service is hosted: behind the standard stack, plus the recorder.
fn hosted(service: &'static str, router: Router, recorder: &Recorder) -> Router {
    with_standard_stack(router, &HttpOptions::default())
        .layer(middleware::from_fn_with_state((service, recorder.clone()), record))
}

pub fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

pub fn customer() -> Customer {
    Customer {
        id: id(CUSTOMER),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        address: Address {
            line1: "1 Main St".into(),
            city: "Lyon".into(),
            postal_code: "69001".into(),
            country: "FR".into(),
        },
        credit_limit: 100_000,
    }
}

/// The catalog: A-1 at 250, B-2 at 1000, and `X/1 é` at 5 (a sku that needs encoding).
pub fn products() -> Vec<Product> {
    vec![
        Product { sku: "A-1".into(), name: "Anvil".into(), price: 250 },
        Product { sku: "B-2".into(), name: "Bucket".into(), price: 1000 },
        Product { sku: "X/1 é".into(), name: "Odd".into(), price: 5 },
    ]
}

pub fn order(order_id: &str) -> Option<OrderView> {
    let line = |sku: &str, quantity, unit_price| OrderLine { sku: sku.into(), quantity, unit_price };
    let (status, items) = match order_id {
        ORDER => (OrderStatus::Approved, vec![line("A-1", 2, 250), line("B-2", 1, 1000), line("A-1", 1, 250)]),
        NEW_ORDER => (OrderStatus::Pending, vec![line("B-2", 3, 1000)]),
        _ => return None,
    };
    let total = items.iter().map(|l| l.quantity * l.unit_price).sum();
    Some(OrderView {
        id: id(order_id),
        customer_id: id(CUSTOMER),
        status,
        reason: None,
        items,
        total,
        created_at: "2026-11-22T10:00:00.000000Z".into(),
        updated_at: "2026-11-22T10:00:01.000000Z".into(),
    })
}

pub fn payment() -> Payment {
    Payment {
        order_id: id(ORDER),
        customer_id: Some(id(CUSTOMER)),
        amount: 1750,
        status: PaymentStatus::Captured,
        reason: None,
    }
}

pub fn shipment() -> Shipment {
    Shipment {
        id: id("0190a4b2-7d5e-7c3a-9f1e-0000000000aa"),
        order_id: id(ORDER),
        status: ShipmentStatus::Scheduled,
        address: Some(customer().address),
        reason: None,
    }
}

fn customer_service() -> Router {
    async fn register(Json(body): Json<RegisterCustomer>) -> Response {
        let customer = Customer {
            id: id(REGISTERED),
            name: body.name,
            email: body.email,
            address: body.address,
            credit_limit: body.credit_limit,
        };
        (StatusCode::CREATED, [(header::LOCATION, format!("/customers/{REGISTERED}"))], Json(customer)).into_response()
    }
    async fn fetch(Path(customer_id): Path<String>) -> Result<Json<Customer>, ApiError> {
        if customer_id == CUSTOMER {
            Ok(Json(customer()))
        } else {
            Err(ApiError::not_found(format!("no customer with id {customer_id}")))
        }
    }
    async fn update(
        Path(customer_id): Path<String>,
        Json(change): Json<contracts::customer::UpdateCustomer>,
    ) -> Result<Json<Customer>, ApiError> {
        let Json(mut customer) = fetch(Path(customer_id)).await?;
        customer.name = change.name.unwrap_or(customer.name);
        Ok(Json(customer))
    }
    Router::new()
        .route("/customers", routing::post(register).get(|| async { Json(vec![customer()]) }))
        .route("/customers/{id}", routing::get(fetch).put(update))
}

fn catalog_service() -> Router {
    async fn add(Json(product): Json<Product>) -> Response {
        let location = format!("/products/{}", product.sku);
        (StatusCode::CREATED, [(header::LOCATION, location)], Json(product)).into_response()
    }
    async fn fetch(Path(sku): Path<String>) -> Result<Json<Product>, ApiError> {
        products()
            .into_iter()
            .find(|p| p.sku == sku)
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("no product with sku `{sku}`")))
    }
    /// A page by sku, as the catalog lists.
    async fn list(page: Page<String>) -> Json<Vec<Product>> {
        Json(products().into_iter().filter(|p| p.sku > page.after_key()).take(page.limit).collect())
    }
    async fn update(
        Path(sku): Path<String>,
        Json(change): Json<contracts::catalog::UpdateProduct>,
    ) -> Result<Json<Product>, ApiError> {
        let Json(mut product) = fetch(Path(sku)).await?;
        product.name = change.name.unwrap_or(product.name);
        product.price = change.price.unwrap_or(product.price);
        Ok(Json(product))
    }
    Router::new()
        .route("/products", routing::post(add).get(list))
        .route("/products/{sku}", routing::get(fetch).patch(update))
}

fn inventory_service() -> Router {
    async fn set(Path(sku): Path<String>, Json(body): Json<SetStock>) -> Result<Json<StockLevel>, ApiError> {
        if body.available < 0 {
            return Err(ApiError::validation("available", "must be between 0 and 1000000000000"));
        }
        Ok(Json(StockLevel { sku, available: body.available, reserved: 2 }))
    }
    async fn fetch(Path(sku): Path<String>) -> Result<Json<StockLevel>, ApiError> {
        if sku == "A-1" {
            Ok(Json(StockLevel { sku, available: 7, reserved: 2 }))
        } else {
            Err(ApiError::not_found(format!("no stock for sku `{sku}`")))
        }
    }
    Router::new().route("/inventory/{sku}", routing::put(set).get(fetch))
}

fn payment_service() -> Router {
    async fn fetch(Path(order_id): Path<String>) -> Result<Json<Payment>, ApiError> {
        if order_id == ORDER { Ok(Json(payment())) } else { Err(ApiError::not_found("no payment for this order")) }
    }
    Router::new().route("/payments/{order_id}", routing::get(fetch))
}

fn shipping_service() -> Router {
    async fn fetch(Path(order_id): Path<String>) -> Result<Json<Shipment>, ApiError> {
        if order_id == ORDER { Ok(Json(shipment())) } else { Err(ApiError::not_found("no shipment for this order")) }
    }
    Router::new().route("/shipments/{order_id}", routing::get(fetch))
}

fn order_service() -> Router {
    async fn place(Json(_body): Json<PlaceOrder>) -> Response {
        let accepted = Accepted { id: id(PLACED), status: OrderStatus::Pending };
        (StatusCode::ACCEPTED, [(header::LOCATION, format!("/orders/{PLACED}"))], Json(accepted)).into_response()
    }
    async fn fetch(Path(order_id): Path<String>) -> Result<Json<OrderView>, ApiError> {
        order(&order_id).map(Json).ok_or_else(|| ApiError::not_found("no such order"))
    }
    async fn cancel(Path(order_id): Path<String>) -> Result<Response, ApiError> {
        match order(&order_id) {
            Some(order) if order.status == OrderStatus::Approved => {
                Ok((StatusCode::ACCEPTED, Json(Accepted { id: order.id, status: OrderStatus::CancelPending }))
                    .into_response())
            }
            Some(order) => Err(ApiError::conflict("the order is PENDING; only an APPROVED order can be cancelled")
                .with_extension("current_status", order.status.as_str())),
            None => Err(ApiError::not_found("no such order")),
        }
    }
    /// A page by order id, as the order service lists.
    async fn for_customer(Path(customer_id): Path<String>, page: Page) -> Json<Vec<OrderView>> {
        let orders = [ORDER, NEW_ORDER]
            .iter()
            .filter_map(|o| order(o))
            .filter(|o| o.customer_id.to_string() == customer_id && o.id > page.after_key());
        Json(orders.take(page.limit).collect())
    }
    Router::new()
        .route("/orders", routing::post(place))
        .route("/orders/{id}", routing::get(fetch))
        .route("/orders/{id}/cancel", routing::post(cancel))
        .route("/orders/{id}/events", routing::get(|| async { Json(Vec::<contracts::order::OrderEvent>::new()) }))
        .route("/customers/{id}/orders", routing::get(for_customer))
}

/// A customer's orders as the order-history view shows them.
pub fn history(order_id: &str) -> Option<contracts::order_history::HistoryOrder> {
    let order = order(order_id)?;
    let items = order
        .items
        .iter()
        .map(|l| contracts::order_history::HistoryItem {
            sku: l.sku.clone(),
            product_name: Some(format!("Product {}", l.sku)),
            quantity: l.quantity,
            unit_price: l.unit_price,
        })
        .collect();
    Some(contracts::order_history::HistoryOrder {
        id: order.id,
        customer_id: order.customer_id,
        status: order.status,
        reason: order.reason,
        items,
        total: order.total,
        customer_name: Some("Ann".into()),
        customer_email: Some("ann@example.com".into()),
        payment_status: None,
        shipment_status: None,
        placed_at: order.created_at,
        updated_at: order.updated_at,
    })
}

/// The audit service: a report with no drift, the same on both routes.
fn audit_service() -> Router {
    let report = || async {
        Json(serde_json::json!({ "at": "2026-12-06T05:00:00Z", "rules": [], "suspected": {}, "drifts": [] }))
    };
    Router::new().route("/audit", axum::routing::get(report)).route("/audit/runs", axum::routing::post(report))
}

fn order_history_service() -> Router {
    /// A page by order id, as the view lists, with its freshness.
    async fn for_customer(
        Path(customer_id): Path<String>,
        axum::extract::RawQuery(query): axum::extract::RawQuery,
    ) -> Result<Json<contracts::order_history::CustomerOrders>, ApiError> {
        let (_, paging) = contracts::order_history::ViewQuery::parse(query.as_deref())
            .map_err(|e| ApiError::bad_request(format!("{e:?}")))?;
        let page = Page::<uuid::Uuid>::from_query(Some(&paging.join("&")))?;
        let orders = [ORDER, NEW_ORDER]
            .iter()
            .filter_map(|o| history(o))
            .filter(|o| o.customer_id.to_string() == customer_id && o.id > page.after_key())
            .take(page.limit)
            .collect();
        let freshness =
            contracts::order_history::Freshness { position: 7, applied_at: None, sources: Default::default() };
        Ok(Json(contracts::order_history::CustomerOrders { orders, freshness }))
    }
    Router::new().route("/customers/{id}/orders", routing::get(for_customer))
}

/// Dead letter ids the fakes hold: payment 1 and 3, inventory 2 (id order
/// interleaves the services).
pub const LETTER_1: &str = "0190a4b2-7d5e-7c3a-9f1e-d00000000001";
pub const LETTER_2: &str = "0190a4b2-7d5e-7c3a-9f1e-d00000000002";
pub const LETTER_3: &str = "0190a4b2-7d5e-7c3a-9f1e-d00000000003";

/// The dead letters of a fake service, as `polis_runtime::admin` shows them.
fn dead_letters(service: &str) -> Vec<Value> {
    let letter = |id: &str, error: &str| {
        serde_json::json!({
            "id": id, "consumer": service, "status": "dead", "error": error, "attempts": 3,
            "failed_at": "2026-11-22T10:00:00.000000Z", "message_id": null, "key": "k", "raw": null,
            "message": { "kind": "command", "type": "x.do.v1", "source": "order", "target": service,
                "time": "2026-11-22T09:59:59.000000Z", "data": {}, "correlation_id": null, "causation_id": null },
        })
    };
    match service {
        "payment" => vec![letter(LETTER_1, "fixable"), letter(LETTER_3, "hopeless")],
        "inventory" => vec![letter(LETTER_2, "fixable")],
        _ => vec![],
    }
}

/// The sagas of a fake service, in (type, id) order.
fn sagas(service: &str) -> Vec<Value> {
    let saga = |saga_type: &str, id: &str, state: &str| {
        serde_json::json!({
            "saga_type": saga_type, "saga_id": id, "state": state, "finished": state == "approved",
            "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:01Z", "deadline": null,
        })
    };
    match service {
        "order" => vec![
            saga("create-order", "a", "approved"),
            saga("create-order", "b", "authorizing"),
            saga("create-order", "c", "authorizing"),
        ],
        "payment" => vec![saga("refund", "z", "asking")],
        _ => vec![],
    }
}

/// The admin routes of `polis_runtime::admin` over a fake's fixed data: its
/// dead letters (a fixable one replays, a hopeless one does not), its
/// sagas, and its streams (`order-1` in the order service, `customer/1` in
/// payment's and shipping's logs).
fn admin_service(service: &'static str) -> Router {
    use polis_runtime::admin::{SagaQuery, saga_cursor};
    let letters = move |page: Page| async move {
        let letters = dead_letters(service).into_iter();
        Json(letters.filter(|l| id(l["id"].as_str().unwrap()) > page.after_key()).take(page.limit).collect::<Vec<_>>())
    };
    let letter = move |polis_runtime::PathId(letter): polis_runtime::PathId| async move {
        let found = dead_letters(service).into_iter().find(|l| l["id"] == letter.to_string());
        found.map(Json).ok_or_else(|| ApiError::not_found("no such dead letter"))
    };
    let resolve = move |action: &'static str| {
        move |polis_runtime::PathId(letter): polis_runtime::PathId| async move {
            let found = dead_letters(service).into_iter().find(|l| l["id"] == letter.to_string());
            match found {
                None => Err(ApiError::not_found("no such dead letter")),
                Some(l) if l["error"] == "hopeless" && action == "replayed" => {
                    Err(ApiError::new(StatusCode::CONFLICT, "replay-failed", "Replay failed").with_detail("hopeless"))
                }
                Some(_) => Ok(Json(serde_json::json!({ "id": letter, "action": action, "parked_failed": null }))),
            }
        }
    };
    let list_sagas = move |axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
        let read = SagaQuery::from_query(query.as_deref())?;
        let after = read.after.as_ref().map(saga_cursor).unwrap_or_default();
        let sagas = sagas(service).into_iter().filter(|s| {
            let key = format!("{}:{}", s["saga_type"].as_str().unwrap(), s["saga_id"].as_str().unwrap());
            key > after && read.filter.state.as_ref().is_none_or(|state| s["state"] == state.as_str())
        });
        Ok::<_, ApiError>(Json(sagas.take(read.limit).collect::<Vec<_>>()))
    };
    let in_flight = move || async move {
        let sagas = sagas(service).into_iter().filter(|s| s["finished"] == false);
        let counts = sagas.map(|s| serde_json::json!({ "saga_type": s["saga_type"], "state": s["state"], "count": 1 }));
        Json(counts.collect::<Vec<_>>())
    };
    let events = move |polis_runtime::PathText(stream): polis_runtime::PathText, page: Page<u64>| async move {
        let holds = match stream.as_str() {
            "order-1" => service == "order",
            "customer/1" => service == "payment" || service == "shipping",
            _ => false,
        };
        if !holds {
            return Err(ApiError::not_found("no such stream"));
        }
        let event = |version: u64| {
            serde_json::json!({
                "id": Uuid::now_v7(), "version": version, "position": version + 10, "type": "x.happened.v1",
                "schema_version": 1, "time": "2026-11-22T10:00:00Z", "data": { "n": version },
                "correlation_id": null, "causation_id": null,
            })
        };
        Ok(Json((1..=3).filter(|v| *v > page.after_key()).take(page.limit).map(event).collect::<Vec<_>>()))
    };
    Router::new()
        .route("/admin/dead-letters", routing::get(letters))
        .route("/admin/dead-letters/{id}", routing::get(letter))
        .route("/admin/dead-letters/{id}/replay", routing::post(resolve("replayed")))
        .route("/admin/dead-letters/{id}/discard", routing::post(resolve("discarded")))
        .route("/admin/sagas", routing::get(list_sagas))
        .route("/admin/sagas/in-flight", routing::get(in_flight))
        .route("/admin/events/{stream}", routing::get(events))
}

/// A service that accepts every request and never answers.
pub fn silent() -> Router {
    Router::new().fallback(std::future::pending::<Response>)
}

/// A service that answers every request with a 500 problem.
pub fn failing() -> Router {
    Router::new().fallback(|| async { ApiError::internal("the fake service is broken") })
}

/// A base URL where nothing listens: a port that was free a moment ago.
pub fn nowhere() -> String {
    format!("http://127.0.0.1:{}", polis_testkit::free_port())
}

/// The six fake services and what they received.
#[derive(Debug, Clone, Default)]
pub struct Fakes {
    pub recorder: Recorder,
}

impl Fakes {
    /// The fake of `name`, recorded, as a router to host (the gateway has
    /// no fake: it is the system under test).
    pub fn router(&self, name: Service) -> Router {
        let (service, router) = match name {
            Service::Customer => ("customer", customer_service()),
            Service::Catalog => ("catalog", catalog_service()),
            Service::Inventory => ("inventory", inventory_service()),
            Service::Payment => ("payment", payment_service()),
            Service::Shipping => ("shipping", shipping_service()),
            Service::Order => ("order", order_service()),
            Service::OrderHistory => ("order-history", order_history_service()),
            Service::Audit => ("audit", audit_service()),
            Service::Gateway => ("gateway", Router::new()),
        };
        let router = if name == Service::Gateway { router } else { router.merge(admin_service(service)) };
        hosted(service, router, &self.recorder)
    }

    /// Every fake, in process.
    pub fn upstreams(&self) -> Upstreams {
        Upstreams::new(|name| Upstream::local(self.router(name)))
    }
}

/// The defaults (1000 ms per call, 300 ms per part): generous enough for a
/// loaded test machine, short enough that a silent service costs little.
pub fn config() -> GatewayConfig {
    GatewayConfig::default()
}

/// The gateway as the host serves it.
pub fn app(upstreams: Upstreams) -> Router {
    with_standard_stack(gateway::router(upstreams, config()), &HttpOptions::default())
}

/// One answer of the gateway.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub raw: Bytes,
    /// The body as JSON; `Null` if empty or not JSON.
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The problem type of an error answer.
    pub fn problem_type(&self) -> &str {
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{:?}", self.body);
        self.body["type"].as_str().unwrap()
    }

    /// The fields a 422 names, in order.
    pub fn fields(&self) -> Vec<&str> {
        assert_eq!(self.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", self.body);
        self.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect()
    }
}

/// A request to `app`, with a JSON body if given and extra headers.
pub async fn send(app: &Router, method: Method, uri: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Answer {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.into_body().collect().await.unwrap().to_bytes();
    let json = headers.get("content-type").is_some_and(|t| t.to_str().unwrap().contains("json"));
    let body = if raw.is_empty() || !json { Value::Null } else { serde_json::from_slice(&raw).unwrap() };
    Answer { status, headers, raw, body }
}

pub async fn get(app: &Router, uri: &str) -> Answer {
    send(app, Method::GET, uri, None, &[]).await
}

pub async fn post(app: &Router, uri: &str, body: &Value) -> Answer {
    send(app, Method::POST, uri, Some(body), &[]).await
}

pub fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}
