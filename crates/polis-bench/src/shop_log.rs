//! A synthetic order-history log: the events the order-history service's
//! consumer ingests from the shop (customers, catalog, orders and their
//! payments and shipments), in the streams `Ingest` gives them
//! (`<source>/<key>`) and in a plausible order.
//!
//! The shop it describes: a catalog seeded with [`SEED_PRODUCTS`] products
//! and [`SEED_CUSTOMERS`] customers, then, event by event, new customers and
//! products, a few customer updates and renames, and orders, up to
//! [`IN_FLIGHT`] of them in flight at once (as in `polis demo`), each going
//! through one of the saga's outcomes. Popular products are ordered more
//! often (a skewed pick), so a rename's fan-out varies as in a real shop.
//! Deterministic: the same size gives the same log (ids included), so runs
//! of two builds read the same events.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use contracts::catalog::{Product, ProductAdded, ProductRenamed};
use contracts::customer::{Customer, CustomerRegistered, CustomerUpdated};
use contracts::order::{OrderApproved, OrderCancelRequested, OrderCancelled, OrderCreated, OrderRejected};
use contracts::payment::{Payment, PaymentChanged, PaymentStatus};
use contracts::shipping::{Shipment, ShipmentChanged, ShipmentStatus};
use contracts::{Address, OrderLine, RejectionReason, SagaStyle};
use polis_core::{MessageType, Metadata, NewEvent};
use serde::Serialize;
use uuid::Uuid;

/// Products in the catalog before the first order.
pub(crate) const SEED_PRODUCTS: u64 = 1_000;
/// Customers registered before the first order.
pub(crate) const SEED_CUSTOMERS: u64 = 500;
/// Orders in flight at once: their events interleave.
const IN_FLIGHT: usize = 32;
/// Per event after the seed, the chance that it is a new customer, a
/// customer update, a new product or a rename; the rest are order events.
const P_CUSTOMER_REGISTERED: f64 = 0.02;
const P_CUSTOMER_UPDATED: f64 = 0.004;
const P_PRODUCT_ADDED: f64 = 0.001;
const P_PRODUCT_RENAMED: f64 = 0.000_2;
/// Time between two events of the log.
const TICK_US: i64 = 2_000;

/// One event of the log and the stream it is appended to.
pub(crate) struct Entry {
    pub(crate) stream: String,
    pub(crate) event: NewEvent,
}

/// What a log holds: events per type, and order lines (counted as emitted).
#[derive(Debug, Default, Clone)]
pub(crate) struct Mix {
    pub(crate) by_type: BTreeMap<String, u64>,
    pub(crate) lines: u64,
}

impl Mix {
    pub(crate) fn events(&self) -> u64 {
        self.by_type.values().sum()
    }

    pub(crate) fn count(&self, event_type: &str) -> u64 {
        self.by_type.get(event_type).copied().unwrap_or(0)
    }
}

/// The log's events in order; an iterator of exactly the size asked for.
pub(crate) struct ShopLog {
    remaining: u64,
    rng: Rng,
    tick: i64,
    customers: Vec<Customer>,
    /// Sku and current name.
    products: Vec<(String, String)>,
    in_flight: Vec<VecDeque<Entry>>,
    /// Seed events not yet emitted.
    seed: VecDeque<Entry>,
    pub(crate) mix: Mix,
}

impl ShopLog {
    pub(crate) fn new(events: u64) -> Self {
        let mut log = Self {
            remaining: events,
            rng: Rng(0x005e_ed0f_0da1),
            tick: 0,
            customers: Vec::new(),
            products: Vec::new(),
            in_flight: Vec::new(),
            seed: VecDeque::new(),
            mix: Mix::default(),
        };
        for _ in 0..SEED_PRODUCTS {
            let entry = log.add_product();
            log.seed.push_back(entry);
        }
        for _ in 0..SEED_CUSTOMERS {
            let entry = log.register_customer();
            log.seed.push_back(entry);
        }
        log
    }

