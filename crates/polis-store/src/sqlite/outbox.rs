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
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{append_in_tx, from_micros, to_i64};
use crate::backend;

/// A transaction on a service's SQLite database.
#[derive(Debug)]
pub struct SqliteTx {
    pub(super) conn: SqliteConnection,
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
    /// The connection, for the service's own tables. Everything written
    /// through it commits or rolls back with the transaction.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
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
        let result = append_in_tx(&mut self.conn, stream, expected.normalized(), events, &data).await??;
        self.appended = Some(self.appended.unwrap_or(0).max(result.last_position));
        Ok(result)
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = super::read_stream_on(&mut self.conn, stream, from_version, max).await?;
        for event in &mut events {
            event.source.clone_from(&self.source);
        }
        Ok(events)
    }

    async fn send(&mut self, message: &Message) -> Result<(), StoreError> {
        polis_core::message::validate_message(message).map_err(StoreError::InvalidRequest)?;
        if polis_core::store::json_has_nul(&message.data) {
            return Err(StoreError::InvalidRequest(format!("message {} contains a NUL character", message.id)));
        }
        sqlx::query(
            "INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time_us, data, \
             correlation_id, causation_id, traceparent, created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(message.id)
        .bind(message.kind.as_str())
        .bind(&message.source)
        .bind(&message.target)
        .bind(&message.message_type)
        .bind(&message.key)
        .bind(message.time.timestamp_micros())
        .bind(message.data.to_string())
        .bind(message.metadata.correlation_id)
        .bind(message.metadata.causation_id)
        .bind(message.metadata.traceparent.as_deref())
        .bind(Utc::now().timestamp_micros())
        .execute(&mut self.conn)
        .await
        .map_err(|e| duplicate_message(e, message.id))?;
        self.sent = true;
        Ok(())
    }

    async fn schedule(&mut self, message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError> {
        super::schedule::schedule(&mut self.conn, message, due_at).await
    }

    async fn unschedule(&mut self, message_id: Uuid) -> Result<bool, StoreError> {
        super::schedule::unschedule(&mut self.conn, message_id).await
    }

    async fn record_processed(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO polis_inbox (consumer, message_id, processed_at_us) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(Utc::now().timestamp_micros())
        .execute(&mut self.conn)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn key_blocked(&mut self, consumer: &str, key: &str) -> Result<bool, StoreError> {
        let blocked: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM polis_dead_letters WHERE consumer = ? AND key = ? LIMIT 1")
                .bind(consumer)
                .bind(key)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(backend)?;
        Ok(blocked.is_some())
    }

    async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let message = letter.message.as_ref().map(serde_json::to_string).transpose().map_err(backend)?;
        sqlx::query(
            "INSERT INTO polis_dead_letters (id, consumer, status, message, message_id, key, raw, error, attempts, \
             failed_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, error = excluded.error, \
             attempts = excluded.attempts, failed_at_us = excluded.failed_at_us",
        )
        .bind(letter.id)
        .bind(&letter.consumer)
        .bind(letter.status.as_str())
        .bind(message)
        .bind(letter.message_id)
        .bind(letter.key.as_deref())
        .bind(letter.raw.as_deref())
        .bind(&letter.error)
        .bind(i64::from(letter.attempts))
        .bind(letter.failed_at.timestamp_micros())
        .execute(&mut self.conn)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn remove_dead_letter(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM polis_dead_letters WHERE id = ?")
            .bind(id)
            .execute(&mut self.conn)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}

fn duplicate_message(e: sqlx::Error, id: Uuid) -> StoreError {
    if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
        StoreError::InvalidRequest(format!("message {id} is already in the outbox"))
    } else {
        backend(e)
    }
}

pub(super) async fn unpublished(
    pool: &SqlitePool,
    max: usize,
    in_flight: &[u64],
) -> Result<Vec<OutboxEntry>, StoreError> {
    // Every row of polis_outbox is unpublished (publishing deletes it). The
    // positions in flight travel as one JSON array, whatever their number.
    let rows = sqlx::query(
        "SELECT position, message_id, kind, source, target, message_type, key, time_us, data, correlation_id, \
         causation_id, traceparent, created_at_us FROM polis_outbox \
         WHERE position NOT IN (SELECT value FROM json_each(?)) ORDER BY position LIMIT ?",
    )
    .bind(json_list(in_flight))
    .bind(to_i64(max as u64))
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter().map(decode_entry).collect()
}

pub(super) async fn mark_published(conn: &mut SqliteConnection, positions: &[u64]) -> Result<(), StoreError> {
    // Moves the rows out of the outbox, keeping a narrow record for the
    // retention period; marking twice finds nothing left to move.
    let positions = json_list(positions);
    sqlx::query(
        "INSERT INTO polis_outbox_published (message_id, position, created_at_us, published_at_us) \
         SELECT message_id, position, created_at_us, ? FROM polis_outbox \
         WHERE position IN (SELECT value FROM json_each(?)) ORDER BY position",
    )
    .bind(Utc::now().timestamp_micros())
    .bind(&positions)
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    sqlx::query("DELETE FROM polis_outbox WHERE position IN (SELECT value FROM json_each(?))")
        .bind(&positions)
        .execute(&mut *conn)
        .await
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

pub(super) async fn purge(conn: &mut SqliteConnection, before: DateTime<Utc>) -> Result<Purged, StoreError> {
    let before = before.timestamp_micros();
    let outbox = sqlx::query("DELETE FROM polis_outbox_published WHERE published_at_us < ?")
        .bind(before)
        .execute(&mut *conn)
        .await
        .map_err(backend)?
        .rows_affected();
    let inbox = sqlx::query("DELETE FROM polis_inbox WHERE processed_at_us < ?")
        .bind(before)
        .execute(&mut *conn)
        .await
        .map_err(backend)?
        .rows_affected();
    Ok(Purged { outbox, inbox })
}

pub(super) async fn backlog(pool: &SqlitePool) -> Result<Backlog, StoreError> {
    let row = sqlx::query("SELECT count(*) AS n, min(created_at_us) AS oldest FROM polis_outbox")
        .fetch_one(pool)
        .await
        .map_err(backend)?;
    let unpublished: i64 = row.try_get("n").map_err(backend)?;
    let oldest: Option<i64> = row.try_get("oldest").map_err(backend)?;
    Ok(Backlog { unpublished: unpublished as u64, oldest: oldest.map(from_micros) })
}

pub(super) async fn dead_letters(pool: &SqlitePool, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, consumer, status, message, message_id, key, raw, error, attempts, failed_at_us \
         FROM polis_dead_letters WHERE ?1 IS NULL OR consumer = ?1 ORDER BY rowid",
    )
    .bind(consumer)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let message: Option<String> = row.try_get("message").map_err(backend)?;
            let status: String = row.try_get("status").map_err(backend)?;
            Ok(DeadLetter {
                id: row.try_get("id").map_err(backend)?,
                consumer: row.try_get("consumer").map_err(backend)?,
                status: DeadLetterStatus::parse(&status).unwrap_or(DeadLetterStatus::Dead),
                message: message.map(|m| serde_json::from_str(&m)).transpose().map_err(backend)?,
                message_id: row.try_get("message_id").map_err(backend)?,
                key: row.try_get("key").map_err(backend)?,
                raw: row.try_get("raw").map_err(backend)?,
                error: row.try_get("error").map_err(backend)?,
                attempts: row.try_get::<i64, _>("attempts").map_err(backend)? as u32,
                failed_at: from_micros(row.try_get("failed_at_us").map_err(backend)?),
            })
        })
        .collect()
}

fn decode_entry(row: &SqliteRow) -> Result<OutboxEntry, StoreError> {
    let position: i64 = row.try_get("position").map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt { position: position as u64, reason };
    let kind: String = row.try_get("kind").map_err(backend)?;
    let data: String = row.try_get("data").map_err(backend)?;
    Ok(OutboxEntry {
        position: position as u64,
        message: Message {
            id: row.try_get("message_id").map_err(backend)?,
            kind: kind.parse::<MessageKind>().map_err(corrupt)?,
            source: row.try_get("source").map_err(backend)?,
            target: row.try_get("target").map_err(backend)?,
            message_type: row.try_get("message_type").map_err(backend)?,
            key: row.try_get("key").map_err(backend)?,
            time: from_micros(row.try_get("time_us").map_err(backend)?),
            data: serde_json::from_str(&data).map_err(|e| corrupt(e.to_string()))?,
            metadata: Metadata {
                correlation_id: row.try_get("correlation_id").map_err(backend)?,
                causation_id: row.try_get("causation_id").map_err(backend)?,
                traceparent: row.try_get("traceparent").map_err(backend)?,
            },
        },
        created_at: from_micros(row.try_get("created_at_us").map_err(backend)?),
    })
}
