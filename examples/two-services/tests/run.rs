//! Runs the example's binary as its README says: embedded by default (and
//! again on the same data directory), and distributed against throwaway
//! PostgreSQL and NATS servers.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::str::FromStr as _;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

const BIN: &str = env!("CARGO_BIN_EXE_example-two-services");
/// How long the example waits for its view (it fails on its own after that).
const CONVERGE_MS: &str = "20000";
/// The longest a run may take before the test kills it: convergence plus start and shutdown.
const LIMIT: Duration = Duration::from_secs(40);

#[test]
fn embedded_by_default() {
    let output = run(&["--timeout-ms", CONVERGE_MS]);
    let stdout = assert_projected(&output, [("ada", 2, 14), ("grace", 2, 13)]);
    assert!(stdout.starts_with("embedded: "), "{stdout}");
    assert!(
        stdout.contains("projection author_words: generation 1, version 1, position 4, behind 0, lag "),
        "{stdout}"
    );
}

#[test]
fn resumes_on_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap(), "--timeout-ms", CONVERGE_MS];
    assert_projected(&run(&args), [("ada", 2, 14), ("grace", 2, 13)]);
    for file in ["notes.db", "stats.db", "bus.db"] {
        assert!(dir.path().join(file).is_file(), "no {file} in the data directory");
    }
    // The second run's notes add to the first's: nothing was lost or applied twice.
    let stdout = assert_projected(&run(&args), [("ada", 4, 28), ("grace", 4, 26)]);
    assert!(stdout.contains("position 8, behind 0"), "{stdout}");
}

#[tokio::test]
async fn distributed_over_postgres_and_nats() {
    // A fresh database names the run's own databases (`<it>_notes`, `<it>_stats`) on the shared server.
    // The NATS server is this test binary's own and only this test uses it, so the services' streams
    // (`POLIS_NOTES`) need no prefix; the example only waits for the notes it wrote itself, in any case.
    let db = polis_testkit::postgres().await;
    let nats = polis_testkit::nats().await;
    let args = [
        "--postgres".to_owned(),
        db.url().to_owned(),
        "--nats".to_owned(),
        nats.url().to_owned(),
        "--database-prefix".to_owned(),
        db.name().to_owned(),
        "--timeout-ms".to_owned(),
        CONVERGE_MS.to_owned(),
    ];
    let output = tokio::task::spawn_blocking(move || run(&args.each_ref().map(String::as_str))).await.unwrap();
    let stdout = assert_projected(&output, [("ada", 2, 14), ("grace", 2, 13)]);
    let (notes_db, stats_db) = (format!("{}_notes", db.name()), format!("{}_stats", db.name()));
    assert!(stdout.contains(&format!("PostgreSQL databases {notes_db} and {stats_db}")), "{stdout}");

    // A database per service: each holds its own tables, and nothing of the other's.
    let server = PgConnectOptions::from_str(db.url()).unwrap();
    let relations = async |database: &str| {
        let mut conn = server.clone().database(database).connect().await.unwrap();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
             AND table_name IN ('notes', 'author_words')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        names
    };
    assert_eq!(relations(&notes_db).await, ["notes"]);
    assert_eq!(relations(&stats_db).await, ["author_words"]);
}

/// Asserts the run succeeded and printed each `(author, notes, words)` as
/// stats' view; returns its standard output.
fn assert_projected<const N: usize>(output: &Output, expected: [(&str, i64, i64); N]) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the example failed ({}):\n{stdout}\n{stderr}", output.status);
    assert_eq!(stdout.matches("POST /notes -> 201 Created ").count(), 4, "{stdout}");
    for (author, notes, words) in expected {
        let prefix = format!("GET /authors/{author} -> 200 OK ");
        let line = stdout.lines().find_map(|line| line.strip_prefix(&prefix));
        let line = line.unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"));
        let view: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!((view["notes"].as_i64(), view["words"].as_i64()), (Some(notes), Some(words)), "{line}");
    }
    let projection = stdout.lines().find(|line| line.starts_with("projection author_words: "));
    let projection = projection.unwrap_or_else(|| panic!("no projection line in:\n{stdout}"));
    assert!(projection.contains("behind 0, lag ") && projection.contains(" ms "), "{projection}");
    stdout
}

/// Runs the example with `args`, killing it if it outlives [`LIMIT`].
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on threads, so a full pipe never stalls the child.
    let (stdout, stderr) = (drain(child.stdout.take().unwrap()), drain(child.stderr.take().unwrap()));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "the example was still running after {LIMIT:?}:\n{}\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    })
}
