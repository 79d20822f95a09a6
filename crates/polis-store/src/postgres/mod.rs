//! The distributed event store: one PostgreSQL database per service.
//!
//! An append is one statement (one round trip, no explicit transaction): it
//! checks and bumps the stream's row in `polis_streams`, then inserts the
//! events with positions drawn from a sequence, all or nothing.
//!
//! Sequence values are handed out at insert time, not commit time, so a
//! transaction holding position 7 can commit after one holding position 8. A
//! reader that trusted "position > checkpoint" would skip 7. This store keeps
//! a *visibility horizon* instead (docs/adr/0001-global-ordering.md):
//!
//! 1. Every appender gets its transaction id before it draws a position (the
//!    stream row is written first, in the same statement).
//! 2. A horizon poll is one statement that reads the oldest running xid
//!    (`xmin` of its snapshot), takes a fresh xid `n` for itself, and reads
//!    the sequence's last value `h`. Because polls run one after another, the
//!    `h` of poll *k* pairs with the `n` of poll *k + 1*: everyone who drew a
//!    position `<= h` got its xid before `n` was handed out, so its xid is
//!    below `n`. (The snapshot's own `xmax` is no such bound: it is only the
//!    latest *completed* xid + 1, and a newer running writer sits above it.)
//! 3. Once a later poll sees `xmin >= n`, every transaction with an xid below
//!    `n` has ended, and positions `<= h` are final: `read_all` never returns
//!    a position above the horizon.
//!
//! Writers pay nothing for this; readers pay one small query (and one xid,
//! without a WAL flush) per poll, and wait for in-flight appends
//! (milliseconds) before they pass them.
//!
//! **Wake-up hints.** After a commit that appended events or sent messages,
//! the store wakes its own readers and relay in-process, and other
//! processes on the same database (other instances of the service) through
//! a NOTIFY, at most one per channel and millisecond. It sends those only
//! while it knows another process listens: each store LISTENs from the
//! start, says `hello` on [`PEERS_CHANNEL`] when its listener connects
//! (the others answer `here`) and `here` every [`PRESENCE_EVERY`]; a store
//! that heard from no other process for three times that sends no hints.
//! A lone instance thus pays no round trip for hints, and a hint that is
//! not sent is only a wake-up later: readers and relays also poll.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::outbox::{Backlog, DeadLetter, OutboxEntry, Purged, TransactionalStore, Work};
use polis_core::store::validate_append;
use polis_core::{
    AppendResult, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Snapshot, StoreError, StreamInfo,
};
use sqlx::postgres::{PgListener, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{backend, migrations};

mod outbox;
mod schedule;

pub use outbox::PgTx;

/// The LISTEN/NOTIFY channel that carries the "new events" hint (never a payload).
pub const NOTIFY_CHANNEL: &str = "polis_events";
/// The LISTEN/NOTIFY channel that carries the "outbox has messages" hint.
pub const OUTBOX_CHANNEL: &str = "polis_outbox";
/// The LISTEN/NOTIFY channel on which stores of one database tell each
/// other that they are there (`hello:<sender>`, answered by
/// `here:<sender>`): hints are sent only while another one is.
pub const PEERS_CHANNEL: &str = "polis_peers";
/// How often a store says it is there; one that was not heard from for
/// three times this is gone.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(5);

const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, \
     time, data, correlation_id, causation_id, traceparent";

/// Options for [`PgEventStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// CloudEvents `source` stamped on events: the owning service's name.
    pub source: String,
    /// Most connections the pool opens (default 16); appends, reads and
    /// transactions wait for one when all are busy.
    pub max_connections: u32,
    /// How long `read_all` waits for in-flight appends below the head before
    /// it returns only what is final so far (and logs a warning).
    pub horizon_wait: Duration,
}

impl PgOptions {
    /// Options for the service `source`: 16 connections, a 10 s horizon wait.
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), max_connections: 16, horizon_wait: Duration::from_secs(10) }
    }
}

