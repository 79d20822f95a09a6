//! Transactions, outbox, inbox and dead letters on SQLite.
//!
//! A transaction is work sent to the store's single writer: it runs inside
//! the writer's current group transaction, under its own savepoint, so it
//! commits with the group (one fsync) and a failure undoes only its own writes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::outbox::{Backlog, DeadLetter, DeadLetterStatus, OutboxEntry, Purged, Transaction};
use polis_core::store::validate_append;
use polis_core::{AppendResult, ExpectedVersion, Message, MessageKind, Metadata, NewEvent, RecordedEvent, StoreError};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::engine::is_unique_violation;
use super::{append_in_tx, from_micros, to_i64};
use crate::backend;

/// A transaction on a service's SQLite database.
///
/// Its statements run on the store's writer thread, synchronously: the
/// methods are `async` for the [`Transaction`] trait, but never wait.
#[derive(Debug)]
pub struct SqliteTx {
    pub(super) conn: Connection,
    /// The owning service, stamped on events read back.
    pub(super) source: String,
    /// Highest event position appended in the current group, if any.
    pub(super) appended: Option<u64>,
    /// Whether the current group wrote to the outbox.
    pub(super) sent: bool,
    /// Whether the last transaction's work asked to roll back (or panicked).
    pub(super) work_rolled_back: bool,
}

impl SqliteTx {
    pub(super) fn new(conn: Connection, source: String) -> Self {
        Self { conn, source, appended: None, sent: false, work_rolled_back: false }
    }

    /// The connection, for statements [`Sql`](crate::sql::Sql) does not
    /// cover. Everything written through it commits or rolls back with the
    /// transaction; do not open or end transactions on it.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[async_trait]
impl Transaction for SqliteTx {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, events)?;
        let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
        let result = append_in_tx(&self.conn, stream, expected.normalized(), events, &data)??;
        self.appended = Some(self.appended.unwrap_or(0).max(result.last_position));
        Ok(result)
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        super::read_stream_on(&self.conn, stream, from_version, max, &self.source)
    }

    async fn send(&mut self, message: &Message) -> Result<(), StoreError> {
        polis_core::message::validate_message(message).map_err(StoreError::InvalidRequest)?;
        if polis_core::store::json_has_nul(&message.data) {
            return Err(StoreError::InvalidRequest(format!("message {} contains a NUL character", message.id)));
        }
        self.conn
            .prepare_cached(
                "INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time_us, data, \
                 correlation_id, causation_id, traceparent, created_at_us) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut statement| {
                execute_for_message(&mut statement, message, polis_core::trace::for_outbox(message).as_deref(), &[])
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::InvalidRequest(format!("message {} is already in the outbox", message.id))
                } else {
                    backend(e)
                }
            })?;
        self.sent = true;
        Ok(())
    }

    async fn schedule(&mut self, message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError> {
        super::schedule::schedule(&self.conn, message, due_at)
    }

    async fn unschedule(&mut self, message_id: Uuid) -> Result<bool, StoreError> {
        super::schedule::unschedule(&self.conn, message_id)
    }

    async fn record_processed(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO polis_inbox (consumer, message_id, processed_at_us) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![consumer, message_id, Utc::now().timestamp_micros()]))
            .map_err(backend)?;
        Ok(inserted == 1)
    }

    async fn key_blocked(&mut self, consumer: &str, key: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM polis_dead_letters WHERE consumer = ?1 AND key = ?2 LIMIT 1")
            .and_then(|mut s| s.exists(params![consumer, key]))
            .map_err(backend)
    }

    async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let message = letter.message.as_ref().map(serde_json::to_string).transpose().map_err(backend)?;
        self.conn
            .prepare_cached(
                "INSERT INTO polis_dead_letters (id, consumer, status, message, message_id, key, raw, error, \
                 attempts, failed_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, error = excluded.error, \
                 attempts = excluded.attempts, failed_at_us = excluded.failed_at_us",
            )
            .and_then(|mut s| {
                s.execute(params![
                    letter.id,
                    letter.consumer,
                    letter.status.as_str(),
                    message,
                    letter.message_id,
                    letter.key,
                    letter.raw,
                    letter.error,
                    i64::from(letter.attempts),
                    letter.failed_at.timestamp_micros(),
                ])
            })
            .map_err(backend)?;
        Ok(())
    }

    async fn remove_dead_letter(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let deleted = self
            .conn
            .prepare_cached("DELETE FROM polis_dead_letters WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(backend)?;
        Ok(deleted == 1)
    }

    async fn release_due(&mut self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        super::schedule::release_due(self, now, max)
    }

    async fn acquire_lease(
        &mut self,
        name: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        crate::lease::acquire(self, name, owner, now, ttl).await
    }

    async fn hold_lease(
        &mut self,
        fence: &polis_core::lease::Fence,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        crate::lease::hold(self, fence, now, ttl).await
    }

    async fn release_lease(&mut self, name: &str, owner: Uuid) -> Result<(), StoreError> {
        crate::lease::release(self, name, owner).await
    }

    async fn leases_held(&mut self, prefix: &str, now: DateTime<Utc>) -> Result<Vec<(String, Uuid)>, StoreError> {
        crate::lease::held(self, prefix, now).await
    }
}

