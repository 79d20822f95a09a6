//! Readiness: whether a hosted service can do its job now.
//!
//! `GET /healthz` (the standard stack) says the process answers: liveness.
//! `GET /readyz`, added by [`crate::host`] to every hosted service, checks
//! what the service needs beside that:
//!
//! - `store`: its database answers a query (it was migrated when the
//!   service opened);
//! - `bus`: the bus is connected ([`polis_core::Bus::check`]);
//! - `relay`: the outbox relay has not been failing for a while
//!   ([`polis_bus::Progress`]);
//! - `consumer`: every subscription's reader is running and not failing
//!   (absent for a service that consumes nothing).
//!
//! Ready, it answers 200 with each check; not ready, a 503 problem whose
//! `checks` member says which part failed and why. Each check is bounded by
//! [`CHECK_TIMEOUT`]: a database that does not answer is not ready, not a
//! hung probe. The gateway's `/readyz` aggregates its upstreams' (see the
//! gateway crate).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use polis_bus::Progress;
use polis_core::{Bus, StoreError, Topic};
use serde::{Deserialize, Serialize};

use crate::{ApiError, Json};

/// The route of the readiness check.
pub const READY_PATH: &str = "/readyz";

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Whether the part works.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn passed() -> Self {
        Self { ok: true, error: None }
    }

    /// A check that failed, for `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self { ok: false, error: Some(reason.into()) }
    }

    fn from_result<E: std::fmt::Display>(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self::passed(),
            Err(e) => Self::failed(e.to_string()),
        }
    }
}

/// Every check of a service, by part (`store`, `bus`, `relay`, `consumer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The service checked.
    pub service: String,
    /// Whether every check passed.
    pub ready: bool,
    /// Each check, by part.
    pub checks: BTreeMap<String, Check>,
}

impl Report {
    /// A report of `service` from its `checks`: ready if they all passed.
    pub fn new(service: impl Into<String>, checks: BTreeMap<String, Check>) -> Self {
        let ready = checks.values().all(|c| c.ok);
        Self { service: service.into(), ready, checks }
    }

    /// The failed checks, as `part: reason; …`.
    pub fn failures(&self) -> String {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, c)| !c.ok)
            .map(|(part, c)| format!("{part}: {}", c.error.as_deref().unwrap_or("failed")))
            .collect();
        failed.join("; ")
    }
}

impl IntoResponse for Report {
    fn into_response(self) -> Response {
        if self.ready {
            return Json(self).into_response();
        }
        let detail = format!("{} is not ready: {}", self.service, self.failures());
        let checks = serde_json::to_value(&self.checks).unwrap_or_default();
        ApiError::service_unavailable(detail).with_extension("checks", checks).into_response()
    }
}

type StoreProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> + Send + Sync>;

/// What a hosted service's readiness depends on.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    store: StoreProbe,
    bus: Arc<dyn Bus>,
    relay: Progress,
    consumer: Option<Vec<(Topic, Progress)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Readiness {
    /// The readiness of `service`, whose store answers `store` (a cheap
    /// query), publishing through a relay reporting to `relay`, and reading
    /// the subscriptions of `consumer` (`None`: it consumes nothing).
    pub fn new<F, Fut>(
        service: &'static str,
        store: F,
        bus: Arc<dyn Bus>,
        relay: Progress,
        consumer: Option<Vec<(Topic, Progress)>>,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let store: StoreProbe = Arc::new(move || Box::pin(store()));
        Self { service, store, bus, relay, consumer }
    }

    /// Runs every check now.
    pub async fn check(&self) -> Report {
        let timed_out = || format!("no answer within {} s", CHECK_TIMEOUT.as_secs());
        let (store, bus) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, (self.store)()),
            tokio::time::timeout(CHECK_TIMEOUT, self.bus.check()),
        );
        let mut checks = BTreeMap::new();
        checks.insert(
            "store".to_owned(),
            store.map_or_else(|_| Check::failed(timed_out()), |r| Check::from_result(r.map_err(chain))),
        );
        checks.insert(
            "bus".to_owned(),
            bus.map_or_else(|_| Check::failed(timed_out()), |r| Check::from_result(r.map_err(chain))),
        );
        checks.insert("relay".to_owned(), Check::from_result(self.relay.check()));
        if let Some(readers) = &self.consumer {
            let failures: Vec<String> = readers
                .iter()
                .filter_map(|(topic, progress)| progress.check().err().map(|reason| format!("{topic}: {reason}")))
                .collect();
            let check = if failures.is_empty() { Check::passed() } else { Check::failed(failures.join("; ")) };
            checks.insert("consumer".to_owned(), check);
        }
        Report::new(self.service, checks)
    }

    /// `GET /readyz` over these checks.
    pub fn route(self) -> Router {
        Router::new().route(
            READY_PATH,
            axum::routing::get(move |_: crate::NoQuery| {
                let readiness = self.clone();
                async move { readiness.check().await }
            }),
        )
    }
}

fn chain(e: impl std::error::Error) -> String {
    polis_core::error::chain(&e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_ready_only_if_every_check_passed() {
        let mut checks = BTreeMap::from([("store".to_owned(), Check::passed()), ("bus".to_owned(), Check::passed())]);
        assert!(Report::new("order", checks.clone()).ready);
        checks.insert("relay".to_owned(), Check::failed("failing for 7 s: broker down"));
        let report = Report::new("order", checks);
        assert!(!report.ready);
        assert_eq!(report.failures(), "relay: failing for 7 s: broker down");
    }
}
