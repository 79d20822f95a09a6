//! Stock and reservations: every statement on the service's tables.
//!
//! The reservation rules live here:
//!
//! - **All or nothing, never oversold.** Each item is taken with a guarded
//!   update (`... WHERE sku = $s AND available >= $q`) whose row count says
//!   whether the stock was there; PostgreSQL re-checks the condition after
//!   waiting for a concurrent writer's row lock, and SQLite has one writer, so
//!   two orders can never both take the last unit. If an item is short (or
//!   its sku unknown), the items already taken are put back in the same
//!   transaction and the reservation is recorded as FAILED.
//! - **Skus in sorted order.** Concurrent reservations lock stock rows in the
//!   same order, so on PostgreSQL they queue instead of deadlocking.
//! - **Idempotent per order.** The reservation row is claimed first with
//!   `INSERT ... ON CONFLICT DO NOTHING`: a repeated request finds the row and
//!   answers its recorded outcome without touching stock (on PostgreSQL a
//!   concurrent duplicate waits for the first to commit, then finds it).
//! - **Compensation before action.** A release for an order with no
//!   reservation stores a RELEASED tombstone; a reservation that arrives later
//!   fails with `TIMEOUT` (the order was already rejected meanwhile).

use std::collections::BTreeMap;

use contracts::inventory::{
    Reservation, ReservationStatus, StockLevel, StockReleased, StockReservationFailed, StockReserved,
};
use contracts::{Money, Quantity, RejectionReason};
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use uuid::Uuid;

use crate::error::InventoryError;

pub use contracts::inventory::MAX_QUANTITY;

/// A request to reserve an order's items, from a `ReserveStock` command or an
/// `OrderCreated` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub items: Vec<Quantity>,
    pub total: Money,
}

/// What a reservation request came to (now or, for a repeat, the first time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(StockReserved),
    Failed(StockReservationFailed),
}

/// Checks a sku's form with the catalog's rule ([`contracts::catalog::is_sku`],
/// the one rule every service checks skus with): stock is kept only for
/// what can be a product, and a reservation naming anything else is a
/// malformed message. The message says what a sku must be.
pub fn check_sku(sku: &str) -> Result<(), &'static str> {
    if contracts::catalog::is_sku(sku) { Ok(()) } else { Err(contracts::catalog::SKU_FORM) }
}

/// Sets a sku's available quantity (creating the sku if new; its reserved
/// quantity is untouched) and returns its level.
pub async fn set_available<Tx: Sql>(tx: &mut Tx, sku: &str, available: i64) -> Result<StockLevel, InventoryError> {
    check_sku(sku).map_err(|m| InventoryError::invalid("sku", m))?;
    if !(0..=MAX_QUANTITY).contains(&available) {
        return Err(InventoryError::invalid("available", format!("must be between 0 and {MAX_QUANTITY}")));
    }
    let row = tx
        .fetch_one(
            "INSERT INTO stock (sku, available, reserved, updated_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT (sku) DO UPDATE SET available = excluded.available, updated_at = excluded.updated_at
             RETURNING sku, available, reserved",
            args![sku, available, now_micros()],
        )
        .await?;
    stock_level(&row)
}

/// Reserves every item of an order, or nothing (see the module docs).
pub async fn reserve<Tx: Sql>(tx: &mut Tx, request: &ReserveRequest) -> Result<ReserveOutcome, InventoryError> {
    let items = merge_items(&request.items)?;
    let order_id = request.order_id;
    let now = now_micros();
    let claimed = tx
        .execute(
            "INSERT INTO reservations
                 (order_id, customer_id, total, status, items, reason, short_sku, created_at, updated_at)
             VALUES ($1, $2, $3, 'RESERVED', $4, NULL, NULL, $5, $5)
             ON CONFLICT (order_id) DO NOTHING",
            args![order_id, request.customer_id, request.total, serde_json::to_string(&items)?, now],
        )
        .await?;
    if claimed == 0 {
        let row = tx.fetch_one(&format!("{SELECT_RESERVATION} WHERE order_id = $1"), args![order_id]).await?;
        return recorded_outcome(&row);
    }

    let mut taken = 0;
    let mut short = None;
    for item in &items {
        let changed = tx
            .execute(
                "UPDATE stock SET available = available - $1, reserved = reserved + $1, updated_at = $3
                 WHERE sku = $2 AND available >= $1",
                args![item.quantity, &item.sku, now],
            )
            .await?;
        if changed == 0 {
            short = Some(item.sku.clone());
            break;
        }
        taken += 1;
    }
    let Some(short) = short else {
        return Ok(ReserveOutcome::Reserved(StockReserved {
            order_id,
            customer_id: request.customer_id,
            total: request.total,
        }));
    };

    // Put back what this request took: the savepoint-free way to make it all
    // or nothing while still committing the FAILED record (and its outcome).
    for item in &items[..taken] {
        put_back(tx, item, now).await?;
    }
    tx.execute(
        "UPDATE reservations SET status = 'FAILED', reason = $2, short_sku = $3, updated_at = $4 WHERE order_id = $1",
        args![order_id, RejectionReason::OutOfStock.as_str(), &short, now],
    )
    .await?;
    Ok(ReserveOutcome::Failed(StockReservationFailed {
        order_id,
        reason: RejectionReason::OutOfStock,
        sku: Some(short),
    }))
}

