//! The operators' live dashboard: `GET /dashboard`, one page with no build
//! chain (HTML, CSS and script in one file, compiled in), fed by
//! `GET /api/dashboard/stream`, a server-sent event of a [`Snapshot`] every
//! second; `GET /api/dashboard` answers one.
//!
//! A snapshot is read the way an operator's tools read the shop, in both
//! deployments alike:
//!
//! - **figures** from the Prometheus metrics every process exports: each
//!   remote service's `GET /metrics`, or this process's own when the
//!   services run in it. Rates and mean lags are over the window since the
//!   stream's previous snapshot (a counter's increase over the seconds
//!   between), the way a Prometheus `rate()` reads them;
//! - **sagas in flight** and **dead letters** from the admin API
//!   (`/admin/...` of every service), so they are as fresh as the request;
//! - **recent orders** and their timelines from the order service;
//! - **the audit**'s last pass (drifts, suspected, repairs) from the audit
//!   service: whether the services agree.
//!
//! A part that cannot be read (a service down) is left empty and named in
//! `unavailable`; the rest is shown. The page replays and discards dead
//! letters through `POST /api/admin/dead-letters/{id}/replay|discard`.

mod scrape;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use contracts::Service;
use contracts::order::{OrderEvent, OrderView};
use futures::Stream;
use polis_runtime::{ApiError, Json, NoQuery, Page};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::admin::{self, DeadLetter, SagasInFlight};
use crate::compose::{essential, essential_answer};
use crate::routes::{Gateway, MaybeRequestId, bad_gateway, request_id};
use scrape::{Scrape, Sums};

/// How often the stream sends a snapshot.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How many dead letters and recent orders a snapshot shows.
pub const SHOWN: usize = 50;

/// How many of the recent orders a snapshot shows with their timelines.
pub const RECENT_ORDERS: usize = 10;

/// The page, compiled in.
const PAGE: &str = include_str!("page.html");

/// Everything the dashboard shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub at: String,
    /// The seconds since the stream's previous snapshot: the window of every
    /// rate and mean lag. Absent from a stream's first snapshot and from
    /// `GET /api/dashboard`, whose rates and lags are absent too.
    pub window_seconds: Option<f64>,
    pub orders: Orders,
    /// The unfinished sagas of every service, by type and state.
    pub sagas_in_flight: Vec<SagasInFlight>,
    /// Every message consumer, by service.
    pub consumers: Vec<ConsumerFigures>,
    /// Every projection (a replica is one) and how far behind it is.
    pub projections: Vec<ProjectionFigures>,
    /// Every service's transactional outbox.
    pub outboxes: Vec<OutboxFigures>,
    /// The first [`SHOWN`] dead letters of every service, by id.
    pub dead_letters: Vec<DeadLetter>,
    /// The newest orders, newest first, with their streams' events.
    pub recent_orders: Vec<RecentOrder>,
    /// Every process's memory and CPU (one in the embedded shop).
    pub processes: Vec<ProcessFigures>,
    /// The audit service's last pass: whether the services agree. Absent
    /// before its first pass (and when it cannot be read: see
    /// `unavailable`).
    pub audit: Option<AuditFigures>,
    /// What could not be read, each naming its source; the rest is shown.
    pub unavailable: Vec<String>,
}

/// The audit service's last pass (`GET /api/audit` has it whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditFigures {
    /// When the pass ran (RFC 3339).
    pub at: String,
    /// Disagreements that outlasted the settle time: the first [`SHOWN`].
    pub drifts: Vec<DriftFigures>,
    /// How many drifts there are in all.
    pub drifts_total: usize,
    /// How many of them have no repair under way: an operator must look.
    pub unrepaired: usize,
    /// Disagreements still within the settle time (work in flight, most likely).
    pub suspected: usize,
    /// Whether a rule could not judge (a service it reads was out of reach).
    pub incomplete: bool,
}

/// One drift of the last pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriftFigures {
    pub kind: String,
    pub subject: String,
    pub detail: String,
    /// Since when it has been seen (RFC 3339).
    pub since: String,
    /// What was done: `none`, `sent` or `failed`.
    pub repair: String,
}

