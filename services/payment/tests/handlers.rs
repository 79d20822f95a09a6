//! The payment service's message handling: every outcome, idempotency per
//! order, compensation before action and the credit check under concurrency,
//! in both saga styles (reply vs event), on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;

/// The cases that depend on the saga style, each run in `$style` (their
/// second argument) on both backends.
macro_rules! styled {
    ($style:ident) => {
        testsupport::suite! {
            service: payment::SERVICE,
            open: support::open,
            with: contracts::SagaStyle::$style,
            cases: [
                an_authorization_within_the_limit_is_authorized,
                every_outcome_is_followed_by_the_payment_as_it_now_is,
                an_authorization_over_the_limit_fails,
                the_exposure_counts_only_authorized_and_captured_payments,
                the_provider_declines_marked_emails,
                the_provider_declines_at_its_rate,
                an_unreplicated_customer_is_a_transient_failure,
                a_repeated_authorization_resends_the_recorded_outcome,
                a_void_before_the_authorization_leaves_a_tombstone,
                capture_moves_authorized_to_captured_once,
                a_capture_without_an_authorization_is_too_late,
                a_void_undoes_whatever_the_payment_got_to,
                a_refund_returns_a_captured_payment_once,
                a_refund_of_an_uncaptured_payment,
                concurrent_authorizations_of_one_customer_cannot_both_pass,
                bad_messages_are_permanent_failures,
            ],
        }
    };
}

mod orchestration {
    use super::*;
    styled!(Orchestration);
}

mod choreography {
    use super::*;
    styled!(Choreography);
}

testsupport::suite! {
    service: payment::SERVICE,
    open: support::open,
    cases: [
        customer_events_keep_the_replica_current,
        the_configured_style_does_not_decide_an_orders_flow,
        choreography_runs_the_whole_flow_on_events,
        an_invalid_config_is_refused,
    ],
}

#[allow(unreachable_pub)]
mod cases {
    use polis_runtime::Service as _;
    use std::sync::Arc;

    use contracts::customer::CustomerRegistered;
    use contracts::inventory::StockReserved;
    use contracts::order::OrderRejected;
    use contracts::payment::{PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded, PaymentVoided};
    use contracts::shipping::ShipmentCancelled;
    use contracts::{RejectionReason, SagaStyle};
    use payment::{Config, Payment, declines};
    use polis_bus::HandlerError;
    use polis_core::{Message, MessageType, StoreError};
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::json;
    use testsupport::outbox;
    use uuid::Uuid;

    use crate::support::*;

