//! The create-order saga, choreographed: no saga state, only the order.
//!
//! Placing an order announces `OrderCreated` and schedules the order's
//! deadline, a command the service sends itself. The service then decides
//! the order on the other services' outcome events: a failure rejects it,
//! `PaymentCaptured` approves it, `StockReleased` completes a cancellation;
//! the deadline rejects with `TIMEOUT` whatever is still pending. Once the
//! order is decided its deadline is unscheduled.

use chrono::{DateTime, Duration, Utc};
use contracts::inventory::{StockReleased, StockReservationFailed};
use contracts::order::OrderStatus;
use contracts::payment::{PaymentCaptured, PaymentFailed};
use contracts::shipping::ShipmentFailed;
use contracts::{RejectionReason, SagaStyle};
use polis_core::{Message, MessageType, Transaction};
use polis_store::sql::{Sql, SqlStore};
use serde::Deserialize;
use uuid::Uuid;

use crate::aggregate::{OrderCommand, OrderError};
use crate::handler::parse_key;
use crate::{OrderFailure, OrderService, SERVICE, db};

/// The choreography's per-order deadline: a command the service sends itself.
pub const ORDER_DEADLINE_TYPE: &str = "order.order-deadline.v1";

/// Whether `event` is one [`OrderService::decide`] acts on.
pub(crate) fn decides(event: &Message) -> bool {
    event.is::<StockReservationFailed>()
        || event.is::<PaymentFailed>()
        || event.is::<ShipmentFailed>()
        || event.is::<PaymentCaptured>()
        || event.is::<StockReleased>()
}

impl<S> OrderService<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Schedules a new order's deadline, `order_timeout_ms` from `now`.
    pub(crate) async fn schedule_order_deadline(
        &self,
        tx: &mut S::Tx,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), OrderFailure> {
        // Keyed apart from the order's messages: a dead letter
        // of the order's key must not park its deadline.
        let key = format!("deadline:{order_id}");
        let deadline =
            Message::command(SERVICE, SERVICE, ORDER_DEADLINE_TYPE, &key, serde_json::json!({ "order_id": order_id }));
        let due = now + Duration::milliseconds(ms(self.config.order_timeout_ms));
        tx.schedule(&deadline, due).await?;
        db::set_deadline_id(tx, order_id, deadline.id).await?;
        Ok(())
    }

    /// Decides the order on another service's outcome event.
    pub(crate) async fn decide(&self, tx: &mut S::Tx, message: &Message) -> Result<(), OrderFailure> {
        // A failure whose body this version cannot read (say, a reason added
        // by a newer participant) still rejects the order — keyed by the order
        // id, with the step's usual reason — rather than dead-lettering the
        // event, which would park the order's own deadline behind it.
        let failure = |fallback: RejectionReason, reason: Option<RejectionReason>| -> Result<_, OrderFailure> {
            let reason = reason.unwrap_or(fallback);
            Ok(Some((parse_key(message)?, OrderCommand::Reject { reason, flow: SagaStyle::Choreography })))
        };
        let command = if message.is::<StockReservationFailed>() {
            failure(RejectionReason::OutOfStock, message.decode::<StockReservationFailed>().ok().map(|b| b.reason))?
        } else if message.is::<PaymentFailed>() {
            failure(RejectionReason::PaymentDeclined, message.decode::<PaymentFailed>().ok().map(|b| b.reason))?
        } else if message.is::<ShipmentFailed>() {
            failure(RejectionReason::Undeliverable, message.decode::<ShipmentFailed>().ok().map(|b| b.reason))?
        } else if message.is::<PaymentCaptured>() {
            let body: PaymentCaptured = decode(message)?;
            Some((body.order_id, OrderCommand::Approve))
        } else if message.is::<StockReleased>() {
            // The last step of a choreographed cancellation (for a rejected
            // order it is a compensation, and changes nothing here).
            let body: StockReleased = decode(message)?;
            Some((body.order_id, OrderCommand::CompleteCancel))
        } else {
            None
        };
        let Some((order_id, command)) = command else { return Ok(()) };
        self.lock_order(tx, order_id).await?;
        let order = self.execute(tx, order_id, &command, &message.caused()).await;
        match order {
            // An outcome for an order this service never had is a bad message.
            Err(OrderFailure::Order(OrderError::NotFound)) => {
                Err(OrderFailure::Decode(format!("no order {order_id} for {}", message.message_type)))
            }
            Err(e) => Err(e),
            Ok(order) => {
                if order.status != Some(OrderStatus::Pending) {
                    self.clear_order_deadline(tx, order_id).await?;
                }
                Ok(())
            }
        }
    }

    /// The order's deadline passed; reject it if still pending.
    pub(crate) async fn order_deadline(&self, tx: &mut S::Tx, message: &Message) -> Result<(), OrderFailure> {
        let order_id = deadline_order_id(message)?;
        let current = db::deadline_id(tx, order_id).await?;
        if current.as_deref() != Some(message.id.to_string().as_str()) {
            return Ok(());
        }
        db::clear_deadline_id(tx, order_id).await?;
        let reject = OrderCommand::Reject { reason: RejectionReason::Timeout, flow: SagaStyle::Choreography };
        self.execute(tx, order_id, &reject, &message.caused()).await?;
        Ok(())
    }

    async fn clear_order_deadline(&self, tx: &mut S::Tx, order_id: Uuid) -> Result<(), OrderFailure> {
        if let Some(deadline) = db::deadline_id(tx, order_id).await? {
            if let Ok(id) = Uuid::parse_str(&deadline) {
                tx.unschedule(id).await?;
            }
            db::clear_deadline_id(tx, order_id).await?;
        }
        Ok(())
    }
}

/// The order a deadline is for (its body; its key is the deadline's own).
pub(crate) fn deadline_order_id(message: &Message) -> Result<Uuid, OrderFailure> {
    #[derive(Deserialize)]
    struct Body {
        order_id: Uuid,
    }
    Body::deserialize(&message.data)
        .map(|body| body.order_id)
        .map_err(|e| OrderFailure::Decode(format!("an order deadline without a valid order id: {e}")))
}

fn decode<T: MessageType>(message: &Message) -> Result<T, OrderFailure> {
    message.decode::<T>().map_err(|e| OrderFailure::Decode(format!("{}: {e}", message.message_type)))
}

fn ms(millis: u64) -> i64 {
    i64::try_from(millis).unwrap_or(i64::MAX / 1_000_000)
}
