//! The shipping service: shipments per order; addresses in blocked countries
//! are undeliverable.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Address, RejectionReason, message_types};

pub const SERVICE: &str = "shipping";

/// Command: schedule an order's shipment to the customer's address (from
/// the service's replica of customer addresses). Idempotent per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleShipment {
    pub order_id: Uuid,
    pub customer_id: Uuid,
}

/// Command (a compensation or a cancellation): cancel an order's shipment.
/// Idempotent; arriving first, it makes a later scheduling fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelShipment {
    pub order_id: Uuid,
}

/// Outcome: the shipment is scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentScheduled {
    pub order_id: Uuid,
    pub shipment_id: Uuid,
}

/// Outcome: `UNDELIVERABLE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentFailed {
    pub order_id: Uuid,
    pub reason: RejectionReason,
}

/// Outcome: the shipment is cancelled (or there was none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCancelled {
    pub order_id: Uuid,
}

/// An order's shipment as it now is, after any change (and again when an
/// outcome is re-sent), in both saga styles: what read models follow. No
/// participant acts on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentChanged {
    pub shipment: Shipment,
}

message_types! {
    ShipmentChanged => "shipping.shipment-changed.v1",
    ScheduleShipment => "shipping.schedule-shipment.v1",
    CancelShipment => "shipping.cancel-shipment.v1",
    ShipmentScheduled => "shipping.shipment-scheduled.v1",
    ShipmentFailed => "shipping.shipment-failed.v1",
    ShipmentCancelled => "shipping.shipment-cancelled.v1",
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    Scheduled,
    Cancelled,
    Failed,
}

/// One row of the shipping service's replica of customer addresses
/// (`GET /addresses`): the address the customer service last announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerAddress {
    pub customer_id: Uuid,
    pub address: Address,
}

/// `GET /shipments/{order_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Shipment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: ShipmentStatus,
    pub address: Option<Address>,
    pub reason: Option<RejectionReason>,
}
