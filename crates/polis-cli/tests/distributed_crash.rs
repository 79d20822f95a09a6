//! The distributed shop SIGKILLed in the middle of `polis demo --mode
//! distributed`, then resumed on the same data directory by `polis check`:
//! every order of the run — those in flight at the kill included — reaches a
//! terminal status, and every invariant holds. The distributed twin of
//! `embedded_crash.rs`, with nothing configured, so the supervisor runs its
//! own PostgreSQL and NATS under the data directory.
//!
//! Two crashes, one per saga style:
//! - the demo process alone is SIGKILLed; the kernel's parent-death signal
//!   takes down its tree (services: SIGTERM; PostgreSQL: immediate shutdown;
//!   NATS: SIGKILL);
//! - the demo and every process of its group are SIGKILLed at once, as a
//!   `kill -9` of the group would: the postmaster leaves its lock file and
//!   shared memory behind, its backends are orphaned, and it stays a zombie
//!   (which PostgreSQL takes for a running postmaster) until its new parent
//!   reaps it.
//!
//! Either way no process may outlive the crash, and `polis check`, started
//! as soon as none does, must cope with what the crash left behind.
//!
//! The oracle does not go through the shop's code: the order service's
//! `orders` table, read with sqlx from the supervisor's PostgreSQL (its port
//! is in `postmaster.pid`). While the demo runs it triggers the kill; the
//! state at the crash is read from a copy of the crashed cluster (so
//! `polis check` still gets the original as the crash left it); after the
//! check, from the original.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use contracts::SagaStyle;
use polis_testkit::PostgresServer;
use sqlx::{Connection as _, PgConnection};
use support::polis;
use tokio::sync::Mutex;

/// Orders the demo means to place: far more than it gets through before
/// the kill, which comes once [`KILL_AFTER`] exist.
const ORDERS: usize = 2000;
const KILL_AFTER: usize = 300;
const TERMINAL: [&str; 3] = ["APPROVED", "REJECTED", "CANCELLED"];

/// How the shop goes down.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// SIGKILL to the demo process only; its children follow by the
    /// parent-death signal they were spawned with.
    DemoProcess,
    /// SIGKILL to the demo's whole process group at once: the demo, every
    /// service, the postmaster and nats-server (PostgreSQL's backends are
    /// session leaders of their own and are orphaned).
    EveryProcess,
}

/// A data directory others may search (not list): under root the local
/// PostgreSQL runs as `postgres` and must reach its files below it.
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("polis-cli-test-").permissions(Permissions::from_mode(0o711)).tempdir().unwrap()
}

fn cluster_dir(dir: &Path) -> PathBuf {
    dir.join("servers").join("postgres")
}

/// The order service's database on the local PostgreSQL running on `dir`,
/// if one is running (`postmaster.pid`'s fourth line is the port).
fn live_order_db(dir: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(cluster_dir(dir).join("data/postmaster.pid")).ok()?;
    let port: u16 = lock.lines().nth(3)?.trim().parse().ok()?;
    Some(order_db(port))
}

fn order_db(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/polis_order")
}

/// Every order's id and status; `None` while the database or its table does
/// not exist yet.
async fn orders(url: &str) -> Option<Vec<(String, String)>> {
    let mut conn = connect(url).await?;
    let rows = sqlx::query_as("SELECT order_id, status FROM orders").fetch_all(&mut conn).await.ok();
    conn.close().await.ok()?;
    rows
}

async fn connect(url: &str) -> Option<PgConnection> {
    tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url)).await.ok()?.ok()
}

fn undecided(orders: &[(String, String)]) -> Vec<&(String, String)> {
    orders.iter().filter(|(_, status)| !TERMINAL.contains(&status.as_str())).collect()
}

/// A copy of the crashed cluster, in a directory of its own.
async fn copy_cluster(dir: &Path) -> tempfile::TempDir {
    let copy = data_dir();
    let (from, to) = (cluster_dir(dir), copy.path().join("postgres"));
    let copied =
        tokio::task::spawn_blocking(move || Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap()).await;
    assert!(copied.unwrap().success(), "cannot copy the crashed cluster");
    // The copy is a cluster of its own: it must not take the original's
    // lock file, nor the shared memory it names, for its own.
    let _ = std::fs::remove_file(copy.path().join("postgres/data/postmaster.pid"));
    copy
}

