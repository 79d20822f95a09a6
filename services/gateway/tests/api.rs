#![allow(clippy::unwrap_used)]
//! The gateway in front of in-process fake services, driven with `oneshot`
//! through the standard stack: plain routes, order placement, the details
//! composition, failures of the services, request ids.

mod support;

use axum::http::{Method, StatusCode};
use contracts::OrderLine;
use contracts::order::{Accepted, OrderStatus, PlaceOrder};
use gateway::{OrderDetails, Part, Upstream};
use polis_runtime::problem::types;
use serde_json::{Value, json};
use support::*;

fn shop() -> (Fakes, axum::Router) {
    let fakes = Fakes::default();
    let app = app(fakes.upstreams());
    (fakes, app)
}

fn new_customer() -> Value {
    json!({
        "name": "Grace",
        "email": "grace@example.com",
        "address": { "line1": "2 High St", "city": "Leeds", "postal_code": "LS1", "country": "GB" },
        "credit_limit": 5000
    })
}

#[tokio::test]
async fn every_plain_route_passes_the_service_answer_through() {
    let (fakes, app) = shop();

    let registered = post(&app, "/api/customers", &new_customer()).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
    assert_eq!(registered.body["id"], REGISTERED);
    assert_eq!(registered.body["email"], "grace@example.com");
    assert_eq!(registered.header("location"), Some(format!("/api/customers/{REGISTERED}").as_str()));
    assert_eq!(registered.header("content-type"), Some("application/json"));

    let customer = get(&app, &format!("/api/customers/{CUSTOMER}")).await;
    assert_eq!(customer.status, StatusCode::OK);
    assert_eq!(customer.body, json(&support::customer()));

    let product = json!({ "sku": "C-3", "name": "Crate", "price": 1200 });
    let added = post(&app, "/api/products", &product).await;
    assert_eq!(added.status, StatusCode::CREATED);
    assert_eq!(added.body, product);
    assert_eq!(added.header("location"), Some("/api/products/C-3"));

    let listed = get(&app, "/api/products").await;
    assert_eq!((listed.status, listed.body), (StatusCode::OK, json(&products())));

    let fetched = get(&app, "/api/products/B-2").await;
    assert_eq!((fetched.status, &fetched.body["price"]), (StatusCode::OK, &json!(1000)));

    let set = send(&app, Method::PUT, "/api/inventory/A-1", Some(&json!({ "available": 9 })), &[]).await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.body, json!({ "sku": "A-1", "available": 9, "reserved": 2 }));

    let level = get(&app, "/api/inventory/A-1").await;
    assert_eq!(level.body, json!({ "sku": "A-1", "available": 7, "reserved": 2 }));

    let order = get(&app, &format!("/api/orders/{ORDER}")).await;
    assert_eq!((order.status, order.body.clone()), (StatusCode::OK, json(&support::order(ORDER).unwrap())));
    for field in ["id", "customer_id", "status", "items", "total"] {
        assert!(order.body.get(field).is_some(), "{field}");
    }

    let cancel = send(&app, Method::POST, &format!("/api/orders/{ORDER}/cancel"), None, &[]).await;
    assert_eq!(cancel.status, StatusCode::ACCEPTED);
    assert_eq!(cancel.body, json!({ "id": ORDER, "status": "CANCEL_PENDING" }));

    let orders = get(&app, &format!("/api/customers/{CUSTOMER}/orders")).await;
    assert_eq!(orders.status, StatusCode::OK);
    assert_eq!(
        orders.body["orders"],
        json(&vec![support::history(ORDER).unwrap(), support::history(NEW_ORDER).unwrap()])
    );
    assert_eq!(orders.body["freshness"]["position"], 7);

    assert_eq!(
        fakes.recorder.calls(),
        [
            "catalog GET /products/B-2".to_owned(),
            "catalog GET /products?limit=1000".to_owned(),
            "catalog POST /products".to_owned(),
            format!("customer GET /customers/{CUSTOMER}"),
            format!("customer GET /customers/{CUSTOMER}"),
            "customer POST /customers".to_owned(),
            "inventory GET /inventory/A-1".to_owned(),
            "inventory PUT /inventory/A-1".to_owned(),
            format!("order GET /orders/{ORDER}"),
            format!("order POST /orders/{ORDER}/cancel"),
            format!("order-history GET /customers/{CUSTOMER}/orders"),
        ]
    );
}

