//! The OpenAPI 3.1 document of the public API, served at `GET /api/openapi.json`.
//!
//! The document tells the truth about what is served, and
//! `services/shop/tests/openapi.rs` holds it to that: it sends requests made
//! from the document's own schemas to the shop and checks every answer's
//! status and body against what the document says.
//!
//! - Each route's own answers are declared on its handler
//!   (`#[utoipa::path]`); the error answers routes share are added here,
//!   once, by `SharedErrors`: 400 (with the reasons that apply to the
//!   operation: an unknown query parameter, a body that is not JSON, an
//!   `{id}` that is not a UUID, a `{sku}` that does not decode), 408, 413,
//!   415 and 422 on a body, 500, and 502, 503 and 504 where the operation
//!   calls a service.
//! - The schemas of the bodies are the contracts' types themselves, and
//!   their constraints (lengths, patterns, bounds) are built from the same
//!   constants and rules the services check (`contracts::catalog::sku_schema`,
//!   `contracts::text::schema`, ...); so are the parameters' here
//!   (`ProductPage`, `OrderPage`, `OrderWait`, `IdempotencyKey`,
//!   `SkuPath`, and the admin routes' `DeadLetterPage`, `AdminSagaPage`,
//!   `ServiceParam`, `StreamPath`, `AdminEventPage`), from
//!   `polis_runtime::page`, `polis_saga` and the contracts.
//! - `Links` connects the operations that create or return an id to the
//!   operations that take it (OpenAPI `links`).

use contracts::catalog::{Product, UpdateProduct};
use contracts::customer::{Customer, RegisterCustomer, UpdateCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderEvent, OrderStatus, OrderView};
use contracts::order_history::{CustomerOrders, Freshness, HistoryItem, HistoryOrder};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, OrderLine, Quantity, RejectionReason};
use polis_runtime::page::{DEFAULT_LIMIT, MAX_LIMIT, MAX_TEXT_KEY_CHARS, TEXT_KEY_PATTERN};
use serde::{Deserialize, Serialize};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{Content, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::compose::{self, OrderDetails, Part};
use crate::{admin, dashboard, routes};

/// The media type of every error answer.
const PROBLEM_JSON: &str = "application/problem+json";

/// The path of this document.
pub(crate) const DOCUMENT_PATH: &str = "/api/openapi.json";

/// An RFC 9457 problem, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// The problem type, an absolute URI under `https://polis.dev/problems/`,
    /// or `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A fixed summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Every invalid field or parameter of the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemField {
    /// The field's path in the body, e.g. `items[0].quantity`, or the name
    /// of the path, query or header parameter, e.g. `id`, `limit`,
    /// `Idempotency-Key`.
    pub field: String,
    pub message: String,
}

/// The body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// The body of `GET /readyz` when ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `gateway`.
    pub service: String,
    /// Whether every check passed (always `true` in a 200).
    pub ready: bool,
    /// Each business service's readiness, by name.
    pub checks: std::collections::BTreeMap<String, ReadinessCheck>,
}

/// One check of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadinessCheck {
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One parameter of an operation.
fn parameter(
    name: &str,
    location: ParameterIn,
    required: bool,
    description: impl Into<String>,
    schema: impl Into<RefOr<Schema>>,
) -> Parameter {
    let required = if required { Required::True } else { Required::False };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(required)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// `polis_runtime::Page`'s `limit`.
fn limit() -> Parameter {
    let schema = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_LIMIT))
        .default(Some(DEFAULT_LIMIT.into()));
    let description = format!("At most this many items, from 1 to {MAX_LIMIT}; {DEFAULT_LIMIT} when absent.");
    parameter("limit", ParameterIn::Query, false, description, schema)
}

/// `?limit=N&after=SKU` of `GET /api/products` (`polis_runtime::Page<String>`).
pub(crate) struct ProductPage;

impl IntoParams for ProductPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let key = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_KEY_CHARS))
            .pattern(Some(TEXT_KEY_PATTERN));
        let after = "Only products whose sku comes after this one (byte order): the sku of the last product of the \
            previous page.";
        vec![limit(), parameter("after", ParameterIn::Query, false, after, key)]
    }
}

