//! The shop's API gateway: the single public entry, under `/api`.
//!
//! The gateway owns no data. It routes each public request to the service
//! that owns the data, and composes answers that need several services:
//!
//! - **plain routes** pass the service's status, content type and body
//!   through (services already answer problem+json on errors);
//! - **`POST /api/orders`** validates the body, checks the customer and
//!   prices every item at the catalog's current price (in parallel), then
//!   places the priced order with the order service;
//! - **`GET /api/orders/{id}/details`** is API composition: the order, then
//!   its customer, products, payment and shipment in parallel, each within
//!   its own timeout; missing parts are `null` and named in `partial`;
//! - **`GET /api/customers/{id}/orders`** checks the customer, then lists
//!   a page of its orders (`?limit=N&after=ID`, like `GET /api/products`:
//!   `polis_runtime::Page`'s rules, checked here and forwarded);
//! - **`/api/admin/...`** is the operators' API: every service's dead
//!   letters, sagas and event streams, asked of all services at once and
//!   merged, each item naming its service ([`admin`]);
//! - **`GET /dashboard`** is the operators' live page, fed by
//!   `GET /api/dashboard/stream` ([`dashboard`]);
//! - **`GET /api/openapi.json`** describes all of it.
//!
//! A service that does not answer in time is a 504 problem, one that cannot
//! be reached (or fails) a 503, one whose answer breaks its contract a 502.
//! Every upstream call carries the request's `x-request-id`.
//!
//! The same [`router`] serves both deployments: each service is an
//! [`Upstream`], either its `Router` in this process or a base URL.
//!
//! ```no_run
//! use contracts::Service;
//! use gateway::{GatewayConfig, Upstream, Upstreams};
//! use polis_runtime::{HttpOptions, with_standard_stack};
//!
//! # fn main() -> Result<(), gateway::GatewayError> {
//! let remote = |service: Service| Upstream::remote(&format!("http://127.0.0.1:{}", service.default_port()));
//! let upstreams = Upstreams::try_new(remote)?;
//! let app = with_standard_stack(gateway::router(upstreams, GatewayConfig::default()), &HttpOptions::default());
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Layout: [`upstream`] (reaching a service), `routes` (the route table and
//! the plain routes), `compose` (the three composed routes), [`admin`] (the
//! operators' routes and their answers' types), [`openapi`] (the document).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::Method;
use serde::{Deserialize, Serialize};

pub mod admin;
mod compose;
pub mod dashboard;
pub mod openapi;
pub(crate) mod ready;
mod routes;
pub mod upstream;

pub use compose::{MAX_ITEMS, OrderDetails, Part};
pub use upstream::{InstanceStatus, Upstream, UpstreamError, UpstreamResponse, Upstreams};

/// What can go wrong setting up the gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("invalid upstream url {url:?}: {reason}")]
    InvalidUpstreamUrl { url: String, reason: String },
}

/// The `gateway` section of the configuration.
///
/// Timeouts are whole milliseconds and never zero (serde refuses `0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Bound on each call a route makes to answer the client directly: a
    /// plain route's call, the lookups of `POST /api/orders`, the order of a
    /// details call. Default 1000.
    pub call_timeout_ms: NonZeroU64,
    /// Bound on each optional part of `GET /api/orders/{id}/details`
    /// (customer, products, payment, shipment), counted from when the
    /// parts start. Default 300.
    pub compose_timeout_ms: NonZeroU64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        // `MIN` is 1: these are 1000 and 300 without a fallible constructor.
        Self {
            call_timeout_ms: NonZeroU64::MIN.saturating_add(999),
            compose_timeout_ms: NonZeroU64::MIN.saturating_add(299),
        }
    }
}

impl GatewayConfig {
    /// Sets the call timeout, rounded up to whole milliseconds (at least 1).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout_ms = polis_runtime::config::whole_millis(timeout);
        self
    }

    /// Sets the per-part timeout of the details call, rounded up to whole
    /// milliseconds (at least 1).
    pub fn with_compose_timeout(mut self, timeout: Duration) -> Self {
        self.compose_timeout_ms = polis_runtime::config::whole_millis(timeout);
        self
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.get())
    }

    pub fn compose_timeout(&self) -> Duration {
        Duration::from_millis(self.compose_timeout_ms.get())
    }
}

/// The gateway's routes, bare: the host wraps them in
/// `polis_runtime::with_standard_stack`, which adds `GET /healthz`, `GET
/// /metrics`, request ids (forwarded upstream), the body limit and the 404
/// / 405 problems. Beside the API it serves `GET /readyz`, every upstream's
/// readiness, and records each request in
/// `polis_http_request_duration_seconds` as `gateway`.
pub fn router(upstreams: Upstreams, config: GatewayConfig) -> Router {
    // Built once: the document is the same for every request.
    let openapi = serde_json::to_vec(&openapi::openapi()).map(Bytes::from).map_err(|err| Arc::new(err.to_string()));
    let state = routes::Gateway::new(upstreams, config, openapi);
    let router = routes::endpoints()
        .into_iter()
        .fold(Router::new(), |router, endpoint| router.route(endpoint.path, endpoint.handler))
        .with_state(state);
    polis_runtime::metrics::with_http_metrics(router, contracts::Service::Gateway.as_str())
}

/// Every method and path [`router`] serves, in the order of the route
/// table (`GET /healthz` is the standard stack's, not listed).
pub fn routes() -> Vec<(Method, &'static str)> {
    routes::endpoints().into_iter().map(|endpoint| (endpoint.method, endpoint.path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_one_second_per_call_and_300_ms_per_part() {
        let config = GatewayConfig::default();
        assert_eq!(config.call_timeout(), Duration::from_secs(1));
        assert_eq!(config.compose_timeout(), Duration::from_millis(300));
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds_and_never_reach_zero() {
        let config = GatewayConfig::default()
            .with_call_timeout(Duration::from_micros(1500))
            .with_compose_timeout(Duration::ZERO);
        assert_eq!(config.call_timeout_ms.get(), 2);
        assert_eq!(config.compose_timeout_ms.get(), 1);
    }

    #[test]
    fn config_deserializes_with_defaults_and_refuses_zero() {
        let config: GatewayConfig = serde_json::from_str(r#"{"compose_timeout_ms": 50}"#).unwrap();
        assert_eq!(config.call_timeout_ms.get(), 1000);
        assert_eq!(config.compose_timeout_ms.get(), 50);
        assert!(serde_json::from_str::<GatewayConfig>(r#"{"call_timeout_ms": 0}"#).is_err());
        assert!(serde_json::from_str::<GatewayConfig>(r#"{"call_timeout": 5}"#).is_err());
    }
}
