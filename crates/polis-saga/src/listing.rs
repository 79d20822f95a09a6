//! Saga instances as operators see them: which exist, in which state, and
//! how many are in flight.
//!
//! Both reads run outside any transaction ([`SqlStore::query`]: on SQLite a
//! reader connection that does not wait for the writer, on PostgreSQL the
//! pool), so a dashboard, a metrics scrape or an admin command never holds
//! up the service's own work.
//!
//! - [`list`]: a page of instances in `(saga type, saga id)` order, after a
//!   [`SagaKey`], optionally only those of one state or only finished /
//!   unfinished ones;
//! - [`in_flight`]: how many unfinished instances there are per saga type
//!   and state, in one statement.
//!
//! Unfinished instances are few (those in flight) while finished ones pile
//! up for ever, so the unfinished ones have an index of their own
//! (`polis_sagas_in_flight`, partial on `NOT finished`): counting them, and
//! listing those of a state, read only them.

use chrono::{DateTime, Utc};
use polis_core::StoreError;
use polis_store::sql::{Dialect, Row, Sql, SqlStore, Value};
use serde::{Deserialize, Serialize};

/// One saga instance as listed: where it stands, without its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaSummary {
    /// The saga's [`Saga::TYPE`](crate::Saga::TYPE).
    pub saga_type: String,
    /// The instance's id within its type.
    pub saga_id: String,
    /// Its [`Saga::state_name`](crate::Saga::state_name) when last saved.
    pub state: String,
    /// Whether it has nothing left to wait for.
    pub finished: bool,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When it was last saved.
    pub updated_at: DateTime<Utc>,
    /// When its current deadline fires, if it has one.
    pub deadline: Option<DateTime<Utc>>,
}

impl SagaSummary {
    /// The key to list after, to read the page that follows this instance.
    pub fn key(&self) -> SagaKey {
        SagaKey { saga_type: self.saga_type.clone(), saga_id: self.saga_id.clone() }
    }
}

/// An instance's place in a listing: `(saga type, saga id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SagaKey {
    /// The saga's type.
    pub saga_type: String,
    /// The instance's id.
    pub saga_id: String,
}

/// Which instances [`list`] returns; the default is every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaFilter {
    /// Only instances in this state.
    pub state: Option<String>,
    /// Only finished ones (`true`) or only unfinished ones (`false`).
    pub finished: Option<bool>,
}

impl SagaFilter {
    /// Every instance.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only instances in `state`.
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Only finished instances (`true`), or only unfinished ones (`false`).
    pub fn finished(mut self, finished: bool) -> Self {
        self.finished = Some(finished);
        self
    }
}

/// How many unfinished instances of a saga type are in a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The saga's type.
    pub saga_type: String,
    /// The state.
    pub state: String,
    /// How many unfinished instances of the type are in it.
    pub count: u64,
    /// When the one of them that moved least recently last moved: a saga
    /// waiting long past its step's timeout is stuck.
    pub oldest_change: DateTime<Utc>,
}

/// At most `limit` instances matching `filter`, in `(saga type, saga id)`
/// order, after `after` (from the first if `None`).
///
/// Each filter is written into the statement only when given, and
/// `NOT finished` literally, so that both backends see that the in-flight
/// index applies. SQLite is told to use it (`INDEXED BY`): without
/// statistics (`ANALYZE`) its planner would rather walk the primary key
/// through every finished row.
pub async fn list<S>(
    store: &S,
    filter: &SagaFilter,
    after: Option<&SagaKey>,
    limit: usize,
) -> Result<Vec<SagaSummary>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let (sql, args) = list_statement(store.dialect(), filter, after, limit);
    store.query(&sql, &args).await?.iter().map(summary).collect()
}

/// The statement [`list`] runs and its arguments.
fn list_statement(
    dialect: Dialect,
    filter: &SagaFilter,
    after: Option<&SagaKey>,
    limit: usize,
) -> (String, Vec<Value>) {
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    match filter.finished {
        Some(true) => conditions.push("finished".to_owned()),
        Some(false) => conditions.push("NOT finished".to_owned()),
        None => {}
    }
    if let Some(state) = &filter.state {
        args.push(Value::from(state.as_str()));
        conditions.push(format!("state_name = ${}", args.len()));
    }
    if let Some(after) = after {
        args.push(Value::from(after.saga_type.as_str()));
        args.push(Value::from(after.saga_id.as_str()));
        conditions.push(format!("(saga_type, saga_id) > (${}, ${})", args.len() - 1, args.len()));
    }
    args.push(Value::from(i64::try_from(limit).unwrap_or(i64::MAX)));
    let index = match (dialect, filter.finished) {
        (Dialect::Sqlite, Some(false)) => "INDEXED BY polis_sagas_in_flight ",
        _ => "",
    };
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {} ", conditions.join(" AND ")) };
    let sql = format!(
        "SELECT saga_type, saga_id, state_name, finished, deadline_at_us, created_at_us, updated_at_us \
         FROM polis_sagas {index}{filter}ORDER BY saga_type, saga_id LIMIT ${}",
        args.len()
    );
    (sql, args)
}