/// The orders in a copy of the crashed cluster: PostgreSQL recovers the
/// copy, so the original stays as the crash left it for `polis check`.
async fn orders_in_copy(copy: &Path) -> Vec<(String, String)> {
    let mut server = PostgresServer::start_in(copy.join("postgres")).await.unwrap();
    let orders = orders(&order_db(server.port())).await.expect("the crashed cluster holds the orders table");
    server.stop().await;
    orders
}

/// Every process (but this one) tied to `dir`: its command line names a
/// path in `dir`, its working directory is in `dir`, or it holds a file in
/// `dir` open. That catches each kind the shop runs: the services (their
/// stdout and stderr are `dir/logs/<service>.log`), the postmaster (`-D`,
/// cwd), its backends and auxiliary processes (cwd: the cluster's data
/// directory), nats-server (`-sd`, its store files) and `polis` itself
/// (`--data-dir`).
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.canonicalize().unwrap();
    let inside = |path: &Path| path.starts_with(&dir);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let proc = entry.path();
        // A process may end while we look; what it no longer shows does not count.
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
        let named = args.iter().any(|arg| inside(Path::new(arg)));
        let cwd = std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| inside(&cwd));
        let open = std::fs::read_dir(proc.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| inside(&target)));
        if named || cwd || open {
            found.push((pid, args.join(" ").trim().to_owned()));
        }
    }
    found
}

