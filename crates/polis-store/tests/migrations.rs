//! Embedded migrations apply to an empty database and leave a migrated one alone.

#![allow(clippy::unwrap_used)]

mod support;

use polis_core::{EventStore, ExpectedVersion};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions, migrations};
use sqlx::{Connection, PgConnection, SqliteConnection};
use support::event;

const TABLES: [&str; 13] = [
    "polis_audit_repairs",
    "polis_dead_letters",
    "polis_events",
    "polis_inbox",
    "polis_leases",
    "polis_outbox",
    "polis_outbox_published",
    "polis_projections",
    "polis_replica_bootstraps",
    "polis_sagas",
    "polis_scheduled",
    "polis_snapshots",
    "polis_streams",
];

#[tokio::test]
async fn sqlite_migrations_apply_to_empty_and_migrated_databases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());

    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, 0, "starts empty");
    migrations::sqlite().run(&mut conn).await.unwrap();
    migrations::sqlite().run(&mut conn).await.expect("a second run is a no-op");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'polis_%' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, TABLES);
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&mut conn).await.unwrap();
    assert_eq!(applied as usize, migrations::sqlite().iter().count());
    conn.close().await.unwrap();

    // Opening stores on the migrated file keeps its data.
    let store = SqliteEventStore::open(&path, SqliteOptions::new("m")).await.unwrap();
    store.append("s", ExpectedVersion::NoStream, vec![event("t", 1)]).await.unwrap();
    drop(store);
    let reopened = SqliteEventStore::open(&path, SqliteOptions::new("m")).await.unwrap();
    assert_eq!(reopened.stream_info("s").await.unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn postgres_migrations_apply_to_empty_and_migrated_databases() {
    let db = polis_testkit::postgres().await;
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    let count_tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
    let before: i64 = sqlx::query_scalar(count_tables).fetch_one(&mut conn).await.unwrap();
    assert_eq!(before, 0, "starts empty");
    migrations::postgres().run(&mut conn).await.unwrap();
    migrations::postgres().run(&mut conn).await.expect("a second run is a no-op");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE 'polis_%' ORDER BY table_name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, TABLES);
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&mut conn).await.unwrap();
    assert_eq!(applied as usize, migrations::postgres().iter().count());

    // Two stores starting at once on the migrated database, then data survives a reconnect.
    let (a, b) = tokio::join!(
        PgEventStore::connect(db.url(), PgOptions::new("m")),
        PgEventStore::connect(db.url(), PgOptions::new("m"))
    );
    a.unwrap().append("s", ExpectedVersion::NoStream, vec![event("t", 1)]).await.unwrap();
    assert_eq!(b.unwrap().stream_info("s").await.unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn postgres_store_refuses_a_cached_position_sequence() {
    let db = polis_testkit::postgres().await;
    PgEventStore::connect(db.url(), PgOptions::new("m")).await.unwrap();
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("ALTER SEQUENCE polis_event_position CACHE 20").execute(&mut conn).await.unwrap();
    let err = PgEventStore::connect(db.url(), PgOptions::new("m")).await.unwrap_err();
    assert!(err.to_string().contains("event store backend failure"), "{err}");
    let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("CACHE 1"), "{source}");
}

/// The migrations before `version`, as a migrator: a database as an older
/// polis left it.
fn before(mut migrator: sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version < version).cloned().collect();
    migrator
}

/// The version that gave sagas their state names.
const SAGA_STATE_NAMES: i64 = 202611220006;

/// Two sagas as an older polis wrote them (no state name), one finished.
const OLD_SAGAS: &str = "INSERT INTO polis_sagas (saga_type, saga_id, state, finished, version, created_at_us, \
                         updated_at_us) VALUES ('t', 'done', '{}', TRUE, 1, 0, 0), ('t', 'busy', '{}', FALSE, 1, 0, 0)";

/// What the state-name migration made of [`OLD_SAGAS`].
const STATE_NAMES: &str = "SELECT saga_id || '=' || state_name FROM polis_sagas ORDER BY saga_id";

#[tokio::test]
async fn sqlite_sagas_written_before_state_names_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    before(migrations::sqlite(), SAGA_STATE_NAMES).run(&mut conn).await.unwrap();
    sqlx::query(OLD_SAGAS).execute(&mut conn).await.unwrap();
    migrations::sqlite().run(&mut conn).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(STATE_NAMES).fetch_all(&mut conn).await.unwrap();
    assert_eq!(names, ["busy=running", "done=finished"]);
}

#[tokio::test]
async fn postgres_sagas_written_before_state_names_get_one() {
    let db = polis_testkit::postgres().await;
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    before(migrations::postgres(), SAGA_STATE_NAMES).run(&mut conn).await.unwrap();
    sqlx::query(OLD_SAGAS).execute(&mut conn).await.unwrap();
    migrations::postgres().run(&mut conn).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(STATE_NAMES).fetch_all(&mut conn).await.unwrap();
    assert_eq!(names, ["busy=running", "done=finished"]);
}
