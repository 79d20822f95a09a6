//! The projection runtime: a service's events into its read models.
//!
//! A [`Projector`] runs [`Projection`]s over a service's own store (SQLite
//! or PostgreSQL, through polis-store's portable SQL). For each projection it:
//!
//! - reads the store's global log after the projection's checkpoint
//!   ([`polis_core::EventStore::read_all`], which never skips an event that
//!   commits late — ADR 0001), and applies a batch of events **and** moves
//!   the checkpoint in one transaction: a row and the position it reflects
//!   commit together, so a crash at any instant loses or repeats nothing.
//!   While catching up a batch is up to [`ProjectorOptions::batch_size`]
//!   events; when live it is whatever has arrived (usually one);
//! - holds a lease in the database, so one instance at a time applies it;
//!   every applying transaction renews the lease and fails if it was lost,
//!   and a killed owner's lease expires after [`ProjectorOptions::lease_ttl`],
//!   when a standby takes over from the checkpoint;
//! - builds the read model in [`Generation`]s, each with its own tables and
//!   checkpoint, and shows the live one to readers through views named after
//!   the tables. A new [`Projection::version`], or a [`rebuild`], builds a
//!   new generation beside the live one; once it has caught up, one
//!   transaction points the views at it, and the old tables are dropped.
//!   Readers see the old generation, then the new one, never a half-built
//!   one; a crash during a rebuild resumes it from its own checkpoint;
//! - reads other services' events too, once [`Ingest`] (a consumer
//!   handler) has appended them to the service's own log;
//! - reports each projection's state and lag ([`ProjectionStatus`]): the
//!   events not yet applied and the time from an event's commit to its
//!   application.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use polis_projection::{Projector, ProjectorOptions};
//! # async fn run<S, P>(store: Arc<S>, by_customer: P) where S: polis_store::sql::SqlStore, S::Tx: polis_store::sql::Sql, P: polis_core::Projection<S::Tx> {
//! let projector = Projector::new(store, ProjectorOptions::default()).with(by_customer).spawn();
//! // ... later
//! projector.shutdown().await;
//! # }
//! ```

#![warn(missing_docs)]

mod db;
pub mod ingest;
pub mod replica;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use polis_core::{Generation, Projection, RecordedEvent, StoreError};
use polis_store::sql::{Sql, SqlStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use db::{GenerationRow, State, generations};
pub use ingest::Ingest;
pub use replica::{
    Bootstrap, BootstrapHandle, BootstrapOptions, BootstrapStatus, ReplicaSource, SnapshotPage, SnapshotRecord,
    SnapshotSource,
};

/// Tuning of a [`Projector`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectorOptions {
    /// The most events applied in one transaction (1: no batching).
    pub batch_size: usize,
    /// How long to wait for new events before looking again when no
    /// wake-up hint arrives.
    pub poll_interval: Duration,
    /// How long a lease lasts without renewal: the longest a killed owner
    /// holds a projection up before another instance takes over.
    pub lease_ttl: Duration,
    /// When this code does not maintain the live generation (it is of an
    /// older version), a new generation goes live once it is at most this
    /// many positions behind the log's head, or has read to the end of the
    /// log (the head may be a rolled-back append's). When it does, the new
    /// one goes live once it has applied everything the live one has.
    pub cut_over_lag: u64,
    /// The longest wait between retries after a failure.
    pub retry_max: Duration,
    /// Who this instance is to the leases: a new identity at every start
    /// unless set ([`ProjectorOptions::instance`]). An instance restarted
    /// under the same identity takes its own leases back at once instead
    /// of waiting for them to expire.
    pub owner: Option<Uuid>,
}

impl ProjectorOptions {
    /// Gives the instance a stable identity, derived from `name`, which
    /// must name one running instance at a time (a service and its
    /// listening address, say): the instance restarted after a crash then
    /// applies its projections again at once, where a new identity would
    /// wait up to [`ProjectorOptions::lease_ttl`] for the dead one's leases.
    pub fn instance(mut self, name: &str) -> Self {
        self.owner = Some(polis_core::lease::instance_owner(name));
        self
    }
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            cut_over_lag: 0,
            retry_max: Duration::from_secs(5),
            owner: None,
        }
    }
}

