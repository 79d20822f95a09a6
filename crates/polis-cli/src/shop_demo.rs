//! `polis demo`: the reference shop under load, then its invariants.
//!
//! 1. start the shop (embedded: one SQLite file per service and the
//!    in-process bus under the data directory);
//! 2. seed customers, products and stock through the gateway so that every
//!    business rejection reason occurs: a customer with a tiny credit limit
//!    (`CREDIT_LIMIT_EXCEEDED`), one whose provider declines
//!    (`PAYMENT_DECLINED`, the `+decline` email rule), one living in a
//!    blocked country (`UNDELIVERABLE`), and a scarce sku (`OUT_OF_STOCK`);
//! 3. drive the orders concurrently through the gateway, with a progress bar;
//! 4. cancel some of the approved orders;
//! 5. wait until every order is terminal, then check the invariants,
//!    waiting (bounded) for compensations still in flight to land — the
//!    system is eventually consistent, the invariants must converge.
//!
//! Every sku and email carries a run tag, so runs on one data directory
//! don't see each other's data.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{Method, StatusCode};
use chrono::DateTime;
use clap::Args;
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{Reservation, ReservationStatus, SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderStatus, OrderView};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, Quantity, SagaStyle};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use shop::client::Endpoint;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deployment: embedded (one process, SQLite files, in-process bus).
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// How the create-order saga runs.
    #[arg(long, default_value = "orchestration")]
    saga: SagaStyle,
    /// Random seed, for a repeatable workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the shop's data here (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Embedded,
}

/// Share of orders whose customer is one of the failing ones, each.
const FAILING_CUSTOMER_SHARE: f64 = 0.03;
/// Share of orders that ask for the scarce sku.
const SCARCE_SHARE: f64 = 0.05;
/// Share of approved orders cancelled afterwards.
const CANCEL_SHARE: f64 = 0.05;
const REGULAR_CUSTOMERS: usize = 20;
const SKUS: usize = 10;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    mode: Mode,
    saga: SagaStyle,
    orders: usize,
    concurrency: usize,
    by_status: BTreeMap<String, usize>,
    by_reason: BTreeMap<String, usize>,
    cancel_requests: usize,
    seconds: f64,
    orders_per_second: f64,
    /// Order placed → saga decided (server clocks), over orders not cancelled.
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    invariants: Vec<Check>,
    data_dir: String,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    name: &'static str,
    holds: bool,
    detail: String,
}

impl Report {
    pub(crate) fn all_invariants_hold(&self) -> bool {
        self.invariants.iter().all(|c| c.holds)
    }
}

/// The shop's APIs as the demo uses them.
struct Apis {
    gateway: Endpoint,
    inventory: Endpoint,
    payment: Endpoint,
    shipping: Endpoint,
    order: Endpoint,
}

/// One order to place.
#[derive(Debug, Clone)]
struct Planned {
    customer: Uuid,
    items: Vec<Quantity>,
    cancel_if_approved: bool,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Report> {
    let (data_dir, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::tempdir().context("creating a temporary data directory")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let config = shop::ShopConfig { saga: args.saga, ..shop::ShopConfig::default() };
    let shop = shop::Embedded::start(&data_dir, &config).await?;
    let http = polis_runtime::HttpOptions::default();
    let apis = Apis {
        gateway: Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http)),
        inventory: Endpoint::local(shop.routers().inventory.clone()),
        payment: Endpoint::local(shop.routers().payment.clone()),
        shipping: Endpoint::local(shop.routers().shipping.clone()),
        order: Endpoint::local(shop.routers().order.clone()),
    };

    let tag = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let seeded = seed(&apis, &tag, args.orders, &mut rng).await?;
    let plan = plan(&seeded, args.orders, &mut rng);

    let started = Instant::now();
    let placed = place_orders(&apis, &plan, args.concurrency, args.json).await?;
    let orders = wait_terminal(&apis, &placed, args.json).await?;
    let mut cancel_requests = 0;
    for (id, planned) in &placed {
        if planned.cancel_if_approved && orders.get(id).is_some_and(|o| o.status == OrderStatus::Approved) {
            let path = format!("/api/orders/{id}/cancel");
            let _: Accepted = apis.gateway.json(Method::POST, &path, None::<&()>, StatusCode::ACCEPTED).await?;
            cancel_requests += 1;
        }
    }
    let orders = wait_terminal(&apis, &placed, true).await?;
    let seconds = started.elapsed().as_secs_f64();

