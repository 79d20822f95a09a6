//! Two services built on polis alone, run together: a place to start from.
//!
//! - `notes` ([`notes`]): `POST /notes` stores a note in its own table and
//!   sends `NoteWritten` through its outbox in the same transaction.
//! - `stats` ([`stats`]): ingests notes' events into its own log and
//!   projects them into a read model of words per author, served at
//!   `GET /authors/{author}`.
//! - [`contract`]: what notes promises others; stats depends on it, never
//!   on notes itself.
//!
//! This program hosts both (`polis_runtime::host`: relay, scheduler,
//! consumer, projections), writes a few notes through notes' router, waits
//! until stats' view reflects them, prints the view and the projection's
//! lag, and shuts both down. Embedded by default (a SQLite file per service
//! and the in-process bus); with `--postgres URL --nats URL` distributed (a
//! PostgreSQL database per service and NATS JetStream), with the same
//! service code.

mod contract;
mod notes;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use clap::Parser;
use polis_bus::nats::NatsOptions;
use polis_bus::{InProcessBus, NatsBus};
use polis_core::Bus;
use polis_projection::ProjectionStatus;
use polis_runtime::{HostOptions, Hosted, HttpOptions, Service as _, host, with_standard_stack};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};
use tower::ServiceExt as _;
use uuid::Uuid;

use crate::contract::NOTES;
use crate::notes::{Note, Notes};
use crate::stats::{AuthorStats, AuthorWords, STATS, Stats};

/// What the run writes: (author, text).
const NOTES_TO_WRITE: [(&str, &str); 4] = [
    ("ada", "an event is a fact that already happened"),
    ("grace", "each service owns its data"),
    ("ada", "the outbox commits with the row"),
    ("grace", "read models follow the log at their pace"),
];

#[derive(Debug, Parser)]
#[command(about = "Two services on polis: notes sends an event through its outbox, stats projects it")]
struct Args {
    /// Embedded: where notes.db, stats.db and bus.db are kept (default: a
    /// temporary directory, removed at exit). A later run on the same
    /// directory resumes where this one stopped.
    #[arg(long, value_name = "DIR", conflicts_with = "postgres")]
    data_dir: Option<PathBuf>,
    /// Distributed: the PostgreSQL server (postgres://user:pw@host:5432/postgres);
    /// each service gets a database of its own on it, created if missing.
    #[arg(long, value_name = "URL", requires = "nats")]
    postgres: Option<String>,
    /// Distributed: the NATS server, JetStream enabled (nats://host:4222).
    #[arg(long, value_name = "URL", requires = "postgres")]
    nats: Option<String>,
    /// Distributed: the services' databases are PREFIX_notes and PREFIX_stats.
    #[arg(long, value_name = "PREFIX", default_value = "two_services", value_parser = database_prefix)]
    database_prefix: String,
    /// How long to wait for stats' view to reflect the notes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs go to stderr (warnings only unless RUST_LOG says otherwise); the report to stdout.
    let _telemetry = polis_runtime::telemetry::init_tracing_with("warn").context("reading RUST_LOG")?;
    let timeout = Duration::from_millis(args.timeout_ms);
    match (&args.postgres, &args.nats) {
        (Some(postgres), Some(nats)) => distributed(postgres, nats, &args.database_prefix, timeout).await,
        _ => embedded(args.data_dir.as_deref(), timeout).await,
    }
}

/// One SQLite file per service and the durable in-process bus, in `dir`.
async fn embedded(dir: Option<&Path>, timeout: Duration) -> anyhow::Result<()> {
    let temp;
    let dir = match dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path()
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("embedded: notes.db, stats.db and the in-process bus's bus.db under {}", dir.display());
    let sqlite = async |service: &str| {
        let path = dir.join(format!("{service}.db"));
        let store = SqliteEventStore::open(&path, SqliteOptions::new(service))
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        anyhow::Ok(Arc::new(store))
    };
    let (notes, stats) = (sqlite(NOTES).await?, sqlite(STATS).await?);
    let bus_path = dir.join("bus.db");
    let bus = InProcessBus::open(&bus_path).await.with_context(|| format!("opening {}", bus_path.display()))?;
    run(notes, stats, Arc::new(bus), timeout).await
    // `temp`, if any, is removed here, after everything using it has stopped.
}