    fn next_entry(&mut self) -> Entry {
        if let Some(entry) = self.seed.pop_front() {
            return entry;
        }
        let roll = self.rng.unit();
        let mut threshold = P_CUSTOMER_REGISTERED;
        if roll < threshold {
            return self.register_customer();
        }
        threshold += P_CUSTOMER_UPDATED;
        if roll < threshold {
            return self.update_customer();
        }
        threshold += P_PRODUCT_ADDED;
        if roll < threshold {
            return self.add_product();
        }
        threshold += P_PRODUCT_RENAMED;
        if roll < threshold {
            return self.rename_product();
        }
        if self.in_flight.len() < IN_FLIGHT {
            return self.place_order();
        }
        let i = self.rng.below(self.in_flight.len() as u64) as usize;
        let entry = self.in_flight[i].pop_front().expect("orders in flight have events left");
        if self.in_flight[i].is_empty() {
            self.in_flight.swap_remove(i);
        }
        entry
    }

    /// An event at the log's clock, with a deterministic UUIDv7 id.
    fn entry<T: MessageType + Serialize>(&mut self, source: &str, key: &str, body: &T) -> Entry {
        let millis = u64::try_from(self.time().timestamp_millis()).unwrap_or(0);
        let data = serde_json::to_value(body).expect("contract types serialize");
        let event = NewEvent {
            id: self.uuid(millis),
            event_type: T::TYPE.to_owned(),
            schema_version: 1,
            time: self.time(),
            data,
            metadata: Metadata {
                correlation_id: Some(self.uuid(millis)),
                causation_id: Some(self.uuid(millis)),
                traceparent: None,
            },
        };
        Entry { stream: format!("{source}/{key}"), event }
    }

    fn time(&self) -> DateTime<Utc> {
        // 2026-01-01T00:00:00Z, then one tick per event.
        DateTime::from_timestamp_micros(1_767_225_600_000_000 + self.tick * TICK_US).unwrap_or_default()
    }