/// Why a projection step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectorError {
    /// Another instance holds the projection's lease (or took it over).
    #[error("the lease of projection {0} is held by another instance")]
    NotOwner(String),
    /// The checkpoint moved under this instance: another one applied events.
    #[error("the checkpoint of projection {0} moved concurrently")]
    CheckpointMoved(String),
    /// The live generation is newer than this code's version of the projection.
    #[error("projection {name}: the live read model is version {live}, newer than this code's version {code}")]
    Newer {
        /// The projection.
        name: String,
        /// The live generation's version.
        live: u32,
        /// This code's version.
        code: u32,
    },
    /// The store failed (or the projection's SQL did).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far one generation of a projection has got.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GenerationStatus {
    /// Which generation.
    pub generation: Generation,
    /// The projection version that builds it.
    pub version: u32,
    /// Its checkpoint: the last global position applied.
    pub position: u64,
    /// Positions handed out in the log after the checkpoint, as of the last
    /// look (an upper bound: positions of rolled-back appends count too).
    pub behind: u64,
    /// The commit time of the last event applied.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the last batch was applied.
    pub applied_at: Option<DateTime<Utc>>,
}

impl GenerationStatus {
    /// The time between the last applied event's commit and its application.
    pub fn lag(&self) -> Option<Duration> {
        let (event, applied) = (self.last_event_at?, self.applied_at?);
        (applied - event).to_std().ok()
    }
}

/// A projection's state as its instance sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// This code's version of it.
    pub version: u32,
    /// Whether this instance holds its lease (applies it).
    pub owner: bool,
    /// What readers see; `None` until a first generation has been built.
    pub live: Option<GenerationStatus>,
    /// A generation being built beside it (a new version or a rebuild).
    pub building: Option<GenerationStatus>,
    /// The last failure and its causes, until a step succeeds again.
    pub error: Option<String>,
    /// Commit-to-apply lag of the recent events this instance applied.
    pub lag: Lag,
}

/// The time from an event's commit (its `time`, at the source for an
/// ingested event) to the commit of the batch that applied it, over the
/// last [`LAG_SAMPLES`] events an instance applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Events applied since the instance started.
    pub events: u64,
    /// Median, in microseconds (`None` before any event).
    pub p50_us: Option<u64>,
    /// 99th percentile, in microseconds.
    pub p99_us: Option<u64>,
    /// The largest, in microseconds.
    pub max_us: Option<u64>,
}

/// How many recent events [`Lag`] is computed over.
pub const LAG_SAMPLES: usize = 1 << 16;

/// The recent lags of one projection, shared by its runner and the handle.
#[derive(Debug, Default)]
struct Samples {
    events: u64,
    recent: std::collections::VecDeque<u64>,
}

impl Samples {
    fn record(&mut self, lag_us: u64) {
        self.events += 1;
        if self.recent.len() == LAG_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(lag_us);
    }

    fn summary(&self) -> Lag {
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q| polis_core::stats::percentile(&sorted, q);
        Lag { events: self.events, p50_us: at(0.5), p99_us: at(0.99), max_us: sorted.last().copied() }
    }
}

type SharedSamples = Arc<std::sync::Mutex<BTreeMap<String, Samples>>>;

/// Runs projections over one store (see the crate docs).
pub struct Projector<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    store: Arc<S>,
    projections: Vec<Arc<dyn Projection<S::Tx>>>,
    options: ProjectorOptions,
}

impl<S> std::fmt::Debug for Projector<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.projections.iter().map(|p| p.name().to_owned()).collect();
        f.debug_struct("Projector").field("projections", &names).field("options", &self.options).finish()
    }
}

/// Running projections: their status, and a shutdown that waits for them.
/// Dropping it stops them at once.
#[derive(Debug)]
pub struct ProjectorHandle {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    status: watch::Receiver<BTreeMap<String, ProjectionStatus>>,
    samples: SharedSamples,
}

