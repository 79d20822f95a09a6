//! The read side against its sources: the replicas of customers that the
//! payment and shipping services keep, and the order-history view, held
//! against the services they are built from, through their APIs
//! ([`Facts`]).
//!
//! | kind | when |
//! |---|---|
//! | `replica-missing` | a customer the customer service has is missing from payment's or shipping's replica |
//! | `replica-differs` | a replica holds another credit limit (payment) or address (shipping) than the customer service |
//! | `replica-without-source` | a replica holds a customer the customer service does not have |
//! | `view-missing-order` | a decided order is missing from the order-history view |
//! | `view-differs` | the view shows a decided order with another status, payment or shipment status, or customer name or email than their owners |
//! | `view-without-source` | the view shows an order the order service does not have |
//!
//! The subject of a replica's finding is `payment/<customer>` or
//! `shipping/<customer>`; a view's, the order id. None has a repair: a
//! replica or view that disagrees once it has settled is rebuilt from its
//! log (a projection's new generation), which is the operator's decision.
//!
//! The read side is read first and the sources last: whatever a replica or
//! the view shows was already in its source when the source was read. What
//! is still on its way (an event not yet applied, milliseconds) lasts less
//! than the auditor's settle time; orders not yet decided are not judged.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use contracts::customer::Customer;
use contracts::order::{OrderStatus, OrderView};
use contracts::order_history::HistoryOrder;
use contracts::payment::{Credit, Payment, PaymentStatus};
use contracts::shipping::{CustomerAddress, Shipment, ShipmentStatus};
use polis_audit::{BoxError, Finding, Rule, Scope};
use uuid::Uuid;

use crate::rules::{Facts, first_key};

/// A finding about the order `id`, born when it was created.
fn about(kind: &'static str, id: Uuid, detail: impl Into<String>) -> Finding {
    Finding::new(kind, id.to_string(), detail).born(crate::rules::born(id))
}

/// Every kind of finding of [`ReadSideAgrees`].
pub const KINDS: [&str; 6] = [
    "replica-missing",
    "replica-differs",
    "replica-without-source",
    "view-missing-order",
    "view-differs",
    "view-without-source",
];

/// The rule holding replicas and the view against their sources.
pub struct ReadSideAgrees {
    facts: Arc<dyn Facts>,
}

impl std::fmt::Debug for ReadSideAgrees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSideAgrees").finish_non_exhaustive()
    }
}

impl ReadSideAgrees {
    pub fn new(facts: Arc<dyn Facts>) -> Self {
        Self { facts }
    }
}

#[async_trait]
impl Rule for ReadSideAgrees {
    fn name(&self) -> &'static str {
        "read-side-agrees"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &KINDS
    }

    /// The replicas (one row per customer) are read whole by every pass;
    /// the view and its sources, keyed by order id, only from the pass's
    /// first key (see [`crate::rules::first_key`]).
    async fn check(&self, scope: Scope) -> Result<Vec<Finding>, BoxError> {
        let from = first_key(scope);
        let read = ReadSide {
            history: self.facts.history(from).await?,
            credit: self.facts.credit_replica().await?,
            addresses: self.facts.address_replica().await?,
        };
        let sources = Sources {
            customers: self.facts.customers().await?,
            orders: self.facts.orders(from).await?,
            payments: self.facts.payments(from).await?,
            shipments: self.facts.shipments(from).await?,
        };
        Ok(judge(&read, &sources))
    }
}

/// What the read side shows.
#[derive(Debug, Default)]
pub struct ReadSide {
    /// `None` when the shop runs without the order-history view.
    pub history: Option<Vec<HistoryOrder>>,
    pub credit: Vec<Credit>,
    pub addresses: Vec<CustomerAddress>,
}

/// What the read side is built from.
#[derive(Debug, Default)]
pub struct Sources {
    pub customers: Vec<Customer>,
    pub orders: Vec<OrderView>,
    pub payments: Vec<Payment>,
    pub shipments: Vec<Shipment>,
}

