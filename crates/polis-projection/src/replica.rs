//! Replicas that bootstrap: another service's current state, copied once
//! into this service's log, then kept up to date by its events.
//!
//! A replica is a projection like any other: [`crate::Ingest`] appends the
//! source's events to the local log (stream `<source>/<key>`), and a
//! [`Projection`](polis_core::Projection) turns them into rows. What the
//! events alone cannot give is the state from before the replica listened:
//! a brand-new service, or one whose database was wiped, has missed every
//! event its consumer acknowledged before. A [`Bootstrap`] fills that in
//! from a [`SnapshotSource`], the source service's current state read page
//! by page, by appending each record to the same stream as that entity's
//! events; from there the projection applies it like an event, and a
//! rebuild replays it like one.
//!
//! # No gap, no lost update
//!
//! The bootstrap starts once the replica's consumer is subscribed, so every
//! change the source commits after a record is read reaches the replica as
//! an event, whether it comes before or after the record in the log. For
//! the two to commute, a source gives each entity a **version** that every
//! change increments, in its records and its events, and the projection
//! keeps a row only for a version above the one it holds. Then the record
//! and the events converge on the source's latest state in any order, and a
//! record or event applied twice changes nothing.
//!
//! The cursor moves in the transaction that appends its page, so a
//! bootstrap cut short (a crash, the source down) resumes after the last
//! page it committed. Once the last page is in, the bootstrap is done for
//! good: only an empty database (no row in `polis_replica_bootstraps`)
//! bootstraps again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::error::BoxError;
use polis_core::{ExpectedVersion, Metadata, NewEvent, StoreError};
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// One entity's current state, as a source serves it: appended to the
/// replica's log like an event of the entity's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The entity's key: the key of its events (the stream is `<source>/<key>`).
    pub key: String,
    /// The record's type, as the projection knows it (a CloudEvents type).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The entity's state, with its version.
    pub data: serde_json::Value,
    /// When the source read it.
    pub time: DateTime<Utc>,
}

/// A page of a source's snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// The records, in the source's key order.
    pub records: Vec<SnapshotRecord>,
    /// The cursor to ask the next page with; `None` on the last page.
    pub next: Option<String>,
}

/// Where a replica reads its source's current state (over HTTP from the
/// source service, usually).
#[async_trait]
pub trait SnapshotSource: std::fmt::Debug + Send + Sync + 'static {
    /// The source service: the `source` of its events, so records land in
    /// the streams its events are ingested into.
    fn source(&self) -> &str;

    /// Up to `limit` records after `after` (a cursor this source gave;
    /// `None` for the first page).
    async fn page(&self, after: Option<&str>, limit: usize) -> Result<SnapshotPage, BoxError>;
}

/// Tuning of a [`Bootstrap`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BootstrapOptions {
    /// Records asked for per page (each page is one transaction).
    pub page_size: usize,
    /// The longest wait between retries while the source is unreachable.
    pub retry_max: Duration,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self { page_size: 500, retry_max: Duration::from_secs(5) }
    }
}

/// Why a bootstrap step failed (it is retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The source did not give a page.
    #[error("the snapshot of `{source_name}` could not be read")]
    Source {
        /// The source.
        source_name: String,
        /// Why.
        #[source]
        cause: BoxError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a replica's bootstrap stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootstrapStatus {
    /// The source service.
    pub source: String,
    /// Whether the snapshot is all in the log.
    pub done: bool,
    /// Records appended so far.
    pub records: u64,
    /// When this replica's bootstrap began (`None` before it has).
    pub started_at: Option<DateTime<Utc>>,
    /// When its last page went in.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failure, until a page goes in again.
    pub error: Option<String>,
}

impl BootstrapStatus {
    fn pending(source: &str) -> Self {
        Self { source: source.to_owned(), done: false, records: 0, started_at: None, finished_at: None, error: None }
    }
}

/// Bootstraps a replica from a [`SnapshotSource`] (see the module docs).
#[derive(Debug)]
pub struct Bootstrap<S> {
    store: Arc<S>,
    source: Arc<dyn SnapshotSource>,
    options: BootstrapOptions,
}