impl<S> Projector<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// A projector over `store` with no projections yet.
    pub fn new(store: Arc<S>, options: ProjectorOptions) -> Self {
        Self { store, projections: Vec::new(), options }
    }

    /// Adds a projection.
    pub fn with(mut self, projection: impl Projection<S::Tx>) -> Self {
        self.projections.push(Arc::new(projection));
        self
    }

    /// Adds a shared projection.
    pub fn with_arc(mut self, projection: Arc<dyn Projection<S::Tx>>) -> Self {
        self.projections.push(projection);
        self
    }

    /// Whether it has any projection to run.
    pub fn is_empty(&self) -> bool {
        self.projections.is_empty()
    }

    /// Starts one task per projection.
    pub fn spawn(self) -> ProjectorHandle {
        let owner = self.options.owner.unwrap_or_else(Uuid::now_v7);
        let (stop, stopped) = watch::channel(false);
        let initial = self
            .projections
            .iter()
            .map(|p| {
                let status = ProjectionStatus {
                    name: p.name().to_owned(),
                    version: p.version(),
                    owner: false,
                    live: None,
                    building: None,
                    error: None,
                    lag: Lag::default(),
                };
                (p.name().to_owned(), status)
            })
            .collect();
        let (status_tx, status) = watch::channel(initial);
        let status_tx = Arc::new(status_tx);
        let samples = SharedSamples::default();
        let tasks = self
            .projections
            .into_iter()
            .map(|projection| {
                let runner = Runner {
                    store: self.store.clone(),
                    projection,
                    options: self.options.clone(),
                    owner,
                    status: status_tx.clone(),
                    samples: samples.clone(),
                    owned: false,
                    token: 0,
                    live: None,
                    building: None,
                    renewed: None,
                };
                tokio::spawn(runner.run(stopped.clone()))
            })
            .collect();
        ProjectorHandle { tasks, stop, status, samples }
    }
}

impl ProjectorHandle {
    /// Every projection's status, by name, with its lag computed now.
    pub fn status(&self) -> BTreeMap<String, ProjectionStatus> {
        self.reader().status()
    }

    /// A cheap, cloneable view of the status, for whatever reports it (an
    /// HTTP route, metrics) while the handle stays with its owner.
    pub fn reader(&self) -> StatusReader {
        StatusReader { status: self.status.clone(), samples: self.samples.clone() }
    }

    /// A receiver that changes whenever a status does.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, ProjectionStatus>> {
        self.status.clone()
    }

    /// Waits until every projection's live read model reflects the log up
    /// to `position` (read-your-writes: the position of an append).
    pub async fn applied(&self, position: u64) {
        self.reader().applied(position).await;
    }

    /// Stops every projection after its current step and lets its lease go,
    /// so another instance can take over at once; returns when all stopped.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for ProjectorHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads the status of running projections ([`ProjectorHandle::reader`]).
#[derive(Debug, Clone)]
pub struct StatusReader {
    status: watch::Receiver<BTreeMap<String, ProjectionStatus>>,
    samples: SharedSamples,
}

impl StatusReader {
    /// Every projection's status, by name, with its lag computed now.
    pub fn status(&self) -> BTreeMap<String, ProjectionStatus> {
        let mut status = self.status.borrow().clone();
        let samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, status) in &mut status {
            status.lag = samples.get(name).map(Samples::summary).unwrap_or_default();
        }
        status
    }

    /// Waits until every projection's live read model reflects the log up
    /// to `position` (see [`ProjectorHandle::applied`]).
    pub async fn applied(&self, position: u64) {
        let mut status = self.status.clone();
        let _ = status
            .wait_for(|all| all.values().all(|s| s.live.as_ref().is_some_and(|live| live.position >= position)))
            .await;
    }
}

/// Asks for `name` to be rebuilt from the start of the log into a new
/// generation, beside the live one; the projection's owner builds it and
/// cuts over when it has caught up. A rebuild already under way (or a new
/// version being built) satisfies the request.
pub async fn rebuild<S>(store: &S, name: &str) -> Result<(), StoreError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let name = name.to_owned();
    store
        .transaction(async move |tx| {
            let existing = db::generations_in(tx, &name).await?;
            if existing.iter().any(|g| matches!(g.state, State::Requested | State::Building)) {
                return Ok(());
            }
            let next = existing.iter().map(|g| g.generation.number()).max().unwrap_or(0) + 1;
            let version = existing.iter().find(|g| g.state == State::Live).map_or(0, |g| g.version);
            db::insert(tx, &name, Generation::new(next), version, State::Requested).await
        })
        .await
}

/// A generation this instance works on.
#[derive(Debug, Clone, Copy)]
struct Gen {
    generation: Generation,
    version: u32,
    position: u64,
    behind: u64,
    last_event_at: Option<DateTime<Utc>>,
    applied_at: Option<DateTime<Utc>>,
}

impl Gen {
    fn from_row(row: &GenerationRow) -> Self {
        Self {
            generation: row.generation,
            version: row.version,
            position: row.position,
            behind: 0,
            last_event_at: row.last_event_at,
            applied_at: row.applied_at,
        }
    }

