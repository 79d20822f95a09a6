//! The distributed shop as real processes: `polis demo --mode distributed`,
//! `polis up --mode distributed` (stop, resume, restart of a killed
//! service), and a service process SIGKILLed while orders are in flight.
//!
//! PostgreSQL is the testkit's shared server where a test configures one
//! (a database prefix per test); otherwise, and for NATS (whose stream names
//! are fixed per service, so shops cannot share a server), the supervisor
//! starts its own under the test's data directory, as a user's `polis up`
//! does.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::SagaStyle;
use contracts::order::{OrderStatus, OrderView};
use shop::client::Endpoint;
use shop::distributed::Service;
use shop::supervisor::{Supervisor, SupervisorOptions};
use shop::workload;
use support::{Running, place_one, polis, wait_approved};
use uuid::Uuid;

/// A data directory others may search (not list): under root the local
/// PostgreSQL runs as `postgres` and must reach its files below it.
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("polis-cli-test-").permissions(Permissions::from_mode(0o711)).tempdir().unwrap()
}

/// At most two distributed shops at once in this test binary: each is ten
/// processes (eight services, PostgreSQL, NATS), and nine of them on two
/// shared cores starve one another past any readiness deadline.
static SHOPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_distributed_mode_keeps_every_invariant() {
    let _shop = SHOPS.acquire().await.unwrap();
    let postgres = polis_testkit::postgres().await;
    let dir = data_dir();
    let mut command = polis();
    command
        .args(["demo", "--mode", "distributed", "--orders", "100", "--json", "--data-dir"])
        .arg(dir.path())
        .env("POLIS_POSTGRES_URL", postgres.url())
        .env("POLIS__DATABASE_PREFIX", postgres.name());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polis demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the --json report parses");

    assert_eq!(report["mode"], "distributed");
    assert_eq!(report["orders"], 100);
    let decided: u64 = report["by_status"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(decided, 100, "{report:#}");
    let checks = report["invariants"].as_array().unwrap();
    assert!(checks.len() >= 7, "{checks:#?}");
    assert!(checks.iter().all(|c| c["holds"] == true), "{checks:#?}");
    // Each service's database, with its tables, and its stream.
    let disk = report["disk"].as_array().unwrap();
    let entry = |name: &str| disk.iter().find(|d| d["database"] == name).unwrap_or_else(|| panic!("{name}: {disk:#?}"));
    let order = entry("order");
    assert!(order["bytes"].as_u64().unwrap() > order["kept_bytes"].as_u64().unwrap(), "{order:#}");
    let tables = order["tables"].as_array().unwrap();
    assert!(tables.iter().any(|t| t["table"] == "polis_events" && t["retained"] == false), "{order:#}");
    assert!(tables.iter().any(|t| t["table"] == "polis_inbox" && t["retained"] == true), "{order:#}");
    let stream = entry("order stream");
    assert!(stream["bytes"].as_u64().unwrap() > 0 && stream["kept_bytes"] == 0, "{stream:#}");
    // PostgreSQL was configured, NATS was not: only NATS ran under the data dir.
    assert!(dir.path().join("servers/nats/jetstream").is_dir());
    assert!(!dir.path().join("servers/postgres").exists());
    for service in Service::ALL {
        assert!(dir.path().join(format!("logs/{service}.log")).is_file(), "no log of {service}");
        assert!(!dir.path().join(format!("run/{service}.pid")).exists(), "{service} was not stopped");
    }
}

/// The demo's supervisor restarts what dies under it: a service process
/// SIGKILLed mid-run comes back by itself (it used to stay dead, only
/// `polis up` restarted anything), and the run ends with every order
/// decided and every safety invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_demo_restarts_a_service_that_dies_under_it() {
    let _shop = SHOPS.acquire().await.unwrap();
    let postgres = polis_testkit::postgres().await;
    let dir = data_dir();
    let mut command = polis();
    command
        .args(["demo", "--mode", "distributed", "--orders", "600", "--json", "--data-dir"])
        .arg(dir.path())
        .env("POLIS_POSTGRES_URL", postgres.url())
        .env("POLIS__DATABASE_PREFIX", postgres.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap());
    let demo = polis_testkit::process::spawn_tethered(command).await.unwrap();
    let seeded = polis_testkit::wait_for(Duration::from_secs(120), || {
        std::future::ready(dir.path().join("demo-run.json").is_file())
    })
    .await;
    assert!(seeded.is_ok(), "the demo never recorded its run");
    let pid = read_pid(dir.path(), Service::Payment).unwrap();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());

    let out = tokio::task::spawn_blocking(move || demo.wait_with_output().unwrap()).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let safety: Vec<&serde_json::Value> = report["invariants"]
        .as_array()
        .map(|checks| {
            checks.iter().filter(|c| !c["name"].as_str().unwrap_or("").starts_with("the workload covers")).collect()
        })
        .unwrap_or_default();
    assert!(safety.len() >= 6 && safety.iter().all(|c| c["holds"] == true), "{report:#}\n{log}");
    let decided: u64 = report["by_status"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(decided, 600, "{report:#}");
    let restarted = std::fs::read_to_string(dir.path().join("logs/payment.log")).unwrap();
    assert!(restarted.matches("--- polis supervisor: starting payment").count() >= 2, "payment was not restarted");
}

