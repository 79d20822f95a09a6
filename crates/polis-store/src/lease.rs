//! The lease table's SQL (polis-core's `lease` module), written once in the
//! dialect both backends share. Times are microseconds since the epoch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::StoreError;
use polis_core::lease::Fence;
use uuid::Uuid;

use crate::args;
use crate::sql::Sql;

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn until(now: DateTime<Utc>, ttl: Duration) -> i64 {
    micros(now).saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
}

/// See `Transaction::acquire_lease`.
pub(crate) async fn acquire<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    name: &str,
    owner: Uuid,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Option<u64>, StoreError> {
    let row = tx
        .fetch_optional(
            "INSERT INTO polis_leases (name, owner, expires_at_us, token) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at_us = excluded.expires_at_us, \
             token = polis_leases.token + 1 \
             WHERE polis_leases.owner = excluded.owner OR polis_leases.expires_at_us < $4 \
             RETURNING token",
            args![name, owner.to_string(), until(now, ttl), micros(now)],
        )
        .await?;
    row.map(|row| row.int("token").map(|token| u64::try_from(token).unwrap_or(0))).transpose()
}

/// See `Transaction::hold_lease`.
pub(crate) async fn hold<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    fence: &Fence,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let token = i64::try_from(fence.token).unwrap_or(i64::MAX);
    let changed = tx
        .execute(
            "UPDATE polis_leases SET expires_at_us = $1 \
             WHERE name = $2 AND owner = $3 AND token = $4 AND expires_at_us >= $5",
            args![until(now, ttl), &fence.name, fence.owner.to_string(), token, micros(now)],
        )
        .await?;
    Ok(changed == 1)
}

/// See `Transaction::release_lease`.
pub(crate) async fn release<Tx: Sql + ?Sized>(tx: &mut Tx, name: &str, owner: Uuid) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE polis_leases SET expires_at_us = 0 WHERE name = $1 AND owner = $2",
        args![name, owner.to_string()],
    )
    .await?;
    Ok(())
}

/// See `Transaction::leases_held`.
pub(crate) async fn held<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    // A prefix compared as a prefix: LIKE would read `_` and `%` in names.
    let rows = tx
        .fetch_all(
            "SELECT name, owner FROM polis_leases \
             WHERE substr(name, 1, length($1)) = $1 AND expires_at_us >= $2 ORDER BY name",
            args![prefix, micros(now)],
        )
        .await?;
    rows.iter().map(|row| Ok((row.text("name")?, row.uuid("owner")?))).collect()
}