/// `?limit=N&after=ID&status=S&order=ID&wait_ms=N` of `GET
/// /api/customers/{id}/orders` (`polis_runtime::Page` and
/// `contracts::order_history::ViewQuery`).
pub(crate) struct OrderPage;

impl IntoParams for OrderPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let after = "Only orders whose id comes after this one: the id of the last order of the previous page.";
        let statuses = ["PENDING", "APPROVED", "REJECTED", "CANCEL_PENDING", "CANCELLED"];
        let status = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(statuses));
        let wait = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(contracts::order_history::MAX_WAIT_MS));
        vec![
            limit(),
            parameter("after", ParameterIn::Query, false, after, uuid_schema()),
            parameter("status", ParameterIn::Query, false, "Only orders in this status.", status),
            parameter(
                "order",
                ParameterIn::Query,
                false,
                "With `wait_ms`: answer once the view shows this order (say, one just placed), or after `wait_ms`.",
                uuid_schema(),
            ),
            parameter(
                "wait_ms",
                ParameterIn::Query,
                false,
                "How long to wait for `order` to show, in milliseconds (2000 when absent); without `order`, nothing \
                 is waited for.",
                wait,
            ),
        ]
    }
}

/// A UUID in its hyphenated form.
fn uuid_schema() -> Object {
    ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))).build()
}

/// `?wait_ms=N` of `GET /api/orders/{id}`.
pub(crate) struct OrderWait;

impl IntoParams for OrderWait {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(contracts::order::MAX_WAIT_MS));
        let description = "Wait up to this many milliseconds for an order not decided yet to be APPROVED, REJECTED \
            or CANCELLED, then answer as it is. Not with `version` or `as_of`.";
        let version = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1));
        let time = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
        vec![
            parameter(routes::WAIT_PARAM, ParameterIn::Query, false, description, schema),
            parameter(
                "version",
                ParameterIn::Query,
                false,
                "The order as it was after its first `version` events (a temporal query on its event stream). \
                 Not with `wait_ms` or `as_of`.",
                version,
            ),
            parameter(
                "as_of",
                ParameterIn::Query,
                false,
                "The order as it was at this time (RFC 3339). Not with `wait_ms` or `version`.",
                time,
            ),
        ]
    }
}

/// `?limit=N&after=V` of `GET /api/orders/{id}/events` (`polis_runtime::Page<u64>`).
pub(crate) struct EventPage;

impl IntoParams for EventPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let version = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0));
        let after = "Only events after this version: the version of the last event of the previous page.";
        vec![limit(), parameter("after", ParameterIn::Query, false, after, version)]
    }
}

/// A service's name, as `?service=` takes it in the admin routes.
fn service_schema() -> Object {
    let names: Vec<&str> = contracts::Service::BUSINESS.iter().map(|service| service.as_str()).collect();
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).build()
}

fn service_param(description: &str) -> Parameter {
    parameter("service", ParameterIn::Query, false, description, service_schema())
}

/// `?service=S&limit=N&after=ID` of `GET /api/admin/dead-letters`.
pub(crate) struct DeadLetterPage;

impl IntoParams for DeadLetterPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let after = "Only dead letters whose id comes after this one: the id of the last one of the previous page.";
        vec![
            service_param("Only this service's dead letters."),
            limit(),
            parameter("after", ParameterIn::Query, false, after, uuid_schema()),
        ]
    }
}

/// `?service=S&state=S&finished=B&limit=N&after=C` of `GET /api/admin/sagas`.
pub(crate) struct AdminSagaPage;

impl IntoParams for AdminSagaPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let state = ObjectBuilder::new().schema_type(Type::String).pattern(Some(SAGA_STATE_PATTERN));
        let finished = ObjectBuilder::new().schema_type(Type::Boolean);
        let after = ObjectBuilder::new().schema_type(Type::String).pattern(Some(SAGA_CURSOR_PATTERN));
        vec![
            service_param("Only this service's sagas."),
            parameter("state", ParameterIn::Query, false, "Only sagas in this state, e.g. `authorizing`.", state),
            parameter(
                "finished",
                ParameterIn::Query,
                false,
                "Only finished sagas (`true`), or only those still in flight (`false`).",
                finished,
            ),
            limit(),
            parameter(
                "after",
                ParameterIn::Query,
                false,
                "Only sagas after this one: `<service>:<saga type>:<saga id>` of the last saga of the previous \
                 page (percent-encoded or not).",
                after,
            ),
        ]
    }
}

