//! The PostgreSQL server the scenarios run against, fresh databases on it,
//! and what writing cost: WAL counters and client and server CPU, which
//! explain most differences between two runs.

use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use polis_store::{PgEventStore, PgOptions};
use polis_testkit::PostgresServer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool, Row as _};

use crate::machine;

/// A throwaway server (the default) or the one `--postgres-url` names.
#[derive(Debug)]
pub(crate) struct Postgres {
    admin: PgConnectOptions,
    /// Kept alive for the run; dropping it stops the server and deletes its files.
    server: Option<PostgresServer>,
    /// Databases this run created, dropped at the end on a server we don't own.
    created: Mutex<Vec<String>>,
}

impl Postgres {
    pub(crate) async fn start(url: Option<&str>) -> Result<Self> {
        let (url, server) = match url {
            Some(url) => (url.to_owned(), None),
            None => {
                eprintln!("starting a throwaway PostgreSQL server…");
                let server = PostgresServer::start().await.context("starting a throwaway postgres")?;
                (server.url(), Some(server))
            }
        };
        let admin = PgConnectOptions::from_str(&url).context("parsing the postgres url")?;
        Ok(Self { admin, server, created: Mutex::new(Vec::new()) })
    }

    /// The server's version and the settings that decide commit cost.
    pub(crate) async fn version(&self) -> Result<String> {
        let mut conn = self.connect().await?;
        let row = sqlx::query(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
                    current_setting('synchronous_commit'), current_setting('wal_sync_method'), \
                    current_setting('shared_buffers')",
        )
        .fetch_one(&mut conn)
        .await
        .context("reading the postgres version")?;
        let _ = conn.close().await;
        let get = |i: usize| row.try_get::<String, _>(i).unwrap_or_default();
        let owner = if self.server.is_some() { "throwaway server from polis-testkit" } else { "--postgres-url" };
        Ok(format!(
            "PostgreSQL {} ({owner}): fsync={}, synchronous_commit={}, wal_sync_method={}, shared_buffers={}",
            get(0),
            get(1),
            get(2),
            get(3),
            get(4)
        ))
    }

    /// The server's TCP address.
    pub(crate) async fn address(&self) -> Result<std::net::SocketAddr> {
        let target = (self.admin.get_host().to_owned(), self.admin.get_port());
        tokio::net::lookup_host(target)
            .await
            .context("resolving the postgres host")?
            .next()
            .context("the postgres host has no address")
    }

    /// The round trip of `SELECT 1` over a fresh connection to `database`: p50.
    pub(crate) async fn round_trip(&self, database: &PgConnectOptions) -> Result<Duration> {
        let mut conn = PgConnection::connect_with(database).await.context("connecting to time round trips")?;
        let mut samples = Vec::with_capacity(200);
        for _ in 0..200 {
            let started = Instant::now();
            sqlx::query("SELECT 1").execute(&mut conn).await.context("timing a round trip")?;
            samples.push(started.elapsed());
        }
        let _ = conn.close().await;
        samples.sort_unstable();
        Ok(samples[samples.len() / 2])
    }

    async fn connect(&self) -> Result<PgConnection> {
        PgConnection::connect_with(&self.admin).await.context("connecting to postgres")
    }

    /// Creates an empty database and returns options that connect to it.
    pub(crate) async fn database(&self, label: &str) -> Result<PgConnectOptions> {
        let name = format!("bench_{label}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = self.connect().await?;
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;
        self.created.lock().unwrap_or_else(|e| e.into_inner()).push(name.clone());
        Ok(self.admin.clone().database(&name))
    }

    /// A polis store on `database`, with a pool of up to `max` connections
    /// configured as `PgEventStore::connect` configures its own.
    pub(crate) async fn polis_store(&self, database: &PgConnectOptions, max: u32) -> Result<PgEventStore> {
        let mut options = PgOptions::new("bench");
        options.max_connections = max;
        PgEventStore::from_pool(self.pool(database, max).await?, options).await.context("opening the polis store")
    }

    /// A pool of up to `max` connections to `database`.
    pub(crate) async fn pool(&self, database: &PgConnectOptions, max: u32) -> Result<PgPool> {
        PgPoolOptions::new().max_connections(max).connect_with(database.clone()).await.context("connecting a pool")
    }

    /// Fails unless `table` in `database` holds exactly `expected` rows: a
    /// guard that every measured write really happened.
    pub(crate) async fn expect_rows(&self, database: &PgConnectOptions, table: &str, expected: u64) -> Result<()> {
        let mut conn = PgConnection::connect_with(database).await.context("connecting to count rows")?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("counting rows of {table}"))?;
        let _ = conn.close().await;
        ensure!(rows as u64 == expected, "{table} holds {rows} rows, but {expected} events were written");
        Ok(())
    }