/// A running bootstrap: its status, and a shutdown that waits for it.
/// Dropping it stops it at once (a page not committed comes again).
#[derive(Debug)]
pub struct BootstrapHandle {
    task: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    status: watch::Receiver<BootstrapStatus>,
}

impl<S> Bootstrap<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// A bootstrap of `store`'s replica of `source`.
    pub fn new(store: Arc<S>, source: Arc<dyn SnapshotSource>, options: BootstrapOptions) -> Self {
        Self { store, source, options }
    }

    /// The bootstrap's state as recorded in the store.
    pub async fn status(&self) -> Result<BootstrapStatus, StoreError> {
        let row = load(&*self.store, self.source.source()).await?;
        Ok(row.map_or_else(|| BootstrapStatus::pending(self.source.source()), |row| row.status()))
    }

    /// Copies the snapshot into the log, from where a previous run stopped,
    /// until the last page is in (at once if it already is); each page is
    /// reported to `progress`.
    pub async fn run(&self, progress: impl Fn(&BootstrapStatus)) -> Result<BootstrapStatus, BootstrapError> {
        let name = self.source.source().to_owned();
        let mut row = match load(&*self.store, &name).await? {
            Some(row) => row,
            None => {
                let source = name.clone();
                self.store.transaction(async move |tx| start(tx, &source).await).await?
            }
        };
        progress(&row.status());
        while row.finished_at.is_none() {
            let after = (!row.cursor.is_empty()).then_some(row.cursor.as_str());
            let page = self
                .source
                .page(after, self.options.page_size.max(1))
                .await
                .map_err(|cause| BootstrapError::Source { source_name: name.clone(), cause })?;
            let (source, from) = (name.clone(), row.cursor.clone());
            let committed = self.store.transaction(async move |tx| append_page(tx, &source, &from, page).await).await?;
            row = match committed {
                Some(row) => row,
                // Another instance moved the cursor: go on from where it is.
                None => load(&*self.store, &name).await?.unwrap_or(row),
            };
            progress(&row.status());
        }
        Ok(row.status())
    }

    /// Runs the bootstrap in the background, retrying with backoff while
    /// the source or the store fails, until it is done.
    pub fn spawn(self) -> BootstrapHandle {
        let (stop, mut stopped) = watch::channel(false);
        let (status_tx, status) = watch::channel(BootstrapStatus::pending(self.source.source()));
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let run = self.run(|s| {
                    status_tx.send_replace(s.clone());
                });
                let result = tokio::select! {
                    result = run => result,
                    _ = stopped.changed() => return,
                };
                let error = match result {
                    Ok(status) => {
                        tracing::info!(source = status.source, records = status.records, "replica bootstrapped");
                        status_tx.send_replace(status);
                        return;
                    }
                    Err(e) => e,
                };
                let chain = polis_core::error::chain(&error).to_string();
                tracing::warn!(source = self.source.source(), error = %chain, "replica bootstrap failed; retrying");
                status_tx.send_modify(|s| s.error = Some(chain));
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(50u64.saturating_mul(1 << failures.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff.min(self.options.retry_max)) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        BootstrapHandle { task: Some(task), stop, status }
    }
}

impl BootstrapHandle {
    /// Where the bootstrap stands.
    pub fn status(&self) -> BootstrapStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the status does.
    pub fn subscribe(&self) -> watch::Receiver<BootstrapStatus> {
        self.status.clone()
    }

    /// Waits until the snapshot is all in the log.
    pub async fn done(&self) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.done).await;
    }

    /// Stops it (a page being read or written is given up, and comes again
    /// at the next start) and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BootstrapHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One row of `polis_replica_bootstraps`.
#[derive(Debug, Clone)]
struct Progress {
    source: String,
    cursor: String,
    records: u64,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl Progress {
    fn from_row(row: &Row) -> Result<Self, StoreError> {
        let at = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
        Ok(Self {
            source: row.text("source")?,
            cursor: row.text("cursor")?,
            records: u64::try_from(row.int("records")?).unwrap_or(0),
            started_at: at(row.int("started_at_us")?),
            finished_at: row.opt_int("finished_at_us")?.map(at),
        })
    }

    fn status(&self) -> BootstrapStatus {
        BootstrapStatus {
            source: self.source.clone(),
            done: self.finished_at.is_some(),
            records: self.records,
            started_at: Some(self.started_at),
            finished_at: self.finished_at,
            error: None,
        }
    }
}

const COLUMNS: &str = "source, cursor, records, started_at_us, finished_at_us";

async fn load<S>(store: &S, source: &str) -> Result<Option<Progress>, StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("SELECT {COLUMNS} FROM polis_replica_bootstraps WHERE source = $1");
    store.query_optional(&sql, args![source]).await?.as_ref().map(Progress::from_row).transpose()
}

