//! Transactions, outbox, inbox and dead letters on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::outbox::{Backlog, DeadLetter, DeadLetterStatus, Handling, OutboxEntry, Purged, Transaction};
use polis_core::{AppendResult, ExpectedVersion, Message, MessageKind, Metadata, NewEvent, RecordedEvent, StoreError};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::{PgEventStore, to_i64};
use crate::backend;

/// A transaction on a service's PostgreSQL database.
#[derive(Debug)]
pub struct PgTx {
    pub(super) tx: sqlx::Transaction<'static, Postgres>,
    pub(super) store: PgEventStore,
    pub(super) appended: bool,
    pub(super) sent: bool,
    /// Messages sent and not yet written: [`PgTx::flush`] writes them all
    /// in one statement, at the latest just before the commit.
    pub(super) pending: Vec<Pending>,
}

/// A message [`Transaction::send`] accepted, with the `traceparent` taken
/// when it was sent (in the sender's span, not the flush's).
#[derive(Debug)]
pub(super) struct Pending {
    message: Message,
    traceparent: Option<String>,
}

impl PgTx {
    /// The connection, for the service's own tables. Everything written
    /// through it commits or rolls back with the transaction.
    ///
    /// Messages [`send`](Transaction::send) accepted are written to the
    /// outbox when the transaction commits (or [`flush`](Transaction::flush)es),
    /// not at once: a query of `polis_outbox` through this connection sees
    /// them only after a flush.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Scheduling an id this transaction sent is refused, as scheduling
    /// one already in the outbox is.
    fn refuse_pending(&self, message: &Message) -> Result<(), StoreError> {
        match self.pending.iter().any(|p| p.message.id == message.id) {
            true => Err(StoreError::InvalidRequest(format!("message {} is already in the outbox", message.id))),
            false => Ok(()),
        }
    }

    /// [`Transaction::flush`]: one statement for all the messages sent so
    /// far, which first takes their keys' locks in key order (held to
    /// commit, they make position order the commit order per key) and
    /// inserts them in the order they were sent.
    pub(super) async fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let column = |f: fn(&Pending) -> String| pending.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<Uuid> = pending.iter().map(|p| p.message.id).collect();
        let times: Vec<DateTime<Utc>> = pending.iter().map(|p| p.message.time).collect();
        let data: Vec<&serde_json::Value> = pending.iter().map(|p| &p.message.data).collect();
        let correlations: Vec<Option<Uuid>> = pending.iter().map(|p| p.message.metadata.correlation_id).collect();
        let causations: Vec<Option<Uuid>> = pending.iter().map(|p| p.message.metadata.causation_id).collect();
        let traceparents: Vec<Option<&str>> = pending.iter().map(|p| p.traceparent.as_deref()).collect();
        sqlx::query(
            "INSERT INTO polis_outbox (message_id, kind, source, target, message_type, key, time, data, \
             correlation_id, causation_id, traceparent) \
             SELECT m.id, m.kind, m.source, m.target, m.message_type, m.key, m.time, m.data, m.correlation_id, \
                    m.causation_id, m.traceparent \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                         $7::timestamptz[], $8::jsonb[], $9::uuid[], $10::uuid[], $11::text[]) WITH ORDINALITY \
                  AS m (id, kind, source, target, message_type, key, time, data, correlation_id, causation_id, \
                        traceparent, n), \
                  (SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7041))) \
                   FROM (SELECT DISTINCT k FROM unnest($6::text[]) AS k ORDER BY k) AS keys) AS key_locks \
             ORDER BY m.n",
        )
        .bind(&ids)
        .bind(column(|p| p.message.kind.as_str().to_owned()))
        .bind(column(|p| p.message.source.clone()))
        .bind(column(|p| p.message.target.clone()))
        .bind(column(|p| p.message.message_type.clone()))
        .bind(column(|p| p.message.key.clone()))
        .bind(&times)
        .bind(&data)
        .bind(&correlations)
        .bind(&causations)
        .bind(&traceparents)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| {
            if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
                StoreError::InvalidRequest(format!("a message of {ids:?} is already in the outbox"))
            } else {
                backend(e)
            }
        })?;
        Ok(())
    }
}