/// What a saga's state name is (`polis_saga::is_state_name`).
const SAGA_STATE_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

/// What the merged saga list's cursor is: a service's name (any name: it is
/// a place in name order), a saga type, and an id without NUL.
const SAGA_CURSOR_PATTERN: &str = "^[a-z][a-z0-9-]*:[A-Za-z0-9_.-]{1,64}:[^\\u0000]+$";

/// `?service=S` of `GET /api/admin/sagas/in-flight`.
pub(crate) struct ServiceParam;

impl IntoParams for ServiceParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![service_param("Only this service's.")]
    }
}

/// The `{stream}` of `GET /api/admin/events/{stream}`.
pub(crate) struct StreamPath;

impl IntoParams for StreamPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        let description = "The stream's name, e.g. `order-<id>` (an order's events, in the order service's log) or \
            `customer/<id>` (a customer's events as another service ingested them), percent-encoded as one segment.";
        vec![parameter("stream", ParameterIn::Path, true, description, schema)]
    }
}

/// `?service=S&limit=N&after=V` of `GET /api/admin/events/{stream}`.
pub(crate) struct AdminEventPage;

impl IntoParams for AdminEventPage {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = EventPage::into_params(|| None);
        params.insert(0, service_param("Read the stream from this service's log (needed when several hold it)."));
        params
    }
}

/// The `Idempotency-Key` header of `POST /api/orders`.
pub(crate) struct IdempotencyKey;

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let description = "Makes the request safe to retry: a request with the key of an earlier one (same \
            customer, skus and quantities) places nothing and answers with the order placed then. A new key per \
            order.";
        let schema = contracts::order::idempotency_key_schema();
        vec![parameter("Idempotency-Key", ParameterIn::Header, false, description, schema)]
    }
}

/// The `{sku}` of the catalog's and the inventory's paths.
pub(crate) struct SkuPath;

impl IntoParams for SkuPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let description = format!("The sku: {}.", contracts::catalog::SKU_FORM.trim_start_matches("must be "));
        vec![parameter("sku", ParameterIn::Path, true, description, contracts::catalog::sku_schema())]
    }
}

/// Described here, served by `polis_runtime::with_standard_stack`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The gateway is up.", body = Health))
)]
#[allow(dead_code)]
fn healthz() {}

/// Described here, served by `polis_runtime::with_standard_stack`.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The process's metrics in the Prometheus text format (HTTP durations, \
        orders, sagas, outbox, consumers, projections, dead letters, process memory and CPU); in the embedded shop, \
        every service's, told apart by their `service` label.", content_type = "text/plain", body = String))
)]
#[allow(dead_code)]
fn metrics() {}

