//! Test support: stores and buses for every combination, and a consumer
//! service whose handler records what it applied in its own table.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Handler, HandlerError};
use polis_core::Message;
use polis_core::bus::Bus;
use polis_core::outbox::TransactionalStore;
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, PgTx, SqliteEventStore, SqliteOptions, SqliteTx};
use uuid::Uuid;

pub type Guard = Box<dyn std::any::Any + Send>;

pub async fn sqlite(service: &str) -> (Arc<SqliteEventStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteEventStore::open(dir.path().join(format!("{service}.db")), SqliteOptions::new(service)).await.unwrap();
    (Arc::new(store), Box::new(dir))
}

pub async fn postgres(service: &str) -> (Arc<PgEventStore>, Guard) {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new(service)).await.unwrap();
    (Arc::new(store), Box::new(db))
}

pub async fn in_process_bus() -> (Arc<dyn Bus>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let bus = polis_bus::InProcessBus::open(dir.path().join("bus.db")).await.unwrap();
    (Arc::new(bus), Box::new(dir))
}

pub async fn nats_bus() -> (Arc<dyn Bus>, Guard) {
    let server = polis_testkit::nats().await;
    let options = polis_bus::nats::NatsOptions { ack_wait: Duration::from_secs(2), ..Default::default() };
    let bus = polis_bus::NatsBus::connect(server.url(), options).await.unwrap();
    (Arc::new(bus), Box::new(server))
}

/// A service name unique to this test (servers are shared per test binary).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::now_v7().simple().to_string()[22..])
}

/// The consumer side's own table of applied effects.
#[async_trait]
pub trait Applied: TransactionalStore {
    async fn create_applied(&self);
    async fn record_in(tx: &mut Self::Tx, message: &Message) -> Result<(), HandlerError>;
    /// (key, seq, message id) in the order they were applied.
    async fn applied(&self) -> Vec<(String, i64, Uuid)>;
}

#[async_trait]
impl Applied for SqliteEventStore {
    async fn create_applied(&self) {
        self.transaction::<_, _, polis_core::StoreError>(async move |tx: &mut SqliteTx| {
            let create = "CREATE TABLE applied (n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, seq INTEGER, id TEXT)";
            tx.execute(create, &[]).await.unwrap();
            Ok(())
        })
        .await
        .unwrap();
    }
    async fn record_in(tx: &mut SqliteTx, m: &Message) -> Result<(), HandlerError> {
        let seq = m.data["seq"].as_i64().unwrap_or(-1);
        tx.execute("INSERT INTO applied (key, seq, id) VALUES ($1, $2, $3)", args![&m.key, seq, m.id])
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(())
    }
    async fn applied(&self) -> Vec<(String, i64, Uuid)> {
        let rows = self.query("SELECT key, seq, id FROM applied ORDER BY n", &[]).await.unwrap();
        rows.iter().map(|r| (r.text("key").unwrap(), r.int("seq").unwrap(), r.uuid("id").unwrap())).collect()
    }
}

#[async_trait]
impl Applied for PgEventStore {
    async fn create_applied(&self) {
        sqlx::query("CREATE TABLE applied (n BIGSERIAL PRIMARY KEY, key TEXT, seq BIGINT, id UUID)")
            .execute(self.pool())
            .await
            .unwrap();
    }
    async fn record_in(tx: &mut PgTx, m: &Message) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (key, seq, id) VALUES ($1, $2, $3)")
            .bind(&m.key)
            .bind(m.data["seq"].as_i64().unwrap_or(-1))
            .bind(m.id)
            .execute(tx.conn())
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(())
    }
    async fn applied(&self) -> Vec<(String, i64, Uuid)> {
        sqlx::query_as("SELECT key, seq, id FROM applied ORDER BY n").fetch_all(self.pool()).await.unwrap()
    }
}

/// Records every message; fails messages whose data has `"poison": true`
/// (permanently) while `poison_active` is set, and fails transiently the
/// first `flaky` times it sees a message with `"flaky": true`.
pub struct Recorder {
    pub poison_active: Arc<AtomicBool>,
    pub flaky_left: Arc<std::sync::atomic::AtomicU32>,
}

impl Recorder {
    pub fn new() -> Self {
        Self { poison_active: Arc::new(AtomicBool::new(true)), flaky_left: Arc::default() }
    }
}

#[async_trait]
impl<S: Applied> Handler<S::Tx> for RecorderFor<S> {
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        if message.message_type == "unknown.type.v1" {
            return Err(HandlerError::Permanent(format!("unknown message type {}", message.message_type)));
        }
        if message.data["poison"] == true && self.0.poison_active.load(Ordering::SeqCst) {
            return Err(HandlerError::Permanent("poison".into()));
        }
        if message.data["flaky"] == true
            && self.0.flaky_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(HandlerError::Transient("flaky dependency".into()));
        }
        S::record_in(tx, message).await
    }

    /// Declines messages marked `"declined": true`.
    fn accepts(&self, message: &Message) -> bool {
        message.data["declined"] != true
    }
}

/// [`Recorder`] bound to a store type.
pub struct RecorderFor<S>(pub Arc<Recorder>, pub std::marker::PhantomData<fn() -> S>);

impl<S> RecorderFor<S> {
    pub fn new(recorder: Arc<Recorder>) -> Self {
        Self(recorder, std::marker::PhantomData)
    }
}
