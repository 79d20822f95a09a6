//! The inventory service's message handling, on SQLite and PostgreSQL: each
//! outcome, idempotency per order, compensation before action, and replies
//! (orchestration) versus events (choreography).

#![allow(clippy::unwrap_used)]

mod support;

use cases::*;
use polis_runtime::Service as _;

testsupport::suite! {
    service: inventory::SERVICE,
    open: support::open,
    cases: [
        a_reservation_takes_every_item_and_replies,
        an_order_created_event_reserves_and_announces,
        a_short_item_reserves_nothing,
        an_unknown_sku_is_out_of_stock,
        a_repeated_reservation_resends_the_recorded_outcome,
        a_release_gives_the_stock_back_once,
        a_release_before_the_reservation_leaves_a_tombstone,
        choreography_releases_on_rejection_and_refund,
        an_orchestrated_orders_events_are_left_to_its_saga,
        a_failed_reservation_releases_without_effect,
        repeated_skus_are_reserved_together,
        unrelated_events_are_ignored,
        bad_messages_fail_permanently,
    ],
}

/// Both styles' inputs, whatever style new orders run in: an order placed
/// under the other style before a restart still gets its commands or events
/// handled.
#[tokio::test]
async fn the_consumer_subscribes_to_both_styles_inputs() {
    let (store, _guard) = testsupport::sqlite(inventory::SERVICE).await;
    let service = support::open(store).await;
    let consumer = format!("{:?}", service.consumer(polis_bus::ConsumerOptions::default()).unwrap());
    {
        assert_eq!(
            consumer,
            r#"Consumer { name: "inventory", topics: ["polis.inventory.commands.>", "polis.order.events.>", "polis.payment.events.>"] }"#
        );
    }
}

#[allow(unreachable_pub)]
mod cases {
    use contracts::inventory::{
        ReleaseStock, ReservationStatus, ReserveStock, StockReleased, StockReservationFailed, StockReserved,
    };
    use contracts::order::{OrderApproved, OrderCreated, OrderRejected};
    use contracts::payment::PaymentRefunded;
    use contracts::{OrderLine, Quantity, RejectionReason, SagaStyle};
    use inventory::{Inventory, InventoryError, SERVICE, db};
    use polis_bus::HandlerError;
    use polis_core::{Message, MessageType};
    use polis_runtime::Service as _;
    use polis_store::sql::{Sql, SqlStore};
    use serde_json::json;
    use testsupport::{sent, sole_outcome};
    use uuid::Uuid;

    use crate::support::handle;

    const TOTAL: i64 = 4_250;

    fn customer() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    fn items(items: &[(&str, i64)]) -> Vec<Quantity> {
        items.iter().map(|(sku, quantity)| Quantity { sku: (*sku).to_owned(), quantity: *quantity }).collect()
    }

    fn reserve(order_id: Uuid, wanted: &[(&str, i64)]) -> Message {
        let body = ReserveStock { order_id, customer_id: customer(), items: items(wanted), total: TOTAL };
        Message::typed_command("order", SERVICE, &order_id.to_string(), &body).unwrap()
    }

    fn release(order_id: Uuid) -> Message {
        Message::typed_command("order", SERVICE, &order_id.to_string(), &ReleaseStock { order_id }).unwrap()
    }

    fn order_created(order_id: Uuid, wanted: &[(&str, i64)]) -> Message {
        let lines = wanted
            .iter()
            .map(|(sku, quantity)| OrderLine { sku: (*sku).to_owned(), quantity: *quantity, unit_price: 100 })
            .collect();
        let body = OrderCreated {
            order_id,
            customer_id: customer(),
            lines,
            total: TOTAL,
            saga: Some(SagaStyle::Choreography),
        };
        Message::typed_event("order", &order_id.to_string(), &body).unwrap()
    }

    fn order_event<T: MessageType>(order_id: Uuid, body: &T) -> Message {
        Message::typed_event("order", &order_id.to_string(), body).unwrap()
    }

