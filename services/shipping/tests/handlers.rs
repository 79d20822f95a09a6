//! The shipping service's message handling, on SQLite and PostgreSQL: the
//! address replica, each outcome, idempotency per order, compensation before
//! action, and replies (orchestration) versus events (choreography).

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;
use polis_runtime::Service as _;

testsupport::suite! {
    service: shipping::SERVICE,
    open: support::open,
    cases: [
        customer_events_feed_the_address_replica,
        a_schedule_command_replies_with_the_shipment,
        every_outcome_is_followed_by_the_shipment_as_it_now_is,
        an_authorized_payment_schedules_and_announces,
        a_blocked_country_is_undeliverable,
        blocked_countries_come_from_the_config,
        an_unreplicated_customer_is_retried,
        a_repeated_schedule_resends_the_recorded_outcome,
        a_cancellation_cancels_once,
        a_cancellation_before_scheduling_leaves_a_tombstone,
        choreography_cancels_on_rejection_and_cancel_request,
        a_failed_shipment_cancels_without_effect,
        unrelated_events_are_ignored,
        bad_messages_fail_permanently,
    ],
}

/// Both styles' inputs, whatever style new orders run in: an order placed
/// under the other style before a restart still gets its commands or events
/// handled.
#[tokio::test]
async fn the_consumer_subscribes_to_both_styles_inputs() {
    let (store, _guard) = testsupport::sqlite(shipping::SERVICE).await;
    let service = support::open(store).await;
    let consumer = format!("{:?}", service.consumer(polis_bus::ConsumerOptions::default()).unwrap());
    {
        assert_eq!(
            consumer,
            r#"Consumer { name: "shipping", topics: ["polis.customer.events.>", "polis.shipping.commands.>", "polis.payment.events.>", "polis.order.events.>"] }"#
        );
    }
}

#[allow(unreachable_pub)]
mod cases {
    use polis_runtime::Service as _;
    use std::sync::Arc;

    use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
    use contracts::order::{OrderApproved, OrderCancelRequested, OrderRejected};
    use contracts::payment::{PaymentAuthorized, PaymentCaptured};
    use contracts::shipping::{
        CancelShipment, ScheduleShipment, Shipment, ShipmentCancelled, ShipmentFailed, ShipmentScheduled,
        ShipmentStatus,
    };
    use contracts::{Address, RejectionReason, SagaStyle};
    use polis_bus::HandlerError;
    use polis_core::{Message, MessageType};
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::json;
    use shipping::{Config, SERVICE, Shipping, db};
    use testsupport::{sent, sole_outcome};
    use uuid::Uuid;

    use crate::support::handle;

    fn address(country: &str) -> Address {
        Address {
            line1: "1 Harbour Road".into(),
            city: "Port".into(),
            postal_code: "1234".into(),
            country: country.into(),
        }
    }

    fn customer(id: Uuid, country: &str) -> Customer {
        Customer {
            id,
            name: "Ada".into(),
            email: "ada@example.com".into(),
            address: address(country),
            credit_limit: 100_000,
        }
    }

    /// Registers a customer living in `country` through the replica; returns the id.
    async fn register<S: SqlStore>(service: &Shipping<S>, country: &str) -> Uuid
    where
        S::Tx: Sql,
    {
        let id = Uuid::now_v7();
        let registered = CustomerRegistered { customer: customer(id, country), version: 1 };
        handle(service, &Message::typed_event("customer", &id.to_string(), &registered).unwrap()).await.unwrap();
        id
    }

    fn schedule(order_id: Uuid, customer_id: Uuid) -> Message {
        let body = ScheduleShipment { order_id, customer_id };
        Message::typed_command("order", SERVICE, &order_id.to_string(), &body).unwrap()
    }

    fn cancel(order_id: Uuid) -> Message {
        Message::typed_command("order", SERVICE, &order_id.to_string(), &CancelShipment { order_id }).unwrap()
    }

