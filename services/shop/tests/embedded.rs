//! The embedded shop end to end, through the gateway, in both saga styles:
//! every rejection reason with its compensations, cancellation, deadlines
//! (a service that never answers, and a deadline that fires after a
//! restart), and the last units of a sku under concurrent orders.
#![allow(clippy::unwrap_used)]

mod support;

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use contracts::order::OrderStatus;
use contracts::{RejectionReason, SagaStyle};
use shop::client::Endpoint;
use shop::workload::{self, Apis, Pacing};
use shop::{Embedded, Service, ShopConfig};
use support::Client;

/// The shop in this process; its services' routers are called without a socket.
struct Shop {
    shop: Embedded,
    client: Client,
}

impl Shop {
    async fn start(dir: &Path, config: &ShopConfig) -> Self {
        let shop = Embedded::start(dir, config).await.unwrap();
        let http = polis_runtime::HttpOptions::default();
        let client = Client::new(
            Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http)),
            Endpoint::local(shop.router(Service::Inventory)),
            Endpoint::local(shop.router(Service::Payment)),
            Endpoint::local(shop.router(Service::Shipping)),
        );
        Self { shop, client }
    }
}

impl Deref for Shop {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

fn config(style: SagaStyle) -> ShopConfig {
    let mut config = ShopConfig { saga: style, ..ShopConfig::default() };
    config.order.step_timeout_ms = 3_000;
    config.order.order_timeout_ms = 6_000;
    config
}

async fn approved_order_captures_ships_and_reserves(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &config(style)).await;
    let (_, id, sku) = shop.approved_order().await;
    shop.cancel_approved(id, &sku).await;
}

async fn the_order_history_view_follows_every_service(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    Shop::start(dir.path(), &config(style)).await.the_view_follows_every_service().await;
}

async fn each_rejection_reason_compensates(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    Shop::start(dir.path(), &config(style)).await.rejections_compensate().await;
}

async fn a_service_that_never_answers_times_the_order_out(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(style);
    config.silent = vec![Service::Shipping];
    Shop::start(dir.path(), &config).await.times_out().await;
}

async fn a_deadline_fires_after_a_restart(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(style);
    config.silent = vec![Service::Shipping];
    let (id, sku) = {
        let shop = Shop::start(dir.path(), &config).await;
        let customer = shop.customer("DE", 1_000_000, "restart").await;
        let sku = shop.product(100, 5).await;
        let id = shop.order(customer, &[(&sku, 2)]).await;
        // Stop well before the deadline.
        assert_eq!(shop.get_order(id).await.status, OrderStatus::Pending);
        (id, sku)
    };
    // The shop's tasks stop when it drops; give them a moment to let go of the files.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shop = Shop::start(dir.path(), &config).await;
    let order = shop.wait_status(id, OrderStatus::Rejected).await;
    assert_eq!(order.reason, Some(RejectionReason::Timeout));
    shop.wait_undone(id, &sku, 5).await;
}

async fn the_last_units_go_to_exactly_as_many_orders(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    Shop::start(dir.path(), &config(style)).await.last_units_race().await;
}

async fn a_retried_order_is_placed_once(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    Shop::start(dir.path(), &config(style)).await.retries_place_once().await;
}

async fn order_details_compose_and_degrade_when_a_service_is_down(style: SagaStyle) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &config(style)).await;
    // The same services behind a second gateway whose payment upstream is
    // down (nothing listens at its address).
    let payment_down = async || {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let mut upstreams = gateway::Upstreams::new(|service| gateway::Upstream::local(shop.shop.router(service)));
        upstreams.set(Service::Payment, gateway::Upstream::remote(&dead).unwrap());
        Endpoint::local(polis_runtime::with_standard_stack(
            gateway::router(upstreams, gateway::GatewayConfig::default()),
            &polis_runtime::HttpOptions::default(),
        ))
    };
    shop.details_compose_and_degrade(payment_down).await;
}

/// The shop's APIs as the demo reaches them, in process.
fn apis(shop: &Embedded) -> Apis {
    let http = polis_runtime::HttpOptions::default();
    Apis::new(|service| {
        Ok(match service {
            Service::Gateway => Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http)),
            service => Endpoint::local(shop.router(service)),
        })
    })
    .unwrap()
}

