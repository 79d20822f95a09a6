//! The admin commands, as the built `polis` binary against a running shop's
//! gateway over HTTP, in both deployments: the embedded shop in this
//! process (its gateway served on a port), and the distributed one as a
//! `Node` per process (`polis serve`'s pieces, each its own PostgreSQL
//! database, over a NATS server of this test's own).
//!
//! The dead letters are real: messages the payment service cannot handle,
//! published onto the shop's bus (`shop::faults`). One can never be
//! handled (replaying it fails; it is discarded), the other is an
//! authorization for a customer payment did not know, replayed once the
//! customer's registration has reached it; a second replay of the same
//! letter is refused. Sagas are listed by state, and an order's stream is
//! read, as tables and as JSON.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderStatus, OrderView};
use contracts::{Address, Quantity};
use polis_core::{Bus, Message};
use serde_json::Value;
use shop::client::Endpoint;
use shop::distributed::{DistributedConfig, Node, Service};
use uuid::Uuid;

/// How long the shop may take to converge (a decision, a replica, a dead letter).
const PATIENCE: Duration = Duration::from_secs(60);

/// What the commands run against, whichever the deployment.
struct Target {
    /// The gateway's base URL, for `--url`.
    url: String,
    gateway: Endpoint,
    /// The payment service's own API (to see what its replica knows).
    payment: Endpoint,
    bus: Arc<dyn Bus>,
}

/// Runs `polis ARGS --url URL` and returns what it did.
async fn polis(target: &Target, args: &[&str]) -> Output {
    let mut command = support::polis();
    command.args(args).args(["--url", &target.url]);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

/// Runs a command that must succeed; its stdout.
async fn ok(target: &Target, args: &[&str]) -> String {
    let out = polis(target, args).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "polis {args:?} failed: {stderr}\n{stdout}");
    stdout.into_owned()
}

/// Runs a command with `--json` that must succeed; its JSON.
async fn json(target: &Target, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    serde_json::from_str(&ok(target, &args).await).unwrap()
}

/// Runs a command that must fail with status 1 (an operational error); its stderr.
async fn fails(target: &Target, args: &[&str]) -> String {
    let out = polis(target, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "polis {args:?} did not fail with 1: {stderr}");
    stderr
}

/// The lines of a table whose cells include every one of `cells`.
fn rows_with<'a>(table: &'a str, cells: &[&str]) -> Vec<&'a str> {
    table.lines().filter(|line| cells.iter().all(|cell| line.split_whitespace().any(|c| c == *cell))).collect()
}

/// Registers a customer and waits until payment's replica has it.
async fn customer(target: &Target) -> Uuid {
    let body = RegisterCustomer {
        name: "Ada Admin".into(),
        email: format!("ada-{}@example.com", Uuid::now_v7().simple()),
        address: Address {
            line1: "1 Ops Road".into(),
            city: "Polis".into(),
            postal_code: "10001".into(),
            country: "DE".into(),
        },
        credit_limit: 1_000_000,
    };
    let customer: Customer =
        target.gateway.json(Method::POST, "/api/customers", Some(&body), StatusCode::CREATED).await.unwrap();
    payment_knows(target, customer.id).await;
    customer.id
}

async fn payment_knows(target: &Target, customer: Uuid) {
    let path = format!("/credit/{customer}");
    let known = polis_testkit::wait_for(PATIENCE, || async {
        target.payment.call(Method::GET, &path, None::<&()>).await.is_ok_and(|(status, _)| status == StatusCode::OK)
    })
    .await;
    assert!(known.is_ok(), "payment never learnt customer {customer}");
}

