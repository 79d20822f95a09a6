//! The service's messages: customer events for the replica (into the log,
//! [`crate::replica`]), and the saga's
//! commands (orchestration) or the events it reacts to (choreography).
//!
//! Each step answers with [`contracts::outcome`]: a reply to a command, an
//! event caused by an event. Idempotency per order lives in the payments
//! table, beyond the inbox's per-message dedup: a step whose effect is
//! already recorded re-sends the recorded outcome and changes nothing.

use async_trait::async_trait;
use contracts::customer::{CustomerRegistered, CustomerUpdated, CustomerVersioned};
use contracts::inventory::StockReserved;
use contracts::order::OrderRejected;
use contracts::payment::{
    AuthorizePayment, CapturePayment, PaymentAuthorized, PaymentCaptured, PaymentChanged, PaymentFailed,
    PaymentRefunded, PaymentStatus, PaymentVoided, RefundPayment, VoidPayment,
};
use contracts::shipping::{ShipmentCancelled, ShipmentScheduled};
use contracts::{Money, RejectionReason, SagaStyle};
use polis_bus::{Handler, HandlerError};
use polis_core::{Message, MessageKind, Transaction};
use polis_projection::Ingest;
use polis_store::sql::Sql;
use uuid::Uuid;

use crate::db::{self, Stored};
use crate::provider::{Decision, Provider};
use crate::{Config, SERVICE, rules};

/// Handles every message the payment service takes, inside the consumer's
/// transaction (so its writes, its outcome and the inbox record commit
/// together).
///
/// - customer events go into the log for the replica, in both styles;
/// - commands are carried out whatever the style (an unknown command type
///   is a permanent failure);
/// - `StockReserved`, `ShipmentScheduled` and `ShipmentCancelled` trigger
///   the choreographed steps (those events only exist for choreographed
///   orders: for orchestrated ones the participants reply instead), and
///   `OrderRejected` does for an order that runs choreographed
///   ([`contracts::order::is_choreographed`]; the handler's style stands in for an
///   order that does not record its own); every other event is ignored.
#[derive(Debug, Clone)]
pub struct PaymentHandler {
    style: SagaStyle,
    provider: Provider,
}

/// An outcome to send about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Authorized(PaymentAuthorized),
    Failed(PaymentFailed),
    Captured(PaymentCaptured),
    Voided(PaymentVoided),
    Refunded(PaymentRefunded),
}

impl Outcome {
    fn failed(order_id: Uuid, reason: RejectionReason) -> Self {
        Self::Failed(PaymentFailed { order_id, reason })
    }

    fn refunded(order_id: Uuid, amount: Money) -> Self {
        Self::Refunded(PaymentRefunded { order_id, amount })
    }

    fn voided(order_id: Uuid) -> Self {
        Self::Voided(PaymentVoided { order_id })
    }
}

/// Which request asked for a refund: the orchestrator's command wants an
/// answer whatever the state; shipping's `ShipmentCancelled` (choreography)
/// only concerns a captured payment, since the same event also ends a
/// rejection, where there is nothing to refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefundTrigger {
    Command,
    ShipmentCancelled,
}

/// A concurrent handler of the same order changed its payment between this
/// one's read and write; the retry reads the new state.
fn raced(order_id: Uuid) -> HandlerError {
    HandlerError::Transient(format!("the payment of order {order_id} changed concurrently; retrying"))
}

impl PaymentHandler {
    /// A handler with the service's settings; their `saga` stands in for
    /// the style of an order whose events do not record it
    /// ([`contracts::order::is_choreographed`]).
    pub fn new(config: &Config) -> Self {
        Self { style: config.saga, provider: Provider::new(config) }
    }

