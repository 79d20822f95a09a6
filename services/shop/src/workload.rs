//! The demo's workload and the shop's invariants, over [`Endpoint`]s, so
//! the same code drives the embedded shop in-process and the distributed
//! one over HTTP (`polis demo`, and the fault tests that check the
//! invariants after a crash).
//!
//! 1. [`seed`] customers, products and stock through the gateway so that
//!    every business rejection reason occurs: a customer with a tiny credit
//!    limit (`CREDIT_LIMIT_EXCEEDED`), one whose provider declines
//!    (`PAYMENT_DECLINED`, the `+decline` email rule), one living in a
//!    blocked country (`UNDELIVERABLE`), and a scarce sku (`OUT_OF_STOCK`);
//! 2. [`plan`] the orders, [`place_orders`] concurrently through the gateway;
//! 3. [`wait_terminal`] until every order is decided (cancel some approved
//!    ones with [`cancel_some`]);
//! 4. [`check_until_converged`]: the invariants, waiting (bounded) for
//!    compensations still in flight to land — the system is eventually
//!    consistent, the invariants must converge.
//!
//! Every sku and email carries a run tag, so runs on one data directory
//! don't see each other's data. A run records what it seeded in its data
//! directory ([`RunRecord`]) before it places any order, so that another
//! process can check the run after this one died: that check covers every
//! order of the run's customers ([`Scope::Run`]), because a killed client
//! never learned the ids of the orders it had in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{Method, StatusCode};
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{Reservation, ReservationStatus, SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, IDEMPOTENCY_KEY, OrderStatus, OrderView};
use contracts::order_history::{CustomerOrders, HistoryOrder};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{CustomerAddress, Shipment, ShipmentStatus};
use contracts::{Address, Quantity, SagaStyle, Service};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::Endpoint;

/// Share of orders whose customer is one of the failing ones, each.
const FAILING_CUSTOMER_SHARE: f64 = 0.03;
/// Share of orders that ask for the scarce sku.
const SCARCE_SHARE: f64 = 0.05;
/// Share of approved orders cancelled afterwards.
const CANCEL_SHARE: f64 = 0.05;
const REGULAR_CUSTOMERS: usize = 20;
const SKUS: usize = 10;

/// Reports how many items of a phase are done; called often, keep it cheap.
pub type Progress<'a> = &'a (dyn Fn(usize) + Sync);

/// The shop's APIs as the workload uses them: the gateway, and the services
/// whose admin lists the invariants read.
#[derive(Debug, Clone)]
pub struct Apis {
    gateway: Endpoint,
    services: BTreeMap<Service, Endpoint>,
    /// Whether the order-history view runs, and its invariant is checked.
    view: bool,
}

impl Apis {
    /// The endpoint of every process of [`Service::ALL`], from `endpoint`.
    pub fn new(mut endpoint: impl FnMut(Service) -> anyhow::Result<Endpoint>) -> anyhow::Result<Self> {
        let services = Service::BUSINESS
            .into_iter()
            .map(|service| Ok((service, endpoint(service)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { gateway: endpoint(Service::Gateway)?, services, view: true })
    }

    /// The same APIs for a shop without its read side: the order-history
    /// view's invariant and lag are not checked.
    pub fn without_view(mut self) -> Self {
        self.view = false;
        self
    }

    /// Whether the order-history view runs.
    pub fn has_view(&self) -> bool {
        self.view
    }

    /// The API of `service` (for the gateway, its public one under `/api`).
    pub fn get(&self, service: Service) -> &Endpoint {
        // `new` made one for every business service; the rest is the gateway.
        self.services.get(&service).unwrap_or(&self.gateway)
    }

    /// The gateway's public API.
    pub fn gateway(&self) -> &Endpoint {
        &self.gateway
    }
}

/// One order to place.
#[derive(Debug, Clone)]
pub struct Planned {
    pub customer: Uuid,
    pub items: Vec<Quantity>,
    pub cancel_if_approved: bool,
}

/// What [`seed`] created before any order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seeded {
    pub regular: Vec<Uuid>,
    pub low_credit: Uuid,
    pub declined: Uuid,
    pub undeliverable: Uuid,
    pub skus: Vec<String>,
    pub scarce: String,
    pub initial_stock: HashMap<String, i64>,
}

impl Seeded {
    /// Every customer of the run, failing ones included.
    pub fn customers(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.regular.iter().copied().chain([self.low_credit, self.declined, self.undeliverable])
    }
}

/// How the shop of a recorded run was deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deployment {
    Embedded,
    Distributed,
}

