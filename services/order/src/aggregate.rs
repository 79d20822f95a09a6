//! The Order aggregate: pure decisions over an order's event stream.
//!
//! Its events are the service's public order events (the contract types),
//! so an appended event is announced as-is through the outbox.

use contracts::order::{OrderApproved, OrderCancelRequested, OrderCancelled, OrderCreated, OrderRejected, OrderStatus};
use contracts::{Money, OrderLine, RejectionReason, SagaStyle};
use polis_core::{Aggregate, DomainEvent, MessageType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub status: Option<OrderStatus>,
    pub reason: Option<RejectionReason>,
    /// How the order's flow runs, fixed when it is placed; `None` for an
    /// order placed before orders recorded it.
    #[serde(default)]
    pub saga: Option<SagaStyle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    Place {
        order_id: Uuid,
        customer_id: Uuid,
        lines: Vec<OrderLine>,
        saga: SagaStyle,
    },
    Approve,
    /// Reject a pending order. `flow` is the style of the decision's
    /// source (a saga: orchestration; an outcome event or the order's own
    /// deadline: choreography); it is recorded for an order placed before
    /// orders recorded their style, so that participants know who
    /// compensates.
    Reject {
        reason: RejectionReason,
        flow: SagaStyle,
    },
    /// Ask to cancel an approved order; `flow` as for `Reject` (a saga
    /// instance exists: orchestration; none: choreography).
    RequestCancel {
        flow: SagaStyle,
    },
    CompleteCancel,
}

/// The events; their type names are the contract's message types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    #[serde(rename = "order.order-created.v1")]
    Created(OrderCreated),
    #[serde(rename = "order.order-approved.v1")]
    Approved(OrderApproved),
    #[serde(rename = "order.order-rejected.v1")]
    Rejected(OrderRejected),
    #[serde(rename = "order.order-cancel-requested.v1")]
    CancelRequested(OrderCancelRequested),
    #[serde(rename = "order.order-cancelled.v1")]
    Cancelled(OrderCancelled),
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => OrderCreated::TYPE,
            Self::Approved(_) => OrderApproved::TYPE,
            Self::Rejected(_) => OrderRejected::TYPE,
            Self::CancelRequested(_) => OrderCancelRequested::TYPE,
            Self::Cancelled(_) => OrderCancelled::TYPE,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    #[error("order already exists")]
    AlreadyExists,
    #[error("no such order")]
    NotFound,
    #[error("an order needs at least one line")]
    NoLines,
    #[error("line {index}: {reason}")]
    InvalidLine { index: usize, reason: String },
    #[error("the order total overflows")]
    TotalOverflow,
    #[error("an order in status {} cannot be cancelled; only APPROVED orders can", .status.as_str())]
    NotCancellable { status: OrderStatus },
}