    async fn on_command<Tx>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError>
    where
        Tx: Transaction + Sql,
    {
        if message.is::<AuthorizePayment>() {
            let command: AuthorizePayment = message.decode()?;
            self.authorize(tx, message, command.order_id, command.customer_id, command.amount).await
        } else if message.is::<CapturePayment>() {
            let command: CapturePayment = message.decode()?;
            capture(tx, message, command.order_id).await
        } else if message.is::<VoidPayment>() {
            let command: VoidPayment = message.decode()?;
            void(tx, message, command.order_id).await
        } else if message.is::<RefundPayment>() {
            let command: RefundPayment = message.decode()?;
            refund(tx, message, command.order_id, RefundTrigger::Command).await
        } else {
            Err(HandlerError::Permanent(format!("the payment service has no command `{}`", message.message_type)))
        }
    }

    /// Whether an event is one it acts on: not an orchestrated order's
    /// rejection, which its saga follows with `VoidPayment`.
    fn acts_on(&self, event: &Message) -> bool {
        if event.is::<OrderRejected>() {
            return contracts::order::is_choreographed(&event.data, self.style);
        }
        event.is::<CustomerRegistered>()
            || event.is::<CustomerUpdated>()
            || event.is::<StockReserved>()
            || event.is::<ShipmentScheduled>()
            || event.is::<ShipmentCancelled>()
    }

    async fn on_event<Tx>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError>
    where
        Tx: Transaction + Sql,
    {
        if message.is::<CustomerRegistered>() || message.is::<CustomerUpdated>() {
            return replicate(tx, message).await;
        }
        if message.is::<StockReserved>() {
            let event: StockReserved = message.decode()?;
            self.authorize(tx, message, event.order_id, event.customer_id, event.total).await
        } else if message.is::<ShipmentScheduled>() {
            let event: ShipmentScheduled = message.decode()?;
            capture(tx, message, event.order_id).await
        } else if message.is::<ShipmentCancelled>() {
            let event: ShipmentCancelled = message.decode()?;
            refund(tx, message, event.order_id, RefundTrigger::ShipmentCancelled).await
        } else if message.is::<OrderRejected>() {
            let event: OrderRejected = message.decode()?;
            void(tx, message, event.order_id).await
        } else {
            Ok(())
        }
    }

    /// Authorizes `amount` for the order: credit check, then the provider.
    async fn authorize<Tx>(
        &self,
        tx: &mut Tx,
        trigger: &Message,
        order_id: Uuid,
        customer_id: Uuid,
        amount: Money,
    ) -> Result<(), HandlerError>
    where
        Tx: Transaction + Sql,
    {
        if amount < 0 {
            return Err(HandlerError::Permanent(format!(
                "cannot authorize a negative amount ({amount}) for order {order_id}"
            )));
        }
        if let Some(payment) = db::load(tx, order_id).await? {
            return send(tx, trigger, order_id, authorization_outcome(&payment)).await;
        }
        let Some(customer) = db::lock_customer(tx, customer_id).await? else {
            // The customer's registration is on its way through the customer
            // topic, which is consumed independently of this one: wait for it.
            return Err(HandlerError::Transient(format!(
                "customer {customer_id} of order {order_id} is not replicated yet"
            )));
        };
        let exposure = customer.exposure;
        let decision = if !rules::within_credit_limit(exposure, amount, customer.credit_limit) {
            Err(RejectionReason::CreditLimitExceeded)
        } else if self.provider.authorize(order_id, &customer.email).await == Decision::Declined {
            Err(RejectionReason::PaymentDeclined)
        } else {
            Ok(())
        };
        let (status, reason) = match decision {
            Ok(()) => (PaymentStatus::Authorized, None),
            Err(reason) => (PaymentStatus::Failed, Some(reason)),
        };
        let payment = Stored { order_id, customer_id: Some(customer_id), amount, status, reason };
        if !db::insert(tx, &payment).await? {
            return Err(raced(order_id));
        }
        tracing::info!(
            order_id = %order_id,
            customer_id = %customer_id,
            amount,
            exposure,
            credit_limit = customer.credit_limit,
            status = db::status_str(status),
            reason = reason.map(RejectionReason::as_str),
            "payment authorization decided"
        );
        send(tx, trigger, order_id, authorization_outcome(&payment)).await
    }