/// The PostgreSQL event store. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: String,
    pool: PgPool,
    horizon: Mutex<Horizon>,
    /// `horizon.safe`, readable without waiting for a poll in progress.
    settled: AtomicU64,
    horizon_wait: Duration,
    wakeups: watch::Sender<u64>,
    outbox: watch::Sender<u64>,
    /// Changed by other processes' outbox hints only.
    peer_outbox: watch::Sender<u64>,
    notify_outbox: Arc<Notify>,
    /// Coalesces local appends into one NOTIFY each, sent off the append path.
    notify: Arc<Notify>,
    notifier: JoinHandle<()>,
    /// The payload of this store's NOTIFYs.
    sender: String,
    listener: OnceLock<JoinHandle<()>>,
    /// When another process on this database was last heard from.
    peers: Arc<Peers>,
}

/// When another store of the database was last heard from: hints are sent
/// only while it is recent.
#[derive(Debug, Default)]
struct Peers {
    /// Milliseconds since this store started; 0: never.
    heard_at_ms: AtomicU64,
    started: std::sync::OnceLock<std::time::Instant>,
}

impl Peers {
    fn now_ms(&self) -> u64 {
        let started = self.started.get_or_init(std::time::Instant::now);
        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    fn heard(&self) {
        self.heard_at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn present(&self) -> bool {
        let heard = self.heard_at_ms.load(Ordering::Relaxed);
        heard != 0 && self.now_ms().saturating_sub(heard) < 3 * PRESENCE_EVERY.as_millis() as u64
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.notifier.abort();
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl PgEventStore {
    /// Connects to the service's database at `url` and applies migrations.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            // Every append and read is one statement; a ping before each would
            // double the round trips. A dead connection fails its statement and
            // is replaced.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(backend)?;
        Self::from_pool(pool, options).await
    }

    /// Uses an existing pool (its database must be this service's own) and applies migrations.
    pub async fn from_pool(pool: PgPool, options: PgOptions) -> Result<Self, StoreError> {
        migrations::postgres().run(&pool).await.map_err(backend)?;
        // The horizon reads the sequence's last value as "every position handed
        // out so far"; a per-session cache would make it run ahead (ADR 0001).
        let cache: Option<i64> = sqlx::query_scalar(
            "SELECT cache_size FROM pg_sequences WHERE schemaname = current_schema() \
             AND sequencename = 'polis_event_position'",
        )
        .fetch_optional(&pool)
        .await
        .map_err(backend)?;
        if cache != Some(1) {
            return Err(StoreError::backend(format!(
                "sequence polis_event_position must have CACHE 1 (found {cache:?}); a cache lets readers skip events"
            )));
        }
        let notify = Arc::new(Notify::new());
        let notify_outbox = Arc::new(Notify::new());
        // Signs this store's hints, so that its own listener can tell them
        // from other processes' and skip them: local readers were woken
        // directly already.
        let sender = Uuid::now_v7().simple().to_string();
        let peers = Arc::new(Peers::default());
        peers.now_ms();
        let hints = Hints { events: notify.clone(), outbox: notify_outbox.clone(), peers: peers.clone() };
        let notifier = tokio::spawn(notifier_loop(pool.clone(), hints, sender.clone()));
        let (wakeups, _) = watch::channel(0);
        let (outbox, _) = watch::channel(0);
        let (peer_outbox, _) = watch::channel(0);
        let store = Self {
            inner: Arc::new(Inner {
                source: options.source,
                pool,
                horizon: Mutex::new(Horizon::default()),
                settled: AtomicU64::new(0),
                horizon_wait: options.horizon_wait,
                wakeups,
                outbox,
                peer_outbox,
                notify_outbox,
                notify,
                notifier,
                sender,
                listener: OnceLock::new(),
                peers,
            }),
        };
        // From the start, so that other processes learn of this one.
        store.start_listener();
        Ok(store)
    }

    /// The connection pool, for a service's own queries outside polis's API
    /// (the service's database is the store's).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The highest position below which the log is final, after waiting (up to
    /// `horizon_wait`) for every append in flight at the time of the call.
    async fn settled_horizon(&self) -> Result<u64, StoreError> {
        let mut horizon = self.inner.horizon.lock().await;
        let target = horizon.poll(&self.inner.pool).await?;
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_micros(200);
        while horizon.safe < target {
            if started.elapsed() > self.inner.horizon_wait {
                tracing::warn!(
                    safe = horizon.safe,
                    target,
                    "a transaction that appended events is still open; reading only up to the settled horizon"
                );
                break;
            }
            // Release the lock while sleeping so other readers can poll too.
            drop(horizon);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            horizon = self.inner.horizon.lock().await;
            horizon.poll(&self.inner.pool).await?;
        }
        self.inner.settled.fetch_max(horizon.safe, Ordering::Relaxed);
        Ok(horizon.safe)
    }

    /// Appends inside the caller's transaction, so the events commit (or roll
    /// back) with the caller's other writes. Call [`Self::signal_new_events`]
    /// after the commit to wake readers at once rather than at their next poll.
    pub async fn append_in_tx(
        &self,
        tx: &mut sqlx::PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        self.append_with(tx, stream, expected, events).await
    }

    /// Wakes this process's readers and, through NOTIFY, every other listener.
    pub fn signal_new_events(&self) {
        self.inner.wakeups.send_modify(|_| {});
        self.inner.notify.notify_one();
    }

    async fn append_with<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, events)?;
        let expected = expected.normalized();
        let count = events.len() as i64;
        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut schema_versions = Vec::with_capacity(events.len());
        let mut times = Vec::with_capacity(events.len());
        let mut data = Vec::with_capacity(events.len());
        let mut correlations = Vec::with_capacity(events.len());
        let mut causations = Vec::with_capacity(events.len());
        let mut traceparents = Vec::with_capacity(events.len());
        for e in events {
            ids.push(e.id);
            types.push(e.event_type.as_str());
            schema_versions.push(i32::from(e.schema_version));
            times.push(e.time);
            data.push(&e.data);
            correlations.push(e.metadata.correlation_id);
            causations.push(e.metadata.causation_id);
            traceparents.push(e.metadata.traceparent.as_deref());
        }
        let expected_version = match expected {
            ExpectedVersion::Exact(v) => to_i64(v),
            _ => 0,
        };
        let query =
            sqlx::query(append_sql(expected, events.len() == 1)).bind(stream).bind(count).bind(expected_version);
        let query = match events {
            // One event (the common command): plain parameters, no arrays to build or unnest.
            [e] => query
                .bind(e.id)
                .bind(e.event_type.as_str())
                .bind(i32::from(e.schema_version))
                .bind(e.time)
                .bind(&e.data)
                .bind(e.metadata.correlation_id)
                .bind(e.metadata.causation_id)
                .bind(e.metadata.traceparent.as_deref()),
            _ => query
                .bind(&ids)
                .bind(&types)
                .bind(&schema_versions)
                .bind(&times)
                .bind(&data)
                .bind(&correlations)
                .bind(&causations)
                .bind(&traceparents),
        };
        let rows = query.fetch_all(executor).await.map_err(|e| duplicate_or_backend(e, events))?;

        if rows.is_empty() {
            let actual = self.stream_info(stream).await?.map_or(0, |s| s.version);
            return Err(StoreError::Conflict { stream: stream.to_owned(), expected, actual });
        }
        let mut first = i64::MAX;
        let mut last = 0;
        let mut version = 0;
        for row in &rows {
            let position: i64 = row.try_get(0).map_err(backend)?;
            first = first.min(position);
            last = last.max(position);
            version = version.max(row.try_get::<i64, _>(1).map_err(backend)?);
        }
        Ok(AppendResult { stream_version: version as u64, first_position: first as u64, last_position: last as u64 })
    }

    async fn read_range(&self, after: u64, up_to: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM polis_events WHERE position > $1 AND position <= $2 \
                 ORDER BY position LIMIT $3"
            )
        });
        let rows = sqlx::query(&SQL)
            .bind(to_i64(after))
            .bind(to_i64(up_to))
            .bind(to_i64(max as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(|r| decode_row(r, &self.inner.source)).collect()
    }

    fn start_listener(&self) {
        self.inner.listener.get_or_init(|| {
            let pool = self.inner.pool.clone();
            let wakeups = self.inner.wakeups.clone();
            let outbox = [self.inner.outbox.clone(), self.inner.peer_outbox.clone()];
            let peers = self.inner.peers.clone();
            tokio::spawn(listener_loop(pool, wakeups, outbox, peers, self.inner.sender.clone()))
        });
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn source(&self) -> &str {
        &self.inner.source
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let result = self.append_with(&self.inner.pool, stream, expected, &events).await?;
        self.signal_new_events();
        Ok(result)
    }

    async fn read_stream(&self, stream: &str, from_version: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // Per-stream reads need no horizon: the stream row lock orders the
        // commits of one stream, so its versions become visible in order.
        let mut conn = self.inner.pool.acquire().await.map_err(backend)?;
        read_stream_on(&mut conn, stream, from_version, max, &self.inner.source).await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // Fast path: history below the already-known horizon needs no polling.
        let known = self.inner.settled.load(Ordering::Relaxed);
        if known > after {
            let batch = self.read_range(after, known, max).await?;
            if batch.len() == max {
                return Ok(batch);
            }
        }
        let safe = self.settled_horizon().await?;
        self.read_range(after, safe, max).await
    }

    async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM polis_streams WHERE stream_id = $1")
            .bind(stream)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(version.map(|v| StreamInfo { version: v as u64 }))
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 =
            sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM polis_event_position")
                .fetch_one(&self.inner.pool)
                .await
                .map_err(backend)?;
        Ok(head as u64)
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wakeups.subscribe()
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let row =
            sqlx::query("SELECT version, schema_version, state, taken_at FROM polis_snapshots WHERE stream_id = $1")
                .bind(stream)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Snapshot {
            stream_id: stream.to_owned(),
            version: row.try_get::<i64, _>("version").map_err(backend)? as u64,
            schema_version: row.try_get::<i32, _>("schema_version").map_err(backend)? as u16,
            state: row.try_get("state").map_err(backend)?,
            taken_at: row.try_get("taken_at").map_err(backend)?,
        }))
    }

    async fn save_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO polis_snapshots (stream_id, version, schema_version, state, taken_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
             schema_version = excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version >= polis_snapshots.version",
        )
        .bind(&s.stream_id)
        .bind(to_i64(s.version))
        .bind(i32::from(s.schema_version))
        .bind(&s.state)
        .bind(s.taken_at)
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