/// A demo run as its data directory remembers it ([`RUN_FILE`]): how the
/// shop ran and what was seeded, written before the first order is placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub tag: String,
    pub deployment: Deployment,
    pub saga: SagaStyle,
    /// Orders the run meant to place; a crash may have cut it short.
    pub orders: usize,
    pub seeded: Seeded,
}

/// The file under the data directory that holds the last run's [`RunRecord`].
pub const RUN_FILE: &str = "demo-run.json";

impl RunRecord {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(RUN_FILE)
    }

    /// Writes the record into `data_dir`, replacing an earlier run's. The
    /// file appears whole or not at all (written aside, synced, renamed):
    /// a crash right after seeding must not leave half a record behind.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir);
        let partial = data_dir.join(format!("{RUN_FILE}.partial"));
        let json = serde_json::to_vec_pretty(self).context("encoding the run record")?;
        let mut file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
    }

    /// The run recorded in `data_dir`; fails, naming the file, if there is
    /// none or it does not parse.
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        let json = match std::fs::read(&path) {
            Ok(json) => json,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "no demo run is recorded in {} ({RUN_FILE} is missing): run `polis demo --data-dir {}` first",
                data_dir.display(),
                data_dir.display()
            ),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&json).with_context(|| format!("decoding the run record {}", path.display()))
    }
}

/// Which orders a wait or a check covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The orders this process placed: it knows their ids, so a placed order
    /// the order service does not have counts as stuck. With 20 orders or
    /// more, the workload must also have produced every rejection reason
    /// and a cancellation.
    Placed(&'a [(Uuid, Planned)]),
    /// Every order of the run's customers that the order service holds,
    /// whoever placed it: the check after a crash, when the client that
    /// placed the orders is gone with the ids of those in flight. Coverage
    /// is not checked: a run cut short never got to its cancellations.
    Run(&'a Seeded),
}

impl Scope<'_> {
    /// The scope's orders among `all`.
    fn select(&self, all: Vec<OrderView>) -> Vec<OrderView> {
        match self {
            Self::Placed(placed) => {
                let ids: HashSet<Uuid> = placed.iter().map(|(id, _)| *id).collect();
                all.into_iter().filter(|o| ids.contains(&o.id)).collect()
            }
            Self::Run(seeded) => {
                let customers: HashSet<Uuid> = seeded.customers().collect();
                all.into_iter().filter(|o| customers.contains(&o.customer_id)).collect()
            }
        }
    }

    /// The ids that must all be terminal: the placed ones, or whatever the
    /// order service holds of the run.
    fn expected(&self, mine: &[OrderView]) -> Vec<Uuid> {
        match self {
            Self::Placed(placed) => placed.iter().map(|(id, _)| *id).collect(),
            Self::Run(_) => mine.iter().map(|o| o.id).collect(),
        }
    }
}

/// One invariant and whether it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub holds: bool,
    pub detail: String,
}

impl Check {
    /// Whether this check is about the workload's coverage (every rejection
    /// reason occurred, ...) rather than the shop's safety. Coverage depends
    /// on timing when faults are injected; safety never does.
    pub fn is_coverage(&self) -> bool {
        self.name.starts_with(COVERAGE_PREFIX)
    }
}

/// Whether every safety invariant among `checks` holds (coverage aside),
/// and there are as many of them as the checks make.
pub fn safe(checks: &[Check]) -> bool {
    let safety: Vec<&Check> = checks.iter().filter(|c| !c.is_coverage()).collect();
    safety.len() >= SAFETY_CHECKS && safety.iter().all(|c| c.holds)
}