    /// Handles one message; the [`Handler`] impl, callable without boxing.
    pub async fn handle_message<Tx>(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError>
    where
        Tx: Transaction + Sql,
    {
        match message.kind {
            MessageKind::Command => self.on_command(tx, message).await,
            MessageKind::Event if !self.acts_on(message) => Ok(()),
            MessageKind::Event => self.on_event(tx, message).await,
            MessageKind::Reply => Err(HandlerError::Permanent(format!(
                "the payment service sends no commands, so it takes no replies (got `{}`)",
                message.message_type
            ))),
        }
    }
}

#[async_trait]
impl<Tx> Handler<Tx> for PaymentHandler
where
    Tx: Transaction + Sql,
{
    // The consumer's span has the message; this one says the payment service's
    // own code ran, and its error.
    #[tracing::instrument(name = "payment_handle", skip_all, fields(kind = %message.kind), err(level = "info"))]
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        self.handle_message(tx, message).await
    }

    fn accepts(&self, message: &Message) -> bool {
        message.kind != MessageKind::Event || self.acts_on(message)
    }
}

/// What an authorization of this payment answered (and answers again).
fn authorization_outcome(payment: &Stored) -> Outcome {
    match (payment.status, payment.customer_id) {
        // A FAILED row always has its reason; a missing one reads as a decline rather than a fault.
        (PaymentStatus::Failed, _) => {
            Outcome::failed(payment.order_id, payment.reason.unwrap_or(RejectionReason::PaymentDeclined))
        }
        // A tombstone: the order was compensated (rejected) before it got here.
        (_, None) => Outcome::failed(payment.order_id, RejectionReason::Timeout),
        (_, Some(customer_id)) => {
            Outcome::Authorized(PaymentAuthorized { order_id: payment.order_id, customer_id, amount: payment.amount })
        }
    }
}

/// Puts a customer event in the service's log, where the replica's
/// projection ([`crate::replica`]) takes it; one that does not decode is a
/// permanent failure (a dead letter), never a row.
async fn replicate<Tx: Transaction>(tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
    match CustomerVersioned::from_event(&message.message_type, &message.data) {
        Some(Ok(state)) => {
            Ingest::all().handle(tx, message).await?;
            tracing::debug!(customer_id = %state.customer.id, version = state.version, "customer event ingested");
            Ok(())
        }
        Some(Err(e)) => Err(HandlerError::Permanent(format!("a customer event that does not decode: {e}"))),
        None => Ok(()),
    }
}

/// AUTHORIZED → CAPTURED; CAPTURED again re-sends; anything else (no
/// payment, failed, voided, refunded) is too late: `TIMEOUT`.
async fn capture<Tx>(tx: &mut Tx, trigger: &Message, order_id: Uuid) -> Result<(), HandlerError>
where
    Tx: Transaction + Sql,
{
    let outcome = match db::transition(tx, order_id, PaymentStatus::Authorized, PaymentStatus::Captured).await? {
        Some(amount) => {
            tracing::info!(order_id = %order_id, amount, "payment captured");
            Outcome::Captured(PaymentCaptured { order_id, amount })
        }
        None => match db::load(tx, order_id).await? {
            Some(Stored { status: PaymentStatus::Captured, amount, .. }) => {
                Outcome::Captured(PaymentCaptured { order_id, amount })
            }
            Some(Stored { status: PaymentStatus::Authorized, .. }) => return Err(raced(order_id)),
            _ => Outcome::failed(order_id, RejectionReason::Timeout),
        },
    };
    send(tx, trigger, order_id, outcome).await
}

