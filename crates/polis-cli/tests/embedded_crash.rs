//! The embedded shop SIGKILLed in the middle of `polis demo`, then resumed
//! on the same data directory by `polis check`: every order of the run —
//! those in flight at the kill included — reaches a terminal status, and
//! every invariant holds. Both saga styles.
//!
//! The test watches the order service's own SQLite file (read-only) to kill
//! the demo while orders are being placed and decided, and reads it again
//! afterwards as an oracle that does not go through the shop's code.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use contracts::SagaStyle;
use sqlx::{Connection as _, SqliteConnection};
use support::polis;

/// Orders the demo means to place: far more than it gets through before
/// the kill, which comes once [`KILL_AFTER`] exist.
const ORDERS: usize = 2000;
const KILL_AFTER: usize = 300;
const TERMINAL: [&str; 3] = ["APPROVED", "REJECTED", "CANCELLED"];

/// Every order's status in the order service's file; `None` while the file
/// or its table does not exist yet.
async fn statuses(dir: &Path) -> Option<Vec<String>> {
    let url = format!("sqlite://{}?mode=ro", dir.join("order.db").display());
    let mut conn = SqliteConnection::connect(&url).await.ok()?;
    let statuses = sqlx::query_scalar("SELECT status FROM orders").fetch_all(&mut conn).await.ok();
    conn.close().await.ok()?;
    statuses
}

async fn a_killed_demo_resumes_and_keeps_every_invariant(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut command = polis();
    command
        .args(["demo", "--orders", &ORDERS.to_string(), "--concurrency", "16", "--json", "--saga", style.as_str()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut demo = polis_testkit::process::spawn_tethered(command).await.unwrap();

    let placing = polis_testkit::wait_for(Duration::from_secs(60), || async {
        statuses(dir.path()).await.is_some_and(|s| s.len() >= KILL_AFTER)
    })
    .await;
    let exited = demo.try_wait().unwrap();
    assert!(placing.is_ok() && exited.is_none(), "the demo placed no orders ({exited:?}): {}", read(&log));
    demo.kill().unwrap(); // SIGKILL: no clean-up of any kind
    demo.wait().unwrap();

    // The kill landed mid-run: the run was cut short, with orders undecided.
    let at_kill = statuses(dir.path()).await.unwrap();
    let undecided = at_kill.iter().filter(|s| !TERMINAL.contains(&s.as_str())).count();
    assert!(at_kill.len() < ORDERS, "the demo finished before the kill");
    assert!(undecided > 0, "no order was in flight at the kill: {at_kill:?}");

    // Resume the shop on the same data directory, finish and check the run.
    let mut check = polis();
    check.args(["check", "--json", "--data-dir"]).arg(dir.path());
    let out = tokio::task::spawn_blocking(move || check.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polis check failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the --json report parses");
    assert_eq!(report["saga"], style.as_str());
    assert_eq!(report["planned"], ORDERS);
    assert_eq!(report["orders"], at_kill.len(), "{report:#}");
    let decided: usize = report["by_status"].as_object().unwrap().values().map(|n| n.as_u64().unwrap() as usize).sum();
    assert_eq!(decided, at_kill.len(), "{report:#}");
    let checks = report["invariants"].as_array().unwrap();
    assert!(checks.len() >= 6, "{checks:#?}");
    assert!(checks.iter().all(|c| c["holds"] == true), "{checks:#?}");

    // The oracle: the order service's own rows, all decided.
    let after = statuses(dir.path()).await.unwrap();
    assert_eq!(after.len(), at_kill.len());
    let open: Vec<_> = after.iter().filter(|s| !TERMINAL.contains(&s.as_str())).collect();
    assert!(open.is_empty(), "{} orders left undecided, e.g. {:?}", open.len(), &open[..open.len().min(5)]);
}

/// Without a recorded run there is nothing to check: `polis check` says so
/// and how to make one, and leaves no shop files behind.
#[test]
fn check_names_a_missing_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = polis().args(["check", "--data-dir"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an operational error, not a violated invariant: {stderr}");
    assert!(stderr.contains("no demo run is recorded") && stderr.contains("polis demo --data-dir"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_survives_a_sigkill_mid_demo() {
    a_killed_demo_resumes_and_keeps_every_invariant(SagaStyle::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_survives_a_sigkill_mid_demo() {
    a_killed_demo_resumes_and_keeps_every_invariant(SagaStyle::Choreography).await;
}
