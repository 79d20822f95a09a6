//! The embedded event store: one SQLite file per service, in WAL mode.
//!
//! SQLite allows one writer at a time, so the store owns exactly one writing
//! connection, on a thread of its own (the writer). Appends and transactions
//! queue up on a channel and the writer commits everything queued in one
//! transaction (group commit): with many concurrent writers, one fsync covers
//! many of them. Each append keeps its own expected-version check, so one
//! conflict fails only its own append. Reads run on the caller's thread
//! through a small pool of read-only connections; WAL lets them run beside
//! the writer. Statements run synchronously through rusqlite, without a
//! thread hop each (see [`engine`] and ADR 0006).
//!
//! Because commits are serialized, positions (the rowid) are handed out in
//! commit order and a reader of the global log can never skip an event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use polis_core::outbox::{Backlog, DeadLetter, OutboxEntry, Purged, TransactionalStore, Work};
use polis_core::store::validate_append;
use polis_core::{
    AppendResult, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StoreError, StreamInfo,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::{backend, migrations};

pub mod engine;
mod outbox;
mod schedule;

pub use engine::Durability;
pub use outbox::SqliteTx;

use engine::{Readers, failure_message, is_unique_violation};

/// Appends committed together at most (bounded so one batch can't grow without limit).
const MAX_GROUP: usize = 256;
/// Events per INSERT statement (well under SQLite's bound-parameter limit).
const ROWS_PER_INSERT: usize = 256;

const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, \
     time_us, data, correlation_id, causation_id, traceparent";

/// Options for [`SqliteEventStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// CloudEvents `source` stamped on events: the owning service's name.
    pub source: String,
    /// Whether a commit waits for its fsync (default [`Durability::Full`]).
    pub durability: Durability,
    /// Idle read connections kept open.
    pub readers: u32,
    /// How long the integrity check at open (`PRAGMA quick_check`) may take
    /// before the store opens without its verdict (default 10 s); `None`
    /// skips it. A damaged file fails the open with [`StoreError::Damaged`].
    pub integrity_check: Option<Duration>,
}

/// The default bound on the integrity check at open.
pub const INTEGRITY_CHECK_BUDGET: Duration = Duration::from_secs(10);

impl SqliteOptions {
    /// Options for the service `source`: full durability, 4 idle readers.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            durability: Durability::Full,
            readers: 4,
            integrity_check: Some(INTEGRITY_CHECK_BUDGET),
        }
    }
}

/// The SQLite event store. Cheap to clone; clones share the writer.
#[derive(Debug, Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: String,
    path: PathBuf,
    readers: Readers,
    writer: mpsc::Sender<WriteRequest>,
    head: watch::Sender<u64>,
    outbox: watch::Sender<u64>,
}

tokio::task_local! {
    /// Set while a transaction's work runs on the writer: a call from there
    /// back into the store would wait for the writer, which waits for it.
    static ON_WRITER: ();
}

fn refuse_reentry() -> Result<(), StoreError> {
    match ON_WRITER.try_with(|()| ()) {
        Ok(()) => Err(StoreError::InvalidRequest(
            "the store was called from inside one of its own transactions (that would deadlock); \
             use the transaction's methods instead"
                .into(),
        )),
        Err(_) => Ok(()),
    }
}

/// Work a transaction runs on the writer; its result travels back type-erased.
type RunWork = Box<dyn for<'t> FnOnce(&'t mut SqliteTx) -> BoxFuture<'t, WorkDone> + Send>;

struct WorkDone {
    /// Keep the work's writes (its result was `Ok`).
    commit: bool,
    /// The work's `Result<T, E>`, handed back only once the group committed.
    value: Box<dyn std::any::Any + Send>,
}

struct WorkRequest {
    run: Option<RunWork>,
    reply: oneshot::Sender<Result<Box<dyn std::any::Any + Send>, StoreError>>,
}

