//! The payment service's part of the test harness (the rest is
//! `testsupport`'s): the service opened on a store, its handler run in a
//! transaction, hand-built messages as the other services would send them,
//! and views of its tables and outcomes.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use polis_runtime::Service as _;
use std::sync::Arc;

use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
use contracts::inventory::StockReserved;
use contracts::order::OrderRejected;
use contracts::payment::{AuthorizePayment, CapturePayment, RefundPayment, VoidPayment};
use contracts::shipping::{ShipmentCancelled, ShipmentScheduled};
use contracts::{Address, Money, RejectionReason, SagaStyle};
use payment::{Config, Payment};
use polis_bus::HandlerError;
use polis_core::{Message, MessageType};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use uuid::Uuid;

/// The service, with its default settings, on `store`.
pub async fn open<S>(store: Arc<S>) -> Payment<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let service = Payment::open(store, Config::default()).await.unwrap();
    // The replica's first (empty) generation, so that its view exists.
    testsupport::project(&service).await;
    service
}

/// Runs `message` through the service's handler for `style` in one
/// transaction, as the consumer does (minus the inbox).
pub async fn handle<S>(service: &Payment<S>, style: SagaStyle, message: &Message) -> Result<(), HandlerError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let config = Config { saga: style, ..service.config().clone() };
    testsupport::handle(&**service.store(), payment::PaymentHandler::new(&config), message).await?;
    // The customer replica is a projection: bring it up to date, as the host would.
    testsupport::project(service).await;
    Ok(())
}

/// Customer versions for the events below: each later than the last.
fn next_version() -> u64 {
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    VERSION.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

// ---- messages -----------------------------------------------------------------

pub fn customer(id: Uuid, email: &str, credit_limit: Money) -> Customer {
    Customer {
        id,
        name: "Ann".into(),
        email: email.into(),
        address: Address {
            line1: "1 Main St".into(),
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country: "US".into(),
        },
        credit_limit,
    }
}

pub fn registered(id: Uuid, email: &str, credit_limit: Money) -> Message {
    let body = CustomerRegistered { customer: customer(id, email, credit_limit), version: next_version() };
    Message::typed_event("customer", &id.to_string(), &body).unwrap()
}

pub fn updated(id: Uuid, email: &str, credit_limit: Money) -> Message {
    let body = CustomerUpdated { customer: customer(id, email, credit_limit), version: next_version() };
    Message::typed_event("customer", &id.to_string(), &body).unwrap()
}

fn command<T: MessageType>(order_id: Uuid, body: &T) -> Message {
    Message::typed_command("order", payment::SERVICE, &order_id.to_string(), body).unwrap()
}

fn event<T: MessageType>(source: &str, order_id: Uuid, body: &T) -> Message {
    Message::typed_event(source, &order_id.to_string(), body).unwrap()
}

/// What asks for an authorization in `style`: the orchestrator's command or
/// inventory's `StockReserved`.
pub fn authorize(style: SagaStyle, order_id: Uuid, customer_id: Uuid, amount: Money) -> Message {
    match style {
        SagaStyle::Orchestration => command(order_id, &AuthorizePayment { order_id, customer_id, amount }),
        SagaStyle::Choreography => {
            event("inventory", order_id, &StockReserved { order_id, customer_id, total: amount })
        }
    }
}

/// `CapturePayment` or shipping's `ShipmentScheduled`.
pub fn capture(style: SagaStyle, order_id: Uuid) -> Message {
    match style {
        SagaStyle::Orchestration => command(order_id, &CapturePayment { order_id }),
        SagaStyle::Choreography => {
            event("shipping", order_id, &ShipmentScheduled { order_id, shipment_id: Uuid::now_v7() })
        }
    }
}

/// `VoidPayment` or order's `OrderRejected`.
pub fn void(style: SagaStyle, order_id: Uuid) -> Message {
    match style {
        SagaStyle::Orchestration => command(order_id, &VoidPayment { order_id }),
        SagaStyle::Choreography => event(
            "order",
            order_id,
            &OrderRejected { order_id, reason: RejectionReason::Undeliverable, saga: Some(SagaStyle::Choreography) },
        ),
    }
}

/// `RefundPayment` or shipping's `ShipmentCancelled`.
pub fn refund(style: SagaStyle, order_id: Uuid) -> Message {
    match style {
        SagaStyle::Orchestration => command(order_id, &RefundPayment { order_id }),
        SagaStyle::Choreography => event("shipping", order_id, &ShipmentCancelled { order_id }),
    }
}

// ---- what the service wrote -----------------------------------------------------

/// Asserts that `sent` is the outcome `body` of `trigger`: a reply to a
/// command, an event caused by an event, keyed by the order either way.
pub fn assert_outcome<T>(sent: &Message, trigger: &Message, order_id: Uuid, body: &T)
where
    T: MessageType + PartialEq + std::fmt::Debug,
{
    assert_eq!(&testsupport::outcome::<T>(sent, trigger, payment::SERVICE), body);
    assert_eq!(sent.key, order_id.to_string());
}

/// A payment row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub customer_id: Option<Uuid>,
    pub amount: Money,
    pub status: String,
    pub reason: Option<String>,
}

pub async fn payment_row<S>(store: &S, order_id: Uuid) -> Option<Row>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store
        .query_optional("SELECT customer_id, amount, status, reason FROM payments WHERE order_id = $1", args![order_id])
        .await
        .unwrap()?;
    Some(Row {
        customer_id: row.opt_text("customer_id").unwrap().map(|t| Uuid::parse_str(&t).unwrap()),
        amount: row.int("amount").unwrap(),
        status: row.text("status").unwrap(),
        reason: row.opt_text("reason").unwrap(),
    })
}

pub async fn status_of<S>(store: &S, order_id: Uuid) -> Option<String>
where
    S: SqlStore,
    S::Tx: Sql,
{
    payment_row(store, order_id).await.map(|row| row.status)
}

pub async fn payment_count<S>(store: &S) -> i64
where
    S: SqlStore,
    S::Tx: Sql,
{
    store.query("SELECT COUNT(*) AS n FROM payments", args![]).await.unwrap()[0].int("n").unwrap()
}

/// The exposure kept on the customer's credit-lock row, and the sum of its
/// open payments it stands for.
pub async fn kept_and_summed_exposure<S>(store: &S, customer_id: Uuid) -> (i64, i64)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let kept = store
        .query("SELECT exposure FROM payment_credit_locks WHERE customer_id = $1", args![customer_id])
        .await
        .unwrap()[0]
        .int("exposure")
        .unwrap();
    let summed = store
        .query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS s FROM payments \
             WHERE customer_id = $1 AND status IN ('AUTHORIZED', 'CAPTURED')",
            args![customer_id],
        )
        .await
        .unwrap()[0]
        .int("s")
        .unwrap();
    (kept, summed)
}
