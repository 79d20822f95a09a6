//! The shop's reconciliation rules: what must agree across the order,
//! inventory, payment and shipping services, read through their APIs
//! ([`Facts`]).
//!
//! | kind | when | repair |
//! |---|---|---|
//! | `approved-order-without-reservation` | an APPROVED order whose stock is not reserved | — |
//! | `approved-order-without-capture` | an APPROVED order whose payment is not captured | — |
//! | `approved-order-without-shipment` | an APPROVED order with no scheduled shipment | — |
//! | `undone-order-keeps-reservation` | a REJECTED or CANCELLED order whose stock is still reserved | `ReleaseStock` |
//! | `undone-order-keeps-authorization` | … whose payment is still authorized | `VoidPayment` |
//! | `undone-order-keeps-capture` | … whose payment is captured | `RefundPayment` |
//! | `undone-order-keeps-shipment` | … whose shipment is still scheduled | `CancelShipment` |
//! | `reservation-without-order` | stock reserved for an order the order service does not have | `ReleaseStock` |
//! | `payment-without-order` | a payment authorized or captured for no order | `VoidPayment` / `RefundPayment` |
//! | `shipment-without-order` | a shipment scheduled for no order | `CancelShipment` |
//! | `reserved-stock-differs` | a sku's reserved stock is not the sum of its reservations | — |
//!
//! Most passes are recent (`polis_audit::Scope`): they read only the
//! orders created since the pass's start, and what the other services hold
//! for them, as one range of each list (all page by order id, a UUIDv7).
//! The stock's totals, which need every reservation, only full passes judge.
//!
//! Work in flight is not judged: a PENDING or CANCEL_PENDING order is
//! skipped, and the facts are read in the order that makes a fact about an
//! order always find its order (reservations, payments and shipments first,
//! orders last: an order exists before anything is done for it). What is
//! still converging (a rejected order's compensations on their way) lasts
//! less than the auditor's settle time. Every repair is a command the
//! owning service already takes from the create-order saga, keyed by the
//! order and idempotent there, so one that races the saga's own is
//! harmless.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use contracts::inventory::{ReleaseStock, Reservation, ReservationStatus, StockLevel};
use contracts::order::{OrderStatus, OrderView};
use contracts::payment::{Payment, PaymentStatus, RefundPayment, VoidPayment};
use contracts::shipping::{CancelShipment, Shipment, ShipmentStatus};
use polis_audit::{BoxError, Finding, Rule, Scope};
use polis_core::{Message, MessageType};
use uuid::Uuid;

use crate::SERVICE;

/// Every kind of finding of [`OrdersAgree`].
pub const KINDS: [&str; 11] = [
    "approved-order-without-reservation",
    "approved-order-without-capture",
    "approved-order-without-shipment",
    "undone-order-keeps-reservation",
    "undone-order-keeps-authorization",
    "undone-order-keeps-capture",
    "undone-order-keeps-shipment",
    "reservation-without-order",
    "payment-without-order",
    "shipment-without-order",
    "reserved-stock-differs",
];

/// Where the rules read the other services' facts: their APIs' admin
/// lists, every page.
#[async_trait]
pub trait Facts: Send + Sync + 'static {
    /// Every order (the order service) whose id is at least `from`, if
    /// given; ids are UUIDv7, so that is the orders created since a time
    /// (see [`first_key`]). The same for the lists of reservations,
    /// payments, shipments and the view below, all keyed by order id.
    async fn orders(&self, from: Option<Uuid>) -> Result<Vec<OrderView>, BoxError>;
    /// Every reservation (the inventory service).
    async fn reservations(&self, from: Option<Uuid>) -> Result<Vec<Reservation>, BoxError>;
    /// Every sku's stock (the inventory service).
    async fn stock(&self) -> Result<Vec<StockLevel>, BoxError>;
    /// Every payment (the payment service).
    async fn payments(&self, from: Option<Uuid>) -> Result<Vec<Payment>, BoxError>;
    /// Every shipment (the shipping service).
    async fn shipments(&self, from: Option<Uuid>) -> Result<Vec<Shipment>, BoxError>;
    /// Every customer (the customer service).
    async fn customers(&self) -> Result<Vec<contracts::customer::Customer>, BoxError>;
    /// Every customer's credit as the payment service's replica has it.
    async fn credit_replica(&self) -> Result<Vec<contracts::payment::Credit>, BoxError>;
    /// Every customer's address as the shipping service's replica has it.
    async fn address_replica(&self) -> Result<Vec<contracts::shipping::CustomerAddress>, BoxError>;
    /// Every order as the order-history view shows it; `None` when the
    /// shop runs without the view.
    async fn history(
        &self,
        from: Option<Uuid>,
    ) -> Result<Option<Vec<contracts::order_history::HistoryOrder>>, BoxError>;
}