impl AuditFigures {
    /// The figures of a pass as the audit service writes it (a
    /// `polis_audit::Report`), or `None` if `report` is not one.
    fn of(report: &serde_json::Value) -> Option<Self> {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        let drifts = report["drifts"].as_array()?;
        let figures = drifts
            .iter()
            .map(|drift| {
                Some(DriftFigures {
                    kind: text(&drift["kind"])?,
                    subject: text(&drift["subject"])?,
                    detail: text(&drift["detail"])?,
                    since: text(&drift["since"])?,
                    repair: text(&drift["repair"]["state"])?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            at: text(&report["at"])?,
            drifts_total: figures.len(),
            unrepaired: figures.iter().filter(|d| d.repair != "sent").count(),
            drifts: figures.into_iter().take(SHOWN).collect(),
            suspected: report["suspected"].as_object()?.values().filter_map(serde_json::Value::as_u64).sum::<u64>()
                as usize,
            incomplete: report["rules"].as_array()?.iter().any(|rule| !rule["error"].is_null()),
        })
    }
}

/// Orders placed and decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Orders {
    /// Orders placed since the order service started.
    pub placed_total: u64,
    /// Orders decided since the order service started, by outcome
    /// (`approved`, `rejected`, `cancelled`).
    pub decided_total: BTreeMap<String, u64>,
    pub placed_per_second: Option<f64>,
    pub decided_per_second: Option<f64>,
}

/// A message consumer's throughput and lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsumerFigures {
    pub service: String,
    pub consumer: String,
    /// Deliveries handled to an end (any outcome) since the process started.
    pub handled_total: u64,
    pub handled_per_second: Option<f64>,
    /// The mean lag (from a message's creation at its source to the start of
    /// its handling here) of the messages handled in the window; absent
    /// when none was.
    pub lag_seconds: Option<f64>,
}

/// A projection's lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionFigures {
    pub service: String,
    pub projection: String,
    /// Events in the service's log its generations have still to apply.
    pub behind_events: u64,
    /// The mean lag (from an event's commit to its projection's) of the
    /// events applied in the window; absent when none was.
    pub lag_seconds: Option<f64>,
}

/// A service's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutboxFigures {
    pub service: String,
    /// Messages written and not yet published.
    pub backlog: u64,
    /// The age of the oldest of them (0 when none).
    pub oldest_age_seconds: f64,
    pub published_per_second: Option<f64>,
}

/// A process's resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessFigures {
    /// The service it runs, or `shop` for the embedded shop's one process.
    pub process: String,
    pub resident_memory_bytes: u64,
    /// CPU seconds used per second in the window (1.0 is one core busy).
    pub cpu_per_second: Option<f64>,
}

/// A recent order and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecentOrder {
    pub order: OrderView,
    /// Its stream's events, oldest first (at most 20).
    pub timeline: Vec<OrderEvent>,
}

/// The name of the embedded shop's one process.
const EMBEDDED_PROCESS: &str = "shop";

/// A scrape of every process, and when it was taken.
struct Taken {
    at: Instant,
    scrape: Scrape,
}

/// `GET /dashboard`.
pub(crate) async fn page(_: NoQuery) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            // The page loads nothing from elsewhere and runs only its own script.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:",
                ),
            ),
        ],
        PAGE,
    )
        .into_response()
}

#[utoipa::path(
    get, path = "/api/dashboard", tag = "operations",
    responses(
        (status = 200, description = "What the dashboard shows, now. Rates and mean lags need a window and are \
            absent: the stream has them.", body = Snapshot),
    )
)]
pub(crate) async fn snapshot(State(gateway): State<Gateway>, _: NoQuery, id: MaybeRequestId) -> Json<Snapshot> {
    let (snapshot, _) = take(&gateway, None, request_id(&id)).await;
    Json(snapshot)
}