/// Runs `statement` with `message`'s outbox columns bound to `?1`..`?12`, in
/// the order of `polis_outbox`'s INSERT (`created_at_us`, now, last), with
/// `traceparent` in place of the message's own (what
/// [`polis_core::trace::for_outbox`] captured), and `extra` from `?13` on.
pub(super) fn execute_for_message(
    statement: &mut rusqlite::Statement<'_>,
    message: &Message,
    traceparent: Option<&str>,
    extra: &[i64],
) -> rusqlite::Result<usize> {
    statement.raw_bind_parameter(1, message.id)?;
    statement.raw_bind_parameter(2, message.kind.as_str())?;
    statement.raw_bind_parameter(3, &message.source)?;
    statement.raw_bind_parameter(4, &message.target)?;
    statement.raw_bind_parameter(5, &message.message_type)?;
    statement.raw_bind_parameter(6, &message.key)?;
    statement.raw_bind_parameter(7, message.time.timestamp_micros())?;
    statement.raw_bind_parameter(8, message.data.to_string())?;
    statement.raw_bind_parameter(9, message.metadata.correlation_id)?;
    statement.raw_bind_parameter(10, message.metadata.causation_id)?;
    statement.raw_bind_parameter(11, traceparent)?;
    statement.raw_bind_parameter(12, Utc::now().timestamp_micros())?;
    for (i, value) in extra.iter().enumerate() {
        statement.raw_bind_parameter(13 + i, value)?;
    }
    statement.raw_execute()
}

pub(super) fn unpublished(conn: &Connection, max: usize, in_flight: &[u64]) -> Result<Vec<OutboxEntry>, StoreError> {
    // Every row of polis_outbox is unpublished (publishing deletes it). The
    // positions in flight travel as one JSON array, whatever their number.
    let mut statement = conn
        .prepare_cached(
            "SELECT position, message_id, kind, source, target, message_type, key, time_us, data, correlation_id, \
             causation_id, traceparent, created_at_us FROM polis_outbox \
             WHERE position NOT IN (SELECT value FROM json_each(?1)) ORDER BY position LIMIT ?2",
        )
        .map_err(backend)?;
    let mut rows = statement.query(params![json_list(in_flight), to_i64(max as u64)]).map_err(backend)?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        entries.push(decode_entry(row)?);
    }
    Ok(entries)
}

pub(super) fn mark_published(conn: &Connection, positions: &[u64]) -> Result<(), StoreError> {
    // Moves the rows out of the outbox, keeping a narrow record for the
    // retention period; marking twice finds nothing left to move.
    let positions = json_list(positions);
    conn.prepare_cached(
        "INSERT INTO polis_outbox_published (message_id, position, created_at_us, published_at_us) \
         SELECT message_id, position, created_at_us, ?1 FROM polis_outbox \
         WHERE position IN (SELECT value FROM json_each(?2)) ORDER BY position",
    )
    .and_then(|mut s| s.execute(params![Utc::now().timestamp_micros(), positions]))
    .map_err(backend)?;
    conn.prepare_cached("DELETE FROM polis_outbox WHERE position IN (SELECT value FROM json_each(?1))")
        .and_then(|mut s| s.execute([&positions]))
        .map_err(backend)?;
    Ok(())
}

/// Positions as a JSON array, for `json_each`.
fn json_list(positions: &[u64]) -> String {
    let mut list = String::with_capacity(positions.len() * 8 + 2);
    list.push('[');
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&to_i64(*p).to_string());
    }
    list.push(']');
    list
}