async fn load_in<Tx: Sql + ?Sized>(tx: &mut Tx, source: &str) -> Result<Option<Progress>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM polis_replica_bootstraps WHERE source = $1");
    tx.fetch_optional(&sql, args![source]).await?.as_ref().map(Progress::from_row).transpose()
}

/// The bootstrap's row, created if there is none yet (two instances
/// starting at once both end up with the one row).
async fn start<Tx: Sql + ?Sized>(tx: &mut Tx, source: &str) -> Result<Progress, StoreError> {
    tx.execute(
        "INSERT INTO polis_replica_bootstraps (source, cursor, records, started_at_us) VALUES ($1, '', 0, $2) \
         ON CONFLICT (source) DO NOTHING",
        args![source, Utc::now().timestamp_micros()],
    )
    .await?;
    load_in(tx, source).await?.ok_or_else(|| StoreError::backend(format!("bootstrap row of `{source}` vanished")))
}

/// Appends `page` to the log and moves the cursor from `from`, in the
/// caller's transaction; `None` (and nothing written) if the cursor was not
/// at `from` any more.
async fn append_page<Tx>(
    tx: &mut Tx,
    source: &str,
    from: &str,
    page: SnapshotPage,
) -> Result<Option<Progress>, StoreError>
where
    Tx: Sql + polis_core::Transaction + ?Sized,
{
    let last = page.records.last().map(|r| r.key.clone());
    let cursor = page.next.clone().or(last).unwrap_or_else(|| from.to_owned());
    let finished = page.next.is_none().then(|| Utc::now().timestamp_micros());
    let count = page.records.len() as i64;
    let moved = tx
        .execute(
            "UPDATE polis_replica_bootstraps SET cursor = $1, records = records + $2, finished_at_us = $3 \
             WHERE source = $4 AND cursor = $5 AND finished_at_us IS NULL",
            args![cursor, count, finished, source, from],
        )
        .await?;
    if moved != 1 {
        return Ok(None);
    }
    for record in page.records {
        let event = NewEvent {
            id: Uuid::now_v7(),
            event_type: record.event_type,
            schema_version: 1,
            time: record.time,
            data: record.data,
            metadata: Metadata::default(),
        };
        tx.append(&crate::ingest::stream(source, &record.key), ExpectedVersion::Any, std::slice::from_ref(&event))
            .await?;
    }
    load_in(tx, source).await
}

/// Forgets `source`'s bootstrap, so the replica's next start bootstraps it
/// again (after its rows were lost some other way than a wiped database).
pub async fn reset<S>(store: &S, source: &str) -> Result<(), StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let source = source.to_owned();
    store
        .transaction(async move |tx| {
            tx.execute("DELETE FROM polis_replica_bootstraps WHERE source = $1", args![source]).await?;
            Ok(())
        })
        .await
}

/// Where a service's replica bootstraps from, as its settings carry it: set
/// by the host that assembles the deployment (it knows where the source
/// service is), never read from a file. Empty by default: the replica then
/// follows events only.
#[derive(Clone, Default)]
pub struct ReplicaSource(Option<Arc<dyn SnapshotSource>>);

impl ReplicaSource {
    /// Bootstraps from `source`.
    pub fn new(source: Arc<dyn SnapshotSource>) -> Self {
        Self(Some(source))
    }

    /// The source, if one was set.
    pub fn get(&self) -> Option<Arc<dyn SnapshotSource>> {
        self.0.clone()
    }
}

impl std::fmt::Debug for ReplicaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(source) => f.debug_tuple("ReplicaSource").field(source).finish(),
            None => f.write_str("ReplicaSource(None)"),
        }
    }
}

/// The same source (the same object), or none on both sides.
impl PartialEq for ReplicaSource {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