    fn uuid(&mut self, millis: u64) -> Uuid {
        let mut bytes = [0_u8; 10];
        bytes[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.rng.next().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
    }

    fn register_customer(&mut self) -> Entry {
        let n = self.customers.len();
        let millis = u64::try_from(self.time().timestamp_millis()).unwrap_or(0);
        let customer = Customer {
            id: self.uuid(millis),
            name: format!("Customer {n}"),
            email: format!("customer{n}@example.com"),
            address: Address {
                line1: format!("{} Main Street", n % 500 + 1),
                city: "Springfield".to_owned(),
                postal_code: format!("{:05}", n % 100_000),
                country: "US".to_owned(),
            },
            credit_limit: 1_000_000,
        };
        self.customers.push(customer.clone());
        self.entry("customer", &customer.id.to_string(), &CustomerRegistered { customer, version: 1 })
    }

    fn update_customer(&mut self) -> Entry {
        let i = self.rng.below(self.customers.len() as u64) as usize;
        let customer = &mut self.customers[i];
        customer.name = format!("Customer {i} ({})", self.tick);
        customer.email = format!("customer{i}.{}@example.com", self.tick);
        let customer = customer.clone();
        // Later than the registration and every earlier update: the tick only grows.
        let version = u64::try_from(self.tick).unwrap_or(0) + 2;
        self.entry("customer", &customer.id.to_string(), &CustomerUpdated { customer, version })
    }

    fn add_product(&mut self) -> Entry {
        let n = self.products.len();
        let product = Product {
            sku: format!("sku-{n:05}"),
            name: format!("Product {n}"),
            price: 100 + i64::try_from(self.rng.below(9_900)).unwrap_or(0),
        };
        self.products.push((product.sku.clone(), product.name.clone()));
        self.entry("catalog", &product.sku.clone(), &ProductAdded { product })
    }

    fn rename_product(&mut self) -> Entry {
        let i = self.pick_product();
        let (sku, old_name) = self.products[i].clone();
        let new_name = format!("Product {i} ({})", self.tick);
        self.products[i].1.clone_from(&new_name);
        self.entry("catalog", &sku.clone(), &ProductRenamed { sku, old_name, new_name })
    }

    /// A product, popular ones (the catalog's first) more often.
    fn pick_product(&mut self) -> usize {
        let u = self.rng.unit();
        ((u * u * self.products.len() as f64) as usize).min(self.products.len() - 1)
    }

    /// Emits the order's `OrderCreated` and queues the rest of its life.
    fn place_order(&mut self) -> Entry {
        let customer = self.customers[self.rng.below(self.customers.len() as u64) as usize].clone();
        let millis = u64::try_from(self.time().timestamp_millis()).unwrap_or(0);
        let order_id = self.uuid(millis);
        let lines: Vec<OrderLine> = (0..1 + self.rng.below(5))
            .map(|_| OrderLine {
                sku: {
                    let i = self.pick_product();
                    self.products[i].0.clone()
                },
                quantity: 1 + i64::try_from(self.rng.below(3)).unwrap_or(0),
                unit_price: 100 + i64::try_from(self.rng.below(9_900)).unwrap_or(0),
            })
            .collect();
        let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
        let key = order_id.to_string();
        let created = self.entry(
            "order",
            &key,
            &OrderCreated { order_id, customer_id: customer.id, lines, total, saga: Some(SagaStyle::Orchestration) },
        );

        // Outcomes: 80% approved (1 in 20 of them cancelled later), 8% out of
        // stock, 6% over the credit limit, 3% payment declined, 3% undeliverable.
        let outcome = self.rng.below(100);
        let mut rest = VecDeque::new();
        let payment = |status, reason| PaymentChanged {
            payment: Payment { order_id, customer_id: Some(customer.id), amount: total, status, reason },
        };
        let shipment_id = self.uuid(millis);
        let shipment = |status, reason| ShipmentChanged {
            shipment: Shipment { id: shipment_id, order_id, status, address: Some(customer.address.clone()), reason },
        };
        let rejected = |reason| OrderRejected { order_id, reason, saga: Some(SagaStyle::Orchestration) };
        match outcome {
            0..80 => {
                rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Authorized, None)));
                rest.push_back(self.entry("shipping", &key, &shipment(ShipmentStatus::Scheduled, None)));
                rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Captured, None)));
                rest.push_back(self.entry("order", &key, &OrderApproved { order_id }));
                if self.rng.below(20) == 0 {
                    let request = OrderCancelRequested { order_id, saga: Some(SagaStyle::Orchestration) };
                    rest.push_back(self.entry("order", &key, &request));
                    rest.push_back(self.entry("shipping", &key, &shipment(ShipmentStatus::Cancelled, None)));
                    rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Refunded, None)));
                    rest.push_back(self.entry("order", &key, &OrderCancelled { order_id }));
                }
            }
            80..88 => rest.push_back(self.entry("order", &key, &rejected(RejectionReason::OutOfStock))),
            88..97 => {
                let reason =
                    if outcome < 94 { RejectionReason::CreditLimitExceeded } else { RejectionReason::PaymentDeclined };
                rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Failed, Some(reason))));
                rest.push_back(self.entry("order", &key, &rejected(reason)));
            }
            _ => {
                let reason = RejectionReason::Undeliverable;
                rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Authorized, None)));
                rest.push_back(self.entry("shipping", &key, &shipment(ShipmentStatus::Failed, Some(reason))));
                rest.push_back(self.entry("payment", &key, &payment(PaymentStatus::Voided, None)));
                rest.push_back(self.entry("order", &key, &rejected(reason)));
            }
        }
        self.in_flight.push(rest);
        created
    }
}

impl Iterator for ShopLog {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.tick += 1;
        let entry = self.next_entry();
        *self.mix.by_type.entry(entry.event.event_type.clone()).or_default() += 1;
        if entry.event.event_type == OrderCreated::TYPE {
            self.mix.lines += entry.event.data["lines"].as_array().map_or(0, |l| l.len() as u64);
        }
        Some(entry)
    }
}

/// splitmix64: small, fast and deterministic; no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}
