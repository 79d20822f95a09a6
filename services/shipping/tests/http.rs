//! The shipping service's HTTP API behind polis-runtime's standard layers,
//! on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;

testsupport::suite! {
    service: shipping::SERVICE,
    open: support::open,
    cases: [shipments_are_served, unknown_orders_are_404_and_bad_ids_400, the_api_is_read_only],
}

#[allow(unreachable_pub)]
mod cases {
    use axum::http::{Method, StatusCode};
    use contracts::customer::{Customer, CustomerRegistered};
    use contracts::shipping::{CancelShipment, ScheduleShipment, Shipment, ShipmentStatus};
    use contracts::{Address, RejectionReason};
    use polis_core::{Message, MessageType};
    use polis_runtime::Service as _;
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::json;
    use shipping::{SERVICE, Shipping};
    use testsupport::{PROBLEM, call, hosted};
    use uuid::Uuid;

    use crate::support::handle;

    async fn send<S: SqlStore, T: MessageType>(service: &Shipping<S>, order_id: Uuid, body: &T)
    where
        S::Tx: Sql,
    {
        let message = Message::typed_command("order", SERVICE, &order_id.to_string(), body).unwrap();
        handle(service, &message).await.unwrap();
    }

    async fn register<S: SqlStore>(service: &Shipping<S>, country: &str) -> Uuid
    where
        S::Tx: Sql,
    {
        let id = Uuid::now_v7();
        let address = Address {
            line1: "1 Main St".into(),
            city: "Town".into(),
            postal_code: "9".into(),
            country: country.into(),
        };
        let customer = Customer { id, name: "Bo".into(), email: "bo@example.com".into(), address, credit_limit: 1 };
        let registered = CustomerRegistered { customer, version: 1 };
        handle(service, &Message::typed_event("customer", &id.to_string(), &registered).unwrap()).await.unwrap();
        id
    }

    pub async fn shipments_are_served<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let app = hosted(service.router());
        let empty = call(&app, Method::GET, "/shipments", None).await;
        assert_eq!((empty.status, empty.body), (StatusCode::OK, json!([])));

        let (home, away) = (register(&service, "NL").await, register(&service, "AQ").await);
        let (scheduled, failed, tombstone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        send(&service, scheduled, &ScheduleShipment { order_id: scheduled, customer_id: home }).await;
        send(&service, failed, &ScheduleShipment { order_id: failed, customer_id: away }).await;
        send(&service, tombstone, &CancelShipment { order_id: tombstone }).await;

        let got = call(&app, Method::GET, &format!("/shipments/{scheduled}"), None).await;
        assert_eq!((got.status, got.content_type()), (StatusCode::OK, "application/json"));
        let shipment: Shipment = got.json();
        assert_eq!((shipment.order_id, shipment.status), (scheduled, ShipmentStatus::Scheduled));
        assert_eq!(shipment.address.unwrap().country, "NL");

        let got = call(&app, Method::GET, &format!("/shipments/{failed}"), None).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body["status"], "FAILED");
        assert_eq!(got.body["reason"], RejectionReason::Undeliverable.as_str());

        let listed = call(&app, Method::GET, "/shipments", None).await;
        assert_eq!(listed.status, StatusCode::OK);
        let all: Vec<Shipment> = listed.json();
        let listed: Vec<_> = all.iter().map(|s| (s.order_id, s.status)).collect();
        assert_eq!(
            listed,
            [
                (scheduled, ShipmentStatus::Scheduled),
                (failed, ShipmentStatus::Failed),
                (tombstone, ShipmentStatus::Cancelled),
            ]
        );
        assert_eq!(all[2].address, None, "a tombstone has no address");

        // A page at a time: `limit` items after the key `after`.
        let ids = |answer: &testsupport::Answer| {
            answer.json::<Vec<Shipment>>().iter().map(|s| s.order_id).collect::<Vec<_>>()
        };
        let first = call(&app, Method::GET, "/shipments?limit=2", None).await;
        assert_eq!(ids(&first), [scheduled, failed]);
        let rest = call(&app, Method::GET, &format!("/shipments?limit=2&after={failed}"), None).await;
        assert_eq!(ids(&rest), [tombstone]);
        let past = call(&app, Method::GET, &format!("/shipments?after={tombstone}"), None).await;
        assert_eq!(ids(&past), Vec::<Uuid>::new());
        for (query, field) in [("limit=0", "limit"), ("limit=10001", "limit"), ("after=nope", "after")] {
            let refused = call(&app, Method::GET, &format!("/shipments?{query}"), None).await;
            assert_eq!(refused.fields(), [field], "{query}");
        }
    }

    pub async fn unknown_orders_are_404_and_bad_ids_400<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let app = hosted(service.router());
        let problem = call(&app, Method::GET, &format!("/shipments/{}", Uuid::now_v7()), None).await;
        assert_eq!((problem.status, problem.content_type()), (StatusCode::NOT_FOUND, PROBLEM));
        assert_eq!(problem.body["status"], 404);

        for malformed in ["12345".to_owned(), format!("urn:uuid:{}", Uuid::now_v7())] {
            let problem = call(&app, Method::GET, &format!("/shipments/{malformed}"), None).await;
            assert_eq!((problem.status, problem.content_type()), (StatusCode::BAD_REQUEST, PROBLEM), "{malformed}");
            assert_eq!(problem.body["errors"][0]["field"], "order_id", "{}", problem.body);
        }
    }

    pub async fn the_api_is_read_only<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        // Shipments change only through messages.
        let post =
            call(&hosted(service.router()), Method::POST, "/shipments", Some(json!({ "order_id": Uuid::now_v7() })))
                .await;
        assert_eq!((post.status, post.content_type()), (StatusCode::METHOD_NOT_ALLOWED, PROBLEM));
    }
}
