//! Scheduled messages (durable deadlines) on PostgreSQL.
//!
//! A scheduled message waits in `polis_scheduled` until it is due; releasing
//! it moves it into `polis_outbox` (exactly as `send` writes it) in one
//! transaction.
//!
//! Several processes may release at once. Releases of one database take turns
//! on one advisory lock: a second releaser claiming later rows of a key while
//! the first still holds earlier ones could commit first and put them ahead in
//! the outbox; taking turns keeps every key's messages in due order. Rows are
//! claimed `FOR UPDATE SKIP LOCKED`, so a row goes to exactly one release, and
//! a release does not wait for a transaction that is unscheduling a row.
//! Before writing to the outbox, a release also takes the per-key advisory
//! locks `send` takes, so per key, outbox position order stays commit order
//! (ADR 0003).

use chrono::{DateTime, Utc};
use polis_core::outbox::validate_scheduled;
use polis_core::{Message, StoreError};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{PgTx, to_i64};
use crate::backend;

/// Stores `message` in the schedule, due at `due_at`.
pub(super) async fn schedule(
    conn: &mut PgConnection,
    message: &Message,
    due_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    insert(conn, None, message, due_at).await.map(|_| ())
}

/// Deletes `old` from the schedule and stores `message`, in one statement
/// (two if they are the same id); `true` if `old` was pending.
pub(super) async fn reschedule(
    conn: &mut PgConnection,
    old: Uuid,
    message: &Message,
    due_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if old == message.id {
        // The statement's delete and insert would meet on one row.
        let removed = unschedule(conn, old).await?;
        insert(conn, None, message, due_at).await?;
        return Ok(removed);
    }
    insert(conn, Some(old), message, due_at).await
}

/// Inserts `message` into the schedule and deletes `old` if given, in one
/// statement (`old` must be another id), and returns whether `old` was
/// deleted.
async fn insert(
    conn: &mut PgConnection,
    old: Option<Uuid>,
    message: &Message,
    due_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    validate_scheduled(message, due_at)?;
    let traceparent = polis_core::trace::for_outbox(message);
    // An id already in the outbox would be dropped as a duplicate on release
    // (and by the bus); refusing it now tells the caller while it can still act.
    let row = sqlx::query(
        "WITH gone AS (DELETE FROM polis_scheduled WHERE message_id = $13 RETURNING 1) \
         INSERT INTO polis_scheduled (message_id, due_at, kind, source, target, message_type, key, time, data, \
         correlation_id, causation_id, traceparent) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
         WHERE NOT EXISTS (SELECT 1 FROM polis_outbox WHERE message_id = $1) \
         RETURNING (SELECT count(*) FROM gone) AS removed",
    )
    .bind(message.id)
    .bind(due_at)
    .bind(message.kind.as_str())
    .bind(&message.source)
    .bind(&message.target)
    .bind(&message.message_type)
    .bind(&message.key)
    .bind(message.time)
    .bind(&message.data)
    .bind(message.metadata.correlation_id)
    .bind(message.metadata.causation_id)
    .bind(traceparent.as_deref())
    .bind(old)
    .fetch_optional(conn)
    .await
    .map_err(|e| {
        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
            StoreError::InvalidRequest(format!("message {} is already scheduled", message.id))
        } else {
            backend(e)
        }
    })?;
    let Some(row) = row else {
        return Err(StoreError::InvalidRequest(format!("message {} is already in the outbox", message.id)));
    };
    let removed: i64 = row.try_get("removed").map_err(backend)?;
    Ok(removed > 0)
}

/// Deletes a pending scheduled message; `false` if there was none. If a
/// release holds the row, this waits for it and then finds it gone.
pub(super) async fn unschedule(conn: &mut PgConnection, message_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM polis_scheduled WHERE message_id = $1")
        .bind(message_id)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() == 1)
}

/// Moves up to `max` messages due at `now` from the schedule into the outbox,
/// inside the transaction `tx` (whose commit sends the outbox NOTIFY).
pub(super) async fn release_due(tx: &mut PgTx, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
    if max == 0 {
        return Ok(0);
    }
    // 1. Take turns with other releasers (the two-key lock space cannot
    //    collide with `send`'s one-key locks), then claim the due rows; both
    //    locks hold until commit.
    sqlx::query("SELECT pg_advisory_xact_lock(7041, 1)").execute(&mut *tx.tx).await.map_err(backend)?;
    let claimed = sqlx::query(
        "SELECT message_id, key FROM polis_scheduled WHERE due_at <= $1 \
         ORDER BY due_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(to_i64(max as u64))
    .fetch_all(&mut *tx.tx)
    .await
    .map_err(backend)?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(claimed.len());
    let mut keys = Vec::with_capacity(claimed.len());
    for row in &claimed {
        ids.push(row.try_get::<Uuid, _>("message_id").map_err(backend)?);
        keys.push(row.try_get::<String, _>("key").map_err(backend)?);
    }
    // 2. Take the keys' outbox locks (as `send` does), in one fixed order. A
    //    statement of its own: the insert below must draw positions only once
    //    all are held.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(k, 7041) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS locks",
    )
    .bind(&keys)
    .execute(&mut *tx.tx)
    .await
    .map_err(backend)?;
    // 3. Move them; the ordered SELECT makes outbox positions follow due order.
    sqlx::query(
        "WITH released AS (DELETE FROM polis_scheduled WHERE message_id = ANY($1) RETURNING *) \
         INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time, data, \
         correlation_id, causation_id, traceparent) \
         SELECT message_id, kind, source, target, message_type, key, time, data, correlation_id, causation_id, \
         traceparent FROM released ORDER BY due_at, seq \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&ids)
    .execute(&mut *tx.tx)
    .await
    .map_err(backend)?;
    tx.sent = true;
    Ok(ids.len())
}

/// The earliest due time in the schedule.
pub(super) async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    sqlx::query_scalar("SELECT min(due_at) FROM polis_scheduled").fetch_one(pool).await.map_err(backend)
}

/// Messages waiting in the schedule.
pub(super) async fn count(pool: &PgPool) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM polis_scheduled").fetch_one(pool).await.map_err(backend)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