/// The statement [`in_flight`] runs.
const IN_FLIGHT: &str = "SELECT saga_type, state_name, count(*) AS n, min(updated_at_us) AS oldest FROM polis_sagas \
                         WHERE NOT finished GROUP BY saga_type, state_name ORDER BY saga_type, state_name";

/// How many unfinished instances there are, per saga type and state (none
/// listed for a pair with none), in one statement over the in-flight index:
/// cheap enough for every metrics scrape.
pub async fn in_flight<S>(store: &S) -> Result<Vec<InFlight>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    store
        .query(IN_FLIGHT, &[])
        .await?
        .iter()
        .map(|row| {
            Ok(InFlight {
                saga_type: row.text("saga_type")?,
                state: row.text("state_name")?,
                count: u64::try_from(row.int("n")?).unwrap_or(0),
                oldest_change: micros("oldest", row.int("oldest")?)?,
            })
        })
        .collect()
}

fn summary(row: &Row) -> Result<SagaSummary, StoreError> {
    let time = |column: &str| -> Result<DateTime<Utc>, StoreError> { micros(column, row.int(column)?) };
    Ok(SagaSummary {
        saga_type: row.text("saga_type")?,
        saga_id: row.text("saga_id")?,
        state: row.text("state_name")?,
        finished: row.bool("finished")?,
        created_at: time("created_at_us")?,
        updated_at: time("updated_at_us")?,
        deadline: row.opt_int("deadline_at_us")?.map(|at| micros("deadline_at_us", at)).transpose()?,
    })
}

fn micros(column: &str, value: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| StoreError::backend(format!("column `{column}` holds an impossible time: {value}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};

    use super::*;

    /// What the planner chooses for `sql` with `args` (one line per step).
    async fn plan<S: SqlStore>(store: &S, sql: &str, args: &[Value]) -> String
    where
        S::Tx: Sql,
    {
        let explain = match store.dialect() {
            Dialect::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Dialect::Postgres => format!("EXPLAIN {sql}"),
        };
        let column = match store.dialect() {
            Dialect::Sqlite => "detail",
            Dialect::Postgres => "QUERY PLAN",
        };
        let rows = store.query(&explain, args).await.unwrap();
        rows.iter().map(|row| row.text(column).unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// Twenty thousand finished sagas and a few in flight: counting and
    /// listing those in flight by state read the in-flight index, not the
    /// table.
    async fn in_flight_reads_use_their_index<S: SqlStore>(store: Arc<S>, fill: &str)
    where
        S::Tx: Sql,
    {
        let fill = fill.to_owned();
        store.transaction::<_, _, StoreError>(async move |tx| tx.execute(&fill, &[]).await.map(|_| ())).await.unwrap();
        if store.dialect() == Dialect::Postgres {
            store.query("ANALYZE polis_sagas", &[]).await.unwrap();
        }
        let counted = plan(&*store, IN_FLIGHT, &[]).await;
        assert!(counted.contains("polis_sagas_in_flight"), "{counted}");
        let key = SagaKey { saga_type: "t".into(), saga_id: "0".into() };
        let (sql, args) =
            list_statement(store.dialect(), &SagaFilter::all().finished(false).state("waiting"), Some(&key), 100);
        let listed = plan(&*store, &sql, &args).await;
        assert!(listed.contains("polis_sagas_in_flight"), "{listed}");
        let counts = in_flight(&*store).await.unwrap();
        let counts: Vec<_> = counts.into_iter().map(|c| (c.saga_type, c.state, c.count)).collect();
        assert_eq!(counts, [("t".to_owned(), "waiting".to_owned(), 10)]);
    }

    #[tokio::test]
    async fn in_flight_reads_use_their_index_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteEventStore::open(dir.path().join("s.db"), SqliteOptions::new("s")).await.unwrap();
        let fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20010) \
                    INSERT INTO polis_sagas (saga_type, saga_id, state, finished, version, created_at_us, \
                    updated_at_us, state_name) SELECT 't', printf('%06d', i), '{}', i <= 20000, 1, 0, 0, \
                    CASE WHEN i <= 20000 THEN 'done' ELSE 'waiting' END FROM n";
        in_flight_reads_use_their_index(Arc::new(store), fill).await;
    }

    #[tokio::test]
    async fn in_flight_reads_use_their_index_on_postgres() {
        let db = polis_testkit::postgres().await;
        let store = PgEventStore::connect(db.url(), PgOptions::new("s")).await.unwrap();
        let fill = "INSERT INTO polis_sagas (saga_type, saga_id, state, finished, version, created_at_us, \
                    updated_at_us, state_name) SELECT 't', lpad(i::text, 6, '0'), '{}', i <= 20000, 1, 0, 0, \
                    CASE WHEN i <= 20000 THEN 'done' ELSE 'waiting' END FROM generate_series(1, 20010) AS i";
        in_flight_reads_use_their_index(Arc::new(store), fill).await;
    }
}
