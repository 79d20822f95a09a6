//! Throwaway PostgreSQL clusters, and fresh databases on any server.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::TestkitError;
use crate::server::{Account, Instance, ServerDir, Spec, find_binary, temp_dir};

/// A PostgreSQL cluster of its own: `initdb` into a temp dir
/// ([`PostgresServer::start`]) or into a directory that outlives it
/// ([`PostgresServer::start_in`]), `postgres` on a free port. Dropping it
/// shuts the server down, and deletes a temp dir.
#[derive(Debug)]
pub struct PostgresServer {
    // Declared before `dir` so the server stops before its files go.
    instance: Instance,
    dir: ServerDir,
}

impl PostgresServer {
    /// Initialises a cluster and starts PostgreSQL on a free port, waiting
    /// until it accepts connections.
    ///
    /// PostgreSQL refuses to run as root, so under root both `initdb` and
    /// `postgres` run as the `postgres` system user.
    pub async fn start() -> Result<Self, TestkitError> {
        Self::boot(|| Ok(ServerDir::Temp(temp_dir("postgres")?))).await
    }

    /// Like [`PostgresServer::start`], but the cluster lives in `dir/data`
    /// (created with `initdb` only if it does not hold one yet) and stays
    /// there when the server stops, so the next start in `dir` finds every
    /// database again. The server log is `dir/server.log`. The port is a
    /// fresh free one each time; the server listens on 127.0.0.1 only and
    /// trusts local connections, as a development server.
    ///
    /// Under root, `dir` is handed to the `postgres` user, and every
    /// directory above it must let others search it (`x`), or this fails
    /// naming the one that does not.
    pub async fn start_in(dir: impl AsRef<Path>) -> Result<Self, TestkitError> {
        let dir = dir.as_ref().to_path_buf();
        Self::boot(move || ServerDir::kept(&dir)).await
    }

    async fn boot<F>(dir: F) -> Result<Self, TestkitError>
    where
        F: FnOnce() -> Result<ServerDir, TestkitError> + Send + 'static,
    {
        let (spec, dir) = tokio::task::spawn_blocking(move || init_cluster(dir()?))
            .await
            .map_err(|err| TestkitError::Io { context: "initialising postgres".into(), source: err.into() })??;
        let instance = Instance::start(spec).await?;
        tracing::info!(port = instance.port(), dir = %dir.path().display(), "started postgres");
        Ok(PostgresServer { instance, dir })
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        admin_url(self.port())
    }

    /// The TCP port on 127.0.0.1 the server listens on; it keeps it across
    /// `stop()` and `restart()`.
    pub fn port(&self) -> u16 {
        self.instance.port()
    }

    /// The cluster's data directory, which survives `stop()` and `restart()`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Creates a fresh, uniquely named database on this server.
    pub async fn create_database(&self) -> Result<TestDatabase, TestkitError> {
        create_database_at(&self.url()).await
    }

    /// The server process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.instance.pid()
    }

    /// Whether the server process has ended by itself (crashed, killed):
    /// its exit status, reported once. [`Self::restart`] starts it again on
    /// the same port, with the same files.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.instance.exited()
    }

    /// Shuts down ("fast" shutdown: rolls back open transactions, then
    /// checkpoints) and waits for the server to exit.
    pub async fn stop(&mut self) {
        self.instance.stop().await;
    }

    /// Starts the server again on the same port and data directory, stopping
    /// it first if it is running.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.instance.restart().await
    }

    /// SIGKILLs the postmaster, like a crash; `restart()` then runs crash
    /// recovery.
    pub fn kill(&mut self) {
        self.instance.kill();
    }
}

/// A database of its own on a shared or dedicated server. Dropping it leaves
/// the database behind: servers are throwaway, so nothing accumulates.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    url: String,
    name: String,
}

impl TestDatabase {
    /// The database's connection URL (`postgres://postgres@127.0.0.1:<port>/<name>`,
    /// or `POLIS_TEST_POSTGRES_URL` with the database replaced): connect with it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name, unique on its server (`t<32 hex digits>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

pub(crate) async fn create_database_at(server_url: &str) -> Result<TestDatabase, TestkitError> {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(server_url)
        .await
        .map_err(|source| TestkitError::Database { context: "connecting to postgres", source })?;
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .map_err(|source| TestkitError::Database { context: "creating a test database", source })?;
    let _ = conn.close().await;
    Ok(TestDatabase { url: with_database(server_url, &name), name })
}

/// Replaces the database (the URL's path) in a `postgres://` URL, keeping
/// credentials and query parameters.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{database}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn admin_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Blocking: finds the binaries, prepares `dir` and runs `initdb` unless
/// `dir` already holds a cluster.
fn init_cluster(dir: ServerDir) -> Result<(Spec, ServerDir), TestkitError> {
    let bin = bindir()?;
    let run_as = if crate::sys::is_root() { Some(postgres_account()?) } else { None };
    let kept = matches!(dir, ServerDir::Kept(_));

    let data = dir.path().join("data");
    let io_err = |context: &'static str| move |source| TestkitError::Io { context: context.into(), source };
    // A kept cluster listens on TCP only: a socket under a caller's directory
    // may exceed the 107-byte limit of a Unix socket path.
    let socket = if kept { None } else { Some(dir.path().join("socket")) };
    if let Some(socket) = &socket {
        fs::create_dir(socket).map_err(io_err("creating the postgres socket dir"))?;
    }
    if let Some(Account { uid, gid }) = run_as {
        if kept {
            check_reachable(dir.path(), uid, gid)?;
        }
        for path in std::iter::once(dir.path()).chain(socket.as_deref()) {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_err("handing the postgres dir to the postgres user"))?;
        }
    }

