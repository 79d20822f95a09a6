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
//! | `ReserveStock` | inventory commands | reserve |
//! | `ReleaseStock` | inventory commands | release |
//! | `OrderCreated` | order events | reserve the order's lines |
//! | `OrderRejected` | order events | release |
//! | `PaymentRefunded` | payment events | release (a cancelled order) |
//!
//! Other events are ignored; an unknown command, or a message whose data does
//! not decode or breaks the rules (no items, a quantity below 1, ...), is a
//! permanent failure: the consumer dead-letters it with the reason.

use async_trait::async_trait;
use contracts::Quantity;
use contracts::SagaStyle;
use contracts::inventory::{ReleaseStock, ReserveStock};
use contracts::order::{OrderCreated, OrderRejected};
use contracts::payment::PaymentRefunded;
use polis_bus::{Handler, HandlerError};
use polis_core::{Message, MessageKind, Transaction};
use polis_store::sql::Sql;
use uuid::Uuid;

use crate::SERVICE;
use crate::db::{self, ReserveOutcome, ReserveRequest};

/// The inventory service's message handler (see the module docs).
#[derive(Debug, Clone)]
pub struct InventoryHandler {
    /// The style of an order whose events do not record it.
    configured: SagaStyle,
}

impl InventoryHandler {
    /// A handler with the service's settings; their `saga` stands in for
    /// the style of an order whose events do not record it
    /// ([`contracts::order::is_choreographed`]).
    pub fn new(config: &crate::Config) -> Self {
        Self { configured: config.saga }
    }
}

#[async_trait]
impl<Tx> Handler<Tx> for InventoryHandler
where
    Tx: Transaction + Sql,
{
    // The consumer's span has the message; this one says the inventory service's
    // own code ran, and its error.
    #[tracing::instrument(name = "inventory_handle", skip_all, fields(kind = %message.kind), err(level = "info"))]
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        match message.kind {
            MessageKind::Command => on_command(tx, message).await,
            MessageKind::Event if !self.acts_on(message) => Ok(()),
            MessageKind::Event => self.on_event(tx, message).await,
            MessageKind::Reply => Err(HandlerError::Permanent(format!(
                "the inventory service takes no replies, got `{}`",
                message.message_type
            ))),
        }
    }

    fn accepts(&self, message: &Message) -> bool {
        message.kind != MessageKind::Event || self.acts_on(message)
    }
}

async fn on_command<Tx: Transaction + Sql>(tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
    if message.is::<ReserveStock>() {
        let command: ReserveStock = message.decode()?;
        let request = ReserveRequest {
            order_id: command.order_id,
            customer_id: command.customer_id,
            items: command.items,
            total: command.total,
        };
        reserve(tx, message, &request).await
    } else if message.is::<ReleaseStock>() {
        release(tx, message, message.decode::<ReleaseStock>()?.order_id).await
    } else {
        Err(HandlerError::Permanent(format!("unknown inventory command `{}`", message.message_type)))
    }
}

impl InventoryHandler {
    /// Whether an event is one it acts on (see the module docs): not an
    /// orchestrated order's, which its saga follows with commands.
    fn acts_on(&self, event: &Message) -> bool {
        if event.is::<OrderCreated>() || event.is::<OrderRejected>() {
            return contracts::order::is_choreographed(&event.data, self.configured);
        }
        event.is::<PaymentRefunded>()
    }

    async fn on_event<Tx: Transaction + Sql>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        if message.is::<OrderCreated>() {
            let created: OrderCreated = message.decode()?;
            let request = ReserveRequest {
                order_id: created.order_id,
                customer_id: created.customer_id,
                items: created.lines.into_iter().map(|l| Quantity { sku: l.sku, quantity: l.quantity }).collect(),
                total: created.total,
            };
            reserve(tx, message, &request).await
        } else if message.is::<OrderRejected>() {
            release(tx, message, message.decode::<OrderRejected>()?.order_id).await
        } else if message.is::<PaymentRefunded>() {
            // Only a choreographed cancellation refunds by event.
            release(tx, message, message.decode::<PaymentRefunded>()?.order_id).await
        } else {
            Ok(()) // not ours to act on
        }
    }
}

async fn reserve<Tx: Transaction + Sql>(
    tx: &mut Tx,
    trigger: &Message,
    request: &ReserveRequest,
) -> Result<(), HandlerError> {
    let key = request.order_id.to_string();
    match db::reserve(tx, request).await? {
        ReserveOutcome::Reserved(reserved) => {
            tracing::debug!(order_id = %request.order_id, "stock reserved");
            tx.send(&contracts::outcome(SERVICE, trigger, &key, &reserved)?).await?;
        }
        ReserveOutcome::Failed(failed) => {
            tracing::debug!(order_id = %request.order_id, reason = failed.reason.as_str(), sku = ?failed.sku, "stock reservation failed");
            tx.send(&contracts::outcome(SERVICE, trigger, &key, &failed)?).await?;
        }
    }
    Ok(())
}

async fn release<Tx: Transaction + Sql>(tx: &mut Tx, trigger: &Message, order_id: Uuid) -> Result<(), HandlerError> {
    let released = db::release(tx, order_id).await?;
    tracing::debug!(order_id = %order_id, "stock released");
    tx.send(&contracts::outcome(SERVICE, trigger, &order_id.to_string(), &released)?).await?;
    Ok(())
}
