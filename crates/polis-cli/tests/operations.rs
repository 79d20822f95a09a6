//! What an operator looks at, on a running shop in both deployments:
//! `GET /metrics` (scraped before and after an order: the series exist and
//! move) and `GET /readyz` (ready when everything is; not ready, naming
//! the bus, while the NATS server is frozen; ready again once it thaws).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use shop::client::Endpoint;
use shop::distributed::Service;
use shop::supervisor::{Supervisor, SupervisorOptions};
use support::{Running, place_one, polis, wait_approved};

const WAIT: Duration = Duration::from_secs(60);

/// A scrape: the Prometheus text format.
struct Scrape(String);

impl Scrape {
    async fn of(endpoint: &Endpoint) -> Self {
        let answer = endpoint.call_with(Method::GET, "/metrics", &[], None::<&()>).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        Self(String::from_utf8(answer.body.to_vec()).unwrap())
    }

    /// The sum of the samples of `name` whose labels include every one of
    /// `labels` (`key="value"`); `None` if there is none.
    fn sum(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let samples: Vec<f64> = self
            .0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(series, _)| {
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                series_name == name && labels.iter().all(|label| rest.contains(label))
            })
            .map(|(_, value)| value.parse::<f64>().unwrap())
            .collect();
        (!samples.is_empty()).then(|| samples.iter().sum())
    }

    fn value(&self, name: &str, labels: &[&str]) -> f64 {
        self.sum(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape:\n{}", self.0))
    }
}

