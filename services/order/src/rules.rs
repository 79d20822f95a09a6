//! The order service's request rules that are not the aggregate's.
//!
//! What an order may hold (at least one line, valid skus and quantities, a
//! total that fits) is the Order aggregate's to decide
//! ([`crate::aggregate`]), and an `Idempotency-Key` header's shape is
//! [`contracts::order::idempotency_key`]'s. What is left is what an
//! idempotency key is bound to.

use contracts::OrderLine;
use uuid::Uuid;

/// The part of a placing request an idempotency key is bound to: who orders
/// which quantities. Prices are the gateway's lookup, not the client's
/// request, and may change between a request and its retry.
pub(crate) fn canonical_request(customer_id: Uuid, lines: &[OrderLine]) -> String {
    let lines: Vec<_> = lines.iter().map(|l| serde_json::json!([l.sku, l.quantity])).collect();
    serde_json::json!({ "customer_id": customer_id, "lines": lines }).to_string()
}