    let mut latencies: Vec<f64> = orders
        .values()
        .filter(|o| o.status != OrderStatus::Cancelled)
        .filter_map(|o| {
            let created = DateTime::parse_from_rfc3339(&o.created_at).ok()?;
            let updated = DateTime::parse_from_rfc3339(&o.updated_at).ok()?;
            Some((updated - created).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut by_status = BTreeMap::new();
    let mut by_reason = BTreeMap::new();
    for order in orders.values() {
        *by_status.entry(order.status.as_str().to_owned()).or_insert(0) += 1;
        if let Some(reason) = order.reason {
            *by_reason.entry(reason.as_str().to_owned()).or_insert(0) += 1;
        }
    }
    let invariants = check_until_converged(&apis, &seeded, &placed, args.orders).await?;
    let report = Report {
        mode: args.mode,
        saga: args.saga,
        orders: args.orders,
        concurrency: args.concurrency,
        by_status,
        by_reason,
        cancel_requests,
        seconds,
        orders_per_second: args.orders as f64 / seconds.max(1e-9),
        latency_ms_p50: percentile(&latencies, 0.50),
        latency_ms_p99: percentile(&latencies, 0.99),
        invariants,
        data_dir: data_dir.display().to_string(),
    };
    print(&report, args.json)?;
    Ok(report)
}

/// What the demo created before placing orders.
struct Seeded {
    regular: Vec<Uuid>,
    low_credit: Uuid,
    declined: Uuid,
    undeliverable: Uuid,
    skus: Vec<String>,
    scarce: String,
    initial_stock: HashMap<String, i64>,
}

async fn seed(apis: &Apis, tag: &str, orders: usize, rng: &mut StdRng) -> anyhow::Result<Seeded> {
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
            apis.gateway.json(Method::POST, "/api/customers", Some(body), StatusCode::CREATED).await?;
        ids.push(customer.id);
    }

    let mut skus = Vec::new();
    let mut initial_stock = HashMap::new();
    for i in 0..=SKUS {
        let sku = format!("SKU-{tag}-{i}");
        let product = Product { sku: sku.clone(), name: format!("Product {i}"), price: rng.random_range(100..10_000) };
        let _: Product = apis.gateway.json(Method::POST, "/api/products", Some(&product), StatusCode::CREATED).await?;
        // Regular skus have plenty; the last one is scarce.
        let available = if i < SKUS { (orders as i64 * 10).max(100) } else { (orders as i64 / 100).max(2) };
        let path = format!("/api/inventory/{sku}");
        let _: StockLevel =
            apis.gateway.json(Method::PUT, &path, Some(&SetStock { available }), StatusCode::OK).await?;
        initial_stock.insert(sku.clone(), available);
        skus.push(sku);
    }
    let scarce = skus.pop().context("no skus")?;

    // Payment and shipping learn customers from customer events: wait until
    // payment's replica has them all before placing orders.
    for id in &ids {
        let path = format!("/credit/{id}");
        let found = poll_until(Duration::from_secs(30), || async {
            apis.payment.call(Method::GET, &path, None::<&()>).await.map(|(s, _)| s == StatusCode::OK).unwrap_or(false)
        })
        .await;
        anyhow::ensure!(found, "the payment service never replicated customer {id}");
    }
    let undeliverable = ids.pop().context("customers")?;
    let declined = ids.pop().context("customers")?;
    let low_credit = ids.pop().context("customers")?;
    Ok(Seeded { regular: ids, low_credit, declined, undeliverable, skus, scarce, initial_stock })
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

fn plan(seeded: &Seeded, orders: usize, rng: &mut StdRng) -> Vec<Planned> {
    (0..orders)
        .map(|i| {
            // The first orders make sure each failure happens at least once.
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

fn progress(len: usize, message: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar
}

async fn place_orders(
    apis: &Apis,
    plan: &[Planned],
    concurrency: usize,
    quiet: bool,
) -> anyhow::Result<Vec<(Uuid, Planned)>> {
    let bar = progress(plan.len(), "placing", quiet);
    let placed: Vec<anyhow::Result<(Uuid, Planned)>> = futures::stream::iter(plan.iter().cloned())
        .map(|planned| {
            let bar = bar.clone();
            async move {
                let body = CreateOrder { customer_id: planned.customer, items: planned.items.clone() };
                let accepted: Accepted =
                    apis.gateway.json(Method::POST, "/api/orders", Some(&body), StatusCode::ACCEPTED).await?;
                bar.inc(1);
                Ok((accepted.id, planned))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish();
    placed.into_iter().collect()
}

/// Waits until every placed order is terminal (APPROVED, REJECTED or
/// CANCELLED); gives up after a while and returns what it saw.
async fn wait_terminal(
    apis: &Apis,
    placed: &[(Uuid, Planned)],
    quiet: bool,
) -> anyhow::Result<HashMap<Uuid, OrderView>> {
    let bar = progress(placed.len(), "deciding", quiet);
    let wanted: std::collections::HashSet<Uuid> = placed.iter().map(|(id, _)| *id).collect();
    let patience = Duration::from_secs(60 + placed.len() as u64 / 50);
    let deadline = Instant::now() + patience;
    loop {
        let all: Vec<OrderView> = apis.order.get("/orders").await?;
        let mine: HashMap<Uuid, OrderView> =
            all.into_iter().filter(|o| wanted.contains(&o.id)).map(|o| (o.id, o)).collect();
        let terminal = mine.values().filter(|o| o.status.is_terminal()).count();
        bar.set_position(terminal as u64);
        if terminal == wanted.len() || Instant::now() >= deadline {
            bar.finish();
            return Ok(mine);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the invariants until they all hold or 30 s pass (compensations
/// may still be in flight when the last order turns terminal).
async fn check_until_converged(
    apis: &Apis,
    seeded: &Seeded,
    placed: &[(Uuid, Planned)],
    orders: usize,
) -> anyhow::Result<Vec<Check>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let checks = check(apis, seeded, placed, orders).await?;
        if checks.iter().all(|c| c.holds) || Instant::now() >= deadline {
            return Ok(checks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check(apis: &Apis, seeded: &Seeded, placed: &[(Uuid, Planned)], orders: usize) -> anyhow::Result<Vec<Check>> {
    let wanted: std::collections::HashSet<Uuid> = placed.iter().map(|(id, _)| *id).collect();
    let all: Vec<OrderView> = apis.order.get("/orders").await?;
    let mine: Vec<OrderView> = all.into_iter().filter(|o| wanted.contains(&o.id)).collect();
    let levels: Vec<StockLevel> = apis.inventory.get("/inventory").await?;
    let reservations: HashMap<Uuid, Reservation> =
        apis.inventory.get::<Vec<Reservation>>("/reservations").await?.into_iter().map(|r| (r.order_id, r)).collect();
    let payments: HashMap<Uuid, Payment> =
        apis.payment.get::<Vec<Payment>>("/payments").await?.into_iter().map(|p| (p.order_id, p)).collect();
    let shipments: HashMap<Uuid, Shipment> =
        apis.shipping.get::<Vec<Shipment>>("/shipments").await?.into_iter().map(|s| (s.order_id, s)).collect();

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
        match order.status {
            OrderStatus::Approved => {
                if payment != Some(PaymentStatus::Captured) || shipment != Some(ShipmentStatus::Scheduled) {
                    approved_ok.push(format!("{}: payment {payment:?}, shipment {shipment:?}", order.id));
                }
            }
            OrderStatus::Rejected | OrderStatus::Cancelled => {
                if payment == Some(PaymentStatus::Captured)
                    || shipment == Some(ShipmentStatus::Scheduled)
                    || reservation == Some(ReservationStatus::Reserved)
                {
                    undone_ok.push(format!(
                        "{} ({}): payment {payment:?}, shipment {shipment:?}, reservation {reservation:?}",
                        order.id,
                        order.status.as_str()
                    ));
                }
            }
            _ => {}
        }
    }
    check("every APPROVED order has a captured payment and a shipment", approved_ok);
    check("no REJECTED or CANCELLED order keeps a captured payment, a reservation or a shipment", undone_ok);

    let stuck: Vec<String> = placed
        .iter()
        .filter(|(id, _)| !mine.iter().any(|o| o.id == *id && o.status.is_terminal()))
        .map(|(id, _)| {
            let status = mine.iter().find(|o| o.id == *id).map_or("missing", |o| o.status.as_str());
            format!("{id} is {status}")
        })
        .collect();
    check("no order stuck (every order terminal)", stuck);

    if orders >= 20 {
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!();
    println!(
        "polis demo — {} orders, {} concurrent, {:?} mode, {} saga",
        report.orders,
        report.concurrency,
        report.mode,
        report.saga.as_str()
    );
    println!("  data: {}", report.data_dir);
    println!();
    println!("  final status");
    for (status, n) in &report.by_status {
        println!("    {status:<16} {n:>7}");
    }
    println!("  rejection reasons");
    for (reason, n) in &report.by_reason {
        println!("    {reason:<24} {n:>7}");
    }
    println!("  cancellations requested: {}", report.cancel_requests);
    println!();
    println!("  {:.1} orders/s ({:.2} s)", report.orders_per_second, report.seconds);
    println!("  order → decision latency: p50 {:.1} ms, p99 {:.1} ms", report.latency_ms_p50, report.latency_ms_p99);
    println!();
    println!("  invariants");
    for check in &report.invariants {
        println!("    [{}] {} — {}", if check.holds { "ok" } else { "FAIL" }, check.name, check.detail);
    }
    Ok(())
}
