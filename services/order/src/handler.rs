//! The order service's message handler, on all its topics: its own
//! deadlines (the saga's and the choreography's), the saga's replies, and
//! the other services' outcome events. Each message is routed to the code
//! of its style, in [`crate::saga`] or `choreography`, after taking the
//! order's lock.

use async_trait::async_trait;
use chrono::Utc;
use polis_bus::{Handler, HandlerError};
use polis_core::{Message, MessageKind};
use polis_store::sql::{Sql, SqlStore};
use uuid::Uuid;

use crate::choreography::{self, ORDER_DEADLINE_TYPE, deadline_order_id};
use crate::{OrderFailure, OrderService};

/// The order service's message handler (all its topics).
pub(crate) struct OrderHandler<S> {
    pub(crate) service: OrderService<S>,
}

impl<S> Clone for OrderHandler<S> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone() }
    }
}

#[async_trait]
impl<S> Handler<S::Tx> for OrderHandler<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    // The consumer's span has the message; this one says the order service's
    // own code ran, and its error.
    #[tracing::instrument(name = "order_handle", skip_all, fields(kind = %message.kind), err(level = "info"))]
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        let service = &self.service;
        let now = Utc::now();
        match message.kind {
            MessageKind::Command if message.message_type == polis_saga::DEADLINE_TYPE => {
                let Some(saga_id) = service.sagas.deadline_target(message) else {
                    return Err(HandlerError::Permanent("a saga deadline for an unknown saga type".into()));
                };
                let order_id = parse_order_id(&saga_id)?;
                // Loading the saga takes the order's lock.
                let effects = service.sagas.fire_deadline(tx, message, now).await.map_err(OrderFailure::from)?;
                service.apply_effects(tx, order_id, effects, &message.caused()).await?;
            }
            MessageKind::Command if message.message_type == ORDER_DEADLINE_TYPE => {
                service.lock_order(tx, deadline_order_id(message)?).await?;
                service.order_deadline(tx, message).await?;
            }
            MessageKind::Command => {
                return Err(HandlerError::Permanent(format!("unknown command {}", message.message_type)));
            }
            MessageKind::Reply => {
                let order_id = parse_key(message)?;
                // Loading the saga takes the order's lock.
                let effects =
                    service.sagas.on_reply(tx, &message.key, message, now).await.map_err(OrderFailure::from)?;
                service.apply_effects(tx, order_id, effects, &message.caused()).await?;
            }
            MessageKind::Event => service.decide(tx, message).await?,
        }
        Ok(())
    }

    /// Declines the other services' events that decide nothing here (see
    /// `decide`); commands and replies are all its own.
    fn accepts(&self, message: &Message) -> bool {
        message.kind != MessageKind::Event || choreography::decides(message)
    }

    /// Counts the decisions the message's committed transaction made.
    fn committed(&self, message: &Message) {
        self.service.kpis.committed(message.id);
    }
}

fn parse_order_id(id: &str) -> Result<Uuid, OrderFailure> {
    Uuid::parse_str(id).map_err(|e| OrderFailure::Decode(format!("`{id}` is not an order id: {e}")))
}

/// The order a message is about, from its key (replies and outcome events
/// are keyed by the order id).
pub(crate) fn parse_key(message: &Message) -> Result<Uuid, OrderFailure> {
    Uuid::parse_str(&message.key)
        .map_err(|e| OrderFailure::Decode(format!("key `{}` is not an order id: {e}", message.key)))
}
