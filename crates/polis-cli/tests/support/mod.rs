//! What the CLI's process tests share: running the `polis` binary.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderStatus, OrderView};
use contracts::{Address, Quantity};
use shop::client::Endpoint;
use uuid::Uuid;

/// `polis` without the caller's deployment settings (`POLIS_POSTGRES_URL`,
/// `POLIS__…`); the testkit's `POLIS_TEST_*` are kept.
pub(crate) fn polis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polis"));
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("POLIS") && !upper.starts_with("POLIS_TEST_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `polis` process that is stopped (SIGTERM, then SIGKILL) if a failing
/// test drops it, so it never outlives its test's data directory.
#[allow(dead_code)] // each test binary uses part of this module
pub(crate) struct Running(pub(crate) Option<Child>);

#[allow(dead_code)] // each test binary uses part of it
impl Running {
    /// The process's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (`-INT`, `-TERM`, ...) and waits for the exit status.
    pub(crate) async fn signal_and_wait(mut self, signal: &str) -> ExitStatus {
        let mut child = self.0.take().expect("a running process");
        let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} failed");
        let mut status = None;
        let exited = polis_testkit::wait_for(Duration::from_secs(60), || {
            status = status.or_else(|| child.try_wait().expect("try_wait"));
            std::future::ready(status.is_some())
        })
        .await;
        assert!(exited.is_ok(), "polis did not stop on {signal}");
        status.expect("an exit status")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            polis_testkit::process::terminate(&child);
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal order through the gateway: one customer, one product, one order.
#[allow(dead_code)] // each test binary uses part of this module
pub(crate) async fn place_one(gateway: &Endpoint) -> Uuid {
    let tag = Uuid::now_v7().simple().to_string();
    let customer = RegisterCustomer {
        name: "Up Test".into(),
        email: format!("up-{tag}@example.com"),
        address: Address {
            line1: "1 Road".into(),
            city: "Polis".into(),
            postal_code: "10001".into(),
            country: "DE".into(),
        },
        credit_limit: 1_000_000,
    };
    let customer: Customer =
        gateway.json(Method::POST, "/api/customers", Some(&customer), StatusCode::CREATED).await.unwrap();
    let sku = format!("SKU-{}", &tag[20..]);
    let product = Product { sku: sku.clone(), name: "Thing".into(), price: 100 };
    let _: Product = gateway.json(Method::POST, "/api/products", Some(&product), StatusCode::CREATED).await.unwrap();
    let _: StockLevel = gateway
        .json(Method::PUT, &format!("/api/inventory/{sku}"), Some(&SetStock { available: 5 }), StatusCode::OK)
        .await
        .unwrap();
    let order = CreateOrder { customer_id: customer.id, items: vec![Quantity { sku, quantity: 1 }] };
    // Payment learns the customer from an event; an authorization that
    // arrives first is retried until it has.
    let accepted: Accepted =
        gateway.json(Method::POST, "/api/orders", Some(&order), StatusCode::ACCEPTED).await.unwrap();
    accepted.id
}

#[allow(dead_code)]
pub(crate) async fn wait_approved(gateway: &Endpoint, id: Uuid) {
    let approved = polis_testkit::wait_for(Duration::from_secs(60), || async {
        gateway.get::<OrderView>(&format!("/api/orders/{id}")).await.is_ok_and(|o| o.status == OrderStatus::Approved)
    })
    .await;
    let order = gateway.get::<OrderView>(&format!("/api/orders/{id}")).await;
    assert!(approved.is_ok(), "order {id} not approved: {order:?}");
}