#[async_trait]
impl Transaction for PgTx {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        let store = self.store.clone();
        let result = store.append_in_tx(&mut self.tx, stream, expected, events).await?;
        self.appended = true;
        Ok(result)
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        super::read_stream_on(&mut self.tx, stream, from_version, max, &self.store.inner.source).await
    }

    async fn send(&mut self, message: &Message) -> Result<(), StoreError> {
        polis_core::message::validate_message(message).map_err(StoreError::InvalidRequest)?;
        if polis_core::store::json_has_nul(&message.data) {
            return Err(StoreError::InvalidRequest(format!("message {} contains a NUL character", message.id)));
        }
        // Written at the flush, which refuses an id already in the outbox.
        let traceparent = polis_core::trace::for_outbox(message).map(std::borrow::Cow::into_owned);
        self.pending.push(Pending { message: message.clone(), traceparent });
        self.sent = true;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        self.write_pending().await
    }

    async fn ensure_committable(&mut self) -> Result<(), StoreError> {
        // In a failed transaction the pending write fails too.
        let checked = match self.pending.is_empty() {
            false => self.write_pending().await,
            true => sqlx::query("SELECT 1").execute(&mut *self.tx).await.map(drop).map_err(backend),
        };
        checked.map_err(|e| match e {
            StoreError::Backend(source) if aborted(source.as_ref()) => StoreError::backend(
                "a statement of this transaction failed earlier and its error was ignored: \
                 PostgreSQL can only roll the transaction back",
            ),
            other => other,
        })
    }

    async fn schedule(&mut self, message: &Message, due_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.refuse_pending(message)?;
        super::schedule::schedule(&mut self.tx, message, due_at).await
    }

    async fn unschedule(&mut self, message_id: Uuid) -> Result<bool, StoreError> {
        super::schedule::unschedule(&mut self.tx, message_id).await
    }

    async fn reschedule(&mut self, old: Uuid, message: &Message, due_at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.refuse_pending(message)?;
        super::schedule::reschedule(&mut self.tx, old, message, due_at).await
    }

    async fn record_processed(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO polis_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(consumer)
            .bind(message_id)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn begin_handling(&mut self, consumer: &str, message_id: Uuid, key: &str) -> Result<Handling, StoreError> {
        // One round trip instead of two. The dead-letter check sees the same
        // snapshot the insert does; parking re-checks under the key's lock.
        let row = sqlx::query(
            "WITH recorded AS (INSERT INTO polis_inbox (consumer, message_id) VALUES ($1, $2) \
                               ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM recorded) AS first, \
                    EXISTS (SELECT 1 FROM polis_dead_letters WHERE consumer = $1 AND key = $3) AS blocked",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(key)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(backend)?;
        let first: bool = row.try_get("first").map_err(backend)?;
        let blocked: bool = row.try_get("blocked").map_err(backend)?;
        Ok(Handling { first, blocked: first && blocked })
    }

    async fn begin_handling_many(
        &mut self,
        consumer: &str,
        messages: &[(Uuid, String)],
    ) -> Result<Vec<Handling>, StoreError> {
        let ids: Vec<Uuid> = messages.iter().map(|(id, _)| *id).collect();
        let keys: Vec<&str> = messages.iter().map(|(_, key)| key.as_str()).collect();
        let rows = sqlx::query(
            "WITH m AS (SELECT * FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS m (id, key, n)), \
                  recorded AS (INSERT INTO polis_inbox (consumer, message_id) SELECT $1, id FROM m \
                               ON CONFLICT DO NOTHING RETURNING message_id) \
             SELECT EXISTS (SELECT 1 FROM recorded WHERE recorded.message_id = m.id) AS first, \
                    EXISTS (SELECT 1 FROM polis_dead_letters d WHERE d.consumer = $1 AND d.key = m.key) AS blocked \
             FROM m ORDER BY m.n",
        )
        .bind(consumer)
        .bind(&ids)
        .bind(&keys)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let first: bool = row.try_get("first").map_err(backend)?;
                let blocked: bool = row.try_get("blocked").map_err(backend)?;
                Ok(Handling { first, blocked: first && blocked })
            })
            .collect()
    }

    async fn begin_handling_as(
        &mut self,
        fence: &polis_core::lease::Fence,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
        consumer: &str,
        message_id: Uuid,
        key: &str,
    ) -> Result<Option<Handling>, StoreError> {
        // The lease's renewal, the inbox record and the dead-letter check in
        // one round trip; nothing is recorded if the tenure is over.
        let row = sqlx::query(
            "WITH held AS (UPDATE polis_leases SET expires_at_us = $4 \
                           WHERE name = $5 AND owner = $6 AND token = $7 AND expires_at_us >= $8 RETURNING 1), \
                  recorded AS (INSERT INTO polis_inbox (consumer, message_id) \
                               SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM held) \
                               ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM held) AS held, EXISTS (SELECT 1 FROM recorded) AS first, \
                    EXISTS (SELECT 1 FROM polis_dead_letters WHERE consumer = $1 AND key = $3) AS blocked",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(key)
        .bind(crate::lease::until(now, ttl))
        .bind(&fence.name)
        .bind(fence.owner.to_string())
        .bind(i64::try_from(fence.token).unwrap_or(i64::MAX))
        .bind(crate::lease::micros(now))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(backend)?;
        if !row.try_get::<bool, _>("held").map_err(backend)? {
            return Ok(None);
        }
        let first: bool = row.try_get("first").map_err(backend)?;
        let blocked: bool = row.try_get("blocked").map_err(backend)?;
        Ok(Some(Handling { first, blocked: first && blocked }))
    }

    async fn key_blocked(&mut self, consumer: &str, key: &str) -> Result<bool, StoreError> {
        let blocked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM polis_dead_letters WHERE consumer = $1 AND key = $2 LIMIT 1")
                .bind(consumer)
                .bind(key)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(backend)?;
        Ok(blocked.is_some())
    }

    async fn lock_key(&mut self, consumer: &str, key: &str) -> Result<(), StoreError> {
        // A statement of its own: the caller's next statement takes a fresh
        // snapshot, so it sees what the previous holder of the lock committed.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 7042))")
            .bind(consumer)
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        let message = letter.message.as_ref().map(serde_json::to_value).transpose().map_err(backend)?;
        sqlx::query(
            "INSERT INTO polis_dead_letters (id, consumer, status, message, message_id, key, raw, error, attempts, \
             failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, error = excluded.error, \
             attempts = excluded.attempts, failed_at = excluded.failed_at",
        )
        .bind(letter.id)
        .bind(&letter.consumer)
        .bind(letter.status.as_str())
        .bind(message)
        .bind(letter.message_id)
        .bind(letter.key.as_deref())
        .bind(letter.raw.as_deref().map(|r| r.replace('\0', "\u{FFFD}")))
        .bind(letter.error.replace('\0', "\u{FFFD}"))
        .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
        .bind(letter.failed_at)
        .execute(&mut *self.tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn remove_dead_letter(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM polis_dead_letters WHERE id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_due(&mut self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        // What this transaction sent goes first, as if written at `send`.
        self.write_pending().await?;
        super::schedule::release_due(self, now, max).await
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

pub(super) async fn unpublished(pool: &PgPool, max: usize, in_flight: &[u64]) -> Result<Vec<OutboxEntry>, StoreError> {
    // Every row of polis_outbox is unpublished (publishing deletes it), so
    // this is an ordered scan of the primary key. Rows a pipelining relay has
    // in flight are left out by position, not by a cursor: a lower position
    // can commit after a higher one, and must still be found.
    //
    // Not a prepared statement when positions are excluded: planned with the
    // array as a constant, PostgreSQL hashes it, while a cached generic plan
    // compares each row scanned with every position in flight (measured: 15
    // ms instead of 0.4 ms per batch of 500 with 1,000 positions in flight).
    let persistent = in_flight.is_empty();
    let in_flight: Vec<i64> = in_flight.iter().map(|p| to_i64(*p)).collect();
    let rows = sqlx::query(
        "SELECT position, message_id, kind, source, target, message_type, key, time, data, correlation_id, \
         causation_id, traceparent, created_at FROM polis_outbox WHERE position <> ALL($1) \
         ORDER BY position LIMIT $2",
    )
    .persistent(persistent)
    .bind(&in_flight)
    .bind(to_i64(max as u64))
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter().map(decode_entry).collect()
}

pub(super) async fn mark_published(pool: &PgPool, positions: &[u64]) -> Result<(), StoreError> {
    // Moves the rows out of the outbox, keeping a narrow record for the
    // retention period (see the 202611220002 migration). Marking twice is a
    // no-op: the second DELETE finds nothing to move.
    let positions: Vec<i64> = positions.iter().map(|p| to_i64(*p)).collect();
    sqlx::query(
        "WITH published AS (DELETE FROM polis_outbox WHERE position = ANY($1) \
                            RETURNING message_id, position, created_at) \
         INSERT INTO polis_outbox_published (message_id, position, created_at, published_at) \
         SELECT message_id, position, created_at, now() FROM published ORDER BY position",
    )
    .bind(&positions)
    .execute(pool)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn purge(pool: &PgPool, before: DateTime<Utc>) -> Result<Purged, StoreError> {
    let outbox = sqlx::query("DELETE FROM polis_outbox_published WHERE published_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map_err(backend)?
        .rows_affected();
    let inbox = sqlx::query("DELETE FROM polis_inbox WHERE processed_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map_err(backend)?
        .rows_affected();
    let sagas = sqlx::query("DELETE FROM polis_sagas WHERE finished AND updated_at_us < $1")
        .bind(before.timestamp_micros())
        .execute(pool)
        .await
        .map_err(backend)?
        .rows_affected();
    Ok(Purged { outbox, inbox, sagas })
}

pub(super) async fn backlog(pool: &PgPool) -> Result<Backlog, StoreError> {
    let row = sqlx::query("SELECT count(*) AS n, min(created_at) AS oldest FROM polis_outbox")
        .fetch_one(pool)
        .await
        .map_err(backend)?;
    let unpublished: i64 = row.try_get("n").map_err(backend)?;
    Ok(Backlog { unpublished: unpublished as u64, oldest: row.try_get("oldest").map_err(backend)? })
}

/// The columns [`decode_dead_letter`] reads.
const DEAD_LETTER_COLUMNS: &str = "id, consumer, status, message, message_id, key, raw, error, attempts, failed_at";

pub(super) async fn dead_letters(pool: &PgPool, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters WHERE $1::text IS NULL OR consumer = $1 ORDER BY id"
    );
    let rows = sqlx::query(&sql).bind(consumer).fetch_all(pool).await.map_err(backend)?;
    rows.iter().map(decode_dead_letter).collect()
}

pub(super) async fn dead_letters_page(
    pool: &PgPool,
    consumer: Option<&str>,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters \
         WHERE ($1::text IS NULL OR consumer = $1) AND id > $2 ORDER BY id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(consumer)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter().map(decode_dead_letter).collect()
}

pub(super) async fn find_dead_letter(pool: &PgPool, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
    let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM polis_dead_letters WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await.map_err(backend)?;
    row.as_ref().map(decode_dead_letter).transpose()
}

fn decode_dead_letter(row: &PgRow) -> Result<DeadLetter, StoreError> {
    let message: Option<serde_json::Value> = row.try_get("message").map_err(backend)?;
    let status: String = row.try_get("status").map_err(backend)?;
    Ok(DeadLetter {
        id: row.try_get("id").map_err(backend)?,
        consumer: row.try_get("consumer").map_err(backend)?,
        status: DeadLetterStatus::parse(&status).unwrap_or(DeadLetterStatus::Dead),
        message: message.map(serde_json::from_value).transpose().map_err(backend)?,
        message_id: row.try_get("message_id").map_err(backend)?,
        key: row.try_get("key").map_err(backend)?,
        raw: row.try_get("raw").map_err(backend)?,
        error: row.try_get("error").map_err(backend)?,
        attempts: row.try_get::<i32, _>("attempts").map_err(backend)? as u32,
        failed_at: row.try_get("failed_at").map_err(backend)?,
    })
}

/// Decodes a row of [`unpublished`]'s SELECT. Columns are read by their
/// place in that list: a relay decodes every message it publishes, and a
/// lookup by name hashes the name each time.
fn decode_entry(row: &PgRow) -> Result<OutboxEntry, StoreError> {
    let position: i64 = row.try_get(0).map_err(backend)?;
    let kind: &str = row.try_get(2).map_err(backend)?;
    Ok(OutboxEntry {
        position: position as u64,
        message: Message {
            id: row.try_get(1).map_err(backend)?,
            kind: kind
                .parse::<MessageKind>()
                .map_err(|reason| StoreError::Corrupt { position: position as u64, reason })?,
            source: row.try_get(3).map_err(backend)?,
            target: row.try_get(4).map_err(backend)?,
            message_type: row.try_get(5).map_err(backend)?,
            key: row.try_get(6).map_err(backend)?,
            time: row.try_get(7).map_err(backend)?,
            data: row.try_get(8).map_err(backend)?,
            metadata: Metadata {
                correlation_id: row.try_get(9).map_err(backend)?,
                causation_id: row.try_get(10).map_err(backend)?,
                traceparent: row.try_get(11).map_err(backend)?,
            },
        },
        created_at: row.try_get(12).map_err(backend)?,
    })
}

/// Whether `error` (or what it wraps) is PostgreSQL's "current transaction
/// is aborted" (SQLSTATE 25P02).
fn aborted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>()
            && db.code().as_deref() == Some("25P02")
        {
            return true;
        }
        next = e.source();
    }
    false
}