/// The names of coverage checks start so.
const COVERAGE_PREFIX: &str = "the workload covers";
/// How many safety invariants [`check`] reports at least (the read side's
/// is one more, when it runs).
const SAFETY_CHECKS: usize = 6;

/// A fresh tag for a run's skus and emails.
pub fn run_tag() -> String {
    Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// Registers the customers and adds the products and their stock, sized for
/// `orders`; waits until the payment and shipping services have replicated
/// every customer.
pub async fn seed(apis: &Apis, tag: &str, orders: usize, rng: &mut StdRng) -> anyhow::Result<Seeded> {
    let register = |name: String, email: String, country: &str, credit_limit: i64| RegisterCustomer {
        name,
        email,
        address: Address {
            line1: "1 Market Street".into(),
            city: "Polis".into(),
            postal_code: "10001".into(),
            country: country.into(),
        },
        credit_limit,
    };
    let countries = ["DE", "FR", "US", "JP", "BR"];
    let mut customers = Vec::new();
    for i in 0..REGULAR_CUSTOMERS {
        let body = register(
            format!("Customer {i}"),
            format!("c{i}-{tag}@example.com"),
            countries[i % countries.len()],
            1_000_000_000_000,
        );
        customers.push(body);
    }
    customers.push(register("Low Credit".into(), format!("low-{tag}@example.com"), "DE", 1));
    customers.push(register("Declined".into(), format!("ann-{tag}+decline@example.com"), "DE", 1_000_000_000_000));
    customers.push(register("Penguin".into(), format!("penguin-{tag}@example.com"), "AQ", 1_000_000_000_000));
    let mut ids = Vec::new();
    for body in &customers {
        let customer: Customer =
            apis.gateway().json(Method::POST, "/api/customers", Some(body), StatusCode::CREATED).await?;
        ids.push(customer.id);
    }

    let mut skus = Vec::new();
    let mut initial_stock = HashMap::new();
    for i in 0..=SKUS {
        let sku = format!("SKU-{tag}-{i}");
        let product = Product { sku: sku.clone(), name: format!("Product {i}"), price: rng.random_range(100..10_000) };
        let _: Product =
            apis.gateway().json(Method::POST, "/api/products", Some(&product), StatusCode::CREATED).await?;
        // Regular skus have plenty; the last one is scarce.
        let available = if i < SKUS { (orders as i64 * 10).max(100) } else { (orders as i64 / 100).max(2) };
        let path = format!("/api/inventory/{sku}");
        let _: StockLevel =
            apis.gateway().json(Method::PUT, &path, Some(&SetStock { available }), StatusCode::OK).await?;
        initial_stock.insert(sku.clone(), available);
        skus.push(sku);
    }
    let scarce = skus.pop().context("no skus")?;

    // Payment and shipping learn customers from customer events: wait until
    // payment's replica has them all before placing orders.
    for id in &ids {
        let path = format!("/credit/{id}");
        let found = poll_until(Duration::from_secs(30), || async {
            apis.get(Service::Payment)
                .call(Method::GET, &path, None::<&()>)
                .await
                .map(|(s, _)| s == StatusCode::OK)
                .unwrap_or(false)
        })
        .await;
        anyhow::ensure!(found, "the payment service never replicated customer {id}");
    }
    // And shipping's: a shipment for a customer it does not know yet is
    // retried a few times, then the order's step times out.
    let found =
        poll_until(Duration::from_secs(30), || async { shipping_knows(apis, &ids).await.unwrap_or(false) }).await;
    anyhow::ensure!(found, "the shipping service never replicated the customers {ids:?}");
    let undeliverable = ids.pop().context("customers")?;
    let declined = ids.pop().context("customers")?;
    let low_credit = ids.pop().context("customers")?;
    Ok(Seeded { regular: ids, low_credit, declined, undeliverable, skus, scarce, initial_stock })
}

/// Whether the shipping service's address replica holds every customer in
/// `ids`, read from just below the smallest (new customers' ids are
/// UUIDv7s: the replica's newest rows, whatever came before them).
async fn shipping_knows(apis: &Apis, ids: &[Uuid]) -> anyhow::Result<bool> {
    let Some(first) = ids.iter().min() else { return Ok(true) };
    let mut missing: HashSet<Uuid> = ids.iter().copied().collect();
    let mut page =
        Some(polis_runtime::Page { after: Some(Uuid::from_u128(first.as_u128().saturating_sub(1))), limit: 500 });
    while let Some(current) = page {
        let items: Vec<CustomerAddress> =
            apis.get(Service::Shipping).get(&format!("/addresses?{}", current.query())).await?;
        for item in &items {
            missing.remove(&item.customer_id);
        }
        page = current.next(items.len(), items.last().map(|item| item.customer_id));
    }
    Ok(missing.is_empty())
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
async fn poll_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `orders` orders over the seeded customers and skus; the first few make
/// sure each failure and a cancellation happen at least once.
pub fn plan(seeded: &Seeded, orders: usize, rng: &mut StdRng) -> Vec<Planned> {
    (0..orders)
        .map(|i| {
            let customer = match i {
                0 => seeded.low_credit,
                1 => seeded.declined,
                2 => seeded.undeliverable,
                _ => {
                    let roll: f64 = rng.random();
                    if roll < FAILING_CUSTOMER_SHARE {
                        seeded.low_credit
                    } else if roll < 2.0 * FAILING_CUSTOMER_SHARE {
                        seeded.declined
                    } else if roll < 3.0 * FAILING_CUSTOMER_SHARE {
                        seeded.undeliverable
                    } else {
                        seeded.regular[rng.random_range(0..seeded.regular.len())]
                    }
                }
            };
            let mut items: Vec<Quantity> = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                let sku = seeded.skus[rng.random_range(0..seeded.skus.len())].clone();
                if !items.iter().any(|q| q.sku == sku) {
                    items.push(Quantity { sku, quantity: rng.random_range(1..=3) });
                }
            }
            if i == 3 || rng.random::<f64>() < SCARCE_SHARE {
                items.push(Quantity { sku: seeded.scarce.clone(), quantity: rng.random_range(1..=2) });
            }
            let cancel_if_approved = i == 4 || rng.random::<f64>() < CANCEL_SHARE;
            Planned { customer, items, cancel_if_approved }
        })
        .collect()
}

/// A seeded random generator, for a repeatable workload.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// When a client of [`place_orders`] places its next order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Once its last order is decided (`GET /api/orders/{id}?wait_ms=…`):
    /// `concurrency` is the number of orders in flight, and latency measures
    /// the shop, not a queue in front of it. An order whose decision cannot
    /// be read (a service down) is left to [`wait_terminal`].
    Decided,
    /// As soon as its last order is accepted: orders pile up undecided
    /// whenever placing is faster than deciding (for fault tests).
    Accepted,
}

