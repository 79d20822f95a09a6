//! Running the distributed shop on one machine: `polis up --mode
//! distributed` and `polis demo --mode distributed`.
//!
//! The [`Supervisor`] starts each of the processes as a child
//! (`<program> serve <service>`, the `polis` binary itself), each on a free
//! port of 127.0.0.1 (the gateway on the address asked for), and waits until
//! every one is ready. With [`SupervisorOptions::instances`] above 1 it
//! starts that many of each business service (the gateway stays one): each
//! gets its own address and instance name, the gateway all of their URLs,
//! and the topics [`PARTITIONS`] partitions, so that they share the work
//! (ADR 0011). A [`Process`] names one of them. Every process must be ready (`GET /readyz`: its database answers, its bus is
//! connected, its relay and consumer run). The gateway starts last, and is
//! ready when every service behind it is. The servers come from the configuration
//! (`POLIS_POSTGRES_URL`, `POLIS_NATS_URL` or a config file, see
//! [`crate::distributed`]); those not configured are started from the
//! installed binaries with their files under `<data-dir>/servers/`, so a
//! later start on the same data directory resumes the same databases and the
//! same JetStream streams.
//!
//! Children get their settings through the environment, which beats any
//! config file: `POLIS__LISTEN__<SERVICE>`, `POLIS__UPSTREAMS__<SERVICE>`,
//! `POLIS__SAGA`, and the URLs of the servers started here. Their output goes
//! to `<data-dir>/logs/<process>.log`, their pids to
//! `<data-dir>/run/<process>.pid` (removed when they stop), where a process
//! is named after its service, `<service>-<n>` for a second or later instance. They are tied to the supervisor: if
//! it dies, however it dies, the kernel sends them SIGTERM (and the local
//! servers their shutdown signal).
//!
//! The supervisor owns its data directory while it runs ([`DataDir`]: an OS
//! lock, so a second supervisor on it fails at once naming the first one's
//! pid; and the directory's manifest, so a distributed start on an embedded
//! shop's directory, or with its servers moved, is refused instead of
//! starting an empty shop beside the data).
//!
//! [`Supervisor::supervise`] watches every process it started, service
//! processes and local servers alike, and starts again each one that ends,
//! after a back-off (1 s, doubling up to 30 s; reset once it has run for a
//! minute); `polis up` and `polis demo --mode distributed` run it. Without
//! it nothing is restarted: [`Supervisor::exited`] reports the
//! [`Process`]es that ended and [`Supervisor::restart`] starts one again. A local server comes back on the same port and
//! files, so the services, which reconnect by themselves, carry on. The
//! local servers' pids are in `<data-dir>/run/postgres.pid` and
//! `run/nats-server.pid` while they run.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use contracts::SagaStyle;
use polis_runtime::{ConfigLoader, Infra};
use polis_testkit::{NatsServer, PostgresServer, TestkitError};

use crate::data_dir::{DataDir, DataDirError, ServerPlace, Wanted};
use crate::distributed::Service;

/// How long a child may take to be ready (`/readyz`) after it was spawned.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the stop when the supervisor is dropped without [`Supervisor::stop`].
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_POLL: Duration = Duration::from_millis(50);
/// First wait before restarting a process that exited; doubles per quick exit.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts over at the minimum back-off.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How often [`Supervisor::supervise`] looks for processes that ended.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a crashed local PostgreSQL's processes may keep a new one from starting.
const CRASH_LEFTOVERS_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong supervising the distributed shop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] polis_runtime::RuntimeError),
    #[error("cannot start the local {kind} server under {dir}")]
    Server {
        kind: &'static str,
        dir: PathBuf,
        #[source]
        source: TestkitError,
    },
    #[error("`{program} serve {service}` exited before it was ready ({status}); the end of {log}:\n{tail}")]
    Exited { program: String, service: Service, status: ExitStatus, log: PathBuf, tail: String },
    #[error("`serve {service}` was not ready within {timeout:?} ({last}); the end of {log}:\n{tail}")]
    NotReady { service: Service, timeout: Duration, last: String, log: PathBuf, tail: String },
    #[error("no {0} process is running")]
    NotRunning(Process),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("restarting the local {kind} server on port {port}")]
    Restart {
        kind: &'static str,
        port: u16,
        #[source]
        source: TestkitError,
    },
}

