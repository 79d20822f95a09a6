//! Portable SQL for a service's own tables.
//!
//! A service owns tables next to polis's (its stock, its payments, ...) and
//! writes them in the same [`Transaction`](polis_core::Transaction) as its
//! outgoing messages. So that one service's code runs on both deployments,
//! it writes its SQL once, in the dialect SQLite and PostgreSQL share, and
//! runs it through [`Sql`] (inside a transaction) or [`SqlStore`] (reads
//! outside one):
//!
//! - parameters are `$1`, `$2`, ... (both backends accept them);
//! - values are [`Value`]s: integers are `BIGINT` (`INTEGER` on SQLite),
//!   text is `TEXT`, ids are UUIDs stored as text, times are integer
//!   microseconds; aggregates over `BIGINT` need `CAST(SUM(x) AS BIGINT)`
//!   because PostgreSQL widens them to `NUMERIC`;
//! - `INSERT ... ON CONFLICT ... DO UPDATE/NOTHING` and `RETURNING` work on both.
//!
//! A unique-constraint violation surfaces as [`StoreError::Unique`]; every
//! other driver failure as [`StoreError::Backend`].
//!
//! The service's tables come from its own migrations, one directory per
//! backend, applied with [`SqlStore::migrate`] and
//! [`service_migrator!`](crate::service_migrator).

use std::sync::Arc;

use async_trait::async_trait;
use polis_core::StoreError;
use polis_core::outbox::TransactionalStore;
use polis_core::store::EventStore;
use rusqlite::types::Value as SqliteValue;
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::{PgEventStore, PgTx, SqliteEventStore, SqliteTx, backend};

/// A value bound to a `$n` parameter. NULLs are typed (`Int(None)`, ...):
/// PostgreSQL will not put a NULL of type text into a BIGINT column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A `BIGINT` (SQLite `INTEGER`); also counts, times in microseconds,
    /// and `u32`/`i32` widened.
    Int(Option<i64>),
    /// A `TEXT`; also UUIDs, in their hyphenated lowercase form.
    Text(Option<String>),
    /// A `BOOLEAN` (SQLite keeps 0 or 1).
    Bool(Option<bool>),
}

macro_rules! value_from {
    ($($ty:ty => |$v:ident| $variant:ident($make:expr)),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from($v: $ty) -> Self {
                    Self::$variant(Some($make))
                }
            }

            impl From<Option<$ty>> for Value {
                fn from(v: Option<$ty>) -> Self {
                    Self::$variant(v.map(|$v| $make))
                }
            }
        )*
    };
}

value_from! {
    i64 => |v| Int(v),
    i32 => |v| Int(i64::from(v)),
    u32 => |v| Int(i64::from(v)),
    bool => |v| Bool(v),
    &str => |v| Text(v.to_owned()),
    String => |v| Text(v),
    &String => |v| Text(v.clone()),
    Uuid => |v| Text(v.to_string()),
    &Uuid => |v| Text(v.to_string()),
}

/// Builds a `&[Value]` argument list: `args![id, quantity, "RESERVED"]`.
#[macro_export]
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($value)),*][..]
    };
}

/// A row returned by either backend; columns are read by name.
///
/// Every getter fails with [`StoreError::Backend`] naming the column when
/// the column is missing, or holds NULL or a value of another type where the
/// getter wants a value: a mismatch between the SQL and the code, not bad
/// input.
pub enum Row {
    /// A row from [`SqliteEventStore`] (or its transaction).
    Sqlite(SqliteRow),
    /// A row from [`PgEventStore`] (or its transaction).
    Postgres(PgRow),
}

/// A row read from SQLite, owned (SQLite's own rows live only as long as
/// their statement's step).
#[derive(Debug)]
pub struct SqliteRow {
    columns: Arc<[String]>,
    values: Vec<SqliteValue>,
}

impl SqliteRow {
    fn value(&self, column: &str) -> Result<&SqliteValue, StoreError> {
        self.columns
            .iter()
            .position(|c| c == column)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| StoreError::backend(format!("no column `{column}` in the row")))
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = match self {
            Self::Sqlite(row) => row.columns.len(),
            Self::Postgres(row) => row.columns().len(),
        };
        f.debug_struct("Row").field("columns", &columns).finish_non_exhaustive()
    }
}

