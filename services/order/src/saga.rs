//! The create-order saga, orchestrated: a pure state machine (see polis-saga).
//!
//! reserve stock → authorize payment → schedule shipment → capture payment →
//! approve. A failure reply, or a step's deadline passing, rejects the order
//! and sends the compensations of every step that acted — and of the step
//! in doubt when a deadline passed, since its command may still be carried
//! out — listed in reverse order: cancel shipment, void payment, release
//! stock. They are sent together rather than one after another so that one
//! participant being down does not hold back the others' compensations
//! (participants accept a compensation before the action it undoes: see the
//! contracts). The order is REJECTED when the decision is taken; the saga
//! finishes when every compensation is confirmed.
//!
//! Cancelling an approved order sends cancel shipment, refund payment and
//! release stock, and completes the cancellation when all three confirm.
//!
//! At the end, the glue that runs the saga inside the order service's
//! transactions: starting it for a new order, and applying its effects to
//! the Order aggregate.

use chrono::{DateTime, Duration, Utc};
use contracts::inventory::{ReleaseStock, ReserveStock, StockReleased, StockReservationFailed, StockReserved};
use contracts::payment::{
    AuthorizePayment, CapturePayment, PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded,
    PaymentVoided, RefundPayment, VoidPayment,
};
use contracts::shipping::{CancelShipment, ScheduleShipment, ShipmentCancelled, ShipmentFailed, ShipmentScheduled};
use contracts::{Money, Quantity, RejectionReason, SagaStyle, inventory, payment, shipping};
use polis_core::{Message, MessageType, Metadata};
use polis_saga::{Deadline, Saga, Step};
use polis_store::sql::{Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Order, OrderCommand};
use crate::{OrderFailure, OrderService, SERVICE};

/// What the saga asks the order service to do to the Order aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaEffect {
    Approve,
    Reject(RejectionReason),
    CompleteCancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reserving,
    Authorizing,
    Scheduling,
    Capturing,
    Approved,
    Compensating,
    Rejected,
    Cancelling,
    Cancelled,
}

