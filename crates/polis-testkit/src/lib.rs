//! Throwaway PostgreSQL, NATS JetStream and Redis servers for polis tests.
//!
//! Tests run against the real servers, started from the installed binaries
//! on free ports with temp dirs, never against servers that happen to be
//! running. There are two ways to get one:
//!
//! - **Shared** ([`postgres`], [`nats`], [`redis`]): each test binary starts
//!   one server of each kind on first use and keeps it until it exits. Every
//!   call returns something isolated on it: a fresh database, or a unique
//!   prefix for streams, subjects and keys.
//! - **Dedicated** ([`PostgresServer::start`], [`NatsServer::start`],
//!   [`RedisServer::start`]): a server owned by one test, for fault tests
//!   that stop, kill or restart it. Dropping the handle kills the server and
//!   deletes its files.
//! - **Kept** ([`PostgresServer::start_in`], [`NatsServer::start_in`]): the
//!   same servers with their files in a directory of the caller's that
//!   outlives them, so a later start resumes them. `polis up --mode
//!   distributed` runs its local servers this way.
//!
//! Setting `POLIS_TEST_POSTGRES_URL`, `POLIS_TEST_NATS_URL` or
//! `POLIS_TEST_REDIS_URL` points the shared helpers at an existing server
//! instead; dedicated servers always start their own.
//!
//! A missing binary fails the test with a message naming `scripts/test`,
//! which installs them; tests are never silently skipped.
//!
//! Every server is tied to the process that started it: if that process
//! dies, however it dies, the kernel stops the server. [`process`] offers
//! the same tether for other child processes (a supervisor's services).
//!
//! Layout: `server` runs one server process (readiness, stop, restart),
//! `sys` holds the libc calls that tie servers' lives to the test process,
//! `postgres`, `nats` and `redis` configure each kind, and [`process`]
//! exposes the tether.

#![warn(missing_docs)]

use std::any::Any;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::process::ExitStatus;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

mod nats;
mod postgres;
pub mod process;
mod redis;
mod server;
mod sys;

pub use nats::NatsServer;
pub use postgres::{PostgresServer, TestDatabase};
pub use redis::RedisServer;

/// What can go wrong starting or driving a throwaway server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A server binary is not installed; `scripts/test` installs them.
    #[error(
        "`{binary}` not found (searched {searched}); run `scripts/test` to install postgresql, nats-server and redis-server"
    )]
    MissingBinary {
        /// The binary looked for, e.g. `initdb`.
        binary: &'static str,
        /// Where it was looked for, e.g. `PATH, /usr/local/sbin, /usr/sbin, /sbin`.
        searched: &'static str,
    },
    /// Running as root without a `postgres` user: PostgreSQL refuses to run
    /// as root and there is no one else to run it as.
    #[error(
        "running as root, but there is no `postgres` user to run postgres as; run `scripts/test` to install postgresql, which creates it"
    )]
    NoPostgresUser,
    /// `initdb` could not create the cluster.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// Its standard output and error.
        output: String,
    },
    /// The server process exited before it accepted connections.
    #[error("{kind} exited during startup ({status}); its log:\n{log}")]
    Exited {
        /// Which server: `postgres`, `nats-server` or `redis-server`.
        kind: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its log so far, which usually says why.
        log: String,
    },
    /// The server kept running but did not accept connections in time.
    #[error("{kind} did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// Which server: `postgres`, `nats-server` or `redis-server`.
        kind: &'static str,
        /// How long it was given.
        timeout: Duration,
        /// Its log so far.
        log: String,
    },
    /// A kept server's directory is not reachable by the `postgres` user
    /// PostgreSQL runs as under root.
    #[error(
        "the postgres user cannot search {}: postgres refuses to run as root, so it runs as `postgres`, which needs the x permission on every directory above its data; run `chmod o+x {}` or choose a directory it can reach",
        path.display(),
        path.display()
    )]
    Unreachable {
        /// The first directory above the data that `postgres` cannot search.
        path: std::path::PathBuf,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. `initialising postgres`.
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Connecting to PostgreSQL, or creating a test database, failed.
    #[error("{context}: {source}")]
    Database {
        /// What was being done, e.g. `creating a test database`.
        context: &'static str,
        /// sqlx's error.
        source: sqlx::Error,
    },
}

/// A fresh namespace on the shared NATS server.
#[derive(Debug, Clone)]
pub struct TestNats {
    url: String,
    prefix: String,
}