/// The saga style may change across a restart while orders are in flight,
/// in both directions: orchestration → choreography → orchestration, a
/// third of the orders placed (and left undecided) under each. Every order
/// ends terminal and every safety invariant holds: stock conserved, no
/// money, stock or shipment held by a failed order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_style_can_change_across_restarts_under_load() {
    const ORDERS: usize = 90;
    let dir = tempfile::tempdir().unwrap();
    let styles = [SagaStyle::Orchestration, SagaStyle::Choreography, SagaStyle::Orchestration];
    let mut rng = workload::rng(5);
    let mut run = None;
    let mut placed = Vec::new();
    for (round, style) in styles.into_iter().enumerate() {
        let shop = Embedded::start(dir.path(), &ShopConfig { saga: style, ..ShopConfig::default() }).await.unwrap();
        let apis = apis(&shop);
        let (seeded, plan) = match &run {
            Some(run) => run,
            None => {
                let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
                let plan = workload::plan(&seeded, ORDERS, &mut rng);
                run.insert((seeded, plan))
            }
        };
        let third = &plan[round * ORDERS / 3..(round + 1) * ORDERS / 3];
        placed.extend(workload::place_orders(&apis, third, 8, Pacing::Accepted, &|_| {}).await.unwrap());
        if round + 1 < styles.len() {
            // Stopped with orders in flight; the next style resumes them.
            continue;
        }
        assert_eq!(placed.len(), ORDERS);
        workload::wait_safe(&apis, seeded, &placed, Duration::from_secs(120)).await.unwrap();
    }
}

/// A damaged database file is found when the shop starts, not by the first
/// order that touches a bad page: the start fails naming the file.
#[tokio::test]
async fn a_damaged_database_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let shop = Shop::start(dir.path(), &config(SagaStyle::Orchestration)).await;
        let customer = shop.customer("DE", 1_000_000, "damage").await;
        let sku = shop.product(100, 50).await;
        for _ in 0..20 {
            shop.order(customer, &[(&sku, 1)]).await;
        }
    }
    let order_db = dir.path().join("order.db");
    // Everything in the main file, as after a clean stop, then a third cut off.
    let checkpoint = polis_testkit::wait_for(Duration::from_secs(10), || async {
        let url = format!("sqlite://{}", order_db.display());
        let Ok(pool) = sqlx::SqlitePool::connect(&url).await else { return false };
        let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&pool).await;
        pool.close().await;
        matches!(done, Ok((0, _, _)))
    });
    checkpoint.await.unwrap();
    let len = std::fs::metadata(&order_db).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&order_db).unwrap().set_len(len * 2 / 3).unwrap();

    let err = Embedded::start(dir.path(), &config(SagaStyle::Orchestration)).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&order_db.display().to_string()) && message.contains("is damaged"), "{message}");
}

/// A customer's orders are read through the gateway a page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_orders_are_read_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    Shop::start(dir.path(), &config(SagaStyle::Orchestration)).await.customer_orders_are_paged().await;
}

/// Database per service: each service's file holds polis's own tables and
/// that service's tables, nothing of another service's.
#[tokio::test]
async fn each_service_database_holds_only_its_own_tables() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &config(SagaStyle::Orchestration)).await;
    let expected = [
        ("customer", vec!["customers"]),
        ("catalog", vec!["products"]),
        ("inventory", vec!["reservations", "stock"]),
        // A replica is a projection: its first generation's table, behind a view.
        ("payment", vec!["payment_credit_locks", "payment_customers_g1", "payments"]),
        ("shipping", vec!["customer_addresses_g1", "shipments"]),
        ("order", vec!["order_requests", "orders"]),
        // The view's tables, one set per generation of the projection.
        ("order-history", vec!["history_"]),
        // Only the library's tables: its outbox, inbox and repair records.
        ("audit", vec![]),
    ];
    let mut seen = std::collections::HashSet::new();
    for (service, own) in expected {
        let path = dir.path().join(format!("{service}.db"));
        assert!(seen.insert(path.clone()), "two services share {}", path.display());
        let url = format!("sqlite://{}?mode=ro", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'polis\\_%' ESCAPE '\\' \
             AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if service == "order-history" {
            assert!(tables.iter().all(|t| t.starts_with("history_")), "{service}'s database: {tables:?}");
        } else {
            assert_eq!(tables, own, "{service}'s database");
        }
        pool.close().await;
    }
    assert_eq!(shop.shop.services().count(), 8);
}

macro_rules! both_styles {
    ($($case:ident),* $(,)?) => {
        mod orchestration {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(contracts::SagaStyle::Orchestration).await;
                }
            )*
        }
        mod choreography {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(contracts::SagaStyle::Choreography).await;
                }
            )*
        }
    };
}

both_styles!(
    approved_order_captures_ships_and_reserves,
    the_order_history_view_follows_every_service,
    each_rejection_reason_compensates,
    a_service_that_never_answers_times_the_order_out,
    a_deadline_fires_after_a_restart,
    the_last_units_go_to_exactly_as_many_orders,
    a_retried_order_is_placed_once,
    order_details_compose_and_degrade_when_a_service_is_down,
);
