//! The payment service's consumer: its subscriptions per saga style, a
//! request and its outcome through the durable in-process bus, and what
//! becomes a dead letter.

#![allow(clippy::unwrap_used)]

mod support;

use polis_runtime::Service as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contracts::SagaStyle;
use contracts::payment::PaymentAuthorized;
use payment::Payment;
use polis_bus::{ConsumerOptions, Handler, InProcessBus, Outcome};
use polis_core::bus::{Acker, Bus, BusError, Delivery};
use polis_core::{Message, TransactionalStore};
use polis_projection::{Projector, ProjectorOptions};
use polis_store::SqliteEventStore;
use polis_testkit::wait_for;
use serde_json::json;
use support::*;
use testsupport::outbox;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn fast() -> ConsumerOptions {
    ConsumerOptions {
        max_attempts: 3,
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..ConsumerOptions::default()
    }
}

#[derive(Debug)]
struct NoBus;

#[async_trait]
impl Acker for NoBus {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }

    async fn nack(self: Box<Self>, _delay: Duration) -> Result<(), BusError> {
        Ok(())
    }
}

fn delivery(message: &Message) -> Delivery {
    Delivery::new(Ok(message.clone()), 1, Box::new(NoBus))
}

/// Both styles' inputs whatever the style: an order placed under the other
/// style before a restart still gets its commands or events handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriptions_cover_both_styles() {
    let (store, _guard) = testsupport::sqlite(payment::SERVICE).await;
    let service = open(store).await;
    {
        let debug = format!("{:?}", service.consumer(fast()).unwrap());
        assert!(debug.contains(r#"name: "payment""#), "{debug}");
        for topic in [
            "polis.customer.events.>",
            "polis.payment.commands.>",
            "polis.inventory.events.>",
            "polis.shipping.events.>",
            "polis.order.events.>",
        ] {
            assert!(debug.contains(topic), "{debug}");
        }
    }
}

/// Publishes a customer and a request for an authorization on the bus and
/// waits for the outcome in the outbox. The two travel on different topics,
/// so the request may come first: it is retried until the customer is in
/// the replica (ingested, then projected).
async fn authorization_through_the_bus(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::open(dir.path().join("bus.db")).await.unwrap());
    let (store, _guard) = testsupport::sqlite(payment::SERVICE).await;
    let service = open(store).await;
    let options = ConsumerOptions { max_attempts: 100, ..fast() };
    let _running = Arc::new(service.consumer(options).unwrap()).spawn(bus.clone()).await.unwrap();
    // The customer replica is a projection of what the consumer ingests.
    let projections = service.projections().into_iter();
    let projector =
        projections.fold(Projector::new(service.store().clone(), ProjectorOptions::default()), Projector::with_arc);
    let _projecting = projector.spawn();

    let (customer_id, order_id) = (Uuid::now_v7(), Uuid::now_v7());
    let request = authorize(style, order_id, customer_id, 500);
    bus.publish(std::slice::from_ref(&request)).await.unwrap();
    bus.publish(&[registered(customer_id, "eve@example.com", 1_000)]).await.unwrap();

    let store = service.store().clone();
    let arrived = wait_for(WAIT, || {
        let store = store.clone();
        async move { outbox(&*store).await.iter().any(|m| m.is::<PaymentAuthorized>()) }
    })
    .await;
    assert!(arrived.is_ok(), "no PaymentAuthorized in the outbox: {:?}", outbox(&*store).await);
    let sent = outbox(&*store).await;
    assert_eq!(sent.len(), 1);
    assert_outcome(&sent[0], &request, order_id, &PaymentAuthorized { order_id, customer_id, amount: 500 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_answers_a_command_through_the_bus() {
    authorization_through_the_bus(SagaStyle::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_reacts_to_an_event_through_the_bus() {
    authorization_through_the_bus(SagaStyle::Choreography).await;
}

async fn process(service: &Payment<SqliteEventStore>, style: SagaStyle, message: &Message) -> Outcome {
    let consumer = service.consumer(fast()).unwrap();
    let config = payment::Config { saga: style, ..service.config().clone() };
    let handler: Arc<dyn Handler<_>> = Arc::new(payment::PaymentHandler::new(&config));
    consumer.process(&handler, delivery(message)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_become_dead_letters_with_their_reason() {
    let (store, _guard) = testsupport::sqlite(payment::SERVICE).await;
    let service = open(store).await;
    let style = SagaStyle::Orchestration;

    // Permanent: an unknown command is dead-lettered at once.
    let unknown = Message::command("order", payment::SERVICE, "payment.teleport-money.v1", "k-1", json!({}));
    assert_eq!(process(&service, style, &unknown).await, Outcome::DeadLettered);

    // Transient: a customer that never arrives exhausts the retries.
    let (customer_id, order_id) = (Uuid::now_v7(), Uuid::now_v7());
    let orphan = authorize(style, order_id, customer_id, 100);
    assert_eq!(process(&service, style, &orphan).await, Outcome::DeadLettered);

    let letters = service.store().dead_letters(Some(payment::SERVICE)).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].message_id, Some(unknown.id));
    assert!(letters[0].error.contains("teleport-money"), "{}", letters[0].error);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[1].message_id, Some(orphan.id));
    assert!(letters[1].error.contains("not replicated"), "{}", letters[1].error);
    assert_eq!(letters[1].attempts, 3);
    assert!(outbox(&**service.store()).await.is_empty());

    // A good message is handled, and its redelivery is a duplicate with no second effect.
    let customer = registered(Uuid::now_v7(), "fay@example.com", 100);
    assert_eq!(process(&service, style, &customer).await, Outcome::Handled);
    assert_eq!(process(&service, style, &customer).await, Outcome::Duplicate);
    assert_eq!(payment_count(&**service.store()).await, 0);
}