pub(super) fn purge(conn: &Connection, before: DateTime<Utc>) -> Result<Purged, StoreError> {
    let before = before.timestamp_micros();
    let outbox = conn.execute("DELETE FROM polis_outbox_published WHERE published_at_us < ?1", [before]);
    let outbox = outbox.map_err(backend)? as u64;
    let inbox = conn.execute("DELETE FROM polis_inbox WHERE processed_at_us < ?1", [before]).map_err(backend)? as u64;
    let sagas = conn.execute("DELETE FROM polis_sagas WHERE finished AND updated_at_us < ?1", [before]);
    let sagas = sagas.map_err(backend)? as u64;
    Ok(Purged { outbox, inbox, sagas })
}

pub(super) fn backlog(conn: &Connection) -> Result<Backlog, StoreError> {
    let (unpublished, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT count(*), min(created_at_us) FROM polis_outbox")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    Ok(Backlog { unpublished: unpublished as u64, oldest: oldest.map(from_micros) })
}

/// The columns [`decode_dead_letter`] reads, in its order.
const DEAD_LETTER_COLUMNS: &str = "id, consumer, status, message, message_id, key, raw, error, attempts, failed_at_us";

pub(super) fn dead_letters(conn: &Connection, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters WHERE ?1 IS NULL OR consumer = ?1 ORDER BY rowid"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = statement.query([consumer]).map_err(backend)?;
    let mut letters = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        letters.push(decode_dead_letter(row)?);
    }
    Ok(letters)
}

/// A page of dead letters in id order: ids are blobs, compared byte by
/// byte, which is the UUIDs' own order.
pub(super) fn dead_letters_page(
    conn: &Connection,
    consumer: Option<&str>,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters \
         WHERE (?1 IS NULL OR consumer = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = statement
        .query(params![consumer, after.unwrap_or(Uuid::nil()), i64::try_from(limit).unwrap_or(i64::MAX)])
        .map_err(backend)?;
    let mut letters = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        letters.push(decode_dead_letter(row)?);
    }
    Ok(letters)
}

pub(super) fn find_dead_letter(conn: &Connection, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
    let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters WHERE id = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = statement.query([id]).map_err(backend)?;
    rows.next().map_err(backend)?.map(decode_dead_letter).transpose()
}

fn decode_dead_letter(row: &rusqlite::Row<'_>) -> Result<DeadLetter, StoreError> {
    let message: Option<String> = row.get(3).map_err(backend)?;
    let status: String = row.get(2).map_err(backend)?;
    Ok(DeadLetter {
        id: row.get(0).map_err(backend)?,
        consumer: row.get(1).map_err(backend)?,
        status: DeadLetterStatus::parse(&status).unwrap_or(DeadLetterStatus::Dead),
        message: message.map(|m| serde_json::from_str(&m)).transpose().map_err(backend)?,
        message_id: row.get(4).map_err(backend)?,
        key: row.get(5).map_err(backend)?,
        raw: row.get(6).map_err(backend)?,
        error: row.get(7).map_err(backend)?,
        attempts: u32::try_from(row.get::<_, i64>(8).map_err(backend)?).unwrap_or(u32::MAX),
        failed_at: from_micros(row.get(9).map_err(backend)?),
    })
}

/// Decodes an outbox row, columns in the order `unpublished` selects them.
fn decode_entry(row: &rusqlite::Row<'_>) -> Result<OutboxEntry, StoreError> {
    let position: i64 = row.get(0).map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt { position: position as u64, reason };
    let kind = row.get_ref(2).map_err(backend)?.as_str().map_err(|e| corrupt(e.to_string()))?;
    let data = row.get_ref(8).map_err(backend)?.as_str().map_err(|e| corrupt(e.to_string()))?;
    Ok(OutboxEntry {
        position: position as u64,
        message: Message {
            id: row.get(1).map_err(backend)?,
            kind: kind.parse::<MessageKind>().map_err(corrupt)?,
            source: row.get(3).map_err(backend)?,
            target: row.get(4).map_err(backend)?,
            message_type: row.get(5).map_err(backend)?,
            key: row.get(6).map_err(backend)?,
            time: from_micros(row.get(7).map_err(backend)?),
            data: serde_json::from_str(data).map_err(|e| corrupt(e.to_string()))?,
            metadata: Metadata {
                correlation_id: row.get(9).map_err(backend)?,
                causation_id: row.get(10).map_err(backend)?,
                traceparent: row.get(11).map_err(backend)?,
            },
        },
        created_at: from_micros(row.get(12).map_err(backend)?),
    })
}