/// Something the supervisor runs and watches: a process of the shop, or a
/// server it started because none was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// `polis serve <service>`: instance 0, 1, ... of the service (the
    /// gateway has one).
    Service(Service, u8),
    /// The local PostgreSQL under `<data-dir>/servers/postgres`.
    Postgres,
    /// The local NATS server under `<data-dir>/servers/nats`.
    Nats,
}

impl Process {
    /// The first (or only) instance of `service`.
    pub fn service(service: Service) -> Self {
        Self::Service(service, 0)
    }
}

impl From<Service> for Process {
    fn from(service: Service) -> Self {
        Self::service(service)
    }
}

/// The name in logs and pid files: the service for its first instance,
/// `<service>-<n>` for the others; `postgres`, `nats-server`.
impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service(service, 0) => f.write_str(service.as_str()),
            Self::Service(service, n) => write!(f, "{service}-{n}"),
            Self::Postgres => f.write_str("postgres"),
            Self::Nats => f.write_str("nats-server"),
        }
    }
}

/// The most instances of a service [`SupervisorOptions::instances`] allows.
pub const MAX_INSTANCES: u8 = 8;

/// The partitions of every topic when services run several instances
/// (`[nats] partitions`, ADR 0011), unless the configuration says otherwise.
pub const PARTITIONS: u32 = 8;

/// How to start the distributed shop.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SupervisorOptions {
    /// The `polis` binary: children run `<program> serve <service>`.
    pub program: PathBuf,
    /// Logs, and the local servers' files (created if missing).
    pub data_dir: PathBuf,
    /// A TOML config file every child reads (`serve --config`), and the
    /// supervisor too, for the server URLs.
    pub config_file: Option<PathBuf>,
    /// Every process's saga style; `None` leaves it to the configuration
    /// (default orchestration).
    pub saga: Option<SagaStyle>,
    /// Where the gateway listens; port 0 picks a free port.
    pub gateway_listen: SocketAddr,
    /// Extra variables for the children, over the supervisor's own
    /// environment; `POLIS_POSTGRES_URL` and `POLIS_NATS_URL` here also
    /// count as configured servers.
    pub env: Vec<(String, String)>,
    pub ready_timeout: Duration,
    /// Processes per business service (1 to [`MAX_INSTANCES`]); above 1
    /// they share each service's work (ADR 0011): the topics are split into
    /// [`PARTITIONS`] partitions and the gateway spreads calls over them.
    pub instances: u8,
}

impl SupervisorOptions {
    pub fn new(program: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            data_dir: data_dir.into(),
            config_file: None,
            saga: None,
            gateway_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            env: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            instances: 1,
        }
    }

    pub fn with_instances(mut self, instances: u8) -> Self {
        self.instances = instances;
        self
    }

    pub fn with_config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    pub fn with_saga(mut self, saga: SagaStyle) -> Self {
        self.saga = Some(saga);
        self
    }

    pub fn with_gateway_listen(mut self, addr: SocketAddr) -> Self {
        self.gateway_listen = addr;
        self
    }

    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn with_ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// The distributed shop, running (see the module docs). Dropping it stops
