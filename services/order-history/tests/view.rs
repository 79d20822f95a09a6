//! The order-history view on SQLite and PostgreSQL, fed as its consumer
//! feeds it (other services' events appended to its own log) and read
//! through its HTTP API: events of different services in any order, a
//! stale status redelivered after a newer one, renames fanned out, an
//! order's lines (delivered twice) each once and in order, and the view
//! unavailable (503) until its first generation is built.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::catalog::{Product, ProductAdded, ProductRenamed};
use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
use contracts::order::{OrderApproved, OrderCreated, OrderStatus};
use contracts::order_history::CustomerOrders;
use contracts::payment::{Payment, PaymentChanged, PaymentStatus};
use contracts::{Address, OrderLine};
use order_history::{Config, OrderHistory};
use polis_core::{ExpectedVersion, Message, MessageType, NewEvent};
use polis_projection::{Ingest, Projector, ProjectorHandle, ProjectorOptions};
use polis_runtime::Service as _;
use polis_store::sql::{Sql, SqlStore};
use testsupport::{Answer, call, hosted};
use uuid::Uuid;

struct App<S> {
    store: Arc<S>,
    router: axum::Router,
}

impl<S> App<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn new(store: Arc<S>) -> Self {
        let service = OrderHistory::open(store.clone(), Config::default()).await.unwrap();
        Self { store, router: hosted(service.router()) }
    }

    /// Starts the view's projection.
    fn project(&self) -> ProjectorHandle {
        let mut options = ProjectorOptions::default();
        options.poll_interval = Duration::from_millis(20);
        Projector::new(self.store.clone(), options).with(order_history::projection::OrderHistoryProjection).spawn()
    }

    /// Appends `body` as `source`'s event keyed `key`, as the consumer's
    /// `Ingest` does.
    async fn ingest<T: MessageType>(&self, source: &str, key: &str, body: &T) {
        let message = Message::typed_event(source, key, body).unwrap();
        let event = NewEvent {
            id: message.id,
            event_type: message.message_type.clone(),
            schema_version: 1,
            time: message.time,
            data: message.data.clone(),
            metadata: message.metadata.clone(),
        };
        self.store.append(&Ingest::stream(&message), ExpectedVersion::Any, vec![event]).await.unwrap();
    }

    async fn orders(&self, customer: Uuid) -> Answer {
        call(&self.router, Method::GET, &format!("/customers/{customer}/orders"), None).await
    }

    /// The customer's orders once `check` holds for the view.
    async fn wait_until(&self, customer: Uuid, check: impl Fn(&CustomerOrders) -> bool) -> CustomerOrders {
        let result = polis_testkit::wait_for(Duration::from_secs(20), || async {
            let answer = self.orders(customer).await;
            answer.status == StatusCode::OK && check(&answer.json::<CustomerOrders>())
        })
        .await;
        let answer = self.orders(customer).await;
        assert!(result.is_ok(), "the view never got there: {} {}", answer.status, answer.body);
        answer.json()
    }
}

fn customer(id: Uuid, name: &str) -> Customer {
    let address =
        Address { line1: "1 Main St".into(), city: "Utrecht".into(), postal_code: "3511".into(), country: "NL".into() };
    Customer { id, name: name.into(), email: "ann@example.com".into(), address, credit_limit: 1_000 }
}

fn payment(order_id: Uuid, customer_id: Uuid, status: PaymentStatus) -> PaymentChanged {
    PaymentChanged { payment: Payment { order_id, customer_id: Some(customer_id), amount: 500, status, reason: None } }
}

