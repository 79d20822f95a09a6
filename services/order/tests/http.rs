//! The order service's HTTP API behind polis-runtime's standard layers, on
//! SQLite and PostgreSQL: a customer's orders are read a page at a time,
//! the newest orders newest first, and every id in a path is a UUID in its
//! canonical form or a 400.

#![allow(clippy::unwrap_used)]

use polis_runtime::Service as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use contracts::OrderLine;
use contracts::order::OrderView;
use order::{Config, OrderService, Placed};
use polis_store::sql::{Sql, SqlStore};
use testsupport::{Answer, PROBLEM, call, hosted};
use uuid::Uuid;

struct App<S> {
    service: OrderService<S>,
    router: Router,
}

impl<S> App<S>
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    async fn new(store: Arc<S>) -> Self {
        let service = OrderService::open(store, Config::default()).await.unwrap();
        let router = hosted(service.router());
        Self { service, router }
    }

    async fn get(&self, uri: &str) -> Answer {
        call(&self.router, Method::GET, uri, None).await
    }

    async fn place(&self, customer: Uuid) -> Uuid {
        let lines = vec![OrderLine { sku: "A-1".into(), quantity: 1, unit_price: 100 }];
        match self.service.place(customer, lines, None).await.unwrap() {
            Placed::New(id) => id,
            other => panic!("expected a new order, got {other:?}"),
        }
    }

    /// The ids of one page of `customer`'s orders.
    async fn page(&self, customer: Uuid, query: &str) -> Vec<Uuid> {
        let answer = self.get(&format!("/customers/{customer}/orders?{query}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
        answer.json::<Vec<OrderView>>().into_iter().map(|o| o.id).collect()
    }
}

async fn a_customers_orders_are_read_page_by_page<S>(app: App<S>)
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(app.place(ada).await);
        app.place(bob).await;
    }
    // Placed one after another: id order is the order they were placed in.
    assert!(mine.is_sorted());

    assert_eq!(app.page(ada, "").await, mine, "the default page holds them all");
    assert_eq!(app.page(ada, "limit=2").await, mine[..2]);
    assert_eq!(app.page(ada, &format!("limit=2&after={}", mine[1])).await, mine[2..4]);
    assert_eq!(app.page(ada, &format!("limit=2&after={}", mine[3])).await, mine[4..]);
    assert_eq!(app.page(ada, &format!("limit=2&after={}", mine[4])).await, Vec::<Uuid>::new());
    assert_eq!(app.page(Uuid::now_v7(), "limit=2").await, Vec::<Uuid>::new(), "no orders, no error");

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=10001", "limit"),
        ("after=nope", "after"),
        ("after=%7B0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70%7D", "after"),
    ] {
        let answer = app.get(&format!("/customers/{ada}/orders?{query}")).await;
        assert_eq!(answer.content_type(), PROBLEM, "{query}");
        assert_eq!(answer.fields(), [field], "{query}");
    }
}

async fn the_newest_orders_are_listed_newest_first<S>(app: App<S>)
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    let recent = |query: &'static str| {
        let app = &app;
        async move {
            let answer = app.get(&format!("/orders/recent{query}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
            answer.json::<Vec<OrderView>>().into_iter().map(|o| o.id).collect::<Vec<Uuid>>()
        }
    };
    assert_eq!(recent("").await, Vec::<Uuid>::new());
    let mut placed = Vec::new();
    for _ in 0..12 {
        placed.push(app.place(Uuid::now_v7()).await);
    }
    placed.reverse();
    assert_eq!(recent("").await, placed[..10], "ten by default");
    assert_eq!(recent("?limit=3").await, placed[..3]);
    assert_eq!(recent("?limit=100").await, placed);
    for query in ["limit=0", "limit=101", "limit=x", "limit=-1"] {
        let answer = app.get(&format!("/orders/recent?{query}")).await;
        assert_eq!(answer.fields(), ["limit"], "{query}");
    }
    assert_eq!(app.get("/orders/recent?after=x").await.status, StatusCode::BAD_REQUEST);
}