impl Phase {
    /// The phase's name, as in the saga's state (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserving => "reserving",
            Self::Authorizing => "authorizing",
            Self::Scheduling => "scheduling",
            Self::Capturing => "capturing",
            Self::Approved => "approved",
            Self::Compensating => "compensating",
            Self::Rejected => "rejected",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A service the saga may have to undo something at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Participant {
    Stock,
    Payment,
    Shipment,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrderSaga {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub items: Vec<Quantity>,
    pub total: Money,
    pub phase: Phase,
    /// Participants that acted (or may have), in step order.
    pub touched: Vec<Participant>,
    /// Confirmations still awaited while compensating or cancelling.
    pub awaiting: Vec<Participant>,
    pub reason: Option<RejectionReason>,
    /// How long each step may wait for its reply.
    pub step_timeout_ms: u64,
    /// Correlation for every command of this saga.
    pub metadata: Metadata,
}

impl CreateOrderSaga {
    /// Starts the saga: its first command and deadline.
    pub fn start(
        order_id: Uuid,
        customer_id: Uuid,
        items: Vec<Quantity>,
        total: Money,
        step_timeout_ms: u64,
        metadata: Metadata,
        now: DateTime<Utc>,
    ) -> (Self, Step<SagaEffect>) {
        let saga = Self {
            order_id,
            customer_id,
            items,
            total,
            phase: Phase::Reserving,
            touched: Vec::new(),
            awaiting: Vec::new(),
            reason: None,
            step_timeout_ms,
            metadata,
        };
        let reserve = ReserveStock { order_id, customer_id, items: saga.items.clone(), total };
        let step = Step::default().send(saga.command(inventory::SERVICE, &reserve)).deadline(saga.deadline(now));
        (saga, step)
    }

    /// Cancels an approved order: undo every step, then complete the cancellation.
    pub fn cancel(&mut self) -> Step<SagaEffect> {
        if self.phase != Phase::Approved {
            return Step::nothing();
        }
        self.phase = Phase::Cancelling;
        self.awaiting = vec![Participant::Shipment, Participant::Payment, Participant::Stock];
        let order_id = self.order_id;
        Step::default()
            .send(self.command(shipping::SERVICE, &CancelShipment { order_id }))
            .send(self.command(payment::SERVICE, &RefundPayment { order_id }))
            .send(self.command(inventory::SERVICE, &ReleaseStock { order_id }))
            .deadline(Deadline::Clear)
    }

    fn command<T: MessageType>(&self, target: &str, body: &T) -> Message {
        let key = self.order_id.to_string();
        // The contract bodies are plain structs of strings, numbers and ids:
        // serializing them cannot fail. Were it ever to, the participant would
        // dead-letter the null body (visible, never silent) and the step's
        // deadline would reject the order.
        let data = serde_json::to_value(body).unwrap_or(serde_json::Value::Null);
        Message::command(SERVICE, target, T::TYPE, &key, data).with_metadata(self.metadata.clone())
    }

    fn deadline(&self, now: DateTime<Utc>) -> Deadline {
        let timeout = Duration::milliseconds(i64::try_from(self.step_timeout_ms).unwrap_or(i64::MAX / 1_000_000));
        Deadline::At(now + timeout)
    }

    /// Moves to the next step: record what acted, send the next command.
    fn advance<T: MessageType>(
        &mut self,
        acted: Option<Participant>,
        next: Phase,
        target: &str,
        body: &T,
        now: DateTime<Utc>,
    ) -> Step<SagaEffect> {
        if let Some(participant) = acted
            && !self.touched.contains(&participant)
        {
            self.touched.push(participant);
        }
        self.phase = next;
        Step::default().send(self.command(target, body)).deadline(self.deadline(now))
    }

    /// Rejects the order and compensates every participant that acted, plus
    /// the one in doubt (whose deadline passed).
    fn reject(&mut self, reason: RejectionReason, in_doubt: Option<Participant>) -> Step<SagaEffect> {
        let mut undo = self.touched.clone();
        if let Some(participant) = in_doubt
            && !undo.contains(&participant)
        {
            undo.push(participant);
        }
        undo.reverse();
        self.reason = Some(reason);
        self.awaiting.clone_from(&undo);
        self.phase = if undo.is_empty() { Phase::Rejected } else { Phase::Compensating };
        let order_id = self.order_id;
        let mut step = Step::default().deadline(Deadline::Clear).effect(SagaEffect::Reject(reason));
        for participant in undo {
            step = step.send(match participant {
                Participant::Shipment => self.command(shipping::SERVICE, &CancelShipment { order_id }),
                Participant::Payment => self.command(payment::SERVICE, &VoidPayment { order_id }),
                Participant::Stock => self.command(inventory::SERVICE, &ReleaseStock { order_id }),
            });
        }
        step
    }

    /// Records a confirmation awaited while compensating or cancelling.
    fn confirmed(&mut self, participant: Participant) -> Step<SagaEffect> {
        if !self.awaiting.contains(&participant) {
            return Step::nothing();
        }
        self.awaiting.retain(|p| *p != participant);
        if !self.awaiting.is_empty() {
            return Step::nothing();
        }
        match self.phase {
            Phase::Compensating => {
                self.phase = Phase::Rejected;
                Step::nothing()
            }
            Phase::Cancelling => {
                self.phase = Phase::Cancelled;
                Step::default().effect(SagaEffect::CompleteCancel)
            }
            _ => Step::nothing(),
        }
    }
}

/// The failure reason a participant gave, or `fallback` if its body is unreadable.
fn reason_of<T: MessageType>(
    reply: &Message,
    fallback: RejectionReason,
    get: impl Fn(&T) -> RejectionReason,
) -> RejectionReason {
    reply.decode::<T>().map(|body| get(&body)).unwrap_or(fallback)
}

impl Saga for CreateOrderSaga {
    const TYPE: &'static str = "create-order";
    type Effect = SagaEffect;

    fn on_reply(&mut self, reply: &Message, now: DateTime<Utc>) -> Step<SagaEffect> {
        let order_id = self.order_id;
        let is = |t: &str| reply.message_type == t;
        match self.phase {
            Phase::Reserving if is(StockReserved::TYPE) => {
                let authorize = AuthorizePayment { order_id, customer_id: self.customer_id, amount: self.total };
                self.advance(Some(Participant::Stock), Phase::Authorizing, payment::SERVICE, &authorize, now)
            }
            Phase::Reserving if is(StockReservationFailed::TYPE) => {
                let reason = reason_of(reply, RejectionReason::OutOfStock, |b: &StockReservationFailed| b.reason);
                self.reject(reason, None)
            }
            Phase::Authorizing if is(PaymentAuthorized::TYPE) => {
                let schedule = ScheduleShipment { order_id, customer_id: self.customer_id };
                self.advance(Some(Participant::Payment), Phase::Scheduling, shipping::SERVICE, &schedule, now)
            }
            Phase::Authorizing if is(PaymentFailed::TYPE) => {
                let reason = reason_of(reply, RejectionReason::PaymentDeclined, |b: &PaymentFailed| b.reason);
                self.reject(reason, None)
            }
            Phase::Scheduling if is(ShipmentScheduled::TYPE) => self.advance(
                Some(Participant::Shipment),
                Phase::Capturing,
                payment::SERVICE,
                &CapturePayment { order_id },
                now,
            ),
            Phase::Scheduling if is(ShipmentFailed::TYPE) => {
                let reason = reason_of(reply, RejectionReason::Undeliverable, |b: &ShipmentFailed| b.reason);
                self.reject(reason, None)
            }
            Phase::Capturing if is(PaymentCaptured::TYPE) => {
                self.phase = Phase::Approved;
                Step::default().deadline(Deadline::Clear).effect(SagaEffect::Approve)
            }
            Phase::Capturing if is(PaymentFailed::TYPE) => {
                let reason = reason_of(reply, RejectionReason::PaymentDeclined, |b: &PaymentFailed| b.reason);
                self.reject(reason, None)
            }
            Phase::Compensating | Phase::Cancelling => {
                if is(StockReleased::TYPE) {
                    self.confirmed(Participant::Stock)
                } else if is(PaymentVoided::TYPE) || is(PaymentRefunded::TYPE) {
                    self.confirmed(Participant::Payment)
                } else if is(ShipmentCancelled::TYPE) {
                    self.confirmed(Participant::Shipment)
                } else {
                    Step::nothing()
                }
            }
            // Late or duplicated replies for a step already behind us.
            _ => Step::nothing(),
        }
    }

    fn on_deadline(&mut self, _now: DateTime<Utc>) -> Step<SagaEffect> {
        let in_doubt = match self.phase {
            Phase::Reserving => Participant::Stock,
            Phase::Authorizing | Phase::Capturing => Participant::Payment,
            Phase::Scheduling => Participant::Shipment,
            _ => return Step::default().deadline(Deadline::Clear),
        };
        self.reject(RejectionReason::Timeout, Some(in_doubt))
    }

    fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Approved | Phase::Rejected | Phase::Cancelled)
    }