/// What one order must move, by series; `service` is the label of the
/// process's own series (embedded, one scrape holds every service's).
const MOVED_BY_AN_ORDER: &[(&str, &[&str])] = &[
    ("polis_orders_placed_total", &[r#"service="order""#]),
    ("polis_orders_decided_total", &[r#"service="order""#, r#"outcome="approved""#]),
    ("polis_saga_duration_seconds_count", &[r#"saga="create-order""#, r#"outcome="approved""#]),
    ("polis_http_request_duration_seconds_count", &[r#"service="order""#, r#"route="/orders""#]),
    ("polis_outbox_commit_to_publish_seconds_count", &[r#"service="order""#]),
    ("polis_consumer_lag_seconds_count", &[r#"service="order""#]),
    ("polis_consumer_handling_seconds_count", &[r#"service="order""#, r#"outcome="handled""#]),
];

/// Series that must be there, whatever their value.
const PRESENT: &[(&str, &[&str])] = &[
    ("polis_outbox_backlog", &[r#"service="order""#]),
    ("polis_outbox_oldest_age_seconds", &[r#"service="order""#]),
    ("polis_dead_letters", &[r#"service="order""#, r#"status="dead""#]),
    ("polis_http_request_duration_seconds_bucket", &[r#"le="0.005""#]),
];

/// Scrapes `endpoint` until the order placed between `before` and now
/// shows in every series it moves (its counters are recorded once its
/// transactions committed, just after the order reads approved).
async fn after_an_order(endpoint: &Endpoint, before: &Scrape) -> Scrape {
    let last = Mutex::new(None);
    let moved = polis_testkit::wait_for(WAIT, || async {
        let scrape = Scrape::of(endpoint).await;
        let done = MOVED_BY_AN_ORDER
            .iter()
            .all(|(name, labels)| scrape.sum(name, labels).unwrap_or(0.0) > before.sum(name, labels).unwrap_or(0.0))
            && PRESENT.iter().all(|(name, labels)| scrape.sum(name, labels).is_some());
        *last.lock().unwrap() = Some(scrape);
        done
    })
    .await;
    let last = last.into_inner().unwrap().unwrap();
    assert!(moved.is_ok(), "the order did not move every series; the last scrape:\n{}", last.0);
    let placed = (last.value("polis_orders_placed_total", &[]), before.sum("polis_orders_placed_total", &[]));
    assert_eq!(placed.0 - placed.1.unwrap_or(0.0), 1.0, "one order placed, counted once");
    assert!(last.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(last.value("process_cpu_seconds_total", &[]) > 0.0);
    last
}

/// The `polis_…` series names in `text`.
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("polis_"))
        .map(str::to_owned)
        .collect()
}

/// Waits until `/readyz` answers `status`; the last answer's body.
async fn readiness(endpoint: &Endpoint, status: StatusCode) -> serde_json::Value {
    let last = Mutex::new((StatusCode::OK, serde_json::Value::Null));
    let reached = polis_testkit::wait_for(WAIT, || async {
        let Ok((got, body)) = endpoint.call(Method::GET, "/readyz", None::<&()>).await else { return false };
        *last.lock().unwrap() = (got, serde_json::from_slice(&body).unwrap_or_default());
        got == status
    })
    .await;
    let (got, body) = last.into_inner().unwrap();
    assert!(reached.is_ok(), "/readyz never answered {status}; last: {got} {body:#}");
    body
}

fn every_service_ready(report: &serde_json::Value) {
    assert_eq!(report["ready"], true, "{report:#}");
    for service in Service::BUSINESS {
        assert_eq!(report["checks"][service.as_str()]["ok"], true, "{service}: {report:#}");
    }
}

/// `polis up`: one endpoint for the whole shop, every series labelled with
/// its service; `/readyz` reports every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_shop_serves_metrics_that_move_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let port = polis_testkit::free_port();
    let mut command = polis();
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("shop"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap());
    let up = Running(Some(polis_testkit::process::spawn_tethered(command).await.unwrap()));
    let gateway = Endpoint::remote(&format!("http://127.0.0.1:{port}")).unwrap();

    every_service_ready(&readiness(&gateway, StatusCode::OK).await);
    let before = Scrape::of(&gateway).await;
    let order = place_one(&gateway).await;
    wait_approved(&gateway, order).await;
    let after = after_an_order(&gateway, &before).await;
    // The gateway's own requests and the services' in-process ones, apart.
    assert!(
        after.value("polis_http_request_duration_seconds_count", &[r#"service="gateway""#, r#"route="/api/orders""#])
            >= 1.0
    );
    for service in ["payment", "inventory", "shipping"] {
        let label = format!(r#"service="{service}""#);
        assert!(after.value("polis_consumer_handling_seconds_count", &[&label]) >= 1.0, "{service}");
    }
    assert!(after.value("polis_projection_lag_seconds_count", &[r#"service="order-history""#]) >= 1.0);
    assert!(after.value("polis_audit_runs_total", &[r#"service="audit""#]) >= 1.0);

    // Every series the shipped alerting rules use is one the shop exports.
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/prometheus/alerts.yml")).unwrap();
    let named = series_names(&rules);
    assert!(named.len() >= 8, "{named:?}");
    // Sampled only while a saga is in flight: documented instead.
    let while_in_flight = ["polis_sagas_oldest_wait_seconds"];
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md")).unwrap();
    for name in named {
        let series = name.strip_suffix("_bucket").unwrap_or(&name);
        if while_in_flight.contains(&series) {
            assert!(documented.contains(series), "{series} is not in docs/operations.md");
            continue;
        }
        assert!(after.0.contains(&format!("\n{series}")), "the alert rules use {name}, which no scrape shows");
    }

    assert!(up.signal_and_wait("-TERM").await.success());
}

/// `polis up --mode distributed`'s processes each serve their own
/// `/metrics` and `/readyz`; freezing the NATS server (SIGSTOP: the
/// connections stay open, nothing answers) makes every service, and so the
/// gateway, not ready, saying why; thawing it makes them ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_processes_serve_metrics_and_readiness_that_sees_a_frozen_broker() {
    let postgres = polis_testkit::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let options = SupervisorOptions::new(env!("CARGO_BIN_EXE_polis"), dir.path())
        .with_gateway_listen("127.0.0.1:0".parse().unwrap())
        .with_env("POLIS_POSTGRES_URL", postgres.url())
        .with_env("POLIS__DATABASE_PREFIX", postgres.name());
    let mut supervisor = Supervisor::start(options).await.unwrap();
    let gateway = Endpoint::remote(&supervisor.gateway_url()).unwrap();
    let order_service = Endpoint::remote(&supervisor.url(Service::Order)).unwrap();

    every_service_ready(&readiness(&gateway, StatusCode::OK).await);
    let own = readiness(&order_service, StatusCode::OK).await;
    for part in ["store", "bus", "relay", "consumer"] {
        assert_eq!(own["checks"][part]["ok"], true, "{part}: {own:#}");
    }

    let before = Scrape::of(&order_service).await;
    let order = place_one(&gateway).await;
    wait_approved(&gateway, order).await;
    after_an_order(&order_service, &before).await;
    let gateway_scrape = Scrape::of(&gateway).await;
    assert!(gateway_scrape.value("polis_http_request_duration_seconds_count", &[r#"service="gateway""#]) >= 1.0);
    assert_eq!(gateway_scrape.sum("polis_orders_placed_total", &[]), None, "another process's series");
    let payment = Scrape::of(&Endpoint::remote(&supervisor.url(Service::Payment)).unwrap()).await;
    assert!(payment.value("polis_consumer_lag_seconds_count", &[r#"service="payment""#]) >= 1.0);

    // The dashboard's snapshot reads every process's metrics, and the order.
    let snapshot: gateway::dashboard::Snapshot = gateway.get("/api/dashboard").await.unwrap();
    assert!(snapshot.unavailable.is_empty(), "{:?}", snapshot.unavailable);
    let processes: Vec<&str> = snapshot.processes.iter().map(|p| p.process.as_str()).collect();
    assert_eq!(processes.len(), Service::BUSINESS.len(), "one per service process: {processes:?}");
    assert!(snapshot.processes.iter().all(|p| p.resident_memory_bytes > 0), "{:?}", snapshot.processes);
    for service in ["order", "inventory", "payment", "shipping", "order-history"] {
        let handled = snapshot.consumers.iter().find(|c| c.service == service).map(|c| c.handled_total);
        assert!(handled.is_some_and(|n| n >= 1), "{service}'s consumer: {:?}", snapshot.consumers);
    }
    assert_eq!(snapshot.orders.placed_total, 1);
    assert_eq!(snapshot.orders.decided_total.get("approved"), Some(&1));
    assert!(snapshot.recent_orders.iter().any(|r| r.order.id == order && r.timeline.len() >= 2), "{snapshot:?}");
    assert!(snapshot.outboxes.iter().any(|o| o.service == "order"), "{:?}", snapshot.outboxes);

    let nats = std::fs::read_to_string(dir.path().join("run/nats-server.pid")).unwrap();
    let signal = |name: &str| {
        let sent = Command::new("kill").args([name, nats.trim()]).status().unwrap();
        assert!(sent.success(), "kill {name} {nats}");
    };
    signal("-STOP");
    let frozen = readiness(&gateway, StatusCode::SERVICE_UNAVAILABLE).await;
    signal("-CONT");
    let detail = frozen["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("order") && detail.contains("bus"), "{frozen:#}");
    assert_eq!(frozen["checks"]["payment"]["ok"], false, "{frozen:#}");
    every_service_ready(&readiness(&gateway, StatusCode::OK).await);

    assert!(supervisor.exited().is_empty(), "a process exited");
    supervisor.stop().await;
}
