//! The order-history service: a materialized view of each customer's
//! orders, built from the other services' events. It publishes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::OrderStatus;
use crate::payment::PaymentStatus;
use crate::shipping::ShipmentStatus;
use crate::{Money, RejectionReason};

pub const SERVICE: &str = "order-history";

/// The longest a read may wait for an order to show in the view (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 10_000;

/// How long a read with `order` and no `wait_ms` waits for it.
pub const DEFAULT_WAIT_MS: u64 = 2_000;

/// The query parameters of `GET /customers/{id}/orders` besides paging
/// (`limit`, `after`, read by `polis_runtime::Page`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewQuery {
    /// `status`: only orders in this status.
    pub status: Option<OrderStatus>,
    /// `order` (and `wait_ms`, [`DEFAULT_WAIT_MS`] when absent): wait up to
    /// this many milliseconds until the view shows this order.
    pub wait: Option<(Uuid, u64)>,
}

/// The parameters paging reads; [`ViewQuery::parse`] leaves them to it.
pub const PAGE_PARAMETERS: [&str; 2] = ["limit", "after"];

/// Every parameter `GET /customers/{id}/orders` reads.
pub const PARAMETERS: [&str; 5] = ["limit", "after", "status", "order", "wait_ms"];

/// What a bad parameter is: an unknown one (a 400) or a bad value (a 422),
/// with the parameter and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    Unknown(String),
    Invalid(&'static str, String),
}

impl ViewQuery {
    /// Reads `status`, `order` and `wait_ms` from a query string's
    /// `name=value` pairs; returns them and the paging pairs, in order.
    pub fn parse(query: Option<&str>) -> Result<(Self, Vec<&str>), QueryError> {
        let mut paging = Vec::new();
        let (mut status, mut order, mut wait_ms) = (None, None, None);
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                name if PAGE_PARAMETERS.contains(&name) => paging.push(pair),
                "status" => {
                    let parsed = serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| {
                        QueryError::Invalid(
                            "status",
                            "must be one of PENDING, APPROVED, REJECTED, CANCEL_PENDING, CANCELLED".into(),
                        )
                    })?;
                    status = Some(parsed);
                }
                "order" => {
                    // The hyphenated form only (36 characters), as every id in a request.
                    let id = (value.len() == 36).then(|| Uuid::try_parse(value).ok()).flatten().ok_or_else(|| {
                        QueryError::Invalid(
                            "order",
                            "must be a UUID in its hyphenated form, 8-4-4-4-12 hex digits".into(),
                        )
                    })?;
                    order = Some(id);
                }
                "wait_ms" => {
                    let ms = value.parse::<u64>().ok().filter(|ms| *ms <= MAX_WAIT_MS).ok_or_else(|| {
                        QueryError::Invalid("wait_ms", format!("must be a whole number from 0 to {MAX_WAIT_MS}"))
                    })?;
                    wait_ms = Some(ms);
                }
                other => return Err(QueryError::Unknown(other.to_owned())),
            }
        }
        // `order` waits `wait_ms`, or DEFAULT_WAIT_MS; `wait_ms` bounds the wait for `order` only.
        let wait = order.map(|order| (order, wait_ms.unwrap_or(DEFAULT_WAIT_MS)));
        Ok((Self { status, wait }, paging))
    }
}

/// One line of an order in the view: the price at order time, the
/// product's current name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryItem {
    pub sku: String,
    /// The product's name as the catalog now has it (`null` until the view
    /// has seen the product).
    pub product_name: Option<String>,
    pub quantity: i64,
    #[schema(value_type = i64)]
    pub unit_price: Money,
}

/// One order as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryOrder {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<RejectionReason>,
    pub items: Vec<HistoryItem>,
    #[schema(value_type = i64)]
    pub total: Money,
    /// The customer's name and email as the customer service now has them
    /// (`null` until the view has seen the customer).
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    /// The payment's and shipment's status (`null` while there is none).
    pub payment_status: Option<PaymentStatus>,
    pub shipment_status: Option<ShipmentStatus>,
    /// When the order was placed and when the view last changed it (RFC 3339).
    pub placed_at: String,
    pub updated_at: String,
}

/// How fresh a view's answer is: what it had applied when it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Freshness {
    /// The view's checkpoint: the last position of the service's log applied.
    pub position: u64,
    /// When the view last applied events (RFC 3339), if ever.
    pub applied_at: Option<String>,
    /// Per source service, the commit time (RFC 3339) of its last event
    /// the view has applied.
    pub sources: BTreeMap<String, String>,
}

/// `GET /customers/{id}/orders`: a page of the customer's orders, newest
/// last (by id), and how fresh the view is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerOrders {
    pub orders: Vec<HistoryOrder>,
    pub freshness: Freshness,
}