#[tokio::test]
async fn bodies_are_forwarded_as_sent_and_paths_keep_their_encoding() {
    let (fakes, app) = shop();
    let body = "{\"available\":  3 }";
    let request = axum::http::Request::put("/api/inventory/A%2D1")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.clone(), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = fakes.recorder.seen();
    assert_eq!(seen[0].target, "/inventory/A%2D1");
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));

    let encoded = get(&app, "/api/products/X%2F1%20%C3%A9").await;
    assert_eq!((encoded.status, &encoded.body["price"]), (StatusCode::OK, &json!(5)));
}

#[tokio::test]
async fn bad_bodies_are_refused_by_the_gateway_before_any_call() {
    let (fakes, app) = shop();
    let plain = axum::http::Request::post("/api/customers")
        .header("content-type", "text/plain")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let answer = tower::ServiceExt::oneshot(app.clone(), plain).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let broken = axum::http::Request::post("/api/products")
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{\"sku\": "))
        .unwrap();
    let answer = tower::ServiceExt::oneshot(app.clone(), broken).await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);

    let huge = json!({ "sku": "x".repeat(70 * 1024), "name": "big", "price": 1 });
    assert_eq!(post(&app, "/api/products", &huge).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());
}

#[tokio::test]
async fn service_problems_pass_through_unchanged() {
    let (_fakes, app) = shop();
    let unknown = get(&app, "/api/customers/0190a4b2-7d5e-7c3a-9f1e-00000000dead").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.problem_type(), types::NOT_FOUND);
    assert_eq!(unknown.body["detail"], "no customer with id 0190a4b2-7d5e-7c3a-9f1e-00000000dead");

    let conflict = send(&app, Method::POST, &format!("/api/orders/{NEW_ORDER}/cancel"), None, &[]).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["current_status"], "PENDING");

    let invalid = send(&app, Method::PUT, "/api/inventory/A-1", Some(&json!({ "available": -1 })), &[]).await;
    assert_eq!(invalid.fields(), ["available"]);

    let shape = post(&app, "/api/products", &json!({ "sku": "C-3", "name": "Crate" })).await;
    assert_eq!(shape.fields(), ["price"]);
}

#[tokio::test]
async fn a_failing_service_answers_through_the_gateway() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Catalog, Upstream::local(failing()));
    let app = app(upstreams);
    let answer = get(&app, "/api/products").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.problem_type(), types::INTERNAL);
}

#[tokio::test]
async fn a_service_that_does_not_answer_in_time_is_a_504() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Catalog, Upstream::local(silent()));
    upstreams.set(Service::Order, Upstream::local(silent()));
    let app = app(upstreams);

    let answer = get(&app, "/api/products/A-1").await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.problem_type(), types::GATEWAY_TIMEOUT);
    assert_eq!(answer.body["detail"], "the catalog service did not answer within 1000 ms");

    let cancel = send(&app, Method::POST, &format!("/api/orders/{ORDER}/cancel"), None, &[]).await;
    assert_eq!(cancel.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(cancel.body["detail"], "the order service did not answer within 1000 ms");
}

#[tokio::test]
async fn an_unreachable_service_is_a_503() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Inventory, Upstream::remote(&nowhere()).unwrap());
    let app = app(upstreams);
    let answer = get(&app, "/api/inventory/A-1").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.problem_type(), types::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["detail"], "the inventory service is unavailable; retry later");
    // The cause is logged, never sent.
    assert!(!answer.body.to_string().contains("127.0.0.1"), "{}", answer.body);
}