fn mismatch(column: &str, expected: &str, found: &SqliteValue) -> StoreError {
    let found = match found {
        SqliteValue::Null => "NULL",
        SqliteValue::Integer(_) => "an integer",
        SqliteValue::Real(_) => "a real",
        SqliteValue::Text(_) => "text",
        SqliteValue::Blob(_) => "a blob",
    };
    StoreError::backend(format!("column `{column}`: expected {expected}, found {found}"))
}

fn pg_get<T>(row: &PgRow, column: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(|e| StoreError::backend(format!("column `{column}`: {e}")))
}

impl Row {
    /// A non-NULL `BIGINT` column (on PostgreSQL an `INTEGER` column does not
    /// decode as one: cast it).
    pub fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.opt_int(column)?.ok_or_else(|| StoreError::backend(format!("column `{column}` is NULL")))
    }

    /// A `BIGINT` column that may be NULL (`None`).
    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Self::Sqlite(row) => match row.value(column)? {
                SqliteValue::Null => Ok(None),
                SqliteValue::Integer(v) => Ok(Some(*v)),
                other => Err(mismatch(column, "an integer", other)),
            },
            Self::Postgres(row) => pg_get(row, column),
        }
    }

    /// A non-NULL `TEXT` column.
    pub fn text(&self, column: &str) -> Result<String, StoreError> {
        self.opt_text(column)?.ok_or_else(|| StoreError::backend(format!("column `{column}` is NULL")))
    }

    /// A `TEXT` column that may be NULL (`None`).
    pub fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        match self {
            Self::Sqlite(row) => match row.value(column)? {
                SqliteValue::Null => Ok(None),
                SqliteValue::Text(v) => Ok(Some(v.clone())),
                other => Err(mismatch(column, "text", other)),
            },
            Self::Postgres(row) => pg_get(row, column),
        }
    }

    /// A non-NULL `BOOLEAN` column (on SQLite, any non-zero integer is `true`).
    pub fn bool(&self, column: &str) -> Result<bool, StoreError> {
        match self {
            // SQLite keeps booleans as the integers 0 and 1.
            Self::Sqlite(row) => match row.value(column)? {
                SqliteValue::Integer(v) => Ok(*v != 0),
                other => Err(mismatch(column, "a boolean", other)),
            },
            Self::Postgres(row) => pg_get(row, column),
        }
    }

    /// A non-NULL UUID stored as text; text that is not a UUID is an error too.
    pub fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        let text = self.text(column)?;
        Uuid::parse_str(&text).map_err(|e| StoreError::backend(format!("column `{column}` is not a uuid: {e}")))
    }

    /// A non-NULL JSON document stored as text, deserialized as `T`; JSON
    /// that does not fit `T` is an error too.
    pub fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::backend(format!("column `{column}` holds invalid json: {e}")))
    }
}

/// Statements on a service's own tables, inside a transaction.
#[async_trait]
pub trait Sql: Send {
    /// Runs a statement; returns the number of rows it changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unique`] if it violates a unique constraint, otherwise
    /// [`StoreError::Backend`]. Either way, let the transaction fail: on
    /// PostgreSQL a failed statement aborts it.
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row, as this transaction sees them.
    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs a query; returns its first row, or `None` if it returned none.
    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError>;

    /// Exactly one row, or a backend error naming the statement.
    async fn fetch_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, StoreError> {
        self.fetch_optional(sql, args).await?.ok_or_else(|| StoreError::backend(format!("no row returned by `{sql}`")))
    }
}

/// Which database a store runs on, for the rare statement the dialects don't share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, the embedded deployment ([`SqliteEventStore`]).
    Sqlite,
    /// PostgreSQL, the distributed deployment ([`PgEventStore`]).
    Postgres,
}

