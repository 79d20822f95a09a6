//! SQLite connections without a thread hop per statement.
//!
//! An async driver has to keep SQLite's blocking calls off the async
//! runtime's threads, so it runs each connection on a worker thread of its
//! own and sends every statement there and back. For the small statements a
//! service runs (a few rows each, often from the page cache) those two
//! context switches cost more than the statement. polis calls SQLite
//! synchronously (through rusqlite) instead, from two kinds of place:
//!
//! - **writes** run on one dedicated thread per database, which owns the only
//!   writing connection and runs a whole group of queued work per wake-up
//!   (the event store's writer and the in-process bus's writer);
//! - **reads** run on the calling thread through [`Readers`], a small pool of
//!   read-only connections. WAL mode means a reader never waits for the
//!   writer, and a point read takes microseconds, less than a hand-off to
//!   another thread would. Long scans belong on a blocking thread of their own.
//!
//! See ADR 0006.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a committed write survives power loss (the default).
    Full,
    /// fsync at checkpoints only: survives a process crash, not power loss.
    Normal,
}

/// Prepared statements kept per connection: every statement polis and a
/// service run more than once stays parsed.
const STATEMENT_CACHE: usize = 256;

/// Opens the writing connection to `path` (created if missing), in WAL mode.
pub fn open_writer(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// What [`check_integrity`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// `quick_check` passed.
    Ok,
    /// The file is damaged: what SQLite reported (the first few problems).
    Damaged(String),
    /// The check did not finish within its time budget; nothing is known.
    Unfinished,
}

/// Runs SQLite's `PRAGMA quick_check` on the database at `path` (which
/// must exist) for at most `budget`: it reads every page and checks the
/// b-tree structure, so a truncated or overwritten file is found at start
/// rather than by the first request that touches a bad page. Blocking.
pub fn check_integrity(path: &Path, budget: Duration) -> rusqlite::Result<Integrity> {
    /// Problems reported at most; one is enough to refuse the file.
    const MAX_PROBLEMS: usize = 5;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let deadline = Instant::now() + budget;
    // Called every 10,000 virtual machine steps; `true` interrupts the check.
    conn.progress_handler(10_000, Some(move || Instant::now() >= deadline));
    let checked = conn.prepare(&format!("PRAGMA quick_check({MAX_PROBLEMS})")).and_then(|mut statement| {
        statement.query_map([], |row| row.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<String>>>()
    });
    match checked {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(Integrity::Ok),
        Ok(lines) => Ok(Integrity::Damaged(lines.join("; "))),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::OperationInterrupted => {
            Ok(Integrity::Unfinished)
        }
        Err(rusqlite::Error::SqliteFailure(e, message))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) =>
        {
            Ok(Integrity::Damaged(message.unwrap_or_else(|| e.to_string())))
        }
        Err(e) => Err(e),
    }
}

/// Opens a read-only connection to `path`.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Temporary files in memory, the savepoints' sub-journals above all:
    // every job of a group commit runs under a savepoint, and its journal of
    // the pages it changes otherwise spills past 64 KiB into a temporary
    // file, written page by page (measured: as many writes as the WAL's).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// A pool of read-only connections, used on the calling thread.
///
/// A connection is taken for one closure and put back after it; the pool
/// opens another when all are busy and keeps at most `idle` of them.
#[derive(Debug)]
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    /// A pool over the database at `path`, which must exist already.
    pub fn open(path: &Path, max_idle: usize) -> rusqlite::Result<Self> {
        let first = open_reader(path)?;
        Ok(Self { path: path.to_owned(), idle: Mutex::new(vec![first]), max_idle: max_idle.max(1) })
    }

    /// Runs `read` on a reader connection; fails only if no connection could
    /// be opened. Several statements in one `read` see one snapshot only if
    /// `read` opens a transaction itself.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> T) -> rusqlite::Result<T> {
        let taken = lock(&self.idle).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = read(&conn);
        // A connection left inside a transaction (a panic-free early return
        // of `read`) must not leak its snapshot to the next user.
        if conn.is_autocommit() {
            let mut idle = lock(&self.idle);
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        Ok(result)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The idle list is a plain stack; a panic elsewhere cannot corrupt it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `e` is a UNIQUE or PRIMARY KEY constraint violation.
pub fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The message SQLite gave with a failure, if any.
pub fn failure_message(e: &rusqlite::Error) -> Option<&str> {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => Some(message),
        _ => None,
    }
}