#[tokio::test]
async fn the_request_id_reaches_every_service_a_request_touches() {
    let (fakes, app) = shop();
    let details =
        send(&app, Method::GET, &format!("/api/orders/{ORDER}/details"), None, &[("x-request-id", "req-42")]).await;
    assert_eq!(details.status, StatusCode::OK);
    assert_eq!(details.header("x-request-id"), Some("req-42"));
    let order = json!({ "customer_id": CUSTOMER, "items": [{ "sku": "A-1", "quantity": 1 }] });
    let placed = send(&app, Method::POST, "/api/orders", Some(&order), &[("x-request-id", "req-43")]).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED);

    let seen = fakes.recorder.seen();
    // details: order, customer, 2 products, payment, shipment; placing: customer, product, order.
    assert_eq!(seen.len(), 9, "{:?}", fakes.recorder.calls());
    let ids: Vec<_> = seen.iter().map(|s| s.request_id.as_deref().unwrap()).collect();
    assert_eq!(ids, [["req-42"; 6].as_slice(), ["req-43"; 3].as_slice()].concat());

    // Without a client id, the one the gateway made up is the one forwarded.
    fakes.recorder.clear();
    let fetched = get(&app, "/api/products/A-1").await;
    let made_up = fetched.header("x-request-id").unwrap();
    assert_eq!(fakes.recorder.seen()[0].request_id.as_deref(), Some(made_up));
}

#[tokio::test]
async fn an_order_is_priced_merged_and_placed() {
    let (fakes, app) = shop();
    let order = json!({
        "customer_id": CUSTOMER,
        "items": [{ "sku": "A-1", "quantity": 2 }, { "sku": "B-2", "quantity": 1 }, { "sku": "A-1", "quantity": 3 }],
    });
    let answer = post(&app, "/api/orders", &order).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let accepted: Accepted = serde_json::from_value(answer.body.clone()).unwrap();
    assert_eq!(accepted, Accepted { id: id(PLACED), status: OrderStatus::Pending });
    assert_eq!(answer.header("location"), Some(format!("/api/orders/{PLACED}").as_str()));

    assert_eq!(
        fakes.recorder.calls(),
        [
            "catalog GET /products/A-1".to_owned(),
            "catalog GET /products/B-2".to_owned(),
            format!("customer GET /customers/{CUSTOMER}"),
            "order POST /orders".to_owned(),
        ]
    );
    let placed = fakes.recorder.seen().into_iter().find(|s| s.service == "order").unwrap();
    let placed: PlaceOrder = serde_json::from_slice(&placed.body).unwrap();
    let line = |sku: &str, quantity, unit_price| OrderLine { sku: sku.into(), quantity, unit_price };
    assert_eq!(
        placed,
        PlaceOrder { customer_id: id(CUSTOMER), lines: vec![line("A-1", 5, 250), line("B-2", 1, 1000)] }
    );
}