/// the children (SIGTERM, then SIGKILL after a few seconds) and the local
/// servers; [`Supervisor::stop`] does so without a deadline on the children.
#[derive(Debug)]
pub struct Supervisor {
    options: SupervisorOptions,
    /// Every child's variables, computed once so that a restart gets the
    /// same (each child adds its own listen address and instance name).
    env: Vec<(String, String)>,
    /// The supervisor's name for this run, each instance's name derives from.
    instance: String,
    addrs: BTreeMap<Process, SocketAddr>,
    children: BTreeMap<Process, Child>,
    // Declared after `children` so that, when dropped, services stop before their servers.
    postgres: Option<PostgresServer>,
    nats: Option<NatsServer>,
    /// Owned while the shop runs; declared last so that it is let go last.
    data_dir: DataDir,
}

impl Supervisor {
    /// Starts the servers that are not configured, then every process, and
    /// waits until all of them answer.
    pub async fn start(options: SupervisorOptions) -> Result<Self, SupervisorError> {
        if !(1..=MAX_INSTANCES).contains(&options.instances) {
            return Err(SupervisorError::Io {
                context: format!("starting {} instances of each service", options.instances),
                source: std::io::Error::other(format!("the instances must be 1 to {MAX_INSTANCES}")),
            });
        }
        let infra = load_infra(&options)?;
        let place = |url: &Option<polis_runtime::Secret<String>>| match url {
            Some(url) => ServerPlace::of_url(url.expose()),
            None => ServerPlace::Local,
        };
        let wanted = Wanted::distributed(place(&infra.postgres_url), place(&infra.nats_url));
        let owned = DataDir::open(&options.data_dir, &wanted)?;
        let data_dir = &options.data_dir;
        for dir in ["logs", "run"] {
            fs::create_dir_all(data_dir.join(dir)).map_err(io_err(format!("creating {}/{dir}", data_dir.display())))?;
        }

        let mut env = Vec::new();
        let postgres = match infra.postgres_url {
            Some(_) => None,
            None => {
                let dir = data_dir.join("servers").join("postgres");
                let server = start_local_postgres(&dir).await.map_err(|source| SupervisorError::Server {
                    kind: "postgres",
                    dir,
                    source,
                })?;
                env.push(("POLIS__INFRA__POSTGRES_URL".to_owned(), server.url()));
                Some(server)
            }
        };
        let nats = match infra.nats_url {
            Some(_) => None,
            None => {
                let dir = data_dir.join("servers").join("nats");
                let server = NatsServer::start_in(&dir).await.map_err(|source| SupervisorError::Server {
                    kind: "nats-server",
                    dir,
                    source,
                })?;
                env.push(("POLIS__INFRA__NATS_URL".to_owned(), server.url()));
                Some(server)
            }
        };

        let addrs = assign_addresses(options.gateway_listen, options.instances)?;
        if let Some(saga) = options.saga {
            env.push(("POLIS__SAGA".to_owned(), saga.as_str().to_owned()));
        }
        for service in Service::ALL {
            let upper = service.ident().to_ascii_uppercase();
            // Every instance of a service, for the gateway to take turns.
            let urls: Vec<String> = addrs
                .iter()
                .filter(|(process, _)| matches!(process, Process::Service(s, _) if *s == service))
                .map(|(_, addr)| format!("http://{addr}"))
                .collect();
            if service != Service::Gateway {
                env.push((format!("POLIS__UPSTREAMS__{upper}"), urls.join(",")));
            }
        }
        if options.instances > 1 {
            env.push(("POLIS__NATS__PARTITIONS".to_owned(), PARTITIONS.to_string()));
        }
        // The caller's extras last: they win over everything above.
        env.extend(options.env.iter().cloned());
        // A process it restarts after a crash is the same instance to its
        // leases (same name), and takes them back at once.
        let instance = format!("supervisor-{}", uuid::Uuid::now_v7());

        let mut supervisor =
            Self { options, env, instance, addrs, children: BTreeMap::new(), postgres, nats, data_dir: owned };
        for process in [Process::Postgres, Process::Nats] {
            supervisor.write_server_pid(process);
        }
        let business: Vec<Process> = supervisor
            .addrs
            .keys()
            .copied()
            .filter(|p| matches!(p, Process::Service(s, _) if *s != Service::Gateway))
            .collect();
        for process in &business {
            supervisor.spawn(*process).await?;
        }
        for process in &business {
            supervisor.wait_ready(*process).await?;
        }
        // The gateway last: once it answers, the whole shop does.
        supervisor.spawn(Service::Gateway.into()).await?;
        supervisor.wait_ready(Service::Gateway.into()).await?;
        supervisor.data_dir.record()?;
        Ok(supervisor)
    }

