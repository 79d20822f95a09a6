//! The order service's own tables, every statement on them, written once in
//! the SQL that SQLite and PostgreSQL share:
//!
//! - `orders`: the read model, one row per order, upserted from the
//!   aggregate's state by every command that changes it; it also holds the
//!   row lock every transaction about an order takes first, and the id of a
//!   choreographed order's pending deadline (`deadline_id`);
//! - `order_requests`: the idempotency keys, each with the order it placed
//!   and the request it was first used with.
//!
//! Writes take a transaction (`Tx: Sql`); the HTTP API's reads run outside
//! one, on the store.

use chrono::{DateTime, Utc};
use contracts::RejectionReason;
use polis_core::{NewEvent, StoreError};
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Dialect, Row, Sql, SqlStore};
use uuid::Uuid;

use crate::aggregate::Order;

/// Upserts the order's row from its new state.
pub(crate) async fn write_read_model<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    order: &Order,
    version: u64,
    appended: &[NewEvent],
) -> Result<(), StoreError> {
    let (Some(id), Some(customer_id), Some(status)) = (order.id, order.customer_id, order.status) else {
        return Err(StoreError::InvalidRequest("an order without identity cannot be stored".into()));
    };
    let at = appended.last().map_or_else(Utc::now, |e| e.time).timestamp_micros();
    let lines = serde_json::to_string(&order.lines).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
    tx.execute(
        "INSERT INTO orders (order_id, customer_id, status, reason, lines, total, version, created_at_us, updated_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, reason = excluded.reason, \
         version = excluded.version, updated_at_us = excluded.updated_at_us",
        args![
            id,
            customer_id,
            status.as_str(),
            order.reason.map(RejectionReason::as_str),
            lines,
            order.total,
            i64::try_from(version).unwrap_or(i64::MAX),
            at
        ],
    )
    .await?;
    Ok(())
}

/// Takes the order's read-model row lock before anything else. Every
/// transaction about an existing order starts here, so two of them (a
/// deadline and a reply, handled on different topics at once) queue on
/// one lock instead of taking the stream, saga and outbox-key locks in
/// opposite orders and deadlocking on PostgreSQL. SQLite runs one write
/// transaction at a time, so there is nothing to take.
/// Where a saga instance is loaded, the load takes the lock itself
/// ([`LOCK_ORDER`] given to `Sagas::lock_with`): one round trip fewer.
pub(crate) async fn lock_order<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    dialect: Dialect,
    order_id: Uuid,
) -> Result<(), StoreError> {
    if dialect == Dialect::Postgres {
        tx.execute(LOCK_ORDER, args![order_id]).await?;
    }
    Ok(())
}

/// The order's lock, the order id as `$1` (PostgreSQL).
pub(crate) const LOCK_ORDER: &str = "UPDATE orders SET version = version WHERE order_id = $1";

/// The id of the order's pending choreography deadline, if it has one.
pub(crate) async fn deadline_id<Tx: Sql + ?Sized>(tx: &mut Tx, order_id: Uuid) -> Result<Option<String>, StoreError> {
    let row = tx.fetch_optional("SELECT deadline_id FROM orders WHERE order_id = $1", args![order_id]).await?;
    Ok(row.map(|r| r.opt_text("deadline_id")).transpose()?.flatten())
}

/// Records the order's pending choreography deadline.
pub(crate) async fn set_deadline_id<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    order_id: Uuid,
    deadline_id: Uuid,
) -> Result<(), StoreError> {
    tx.execute("UPDATE orders SET deadline_id = $1 WHERE order_id = $2", args![deadline_id, order_id]).await?;
    Ok(())
}

/// Forgets the order's choreography deadline (it fired, or is unscheduled).
pub(crate) async fn clear_deadline_id<Tx: Sql + ?Sized>(tx: &mut Tx, order_id: Uuid) -> Result<(), StoreError> {
    tx.execute("UPDATE orders SET deadline_id = NULL WHERE order_id = $1", args![order_id]).await?;
    Ok(())
}