#[tokio::test]
async fn an_invalid_order_names_each_field_and_calls_no_service() {
    let (fakes, app) = shop();
    let item = |sku: &str, quantity: i64| json!({ "sku": sku, "quantity": quantity });
    let cases = [
        (json!({ "items": [item("A-1", 1)] }), vec!["customer_id"]),
        (json!({ "customer_id": "not-a-uuid", "items": [item("A-1", 1)] }), vec!["customer_id"]),
        (json!({ "customer_id": CUSTOMER }), vec!["items"]),
        (json!({ "customer_id": CUSTOMER, "items": [] }), vec!["items"]),
        (json!({ "customer_id": CUSTOMER, "items": [item("A-1", 1), item("B-2", 0)] }), vec!["items[1].quantity"]),
        (json!({ "customer_id": CUSTOMER, "items": [item("A-1", -3)] }), vec!["items[0].quantity"]),
        (json!({ "customer_id": CUSTOMER, "items": [item("", 1)] }), vec!["items[0].sku"]),
        (json!({ "customer_id": CUSTOMER, "items": [item("A-1", 1), { "quantity": 1 }] }), vec!["items[1].sku"]),
        (
            json!({ "customer_id": CUSTOMER, "items": [item("A-1", 1), item("  ", 0)] }),
            vec!["items[1].sku", "items[1].quantity"],
        ),
        (json!({ "customer_id": CUSTOMER, "items": vec![item("A-1", 1); 101] }), vec!["items"]),
    ];
    for (body, fields) in cases {
        let answer = post(&app, "/api/orders", &body).await;
        assert_eq!(answer.fields(), fields, "{body}");
        assert_eq!(answer.problem_type(), types::VALIDATION);
    }
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());

    let most = json!({ "customer_id": CUSTOMER, "items": vec![item("A-1", 1); 100] });
    assert_eq!(post(&app, "/api/orders", &most).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unknown_customers_and_products_are_422_naming_the_field() {
    let (fakes, app) = shop();
    let stranger = "0190a4b2-7d5e-7c3a-9f1e-00000000dead";
    let item = |sku: &str| json!({ "sku": sku, "quantity": 1 });

    let answer = post(&app, "/api/orders", &json!({ "customer_id": stranger, "items": [item("A-1")] })).await;
    assert_eq!(answer.fields(), ["customer_id"]);
    assert_eq!(answer.body["errors"][0]["message"], "unknown customer");

    let answer =
        post(&app, "/api/orders", &json!({ "customer_id": CUSTOMER, "items": [item("A-1"), item("Z-9")] })).await;
    assert_eq!(answer.fields(), ["items[1].sku"]);
    assert_eq!(answer.body["errors"][0]["message"], "unknown product `Z-9`");

    let both = json!({ "customer_id": stranger, "items": [item("Z-9"), item("A-1"), item("Z-9")] });
    assert_eq!(post(&app, "/api/orders", &both).await.fields(), ["customer_id", "items[0].sku", "items[2].sku"]);
    assert!(!fakes.recorder.calls().iter().any(|c| c.starts_with("order ")), "{:?}", fakes.recorder.calls());
}

#[tokio::test]
async fn an_order_whose_lookups_fail_is_not_judged() {
    let fakes = Fakes::default();
    let order = json!({ "customer_id": CUSTOMER, "items": [{ "sku": "Z-9", "quantity": 1 }] });

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Customer, Upstream::local(silent()));
    let answer = post(&app(upstreams), "/api/orders", &order).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.body["detail"], "the customer service did not answer within 1000 ms");

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Catalog, Upstream::local(failing()));
    let answer = post(&app(upstreams), "/api/orders", &order).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["detail"], "the catalog service failed; retry later");

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Order, Upstream::remote(&nowhere()).unwrap());
    let valid = json!({ "customer_id": CUSTOMER, "items": [{ "sku": "A-1", "quantity": 1 }] });
    let answer = post(&app(upstreams), "/api/orders", &valid).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["detail"], "the order service is unavailable; retry later");
}

fn details(answer: &Answer) -> OrderDetails {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    serde_json::from_value(answer.body.clone()).unwrap()
}