    /// Cumulative costs so far, once every backend of `database` has exited:
    /// backends publish their WAL counters on exit, and the postmaster adds
    /// their CPU time to its children's. Close the pools first.
    pub(crate) async fn counters_after_close(&self, database: &PgConnectOptions) -> Result<Counters> {
        let name = database.get_database().context("database options without a name")?;
        let mut conn = self.connect().await?;
        let started = Instant::now();
        let mut terminated = false;
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .context("counting backends")?;
            if open == 0 {
                break;
            }
            // sqlx's `Pool::close` can return while a connection that was
            // being handed back lands in the closed pool's idle queue, where
            // it stays open: end such idle leftovers from the server side.
            if !terminated && started.elapsed() > Duration::from_secs(1) {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND backend_type = 'client backend' AND state = 'idle'",
                )
                .bind(name)
                .execute(&mut conn)
                .await
                .context("ending idle backends")?;
                terminated = true;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("{open} backends of {name} still open 10 s after their pool closed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counters = self.read_counters(&mut conn).await;
        let _ = conn.close().await;
        counters
    }

    /// Cumulative costs so far.
    pub(crate) async fn counters(&self) -> Result<Counters> {
        let mut conn = self.connect().await?;
        let counters = self.read_counters(&mut conn).await;
        let _ = conn.close().await;
        counters
    }

    async fn read_counters(&self, conn: &mut PgConnection) -> Result<Counters> {
        let row = sqlx::query("SELECT wal_records, wal_bytes::int8, wal_sync FROM pg_stat_wal")
            .fetch_one(conn)
            .await
            .context("reading pg_stat_wal (PostgreSQL 14 or later)")?;
        Ok(Counters {
            wal_records: row.try_get(0)?,
            wal_bytes: row.try_get(1)?,
            wal_syncs: row.try_get(2)?,
            client_cpu: machine::cpu_times("self").map_or(Duration::ZERO, |(own, _)| own),
            server_cpu: self.server_cpu(),
        })
    }

    /// CPU used by the throwaway server's exited backends (unknown for a
    /// server given by URL).
    fn server_cpu(&self) -> Option<Duration> {
        let pid_file = std::fs::read_to_string(self.server.as_ref()?.data_dir().join("postmaster.pid")).ok()?;
        let pid = pid_file.lines().next()?.trim().to_owned();
        machine::cpu_times(&pid).map(|(_, children)| children)
    }

    /// CPU used so far by the throwaway server: the postmaster, its running
    /// processes (backends, walwriter, checkpointer, autovacuum) and its
    /// exited ones (unknown for a server given by URL). Unlike
    /// [`Self::counters_after_close`] it needs no connection closed, so it
    /// measures work on a pool that stays open.
    pub(crate) fn server_cpu_now(&self) -> Option<Duration> {
        let pid_file = std::fs::read_to_string(self.server.as_ref()?.data_dir().join("postmaster.pid")).ok()?;
        let postmaster = pid_file.lines().next()?.trim().to_owned();
        let (own, exited) = machine::cpu_times(&postmaster)?;
        let postmaster_pid: u32 = postmaster.parse().ok()?;
        let running = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .filter(|pid| machine::parent_pid(pid) == Some(postmaster_pid))
            .filter_map(|pid| machine::cpu_times(&pid).map(|(own, _)| own))
            .sum::<Duration>();
        Some(own + exited + running)
    }

    /// Drops the databases this run created on a server it does not own,
    /// and stops the throwaway server otherwise.
    pub(crate) async fn shutdown(self) {
        if self.server.is_some() {
            return;
        }
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        if let Ok(mut conn) = self.connect().await {
            for name in names {
                if let Err(e) = conn.execute(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#).as_str()).await {
                    eprintln!("warning: could not drop database {name}: {e}");
                }
            }
            let _ = conn.close().await;
        }
    }
}

/// Cumulative costs: the server's WAL counters (`pg_stat_wal`, server-wide),
/// this process's CPU time and the server's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    wal_records: i64,
    wal_bytes: i64,
    wal_syncs: i64,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
}

impl Counters {
    /// What happened between `before` and `self`, while `events` events were written.
    pub(crate) fn since(&self, before: &Counters, events: u64) -> Costs {
        Costs {
            wal_records: self.wal_records - before.wal_records,
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_syncs: self.wal_syncs - before.wal_syncs,
            client_cpu: self.client_cpu.saturating_sub(before.client_cpu),
            server_cpu: self.server_cpu.zip(before.server_cpu).map(|(a, b)| a.saturating_sub(b)),
            events,
        }
    }
}

/// What writing some number of events cost, summed over runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Costs {
    wal_records: i64,
    wal_bytes: i64,
    wal_syncs: i64,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
    events: u64,
}

/// How to read a costs table.
pub(crate) const COSTS_NOTE: &str = "\nClient CPU is this whole process (user + system); server CPU is what the \
     server's backends used, read from the postmaster's reaped children once each run's connections closed; \
     WAL counters come from `pg_stat_wal` and are server-wide.\n";

/// The header of a table of [`Costs::per_event`] cells.
pub(crate) const COSTS_HEADER: [&str; 5] =
    ["client CPU/event", "server CPU/event", "WAL fsyncs/event", "WAL records/event", "WAL bytes/event"];

impl Costs {
    pub(crate) fn add(&mut self, other: Costs) {
        self.wal_records += other.wal_records;
        self.wal_bytes += other.wal_bytes;
        self.wal_syncs += other.wal_syncs;
        self.client_cpu += other.client_cpu;
        self.server_cpu = match (self.server_cpu, other.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) if self.events == 0 => b,
            _ => None,
        };
        self.events += other.events;
    }

    /// Per event, as table cells in the order of [`COSTS_HEADER`].
    pub(crate) fn per_event(&self) -> [String; 5] {
        let events = self.events.max(1) as f64;
        let per = |v: i64| v as f64 / events;
        let micros = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6 / events);
        [
            micros(self.client_cpu),
            self.server_cpu.map_or_else(|| "?".to_owned(), micros),
            format!("{:.3}", per(self.wal_syncs)),
            format!("{:.1}", per(self.wal_records)),
            format!("{:.0} B", per(self.wal_bytes)),
        ]
    }
}