impl PgEventStore {
    /// Wakes this process's relay and, through NOTIFY, relays elsewhere.
    pub fn signal_outbox(&self) {
        self.inner.outbox.send_modify(|n| *n = n.wrapping_add(1));
        self.inner.notify_outbox.notify_one();
    }
}

#[async_trait]
impl TransactionalStore for PgEventStore {
    type Tx = PgTx;

    fn service(&self) -> &str {
        &self.inner.source
    }

    async fn transaction_boxed<T, E>(&self, work: Work<PgTx, T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let tx = self.inner.pool.begin().await.map_err(|e| E::from(backend(e)))?;
        let mut tx = PgTx { tx, store: self.clone(), appended: false, sent: false, pending: Vec::new() };
        let mut result = work(&mut tx).await;
        if result.is_ok()
            && let Err(e) = tx.write_pending().await
        {
            result = Err(E::from(e));
        }
        let PgTx { tx, appended, sent, .. } = tx;
        match result {
            Ok(value) => {
                tx.commit().await.map_err(|e| E::from(backend(e)))?;
                if appended {
                    self.signal_new_events();
                }
                if sent {
                    self.signal_outbox();
                }
                Ok(value)
            }
            Err(e) => {
                // A failed rollback leaves nothing behind: dropping the connection aborts it.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn unpublished(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox::unpublished(&self.inner.pool, max, &[]).await
    }

    async fn unpublished_excluding(&self, max: usize, in_flight: &[u64]) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox::unpublished(&self.inner.pool, max, in_flight).await
    }

    async fn mark_published(&self, positions: &[u64]) -> Result<(), StoreError> {
        outbox::mark_published(&self.inner.pool, positions).await
    }

    fn outbox_wakeups(&self) -> watch::Receiver<u64> {
        self.inner.outbox.subscribe()
    }

    fn peer_outbox_wakeups(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.peer_outbox.subscribe())
    }

