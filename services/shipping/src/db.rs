//! Shipments and the address replica: every statement on the service's
//! tables, written once in the SQL that SQLite and PostgreSQL share. Which
//! addresses are accepted and delivered to is `rules`'s; how a shipment is
//! recorded is here:
//!
//! - **Idempotent per order.** A repeated schedule finds the order's row and
//!   answers its recorded outcome; the row is written with `INSERT ... ON
//!   CONFLICT DO NOTHING`, so a concurrent duplicate on PostgreSQL waits for
//!   the first to commit and then answers what it recorded.
//! - **Blocked countries.** An address in one of the configured countries
//!   (`rules::is_blocked`) gets a FAILED shipment with reason
//!   `UNDELIVERABLE` (the address is kept, to show why).
//! - **Compensation before action.** A cancellation for an order with no
//!   shipment stores a CANCELLED tombstone; a schedule that arrives later
//!   fails with `TIMEOUT` (the order was already rejected meanwhile).
//! - **The address replica is a projection** (`customer_addresses`, a view;
//!   [`crate::replica`]): read here, written by the projection alone.

use contracts::shipping::{
    CustomerAddress, Shipment, ShipmentCancelled, ShipmentFailed, ShipmentScheduled, ShipmentStatus,
};
use contracts::{Address, RejectionReason};
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use uuid::Uuid;

use crate::error::ShippingError;
use crate::rules;

/// What a schedule request came to (now or, for a repeat, the first time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleOutcome {
    Scheduled(ShipmentScheduled),
    Failed(ShipmentFailed),
}

/// Schedules an order's shipment to its customer's replicated address (see
/// the module docs). A customer not in the replica yet is
/// [`ShippingError::UnknownCustomer`], which the consumer retries.
pub async fn schedule<Tx: Sql>(
    tx: &mut Tx,
    order_id: Uuid,
    customer_id: Uuid,
    blocked_countries: &[String],
) -> Result<ScheduleOutcome, ShippingError> {
    // The recorded outcome (or tombstone) first: it needs no address.
    if let Some(row) = tx.fetch_optional(&format!("{SELECT_SHIPMENT} WHERE order_id = $1"), args![order_id]).await? {
        return recorded_outcome(&row);
    }
    let Some(row) = tx
        .fetch_optional(
            "SELECT line1, city, postal_code, country FROM customer_addresses WHERE customer_id = $1",
            args![customer_id],
        )
        .await?
    else {
        return Err(ShippingError::UnknownCustomer(customer_id));
    };
    let address = Address {
        line1: row.text("line1")?,
        city: row.text("city")?,
        postal_code: row.text("postal_code")?,
        country: row.text("country")?,
    };
    let blocked = rules::is_blocked(blocked_countries, &address.country);
    let (status, reason) = if blocked { ("FAILED", Some(RejectionReason::Undeliverable)) } else { ("SCHEDULED", None) };
    let shipment_id = Uuid::now_v7();
    let inserted = tx
        .execute(
            "INSERT INTO shipments
                 (order_id, id, customer_id, status, line1, city, postal_code, country, reason, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (order_id) DO NOTHING",
            args![
                order_id,
                shipment_id,
                customer_id,
                status,
                &address.line1,
                &address.city,
                &address.postal_code,
                &address.country,
                reason.map(RejectionReason::as_str),
                now_micros(),
            ],
        )
        .await?;
    if inserted == 0 {
        // Another request for the order committed since our first look
        // (PostgreSQL; the insert waited for it): its outcome stands.
        let row = tx.fetch_one(&format!("{SELECT_SHIPMENT} WHERE order_id = $1"), args![order_id]).await?;
        return recorded_outcome(&row);
    }
    Ok(match reason {
        None => ScheduleOutcome::Scheduled(ShipmentScheduled { order_id, shipment_id }),
        Some(reason) => ScheduleOutcome::Failed(ShipmentFailed { order_id, reason }),
    })
}

/// Cancels an order's shipment: a SCHEDULED one becomes CANCELLED; a
/// CANCELLED or FAILED one stays as it is; with none, a CANCELLED tombstone is
/// stored. The outcome is always `ShipmentCancelled`.
pub async fn cancel<Tx: Sql>(tx: &mut Tx, order_id: Uuid) -> Result<ShipmentCancelled, ShippingError> {
    let now = now_micros();
    if cancel_scheduled(tx, order_id, now).await? {
        return Ok(ShipmentCancelled { order_id });
    }
    let inserted = tx
        .execute(
            "INSERT INTO shipments
                 (order_id, id, customer_id, status, line1, city, postal_code, country, reason, created_at, updated_at)
             VALUES ($1, $2, NULL, 'CANCELLED', NULL, NULL, NULL, NULL, NULL, $3, $3)
             ON CONFLICT (order_id) DO NOTHING",
            args![order_id, Uuid::now_v7(), now],
        )
        .await?;
    if inserted == 0 {
        // A shipment exists after all: on PostgreSQL one can commit between our
        // first look and the insert (which waited for it). Look again; rows
        // never disappear, so a second look is enough.
        cancel_scheduled(tx, order_id, now).await?;
    }
    Ok(ShipmentCancelled { order_id })
}

async fn cancel_scheduled<Tx: Sql>(tx: &mut Tx, order_id: Uuid, now: i64) -> Result<bool, ShippingError> {
    let changed = tx
        .execute(
            "UPDATE shipments SET status = 'CANCELLED', updated_at = $2 WHERE order_id = $1 AND status = 'SCHEDULED'",
            args![order_id, now],
        )
        .await?;
    Ok(changed > 0)
}

const SELECT_SHIPMENT: &str = "SELECT order_id, id, status, line1, city, postal_code, country, reason FROM shipments";

/// The outcome a repeated schedule request gets, from the recorded row.
fn recorded_outcome(row: &Row) -> Result<ScheduleOutcome, ShippingError> {
    let shipment = shipment_view(row)?;
    let order_id = shipment.order_id;
    Ok(match shipment.status {
        ShipmentStatus::Scheduled => {
            ScheduleOutcome::Scheduled(ShipmentScheduled { order_id, shipment_id: shipment.id })
        }
        ShipmentStatus::Failed => {
            let reason = shipment
                .reason
                .ok_or_else(|| ShippingError::Corrupt(format!("failed shipment of order {order_id} has no reason")))?;
            ScheduleOutcome::Failed(ShipmentFailed { order_id, reason })
        }
        // Cancelled before (a tombstone) or since: the order was rejected
        // meanwhile, and must not ship.
        ShipmentStatus::Cancelled => {
            ScheduleOutcome::Failed(ShipmentFailed { order_id, reason: RejectionReason::Timeout })
        }
    })
}

/// An order's shipment, if there is one.
pub async fn shipment<S>(store: &S, order_id: Uuid) -> Result<Option<Shipment>, ShippingError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store.query_optional(&format!("{SELECT_SHIPMENT} WHERE order_id = $1"), args![order_id]).await?;
    row.as_ref().map(shipment_view).transpose()
}

