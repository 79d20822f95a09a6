//! Scheduled messages (durable deadlines) on SQLite.
//!
//! A scheduled message waits in `polis_scheduled` until it is due; releasing
//! it copies it into `polis_outbox` (exactly as `send` writes it) and deletes
//! it from the schedule, in one transaction on the store's single writer. One
//! writer means two releases can never take the same row, and the outbox
//! positions they hand out are commit order.

use chrono::{DateTime, Utc};
use polis_core::outbox::validate_scheduled;
use polis_core::{Message, StoreError};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::engine::is_unique_violation;
use super::outbox::execute_for_message;
use super::{SqliteTx, from_micros, to_i64};
use crate::backend;

/// Stores `message` in the schedule, due at `due_at`.
pub(super) fn schedule(conn: &Connection, message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError> {
    validate_scheduled(message, due_at)?;
    // An id already in the outbox would be dropped as a duplicate on release
    // (and by the bus); refusing it now tells the caller while it can still act.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO polis_scheduled (message_id, kind, source, target, message_type, key, time_us, data, \
             correlation_id, causation_id, traceparent, created_at_us, due_at_us) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 \
             WHERE NOT EXISTS (SELECT 1 FROM polis_outbox WHERE message_id = ?1)",
        )
        .and_then(|mut s| {
            let traceparent = polis_core::trace::for_outbox(message);
            execute_for_message(&mut s, message, traceparent.as_deref(), &[due_at.timestamp_micros()])
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::InvalidRequest(format!("message {} is already scheduled", message.id))
            } else {
                backend(e)
            }
        })?;
    if inserted == 0 {
        return Err(StoreError::InvalidRequest(format!("message {} is already in the outbox", message.id)));
    }
    Ok(())
}

/// Deletes a pending scheduled message; `false` if there was none.
pub(super) fn unschedule(conn: &Connection, message_id: Uuid) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM polis_scheduled WHERE message_id = ?1")
        .and_then(|mut s| s.execute([message_id]))
        .map_err(backend)?;
    Ok(deleted == 1)
}

/// Moves up to `max` messages due at `now` from the schedule into the
/// outbox. Runs as work on the writer, so both statements see the same rows.
pub(super) fn release_due(tx: &mut SqliteTx, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
    if max == 0 {
        return Ok(0);
    }
    let (now, limit) = (now.timestamp_micros(), to_i64(max as u64));
    // Rows are inserted in the SELECT's order, so outbox positions follow due
    // order. The DELETE below picks the same rows: the order is total (rowid)
    // and nothing else writes in between (one writer).
    tx.conn
        .prepare_cached(
            "INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time_us, data, \
             correlation_id, causation_id, traceparent, created_at_us) \
             SELECT message_id, kind, source, target, message_type, key, time_us, data, correlation_id, \
             causation_id, traceparent, ?3 FROM polis_scheduled WHERE due_at_us <= ?1 \
             ORDER BY due_at_us, rowid LIMIT ?2 \
             ON CONFLICT (message_id) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![now, limit, Utc::now().timestamp_micros()]))
        .map_err(backend)?;
    let released = tx
        .conn
        .prepare_cached(
            "DELETE FROM polis_scheduled WHERE rowid IN \
             (SELECT rowid FROM polis_scheduled WHERE due_at_us <= ?1 ORDER BY due_at_us, rowid LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![now, limit]))
        .map_err(backend)?;
    if released > 0 {
        // Wakes the relay once the group commits, as a `send` does.
        tx.sent = true;
    }
    Ok(released)
}

/// The earliest due time in the schedule.
pub(super) fn next_due(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let due: Option<i64> = conn
        .prepare_cached("SELECT min(due_at_us) FROM polis_scheduled")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    Ok(due.map(from_micros))
}

/// Messages waiting in the schedule.
pub(super) fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM polis_scheduled")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