impl std::fmt::Debug for WorkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkRequest").field("pending", &self.run.is_some()).finish()
    }
}

#[derive(Debug)]
enum WriteRequest {
    Work(WorkRequest),
    Append {
        stream: String,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        /// Each event's `data` as JSON text, serialized by the caller so the
        /// single writer does not spend its time on it.
        data: Vec<String>,
        reply: oneshot::Sender<Result<AppendResult, StoreError>>,
    },
    Snapshot {
        snapshot: Snapshot,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl SqliteEventStore {
    /// Opens (creating if needed) the database file at `path` and applies migrations.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        // Before the migrations, which would otherwise trip over a damaged
        // file first and report it less plainly. A new file has nothing to check.
        let existing = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        if let (Some(budget), true) = (options.integrity_check, existing) {
            check_integrity(&path, budget).await?;
        }
        run_migrations(&path, &migrations::sqlite()).await?;
        let writer = engine::open_writer(&path, options.durability).map_err(backend)?;
        let readers = Readers::open(&path, options.readers as usize).map_err(backend)?;
        let head_position = readers.read(current_head).map_err(backend)??;
        let (head, _) = watch::channel(head_position);
        let (outbox, _) = watch::channel(0);
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let state = SqliteTx::new(writer, options.source.clone());
        let signals = Signals { head: head.clone(), outbox: outbox.clone() };
        let (source, reopen) = (options.source.clone(), (path.clone(), options.durability));
        engine::spawn_writer_thread(format!("polis-sqlite-{}", options.source), move || {
            writer_loop(state, reopen, rx, signals, source)
        })
        .map_err(backend)?;
        let inner = Inner { source: options.source, path, readers, writer: tx, head, outbox };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The read pool, for reads the traits do not cover.
    pub fn readers(&self) -> &Readers {
        &self.inner.readers
    }

    /// Runs `read` on a reader connection, on this thread.
    fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.readers.read(read).map_err(backend)?
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteRequest,
    ) -> Result<T, StoreError> {
        refuse_reentry()?;
        let (reply, answer) = oneshot::channel();
        self.inner.writer.send(make(reply)).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

/// Refuses a damaged database file: SQLite's `quick_check`, bounded by
/// `budget` (off the async threads). A check that runs out of time is
/// logged and the file used, as before the check existed.
pub async fn check_integrity(path: &Path, budget: Duration) -> Result<(), StoreError> {
    let file = path.to_owned();
    let checked = tokio::task::spawn_blocking(move || engine::check_integrity(&file, budget))
        .await
        .map_err(backend)?
        .map_err(backend)?;
    match checked {
        engine::Integrity::Ok => Ok(()),
        engine::Integrity::Damaged(detail) => Err(StoreError::Damaged { file: path.display().to_string(), detail }),
        engine::Integrity::Unfinished => {
            tracing::warn!(file = %path.display(), ?budget, "the integrity check did not finish in time; opening without it");
            Ok(())
        }
    }
}

/// Applies `migrator` on a connection of its own: the writer may be inside a
/// group transaction, and migrations run their own transactions (SQLite's busy
/// timeout orders the two). Migrations are sqlx's, so their history table is
/// the one sqlx-based tools expect.
pub(crate) async fn run_migrations(path: &Path, migrator: &sqlx::migrate::Migrator) -> Result<(), StoreError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    // A pool of one, not a bare connection: `Migrator::run` on `&mut
    // SqliteConnection` trips rustc's higher-ranked `Send` check inside
    // async-trait methods (rust#100013).
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(backend)?;
    let result = migrator.run(&pool).await.map_err(backend);
    pool.close().await;
    result
}

fn writer_gone() -> StoreError {
    StoreError::backend("the sqlite writer has stopped")
}

#[async_trait]
impl EventStore for SqliteEventStore {
    fn source(&self) -> &str {
        &self.inner.source
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let stream = stream.to_owned();
        let data = events.iter().map(|e| e.data.to_string()).collect();
        self.submit(|reply| WriteRequest::Append { stream, expected: expected.normalized(), events, data, reply }).await
    }

    async fn read_stream(&self, stream: &str, from_version: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(|conn| read_stream_on(conn, stream, from_version, max, &self.inner.source))
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {EVENT_COLUMNS} FROM polis_events WHERE position > ?1 ORDER BY position LIMIT ?2")
        });
        self.read(|conn| {
            let mut statement = conn.prepare_cached(&SQL).map_err(backend)?;
            let rows = statement.query(params![to_i64(after), to_i64(max as u64)]).map_err(backend)?;
            decode_events(rows, &self.inner.source)
        })
    }