/// An order's shipment, if there is one, inside a transaction.
pub async fn shipment_in<Tx: Sql>(tx: &mut Tx, order_id: Uuid) -> Result<Option<Shipment>, ShippingError> {
    let row = tx.fetch_optional(&format!("{SELECT_SHIPMENT} WHERE order_id = $1"), args![order_id]).await?;
    row.as_ref().map(shipment_view).transpose()
}

/// A page of the shipments, oldest order first (order ids are UUIDv7).
pub async fn shipments<S>(store: &S, page: Page) -> Result<Vec<Shipment>, ShippingError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("{SELECT_SHIPMENT} WHERE order_id > $1 ORDER BY order_id LIMIT $2");
    let rows = store.query(&sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter().map(shipment_view).collect()
}

/// A customer's replicated address, if the replica has it.
pub async fn address<S>(store: &S, customer_id: Uuid) -> Result<Option<Address>, ShippingError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store
        .query_optional(
            "SELECT line1, city, postal_code, country FROM customer_addresses WHERE customer_id = $1",
            args![customer_id],
        )
        .await?;
    row.as_ref().map(address_of).transpose()
}

/// A page of the address replica, by customer id.
pub async fn addresses<S>(store: &S, page: Page) -> Result<Vec<CustomerAddress>, ShippingError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = "SELECT customer_id, line1, city, postal_code, country FROM customer_addresses \
               WHERE customer_id > $1 ORDER BY customer_id LIMIT $2";
    let rows = store.query(sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter()
        .map(|row| Ok(CustomerAddress { customer_id: row.uuid("customer_id")?, address: address_of(row)? }))
        .collect()
}

fn address_of(row: &Row) -> Result<Address, ShippingError> {
    Ok(Address {
        line1: row.text("line1")?,
        city: row.text("city")?,
        postal_code: row.text("postal_code")?,
        country: row.text("country")?,
    })
}

fn shipment_view(row: &Row) -> Result<Shipment, ShippingError> {
    let status = match row.text("status")?.as_str() {
        "SCHEDULED" => ShipmentStatus::Scheduled,
        "CANCELLED" => ShipmentStatus::Cancelled,
        "FAILED" => ShipmentStatus::Failed,
        other => return Err(ShippingError::Corrupt(format!("unknown shipment status `{other}`"))),
    };
    // A tombstone has no address; a shipment has all four parts or none.
    let address =
        match (row.opt_text("line1")?, row.opt_text("city")?, row.opt_text("postal_code")?, row.opt_text("country")?) {
            (Some(line1), Some(city), Some(postal_code), Some(country)) => {
                Some(Address { line1, city, postal_code, country })
            }
            _ => None,
        };
    let reason = match row.opt_text("reason")? {
        None => None,
        Some(text) => Some(
            parse_reason(&text).ok_or_else(|| ShippingError::Corrupt(format!("unknown rejection reason `{text}`")))?,
        ),
    };
    Ok(Shipment { id: row.uuid("id")?, order_id: row.uuid("order_id")?, status, address, reason })
}

fn parse_reason(text: &str) -> Option<RejectionReason> {
    RejectionReason::ALL.into_iter().find(|r| r.as_str() == text)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