    fn payment_authorized(order_id: Uuid, customer_id: Uuid) -> Message {
        let body = PaymentAuthorized { order_id, customer_id, amount: 4_250 };
        Message::typed_event("payment", &order_id.to_string(), &body).unwrap()
    }

    fn order_event<T: MessageType>(order_id: Uuid, body: &T) -> Message {
        Message::typed_event("order", &order_id.to_string(), body).unwrap()
    }

    async fn shipment<S: SqlStore>(service: &Shipping<S>, order_id: Uuid) -> Option<Shipment>
    where
        S::Tx: Sql,
    {
        db::shipment(&**service.store(), order_id).await.unwrap()
    }

    /// The one message sent since the last look, checked to be the outcome of
    /// `trigger` in the right form (reply to a command, event after an event).
    async fn outcome<S: SqlStore, T: MessageType>(service: &Shipping<S>, trigger: &Message) -> T
    where
        S::Tx: Sql,
    {
        sole_outcome(&**service.store(), trigger, SERVICE).await
    }

    pub async fn customer_events_feed_the_address_replica<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let id = register(&service, "NL").await;
        let replica = |service: Shipping<S>| async move { db::address(&**service.store(), id).await.unwrap() };
        assert_eq!(replica(service.clone()).await, Some(address("NL")));

        let mut moved = customer(id, "BE");
        moved.address.city = "Gent".into();
        let updated =
            Message::typed_event("customer", &id.to_string(), &CustomerUpdated { customer: moved.clone(), version: 3 })
                .unwrap();
        handle(&service, &updated).await.unwrap();
        assert_eq!(replica(service.clone()).await, Some(moved.address.clone()));

        // An older version arriving late (say replayed from the dead
        // letters) does not bring the old address back.
        let stale = CustomerUpdated { customer: customer(id, "NL"), version: 2 };
        let stale = Message::typed_event("customer", &id.to_string(), &stale).unwrap();
        handle(&service, &stale).await.unwrap();
        assert_eq!(replica(service.clone()).await, Some(moved.address));