/// Orders being placed by a task of their own ([`place_in_background`]),
/// while a test does something to the shop.
#[derive(Debug)]
pub struct Placing {
    placed: std::sync::Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<(Uuid, Planned)>>>,
}

impl Placing {
    /// How many orders were accepted so far.
    pub fn placed(&self) -> usize {
        self.placed.load(Ordering::Relaxed)
    }

    /// Waits until `n` orders were accepted, at most `patience`.
    pub async fn until_placed(&self, n: usize, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while self.placed() < n {
            anyhow::ensure!(!self.task.is_finished(), "placing ended after {} of {n} orders", self.placed());
            anyhow::ensure!(Instant::now() < deadline, "{} of {n} orders placed within {patience:?}", self.placed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Every order placed, once they all are.
    pub async fn finish(self) -> anyhow::Result<Vec<(Uuid, Planned)>> {
        self.task.await.context("the placing task failed")?
    }
}

/// [`place_orders`] on a task of its own.
pub fn place_in_background(apis: &Apis, plan: Vec<Planned>, concurrency: usize, pacing: Pacing) -> Placing {
    let placed = std::sync::Arc::new(AtomicUsize::new(0));
    let (apis, counter) = (apis.clone(), placed.clone());
    let task = tokio::spawn(async move {
        place_orders(&apis, &plan, concurrency, pacing, &|n| counter.store(n, Ordering::Relaxed)).await
    });
    Placing { placed, task }
}

/// Places every planned order through the gateway, `concurrency` clients at
/// a time, each paced by `pacing`.
pub async fn place_orders(
    apis: &Apis,
    plan: &[Planned],
    concurrency: usize,
    pacing: Pacing,
    progress: Progress<'_>,
) -> anyhow::Result<Vec<(Uuid, Planned)>> {
    let done = AtomicUsize::new(0);
    let placed: Vec<anyhow::Result<(Uuid, Planned)>> = futures::stream::iter(plan.iter().cloned())
        .map(|planned| {
            let done = &done;
            async move {
                let body = CreateOrder { customer_id: planned.customer, items: planned.items.clone() };
                let accepted = place_order(apis.gateway(), &body).await?;
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                let path = format!("/api/orders/{}?wait_ms={}", accepted.id, DECISION_WAIT.as_millis());
                let give_up = Instant::now() + DECISION_PATIENCE;
                while pacing == Pacing::Decided && Instant::now() < give_up {
                    match apis.gateway().get::<OrderView>(&path).await {
                        Ok(order) if !order.status.is_terminal() => {}
                        _ => break,
                    }
                }
                Ok((accepted.id, planned))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    placed.into_iter().collect()
}

/// Places one order. The request carries an idempotency key, so sending it
/// again after a lost answer cannot place the order twice.
async fn place_order(gateway: &Endpoint, body: &CreateOrder) -> anyhow::Result<Accepted> {
    let key = Uuid::now_v7().to_string();
    let (status, bytes, _) =
        send_retrying(gateway, Method::POST, "/api/orders", &[(IDEMPOTENCY_KEY, &key)], Some(body)).await?;
    if status != StatusCode::ACCEPTED {
        anyhow::bail!("POST /api/orders answered {status}: {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes).context("decoding the answer of POST /api/orders")
}

/// Sends a request again while it fails transiently (no answer, or 502, 503
/// or 504: the shop was briefly unavailable or slow), at most
/// [`ATTEMPTS`] times; returns the last answer and the attempts it took.
/// Only for requests that are safe to repeat.
async fn send_retrying(
    gateway: &Endpoint,
    method: Method,
    path: &str,
    headers: &[(&'static str, &str)],
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<(StatusCode, bytes::Bytes, u32)> {
    let mut pause = RETRY_MIN;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = gateway.call_with(method.clone(), path, headers, body).await;
        let failure = match &answer {
            Ok(answer) if is_transient(answer.status) => answer.status.to_string(),
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        if failure.is_empty() || attempt == ATTEMPTS {
            let answer = answer?;
            return Ok((answer.status, answer.body, attempt));
        }
        tracing::warn!(%method, path, attempt, %failure, retry_in = ?pause, "request failed; sending it again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

fn is_transient(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// Attempts at one request before the demo gives up (about 8 s in all).
const ATTEMPTS: u32 = 8;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long one read of an order waits for its decision.
const DECISION_WAIT: Duration = Duration::from_secs(5);
/// How long a client waits for one order's decision before placing the next.
const DECISION_PATIENCE: Duration = Duration::from_secs(30);

/// Waits until every order of `scope` is terminal (APPROVED, REJECTED or
/// CANCELLED), for at most `patience`; returns what it saw last.
pub async fn wait_terminal(
    apis: &Apis,
    scope: Scope<'_>,
    patience: Duration,
    progress: Progress<'_>,
) -> anyhow::Result<HashMap<Uuid, OrderView>> {
    let deadline = Instant::now() + patience;
    loop {
        let mine = scope.select(apis.get(Service::Order).get_all("/orders", |o: &OrderView| o.id).await?);
        let expected = scope.expected(&mine);
        let mine: HashMap<Uuid, OrderView> = mine.into_iter().map(|o| (o.id, o)).collect();
        let terminal = mine.values().filter(|o| o.status.is_terminal()).count();
        progress(terminal);
        if terminal == expected.len() || Instant::now() >= deadline {
            return Ok(mine);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long the safety invariants may take to converge once every order is
/// terminal (compensations may still be landing) in [`wait_safe`].
const SAFETY_CONVERGENCE: Duration = Duration::from_secs(60);

/// The fault tests' verdict: every order in `placed` ends terminal within
/// `patience`, and then every safety invariant holds (coverage aside, see
/// [`safe`]) within a minute. The error says which orders or invariants
/// did not.
pub async fn wait_safe(
    apis: &Apis,
    seeded: &Seeded,
    placed: &[(Uuid, Planned)],
    patience: Duration,
) -> anyhow::Result<()> {
    let scope = Scope::Placed(placed);
    let orders = wait_terminal(apis, scope, patience, &|_| {}).await?;
    let stuck: Vec<&OrderView> = orders.values().filter(|o| !o.status.is_terminal()).collect();
    anyhow::ensure!(
        stuck.is_empty() && orders.len() == placed.len(),
        "{} of {} orders found, not terminal: {stuck:#?}",
        orders.len(),
        placed.len()
    );
    let deadline = Instant::now() + SAFETY_CONVERGENCE;
    loop {
        let checks = check(apis, seeded, scope).await?;
        if safe(&checks) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the safety invariants do not hold: {checks:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The default patience of [`wait_terminal`] for `orders` orders.
pub fn patience(orders: usize) -> Duration {
    Duration::from_secs(60 + orders as u64 / 50)
}

/// Cancels the approved orders the plan marked; returns how many.
pub async fn cancel_some(
    apis: &Apis,
    placed: &[(Uuid, Planned)],
    orders: &HashMap<Uuid, OrderView>,
) -> anyhow::Result<usize> {
    let mut cancel_requests = 0;
    for (id, planned) in placed {
        if planned.cancel_if_approved && orders.get(id).is_some_and(|o| o.status == OrderStatus::Approved) {
            let path = format!("/api/orders/{id}/cancel");
            let (status, bytes, attempts) =
                send_retrying(apis.gateway(), Method::POST, &path, &[], None::<&()>).await?;
            // A 409 after a lost answer: the earlier attempt requested it.
            let requested_before = || {
                let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                matches!(problem["current_status"].as_str(), Some("CANCEL_PENDING" | "CANCELLED"))
            };
            if status != StatusCode::ACCEPTED && !(status == StatusCode::CONFLICT && attempts > 1 && requested_before())
            {
                anyhow::bail!("POST {path} answered {status}: {}", String::from_utf8_lossy(&bytes));
            }
            cancel_requests += 1;
        }
    }
    Ok(cancel_requests)
}

/// Checks the invariants until they all hold or `patience` passes
/// (compensations may still be in flight when the last order turns terminal).
pub async fn check_until_converged(
    apis: &Apis,
    seeded: &Seeded,
    scope: Scope<'_>,
    patience: Duration,
) -> anyhow::Result<Vec<Check>> {
    let deadline = Instant::now() + patience;
    loop {
        let checks = check(apis, seeded, scope).await?;
        if checks.iter().all(|c| c.holds) || Instant::now() >= deadline {
            return Ok(checks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order-history view's orders of `customers`, by id.
async fn view_orders(
    apis: &Apis,
    customers: impl Iterator<Item = Uuid>,
) -> anyhow::Result<HashMap<Uuid, HistoryOrder>> {
    let view = apis.get(Service::OrderHistory);
    let mut orders = HashMap::new();
    for customer in customers {
        let mut after: Option<Uuid> = None;
        loop {
            let from = after.map(|id| format!("&after={id}")).unwrap_or_default();
            let page: CustomerOrders = view.get(&format!("/customers/{customer}/orders?limit=1000{from}")).await?;
            let full = page.orders.len() == 1000;
            after = page.orders.last().map(|o| o.id);
            orders.extend(page.orders.into_iter().map(|o| (o.id, o)));
            if !full {
                break;
            }
        }
    }
    Ok(orders)
}

/// The commit-to-visible lag of the order-history view, as its instance
/// measured it: `(p50, p99)` in milliseconds over the events it applied
/// last (`GET /projections` of the order-history service).
pub async fn view_lag(apis: &Apis) -> anyhow::Result<Option<(f64, f64)>> {
    if !apis.has_view() {
        return Ok(None);
    }
    let status: serde_json::Value = apis.get(Service::OrderHistory).get("/projections").await?;
    let lag = &status["order-history"]["lag"];
    let ms = |key: &str| lag[key].as_u64().map(|us| us as f64 / 1000.0);
    Ok(ms("p50_us").zip(ms("p99_us")))
}

/// The invariants over the orders of `scope` and the run's skus, once.
pub async fn check(apis: &Apis, seeded: &Seeded, scope: Scope<'_>) -> anyhow::Result<Vec<Check>> {
    let mine = scope.select(apis.get(Service::Order).get_all("/orders", |o: &OrderView| o.id).await?);
    let levels = apis.get(Service::Inventory).get_all("/inventory", |l: &StockLevel| l.sku.clone()).await?;
    let reservations = apis.get(Service::Inventory).get_all("/reservations", |r: &Reservation| r.order_id).await?;
    let reservations: HashMap<Uuid, Reservation> = reservations.into_iter().map(|r| (r.order_id, r)).collect();
    let payments = apis.get(Service::Payment).get_all("/payments", |p: &Payment| p.order_id).await?;
    let payments: HashMap<Uuid, Payment> = payments.into_iter().map(|p| (p.order_id, p)).collect();
    let shipments = apis.get(Service::Shipping).get_all("/shipments", |s: &Shipment| s.order_id).await?;
    let shipments: HashMap<Uuid, Shipment> = shipments.into_iter().map(|s| (s.order_id, s)).collect();

    let mut checks = Vec::new();
    let mut check = |name: &'static str, failures: Vec<String>| {
        let detail = if failures.is_empty() {
            "ok".to_owned()
        } else {
            format!(
                "{} violation(s), e.g. {}",
                failures.len(),
                failures.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        };
        checks.push(Check { name, holds: failures.is_empty(), detail });
    };

    let levels: HashMap<&str, &StockLevel> =
        levels.iter().filter(|l| seeded.initial_stock.contains_key(&l.sku)).map(|l| (l.sku.as_str(), l)).collect();
    let mut approved_qty: HashMap<&str, i64> = HashMap::new();
    for order in mine.iter().filter(|o| o.status == OrderStatus::Approved) {
        for line in &order.items {
            *approved_qty.entry(line.sku.as_str()).or_insert(0) += line.quantity;
        }
    }
    let mut conserved = Vec::new();
    let mut reserved_matches = Vec::new();
    let mut non_negative = Vec::new();
    for (sku, initial) in &seeded.initial_stock {
        let Some(level) = levels.get(sku.as_str()) else {
            conserved.push(format!("{sku} missing"));
            continue;
        };
        if level.available + level.reserved != *initial {
            conserved.push(format!("{sku}: {} + {} != {initial}", level.available, level.reserved));
        }
        let approved = approved_qty.get(sku.as_str()).copied().unwrap_or(0);
        if level.reserved != approved {
            reserved_matches.push(format!("{sku}: reserved {} but approved orders hold {approved}", level.reserved));
        }
        if level.available < 0 || level.reserved < 0 {
            non_negative.push(format!("{sku}: {} / {}", level.available, level.reserved));
        }
    }
    check("stock conserved per sku (initial = available + reserved)", conserved);
    check("reserved stock = quantities of APPROVED orders", reserved_matches);
    check("no negative stock", non_negative);

    let mut approved_ok = Vec::new();
    let mut undone_ok = Vec::new();
    for order in &mine {
        let payment = payments.get(&order.id).map(|p| p.status);
        let shipment = shipments.get(&order.id).map(|s| s.status);
        let reservation = reservations.get(&order.id).map(|r| r.status);
        let approved_but_incomplete = order.status == OrderStatus::Approved
            && (payment != Some(PaymentStatus::Captured) || shipment != Some(ShipmentStatus::Scheduled));
        let undone_but_kept = matches!(order.status, OrderStatus::Rejected | OrderStatus::Cancelled)
            && (payment == Some(PaymentStatus::Captured)
                || shipment == Some(ShipmentStatus::Scheduled)
                || reservation == Some(ReservationStatus::Reserved));
        if approved_but_incomplete {
            approved_ok.push(format!("{}: payment {payment:?}, shipment {shipment:?}", order.id));
        }
        if undone_but_kept {
            undone_ok.push(format!(
                "{} ({}): payment {payment:?}, shipment {shipment:?}, reservation {reservation:?}",
                order.id,
                order.status.as_str()
            ));
        }
    }
    check("every APPROVED order has a captured payment and a shipment", approved_ok);
    check("no REJECTED or CANCELLED order keeps a captured payment, a reservation or a shipment", undone_ok);

    let stuck: Vec<String> = scope
        .expected(&mine)
        .iter()
        .filter(|id| !mine.iter().any(|o| o.id == **id && o.status.is_terminal()))
        .map(|id| {
            let status = mine.iter().find(|o| o.id == *id).map_or("missing", |o| o.status.as_str());
            format!("{id} is {status}")
        })
        .collect();
    check("no order stuck (every order terminal)", stuck);

    // The read side: the order-history view, built only from events, shows
    // every order as the services that own its parts have it.
    if apis.has_view() {
        let view = view_orders(apis, seeded.customers()).await?;
        let mut differs = Vec::new();
        for order in &mine {
            let Some(shown) = view.get(&order.id) else {
                differs.push(format!("{} is not in the view", order.id));
                continue;
            };
            let written: Vec<_> = order.items.iter().map(|l| (l.sku.clone(), l.quantity, l.unit_price)).collect();
            let viewed: Vec<_> = shown.items.iter().map(|i| (i.sku.clone(), i.quantity, i.unit_price)).collect();
            let payment = payments.get(&order.id).map(|p| p.status);
            let shipment = shipments.get(&order.id).map(|s| s.status);
            if shown.status != order.status
                || shown.reason != order.reason
                || shown.total != order.total
                || viewed != written
                || shown.payment_status != payment
                || shown.shipment_status != shipment
            {
                differs.push(format!(
                    "{}: view {:?}/{:?}/{:?}/{:?}, written {:?}/{:?}/{payment:?}/{shipment:?}",
                    order.id,
                    shown.status,
                    shown.reason,
                    shown.payment_status,
                    shown.shipment_status,
                    order.status,
                    order.reason
                ));
            }
        }
        check("the order-history view equals the write side for every order", differs);
    }

    // The auditor's rules, read through the same APIs, must see what the
    // checks above see: nothing wrong (none of its findings are false).
    let audit = apis.get(Service::Audit).call(Method::POST, "/audit/runs", None::<&()>).await?;
    let report: polis_audit::Report = match audit {
        (StatusCode::OK, body) => serde_json::from_slice(&body)?,
        (status, body) => anyhow::bail!("the audit answered {status}: {}", String::from_utf8_lossy(&body)),
    };
    let mut disagreements: Vec<String> = report
        .rules
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{} could not judge: {e}", r.rule)))
        .collect();
    disagreements.extend(report.suspected.iter().map(|(kind, n)| format!("{n} finding(s) of {kind}")));
    disagreements.extend(report.drifts.iter().map(|d| format!("{} {}: {}", d.kind, d.subject, d.detail)));
    check("the auditor finds no disagreement between the services", disagreements);

    if let Scope::Placed(placed) = scope
        && placed.len() >= 20
    {
        let mut missing = Vec::new();
        for reason in ["OUT_OF_STOCK", "CREDIT_LIMIT_EXCEEDED", "PAYMENT_DECLINED", "UNDELIVERABLE"] {
            if !mine.iter().any(|o| o.reason.is_some_and(|r| r.as_str() == reason)) {
                missing.push(format!("no order rejected with {reason}"));
            }
        }
        if !mine.iter().any(|o| o.status == OrderStatus::Cancelled) {
            missing.push("no order cancelled".into());
        }
        check("the workload covers every rejection reason and a cancellation", missing);
    }
    Ok(checks)
}
