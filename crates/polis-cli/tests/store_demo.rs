//! The README's main command, end to end, as a user runs it.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run_demo(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_polis"))
        .args(["store-demo", "--orders", "300", "--concurrency", "8", "--json"])
        .args(extra)
        .env_remove("POLIS_POSTGRES_URL")
        .output()
        .expect("run polis store-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "polis store-demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).expect("the --json report parses")
}

fn assert_sound(report: &serde_json::Value) {
    assert_eq!(report["orders"], 300);
    let reserved = report["reserved"].as_u64().unwrap();
    let out_of_stock = report["out_of_stock"].as_u64().unwrap();
    assert_eq!(reserved + out_of_stock, 300);
    assert!(out_of_stock > 0, "the workload is sized so some orders find no stock");
    let checks = report["invariants"].as_array().unwrap();
    assert!(checks.len() >= 7);
    assert!(checks.iter().all(|c| c["holds"] == true), "{checks:#?}");
}

#[test]
fn store_demo_on_the_embedded_store_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_demo(&["--data-dir", dir.path().to_str().unwrap()]);
    assert_sound(&report);
    assert!(dir.path().join("demo-events.db").exists(), "the data stays in --data-dir");
    // A second run on the same data dir appends to the same log and still checks out.
    assert_sound(&run_demo(&["--data-dir", dir.path().to_str().unwrap()]));
}

#[tokio::test]
async fn store_demo_on_postgres_keeps_every_invariant() {
    let db = polis_testkit::postgres().await;
    let url = db.url().to_owned();
    let report = tokio::task::spawn_blocking(move || run_demo(&["--postgres-url", &url])).await.unwrap();
    assert_sound(&report);
    assert_eq!(report["backend"], "postgresql");
}
