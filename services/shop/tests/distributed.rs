//! The distributed shop end to end, through the gateway over HTTP, in both
//! saga styles: cancellation, every rejection reason with its
//! compensations, a service that never answers (deadlines), API
//! composition with a service stopped, and the last units of a sku under
//! concurrent orders. Each process's pieces run as tasks of this test (a
//! `Node` per service, each with its own PostgreSQL database, its own NATS
//! connection and its own HTTP server), exactly as `polis serve` runs them.
//! Real processes, and killing one, are in `crates/polis-cli/tests`.
//!
//! PostgreSQL is the testkit's shared server (a database prefix per test);
//! NATS is a dedicated server per test, because the services' stream and
//! consumer names are fixed (`POLIS_ORDER`, `order_commands`, ...) and two
//! shops on one server would share them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;

use std::time::Duration;

use contracts::order::OrderStatus;
use contracts::shipping::ShipmentStatus;
use contracts::{RejectionReason, SagaStyle};
use polis_runtime::Secret;
use polis_testkit::{NatsServer, TestDatabase};
use shop::client::Endpoint;
use shop::distributed::{DistributedConfig, Node, Service};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use support::Client;

/// The shop as a `Node` per process, reached over HTTP.
struct Shop {
    nodes: BTreeMap<Service, Node>,
    client: Client,
    config: DistributedConfig,
    server: TestDatabase,
    _nats: NatsServer,
}

impl Shop {
    async fn start(style: SagaStyle) -> Self {
        Self::start_with(style, &[]).await
    }

    /// The shop with the `silent` services' consumers not running.
    async fn start_with(style: SagaStyle, silent: &[Service]) -> Self {
        Self::start_timed(style, silent, 3_000).await
    }

    /// [`Shop::start_with`], a step's deadline `step_timeout_ms` after it
    /// starts (an order's, in choreography, twice that).
    async fn start_timed(style: SagaStyle, silent: &[Service], step_timeout_ms: u64) -> Self {
        let server = polis_testkit::postgres().await;
        let nats = NatsServer::start().await.unwrap();
        let mut config = DistributedConfig::default();
        config.infra.postgres_url = Some(Secret::new(server.url().to_owned()));
        config.infra.nats_url = Some(Secret::new(nats.url()));
        // The test database's name is unique: `t_<hex>_order`, ... never collide.
        config.database_prefix = server.name().to_owned();
        config.saga = style;
        config.order.step_timeout_ms = step_timeout_ms;
        config.order.order_timeout_ms = 2 * step_timeout_ms;
        config.silent = silent.to_vec();
        let nodes = support::start_nodes(&mut config).await;
        let endpoint = |service: Service| Endpoint::remote(&nodes[&service].url()).unwrap();
        let client = Client::new(
            endpoint(Service::Gateway),
            endpoint(Service::Inventory),
            endpoint(Service::Payment),
            endpoint(Service::Shipping),
        );
        Self { nodes, client, config, server, _nats: nats }
    }

    /// A connection to `database` on the test's server.
    async fn connect(&self, database: &str) -> PgConnection {
        PgConnectOptions::from_str(self.server.url()).unwrap().database(database).connect().await.unwrap()
    }

    /// Stops `service`'s node and starts it again on the same address (the
    /// gateway knows it there), with its consumers running.
    async fn restart_consuming(&mut self, service: Service) {
        let node = self.nodes.remove(&service).unwrap();
        let addr = node.addr();
        node.shutdown().await.unwrap();
        self.config.silent.retain(|s| *s != service);
        self.config.listen.insert(service, addr);
        self.nodes.insert(service, Node::start(service, &self.config).await.unwrap());
    }

    async fn shutdown(self) {
        for (_, node) in self.nodes.into_iter().rev() {
            node.shutdown().await.unwrap();
        }
    }
}