/// Releases an order's reservation: gives a RESERVED one's quantities back;
/// leaves a RELEASED or FAILED one as it is; stores a RELEASED tombstone if
/// there is none. The outcome is always `StockReleased`.
pub async fn release<Tx: Sql>(tx: &mut Tx, order_id: Uuid) -> Result<StockReleased, InventoryError> {
    let now = now_micros();
    if give_back(tx, order_id, now).await? {
        return Ok(StockReleased { order_id });
    }
    let inserted = tx
        .execute(
            "INSERT INTO reservations
                 (order_id, customer_id, total, status, items, reason, short_sku, created_at, updated_at)
             VALUES ($1, NULL, NULL, 'RELEASED', '[]', NULL, NULL, $2, $2)
             ON CONFLICT (order_id) DO NOTHING",
            args![order_id, now],
        )
        .await?;
    if inserted == 0 {
        // A reservation exists after all: on PostgreSQL one can commit between
        // our first look and the insert (which waited for it). Look again;
        // rows never disappear, so a second look is enough.
        give_back(tx, order_id, now).await?;
    }
    Ok(StockReleased { order_id })
}

/// Marks a RESERVED reservation RELEASED and returns its quantities to
/// stock; `false` if the order has no RESERVED reservation.
async fn give_back<Tx: Sql>(tx: &mut Tx, order_id: Uuid, now: i64) -> Result<bool, InventoryError> {
    let released = tx
        .fetch_optional(
            "UPDATE reservations SET status = 'RELEASED', updated_at = $2
             WHERE order_id = $1 AND status = 'RESERVED'
             RETURNING items",
            args![order_id, now],
        )
        .await?;
    let Some(row) = released else { return Ok(false) };
    let items: Vec<Quantity> = row.json("items")?;
    // Stored sorted by sku, so releases lock rows in the same order as reservations.
    for item in &items {
        put_back(tx, item, now).await?;
    }
    Ok(true)
}

async fn put_back<Tx: Sql>(tx: &mut Tx, item: &Quantity, now: i64) -> Result<(), InventoryError> {
    let changed = tx
        .execute(
            "UPDATE stock SET available = available + $1, reserved = reserved - $1, updated_at = $3
             WHERE sku = $2 AND reserved >= $1",
            args![item.quantity, &item.sku, now],
        )
        .await?;
    if changed == 1 {
        Ok(())
    } else {
        Err(InventoryError::Corrupt(format!("sku `{}` holds less reserved stock than is being returned", item.sku)))
    }
}

/// One item per sku (quantities of repeated skus added up), sorted by sku.
fn merge_items(items: &[Quantity]) -> Result<Vec<Quantity>, InventoryError> {
    if items.is_empty() {
        return Err(InventoryError::invalid("items", "must not be empty"));
    }
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        check_sku(&item.sku).map_err(|m| InventoryError::invalid(format!("items[{i}].sku"), m))?;
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(InventoryError::invalid(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        let total = merged.entry(&item.sku).or_default();
        *total = total
            .checked_add(item.quantity)
            .filter(|q| *q <= MAX_QUANTITY)
            .ok_or_else(|| InventoryError::invalid(format!("items[{i}].quantity"), "adds up to too much of one sku"))?;
    }
    Ok(merged.into_iter().map(|(sku, quantity)| Quantity { sku: sku.to_owned(), quantity }).collect())
}

const SELECT_RESERVATION: &str =
    "SELECT order_id, customer_id, total, status, items, reason, short_sku FROM reservations";

/// The outcome a repeated reservation request gets, from the recorded row.
fn recorded_outcome(row: &Row) -> Result<ReserveOutcome, InventoryError> {
    let order_id = row.uuid("order_id")?;
    match status(row)? {
        ReservationStatus::Reserved => {
            let customer_id = row
                .opt_text("customer_id")?
                .and_then(|id| Uuid::parse_str(&id).ok())
                .ok_or_else(|| InventoryError::Corrupt(format!("reservation {order_id} has no customer")))?;
            let total = row
                .opt_int("total")?
                .ok_or_else(|| InventoryError::Corrupt(format!("reservation {order_id} has no total")))?;
            Ok(ReserveOutcome::Reserved(StockReserved { order_id, customer_id, total }))
        }
        ReservationStatus::Failed => {
            let reason = row
                .opt_text("reason")?
                .and_then(|r| parse_reason(&r))
                .ok_or_else(|| InventoryError::Corrupt(format!("failed reservation {order_id} has no reason")))?;
            Ok(ReserveOutcome::Failed(StockReservationFailed { order_id, reason, sku: row.opt_text("short_sku")? }))
        }
        // Released before (a tombstone) or since: the order was rejected
        // meanwhile, and its stock must not be taken (again).
        ReservationStatus::Released => {
            Ok(ReserveOutcome::Failed(StockReservationFailed { order_id, reason: RejectionReason::Timeout, sku: None }))
        }
    }
}

/// A sku's level, if the sku exists.
pub async fn stock_level_of<S>(store: &S, sku: &str) -> Result<Option<StockLevel>, InventoryError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store.query_optional("SELECT sku, available, reserved FROM stock WHERE sku = $1", args![sku]).await?;
    row.as_ref().map(stock_level).transpose()
}

