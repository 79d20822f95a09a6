#![allow(clippy::unwrap_used)]
//! The distributed deployment: every fake service listens on its own port
//! (0, so the kernel picks) and the gateway reaches it over real HTTP.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::http::{Method, StatusCode};
use gateway::{OrderDetails, Part, Upstream, Upstreams};
use polis_runtime::problem::types;
use polis_runtime::serve::{self, RunningServer};
use serde_json::json;
use support::*;

async fn listen(router: Router) -> RunningServer {
    let listener = serve::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    serve::spawn(listener, router, &polis_runtime::HttpOptions::default()).unwrap()
}

/// The six fakes, each on its own server; the customer service behind a
/// path prefix, as a reverse proxy would put it.
struct Servers {
    fakes: Fakes,
    upstreams: Upstreams,
    _servers: Vec<RunningServer>,
}

async fn servers() -> Servers {
    let fakes = Fakes::default();
    let mut servers = Vec::new();
    let mut remote = |server: RunningServer, prefix: &str| {
        let upstream = Upstream::remote(&format!("{}{prefix}", server.url())).unwrap();
        servers.push(server);
        upstream
    };
    let customer = remote(
        listen(Router::new().nest("/customer-service", fakes.router(Service::Customer))).await,
        "/customer-service/",
    );
    let mut upstreams = Upstreams::new(|_| customer.clone());
    for service in Service::BUSINESS.into_iter().filter(|s| *s != Service::Customer) {
        upstreams.set(service, remote(listen(fakes.router(service)).await, ""));
    }
    Servers { fakes, upstreams, _servers: servers }
}

#[tokio::test]
async fn plain_routes_and_orders_work_over_http() {
    let servers = servers().await;
    let app = app(servers.upstreams.clone());

    let customer = get(&app, &format!("/api/customers/{CUSTOMER}")).await;
    assert_eq!((customer.status, customer.body), (StatusCode::OK, json(&support::customer())));

    let added = post(&app, "/api/products", &json!({ "sku": "C-3", "name": "Crate", "price": 1200 })).await;
    assert_eq!(added.status, StatusCode::CREATED);
    assert_eq!(added.header("location"), Some("/api/products/C-3"));

    let missing = get(&app, "/api/products/Z-9").await;
    assert_eq!((missing.status, missing.problem_type()), (StatusCode::NOT_FOUND, types::NOT_FOUND));

    let order = json!({ "customer_id": CUSTOMER, "items": [{ "sku": "X/1 é", "quantity": 2 }] });
    let placed = post(&app, "/api/orders", &order).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    assert_eq!(placed.header("location"), Some(format!("/api/orders/{PLACED}").as_str()));

    let calls = servers.fakes.recorder.calls();
    assert!(calls.contains(&"catalog GET /products/X%2F1%20%C3%A9".to_owned()), "{calls:?}");
    // Only /customer-service/... is served there: the 200 above went through the prefix (which the
    // nested fake no longer sees).
    assert!(calls.contains(&format!("customer GET /customers/{CUSTOMER}")), "{calls:?}");
}

#[tokio::test]
async fn details_compose_over_http_and_carry_the_request_id() {
    let servers = servers().await;
    let app = app(servers.upstreams.clone());
    let answer =
        send(&app, Method::GET, &format!("/api/orders/{ORDER}/details"), None, &[("x-request-id", "remote-7")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let composed: OrderDetails = serde_json::from_value(answer.body).unwrap();
    assert_eq!(composed.partial, []);
    assert_eq!(composed.payment, Some(payment()));
    assert_eq!(composed.products.unwrap().len(), 2);

    let seen = servers.fakes.recorder.seen();
    assert_eq!(seen.len(), 6, "{:?}", servers.fakes.recorder.calls());
    assert!(seen.iter().all(|s| s.request_id.as_deref() == Some("remote-7")), "{seen:?}");
}

#[tokio::test]
async fn silent_and_stopped_servers_are_504_and_503() {
    let servers = servers().await;
    let silent_server = listen(silent()).await;
    let mut upstreams = servers.upstreams.clone();
    upstreams.set(Service::Catalog, Upstream::remote(&silent_server.url()).unwrap());
    upstreams.set(Service::Payment, Upstream::remote(&silent_server.url()).unwrap());
    let app = app(upstreams.clone());

    let answer = get(&app, "/api/products").await;
    assert_eq!((answer.status, answer.problem_type()), (StatusCode::GATEWAY_TIMEOUT, types::GATEWAY_TIMEOUT));

    let composed: OrderDetails =
        serde_json::from_value(get(&app, &format!("/api/orders/{ORDER}/details")).await.body).unwrap();
    assert_eq!(composed.partial, [Part::Products, Part::Payment]);

    // A server that was there and is gone: connection refused.
    let order_server = listen(servers.fakes.router(Service::Order)).await;
    upstreams.set(Service::Order, Upstream::remote(&order_server.url()).unwrap());
    let app = support::app(upstreams);
    assert_eq!(get(&app, &format!("/api/orders/{ORDER}")).await.status, StatusCode::OK);
    order_server.shutdown().await.unwrap();
    let answer = get(&app, &format!("/api/orders/{ORDER}")).await;
    assert_eq!((answer.status, answer.problem_type()), (StatusCode::SERVICE_UNAVAILABLE, types::SERVICE_UNAVAILABLE));
}