    async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>, StoreError> {
        let version = self.read(|conn| current_version_opt(conn, stream))?;
        Ok(version.map(|v| StreamInfo { version: v as u64 }))
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.read(current_head)
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let row = self.read(|conn| {
            conn.prepare_cached(
                "SELECT version, schema_version, state, taken_at_us FROM polis_snapshots WHERE stream_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([stream], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
                })
                .optional()
            })
            .map_err(backend)
        })?;
        let Some((version, schema_version, state, taken_at_us)) = row else { return Ok(None) };
        Ok(Some(Snapshot {
            stream_id: stream.to_owned(),
            version: version as u64,
            schema_version: u16::try_from(schema_version).map_err(backend)?,
            state: serde_json::from_str(&state).map_err(backend)?,
            taken_at: from_micros(taken_at_us),
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let snapshot = snapshot.clone();
        self.submit(|reply| WriteRequest::Snapshot { snapshot, reply }).await
    }
}

#[async_trait]
impl TransactionalStore for SqliteEventStore {
    type Tx = SqliteTx;

    fn service(&self) -> &str {
        &self.inner.source
    }

    fn groups_commits(&self) -> bool {
        true
    }

    async fn transaction_boxed<T, E>(&self, work: Work<SqliteTx, T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        // The work runs on the writer thread, under the caller's span: what
        // it logs, and the trace context its outbox writes capture, are the
        // caller's (polis_core::trace::for_outbox).
        let span = tracing::Span::current();
        let run = erase(move |tx| {
            Box::pin(
                async move {
                    let result = work(tx).await;
                    WorkDone { commit: result.is_ok(), value: Box::new(result) }
                }
                .instrument(span),
            )
        });
        refuse_reentry().map_err(E::from)?;
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest::Work(WorkRequest { run: Some(Box::new(run)), reply });
        self.inner.writer.send(request).await.map_err(|_| E::from(writer_gone()))?;
        let value = answer.await.map_err(|_| E::from(writer_gone()))?.map_err(E::from)?;
        match value.downcast::<Result<T, E>>() {
            Ok(result) => *result,
            Err(_) => Err(E::from(StoreError::backend("a transaction's result came back as another type"))),
        }
    }

    async fn unpublished(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(|conn| outbox::unpublished(conn, max, &[]))
    }

    async fn unpublished_excluding(&self, max: usize, in_flight: &[u64]) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(|conn| outbox::unpublished(conn, max, in_flight))
    }

    async fn mark_published(&self, positions: &[u64]) -> Result<(), StoreError> {
        let positions = positions.to_vec();
        self.transaction::<_, _, StoreError>(async move |tx| outbox::mark_published(&tx.conn, &positions)).await
    }

    fn outbox_wakeups(&self) -> watch::Receiver<u64> {
        self.inner.outbox.subscribe()
    }

    async fn outbox_backlog(&self) -> Result<Backlog, StoreError> {
        self.read(outbox::backlog)
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<Purged, StoreError> {
        self.transaction::<_, _, StoreError>(async move |tx| outbox::purge(&tx.conn, before)).await
    }

    async fn release_due(&self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        self.transaction::<_, _, StoreError>(async move |tx| schedule::release_due(tx, now, max)).await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(schedule::next_due)
    }

    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        self.read(schedule::count)
    }

    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| outbox::dead_letters(conn, consumer))
    }

    async fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn| outbox::dead_letters_page(conn, consumer, after, limit))
    }

    async fn find_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        self.read(|conn| outbox::find_dead_letter(conn, id))
    }
}

