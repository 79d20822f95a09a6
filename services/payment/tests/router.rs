//! The payment service's HTTP API behind the standard layers, on SQLite and
//! PostgreSQL: payments by order, the admin list, credit per customer, and
//! problem+json for unknown ids (404) and malformed ones (422 naming the
//! path parameter).
//!
//! The API is read-only (payments change only through the saga's messages),
//! so there is no write to validate and no duplicate to answer 409.

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;

testsupport::suite! {
    service: payment::SERVICE,
    open: support::open,
    cases: [
        a_payment_is_served_by_order_id,
        every_payment_is_listed,
        credit_shows_the_limit_and_the_open_exposure,
        unknown_ids_are_not_found,
        malformed_ids_are_bad_requests_naming_the_parameter,
        only_get_is_allowed,
    ],
}

#[allow(unreachable_pub)]
mod cases {
    use axum::http::{Method, StatusCode};
    use contracts::SagaStyle;
    use contracts::payment::{Credit, Payment as PaymentView, PaymentStatus};
    use payment::Payment;
    use polis_runtime::Service as _;
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::Value;
    use testsupport::{Answer, PROBLEM, hosted};
    use uuid::Uuid;

    use crate::support::*;

    const STYLE: SagaStyle = SagaStyle::Orchestration;

    async fn call<S>(service: &Payment<S>, method: Method, uri: &str) -> Answer
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        testsupport::call(&hosted(service.router()), method, uri, None).await
    }

    async fn get<S>(service: &Payment<S>, uri: &str) -> (StatusCode, Value)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let answer = call(service, Method::GET, uri).await;
        let expected = if answer.status.is_success() { "application/json" } else { PROBLEM };
        assert_eq!(answer.content_type(), expected, "{uri}: {}", answer.body);
        (answer.status, answer.body)
    }

    async fn new_customer<S>(service: &Payment<S>, limit: i64) -> Uuid
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let id = Uuid::now_v7();
        handle(service, STYLE, &registered(id, "dee@example.com", limit)).await.unwrap();
        id
    }

    async fn authorize_order<S>(service: &Payment<S>, customer_id: Uuid, amount: i64) -> Uuid
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let order_id = Uuid::now_v7();
        handle(service, STYLE, &authorize(STYLE, order_id, customer_id, amount)).await.unwrap();
        order_id
    }

    pub async fn a_payment_is_served_by_order_id<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = new_customer(&service, 1_000).await;
        let order_id = authorize_order(&service, customer_id, 300).await;
        let (status, body) = get(&service, &format!("/payments/{order_id}")).await;
        assert_eq!(status, StatusCode::OK);
        let payment: PaymentView = serde_json::from_value(body.clone()).unwrap();
        let expected = PaymentView {
            order_id,
            customer_id: Some(customer_id),
            amount: 300,
            status: PaymentStatus::Authorized,
            reason: None,
        };
        assert_eq!(payment, expected);
        assert_eq!(body["status"], "AUTHORIZED", "statuses travel in their wire names");

        let failed = authorize_order(&service, customer_id, 5_000).await;
        let (_, body) = get(&service, &format!("/payments/{failed}")).await;
        assert_eq!((body["status"].as_str(), body["reason"].as_str()), (Some("FAILED"), Some("CREDIT_LIMIT_EXCEEDED")));
    }

    pub async fn every_payment_is_listed<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let (status, body) = get(&service, "/payments").await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));

        let customer_id = new_customer(&service, 1_000).await;
        let first = authorize_order(&service, customer_id, 100).await;
        let second = authorize_order(&service, customer_id, 200).await;
        let tombstone = Uuid::now_v7();
        handle(&service, STYLE, &void(STYLE, tombstone)).await.unwrap();

        let (status, body) = get(&service, "/payments").await;
        assert_eq!(status, StatusCode::OK);
        let payments: Vec<PaymentView> = serde_json::from_value(body).unwrap();
        let ids: Vec<Uuid> = payments.iter().map(|p| p.order_id).collect();
        assert_eq!(ids, [first, second, tombstone], "oldest first");
        let voided = &payments[2];
        assert_eq!((voided.customer_id, voided.amount, voided.status), (None, 0, PaymentStatus::Voided));
    }

    pub async fn credit_shows_the_limit_and_the_open_exposure<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = new_customer(&service, 1_000).await;
        let credit = |service: &Payment<S>| {
            let service = service.clone();
            async move {
                let (status, body) = get(&service, &format!("/credit/{customer_id}")).await;
                assert_eq!(status, StatusCode::OK);
                serde_json::from_value::<Credit>(body).unwrap()
            }
        };
        assert_eq!(credit(&service).await, Credit { customer_id, credit_limit: 1_000, exposure: 0 });

        let captured = authorize_order(&service, customer_id, 250).await;
        handle(&service, STYLE, &capture(STYLE, captured)).await.unwrap();
        let voided = authorize_order(&service, customer_id, 100).await;
        handle(&service, STYLE, &void(STYLE, voided)).await.unwrap();
        authorize_order(&service, customer_id, 300).await;
        authorize_order(&service, customer_id, 900).await; // fails: over the limit
        assert_eq!(credit(&service).await, Credit { customer_id, credit_limit: 1_000, exposure: 550 });

        handle(&service, STYLE, &updated(customer_id, "dee@example.com", 2_000)).await.unwrap();
        assert_eq!(credit(&service).await.credit_limit, 2_000);
    }

    pub async fn unknown_ids_are_not_found<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let unknown = Uuid::now_v7();
        for uri in [format!("/payments/{unknown}"), format!("/credit/{unknown}")] {
            let (status, body) = get(&service, &uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body["status"], 404);
            assert!(body["detail"].as_str().unwrap().contains(&unknown.to_string()), "{body}");
        }
        let (status, _) = get(&service, "/nothing-here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    pub async fn malformed_ids_are_bad_requests_naming_the_parameter<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let braced = format!("/credit/%7B{}%7D", Uuid::now_v7());
        for (uri, field) in
            [("/payments/not-a-uuid", "order_id"), ("/credit/42", "customer_id"), (&braced, "customer_id")]
        {
            let (status, body) = get(&service, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body["errors"][0]["field"], field, "{body}");
            assert!(body["errors"][0]["message"].as_str().unwrap().contains("UUID"), "{body}");
        }
    }

    pub async fn only_get_is_allowed<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let post = call(&service, Method::POST, "/payments").await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(post.is_problem());
        let delete = call(&service, Method::DELETE, &format!("/payments/{}", Uuid::now_v7())).await;
        assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
