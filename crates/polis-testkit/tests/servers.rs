//! The testkit against the real binaries: shared servers isolate tests,
//! dedicated servers survive stop/restart.

use std::time::Duration;

use polis_testkit::{NatsServer, PostgresServer, wait_for};
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect to the test database")
}

async fn table_exists(conn: &mut PgConnection, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(conn)
        .await
        .expect("look the table up")
}

async fn nats_info(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(line)
}

#[tokio::test]
async fn shared_postgres_gives_each_test_its_own_database() {
    let (first, second) = (polis_testkit::postgres().await, polis_testkit::postgres().await);
    assert_ne!(first.name(), second.name());
    let (mut a, mut b) = (connect(first.url()).await, connect(second.url()).await);
    for conn in [&mut a, &mut b] {
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(conn).await.expect("select 1");
        assert_eq!(one, 1);
    }

    sqlx::query("CREATE TABLE only_here (id int)").execute(&mut a).await.expect("create table");

    assert!(table_exists(&mut a, "only_here").await);
    assert!(!table_exists(&mut b, "only_here").await);
}

#[tokio::test]
async fn shared_postgres_keeps_fsync_on() {
    let db = polis_testkit::postgres().await;
    let fsync: String =
        sqlx::query_scalar("SHOW fsync").fetch_one(&mut connect(db.url()).await).await.expect("show fsync");
    assert_eq!(fsync, "on");
}

#[tokio::test]
async fn shared_nats_greets_with_jetstream_enabled() {
    let nats = polis_testkit::nats().await;
    assert!(nats.prefix().starts_with('t'));
    let port: u16 = nats.url().rsplit(':').next().and_then(|port| port.parse().ok()).expect("port in url");

    let info = nats_info(port).await.expect("read the INFO line");

    assert!(info.starts_with("INFO "), "{info}");
    assert!(info.contains(r#""jetstream":true"#), "{info}");
}

#[tokio::test]
async fn shared_redis_answers_ping() {
    let redis = polis_testkit::redis().await;
    let address = redis.url().trim_start_matches("redis://").to_owned();
    let mut stream = TcpStream::connect(address).await.expect("connect to redis");

    stream.write_all(b"PING\r\n").await.expect("send PING");
    let mut reply = [0; 7];
    stream.read_exact(&mut reply).await.expect("read the reply");

    assert_eq!(&reply, b"+PONG\r\n");
}

#[tokio::test]
async fn dedicated_nats_stops_and_restarts_on_the_same_port() {
    let mut server = NatsServer::start().await.expect("start nats-server");
    let port = server.port();

    server.stop().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "stopped server still accepts");

    server.restart().await.expect("restart nats-server");
    assert_eq!(server.port(), port);
    let info = nats_info(port).await.expect("restarted server greets");
    assert!(info.contains(r#""jetstream":true"#), "{info}");
}

#[tokio::test]
async fn dedicated_postgres_keeps_its_data_across_restart_and_crash() {
    let mut server = PostgresServer::start().await.expect("start postgres");
    let db = server.create_database().await.expect("create database");
    let mut conn = connect(db.url()).await;
    sqlx::query("CREATE TABLE survivor (id int)").execute(&mut conn).await.expect("create table");
    sqlx::query("INSERT INTO survivor VALUES (7)").execute(&mut conn).await.expect("insert");
    drop(conn);

    server.restart().await.expect("restart postgres");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM survivor")
        .fetch_one(&mut connect(db.url()).await)
        .await
        .expect("table survives a restart");
    assert_eq!(count, 1);

    // A crash loses nothing committed either: fsync is on.
    server.kill();
    server.restart().await.expect("restart postgres after SIGKILL");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM survivor")
        .fetch_one(&mut connect(db.url()).await)
        .await
        .expect("table survives a crash");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn wait_for_polls_until_the_condition_holds_or_times_out() {
    let mut calls = 0;
    wait_for(Duration::from_secs(5), || {
        calls += 1;
        let done = calls >= 3;
        async move { done }
    })
    .await
    .expect("condition holds on the third poll");
    assert_eq!(calls, 3);

    assert!(wait_for(Duration::from_millis(30), || async { false }).await.is_err());
}
