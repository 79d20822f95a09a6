//! The shop's customer replicas — payment's credit data and shipping's
//! addresses — wiped under load: customers keep changing through the
//! customer service's API while payment and shipping are stopped, given
//! new, empty databases and started again. They bootstrap from the customer
//! service's snapshot (over real HTTP in the distributed deployment), follow
//! its events, and must end equal to it, customer for customer and version
//! for version. Embedded (SQLite, the in-process bus) and distributed
//! (PostgreSQL, NATS JetStream).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use contracts::Service;
use polis_core::Bus;
use polis_runtime::Hosted;
use polis_store::sql::{Sql, SqlStore};
use polis_testkit::wait_for;
use serde_json::json;
use shop::ShopConfig;
use testsupport::call;

const CUSTOMERS: usize = 120;
const WAIT: Duration = Duration::from_secs(60);

/// (id, email, credit limit, city, version), by id.
type Row = (String, String, i64, String, i64);

async fn rows<S: SqlStore>(store: &S, sql: &str) -> Result<Vec<Row>, polis_core::StoreError>
where
    S::Tx: Sql,
{
    let rows = store.query(sql, &[]).await?;
    rows.iter()
        .map(|r| Ok((r.text("id")?, r.text("email")?, r.int("credit_limit")?, r.text("city")?, r.int("version")?)))
        .collect()
}

/// The customer service's truth, and each replica's copy of what it keeps.
async fn source<S: SqlStore>(store: &S) -> Vec<Row>
where
    S::Tx: Sql,
{
    rows(store, "SELECT id, email, credit_limit, city, version FROM customers ORDER BY id").await.unwrap()
}

async fn payment_replica<S: SqlStore>(store: &S) -> Result<Vec<Row>, polis_core::StoreError>
where
    S::Tx: Sql,
{
    rows(store, "SELECT id, email, credit_limit, '' AS city, version FROM payment_customers ORDER BY id").await
}

async fn shipping_replica<S: SqlStore>(store: &S) -> Result<Vec<Row>, polis_core::StoreError>
where
    S::Tx: Sql,
{
    rows(store, "SELECT customer_id AS id, '' AS email, CAST(0 AS BIGINT) AS credit_limit, city, version FROM customer_addresses ORDER BY customer_id")
        .await
}

fn payment_view(rows: &[Row]) -> Vec<Row> {
    rows.iter().map(|(id, email, limit, _, v)| (id.clone(), email.clone(), *limit, String::new(), *v)).collect()
}

fn shipping_view(rows: &[Row]) -> Vec<Row> {
    rows.iter().map(|(id, _, _, city, v)| (id.clone(), String::new(), 0, city.clone(), *v)).collect()
}