/// Spawns a named thread that runs the future `make` returns to completion,
/// on a runtime of its own (current-thread, with time and I/O): futures run
/// there may await timers and channels, and its blocking SQLite calls hold
/// only that thread. The future itself never leaves the thread.
pub fn spawn_writer_thread<M, F>(name: String, make: M) -> std::io::Result<()>
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(name).spawn(move || runtime.block_on(make()))?;
    Ok(())
}

/// Statements one [`BatchWriter::run`] call applies; returns a count of its choosing.
type Job = Box<dyn FnOnce(&Connection) -> rusqlite::Result<u64> + Send>;

/// Called on the writer thread after each transaction: `true` once it
/// committed, `false` once it was rolled back. Runs before any job of the
/// transaction hears back and before the next transaction begins, so it sees
/// commits in their order.
pub type AfterCommit = Box<dyn FnMut(bool) + Send>;

/// A job's count and the commit it was part of (see [`WalSync`]).
type Reply = tokio::sync::oneshot::Sender<Result<(u64, u64), WriteError>>;

/// Why a [`BatchWriter`] job did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The job's own statements failed; nothing of it was written.
    #[error(transparent)]
    Statement(#[from] rusqlite::Error),
    /// The transaction the job was part of could not begin or commit.
    #[error("sqlite transaction failed: {0}")]
    Transaction(String),
    /// The commit happened, but syncing the WAL to disk failed: whether it
    /// survives a power loss is unknown.
    #[error("syncing the sqlite WAL failed: {0}")]
    Sync(String),
    /// The writer thread is gone.
    #[error("the sqlite writer has stopped")]
    Stopped,
}

/// Options for [`BatchWriter::spawn_with`].
#[derive(Default)]
#[allow(missing_debug_implementations)] // holds a closure
pub struct WriterOptions {
    /// Runs after each transaction, on the writer thread.
    pub after_commit: Option<AfterCommit>,
    /// For a connection opened with [`Durability::Normal`]: makes commits
    /// durable in the background, for [`BatchWriter::run_durable`].
    pub wal_sync: Option<std::sync::Arc<WalSync>>,
}

/// A dedicated thread that owns a database's writing connection and applies
/// jobs of synchronous statements, all jobs queued together in one
/// transaction (group commit: one fsync for the lot). Each job runs under a
/// savepoint of its own, so a failing job undoes only its own writes. A
/// job's caller hears back once its transaction committed.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    jobs: tokio::sync::mpsc::Sender<(Job, Reply)>,
    wal_sync: Option<std::sync::Arc<WalSync>>,
}

/// Jobs committed together at most.
const MAX_BATCH: usize = 256;

impl BatchWriter {
    /// Starts the writer thread, named `name`, on `conn`. It stops once
    /// every clone of the writer is dropped.
    pub fn spawn(name: String, conn: Connection) -> std::io::Result<Self> {
        Self::spawn_with(name, conn, WriterOptions::default())
    }