    async fn outbox_backlog(&self) -> Result<Backlog, StoreError> {
        outbox::backlog(&self.inner.pool).await
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<Purged, StoreError> {
        outbox::purge(&self.inner.pool, before).await
    }

    async fn release_due(&self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        self.transaction::<_, _, StoreError>(async move |tx| schedule::release_due(tx, now, max).await).await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        schedule::next_due(&self.inner.pool).await
    }

    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        schedule::count(&self.inner.pool).await
    }

    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        outbox::dead_letters(&self.inner.pool, consumer).await
    }

    async fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        outbox::dead_letters_page(&self.inner.pool, consumer, after, limit).await
    }

    async fn find_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        outbox::find_dead_letter(&self.inner.pool, id).await
    }
}

/// The append statement for one kind of expectation.
///
/// `stream` writes the stream row first (which assigns the transaction id),
/// `batch` orders the events, and only then are positions drawn, in event
/// order, by `nextval` over the materialized, sorted batch. No row from
/// `stream` (a failed expectation) means nothing is inserted.
fn append_sql(expected: ExpectedVersion, single: bool) -> &'static str {
    fn build(stream_cte: &str, single: bool) -> String {
        let insert = "INSERT INTO polis_events (position, event_id, stream_id, stream_version, event_type, \
                      schema_version, time, data, correlation_id, causation_id, traceparent)";
        if single {
            // The row only exists once `stream` has written (and so holds an xid).
            return format!(
                "WITH stream AS ({stream_cte} RETURNING version) \
                 {insert} SELECT nextval('polis_event_position'), $4, $1, stream.version - $2 + 1, $5, $6, $7, \
                        $8, $9, $10, $11 FROM stream \
                 RETURNING position, stream_version"
            );
        }
        format!(
            "WITH stream AS ({stream_cte} RETURNING version), \
             batch AS MATERIALIZED ( \
                 SELECT e.*, stream.version - $2 + e.ord AS stream_version \
                 FROM stream, unnest($4::uuid[], $5::text[], $6::int4[], $7::timestamptz[], $8::jsonb[], \
                                     $9::uuid[], $10::uuid[], $11::text[]) \
                      WITH ORDINALITY AS e(event_id, event_type, schema_version, time, data, \
                                           correlation_id, causation_id, traceparent, ord) \
                 ORDER BY e.ord) \
             {insert} \
             SELECT nextval('polis_event_position'), event_id, $1, stream_version, event_type, schema_version, \
                    time, data, correlation_id, causation_id, traceparent \
             FROM batch \
             RETURNING position, stream_version"
        )
    }
    const ANY: &str = "INSERT INTO polis_streams (stream_id, version) VALUES ($1, $2) \
         ON CONFLICT (stream_id) DO UPDATE SET version = polis_streams.version + excluded.version WHERE $3 = $3";
    const NO_STREAM: &str = "INSERT INTO polis_streams (stream_id, version) SELECT $1, $2 WHERE $3 = $3 \
         ON CONFLICT (stream_id) DO NOTHING";
    const EXACT: &str = "UPDATE polis_streams SET version = version + $2 WHERE stream_id = $1 AND version = $3";
    static STATEMENTS: LazyLock<[[String; 2]; 3]> =
        LazyLock::new(|| [ANY, NO_STREAM, EXACT].map(|cte| [build(cte, false), build(cte, true)]));
    let kind = match expected {
        ExpectedVersion::Any => 0,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => 1,
        ExpectedVersion::Exact(_) => 2,
    };
    &STATEMENTS[kind][usize::from(single)]
}