    /// The shop's APIs over HTTP, as the demo's workload and checks use them.
    pub fn apis(&self) -> anyhow::Result<crate::workload::Apis> {
        crate::workload::Apis::new(|service| crate::client::Endpoint::remote(&self.url(service)))
    }

    /// `http://<gateway address>`; the public API is under `/api`.
    pub fn gateway_url(&self) -> String {
        self.url(Service::Gateway)
    }

    /// `http://<address>` of a service: of each of its instances,
    /// comma-separated, when it runs several (what `gateway::Upstream::remote` takes).
    pub fn url(&self, service: Service) -> String {
        let urls: Vec<String> =
            (0..self.instances(service)).map(|n| self.instance_url(Process::Service(service, n))).collect();
        urls.join(",")
    }

    /// `http://<address>` of one process of the shop.
    pub fn instance_url(&self, process: Process) -> String {
        format!("http://{}", crate::distributed::connectable(self.addr(process)))
    }

    /// How many instances of `service` run (the gateway: one).
    pub fn instances(&self, service: Service) -> u8 {
        if service == Service::Gateway { 1 } else { self.options.instances }
    }

    /// The address of a process of the shop (of a service: its first instance).
    pub fn addr(&self, process: impl Into<Process>) -> SocketAddr {
        // Every service gets an address in `start`.
        self.addrs.get(&process.into()).copied().unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// The pid of a running process (of a service: its first instance).
    pub fn pid(&self, process: impl Into<Process>) -> Option<u32> {
        self.children.get(&process.into()).map(Child::id)
    }

    /// The configuration the processes run with: the config file, the
    /// environment, the local servers' URLs and the options' extras.
    pub fn config(&self) -> Result<crate::distributed::DistributedConfig, crate::distributed::DistributedError> {
        crate::distributed::DistributedConfig::from_loader(&config_loader(&self.options, &self.env))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// A process's log file (of a service: its first instance's).
    pub fn log_path(&self, process: impl Into<Process>) -> PathBuf {
        self.options.data_dir.join("logs").join(format!("{}.log", process.into()))
    }

    /// A process's pid file, present while it runs: a service's, or a
    /// local server's (`postgres`, `nats-server`).
    pub fn pid_path(&self, process: impl Into<Process>) -> PathBuf {
        self.options.data_dir.join("run").join(format!("{}.pid", process.into()))
    }

    /// The data directory's owner lock and manifest.
    pub fn owned_data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// SIGKILLs a process of the shop (of a service: its first instance),
    /// like a crash, and reaps it.
    pub fn kill(&mut self, process: impl Into<Process>) -> Result<(), SupervisorError> {
        let process = process.into();
        let mut child = self.children.remove(&process).ok_or(SupervisorError::NotRunning(process))?;
        let _ = child.kill();
        child.wait().map_err(io_err(format!("reaping {process}")))?;
        self.forget_pid(process);
        tracing::warn!(%process, "killed");
        Ok(())
    }

    /// Stops a running process of the shop where it is (SIGSTOP), as if it
    /// hung: it holds its connections and leases and does nothing until
    /// [`resume`](Self::resume)d.
    pub fn pause(&self, process: impl Into<Process>) -> Result<(), SupervisorError> {
        let process = process.into();
        polis_testkit::process::pause(self.children.get(&process).ok_or(SupervisorError::NotRunning(process))?);
        Ok(())
    }

    /// Lets a [`pause`](Self::pause)d process go on (SIGCONT).
    pub fn resume(&self, process: impl Into<Process>) -> Result<(), SupervisorError> {
        let process = process.into();
        polis_testkit::process::resume(self.children.get(&process).ok_or(SupervisorError::NotRunning(process))?);
        Ok(())
    }

    /// Processes that ended since the last look, with their status: service
    /// processes and local servers. They are forgotten until restarted with
    /// [`Supervisor::restart`].
    pub fn exited(&mut self) -> Vec<(Process, ExitStatus)> {
        let mut ended = Vec::new();
        self.children.retain(|process, child| match child.try_wait() {
            Ok(Some(status)) => {
                ended.push((*process, status));
                false
            }
            _ => true,
        });
        if let Some(status) = self.postgres.as_mut().and_then(PostgresServer::exited) {
            ended.push((Process::Postgres, status));
        }
        if let Some(status) = self.nats.as_mut().and_then(NatsServer::exited) {
            ended.push((Process::Nats, status));
        }
        for (process, _) in &ended {
            self.forget_pid(*process);
        }
        ended
    }

    /// Starts a process that is not running (after [`Supervisor::kill`] or
    /// [`Supervisor::exited`]) with the same settings and address, and waits
    /// until it answers. A running one is stopped first. A local server
    /// comes back on its port and files; after a crash, PostgreSQL runs its
    /// recovery first.
    pub async fn restart(&mut self, process: impl Into<Process>) -> Result<(), SupervisorError> {
        let process = process.into();
        match process {
            Process::Service(..) => {
                if let Some(child) = self.children.remove(&process) {
                    stop_child(process, child, STOP_TIMEOUT).await;
                    self.forget_pid(process);
                }
                self.spawn(process).await?;
                self.wait_ready(process).await
            }
            Process::Postgres => {
                let server = self.postgres.as_mut().ok_or(SupervisorError::NotRunning(process))?;
                let port = server.port();
                restart_local_postgres(server).await.map_err(|source| SupervisorError::Restart {
                    kind: "postgres",
                    port,
                    source,
                })?;
                self.write_server_pid(process);
                Ok(())
            }
            Process::Nats => {
                let server = self.nats.as_mut().ok_or(SupervisorError::NotRunning(process))?;
                let port = server.port();
                server.restart().await.map_err(|source| SupervisorError::Restart {
                    kind: "nats-server",
                    port,
                    source,
                })?;
                self.write_server_pid(process);
                Ok(())
            }
        }
    }

    /// Watches every process until `until` resolves, and starts again each
    /// one that ends, after a back-off per process (1 s, doubling up to
    /// 30 s; reset once it has run for a minute). Each exit, restart and
    /// failed restart is logged and told to `report` as one line for a
    /// person. Returns when `until` does, even in the middle of a restart.
    pub async fn supervise<F>(&mut self, until: F, report: &(dyn Fn(&str) + Sync))
    where
        F: std::future::Future<Output = ()>,
    {
        tokio::pin!(until);
        let mut started: BTreeMap<Process, Instant> = BTreeMap::new();
        let mut backoff: BTreeMap<Process, Duration> = BTreeMap::new();
        // Processes waiting for their restart, and when it is due.
        let mut pending: BTreeMap<Process, Instant> = BTreeMap::new();
        let since = Instant::now();
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                () = &mut until => return,
                _ = watch.tick() => {}
            }
            for (process, status) in self.exited() {
                let ran = started.get(&process).unwrap_or(&since).elapsed();
                let delay = next_backoff(&mut backoff, process, ran);
                tracing::warn!(%process, %status, restart_in = ?delay, "a process exited; restarting it");
                report(&format!("{process} exited ({status}); restarting it in {} s", delay.as_secs_f64()));
                pending.insert(process, Instant::now() + delay);
            }
            let now = Instant::now();
            let due: Vec<Process> = pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
            for process in due {
                pending.remove(&process);
                let restarted = tokio::select! {
                    () = &mut until => return,
                    result = self.restart(process) => result,
                };
                started.insert(process, Instant::now());
                match restarted {
                    Ok(()) => match process {
                        Process::Service(..) => report(&format!("{process} is back at {}", self.instance_url(process))),
                        _ => report(&format!("{process} is back")),
                    },
                    Err(err) => {
                        let delay = next_backoff(&mut backoff, process, Duration::ZERO);
                        let error = polis_core::error::chain(&err);
                        tracing::error!(%process, %error, restart_in = ?delay, "restarting a process failed");
                        report(&format!("restarting {process} failed: {error}"));
                        pending.insert(process, Instant::now() + delay);
                    }
                }
            }
        }
    }