impl Deref for Shop {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

async fn approved_order_captures_ships_and_reserves_then_cancels(style: SagaStyle) {
    let shop = Shop::start(style).await;
    let (customer, id, sku) = shop.approved_order().await;
    // API composition across four processes.
    let details: serde_json::Value = shop.gateway.get(&format!("/api/orders/{id}/details")).await.unwrap();
    assert_eq!(details["order"]["id"], id.to_string(), "{details}");
    assert_eq!(details["customer"]["id"], customer.to_string(), "{details}");
    shop.cancel_approved(id, &sku).await;
    shop.shutdown().await;
}

async fn the_order_history_view_follows_every_service(style: SagaStyle) {
    let shop = Shop::start(style).await;
    shop.the_view_follows_every_service().await;
    shop.shutdown().await;
}

async fn each_rejection_reason_compensates(style: SagaStyle) {
    let shop = Shop::start(style).await;
    shop.rejections_compensate().await;
    shop.shutdown().await;
}

async fn a_service_that_never_answers_times_the_order_out(style: SagaStyle) {
    let shop = Shop::start_with(style, &[Service::Shipping]).await;
    shop.times_out().await;
    shop.shutdown().await;
}

/// A participant that acts after its step's deadline passed: shipping,
/// whose consumers start only once the order was rejected for the timeout,
/// finds the schedule command (or, in choreography, the payment event)
/// waiting, and the compensation behind it. The shipment ends cancelled
/// either way: scheduled late and then cancelled, or refused because the
/// cancellation came first. Never left scheduled for a rejected order.
async fn a_participant_acting_after_its_deadline_is_compensated(style: SagaStyle) {
    // Deadlines long enough that only the silent step can miss one.
    let mut shop = Shop::start_timed(style, &[Service::Shipping], 6_000).await;
    let customer = shop.customer("DE", 1_000_000, "late").await;
    let sku = shop.product(100, 5).await;
    let id = shop.order(customer, &[(&sku, 2)]).await;
    let order = shop.wait_status(id, OrderStatus::Rejected).await;
    assert_eq!(order.reason, Some(RejectionReason::Timeout), "{order:?}");
    shop.wait_undone(id, &sku, 5).await;
    assert!(shop.shipment(id).await.is_none(), "a silent shipping service scheduled a shipment");

    shop.restart_consuming(Service::Shipping).await;
    let cancelled = polis_testkit::wait_for(Duration::from_secs(30), || async {
        shop.shipment(id).await.is_some_and(|s| s.status == ShipmentStatus::Cancelled)
    })
    .await;
    let shipment = shop.shipment(id).await;
    assert!(cancelled.is_ok(), "the late shipment was never compensated: {shipment:?}");
    if style == SagaStyle::Orchestration {
        // The saga sent the schedule command before its deadline passed, so
        // shipping acted on it and then undid it: a real shipment, cancelled.
        assert!(shipment.unwrap().address.is_some(), "scheduled, then cancelled");
    }
    shop.shutdown().await;
}

async fn order_details_compose_and_degrade_when_a_service_is_down(style: SagaStyle) {
    let mut shop = Shop::start(style).await;
    let Shop { nodes, client, .. } = &mut shop;
    // Really stopped: its HTTP server closed, so the gateway's calls to it
    // are refused.
    let payment_down = async || {
        nodes.remove(&Service::Payment).unwrap().shutdown().await.unwrap();
        client.gateway.clone()
    };
    client.details_compose_and_degrade(payment_down).await;
    shop.shutdown().await;
}

async fn the_last_units_go_to_exactly_as_many_orders(style: SagaStyle) {
    let shop = Shop::start(style).await;
    shop.last_units_race().await;
    shop.shutdown().await;
}

/// On PostgreSQL, concurrent repeats of one key wait for the first
/// request's transaction; the saga style plays no part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_order_is_placed_once() {
    let shop = Shop::start(SagaStyle::Orchestration).await;
    shop.retries_place_once().await;
    shop.shutdown().await;
}

/// A customer's orders are read through the gateway a page at a time, over
/// HTTP and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_orders_are_read_page_by_page() {
    let shop = Shop::start(SagaStyle::Orchestration).await;
    shop.customer_orders_are_paged().await;
    shop.shutdown().await;
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
    approved_order_captures_ships_and_reserves_then_cancels,
    the_order_history_view_follows_every_service,
    each_rejection_reason_compensates,
    a_service_that_never_answers_times_the_order_out,
    a_participant_acting_after_its_deadline_is_compensated,
    order_details_compose_and_degrade_when_a_service_is_down,
    the_last_units_go_to_exactly_as_many_orders,
);

/// The tables that the `CREATE TABLE` statements of the PostgreSQL
/// migrations under `dir` create: an oracle independent of the code that runs them.
fn declared_tables(dir: &Path) -> BTreeSet<String> {
    // A service without migrations of its own (the audit service) declares none.
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    let mut paths: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort(); // in the order they apply
    let name_after = |statement: &str| -> String {
        let name = statement.trim_start().trim_start_matches("if not exists").trim_start();
        name.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    let mut tables = BTreeSet::new();
    for path in paths {
        let sql = std::fs::read_to_string(path).unwrap().to_lowercase();
        // A table a later migration drops is no longer the service's.
        for statement in sql.split("drop table").skip(1) {
            tables.remove(&name_after(statement));
        }
        for statement in sql.split("create table").skip(1) {
            tables.insert(name_after(statement));
        }
        // `alter table <old> rename to <new>`: the table goes by its new name.
        for statement in sql.split("alter table").skip(1) {
            let old = name_after(statement);
            if let Some((_, renamed)) = statement.split_once("rename to")
                && tables.remove(&old)
            {
                tables.insert(name_after(renamed));
            }
        }
    }
    tables
}

/// The views of each service's projections (their tables are `<view>_g<n>`,
/// one per generation), besides order-history's.
fn projected(service: Service) -> &'static [&'static str] {
    match service {
        Service::Payment => &["payment_customers"],
        Service::Shipping => &["customer_addresses"],
        _ => &[],
    }
}