/// The reader-side state of the visibility horizon (see the module docs).
#[derive(Debug, Default)]
struct Horizon {
    /// Every position `<= safe` is final: committed or never to appear.
    safe: u64,
    /// `h` of the previous poll, waiting to pair with the next poll's fresh xid.
    last_head: Option<u64>,
    /// `(h, n)`: `h` becomes safe once the oldest running xid is at least `n`.
    pending: VecDeque<(u64, u64)>,
}

impl Horizon {
    /// Runs one poll; returns the head `h` it read. Callers serialize polls
    /// (the horizon sits behind a mutex): the pairing relies on their order.
    async fn poll(&mut self, pool: &PgPool) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8, pg_current_xact_id()::text::int8, \
                    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM polis_event_position)",
        )
        .fetch_one(pool)
        .await
        .map_err(backend)?;
        let xmin: i64 = row.try_get(0).map_err(backend)?;
        let fresh_xid: i64 = row.try_get(1).map_err(backend)?;
        let head: i64 = row.try_get(2).map_err(backend)?;
        self.observe(xmin as u64, fresh_xid as u64, head as u64);
        Ok(head as u64)
    }

    fn observe(&mut self, xmin: u64, fresh_xid: u64, head: u64) {
        if let Some(previous) = self.last_head.replace(head) {
            // Equal heads keep the earlier entry: its bound is lower, so it settles sooner.
            if previous > self.safe && self.pending.back().is_none_or(|&(h, _)| h < previous) {
                self.pending.push_back((previous, fresh_xid));
            }
        }
        while let Some(&(h, bound)) = self.pending.front() {
            if xmin < bound {
                break;
            }
            self.safe = self.safe.max(h);
            self.pending.pop_front();
        }
    }
}