/// The rule comparing orders with what the other services hold for them.
pub struct OrdersAgree {
    facts: Arc<dyn Facts>,
}

impl std::fmt::Debug for OrdersAgree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersAgree").finish_non_exhaustive()
    }
}

impl OrdersAgree {
    pub fn new(facts: Arc<dyn Facts>) -> Self {
        Self { facts }
    }
}

fn command<T: MessageType>(target: &str, order_id: Uuid, body: &T) -> Result<Message, BoxError> {
    Ok(Message::command(SERVICE, target, T::TYPE, &order_id.to_string(), serde_json::to_value(body)?))
}

fn release(order_id: Uuid) -> Result<Message, BoxError> {
    command(contracts::inventory::SERVICE, order_id, &ReleaseStock { order_id })
}

/// The command that gives back a payment in `status`, if it holds money.
fn give_back(order_id: Uuid, status: PaymentStatus) -> Result<Option<Message>, BoxError> {
    let target = contracts::payment::SERVICE;
    Ok(match status {
        PaymentStatus::Authorized => Some(command(target, order_id, &VoidPayment { order_id })?),
        PaymentStatus::Captured => Some(command(target, order_id, &RefundPayment { order_id })?),
        _ => None,
    })
}

fn cancel_shipment(order_id: Uuid) -> Result<Message, BoxError> {
    command(contracts::shipping::SERVICE, order_id, &CancelShipment { order_id })
}

#[async_trait]
impl Rule for OrdersAgree {
    fn name(&self) -> &'static str {
        "orders-agree"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &KINDS
    }

    /// A recent pass reads the orders created since its start and what
    /// the other services hold for them (lists page by order id, so that
    /// is a range of each); the stock, whose totals need every
    /// reservation, only a full pass reads.
    async fn check(&self, scope: Scope) -> Result<Vec<Finding>, BoxError> {
        let from = first_key(scope);
        // Everything done for an order is read before the orders: each one's
        // order is then in the list, whenever it was placed.
        let reservations = self.facts.reservations(from).await?;
        let stock = match scope {
            Scope::Full => self.facts.stock().await?,
            Scope::Recent { .. } => Vec::new(),
        };
        let payments = self.facts.payments(from).await?;
        let shipments = self.facts.shipments(from).await?;
        let orders = self.facts.orders(from).await?;
        judge(&orders, &reservations, &stock, &payments, &shipments)
    }
}

/// A finding about the order `id`, born when the order was created.
fn about(kind: &'static str, id: Uuid, detail: impl Into<String>) -> Finding {
    Finding::new(kind, id.to_string(), detail).born(born(id))
}