    /// [`BatchWriter::spawn`] with a hook after each commit and, for a
    /// `synchronous=NORMAL` connection, background WAL syncs.
    pub fn spawn_with(name: String, conn: Connection, options: WriterOptions) -> std::io::Result<Self> {
        let (jobs, mut queue) = tokio::sync::mpsc::channel(MAX_BATCH * 4);
        let WriterOptions { mut after_commit, wal_sync } = options;
        let commits = wal_sync.clone();
        if let Some(sync) = &wal_sync {
            let sync = sync.clone();
            std::thread::Builder::new().name(format!("{name}-sync")).spawn(move || sync.run())?;
        }
        std::thread::Builder::new().name(name).spawn(move || {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
                apply_batch(&conn, std::mem::take(&mut batch), &mut after_commit, commits.as_deref());
            }
            if let Some(sync) = commits {
                sync.stop();
            }
        })?;
        Ok(Self { jobs, wal_sync })
    }

    /// Applies `job` in the writer's next transaction; returns its count once
    /// committed (visible to readers; durable too unless the connection is
    /// `synchronous=NORMAL`, see [`BatchWriter::run_durable`]).
    pub async fn run(
        &self,
        job: impl FnOnce(&Connection) -> rusqlite::Result<u64> + Send + 'static,
    ) -> Result<u64, WriteError> {
        self.submit(Box::new(job)).await.map(|(count, _)| count)
    }

    /// [`BatchWriter::run`], then waits until the commit is on disk: for a
    /// writer with a [`WalSync`], until a WAL sync covers it.
    pub async fn run_durable(
        &self,
        job: impl FnOnce(&Connection) -> rusqlite::Result<u64> + Send + 'static,
    ) -> Result<u64, WriteError> {
        let (count, commit) = self.submit(Box::new(job)).await?;
        if let Some(sync) = &self.wal_sync {
            sync.durable(commit).await?;
        }
        Ok(count)
    }

    async fn submit(&self, job: Job) -> Result<(u64, u64), WriteError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs.send((job, reply)).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

type Replies = Vec<(Reply, Result<u64, WriteError>)>;

