//! The shop's data directory: one process owns it, and it knows what it holds.
//!
//! Both deployments keep their state under a data directory (`polis up
//! --data-dir D`): the embedded shop its SQLite files, the distributed
//! supervisor its local servers' files, logs and pids. Two mistakes used to
//! pass silently there, and [`DataDir::open`] now refuses both at once:
//!
//! - **a second process on the same directory.** The directory's
//!   [`LOCK_FILE`] is locked (an OS file lock, `flock`) for as long as the
//!   [`DataDir`] lives, and holds the owner's pid. A second `open` fails with
//!   [`DataDirError::InUse`], naming that pid. The kernel drops the lock when
//!   its process dies, however it dies, so a crash never leaves a stale lock.
//! - **a restart that would silently start another shop beside the data.**
//!   Once its first start has succeeded ([`DataDir::record`]), the
//!   directory holds a [`Manifest`] ([`MANIFEST_FILE`]):
//!   the deployment, and for the distributed one where its PostgreSQL and
//!   NATS are (the local servers under `servers/`, or the address of the
//!   configured ones). An open that asks for something else fails with
//!   [`DataDirError::Mismatch`], saying what the directory holds and what
//!   to do.
//!
//! What may change stays allowed: the saga style, the listen address,
//! ports of the local servers, every service's own settings.
//!
//! A first start that fails records nothing, so a mistyped server URL does
//! not tie the directory to it. A directory without a manifest (new, or
//! written before manifests existed) is recognized by its files (`order.db`
//! or `bus.db`: embedded; `servers/` or `logs/`: distributed, with local
//! servers where `servers/postgres` or `servers/nats` exist) and checked
//! against them.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::workload::Deployment;

/// The file whose OS lock marks the directory's owner; it holds the owner's pid.
pub const LOCK_FILE: &str = "polis.lock";
/// The file that records what the directory holds ([`Manifest`]).
pub const MANIFEST_FILE: &str = "polis-data.json";
/// The manifest format this build writes and reads.
const FORMAT: u32 = 1;

/// What can go wrong taking a data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// The path exists and is not a directory.
    #[error("{} is not a directory; choose a directory for --data-dir", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Another process owns the directory.
    #[error("{} is in use by {}; stop it first, or choose another --data-dir", path.display(), Owner(*pid))]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The owner's pid, when its lock file says.
        pid: Option<u32>,
    },
    /// The directory holds something other than what was asked for.
    #[error("{} holds {recorded}, not {requested}; {advice}", path.display())]
    Mismatch {
        /// The directory.
        path: PathBuf,
        /// What the directory records.
        recorded: String,
        /// What this start asked for.
        requested: String,
        /// What the user can do about it.
        advice: String,
    },
    /// The manifest exists but cannot be read.
    #[error("cannot read {}: {reason}; it records what the data directory holds, restore it or choose another --data-dir", path.display())]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// "pid N" or "another process", for [`DataDirError::InUse`].
struct Owner(Option<u32>);

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("another process"),
        }
    }
}

/// Where one of the distributed shop's servers is, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerPlace {
    /// Started by the supervisor, with its files under `<data-dir>/servers/`.
    Local,
    /// Configured: `host:port` of the server's URL (credentials are never recorded).
    At(String),
}

impl ServerPlace {
    /// The place of a configured server: `host:port` of `url`, without
    /// user, password, path or query.
    pub fn of_url(url: &str) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        Self::At(host.to_owned())
    }
}

impl fmt::Display for ServerPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("the local server under servers/"),
            Self::At(address) => write!(f, "the server at {address}"),
        }
    }
}

/// What a data directory holds, recorded when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format version.
    pub format: u32,
    /// How the shop in this directory is deployed.
    pub deployment: Deployment,
    /// Distributed: where the services' databases are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<ServerPlace>,
    /// Distributed: where the services' streams are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<ServerPlace>,
    /// When the directory was created (RFC 3339), for people reading the file.
    pub created_at: String,
    /// The program that created it, for people reading the file.
    pub created_by: String,
}

/// What a start asks of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The deployment about to run.
    pub deployment: Deployment,
    /// Distributed: where its PostgreSQL will be.
    pub postgres: Option<ServerPlace>,
    /// Distributed: where its NATS will be.
    pub nats: Option<ServerPlace>,
}

impl Wanted {
    /// The embedded shop.
    pub fn embedded() -> Self {
        Self { deployment: Deployment::Embedded, postgres: None, nats: None }
    }

    /// The distributed shop with its servers where given.
    pub fn distributed(postgres: ServerPlace, nats: ServerPlace) -> Self {
        Self { deployment: Deployment::Distributed, postgres: Some(postgres), nats: Some(nats) }
    }
}

/// A data directory this process owns (see the module docs). The lock is
/// released when it is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    manifest: Manifest,
    /// The manifest is not on disk yet: [`DataDir::record`] writes it.
    pending: bool,
    /// Holds the OS lock while open.
    _lock: File,
}