/// Pins a closure to the higher-ranked signature the writer expects.
fn erase<F>(f: F) -> F
where
    F: for<'t> FnOnce(&'t mut SqliteTx) -> BoxFuture<'t, WorkDone> + Send + 'static,
{
    f
}

fn current_head(conn: &Connection) -> Result<u64, StoreError> {
    let head: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM polis_events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    Ok(head as u64)
}

/// Where the writer announces commits.
#[derive(Debug)]
struct Signals {
    head: watch::Sender<u64>,
    outbox: watch::Sender<u64>,
}

/// Commits queued writes in groups until every handle to the store is dropped.
async fn writer_loop(
    mut tx: SqliteTx,
    reopen: (PathBuf, Durability),
    mut rx: mpsc::Receiver<WriteRequest>,
    signals: Signals,
    source: String,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let mut last_position = None;
        tx.appended = None;
        tx.sent = false;
        // A request that breaks the shared transaction (say, a duplicate event
        // id) is answered alone and the rest of the group is committed again:
        // one bad append costs one more transaction, not one per request.
        // (Groups with transactions isolate every request in a savepoint, so
        // they never need a second run.)
        while !group.is_empty() {
            match commit_group(&mut tx, &mut group).await {
                Ok(outcomes) => {
                    last_position = reply_all(std::mem::take(&mut group), outcomes).or(last_position);
                }
                Err(GroupFailure::Request { index, error, rolled_back }) => {
                    let culprit = group.remove(index);
                    reply_all(vec![culprit], vec![Err(error)]);
                    tx.appended = None;
                    tx.sent = false;
                    if !rolled_back {
                        reconnect(&mut tx, &reopen).await;
                    }
                }
                Err(GroupFailure::Transaction { error, rolled_back }) => {
                    // BEGIN or COMMIT failed (busy, disk full, I/O): nothing in the group
                    // is to blame alone, so all of it fails at once.
                    tracing::warn!(error = %polis_core::error::chain(&error), size = group.len(), "sqlite group commit failed");
                    let message = error.to_string();
                    let failures = group.iter().map(|_| Err(StoreError::backend(message.clone()))).collect();
                    reply_all(std::mem::take(&mut group), failures);
                    tx.appended = None;
                    tx.sent = false;
                    if !rolled_back {
                        reconnect(&mut tx, &reopen).await;
                    }
                }
            }
        }
        if let Some(position) = last_position.max(tx.appended) {
            signals.head.send_replace(position);
        }
        if tx.sent {
            signals.outbox.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
    tracing::debug!(source, "sqlite writer stopped");
}

/// Replaces a connection whose transaction state is unknown (a failed
/// ROLLBACK): SQLite rolls back whatever it left open when it closes.
async fn reconnect(tx: &mut SqliteTx, (path, durability): &(PathBuf, Durability)) {
    let mut pause = Duration::from_millis(50);
    loop {
        match engine::open_writer(path, *durability) {
            Ok(conn) => {
                // Dropping the old connection closes it.
                tx.conn = conn;
                return;
            }
            Err(e) => {
                tracing::error!(error = %polis_core::error::chain(&e), "cannot reopen the sqlite writer connection; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The outcome of one request inside a group transaction.
type Outcome = Result<Committed, StoreError>;

enum Committed {
    Append(AppendResult),
    Snapshot,
    /// A transaction's result, or the error it rolled back with.
    Work(Box<dyn std::any::Any + Send>),
}

/// Why a group transaction did not commit.
#[derive(Debug)]
enum GroupFailure {
    /// Request `index` failed; the transaction was rolled back (if `rolled_back`).
    Request { index: usize, error: StoreError, rolled_back: bool },
    /// BEGIN or COMMIT itself failed.
    Transaction { error: StoreError, rolled_back: bool },
}

/// Runs `group` in one IMMEDIATE transaction. Per-request expected-version
/// conflicts are outcomes; any other failure aborts the whole transaction,
/// unless the group holds transactions: then every request runs under its own
/// savepoint and only its own writes are undone.
async fn commit_group(tx: &mut SqliteTx, group: &mut [WriteRequest]) -> Result<Vec<Outcome>, GroupFailure> {
    // A lone append that fits one statement needs no explicit transaction:
    // the statement is one (and the writer is the database's only writer).
    if let [WriteRequest::Append { stream, expected, events, data, .. }] = group
        && events.len() <= ROWS_PER_INSERT
    {
        return match append_in_tx(&tx.conn, stream, *expected, events, data) {
            Ok(outcome) => Ok(vec![outcome.map(Committed::Append)]),
            Err(error) => Err(GroupFailure::Request { index: 0, error, rolled_back: true }),
        };
    }
    let isolate = group.iter().any(|r| matches!(r, WriteRequest::Work(_)));
    if let Err(e) = tx.conn.execute_batch("BEGIN IMMEDIATE") {
        return Err(GroupFailure::Transaction { error: backend(e), rolled_back: true });
    }
    // Optimistically write every append of the group with one statement; if
    // any of them is refused, the statement aborts as a whole and each append
    // runs on its own below, so only the refused ones fail.
    match append_all_at_once(&tx.conn, group) {
        Ok(Some(outcomes)) => return commit(tx).map(|()| outcomes),
        Ok(None) => {}
        Err(error) => return Err(abort(tx, error)),
    }
    let mut outcomes = Vec::with_capacity(group.len());
    for (index, request) in group.iter_mut().enumerate() {
        if isolate && let Err(e) = tx.conn.execute_batch("SAVEPOINT polis_request") {
            return Err(abort(tx, backend(e)));
        }
        let result = match request {
            WriteRequest::Append { stream, expected, events, data, .. } => {
                append_in_tx(&tx.conn, stream, *expected, events, data).map(|r| r.map(Committed::Append))
            }
            WriteRequest::Snapshot { snapshot, .. } => {
                save_snapshot_in_tx(&tx.conn, snapshot).map(|()| Ok(Committed::Snapshot))
            }
            WriteRequest::Work(work) => {
                let run = work.run.take();
                run_work(tx, run).await
            }
        };
        // Keep a request's writes unless it failed, or its work asked to roll back.
        let keep = matches!(result, Ok(Ok(_))) && !(matches!(request, WriteRequest::Work(_)) && tx.work_rolled_back);
        match result {
            Ok(outcome) if isolate => {
                let statement =
                    if keep { "RELEASE polis_request" } else { "ROLLBACK TO polis_request; RELEASE polis_request" };
                if let Err(e) = tx.conn.execute_batch(statement) {
                    return Err(abort(tx, backend(e)));
                }
                outcomes.push(outcome);
            }
            Ok(outcome) => outcomes.push(outcome),
            Err(error) if isolate => {
                if let Err(e) = tx.conn.execute_batch("ROLLBACK TO polis_request; RELEASE polis_request") {
                    return Err(abort(tx, backend(e)));
                }
                outcomes.push(Err(error));
            }
            Err(error) => {
                let rolled_back = tx.conn.execute_batch("ROLLBACK").is_ok();
                return Err(GroupFailure::Request { index, error, rolled_back });
            }
        }
    }
    commit(tx).map(|()| outcomes)
}

fn commit(tx: &mut SqliteTx) -> Result<(), GroupFailure> {
    match tx.conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let rolled_back = tx.conn.execute_batch("ROLLBACK").is_ok();
            Err(GroupFailure::Transaction { error: backend(e), rolled_back })
        }
    }
}

/// Writes all appends of `group` with one INSERT, if the group holds only
/// appends that fit one. `Ok(None)`: not applicable, or refused (the
/// statement was aborted and wrote nothing).
fn append_all_at_once(conn: &Connection, group: &[WriteRequest]) -> Result<Option<Vec<Outcome>>, StoreError> {
    let Some(appends) = group
        .iter()
        .map(|r| match r {
            WriteRequest::Append { stream, expected, events, data, .. } => {
                Some((stream.as_str(), *expected, events.as_slice(), data.as_slice()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let total: usize = appends.iter().map(|(_, _, events, _)| events.len()).sum();
    if appends.len() < 2 || total > ROWS_PER_INSERT {
        return Ok(None);
    }
    // Versions each append will take; several appends may target one stream.
    let mut latest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut rows: Vec<EventRow<'_>> = Vec::with_capacity(total);
    let mut spans = Vec::with_capacity(group.len());
    for (stream, expected, events, data) in appends {
        let base = match expected {
            ExpectedVersion::Any => match latest.get(stream) {
                Some(v) => *v,
                None => current_version(conn, stream)?,
            },
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => to_i64(v),
        };
        spans.push((rows.len(), events.len(), base + events.len() as i64));
        for (i, (e, json)) in events.iter().zip(data).enumerate() {
            rows.push((stream, base + 1 + i as i64, e, json));
        }
        latest.insert(stream, base + events.len() as i64);
    }
    let last = match insert_events(conn, &rows) {
        Ok(last) => last,
        Err(e) if is_version_conflict(&e) || is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(backend(e)),
    };
    // One writer, rowids max + 1 per row: the rows took a contiguous block in order.
    let first = last - total as i64 + 1;
    Ok(Some(
        spans
            .into_iter()
            .map(|(offset, count, version)| {
                let first_position = (first + offset as i64) as u64;
                Ok(Committed::Append(AppendResult {
                    stream_version: version as u64,
                    first_position,
                    last_position: first_position + count as u64 - 1,
                }))
            })
            .collect(),
    ))
}

/// Rolls the whole group back after a savepoint statement failed.
fn abort(tx: &mut SqliteTx, error: StoreError) -> GroupFailure {
    let rolled_back = tx.conn.execute_batch("ROLLBACK").is_ok();
    GroupFailure::Transaction { error, rolled_back }
}

/// Runs one transaction's work, catching a panic so it cannot take the writer down.
async fn run_work(tx: &mut SqliteTx, run: Option<RunWork>) -> Result<Outcome, StoreError> {
    let Some(run) = run else { return Err(StoreError::backend("transaction work ran twice")) };
    tx.work_rolled_back = false;
    match ON_WRITER.scope((), std::panic::AssertUnwindSafe(run(tx)).catch_unwind()).await {
        Ok(done) => {
            tx.work_rolled_back = !done.commit;
            Ok(Ok(Committed::Work(done.value)))
        }
        Err(_) => {
            tx.work_rolled_back = true;
            Ok(Err(StoreError::backend("the transaction's work panicked")))
        }
    }
}

/// Sends each outcome to its requester; returns the highest position committed.
fn reply_all(group: Vec<WriteRequest>, outcomes: Vec<Outcome>) -> Option<u64> {
    let mut last = None;
    for (request, outcome) in group.into_iter().zip(outcomes) {
        match request {
            WriteRequest::Append { reply, .. } => {
                let outcome = outcome.and_then(|c| match c {
                    Committed::Append(r) => Ok(r),
                    _ => Err(writer_gone()),
                });
                if let Ok(r) = &outcome {
                    last = Some(r.last_position);
                }
                let _ = reply.send(outcome);
            }
            WriteRequest::Snapshot { reply, .. } => {
                let _ = reply.send(outcome.map(|_| ()));
            }
            WriteRequest::Work(work) => {
                let _ = work.reply.send(outcome.and_then(|c| match c {
                    Committed::Work(value) => Ok(value),
                    _ => Err(writer_gone()),
                }));
            }
        }
    }
    last
}

/// Inserts the events with the versions `expected` implies; the stream
/// triggers check and bump the version row by row (migration 0003).
/// `Ok(Err(_))` means the append was refused (conflict, duplicate id) and
/// wrote nothing; `Err(_)` means the surrounding transaction is in doubt.
fn append_in_tx(
    conn: &Connection,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    data: &[String],
) -> Result<Result<AppendResult, StoreError>, StoreError> {
    let count = events.len() as i64;
    let base = match expected {
        ExpectedVersion::Any => current_version(conn, stream)?,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(v) => to_i64(v),
    };
    let mut last_position = 0;
    for (chunk_index, (chunk, chunk_data)) in
        events.chunks(ROWS_PER_INSERT).zip(data.chunks(ROWS_PER_INSERT)).enumerate()
    {
        let rows: Vec<EventRow<'_>> = chunk
            .iter()
            .zip(chunk_data)
            .enumerate()
            .map(|(i, (e, json))| (stream, base + 1 + (chunk_index * ROWS_PER_INSERT + i) as i64, e, json))
            .collect();
        match insert_events(conn, &rows) {
            Ok(last) => last_position = last,
            // A constraint aborts only its own statement: if nothing of this
            // append was written yet, it is refused and the group goes on.
            Err(e) if chunk_index == 0 && is_version_conflict(&e) => {
                let actual = current_version(conn, stream)?;
                return Ok(Err(StoreError::Conflict { stream: stream.to_owned(), expected, actual: actual as u64 }));
            }
            Err(e) if chunk_index == 0 && is_unique_violation(&e) => return Ok(Err(duplicate_or_backend(e, chunk))),
            Err(e) => return Err(duplicate_or_backend(e, chunk)),
        }
    }
    let new_version = base + count;
    // Rowids are max + 1 per row and this is the only writer, so the block is contiguous.
    Ok(Ok(AppendResult {
        stream_version: new_version as u64,
        first_position: (last_position - count + 1) as u64,
        last_position: last_position as u64,
    }))
}

fn save_snapshot_in_tx(conn: &Connection, s: &Snapshot) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO polis_snapshots (stream_id, version, schema_version, state, taken_at_us) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, schema_version = excluded.schema_version, \
         state = excluded.state, taken_at_us = excluded.taken_at_us WHERE excluded.version >= polis_snapshots.version",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            s.stream_id,
            to_i64(s.version),
            i64::from(s.schema_version),
            s.state.to_string(),
            s.taken_at.timestamp_micros()
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// One event row to insert: stream, the version it takes, the event, its JSON data.
type EventRow<'a> = (&'a str, i64, &'a NewEvent, &'a String);

/// Columns bound per event row.
const EVENT_PARAMS: usize = 10;

/// Inserts `rows` into the event log with one statement; returns the last rowid.
fn insert_events(conn: &Connection, rows: &[EventRow<'_>]) -> rusqlite::Result<i64> {
    let mut sql = String::with_capacity(160 + rows.len() * 24);
    sql.push_str(
        "INSERT INTO polis_events (event_id, stream_id, stream_version, event_type, schema_version, time_us, \
         data, correlation_id, causation_id, traceparent) VALUES ",
    );
    for i in 0..rows.len() {
        sql.push_str(if i == 0 { "(?,?,?,?,?,?,?,?,?,?)" } else { ",(?,?,?,?,?,?,?,?,?,?)" });
    }
    let mut statement = conn.prepare_cached(&sql)?;
    for (i, (stream, version, e, json)) in rows.iter().enumerate() {
        let at = i * EVENT_PARAMS;
        statement.raw_bind_parameter(at + 1, e.id)?;
        statement.raw_bind_parameter(at + 2, stream)?;
        statement.raw_bind_parameter(at + 3, version)?;
        statement.raw_bind_parameter(at + 4, e.event_type.as_str())?;
        statement.raw_bind_parameter(at + 5, i64::from(e.schema_version))?;
        statement.raw_bind_parameter(at + 6, e.time.timestamp_micros())?;
        statement.raw_bind_parameter(at + 7, json.as_str())?;
        statement.raw_bind_parameter(at + 8, e.metadata.correlation_id)?;
        statement.raw_bind_parameter(at + 9, e.metadata.causation_id)?;
        statement.raw_bind_parameter(at + 10, e.metadata.traceparent.as_deref())?;
    }
    statement.raw_execute()?;
    Ok(conn.last_insert_rowid())
}

fn current_version_opt(conn: &Connection, stream: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT version FROM polis_streams WHERE stream_id = ?1")
        .and_then(|mut s| s.query_row([stream], |r| r.get(0)).optional())
        .map_err(backend)
}

fn current_version(conn: &Connection, stream: &str) -> Result<i64, StoreError> {
    Ok(current_version_opt(conn, stream)?.unwrap_or(0))
}

fn is_version_conflict(e: &rusqlite::Error) -> bool {
    failure_message(e).is_some_and(|m| m.contains("polis: stream version conflict"))
}

fn duplicate_or_backend(e: rusqlite::Error, events: &[NewEvent]) -> StoreError {
    let is_duplicate_id = is_unique_violation(&e) && failure_message(&e).is_some_and(|m| m.contains("event_id"));
    match (is_duplicate_id, events) {
        // The statement does not say which id; a one-event append can.
        (true, [only]) => StoreError::DuplicateEventId(only.id),
        (true, _) => StoreError::InvalidRequest("an event id of this append is already stored".into()),
        _ => backend(e),
    }
}

/// One stream's events from `from_version` on, through any connection (a
/// reader, or the writer inside a transaction), stamped with `source`.
pub(super) fn read_stream_on(
    conn: &Connection,
    stream: &str,
    from_version: u64,
    max: usize,
    source: &str,
) -> Result<Vec<RecordedEvent>, StoreError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {EVENT_COLUMNS} FROM polis_events WHERE stream_id = ?1 AND stream_version >= ?2 \
             ORDER BY stream_version LIMIT ?3"
        )
    });
    let mut statement = conn.prepare_cached(&SQL).map_err(backend)?;
    let rows = statement.query(params![stream, to_i64(from_version), to_i64(max as u64)]).map_err(backend)?;
    decode_events(rows, source)
}

fn decode_events(mut rows: rusqlite::Rows<'_>, source: &str) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(decode_event(row, source)?);
    }
    Ok(events)
}

/// Decodes a row of [`EVENT_COLUMNS`], in that order.
fn decode_event(row: &rusqlite::Row<'_>, source: &str) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0).map_err(backend)?;
    let corrupt = |reason: String| StoreError::Corrupt { position: position as u64, reason };
    let data = row.get_ref(7).map_err(backend)?.as_str().map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        id: row.get(1).map_err(backend)?,
        source: source.to_owned(),
        stream_id: row.get(2).map_err(backend)?,
        stream_version: row.get::<_, i64>(3).map_err(backend)? as u64,
        event_type: row.get(4).map_err(backend)?,
        schema_version: u16::try_from(row.get::<_, i64>(5).map_err(backend)?).map_err(|e| corrupt(e.to_string()))?,
        time: from_micros(row.get(6).map_err(backend)?),
        data: serde_json::from_str(data).map_err(|e| corrupt(e.to_string()))?,
        global_position: position as u64,
        metadata: polis_core::Metadata {
            correlation_id: row.get(8).map_err(backend)?,
            causation_id: row.get(9).map_err(backend)?,
            traceparent: row.get(10).map_err(backend)?,
        },
    })
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
