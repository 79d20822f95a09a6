//! The `products` table: every statement on it, written once in the SQL
//! that SQLite and PostgreSQL share.

use chrono::Utc;
use contracts::catalog::Product;
use polis_core::StoreError;
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};

use crate::Error;

fn product(row: &Row) -> Result<Product, StoreError> {
    Ok(Product { sku: row.text("sku")?, name: row.text("name")?, price: row.int("price")? })
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// The primary key, not a prior read, decides whether a sku is taken: only
/// it sees concurrent additions.
pub(crate) async fn insert(tx: &mut impl Sql, product: &Product) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO products (sku, name, price, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        args![&product.sku, &product.name, product.price, now_micros()],
    )
    .await
    .map_err(|e| match e {
        StoreError::Unique(_) => Error::SkuTaken(product.sku.clone()),
        other => Error::Store(other),
    })?;
    Ok(())
}

/// Reads a product inside a transaction after locking its row.
///
/// The lock is a no-op `UPDATE`: on PostgreSQL it holds the row until the
/// transaction ends, so two concurrent price changes apply one after the
/// other and each `PriceChanged` names the price it really replaced.
/// (`SELECT ... FOR UPDATE` would say the same, but SQLite, whose single
/// writer serializes transactions anyway, rejects it.)
pub(crate) async fn get_for_update(tx: &mut impl Sql, sku: &str) -> Result<Option<Product>, StoreError> {
    if tx.execute("UPDATE products SET updated_at = updated_at WHERE sku = $1", args![sku]).await? == 0 {
        return Ok(None);
    }
    product(&tx.fetch_one("SELECT sku, name, price FROM products WHERE sku = $1", args![sku]).await?).map(Some)
}

pub(crate) async fn set_price(tx: &mut impl Sql, sku: &str, price: i64) -> Result<(), StoreError> {
    tx.execute("UPDATE products SET price = $2, updated_at = $3 WHERE sku = $1", args![sku, price, now_micros()])
        .await?;
    Ok(())
}

pub(crate) async fn set_name(tx: &mut impl Sql, sku: &str, name: &str) -> Result<(), StoreError> {
    tx.execute("UPDATE products SET name = $2, updated_at = $3 WHERE sku = $1", args![sku, name, now_micros()]).await?;
    Ok(())
}

pub(crate) async fn get<S: SqlStore>(store: &S, sku: &str) -> Result<Option<Product>, StoreError>
where
    S::Tx: Sql,
{
    let row = store.query_optional("SELECT sku, name, price FROM products WHERE sku = $1", args![sku]).await?;
    row.as_ref().map(product).transpose()
}

/// A page of products, ordered by sku byte for byte: SQLite's default, and
/// the `"C"` collation the PostgreSQL migration gives the column.
pub(crate) async fn list<S: SqlStore>(store: &S, page: &Page<String>) -> Result<Vec<Product>, StoreError>
where
    S::Tx: Sql,
{
    let rows = store
        .query(
            "SELECT sku, name, price FROM products WHERE sku > $1 ORDER BY sku LIMIT $2",
            args![page.after_key(), page.sql_limit()],
        )
        .await?;
    rows.iter().map(product).collect()
}