/// Served by [`crate::dashboard`].
#[utoipa::path(
    get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "The operators' live dashboard: one page (HTML with its style and \
        script) that follows `GET /api/dashboard/stream` and replays or discards dead letters.",
        content_type = "text/html", body = String))
)]
#[allow(dead_code)]
fn dashboard_page() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "polis shop",
        description = "The public API of the polis reference shop, served by its gateway. Money is integer minor \
            units; ids are UUIDv7, written in the hyphenated form (8-4-4-4-12 hex digits, either case in requests, \
            lower case in answers; `urn:uuid:` and braced forms are refused with 400). Lists are paged by key: \
            `?limit=N` and `after=` the key of the last item of the previous page; a page shorter than `limit` is \
            the last one. A query parameter an operation does not read is refused with 400, never ignored. Errors \
            are RFC 9457 problems (`application/problem+json`); every request and answer carries an \
            `x-request-id`."
    ),
    paths(
        healthz,
        metrics,
        crate::ready::readyz,
        routes::register_customer,
        routes::get_customer,
        routes::update_customer,
        compose::customer_orders,
        routes::add_product,
        routes::list_products,
        routes::get_product,
        routes::update_product,
        routes::set_stock,
        routes::get_stock,
        compose::create_order,
        routes::get_order,
        routes::order_events,
        routes::cancel_order,
        compose::order_details,
        admin::list_dead_letters,
        admin::get_dead_letter,
        admin::replay_dead_letter,
        admin::discard_dead_letter,
        admin::list_sagas,
        admin::sagas_in_flight,
        admin::stream_events,
        routes::openapi_document,
        routes::last_audit,
        routes::run_audit,
        dashboard_page,
        crate::dashboard::snapshot,
        crate::dashboard::stream,
    ),
    components(schemas(
        Problem, ProblemField, Health, Readiness, ReadinessCheck, Address, Customer, RegisterCustomer, UpdateCustomer, Product, UpdateProduct, SetStock, StockLevel,
        CreateOrder, Quantity, Accepted, OrderStatus, OrderView, OrderEvent, OrderLine, CustomerOrders, HistoryOrder,
        HistoryItem, Freshness, RejectionReason, Payment, PaymentStatus,
        Shipment, ShipmentStatus, OrderDetails, Part, admin::DeadLetter, admin::DeadLetterStatus, admin::DeadMessage,
        admin::Resolved, admin::ResolveAction, admin::ParkedFailure, admin::Saga, admin::SagasInFlight,
        admin::StreamEvent, dashboard::Snapshot, dashboard::Orders, dashboard::ConsumerFigures,
        dashboard::ProjectionFigures, dashboard::OutboxFigures, dashboard::ProcessFigures, dashboard::RecentOrder,
        dashboard::AuditFigures, dashboard::DriftFigures,
    )),
    modifiers(&SharedErrors, &Links),
    tags(
        (name = "customers", description = "Customers (customer service) and their orders."),
        (name = "catalog", description = "Products and prices (catalog service)."),
        (name = "inventory", description = "Stock per sku (inventory service)."),
        (name = "orders", description = "Placing, following and cancelling orders (order service), and their \
            details composed from every service."),
        (name = "operations", description = "Health, readiness, metrics, the audit, the live dashboard and this \
            document."),
        (name = "admin", description = "Operating the shop: every service's dead letters (list, show, replay, \
            discard), sagas (by state, and how many are in flight) and event streams, each answer naming its \
            service."),
    )
)]
struct ApiDoc;

/// The document, built anew on each call.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Adds the error answers routes share to every operation that can give
/// them, without overwriting one a route declares itself: the 400 written
/// for the operation (its reasons), the others as references to
/// `components.responses`.
struct SharedErrors;

/// The dashboard's operations: they name a part they cannot read in the
/// answer instead of failing.
const DASHBOARD_PATHS: &str = "/api/dashboard";

/// Which operations a shared answer applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applies {
    Always,
    /// Operations with a request body.
    WithBody,
    /// Operations on a path with an `{id}`.
    WithId,
    /// Operations on a path with a `{sku}`.
    WithSku,
    /// Operations on a path with a `{stream}`.
    WithStream,
    /// Operations that call a service and fail when one fails (every `/api`
    /// one but this document and the dashboard's, which show what they can).
    CallingServices,
}

impl Applies {
    fn to(self, path: &str, operation: &Operation) -> bool {
        match self {
            Self::Always => true,
            Self::WithBody => operation.request_body.is_some(),
            Self::WithId => path.contains("{id}"),
            Self::WithSku => path.contains("{sku}"),
            Self::WithStream => path.contains("{stream}"),
            Self::CallingServices => {
                path.starts_with("/api/") && path != DOCUMENT_PATH && !path.starts_with(DASHBOARD_PATHS)
            }
        }
    }
}

/// Why a request is malformed (400), and where that can happen.
const MALFORMED: [(&str, Applies); 5] = [
    (
        "a query parameter is not one this operation reads (unknown parameters are refused, never ignored)",
        Applies::Always,
    ),
    ("the body is not JSON", Applies::WithBody),
    ("the `{id}` is not a UUID in its hyphenated form (8-4-4-4-12 hex digits)", Applies::WithId),
    ("the `{sku}` is not UTF-8 once percent-decoded", Applies::WithSku),
    ("the `{stream}` is not UTF-8 once percent-decoded", Applies::WithStream),
];