async fn ids_in_paths_are_canonical_uuids_or_a_400<S>(app: App<S>)
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    let customer = Uuid::now_v7();
    let id = app.place(customer).await;
    let upper = app.get(&format!("/orders/{}", id.to_string().to_uppercase())).await;
    assert_eq!((upper.status, upper.json::<OrderView>().id), (StatusCode::OK, id), "either case of hex digits");
    assert_eq!(app.get(&format!("/orders/{}", Uuid::now_v7())).await.status, StatusCode::NOT_FOUND);

    for malformed in [
        "not-a-uuid".to_owned(),
        format!("urn:uuid:{id}"),
        format!("%7B{id}%7D"),
        id.simple().to_string(),
        "%FF".to_owned(),
    ] {
        for (method, uri) in [
            (Method::GET, format!("/orders/{malformed}")),
            (Method::GET, format!("/orders/{malformed}?wait_ms=10")),
            (Method::POST, format!("/orders/{malformed}/cancel")),
            (Method::GET, format!("/customers/{malformed}/orders")),
        ] {
            let answer = call(&app.router, method.clone(), &uri, None).await;
            assert_eq!((answer.status, answer.content_type()), (StatusCode::BAD_REQUEST, PROBLEM), "{method} {uri}");
            if malformed != "%FF" {
                assert_eq!(answer.body["errors"][0]["field"], "id", "{method} {uri}: {}", answer.body);
            }
        }
    }
}

/// Temporal queries: the order as it was at a version or a time, and its
/// event stream, from the event store; what cannot be answered is a 404 or
/// a 422 naming the parameter.
async fn an_order_is_read_as_it_was_and_its_events_listed<S>(app: App<S>)
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let id = app.place(Uuid::now_v7()).await;
    let first = app.get(&format!("/orders/{id}?version=1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first = first.json::<OrderView>();
    assert_eq!((first.id, first.status, first.total), (id, contracts::order::OrderStatus::Pending, 100));
    let now = app.get(&format!("/orders/{id}?as_of={}", chrono::Utc::now().to_rfc3339().replace('+', "%2B"))).await;
    assert_eq!(now.json::<OrderView>(), first);

    let events = app.get(&format!("/orders/{id}/events")).await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.body);
    let events = events.json::<Vec<contracts::order::OrderEvent>>();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].event_type.as_str(), events[0].version), ("order.order-created.v1", 1));
    assert_eq!(events[0].data["order_id"], id.to_string());
    assert!(app.get(&format!("/orders/{id}/events?after=1")).await.json::<Vec<serde_json::Value>>().is_empty());

    for query in ["version=2", &format!("as_of={}", before.to_rfc3339().replace('+', "%2B"))] {
        let answer = app.get(&format!("/orders/{id}?{query}")).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{query}: {}", answer.body);
    }
    assert_eq!(app.get(&format!("/orders/{}/events", Uuid::now_v7())).await.status, StatusCode::NOT_FOUND);
    for (query, field) in [
        ("version=0", "version"),
        ("version=-1", "version"),
        ("version=x", "version"),
        ("as_of=yesterday", "as_of"),
        ("as_of=%zz", "as_of"),
        ("version=1&as_of=2026-12-05T10:00:00Z", "as_of"),
        ("version=1&wait_ms=10", "wait_ms"),
    ] {
        let answer = app.get(&format!("/orders/{id}?{query}")).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {}", answer.body);
        assert_eq!(answer.body["errors"][0]["field"], field, "{query}: {}", answer.body);
    }
    let answer = app.get(&format!("/orders/{id}/events?after=x")).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", answer.body);
}

testsupport::suite! {
    service: contracts::order::SERVICE,
    open: App::new,
    cases: [
        a_customers_orders_are_read_page_by_page,
        the_newest_orders_are_listed_newest_first,
        ids_in_paths_are_canonical_uuids_or_a_400,
        an_order_is_read_as_it_was_and_its_events_listed,
    ],
}
