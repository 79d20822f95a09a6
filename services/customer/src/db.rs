//! The `customers` table: every statement on it, written once in the SQL
//! that SQLite and PostgreSQL share.

use chrono::Utc;
use contracts::Address;
use contracts::customer::Customer;
use polis_core::StoreError;
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore, Value};
use uuid::Uuid;

use crate::Error;
use crate::rules::email_key;

const COLUMNS: &str = "id, name, email, line1, city, postal_code, country, credit_limit";

fn customer(row: &Row) -> Result<Customer, StoreError> {
    Ok(Customer {
        id: row.uuid("id")?,
        name: row.text("name")?,
        email: row.text("email")?,
        address: Address {
            line1: row.text("line1")?,
            city: row.text("city")?,
            postal_code: row.text("postal_code")?,
            country: row.text("country")?,
        },
        credit_limit: row.int("credit_limit")?,
    })
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// The database, not a prior read, decides whether an email is taken:
/// only the unique constraint sees concurrent registrations.
fn email_taken(email: &str) -> impl FnOnce(StoreError) -> Error + '_ {
    move |e| match e {
        StoreError::Unique(_) => Error::EmailTaken(email.to_owned()),
        other => Error::Store(other),
    }
}

/// The parameters of both writes, `$1` to `$10`: every column, the
/// lower-cased email under its unique constraint, and the time of the write.
fn values(customer: &Customer) -> [Value; 10] {
    let a = &customer.address;
    [
        customer.id.into(),
        (&customer.name).into(),
        (&customer.email).into(),
        email_key(&customer.email).into(),
        (&a.line1).into(),
        (&a.city).into(),
        (&a.postal_code).into(),
        (&a.country).into(),
        customer.credit_limit.into(),
        now_micros().into(),
    ]
}

pub(crate) async fn insert(tx: &mut impl Sql, customer: &Customer) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO customers \
         (id, name, email, email_key, line1, city, postal_code, country, credit_limit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        &values(customer),
    )
    .await
    .map_err(email_taken(&customer.email))?;
    Ok(())
}

/// Reads a customer inside a transaction after locking its row.
///
/// The lock is a no-op `UPDATE`: on PostgreSQL it holds the row until the
/// transaction ends, so concurrent partial updates apply one after the other
/// instead of the later one writing back fields it read before the earlier
/// one committed. (`SELECT ... FOR UPDATE` would say the same, but SQLite,
/// whose single writer serializes transactions anyway, rejects it.)
pub(crate) async fn get_for_update(tx: &mut impl Sql, id: Uuid) -> Result<Option<Customer>, StoreError> {
    if tx.execute("UPDATE customers SET updated_at = updated_at WHERE id = $1", args![id]).await? == 0 {
        return Ok(None);
    }
    let row = tx.fetch_one(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1"), args![id]).await?;
    customer(&row).map(Some)
}

/// Writes a customer's new state and counts the change: its new version.
pub(crate) async fn update(tx: &mut impl Sql, customer: &Customer) -> Result<u64, Error> {
    let row = tx
        .fetch_one(
            "UPDATE customers SET name = $2, email = $3, email_key = $4, line1 = $5, city = $6, postal_code = $7, \
             country = $8, credit_limit = $9, updated_at = $10, version = version + 1 WHERE id = $1 RETURNING version",
            &values(customer),
        )
        .await
        .map_err(email_taken(&customer.email))?;
    Ok(u64::try_from(row.int("version")?).unwrap_or(0))
}

pub(crate) async fn get<S: SqlStore>(store: &S, id: Uuid) -> Result<Option<Customer>, StoreError>
where
    S::Tx: Sql,
{
    let row = store.query_optional(&format!("SELECT {COLUMNS} FROM customers WHERE id = $1"), args![id]).await?;
    row.as_ref().map(customer).transpose()
}

/// A page of customers with their versions, in id order: the snapshot a
/// replica bootstraps from. Each page is its own read; what changes after a
/// row is read reaches the replica as an event with a higher version.
pub(crate) async fn snapshot<S: SqlStore>(store: &S, page: &Page) -> Result<Vec<(Customer, u64)>, StoreError>
where
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS}, version FROM customers WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = store.query(&sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter().map(|row| Ok((customer(row)?, u64::try_from(row.int("version")?).unwrap_or(0)))).collect()
}

pub(crate) async fn list<S: SqlStore>(store: &S, page: &Page) -> Result<Vec<Customer>, StoreError>
where
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS} FROM customers WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = store.query(&sql, args![page.after_key(), page.sql_limit()]).await?;
    rows.iter().map(customer).collect()
}