/// `(status, component name, description, which operations)`.
const SHARED: [(&str, &str, &str, Applies); 8] = [
    ("408", "RequestTimeout", "The body did not arrive in time (30 s by default).", Applies::WithBody),
    ("413", "PayloadTooLarge", "The body is larger than the gateway accepts.", Applies::WithBody),
    ("415", "UnsupportedMediaType", "The body is not sent as `application/json`.", Applies::WithBody),
    ("422", "ValidationFailed", "A field of the body is invalid; `errors` names each one.", Applies::WithBody),
    ("500", "InternalError", "A fault of the gateway or the service; it has been logged.", Applies::Always),
    ("502", "BadGateway", "A service gave an answer that breaks its contract.", Applies::CallingServices),
    ("503", "ServiceUnavailable", "A service is unreachable or failing; retry later.", Applies::CallingServices),
    (
        "504",
        "GatewayTimeout",
        "A service did not answer in time; the request may or may not have taken effect.",
        Applies::CallingServices,
    ),
];

fn problem_response(description: impl Into<String>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
        .build()
}

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description, _) in SHARED {
            components.responses.insert(name.to_owned(), RefOr::T(problem_response(description)));
        }
        for (path, item) in &mut openapi.paths.paths {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                add_shared(path, operation);
            }
        }
    }
}

fn add_shared(path: &str, operation: &mut Operation) {
    let reasons: Vec<&str> =
        MALFORMED.iter().filter(|(_, applies)| applies.to(path, operation)).map(|(reason, _)| *reason).collect();
    let malformed = format!(
        "The request is malformed: {}. `errors` names the parameter, where there is one.",
        reasons.join("; or ")
    );
    let shared: Vec<(&str, RefOr<utoipa::openapi::Response>)> = SHARED
        .iter()
        .filter(|(_, _, _, applies)| applies.to(path, operation))
        .map(|(status, name, _, _)| (*status, RefOr::Ref(Ref::from_response_name(*name))))
        .collect();
    let responses = &mut operation.responses.responses;
    responses.entry("400".to_owned()).or_insert_with(|| RefOr::T(problem_response(malformed)));
    for (status, response) in shared {
        responses.entry(status.to_owned()).or_insert(response);
    }
}

/// OpenAPI links from the operations whose answers carry an id (or a sku)
/// to the operations that take it: `(operation, status, link name, target
/// operation, target parameter, where the answer has the value)`.
/// Operation ids are the handlers' names.
pub(crate) const LINKS: [(&str, &str, &str, &str, &str, &str); 11] = [
    ("register_customer", "201", "GetCustomer", "get_customer", "id", "$response.body#/id"),
    ("register_customer", "201", "CustomerOrders", "customer_orders", "id", "$response.body#/id"),
    ("add_product", "201", "GetProduct", "get_product", "sku", "$response.body#/sku"),
    ("add_product", "201", "SetStock", "set_stock", "sku", "$response.body#/sku"),
    ("add_product", "201", "GetStock", "get_stock", "sku", "$response.body#/sku"),
    ("create_order", "202", "GetOrder", "get_order", "id", "$response.body#/id"),
    ("create_order", "202", "CancelOrder", "cancel_order", "id", "$response.body#/id"),
    ("create_order", "202", "OrderDetails", "order_details", "id", "$response.body#/id"),
    ("cancel_order", "202", "GetOrder", "get_order", "id", "$response.body#/id"),
    ("get_order", "200", "GetCustomer", "get_customer", "id", "$response.body#/customer_id"),
    ("get_order", "200", "CancelOrder", "cancel_order", "id", "$response.body#/id"),
];