impl DataDir {
    /// Creates the directory if missing, takes its lock, and checks its
    /// manifest, or without one what its files say, against `wanted`.
    pub fn open(path: &Path, wanted: &Wanted) -> Result<Self, DataDirError> {
        if path.exists() && !path.is_dir() {
            return Err(DataDirError::NotADirectory { path: path.to_path_buf() });
        }
        std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))?;
        let lock = lock(path)?;
        let (manifest, pending) = match read_manifest(path)? {
            Some(manifest) => (manifest, false),
            None => (from_files(path, wanted), true),
        };
        check(path, &manifest, wanted)?;
        Ok(Self { path: path.to_path_buf(), manifest, pending, _lock: lock })
    }

    /// Writes the manifest if the directory has none yet; call it once the
    /// shop has started. Until then a failed start leaves the directory
    /// free to be started differently.
    pub fn record(&mut self) -> Result<(), DataDirError> {
        if self.pending {
            write_manifest(&self.path, &self.manifest)?;
            self.pending = false;
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the directory holds.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// How often a lock held under this process's own pid is tried (10 ms
/// apart) before it counts as in use.
const OWN_LOCK_TRIES: u32 = 50;

/// Takes the directory's lock and writes this process's pid into it.
fn lock(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.seek(SeekFrom::Start(0));
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                // A lock this process let go of can outlive it for a moment:
                // a child forked by another thread shares the lock until it
                // executes its program. Only this process's own lock is
                // worth a second look; another's is refused at once.
                tries += 1;
                if pid == Some(std::process::id()) && tries < OWN_LOCK_TRIES {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                return Err(DataDirError::InUse { path: dir.to_path_buf(), pid });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Io { context: format!("locking {}", path.display()), source });
            }
        }
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{pid}"))
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(file)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, DataDirError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DataDirError::Io { context: format!("reading {}", path.display()), source }),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|err| DataDirError::BadManifest { path: path.clone(), reason: err.to_string() })?;
    if manifest.format > FORMAT {
        return Err(DataDirError::BadManifest {
            path,
            reason: format!("format {} is newer than this polis reads ({FORMAT}); use a newer polis", manifest.format),
        });
    }
    Ok(Some(manifest))
}

/// Writes the manifest whole or not at all: aside, synced, renamed.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), DataDirError> {
    let path = dir.join(MANIFEST_FILE);
    let partial = dir.join(format!("{MANIFEST_FILE}.partial"));
    let mut json = serde_json::to_vec_pretty(manifest).map_err(|err| DataDirError::Io {
        context: "encoding the data directory's manifest".to_owned(),
        source: std::io::Error::other(err),
    })?;
    json.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&partial)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(io_err(format!("writing {}", path.display())))
}

/// The manifest of a directory that has none: what its files say, and
/// `wanted` for what they do not (all of it, for a new directory).
fn from_files(dir: &Path, wanted: &Wanted) -> Manifest {
    let deployment = if dir.join("order.db").exists() || dir.join("bus.db").exists() {
        Deployment::Embedded
    } else if dir.join("servers").is_dir() || dir.join("logs").is_dir() {
        Deployment::Distributed
    } else {
        wanted.deployment
    };
    let place = |server: &str, wanted: &Option<ServerPlace>| {
        if dir.join("servers").join(server).is_dir() {
            Some(ServerPlace::Local)
        } else {
            wanted.clone().or(Some(ServerPlace::Local))
        }
    };
    let (postgres, nats) = match deployment {
        Deployment::Distributed => (place("postgres", &wanted.postgres), place("nats", &wanted.nats)),
        Deployment::Embedded => (None, None),
    };
    Manifest {
        format: FORMAT,
        deployment,
        postgres,
        nats,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        created_by: format!("polis {}", env!("CARGO_PKG_VERSION")),
    }
}