/// The compensation: undoes whatever the payment got to. AUTHORIZED →
/// VOIDED, CAPTURED → REFUNDED; already undone or failed re-sends; no
/// payment at all leaves a VOIDED tombstone, so that a late authorization
/// fails.
async fn void<Tx>(tx: &mut Tx, trigger: &Message, order_id: Uuid) -> Result<(), HandlerError>
where
    Tx: Transaction + Sql,
{
    let outcome = match db::load(tx, order_id).await? {
        None => {
            let tombstone =
                Stored { order_id, customer_id: None, amount: 0, status: PaymentStatus::Voided, reason: None };
            if !db::insert(tx, &tombstone).await? {
                return Err(raced(order_id));
            }
            tracing::info!(order_id = %order_id, "void before any authorization: tombstone stored");
            Outcome::voided(order_id)
        }
        Some(payment) => match payment.status {
            PaymentStatus::Authorized => {
                db::transition(tx, order_id, PaymentStatus::Authorized, PaymentStatus::Voided)
                    .await?
                    .ok_or_else(|| raced(order_id))?;
                tracing::info!(order_id = %order_id, amount = payment.amount, "payment voided");
                Outcome::voided(order_id)
            }
            PaymentStatus::Captured => {
                let amount = db::transition(tx, order_id, PaymentStatus::Captured, PaymentStatus::Refunded)
                    .await?
                    .ok_or_else(|| raced(order_id))?;
                tracing::info!(order_id = %order_id, amount, "captured payment refunded by a void");
                Outcome::refunded(order_id, amount)
            }
            PaymentStatus::Failed | PaymentStatus::Voided => Outcome::voided(order_id),
            PaymentStatus::Refunded => Outcome::refunded(order_id, payment.amount),
        },
    };
    send(tx, trigger, order_id, outcome).await
}

/// The cancellation: CAPTURED → REFUNDED; REFUNDED again re-sends. Any
/// other state has nothing captured to refund: the command is answered
/// `TIMEOUT` (like a capture that comes too late), a `ShipmentCancelled`
/// is ignored.
async fn refund<Tx>(tx: &mut Tx, trigger: &Message, order_id: Uuid, by: RefundTrigger) -> Result<(), HandlerError>
where
    Tx: Transaction + Sql,
{
    let outcome = match db::transition(tx, order_id, PaymentStatus::Captured, PaymentStatus::Refunded).await? {
        Some(amount) => {
            tracing::info!(order_id = %order_id, amount, "payment refunded");
            Outcome::refunded(order_id, amount)
        }
        None => match db::load(tx, order_id).await? {
            Some(Stored { status: PaymentStatus::Refunded, amount, .. }) => Outcome::refunded(order_id, amount),
            Some(Stored { status: PaymentStatus::Captured, .. }) => return Err(raced(order_id)),
            _ if by == RefundTrigger::ShipmentCancelled => return Ok(()),
            _ => Outcome::failed(order_id, RejectionReason::Timeout),
        },
    };
    send(tx, trigger, order_id, outcome).await
}

/// Writes `outcome` to the outbox as the answer to `trigger`, keyed by the order.
async fn send<Tx: Transaction + Sql>(
    tx: &mut Tx,
    trigger: &Message,
    order_id: Uuid,
    outcome: Outcome,
) -> Result<(), HandlerError> {
    let key = order_id.to_string();
    let message = match &outcome {
        Outcome::Authorized(body) => contracts::outcome(SERVICE, trigger, &key, body),
        Outcome::Failed(body) => contracts::outcome(SERVICE, trigger, &key, body),
        Outcome::Captured(body) => contracts::outcome(SERVICE, trigger, &key, body),
        Outcome::Voided(body) => contracts::outcome(SERVICE, trigger, &key, body),
        Outcome::Refunded(body) => contracts::outcome(SERVICE, trigger, &key, body),
    }?;
    tracing::debug!(order_id = %order_id, message_type = message.message_type, kind = %message.kind, "outcome sent");
    tx.send(&message).await?;
    announce(tx, order_id).await
}

/// Sends the order's payment as it now is ([`PaymentChanged`]), for read
/// models, after every outcome.
async fn announce<Tx: Transaction + Sql>(tx: &mut Tx, order_id: Uuid) -> Result<(), HandlerError> {
    let Some(stored) = db::load(tx, order_id).await? else { return Ok(()) };
    let payment = stored.view();
    let changed = Message::typed_event(SERVICE, &order_id.to_string(), &PaymentChanged { payment })?;
    tx.send(&changed).await?;
    Ok(())
}