impl TestNats {
    /// The shared server's URL (`nats://127.0.0.1:<port>` or `POLIS_TEST_NATS_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Unique to this test (`t<32 hex digits>`); name streams and subjects
    /// with it so tests sharing the server never see each other's messages.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A fresh namespace on the shared Redis server.
#[derive(Debug, Clone)]
pub struct TestRedis {
    url: String,
    prefix: String,
}

impl TestRedis {
    /// The shared server's URL (`redis://127.0.0.1:<port>` or `POLIS_TEST_REDIS_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Unique to this test (`t<32 hex digits>`); start every key with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A fresh database on the shared PostgreSQL server (or on
/// `POLIS_TEST_POSTGRES_URL`'s server).
///
/// # Panics
///
/// If the server cannot be started or the database cannot be created.
pub async fn postgres() -> TestDatabase {
    static SHARED: SharedCell = OnceCell::const_new();
    let url = shared_url(&SHARED, "postgres", "POLIS_TEST_POSTGRES_URL", || async {
        let server = PostgresServer::start().await?;
        Ok((server.url(), Box::new(server) as Box<dyn Any + Send + Sync>))
    })
    .await;
    postgres::create_database_at(url)
        .await
        .unwrap_or_else(|err| panic!("polis-testkit: cannot create a test database: {err}"))
}

/// A unique prefix on the shared NATS JetStream server (or on
/// `POLIS_TEST_NATS_URL`).
///
/// # Panics
///
/// If the server cannot be started.
pub async fn nats() -> TestNats {
    static SHARED: SharedCell = OnceCell::const_new();
    let url = shared_url(&SHARED, "nats-server", "POLIS_TEST_NATS_URL", || async {
        let server = NatsServer::start().await?;
        Ok((server.url(), Box::new(server) as Box<dyn Any + Send + Sync>))
    })
    .await;
    TestNats { url: url.to_owned(), prefix: unique_prefix() }
}

/// A unique key prefix on the shared Redis server (or on
/// `POLIS_TEST_REDIS_URL`).
///
/// # Panics
///
/// If the server cannot be started.
pub async fn redis() -> TestRedis {
    static SHARED: SharedCell = OnceCell::const_new();
    let url = shared_url(&SHARED, "redis-server", "POLIS_TEST_REDIS_URL", || async {
        let server = RedisServer::start().await?;
        Ok((server.url(), Box::new(server) as Box<dyn Any + Send + Sync>))
    })
    .await;
    TestRedis { url: url.to_owned(), prefix: unique_prefix() }
}

/// A shared server's URL, and the server itself when we started it (kept
/// only so it lives as long as the process). A failure is kept too, so that
/// every test reports it at once instead of retrying a slow startup.
type SharedCell = OnceCell<Result<(String, Option<Box<dyn Any + Send + Sync>>), String>>;

async fn shared_url<F, Fut>(cell: &'static SharedCell, kind: &str, env: &str, start: F) -> &'static str
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(String, Box<dyn Any + Send + Sync>), TestkitError>>,
{
    // Each #[tokio::test] has its own runtime, and whichever test gets here
    // first starts the server on its runtime. That is safe because a server
    // holds nothing tied to a runtime: the process is spawned from a plain
    // thread and the handle only holds std types.
    let shared = cell
        .get_or_init(|| async {
            match std::env::var(env) {
                Ok(url) if !url.is_empty() => Ok((url, None)),
                _ => start().await.map(|(url, server)| (url, Some(server))).map_err(|err| err.to_string()),
            }
        })
        .await;
    match shared {
        Ok((url, _)) => url,
        Err(err) => panic!("polis-testkit: cannot start the shared {kind}: {err}"),
    }
}

fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A condition passed to [`wait_for`] did not hold in time.
#[derive(Debug, thiserror::Error)]
#[error("condition not met within {0:?}")]
pub struct TimedOut(pub Duration);

/// Polls `condition` every 10 ms until it holds or `timeout` passes; the way
/// to await eventual consistency without bare sleeps.
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some session of the database `pool` connects to is blocked
/// waiting for a lock (`pg_stat_activity.wait_event_type = 'Lock'`): the
/// way to know that a concurrent statement is *waiting* for a transaction,
/// not merely slow.
///
/// # Panics
///
/// If `pg_stat_activity` cannot be read.
pub async fn wait_for_lock_waiter(pool: &sqlx::PgPool, timeout: Duration) -> Result<(), TimedOut> {
    wait_for(timeout, || async {
        let waiters: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("polis-testkit: reading pg_stat_activity");
        waiters >= 1
    })
    .await
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has
/// not handed out before.
///
/// # Panics
///
/// If no port can be bound at all.
pub fn free_port() -> u16 {
    // The kernel may hand the same port out again once the probe socket is
    // closed; remembering what we returned keeps servers started by one
    // test binary apart.
    static ISSUED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("polis-testkit: cannot bind any port on 127.0.0.1");
        if ISSUED.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}
