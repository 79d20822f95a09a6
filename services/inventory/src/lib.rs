//! The inventory service of the reference shop: stock per sku and one
//! all-or-nothing reservation per order.
//!
//! It owns two tables in its own database (its migrations live in
//! `migrations/{sqlite,postgres}`): `stock` (available and reserved quantity
//! per sku) and `reservations` (per order: status, items and the recorded
//! outcome). Everything else reaches it as messages or HTTP requests:
//!
//! - [`Inventory::router`]: `PUT/GET /inventory/{sku}`, `GET /inventory`,
//!   `GET /reservations/{order_id}`, `GET /reservations` (admin views, used
//!   to check invariants across orders; reservations come a page at a time
//!   by order id, `?limit=N&after=ID`);
//! - [`Inventory::consumer`]: `ReserveStock` / `ReleaseStock` commands in an
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

/// The inventory service's settings (none yet).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {}

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
    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112230NN`) to `store` (opened by the host with source
    /// [`SERVICE`]) and returns the service.
    pub async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        Ok(Self { store, config })
    }

    /// The service's own HTTP API: paths without any prefix, no layers (the
    /// host adds the standard stack).
    pub fn router(&self) -> axum::Router {
        http::router(self.store.clone())
    }

    /// The service's durable consumer, named [`SERVICE`], subscribed to what
    /// `style` needs: its command topic in orchestration; order and payment
    /// events in choreography.
    pub fn consumer(&self, style: SagaStyle, options: ConsumerOptions) -> Consumer<S> {
        Consumer::new(SERVICE, self.store.clone(), options)
            .route(Topic::commands_to(SERVICE), self.handler(style))
            .route(Topic::events_of(contracts::order::SERVICE), self.handler(style))
            .route(Topic::events_of(contracts::payment::SERVICE), self.handler(style))
    }

    /// The message handler the consumer routes to; handy to drive the service
    /// by hand (inside `store.transaction`) in tests and tools. `style`
    /// stands in for the style of an order whose events do not record it.
    pub fn handler(&self, style: SagaStyle) -> InventoryHandler {
        InventoryHandler::new(style)
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}