/// The findings over one reading.
pub fn judge(read: &ReadSide, sources: &Sources) -> Vec<Finding> {
    let customers: HashMap<Uuid, &Customer> = sources.customers.iter().map(|c| (c.id, c)).collect();
    let mut findings = Vec::new();

    let credit: HashMap<Uuid, i64> = read.credit.iter().map(|c| (c.customer_id, c.credit_limit)).collect();
    let addresses: HashMap<Uuid, &contracts::Address> =
        read.addresses.iter().map(|a| (a.customer_id, &a.address)).collect();
    for customer in &sources.customers {
        let id = customer.id;
        match credit.get(&id) {
            None => findings.push(Finding::new("replica-missing", format!("payment/{id}"), "not in payment's replica")),
            Some(&limit) if limit != customer.credit_limit => findings.push(Finding::new(
                "replica-differs",
                format!("payment/{id}"),
                format!("credit limit {limit}, the customer service's {}", customer.credit_limit),
            )),
            Some(_) => {}
        }
        match addresses.get(&id) {
            None => {
                findings.push(Finding::new("replica-missing", format!("shipping/{id}"), "not in shipping's replica"))
            }
            Some(&address) if address != &customer.address => findings.push(Finding::new(
                "replica-differs",
                format!("shipping/{id}"),
                format!("address {address:?}, the customer service's {:?}", customer.address),
            )),
            Some(_) => {}
        }
    }
    let unknown = |id: &Uuid| !customers.contains_key(id);
    for id in credit.keys().filter(|id| unknown(id)) {
        findings.push(Finding::new("replica-without-source", format!("payment/{id}"), "no such customer"));
    }
    for id in addresses.keys().filter(|id| unknown(id)) {
        findings.push(Finding::new("replica-without-source", format!("shipping/{id}"), "no such customer"));
    }

    let Some(history) = &read.history else { return findings };
    let orders: HashMap<Uuid, &OrderView> = sources.orders.iter().map(|o| (o.id, o)).collect();
    let viewed: HashMap<Uuid, &HistoryOrder> = history.iter().map(|o| (o.id, o)).collect();
    let payments: HashMap<Uuid, PaymentStatus> = sources.payments.iter().map(|p| (p.order_id, p.status)).collect();
    let shipments: HashMap<Uuid, ShipmentStatus> = sources.shipments.iter().map(|s| (s.order_id, s.status)).collect();
    let decided = |order: &&OrderView| {
        matches!(order.status, OrderStatus::Approved | OrderStatus::Rejected | OrderStatus::Cancelled)
    };
    for order in sources.orders.iter().filter(decided) {
        let Some(view) = viewed.get(&order.id) else {
            findings.push(about("view-missing-order", order.id, order.status.as_str()));
            continue;
        };
        let mut differences = Vec::new();
        let mut differs = |what: &str, shown: String, source: String| {
            if shown != source {
                differences.push(format!("{what} {shown}, its owner's {source}"));
            }
        };
        differs("status", format!("{:?}", view.status), format!("{:?}", order.status));
        differs("payment", format!("{:?}", view.payment_status), format!("{:?}", payments.get(&order.id)));
        differs("shipment", format!("{:?}", view.shipment_status), format!("{:?}", shipments.get(&order.id)));
        let customer = customers.get(&order.customer_id);
        differs("customer name", format!("{:?}", view.customer_name), format!("{:?}", customer.map(|c| &c.name)));
        differs("customer email", format!("{:?}", view.customer_email), format!("{:?}", customer.map(|c| &c.email)));
        if !differences.is_empty() {
            findings.push(about("view-differs", order.id, differences.join("; ")));
        }
    }
    for id in viewed.keys().filter(|id| !orders.contains_key(id)) {
        findings.push(about("view-without-source", *id, "no such order"));
    }
    findings
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use contracts::Address;

    use super::*;

    fn customer(limit: i64) -> Customer {
        let id = Uuid::now_v7();
        Customer {
            id,
            name: "Ada".into(),
            email: format!("{id}@example.com"),
            address: Address {
                line1: "1 Road".into(),
                city: "Polis".into(),
                postal_code: "1".into(),
                country: "DE".into(),
            },
            credit_limit: limit,
        }
    }

    fn replicated(customer: &Customer) -> (Credit, CustomerAddress) {
        (
            Credit { customer_id: customer.id, credit_limit: customer.credit_limit, exposure: 0 },
            CustomerAddress { customer_id: customer.id, address: customer.address.clone() },
        )
    }

    fn order(customer: &Customer, status: OrderStatus) -> OrderView {
        OrderView {
            id: Uuid::now_v7(),
            customer_id: customer.id,
            status,
            reason: None,
            items: Vec::new(),
            total: 100,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn viewed(order: &OrderView, customer: &Customer) -> HistoryOrder {
        HistoryOrder {
            id: order.id,
            customer_id: order.customer_id,
            status: order.status,
            reason: None,
            items: Vec::new(),
            total: order.total,
            customer_name: Some(customer.name.clone()),
            customer_email: Some(customer.email.clone()),
            payment_status: Some(PaymentStatus::Captured),
            shipment_status: Some(ShipmentStatus::Scheduled),
            placed_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn payment(order: &OrderView) -> Payment {
        Payment { order_id: order.id, customer_id: None, amount: 100, status: PaymentStatus::Captured, reason: None }
    }

    fn shipment(order: &OrderView) -> Shipment {
        Shipment {
            id: Uuid::now_v7(),
            order_id: order.id,
            status: ShipmentStatus::Scheduled,
            address: None,
            reason: None,
        }
    }

    fn kinds(findings: &[Finding]) -> Vec<(&'static str, String)> {
        let mut kinds: Vec<_> = findings.iter().map(|f| (f.kind, f.subject.clone())).collect();
        kinds.sort_unstable();
        kinds
    }

    /// A shop whose read side agrees: one customer, one approved order, one pending.
    fn agreeing() -> (ReadSide, Sources) {
        let ada = customer(1000);
        let (approved, pending) = (order(&ada, OrderStatus::Approved), order(&ada, OrderStatus::Pending));
        let (credit, address) = replicated(&ada);
        let history = Some(vec![viewed(&approved, &ada)]);
        let read = ReadSide { history, credit: vec![credit], addresses: vec![address] };
        let sources = Sources {
            payments: vec![payment(&approved)],
            shipments: vec![shipment(&approved)],
            customers: vec![ada],
            orders: vec![approved, pending],
        };
        (read, sources)
    }

    #[test]
    fn a_read_side_that_agrees_and_orders_in_flight_are_not_findings() {
        let (read, sources) = agreeing();
        assert!(judge(&read, &sources).is_empty(), "{:?}", judge(&read, &sources));
    }

    #[test]
    fn every_disagreement_is_a_finding_of_its_kind() {
        let (mut read, mut sources) = agreeing();
        let ada = sources.customers[0].id;
        read.credit[0].credit_limit = 5;
        read.addresses[0].address.city = "Elsewhere".into();
        let bob = customer(10);
        sources.customers.push(bob.clone());
        let ghost = customer(10);
        let (credit, address) = replicated(&ghost);
        read.credit.push(credit);
        read.addresses.push(address);
        let history = read.history.as_mut().unwrap();
        history[0].payment_status = Some(PaymentStatus::Refunded);
        let rejected = order(&sources.customers[0], OrderStatus::Rejected);
        let unknown = order(&ghost, OrderStatus::Approved);
        history.push(viewed(&unknown, &ghost));
        sources.orders.push(rejected.clone());
        let approved = sources.orders[0].id;

        let findings = judge(&read, &sources);
        let expected = [
            ("replica-differs", format!("payment/{ada}")),
            ("replica-differs", format!("shipping/{ada}")),
            ("replica-missing", format!("payment/{}", bob.id)),
            ("replica-missing", format!("shipping/{}", bob.id)),
            ("replica-without-source", format!("payment/{}", ghost.id)),
            ("replica-without-source", format!("shipping/{}", ghost.id)),
            ("view-differs", approved.to_string()),
            ("view-missing-order", rejected.id.to_string()),
            ("view-without-source", unknown.id.to_string()),
        ];
        let mut expected: Vec<_> = expected.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(kinds(&findings), expected);
        let differs = findings.iter().find(|f| f.kind == "view-differs").unwrap();
        assert_eq!(differs.detail, "payment Some(Refunded), its owner's Some(Captured)");
        assert!(findings.iter().all(|f| f.repair.is_none()));

        read.history = None;
        let without_view = judge(&read, &sources);
        assert!(without_view.iter().all(|f| f.kind.starts_with("replica-")), "{without_view:?}");
        assert_eq!(without_view.len(), 6);
    }
}
