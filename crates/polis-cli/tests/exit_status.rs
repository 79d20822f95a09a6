//! `polis`'s exit status tells an invariant that does not hold (3) from an
//! operational error (1, asserted where each is provoked: `data_dir.rs`,
//! `embedded_crash.rs`, `distributed.rs`) and a usage error (2), and
//! `--help` says so.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Output;

use sqlx::{Connection as _, SqliteConnection};
use support::polis;

const INVARIANT_VIOLATED: i32 = 3;

async fn output(args: &[&str]) -> Output {
    let mut command = polis();
    command.args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("no JSON report ({err}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn help_lists_the_exit_statuses() {
    let out = output(&["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for line in
        ["Exit status:", "  1      operational error", "  2      usage error", "  3      demo, check", "  128+N"]
    {
        assert!(help.contains(line), "--help does not say {line:?}:\n{help}");
    }
}

/// Adds one unit of stock to a sku of the inventory service's SQLite file,
/// behind the service's back.
async fn tamper_with_stock(dir: &Path) {
    let url = format!("sqlite://{}?mode=rw", dir.join("inventory.db").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let changed = sqlx::query("UPDATE stock SET available = available + 1 WHERE sku = (SELECT min(sku) FROM stock)")
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    conn.close().await.unwrap();
    assert_eq!(changed, 1, "no stock row in {}", dir.display());
}

/// A demo whose invariants hold exits with 0; once stock has been changed
/// behind the inventory service's back, `polis check` on the same data
/// completes, reports the stock as not conserved, and exits with 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violated_invariant_has_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let out = output(&["demo", "--orders", "60", "--json", "--data-dir", data_dir]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let checks = report(&out)["invariants"].clone();
    assert!(checks.as_array().unwrap().iter().all(|c| c["holds"] == true), "{checks:#}");

    tamper_with_stock(dir.path()).await;

    let out = output(&["check", "--json", "--data-dir", data_dir]).await;
    let checks = report(&out)["invariants"].clone();
    let failed: Vec<&str> =
        checks.as_array().unwrap().iter().filter(|c| c["holds"] == false).filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(failed, ["stock conserved per sku (initial = available + reserved)"], "{checks:#}");
    assert_eq!(out.status.code(), Some(INVARIANT_VIOLATED), "{}", String::from_utf8_lossy(&out.stderr));
}