/// A service's store, seen from the service: transactions with [`Sql`],
/// reads outside transactions, and the service's own migrations.
#[async_trait]
pub trait SqlStore: TransactionalStore + EventStore
where
    Self::Tx: Sql,
{
    /// The database this store runs on.
    fn dialect(&self) -> Dialect;

    /// A read outside any transaction (from a reader connection; on SQLite it
    /// does not wait for the writer).
    async fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Like [`query`](Self::query), returning only the first row, or `None`.
    async fn query_optional(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError>;

    /// Applies the service's own embedded migrations (built with
    /// [`service_migrator!`](crate::service_migrator)). They share the history
    /// table with polis's own, so their versions must not collide with
    /// polis's (`2026112100xx`, `2026112200xx`).
    async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError>;
}

/// The calling crate's embedded migrations for a [`Dialect`], ready for
/// [`SqlStore::migrate`]: `migrations/sqlite` or `migrations/postgres` under
/// the crate's manifest directory, with `ignore_missing` set.
///
/// ```no_run
/// # async fn open(store: &polis_store::SqliteEventStore) -> Result<(), polis_core::StoreError> {
/// use polis_store::sql::SqlStore;
///
/// store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
/// # Ok(())
/// # }
/// ```
///
/// A service's migrations share the history table with polis's own, so
/// each migrator meets versions it does not know and must ignore them. It is
/// a macro because `sqlx::migrate!` embeds the files of the crate it is
/// expanded in; the calling crate therefore depends on `sqlx` itself.
#[macro_export]
macro_rules! service_migrator {
    ($dialect:expr) => {{
        let mut migrator = match $dialect {
            $crate::sql::Dialect::Sqlite => ::sqlx::migrate!("./migrations/sqlite"),
            $crate::sql::Dialect::Postgres => ::sqlx::migrate!("./migrations/postgres"),
        };
        migrator.set_ignore_missing(true);
        migrator
    }};
}

macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for value in $args {
            query = match value {
                Value::Int(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_deref()),
                Value::Bool(v) => query.bind(*v),
            };
        }
        query
    }};
}

fn driver_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Unique(db.constraint().map_or_else(|| db.message().to_owned(), str::to_owned));
    }
    backend(e)
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    if crate::sqlite::engine::is_unique_violation(&e) {
        let what = crate::sqlite::engine::failure_message(&e).unwrap_or("unique constraint failed");
        return StoreError::Unique(what.to_owned());
    }
    backend(e)
}

/// Binds `args` to a statement's `$n` (or `?n`) parameters; anonymous `?`
/// parameters take the arguments in order.
fn bind_sqlite(statement: &mut rusqlite::Statement<'_>, args: &[Value]) -> Result<(), StoreError> {
    for index in 1..=statement.parameter_count() {
        let numbered = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$').or_else(|| name.strip_prefix('?')))
            .and_then(|n| n.parse::<usize>().ok());
        let position = numbered.map_or(Some(index - 1), |n| n.checked_sub(1));
        let Some(value) = position.and_then(|p| args.get(p)) else {
            return Err(StoreError::InvalidRequest(format!(
                "parameter {} of the statement has no argument ({} given)",
                statement.parameter_name(index).unwrap_or("?"),
                args.len()
            )));
        };
        match value {
            Value::Int(v) => statement.raw_bind_parameter(index, v),
            Value::Text(v) => statement.raw_bind_parameter(index, v.as_deref()),
            Value::Bool(v) => statement.raw_bind_parameter(index, v),
        }
        .map_err(sqlite_error)?;
    }
    Ok(())
}

/// Runs a statement on SQLite; returns the rows it changed.
fn sqlite_execute(conn: &rusqlite::Connection, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(sqlite_error)?;
    bind_sqlite(&mut statement, args)?;
    let mut rows = statement.raw_query();
    // Step to the end, whatever the statement returns (`RETURNING` rows included).
    while rows.next().map_err(sqlite_error)?.is_some() {}
    Ok(conn.changes())
}

/// Runs a query on SQLite; returns at most `limit` rows.
fn sqlite_fetch(conn: &rusqlite::Connection, sql: &str, args: &[Value], limit: usize) -> Result<Vec<Row>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(sqlite_error)?;
    bind_sqlite(&mut statement, args)?;
    let columns: Arc<[String]> = statement.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(row) = rows.next().map_err(sqlite_error)?
    {
        let values = (0..columns.len()).map(|i| row.get::<_, SqliteValue>(i)).collect::<Result<_, _>>();
        out.push(Row::Sqlite(SqliteRow { columns: columns.clone(), values: values.map_err(sqlite_error)? }));
    }
    Ok(out)
}