/// Each service's database holds polis's tables and the service's own, and
/// nothing of another service's; every connection to a service's database
/// is that service's; no two services share a database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_has_a_database_of_its_own() {
    let shop = Shop::start(SagaStyle::Orchestration).await;
    // Let every service write: an approved order touches all of them.
    let customer = shop.customer("DE", 1_000_000, "isolated").await;
    let sku = shop.product(100, 5).await;
    let id = shop.order(customer, &[(&sku, 1)]).await;
    shop.wait_status(id, OrderStatus::Approved).await;

    let databases: BTreeMap<Service, String> =
        Service::BUSINESS.into_iter().map(|s| (s, shop.nodes[&s].database().unwrap().to_owned())).collect();
    assert_eq!(databases.values().collect::<BTreeSet<_>>().len(), Service::BUSINESS.len(), "{databases:?}");
    assert_eq!(shop.nodes[&Service::Gateway].database(), None);
    for (service, database) in &databases {
        assert_eq!(database, &format!("{}_{}", shop.config.database_prefix, service.ident()));
    }

    // Who is connected to which database, by the connections' own names.
    // Clients only: the server's own workers (autovacuum) visit databases
    // too, unnamed.
    let mut admin = shop.connect(shop.server.name()).await;
    let sessions: Vec<(String, String)> = sqlx::query_as(
        "SELECT datname::text, application_name FROM pg_stat_activity \
         WHERE datname LIKE $1 || '\\_%' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .bind(&shop.config.database_prefix)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    for service in Service::BUSINESS {
        assert!(sessions.iter().any(|(db, _)| db == &databases[&service]), "{service} has no connection: {sessions:?}");
    }
    for (database, application) in &sessions {
        let owner = databases.iter().find(|(_, db)| *db == database).map(|(s, _)| *s).unwrap();
        assert_eq!(application, &format!("polis-{owner}"), "a foreign connection to {database}: {sessions:?}");
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let polis = declared_tables(&root.join("crates/polis-store/migrations/postgres"));
    assert!(polis.contains("polis_events") && polis.contains("polis_outbox"), "{polis:?}");
    let mut seen_own: BTreeMap<Service, BTreeSet<String>> = BTreeMap::new();
    for (service, database) in &databases {
        let mut conn = shop.connect(database).await;
        let tables: BTreeSet<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .into_iter()
                .collect();
        conn.close().await.unwrap();
        // The view's tables are its projection's, one set per generation, not migrations'.
        let own = if *service == Service::OrderHistory {
            tables.iter().filter(|t| t.starts_with("history_")).cloned().collect()
        } else {
            let mut own = declared_tables(&root.join(format!("services/{service}/migrations/postgres")));
            let generations =
                tables.iter().filter(|t| projected(*service).iter().any(|v| t.starts_with(&format!("{v}_g"))));
            own.extend(generations.cloned());
            own
        };
        // The audit service keeps only the library's tables (its outbox, inbox and repairs).
        assert!(!own.is_empty() || *service == Service::Audit, "{service} declares no table");
        let foreign: Vec<_> =
            tables.iter().filter(|t| !polis.contains(*t) && !own.contains(*t) && *t != "_sqlx_migrations").collect();
        assert!(foreign.is_empty(), "{service}'s database holds tables not its own: {foreign:?}");
        assert!(own.is_subset(&tables), "{service}'s database lacks its tables: has {tables:?}, declares {own:?}");
        assert!(tables.contains("polis_outbox") && tables.contains("polis_inbox"), "{tables:?}");
        seen_own.insert(*service, tables.into_iter().filter(|t| own.contains(t)).collect());
    }
    // No table of a service's own appears in another service's database.
    for (a, tables_a) in &seen_own {
        for (b, tables_b) in &seen_own {
            if a < b {
                assert!(tables_a.is_disjoint(tables_b), "{a} and {b} share {:?}", tables_a.intersection(tables_b));
            }
        }
    }
    shop.shutdown().await;
}