/// Records the customer's idempotency key for the order it places; `false`
/// if the customer used the key before. A concurrent request's uncommitted
/// record makes this wait until its transaction ends.
pub(crate) async fn record_request<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    customer_id: Uuid,
    key: &str,
    order_id: Uuid,
    request: &str,
) -> Result<bool, StoreError> {
    let recorded = tx
        .execute(
            "INSERT INTO order_requests \
                 (customer_id, idempotency_key, order_id, request, created_at_us) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, idempotency_key) DO NOTHING",
            args![customer_id, key, order_id, request, Utc::now().timestamp_micros()],
        )
        .await?;
    Ok(recorded != 0)
}

/// The order an idempotency key placed and the request it was first used
/// with ([`crate::rules::canonical_request`]); `None` if the key expired
/// and was deleted meanwhile.
pub(crate) async fn recorded_request<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    customer_id: Uuid,
    key: &str,
) -> Result<Option<(Uuid, String)>, StoreError> {
    let row = tx
        .fetch_optional(
            "SELECT order_id, request FROM order_requests \
                 WHERE customer_id = $1 AND idempotency_key = $2",
            args![customer_id, key],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let request = row.text("request")?;
    Ok(Some((row.uuid("order_id")?, request)))
}

/// Keys deleted per statement by [`expire_requests`].
const EXPIRE_CHUNK: i64 = 1000;

/// Deletes the idempotency keys recorded before `before`, oldest first, a
/// chunk per transaction (each holds the writer only briefly); how many.
pub(crate) async fn expire_requests<S: SqlStore>(store: &S, before: DateTime<Utc>) -> Result<u64, StoreError>
where
    S::Tx: Sql,
{
    let mut expired = 0;
    loop {
        let deleted = store
            .transaction(async move |tx: &mut S::Tx| {
                tx.execute(
                    "DELETE FROM order_requests WHERE (customer_id, idempotency_key) IN \
                     (SELECT customer_id, idempotency_key FROM order_requests \
                      WHERE created_at_us < $1 ORDER BY created_at_us LIMIT $2)",
                    args![before.timestamp_micros(), EXPIRE_CHUNK],
                )
                .await
            })
            .await?;
        expired += deleted;
        if deleted < EXPIRE_CHUNK as u64 {
            return Ok(expired);
        }
    }
}

/// The columns of the read model the HTTP API answers with (see `http::view`).
const COLUMNS: &str = "order_id, customer_id, status, reason, lines, total, created_at_us, updated_at_us";

/// The order's row, with [`COLUMNS`].
pub(crate) async fn order<S: SqlStore>(store: &S, order_id: Uuid) -> Result<Option<Row>, StoreError>
where
    S::Tx: Sql,
{
    store.query_optional(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"), args![order_id]).await
}

/// The order's status as the read model holds it, if it has a row.
pub(crate) async fn status<S: SqlStore>(store: &S, order_id: Uuid) -> Result<Option<String>, StoreError>
where
    S::Tx: Sql,
{
    let row = store.query_optional("SELECT status FROM orders WHERE order_id = $1", args![order_id]).await?;
    row.map(|r| r.text("status")).transpose()
}

/// A page of every order's row, in id order, with [`COLUMNS`].
pub(crate) async fn all<S: SqlStore>(store: &S, page: &Page) -> Result<Vec<Row>, StoreError>
where
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_id > $1 ORDER BY order_id LIMIT $2");
    store.query(&sql, args![page.after_key(), page.sql_limit()]).await
}

/// The `limit` newest orders' rows, newest first, with [`COLUMNS`].
pub(crate) async fn newest<S: SqlStore>(store: &S, limit: usize) -> Result<Vec<Row>, StoreError>
where
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS} FROM orders ORDER BY order_id DESC LIMIT $1");
    store.query(&sql, args![i64::try_from(limit).unwrap_or(i64::MAX)]).await
}

/// A page of the customer's orders' rows, in id order, with [`COLUMNS`].
pub(crate) async fn of_customer<S: SqlStore>(store: &S, customer_id: Uuid, page: &Page) -> Result<Vec<Row>, StoreError>
where
    S::Tx: Sql,
{
    let sql =
        format!("SELECT {COLUMNS} FROM orders WHERE customer_id = $1 AND order_id > $2 ORDER BY order_id LIMIT $3");
    store.query(&sql, args![customer_id, page.after_key(), page.sql_limit()]).await
}