    /// Stops every process (the gateway first, so no new work comes in),
    /// letting each finish what it is doing, then the local servers.
    pub async fn stop(mut self) {
        // Processes sort by service in `Service::ALL` order, the gateway last.
        while let Some((process, child)) = self.children.pop_last() {
            stop_child(process, child, STOP_TIMEOUT).await;
            self.forget_pid(process);
        }
        if let Some(server) = &mut self.nats {
            server.stop().await;
        }
        if let Some(server) = &mut self.postgres {
            server.stop().await;
        }
        for process in [Process::Nats, Process::Postgres] {
            self.forget_pid(process);
        }
    }

    async fn spawn(&mut self, process: Process) -> Result<(), SupervisorError> {
        let Process::Service(service, n) = process else { return Err(SupervisorError::NotRunning(process)) };
        let log_path = self.log_path(process);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        // Restarts append to the same log; mark where each run begins.
        writeln!(log, "--- polis supervisor: starting {process} on {} ---", self.addr(process))
            .map_err(io_err(format!("writing {}", log_path.display())))?;
        let stderr = log.try_clone().map_err(io_err(format!("duplicating {}", log_path.display())))?;

        let mut command = Command::new(&self.options.program);
        command.arg("serve").arg(service.as_str());
        if let Some(file) = &self.options.config_file {
            command.arg("--config").arg(file);
        }
        let listen = format!("POLIS__LISTEN__{}", service.ident().to_ascii_uppercase());
        let instance = if n == 0 { self.instance.clone() } else { format!("{}-{n}", self.instance) };
        let own = [(listen, self.addr(process).to_string()), ("POLIS__INSTANCE".to_owned(), instance)];
        // Its own address and name over everything else: two instances must
        // never share either.
        command.envs(self.env.iter().map(|(k, v)| (k, v))).envs(own).stdin(Stdio::null()).stdout(log).stderr(stderr);
        let child = polis_testkit::process::spawn_tethered(command)
            .await
            .map_err(io_err(format!("starting `{} serve {service}`", self.options.program.display())))?;
        tracing::info!(%process, pid = child.id(), addr = %self.addr(process), "started");
        let pid_path = self.pid_path(process);
        let written = write_pid(&pid_path, child.id());
        self.children.insert(process, child);
        written.map_err(io_err(format!("writing {}", pid_path.display())))
    }

