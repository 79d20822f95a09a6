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

use async_trait::async_trait;
use polis_core::StoreError;
use polis_core::outbox::TransactionalStore;
use polis_core::store::EventStore;
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::{PgEventStore, PgTx, SqliteEventStore, SqliteTx, backend};

/// A value bound to a `$n` parameter. NULLs are typed (`Int(None)`, ...):
/// PostgreSQL will not put a NULL of type text into a BIGINT column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
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
pub enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = match self {
            Self::Sqlite(row) => row.columns().len(),
            Self::Postgres(row) => row.columns().len(),
        };
        f.debug_struct("Row").field("columns", &columns).finish_non_exhaustive()
    }
}

impl Row {
    fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>,
    {
        let result = match self {
            Self::Sqlite(row) => row.try_get(column),
            Self::Postgres(row) => row.try_get(column),
        };
        result.map_err(|e| StoreError::backend(format!("column `{column}`: {e}")))
    }

    pub fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.get(column)
    }

    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.get(column)
    }

    pub fn text(&self, column: &str) -> Result<String, StoreError> {
        self.get(column)
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.get(column)
    }

    pub fn bool(&self, column: &str) -> Result<bool, StoreError> {
        self.get(column)
    }

    /// A UUID stored as text.
    pub fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        let text = self.text(column)?;
        Uuid::parse_str(&text).map_err(|e| StoreError::backend(format!("column `{column}` is not a uuid: {e}")))
    }

    /// A JSON document stored as text.
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
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError>;
    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError>;

    /// Exactly one row, or a backend error naming the statement.
    async fn fetch_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, StoreError> {
        self.fetch_optional(sql, args).await?.ok_or_else(|| StoreError::backend(format!("no row returned by `{sql}`")))
    }
}

/// Which database a store runs on, for the rare statement the dialects don't share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A service's store, seen from the service: transactions with [`Sql`],
/// reads outside transactions, and the service's own migrations.
#[async_trait]
pub trait SqlStore: TransactionalStore + EventStore
where
    Self::Tx: Sql,
{
    fn dialect(&self) -> Dialect;

    /// A read outside any transaction (from a reader connection; on SQLite it
    /// does not wait for the writer).
    async fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError>;
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

#[async_trait]
impl Sql for SqliteTx {
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.execute(self.conn()).await.map_err(driver_error)?.rows_affected())
    }

    async fn fetch_all(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_all(self.conn()).await.map_err(driver_error)?.into_iter().map(Row::Sqlite).collect())
    }

    async fn fetch_optional(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_optional(self.conn()).await.map_err(driver_error)?.map(Row::Sqlite))
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
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_all(self.read_pool()).await.map_err(driver_error)?.into_iter().map(Row::Sqlite).collect())
    }

    async fn query_optional(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        let query = bind_all!(sqlx::query(sql), args);
        Ok(query.fetch_optional(self.read_pool()).await.map_err(driver_error)?.map(Row::Sqlite))
    }

    async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError> {
        // The writer task owns the store's write connection and may be inside
        // a group transaction; migrations run their own transactions, so they
        // get a connection of their own (SQLite's busy timeout orders the two).
        let options = (*self.read_pool().connect_options()).clone().read_only(false);
        let pool =
            sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(backend)?;
        let result = migrator.run(&pool).await.map_err(backend);
        pool.close().await;
        result
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
    use super::Dialect;

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