/// One PostgreSQL database per service on `postgres`, and NATS JetStream.
///
/// Databases rather than schemas: a service owns its database, as it would
/// on servers of its own, and nothing (a search path, a role, a shared
/// notification channel) can let one read or wake the other.
async fn distributed(postgres: &str, nats: &str, prefix: &str, timeout: Duration) -> anyhow::Result<()> {
    // Checked here rather than handed to the driver, whose messages may quote the URL, password included.
    let scheme = postgres.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    ensure!(matches!(scheme.as_deref(), Some("postgres" | "postgresql")), "--postgres is not a postgres:// URL");
    let server = PgConnectOptions::from_str(postgres).map_err(|_| anyhow::anyhow!("--postgres is not a valid URL"))?;
    let notes = Arc::new(pg_store(&server, &format!("{prefix}_notes"), NOTES).await?);
    let stats = Arc::new(pg_store(&server, &format!("{prefix}_stats"), STATS).await?);
    let bus = NatsBus::connect(nats, NatsOptions::default()).await.context("connecting to NATS")?;
    // Neither URL is printed: either may hold a password.
    println!("distributed: PostgreSQL databases {prefix}_notes and {prefix}_stats, NATS JetStream");
    run(notes, stats, Arc::new(bus), timeout).await
}

/// `service`'s store over its own `database`, created on `server` if missing.
async fn pg_store(server: &PgConnectOptions, database: &str, service: &str) -> anyhow::Result<PgEventStore> {
    let mut conn = server.connect().await.context("connecting to the PostgreSQL server")?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut conn)
        .await
        .context("listing the server's databases")?;
    if exists.is_none() {
        // `database_prefix` allows lowercase letters, digits and `_` only, so quoting is enough.
        sqlx::query(&format!(r#"CREATE DATABASE "{database}""#))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the database {database}"))?;
    }
    let _ = conn.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(server.clone().database(database).application_name(service))
        .await
        .with_context(|| format!("connecting to the database {database}"))?;
    PgEventStore::from_pool(pool, PgOptions::new(service))
        .await
        .with_context(|| format!("setting up polis's tables in {database}"))
}

fn database_prefix(value: &str) -> Result<String, String> {
    let ok = (1..=50).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { Ok(value.to_owned()) } else { Err("1 to 50 of a-z 0-9 _, starting with a letter".to_owned()) }
}

/// Opens and hosts both services over their stores and `bus`, runs the
/// scenario, and shuts both down whatever its outcome (ctrl-c included).
async fn run<N, S>(notes_store: Arc<N>, stats_store: Arc<S>, bus: Arc<dyn Bus>, timeout: Duration) -> anyhow::Result<()>
where
    N: SqlStore,
    N::Tx: Sql,
    S: SqlStore,
    S::Tx: Sql,
{
    let notes = Notes::open(notes_store, ()).await.context("opening the notes service")?;
    let stats_service = Stats::open(stats_store, ()).await.context("opening the stats service")?;
    let options = HostOptions::default();
    let notes = host(&notes, bus.clone(), &options).await.context("hosting the notes service")?;
    let stats = match host(&stats_service, bus, &options).await.context("hosting the stats service") {
        Ok(stats) => stats,
        Err(e) => {
            notes.shutdown().await;
            return Err(e);
        }
    };
    let outcome = tokio::select! {
        outcome = scenario(&notes, &stats, &stats_service, timeout) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    notes.shutdown().await;
    stats.shutdown().await;
    outcome
}

/// Writes the notes, waits for stats' view to show them, prints it.
async fn scenario<S>(notes: &Hosted, stats: &Hosted, stats_service: &Stats<S>, timeout: Duration) -> anyhow::Result<()>
where
    S: SqlStore,
    S::Tx: Sql,
{
    // The routers as a host would serve them (`polis_runtime::serve`), called in-process.
    let http = HttpOptions::default();
    let (notes_api, stats_api) =
        (with_standard_stack(notes.router(), &http), with_standard_stack(stats.router(), &http));

    let mut latest = BTreeMap::new();
    for (author, text) in NOTES_TO_WRITE {
        let body = serde_json::json!({ "author": author, "text": text });
        let (status, answer) = call(&notes_api, Method::POST, "/notes", Some(body)).await?;
        ensure!(status == StatusCode::CREATED, "POST /notes answered {status}: {answer}");
        let note: Note = serde_json::from_str(&answer).with_context(|| format!("reading the note in {answer}"))?;
        println!("POST /notes -> {status} {answer}");
        latest.insert(author, note.id);
    }

    let started = Instant::now();
    let (views, live) = loop {
        let status = stats.projections().remove(AuthorWords::NAME);
        // Until its first generation is live the view does not exist yet (stats answers 503).
        let live = status.as_ref().and_then(|status| status.live.as_ref());
        let views = if live.is_some() { read_views(&stats_api, &latest).await? } else { Vec::new() };
        if shows_latest(&views, &latest) {
            // The projector reports a batch just after committing it: wait for
            // its report to cover what the view shows (the checkpoint commits
            // with the rows, and is read after them).
            let checkpoint = stats_service.checkpoint().await.context("reading the projection's checkpoint")?;
            let status = stats.projections().remove(AuthorWords::NAME);
            let live = status.and_then(|status| status.live);
            if let Some(live) =
                live.filter(|live| checkpoint.is_some_and(|at| live.position >= at) && live.lag().is_some())
            {
                break (views, live);
            }
        }
        if started.elapsed() >= timeout {
            bail!(
                "stats' view did not reflect the notes within {} ms: {}",
                timeout.as_millis(),
                describe(status.as_ref(), &views)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("stats reflects every note after {} ms", started.elapsed().as_millis());
    for (author, (status, answer)) in &views {
        println!("GET /authors/{author} -> {status} {answer}");
    }
    let lag = live.lag().map_or_else(|| "unknown".to_owned(), |lag| format!("{} ms", lag.as_millis()));
    println!(
        "projection {}: generation {}, version {}, position {}, behind {}, lag {lag} (note written to note projected)",
        AuthorWords::NAME,
        live.generation.number(),
        live.version,
        live.position,
        live.behind,
    );
    Ok(())
}

/// `GET /authors/{author}` for each author: status and body.
async fn read_views<'a>(
    stats_api: &Router,
    latest: &BTreeMap<&'a str, Uuid>,
) -> anyhow::Result<Vec<(&'a str, (StatusCode, String))>> {
    let mut views = Vec::new();
    for author in latest.keys() {
        views.push((*author, call(stats_api, Method::GET, &format!("/authors/{author}"), None).await?));
    }
    Ok(views)
}

/// Whether every author's latest note is in the view (notes are keyed by
/// author, so their earlier ones are too).
fn shows_latest(views: &[(&str, (StatusCode, String))], latest: &BTreeMap<&str, Uuid>) -> bool {
    let shows = |author: &str, (status, answer): &(StatusCode, String)| {
        *status == StatusCode::OK
            && serde_json::from_str::<AuthorStats>(answer)
                .is_ok_and(|view| Some(&view.latest_note) == latest.get(author))
    };
    views.len() == latest.len() && views.iter().all(|(author, view)| shows(author, view))
}

/// What stats shows, for the message of a run that did not converge.
fn describe(status: Option<&ProjectionStatus>, views: &[(&str, (StatusCode, String))]) -> String {
    let Some(status) = status else {
        return format!("stats runs no projection named {}", AuthorWords::NAME);
    };
    let projection = match (&status.live, &status.building) {
        (Some(live), _) => {
            format!("its projection {} is live at position {}, {} behind", status.name, live.position, live.behind)
        }
        (None, Some(building)) => format!(
            "its projection {} has no live read model yet (building generation {} at position {})",
            status.name,
            building.generation.number(),
            building.position
        ),
        (None, None) => format!("its projection {} has not started", status.name),
    };
    let error = status.error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default();
    let seen: Vec<_> =
        views.iter().map(|(author, (status, answer))| format!("/authors/{author}: {status} {answer}")).collect();
    let seen = if seen.is_empty() { String::new() } else { format!("; it answers {}", seen.join(", ")) };
    format!("{projection}{error}{seen}")
}

/// One request to `router`, in-process; the status and the body as text.
async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    json: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, String)> {
    let request = Request::builder().method(method).uri(uri);
    let request = match json {
        Some(json) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(json.to_string())),
        None => request.body(Body::empty()),
    }
    .context("building a request")?;
    let response = router.clone().oneshot(request).await.context("calling the router")?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.context("reading an answer")?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
