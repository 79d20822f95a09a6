//! The order service: the event-sourced Order aggregate and the
//! create-order saga.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Money, OrderLine, Quantity, RejectionReason, message_types};

pub const SERVICE: &str = "order";

/// An order's status. The wire names are exactly the issue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Approved,
    Rejected,
    CancelPending,
    Cancelled,
}

impl OrderStatus {
    /// No further change will happen without a new request.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::CancelPending => "CANCEL_PENDING",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// `order.order-created.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total: Money,
}

/// `order.order-approved.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderApproved {
    pub order_id: Uuid,
}

/// `order.order-rejected.v1`: every participant undoes what it did for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order_id: Uuid,
    pub reason: RejectionReason,
}

/// `order.order-cancel-requested.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelRequested {
    pub order_id: Uuid,
}

/// `order.order-cancelled.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
}

message_types! {
    OrderCreated => "order.order-created.v1",
    OrderApproved => "order.order-approved.v1",
    OrderRejected => "order.order-rejected.v1",
    OrderCancelRequested => "order.order-cancel-requested.v1",
    OrderCancelled => "order.order-cancelled.v1",
}

/// `POST /api/orders` (the gateway's public body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateOrder {
    pub customer_id: Uuid,
    pub items: Vec<Quantity>,
}

/// `POST /orders` on the order service: the gateway has priced the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
}

/// The 202 answer to an order or a cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub status: OrderStatus,
}

/// `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<RejectionReason>,
    pub items: Vec<OrderLine>,
    #[schema(value_type = i64)]
    pub total: Money,
    /// When the order was placed and when it last changed status (RFC 3339).
    pub created_at: String,
    pub updated_at: String,
}
