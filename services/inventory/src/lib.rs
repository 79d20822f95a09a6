//! The inventory service of the reference shop: stock per sku and one
//! all-or-nothing reservation per order.
//!
//! It owns two tables in its own database (its migrations live in
//! `migrations/{sqlite,postgres}`): `stock` (available and reserved quantity
//! per sku) and `reservations` (per order: status, items and the recorded
//! outcome). Everything else reaches it as messages or HTTP requests:
//!
//! - `router`: `PUT/GET /inventory/{sku}`, `GET /inventory`,
//!   `GET /reservations/{order_id}`, `GET /reservations` (admin views, used
//!   to check invariants across orders; reservations come a page at a time
//!   by order id, `?limit=N&after=ID`);
//! - `consumer`: `ReserveStock` / `ReleaseStock` commands in an
//!   orchestrated saga; `OrderCreated`, `OrderRejected` and `PaymentRefunded`
//!   events in a choreographed one. Outcomes go out through the outbox in the
//!   same transaction as the change, as replies or events (see
//!   [`contracts::outcome`]).
//!
//! Layout:
//! - this module: [`Config`] and [`Inventory`]: `open`, `router`,
//!   `consumer`, `handler`;
//! - [`rules`]: what a valid stock level and reservation request are;
//! - [`db`]: every statement on the tables, and how a reservation is taken
//!   and given back (all or nothing, never oversold, idempotent per order);
//! - [`handler`]: turns messages into those calls and sends the outcomes;
//! - `http`: the HTTP API;
//! - [`error`]: the crate's error type, and how it maps to HTTP problems and
//!   consumer retries.

pub mod db;
pub mod error;
pub mod handler;
mod http;
pub mod rules;

use std::sync::Arc;

use contracts::SagaStyle;
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::StoreError;
use polis_core::bus::Topic;
use polis_store::sql::{Sql, SqlStore};

pub use error::InventoryError;
pub use handler::InventoryHandler;

/// The service's name: its message source, consumer name and store source.
pub const SERVICE: &str = contracts::inventory::SERVICE;

/// The inventory service's settings.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The saga style of an order whose events do not record it (one
    /// placed before orders carried their style). Not read from this
    /// section: the host sets it from the shop's one `saga` setting.
    #[serde(skip)]
    pub saga: SagaStyle,
}

/// How the host opens and runs the inventory service.
impl<S> polis_runtime::Service<S> for Inventory<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112230NN`) to `store` (opened by the host with source
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

    /// The service's durable consumer, named [`SERVICE`]: its commands
    /// (orchestration) and the order and payment events it acts on
    /// (choreography), whatever style new orders run in — each order's
    /// events say which it is ([`contracts::order::is_choreographed`]).
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        Some(
            Consumer::new(SERVICE, self.store.clone(), options)
                .route(Topic::commands_to(SERVICE), self.handler())
                .route(Topic::events_of(contracts::order::SERVICE), self.handler())
                .route(Topic::events_of(contracts::payment::SERVICE), self.handler()),
        )
    }
}

/// The inventory service over its store `S` (SQLite or PostgreSQL).
pub struct Inventory<S> {
    store: Arc<S>,
    config: Config,
}

// By hand: `S` (a store) need not be `Clone` for the service to be.
impl<S> Clone for Inventory<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), config: self.config.clone() }
    }
}

impl<S> std::fmt::Debug for Inventory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S> Inventory<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// The message handler the consumer routes to; handy to drive the service
    /// by hand (inside `store.transaction`) in tests and tools.
    pub fn handler(&self) -> InventoryHandler {
        InventoryHandler::new(&self.config)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}
