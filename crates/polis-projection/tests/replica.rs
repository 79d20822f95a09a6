//! Replicas that bootstrap, on SQLite with the in-process bus and on
//! PostgreSQL with NATS JetStream: a replica wiped while its source keeps
//! changing, bootstrapped again from a snapshot and then fed by events,
//! converges on the source exactly; a bootstrap cut short resumes.
//!
//! The source is a store of items (key, value, version) whose writers change
//! random items and send `item.changed` through the outbox, relayed to the
//! bus. The replica ingests those events ([`Ingest`]) and projects them,
//! with the bootstrap's `item.snapshot` records, into `replica_items`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use polis_bus::{Consumer, ConsumerHandle, ConsumerOptions, InProcessBus, NatsBus, Relay, RelayOptions};
use polis_core::error::BoxError;
use polis_core::{Bus, Generation, Message, Projection, RecordedEvent, StoreError, Topic, Transaction as _};
use polis_projection::replica::{self, BootstrapOptions, SnapshotPage, SnapshotRecord, SnapshotSource};
use polis_projection::{Bootstrap, BootstrapHandle, Ingest, Projector, ProjectorHandle, ProjectorOptions};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use polis_testkit::wait_for;
use serde::{Deserialize, Serialize};

const ITEMS: i64 = 200;
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Item {
    key: String,
    value: i64,
    version: i64,
}

// ---- the source ---------------------------------------------------------------

