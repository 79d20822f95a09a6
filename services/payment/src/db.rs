//! The SQL on the service's own tables (`payments`, `payment_credit_locks`),
//! and the reads of `payment_customers`, the replica of each customer's
//! email and credit limit (a projection's view, [`crate::replica`]), written
//! once for SQLite and PostgreSQL.
//!
//! Every state change is a compare-and-set (`UPDATE ... WHERE status = ...`,
//! `INSERT ... ON CONFLICT DO NOTHING`) whose row count says whether it won:
//! on PostgreSQL two handlers of one order can run at once (different topics
//! are handled concurrently, and a service may run in several processes), so
//! "read, decide, write" alone could apply two transitions from one state.
//! A caller that loses reads the row again on its next attempt.

use chrono::Utc;
use contracts::payment::{Credit, Payment as PaymentView, PaymentStatus};
use contracts::{Money, RejectionReason};
use polis_core::StoreError;
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use uuid::Uuid;

/// A customer as replicated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CustomerCredit {
    pub(crate) email: String,
    pub(crate) credit_limit: Money,
    /// The sum of its open payments: what it may still be charged.
    pub(crate) exposure: Money,
}

/// A payment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) order_id: Uuid,
    /// `None` only for a tombstone (a void that came before any authorization).
    pub(crate) customer_id: Option<Uuid>,
    pub(crate) amount: Money,
    pub(crate) status: PaymentStatus,
    pub(crate) reason: Option<RejectionReason>,
}

impl Stored {
    pub(crate) fn view(&self) -> PaymentView {
        PaymentView {
            order_id: self.order_id,
            customer_id: self.customer_id,
            amount: self.amount,
            status: self.status,
            reason: self.reason,
        }
    }
}

pub(crate) fn status_str(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Authorized => "AUTHORIZED",
        PaymentStatus::Captured => "CAPTURED",
        PaymentStatus::Voided => "VOIDED",
        PaymentStatus::Refunded => "REFUNDED",
        PaymentStatus::Failed => "FAILED",
    }
}

fn parse_status(text: &str) -> Result<PaymentStatus, StoreError> {
    [
        PaymentStatus::Authorized,
        PaymentStatus::Captured,
        PaymentStatus::Voided,
        PaymentStatus::Refunded,
        PaymentStatus::Failed,
    ]
    .into_iter()
    .find(|s| status_str(*s) == text)
    .ok_or_else(|| StoreError::backend(format!("unknown payment status `{text}` in the payments table")))
}

fn parse_reason(text: &str) -> Result<RejectionReason, StoreError> {
    RejectionReason::ALL
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| StoreError::backend(format!("unknown rejection reason `{text}` in the payments table")))
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

const PAYMENT_COLUMNS: &str = "order_id, customer_id, amount, status, reason";

/// A payment row's customer (none for a tombstone).
fn customer_of(row: &Row) -> Result<Option<Uuid>, StoreError> {
    row.opt_text("customer_id")?
        .map(|text| {
            Uuid::parse_str(&text).map_err(|e| StoreError::backend(format!("column `customer_id` is not a uuid: {e}")))
        })
        .transpose()
}

fn stored(row: &Row) -> Result<Stored, StoreError> {
    let customer_id = customer_of(row)?;
    Ok(Stored {
        order_id: row.uuid("order_id")?,
        customer_id,
        amount: row.int("amount")?,
        status: parse_status(&row.text("status")?)?,
        reason: row.opt_text("reason")?.as_deref().map(parse_reason).transpose()?,
    })
}

/// The sum of a customer's open payments: what it may still be charged.
/// `CAST` because PostgreSQL sums `BIGINT`s into `NUMERIC`.
const EXPOSURE: &str = "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS exposure FROM payments \
     WHERE customer_id = $1 AND status IN ('AUTHORIZED', 'CAPTURED')";

// ---- inside a transaction ---------------------------------------------------

/// Takes the customer's credit lock until the end of the transaction and
/// reads the replica, and the exposure kept on the lock's row; `None` if
/// the customer is not replicated (yet).
///
/// The lock is a row of `payment_credit_locks`, the service's own table (the
/// replica is a projection's view, written by the projection alone): the
/// upsert is what serializes two authorizations of one customer on
/// PostgreSQL, the second waiting until the first commits and then seeing
/// its payment in the exposure (READ COMMITTED reads anew per statement).
/// On SQLite the single writer serializes them anyway.
pub(crate) async fn lock_customer<Tx: Sql>(tx: &mut Tx, id: Uuid) -> Result<Option<CustomerCredit>, StoreError> {
    let exposure = tx
        .fetch_one(
            "INSERT INTO payment_credit_locks (customer_id) VALUES ($1) \
             ON CONFLICT (customer_id) DO UPDATE SET customer_id = excluded.customer_id RETURNING exposure",
            args![id],
        )
        .await?
        .int("exposure")?;
    let row = tx.fetch_optional("SELECT email, credit_limit FROM payment_customers WHERE id = $1", args![id]).await?;
    row.map(|row| Ok(CustomerCredit { email: row.text("email")?, credit_limit: row.int("credit_limit")?, exposure }))
        .transpose()
}