    async fn set<S: SqlStore>(service: &Inventory<S>, sku: &str, available: i64)
    where
        S::Tx: Sql,
    {
        let sku = sku.to_owned();
        service
            .store()
            .transaction::<_, _, InventoryError>(async move |tx| db::set_available(tx, &sku, available).await)
            .await
            .unwrap();
    }

    /// (available, reserved) of a sku.
    async fn level<S: SqlStore>(service: &Inventory<S>, sku: &str) -> (i64, i64)
    where
        S::Tx: Sql,
    {
        let level = db::stock_level_of(&**service.store(), sku).await.unwrap().unwrap();
        (level.available, level.reserved)
    }

    async fn status<S: SqlStore>(service: &Inventory<S>, order_id: Uuid) -> ReservationStatus
    where
        S::Tx: Sql,
    {
        db::reservation(&**service.store(), order_id).await.unwrap().unwrap().status
    }

    /// The one message sent since the last look, checked to be the outcome of
    /// `trigger` in the right form (reply to a command, event after an event).
    async fn outcome<S: SqlStore, T: MessageType>(service: &Inventory<S>, trigger: &Message) -> T
    where
        S::Tx: Sql,
    {
        sole_outcome(&**service.store(), trigger, SERVICE).await
    }

    pub async fn a_reservation_takes_every_item_and_replies<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 10).await;
        set(&service, "pear", 3).await;
        let order_id = Uuid::now_v7();
        let command = reserve(order_id, &[("pear", 3), ("apple", 4)]);
        handle(&service, &command).await.unwrap();

        let reserved: StockReserved = outcome(&service, &command).await;
        assert_eq!(reserved, StockReserved { order_id, customer_id: customer(), total: TOTAL });
        assert_eq!(level(&service, "apple").await, (6, 4));
        assert_eq!(level(&service, "pear").await, (0, 3));
        let reservation = db::reservation(&**service.store(), order_id).await.unwrap().unwrap();
        assert_eq!(reservation.status, ReservationStatus::Reserved);
        assert_eq!(reservation.items, items(&[("apple", 4), ("pear", 3)]), "items are kept sorted by sku");
    }

    pub async fn an_order_created_event_reserves_and_announces<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 2).await;
        let order_id = Uuid::now_v7();
        let created = order_created(order_id, &[("apple", 2)]);
        handle(&service, &created).await.unwrap();

        let reserved: StockReserved = outcome(&service, &created).await;
        assert_eq!(reserved, StockReserved { order_id, customer_id: customer(), total: TOTAL });
        assert_eq!(level(&service, "apple").await, (0, 2));
    }

    pub async fn a_short_item_reserves_nothing<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        // "apple" sorts first, so it is taken before "pear" turns out short
        // and must be put back.
        set(&service, "apple", 10).await;
        set(&service, "pear", 1).await;
        for as_command in [true, false] {
            let order_id = Uuid::now_v7();
            let wanted = [("apple", 5), ("pear", 2)];
            let trigger = if as_command { reserve(order_id, &wanted) } else { order_created(order_id, &wanted) };
            handle(&service, &trigger).await.unwrap();

            let failed: StockReservationFailed = outcome(&service, &trigger).await;
            assert_eq!(
                failed,
                StockReservationFailed { order_id, reason: RejectionReason::OutOfStock, sku: Some("pear".into()) }
            );
            assert_eq!(level(&service, "apple").await, (10, 0), "the item already taken was put back");
            assert_eq!(level(&service, "pear").await, (1, 0));
            assert_eq!(status(&service, order_id).await, ReservationStatus::Failed);
        }
    }

    pub async fn an_unknown_sku_is_out_of_stock<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 10).await;
        let order_id = Uuid::now_v7();
        let command = reserve(order_id, &[("apple", 1), ("durian", 1)]);
        handle(&service, &command).await.unwrap();

        let failed: StockReservationFailed = outcome(&service, &command).await;
        assert_eq!(failed.reason, RejectionReason::OutOfStock);
        assert_eq!(failed.sku.as_deref(), Some("durian"));
        assert_eq!(level(&service, "apple").await, (10, 0));
        assert!(db::stock_level_of(&**service.store(), "durian").await.unwrap().is_none());
    }

    pub async fn a_repeated_reservation_resends_the_recorded_outcome<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 3).await;
        let order_id = Uuid::now_v7();
        let first = reserve(order_id, &[("apple", 2)]);
        handle(&service, &first).await.unwrap();
        let reserved: StockReserved = outcome(&service, &first).await;

        // The same logical request in a new message (the inbox would not
        // recognize it): the outcome again, the effect not.
        let again = reserve(order_id, &[("apple", 2)]);
        handle(&service, &again).await.unwrap();
        assert_eq!(outcome::<_, StockReserved>(&service, &again).await, reserved);
        assert_eq!(level(&service, "apple").await, (1, 2), "reserved once");

        // Likewise for a failure: the same reason and sku, nothing taken.
        let short_order = Uuid::now_v7();
        let first = reserve(short_order, &[("apple", 5)]);
        handle(&service, &first).await.unwrap();
        let failed: StockReservationFailed = outcome(&service, &first).await;
        set(&service, "apple", 100).await; // plenty now, but the order's outcome is recorded
        let again = reserve(short_order, &[("apple", 5)]);
        handle(&service, &again).await.unwrap();
        assert_eq!(outcome::<_, StockReservationFailed>(&service, &again).await, failed);
        assert_eq!(level(&service, "apple").await, (100, 2));

        // In choreography too, as an event.
        let event = order_created(order_id, &[("apple", 2)]);
        handle(&service, &event).await.unwrap();
        assert_eq!(outcome::<_, StockReserved>(&service, &event).await, reserved);
        assert_eq!(level(&service, "apple").await, (100, 2));
    }

    pub async fn a_release_gives_the_stock_back_once<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;
        set(&service, "pear", 5).await;
        let order_id = Uuid::now_v7();
        handle(&service, &reserve(order_id, &[("apple", 2), ("pear", 5)])).await.unwrap();
        sent(&**service.store()).await;

        let command = release(order_id);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &command).await, StockReleased { order_id });
        assert_eq!(level(&service, "apple").await, (5, 0));
        assert_eq!(level(&service, "pear").await, (5, 0));
        assert_eq!(status(&service, order_id).await, ReservationStatus::Released);

        let again = release(order_id);
        handle(&service, &again).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &again).await, StockReleased { order_id });
        assert_eq!(level(&service, "apple").await, (5, 0), "released once");

        // A reservation repeated after the release must not take stock again.
        let late = reserve(order_id, &[("apple", 2), ("pear", 5)]);
        handle(&service, &late).await.unwrap();
        let failed: StockReservationFailed = outcome(&service, &late).await;
        assert_eq!(failed.reason, RejectionReason::Timeout);
        assert_eq!(level(&service, "apple").await, (5, 0));
    }

    pub async fn a_release_before_the_reservation_leaves_a_tombstone<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;
        let order_id = Uuid::now_v7();
        let command = release(order_id);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &command).await, StockReleased { order_id });
        let tombstone = db::reservation(&**service.store(), order_id).await.unwrap().unwrap();
        assert_eq!(tombstone.status, ReservationStatus::Released);
        assert!(tombstone.items.is_empty());

        let late = reserve(order_id, &[("apple", 1)]);
        handle(&service, &late).await.unwrap();
        assert_eq!(
            outcome::<_, StockReservationFailed>(&service, &late).await,
            StockReservationFailed { order_id, reason: RejectionReason::Timeout, sku: None }
        );
        assert_eq!(level(&service, "apple").await, (5, 0), "nothing reserved for a rejected order");
        assert_eq!(status(&service, order_id).await, ReservationStatus::Released);

        // The same in choreography: the rejection overtook the creation.
        let order_id = Uuid::now_v7();
        let rejected = order_event(
            order_id,
            &OrderRejected { order_id, reason: RejectionReason::Timeout, saga: Some(SagaStyle::Choreography) },
        );
        handle(&service, &rejected).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &rejected).await, StockReleased { order_id });
        let created = order_created(order_id, &[("apple", 1)]);
        handle(&service, &created).await.unwrap();
        assert_eq!(outcome::<_, StockReservationFailed>(&service, &created).await.reason, RejectionReason::Timeout);
        assert_eq!(level(&service, "apple").await, (5, 0));
    }

    /// The order events of an orchestrated order (recorded in them, or, for
    /// events that do not record it, the handler's configured style) change
    /// nothing here: its saga sends the commands. Inventory subscribes to
    /// order events in both styles, so this is what keeps an orchestrated
    /// order from being reserved twice.
    pub async fn an_orchestrated_orders_events_are_left_to_its_saga<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;
        sent(&**service.store()).await;
        let order_id = Uuid::now_v7();
        let lines = vec![OrderLine { sku: "apple".into(), quantity: 2, unit_price: 100 }];
        let recorded = Some(SagaStyle::Orchestration);
        for saga in [recorded, None] {
            let body = OrderCreated { order_id, customer_id: customer(), lines: lines.clone(), total: TOTAL, saga };
            handle(&service, &order_event(order_id, &body)).await.unwrap();
        }
        let body = OrderRejected { order_id, reason: RejectionReason::Timeout, saga: recorded };
        handle(&service, &order_event(order_id, &body)).await.unwrap();
        assert_eq!(level(&service, "apple").await, (5, 0), "nothing reserved or released");
        assert!(sent(&**service.store()).await.is_empty(), "no outcome for an orchestrated order's events");

        // The consumer acknowledges them without a transaction.
        let accepts = |style, saga| {
            let body = OrderCreated { order_id, customer_id: customer(), lines: lines.clone(), total: TOTAL, saga };
            let config = inventory::Config { saga: style };
            polis_bus::Handler::<S::Tx>::accepts(
                &inventory::InventoryHandler::new(&config),
                &order_event(order_id, &body),
            )
        };
        assert!(!accepts(SagaStyle::Choreography, recorded));
        assert!(!accepts(SagaStyle::Orchestration, None));
        assert!(accepts(SagaStyle::Orchestration, Some(SagaStyle::Choreography)));
        assert!(accepts(SagaStyle::Choreography, None));
    }

    pub async fn choreography_releases_on_rejection_and_refund<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;

        // A rejected order: OrderRejected releases.
        let rejected_order = Uuid::now_v7();
        handle(&service, &order_created(rejected_order, &[("apple", 2)])).await.unwrap();
        sent(&**service.store()).await;
        assert_eq!(level(&service, "apple").await, (3, 2));
        let rejected = order_event(
            rejected_order,
            &OrderRejected {
                order_id: rejected_order,
                reason: RejectionReason::PaymentDeclined,
                saga: Some(SagaStyle::Choreography),
            },
        );
        handle(&service, &rejected).await.unwrap();
        let released: StockReleased = outcome(&service, &rejected).await;
        assert_eq!(released.order_id, rejected_order);
        assert_eq!(level(&service, "apple").await, (5, 0));

        // A cancelled order: the payment service's refund releases.
        let cancelled_order = Uuid::now_v7();
        handle(&service, &order_created(cancelled_order, &[("apple", 4)])).await.unwrap();
        sent(&**service.store()).await;
        let refunded = Message::typed_event(
            "payment",
            &cancelled_order.to_string(),
            &PaymentRefunded { order_id: cancelled_order, amount: TOTAL },
        )
        .unwrap();
        handle(&service, &refunded).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &refunded).await.order_id, cancelled_order);
        assert_eq!(level(&service, "apple").await, (5, 0));
        assert_eq!(status(&service, cancelled_order).await, ReservationStatus::Released);
    }

    pub async fn a_failed_reservation_releases_without_effect<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 1).await;
        let order_id = Uuid::now_v7();
        handle(&service, &reserve(order_id, &[("apple", 2)])).await.unwrap();
        sent(&**service.store()).await;

        let command = release(order_id);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, StockReleased>(&service, &command).await, StockReleased { order_id });
        assert_eq!(status(&service, order_id).await, ReservationStatus::Failed, "the failure stays on record");
        assert_eq!(level(&service, "apple").await, (1, 0));
    }

    pub async fn repeated_skus_are_reserved_together<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;
        let order_id = Uuid::now_v7();
        // 3 + 3 > 5: checked as one item of 6, so nothing is taken.
        let command = reserve(order_id, &[("apple", 3), ("apple", 3)]);
        handle(&service, &command).await.unwrap();
        assert_eq!(outcome::<_, StockReservationFailed>(&service, &command).await.sku.as_deref(), Some("apple"));
        assert_eq!(level(&service, "apple").await, (5, 0));

        let order_id = Uuid::now_v7();
        let command = reserve(order_id, &[("apple", 2), ("apple", 3)]);
        handle(&service, &command).await.unwrap();
        outcome::<_, StockReserved>(&service, &command).await;
        assert_eq!(level(&service, "apple").await, (0, 5));
        handle(&service, &release(order_id)).await.unwrap();
        assert_eq!(level(&service, "apple").await, (5, 0));
    }

    pub async fn unrelated_events_are_ignored<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        let order_id = Uuid::now_v7();
        handle(&service, &order_event(order_id, &OrderApproved { order_id })).await.unwrap();
        let other = Message::event("catalog", "catalog.product-added.v1", "sku-1", json!({ "anything": true }));
        handle(&service, &other).await.unwrap();
        assert!(sent(&**service.store()).await.is_empty());
        assert!(db::reservations(&**service.store(), polis_runtime::Page::first(100)).await.unwrap().is_empty());
    }

    pub async fn bad_messages_fail_permanently<S: SqlStore>(service: Inventory<S>)
    where
        S::Tx: Sql,
    {
        set(&service, "apple", 5).await;
        let order_id = Uuid::now_v7();
        let key = order_id.to_string();
        let permanent = |result: Result<(), HandlerError>, what: &str| match result {
            Err(HandlerError::Permanent(reason)) => reason,
            other => panic!("{what}: expected a permanent failure, got {other:?}"),
        };

        let unknown = Message::command("order", SERVICE, "inventory.restock.v1", &key, json!({}));
        assert!(permanent(handle(&service, &unknown).await, "unknown command").contains("inventory.restock.v1"));

        let garbled = Message::command("order", SERVICE, ReserveStock::TYPE, &key, json!({ "order_id": 7 }));
        permanent(handle(&service, &garbled).await, "undecodable data");

        let zero = reserve(order_id, &[("apple", 0)]);
        assert!(permanent(handle(&service, &zero).await, "zero quantity").contains("items[0].quantity"));

        let negative = reserve(order_id, &[("apple", 1), ("pear", -3)]);
        assert!(permanent(handle(&service, &negative).await, "negative quantity").contains("items[1].quantity"));

        let empty = reserve(order_id, &[]);
        assert!(permanent(handle(&service, &empty).await, "no items").contains("items"));

        let nul_sku = reserve(order_id, &[("app\0le", 1)]);
        assert!(permanent(handle(&service, &nul_sku).await, "NUL in a sku").contains("items[0].sku"));

        let reply = Message::reply_to(&reserve(order_id, &[("apple", 1)]), StockReserved::TYPE, json!({}));
        permanent(handle(&service, &reply).await, "a reply");

        // None of it left a trace.
        assert!(sent(&**service.store()).await.is_empty());
        assert!(db::reservation(&**service.store(), order_id).await.unwrap().is_none());
        assert_eq!(level(&service, "apple").await, (5, 0));
    }
}