    /// The phase, as serde writes it in the state (`reserving`, ...).
    fn state_name(&self) -> &'static str {
        self.phase.as_str()
    }
}

impl<S> OrderService<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Starts the saga of the order just placed: saves it with its first
    /// command and deadline.
    pub(crate) async fn start_saga(
        &self,
        tx: &mut S::Tx,
        order_id: Uuid,
        customer_id: Uuid,
        order: &Order,
        now: DateTime<Utc>,
    ) -> Result<(), OrderFailure> {
        let (saga, step) = CreateOrderSaga::start(
            order_id,
            customer_id,
            order.lines.iter().map(|l| Quantity { sku: l.sku.clone(), quantity: l.quantity }).collect(),
            order.total,
            self.config.step_timeout_ms,
            Metadata { correlation_id: Some(order_id), ..Metadata::default() },
            now,
        );
        let mut instance = self.sagas.begin(order_id.to_string(), saga);
        self.sagas.save(tx, &mut instance, &step).await?;
        Ok(())
    }

    /// Applies the saga's effects to the order.
    pub(crate) async fn apply_effects(
        &self,
        tx: &mut S::Tx,
        order_id: Uuid,
        effects: Vec<SagaEffect>,
        metadata: &Metadata,
    ) -> Result<(), OrderFailure> {
        for effect in effects {
            let command = match effect {
                SagaEffect::Approve => OrderCommand::Approve,
                SagaEffect::Reject(reason) => OrderCommand::Reject { reason, flow: SagaStyle::Orchestration },
                SagaEffect::CompleteCancel => OrderCommand::CompleteCancel,
            };
            self.execute(tx, order_id, &command, metadata).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use polis_saga::testing::SagaFixture;

    use super::*;

    fn started() -> (CreateOrderSaga, Step<SagaEffect>) {
        let items = vec![Quantity { sku: "A".into(), quantity: 2 }];
        CreateOrderSaga::start(Uuid::now_v7(), Uuid::now_v7(), items, 300, 1_000, Metadata::default(), Utc::now())
    }

    fn reply<T: MessageType>(saga: &CreateOrderSaga, body: &T) -> Message {
        let command = saga.command("x", &ReleaseStock { order_id: saga.order_id });
        Message::typed_reply(&command, body).unwrap()
    }

    fn types(step: &Step<SagaEffect>) -> Vec<&str> {
        step.send.iter().map(|m| m.message_type.as_str()).collect()
    }

    /// The state name operators list sagas by is the phase as the stored
    /// state spells it, for every phase.
    #[test]
    fn the_state_name_is_the_phase_as_stored() {
        use Phase::*;
        let (mut saga, _) = started();
        assert_eq!(saga.state_name(), "reserving");
        for phase in
            [Reserving, Authorizing, Scheduling, Capturing, Approved, Compensating, Rejected, Cancelling, Cancelled]
        {
            saga.phase = phase;
            assert_eq!(serde_json::to_value(phase).unwrap(), saga.state_name(), "{phase:?}");
            assert!(polis_saga::is_state_name(saga.state_name()));
        }
    }

    #[test]
    fn the_happy_path_runs_every_step_and_approves() {
        let (saga, step) = started();
        assert_eq!(types(&step), [ReserveStock::TYPE]);
        assert!(matches!(step.deadline, Deadline::At(_)));
        let order_id = saga.order_id;
        let customer_id = saga.customer_id;
        let r = reply(&saga, &StockReserved { order_id, customer_id, total: 300 });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(types(&step), [AuthorizePayment::TYPE]);
        let r = reply(&saga, &PaymentAuthorized { order_id, customer_id, amount: 300 });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(types(&step), [ScheduleShipment::TYPE]);
        let r = reply(&saga, &ShipmentScheduled { order_id, shipment_id: Uuid::now_v7() });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(types(&step), [CapturePayment::TYPE]);
        let r = reply(&saga, &PaymentCaptured { order_id, amount: 300 });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(step.effects, [SagaEffect::Approve]);
        assert_eq!(step.deadline, Deadline::Clear);
        assert!(saga.is_finished());
        // A duplicate of the last reply changes nothing.
        let (_, step) = SagaFixture::given(saga).when_reply(&r);
        assert!(step.is_empty());
    }

    #[test]
    fn an_undeliverable_address_compensates_payment_then_stock_in_reverse() {
        let (saga, _) = started();
        let (order_id, customer_id) = (saga.order_id, saga.customer_id);
        let r = reply(&saga, &StockReserved { order_id, customer_id, total: 300 });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let r = reply(&saga, &PaymentAuthorized { order_id, customer_id, amount: 300 });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let r = reply(&saga, &ShipmentFailed { order_id, reason: RejectionReason::Undeliverable });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(step.effects, [SagaEffect::Reject(RejectionReason::Undeliverable)]);
        assert_eq!(types(&step), [VoidPayment::TYPE, ReleaseStock::TYPE]);
        assert_eq!(saga.phase, Phase::Compensating);
        let r = reply(&saga, &PaymentVoided { order_id });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let r = reply(&saga, &StockReleased { order_id });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert!(step.effects.is_empty());
        assert_eq!(saga.phase, Phase::Rejected);
    }

    #[test]
    fn a_deadline_compensates_the_step_in_doubt_too() {
        let (saga, _) = started();
        let (order_id, customer_id) = (saga.order_id, saga.customer_id);
        let r = reply(&saga, &StockReserved { order_id, customer_id, total: 300 });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let (saga, step) = SagaFixture::given(saga).when_deadline();
        assert_eq!(step.effects, [SagaEffect::Reject(RejectionReason::Timeout)]);
        assert_eq!(types(&step), [VoidPayment::TYPE, ReleaseStock::TYPE]);
        // The authorization arriving late is ignored: its void is already sent.
        let r = reply(&saga, &PaymentAuthorized { order_id, customer_id, amount: 300 });
        let (_, step) = SagaFixture::given(saga).when_reply(&r);
        assert!(step.send.is_empty() && step.effects.is_empty());
    }

    #[test]
    fn out_of_stock_rejects_without_compensation() {
        let (saga, _) = started();
        let order_id = saga.order_id;
        let failed = StockReservationFailed { order_id, reason: RejectionReason::OutOfStock, sku: Some("A".into()) };
        let r = reply(&saga, &failed);
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(step.effects, [SagaEffect::Reject(RejectionReason::OutOfStock)]);
        assert!(step.send.is_empty());
        assert!(saga.is_finished());
    }

    #[test]
    fn cancelling_undoes_every_step_then_completes() {
        let (mut saga, _) = started();
        saga.phase = Phase::Approved;
        let order_id = saga.order_id;
        let step = saga.cancel();
        assert_eq!(types(&step), [CancelShipment::TYPE, RefundPayment::TYPE, ReleaseStock::TYPE]);
        let r = reply(&saga, &ShipmentCancelled { order_id });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let r = reply(&saga, &PaymentRefunded { order_id, amount: 300 });
        let (saga, _) = SagaFixture::given(saga).when_reply(&r);
        let r = reply(&saga, &StockReleased { order_id });
        let (saga, step) = SagaFixture::given(saga).when_reply(&r);
        assert_eq!(step.effects, [SagaEffect::CompleteCancel]);
        assert_eq!(saga.phase, Phase::Cancelled);
    }
}
