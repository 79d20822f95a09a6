//! Shared test support: the service on both backends, hand-built messages as
//! the other services would send them, and views of the tables and outbox.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
use contracts::inventory::StockReserved;
use contracts::order::OrderRejected;
use contracts::payment::{AuthorizePayment, CapturePayment, RefundPayment, VoidPayment};
use contracts::shipping::{ShipmentCancelled, ShipmentScheduled};
use contracts::{Address, Money, RejectionReason, SagaStyle};
use payment::{Config, Payment};
use polis_bus::HandlerError;
use polis_core::{Message, MessageKind, MessageType, TransactionalStore};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use uuid::Uuid;

/// Keeps whatever backs a store (a temp dir, a database) alive for a test.
pub type Guard = Box<dyn std::any::Any + Send>;

pub async fn sqlite(config: Config) -> (Payment<SqliteEventStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteEventStore::open(dir.path().join("payment.db"), SqliteOptions::new(payment::SERVICE)).await.unwrap();
    let service = Payment::open(Arc::new(store), config).await.unwrap();
    (service, Box::new(dir))
}

pub async fn postgres(config: Config) -> (Payment<PgEventStore>, Guard) {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new(payment::SERVICE)).await.unwrap();
    let service = Payment::open(Arc::new(store), config).await.unwrap();
    (service, Box::new(db))
}

/// Runs `message` through the service's handler in one transaction, as the
/// consumer does (minus the inbox).
pub async fn handle<S>(service: &Payment<S>, style: SagaStyle, message: &Message) -> Result<(), HandlerError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let handler = service.handler(style);
    let message = message.clone();
    service
        .store()
        .transaction::<_, HandlerError>(Box::new(move |tx| {
            Box::pin(async move { handler.handle_message(tx, &message).await })
        }))
        .await
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
    let body = CustomerRegistered { customer: customer(id, email, credit_limit) };
    Message::typed_event("customer", &id.to_string(), &body).unwrap()
}

pub fn updated(id: Uuid, email: &str, credit_limit: Money) -> Message {
    let body = CustomerUpdated { customer: customer(id, email, credit_limit) };
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
        SagaStyle::Choreography => {
            event("order", order_id, &OrderRejected { order_id, reason: RejectionReason::Undeliverable })
        }
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

/// Every message in the outbox, oldest first.
pub async fn outbox<S: TransactionalStore>(store: &S) -> Vec<Message> {
    store.unpublished(1000).await.unwrap().into_iter().map(|e| e.message).collect()
}

/// Asserts that `sent` is the outcome `body` of `trigger`: a reply to a
/// command, an event caused by an event, keyed by the order either way.
pub fn assert_outcome<T>(sent: &Message, trigger: &Message, order_id: Uuid, body: &T)
where
    T: MessageType + PartialEq + std::fmt::Debug,
{
    assert_eq!(sent.message_type, T::TYPE, "outcome type of {}", trigger.message_type);
    assert_eq!(&sent.decode::<T>().unwrap(), body);
    assert_eq!(sent.key, order_id.to_string());
    assert_eq!(sent.source, payment::SERVICE);
    assert_eq!(sent.metadata.causation_id, Some(trigger.id));
    match trigger.kind {
        MessageKind::Command => {
            assert_eq!(sent.kind, MessageKind::Reply);
            assert_eq!(sent.target, trigger.source, "a reply goes back to the sender");
        }
        _ => {
            assert_eq!(sent.kind, MessageKind::Event);
            assert_eq!(sent.target, payment::SERVICE, "an event travels on the payment stream");
        }
    }
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