#[tokio::test]
async fn details_compose_the_order_with_every_part() {
    let (fakes, app) = shop();
    let answer = get(&app, &format!("/api/orders/{ORDER}/details")).await;
    let composed = details(&answer);
    assert_eq!(
        composed,
        OrderDetails {
            order: support::order(ORDER).unwrap(),
            customer: Some(support::customer()),
            products: Some(products()[..2].to_vec()),
            payment: Some(payment()),
            shipment: Some(shipment()),
            partial: vec![],
        }
    );
    // Every member is present, the empty ones as null / [].
    for member in ["order", "customer", "products", "payment", "shipment", "partial"] {
        assert!(answer.body.get(member).is_some(), "{member}");
    }
    assert_eq!(
        fakes.recorder.calls(),
        [
            "catalog GET /products/A-1".to_owned(),
            "catalog GET /products/B-2".to_owned(),
            format!("customer GET /customers/{CUSTOMER}"),
            format!("order GET /orders/{ORDER}"),
            format!("payment GET /payments/{ORDER}"),
            format!("shipping GET /shipments/{ORDER}"),
        ]
    );
}

#[tokio::test]
async fn details_without_a_payment_or_shipment_yet_are_complete() {
    let (_fakes, app) = shop();
    let composed = details(&get(&app, &format!("/api/orders/{NEW_ORDER}/details")).await);
    assert_eq!((composed.payment, composed.shipment), (None, None));
    assert_eq!(composed.partial, []);
    assert_eq!(composed.products.unwrap().len(), 1);
    assert!(composed.customer.is_some());
}

#[tokio::test]
async fn a_part_that_times_out_is_null_and_partial() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Payment, Upstream::local(silent()));
    let answer = get(&app(upstreams), &format!("/api/orders/{ORDER}/details")).await;
    let composed = details(&answer);
    assert_eq!(composed.partial, [Part::Payment]);
    assert_eq!(answer.body["partial"], json!(["payment"]));
    assert_eq!(answer.body["payment"], Value::Null);
    assert_eq!(composed.shipment, Some(shipment()));
    assert_eq!(composed.customer, Some(support::customer()));
    assert!(composed.products.is_some());
}

#[tokio::test]
async fn failing_unreachable_and_silent_parts_are_each_partial() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Customer, Upstream::local(failing()));
    upstreams.set(Service::Catalog, Upstream::local(silent()));
    upstreams.set(Service::Shipping, Upstream::remote(&nowhere()).unwrap());
    let composed = details(&get(&app(upstreams), &format!("/api/orders/{ORDER}/details")).await);
    assert_eq!(composed.partial, [Part::Customer, Part::Products, Part::Shipment]);
    assert_eq!((composed.customer, composed.products, composed.shipment), (None, None, None));
    assert_eq!(composed.payment, Some(payment()));
    assert_eq!(composed.order, support::order(ORDER).unwrap());
}

#[tokio::test]
async fn details_of_an_unknown_order_are_a_404() {
    let (fakes, app) = shop();
    let id = "0190a4b2-7d5e-7c3a-9f1e-00000000dead";
    let answer = get(&app, &format!("/api/orders/{id}/details")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.problem_type(), types::NOT_FOUND);
    assert_eq!(answer.body["detail"], format!("no order with id {id}"));
    assert_eq!(fakes.recorder.calls(), [format!("order GET /orders/{id}")]);
}

/// Every `{id}` is a UUID in its hyphenated form (hex digits in either
/// case); anything else, the `urn:uuid:` and braced spellings included, is
/// a 400 naming the parameter, answered before any service is called.
#[tokio::test]
async fn ids_that_are_not_canonical_uuids_are_400_before_any_call() {
    let (fakes, app) = shop();
    let routes = [
        (Method::GET, "/api/customers/{id}"),
        (Method::GET, "/api/customers/{id}/orders"),
        (Method::GET, "/api/orders/{id}"),
        (Method::POST, "/api/orders/{id}/cancel"),
        (Method::GET, "/api/orders/{id}/details"),
    ];
    let malformed = [
        "not-an-id".to_owned(),
        format!("urn:uuid:{ORDER}"),
        format!("%7B{ORDER}%7D"),
        ORDER.replace('-', ""),
        "%FF".to_owned(),
    ];
    for (method, route) in &routes {
        for id in &malformed {
            let uri = route.replace("{id}", id);
            let answer = send(&app, method.clone(), &uri, None, &[]).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {uri}: {}", answer.body);
            assert_eq!(answer.problem_type(), types::BAD_REQUEST, "{method} {uri}");
            if id != "%FF" {
                assert_eq!(answer.body["errors"][0]["field"], "id", "{method} {uri}: {}", answer.body);
            }
        }
    }
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());

    // Upper-case hex digits are an id: forwarded as sent, for the service to find.
    let upper = get(&app, &format!("/api/orders/{}", ORDER.to_uppercase())).await;
    assert_eq!(upper.status, StatusCode::NOT_FOUND, "the fake knows only the lower-case spelling");
    assert_eq!(fakes.recorder.calls(), [format!("order GET /orders/{}", ORDER.to_uppercase())]);
}

