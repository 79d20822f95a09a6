//! The shipping service of the reference shop: one shipment per order, to
//! the customer's address, unless the address is in a blocked country.
//!
//! It owns two tables in its own database (its migrations live in
//! `migrations/{sqlite,postgres}`): `shipments` (per order: the shipment's id,
//! status, address and reason) and `customer_addresses`, a replica of the
//! customer service's addresses ([`replica`]): a projection of its events,
//! which the consumer puts in the service's log, bootstrapped from the
//! customer service's snapshot when the service is new or its database was
//! wiped ([`Config::customers`]) — shipping never reads the customer
//! service's database. The rest comes as
//! messages or HTTP requests:
//!
//! - `router`: `GET /shipments/{order_id}` and `GET /shipments`
//!   (an admin list by order id, a page at a time with `?limit=N&after=ID`,
//!   used to check invariants across orders);
//! - `consumer`: customer events in both saga styles;
//!   `ScheduleShipment` / `CancelShipment` commands in an orchestrated saga;
//!   `PaymentAuthorized`, `OrderRejected` and `OrderCancelRequested` events in
//!   a choreographed one. Outcomes go out through the outbox in the same
//!   transaction as the change, as replies or events (see
//!   [`contracts::outcome`]).
//!
//! Layout:
//! - this module: [`Config`] and [`Shipping`]: `open`, `router`,
//!   `consumer`, `handler`;
//! - `rules`: which addresses are accepted and delivered to;
//! - [`db`]: every statement on the tables, and how a shipment is recorded
//!   (idempotent per order, compensation before action);
//! - [`replica`]: the address replica, a projection;
//! - [`handler`]: turns messages into those calls and sends the outcomes;
//! - `http`: the HTTP API;
//! - [`error`]: the crate's error type, and how it maps to HTTP problems and
//!   consumer retries.

pub mod db;
pub mod error;
pub mod handler;
mod http;
pub mod replica;
mod rules;

use std::sync::Arc;

use contracts::SagaStyle;
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::bus::Topic;
use polis_core::{Projection, StoreError};
use polis_projection::{ReplicaSource, SnapshotSource};
use polis_store::sql::{Sql, SqlStore};

pub use error::ShippingError;
pub use handler::ShippingHandler;

/// The service's name: its message source, consumer name and store source.
pub const SERVICE: &str = contracts::shipping::SERVICE;

/// The shipping service's settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// ISO 3166-1 alpha-2 codes (compared without regard to case) of the
    /// countries the shop does not deliver to; a shipment there fails with
    /// `UNDELIVERABLE`.
    pub blocked_countries: Vec<String>,
    /// The saga style of an order whose events do not record it (one
    /// placed before orders carried their style). Not read from this
    /// section: the host sets it from the shop's one `saga` setting.
    #[serde(skip)]
    pub saga: SagaStyle,
    /// Where the address replica bootstraps from (the customer service's
    /// snapshot); set by the host, none by default (the replica then
    /// follows events only).
    #[serde(skip)]
    pub customers: ReplicaSource,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            blocked_countries: vec!["AQ".to_owned()],
            saga: SagaStyle::default(),
            customers: ReplicaSource::default(),
        }
    }
}

/// How the host opens and runs the shipping service.
impl<S> polis_runtime::Service<S> for Shipping<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112250NN`) to `store` (opened by the host with source
    /// [`SERVICE`]) and returns the service.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        Ok(Self { store, config })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The service's own HTTP API: paths without any prefix, no layers (the
    /// host adds the standard stack).
    fn router(&self) -> axum::Router {
        http::router(self.store.clone())
    }

    /// The service's durable consumer, named [`SERVICE`]: customer events
    /// (the address replica), its commands (orchestration) and the payment
    /// and order events it acts on (choreography).
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        Some(
            Consumer::new(SERVICE, self.store.clone(), options)
                .route(Topic::events_of(contracts::customer::SERVICE), self.handler())
                .route(Topic::commands_to(SERVICE), self.handler())
                .route(Topic::events_of(contracts::payment::SERVICE), self.handler())
                .route(Topic::events_of(contracts::order::SERVICE), self.handler()),
        )
    }

    /// The address replica ([`replica::AddressReplica`]).
    fn projections(&self) -> Vec<Arc<dyn Projection<S::Tx>>> {
        vec![Arc::new(replica::AddressReplica)]
    }

    /// The address replica bootstraps from [`Config::customers`], if set.
    fn replicas(&self) -> Vec<Arc<dyn SnapshotSource>> {
        self.config.customers.get().into_iter().collect()
    }
}

/// The shipping service over its store `S` (SQLite or PostgreSQL).
pub struct Shipping<S> {
    store: Arc<S>,
    config: Config,
}

// By hand: `S` (a store) need not be `Clone` for the service to be.
impl<S> Clone for Shipping<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), config: self.config.clone() }
    }
}

impl<S> std::fmt::Debug for Shipping<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S> Shipping<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// The message handler the consumer routes to; handy to drive the service
    /// by hand (inside `store.transaction`) in tests and tools.
    pub fn handler(&self) -> ShippingHandler {
        ShippingHandler::new(&self.config)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antarctica_is_blocked_unless_configured_otherwise() {
        assert_eq!(Config::default().blocked_countries, ["AQ"]);
        let unset: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(unset.blocked_countries, ["AQ"]);
        let none: Config = serde_json::from_str(r#"{"blocked_countries": []}"#).unwrap();
        assert!(none.blocked_countries.is_empty());
        assert!(serde_json::from_str::<Config>(r#"{"blocked_country": ["FR"]}"#).is_err(), "typos are not ignored");
    }
}