    /// A registered customer with `limit` of credit and an ordinary email.
    async fn customer_with<S>(service: &Payment<S>, limit: i64) -> Uuid
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let id = Uuid::now_v7();
        handle(service, SagaStyle::Orchestration, &registered(id, "ann@example.com", limit)).await.unwrap();
        id
    }

    /// A new order id (the default config declines none).
    fn order() -> Uuid {
        Uuid::now_v7()
    }

    fn failed(order_id: Uuid, reason: RejectionReason) -> PaymentFailed {
        PaymentFailed { order_id, reason }
    }

    /// Authorizes `amount` for a new order and returns the order id.
    async fn authorized<S>(service: &Payment<S>, style: SagaStyle, customer: Uuid, amount: i64) -> Uuid
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let order_id = order();
        handle(service, style, &authorize(style, order_id, customer, amount)).await.unwrap();
        assert_eq!(status_of(&**service.store(), order_id).await.as_deref(), Some("AUTHORIZED"));
        order_id
    }

    pub async fn an_authorization_within_the_limit_is_authorized<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = customer_with(&service, 10_000).await;
        let order_id = order();
        let trigger = authorize(style, order_id, customer_id, 10_000);
        handle(&service, style, &trigger).await.unwrap();

        let row = payment_row(&**service.store(), order_id).await.unwrap();
        assert_eq!(
            row,
            Row { customer_id: Some(customer_id), amount: 10_000, status: "AUTHORIZED".into(), reason: None }
        );
        let sent = outbox(&**service.store()).await;
        assert_eq!(sent.len(), 1);
        assert_outcome(&sent[0], &trigger, order_id, &PaymentAuthorized { order_id, customer_id, amount: 10_000 });
    }

    /// Read models follow `PaymentChanged`, an event in both styles: the
    /// payment's state after each outcome, keyed by the order.
    pub async fn every_outcome_is_followed_by_the_payment_as_it_now_is<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = customer_with(&service, 10_000).await;
        let _ = testsupport::sent_all(&**service.store()).await;
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, 700)).await.unwrap();
        handle(&service, style, &capture(style, order_id)).await.unwrap();
        let changes: Vec<_> = testsupport::sent_all(&**service.store())
            .await
            .into_iter()
            .filter(|m| m.is::<contracts::payment::PaymentChanged>())
            .collect();
        assert_eq!(changes.len(), 2, "{changes:#?}");
        for (change, status) in changes
            .iter()
            .zip([contracts::payment::PaymentStatus::Authorized, contracts::payment::PaymentStatus::Captured])
        {
            assert_eq!(change.kind, polis_core::MessageKind::Event);
            assert_eq!(change.key, order_id.to_string());
            let body: contracts::payment::PaymentChanged = change.decode().unwrap();
            assert_eq!(
                body.payment,
                contracts::payment::Payment {
                    order_id,
                    customer_id: Some(customer_id),
                    amount: 700,
                    status,
                    reason: None
                }
            );
        }
    }

    pub async fn an_authorization_over_the_limit_fails<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = customer_with(&service, 1_000).await;
        authorized(&service, style, customer_id, 600).await;
        let order_id = order();
        let trigger = authorize(style, order_id, customer_id, 401);
        handle(&service, style, &trigger).await.unwrap();

        let row = payment_row(&**service.store(), order_id).await.unwrap();
        assert_eq!(row.status, "FAILED");
        assert_eq!(row.reason.as_deref(), Some("CREDIT_LIMIT_EXCEEDED"));
        let sent = outbox(&**service.store()).await;
        assert_outcome(&sent[1], &trigger, order_id, &failed(order_id, RejectionReason::CreditLimitExceeded));

        // Exactly up to the limit is fine.
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, 400)).await.unwrap();
        assert_eq!(status_of(&**service.store(), order_id).await.as_deref(), Some("AUTHORIZED"));
        // An amount so large that the sum would overflow is over any limit, not a fault.
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, i64::MAX)).await.unwrap();
        assert_eq!(
            payment_row(&**service.store(), order_id).await.unwrap().reason.as_deref(),
            Some("CREDIT_LIMIT_EXCEEDED")
        );
    }

    pub async fn the_exposure_counts_only_authorized_and_captured_payments<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let captured = authorized(&service, style, customer_id, 300).await;
        handle(&service, style, &capture(style, captured)).await.unwrap();
        let voided = authorized(&service, style, customer_id, 300).await;
        handle(&service, style, &void(style, voided)).await.unwrap();
        let refunded = authorized(&service, style, customer_id, 300).await;
        handle(&service, style, &capture(style, refunded)).await.unwrap();
        handle(&service, style, &refund(style, refunded)).await.unwrap();
        let open = authorized(&service, style, customer_id, 300).await;
        assert_eq!(status_of(&*store, refunded).await.as_deref(), Some("REFUNDED"));
        assert_eq!(status_of(&*store, open).await.as_deref(), Some("AUTHORIZED"));

        // Open: 300 captured + 300 authorized; a failed one adds nothing either.
        let over = order();
        handle(&service, style, &authorize(style, over, customer_id, 401)).await.unwrap();
        assert_eq!(status_of(&*store, over).await.as_deref(), Some("FAILED"));
        let fits = order();
        handle(&service, style, &authorize(style, fits, customer_id, 400)).await.unwrap();
        assert_eq!(status_of(&*store, fits).await.as_deref(), Some("AUTHORIZED"));
        // The exposure is kept as payments change, not summed per authorization.
        assert_eq!(kept_and_summed_exposure(&*store, customer_id).await, (1_000, 1_000));
        handle(&service, style, &void(style, fits)).await.unwrap();
        assert_eq!(kept_and_summed_exposure(&*store, customer_id).await, (600, 600));
    }

    pub async fn the_provider_declines_marked_emails<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = Uuid::now_v7();
        handle(&service, style, &registered(customer_id, "ann+decline@example.com", 1_000_000)).await.unwrap();
        let order_id = order();
        let trigger = authorize(style, order_id, customer_id, 100);
        handle(&service, style, &trigger).await.unwrap();

        let row = payment_row(&**service.store(), order_id).await.unwrap();
        assert_eq!((row.status.as_str(), row.reason.as_deref()), ("FAILED", Some("PAYMENT_DECLINED")));
        let sent = outbox(&**service.store()).await;
        assert_outcome(&sent[0], &trigger, order_id, &failed(order_id, RejectionReason::PaymentDeclined));

        // The credit check comes first: over the limit is CREDIT_LIMIT_EXCEEDED even for a marked email.
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, 1_000_001)).await.unwrap();
        let row = payment_row(&**service.store(), order_id).await.unwrap();
        assert_eq!(row.reason.as_deref(), Some("CREDIT_LIMIT_EXCEEDED"));
    }

    pub async fn the_provider_declines_at_its_rate<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000_000).await;
        let config = Config { decline_rate: 0.5, ..Config::default() };
        let half = Payment::open(store.clone(), config).await.unwrap();
        let orders: Vec<Uuid> = (0..20).map(|_| order()).collect();
        for order_id in &orders {
            handle(&half, style, &authorize(style, *order_id, customer_id, 10)).await.unwrap();
        }
        let mut declined = 0;
        for order_id in &orders {
            let row = payment_row(&*store, *order_id).await.unwrap();
            let expected = declines(*order_id, "ann@example.com", 0.5);
            assert_eq!(row.reason.as_deref() == Some("PAYMENT_DECLINED"), expected, "order {order_id}");
            declined += usize::from(expected);
        }
        assert!((1..20).contains(&declined), "a 50% rate declined {declined} of 20");
    }

    pub async fn an_unreplicated_customer_is_a_transient_failure<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let (customer_id, order_id) = (Uuid::now_v7(), order());
        let trigger = authorize(style, order_id, customer_id, 100);
        let error = handle(&service, style, &trigger).await.unwrap_err();
        assert!(matches!(&error, HandlerError::Transient(reason) if reason.contains("not replicated")), "{error:?}");
        assert_eq!(payment_count(&**service.store()).await, 0);
        assert!(outbox(&**service.store()).await.is_empty());

        // Once the customer arrives, the retry goes through.
        handle(&service, style, &registered(customer_id, "bob@example.com", 500)).await.unwrap();
        handle(&service, style, &trigger).await.unwrap();
        assert_eq!(status_of(&**service.store(), order_id).await.as_deref(), Some("AUTHORIZED"));
    }

    pub async fn a_repeated_authorization_resends_the_recorded_outcome<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, 700)).await.unwrap();
        // The same logical request again (a new message): one payment, the outcome re-sent.
        let again = authorize(style, order_id, customer_id, 700);
        handle(&service, style, &again).await.unwrap();
        assert_eq!(payment_count(&*store).await, 1);
        let sent = outbox(&*store).await;
        assert_eq!(sent.len(), 2);
        let outcome = PaymentAuthorized { order_id, customer_id, amount: 700 };
        assert_outcome(&sent[1], &again, order_id, &outcome);
        // 700 is counted once: 300 more still fit.
        authorized(&service, style, customer_id, 300).await;

        // A failure is recorded too: repeating it does not turn it into a success.
        let poor = customer_with(&service, 10).await;
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, poor, 11)).await.unwrap();
        handle(&service, style, &updated(poor, "ann@example.com", 1_000)).await.unwrap();
        let again = authorize(style, order_id, poor, 11);
        handle(&service, style, &again).await.unwrap();
        let sent = outbox(&*store).await;
        assert_outcome(sent.last().unwrap(), &again, order_id, &failed(order_id, RejectionReason::CreditLimitExceeded));
        assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("FAILED"));
    }

    pub async fn a_void_before_the_authorization_leaves_a_tombstone<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = order();
        let compensation = void(style, order_id);
        handle(&service, style, &compensation).await.unwrap();
        let tombstone = payment_row(&*store, order_id).await.unwrap();
        assert_eq!(tombstone, Row { customer_id: None, amount: 0, status: "VOIDED".into(), reason: None });

        let late = authorize(style, order_id, customer_id, 100);
        handle(&service, style, &late).await.unwrap();
        assert_eq!(payment_row(&*store, order_id).await.unwrap(), tombstone, "the late authorization changes nothing");
        let sent = outbox(&*store).await;
        assert_eq!(sent.len(), 2);
        assert_outcome(&sent[0], &compensation, order_id, &PaymentVoided { order_id });
        assert_outcome(&sent[1], &late, order_id, &failed(order_id, RejectionReason::Timeout));
        // Nothing was charged against the credit.
        authorized(&service, style, customer_id, 1_000).await;

        // A second void of the tombstone answers the same and writes nothing new.
        let again = void(style, order_id);
        handle(&service, style, &again).await.unwrap();
        assert_outcome(outbox(&*store).await.last().unwrap(), &again, order_id, &PaymentVoided { order_id });
        assert_eq!(payment_row(&*store, order_id).await.unwrap(), tombstone);
    }

    pub async fn capture_moves_authorized_to_captured_once<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = authorized(&service, style, customer_id, 250).await;
        let first = capture(style, order_id);
        handle(&service, style, &first).await.unwrap();
        assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("CAPTURED"));
        let again = capture(style, order_id);
        handle(&service, style, &again).await.unwrap();
        assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("CAPTURED"));

        let sent = outbox(&*store).await;
        assert_eq!(sent.len(), 3);
        assert_outcome(&sent[1], &first, order_id, &PaymentCaptured { order_id, amount: 250 });
        assert_outcome(&sent[2], &again, order_id, &PaymentCaptured { order_id, amount: 250 });
    }

    pub async fn a_capture_without_an_authorization_is_too_late<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        // No payment at all: nothing is written.
        let unknown = order();
        let trigger = capture(style, unknown);
        handle(&service, style, &trigger).await.unwrap();
        assert_eq!(payment_row(&*store, unknown).await, None);
        assert_outcome(&outbox(&*store).await[0], &trigger, unknown, &failed(unknown, RejectionReason::Timeout));

        // Voided, failed and refunded payments cannot be captured either.
        let voided = authorized(&service, style, customer_id, 100).await;
        handle(&service, style, &void(style, voided)).await.unwrap();
        let failing = order();
        handle(&service, style, &authorize(style, failing, customer_id, 5_000)).await.unwrap();
        let refunded = authorized(&service, style, customer_id, 100).await;
        handle(&service, style, &capture(style, refunded)).await.unwrap();
        handle(&service, style, &refund(style, refunded)).await.unwrap();
        for (order_id, status) in [(voided, "VOIDED"), (failing, "FAILED"), (refunded, "REFUNDED")] {
            let trigger = capture(style, order_id);
            handle(&service, style, &trigger).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some(status));
            let last = outbox(&*store).await.pop().unwrap();
            assert_outcome(&last, &trigger, order_id, &failed(order_id, RejectionReason::Timeout));
        }
    }

    pub async fn a_void_undoes_whatever_the_payment_got_to<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;

        // AUTHORIZED → VOIDED, and again → VOIDED re-sent.
        let order_id = authorized(&service, style, customer_id, 100).await;
        for _ in 0..2 {
            let trigger = void(style, order_id);
            handle(&service, style, &trigger).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("VOIDED"));
            assert_outcome(&outbox(&*store).await.pop().unwrap(), &trigger, order_id, &PaymentVoided { order_id });
        }

        // CAPTURED → REFUNDED (a rejection after the capture), and again → REFUNDED re-sent.
        let order_id = authorized(&service, style, customer_id, 200).await;
        handle(&service, style, &capture(style, order_id)).await.unwrap();
        for _ in 0..2 {
            let trigger = void(style, order_id);
            handle(&service, style, &trigger).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("REFUNDED"));
            let outcome = PaymentRefunded { order_id, amount: 200 };
            assert_outcome(&outbox(&*store).await.pop().unwrap(), &trigger, order_id, &outcome);
        }

        // FAILED stays FAILED and answers PaymentVoided.
        let order_id = order();
        handle(&service, style, &authorize(style, order_id, customer_id, 5_000)).await.unwrap();
        let trigger = void(style, order_id);
        handle(&service, style, &trigger).await.unwrap();
        assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("FAILED"));
        assert_outcome(&outbox(&*store).await.pop().unwrap(), &trigger, order_id, &PaymentVoided { order_id });

        // Everything undone: the whole limit is free again.
        authorized(&service, style, customer_id, 1_000).await;
    }

    pub async fn a_refund_returns_a_captured_payment_once<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = authorized(&service, style, customer_id, 400).await;
        handle(&service, style, &capture(style, order_id)).await.unwrap();
        for _ in 0..2 {
            let trigger = refund(style, order_id);
            handle(&service, style, &trigger).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("REFUNDED"));
            let outcome = PaymentRefunded { order_id, amount: 400 };
            assert_outcome(&outbox(&*store).await.pop().unwrap(), &trigger, order_id, &outcome);
        }
        // A refunded payment no longer counts against the limit.
        authorized(&service, style, customer_id, 1_000).await;
    }

    /// Orchestration: the command is answered TIMEOUT. Choreography: the
    /// `ShipmentCancelled` that ends a rejection must not touch a payment
    /// that was never captured (the void handles it), so nothing happens.
    pub async fn a_refund_of_an_uncaptured_payment<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let authorized_order = authorized(&service, style, customer_id, 100).await;
        let voided = authorized(&service, style, customer_id, 100).await;
        handle(&service, style, &void(style, voided)).await.unwrap();
        let unknown = order();
        let before = outbox(&*store).await.len();
        for (order_id, status) in [(authorized_order, Some("AUTHORIZED")), (voided, Some("VOIDED")), (unknown, None)] {
            let trigger = refund(style, order_id);
            handle(&service, style, &trigger).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), status, "a refund changes no uncaptured payment");
            if style == SagaStyle::Orchestration {
                let last = outbox(&*store).await.pop().unwrap();
                assert_outcome(&last, &trigger, order_id, &failed(order_id, RejectionReason::Timeout));
            }
        }
        let expected = if style == SagaStyle::Orchestration { before + 3 } else { before };
        assert_eq!(outbox(&*store).await.len(), expected);
    }

    /// Two authorizations of one customer that each fit the limit but not
    /// together, handled at the same time with a slow provider: on
    /// PostgreSQL the customer's row lock makes the second wait for the
    /// first and see its payment; without it both would read an exposure
    /// of 0 and pass.
    pub async fn concurrent_authorizations_of_one_customer_cannot_both_pass<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;
        let slow = Payment::open(store.clone(), Config { latency_ms: 300, ..Config::default() }).await.unwrap();
        let (first, second) = (order(), order());
        let (one, two) = (authorize(style, first, customer_id, 600), authorize(style, second, customer_id, 600));
        let (a, b) = tokio::join!(handle(&slow, style, &one), handle(&slow, style, &two));
        a.unwrap();
        b.unwrap();
        let mut statuses = [payment_row(&*store, first).await.unwrap(), payment_row(&*store, second).await.unwrap()];
        statuses.sort_by(|x, y| x.status.cmp(&y.status));
        assert_eq!(statuses[0].status, "AUTHORIZED");
        assert_eq!(
            (statuses[1].status.as_str(), statuses[1].reason.as_deref()),
            ("FAILED", Some("CREDIT_LIMIT_EXCEEDED"))
        );
    }

    pub async fn bad_messages_are_permanent_failures<S>(service: Payment<S>, style: SagaStyle)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = order();
        // A body of the wrong shape.
        let mut garbled = authorize(style, order_id, customer_id, 100);
        garbled.data = json!({ "order_id": "not-a-uuid" });
        let error = handle(&service, style, &garbled).await.unwrap_err();
        assert!(matches!(error, HandlerError::Permanent(_)), "{error:?}");
        // A negative amount.
        let negative = authorize(style, order_id, customer_id, -5);
        let error = handle(&service, style, &negative).await.unwrap_err();
        assert!(matches!(&error, HandlerError::Permanent(reason) if reason.contains("negative")), "{error:?}");
        // An unknown command, in either style.
        let unknown = Message::command("order", payment::SERVICE, "payment.teleport-money.v1", "k", json!({}));
        let error = handle(&service, style, &unknown).await.unwrap_err();
        assert!(matches!(&error, HandlerError::Permanent(reason) if reason.contains("teleport")), "{error:?}");
        // A reply: the service sends no commands.
        let reply = Message::reply_to(&unknown, "order.whatever.v1", json!({}));
        assert!(matches!(handle(&service, style, &reply).await, Err(HandlerError::Permanent(_))));
        // An event nobody here cares about is fine.
        let other = Message::event("catalog", "catalog.product-added.v1", "sku-1", json!({ "sku": "sku-1" }));
        handle(&service, style, &other).await.unwrap();

        assert_eq!(payment_count(&**service.store()).await, 0);
        assert!(outbox(&**service.store()).await.is_empty());
    }

    pub async fn customer_events_keep_the_replica_current<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        for style in [SagaStyle::Orchestration, SagaStyle::Choreography] {
            let customer_id = Uuid::now_v7();
            handle(&service, style, &registered(customer_id, "cy@example.com", 100)).await.unwrap();
            let order_id = order();
            handle(&service, style, &authorize(style, order_id, customer_id, 150)).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("FAILED"));

            // A raised limit and a marked email: the next order passes the credit check, then is declined.
            handle(&service, style, &updated(customer_id, "cy+decline@example.com", 1_000)).await.unwrap();
            let order_id = order();
            handle(&service, style, &authorize(style, order_id, customer_id, 150)).await.unwrap();
            let row = payment_row(&*store, order_id).await.unwrap();
            assert_eq!(row.reason.as_deref(), Some("PAYMENT_DECLINED"));

            // The registration delivered again (an older version, with the
            // old email) changes nothing: the next order is declined too.
            let body = CustomerRegistered { customer: customer(customer_id, "cy@example.com", 1_000), version: 1 };
            let again = Message::typed_event("customer", &customer_id.to_string(), &body).unwrap();
            handle(&service, style, &again).await.unwrap();
            let order_id = order();
            handle(&service, style, &authorize(style, order_id, customer_id, 150)).await.unwrap();
            let row = payment_row(&*store, order_id).await.unwrap();
            assert_eq!(row.reason.as_deref(), Some("PAYMENT_DECLINED"));

            // A newer version with the plain email: authorized.
            handle(&service, style, &updated(customer_id, "cy@example.com", 1_000)).await.unwrap();
            let order_id = order();
            handle(&service, style, &authorize(style, order_id, customer_id, 150)).await.unwrap();
            assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("AUTHORIZED"));
        }
        // Customer events have no outcome of their own.
        let sent = outbox(&*store).await;
        assert!(sent.iter().all(|m| m.message_type.starts_with("payment.")));
        assert_eq!(sent.len(), 8);
    }

    /// An order's flow runs in the style it was placed in, whatever style
    /// the service is configured with now: the choreographed steps' events
    /// (which only exist for choreographed orders) are acted on, and an
    /// orchestrated order's rejection event is left to its saga, which
    /// sends `VoidPayment`. This is what lets the deployment's style change
    /// across a restart with orders in flight.
    pub async fn the_configured_style_does_not_decide_an_orders_flow<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let customer_id = customer_with(&service, 1_000).await;

        // Configured for orchestration, a choreographed order goes on.
        let configured = SagaStyle::Orchestration;
        let choreographed = order();
        handle(&service, configured, &authorize(SagaStyle::Choreography, choreographed, customer_id, 100))
            .await
            .unwrap();
        assert_eq!(status_of(&*store, choreographed).await.as_deref(), Some("AUTHORIZED"));
        handle(&service, configured, &void(SagaStyle::Choreography, choreographed)).await.unwrap();
        assert_eq!(status_of(&*store, choreographed).await.as_deref(), Some("VOIDED"));

        // Configured for choreography, an orchestrated order's rejection is its saga's to undo.
        let configured = SagaStyle::Choreography;
        let orchestrated = order();
        handle(&service, configured, &authorize(SagaStyle::Orchestration, orchestrated, customer_id, 100))
            .await
            .unwrap();
        let rejected = OrderRejected {
            order_id: orchestrated,
            reason: RejectionReason::Timeout,
            saga: Some(SagaStyle::Orchestration),
        };
        let rejected = Message::typed_event("order", &orchestrated.to_string(), &rejected).unwrap();
        handle(&service, configured, &rejected).await.unwrap();
        assert_eq!(status_of(&*store, orchestrated).await.as_deref(), Some("AUTHORIZED"), "left to the saga");
    }

    /// Choreography end to end as far as payment sees it: reserved stock →
    /// authorized, scheduled shipment → captured, cancelled shipment →
    /// refunded; each outcome an event caused by the one before.
    pub async fn choreography_runs_the_whole_flow_on_events<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        let store = service.store().clone();
        let style = SagaStyle::Choreography;
        let customer_id = customer_with(&service, 1_000).await;
        let order_id = order();
        let reserved = Message::typed_event(
            "inventory",
            &order_id.to_string(),
            &StockReserved { order_id, customer_id, total: 900 },
        )
        .unwrap();
        let scheduled = capture(style, order_id);
        let cancelled =
            Message::typed_event("shipping", &order_id.to_string(), &ShipmentCancelled { order_id }).unwrap();
        for trigger in [&reserved, &scheduled, &cancelled] {
            handle(&service, style, trigger).await.unwrap();
        }
        let sent = outbox(&*store).await;
        assert_eq!(sent.len(), 3);
        assert_outcome(&sent[0], &reserved, order_id, &PaymentAuthorized { order_id, customer_id, amount: 900 });
        assert_outcome(&sent[1], &scheduled, order_id, &PaymentCaptured { order_id, amount: 900 });
        assert_outcome(&sent[2], &cancelled, order_id, &PaymentRefunded { order_id, amount: 900 });
        assert_eq!(sent[0].metadata.correlation_id, Some(reserved.id), "the chain keeps the correlation id");
        assert_eq!(status_of(&*store, order_id).await.as_deref(), Some("REFUNDED"));
        assert_eq!(
            [PaymentAuthorized::TYPE, PaymentCaptured::TYPE, PaymentRefunded::TYPE].to_vec(),
            sent.iter().map(|m| m.message_type.as_str()).collect::<Vec<_>>()
        );
    }

    pub async fn an_invalid_config_is_refused<S>(service: Payment<S>)
    where
        S: SqlStore,
        S::Tx: Sql,
    {
        for decline_rate in [-0.1, 1.5, f64::NAN] {
            let config = Config { decline_rate, ..Config::default() };
            let error = Payment::open(Arc::clone(service.store()), config).await.unwrap_err();
            assert!(
                matches!(&error, StoreError::InvalidRequest(reason) if reason.contains("decline_rate")),
                "{decline_rate}: {error:?}"
            );
        }
        // Opening again on a migrated store is fine (migrations are applied once).
        Payment::open(Arc::clone(service.store()), Config { decline_rate: 1.0, ..Config::default() }).await.unwrap();
    }
}