/// The pids the shop records in `dir`: each service's `run/<service>.pid`
/// and the postmaster's `postmaster.pid`.
fn recorded_pids(dir: &Path) -> Vec<u32> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("run")).unwrap().flatten().map(|entry| entry.path()).collect();
    files.push(cluster_dir(dir).join("data/postmaster.pid"));
    let mut pids: Vec<u32> = files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.lines().next().unwrap().trim().parse().unwrap()
        })
        .collect();
    // The supervisor's run/postgres.pid names the postmaster too.
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether `pid` runs: it exists and is not a zombie (a zombie has exited;
/// only its reaper has not collected it yet).
fn runs(pid: u32) -> bool {
    // `pid (comm) state ...`; comm may hold spaces and parentheses.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// `polis demo`, leader of its own process group; SIGKILLed with that whole
/// group if a failing test drops it, so it never outlives its test.
struct Demo(Option<Child>);

impl Demo {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn has_exited(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    fn crash(&mut self, crash: Crash) {
        let mut child = self.0.take().unwrap();
        match crash {
            Crash::DemoProcess => child.kill().unwrap(),
            Crash::EveryProcess => kill_group(&child),
        }
        child.wait().unwrap();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill_group(&child);
            let _ = child.wait();
        }
    }
}

/// SIGKILLs `child`'s process group; `child` leads it and is not reaped
/// yet, so the group id cannot belong to anyone else.
fn kill_group(child: &Child) {
    let group = format!("-{}", child.id());
    let killed = Command::new("kill").args(["-KILL", "--", &group]).status().unwrap();
    assert!(killed.success(), "kill -KILL -- {group} failed");
}

async fn a_killed_distributed_demo_resumes_and_keeps_every_invariant(style: SagaStyle, crash: Crash) {
    let dir = data_dir();
    let log = dir.path().join("demo.log");
    let mut command = polis();
    command
        .args(["demo", "--mode", "distributed", "--orders", &ORDERS.to_string(), "--concurrency", "32"])
        .args(["--json", "--saga", style.as_str(), "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0);
    let mut demo = Demo(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));

    // Kill once enough orders exist, polling over one connection at a time
    // (closed before the kill: a backend of ours must not outlive the crash).
    let conn: Mutex<Option<PgConnection>> = Mutex::new(None);
    let placing = polis_testkit::wait_for(Duration::from_secs(120), || async {
        let mut conn = conn.lock().await;
        if conn.is_none() {
            let Some(url) = live_order_db(dir.path()) else { return false };
            *conn = connect(&url).await;
        }
        let Some(open) = conn.as_mut() else { return false };
        match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders").fetch_one(open).await {
            Ok(n) => n as usize >= KILL_AFTER,
            Err(_) => {
                *conn = None;
                false
            }
        }
    })
    .await;
    if let Some(open) = conn.into_inner() {
        open.close().await.unwrap();
    }
    let exited = demo.has_exited();
    assert!(placing.is_ok() && !exited, "the demo placed no orders (exited: {exited}): {}", read(&log));

    // The detector below sees the whole shop while it runs: the demo, every
    // pid it recorded, PostgreSQL's backends. Otherwise its verdict after
    // the crash would mean nothing.
    let running = processes_in(dir.path());
    let running_pids: Vec<u32> = running.iter().map(|(pid, _)| *pid).collect();
    let recorded = recorded_pids(dir.path());
    let processes = shop::Service::ALL.len();
    assert_eq!(recorded.len(), processes + 2, "{processes} processes, nats-server and the postmaster: {recorded:?}");
    for pid in recorded.iter().chain([&demo.pid()]) {
        assert!(running_pids.contains(pid), "process {pid} not seen in {running:#?}");
    }
    assert!(running.iter().any(|(_, cmd)| cmd.contains("nats-server")), "{running:#?}");
    assert!(running.iter().any(|(_, cmd)| cmd.contains("polis_order")), "no backend seen in {running:#?}");

    demo.crash(crash);

    // Nothing outlives the crash: no process of the shop's runs, nor any
    // other that uses the data directory.
    let mut left = Vec::new();
    let gone = polis_testkit::wait_for(Duration::from_secs(30), || {
        left = processes_in(dir.path());
        left.extend(recorded.iter().filter(|pid| runs(**pid)).map(|pid| (*pid, "a recorded pid".to_owned())));
        std::future::ready(left.is_empty())
    })
    .await;
    assert!(gone.is_ok(), "processes outlived the {crash:?} crash: {left:#?}");

    // Resume the shop on the same data directory at once, finish and check
    // the run. What the crash left (after the group's SIGKILL: the
    // postmaster's lock file and shared memory, maybe its zombie) is for
    // `polis check` to cope with.
    let copy = copy_cluster(dir.path()).await;
    let mut check = polis();
    check.args(["check", "--json", "--data-dir"]).arg(dir.path());
    let checking = tokio::task::spawn_blocking(move || check.output().unwrap());

    // The kill landed mid-run: the run was cut short, with orders undecided.
    let at_crash = orders_in_copy(copy.path()).await;
    let out = checking.await.unwrap();
    let open = undecided(&at_crash);
    assert!(at_crash.len() >= KILL_AFTER && at_crash.len() < ORDERS, "{} orders at the crash", at_crash.len());
    assert!(!open.is_empty(), "no order was in flight at the crash");

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polis check failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the --json report parses");
    assert_eq!(report["mode"], "distributed");
    assert_eq!(report["saga"], style.as_str());
    assert_eq!(report["planned"], ORDERS);
    assert_eq!(report["orders"], at_crash.len(), "{report:#}");
    let decided: usize = report["by_status"].as_object().unwrap().values().map(|n| n.as_u64().unwrap() as usize).sum();
    assert_eq!(decided, at_crash.len(), "{report:#}");
    let checks = report["invariants"].as_array().unwrap();
    assert!(checks.len() >= 6, "{checks:#?}");
    assert!(checks.iter().all(|c| c["holds"] == true), "{checks:#?}");
    let left = processes_in(dir.path());
    assert!(left.is_empty(), "polis check left processes behind: {left:#?}");

    // The oracle: the order service's own rows, the same orders, all decided.
    let mut cluster = PostgresServer::start_in(cluster_dir(dir.path())).await.unwrap();
    let after = orders(&order_db(cluster.port())).await.unwrap();
    cluster.stop().await;
    let ids = |orders: &[(String, String)]| {
        let mut ids: Vec<String> = orders.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&after), ids(&at_crash), "the orders after the check are not those of the crash");
    let open = undecided(&after);
    assert!(open.is_empty(), "{} orders left undecided, e.g. {:?}", open.len(), &open[..open.len().min(5)]);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_survives_a_sigkill_of_the_demo_process() {
    a_killed_distributed_demo_resumes_and_keeps_every_invariant(SagaStyle::Orchestration, Crash::DemoProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_survives_a_sigkill_of_every_process_at_once() {
    a_killed_distributed_demo_resumes_and_keeps_every_invariant(SagaStyle::Choreography, Crash::EveryProcess).await;
}