#[async_trait]
impl Sql for SqliteTx {
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        sqlite_execute(self.connection(), sql, args)
    }

    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        sqlite_fetch(self.connection(), sql, args, usize::MAX)
    }

    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(sqlite_fetch(self.connection(), sql, args, 1)?.pop())
    }
}

#[async_trait]
impl Sql for PgTx {
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.execute(self.conn()).await.map_err(driver_error)?.rows_affected())
    }

    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_all(self.conn()).await.map_err(driver_error)?.into_iter().map(Row::Postgres).collect())
    }

    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_optional(self.conn()).await.map_err(driver_error)?.map(Row::Postgres))
    }
}

#[async_trait]
impl SqlStore for SqliteEventStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.readers().read(|conn| sqlite_fetch(conn, sql, args, usize::MAX)).map_err(backend)?
    }

    async fn query_optional(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.readers().read(|conn| sqlite_fetch(conn, sql, args, 1)).map_err(backend)??.pop())
    }

    async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError> {
        crate::sqlite::run_migrations(self.path(), migrator).await
    }
}

#[async_trait]
impl SqlStore for PgEventStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_all(self.pool()).await.map_err(driver_error)?.into_iter().map(Row::Postgres).collect())
    }

    async fn query_optional(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_optional(self.pool()).await.map_err(driver_error)?.map(Row::Postgres))
    }

    async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError> {
        migrator.run(self.pool()).await.map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Dialect, Sql, SqlStore, Value};
    use crate::{SqliteEventStore, SqliteOptions, SqliteTx};
    use polis_core::StoreError;
    use polis_core::outbox::TransactionalStore;

    /// `$n` names the argument, wherever it stands in the statement; a unique
    /// violation is `Unique`; a missing argument is refused, not bound NULL.
    #[tokio::test]
    async fn sqlite_binds_numbered_parameters_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteEventStore::open(dir.path().join("t.db"), SqliteOptions::new("t")).await.unwrap();
        store
            .transaction::<_, _, StoreError>(async move |tx: &mut SqliteTx| {
                tx.execute("CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER, c BOOLEAN)", &[]).await?;
                let args = crate::args!["x", 7_i64, true];
                assert_eq!(tx.execute("INSERT INTO t (c, b, a) VALUES ($3, $2, $1)", args).await?, 1);
                let again = tx.execute("INSERT INTO t (a, b, c) VALUES ($1, $2, $3)", args).await;
                assert!(matches!(again, Err(StoreError::Unique(_))), "{again:?}");
                let missing = tx.execute("INSERT INTO t (a, b) VALUES ($1, $4)", args).await;
                assert!(matches!(missing, Err(StoreError::InvalidRequest(_))), "{missing:?}");
                Ok(())
            })
            .await
            .unwrap();
        let row = store.query_optional("SELECT a, b, c FROM t WHERE b = $1", &[Value::Int(Some(7))]).await.unwrap();
        let row = row.unwrap();
        assert_eq!((row.text("a").unwrap(), row.int("b").unwrap(), row.bool("c").unwrap()), ("x".into(), 7, true));
        assert!(row.opt_text("b").is_err(), "an integer is not text");
        assert!(store.query("SELECT a FROM t WHERE a = $1", &[Value::Text(None)]).await.unwrap().is_empty());
    }

    fn versions(migrator: &sqlx::migrate::Migrator) -> Vec<i64> {
        migrator.iter().map(|m| m.version).collect()
    }

    /// Expanded here, the macro embeds polis-store's own directories: it
    /// picks the one for the dialect, like the library's own migrators.
    #[test]
    fn the_service_migrator_embeds_the_calling_crates_migrations_for_the_dialect() {
        let sqlite = crate::service_migrator!(Dialect::Sqlite);
        let postgres = crate::service_migrator!(Dialect::Postgres);
        assert_eq!(versions(&sqlite), versions(&crate::migrations::sqlite()));
        assert_eq!(versions(&postgres), versions(&crate::migrations::postgres()));
        assert_ne!(versions(&sqlite), versions(&postgres));
    }
}
