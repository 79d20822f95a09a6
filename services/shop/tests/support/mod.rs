//! What both end-to-end suites do to the shop, whichever way it is
//! deployed: register customers, add products, place orders and wait for
//! their status through the gateway, and read what each participant did
//! about an order from its own API. The suites differ only in how they
//! start the shop and reach its services ([`Client::new`]), and in how they
//! silence or stop a service; the cases that need that ([`Client::times_out`],
//! [`Client::details_compose_and_degrade`]) and the race for the last units
//! ([`Client::last_units_race`]) are written once here.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use contracts::catalog::Product;
use contracts::customer::{Customer, RegisterCustomer};
use contracts::inventory::{Reservation, ReservationStatus, SetStock, StockLevel};
use contracts::order::{Accepted, CreateOrder, IDEMPOTENCY_KEY, OrderStatus, OrderView};
use contracts::order_history::{CustomerOrders, HistoryOrder};
use contracts::payment::{Payment, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentStatus};
use contracts::{Address, Quantity, RejectionReason};
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

    /// An order that passes every step: stock reserved, payment captured,
    /// shipment scheduled. Returns the customer, the order and its sku.
    pub(crate) async fn approved_order(&self) -> (Uuid, Uuid, String) {
        let customer = self.customer("DE", 1_000_000, "ok").await;
        let sku = self.product(250, 10).await;
        let id = self.order(customer, &[(&sku, 3)]).await;
        // A read that waits answers with the decision, as soon as it is made.
        let started = std::time::Instant::now();
        let decided: OrderView = self.gateway.get(&format!("/api/orders/{id}?wait_ms=20000")).await.unwrap();
        assert_eq!(decided.status, OrderStatus::Approved, "{decided:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "the wait ran to its end: {:?}", started.elapsed());
        let order = self.wait_status(id, OrderStatus::Approved).await;
        assert_eq!(order.total, 750);
        assert_eq!(order.reason, None);
        assert_eq!(self.stock(&sku).await, StockLevel { sku: sku.clone(), available: 7, reserved: 3 });
        assert_eq!(self.payment(id).await.unwrap().status, PaymentStatus::Captured);
        assert_eq!(self.shipment(id).await.unwrap().status, ShipmentStatus::Scheduled);
        (customer, id, sku)
    }

    /// Cancels an order from [`Client::approved_order`]: refund, release,
    /// cancel the shipment → CANCELLED; cancelling again is a 409.
    pub(crate) async fn cancel_approved(&self, id: Uuid, sku: &str) {
        let path = format!("/api/orders/{id}/cancel");
        let accepted: Accepted =
            self.gateway.json(Method::POST, &path, None::<&()>, StatusCode::ACCEPTED).await.unwrap();
        assert_eq!(accepted.status, OrderStatus::CancelPending);
        self.wait_status(id, OrderStatus::Cancelled).await;
        self.wait_undone(id, sku, 10).await;
        assert_eq!(self.payment(id).await.unwrap().status, PaymentStatus::Refunded);
        assert_eq!(self.shipment(id).await.unwrap().status, ShipmentStatus::Cancelled);
        let (status, body) = self.gateway.call(Method::POST, &path, None::<&()>).await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    }

    /// Each business rejection reason, with every compensation run: nothing
    /// reserved, nothing charged, nothing shipped; a rejected order cannot be
    /// cancelled.
    pub(crate) async fn rejections_compensate(&self) {
        let sku = self.product(500, 100).await;
        let scarce = self.product(500, 1).await;

        let rich = self.customer("DE", 1_000_000, "rich").await;
        let out_of_stock = self.order(rich, &[(&sku, 1), (&scarce, 2)]).await;
        let poor = self.customer("DE", 100, "poor").await;
        let over_limit = self.order(poor, &[(&sku, 1)]).await;
        let declined_customer = self.customer("DE", 1_000_000, "ann+decline").await;
        let declined = self.order(declined_customer, &[(&sku, 1)]).await;
        let penguin = self.customer("AQ", 1_000_000, "penguin").await;
        let undeliverable = self.order(penguin, &[(&sku, 1)]).await;

        for (id, reason) in [
            (out_of_stock, RejectionReason::OutOfStock),
            (over_limit, RejectionReason::CreditLimitExceeded),
            (declined, RejectionReason::PaymentDeclined),
            (undeliverable, RejectionReason::Undeliverable),
        ] {
            let order = self.wait_status(id, OrderStatus::Rejected).await;
            assert_eq!(order.reason, Some(reason), "{order:?}");
        }
        for id in [out_of_stock, over_limit, declined, undeliverable] {
            self.wait_undone(id, &sku, 100).await;
        }
        assert_eq!(self.stock(&scarce).await.available, 1);
        // Undeliverable got as far as an authorization, which was voided.
        assert_eq!(self.payment(undeliverable).await.unwrap().status, PaymentStatus::Voided);
        let (status, _) =
            self.gateway.call(Method::POST, &format!("/api/orders/{declined}/cancel"), None::<&()>).await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
    }

    /// The deadline case, on a shop whose shipping service never hears
    /// anything: an order waits for a shipment that never comes and is
    /// rejected with TIMEOUT; the reservation and the authorization it got
    /// before are released and voided.
    pub(crate) async fn times_out(&self) {
        // Shipping's replica never hears of customers either: `customer`
        // waits only on payment's.
        let customer = self.customer("DE", 1_000_000, "patient").await;
        let sku = self.product(100, 5).await;
        let id = self.order(customer, &[(&sku, 2)]).await;
        // Nothing decides it for seconds: a short wait answers PENDING when it ends.
        let started = std::time::Instant::now();
        let pending: OrderView = self.gateway.get(&format!("/api/orders/{id}?wait_ms=300")).await.unwrap();
        assert_eq!(pending.status, OrderStatus::Pending, "{pending:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "answered before the wait ended");
        for bad in ["abc", "30001", "-1"] {
            let (status, body) =
                self.gateway.call(Method::GET, &format!("/api/orders/{id}?wait_ms={bad}"), None::<&()>).await.unwrap();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "wait_ms={bad}: {problem}");
            assert_eq!(problem["errors"][0]["field"], "wait_ms", "{problem}");
        }
        let order = self.wait_status(id, OrderStatus::Rejected).await;
        assert_eq!(order.reason, Some(RejectionReason::Timeout), "{order:?}");
        self.wait_undone(id, &sku, 5).await;
        // Voided — or never authorized at all, if a loaded machine let an
        // earlier step's deadline pass first; never left authorized.
        let payment = self.payment(id).await.map(|p| p.status);
        assert!(matches!(payment, None | Some(PaymentStatus::Voided)), "payment {payment:?}");
        assert_eq!(self.reservation(id).await.map(|r| r.status), Some(ReservationStatus::Released));
        assert!(self.shipment(id).await.is_none(), "a silent shipping service scheduled a shipment");
    }

    /// API composition: an approved order's details hold every part; with
    /// the payment service down (`payment_down` takes it down and returns
    /// the gateway to ask then) they still answer, without the payment; an
    /// unknown order is a 404 problem.
    pub(crate) async fn details_compose_and_degrade(&self, payment_down: impl AsyncFnOnce() -> Endpoint) {
        let customer = self.customer("FR", 1_000_000, "composed").await;
        let sku = self.product(400, 10).await;
        let id = self.order(customer, &[(&sku, 2)]).await;
        self.wait_status(id, OrderStatus::Approved).await;
        let path = format!("/api/orders/{id}/details");

        let details: serde_json::Value = self.gateway.get(&path).await.unwrap();
        assert_eq!(details["order"]["status"], "APPROVED", "{details}");
        assert_eq!(details["customer"]["id"], customer.to_string(), "{details}");
        assert_eq!(details["products"][0]["sku"], sku, "{details}");
        assert_eq!(details["payment"]["status"], "CAPTURED", "{details}");
        assert_eq!(details["shipment"]["status"], "SCHEDULED", "{details}");
        assert_eq!(details["partial"], serde_json::json!([]), "{details}");

        let gateway = payment_down().await;
        let details: serde_json::Value = gateway.get(&path).await.unwrap();
        assert_eq!(details["partial"], serde_json::json!(["payment"]), "{details}");
        assert!(details["payment"].is_null(), "{details}");
        assert_eq!(details["order"]["id"], id.to_string(), "{details}");
        assert_eq!(details["customer"]["id"], customer.to_string(), "{details}");
        assert_eq!(details["products"][0]["sku"], sku, "{details}");
        assert_eq!(details["shipment"]["status"], "SCHEDULED", "{details}");

        let unknown = format!("/api/orders/{}/details", Uuid::now_v7());
        let (status, body) = gateway.call(Method::GET, &unknown, None::<&()>).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    }

    /// Many concurrent orders for the last units of a sku: exactly as many
    /// are approved as there are units, the rest are out of stock, and the
    /// units end up reserved, none oversold.
    pub(crate) async fn last_units_race(&self) {
        let customer = self.customer("DE", 1_000_000_000, "crowd").await;
        let sku = self.product(10, 10).await;
        let items = [(sku.as_str(), 1)];
        let ids: Vec<Uuid> = futures::future::join_all((0..50).map(|_| self.order(customer, &items))).await;
        let mut outcomes = HashMap::new();
        for id in ids {
            let result =
                polis_testkit::wait_for(PATIENCE * 2, || async { self.get_order(id).await.status.is_terminal() }).await;
            let order = self.get_order(id).await;
            assert!(result.is_ok(), "order {id} stuck: {order:?}");
            *outcomes.entry((order.status, order.reason)).or_insert(0) += 1;
        }
        let expected = HashMap::from([
            ((OrderStatus::Approved, None), 10),
            ((OrderStatus::Rejected, Some(RejectionReason::OutOfStock)), 40),
        ]);
        assert_eq!(outcomes, expected);
        assert_eq!(self.stock(&sku).await, StockLevel { sku, available: 0, reserved: 10 });
    }

    /// Placing is safe to retry: repeats of a request with its idempotency
    /// key, also many at once, answer with the one order placed (and its
    /// current status), marked as replays; keys are per customer; the key
    /// with another request, and a malformed key, are refused.
    pub(crate) async fn retries_place_once(&self) {
        let customer = self.customer("DE", 1_000_000, "retry").await;
        let sku = self.product(100, 50).await;
        let request =
            |customer_id, quantity| CreateOrder { customer_id, items: vec![Quantity { sku: sku.clone(), quantity }] };
        let send = async |key: &str, body: &CreateOrder| {
            let answer = self
                .gateway
                .call_with(Method::POST, "/api/orders", &[(IDEMPOTENCY_KEY, key)], Some(body))
                .await
                .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            (answer, json)
        };
        let key = Uuid::now_v7().to_string();
        let body = request(customer, 2);
        let answers = futures::future::join_all((0..20).map(|_| send(&key, &body))).await;
        let mut ids = std::collections::HashSet::new();
        for (answer, json) in &answers {
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{json}");
            let id = json["id"].as_str().unwrap();
            assert_eq!(answer.location.as_deref(), Some(format!("/api/orders/{id}").as_str()), "{answer:?}");
            ids.insert(id.to_owned());
        }
        assert_eq!(ids.len(), 1, "one key, one order: {answers:?}");
        let replays = answers.iter().filter(|(answer, _)| answer.replayed).count();
        assert_eq!(replays, 19, "every answer but the first is marked a replay: {answers:?}");
        let id: Uuid = ids.into_iter().next().unwrap().parse().unwrap();
        self.wait_status(id, OrderStatus::Approved).await;

        let (again, json) = send(&key, &body).await;
        assert_eq!((again.status, json["id"].as_str()), (StatusCode::ACCEPTED, Some(id.to_string().as_str())));
        assert!(again.replayed, "{again:?}");
        assert_eq!(json["status"], "APPROVED", "a repeat answers with the current status: {json}");
        let orders = self.customer_orders(customer, &[id]).await;
        assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), [id]);

        // Keys are per customer: another customer's same key places an order of its own.
        let other = self.customer("DE", 1_000_000, "retry-other").await;
        let (theirs, json) = send(&key, &request(other, 2)).await;
        assert_eq!(theirs.status, StatusCode::ACCEPTED, "{json}");
        assert!(!theirs.replayed, "{theirs:?}");
        let their_id: Uuid = json["id"].as_str().unwrap().parse().unwrap();
        assert_ne!(their_id, id);
        self.wait_status(their_id, OrderStatus::Approved).await;
        assert_eq!(self.stock(&sku).await, StockLevel { sku: sku.clone(), available: 46, reserved: 4 });

        let (answer, json) = send(&key, &request(customer, 3)).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
        assert_eq!(json["type"], "https://polis.dev/problems/idempotency-key-reused", "{json}");
        for bad in [String::new(), "k".repeat(256), "two words".to_owned()] {
            let (answer, json) = send(&bad, &request(customer, 1)).await;
            assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {json}");
            assert_eq!(json["errors"][0]["field"], "Idempotency-Key", "{json}");
        }
        let orders = self.customer_orders(customer, &[id]).await;
        assert_eq!(orders.len(), 1, "refused requests place nothing: {orders:?}");
    }

    /// Every order of `customer` in the order-history view, read page by
    /// page through the gateway once the view shows each of `placed` (it
    /// follows the order service's events; `order=&wait_ms=` waits for one).
    pub(crate) async fn customer_orders(&self, customer: Uuid, placed: &[Uuid]) -> Vec<HistoryOrder> {
        let path = format!("/api/customers/{customer}/orders");
        for id in placed {
            let shown: CustomerOrders =
                self.gateway.get(&format!("{path}?order={id}&wait_ms=10000&limit=1")).await.unwrap();
            assert!(shown.freshness.position > 0, "{shown:?}");
        }
        let mut all: Vec<HistoryOrder> = Vec::new();
        loop {
            let after = all.last().map(|o| format!("&after={}", o.id)).unwrap_or_default();
            let page: CustomerOrders = self.gateway.get(&format!("{path}?limit=2{after}")).await.unwrap();
            let full = page.orders.len() == 2;
            all.extend(page.orders);
            if !full {
                return all;
            }
        }
    }

    /// The order-history view follows every service: an approved order
    /// shows its customer's and products' names, its payment and shipment;
    /// renaming the product or the customer shows on the order; the view
    /// filters by status and says how fresh it is.
    pub(crate) async fn the_view_follows_every_service(&self) {
        let customer = self.customer("NL", 1_000_000, "view").await;
        let sku = self.product(250, 100).await;
        let id = self.order(customer, &[(&sku, 2)]).await;
        self.wait_status(id, OrderStatus::Approved).await;

        // Temporal queries through the gateway: the order as it was, and its stream.
        let then: OrderView = self.gateway.get(&format!("/api/orders/{id}?version=1")).await.unwrap();
        assert_eq!(then.status, OrderStatus::Pending);
        let now: OrderView = self.gateway.get(&format!("/api/orders/{id}?version=2")).await.unwrap();
        assert_eq!(now.status, OrderStatus::Approved);
        let at = then.updated_at.replace('+', "%2B");
        let at_creation: OrderView = self.gateway.get(&format!("/api/orders/{id}?as_of={at}")).await.unwrap();
        assert_eq!(at_creation.status, OrderStatus::Pending);
        let events: Vec<contracts::order::OrderEvent> =
            self.gateway.get(&format!("/api/orders/{id}/events")).await.unwrap();
        let types: Vec<_> = events.iter().map(|e| (e.event_type.as_str(), e.version)).collect();
        assert_eq!(types, [("order.order-created.v1", 1), ("order.order-approved.v1", 2)]);

        let path = format!("/api/customers/{customer}/orders");
        let shown = |check: fn(&HistoryOrder) -> bool| {
            let path = path.clone();
            async move {
                let read = async || -> CustomerOrders {
                    self.gateway.get(&format!("{path}?order={id}&wait_ms=1000")).await.unwrap()
                };
                let result =
                    polis_testkit::wait_for(PATIENCE, || async { read().await.orders.iter().any(check) }).await;
                let view = read().await;
                assert!(result.is_ok(), "the view never showed it: {view:#?}");
                view
            }
        };
        let view = shown(|o| {
            o.status == OrderStatus::Approved
                && o.payment_status == Some(PaymentStatus::Captured)
                && o.shipment_status == Some(ShipmentStatus::Scheduled)
        })
        .await;
        let order = &view.orders[0];
        assert_eq!((order.id, order.customer_id, order.total), (id, customer, 500));
        assert_eq!(order.customer_name.as_deref(), Some("Test Customer"));
        assert!(order.customer_email.as_deref().is_some_and(|e| e.starts_with("view@")), "{order:?}");
        let items: Vec<_> =
            order.items.iter().map(|i| (i.sku.as_str(), i.product_name.as_deref(), i.quantity, i.unit_price)).collect();
        assert_eq!(items, [(sku.as_str(), Some("Thing"), 2, 250)]);
        for source in ["order", "customer", "catalog", "payment", "shipping"] {
            assert!(view.freshness.sources.contains_key(source), "{source}: {:?}", view.freshness);
        }
        assert!(view.freshness.position > 0 && view.freshness.applied_at.is_some(), "{:?}", view.freshness);

        // Renames fan out to the order; its price stays the price at order time.
        let patch = serde_json::json!({ "name": "Renamed thing", "price": 999 });
        let _: Product = self
            .gateway
            .json(Method::PATCH, &format!("/api/products/{sku}"), Some(&patch), StatusCode::OK)
            .await
            .unwrap();
        let rename = serde_json::json!({ "name": "Renamed Customer" });
        let _: Customer = self
            .gateway
            .json(Method::PUT, &format!("/api/customers/{customer}"), Some(&rename), StatusCode::OK)
            .await
            .unwrap();
        let view = shown(|o| {
            o.customer_name.as_deref() == Some("Renamed Customer")
                && o.items.iter().all(|i| i.product_name.as_deref() == Some("Renamed thing") && i.unit_price == 250)
        })
        .await;
        assert_eq!(view.orders.len(), 1);

        let by_status = async |status: &str| -> Vec<Uuid> {
            let view: CustomerOrders = self.gateway.get(&format!("{path}?status={status}")).await.unwrap();
            view.orders.iter().map(|o| o.id).collect()
        };
        assert_eq!(by_status("APPROVED").await, [id]);
        assert!(by_status("REJECTED").await.is_empty());
        let (status, _) = self.gateway.call(Method::GET, &format!("{path}?status=LOST"), None::<&()>).await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    /// A customer's orders through the gateway a page at a time, in the
    /// order they were placed; bad page parameters are 422s naming them.
    pub(crate) async fn customer_orders_are_paged(&self) {
        let customer = self.customer("DE", 1_000_000, "pages").await;
        let sku = self.product(100, 50).await;
        let mut placed = Vec::new();
        for _ in 0..5 {
            placed.push(self.order(customer, &[(&sku, 1)]).await);
        }
        // Another customer's orders are not listed.
        let other = self.customer("DE", 1_000_000, "pages-other").await;
        self.order(other, &[(&sku, 1)]).await;

        let path = format!("/api/customers/{customer}/orders");
        let all = self.customer_orders(customer, &placed).await;
        assert_eq!(all.iter().map(|o| o.id).collect::<Vec<_>>(), placed, "three pages, read to the end");
        assert!(all.iter().all(|o| o.customer_id == customer));
        let page = async |query: String| -> Vec<Uuid> {
            let orders: CustomerOrders = self.gateway.get(&format!("{path}?{query}")).await.unwrap();
            orders.orders.iter().map(|o| o.id).collect()
        };
        assert_eq!(page("limit=2".into()).await, placed[..2]);
        assert_eq!(page(format!("limit=2&after={}", placed[1])).await, placed[2..4]);
        assert_eq!(page(format!("limit=2&after={}", placed[3])).await, placed[4..]);

        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("limit=10001", "limit"),
            ("after=nope", "after"),
        ] {
            let (status, body) = self.gateway.call(Method::GET, &format!("{path}?{query}"), None::<&()>).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
            assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
        }
    }
}

/// Every process of the distributed shop in this process, each on a free
/// loopback port: the business services at once, then the gateway over
/// their URLs (recorded in `config.upstreams`).
#[allow(dead_code)] // each test binary uses part of this module
pub(crate) async fn start_nodes(
    config: &mut shop::distributed::DistributedConfig,
) -> std::collections::BTreeMap<shop::Service, shop::distributed::Node> {
    use shop::Service;
    use shop::distributed::Node;
    for service in Service::ALL {
        config.listen.insert(service, std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)));
    }
    let started =
        futures::future::join_all(Service::BUSINESS.into_iter().map(|service| Node::start(service, config))).await;
    let mut nodes = std::collections::BTreeMap::new();
    for node in started {
        let node = node.unwrap();
        config.upstreams.insert(node.service(), node.url());
        nodes.insert(node.service(), node);
    }
    nodes.insert(Service::Gateway, Node::start(Service::Gateway, config).await.unwrap());
    nodes
}