async fn healthy(gateway: &Endpoint) -> bool {
    gateway.call(Method::GET, "/healthz", None::<&()>).await.is_ok_and(|(status, _)| status == StatusCode::OK)
}

fn read_pid(dir: &Path, service: Service) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("run/{service}.pid"))).ok()?.trim().parse().ok()
}

/// Starts `polis up --mode distributed` and waits until its gateway answers.
async fn up(dir: &Path, port: u16) -> (Running, Endpoint) {
    let mut command = polis();
    command
        .args(["up", "--mode", "distributed", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("up-{}.log", Uuid::now_v7()))).unwrap());
    let child = Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));
    let gateway = Endpoint::remote(&format!("http://127.0.0.1:{port}")).unwrap();
    let ready = polis_testkit::wait_for(Duration::from_secs(90), || healthy(&gateway)).await;
    assert!(ready.is_ok(), "polis up never answered; see {}", dir.display());
    (child, gateway)
}

/// SIGTERMs a `polis` process and waits for it to exit; it must exit cleanly.
async fn interrupt(running: Running) {
    let status = running.signal_and_wait("-TERM").await;
    assert!(status.success(), "polis up exited with {status:?}");
}

/// `polis up --mode distributed` with nothing configured: local servers
/// under the data dir; a SIGKILLed service comes back by itself; SIGTERM
/// stops everything; a second `up` on the same data dir resumes the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_in_distributed_mode_restarts_a_dead_service_stops_and_resumes() {
    let _shop = SHOPS.acquire().await.unwrap();
    let dir = data_dir();
    let port = polis_testkit::free_port();
    let (child, gateway) = up(dir.path(), port).await;
    assert!(dir.path().join("servers/postgres/data/PG_VERSION").is_file());
    assert!(dir.path().join("servers/nats/jetstream").is_dir());
    let first = place_one(&gateway).await;
    wait_approved(&gateway, first).await;
    // A supervised service's log is a file: plain text, no terminal colours.
    let log = std::fs::read_to_string(dir.path().join("logs/payment.log")).unwrap();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "the payment log has ANSI escapes or no lines");

    // The data directory has one owner: a second supervisor exits at once.
    let mut second = polis();
    second.args(["up", "--mode", "distributed", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    let out = tokio::task::spawn_blocking(move || second.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let owner = child.0.as_ref().unwrap().id();
    assert!(!out.status.success() && stderr.contains(&format!("is in use by pid {owner}")), "{stderr}");

    // A crashed service is started again, and the shop works on.
    let pid = read_pid(dir.path(), Service::Payment).unwrap();
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let back = polis_testkit::wait_for(Duration::from_secs(60), || {
        std::future::ready(read_pid(dir.path(), Service::Payment).is_some_and(|new| new != pid))
    })
    .await;
    assert!(back.is_ok(), "payment was not restarted");
    let second = place_one(&gateway).await;
    wait_approved(&gateway, second).await;

    interrupt(child).await;
    assert!(!healthy(&gateway).await, "the gateway still answers after the stop");
    for service in Service::ALL {
        assert_eq!(read_pid(dir.path(), service), None, "{service} still has a pid file");
    }

    // Not as an embedded shop, which would start empty beside the data.
    let mut embedded = polis();
    embedded.args(["up", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path());
    let out = tokio::task::spawn_blocking(move || embedded.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("holds a distributed shop, not --mode embedded"), "{stderr}");
    assert!(!dir.path().join("order.db").exists(), "a refused start wrote files");

    // Same data dir: the same databases and streams.
    let (child, gateway) = up(dir.path(), port).await;
    for id in [first, second] {
        let order: OrderView = gateway.get(&format!("/api/orders/{id}")).await.unwrap();
        assert_eq!(order.status, OrderStatus::Approved);
    }
    let third = place_one(&gateway).await;
    wait_approved(&gateway, third).await;
    interrupt(child).await;
}

fn read_server_pid(dir: &Path, server: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("run/{server}.pid"))).ok()?.trim().parse().ok()
}

/// The local servers are watched like the services: a SIGKILLed NATS server
/// comes back by itself, an order accepted while it was down is then
/// decided (it used to stay PENDING for ever) and new orders are approved;
/// the same for a SIGKILLed postmaster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_its_local_servers_when_they_die() {
    let _shop = SHOPS.acquire().await.unwrap();
    let dir = data_dir();
    let port = polis_testkit::free_port();
    let (child, gateway) = up(dir.path(), port).await;
    let first = place_one(&gateway).await;
    wait_approved(&gateway, first).await;

    let kill = |pid: u32| assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let restarted = |server: &'static str, pid: u32| {
        let dir = dir.path().to_owned();
        polis_testkit::wait_for(Duration::from_secs(60), move || {
            std::future::ready(read_server_pid(&dir, server).is_some_and(|new| new != pid))
        })
    };

    let nats = read_server_pid(dir.path(), "nats-server").expect("a pid file for the local nats-server");
    kill(nats);
    let during = place_one(&gateway).await;
    assert!(restarted("nats-server", nats).await.is_ok(), "nats-server was not restarted");
    // Approved, or rejected if a step's deadline passed while NATS was away:
    // decided either way, where it used to stay PENDING for ever.
    let decided = polis_testkit::wait_for(Duration::from_secs(60), || async {
        gateway.get::<OrderView>(&format!("/api/orders/{during}")).await.is_ok_and(|o| o.status.is_terminal())
    })
    .await;
    assert!(decided.is_ok(), "the order placed while NATS was down was never decided");
    let again = place_one(&gateway).await;
    wait_approved(&gateway, again).await;

    let postgres = read_server_pid(dir.path(), "postgres").expect("a pid file for the local postgres");
    kill(postgres);
    assert!(restarted("postgres", postgres).await.is_ok(), "postgres was not restarted");
    let after = place_one(&gateway).await;
    wait_approved(&gateway, after).await;

    interrupt(child).await;
    for server in ["nats-server", "postgres"] {
        assert_eq!(read_server_pid(dir.path(), server), None, "{server} still has a pid file");
    }
}

