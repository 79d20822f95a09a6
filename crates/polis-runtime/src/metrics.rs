//! Prometheus metrics: the process's one recorder, `GET /metrics`, and the
//! HTTP request histogram.
//!
//! polis's crates record through the `metrics` facade (counters, gauges,
//! histograms, each with a `service` label); this module installs the
//! process's recorder, a Prometheus one, the first time [`prometheus`] is
//! called (the standard stack calls it, so every process that serves HTTP
//! has one), and renders it at [`METRICS_PATH`] together with the process's
//! own resident memory and CPU time (`process_*`, the Prometheus client
//! conventions).
//!
//! Histograms of seconds are exported as Prometheus histograms with the
//! buckets of [`SECONDS_BUCKETS`], so that quantiles can be aggregated
//! across instances (`histogram_quantile`). A thread drains the recorder's
//! histogram samples into their buckets every few seconds, so memory stays
//! flat whether or not anything scrapes.
//!
//! The series every polis process may export, by the part that records
//! them, are listed in `docs/operations.md`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use polis_core::DeadLetterStatus;
use polis_store::sql::{Sql, SqlStore};

/// The route the standard stack serves the metrics at.
pub const METRICS_PATH: &str = "/metrics";

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of every `*_seconds` histogram: a millisecond to a minute, which
/// covers an in-process call and a saga that waits out a deadline.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How often the recorder's histogram samples are folded into buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

struct Exporter {
    handle: PrometheusHandle,
    process: Mutex<metrics_process::Collector>,
}

static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

/// The variable that turns the recorder off (`POLIS_METRICS=off`): every
/// series is then a no-op and `GET /metrics` is not served, for measuring
/// what the metrics cost.
pub const METRICS_ENV: &str = "POLIS_METRICS";

/// The process's Prometheus recorder, installed on first call; `None` if
/// another recorder was installed first (then polis's series go to that
/// one, and `GET /metrics` is not served) or [`METRICS_ENV`] is `off`.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    exporter().map(|e| &e.handle)
}

fn exporter() -> Option<&'static Exporter> {
    EXPORTER.get_or_init(install).as_ref()
}

fn install() -> Option<Exporter> {
    if std::env::var(METRICS_ENV).is_ok_and(|v| matches!(v.trim(), "off" | "false" | "0")) {
        tracing::info!("{METRICS_ENV}=off: no metrics are recorded and GET /metrics is not served");
        return None;
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .ok()?;
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            tracing::warn!(%error, "another metrics recorder is installed; GET /metrics is not served");
            return None;
        }
    };
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("polis-metrics-upkeep".to_owned()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms are folded at each scrape only");
    }
    let process = metrics_process::Collector::default();
    process.describe();
    Some(Exporter { handle, process: Mutex::new(process) })
}

/// Everything recorded so far, in the Prometheus text format, with the
/// process's memory and CPU sampled now. Empty if [`prometheus`] found
/// another recorder installed.
pub fn render() -> String {
    let Some(exporter) = exporter() else { return String::new() };
    exporter.process.lock().unwrap_or_else(std::sync::PoisonError::into_inner).collect();
    exporter.handle.run_upkeep();
    exporter.handle.render()
}

/// `GET /metrics`.
pub(crate) async fn serve_metrics(_: crate::NoQuery) -> Response {
    // Sampling /proc and formatting every series is blocking work, if short.
    match tokio::task::spawn_blocking(render).await {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(error) => crate::ApiError::internal(error).into_response(),
    }
}

/// Records `polis_http_request_duration_seconds` (labels `service`,
/// `method`, `route`, `status`) for every request `router` answers. The
/// route is the matched pattern (`/orders/{id}`), or `unmatched`; methods
/// outside the standard ones count as `other`: every label has a bounded
/// set of values.
///
/// Apply it once the router has all its routes: `Router::layer` wraps only
/// the routes that exist.
pub fn with_http_metrics<S>(router: Router<S>, service: &'static str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(middleware::from_fn(move |request: Request, next: Next| record_request(service, request, next)))
}

async fn record_request(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics::histogram!(
        "polis_http_request_duration_seconds",
        "service" => service,
        "method" => method,
        "route" => route,
        "status" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Samples, every `interval`, the gauges of a hosted service that need a
/// query:
///
/// - `polis_dead_letters` (labels `service`, `consumer`, `status` `dead`
///   or `parked`): the letters waiting for an operator now, where
///   `polis_dead_letters_total` counts what was ever dead-lettered;
/// - `polis_sagas_in_flight` (labels `service`, `saga`, `state`): the
///   orchestrated saga instances not finished, by the state they wait in
///   (a pair that empties reads 0), and `polis_sagas_oldest_wait_seconds`
///   (same labels): how long the one of them that moved least recently
///   has waited — a stuck saga.
///
/// Runs until aborted.
pub(crate) async fn sample<S>(store: Arc<S>, consumer: Option<String>, interval: Duration)
where
    S: SqlStore + 'static,
    S::Tx: Sql,
{
    let service = store.service().to_owned();
    let mut sagas_seen = std::collections::BTreeSet::new();
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(consumer) = &consumer {
            match store.dead_letters(Some(consumer)).await {
                Ok(letters) => {
                    for status in [DeadLetterStatus::Dead, DeadLetterStatus::Parked] {
                        let count = letters.iter().filter(|l| l.status == status).count();
                        metrics::gauge!(
                            "polis_dead_letters",
                            "service" => service.clone(),
                            "consumer" => consumer.clone(),
                            "status" => status.as_str(),
                        )
                        .set(count as f64);
                    }
                }
                Err(e) => {
                    tracing::warn!(service, error = %polis_core::error::chain(&e), "counting dead letters failed");
                }
            }
        }
        match polis_saga::in_flight(&*store).await {
            Ok(counts) => {
                let now: std::collections::BTreeMap<(String, String), (u64, f64)> = counts
                    .into_iter()
                    .map(|c| {
                        let waited = (chrono::Utc::now() - c.oldest_change).to_std().unwrap_or_default();
                        ((c.saga_type, c.state), (c.count, waited.as_secs_f64()))
                    })
                    .collect();
                sagas_seen.extend(now.keys().cloned());
                for (saga, state) in &sagas_seen {
                    let (count, waited) = now.get(&(saga.clone(), state.clone())).copied().unwrap_or((0, 0.0));
                    let labels = [("service", service.clone()), ("saga", saga.clone()), ("state", state.clone())];
                    metrics::gauge!("polis_sagas_in_flight", &labels).set(count as f64);
                    metrics::gauge!("polis_sagas_oldest_wait_seconds", &labels).set(waited);
                }
            }
            Err(e) => tracing::warn!(service, error = %polis_core::error::chain(&e), "counting sagas in flight failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::TRACE), "other");
    }
}
