//! The order-history service of the reference shop: a materialized view of
//! each customer's orders — status and reason, items with product names and
//! prices at order time, totals, the customer's name and email, the
//! payment's and shipment's status — in its own database.
//!
//! It owns no business data. Its consumer ingests the events of the order,
//! customer, catalog, payment and shipping services into its own log
//! (`polis_projection::Ingest`, exactly once through its inbox), and one
//! projection ([`projection`]) builds the view from that log with the
//! projection runtime: a batch and its checkpoint in one transaction, one
//! owner at a time, rebuilt beside the live view when its version changes.
//! No service's database is read: everything arrives as events.
//!
//! Layout: [`projection`] (the view's tables and how each event changes
//! them), `db` (reading the view), [`rules`] (what a request may ask),
//! `http` (the API: `GET /customers/{id}/orders`, `GET /orders/{id}`), and
//! `error`.

mod db;
mod error;
mod http;
pub mod projection;
pub mod rules;

use std::sync::Arc;

use contracts::order_history::SERVICE as NAME;
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::bus::Topic;
use polis_core::{Projection, StoreError};
use polis_projection::Ingest;
use polis_store::sql::{Sql, SqlStore};

pub use error::Error;

/// The service's name: its consumer's name and its store's source.
pub const SERVICE: &str = NAME;

/// The services whose events the view is built from.
pub const SOURCES: [&str; 5] = [
    contracts::order::SERVICE,
    contracts::customer::SERVICE,
    contracts::catalog::SERVICE,
    contracts::payment::SERVICE,
    contracts::shipping::SERVICE,
];

/// The service's settings; it has none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {}

/// The order-history service over its store `S` (SQLite or PostgreSQL).
pub struct OrderHistory<S> {
    store: Arc<S>,
}

impl<S> Clone for OrderHistory<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone() }
    }
}

impl<S> std::fmt::Debug for OrderHistory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderHistory").finish_non_exhaustive()
    }
}

/// How the host opens and runs the service.
impl<S> polis_runtime::Service<S> for OrderHistory<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// The view's tables are the projection's (created per generation by
    /// the projection runtime); the service has no migrations of its own.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        let Config {} = config;
        Ok(Self { store })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The sources' events, each appended to the service's own log.
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        let ingest = Ingest::only(projection::event_types());
        let consumer =
            SOURCES.into_iter().fold(Consumer::new(SERVICE, self.store.clone(), options), |consumer, source| {
                consumer.route(Topic::events_of(source), ingest.clone())
            });
        Some(consumer)
    }

    fn projections(&self) -> Vec<Arc<dyn Projection<S::Tx>>> {
        vec![Arc::new(projection::OrderHistoryProjection)]
    }
}