fn apply_batch(
    conn: &Connection,
    batch: Vec<(Job, Reply)>,
    after_commit: &mut Option<AfterCommit>,
    commits: Option<&WalSync>,
) {
    let mut fail_all = |replies: Replies, error: &rusqlite::Error| {
        if let Some(hook) = after_commit.as_mut() {
            hook(false);
        }
        for (reply, _) in replies {
            let _ = reply.send(Err(WriteError::Transaction(error.to_string())));
        }
    };
    let mut replies: Replies = Vec::with_capacity(batch.len());
    if !conn.is_autocommit() {
        // A ROLLBACK after an earlier failure failed too; try again.
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let replies = batch.into_iter().map(|(_, reply)| (reply, Ok(0))).collect();
        return fail_all(replies, &e);
    }
    let mut jobs = batch.into_iter();
    while let Some((job, reply)) = jobs.next() {
        let outcome = conn.execute_batch("SAVEPOINT polis_job").and_then(|()| match job(conn) {
            Ok(n) => conn.execute_batch("RELEASE polis_job").map(|()| Ok(n)),
            Err(e) => conn.execute_batch("ROLLBACK TO polis_job; RELEASE polis_job").map(|()| Err(e)),
        });
        match outcome {
            Ok(result) => replies.push((reply, result.map_err(WriteError::Statement))),
            Err(e) => {
                // The savepoint machinery itself failed: the transaction is in doubt.
                let _ = conn.execute_batch("ROLLBACK");
                replies.push((reply, Ok(0)));
                replies.extend(jobs.map(|(_, reply)| (reply, Ok(0))));
                return fail_all(replies, &e);
            }
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return fail_all(replies, &e);
    }
    if let Some(hook) = after_commit.as_mut() {
        hook(true);
    }
    let commit = commits.map_or(0, WalSync::committed);
    for (reply, result) in replies {
        let _ = reply.send(result.map(|count| (count, commit)));
    }
}

/// Durability in the background for a WAL database written with
/// `synchronous=NORMAL`: a commit is visible at once, and made durable by a
/// later fsync of the WAL file, on a thread of its own, at most once per
/// interval, however many commits it covers. What lies in the WAL up to an
/// fsync survives a power loss: recovery keeps every commit whose frames
/// are intact, in order. (SQLite itself syncs the WAL before each
/// checkpoint, so a checkpoint never loses what it copies.)
///
/// For data that may be lost in a power loss as long as whoever hands it
/// over hears back only once it is durable: the in-process bus, whose
/// messages stay in their senders' outboxes until then.
#[derive(Debug)]
pub struct WalSync {
    wal: PathBuf,
    interval: Duration,
    state: Mutex<SyncState>,
    wake: std::sync::Condvar,
    synced: tokio::sync::watch::Sender<SyncPoint>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Commits so far.
    committed: u64,
    stopped: bool,
}

#[derive(Debug, Clone, Default)]
struct SyncPoint {
    /// Commits on disk.
    synced: u64,
    /// Set for good by a failed fsync: after one, the kernel may have
    /// dropped the dirty pages, and no later fsync vouches for them.
    failed: Option<std::sync::Arc<str>>,
}

impl WalSync {
    /// Syncs the WAL of the database `conn` writes, at most every `interval`.
    pub fn new(conn: &Connection, interval: Duration) -> rusqlite::Result<std::sync::Arc<Self>> {
        // The WAL is named after the path SQLite resolved, not the one given
        // to it (a relative path, a symbolic link).
        let Some(path) = conn.path().filter(|p| !p.is_empty()) else {
            return Err(rusqlite::Error::InvalidPath("an in-memory database has no WAL".into()));
        };
        let wal = PathBuf::from(format!("{path}-wal"));
        Ok(std::sync::Arc::new(Self {
            wal,
            interval,
            state: Mutex::default(),
            wake: std::sync::Condvar::new(),
            synced: tokio::sync::watch::Sender::new(SyncPoint::default()),
        }))
    }

    /// Counts a commit; returns its number.
    fn committed(&self) -> u64 {
        let mut state = lock(&self.state);
        state.committed += 1;
        self.wake.notify_one();
        state.committed
    }

    fn stop(&self) {
        lock(&self.state).stopped = true;
        self.wake.notify_one();
    }

    /// Waits until commit number `commit` is on disk.
    async fn durable(&self, commit: u64) -> Result<(), WriteError> {
        let mut synced = self.synced.subscribe();
        let point =
            synced.wait_for(|p| p.synced >= commit || p.failed.is_some()).await.map_err(|_| WriteError::Stopped)?;
        match &point.failed {
            Some(reason) => Err(WriteError::Sync(reason.to_string())),
            None => Ok(()),
        }
    }

    /// The sync thread: waits for commits, then syncs, no sooner than an
    /// interval after the previous sync. Ends after syncing the last commit
    /// once the writer stopped.
    fn run(&self) {
        let mut synced = 0;
        let mut last: Option<std::time::Instant> = None;
        // The directory entry of a WAL created since opening must be durable
        // too: its directory is synced once, with the first sync.
        let mut directory_synced = false;
        loop {
            {
                let mut state = lock(&self.state);
                while state.committed == synced && !state.stopped {
                    state = self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if state.committed == synced {
                    return;
                }
            }
            if let Some(pause) = last.map(|at| self.interval.saturating_sub(at.elapsed())) {
                std::thread::sleep(pause);
            }
            let target = lock(&self.state).committed;
            let result = self.sync_wal().and_then(|()| {
                if !directory_synced {
                    self.sync_directory()?;
                    directory_synced = true;
                }
                Ok(())
            });
            last = Some(std::time::Instant::now());
            match result {
                Ok(()) => {
                    synced = target;
                    self.synced.send_modify(|p| p.synced = target);
                }
                Err(e) => {
                    tracing::error!(wal = %self.wal.display(), error = %polis_core::error::chain(&e), "fsync of the sqlite WAL failed");
                    self.synced.send_modify(|p| p.failed = Some(format!("fsync {}: {e}", self.wal.display()).into()));
                    return;
                }
            }
        }
    }

    fn sync_wal(&self) -> std::io::Result<()> {
        // Opened afresh each time, so a WAL recreated meanwhile is the one
        // synced. It exists while the writer holds its connection: a missing
        // one is an error, never "nothing to sync".
        std::fs::File::open(&self.wal)?.sync_data()
    }

    fn sync_directory(&self) -> std::io::Result<()> {
        match self.wal.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}