/// Places an order of `quantity` units of a new product with `stock` units and waits until it is decided.
async fn decided_order(target: &Target, customer: Uuid, stock: i64, quantity: i64) -> OrderView {
    let sku = format!("ADM-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let product = Product { sku: sku.clone(), name: "Lever".into(), price: 100 };
    let _: Product =
        target.gateway.json(Method::POST, "/api/products", Some(&product), StatusCode::CREATED).await.unwrap();
    let path = format!("/api/inventory/{sku}");
    let _: StockLevel =
        target.gateway.json(Method::PUT, &path, Some(&SetStock { available: stock }), StatusCode::OK).await.unwrap();
    let order = CreateOrder { customer_id: customer, items: vec![Quantity { sku, quantity }] };
    let accepted: Accepted =
        target.gateway.json(Method::POST, "/api/orders", Some(&order), StatusCode::ACCEPTED).await.unwrap();
    let path = format!("/api/orders/{}?wait_ms=20000", accepted.id);
    let decided = polis_testkit::wait_for(PATIENCE, || async {
        target.gateway.get::<OrderView>(&path).await.is_ok_and(|order| order.status.is_terminal())
    })
    .await;
    assert!(decided.is_ok(), "order {} was never decided", accepted.id);
    target.gateway.get(&format!("/api/orders/{}", accepted.id)).await.unwrap()
}

/// The dead letter of `message` in `polis dlq list --json`, if there is one.
async fn find_letter(target: &Target, message: &Message) -> Option<Value> {
    let letters = json(target, &["dlq", "list"]).await;
    letters.as_array().unwrap().iter().find(|l| l["message_id"] == message.id.to_string()).cloned()
}

/// The dead letter of `message`, once there is one.
async fn letter_of(target: &Target, message: &Message) -> Value {
    let listed = polis_testkit::wait_for(PATIENCE, || async { find_letter(target, message).await.is_some() }).await;
    assert!(listed.is_ok(), "message {} never became a dead letter", message.id);
    find_letter(target, message).await.unwrap()
}

async fn the_admin_commands_work(target: &Target) {
    // Nothing to see in a fresh shop, and the table says so.
    assert_eq!(json(target, &["dlq", "list"]).await, serde_json::json!([]));
    assert_eq!(ok(target, &["dlq", "list"]).await.trim(), "no dead letters");

    // Two orders: one approved, one rejected (not enough stock).
    let customer = customer(target).await;
    let approved = decided_order(target, customer, 5, 1).await;
    assert_eq!(approved.status, OrderStatus::Approved);
    let rejected = decided_order(target, customer, 1, 2).await;
    assert_eq!(rejected.status, OrderStatus::Rejected);

    // Two messages payment cannot handle.
    let hopeless = shop::faults::unknown_payment_command();
    let unknown_customer = Uuid::now_v7();
    let authorization = shop::faults::authorization_for_unknown_customer(Uuid::now_v7(), unknown_customer, 100);
    target.bus.publish(&[hopeless.clone(), authorization.clone()]).await.unwrap();
    let hopeless_letter = letter_of(target, &hopeless).await;
    let letter = letter_of(target, &authorization).await;
    let (hopeless_id, id) = (hopeless_letter["id"].as_str().unwrap(), letter["id"].as_str().unwrap());
    assert_eq!((&letter["service"], &letter["status"]), (&"payment".into(), &"dead".into()), "{letter}");
    assert!(letter["error"].as_str().unwrap().contains("not replicated"), "{letter}");
    assert_eq!(letter["message"]["type"], "payment.authorize-payment.v1");

    // The table lists both, one per row, aligned under its header.
    let table = ok(target, &["dlq", "list"]).await;
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("SERVICE") && header.contains("ID") && header.contains("ERROR"), "{table}");
    assert_eq!(rows_with(&table, &["payment", id, "dead", "payment.authorize-payment.v1"]).len(), 1, "{table}");
    assert_eq!(rows_with(&table, &["payment", hopeless_id]).len(), 1, "{table}");
    let id_column = header.find("ID").unwrap();
    assert!(table.lines().skip(1).all(|row| row[id_column..].starts_with(char::is_alphanumeric)), "{table}");
    // One service at a time; a page at a time.
    assert_eq!(json(target, &["dlq", "list", "--service", "order"]).await, serde_json::json!([]));
    let first = json(target, &["dlq", "list", "--limit", "1"]).await;
    assert_eq!(first.as_array().unwrap().len(), 1);
    let paged = polis(target, &["dlq", "list", "--limit", "1"]).await;
    let hint = format!("ask again with --after {}", first[0]["id"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&paged.stderr).contains(&hint), "{paged:?}");

    // Shown, in full.
    let shown = json(target, &["dlq", "show", id]).await;
    assert_eq!(shown, letter);
    let shown = ok(target, &["dlq", "show", id]).await;
    assert!(shown.contains("not replicated") && shown.contains(&authorization.id.to_string()), "{shown}");
    assert!(shown.contains(&format!("\"customer_id\": \"{unknown_customer}\"")), "{shown}");

    // Not replayable yet: the handler fails again, and the letter stays with one more attempt.
    let refused = fails(target, &["dlq", "replay", id]).await;
    assert!(refused.contains("the handler failed again"), "{refused}");
    let attempts = letter["attempts"].as_u64().unwrap();
    assert_eq!(json(target, &["dlq", "show", id]).await["attempts"], attempts + 1);

    // Fixed (the customer's registration reaches payment): replayed, once.
    target.bus.publish(&[shop::faults::customer_registered(unknown_customer)]).await.unwrap();
    payment_knows(target, unknown_customer).await;
    let replayed = ok(target, &["dlq", "replay", id]).await;
    assert!(replayed.contains(&format!("replayed dead letter {id} of the payment service")), "{replayed}");
    let order_id = authorization.key.clone();
    let payment: Value = target.payment.get(&format!("/payments/{order_id}")).await.unwrap();
    assert_eq!(payment["status"], "AUTHORIZED", "{payment}");
    let again = fails(target, &["dlq", "replay", id]).await;
    assert!(again.contains("404") && again.contains("no service has a dead letter"), "{again}");
    assert!(fails(target, &["dlq", "show", id]).await.contains("404"));

    // The hopeless one: its replay fails; discarded, once, as JSON.
    assert!(fails(target, &["dlq", "replay", hopeless_id]).await.contains("failed again"));
    let discarded = json(target, &["dlq", "discard", hopeless_id]).await;
    assert_eq!((&discarded["action"], &discarded["service"]), (&"discarded".into(), &"payment".into()));
    assert!(fails(target, &["dlq", "discard", hopeless_id]).await.contains("404"));
    assert_eq!(json(target, &["dlq", "list"]).await, serde_json::json!([]));

    // Sagas by state: the approved order's, the rejected one's.
    let sagas = json(target, &["sagas", "--state", "approved"]).await;
    let ids: Vec<&str> = sagas.as_array().unwrap().iter().map(|s| s["saga_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [approved.id.to_string()], "{sagas}");
    assert_eq!((&sagas[0]["service"], &sagas[0]["saga_type"]), (&"order".into(), &"create-order".into()));
    assert_eq!(sagas[0]["finished"], true);
    let table = ok(target, &["sagas", "--state", "rejected"]).await;
    assert_eq!(
        rows_with(&table, &["order", "create-order", &rejected.id.to_string(), "rejected", "yes"]).len(),
        1,
        "{table}"
    );
    assert!(!table.contains(&approved.id.to_string()), "{table}");
    let all = json(target, &["sagas"]).await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(json(target, &["sagas", "--in-flight"]).await, serde_json::json!([]));
    assert_eq!(ok(target, &["sagas", "--counts"]).await.trim(), "no sagas in flight");

    // An order's stream, from the order service's log.
    let stream = format!("order-{}", approved.id);
    let events = json(target, &["events", &stream]).await;
    let types: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"order.order-created.v1"), "{events}");
    assert_eq!(types.last(), Some(&"order.order-approved.v1"), "{events}");
    assert!(events.as_array().unwrap().iter().all(|e| e["service"] == "order"), "{events}");
    let table = ok(target, &["events", &stream]).await;
    assert_eq!(rows_with(&table, &["order", "1", "order.order-created.v1"]).len(), 1, "{table}");
    let rest = json(target, &["events", &stream, "--after", "1", "--limit", "1"]).await;
    assert_eq!(rest[0]["version"], 2, "{rest}");
    assert!(fails(target, &["events", "order-nothing"]).await.contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_against_the_embedded_shop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = shop::ShopConfig::default();
    // A message payment cannot handle yet is a dead letter within moments.
    config.host.consumer.max_attempts = 3;
    let shop = shop::Embedded::start(dir.path(), &config).await.unwrap();
    let http = polis_runtime::HttpOptions::default();
    let app = polis_runtime::with_standard_stack(shop.gateway(), &http);
    let listener = polis_runtime::serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = polis_runtime::serve::spawn(listener, app, &http).unwrap();
    let target = Target {
        url: server.url(),
        gateway: Endpoint::remote(&server.url()).unwrap(),
        payment: Endpoint::local(shop.router(Service::Payment)),
        bus: shop.bus(),
    };
    the_admin_commands_work(&target).await;
    server.shutdown().await.unwrap();
    shop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_against_the_distributed_shop() {
    let postgres = polis_testkit::postgres().await;
    // Its own NATS: the services' stream names are fixed, shops cannot share a server.
    let nats = polis_testkit::NatsServer::start().await.unwrap();
    let mut config = DistributedConfig::default();
    config.infra.postgres_url = Some(polis_runtime::Secret::new(postgres.url().to_owned()));
    config.infra.nats_url = Some(polis_runtime::Secret::new(nats.url()));
    config.database_prefix = postgres.name().to_owned();
    config.host.consumer.max_attempts = 3;
    for service in Service::ALL {
        config.listen.insert(service, "127.0.0.1:0".parse().unwrap());
    }
    let mut nodes = Vec::new();
    for service in Service::BUSINESS {
        let node = Node::start(service, &config).await.unwrap();
        config.upstreams.insert(service, node.url());
        nodes.push(node);
    }
    let gateway = Node::start(Service::Gateway, &config).await.unwrap();
    let bus = polis_bus::NatsBus::connect(&nats.url(), polis_bus::nats::NatsOptions::default()).await.unwrap();
    let target = Target {
        url: gateway.url(),
        gateway: Endpoint::remote(&gateway.url()).unwrap(),
        payment: Endpoint::remote(&config.upstream_url(Service::Payment)).unwrap(),
        bus: Arc::new(bus),
    };
    the_admin_commands_work(&target).await;
    gateway.shutdown().await.unwrap();
    for node in nodes.into_iter().rev() {
        node.shutdown().await.unwrap();
    }
}
