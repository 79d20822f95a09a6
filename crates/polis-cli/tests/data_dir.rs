//! What a user gets who points polis at the wrong data directory, or at one
//! already in use, and what happens to the demo's data when it is
//! interrupted: real `polis` processes, real signals.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use shop::client::Endpoint;
use support::{Running, polis};

async fn spawn(args: &[&str], dir: &Path, log: &str) -> Running {
    let mut command = polis();
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(dir.join(log)).unwrap());
    Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()))
}

/// Runs `polis` to its end: it must fail with `status`, and say `expected`
/// on stderr.
async fn exits_saying(args: &[&str], status: i32, expected: &str) -> Output {
    let mut command = polis();
    command.args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?} did not say {expected:?}: {stderr}");
    out
}

/// An operational error (exit status 1), not a violated invariant (3).
async fn fails_saying(args: &[&str], expected: &str) -> Output {
    exits_saying(args, 1, expected).await
}

/// An argument clap refuses: its usage error (exit status 2).
async fn misused_saying(args: &[&str], expected: &str) -> Output {
    exits_saying(args, 2, expected).await
}

async fn healthy(gateway: &Endpoint) -> bool {
    gateway.call(Method::GET, "/healthz", None::<&()>).await.is_ok_and(|(status, _)| status == StatusCode::OK)
}

/// One process owns a data directory: a second `up` (either mode) or a
/// `demo` on it exits at once naming the owner's pid; after the owner
/// stopped, a distributed `up` on the embedded shop's directory is refused
/// before it starts anything. `--listen` takes a host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_has_one_owner_and_keeps_its_mode() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shop");
    let dir_arg = dir.to_str().unwrap();
    let port = polis_testkit::free_port();
    let listen = format!("localhost:{port}");
    let first = spawn(&["up", "--data-dir", dir_arg, "--listen", &listen], root.path(), "first.log").await;
    let gateway = Endpoint::remote(&format!("http://localhost:{port}")).unwrap();
    let up = polis_testkit::wait_for(Duration::from_secs(60), || healthy(&gateway)).await;
    assert!(up.is_ok(), "polis up never answered: {}", std::fs::read_to_string(root.path().join("first.log")).unwrap());

    let in_use = format!("{dir_arg} is in use by pid {}", first.pid());
    let other = format!("127.0.0.1:{}", polis_testkit::free_port());
    fails_saying(&["up", "--data-dir", dir_arg, "--listen", &other], &in_use).await;
    fails_saying(&["up", "--mode", "distributed", "--data-dir", dir_arg, "--listen", &other], &in_use).await;
    fails_saying(&["demo", "--orders", "1", "--data-dir", dir_arg], &in_use).await;
    assert!(healthy(&gateway).await, "the owner still serves");

    assert!(first.signal_and_wait("-TERM").await.success());
    let manifest = std::fs::read_to_string(dir.join("polis-data.json")).unwrap();
    assert!(manifest.contains(r#""deployment": "embedded""#), "{manifest}");
    fails_saying(
        &["up", "--mode", "distributed", "--data-dir", dir_arg, "--listen", &other],
        "holds an embedded shop, not --mode distributed; run it with --mode embedded",
    )
    .await;
    assert!(!dir.join("servers").exists(), "a refused start started servers");
}

/// Bad arguments are refused, saying why, before anything starts: clap's
/// usage error for what it cannot parse, an operational error for the rest.
#[tokio::test]
async fn bad_arguments_are_named() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    fails_saying(&["demo", "--data-dir", file.to_str().unwrap()], "is not a directory").await;
    fails_saying(&["up", "--data-dir", file.to_str().unwrap(), "--listen", "127.0.0.1:0"], "is not a directory").await;
    fails_saying(&["store-demo", "--data-dir", file.to_str().unwrap()], "creating").await;
    misused_saying(&["demo", "--concurrency", "0"], "must be at least 1").await;
    misused_saying(&["demo", "--orders", "0"], "must be at least 1").await;
    misused_saying(&["up", "--listen", "nowhere"], "expected HOST:PORT or IP:PORT").await;
    fails_saying(&["demo", "--mode", "distributed", "--without-read-side"], "is for the embedded mode").await;
}