/// Adds [`LINKS`] to the answers they start from.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let Some(id) = operation.operation_id.clone() else { continue };
                for (_, status, name, target, parameter, value) in LINKS.iter().filter(|link| link.0 == id) {
                    // Every source answer is declared inline on its handler; a
                    // unit test checks that each link was placed.
                    if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) {
                        let link = LinkBuilder::new().operation_id(*target).parameter(*parameter, *value).build();
                        response.links.insert((*name).to_owned(), RefOr::T(link));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_an_integer_and_ids_are_uuids() {
        let document = serde_json::to_value(openapi()).unwrap();
        let customer = &document["components"]["schemas"]["Customer"]["properties"];
        assert_eq!(customer["credit_limit"]["type"], "integer", "{customer}");
        assert_eq!(customer["id"]["format"], "uuid", "{customer}");
    }

    #[test]
    fn a_route_keeps_its_own_answer_for_a_shared_status() {
        let document = serde_json::to_value(openapi()).unwrap();
        let create = &document["paths"]["/api/orders"]["post"]["responses"];
        assert!(create["422"]["description"].as_str().unwrap().contains("unknown customer"), "{create}");
        assert_eq!(create["504"]["$ref"], "#/components/responses/GatewayTimeout");
        let get = &document["paths"]["/api/orders/{id}"]["get"]["responses"];
        assert!(get.get("415").is_none(), "{get}");
        assert!(get["422"]["description"].as_str().unwrap().contains("wait_ms"), "{get}");
    }

    #[test]
    fn a_400_gives_the_reasons_that_apply_to_the_operation() {
        let document = serde_json::to_value(openapi()).unwrap();
        let malformed = |path: &str, method: &str| {
            let response = &document["paths"][path][method]["responses"]["400"];
            assert_eq!(response["content"][PROBLEM_JSON]["schema"]["$ref"], "#/components/schemas/Problem");
            response["description"].as_str().unwrap().to_owned()
        };
        let get = malformed("/api/orders/{id}", "get");
        assert!(get.contains("query parameter") && get.contains("`{id}`") && !get.contains("body"), "{get}");
        let list = malformed("/api/products", "get");
        assert!(list.contains("query parameter") && !list.contains("`{id}`") && !list.contains("body"), "{list}");
        let stock = malformed("/api/inventory/{sku}", "put");
        assert!(stock.contains("body") && stock.contains("`{sku}`"), "{stock}");
        assert!(malformed("/healthz", "get").contains("query parameter"));
    }

    #[test]
    fn only_operations_that_call_a_service_answer_502_to_504() {
        let document = serde_json::to_value(openapi()).unwrap();
        let responses = |path: &str| document["paths"][path]["get"]["responses"].as_object().unwrap().clone();
        for status in ["502", "503", "504"] {
            assert!(responses("/api/orders/{id}").contains_key(status));
            assert!(!responses(DOCUMENT_PATH).contains_key(status));
            assert!(!responses("/healthz").contains_key(status));
        }
    }

    #[test]
    fn lists_document_their_page_parameters_and_refusals() {
        let document = serde_json::to_value(openapi()).unwrap();
        for path in ["/api/products", "/api/customers/{id}/orders"] {
            let list = &document["paths"][path]["get"];
            let params = list["parameters"].as_array().unwrap();
            let param =
                |name: &str| params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{path}: {name}"));
            let (limit, after) = (param("limit"), param("after"));
            assert_eq!((limit["in"].as_str(), limit["required"].as_bool()), (Some("query"), Some(false)), "{limit}");
            assert_eq!(
                (&limit["schema"]["minimum"], &limit["schema"]["maximum"], &limit["schema"]["default"]),
                (&1.into(), &MAX_LIMIT.into(), &DEFAULT_LIMIT.into()),
                "{limit}"
            );
            assert_eq!(after["in"], "query", "{after}");
            assert!(list["responses"]["422"]["description"].as_str().unwrap().contains("limit"), "{path}");
        }
    }

    #[test]
    fn every_link_is_placed_and_names_a_parameter_of_its_target() {
        let document = serde_json::to_value(openapi()).unwrap();
        let mut operations = std::collections::HashMap::new();
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                operations.insert(operation["operationId"].as_str().unwrap().to_owned(), operation);
            }
        }
        for (source, status, name, target, parameter, value) in LINKS {
            let link = &operations[source]["responses"][status]["links"][name];
            assert_eq!(link["operationId"], target, "{source} {name}");
            assert_eq!(link["parameters"][parameter], value, "{source} {name}");
            let takes = operations[target]["parameters"].as_array().unwrap().iter().any(|p| p["name"] == parameter);
            assert!(takes, "{target} has no parameter {parameter}");
        }
    }
}