        assert!(sent(&**service.store()).await.is_empty(), "the replica announces nothing");
    }

    pub async fn a_schedule_command_replies_with_the_shipment<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let order_id = Uuid::now_v7();
        let command = schedule(order_id, customer_id);
        handle(&service, &command).await.unwrap();

        let scheduled: ShipmentScheduled = outcome(&service, &command).await;
        assert_eq!(scheduled.order_id, order_id);
        assert_eq!(scheduled.shipment_id.get_version_num(), 7, "shipment ids are UUIDv7");
        assert_eq!(
            shipment(&service, order_id).await,
            Some(Shipment {
                id: scheduled.shipment_id,
                order_id,
                status: ShipmentStatus::Scheduled,
                address: Some(address("NL")),
                reason: None,
            })
        );
    }

    /// Read models follow `ShipmentChanged`, an event in both styles: the
    /// shipment's state after each outcome, keyed by the order.
    pub async fn every_outcome_is_followed_by_the_shipment_as_it_now_is<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let _ = testsupport::sent_all(&**service.store()).await;
        let order_id = Uuid::now_v7();
        handle(&service, &schedule(order_id, customer_id)).await.unwrap();
        handle(&service, &cancel(order_id)).await.unwrap();
        let changes: Vec<_> = testsupport::sent_all(&**service.store())
            .await
            .into_iter()
            .filter(|m| m.is::<contracts::shipping::ShipmentChanged>())
            .map(|m| {
                (m.kind, m.key.clone(), m.decode::<contracts::shipping::ShipmentChanged>().unwrap().shipment.status)
            })
            .collect();
        let key = order_id.to_string();
        assert_eq!(
            changes,
            [
                (polis_core::MessageKind::Event, key.clone(), ShipmentStatus::Scheduled),
                (polis_core::MessageKind::Event, key, ShipmentStatus::Cancelled)
            ]
        );
    }

    pub async fn an_authorized_payment_schedules_and_announces<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let order_id = Uuid::now_v7();
        let authorized = payment_authorized(order_id, customer_id);
        handle(&service, &authorized).await.unwrap();

        let scheduled: ShipmentScheduled = outcome(&service, &authorized).await;
        assert_eq!(scheduled.order_id, order_id);
        assert_eq!(shipment(&service, order_id).await.unwrap().status, ShipmentStatus::Scheduled);
    }

    pub async fn a_blocked_country_is_undeliverable<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        // "AQ" is blocked by default, whatever the case it is written in.
        for country in ["AQ", "aq"] {
            let customer_id = register(&service, country).await;
            for as_command in [true, false] {
                let order_id = Uuid::now_v7();
                let trigger = if as_command {
                    schedule(order_id, customer_id)
                } else {
                    payment_authorized(order_id, customer_id)
                };
                handle(&service, &trigger).await.unwrap();
                assert_eq!(
                    outcome::<_, ShipmentFailed>(&service, &trigger).await,
                    ShipmentFailed { order_id, reason: RejectionReason::Undeliverable }
                );
                let failed = shipment(&service, order_id).await.unwrap();
                assert_eq!(failed.status, ShipmentStatus::Failed);
                assert_eq!(failed.reason, Some(RejectionReason::Undeliverable));
                assert_eq!(failed.address, Some(address(country)), "the address is kept, to show why");
            }
        }
    }

    pub async fn blocked_countries_come_from_the_config<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let config = Config { blocked_countries: vec!["fr".into()], ..Config::default() };
        let service = Shipping::open(Arc::clone(service.store()), config).await.unwrap();
        let (french, antarctic) = (register(&service, "FR").await, register(&service, "AQ").await);

        let command = schedule(Uuid::now_v7(), french);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, ShipmentFailed>(&service, &command).await.reason, RejectionReason::Undeliverable);
        let command = schedule(Uuid::now_v7(), antarctic);
        handle(&service, &command).await.unwrap();
        outcome::<_, ShipmentScheduled>(&service, &command).await;
    }

    pub async fn an_unreplicated_customer_is_retried<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        let command = schedule(order_id, customer_id);
        match handle(&service, &command).await {
            Err(HandlerError::Transient(reason)) => assert!(reason.contains(&customer_id.to_string()), "{reason}"),
            other => panic!("expected a transient failure, got {other:?}"),
        }
        assert!(shipment(&service, order_id).await.is_none());
        assert!(sent(&**service.store()).await.is_empty());

        // The customer's registration arrives; the consumer's retry succeeds.
        let registered = CustomerRegistered { customer: customer(customer_id, "NL"), version: 1 };
        handle(&service, &Message::typed_event("customer", &customer_id.to_string(), &registered).unwrap())
            .await
            .unwrap();
        handle(&service, &command).await.unwrap();
        outcome::<_, ShipmentScheduled>(&service, &command).await;
    }

    pub async fn a_repeated_schedule_resends_the_recorded_outcome<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let order_id = Uuid::now_v7();
        let first = schedule(order_id, customer_id);
        handle(&service, &first).await.unwrap();
        let scheduled: ShipmentScheduled = outcome(&service, &first).await;

        // The same logical request in new messages, as a command and as an event.
        for again in [schedule(order_id, customer_id), payment_authorized(order_id, customer_id)] {
            handle(&service, &again).await.unwrap();
            assert_eq!(outcome::<_, ShipmentScheduled>(&service, &again).await, scheduled, "the same shipment");
        }
        assert_eq!(db::shipments(&**service.store(), polis_runtime::Page::first(100)).await.unwrap().len(), 1);

        // A failure is recorded too: the customer moving away later does not change it.
        let antarctic = register(&service, "AQ").await;
        let order_id = Uuid::now_v7();
        handle(&service, &schedule(order_id, antarctic)).await.unwrap();
        sent(&**service.store()).await;
        let moved = CustomerUpdated { customer: customer(antarctic, "NL"), version: 2 };
        handle(&service, &Message::typed_event("customer", &antarctic.to_string(), &moved).unwrap()).await.unwrap();
        let again = schedule(order_id, antarctic);
        handle(&service, &again).await.unwrap();
        assert_eq!(outcome::<_, ShipmentFailed>(&service, &again).await.reason, RejectionReason::Undeliverable);
    }

    pub async fn a_cancellation_cancels_once<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let order_id = Uuid::now_v7();
        handle(&service, &schedule(order_id, customer_id)).await.unwrap();
        let scheduled: ShipmentScheduled = sent(&**service.store()).await[0].decode().unwrap();

        for _ in 0..2 {
            let command = cancel(order_id);
            handle(&service, &command).await.unwrap();
            assert_eq!(outcome::<_, ShipmentCancelled>(&service, &command).await, ShipmentCancelled { order_id });
            let cancelled = shipment(&service, order_id).await.unwrap();
            assert_eq!((cancelled.id, cancelled.status), (scheduled.shipment_id, ShipmentStatus::Cancelled));
            assert_eq!(cancelled.address, Some(address("NL")));
        }

        // Scheduling again after the cancellation must not revive the shipment.
        let late = schedule(order_id, customer_id);
        handle(&service, &late).await.unwrap();
        assert_eq!(outcome::<_, ShipmentFailed>(&service, &late).await.reason, RejectionReason::Timeout);
        assert_eq!(shipment(&service, order_id).await.unwrap().status, ShipmentStatus::Cancelled);
    }

    pub async fn a_cancellation_before_scheduling_leaves_a_tombstone<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;
        let order_id = Uuid::now_v7();
        let command = cancel(order_id);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, ShipmentCancelled>(&service, &command).await, ShipmentCancelled { order_id });
        let tombstone = shipment(&service, order_id).await.unwrap();
        assert_eq!((tombstone.status, &tombstone.address, tombstone.reason), (ShipmentStatus::Cancelled, &None, None));

        for late in [schedule(order_id, customer_id), payment_authorized(order_id, customer_id)] {
            handle(&service, &late).await.unwrap();
            assert_eq!(
                outcome::<_, ShipmentFailed>(&service, &late).await,
                ShipmentFailed { order_id, reason: RejectionReason::Timeout }
            );
        }
        assert_eq!(shipment(&service, order_id).await.unwrap(), tombstone, "the tombstone stays as it was");

        // A tombstone answers even before the customer is replicated: no retry needed.
        let order_id = Uuid::now_v7();
        handle(&service, &cancel(order_id)).await.unwrap();
        sent(&**service.store()).await;
        let late = schedule(order_id, Uuid::now_v7());
        handle(&service, &late).await.unwrap();
        assert_eq!(outcome::<_, ShipmentFailed>(&service, &late).await.reason, RejectionReason::Timeout);
    }

    pub async fn choreography_cancels_on_rejection_and_cancel_request<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "NL").await;

        let rejected_order = Uuid::now_v7();
        handle(&service, &payment_authorized(rejected_order, customer_id)).await.unwrap();
        sent(&**service.store()).await;
        let rejected = order_event(
            rejected_order,
            &OrderRejected {
                order_id: rejected_order,
                reason: RejectionReason::PaymentDeclined,
                saga: Some(SagaStyle::Choreography),
            },
        );
        handle(&service, &rejected).await.unwrap();
        assert_eq!(outcome::<_, ShipmentCancelled>(&service, &rejected).await.order_id, rejected_order);
        assert_eq!(shipment(&service, rejected_order).await.unwrap().status, ShipmentStatus::Cancelled);

        let cancelled_order = Uuid::now_v7();
        handle(&service, &payment_authorized(cancelled_order, customer_id)).await.unwrap();
        sent(&**service.store()).await;
        let request = order_event(
            cancelled_order,
            &OrderCancelRequested { order_id: cancelled_order, saga: Some(SagaStyle::Choreography) },
        );
        handle(&service, &request).await.unwrap();
        assert_eq!(outcome::<_, ShipmentCancelled>(&service, &request).await.order_id, cancelled_order);
        assert_eq!(shipment(&service, cancelled_order).await.unwrap().status, ShipmentStatus::Cancelled);

        // A rejection that overtook the payment leaves a tombstone here too.
        let early_order = Uuid::now_v7();
        let early = order_event(
            early_order,
            &OrderRejected {
                order_id: early_order,
                reason: RejectionReason::Timeout,
                saga: Some(SagaStyle::Choreography),
            },
        );
        handle(&service, &early).await.unwrap();
        outcome::<_, ShipmentCancelled>(&service, &early).await;
        let late = payment_authorized(early_order, customer_id);
        handle(&service, &late).await.unwrap();
        assert_eq!(outcome::<_, ShipmentFailed>(&service, &late).await.reason, RejectionReason::Timeout);
    }

    pub async fn a_failed_shipment_cancels_without_effect<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let customer_id = register(&service, "AQ").await;
        let order_id = Uuid::now_v7();
        handle(&service, &schedule(order_id, customer_id)).await.unwrap();
        sent(&**service.store()).await;

        let command = cancel(order_id);
        handle(&service, &command).await.unwrap();
        outcome::<_, ShipmentCancelled>(&service, &command).await;
        let failed = shipment(&service, order_id).await.unwrap();
        assert_eq!((failed.status, failed.reason), (ShipmentStatus::Failed, Some(RejectionReason::Undeliverable)));
    }

    pub async fn unrelated_events_are_ignored<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let order_id = Uuid::now_v7();
        handle(&service, &order_event(order_id, &OrderApproved { order_id })).await.unwrap();
        let captured = PaymentCaptured { order_id, amount: 10 };
        handle(&service, &Message::typed_event("payment", &order_id.to_string(), &captured).unwrap()).await.unwrap();
        assert!(sent(&**service.store()).await.is_empty());
        assert!(db::shipments(&**service.store(), polis_runtime::Page::first(100)).await.unwrap().is_empty());
    }

    pub async fn bad_messages_fail_permanently<S: SqlStore>(service: Shipping<S>)
    where
        S::Tx: Sql,
    {
        let order_id = Uuid::now_v7();
        let key = order_id.to_string();
        let permanent = |result: Result<(), HandlerError>, what: &str| match result {
            Err(HandlerError::Permanent(reason)) => reason,
            other => panic!("{what}: expected a permanent failure, got {other:?}"),
        };

        let unknown = Message::command("order", SERVICE, "shipping.expedite.v1", &key, json!({}));
        assert!(permanent(handle(&service, &unknown).await, "unknown command").contains("shipping.expedite.v1"));

        let garbled = Message::command("order", SERVICE, ScheduleShipment::TYPE, &key, json!({ "order_id": "x" }));
        permanent(handle(&service, &garbled).await, "undecodable command");

        let garbled = Message::event("customer", CustomerRegistered::TYPE, &key, json!({ "customer": {} }));
        permanent(handle(&service, &garbled).await, "undecodable event");

        let id = Uuid::now_v7();
        let mut nul = customer(id, "NL");
        nul.address.city = "Po\0rt".into();
        let nul = Message::typed_event("customer", &id.to_string(), &CustomerRegistered { customer: nul, version: 1 })
            .unwrap();
        assert!(permanent(handle(&service, &nul).await, "NUL in an address").contains("customer.address.city"));

        let reply = Message::reply_to(&cancel(order_id), ShipmentCancelled::TYPE, json!({}));
        permanent(handle(&service, &reply).await, "a reply");

        assert!(sent(&**service.store()).await.is_empty());
        assert!(db::shipments(&**service.store(), polis_runtime::Page::first(100)).await.unwrap().is_empty());
        assert!(db::address(&**service.store(), id).await.unwrap().is_none());
    }
}