    if !data.join("PG_VERSION").is_file() {
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"])
            // The caller's working directory may be unreadable to `postgres`.
            .current_dir(dir.path());
        if !kept {
            // A throwaway cluster need not survive a power loss.
            initdb.arg("--no-sync");
        }
        if let Some(Account { uid, gid }) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb.output().map_err(io_err("running initdb"))?;
        if !output.status.success() {
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            return Err(TestkitError::Initdb { status: output.status, output: text });
        }
    }

    let args = move |port: u16| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-D".into(), data.clone().into(), "-p".into(), port.to_string().into()];
        // An empty `-k` turns Unix sockets off.
        args.extend(["-k".into(), socket.clone().map(OsString::from).unwrap_or_default()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            // Benchmarks run against this server; their numbers must include
            // real durability costs.
            "fsync=on",
            "max_connections=200",
            "shared_buffers=128MB",
        ] {
            args.extend(["-c".into(), setting.into()]);
        }
        args
    };
    let spec = Spec {
        kind: "postgres",
        program: bin.join("postgres"),
        args: Box::new(args),
        run_as,
        dir: dir.path().to_path_buf(),
        stop_signal: libc::SIGINT,
        // Immediate shutdown: the postmaster takes its backends down and
        // removes its shared memory, which SIGKILL would leave behind.
        quit_signal: libc::SIGQUIT,
        ready: |port| {
            Box::pin(async move {
                let connect = PgConnection::connect(&admin_url(port));
                match tokio::time::timeout(Duration::from_secs(2), connect).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        true
                    }
                    _ => false,
                }
            })
        },
    };
    Ok((spec, dir))
}

/// Fails unless the `postgres` account (`uid`, `gid`) can search every
/// directory above `dir`: running as root, we may create a cluster under a
/// directory only root can enter, and postgres would then fail with a less
/// helpful "permission denied".
fn check_reachable(dir: &Path, uid: u32, gid: u32) -> Result<(), TestkitError> {
    let absolute = std::path::absolute(dir)
        .map_err(|source| TestkitError::Io { context: format!("resolving {}", dir.display()), source })?;
    for ancestor in absolute.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)
            .map_err(|source| TestkitError::Io { context: format!("reading {}", ancestor.display()), source })?;
        let mode = meta.mode();
        let searchable = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Err(TestkitError::Unreachable { path: ancestor.to_path_buf() });
        }
    }
    Ok(())
}

/// The highest `/usr/lib/postgresql/<N>/bin`, else `pg_config --bindir`,
/// else wherever `initdb` is on `PATH`.
fn bindir() -> Result<PathBuf, TestkitError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    let versioned = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| has_initdb(bin))
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    let pg_config = || {
        let output = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        (output.status.success() && has_initdb(&bin)).then_some(bin)
    };
    let on_path = || Some(find_binary("initdb").ok()?.parent()?.to_path_buf());
    versioned.or_else(pg_config).or_else(on_path).ok_or(TestkitError::MissingBinary {
        binary: "initdb",
        searched: "/usr/lib/postgresql/*/bin, `pg_config --bindir`, PATH",
    })
}

/// Looks the `postgres` user up in /etc/passwd (`name:pw:uid:gid:...`).
fn postgres_account() -> Result<Account, TestkitError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|source| TestkitError::Io { context: "reading /etc/passwd".into(), source })?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let (uid, gid) = (fields.nth(1)?.parse().ok()?, fields.next()?.parse().ok()?);
            Some(Account { uid, gid })
        })
        .ok_or(TestkitError::NoPostgresUser)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_rest() {
        assert_eq!(
            with_database("postgres://u:p@h:5/old?sslmode=disable", "t_1"),
            "postgres://u:p@h:5/t_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t_1"), "postgres://h:5/t_1");
        assert_eq!(with_database("postgresql://h/", "t_1"), "postgresql://h/t_1");
    }
}