/// When the order `id` was created, as its UUIDv7 says (its first 48 bits,
/// milliseconds since the epoch): lists page by order id, so this is the
/// order in which a recent pass reads them (see [`first_key`]).
pub fn born(id: Uuid) -> DateTime<Utc> {
    let millis = i64::try_from(id.as_u128() >> 80).unwrap_or(i64::MAX);
    DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The smallest order id a pass of `scope` reads: `None` (every id) for a
/// full pass; for a recent one, the smallest id of an order created at
/// or after its start, so that exactly the ids [`born`] since then are read.
pub fn first_key(scope: Scope) -> Option<Uuid> {
    match scope {
        Scope::Full => None,
        Scope::Recent { since } => Some(Uuid::from_u128(u128::try_from(since.timestamp_millis()).unwrap_or(0) << 80)),
    }
}

/// The findings over one reading of the facts (the stock left out, and
/// with it the stock's totals, in a recent pass).
pub fn judge(
    orders: &[OrderView],
    reservations: &[Reservation],
    stock: &[StockLevel],
    payments: &[Payment],
    shipments: &[Shipment],
) -> Result<Vec<Finding>, BoxError> {
    let orders: HashMap<Uuid, &OrderView> = orders.iter().map(|o| (o.id, o)).collect();
    let reservation: HashMap<Uuid, ReservationStatus> = reservations.iter().map(|r| (r.order_id, r.status)).collect();
    let payment: HashMap<Uuid, PaymentStatus> = payments.iter().map(|p| (p.order_id, p.status)).collect();
    let shipment: HashMap<Uuid, ShipmentStatus> = shipments.iter().map(|s| (s.order_id, s.status)).collect();
    let mut findings = Vec::new();

    for order in orders.values() {
        let id = order.id;
        let (reserved, paid, shipped) = (reservation.get(&id), payment.get(&id), shipment.get(&id));
        let seen = || format!("reservation {reserved:?}, payment {paid:?}, shipment {shipped:?}");
        match order.status {
            OrderStatus::Approved => {
                if reserved != Some(&ReservationStatus::Reserved) {
                    findings.push(about("approved-order-without-reservation", id, format!("APPROVED, {}", seen())));
                }
                if paid != Some(&PaymentStatus::Captured) {
                    findings.push(about("approved-order-without-capture", id, format!("APPROVED, {}", seen())));
                }
                if shipped != Some(&ShipmentStatus::Scheduled) {
                    findings.push(about("approved-order-without-shipment", id, format!("APPROVED, {}", seen())));
                }
            }
            OrderStatus::Rejected | OrderStatus::Cancelled => {
                let detail = format!("{}, {}", order.status.as_str(), seen());
                if reserved == Some(&ReservationStatus::Reserved) {
                    findings
                        .push(about("undone-order-keeps-reservation", id, detail.clone()).repaired_by(release(id)?));
                }
                if let Some(&status) = paid
                    && let Some(repair) = give_back(id, status)?
                {
                    let kind = if status == PaymentStatus::Captured {
                        "undone-order-keeps-capture"
                    } else {
                        "undone-order-keeps-authorization"
                    };
                    findings.push(about(kind, id, detail.clone()).repaired_by(repair));
                }
                if shipped == Some(&ShipmentStatus::Scheduled) {
                    findings.push(about("undone-order-keeps-shipment", id, detail).repaired_by(cancel_shipment(id)?));
                }
            }
            // In flight: the saga is still at work.
            OrderStatus::Pending | OrderStatus::CancelPending => {}
        }
    }

    for r in reservations.iter().filter(|r| r.status == ReservationStatus::Reserved) {
        if !orders.contains_key(&r.order_id) {
            let finding = about("reservation-without-order", r.order_id, "stock reserved for no order");
            findings.push(finding.repaired_by(release(r.order_id)?));
        }
    }
    for p in payments {
        if !orders.contains_key(&p.order_id)
            && let Some(repair) = give_back(p.order_id, p.status)?
        {
            let detail = format!("a payment {:?} for no order", p.status);
            findings.push(about("payment-without-order", p.order_id, detail).repaired_by(repair));
        }
    }
    for s in shipments.iter().filter(|s| s.status == ShipmentStatus::Scheduled) {
        if !orders.contains_key(&s.order_id) {
            let finding = about("shipment-without-order", s.order_id, "a shipment scheduled for no order");
            findings.push(finding.repaired_by(cancel_shipment(s.order_id)?));
        }
    }

    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for r in reservations.iter().filter(|r| r.status == ReservationStatus::Reserved) {
        for line in &r.items {
            *held.entry(line.sku.as_str()).or_insert(0) += line.quantity;
        }
    }
    for level in stock {
        let reservations_hold = held.get(level.sku.as_str()).copied().unwrap_or(0);
        if level.reserved != reservations_hold {
            let detail = format!("{} reserved, but its reservations hold {reservations_hold}", level.reserved);
            findings.push(Finding::new("reserved-stock-differs", level.sku.clone(), detail).judged_in_full_passes());
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use contracts::Quantity;

    use super::*;

    fn order(status: OrderStatus) -> OrderView {
        OrderView {
            id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            status,
            reason: None,
            items: Vec::new(),
            total: 100,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn reservation(order_id: Uuid, status: ReservationStatus, quantity: i64) -> Reservation {
        Reservation { order_id, status, items: vec![Quantity { sku: "A-1".into(), quantity }] }
    }

    fn payment(order_id: Uuid, status: PaymentStatus) -> Payment {
        Payment { order_id, customer_id: None, amount: 100, status, reason: None }
    }

    fn shipment(order_id: Uuid, status: ShipmentStatus) -> Shipment {
        Shipment { id: Uuid::now_v7(), order_id, status, address: None, reason: None }
    }

    fn kinds(findings: &[Finding]) -> Vec<(&'static str, bool)> {
        let mut kinds: Vec<_> = findings.iter().map(|f| (f.kind, f.repair.is_some())).collect();
        kinds.sort_unstable();
        kinds
    }

    /// A recent pass reads the ids from its first key on, and covers the
    /// findings born since its start: the same orders.
    #[test]
    fn a_recent_pass_reads_the_orders_it_covers() {
        // As the auditor starts recent passes: to the millisecond, as ids.
        let since = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let scope = Scope::Recent { since };
        let from = first_key(scope).unwrap();
        let before = Uuid::from_u128(from.as_u128() - 1);
        assert!(!scope.covers(Some(born(before))), "the id just below is older");
        assert!(scope.covers(Some(born(from))));
        assert_eq!(born(from).timestamp_millis(), since.timestamp_millis());
        let now = Uuid::now_v7();
        assert!(now >= from && scope.covers(Some(born(now))));
        assert_eq!(first_key(Scope::Full), None);
        // Every finding of an order is born with it; the stock's totals only in full passes.
        let (approved, stray) = (order(OrderStatus::Approved), Uuid::now_v7());
        let stock = [StockLevel { sku: "A-1".into(), available: 0, reserved: 5 }];
        let found = judge(
            std::slice::from_ref(&approved),
            &[reservation(stray, ReservationStatus::Reserved, 1)],
            &stock,
            &[],
            &[],
        )
        .unwrap();
        for finding in &found {
            match finding.kind {
                "reserved-stock-differs" => assert!(!scope.covers(finding.born)),
                _ => assert!(finding.born.is_some() && scope.covers(finding.born), "{finding:?}"),
            }
        }
        assert_eq!(found.len(), 5, "{found:?}");
    }

    #[test]
    fn orders_that_agree_and_orders_in_flight_are_not_findings() {
        let (approved, rejected, pending) =
            (order(OrderStatus::Approved), order(OrderStatus::Rejected), order(OrderStatus::Pending));
        let reservations = [
            reservation(approved.id, ReservationStatus::Reserved, 2),
            reservation(rejected.id, ReservationStatus::Released, 1),
            reservation(pending.id, ReservationStatus::Reserved, 3), // mid-saga: not judged
        ];
        let payments = [payment(approved.id, PaymentStatus::Captured), payment(rejected.id, PaymentStatus::Voided)];
        let shipments = [shipment(approved.id, ShipmentStatus::Scheduled)];
        let stock = [StockLevel { sku: "A-1".into(), available: 10, reserved: 5 }];
        let findings = judge(&[approved, rejected, pending], &reservations, &stock, &payments, &shipments).unwrap();
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn each_disagreement_is_found_with_its_repair_where_one_is_safe() {
        let approved = order(OrderStatus::Approved);
        let (rejected, cancelled) = (order(OrderStatus::Rejected), order(OrderStatus::Cancelled));
        let ghost = Uuid::now_v7();
        let reservations = [
            reservation(rejected.id, ReservationStatus::Reserved, 1),
            reservation(ghost, ReservationStatus::Reserved, 1),
        ];
        let payments = [
            payment(approved.id, PaymentStatus::Authorized),
            payment(rejected.id, PaymentStatus::Authorized),
            payment(cancelled.id, PaymentStatus::Captured),
            payment(ghost, PaymentStatus::Captured),
        ];
        let shipments = [shipment(cancelled.id, ShipmentStatus::Scheduled), shipment(ghost, ShipmentStatus::Scheduled)];
        let stock = [StockLevel { sku: "A-1".into(), available: 10, reserved: 7 }];
        let findings =
            judge(&[approved, rejected, cancelled.clone()], &reservations, &stock, &payments, &shipments).unwrap();
        assert_eq!(
            kinds(&findings),
            [
                ("approved-order-without-capture", false),
                ("approved-order-without-reservation", false),
                ("approved-order-without-shipment", false),
                ("payment-without-order", true),
                ("reservation-without-order", true),
                ("reserved-stock-differs", false),
                ("shipment-without-order", true),
                ("undone-order-keeps-authorization", true),
                ("undone-order-keeps-capture", true),
                ("undone-order-keeps-reservation", true),
                ("undone-order-keeps-shipment", true),
            ]
        );
        let mut declared = KINDS.to_vec();
        declared.sort_unstable();
        assert_eq!(kinds(&findings).iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), declared, "every kind declared");
        let refund = findings.iter().find(|f| f.kind == "undone-order-keeps-capture").unwrap();
        let command = refund.repair.as_ref().unwrap();
        assert_eq!((command.message_type.as_str(), command.target.as_str()), (RefundPayment::TYPE, "payment"));
        assert_eq!(command.key, cancelled.id.to_string(), "keyed by the order, as the saga's own commands");
        assert_eq!(command.source, SERVICE, "the replies come back to the auditor");
    }
}