/// What [`notifier_loop`] hints about, and whether anyone else listens.
struct Hints {
    events: Arc<Notify>,
    outbox: Arc<Notify>,
    peers: Arc<Peers>,
}

async fn notifier_loop(pool: PgPool, hints: Hints, sender: String) {
    let mut presence = tokio::time::interval(PRESENCE_EVERY);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (channel, payload) = tokio::select! {
            () = hints.events.notified() => (NOTIFY_CHANNEL, sender.clone()),
            () = hints.outbox.notified() => (OUTBOX_CHANNEL, sender.clone()),
            _ = presence.tick() => (PEERS_CHANNEL, format!("here:{sender}")),
        };
        // Nobody else to wake: the local readers were woken directly.
        if channel != PEERS_CHANNEL && !hints.peers.present() {
            continue;
        }
        notify(&pool, channel, &payload).await;
        // At most one hint per millisecond: every NOTIFY takes a cluster-wide
        // lock at commit; a reader loses at most a millisecond.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends one NOTIFY; only a hint, so a failure is logged and forgotten
/// (listeners fall back to polling).
async fn notify(pool: &PgPool, channel: &str, payload: &str) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(pool).await {
        tracing::debug!(error = %e, channel, "failed to send a wake-up hint");
    }
}

async fn listener_loop(
    pool: PgPool,
    events: watch::Sender<u64>,
    // All outbox wake-ups, and those of other processes only.
    outbox: [watch::Sender<u64>; 2],
    peers: Arc<Peers>,
    sender: String,
) {
    let wake_outbox = || outbox.iter().for_each(|o| o.send_modify(|_| {}));
    let (hello, here) = (format!("hello:{sender}"), format!("here:{sender}"));
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot LISTEN for hints; polling until it works");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen_all([NOTIFY_CHANNEL, OUTBOX_CHANNEL, PEERS_CHANNEL]).await {
            tracing::debug!(error = %e, "LISTEN failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whoever else listens answers, and starts sending hints.
        notify(&pool, PEERS_CHANNEL, &hello).await;
        // After (re)connecting, hints may have been missed: wake everyone once.
        events.send_modify(|_| {});
        wake_outbox();
        loop {
            match listener.try_recv().await {
                // This store's own hint (or greeting): its readers were woken when it was sent.
                Ok(Some(n)) if n.payload() == sender || n.payload() == hello || n.payload() == here => {}
                Ok(Some(n)) if n.channel() == PEERS_CHANNEL => {
                    peers.heard();
                    if n.payload().starts_with("hello:") {
                        let pool = pool.clone();
                        let here = here.clone();
                        tokio::spawn(async move { notify(&pool, PEERS_CHANNEL, &here).await });
                    }
                }
                Ok(Some(n)) if n.channel() == OUTBOX_CHANNEL => {
                    peers.heard();
                    wake_outbox();
                }
                Ok(Some(_)) => {
                    peers.heard();
                    events.send_modify(|_| {});
                }
                // The connection dropped and will be re-established: hints
                // may be lost, and peers that came meanwhile are not known.
                Ok(None) => {
                    events.send_modify(|_| {});
                    wake_outbox();
                    let (pool, hello) = (pool.clone(), hello.clone());
                    tokio::spawn(async move { notify(&pool, PEERS_CHANNEL, &hello).await });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection failed");
                    break;
                }
            }
        }
    }
}