    fn status(&self) -> GenerationStatus {
        GenerationStatus {
            generation: self.generation,
            version: self.version,
            position: self.position,
            behind: self.behind,
            last_event_at: self.last_event_at,
            applied_at: self.applied_at,
        }
    }
}

/// What a step did.
enum Stepped {
    /// Applied events or changed generations: step again at once.
    Progress,
    /// Nothing to do until new events arrive.
    Idle,
}

struct Runner<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    store: Arc<S>,
    projection: Arc<dyn Projection<S::Tx>>,
    options: ProjectorOptions,
    owner: Uuid,
    status: Arc<watch::Sender<BTreeMap<String, ProjectionStatus>>>,
    samples: SharedSamples,
    owned: bool,
    /// The fencing token of this instance's tenure, while `owned`.
    token: u64,
    /// The live generation, and whether this code maintains it (same version).
    live: Option<(Gen, bool)>,
    building: Option<Gen>,
    renewed: Option<tokio::time::Instant>,
}

impl<S> Runner<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn ttl(&self) -> Duration {
        self.options.lease_ttl
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut wakeups = self.store.wakeups();
        let mut failures = 0u32;
        loop {
            if *stopped.borrow() {
                break;
            }
            wakeups.borrow_and_update();
            let result = self.step().await;
            let wait = match &result {
                Ok(Stepped::Progress) => None,
                Ok(Stepped::Idle) => Some(self.options.poll_interval.min(self.options.lease_ttl / 3)),
                Err(ProjectorError::NotOwner(_)) => Some(self.options.lease_ttl / 3),
                Err(_) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(50u64.saturating_mul(1 << failures.min(10)));
                    Some(backoff.min(self.options.retry_max))
                }
            };
            self.publish(result.as_ref().err());
            if let Err(e) = &result {
                match e {
                    ProjectorError::NotOwner(_) => {}
                    e => {
                        tracing::warn!(projection = self.name(), error = %polis_core::error::chain(e), "projection step failed")
                    }
                }
                if !matches!(e, ProjectorError::NotOwner(_)) {
                    // Whatever went wrong, read the generations afresh before going on.
                    self.owned = false;
                }
            } else {
                failures = 0;
            }
            if let Some(wait) = wait {
                tokio::select! {
                    _ = wakeups.changed(), if matches!(result, Ok(Stepped::Idle)) => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => {}
                }
            }
        }
        if self.owned {
            let (name, owner) = (self.name().to_owned(), self.owner);
            let _ = self.store.transaction(async move |tx| db::release(tx, &name, owner).await).await;
        }
    }

    fn publish(&self, error: Option<&ProjectorError>) {
        let status = ProjectionStatus {
            name: self.name().to_owned(),
            version: self.projection.version(),
            owner: self.owned,
            live: self.live.map(|(g, _)| g.status()),
            building: self.building.map(|g| g.status()),
            error: error
                .filter(|e| !matches!(e, ProjectorError::NotOwner(_)))
                .map(|e| polis_core::error::chain(e).to_string()),
            lag: Lag::default(), // filled in by `ProjectorHandle::status`
        };
        let service = self.store.service().to_owned();
        for (generation, state) in [("live", &status.live), ("building", &status.building)] {
            let behind = state.as_ref().map_or(0, |g| g.behind);
            metrics::gauge!(
                "polis_projection_behind_events",
                "service" => service.clone(),
                "projection" => status.name.clone(),
                "generation" => generation,
            )
            .set(behind as f64);
        }
        self.status.send_modify(|all| {
            all.insert(status.name.clone(), status);
        });
    }

    async fn step(&mut self) -> Result<Stepped, ProjectorError> {
        if !self.owned {
            self.acquire().await?;
            self.reconcile().await?;
            return Ok(Stepped::Progress);
        }
        let mut progressed = false;
        if let Some((live, true)) = self.live {
            let (applied, cur) = self.apply_batch(live).await?;
            self.live = Some((cur, true));
            progressed |= applied;
        }
        if let Some(building) = self.building {
            let (applied, cur) = self.apply_batch(building).await?;
            self.building = Some(cur);
            progressed |= applied;
            if self.ready_to_cut_over(cur) {
                self.cut_over(cur).await?;
                return Ok(Stepped::Progress);
            }
        }
        if progressed {
            return Ok(Stepped::Progress);
        }
        // Idle: keep the lease, and notice rebuild requests.
        let due = self.renewed.is_none_or(|at| at.elapsed() >= self.options.lease_ttl / 3);
        if due {
            self.reconcile().await?;
        }
        Ok(Stepped::Idle)
    }

    async fn acquire(&mut self) -> Result<(), ProjectorError> {
        let (name, owner, ttl) = (self.name().to_owned(), self.owner, self.ttl());
        let acquired =
            self.store.transaction(async move |tx| db::acquire(tx, &name, owner, Utc::now(), ttl).await).await?;
        let Some(token) = acquired else {
            return Err(ProjectorError::NotOwner(self.name().to_owned()));
        };
        self.owned = true;
        self.token = token;
        self.renewed = Some(tokio::time::Instant::now());
        tracing::info!(projection = self.name(), "took over the projection");
        Ok(())
    }

    /// Reads the generations and puts them in order: drops retired and
    /// abandoned ones, turns a rebuild request into a build, starts a build
    /// when there is nothing live or the live one is of an older version.
    async fn reconcile(&mut self) -> Result<(), ProjectorError> {
        let (name, owner, token, ttl) = (self.name().to_owned(), self.owner, self.token, self.ttl());
        let projection = self.projection.clone();
        let code = projection.version();
        let result = self
            .store
            .transaction(async move |tx| {
                if !db::renew(tx, &name, owner, token, Utc::now(), ttl).await? {
                    return Err(ProjectorError::NotOwner(name));
                }
                let rows = db::generations_in(tx, &name).await?;
                let tables = projection.tables();
                let mut live = None;
                let mut building = None;
                let next = rows.iter().map(|g| g.generation.number()).max().unwrap_or(0) + 1;
                for row in &rows {
                    match row.state {
                        State::Retired => {
                            db::drop_tables(tx, tables, row.generation).await?;
                            db::delete(tx, &name, row.generation).await?;
                        }
                        State::Live => live = Some(Gen::from_row(row)),
                        State::Building if row.version == code && building.is_none() => {
                            building = Some(Gen::from_row(row));
                        }
                        // A build of another version (an upgrade given up), or a second one.
                        State::Building => {
                            db::drop_tables(tx, tables, row.generation).await?;
                            db::delete(tx, &name, row.generation).await?;
                        }
                        State::Requested => {
                            db::delete(tx, &name, row.generation).await?;
                            // A build of this version already under way satisfies the request.
                            let under_way = rows.iter().any(|r| r.state == State::Building && r.version == code);
                            if building.is_none() && !under_way {
                                building = Some(start_build(tx, &*projection, &name, row.generation, code).await?);
                            }
                        }
                    }
                }
                match live {
                    Some(live) if live.version > code => {
                        return Err(ProjectorError::Newer { name, live: live.version, code });
                    }
                    Some(live) if live.version == code => {}
                    // Nothing live, or an older version live: build this version beside it.
                    _ if building.is_none() => {
                        building = Some(start_build(tx, &*projection, &name, Generation::new(next), code).await?);
                    }
                    _ => {}
                }
                Ok::<_, ProjectorError>((live, building))
            })
            .await;
        let (live, building) = match result {
            Ok(found) => found,
            Err(ProjectorError::NotOwner(name)) => {
                self.owned = false;
                return Err(ProjectorError::NotOwner(name));
            }
            Err(e) => return Err(e),
        };
        self.renewed = Some(tokio::time::Instant::now());
        self.live = live.map(|g| (g, g.version == code));
        if let Some(b) = &building {
            tracing::debug!(
                projection = self.name(),
                generation = b.generation.number(),
                position = b.position,
                "building a generation"
            );
        }
        self.building = building;
        Ok(())
    }

    /// Applies the next batch after `cur`'s checkpoint; whether it applied any.
    async fn apply_batch(&self, cur: Gen) -> Result<(bool, Gen), ProjectorError> {
        let events = self.store.read_all(cur.position, self.options.batch_size.max(1)).await?;
        let Some(last) = events.last() else {
            return Ok((false, Gen { behind: 0, ..cur }));
        };
        let (to, last_event_at) = (last.global_position, last.time);
        let full = events.len() >= self.options.batch_size.max(1);
        let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.time).collect();
        let (name, owner, token, ttl) = (self.name().to_owned(), self.owner, self.token, self.ttl());
        let projection = self.projection.clone();
        let generation = cur.generation;
        let from = cur.position;
        self.store
            .transaction(async move |tx| {
                if !db::renew(tx, &name, owner, token, Utc::now(), ttl).await? {
                    return Err(ProjectorError::NotOwner(name));
                }
                apply_all(tx, &*projection, generation, &events).await?;
                if !db::advance(tx, &name, generation, from, to, last_event_at).await? {
                    return Err(ProjectorError::CheckpointMoved(name));
                }
                Ok(())
            })
            .await?;
        let committed = Utc::now();
        if self.live.is_some_and(|(live, _)| live.generation == cur.generation) {
            let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let samples = samples.entry(self.name().to_owned()).or_default();
            let histogram = metrics::histogram!(
                "polis_projection_lag_seconds",
                "service" => self.store.service().to_owned(),
                "projection" => self.name().to_owned(),
            );
            for time in times {
                let lag_us = u64::try_from((committed - time).num_microseconds().unwrap_or(0)).unwrap_or(0);
                samples.record(lag_us);
                histogram.record(lag_us as f64 / 1e6);
            }
        }
        let behind = if full { self.store.head_position().await?.saturating_sub(to) } else { 0 };
        Ok((
            true,
            Gen { position: to, behind, last_event_at: Some(last_event_at), applied_at: Some(Utc::now()), ..cur },
        ))
    }

    /// `building` is this step's result of [`Self::apply_batch`], so its
    /// `behind` is fresh: 0 once a read found the end of the log, otherwise
    /// the head's distance. (Comparing with the head alone would wait
    /// forever when the head is a position no event will fill: PostgreSQL
    /// draws positions of appends that roll back.)
    fn ready_to_cut_over(&self, building: Gen) -> bool {
        match self.live {
            Some((live, true)) => building.position >= live.position,
            _ => building.behind <= self.options.cut_over_lag,
        }
    }

    /// Makes `building` live in one transaction, then drops the old tables.
    async fn cut_over(&mut self, building: Gen) -> Result<(), ProjectorError> {
        let (name, owner, token, ttl) = (self.name().to_owned(), self.owner, self.token, self.ttl());
        let projection = self.projection.clone();
        let old = self.live.map(|(g, _)| g);
        let code = projection.version();
        self.store
            .transaction(async move |tx| {
                if !db::renew(tx, &name, owner, token, Utc::now(), ttl).await? {
                    return Err(ProjectorError::NotOwner(name));
                }
                if let Some(old) = old {
                    db::set_state(tx, &name, old.generation, old.version, State::Retired).await?;
                }
                db::set_state(tx, &name, building.generation, code, State::Live).await?;
                db::point_views(tx, projection.tables(), building.generation).await?;
                Ok(())
            })
            .await?;
        tracing::info!(
            projection = self.name(),
            generation = building.generation.number(),
            version = code,
            position = building.position,
            "cut over to the new generation"
        );
        self.live = Some((building, true));
        self.building = None;
        if old.is_some() {
            // The retired tables go now; if this fails, the next reconcile drops them.
            self.reconcile().await?;
        }
        Ok(())
    }
}

