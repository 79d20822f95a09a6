//! What the three server kinds share: finding binaries, temp or kept
//! directories, and the lifecycle of one server process (boot, readiness,
//! stop, restart, kill).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{TestkitError, free_port, sys};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
const START_ATTEMPTS: u32 = 3;

pub(crate) type Probe = fn(u16) -> Pin<Box<dyn Future<Output = bool> + Send>>;

/// A Unix account to run a server as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Account {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// How to run and probe one kind of server.
pub(crate) struct Spec {
    pub(crate) kind: &'static str,
    pub(crate) program: PathBuf,
    pub(crate) args: Box<dyn Fn(u16) -> Vec<OsString> + Send + Sync>,
    pub(crate) run_as: Option<Account>,
    /// Working directory; also holds `server.log`.
    pub(crate) dir: PathBuf,
    /// Sent by `stop()`: the server's orderly shutdown.
    pub(crate) stop_signal: libc::c_int,
    /// Sent on drop and when the test process dies: the quickest shutdown
    /// that still lets the server clean up after itself.
    pub(crate) quit_signal: libc::c_int,
    pub(crate) ready: Probe,
}

/// One server process, restartable on the same port.
pub(crate) struct Instance {
    spec: Spec,
    port: u16,
    child: Option<Child>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("kind", &self.spec.kind)
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Instance {
    /// Boots on a fresh port, retrying on another port if the server dies
    /// during startup: between `free_port()` and the server's bind another
    /// process may have taken the port.
    pub(crate) async fn start(spec: Spec) -> Result<Self, TestkitError> {
        let mut instance = Instance { spec, port: 0, child: None };
        let mut attempt = 1;
        loop {
            instance.port = free_port();
            match instance.boot().await {
                Err(TestkitError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                result => return result.map(|()| instance),
            }
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs (or has exited without being reaped).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the server has exited since it was started, once:
    /// the process is reaped and forgotten, [`Instance::restart`] boots it
    /// again.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.reap()
    }

    /// Stops the server if it runs, then boots it again on the same port.
    pub(crate) async fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop().await;
        let mut attempt = 1;
        loop {
            match self.boot().await {
                // After a SIGKILL, leftovers (PostgreSQL backends noticing
                // their postmaster died) can hold the server back briefly.
                Err(TestkitError::Exited { .. }) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
    }

    pub(crate) async fn stop(&mut self) {
        let Some(child) = &self.child else { return };
        sys::signal(child, self.spec.stop_signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.reap().is_none() {
            if Instant::now() >= deadline {
                tracing::warn!(kind = self.spec.kind, port = self.port, "server ignored its stop signal; killing it");
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn boot(&mut self) -> Result<(), TestkitError> {
        let kind = self.spec.kind;
        let io_err = |context: &str| {
            let context = format!("{context} for {kind}");
            move |source| TestkitError::Io { context, source }
        };
        let mut log =
            OpenOptions::new().create(true).append(true).open(self.log_path()).map_err(io_err("opening server.log"))?;
        // Restarts append to the same log; mark where each run begins.
        writeln!(log, "--- polis-testkit: starting {kind} on port {} ---", self.port)
            .map_err(io_err("writing server.log"))?;

        let mut cmd = Command::new(&self.spec.program);
        cmd.args((self.spec.args)(self.port))
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("duplicating server.log"))?)
            .stderr(log);
        if let Some(account) = self.spec.run_as {
            cmd.uid(account.uid).gid(account.gid);
        }
        let child = sys::spawn_tethered(cmd, self.spec.quit_signal).await.map_err(io_err("spawning the server"))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.reap() {
                return Err(TestkitError::Exited { kind, status, log: self.log_tail() });
            }
            if (self.spec.ready)(self.port).await {
                tracing::debug!(kind, port = self.port, "throwaway server is ready");
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(TestkitError::NotReady { kind, timeout: READY_TIMEOUT, log: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Collects the exit status if the server has exited. Forgetting the
    /// child once reaped matters: its pid may then be recycled, and we must
    /// never signal it again.
    fn reap(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn log_path(&self) -> PathBuf {
        self.spec.dir.join("server.log")
    }

    fn log_tail(&self) -> String {
        const TAIL: u64 = 8 * 1024;
        let read = || -> io::Result<String> {
            let mut file = File::open(self.log_path())?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|err| format!("(cannot read server.log: {err})"))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            sys::signal(child, self.spec.quit_signal);
            let deadline = Instant::now() + DROP_TIMEOUT;
            while self.reap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.kill();
    }
}

/// Where a server keeps its files: a temp dir deleted with the server, or a
/// directory of the caller's that outlives it (a local deployment's data).
#[derive(Debug)]
pub(crate) enum ServerDir {
    Temp(TempDir),
    Kept(PathBuf),
}

impl ServerDir {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(path) => path,
        }
    }

    /// Creates `path` (and its parents) if missing and keeps it.
    pub(crate) fn kept(path: &Path) -> Result<Self, TestkitError> {
        fs::create_dir_all(path)
            .map_err(|source| TestkitError::Io { context: format!("creating {}", path.display()), source })?;
        Ok(Self::Kept(path.to_path_buf()))
    }
}

/// Finds `name` on `PATH`, or in the sbin directories that a non-root `PATH`
/// often lacks (Debian installs `nats-server` in `/usr/sbin`).
pub(crate) fn find_binary(name: &'static str) -> Result<PathBuf, TestkitError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(TestkitError::MissingBinary { binary: name, searched: "PATH, /usr/local/sbin, /usr/sbin, /sbin" })
}

/// Creates `<tmp>/polis-testkit/<pid>-<kind>-<random>`. Shared servers never
/// drop their directory, so the first call in each process removes the
/// directories of processes that no longer exist.
pub(crate) fn temp_dir(kind: &str) -> Result<TempDir, TestkitError> {
    static SWEEP: Once = Once::new();
    let base = std::env::temp_dir().join("polis-testkit");
    let io_err = |context: &str| {
        let context = format!("{context} {}", base.display());
        move |source| TestkitError::Io { context, source }
    };
    fs::create_dir_all(&base).map_err(io_err("creating"))?;
    SWEEP.call_once(|| {
        // World-writable and sticky like /tmp, so root and non-root runs can
        // share it; this fails harmlessly when another user owns it.
        let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o1777));
        sweep(&base);
    });
    tempfile::Builder::new()
        .prefix(&format!("{}-{kind}-", std::process::id()))
        .tempdir_in(&base)
        .map_err(io_err("creating a temp dir in"))
}

fn sweep(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|name| name.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !sys::is_alive(pid)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