#[utoipa::path(
    get, path = "/api/dashboard/stream", tag = "operations",
    responses(
        (status = 200, description = "Server-sent events: a `snapshot` event (data: a `Snapshot` as JSON) at once, \
            then every second, each with the rates and mean lags of the second before.", content_type = "text/event-stream", body = String),
    )
)]
pub(crate) async fn stream(
    State(gateway): State<Gateway>,
    _: NoQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold((gateway, None::<Taken>), |(gateway, previous)| async move {
        if previous.is_some() {
            tokio::time::sleep(REFRESH).await;
        }
        let (snapshot, taken) = take(&gateway, previous.as_ref(), None).await;
        let event = match serde_json::to_string(&snapshot) {
            Ok(json) => Event::default().event("snapshot").data(json),
            Err(err) => Event::default().event("failure").data(format!("the snapshot could not be written: {err}")),
        };
        Some((Ok(event), (gateway, Some(taken))))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A snapshot now, with rates over the window since `previous`.
async fn take(
    gateway: &Gateway,
    previous: Option<&Taken>,
    request_id: Option<&polis_runtime::RequestId>,
) -> (Snapshot, Taken) {
    let mut unavailable = Vec::new();
    let shown = Page::first(SHOWN);
    let (scrape, in_flight, letters, recent, audit) = tokio::join!(
        scrape_all(gateway),
        admin::in_flight(gateway, None, request_id),
        admin::dead_letters(gateway, None, &shown, request_id),
        recent_orders(gateway, request_id),
        last_audit(gateway, request_id),
    );
    let (scrape, failed) = scrape;
    unavailable.extend(failed);
    let taken = Taken { at: Instant::now(), scrape };
    let sagas_in_flight = part("sagas in flight", in_flight, &mut unavailable);
    let dead_letters = part("dead letters", letters, &mut unavailable);
    let recent_orders = part("recent orders", recent, &mut unavailable);
    let audit = audit.unwrap_or_else(|err| {
        unavailable.push(format!("audit: {}", err.detail().unwrap_or(err.title())));
        None
    });
    let figures = Figures { now: &taken, before: previous };
    let snapshot = Snapshot {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        window_seconds: figures.window(),
        orders: figures.orders(),
        sagas_in_flight,
        consumers: figures.consumers(),
        projections: figures.projections(),
        outboxes: figures.outboxes(),
        dead_letters,
        recent_orders,
        processes: figures.processes(),
        audit,
        unavailable,
    };
    (snapshot, taken)
}

/// A part of a snapshot, or nothing and why in `unavailable`.
fn part<T>(name: &str, result: Result<Vec<T>, ApiError>, unavailable: &mut Vec<String>) -> Vec<T> {
    result.unwrap_or_else(|err| {
        unavailable.push(format!("{name}: {}", err.detail().unwrap_or(err.title())));
        Vec::new()
    })
}

/// The metrics of every process, and the processes that did not answer.
async fn scrape_all(gateway: &Gateway) -> (Scrape, Vec<String>) {
    let mut scrape = Scrape::default();
    let mut failed = Vec::new();
    let (local, remote): (Vec<Service>, Vec<Service>) =
        Service::BUSINESS.into_iter().partition(|&service| gateway.upstream(service).is_local());
    if !local.is_empty() {
        // The services run in this process: its metrics are theirs.
        match tokio::task::spawn_blocking(polis_runtime::metrics::render).await {
            Ok(text) => scrape.extend(Scrape::parse(&text, EMBEDDED_PROCESS)),
            Err(err) => failed.push(format!("metrics of this process: {err}")),
        }
    }
    let calls = remote.into_iter().map(|service| async move {
        let called = gateway.upstream(service).call(Method::GET, "/metrics", None, None, gateway.call_timeout()).await;
        (service, called)
    });
    for (service, called) in futures::future::join_all(calls).await {
        match called {
            Ok(answer) if answer.status == StatusCode::OK => {
                scrape.extend(Scrape::parse(&String::from_utf8_lossy(&answer.body), service.as_str()));
            }
            Ok(answer) => failed.push(format!("metrics of {service}: it answered {}", answer.status)),
            Err(err) => failed.push(format!("metrics of {service}: {err}")),
        }
    }
    (scrape, failed)
}

/// The newest orders with their timelines.
async fn recent_orders(
    gateway: &Gateway,
    request_id: Option<&polis_runtime::RequestId>,
) -> Result<Vec<RecentOrder>, ApiError> {
    let timeout = gateway.call_timeout();
    let path = format!("/orders/recent?limit={RECENT_ORDERS}");
    // Both are lists the order service always has: a 404 is a broken answer.
    let missing = |path: &str| bad_gateway(Service::Order, format!("GET {path} answered 404 Not Found"));
    let orders: Vec<OrderView> =
        essential(gateway, Service::Order, &path, request_id, timeout).await?.ok_or_else(|| missing(&path))?;
    let timelines = orders.iter().map(|view| async move {
        let path = format!("/orders/{}/events?limit=20", view.id);
        essential::<Vec<OrderEvent>>(gateway, Service::Order, &path, request_id, timeout)
            .await?
            .ok_or_else(|| missing(&path))
    });
    let timelines = futures::future::join_all(timelines).await;
    orders.into_iter().zip(timelines).map(|(order, timeline)| Ok(RecentOrder { order, timeline: timeline? })).collect()
}

/// The audit service's last pass; `None` before its first (a 503).
async fn last_audit(
    gateway: &Gateway,
    request_id: Option<&polis_runtime::RequestId>,
) -> Result<Option<AuditFigures>, ApiError> {
    let path = "/audit";
    let called =
        gateway.upstream(Service::Audit).call(Method::GET, path, None, request_id, gateway.call_timeout()).await;
    if called.as_ref().is_ok_and(|answer| answer.status == StatusCode::SERVICE_UNAVAILABLE) {
        return Ok(None);
    }
    let Some(report) = essential_answer::<serde_json::Value>(Service::Audit, path, called)? else {
        return Err(bad_gateway(Service::Audit, "GET /audit answered 404 Not Found"));
    };
    AuditFigures::of(&report).map(Some).ok_or_else(|| bad_gateway(Service::Audit, "not a report of a pass"))
}

/// The figures of a scrape, and their rates since an earlier one.
struct Figures<'a> {
    now: &'a Taken,
    before: Option<&'a Taken>,
}

impl Figures<'_> {
    fn window(&self) -> Option<f64> {
        self.before.map(|before| self.now.at.duration_since(before.at).as_secs_f64()).filter(|&w| w > 0.0)
    }

    /// `name` summed by `by`, now.
    fn sums(&self, name: &str, by: &[&str]) -> Sums {
        self.now.scrape.sum_by(name, by)
    }

    /// How much counter `name` (summed by `by`) grew in the window; a
    /// counter that restarted (a process did) grew by what it has now.
    fn increase(&self, name: &str, by: &[&str]) -> Option<BTreeMap<Vec<String>, f64>> {
        let before = self.before?.scrape.sum_by(name, by);
        let now = self.sums(name, by);
        let grown = |key: &Vec<String>, value: f64| {
            let earlier = before.get(key).copied().unwrap_or(0.0);
            if value >= earlier { value - earlier } else { value }
        };
        Some(now.iter().map(|(key, &value)| (key.clone(), grown(key, value))).collect())
    }

    /// Counter `name`'s rate per second in the window, by `by`.
    fn rate(&self, name: &str, by: &[&str]) -> Option<BTreeMap<Vec<String>, f64>> {
        let window = self.window()?;
        Some(self.increase(name, by)?.into_iter().map(|(key, grown)| (key, grown / window)).collect())
    }

    /// The mean of histogram `name`'s observations in the window, by `by`.
    fn mean(&self, name: &str, by: &[&str]) -> Option<BTreeMap<Vec<String>, f64>> {
        self.window()?;
        let sums = self.increase(&format!("{name}_sum"), by)?;
        let counts = self.increase(&format!("{name}_count"), by)?;
        Some(
            counts
                .into_iter()
                .filter(|&(_, count)| count > 0.0)
                .map(|(key, count)| {
                    let sum = sums.get(&key).copied().unwrap_or(0.0);
                    (key, sum / count)
                })
                .collect(),
        )
    }

    fn orders(&self) -> Orders {
        let placed = self.sums("polis_orders_placed_total", &[]);
        let decided = self.sums("polis_orders_decided_total", &["outcome"]);
        let total = |rates: Option<BTreeMap<Vec<String>, f64>>| rates.map(|r| r.values().sum());
        Orders {
            placed_total: whole(placed.values().sum()),
            decided_total: decided.into_iter().map(|(key, value)| (key.concat(), whole(value))).collect(),
            placed_per_second: total(self.rate("polis_orders_placed_total", &[])),
            decided_per_second: total(self.rate("polis_orders_decided_total", &[])),
        }
    }

    fn consumers(&self) -> Vec<ConsumerFigures> {
        const BY: [&str; 2] = ["service", "consumer"];
        let handled = self.sums("polis_consumer_handling_seconds_count", &BY);
        let rates = self.rate("polis_consumer_handling_seconds_count", &BY);
        let lags = self.mean("polis_consumer_lag_seconds", &BY);
        handled
            .into_iter()
            .map(|(key, total)| ConsumerFigures {
                service: key[0].clone(),
                consumer: key[1].clone(),
                handled_total: whole(total),
                handled_per_second: rates.as_ref().map(|r| r.get(&key).copied().unwrap_or(0.0)),
                lag_seconds: lags.as_ref().and_then(|l| l.get(&key).copied()),
            })
            .collect()
    }

    fn projections(&self) -> Vec<ProjectionFigures> {
        const BY: [&str; 2] = ["service", "projection"];
        let behind = self.sums("polis_projection_behind_events", &BY);
        let lags = self.mean("polis_projection_lag_seconds", &BY);
        behind
            .into_iter()
            .map(|(key, behind)| ProjectionFigures {
                service: key[0].clone(),
                projection: key[1].clone(),
                behind_events: whole(behind),
                lag_seconds: lags.as_ref().and_then(|l| l.get(&key).copied()),
            })
            .collect()
    }

    fn outboxes(&self) -> Vec<OutboxFigures> {
        let backlog = self.sums("polis_outbox_backlog", &["service"]);
        let oldest = self.sums("polis_outbox_oldest_age_seconds", &["service"]);
        let published = self.rate("polis_outbox_published_total", &["service"]);
        backlog
            .into_iter()
            .map(|(key, backlog)| OutboxFigures {
                service: key.concat(),
                backlog: whole(backlog),
                oldest_age_seconds: oldest.get(&key).copied().unwrap_or(0.0),
                published_per_second: published.as_ref().map(|p| p.get(&key).copied().unwrap_or(0.0)),
            })
            .collect()
    }

    fn processes(&self) -> Vec<ProcessFigures> {
        let memory = self.sums("process_resident_memory_bytes", &["process"]);
        let cpu = self.rate("process_cpu_seconds_total", &["process"]);
        memory
            .into_iter()
            .map(|(key, bytes)| ProcessFigures {
                process: key.concat(),
                resident_memory_bytes: whole(bytes),
                cpu_per_second: cpu.as_ref().and_then(|c| c.get(&key).copied()),
            })
            .collect()
    }
}

/// A count as a whole number (metrics carry them as floats).
fn whole(value: f64) -> u64 {
    // Saturating: a negative or absurd figure is no count.
    value.round().clamp(0.0, u64::MAX as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(text: &str, seconds: u64, start: Instant) -> Taken {
        Taken { at: start + Duration::from_secs(seconds), scrape: Scrape::parse(text, "shop") }
    }

    const BEFORE: &str = r#"
polis_orders_placed_total{service="order",saga="orchestrated"} 10
polis_orders_decided_total{service="order",outcome="approved",reason=""} 6
polis_orders_decided_total{service="order",outcome="rejected",reason="out-of-stock"} 2
polis_consumer_handling_seconds_count{service="payment",consumer="payment",outcome="handled"} 100
polis_consumer_lag_seconds_sum{service="payment",consumer="payment"} 1
polis_consumer_lag_seconds_count{service="payment",consumer="payment"} 100
polis_consumer_handling_seconds_count{service="shipping",consumer="shipping",outcome="handled"} 5
polis_consumer_lag_seconds_sum{service="shipping",consumer="shipping"} 1
polis_consumer_lag_seconds_count{service="shipping",consumer="shipping"} 5
process_cpu_seconds_total 3
process_resident_memory_bytes 1000
"#;

    const NOW: &str = r#"
polis_orders_placed_total{service="order",saga="orchestrated"} 30
polis_orders_decided_total{service="order",outcome="approved",reason=""} 16
polis_orders_decided_total{service="order",outcome="rejected",reason="out-of-stock"} 4
polis_orders_decided_total{service="order",outcome="rejected",reason="payment-declined"} 1
polis_consumer_handling_seconds_count{service="payment",consumer="payment",outcome="handled"} 140
polis_consumer_handling_seconds_count{service="payment",consumer="payment",outcome="duplicate"} 2
polis_consumer_lag_seconds_sum{service="payment",consumer="payment"} 3
polis_consumer_lag_seconds_count{service="payment",consumer="payment"} 140
polis_consumer_handling_seconds_count{service="shipping",consumer="shipping",outcome="handled"} 5
polis_consumer_lag_seconds_sum{service="shipping",consumer="shipping"} 1
polis_consumer_lag_seconds_count{service="shipping",consumer="shipping"} 5
polis_outbox_backlog{service="order"} 4
polis_outbox_oldest_age_seconds{service="order"} 0.5
polis_projection_behind_events{service="payment",projection="customers",generation="1"} 7
process_cpu_seconds_total 4
process_resident_memory_bytes 2000
"#;

    #[test]
    fn rates_and_mean_lags_are_over_the_window() {
        let start = Instant::now();
        let (before, now) = (taken(BEFORE, 0, start), taken(NOW, 2, start));
        let figures = Figures { now: &now, before: Some(&before) };
        assert_eq!(figures.window(), Some(2.0));
        let orders = figures.orders();
        assert_eq!(orders.placed_total, 30);
        assert_eq!(orders.decided_total, BTreeMap::from([("approved".into(), 16), ("rejected".into(), 5)]));
        assert_eq!(orders.placed_per_second, Some(10.0));
        assert_eq!(orders.decided_per_second, Some(6.5));
        let consumers = figures.consumers();
        assert_eq!(consumers.len(), 2);
        let payment = &consumers[0];
        assert_eq!((payment.service.as_str(), payment.handled_total), ("payment", 142));
        assert_eq!(payment.handled_per_second, Some(21.0));
        assert_eq!(payment.lag_seconds, Some(0.05), "2 s of lag over 40 messages");
        let shipping = &consumers[1];
        assert_eq!((shipping.handled_per_second, shipping.lag_seconds), (Some(0.0), None), "idle: no lag to mean");
        let projections = figures.projections();
        assert_eq!((projections[0].projection.as_str(), projections[0].behind_events), ("customers", 7));
        let outboxes = figures.outboxes();
        assert_eq!((outboxes[0].backlog, outboxes[0].oldest_age_seconds), (4, 0.5));
        let processes = figures.processes();
        assert_eq!((processes[0].resident_memory_bytes, processes[0].cpu_per_second), (2000, Some(0.5)));
    }

    #[test]
    fn without_a_window_there_are_totals_but_no_rates() {
        let now = taken(NOW, 0, Instant::now());
        let figures = Figures { now: &now, before: None };
        assert_eq!(figures.window(), None);
        let orders = figures.orders();
        assert_eq!((orders.placed_total, orders.placed_per_second, orders.decided_per_second), (30, None, None));
        assert!(figures.consumers().iter().all(|c| c.handled_per_second.is_none() && c.lag_seconds.is_none()));
        assert_eq!(figures.processes()[0].cpu_per_second, None);
    }

    #[test]
    fn an_audit_report_is_summed_up_and_anything_else_refused() {
        let report = serde_json::json!({
            "at": "2026-12-06T05:00:00Z", "settle_ms": 1500,
            "rules": [{"rule": "orders-agree", "findings": 2}, {"rule": "read-side-agrees", "findings": 0}],
            "drifts": [
                {"kind": "approved-order-without-shipment", "subject": "o-1", "detail": "d", "since": "2026-12-06T04:59:00Z",
                 "repair": {"state": "none"}},
                {"kind": "undone-order-keeps-reservation", "subject": "o-2", "detail": "d", "since": "2026-12-06T04:59:00Z",
                 "repair": {"state": "sent", "message_id": "m", "at": "2026-12-06T04:59:30Z"}},
            ],
            "suspected": {"view-differs": 1},
        });
        let figures = AuditFigures::of(&report).unwrap();
        assert_eq!((figures.drifts_total, figures.unrepaired, figures.suspected, figures.incomplete), (2, 1, 1, false));
        assert_eq!(figures.drifts[1].repair, "sent");
        let mut failed = report.clone();
        failed["rules"][1]["error"] = "the order service is unreachable".into();
        assert!(AuditFigures::of(&failed).unwrap().incomplete);
        assert_eq!(AuditFigures::of(&serde_json::json!({"title": "Service unavailable"})), None);
    }

    #[test]
    fn a_restarted_counter_grew_by_what_it_has() {
        let start = Instant::now();
        let (before, now) = (
            taken("polis_orders_placed_total{saga=\"x\"} 100\n", 0, start),
            taken("polis_orders_placed_total{saga=\"x\"} 4\n", 1, start),
        );
        let figures = Figures { now: &now, before: Some(&before) };
        assert_eq!(figures.orders().placed_per_second, Some(4.0));
    }
}