/// Whether a payment in `status` counts in its customer's exposure.
fn is_open(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Authorized | PaymentStatus::Captured)
}

/// Adds `delta` to the customer's exposure. Its lock row exists: the
/// authorization that opened the payment took the lock.
async fn add_exposure<Tx: Sql>(tx: &mut Tx, customer_id: Uuid, delta: Money) -> Result<(), StoreError> {
    let changed = tx
        .execute(
            "UPDATE payment_credit_locks SET exposure = exposure + $2 WHERE customer_id = $1",
            args![customer_id, delta],
        )
        .await?;
    if changed != 1 {
        return Err(StoreError::backend(format!("no credit lock row for customer {customer_id}")));
    }
    Ok(())
}

pub(crate) async fn load<Tx: Sql>(tx: &mut Tx, order_id: Uuid) -> Result<Option<Stored>, StoreError> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1");
    tx.fetch_optional(&sql, args![order_id]).await?.as_ref().map(stored).transpose()
}

/// Inserts the order's first payment row; `false` if the order already has
/// one (written by a concurrent handler since this one looked).
pub(crate) async fn insert<Tx: Sql>(tx: &mut Tx, payment: &Stored) -> Result<bool, StoreError> {
    let now = now_us();
    let inserted = tx
        .execute(
            "INSERT INTO payments (order_id, customer_id, amount, status, reason, created_at_us, updated_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (order_id) DO NOTHING",
            args![
                payment.order_id,
                payment.customer_id,
                payment.amount,
                status_str(payment.status),
                payment.reason.map(RejectionReason::as_str),
                now
            ],
        )
        .await?;
    if inserted == 1
        && is_open(payment.status)
        && let Some(customer_id) = payment.customer_id
    {
        add_exposure(tx, customer_id, payment.amount).await?;
    }
    Ok(inserted == 1)
}

/// Moves the order's payment from `from` to `to`, and its customer's
/// exposure with it; returns its amount, or `None` if it was not in `from`
/// (any more).
pub(crate) async fn transition<Tx: Sql>(
    tx: &mut Tx,
    order_id: Uuid,
    from: PaymentStatus,
    to: PaymentStatus,
) -> Result<Option<Money>, StoreError> {
    let row = tx
        .fetch_optional(
            "UPDATE payments SET status = $3, updated_at_us = $4 WHERE order_id = $1 AND status = $2 \
             RETURNING amount, customer_id",
            args![order_id, status_str(from), status_str(to), now_us()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let amount = row.int("amount")?;
    let delta = match (is_open(from), is_open(to)) {
        (true, false) => -amount,
        (false, true) => amount,
        _ => 0,
    };
    if delta != 0
        && let Some(customer_id) = customer_of(&row)?
    {
        add_exposure(tx, customer_id, delta).await?;
    }
    Ok(Some(amount))
}

// ---- reads outside transactions ----------------------------------------------

pub(crate) async fn find<S>(store: &S, order_id: Uuid) -> Result<Option<Stored>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1");
    store.query_optional(&sql, args![order_id]).await?.as_ref().map(stored).transpose()
}

/// A page of the payments, in order id order (oldest order first: the ids
/// are UUIDv7).
pub(crate) async fn page<S>(store: &S, page: Page) -> Result<Vec<Stored>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id > $1 ORDER BY order_id LIMIT $2");
    store.query(&sql, args![page.after_key(), page.sql_limit()]).await?.iter().map(stored).collect()
}

/// A page of the replicated customers' credit, by customer id.
pub(crate) async fn credits<S>(store: &S, page: Page) -> Result<Vec<Credit>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = "SELECT c.id, c.credit_limit, CAST(COALESCE(SUM(p.amount), 0) AS BIGINT) AS exposure \
               FROM payment_customers c LEFT JOIN payments p \
               ON p.customer_id = c.id AND p.status IN ('AUTHORIZED', 'CAPTURED') \
               WHERE c.id > $1 GROUP BY c.id, c.credit_limit ORDER BY c.id LIMIT $2";
    let rows = store.query(sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter()
        .map(|row| {
            Ok(Credit {
                customer_id: row.uuid("id")?,
                credit_limit: row.int("credit_limit")?,
                exposure: row.int("exposure")?,
            })
        })
        .collect()
}

pub(crate) async fn credit<S>(store: &S, customer_id: Uuid) -> Result<Option<Credit>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let Some(customer) =
        store.query_optional("SELECT credit_limit FROM payment_customers WHERE id = $1", args![customer_id]).await?
    else {
        return Ok(None);
    };
    let exposure = store.query_optional(EXPOSURE, args![customer_id]).await?;
    let exposure = exposure.map(|row| row.int("exposure")).transpose()?.unwrap_or(0);
    Ok(Some(Credit { customer_id, credit_limit: customer.int("credit_limit")?, exposure }))
}