/// The read side can be left out, to measure its price: the demo then
/// checks every other invariant, and reports no view lag.
#[tokio::test]
async fn the_demo_runs_without_its_read_side() {
    let mut command = polis();
    command.args(["demo", "--orders", "60", "--without-read-side", "--json"]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = report["invariants"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(names.len() >= 6 && !names.iter().any(|n| n.contains("order-history")), "{names:?}");
    assert!(report["view_lag_ms_p99"].is_null(), "{report}");
    // Each database with its tables; what stays leaves out what retention deletes.
    let disk = report["disk"].as_array().unwrap();
    let order = disk.iter().find(|d| d["database"] == "order").unwrap_or_else(|| panic!("{disk:#?}"));
    let tables = order["tables"].as_array().unwrap();
    let bytes_of = |name: &str| tables.iter().find(|t| t["table"] == name).and_then(|t| t["bytes"].as_u64());
    assert!(bytes_of("polis_events").is_some_and(|b| b > 0), "{order:#}");
    let inbox = tables.iter().find(|t| t["table"] == "polis_inbox").unwrap_or_else(|| panic!("{order:#}"));
    assert_eq!(inbox["retained"], true);
    let kept = order["kept_bytes"].as_u64().unwrap();
    let bytes = |retained: bool| -> u64 {
        tables.iter().filter(|t| t["retained"] == retained).map(|t| t["bytes"].as_u64().unwrap()).sum()
    };
    assert_eq!(kept, bytes(false), "{order:#}");
    assert!(bytes(true) >= inbox["bytes"].as_u64().unwrap() && kept > 0, "{order:#}");
    let bus = disk.iter().find(|d| d["database"] == "bus").unwrap_or_else(|| panic!("{disk:#?}"));
    let log = bus["tables"].as_array().unwrap().iter().find(|t| t["table"] == "bus_messages");
    assert!(log.is_some_and(|t| t["retained"] == true), "{bus:#}");
}

/// Waits until a demo under `temp` has recorded its run (it is seeded and
/// placing orders) and returns its data directory.
async fn demo_dir_under(temp: &Path) -> std::path::PathBuf {
    let mut found = None;
    let recorded = polis_testkit::wait_for(Duration::from_secs(60), || {
        found = std::fs::read_dir(temp).unwrap().flatten().map(|e| e.path()).find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("polis-demo-") && p.join("demo-run.json").is_file()
        });
        std::future::ready(found.is_some())
    })
    .await;
    assert!(recorded.is_ok(), "no demo directory with a recorded run under {}", temp.display());
    found.unwrap()
}

/// An interrupted demo removes its temporary data directory (it used to
/// leave it behind, up to 198 MB, saying nothing) and exits with 128 + the
/// signal; with `--data-dir` the data is kept and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_demo_removes_its_temporary_data_or_names_the_kept_one() {
    let root = tempfile::tempdir().unwrap();
    let temp = root.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let mut command = polis();
    command
        .args(["demo", "--orders", "1000000", "--json"])
        .env("TMPDIR", &temp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.path().join("demo.log")).unwrap());
    let demo = Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));
    let data = demo_dir_under(&temp).await;
    let status = demo.signal_and_wait("-INT").await;
    let log = std::fs::read_to_string(root.path().join("demo.log")).unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(!data.exists(), "{} was left behind: {log}", data.display());
    assert!(log.contains("removed the temporary data directory"), "{log}");

    let kept = root.path().join("kept");
    let mut command = polis();
    command
        .args(["demo", "--orders", "1000000", "--json", "--data-dir", kept.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.path().join("kept.log")).unwrap());
    let demo = Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));
    let recorded =
        polis_testkit::wait_for(Duration::from_secs(60), || std::future::ready(kept.join("demo-run.json").is_file()))
            .await;
    assert!(recorded.is_ok(), "the demo never recorded its run");
    let status = demo.signal_and_wait("-TERM").await;
    let log = std::fs::read_to_string(root.path().join("kept.log")).unwrap();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(kept.join("order.db").is_file(), "the kept data is gone");
    assert!(log.contains(&format!("the data is kept in {}", kept.display())), "{log}");
}