fn check(path: &Path, recorded: &Manifest, wanted: &Wanted) -> Result<(), DataDirError> {
    let mismatch = |recorded: String, requested: String, advice: String| DataDirError::Mismatch {
        path: path.to_path_buf(),
        recorded,
        requested,
        advice,
    };
    let name = |d: Deployment| match d {
        Deployment::Embedded => "embedded",
        Deployment::Distributed => "distributed",
    };
    if recorded.deployment != wanted.deployment {
        let holds = match recorded.deployment {
            Deployment::Embedded => "an embedded shop",
            Deployment::Distributed => "a distributed shop",
        };
        return Err(mismatch(
            holds.to_owned(),
            format!("--mode {}", name(wanted.deployment)),
            format!(
                "run it with --mode {}, or choose another --data-dir for a new {} shop",
                name(recorded.deployment),
                name(wanted.deployment)
            ),
        ));
    }
    for (kind, variable, was, now) in [
        ("PostgreSQL", "POLIS_POSTGRES_URL", &recorded.postgres, &wanted.postgres),
        ("NATS", "POLIS_NATS_URL", &recorded.nats, &wanted.nats),
    ] {
        if let (Some(was), Some(now)) = (was, now)
            && was != now
        {
            let advice = match was {
                ServerPlace::Local => format!("unset {variable} (and the config file's setting) to use it again"),
                ServerPlace::At(address) => format!(
                    "point {variable} at {address} again; if that server moved, write its new host:port into {}",
                    path.join(MANIFEST_FILE).display()
                ),
            };
            return Err(mismatch(format!("a shop whose {kind} is {was}"), format!("{kind} at {now}"), advice));
        }
    }
    Ok(())
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> DataDirError {
    move |source| DataDirError::Io { context, source }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), &Wanted::embedded()).unwrap();
        let err = DataDir::open(dir.path(), &Wanted::embedded()).unwrap_err();
        assert!(matches!(err, DataDirError::InUse { pid: Some(pid), .. } if pid == std::process::id()), "{err:?}");
        assert!(err.to_string().contains(&format!("is in use by pid {}", std::process::id())), "{err}");
        drop(first);
        DataDir::open(dir.path(), &Wanted::embedded()).unwrap();
    }

    #[test]
    fn the_mode_is_recorded_at_creation_and_a_mismatch_is_refused_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = DataDir::open(dir.path(), &Wanted::embedded()).unwrap();
        assert_eq!(opened.manifest().deployment, Deployment::Embedded);
        opened.record().unwrap();
        drop(opened);
        let distributed = Wanted::distributed(ServerPlace::Local, ServerPlace::Local);
        let err = DataDir::open(dir.path(), &distributed).unwrap_err().to_string();
        assert!(err.contains("holds an embedded shop, not --mode distributed"), "{err}");
        assert!(err.contains("run it with --mode embedded"), "{err}");
        // Refused, not rewritten: the embedded shop opens as before.
        DataDir::open(dir.path(), &Wanted::embedded()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        DataDir::open(dir.path(), &distributed).unwrap().record().unwrap();
        let err = DataDir::open(dir.path(), &Wanted::embedded()).unwrap_err().to_string();
        assert!(err.contains("holds a distributed shop, not --mode embedded"), "{err}");
    }

    #[test]
    fn servers_that_moved_are_refused_and_their_credentials_never_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let configured = ServerPlace::of_url("postgres://app:hunter2@db.internal:5433/postgres?sslmode=disable");
        assert_eq!(configured, ServerPlace::At("db.internal:5433".to_owned()));
        DataDir::open(dir.path(), &Wanted::distributed(configured.clone(), ServerPlace::Local))
            .unwrap()
            .record()
            .unwrap();
        let manifest = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!manifest.contains("hunter2") && manifest.contains("db.internal:5433"), "{manifest}");

        let err = DataDir::open(dir.path(), &Wanted::distributed(ServerPlace::Local, ServerPlace::Local))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PostgreSQL is the server at db.internal:5433"), "{err}");
        assert!(err.contains("point POLIS_POSTGRES_URL at db.internal:5433 again"), "{err}");
        let err = DataDir::open(dir.path(), &Wanted::distributed(configured, ServerPlace::of_url("nats://n:4222")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("NATS is the local server under servers/"), "{err}");
        assert!(err.contains("unset POLIS_NATS_URL"), "{err}");
    }

    #[test]
    fn a_failed_first_start_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mistyped = ServerPlace::of_url("postgres://db.interal:5432/postgres");
        drop(DataDir::open(dir.path(), &Wanted::distributed(mistyped, ServerPlace::Local)).unwrap());
        assert!(!dir.path().join(MANIFEST_FILE).exists());
        let fixed = ServerPlace::of_url("postgres://db.internal:5432/postgres");
        DataDir::open(dir.path(), &Wanted::distributed(fixed, ServerPlace::Local)).unwrap();
    }

    #[test]
    fn a_directory_from_before_manifests_is_recognized_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("order.db"), b"").unwrap();
        let err = DataDir::open(dir.path(), &Wanted::distributed(ServerPlace::Local, ServerPlace::Local)).unwrap_err();
        assert!(matches!(err, DataDirError::Mismatch { .. }), "{err:?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("servers/postgres")).unwrap();
        let err = DataDir::open(dir.path(), &Wanted::embedded()).unwrap_err();
        assert!(matches!(err, DataDirError::Mismatch { .. }), "{err:?}");
        // Its local PostgreSQL holds the data: a configured one is refused.
        let configured = ServerPlace::of_url("postgres://db:5432/postgres");
        let err = DataDir::open(dir.path(), &Wanted::distributed(configured, ServerPlace::Local)).unwrap_err();
        assert!(err.to_string().contains("PostgreSQL is the local server under servers/"), "{err}");
    }

    #[test]
    fn a_file_is_not_a_data_directory_and_a_bad_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = DataDir::open(&file, &Wanted::embedded()).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");

        std::fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
        let err = DataDir::open(dir.path(), &Wanted::embedded()).unwrap_err().to_string();
        assert!(err.contains(MANIFEST_FILE), "{err}");
    }
}
