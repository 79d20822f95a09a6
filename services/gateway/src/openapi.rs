//! The OpenAPI 3.1 document of the public API, served at `GET /api/openapi.json`.
//!
//! Each route's own answers are declared on its handler (`#[utoipa::path]`);
//! the error answers every route shares are added here, once, by
//! `SharedErrors`: the gateway's own (408, 413, 415 and 400 on a body, 400
//! on an `{id}` that is not a UUID in its canonical form, 502, 503 and 504
//! on upstream trouble, 500) and the services' 422 on bodies.
//! The schemas of the bodies are the contracts' types themselves.

use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderStatus, OrderView};
use contracts::order_history::{CustomerOrders, Freshness, HistoryItem, HistoryOrder};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, OrderLine, Quantity, RejectionReason};
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::compose::{self, OrderDetails, Part};
use crate::routes;

/// The media type of every error answer.
const PROBLEM_JSON: &str = "application/problem+json";

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
    /// Every invalid field of the request (422).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemField {
    /// The field's path in the body, e.g. `items[0].quantity`, or the name
    /// of the path or query parameter, e.g. `id`, `limit`.
    pub field: String,
    pub message: String,
}

/// The body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Described here, served by `polis_runtime::with_standard_stack`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The gateway is up.", body = Health))
)]
#[allow(dead_code)]
fn healthz() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "polis shop",
        description = "The public API of the polis reference shop, served by its gateway. Money is integer minor \
            units; ids are UUIDv7, written in the hyphenated form (8-4-4-4-12 hex digits, either case in requests, \
            lower case in answers; `urn:uuid:` and braced forms are refused with 400). Lists are paged by key: \
            `?limit=N` (1 to 10000, default 1000) and `after=` the key of the last item of the previous page; a \
            page shorter than `limit` is the last one. Errors are RFC 9457 problems (`application/problem+json`); \
            every request and answer carries an `x-request-id`."
    ),
    paths(
        healthz,
        routes::register_customer,
        routes::get_customer,
        compose::customer_orders,
        routes::add_product,
        routes::list_products,
        routes::get_product,
        routes::set_stock,
        routes::get_stock,
        compose::create_order,
        routes::get_order,
        routes::cancel_order,
        compose::order_details,
        routes::openapi_document,
    ),
    components(schemas(
        Problem, ProblemField, Health, Address, Customer, RegisterCustomer, Product, SetStock, StockLevel,
        CreateOrder, Quantity, Accepted, OrderStatus, OrderView, OrderLine, CustomerOrders, HistoryOrder,
        HistoryItem, Freshness, RejectionReason, Payment, PaymentStatus,
        Shipment, ShipmentStatus, OrderDetails, Part,
    )),
    modifiers(&SharedErrors),
    tags(
        (name = "customers", description = "Customers (customer service) and their orders."),
        (name = "catalog", description = "Products and prices (catalog service)."),
        (name = "inventory", description = "Stock per sku (inventory service)."),
        (name = "orders", description = "Placing, following and cancelling orders (order service), and their \
            details composed from every service."),
        (name = "operations", description = "Health and this document."),
    )
)]
struct ApiDoc;

/// The document, built anew on each call.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Adds the error answers routes share to every operation that can give
/// them, as references to `components.responses`, without overwriting one
/// a route declares itself.
struct SharedErrors;

/// Which operations a shared answer applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applies {
    Always,
    /// Operations with a request body.
    WithBody,
    /// Operations on a path with an `{id}`.
    WithId,
}

/// `(status, component name, description, which operations)`.
const SHARED: [(&str, &str, &str, Applies); 10] = [
    ("400", "BadRequest", "The body is not JSON.", Applies::WithBody),
    (
        "400",
        "MalformedId",
        "The `{id}` is not a UUID in its hyphenated form (8-4-4-4-12 hex digits); `errors` names the parameter.",
        Applies::WithId,
    ),
    ("408", "RequestTimeout", "The body did not arrive in time (30 s by default).", Applies::WithBody),
    ("413", "PayloadTooLarge", "The body is larger than the gateway accepts.", Applies::WithBody),
    ("415", "UnsupportedMediaType", "The body is not sent as `application/json`.", Applies::WithBody),
    ("422", "ValidationFailed", "A field of the body is invalid; `errors` names each one.", Applies::WithBody),
    ("500", "InternalError", "A fault of the gateway or the service; it has been logged.", Applies::Always),
    ("502", "BadGateway", "A service gave an answer that breaks its contract.", Applies::Always),
    ("503", "ServiceUnavailable", "A service is unreachable or failing; retry later.", Applies::Always),
    (
        "504",
        "GatewayTimeout",
        "A service did not answer in time; the request may or may not have taken effect.",
        Applies::Always,
    ),
];

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description, _) in SHARED {
            let response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
                .build();
            components.responses.insert(name.to_owned(), RefOr::T(response));
        }
        for (path, item) in &mut openapi.paths.paths {
            // The standard stack's health check meets none of the gateway's failures.
            if !path.starts_with("/api/") {
                continue;
            }
            let has_id = path.contains("{id}");
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                add_shared(operation, has_id);
            }
        }
    }
}

fn add_shared(operation: &mut Operation, has_id: bool) {
    let has_body = operation.request_body.is_some();
    for (status, name, _, applies) in SHARED {
        let applies = match applies {
            Applies::Always => true,
            Applies::WithBody => has_body,
            Applies::WithId => has_id,
        };
        if !applies {
            continue;
        }
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
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
        assert_eq!(get["400"]["$ref"], "#/components/responses/MalformedId");
        let products = &document["paths"]["/api/products"]["get"]["responses"];
        assert!(products.get("400").is_none(), "{products}");
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
                (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
                (&1.into(), &10_000.into()),
                "{limit}"
            );
            assert_eq!(after["in"], "query", "{after}");
            assert!(list["responses"]["422"]["description"].as_str().unwrap().contains("limit"), "{path}");
        }
    }
}
