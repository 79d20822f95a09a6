//! Messages in, outcomes out.
//!
//! One handler serves every topic the consumer subscribes to; it dispatches
//! on the message's kind and type. Commands (orchestration) are answered
//! with replies, events (choreography) with events — [`contracts::outcome`]
//! picks which from the trigger — written to the outbox in the consumer's
//! transaction, together with the change and the inbox record.
//!
//! | trigger | topic | effect |
//! |---|---|---|
//! | `CustomerRegistered`, `CustomerUpdated` | customer events | into the log, for the address replica |
//! | `ScheduleShipment` | shipping commands | schedule |
//! | `CancelShipment` | shipping commands | cancel |
//! | `PaymentAuthorized` | payment events | schedule |
//! | `OrderRejected`, `OrderCancelRequested` | order events | cancel |
//!
//! Other events are ignored. Scheduling for a customer whose address has not
//! been replicated yet fails *transiently*: the consumer retries it, holding
//! the order's key. An unknown command, or a message whose data does not
//! decode, is a permanent failure: the consumer dead-letters it.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::SagaStyle;
use contracts::customer::{CustomerRegistered, CustomerUpdated, CustomerVersioned};
use contracts::order::{OrderCancelRequested, OrderRejected};
use contracts::payment::PaymentAuthorized;
use contracts::shipping::{CancelShipment, ScheduleShipment, ShipmentChanged};
use polis_bus::{Handler, HandlerError};
use polis_core::{Message, MessageKind, Transaction};
use polis_projection::Ingest;
use polis_store::sql::Sql;
use uuid::Uuid;

use crate::db::{self, ScheduleOutcome};
use crate::{Config, SERVICE};

/// The shipping service's message handler (see the module docs).
#[derive(Debug, Clone)]
pub struct ShippingHandler {
    blocked_countries: Arc<[String]>,
    /// The style of an order whose events do not record it.
    configured: SagaStyle,
}

impl ShippingHandler {
    /// A handler with the service's settings; their `saga` stands in for
    /// the style of an order whose events do not record it
    /// ([`contracts::order::is_choreographed`]).
    pub fn new(config: &Config) -> Self {
        Self { blocked_countries: config.blocked_countries.iter().cloned().collect(), configured: config.saga }
    }
}

#[async_trait]
impl<Tx> Handler<Tx> for ShippingHandler
where
    Tx: Transaction + Sql,
{
    // The consumer's span has the message; this one says the shipping service's
    // own code ran, and its error.
    #[tracing::instrument(name = "shipping_handle", skip_all, fields(kind = %message.kind), err(level = "info"))]
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        match message.kind {
            MessageKind::Command => self.on_command(tx, message).await,
            MessageKind::Event if !self.acts_on(message) => Ok(()),
            MessageKind::Event => self.on_event(tx, message).await,
            MessageKind::Reply => Err(HandlerError::Permanent(format!(
                "the shipping service takes no replies, got `{}`",
                message.message_type
            ))),
        }
    }

    fn accepts(&self, message: &Message) -> bool {
        message.kind != MessageKind::Event || self.acts_on(message)
    }
}

impl ShippingHandler {
    /// Whether an event is one it acts on (see the module docs): not an
    /// orchestrated order's rejection or cancellation, which its saga
    /// follows with `CancelShipment`.
    fn acts_on(&self, event: &Message) -> bool {
        if event.is::<OrderRejected>() || event.is::<OrderCancelRequested>() {
            return contracts::order::is_choreographed(&event.data, self.configured);
        }
        event.is::<CustomerRegistered>() || event.is::<CustomerUpdated>() || event.is::<PaymentAuthorized>()
    }

    async fn on_command<Tx: Transaction + Sql>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        if message.is::<ScheduleShipment>() {
            let command: ScheduleShipment = message.decode()?;
            self.schedule(tx, message, command.order_id, command.customer_id).await
        } else if message.is::<CancelShipment>() {
            cancel(tx, message, message.decode::<CancelShipment>()?.order_id).await
        } else {
            Err(HandlerError::Permanent(format!("unknown shipping command `{}`", message.message_type)))
        }
    }

    async fn on_event<Tx: Transaction + Sql>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        if message.is::<CustomerRegistered>() || message.is::<CustomerUpdated>() {
            replicate(tx, message).await
        } else if message.is::<PaymentAuthorized>() {
            let authorized: PaymentAuthorized = message.decode()?;
            self.schedule(tx, message, authorized.order_id, authorized.customer_id).await
        } else if message.is::<OrderRejected>() {
            cancel(tx, message, message.decode::<OrderRejected>()?.order_id).await
        } else if message.is::<OrderCancelRequested>() {
            cancel(tx, message, message.decode::<OrderCancelRequested>()?.order_id).await
        } else {
            Ok(()) // not ours to act on
        }
    }

    async fn schedule<Tx: Transaction + Sql>(
        &self,
        tx: &mut Tx,
        trigger: &Message,
        order_id: Uuid,
        customer_id: Uuid,
    ) -> Result<(), HandlerError> {
        let key = order_id.to_string();
        match db::schedule(tx, order_id, customer_id, &self.blocked_countries).await? {
            ScheduleOutcome::Scheduled(scheduled) => {
                tracing::debug!(order_id = %order_id, shipment_id = %scheduled.shipment_id, "shipment scheduled");
                tx.send(&contracts::outcome(SERVICE, trigger, &key, &scheduled)?).await?;
            }
            ScheduleOutcome::Failed(failed) => {
                tracing::debug!(order_id = %order_id, reason = failed.reason.as_str(), "shipment failed");
                tx.send(&contracts::outcome(SERVICE, trigger, &key, &failed)?).await?;
            }
        }
        announce(tx, order_id).await
    }
}

/// Sends the order's shipment as it now is ([`ShipmentChanged`]), for read
/// models, after every outcome.
async fn announce<Tx: Transaction + Sql>(tx: &mut Tx, order_id: Uuid) -> Result<(), HandlerError> {
    let Some(shipment) = db::shipment_in(tx, order_id).await? else { return Ok(()) };
    let changed = Message::typed_event(SERVICE, &order_id.to_string(), &ShipmentChanged { shipment })?;
    tx.send(&changed).await?;
    Ok(())
}

async fn cancel<Tx: Transaction + Sql>(tx: &mut Tx, trigger: &Message, order_id: Uuid) -> Result<(), HandlerError> {
    let cancelled = db::cancel(tx, order_id).await?;
    tracing::debug!(order_id = %order_id, "shipment cancelled");
    tx.send(&contracts::outcome(SERVICE, trigger, &order_id.to_string(), &cancelled)?).await?;
    announce(tx, order_id).await
}

/// Puts a customer event in the service's log, where the address replica's
/// projection ([`crate::replica`]) takes it. One that does not decode, or
/// carries an address the service cannot ship to, is a permanent failure (a
/// dead letter), never a row.
async fn replicate<Tx: Transaction + Sql>(tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
    let state = match CustomerVersioned::from_event(&message.message_type, &message.data) {
        Some(Ok(state)) => state,
        Some(Err(e)) => return Err(HandlerError::Permanent(format!("a customer event that does not decode: {e}"))),
        None => return Ok(()),
    };
    crate::rules::check_address(&state.customer.address)?;
    Ingest::all().handle(tx, message).await?;
    tracing::debug!(customer_id = %state.customer.id, version = state.version, "customer event ingested");
    Ok(())
}