/// A service process SIGKILLed while orders are in flight, started again
/// later: every order ends terminal and every invariant holds.
async fn a_killed_service_process_loses_nothing(style: SagaStyle, victim: Service) {
    let postgres = polis_testkit::postgres().await;
    let dir = data_dir();
    let options = SupervisorOptions::new(env!("CARGO_BIN_EXE_polis"), dir.path())
        .with_saga(style)
        .with_gateway_listen("127.0.0.1:0".parse().unwrap())
        .with_env("POLIS_POSTGRES_URL", postgres.url())
        .with_env("POLIS__DATABASE_PREFIX", postgres.name())
        // What the victim had pulled but not finished comes back this soon.
        .with_env("POLIS__NATS__ACK_WAIT_MS", "2000");
    let mut supervisor = Supervisor::start(options).await.unwrap();
    let apis = supervisor.apis().unwrap();

    const ORDERS: usize = 150;
    let mut rng = workload::rng(11);
    let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let placing = workload::place_in_background(&apis, plan, 8, workload::Pacing::Accepted);

    // Kill mid-stream; keep it down until plenty of orders wait on it (or
    // on what it would have sent); bring it back.
    placing.until_placed(ORDERS / 4, Duration::from_secs(60)).await.unwrap();
    supervisor.kill(victim).unwrap();
    let waiting = polis_testkit::wait_for(Duration::from_secs(60), || async {
        let orders: Vec<OrderView> = apis.get(Service::Order).get_all("/orders", |o: &OrderView| o.id).await.unwrap();
        orders.iter().filter(|o| o.status == OrderStatus::Pending).count() >= ORDERS / 3
    })
    .await;
    assert!(waiting.is_ok(), "orders did not pile up behind the dead {victim}");
    supervisor.restart(victim).await.unwrap();
    let placed = placing.finish().await.unwrap();
    assert_eq!(placed.len(), ORDERS);

    // Which reasons occur depends on when the victim was down (a step may
    // time out instead): coverage is the demo's business, safety is this
    // test's. Compensations may still be landing: wait for convergence.
    workload::wait_safe(&apis, &seeded, &placed, Duration::from_secs(120)).await.unwrap();
    supervisor.stop().await;
}