/// A page of the skus' levels, by sku byte for byte (SQLite's order, and the
/// `"C"` collation PostgreSQL's migrations give the column).
pub async fn stock_levels<S>(store: &S, page: &Page<String>) -> Result<Vec<StockLevel>, InventoryError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let rows = store
        .query(
            "SELECT sku, available, reserved FROM stock WHERE sku > $1 ORDER BY sku LIMIT $2",
            args![page.after_key(), page.sql_limit()],
        )
        .await?;
    rows.iter().map(stock_level).collect()
}

/// An order's reservation, if there is one.
pub async fn reservation<S>(store: &S, order_id: Uuid) -> Result<Option<Reservation>, InventoryError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let row = store.query_optional(&format!("{SELECT_RESERVATION} WHERE order_id = $1"), args![order_id]).await?;
    row.as_ref().map(reservation_view).transpose()
}

/// A page of the reservations, oldest order first (order ids are UUIDv7).
pub async fn reservations<S>(store: &S, page: Page) -> Result<Vec<Reservation>, InventoryError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("{SELECT_RESERVATION} WHERE order_id > $1 ORDER BY order_id LIMIT $2");
    let rows = store.query(&sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter().map(reservation_view).collect()
}

fn stock_level(row: &Row) -> Result<StockLevel, InventoryError> {
    Ok(StockLevel { sku: row.text("sku")?, available: row.int("available")?, reserved: row.int("reserved")? })
}

fn reservation_view(row: &Row) -> Result<Reservation, InventoryError> {
    Ok(Reservation { order_id: row.uuid("order_id")?, status: status(row)?, items: row.json("items")? })
}

fn status(row: &Row) -> Result<ReservationStatus, InventoryError> {
    match row.text("status")?.as_str() {
        "RESERVED" => Ok(ReservationStatus::Reserved),
        "RELEASED" => Ok(ReservationStatus::Released),
        "FAILED" => Ok(ReservationStatus::Failed),
        other => Err(InventoryError::Corrupt(format!("unknown reservation status `{other}`"))),
    }
}

fn parse_reason(text: &str) -> Option<RejectionReason> {
    RejectionReason::ALL.into_iter().find(|r| r.as_str() == text)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64) -> Quantity {
        Quantity { sku: sku.into(), quantity }
    }

    #[test]
    fn items_are_merged_per_sku_and_sorted() {
        let merged = merge_items(&[item("b", 1), item("a", 2), item("b", 3)]).unwrap();
        assert_eq!(merged, [item("a", 2), item("b", 4)]);
    }

    #[test]
    fn bad_items_name_the_field() {
        let field = |items: &[Quantity]| match merge_items(items) {
            Err(InventoryError::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(field(&[]), "items");
        assert_eq!(field(&[item("a", 1), item("b", 0)]), "items[1].quantity");
        assert_eq!(field(&[item("a", -5)]), "items[0].quantity");
        assert_eq!(field(&[item("", 1)]), "items[0].sku");
        assert_eq!(field(&[item("a\0", 1)]), "items[0].sku");
        assert_eq!(field(&[item("a", MAX_QUANTITY), item("a", 1)]), "items[1].quantity");
    }

    #[test]
    fn skus_are_checked() {
        assert!(check_sku("SKU-0001").is_ok());
        assert!(check_sku(&"x".repeat(64)).is_ok());
        for bad in ["", " a", "a b", "a/b", &"x".repeat(65), "a\nb"] {
            assert_eq!(check_sku(bad), Err(contracts::catalog::SKU_FORM), "{bad:?}");
        }
    }

    #[test]
    fn reasons_round_trip_through_their_wire_names() {
        for reason in RejectionReason::ALL {
            assert_eq!(parse_reason(reason.as_str()), Some(reason));
        }
        assert_eq!(parse_reason("NOPE"), None);
    }
}
