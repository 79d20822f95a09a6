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
use contracts::inventory::{ReleaseStock, Reservation, ReservationStatus, StockLevel};
use contracts::order::{OrderStatus, OrderView};
use contracts::payment::{Payment, PaymentStatus, RefundPayment, VoidPayment};
use contracts::shipping::{CancelShipment, Shipment, ShipmentStatus};
use polis_audit::{BoxError, Finding, Rule};
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
    /// Every order (the order service).
    async fn orders(&self) -> Result<Vec<OrderView>, BoxError>;
    /// Every reservation (the inventory service).
    async fn reservations(&self) -> Result<Vec<Reservation>, BoxError>;
    /// Every sku's stock (the inventory service).
    async fn stock(&self) -> Result<Vec<StockLevel>, BoxError>;
    /// Every payment (the payment service).
    async fn payments(&self) -> Result<Vec<Payment>, BoxError>;
    /// Every shipment (the shipping service).
    async fn shipments(&self) -> Result<Vec<Shipment>, BoxError>;
    /// Every customer (the customer service).
    async fn customers(&self) -> Result<Vec<contracts::customer::Customer>, BoxError>;
    /// Every customer's credit as the payment service's replica has it.
    async fn credit_replica(&self) -> Result<Vec<contracts::payment::Credit>, BoxError>;
    /// Every customer's address as the shipping service's replica has it.
    async fn address_replica(&self) -> Result<Vec<contracts::shipping::CustomerAddress>, BoxError>;
    /// Every order as the order-history view shows it; `None` when the
    /// shop runs without the view.
    async fn history(&self) -> Result<Option<Vec<contracts::order_history::HistoryOrder>>, BoxError>;
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

    async fn check(&self) -> Result<Vec<Finding>, BoxError> {
        // Everything done for an order is read before the orders: each one's
        // order is then in the list, whenever it was placed.
        let reservations = self.facts.reservations().await?;
        let stock = self.facts.stock().await?;
        let payments = self.facts.payments().await?;
        let shipments = self.facts.shipments().await?;
        let orders = self.facts.orders().await?;
        judge(&orders, &reservations, &stock, &payments, &shipments)
    }
}

/// The findings over one reading of the facts.
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
                    findings.push(Finding::new(
                        "approved-order-without-reservation",
                        id.to_string(),
                        format!("APPROVED, {}", seen()),
                    ));
                }
                if paid != Some(&PaymentStatus::Captured) {
                    findings.push(Finding::new(
                        "approved-order-without-capture",
                        id.to_string(),
                        format!("APPROVED, {}", seen()),
                    ));
                }
                if shipped != Some(&ShipmentStatus::Scheduled) {
                    findings.push(Finding::new(
                        "approved-order-without-shipment",
                        id.to_string(),
                        format!("APPROVED, {}", seen()),
                    ));
                }
            }
            OrderStatus::Rejected | OrderStatus::Cancelled => {
                let detail = format!("{}, {}", order.status.as_str(), seen());
                if reserved == Some(&ReservationStatus::Reserved) {
                    findings.push(
                        Finding::new("undone-order-keeps-reservation", id.to_string(), detail.clone())
                            .repaired_by(release(id)?),
                    );
                }
                if let Some(&status) = paid
                    && let Some(repair) = give_back(id, status)?
                {
                    let kind = if status == PaymentStatus::Captured {
                        "undone-order-keeps-capture"
                    } else {
                        "undone-order-keeps-authorization"
                    };
                    findings.push(Finding::new(kind, id.to_string(), detail.clone()).repaired_by(repair));
                }
                if shipped == Some(&ShipmentStatus::Scheduled) {
                    findings.push(
                        Finding::new("undone-order-keeps-shipment", id.to_string(), detail)
                            .repaired_by(cancel_shipment(id)?),
                    );
                }
            }
            // In flight: the saga is still at work.
            OrderStatus::Pending | OrderStatus::CancelPending => {}
        }
    }

    for r in reservations.iter().filter(|r| r.status == ReservationStatus::Reserved) {
        if !orders.contains_key(&r.order_id) {
            let finding =
                Finding::new("reservation-without-order", r.order_id.to_string(), "stock reserved for no order");
            findings.push(finding.repaired_by(release(r.order_id)?));
        }
    }
    for p in payments {
        if !orders.contains_key(&p.order_id)
            && let Some(repair) = give_back(p.order_id, p.status)?
        {
            let detail = format!("a payment {:?} for no order", p.status);
            findings.push(Finding::new("payment-without-order", p.order_id.to_string(), detail).repaired_by(repair));
        }
    }
    for s in shipments.iter().filter(|s| s.status == ShipmentStatus::Scheduled) {
        if !orders.contains_key(&s.order_id) {
            let finding =
                Finding::new("shipment-without-order", s.order_id.to_string(), "a shipment scheduled for no order");
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
            findings.push(Finding::new(
                "reserved-stock-differs",
                level.sku.clone(),
                format!("{} reserved, but its reservations hold {reservations_hold}", level.reserved),
            ));
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