/// The saga style may change across a restart while orders are in flight,
/// in both directions (orchestration → choreography → orchestration, a
/// third of the orders placed and left undecided under each): every order
/// ends terminal and every safety invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_style_can_change_across_restarts_under_load() {
    let _shop = SHOPS.acquire().await.unwrap();
    const ORDERS: usize = 60;
    let postgres = polis_testkit::postgres().await;
    let dir = data_dir();
    let styles = [SagaStyle::Orchestration, SagaStyle::Choreography, SagaStyle::Orchestration];
    let mut rng = workload::rng(13);
    let mut run = None;
    let mut placed = Vec::new();
    for (round, style) in styles.into_iter().enumerate() {
        let options = SupervisorOptions::new(env!("CARGO_BIN_EXE_polis"), dir.path())
            .with_saga(style)
            .with_gateway_listen("127.0.0.1:0".parse().unwrap())
            .with_env("POLIS_POSTGRES_URL", postgres.url())
            .with_env("POLIS__DATABASE_PREFIX", postgres.name());
        let supervisor = Supervisor::start(options).await.unwrap();
        let apis = supervisor.apis().unwrap();
        let (seeded, plan) = match &run {
            Some(run) => run,
            None => {
                let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
                let plan = workload::plan(&seeded, ORDERS, &mut rng);
                run.insert((seeded, plan))
            }
        };
        let third = &plan[round * ORDERS / 3..(round + 1) * ORDERS / 3];
        placed.extend(workload::place_orders(&apis, third, 8, workload::Pacing::Accepted, &|_| {}).await.unwrap());
        if round + 1 < styles.len() {
            // Stopped with orders in flight; the next style resumes them.
            supervisor.stop().await;
            continue;
        }
        assert_eq!(placed.len(), ORDERS);
        workload::wait_safe(&apis, seeded, &placed, Duration::from_secs(120)).await.unwrap();
        supervisor.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_survives_a_killed_payment_process() {
    let _shop = SHOPS.acquire().await.unwrap();
    a_killed_service_process_loses_nothing(SagaStyle::Orchestration, Service::Payment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_survives_a_killed_inventory_process() {
    let _shop = SHOPS.acquire().await.unwrap();
    a_killed_service_process_loses_nothing(SagaStyle::Choreography, Service::Inventory).await;
}

/// `polis serve` refuses what cannot work, saying why, before touching anything.
#[test]
fn serve_names_what_is_wrong() {
    // clap's usage error for what it cannot parse; an operational error for the rest.
    for (args, env, status, expected) in [
        (
            vec!["serve", "billing"],
            vec![],
            2,
            "invalid value 'billing' for '<SERVICE>'\n  [possible values: customer, catalog, inventory, payment, shipping, order, order-history, audit, gateway]",
        ),
        (vec!["serve", "payment"], vec![], 1, "no PostgreSQL server configured: set POLIS_POSTGRES_URL"),
        (
            vec!["serve", "payment"],
            vec![("POLIS_POSTGRES_URL", "postgres://u:hunter2@127.0.0.1:1/postgres")],
            1,
            "no NATS server configured: set POLIS_NATS_URL",
        ),
        (vec!["serve", "order"], vec![("POLIS__DATABASE_PREFIX", "Bad-Prefix")], 1, "database_prefix"),
        (vec!["serve", "order", "--config", "/nonexistent/polis.toml"], vec![], 1, "polis.toml"),
    ] {
        let out = polis().args(&args).envs(env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?} printed a password: {stderr}");
    }
}

/// The gateway alone, configured by a file, serves until SIGTERM and then
/// exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_its_config_file_and_stops_on_sigterm() {
    let dir = data_dir();
    let port = polis_testkit::free_port();
    let file = dir.path().join("polis.toml");
    std::fs::write(&file, format!("[listen]\ngateway = \"127.0.0.1:{port}\"\n")).unwrap();
    let mut command = polis();
    command.args(["serve", "gateway", "--config"]).arg(&file).stdout(Stdio::null()).stderr(Stdio::null());
    let child = Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));
    let gateway = Endpoint::remote(&format!("http://127.0.0.1:{port}")).unwrap();
    polis_testkit::wait_for(Duration::from_secs(30), || healthy(&gateway)).await.unwrap();
    // No service behind it: the gateway says so as a problem, it does not hang.
    let (status, _) = gateway.call(Method::GET, "/api/products", None::<&()>).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    interrupt(child).await;
    assert!(!healthy(&gateway).await);
}
