//! Test support: stores and buses for every combination, a consumer
//! service whose handler records what it applied in its own table, and
//! buses that misbehave on purpose (duplicating deliveries, stalling a
//! publish).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Handler, HandlerError};
use polis_core::Message;
use polis_core::bus::{Acker, Bus, BusError, Delivery, Subscription, Topic};
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

/// An acknowledgement that goes nowhere: for deliveries a test hands to
/// a consumer itself.
#[derive(Debug)]
pub struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _: Duration) -> Result<(), BusError> {
        Ok(())
    }
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
    /// Runs a statement that fails, and ignores its error, as a careless
    /// handler might.
    async fn fail_quietly_in(tx: &mut Self::Tx);
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
    async fn fail_quietly_in(tx: &mut SqliteTx) {
        assert!(tx.execute("INSERT INTO no_such_table VALUES (1)", &[]).await.is_err());
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
    async fn fail_quietly_in(tx: &mut PgTx) {
        assert!(sqlx::query("INSERT INTO no_such_table VALUES (1)").execute(tx.conn()).await.is_err());
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

/// A bus that hands every delivery to its consumer twice: as the bus
/// delivered it, then once more as a redelivery (attempt + 1), which is what
/// a lost acknowledgement looks like. `copies_acked` counts the copies the
/// consumer has settled, so a test can wait until every copy was handled.
pub struct Duplicating {
    inner: Arc<dyn Bus>,
    pub copies_acked: Arc<AtomicUsize>,
}

impl Duplicating {
    pub fn new(inner: Arc<dyn Bus>) -> Arc<Self> {
        Arc::new(Self { inner, copies_acked: Arc::default() })
    }
}

#[async_trait]
impl Bus for Duplicating {
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        self.inner.publish(messages).await
    }

    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        let inner = self.inner.subscribe(consumer, topic).await?;
        Ok(Box::new(DuplicatingSubscription { inner, copy: None, acked: self.copies_acked.clone() }))
    }
}

struct DuplicatingSubscription {
    inner: Box<dyn Subscription>,
    copy: Option<Delivery>,
    acked: Arc<AtomicUsize>,
}

#[async_trait]
impl Subscription for DuplicatingSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        if let Some(copy) = self.copy.take() {
            return Ok(copy);
        }
        let delivery = self.inner.next().await?;
        if let Ok(message) = &delivery.message {
            let acker = Box::new(CountedAck(self.acked.clone()));
            self.copy = Some(Delivery::new(Ok(message.clone()), delivery.attempt + 1, acker));
        }
        Ok(delivery)
    }
}

#[derive(Debug)]
struct CountedAck(Arc<AtomicUsize>);

#[async_trait]
impl Acker for CountedAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn nack(self: Box<Self>, _: Duration) -> Result<(), BusError> {
        Ok(())
    }
}

/// A bus whose publishing stops dead after `passes` messages: the publish
/// that crosses the limit stores its first messages and then never returns,
/// as if the process publishing had been killed in the middle of a batch.
pub struct Stalling {
    inner: Arc<dyn Bus>,
    passes: std::sync::Mutex<usize>,
    stalled: AtomicBool,
}

impl Stalling {
    pub fn new(inner: Arc<dyn Bus>, passes: usize) -> Arc<Self> {
        Arc::new(Self { inner, passes: std::sync::Mutex::new(passes), stalled: AtomicBool::new(false) })
    }

    /// Whether a publish has reached the limit (and hangs there).
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Bus for Stalling {
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        let through = {
            let mut passes = self.passes.lock().unwrap();
            let through = messages.len().min(*passes);
            *passes -= through;
            through
        };
        self.inner.publish(&messages[..through]).await?;
        if through < messages.len() {
            self.stalled.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(consumer, topic).await
    }
}

/// A bus that counts the messages published through it.
pub struct Counting {
    inner: Arc<dyn Bus>,
    pub published: AtomicUsize,
}

impl Counting {
    pub fn new(inner: Arc<dyn Bus>) -> Arc<Self> {
        Arc::new(Self { inner, published: AtomicUsize::new(0) })
    }

    pub fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Bus for Counting {
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        self.inner.publish(messages).await?;
        self.published.fetch_add(messages.len(), Ordering::SeqCst);
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(consumer, topic).await
    }
}
