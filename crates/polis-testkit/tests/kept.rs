//! Servers whose files outlive them (`start_in`): a later start in the same
//! directory finds the databases and streams again.
#![allow(clippy::unwrap_used)]

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;

use polis_testkit::{NatsServer, PostgresServer, TestkitError};
use sqlx::{Connection as _, Executor as _, PgConnection};

/// A temp dir the `postgres` user may search, as a kept cluster's parent must be under root.
fn searchable_dir() -> tempfile::TempDir {
    tempfile::Builder::new().permissions(Permissions::from_mode(0o711)).tempdir().unwrap()
}

#[tokio::test]
async fn a_kept_postgres_cluster_survives_its_server() {
    let dir = searchable_dir();
    let cluster = dir.path().join("pg");
    let mut server = PostgresServer::start_in(&cluster).await.unwrap();
    let mut conn = PgConnection::connect(&server.url()).await.unwrap();
    conn.execute("CREATE DATABASE kept").await.unwrap();
    conn.close().await.unwrap();
    server.stop().await;
    drop(server);
    assert!(cluster.join("data/PG_VERSION").is_file(), "the cluster was deleted with its server");
    assert!(cluster.join("server.log").is_file());

    let server = PostgresServer::start_in(&cluster).await.unwrap();
    let mut conn =
        PgConnection::connect(&format!("postgres://postgres@127.0.0.1:{}/kept", server.port())).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_kept_nats_store_survives_its_server() {
    let dir = searchable_dir();
    let mut server = NatsServer::start_in(dir.path().join("nats")).await.unwrap();
    assert_eq!(server.store_dir(), dir.path().join("nats/jetstream"));
    server.stop().await;
    drop(server);
    assert!(dir.path().join("nats/server.log").is_file(), "the directory was deleted with its server");
    let server = NatsServer::start_in(dir.path().join("nats")).await.unwrap();
    assert!(server.url().starts_with("nats://127.0.0.1:"));
}

/// Under root, postgres runs as `postgres`, which cannot enter a directory
/// only root may search: that is named, not left to postgres's own error.
#[tokio::test]
async fn a_cluster_postgres_cannot_reach_is_refused_by_name_under_root() {
    let private = tempfile::Builder::new().permissions(Permissions::from_mode(0o700)).tempdir().unwrap();
    let result = PostgresServer::start_in(private.path().join("pg")).await;
    // Who we are, without libc: root owns what it creates.
    let root = std::fs::metadata(private.path()).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap() == 0;
    if root {
        match result {
            Err(TestkitError::Unreachable { path }) => {
                assert_eq!(path, private.path());
                let message = TestkitError::Unreachable { path }.to_string();
                assert!(message.contains("chmod o+x"), "{message}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    } else {
        // Not root: postgres runs as us, and we may enter our own directory.
        assert!(result.is_ok(), "{result:?}");
    }
}
