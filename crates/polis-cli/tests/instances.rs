//! Two processes of every service (`polis up --mode distributed --instances
//! 2`, ADR 0011) under load, with real faults: one instance of each service
//! SIGKILLed, one at a time, then the other of each all at once; one
//! instance of each SIGSTOPped past its leases and let go again. Nothing is
//! lost, nothing takes effect twice, every order ends terminal and every
//! invariant holds (`workload::wait_safe`).
#![allow(clippy::unwrap_used)]

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use contracts::SagaStyle;
use shop::distributed::Service;
use shop::supervisor::{Process, Supervisor, SupervisorOptions};
use shop::workload::{self, Pacing};

const ORDERS: usize = 120;

/// A data directory others may search (not list): under root the local
/// PostgreSQL runs as `postgres` and must reach its files below it.
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("polis-cli-test-").permissions(Permissions::from_mode(0o711)).tempdir().unwrap()
}

/// One shop at a time in this binary: each is seventeen processes (two of
/// each of eight services, the gateway) beside PostgreSQL and NATS.
static SHOPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Two instances of every service, orders being placed, `fault` done to
/// the running shop a quarter of the way in; then every order must end
/// terminal with every invariant holding.
async fn under_load(style: SagaStyle, fault: impl AsyncFnOnce(&mut Supervisor, &workload::Placing)) {
    let _shop = SHOPS.acquire().await.unwrap();
    let postgres = polis_testkit::postgres().await;
    let dir = data_dir();
    let options = SupervisorOptions::new(env!("CARGO_BIN_EXE_polis"), dir.path())
        .with_saga(style)
        .with_instances(2)
        .with_gateway_listen("127.0.0.1:0".parse().unwrap())
        .with_env("POLIS_POSTGRES_URL", postgres.url())
        .with_env("POLIS__DATABASE_PREFIX", postgres.name())
        // Seventeen pools on the shared test server.
        .with_env("POLIS__MAX_CONNECTIONS", "4")
        // What a dead instance had pulled comes back this soon.
        .with_env("POLIS__NATS__ACK_WAIT_MS", "2000")
        // A fault alone must not time an order out.
        .with_env("POLIS__ORDER__STEP_TIMEOUT_MS", "30000")
        .with_env("POLIS__ORDER__ORDER_TIMEOUT_MS", "60000");
    let mut supervisor = Supervisor::start(options).await.unwrap();
    assert_eq!(supervisor.instances(Service::Payment), 2);
    let apis = supervisor.apis().unwrap();
    let mut rng = workload::rng(23);
    let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let placing = workload::place_in_background(&apis, plan, 8, Pacing::Accepted);
    placing.until_placed(ORDERS / 4, Duration::from_secs(120)).await.unwrap();
    fault(&mut supervisor, &placing).await;
    let placed = placing.finish().await.unwrap();
    assert_eq!(placed.len(), ORDERS);
    workload::wait_safe(&apis, &seeded, &placed, Duration::from_secs(240)).await.unwrap();
    supervisor.stop().await;
}

/// Waits until `more` orders were placed after `since`.
async fn after(placing: &workload::Placing, since: usize, more: usize) {
    placing.until_placed((since + more).min(ORDERS), Duration::from_secs(120)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_instances_one_at_a_time_then_all_at_once_loses_nothing() {
    under_load(SagaStyle::Orchestration, async |supervisor, placing| {
        // One instance of each service, one after the other, orders flowing between.
        for service in Service::BUSINESS {
            supervisor.kill(Process::Service(service, 0)).unwrap();
            after(placing, placing.placed(), 3).await;
        }
        for service in Service::BUSINESS {
            supervisor.restart(Process::Service(service, 0)).await.unwrap();
        }
        // Then the other instance of every service at once.
        for service in Service::BUSINESS {
            supervisor.kill(Process::Service(service, 1)).unwrap();
        }
        after(placing, placing.placed(), 10).await;
        for service in Service::BUSINESS {
            supervisor.restart(Process::Service(service, 1)).await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_paused_past_their_leases_come_back_harmless() {
    under_load(SagaStyle::Choreography, async |supervisor, placing| {
        // Frozen with whatever they hold: leases, a partition's message,
        // pooled connections. The others take over once the leases expire.
        for service in Service::BUSINESS {
            supervisor.pause(Process::Service(service, 0)).unwrap();
        }
        let since = placing.placed();
        tokio::time::sleep(Duration::from_secs(8)).await; // past the 5 s leases: the pause is the scenario
        after(placing, since, 10).await;
        for service in Service::BUSINESS {
            supervisor.resume(Process::Service(service, 0)).unwrap();
        }
    })
    .await;
}
