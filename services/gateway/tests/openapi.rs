#![allow(clippy::unwrap_used)]
//! `GET /api/openapi.json` describes exactly what the gateway serves.

mod support;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use support::*;

async fn document() -> Value {
    let app = app(Fakes::default().upstreams());
    let answer = get(&app, "/api/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.body
}

/// `(METHOD, path)` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_lists_every_served_route_and_nothing_else() {
    let document = document().await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{}", document["openapi"]);

    let mut served: BTreeSet<(String, String)> =
        gateway::routes().into_iter().map(|(method, path)| (method.to_string(), path.to_owned())).collect();
    assert_eq!(served.len(), 29);
    // The standard stack's health check and metrics are part of the public API too.
    served.insert(("GET".to_owned(), "/healthz".to_owned()));
    served.insert(("GET".to_owned(), "/metrics".to_owned()));
    assert_eq!(operations(&document), served);

    for path in [
        "/api/customers",
        "/api/customers/{id}",
        "/api/products",
        "/api/products/{sku}",
        "/api/inventory/{sku}",
        "/api/orders",
        "/api/orders/{id}",
        "/api/orders/{id}/cancel",
        "/api/orders/{id}/details",
        "/api/customers/{id}/orders",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/api/admin/dead-letters",
        "/api/admin/dead-letters/{id}",
        "/api/admin/dead-letters/{id}/replay",
        "/api/admin/dead-letters/{id}/discard",
        "/api/admin/sagas",
        "/api/admin/sagas/in-flight",
        "/api/admin/events/{stream}",
        "/api/dashboard",
        "/api/dashboard/stream",
        "/dashboard",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} is not documented");
    }
}

#[tokio::test]
async fn every_listed_route_is_really_served() {
    let app = app(Fakes::default().upstreams());
    // The stream never ends: `tests/dashboard.rs` reads its first events.
    for (method, path) in gateway::routes().into_iter().filter(|(_, path)| *path != "/api/dashboard/stream") {
        let uri = path.replace("{id}", CUSTOMER).replace("{sku}", "A-1").replace("{stream}", "order-1");
        let body = (method != Method::GET).then(|| serde_json::json!({}));
        let answer = send(&app, method.clone(), &uri, body.as_ref(), &[]).await;
        // Whatever the service thinks of the request, the gateway routed it.
        assert_ne!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let fallback = answer.body["detail"].as_str().is_some_and(|d| d.starts_with("no resource at"));
        assert!(!fallback, "{method} {path} is not routed");
    }
}

#[tokio::test]
async fn every_operation_declares_its_answers_and_errors() {
    let document = document().await;
    let problem = "#/components/schemas/Problem";
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no success answer");
        // Every operation refuses unknown query parameters.
        assert!(responses.contains_key("400"), "{method} {path}: no 400");
        if path.starts_with("/api/") {
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
        }
        // Every operation that calls a service can meet its trouble.
        // (The dashboard's show what they can read, and name the rest.)
        if path.starts_with("/api/") && path != "/api/openapi.json" && !path.starts_with("/api/dashboard") {
            for status in ["502", "503", "504"] {
                assert!(responses.contains_key(status), "{method} {path}: no {status}");
            }
        }
        if operation.get("requestBody").is_some() {
            for status in ["400", "408", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{method} {path}: no {status}");
            }
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.get("$ref").is_some(), "{method} {path}: request body without a schema");
        }
        for (status, response) in responses {
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    let name = reference.strip_prefix("#/components/responses/").unwrap();
                    &document["components"]["responses"][name]
                }
                None => response,
            };
            if status.starts_with('4') || status.starts_with('5') {
                let content = &response["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(content, problem, "{method} {path} {status}: not a problem");
            }
        }
    }
    let order = &document["paths"]["/api/orders"]["post"];
    assert_eq!(
        order["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateOrder"
    );
    assert_eq!(
        order["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Accepted"
    );
    let details = &document["paths"]["/api/orders/{id}/details"]["get"];
    assert_eq!(
        details["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OrderDetails"
    );
}

/// Every `$ref` anywhere in `value`.
fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(members) => {
            for (name, member) in members {
                match (name.as_str(), member) {
                    ("$ref", Value::String(reference)) => found.push(reference),
                    _ => references(member, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn every_reference_resolves() {
    let document = document().await;
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(found.len() > 50, "{}", found.len());
    for reference in found {
        let pointer = reference.strip_prefix('#').unwrap();
        assert!(document.pointer(pointer).is_some(), "{reference} does not resolve");
    }
    let details = &document["components"]["schemas"]["OrderDetails"];
    assert_eq!(details["properties"]["partial"]["items"]["$ref"], "#/components/schemas/Part");
    let required: BTreeSet<&str> =
        details["required"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(required, BTreeSet::from(["order", "customer", "products", "payment", "shipment", "partial"]));
    let order = &document["components"]["schemas"]["OrderView"]["properties"];
    assert_eq!(order["total"]["type"], "integer");
}