fn duplicate_or_backend(e: sqlx::Error, events: &[NewEvent]) -> StoreError {
    let duplicate = e
        .as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.constraint() == Some("polis_events_event_id_key"));
    match (duplicate, events) {
        (true, [only]) => StoreError::DuplicateEventId(only.id),
        (true, _) => StoreError::InvalidRequest("an event id of this append is already stored".into()),
        _ => backend(e),
    }
}

/// One stream's events from `from_version` on, through any connection (the
/// pool's, or a transaction's, which also sees its own appends).
pub(super) async fn read_stream_on(
    conn: &mut PgConnection,
    stream: &str,
    from_version: u64,
    max: usize,
    source: &str,
) -> Result<Vec<RecordedEvent>, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {EVENT_COLUMNS} FROM polis_events WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        )
    });
    let rows = sqlx::query(&SQL)
        .bind(stream)
        .bind(to_i64(from_version))
        .bind(to_i64(max as u64))
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
    rows.iter().map(|r| decode_row(r, source)).collect()
}

fn decode_row(row: &PgRow, source: &str) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get("position").map_err(backend)?;
    let time: DateTime<Utc> = row.try_get("time").map_err(backend)?;
    Ok(RecordedEvent {
        id: row.try_get::<Uuid, _>("event_id").map_err(backend)?,
        source: source.to_owned(),
        event_type: row.try_get("event_type").map_err(backend)?,
        stream_id: row.try_get("stream_id").map_err(backend)?,
        stream_version: row.try_get::<i64, _>("stream_version").map_err(backend)? as u64,
        global_position: position as u64,
        schema_version: u16::try_from(row.try_get::<i32, _>("schema_version").map_err(backend)?)
            .map_err(|e| StoreError::Corrupt { position: position as u64, reason: e.to_string() })?,
        time,
        data: row.try_get("data").map_err(backend)?,
        metadata: Metadata {
            correlation_id: row.try_get("correlation_id").map_err(backend)?,
            causation_id: row.try_get("causation_id").map_err(backend)?,
            traceparent: row.try_get("traceparent").map_err(backend)?,
        },
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::Horizon;

    #[test]
    fn head_settles_only_after_every_xid_below_a_later_fresh_xid_has_ended() {
        let mut h = Horizon::default();
        // poll 1: head 10 read; no pairing yet
        h.observe(100, 105, 10);
        assert_eq!(h.safe, 0, "a head is never safe in the poll that read it");
        // poll 2: fresh xid 107 bounds everyone who drew <= 10, but 100 still runs
        h.observe(100, 107, 12);
        assert_eq!(h.safe, 0);
        // poll 3: the oldest running xid is 107 -> 10 is final; 12 pairs with 110
        h.observe(107, 110, 12);
        assert_eq!(h.safe, 10);
        // poll 4: nothing older than 111 runs
        h.observe(111, 111, 12);
        assert_eq!(h.safe, 12);
        assert!(h.pending.is_empty());
    }

    #[test]
    fn a_running_writer_above_every_completed_xid_holds_the_horizon() {
        // The case a snapshot's xmax gets wrong: writer 500 is the newest xid
        // and still running, nothing older runs, so xmin = 500.
        let mut h = Horizon::default();
        h.observe(500, 501, 7); // head 7 includes writer 500's position
        h.observe(500, 502, 7); // 7 pairs with fresh xid 502; 500 < 502 still runs
        assert_eq!(h.safe, 0);
        h.observe(503, 503, 7);
        assert_eq!(h.safe, 7);
    }
}