/// Registers the customers through the customer service's API; their ids.
async fn register(customers: &Router) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..CUSTOMERS {
        let body = json!({
            "name": format!("Customer {i}"),
            "email": format!("c{i}@example.com"),
            "address": { "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US" },
            "credit_limit": 10_000,
        });
        let answer = call(customers, Method::POST, "/customers", Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Changes the first half of the customers (limit, city, email) through
/// the API until `stop`; the second half keeps its registration, which a
/// wiped replica can only get back from the bootstrap.
fn writers(
    customers: Router,
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: usize = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = &ids[(n * 7919) % (CUSTOMERS / 2)];
            let body = json!({
                "credit_limit": 10_000 + n as i64,
                "email": format!("c{n}-{id}@example.com"),
                "address": { "line1": "2 Side St", "city": format!("City {n}"), "postal_code": "54321", "country": "NL" },
            });
            let answer = call(&customers, Method::PUT, &format!("/customers/{id}"), Some(body)).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            changes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

async fn wait_until_bootstrapped(hosted: &Hosted) {
    let done =
        wait_for(WAIT, || async { hosted.replicas().values().all(|r| r.done) && !hosted.replicas().is_empty() }).await;
    assert!(done.is_ok(), "the {} replica did not bootstrap: {:?}", hosted.name(), hosted.replicas());
}

/// The scenario, on either deployment: `fresh(service)` gives a new, empty
/// store for a service; `upstream` reaches the customer service.
async fn wiped_replicas_converge<S, F, Fut>(
    bus: Arc<dyn Bus>,
    mut fresh: F,
    upstream: impl Fn(&Router) -> gateway::Upstream,
) where
    S: SqlStore,
    S::Tx: Sql,
    F: FnMut(Service) -> Fut,
    Fut: std::future::Future<Output = Arc<S>>,
{
    let config = ShopConfig::default();
    let customer_store = fresh(Service::Customer).await;
    let customer =
        shop::start_service(Service::Customer, customer_store.clone(), bus.clone(), &config, None).await.unwrap();
    let customers = testsupport::hosted(customer.router());
    let ids = register(&customers).await;
    let (stop, changes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writing = writers(customers.clone(), ids, stop.clone(), changes.clone());

    // Only the customer service answers: the replicas need nothing else.
    let upstreams = gateway::Upstreams::new(|_| upstream(&customers));
    let start = async |service: Service, store: Arc<S>| {
        shop::start_service(service, store, bus.clone(), &config, Some(&upstreams)).await.unwrap()
    };
    // First lives: new services, bootstrapped while the customers change.
    let (payment_store, shipping_store) = (fresh(Service::Payment).await, fresh(Service::Shipping).await);
    let payment = start(Service::Payment, payment_store.clone()).await;
    let shipping = start(Service::Shipping, shipping_store.clone()).await;
    wait_until_bootstrapped(&payment).await;
    wait_until_bootstrapped(&shipping).await;
    let full = wait_for(WAIT, || async {
        payment_replica(&*payment_store).await.is_ok_and(|r| r.len() == CUSTOMERS)
            && shipping_replica(&*shipping_store).await.is_ok_and(|r| r.len() == CUSTOMERS)
    })
    .await;
    if full.is_err() {
        let p = payment_replica(&*payment_store).await.map(|r| r.len());
        let s = shipping_replica(&*shipping_store).await.map(|r| r.len());
        panic!(
            "the new replicas did not fill: payment {p:?}, shipping {s:?}; {:?} {:?} {:?}",
            payment.projections(),
            payment.replicas(),
            shipping.projections()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Wiped: stopped, and started on new, empty databases, while the
    // customers keep changing.
    payment.shutdown().await;
    shipping.shutdown().await;
    let before = changes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (payment_store, shipping_store) = (fresh(Service::Payment).await, fresh(Service::Shipping).await);
    let payment = start(Service::Payment, payment_store.clone()).await;
    let shipping = start(Service::Shipping, shipping_store.clone()).await;
    wait_until_bootstrapped(&payment).await;
    wait_until_bootstrapped(&shipping).await;
    for hosted in [&payment, &shipping] {
        let replicas = hosted.replicas();
        let status = &replicas["customer"];
        assert!(status.records >= CUSTOMERS as u64, "{status:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    writing.await.unwrap();
    assert!(changes.load(Ordering::SeqCst) > before + 10, "the customers changed while the replicas were wiped");

    let truth = source(&*customer_store).await;
    let converged = wait_for(WAIT, || async {
        payment_replica(&*payment_store).await.is_ok_and(|r| r == payment_view(&truth))
            && shipping_replica(&*shipping_store).await.is_ok_and(|r| r == shipping_view(&truth))
    })
    .await;
    if converged.is_err() {
        let p = payment_replica(&*payment_store).await.unwrap_or_default();
        let s = shipping_replica(&*shipping_store).await.unwrap_or_default();
        let wrong_p: Vec<_> = payment_view(&truth).into_iter().filter(|r| !p.contains(r)).take(3).collect();
        let wrong_s: Vec<_> = shipping_view(&truth).into_iter().filter(|r| !s.contains(r)).take(3).collect();
        panic!("the wiped replicas did not converge: payment lacks {wrong_p:?}, shipping lacks {wrong_s:?}");
    }
    // How stale each replica is shows in its projection's status.
    for hosted in [&payment, &shipping] {
        let projections = hosted.projections();
        assert!(projections.values().all(|p| p.live.is_some() && p.error.is_none()), "{projections:?}");
    }
    payment.shutdown().await;
    shipping.shutdown().await;
    customer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_wiped_replicas_bootstrap_under_load_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(polis_bus::InProcessBus::open(dir.path().join("bus.db")).await.unwrap());
    let lives = AtomicU64::new(0);
    let path = dir.path().to_owned();
    let fresh = |service: Service| {
        let path = path.join(format!("{service}-{}.db", lives.fetch_add(1, Ordering::SeqCst)));
        async move {
            let options = polis_store::SqliteOptions::new(service.as_str());
            Arc::new(polis_store::SqliteEventStore::open(path, options).await.unwrap())
        }
    };
    wiped_replicas_converge(bus, fresh, |customers| gateway::Upstream::local(customers.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_wiped_replicas_bootstrap_under_load_and_converge() {
    // A server of its own: the shop's streams are named after its services.
    let nats = polis_testkit::NatsServer::start().await.unwrap();
    let bus: Arc<dyn Bus> = Arc::new(polis_bus::NatsBus::connect(&nats.url(), Default::default()).await.unwrap());
    let databases = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fresh = |service: Service| {
        let databases = databases.clone();
        async move {
            let db = polis_testkit::postgres().await;
            let store = polis_store::PgEventStore::connect(db.url(), polis_store::PgOptions::new(service.as_str()));
            let store = Arc::new(store.await.unwrap());
            databases.lock().unwrap().push(db);
            store
        }
    };
    // The customer service over real HTTP, as a remote upstream reaches it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let listener = Arc::new(std::sync::Mutex::new(Some(listener)));
    let upstream = |customers: &Router| {
        if let Some(listener) = listener.lock().unwrap().take() {
            let app = customers.clone();
            *served.lock().unwrap() = Some(tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }));
        }
        gateway::Upstream::remote(&url).unwrap()
    };
    wiped_replicas_converge(bus, fresh, upstream).await;
}
