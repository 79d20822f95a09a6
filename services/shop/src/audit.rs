//! The audit service's view of the others: their admin lists, through
//! [`gateway::Upstream`]s (in-process routers embedded, URLs distributed),
//! every page, or those from an order id on.

use async_trait::async_trait;
use audit::Facts;
use contracts::Service;
use contracts::customer::Customer;
use contracts::inventory::{Reservation, StockLevel};
use contracts::order::OrderView;
use contracts::order_history::HistoryOrder;
use contracts::payment::{Credit, Payment};
use contracts::shipping::{CustomerAddress, Shipment};
use gateway::Upstreams;
use polis_audit::BoxError;
use uuid::Uuid;

use crate::client::Endpoint;

/// The facts of the services behind `upstreams`.
#[derive(Debug, Clone)]
pub struct ApiFacts {
    order: Endpoint,
    inventory: Endpoint,
    payment: Endpoint,
    shipping: Endpoint,
    customer: Endpoint,
    /// `None` when the shop runs without its order-history view.
    order_history: Option<Endpoint>,
}

impl ApiFacts {
    /// Reads through `upstreams`; `None` if one of the services it reads has none.
    pub fn new(upstreams: &Upstreams) -> Option<Self> {
        let endpoint = |service| upstreams.get(service).cloned().map(Endpoint::upstream);
        Some(Self {
            order: endpoint(Service::Order)?,
            inventory: endpoint(Service::Inventory)?,
            payment: endpoint(Service::Payment)?,
            shipping: endpoint(Service::Shipping)?,
            customer: endpoint(Service::Customer)?,
            order_history: endpoint(Service::OrderHistory),
        })
    }

    /// These facts without the order-history view: for a shop that runs
    /// without it.
    pub fn without_view(mut self) -> Self {
        self.order_history = None;
        self
    }
}

#[async_trait]
impl Facts for ApiFacts {
    async fn orders(&self, from: Option<Uuid>) -> Result<Vec<OrderView>, BoxError> {
        Ok(self.order.get_all_from("/orders", before(from), |o: &OrderView| o.id).await?)
    }

    async fn reservations(&self, from: Option<Uuid>) -> Result<Vec<Reservation>, BoxError> {
        Ok(self.inventory.get_all_from("/reservations", before(from), |r: &Reservation| r.order_id).await?)
    }

    async fn stock(&self) -> Result<Vec<StockLevel>, BoxError> {
        Ok(self.inventory.get_all("/inventory", |l: &StockLevel| l.sku.clone()).await?)
    }

    async fn payments(&self, from: Option<Uuid>) -> Result<Vec<Payment>, BoxError> {
        Ok(self.payment.get_all_from("/payments", before(from), |p: &Payment| p.order_id).await?)
    }

    async fn shipments(&self, from: Option<Uuid>) -> Result<Vec<Shipment>, BoxError> {
        Ok(self.shipping.get_all_from("/shipments", before(from), |s: &Shipment| s.order_id).await?)
    }

    async fn customers(&self) -> Result<Vec<Customer>, BoxError> {
        Ok(self.customer.get_all("/customers", |c: &Customer| c.id).await?)
    }

    async fn credit_replica(&self) -> Result<Vec<Credit>, BoxError> {
        Ok(self.payment.get_all("/credit", |c: &Credit| c.customer_id).await?)
    }

    async fn address_replica(&self) -> Result<Vec<CustomerAddress>, BoxError> {
        Ok(self.shipping.get_all("/addresses", |a: &CustomerAddress| a.customer_id).await?)
    }

    async fn history(&self, from: Option<Uuid>) -> Result<Option<Vec<HistoryOrder>>, BoxError> {
        let Some(view) = &self.order_history else { return Ok(None) };
        Ok(Some(view.get_all_from("/orders", before(from), |o: &HistoryOrder| o.id).await?))
    }
}

/// The key to list after for the items from `from` on: the one just below
/// (lists answer the keys greater than `after`).
fn before(from: Option<Uuid>) -> Option<Uuid> {
    from.map(|id| Uuid::from_u128(id.as_u128().saturating_sub(1)))
}
