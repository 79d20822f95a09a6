//! The runtime's SQL: generations, checkpoints and leases, written once in
//! the dialect both backends share (polis-store's portable SQL).

use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::lease::Fence;
use polis_core::{Generation, StoreError, Transaction};
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use uuid::Uuid;

/// What a generation is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Asked for by [`crate::rebuild`]; the owner turns it into a build.
    Requested,
    /// Being built beside the live generation (or before there is one).
    Building,
    /// What readers see.
    Live,
    /// Replaced; its tables are dropped next.
    Retired,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Building => "building",
            Self::Live => "live",
            Self::Retired => "retired",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "requested" => Self::Requested,
            "building" => Self::Building,
            "live" => Self::Live,
            "retired" => Self::Retired,
            other => return Err(StoreError::backend(format!("unknown projection state `{other}`"))),
        })
    }
}

/// One row of `polis_projections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRow {
    /// The projection.
    pub name: String,
    /// Which generation.
    pub generation: Generation,
    /// The projection's code version that builds it.
    pub version: u32,
    /// What it is doing.
    pub state: State,
    /// Its checkpoint: the last global position applied (0: none yet).
    pub position: u64,
    /// The time of the last event applied.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the last batch was applied.
    pub applied_at: Option<DateTime<Utc>>,
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.and_then(DateTime::from_timestamp_micros)
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn row(row: &Row) -> Result<GenerationRow, StoreError> {
    let number = |column: &str| -> Result<u32, StoreError> {
        u32::try_from(row.int(column)?).map_err(|_| StoreError::backend(format!("column `{column}` out of range")))
    };
    Ok(GenerationRow {
        name: row.text("name")?,
        generation: Generation::new(number("generation")?),
        version: number("version")?,
        state: State::parse(&row.text("state")?)?,
        position: u64::try_from(row.int("position")?).unwrap_or(0),
        last_event_at: from_micros(row.opt_int("last_event_at_us")?),
        applied_at: from_micros(row.opt_int("applied_at_us")?),
    })
}

const COLUMNS: &str = "name, generation, version, state, position, last_event_at_us, applied_at_us";

/// Every generation of `name`, oldest first (outside a transaction).
pub async fn generations<S>(store: &S, name: &str) -> Result<Vec<GenerationRow>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS} FROM polis_projections WHERE name = $1 ORDER BY generation");
    store.query(&sql, args![name]).await?.iter().map(row).collect()
}

/// Every generation of `name`, inside a transaction.
pub(crate) async fn generations_in<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
) -> Result<Vec<GenerationRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM polis_projections WHERE name = $1 ORDER BY generation");
    tx.fetch_all(&sql, args![name]).await?.iter().map(row).collect()
}

/// Adds a generation.
pub(crate) async fn insert<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
    generation: Generation,
    version: u32,
    state: State,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO polis_projections (name, generation, version, state, position, created_at_us) \
         VALUES ($1, $2, $3, $4, 0, $5)",
        args![name, generation.number(), version, state.as_str(), micros(Utc::now())],
    )
    .await?;
    Ok(())
}

/// Sets a generation's state (and version); false if it is gone.
pub(crate) async fn set_state<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
    generation: Generation,
    version: u32,
    state: State,
) -> Result<bool, StoreError> {
    let changed = tx
        .execute(
            "UPDATE polis_projections SET state = $1, version = $2 WHERE name = $3 AND generation = $4",
            args![state.as_str(), version, name, generation.number()],
        )
        .await?;
    Ok(changed == 1)
}

/// Forgets a generation.
pub(crate) async fn delete<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
    generation: Generation,
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM polis_projections WHERE name = $1 AND generation = $2", args![name, generation.number()])
        .await?;
    Ok(())
}

/// Moves a generation's checkpoint from `from` to `to`; false if it was not
/// at `from` any more (someone else applied events: the batch must not commit).
pub(crate) async fn advance<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
    generation: Generation,
    from: u64,
    to: u64,
    last_event_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let changed = tx
        .execute(
            "UPDATE polis_projections SET position = $1, last_event_at_us = $2, applied_at_us = $3 \
             WHERE name = $4 AND generation = $5 AND position = $6",
            args![int(to), micros(last_event_at), micros(Utc::now()), name, generation.number(), int(from)],
        )
        .await?;
    Ok(changed == 1)
}

/// The lease of projection `name` (polis-core's `lease` module).
fn lease(name: &str) -> String {
    format!("projection:{name}")
}

/// Takes the lease of projection `name` for `owner` until `now + ttl` if it
/// is free, expired, or already `owner`'s; its token if `owner` holds it now.
pub(crate) async fn acquire<Tx: Transaction + ?Sized>(
    tx: &mut Tx,
    name: &str,
    owner: Uuid,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Option<u64>, StoreError> {
    tx.acquire_lease(&lease(name), owner, now, ttl).await
}

/// Renews `owner`'s lease of projection `name` if its tenure `token` still
/// holds it; false if it was lost (expired and taken, or expired): the
/// transaction must not commit.
pub(crate) async fn renew<Tx: Transaction + ?Sized>(
    tx: &mut Tx,
    name: &str,
    owner: Uuid,
    token: u64,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<bool, StoreError> {
    tx.hold_lease(&Fence { name: lease(name), owner, token }, now, ttl).await
}

/// Lets the lease go (a clean shutdown): another instance takes over at once.
pub(crate) async fn release<Tx: Transaction + ?Sized>(tx: &mut Tx, name: &str, owner: Uuid) -> Result<(), StoreError> {
    tx.release_lease(&lease(name), owner).await
}

/// Points the view of every table at `generation`'s copy.
pub(crate) async fn point_views<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    tables: &[&str],
    generation: Generation,
) -> Result<(), StoreError> {
    for table in tables {
        tx.execute(&format!("DROP VIEW IF EXISTS {table}"), &[]).await?;
        tx.execute(&format!("CREATE VIEW {table} AS SELECT * FROM {}", generation.table(table)), &[]).await?;
    }
    Ok(())
}

/// Drops `generation`'s tables.
pub(crate) async fn drop_tables<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    tables: &[&str],
    generation: Generation,
) -> Result<(), StoreError> {
    for table in tables {
        tx.execute(&format!("DROP TABLE IF EXISTS {}", generation.table(table)), &[]).await?;
    }
    Ok(())
}
