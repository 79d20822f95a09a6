//! The inventory service's HTTP API behind polis-runtime's standard layers,
//! on SQLite and PostgreSQL: happy paths, a 422 naming the field for every
//! invalid input, 404s for unknown skus and orders.

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;

testsupport::suite! {
    service: inventory::SERVICE,
    open: support::open,
    cases: [
        setting_stock_creates_updates_and_announces,
        setting_stock_leaves_reserved_untouched,
        stock_is_listed_by_sku,
        invalid_stock_requests_name_the_field,
        unknown_skus_and_orders_are_404,
        reservations_are_served,
    ],
}

#[allow(unreachable_pub)]
mod cases {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode, header};
    use contracts::Quantity;
    use contracts::inventory::{ReleaseStock, Reservation, ReservationStatus, ReserveStock, StockAdjusted, StockLevel};
    use inventory::{Inventory, SERVICE};
    use polis_core::{Message, MessageKind};
    use polis_runtime::Service as _;
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::{Value, json};
    use testsupport::{Answer, PROBLEM, call, hosted, oneshot, sent};
    use uuid::Uuid;

    use crate::support::handle;

    async fn put<S: SqlStore>(service: &Inventory<S>, sku: &str, available: i64) -> Value
    where
        S::Tx: Sql,
    {
        let uri = format!("/inventory/{sku}");
        let answer = call(&hosted(service.router()), Method::PUT, &uri, Some(json!({ "available": available }))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    async fn reserve<S: SqlStore>(service: &Inventory<S>, order_id: Uuid, sku: &str, quantity: i64)
    where
        S::Tx: Sql,
    {
        let body = ReserveStock {
            order_id,
            customer_id: Uuid::now_v7(),
            items: vec![Quantity { sku: sku.into(), quantity }],
            total: 100,
        };
        handle(service, &Message::typed_command("order", SERVICE, &order_id.to_string(), &body).unwrap())
            .await
            .unwrap();
    }

    pub async fn setting_stock_creates_updates_and_announces<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        let created: StockLevel = serde_json::from_value(put(&service, "SKU-1", 12).await).unwrap();
        assert_eq!(created, StockLevel { sku: "SKU-1".into(), available: 12, reserved: 0 });
        let updated: StockLevel = serde_json::from_value(put(&service, "SKU-1", 0).await).unwrap();
        assert_eq!(updated.available, 0);

        let got = call(&hosted(service.router()), Method::GET, "/inventory/SKU-1", None).await;
        assert_eq!((got.status, got.content_type()), (StatusCode::OK, "application/json"));
        assert_eq!(got.json::<StockLevel>(), updated);

        // Every change is announced, keyed by the sku, in order.
        let messages = sent(&**service.store()).await;
        let adjusted: Vec<StockAdjusted> = messages.iter().map(|m| m.decode().unwrap()).collect();
        assert_eq!(
            adjusted,
            [StockAdjusted { sku: "SKU-1".into(), available: 12 }, StockAdjusted { sku: "SKU-1".into(), available: 0 }]
        );
        assert!(messages.iter().all(|m| m.is::<StockAdjusted>() && m.kind == MessageKind::Event && m.key == "SKU-1"));
    }

    pub async fn setting_stock_leaves_reserved_untouched<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        put(&service, "SKU-1", 10).await;
        reserve(&service, Uuid::now_v7(), "SKU-1", 4).await;
        let level: StockLevel = serde_json::from_value(put(&service, "SKU-1", 50).await).unwrap();
        assert_eq!(level, StockLevel { sku: "SKU-1".into(), available: 50, reserved: 4 });
    }

    pub async fn stock_is_listed_by_sku<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        let app = hosted(service.router());
        let empty = call(&app, Method::GET, "/inventory", None).await;
        assert_eq!((empty.status, empty.body), (StatusCode::OK, json!([])));
        for (sku, available) in [("c", 3), ("a", 1), ("b", 2)] {
            put(&service, sku, available).await;
        }
        let listed = call(&app, Method::GET, "/inventory", None).await;
        assert_eq!(listed.status, StatusCode::OK);
        let levels: Vec<StockLevel> = listed.json();
        let listed: Vec<_> = levels.iter().map(|l| (l.sku.as_str(), l.available, l.reserved)).collect();
        assert_eq!(listed, [("a", 1, 0), ("b", 2, 0), ("c", 3, 0)]);

        // Page by page, by sku.
        let skus = |answer: Answer| -> Vec<String> {
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            answer.json::<Vec<StockLevel>>().into_iter().map(|l| l.sku).collect()
        };
        assert_eq!(skus(call(&app, Method::GET, "/inventory?limit=2", None).await), ["a", "b"]);
        assert_eq!(skus(call(&app, Method::GET, "/inventory?limit=2&after=b", None).await), ["c"]);
        for (query, field) in [("limit=0", "limit"), ("limit=abc", "limit"), ("after=a%20b", "after")] {
            let answer = call(&app, Method::GET, &format!("/inventory?{query}"), None).await;
            assert_eq!(answer.fields(), [field], "{query}");
        }
    }

    pub async fn invalid_stock_requests_name_the_field<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        let app = hosted(service.router());
        let long_sku = "x".repeat(65);
        let cases = [
            ("/inventory/SKU-1", json!({ "available": -1 }), "available"),
            ("/inventory/SKU-1", json!({ "available": 1_000_000_000_001_i64 }), "available"),
            ("/inventory/SKU-1", json!({ "available": "ten" }), "available"),
            ("/inventory/SKU-1", json!({ "available": 1.5 }), "available"),
            ("/inventory/SKU-1", json!({}), "available"),
            (&*format!("/inventory/{long_sku}"), json!({ "available": 1 }), "sku"),
            ("/inventory/%20padded", json!({ "available": 1 }), "sku"),
            ("/inventory/tab%09", json!({ "available": 1 }), "sku"),
            // The catalog's rule, no other: no product could ever have these skus.
            ("/inventory/a%20b", json!({ "available": 1 }), "sku"),
            ("/inventory/big.box", json!({ "available": 1 }), "sku"),
            ("/inventory/caf%C3%A9", json!({ "available": 1 }), "sku"),
            ("/inventory/a%2Fb", json!({ "available": 1 }), "sku"),
        ];
        for (uri, body, field) in cases {
            let answer = call(&app, Method::PUT, uri, Some(body.clone())).await;
            assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}: {}", answer.body);
            assert_eq!(answer.content_type(), PROBLEM);
            assert_eq!(answer.fields(), [field], "{uri} {body}");
        }

        // Not JSON at all: 400; not declared as JSON: 415.
        let answer = put_raw(&app, "/inventory/SKU-1", Some("application/json"), "{").await;
        assert_eq!((answer.status, answer.content_type()), (StatusCode::BAD_REQUEST, PROBLEM));
        let answer = put_raw(&app, "/inventory/SKU-1", None, r#"{"available":1}"#).await;
        assert_eq!((answer.status, answer.content_type()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, PROBLEM));

        // Nothing was written or announced.
        assert_eq!(call(&app, Method::GET, "/inventory", None).await.body, json!([]));
        assert!(sent(&**service.store()).await.is_empty());
    }

    /// A `PUT` with a body that is not JSON, or not declared as JSON.
    async fn put_raw(app: &axum::Router, uri: &str, content_type: Option<&str>, body: &'static str) -> Answer {
        let mut request = Request::builder().method(Method::PUT).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        oneshot(app, request.body(Body::from(body)).unwrap()).await
    }

    pub async fn unknown_skus_and_orders_are_404<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        let app = hosted(service.router());
        for uri in ["/inventory/nope".to_owned(), format!("/reservations/{}", Uuid::now_v7())] {
            let problem = call(&app, Method::GET, &uri, None).await;
            assert_eq!((problem.status, problem.content_type()), (StatusCode::NOT_FOUND, PROBLEM), "{uri}");
            assert_eq!(problem.body["status"], 404);
        }
        // Not an id at all, or one in another spelling: 400 naming the parameter.
        let id = Uuid::now_v7();
        for malformed in ["not-a-uuid".to_owned(), format!("urn:uuid:{id}"), format!("%7B{id}%7D")] {
            let problem = call(&app, Method::GET, &format!("/reservations/{malformed}"), None).await;
            assert_eq!((problem.status, problem.content_type()), (StatusCode::BAD_REQUEST, PROBLEM), "{malformed}");
            assert_eq!(problem.body["errors"][0]["field"], "order_id", "{}", problem.body);
        }
    }

    pub async fn reservations_are_served<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        put(&service, "SKU-1", 5).await;
        let (reserved, released, failed) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        reserve(&service, reserved, "SKU-1", 2).await;
        reserve(&service, released, "SKU-1", 1).await;
        let release = ReleaseStock { order_id: released };
        handle(&service, &Message::typed_command("order", SERVICE, &released.to_string(), &release).unwrap())
            .await
            .unwrap();
        reserve(&service, failed, "SKU-1", 9).await;

        let app = hosted(service.router());
        let one = call(&app, Method::GET, &format!("/reservations/{reserved}"), None).await;
        assert_eq!(one.status, StatusCode::OK);
        assert_eq!(
            one.json::<Reservation>(),
            Reservation {
                order_id: reserved,
                status: ReservationStatus::Reserved,
                items: vec![Quantity { sku: "SKU-1".into(), quantity: 2 }],
            }
        );

        let listed = call(&app, Method::GET, "/reservations", None).await;
        assert_eq!(listed.status, StatusCode::OK);
        let all: Vec<Reservation> = listed.json();
        let statuses: Vec<_> = all.iter().map(|r| (r.order_id, r.status)).collect();
        assert_eq!(
            statuses,
            [
                (reserved, ReservationStatus::Reserved),
                (released, ReservationStatus::Released),
                (failed, ReservationStatus::Failed),
            ]
        );
    }
}