    fn forget_pid(&self, process: Process) {
        let _ = fs::remove_file(self.pid_path(process));
    }

    /// Records a local server's pid, if it is local and running; a failure
    /// is logged, the pid file being for people and tests.
    fn write_server_pid(&self, process: Process) {
        let pid = match process {
            Process::Postgres => self.postgres.as_ref().and_then(PostgresServer::pid),
            Process::Nats => self.nats.as_ref().and_then(NatsServer::pid),
            Process::Service(..) => None,
        };
        if let Some(pid) = pid {
            let path = self.pid_path(process);
            if let Err(err) = write_pid(&path, pid) {
                tracing::warn!(path = %path.display(), error = %err, "cannot write a pid file");
            }
        }
    }

    async fn wait_ready(&mut self, process: Process) -> Result<(), SupervisorError> {
        let Process::Service(service, _) = process else { return Ok(()) };
        let url = self.instance_url(process);
        let upstream = gateway::Upstream::remote(&url).map_err(|err| SupervisorError::Io {
            context: format!("checking {process} at {url}"),
            source: std::io::Error::other(err),
        })?;
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            let child = self.children.get_mut(&process).ok_or(SupervisorError::NotRunning(process))?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(&process);
                self.forget_pid(process);
                let log = self.log_path(process);
                return Err(SupervisorError::Exited {
                    program: self.options.program.display().to_string(),
                    service,
                    status,
                    tail: tail(&log),
                    log,
                });
            }
            let timeout = polis_runtime::ready::CHECK_TIMEOUT * 2;
            let last = match upstream.call(Method::GET, polis_runtime::ready::READY_PATH, None, None, timeout).await {
                Ok(response) if response.status == StatusCode::OK => return Ok(()),
                Ok(response) => {
                    format!("/readyz answered {}: {}", response.status, String::from_utf8_lossy(&response.body))
                }
                Err(err) => format!("/readyz: {err}"),
            };
            if Instant::now() >= deadline {
                let log = self.log_path(process);
                return Err(SupervisorError::NotReady {
                    service,
                    timeout: self.options.ready_timeout,
                    last,
                    tail: tail(&log),
                    log,
                });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Ask everyone at once, then wait for all within one deadline.
        for child in self.children.values() {
            polis_testkit::process::terminate(child);
        }
        let deadline = Instant::now() + DROP_TIMEOUT;
        for (process, mut child) in std::mem::take(&mut self.children) {
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() >= deadline {
                    tracing::warn!(%process, "did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.forget_pid(process);
        }
        for process in [Process::Nats, Process::Postgres] {
            self.forget_pid(process);
        }
    }
}

/// The wait before the next restart of `process`, which ran for `ran`.
fn next_backoff(backoff: &mut BTreeMap<Process, Duration>, process: Process, ran: Duration) -> Duration {
    let slot = backoff.entry(process).or_insert(RESTART_BACKOFF_MIN);
    if ran >= STABLE_AFTER {
        *slot = RESTART_BACKOFF_MIN;
    }
    let delay = *slot;
    *slot = (*slot * 2).min(RESTART_BACKOFF_MAX);
    delay
}

fn write_pid(path: &Path, pid: u32) -> std::io::Result<()> {
    fs::write(path, format!("{pid}\n"))
}

/// Starts a local PostgreSQL that stopped or crashed again, on its port.
/// A postmaster that was SIGKILLed leaves backends behind that hold its
/// shared memory until they notice; the start is retried while they go.
async fn restart_local_postgres(server: &mut PostgresServer) -> Result<(), TestkitError> {
    let deadline = Instant::now() + CRASH_LEFTOVERS_TIMEOUT;
    loop {
        match server.restart().await {
            Err(TestkitError::Exited { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result,
        }
    }
}

/// Starts the local PostgreSQL kept in `dir`. After a crash that SIGKILLed
/// its postmaster (the whole process group killed, say), PostgreSQL refuses
/// to start while the dead postmaster is a zombie its new parent has not
/// reaped yet (the lock file's pid still exists) or while its orphaned
/// backends still hold its shared memory; both go by themselves within
/// moments, so then the start is retried for a while.
async fn start_local_postgres(dir: &Path) -> Result<PostgresServer, TestkitError> {
    let crashed = crashed_postmaster(&dir.join("data"));
    let deadline = Instant::now() + CRASH_LEFTOVERS_TIMEOUT;
    let mut waiting = false;
    loop {
        match (PostgresServer::start_in(dir).await, crashed) {
            (Err(TestkitError::Exited { .. }), Some(pid)) if Instant::now() < deadline => {
                if !waiting {
                    tracing::info!(pid, "waiting for the processes of the crashed local postgres to be gone");
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (result, _) => return result,
        }
    }
}

/// The pid in a cluster's `postmaster.pid` if that postmaster is dead: gone,
/// or a zombie (which PostgreSQL takes for a running postmaster). `None`
/// without a lock file (a clean stop removes it) or if the process runs.
fn crashed_postmaster(data: &Path) -> Option<u32> {
    let lock = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = lock.lines().next()?.trim().parse().ok()?;
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `<pid> (<comm>) <state> ...`; the command name may hold spaces and parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')).then_some(pid),
        Err(_) => Some(pid),
    }
}

/// SIGTERM, then up to `timeout` for a graceful exit, then SIGKILL.
async fn stop_child(process: Process, mut child: Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    polis_testkit::process::terminate(&child);
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(%process, %status, "stopped");
                return;
            }
            Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => {
                tracing::warn!(%process, "did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// The servers the configuration names: the config file, then the process
/// environment, then the caller's extra variables (as the children see them).
fn load_infra(options: &SupervisorOptions) -> Result<Infra, SupervisorError> {
    Ok(config_loader(options, &options.env).load_infra()?)
}

/// The configuration's layers as a child sees them: the config file, then
/// this process's `POLIS*` variables, then `env` over them.
fn config_loader(options: &SupervisorOptions, env: &[(String, String)]) -> ConfigLoader {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| name.to_ascii_uppercase().starts_with("POLIS"))
        .collect();
    vars.extend(env.iter().cloned());
    let loader = ConfigLoader::new().env_vars(vars);
    match &options.config_file {
        Some(file) => loader.required_file(file),
        None => loader,
    }
}

/// A free port on 127.0.0.1 for each instance of each service, and the
/// gateway's address (a free port too if it asks for port 0). The probes
/// are held together, so the ports differ; another process may still take
/// one before its service binds it, which fails that service's start, named.
fn assign_addresses(gateway: SocketAddr, instances: u8) -> Result<BTreeMap<Process, SocketAddr>, SupervisorError> {
    let mut probes = Vec::new();
    let mut addrs = BTreeMap::new();
    for service in Service::ALL {
        // A fixed gateway address is probed too: if something else holds it,
        // say so now rather than after its health check answered for it.
        if service == Service::Gateway {
            addrs.insert(Process::service(service), probe(gateway, &mut probes)?);
            continue;
        }
        for n in 0..instances {
            addrs.insert(Process::Service(service, n), probe(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &mut probes)?);
        }
    }
    Ok(addrs)
}

fn probe(addr: SocketAddr, probes: &mut Vec<TcpListener>) -> Result<SocketAddr, SupervisorError> {
    let listener = TcpListener::bind(addr).map_err(io_err(format!("binding {addr}")))?;
    let found = listener.local_addr().map_err(io_err("reading a probe's address".to_owned()))?;
    probes.push(listener);
    Ok(found)
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> SupervisorError {
    move |source| SupervisorError::Io { context, source }
}

/// The last few KiB of a log, for error messages.
fn tail(path: &Path) -> String {
    const TAIL: u64 = 8 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|err| format!("(cannot read {}: {err})", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::process::Command;

    use super::*;

    #[tokio::test]
    async fn a_postmaster_is_crashed_when_gone_or_a_zombie_not_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let lock = |pid: u32| fs::write(dir.path().join("postmaster.pid"), format!("{pid}\n/data\n")).unwrap();
        assert_eq!(crashed_postmaster(dir.path()), None, "no lock file: a clean stop");

        lock(std::process::id());
        assert_eq!(crashed_postmaster(dir.path()), None, "a running process");

        // Exited, not reaped yet: a zombie.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        lock(pid);
        let zombie =
            polis_testkit::wait_for(Duration::from_secs(10), || async { crashed_postmaster(dir.path()).is_some() });
        zombie.await.unwrap();
        assert_eq!(crashed_postmaster(dir.path()), Some(pid), "a zombie");

        child.wait().unwrap();
        assert_eq!(crashed_postmaster(dir.path()), Some(pid), "gone");
    }
}