/// Lists are paged with the services' rules: checked here, forwarded as
/// `?limit=N&after=KEY`, a page shorter than its limit being the last.
#[tokio::test]
async fn lists_are_paged_and_bad_page_parameters_are_422_before_any_call() {
    let (fakes, app) = shop();
    let skus = |answer: Answer| -> Vec<String> {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body.as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(skus(get(&app, "/api/products?limit=1").await), ["A-1"]);
    assert_eq!(skus(get(&app, "/api/products?limit=1&after=A-1").await), ["B-2"]);
    assert_eq!(skus(get(&app, "/api/products?after=A-1").await), ["B-2", "X/1 é"]);

    let ids = |answer: Answer| -> Vec<String> {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let list = answer.body.get("orders").unwrap_or(&answer.body);
        list.as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
    };
    let orders = format!("/api/customers/{CUSTOMER}/orders");
    assert_eq!(ids(get(&app, &format!("{orders}?limit=1")).await), [ORDER]);
    assert_eq!(ids(get(&app, &format!("{orders}?limit=1&after={ORDER}")).await), [NEW_ORDER]);
    assert_eq!(ids(get(&app, &format!("{orders}?limit=1&after={NEW_ORDER}")).await), Vec::<String>::new());
    assert_eq!(
        fakes.recorder.calls().into_iter().filter(|c| !c.starts_with("customer")).collect::<Vec<_>>(),
        [
            "catalog GET /products?limit=1".to_owned(),
            "catalog GET /products?limit=1&after=A-1".to_owned(),
            "catalog GET /products?limit=1000&after=A-1".to_owned(),
            format!("order-history GET /customers/{CUSTOMER}/orders?limit=1"),
            format!("order-history GET /customers/{CUSTOMER}/orders?limit=1&after={ORDER}"),
            format!("order-history GET /customers/{CUSTOMER}/orders?limit=1&after={NEW_ORDER}"),
        ]
    );

    fakes.recorder.clear();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=10001", "limit"),
        ("limit", "limit"),
        ("after=", "after"),
        ("after=a%20b", "after"),
    ] {
        let answer = get(&app, &format!("/api/products?{query}")).await;
        assert_eq!(answer.problem_type(), types::VALIDATION, "{query}");
        assert_eq!(answer.fields(), [field], "{query}");
        let answer = get(&app, &format!("{orders}?{query}")).await;
        assert_eq!(answer.fields(), [field], "{query}");
    }
    let answer = get(&app, &format!("{orders}?after=nope")).await;
    assert_eq!(answer.fields(), ["after"]);
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());
}