/// The sum of `lines`, or `None` on overflow.
pub fn total_of(lines: &[OrderLine]) -> Option<Money> {
    lines.iter().try_fold(0i64, |sum, line| sum.checked_add(line.quantity.checked_mul(line.unit_price)?))
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";

    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let Some(order_id) = self.id else {
            let OrderCommand::Place { order_id, customer_id, lines, saga } = command else {
                return Err(OrderError::NotFound);
            };
            if lines.is_empty() {
                return Err(OrderError::NoLines);
            }
            for (index, line) in lines.iter().enumerate() {
                if line.quantity < 1 {
                    return Err(OrderError::InvalidLine { index, reason: "quantity must be at least 1".into() });
                }
                if line.unit_price < 0 {
                    return Err(OrderError::InvalidLine { index, reason: "unit price must not be negative".into() });
                }
            }
            let total = total_of(lines).ok_or(OrderError::TotalOverflow)?;
            return Ok(vec![OrderEvent::Created(OrderCreated {
                order_id: *order_id,
                customer_id: *customer_id,
                lines: lines.clone(),
                total,
                saga: Some(*saga),
            })]);
        };
        let status = self.status.unwrap_or(OrderStatus::Pending);
        // Late or repeated decisions (a reply after a timeout, a redelivered
        // event) change nothing: only a PENDING order is decided.
        Ok(match (command, status) {
            (OrderCommand::Place { .. }, _) => return Err(OrderError::AlreadyExists),
            (OrderCommand::Approve, OrderStatus::Pending) => vec![OrderEvent::Approved(OrderApproved { order_id })],
            (OrderCommand::Reject { reason, flow }, OrderStatus::Pending) => {
                let saga = Some(self.saga.unwrap_or(*flow));
                vec![OrderEvent::Rejected(OrderRejected { order_id, reason: *reason, saga })]
            }
            (OrderCommand::RequestCancel { flow }, OrderStatus::Approved) => {
                let saga = Some(self.saga.unwrap_or(*flow));
                vec![OrderEvent::CancelRequested(OrderCancelRequested { order_id, saga })]
            }
            (OrderCommand::RequestCancel { .. }, status) => return Err(OrderError::NotCancellable { status }),
            (OrderCommand::CompleteCancel, OrderStatus::CancelPending) => {
                vec![OrderEvent::Cancelled(OrderCancelled { order_id })]
            }
            _ => Vec::new(),
        })
    }

    fn apply(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::Created(created) => {
                self.id = Some(created.order_id);
                self.customer_id = Some(created.customer_id);
                self.lines.clone_from(&created.lines);
                self.total = created.total;
                self.status = Some(OrderStatus::Pending);
                self.saga = created.saga;
            }
            OrderEvent::Approved(_) => self.status = Some(OrderStatus::Approved),
            OrderEvent::Rejected(rejected) => {
                self.status = Some(OrderStatus::Rejected);
                self.reason = Some(rejected.reason);
            }
            OrderEvent::CancelRequested(_) => self.status = Some(OrderStatus::CancelPending),
            OrderEvent::Cancelled(_) => self.status = Some(OrderStatus::Cancelled),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use polis_core::testing::AggregateFixture;

    use super::*;

    fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
        OrderLine { sku: sku.into(), quantity, unit_price }
    }

    fn created(order_id: Uuid, customer_id: Uuid) -> OrderEvent {
        OrderEvent::Created(OrderCreated {
            order_id,
            customer_id,
            lines: vec![line("A", 2, 150)],
            total: 300,
            saga: Some(SagaStyle::Choreography),
        })
    }

    #[test]
    fn placing_an_order_totals_its_lines() {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        AggregateFixture::<Order>::given_no_history()
            .when(OrderCommand::Place {
                order_id,
                customer_id,
                lines: vec![line("A", 2, 150)],
                saga: SagaStyle::Choreography,
            })
            .then_expect_events(vec![created(order_id, customer_id)]);
    }

    #[test]
    fn invalid_orders_are_refused() {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        AggregateFixture::<Order>::given_no_history()
            .when(OrderCommand::Place { order_id, customer_id, lines: vec![], saga: SagaStyle::Choreography })
            .then_expect_error(|e| *e == OrderError::NoLines);
        AggregateFixture::<Order>::given_no_history()
            .when(OrderCommand::Place {
                order_id,
                customer_id,
                lines: vec![line("A", 0, 1)],
                saga: SagaStyle::Choreography,
            })
            .then_expect_error(|e| matches!(e, OrderError::InvalidLine { index: 0, .. }));
        AggregateFixture::<Order>::given_no_history()
            .when(OrderCommand::Place {
                order_id,
                customer_id,
                lines: vec![line("A", 2, i64::MAX)],
                saga: SagaStyle::Choreography,
            })
            .then_expect_error(|e| *e == OrderError::TotalOverflow);
    }

    /// Participants act on a rejection or a cancellation by the style it
    /// records: an order's own, or for an order placed before orders
    /// recorded it, the style of the decision's source.
    #[test]
    fn decisions_record_the_orders_style_or_their_sources() {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        let legacy = OrderEvent::Created(OrderCreated {
            order_id,
            customer_id,
            lines: vec![line("A", 1, 100)],
            total: 100,
            saga: None,
        });
        let reason = RejectionReason::PaymentDeclined;
        AggregateFixture::<Order>::given([legacy.clone()])
            .when(OrderCommand::Reject { reason, flow: SagaStyle::Choreography })
            .then_expect_events(vec![OrderEvent::Rejected(OrderRejected {
                order_id,
                reason,
                saga: Some(SagaStyle::Choreography),
            })]);
        AggregateFixture::<Order>::given([legacy, OrderEvent::Approved(OrderApproved { order_id })])
            .when(OrderCommand::RequestCancel { flow: SagaStyle::Orchestration })
            .then_expect_events(vec![OrderEvent::CancelRequested(OrderCancelRequested {
                order_id,
                saga: Some(SagaStyle::Orchestration),
            })]);
        // A recorded style wins over the source's.
        AggregateFixture::<Order>::given([created(order_id, customer_id)])
            .when(OrderCommand::Reject { reason, flow: SagaStyle::Orchestration })
            .then_expect_events(vec![OrderEvent::Rejected(OrderRejected {
                order_id,
                reason,
                saga: Some(SagaStyle::Choreography),
            })]);
    }

    #[test]
    fn only_a_pending_order_is_decided_once() {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        let rejected = OrderEvent::Rejected(OrderRejected {
            order_id,
            reason: RejectionReason::Timeout,
            saga: Some(SagaStyle::Choreography),
        });
        AggregateFixture::<Order>::given([created(order_id, customer_id)])
            .when(OrderCommand::Reject { reason: RejectionReason::Timeout, flow: SagaStyle::Choreography })
            .then_expect_events(vec![rejected.clone()]);
        // A late approval after the rejection changes nothing.
        AggregateFixture::<Order>::given([created(order_id, customer_id), rejected])
            .when(OrderCommand::Approve)
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_an_approved_order_can_be_cancelled() {
        let (order_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
        AggregateFixture::<Order>::given([created(order_id, customer_id)])
            .when(OrderCommand::RequestCancel { flow: SagaStyle::Choreography })
            .then_expect_error(|e| *e == OrderError::NotCancellable { status: OrderStatus::Pending });
        let approved = OrderEvent::Approved(OrderApproved { order_id });
        let state = AggregateFixture::<Order>::given([created(order_id, customer_id), approved])
            .when(OrderCommand::RequestCancel { flow: SagaStyle::Choreography })
            .then_expect_events(vec![OrderEvent::CancelRequested(OrderCancelRequested {
                order_id,
                saga: Some(SagaStyle::Choreography),
            })]);
        assert_eq!(state.status, Some(OrderStatus::CancelPending));
    }
}
