//! The inventory service: stock per sku and reservations per order.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use uuid::Uuid;

use crate::{Money, Quantity, RejectionReason, message_types};

pub const SERVICE: &str = "inventory";

/// The largest quantity of one sku: what it can be set to, and the most
/// one order may reserve of it. Keeps `available + reserved` (and every sum
/// over them) far from `i64` overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;

/// The schema of a quantity of one sku from `min` to [`MAX_QUANTITY`].
pub(crate) fn quantity_schema(min: i64) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(MAX_QUANTITY))
        .build()
}

fn available_schema() -> Object {
    quantity_schema(0)
}

/// Command: reserve every item of an order, all or nothing. Idempotent per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub items: Vec<Quantity>,
    /// The order's total, carried forward so the next step can charge it.
    pub total: Money,
}

/// Command: release an order's reservation (a compensation). Idempotent; a
/// release that arrives before the reservation makes a later reservation fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub order_id: Uuid,
}

/// Outcome: the order's items are reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub total: Money,
}

/// Outcome: nothing was reserved (`OUT_OF_STOCK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReservationFailed {
    pub order_id: Uuid,
    pub reason: RejectionReason,
    /// The first sku that was short, if any.
    pub sku: Option<String>,
}

/// Outcome: the order's reservation is released (or was never made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub order_id: Uuid,
}

/// Event: a sku's available stock was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdjusted {
    pub sku: String,
    pub available: i64,
}

message_types! {
    ReserveStock => "inventory.reserve-stock.v1",
    ReleaseStock => "inventory.release-stock.v1",
    StockReserved => "inventory.stock-reserved.v1",
    StockReservationFailed => "inventory.stock-reservation-failed.v1",
    StockReleased => "inventory.stock-released.v1",
    StockAdjusted => "inventory.stock-adjusted.v1",
}

/// `PUT /inventory/{sku}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetStock {
    #[schema(schema_with = available_schema)]
    pub available: i64,
}

/// `GET /inventory/{sku}`: `available + reserved` is the stock the shop holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockLevel {
    #[schema(schema_with = crate::catalog::sku_schema)]
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
}

/// State of an order's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Reserved,
    Released,
    Failed,
}

/// `GET /reservations/{order_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: Uuid,
    pub status: ReservationStatus,
    pub items: Vec<Quantity>,
}
