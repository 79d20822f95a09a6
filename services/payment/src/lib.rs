//! The payment service of the reference shop.
//!
//! It owns one payment per order — `AUTHORIZED`, `CAPTURED`, `VOIDED`,
//! `REFUNDED` or `FAILED` — and a replica of each customer's email and credit
//! limit ([`replica`]): a projection of the customer service's
//! `CustomerRegistered` / `CustomerUpdated` events, which the consumer puts
//! in the service's log in both saga styles, bootstrapped from the customer
//! service's snapshot when the service is new or its database was wiped
//! ([`Config::customers`]). It takes part in the
//! create-order saga:
//!
//! - **authorize** (`AuthorizePayment`, or `StockReserved` in choreography):
//!   the customer's open exposure (its `AUTHORIZED` and `CAPTURED` payments,
//!   kept on its credit-lock row and changed with each payment, so the check
//!   costs the same however long its history) plus the amount must stay
//!   within its credit limit, then the simulated
//!   provider must accept; the outcome is `PaymentAuthorized` or
//!   `PaymentFailed` (`CREDIT_LIMIT_EXCEEDED`, `PAYMENT_DECLINED`);
//! - **capture** (`CapturePayment`, or `ShipmentScheduled`): `PaymentCaptured`;
//! - **void**, the compensation (`VoidPayment`, or `OrderRejected`): undoes
//!   whatever the payment got to — `PaymentVoided`, or `PaymentRefunded`
//!   for a captured one;
//! - **refund**, the cancellation (`RefundPayment`, or `ShipmentCancelled`):
//!   `PaymentRefunded` for a captured payment.
//!
//! Every step is idempotent per order (a repeated request re-sends the
//! recorded outcome), and a void that arrives before the authorization
//! leaves a tombstone that makes the authorization fail with `TIMEOUT`.
//!
//! # The simulated provider
//!
//! [`Config`] sets it up. Its decisions are deterministic, so a run is
//! reproducible:
//!
//! - it **declines every authorization for a customer whose email's local
//!   part ends in `+decline`** (e.g. `ann+decline@example.com`, case
//!   insensitive) — the way tests and the demo provoke `PAYMENT_DECLINED`;
//! - it declines a further `decline_rate` share of orders, chosen by a hash
//!   of the order id (the same order is always decided the same way);
//! - it takes `latency_ms` to answer. The wait happens inside the handler's
//!   transaction: on the embedded SQLite store that transaction holds the
//!   service's single writer, so every other write of the service waits too.
//!   Keep it 0 there for throughput; it is meant for PostgreSQL, where it
//!   only holds the customer's credit lock.
//!
//! # HTTP
//!
//! `GET /payments/{order_id}` ([`contracts::payment::Payment`]),
//! `GET /payments?limit=N&after=ID` (every payment, a page at a time by
//! order id, for the demo's invariant checks) and
//! `GET /credit/{customer_id}` ([`contracts::payment::Credit`]).
//!
//! # Layout
//!
//! - this module: [`Config`] and [`Payment`]: `open`, `router`, `handler`,
//!   `consumer`;
//! - `rules`: the credit limit;
//! - `provider`: the simulated provider (standing in for a remote one, so it
//!   is neither a rule of the service nor its SQL);
//! - `db`: the SQL on the service's tables, written once for SQLite and
//!   PostgreSQL;
//! - `handler`: the saga's steps and the customer replica, from messages;
//! - `http`: the read-only HTTP API.
//!
//! There is no `error` module: the handler answers `polis_bus::HandlerError`
//! and the HTTP API the store's errors, each mapped where the library maps
//! them; [`ConfigError`] stays next to [`Config`].

mod db;
mod handler;
mod http;
mod provider;
pub mod replica;
mod rules;

use std::sync::Arc;

use contracts::SagaStyle;
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::bus::Topic;
use polis_core::{Projection, StoreError};
use polis_projection::{ReplicaSource, SnapshotSource};
use polis_store::sql::{Sql, SqlStore};
use serde::Deserialize;

pub use handler::PaymentHandler;
pub use provider::declines;

/// The service's name: the `source` of its messages and its consumer's name.
pub const SERVICE: &str = contracts::payment::SERVICE;

/// The service's settings: the simulated payment provider.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Share of authorizations the provider declines, from 0.0 (none, the
    /// default) to 1.0 (all); which ones is a hash of the order id.
    pub decline_rate: f64,
    /// How long the provider takes to answer an authorization, in
    /// milliseconds (0 by default; see the crate docs before raising it on
    /// SQLite).
    pub latency_ms: u64,
    /// The saga style of an order whose events do not record it (one
    /// placed before orders carried their style). Not read from this
    /// section: the host sets it from the shop's one `saga` setting.
    #[serde(skip)]
    pub saga: SagaStyle,
    /// Where the customer replica bootstraps from (the customer service's
    /// snapshot); set by the host, none by default (the replica then
    /// follows events only).
    #[serde(skip)]
    pub customers: ReplicaSource,
}

/// A [`Config`] that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("payment decline_rate must be between 0.0 and 1.0, got {0}")]
    DeclineRate(f64),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if (0.0..=1.0).contains(&self.decline_rate) {
            Ok(())
        } else {
            // NaN lands here too: `contains` is false for it.
            Err(ConfigError::DeclineRate(self.decline_rate))
        }
    }
}

/// How the host opens and runs the payment service.
impl<S> polis_runtime::Service<S> for Payment<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112240NN`) and returns the service.
    ///
    /// An invalid [`Config`] is refused as [`StoreError::InvalidRequest`],
    /// before anything is written.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        config.validate().map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        Ok(Self { store, config })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The service's own HTTP API (paths without any `/api` prefix, no layers).
    fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The service's durable consumer (named [`SERVICE`]): customer events
    /// (the credit-limit replica), its commands (orchestration) and the
    /// inventory, shipping and order events it acts on (choreography).
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        Some(
            Consumer::new(SERVICE, self.store.clone(), options)
                .route(Topic::events_of(contracts::customer::SERVICE), self.handler())
                .route(Topic::commands_to(SERVICE), self.handler())
                .route(Topic::events_of(contracts::inventory::SERVICE), self.handler())
                .route(Topic::events_of(contracts::shipping::SERVICE), self.handler())
                .route(Topic::events_of(contracts::order::SERVICE), self.handler()),
        )
    }

    /// The customer replica ([`replica::CustomerReplica`]).
    fn projections(&self) -> Vec<Arc<dyn Projection<S::Tx>>> {
        vec![Arc::new(replica::CustomerReplica)]
    }

    /// The customer replica bootstraps from [`Config::customers`], if set.
    fn replicas(&self) -> Vec<Arc<dyn SnapshotSource>> {
        self.config.customers.get().into_iter().collect()
    }
}

/// The payment service over its store.
pub struct Payment<S> {
    store: Arc<S>,
    config: Config,
}

impl<S> Clone for Payment<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), config: self.config.clone() }
    }
}

impl<S> std::fmt::Debug for Payment<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S> Payment<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The handler of every message the service takes. The consumer routes
    /// all its topics to it; tests run it directly inside a transaction.
    pub fn handler(&self) -> PaymentHandler {
        PaymentHandler::new(&self.config)
    }
}
