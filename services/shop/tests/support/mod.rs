//! What both end-to-end suites do to the shop, whichever way it is
//! deployed: register customers, add products, place orders and wait for
//! their status through the gateway, and read what each participant did
//! about an order from its own API. The suites differ only in how they
//! start the shop and reach its services ([`Client::new`]).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{Reservation, ReservationStatus, SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, OrderStatus, OrderView};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, Quantity};
use serde::de::DeserializeOwned;
use shop::client::Endpoint;
use uuid::Uuid;

/// How long a test waits for the shop to converge: replicas, decisions,
/// compensations.
const PATIENCE: Duration = Duration::from_secs(30);

/// The gateway, and the services whose own APIs tell what they did.
pub(crate) struct Client {
    pub(crate) gateway: Endpoint,
    inventory: Endpoint,
    payment: Endpoint,
    shipping: Endpoint,
}

impl Client {
    pub(crate) fn new(gateway: Endpoint, inventory: Endpoint, payment: Endpoint, shipping: Endpoint) -> Self {
        Self { gateway, inventory, payment, shipping }
    }

    /// Registers a customer and waits until payment has its replica.
    pub(crate) async fn customer(&self, country: &str, credit_limit: i64, email_local: &str) -> Uuid {
        let body = RegisterCustomer {
            name: "Test Customer".into(),
            // Unique per customer, keeping the local part (the `+decline` rule reads it).
            email: format!("{email_local}@c{}.example.com", Uuid::now_v7().simple()),
            address: Address {
                line1: "1 Test Road".into(),
                city: "Testville".into(),
                postal_code: "12345".into(),
                country: country.into(),
            },
            credit_limit,
        };
        let customer: Customer =
            self.gateway.json(Method::POST, "/api/customers", Some(&body), StatusCode::CREATED).await.unwrap();
        // Payment and shipping learn customers from events.
        let path = format!("/credit/{}", customer.id);
        polis_testkit::wait_for(Duration::from_secs(20), || async {
            self.payment.call(Method::GET, &path, None::<&()>).await.unwrap().0 == StatusCode::OK
        })
        .await
        .unwrap();
        customer.id
    }

    /// Adds a product with a fresh sku and `stock` units available.
    pub(crate) async fn product(&self, price: i64, stock: i64) -> String {
        let sku = format!("SKU-{}", &Uuid::now_v7().simple().to_string()[20..]);
        let product = Product { sku: sku.clone(), name: "Thing".into(), price };
        let _: Product =
            self.gateway.json(Method::POST, "/api/products", Some(&product), StatusCode::CREATED).await.unwrap();
        let path = format!("/api/inventory/{sku}");
        let _: StockLevel =
            self.gateway.json(Method::PUT, &path, Some(&SetStock { available: stock }), StatusCode::OK).await.unwrap();
        sku
    }

    /// Places an order; it must be accepted as PENDING.
    pub(crate) async fn order(&self, customer_id: Uuid, items: &[(&str, i64)]) -> Uuid {
        let body = CreateOrder {
            customer_id,
            items: items.iter().map(|(sku, quantity)| Quantity { sku: (*sku).into(), quantity: *quantity }).collect(),
        };
        let accepted: Accepted =
            self.gateway.json(Method::POST, "/api/orders", Some(&body), StatusCode::ACCEPTED).await.unwrap();
        assert_eq!(accepted.status, OrderStatus::Pending);
        accepted.id
    }

    pub(crate) async fn get_order(&self, id: Uuid) -> OrderView {
        self.gateway.get(&format!("/api/orders/{id}")).await.unwrap()
    }

    pub(crate) async fn wait_status(&self, id: Uuid, status: OrderStatus) -> OrderView {
        let result = polis_testkit::wait_for(PATIENCE, || async { self.get_order(id).await.status == status }).await;
        let order = self.get_order(id).await;
        assert!(result.is_ok(), "order {id} never became {status:?}; it is {order:?}");
        order
    }

    pub(crate) async fn stock(&self, sku: &str) -> StockLevel {
        self.gateway.get(&format!("/api/inventory/{sku}")).await.unwrap()
    }

    /// What `service` answers at `path`, or `None` on anything but 200.
    async fn find<T: DeserializeOwned>(service: &Endpoint, path: String) -> Option<T> {
        let (status, body) = service.call(Method::GET, &path, None::<&()>).await.unwrap();
        (status == StatusCode::OK).then(|| serde_json::from_slice(&body).unwrap())
    }

    pub(crate) async fn payment(&self, order: Uuid) -> Option<Payment> {
        Self::find(&self.payment, format!("/payments/{order}")).await
    }

    pub(crate) async fn shipment(&self, order: Uuid) -> Option<Shipment> {
        Self::find(&self.shipping, format!("/shipments/{order}")).await
    }

    pub(crate) async fn reservation(&self, order: Uuid) -> Option<Reservation> {
        Self::find(&self.inventory, format!("/reservations/{order}")).await
    }

    /// Waits until the order's side effects are all undone, `sku` back at
    /// `initial` units available and none reserved.
    pub(crate) async fn wait_undone(&self, order: Uuid, sku: &str, initial: i64) {
        let result = polis_testkit::wait_for(PATIENCE, || async {
            let stock = self.stock(sku).await;
            let payment = self.payment(order).await.map(|p| p.status);
            let shipment = self.shipment(order).await.map(|s| s.status);
            let reservation = self.reservation(order).await.map(|r| r.status);
            stock.available == initial
                && stock.reserved == 0
                && payment != Some(PaymentStatus::Captured)
                && payment != Some(PaymentStatus::Authorized)
                && shipment != Some(ShipmentStatus::Scheduled)
                && reservation != Some(ReservationStatus::Reserved)
        })
        .await;
        assert!(
            result.is_ok(),
            "order {order} was not compensated: stock {:?}, payment {:?}, shipment {:?}, reservation {:?}",
            self.stock(sku).await,
            self.payment(order).await,
            self.shipment(order).await,
            self.reservation(order).await
        );
    }
}