/// A query parameter a route does not read is a 400 naming it, before any
/// call: never dropped, never forwarded.
#[tokio::test]
async fn unknown_query_parameters_are_400_naming_them_before_any_call() {
    let (fakes, app) = shop();
    let orders = format!("/api/customers/{CUSTOMER}/orders");
    for (method, uri) in [
        (Method::GET, "/api/products?after=A-1&sort=price".to_owned()),
        (Method::GET, format!("{orders}?limit=1&sort=price")),
        (Method::GET, format!("/api/customers/{CUSTOMER}?sort=price")),
        (Method::GET, format!("/api/orders/{ORDER}?wait_ms=1&sort=price")),
        (Method::GET, format!("/api/orders/{ORDER}/details?sort=price")),
        (Method::POST, format!("/api/orders/{ORDER}/cancel?sort=price")),
        (Method::PUT, "/api/inventory/A-1?sort=price".to_owned()),
        (Method::GET, "/api/openapi.json?sort=price".to_owned()),
        (Method::GET, "/healthz?sort=price".to_owned()),
    ] {
        let body = (method == Method::PUT).then(|| json!({ "available": 1 }));
        let answer = send(&app, method.clone(), &uri, body.as_ref(), &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {uri}: {}", answer.body);
        assert_eq!(answer.problem_type(), types::BAD_REQUEST, "{uri}");
        assert_eq!(answer.body["errors"][0]["field"], "sort", "{uri}");
    }
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());
}

/// Stock is set only for skus the catalog's rule allows.
#[tokio::test]
async fn stock_for_a_sku_the_catalog_refuses_is_422_before_any_call() {
    let (fakes, app) = shop();
    for sku in ["a%20b", "a%2Fb", "caf%C3%A9", "a.b", &"x".repeat(65)] {
        let answer =
            send(&app, Method::PUT, &format!("/api/inventory/{sku}"), Some(&json!({ "available": 1 })), &[]).await;
        assert_eq!(answer.problem_type(), types::VALIDATION, "{sku}");
        assert_eq!(answer.fields(), ["sku"], "{sku}");
    }
    assert!(fakes.recorder.seen().is_empty(), "{:?}", fakes.recorder.calls());
}

#[tokio::test]
async fn details_fail_with_their_order() {
    let fakes = Fakes::default();
    let path = format!("/api/orders/{ORDER}/details");

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Order, Upstream::local(silent()));
    let answer = get(&app(upstreams), &path).await;
    assert_eq!((answer.status, answer.problem_type()), (StatusCode::GATEWAY_TIMEOUT, types::GATEWAY_TIMEOUT));

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Order, Upstream::local(failing()));
    let answer = get(&app(upstreams), &path).await;
    assert_eq!((answer.status, answer.problem_type()), (StatusCode::SERVICE_UNAVAILABLE, types::SERVICE_UNAVAILABLE));

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Order, Upstream::remote(&nowhere()).unwrap());
    assert_eq!(get(&app(upstreams), &path).await.status, StatusCode::SERVICE_UNAVAILABLE);

    // An order service that answers off-contract is a bad gateway, not a crash.
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Order, Upstream::local(axum::Router::new().fallback(|| async { "not json" })));
    let answer = get(&app(upstreams), &path).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.problem_type(), "https://polis.dev/problems/bad-gateway");
}

#[tokio::test]
async fn a_customers_orders_need_the_customer() {
    let (fakes, app) = shop();
    let answer = get(&app, "/api/customers/0190a4b2-7d5e-7c3a-9f1e-00000000dead/orders").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body["detail"], "no customer with id 0190a4b2-7d5e-7c3a-9f1e-00000000dead");
    assert!(fakes.recorder.calls().iter().any(|c| c.starts_with("customer GET /customers/")));

    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Customer, Upstream::local(silent()));
    let answer = get(&support::app(upstreams), &format!("/api/customers/{CUSTOMER}/orders")).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let (fakes, app) = shop();
    let missing = get(&app, "/api/nothing").await;
    assert_eq!((missing.status, missing.problem_type()), (StatusCode::NOT_FOUND, types::NOT_FOUND));
    let wrong = send(&app, Method::DELETE, "/api/orders", None, &[]).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), Some("POST"));
    let health = get(&app, "/healthz").await;
    assert_eq!((health.status, health.body), (StatusCode::OK, json!({ "status": "ok" })));
    assert!(fakes.recorder.seen().is_empty());
}