async fn events_in_any_order_stale_ones_and_renames<S>(app: App<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let (customer_id, order_id) = (Uuid::now_v7(), Uuid::now_v7());
    // Before the first generation is built, the view says so.
    assert_eq!(app.orders(customer_id).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let projector = app.project();

    // The payment arrives before the order, the order before the customer
    // and the product, and a stale AUTHORIZED after the CAPTURED.
    let key = order_id.to_string();
    app.ingest("payment", &key, &payment(order_id, customer_id, PaymentStatus::Authorized)).await;
    app.ingest("payment", &key, &payment(order_id, customer_id, PaymentStatus::Captured)).await;
    let lines = vec![OrderLine { sku: "MUG".into(), quantity: 2, unit_price: 250 }];
    let created = OrderCreated { order_id, customer_id, lines, total: 500, saga: None };
    app.ingest("order", &key, &created).await;
    app.ingest("order", &key, &OrderApproved { order_id }).await;
    app.ingest("payment", &key, &payment(order_id, customer_id, PaymentStatus::Authorized)).await;
    let registered = CustomerRegistered { customer: customer(customer_id, "Ann"), version: 1 };
    app.ingest("customer", &customer_id.to_string(), &registered).await;
    let product = Product { sku: "MUG".into(), name: "Mug".into(), price: 250 };
    app.ingest("catalog", "MUG", &ProductAdded { product }).await;

    let view = app
        .wait_until(customer_id, |v| {
            v.orders
                .first()
                .is_some_and(|o| o.customer_name.is_some() && o.items.iter().all(|i| i.product_name.is_some()))
        })
        .await;
    let order = &view.orders[0];
    assert_eq!((order.id, order.status, order.total), (order_id, OrderStatus::Approved, 500));
    assert_eq!(order.payment_status, Some(PaymentStatus::Captured), "a stale status never wins: {order:?}");
    assert_eq!(order.customer_name.as_deref(), Some("Ann"));
    assert_eq!(order.items[0].product_name.as_deref(), Some("Mug"));
    assert_eq!(view.freshness.sources.keys().collect::<Vec<_>>(), ["catalog", "customer", "order", "payment"]);

    // Renames fan out; the price at order time stays.
    let renamed = ProductRenamed { sku: "MUG".into(), old_name: "Mug".into(), new_name: "Big mug".into() };
    app.ingest("catalog", "MUG", &renamed).await;
    app.ingest(
        "customer",
        &customer_id.to_string(),
        &CustomerUpdated { customer: customer(customer_id, "Ann B"), version: 2 },
    )
    .await;
    let view = app
        .wait_until(customer_id, |v| {
            v.orders[0].customer_name.as_deref() == Some("Ann B")
                && v.orders[0].items[0].product_name.as_deref() == Some("Big mug")
        })
        .await;
    assert_eq!(view.orders[0].items[0].unit_price, 250);

    // The single order, and an unknown one.
    let one = call(&app.router, Method::GET, &format!("/orders/{order_id}"), None).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    let missing = call(&app.router, Method::GET, &format!("/orders/{}", Uuid::now_v7()), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    projector.shutdown().await;
}

async fn an_order_of_several_lines<S>(app: App<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let (customer_id, order_id) = (Uuid::now_v7(), Uuid::now_v7());
    let projector = app.project();
    // One product known before the order, one only after it; the order is
    // delivered twice.
    let product = Product { sku: "MUG".into(), name: "Mug".into(), price: 250 };
    app.ingest("catalog", "MUG", &ProductAdded { product }).await;
    let lines = vec![
        OrderLine { sku: "MUG".into(), quantity: 2, unit_price: 250 },
        OrderLine { sku: "PEN".into(), quantity: 1, unit_price: 120 },
        OrderLine { sku: "MUG".into(), quantity: 1, unit_price: 240 },
    ];
    let created = OrderCreated { order_id, customer_id, lines, total: 860, saga: None };
    app.ingest("order", &order_id.to_string(), &created).await;
    app.ingest("order", &order_id.to_string(), &created).await;
    let product = Product { sku: "PEN".into(), name: "Pen".into(), price: 120 };
    app.ingest("catalog", "PEN", &ProductAdded { product }).await;

    let view = app
        .wait_until(customer_id, |v| v.orders.first().is_some_and(|o| o.items.iter().all(|i| i.product_name.is_some())))
        .await;
    let items: Vec<_> = view.orders[0]
        .items
        .iter()
        .map(|i| (i.sku.as_str(), i.product_name.as_deref(), i.quantity, i.unit_price))
        .collect();
    assert_eq!(
        items,
        [("MUG", Some("Mug"), 2, 250), ("PEN", Some("Pen"), 1, 120), ("MUG", Some("Mug"), 1, 240)],
        "every line once, in order, each with its product's name"
    );
    projector.shutdown().await;
}

testsupport::suite! {
    service: order_history::SERVICE,
    open: App::new,
    cases: [events_in_any_order_stale_ones_and_renames, an_order_of_several_lines],
}