async fn create_source<S: SqlStore>(store: &S)
where
    S::Tx: Sql,
{
    store
        .transaction(async move |tx| {
            tx.execute(
                "CREATE TABLE IF NOT EXISTS source_items (key TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)",
                &[],
            )
            .await?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
}

/// Sets item `n` to `value` (creating it at version 1) and sends the new
/// state as `item.changed`, in one transaction.
async fn change<S: SqlStore>(store: &S, source: &str, n: i64, value: i64) -> Result<(), StoreError>
where
    S::Tx: Sql,
{
    let (source, key) = (source.to_owned(), format!("item-{n:05}"));
    store
        .transaction(async move |tx| {
            tx.execute(
                "INSERT INTO source_items (key, value, version) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = source_items.version + 1",
                args![&key, value],
            )
            .await?;
            let row = tx.fetch_one("SELECT value, version FROM source_items WHERE key = $1", args![&key]).await?;
            let item = Item { key: key.clone(), value: row.int("value")?, version: row.int("version")? };
            let event = Message::event(&source, "item.changed", &key, serde_json::to_value(&item).unwrap());
            tx.send(&event).await
        })
        .await
}

async fn source_items<S: SqlStore>(store: &S) -> Vec<Item>
where
    S::Tx: Sql,
{
    let rows = store.query("SELECT key, value, version FROM source_items ORDER BY key", &[]).await.unwrap();
    rows.iter()
        .map(|r| Item {
            key: r.text("key").unwrap(),
            value: r.int("value").unwrap(),
            version: r.int("version").unwrap(),
        })
        .collect()
}

/// The source's snapshot, read from its store a page at a time, each page
/// in its own read (as a service's paged HTTP endpoint would be).
#[derive(Debug)]
struct Snapshots<S> {
    source: String,
    store: Arc<S>,
    /// Fails every page while set: the source is down.
    down: Arc<AtomicBool>,
    pages: Arc<AtomicU64>,
}

#[async_trait]
impl<S: SqlStore + std::fmt::Debug> SnapshotSource for Snapshots<S>
where
    S::Tx: Sql,
{
    fn source(&self) -> &str {
        &self.source
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<SnapshotPage, BoxError> {
        if self.down.load(Ordering::SeqCst) {
            return Err("the source is down".into());
        }
        self.pages.fetch_add(1, Ordering::SeqCst);
        let rows = self
            .store
            .query(
                "SELECT key, value, version FROM source_items WHERE key > $1 ORDER BY key LIMIT $2",
                args![after.unwrap_or(""), limit as i64],
            )
            .await?;
        let mut records = Vec::new();
        for r in &rows {
            let item = Item { key: r.text("key")?, value: r.int("value")?, version: r.int("version")? };
            records.push(SnapshotRecord {
                key: item.key.clone(),
                event_type: "item.snapshot".into(),
                data: serde_json::to_value(&item)?,
                time: chrono::Utc::now(),
            });
        }
        let next = (records.len() == limit).then(|| records.last().map(|r| r.key.clone())).flatten();
        Ok(SnapshotPage { records, next })
    }
}

// ---- the replica --------------------------------------------------------------

/// Keeps each item's latest version: an older record or event changes nothing.
struct ItemReplica;

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for ItemReplica {
    fn name(&self) -> &str {
        "item_replica"
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        &["replica_items"]
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (key TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)",
            generation.table("replica_items")
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == "item.changed" || event.event_type == "item.snapshot"
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        let item: Item = serde_json::from_value(event.data.clone()).map_err(StoreError::backend)?;
        let table = generation.table("replica_items");
        tx.execute(
            &format!(
                "INSERT INTO {table} (key, value, version) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE \
                 SET value = excluded.value, version = excluded.version WHERE {table}.version < excluded.version"
            ),
            args![&item.key, item.value, item.version],
        )
        .await?;
        Ok(())
    }
}

async fn replica_items<S: SqlStore>(store: &S) -> Result<Vec<Item>, StoreError>
where
    S::Tx: Sql,
{
    let rows = store.query("SELECT key, value, version FROM replica_items ORDER BY key", &[]).await?;
    rows.iter().map(|r| Ok(Item { key: r.text("key")?, value: r.int("value")?, version: r.int("version")? })).collect()
}

struct Running {
    consumer: ConsumerHandle,
    projector: ProjectorHandle,
    bootstrap: BootstrapHandle,
}

impl Running {
    async fn stop(self) {
        self.bootstrap.shutdown().await;
        self.consumer.shutdown().await;
        self.projector.shutdown().await;
    }
}

/// Starts a replica over `store` as a service would: its consumer first
/// (subscribed before the snapshot is read), then the bootstrap and the
/// projection.
async fn start_replica<S>(store: Arc<S>, bus: Arc<dyn Bus>, name: &str, source: Arc<dyn SnapshotSource>) -> Running
where
    S: SqlStore,
    S::Tx: Sql,
{
    let topic = Topic::events_of(source.source());
    let consumer =
        Consumer::new(name, store.clone(), ConsumerOptions::default()).route(topic, Ingest::only(["item.changed"]));
    let consumer = Arc::new(consumer).spawn(bus).await.unwrap();
    let mut bootstrap_options = BootstrapOptions::default();
    bootstrap_options.page_size = 25;
    bootstrap_options.retry_max = Duration::from_millis(200);
    let bootstrap = Bootstrap::new(store.clone(), source, bootstrap_options).spawn();
    let mut options = ProjectorOptions::default();
    options.poll_interval = Duration::from_millis(100);
    let projector = Projector::new(store, options).with(ItemReplica).spawn();
    Running { consumer, projector, bootstrap }
}

/// Writers change random items of the first half as fast as they can until
/// `stop` is set; the second half keeps its first state, which a replica
/// that listens later can only get from the bootstrap.
fn writers<S>(
    store: Arc<S>,
    source: &str,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: SqlStore,
    S::Tx: Sql,
{
    (0..4)
        .map(|w| {
            let (store, source, stop, changes) = (store.clone(), source.to_owned(), stop.clone(), changes.clone());
            tokio::spawn(async move {
                let mut n: i64 = w;
                while !stop.load(Ordering::SeqCst) {
                    n = (n * 7919 + 13) % (ITEMS / 2);
                    if change(&*store, &source, n, n * 1000 + w).await.is_ok() {
                        changes.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// The scenario: the source's items exist (history the replica never saw:
/// its consumer is new, and the events are long acknowledged by the time it
/// is wiped), writers keep changing them; the replica starts, bootstraps,
/// follows; it is wiped (a fresh database) while the writers go on, started
/// again, bootstraps again; the writers stop and the replica must equal the
/// source, item for item and version for version.
async fn wiped_under_load_converges<S, R, F, Fut>(
    source_store: Arc<S>,
    bus: Arc<dyn Bus>,
    source: &str,
    mut fresh_replica: F,
) where
    S: SqlStore + std::fmt::Debug,
    S::Tx: Sql,
    R: SqlStore,
    R::Tx: Sql,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Arc<R>>,
{
    create_source(&*source_store).await;
    for n in 0..ITEMS {
        change(&*source_store, source, n, n).await.unwrap();
    }
    let relay = Relay::new(source_store.clone(), bus.clone(), RelayOptions::default()).spawn();
    let snapshots = |down: bool| {
        Arc::new(Snapshots {
            source: source.to_owned(),
            store: source_store.clone(),
            down: Arc::new(AtomicBool::new(down)),
            pages: Arc::default(),
        })
    };
    let (stop, changes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writing = writers(source_store.clone(), source, stop.clone(), changes.clone());

    let replica = fresh_replica().await;
    let running = start_replica(replica.clone(), bus.clone(), "replica", snapshots(false)).await;
    tokio::time::timeout(WAIT, running.bootstrap.done()).await.expect("the first bootstrap finishes");
    let first = running.bootstrap.status();
    assert!(first.records >= ITEMS as u64, "{first:?}");
    wait_for(WAIT, || async { replica_items(&*replica).await.is_ok_and(|items| items.len() == ITEMS as usize) })
        .await
        .expect("the replica holds every item");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    // Wiped: the same consumer (its bus position kept), a new, empty
    // database. The source is down at first, so the bootstrap must retry
    // while events already flow in.
    let wiped = fresh_replica().await;
    assert!(replica_items(&*wiped).await.is_err(), "a wiped replica has no view yet");
    let down = snapshots(true);
    let running = start_replica(wiped.clone(), bus.clone(), "replica", down.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.bootstrap.status().done);
    assert!(running.bootstrap.status().error.is_some(), "{:?}", running.bootstrap.status());
    down.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(WAIT, running.bootstrap.done()).await.expect("the bootstrap finishes once the source is back");
    assert!(down.pages.load(Ordering::SeqCst) >= (ITEMS / 25) as u64);
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::SeqCst);
    for w in writing {
        w.await.unwrap();
    }
    assert!(changes.load(Ordering::SeqCst) > 50, "the writers changed items throughout");
    let expected = source_items(&*source_store).await;
    let converged =
        wait_for(WAIT, || async { replica_items(&*wiped).await.is_ok_and(|items| items == expected) }).await;
    if converged.is_err() {
        let got = replica_items(&*wiped).await.unwrap_or_default();
        let differ: Vec<_> = expected.iter().filter(|e| !got.contains(e)).take(5).collect();
        panic!(
            "the wiped replica did not converge: {} of {} items, e.g. missing or stale {differ:?}",
            got.len(),
            expected.len()
        );
    }
    running.stop().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_wiped_replica_bootstraps_under_load_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let source =
        Arc::new(SqliteEventStore::open(dir.path().join("items.db"), SqliteOptions::new("items")).await.unwrap());
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::open(dir.path().join("bus.db")).await.unwrap());
    let generation = AtomicU64::new(0);
    let path = dir.path().to_owned();
    wiped_under_load_converges(source, bus, "items", || {
        let path = path.join(format!("replica-{}.db", generation.fetch_add(1, Ordering::SeqCst)));
        async move { Arc::new(SqliteEventStore::open(path, SqliteOptions::new("replica")).await.unwrap()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_wiped_replica_bootstraps_under_load_and_converges() {
    let nats = polis_testkit::nats().await;
    let source_name = format!("{}-items", nats.prefix());
    let db = polis_testkit::postgres().await;
    let source = Arc::new(PgEventStore::connect(db.url(), PgOptions::new(&source_name)).await.unwrap());
    let options = polis_bus::nats::NatsOptions { ack_wait: Duration::from_secs(2), ..Default::default() };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(nats.url(), options).await.unwrap());
    // Each replica's database lives until the end of the test.
    let databases = Arc::new(std::sync::Mutex::new(Vec::new()));
    wiped_under_load_converges(source, bus, &source_name, || {
        let databases = databases.clone();
        async move {
            let db = polis_testkit::postgres().await;
            let store = Arc::new(PgEventStore::connect(db.url(), PgOptions::new("replica")).await.unwrap());
            databases.lock().unwrap().push(db);
            store
        }
    })
    .await;
}

/// A bootstrap that stops half-way resumes after its last committed page
/// and is then done for good; `reset` makes the next one start over.
async fn a_bootstrap_resumes_and_is_done_once<S>(store: Arc<S>, source_store: Arc<S>)
where
    S: SqlStore + std::fmt::Debug,
    S::Tx: Sql,
{
    create_source(&*source_store).await;
    for n in 0..ITEMS {
        change(&*source_store, "items", n, n).await.unwrap();
    }
    let pages = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let source: Arc<dyn SnapshotSource> = Arc::new(Snapshots {
        source: "items".into(),
        store: source_store.clone(),
        down: down.clone(),
        pages: pages.clone(),
    });
    let mut options = BootstrapOptions::default();
    options.page_size = 50;
    let bootstrap = Bootstrap::new(store.clone(), source.clone(), options.clone());
    // The source goes down after two pages.
    let result = bootstrap
        .run(|status| {
            if status.records >= 100 {
                down.store(true, Ordering::SeqCst);
            }
        })
        .await;
    assert!(result.is_err(), "{result:?}");
    let cut = bootstrap.status().await.unwrap();
    assert_eq!((cut.done, cut.records), (false, 100), "{cut:?}");
    down.store(false, Ordering::SeqCst);
    let done = bootstrap.run(|_| {}).await.unwrap();
    assert_eq!((done.done, done.records), (true, ITEMS as u64), "{done:?}");
    let asked = pages.load(Ordering::SeqCst);
    assert_eq!(asked, 5, "two pages, then the remaining two and a last, empty one");
    // Done: another run reads nothing.
    bootstrap.run(|_| {}).await.unwrap();
    assert_eq!(pages.load(Ordering::SeqCst), asked);
    // Each record is in its entity's stream, once.
    let snapshots =
        store.query("SELECT COUNT(*) AS n FROM polis_events WHERE event_type = 'item.snapshot'", &[]).await.unwrap();
    assert_eq!(snapshots[0].int("n").unwrap(), ITEMS);
    replica::reset(&*store, "items").await.unwrap();
    assert!(!bootstrap.status().await.unwrap().done);
    let again = bootstrap.run(|_| {}).await.unwrap();
    assert_eq!(again.records, ITEMS as u64);
}

#[tokio::test]
async fn sqlite_a_bootstrap_resumes_and_is_done_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("r.db"), SqliteOptions::new("replica")).await.unwrap());
    let source = Arc::new(SqliteEventStore::open(dir.path().join("s.db"), SqliteOptions::new("items")).await.unwrap());
    a_bootstrap_resumes_and_is_done_once(store, source).await;
}

#[tokio::test]
async fn postgres_a_bootstrap_resumes_and_is_done_once() {
    let (r, s) = (polis_testkit::postgres().await, polis_testkit::postgres().await);
    let store = Arc::new(PgEventStore::connect(r.url(), PgOptions::new("replica")).await.unwrap());
    let source = Arc::new(PgEventStore::connect(s.url(), PgOptions::new("items")).await.unwrap());
    a_bootstrap_resumes_and_is_done_once(store, source).await;
}