async fn start_build<Tx: Sql + Send + 'static>(
    tx: &mut Tx,
    projection: &dyn Projection<Tx>,
    name: &str,
    generation: Generation,
    version: u32,
) -> Result<Gen, StoreError> {
    // Leftovers of a generation with this number (a crash between dropping a
    // row and its tables) must not leak into the new one.
    db::drop_tables(tx, projection.tables(), generation).await?;
    projection.create(tx, generation).await?;
    db::insert(tx, name, generation, version, State::Building).await?;
    Ok(Gen { generation, version, position: 0, behind: 0, last_event_at: None, applied_at: None })
}

async fn apply_all<Tx: Send + 'static>(
    tx: &mut Tx,
    projection: &dyn Projection<Tx>,
    generation: Generation,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let wanted: Vec<&RecordedEvent> = events.iter().filter(|event| projection.wants(event)).collect();
    for event in &wanted {
        projection.apply(tx, generation, event).await?;
    }
    if wanted.is_empty() {
        return Ok(());
    }
    projection.applied(tx, generation, &wanted).await
}

impl From<ProjectorError> for StoreError {
    fn from(e: ProjectorError) -> Self {
        match e {
            ProjectorError::Store(e) => e,
            other => StoreError::backend(other.to_string()),
        }
    }
}
