//! Traces across hops, in both deployments: a batch of orders through the
//! gateway, and an order whose shipping step never answers (so a saga
//! deadline fires and the compensations run), each order one connected
//! trace. Every span goes to one in-memory exporter through the same
//! OpenTelemetry layer the binaries install (`polis_runtime::telemetry::
//! trace_layer`), so the distributed shop runs as `Node`s in this process
//! (each with its own PostgreSQL database, NATS connection and HTTP
//! server, as `polis serve` runs them): the trace context still crosses
//! real HTTP requests and real NATS messages, only the spans meet here.
//!
//! For every order: the spans of the messages keyed by its id share one
//! trace id, whose root is the gateway's `POST /api/orders` request span;
//! every span's parent is in the trace; and every `handle_message` span's
//! parent is the span that wrote its message to an outbox (the span with a
//! `polis.outbox.write` event naming the message id) — so the trace is
//! connected through every hop, replies and deadlines included.
//!
//! Its own test binary: the global subscriber is per process.
#![allow(clippy::unwrap_used)]

// Its customer, product, order and status helpers; the rest is for the end-to-end suites.
#[allow(dead_code)]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use contracts::SagaStyle;
use contracts::order::OrderStatus;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use polis_runtime::Secret;
use polis_testkit::NatsServer;
use shop::client::Endpoint;
use shop::distributed::DistributedConfig;
use shop::workload::{self, Apis, Pacing, Scope};
use shop::{Embedded, Service, ShopConfig};
use support::Client;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use uuid::Uuid;

/// Orders in a batch.
const ORDERS: usize = 12;

/// How long the spans of finished orders may take to be complete (the last
/// events still travelling to their consumers).
const PATIENCE: Duration = Duration::from_secs(30);

/// The one exporter every span of this process ends in.
fn exporter() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _) = INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = polis_runtime::telemetry::trace_layer(&provider).unwrap();
        tracing_subscriber::registry().with(layer).init();
        (exporter, provider)
    });
    exporter
}

fn shop_config(style: SagaStyle, silent: &[Service]) -> ShopConfig {
    let mut config = ShopConfig { saga: style, silent: silent.to_vec(), ..ShopConfig::default() };
    // Short deadlines where one must fire. The batch keeps the default
    // ones: a replica or a consumer a second late (a loaded machine) must
    // not turn its orders into timeouts.
    if !silent.is_empty() {
        config.order.step_timeout_ms = 1_500;
        config.order.order_timeout_ms = 3_000;
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hop_of_an_order_is_one_connected_trace_embedded() {
    exporter();
    for silent in [&[][..], &[Service::Shipping]] {
        let dir = tempfile::tempdir().unwrap();
        let shop = Embedded::start(dir.path(), &shop_config(SagaStyle::Orchestration, silent)).await.unwrap();
        let http = polis_runtime::HttpOptions::default();
        let gateway = || Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http));
        let endpoint = |service: Service| match service {
            Service::Gateway => gateway(),
            service => Endpoint::local(shop.router(service)),
        };
        if silent.is_empty() {
            let apis = Apis::new(|service| Ok(endpoint(service))).unwrap();
            batch_is_traced(&apis).await;
        } else {
            let client = Client::new(
                gateway(),
                endpoint(Service::Inventory),
                endpoint(Service::Payment),
                endpoint(Service::Shipping),
            );
            deadline_is_traced(&client).await;
        }
        shop.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hop_of_an_order_is_one_connected_trace_distributed() {
    exporter();
    let server = polis_testkit::postgres().await;
    for (i, silent) in [&[][..], &[Service::Shipping]].into_iter().enumerate() {
        // A NATS server per shop: the streams' names are fixed.
        let nats = NatsServer::start().await.unwrap();
        let mut config = DistributedConfig::default();
        config.infra.postgres_url = Some(Secret::new(server.url().to_owned()));
        config.infra.nats_url = Some(Secret::new(nats.url()));
        config.database_prefix = format!("{}_{i}", server.name());
        let shop = shop_config(SagaStyle::Orchestration, silent);
        (config.saga, config.order, config.silent) = (shop.saga, shop.order, shop.silent);
        let nodes = support::start_nodes(&mut config).await;
        let endpoint = |service: Service| Endpoint::remote(&nodes[&service].url());
        if silent.is_empty() {
            let apis = Apis::new(endpoint).unwrap();
            batch_is_traced(&apis).await;
        } else {
            let client = Client::new(
                endpoint(Service::Gateway).unwrap(),
                endpoint(Service::Inventory).unwrap(),
                endpoint(Service::Payment).unwrap(),
                endpoint(Service::Shipping).unwrap(),
            );
            deadline_is_traced(&client).await;
        }
        for (_, node) in nodes.into_iter().rev() {
            node.shutdown().await.unwrap();
        }
    }
}

/// A batch of orders from the demo's workload (approvals and every kind of
/// rejection), each a connected trace through every participant.
async fn batch_is_traced(apis: &Apis) {
    let mut rng = workload::rng(14);
    let seeded = workload::seed(apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let placed = workload::place_orders(apis, &plan, 4, Pacing::Decided, &|_| {}).await.unwrap();
    let views =
        workload::wait_terminal(apis, Scope::Placed(&placed), workload::patience(ORDERS), &|_| {}).await.unwrap();
    let ids: Vec<Uuid> = placed.iter().map(|(id, _)| *id).collect();
    let traces = connected_traces(&ids).await;
    for (id, view) in &views {
        if view.status == OrderStatus::Approved {
            // Orchestrated: a command to each participant, their replies to the order service.
            let consumers = traces[id].consumers();
            for participant in ["inventory", "payment", "shipping", "order"] {
                assert!(
                    consumers.contains(participant),
                    "order {id}: no span of {participant}'s consumer: {consumers:?}"
                );
            }
        }
    }
    if !views.values().any(|view| view.status == OrderStatus::Approved) {
        let letters: anyhow::Result<serde_json::Value> = apis.gateway().get("/api/admin/dead-letters").await;
        panic!("no order approved: {views:?}\ndead letters: {letters:?}");
    }
}

/// An order whose shipping step never answers: its saga's deadline fires
/// and the compensations run, all in the order's trace.
async fn deadline_is_traced(client: &Client) {
    let customer = client.customer("DE", 1_000_000, "patient").await;
    let sku = client.product(100, 5).await;
    let id = client.order(customer, &[(&sku, 2)]).await;
    client.wait_status(id, OrderStatus::Rejected).await;
    let traces = connected_traces(&[id]).await;
    let types = traces[&id].message_types();
    assert!(types.contains(polis_saga::DEADLINE_TYPE), "order {id}: no deadline span in {types:?}");
}

/// One order's spans, once they are complete.
struct Trace {
    spans: Vec<SpanData>,
}

impl Trace {
    fn handled(&self) -> impl Iterator<Item = &SpanData> {
        self.spans.iter().filter(|span| span.name == "handle_message")
    }

    fn consumers(&self) -> HashSet<String> {
        self.handled().filter_map(|span| attribute(span, "consumer")).collect()
    }

    fn message_types(&self) -> HashSet<String> {
        self.handled().filter_map(|span| attribute(span, "message_type")).collect()
    }
}

/// Waits until the trace of each order in `ids` is complete, then checks
/// it (module docs) and returns it.
async fn connected_traces(ids: &[Uuid]) -> HashMap<Uuid, Trace> {
    let mut last = Err(String::from("not looked at yet"));
    let settled = polis_testkit::wait_for(PATIENCE, || {
        last = traces(ids);
        std::future::ready(last.is_ok())
    })
    .await;
    match (settled, last) {
        (Ok(()), Ok(traces)) => traces,
        (_, Err(why)) => panic!("the orders' traces are not connected within {PATIENCE:?}: {why}"),
        (Err(timed_out), Ok(_)) => panic!("{timed_out}"),
    }
}

/// The traces of `ids` if each is connected, or what is wrong.
fn traces(ids: &[Uuid]) -> Result<HashMap<Uuid, Trace>, String> {
    let spans = exporter().get_finished_spans().map_err(|err| err.to_string())?;
    let by_id: HashMap<(TraceId, SpanId), &SpanData> =
        spans.iter().map(|span| ((span.span_context.trace_id(), span.span_context.span_id()), span)).collect();
    // The span that wrote each message, by the message's id.
    let mut writers: HashMap<String, &SpanData> = HashMap::new();
    for span in &spans {
        for event in span.events.events.iter().filter(|event| event.name == polis_core::trace::OUTBOX_WRITE_EVENT) {
            if let Some(id) = event.attributes.iter().find(|kv| kv.key.as_str() == "message_id") {
                writers.insert(id.value.to_string(), span);
            }
        }
    }
    let mut traces = HashMap::new();
    for id in ids {
        let key = id.to_string();
        let trace_ids: HashSet<TraceId> = spans
            .iter()
            .filter(|span| span.name == "handle_message" && attribute(span, "key").as_deref() == Some(key.as_str()))
            .map(|span| span.span_context.trace_id())
            .collect();
        let [trace_id] = trace_ids.iter().copied().collect::<Vec<_>>()[..] else {
            return Err(format!("order {id}: its messages' spans are in {} traces, not one", trace_ids.len()));
        };
        let trace: Vec<SpanData> =
            spans.iter().filter(|span| span.span_context.trace_id() == trace_id).cloned().collect();
        let roots: Vec<&SpanData> = trace.iter().filter(|span| span.parent_span_id == SpanId::INVALID).collect();
        let [root] = roots[..] else {
            return Err(format!("order {id}: {} root spans, not one", roots.len()));
        };
        if root.name != "http_request" || attribute(root, "route").as_deref() != Some("/api/orders") {
            return Err(format!(
                "order {id}: the trace starts at {} {:?}, not at the gateway's request",
                root.name, root.attributes
            ));
        }
        for span in &trace {
            if span.parent_span_id != SpanId::INVALID && !by_id.contains_key(&(trace_id, span.parent_span_id)) {
                return Err(format!(
                    "order {id}: the parent of {} {:?} is not in the trace (yet)",
                    span.name, span.attributes
                ));
            }
        }
        for span in trace.iter().filter(|span| span.name == "handle_message") {
            let message = attribute(span, "message_id").unwrap_or_default();
            let Some(writer) = writers.get(&message) else {
                return Err(format!("order {id}: no span wrote message {message} (yet)"));
            };
            if writer.span_context.trace_id() != trace_id || writer.span_context.span_id() != span.parent_span_id {
                return Err(format!(
                    "order {id}: the span of message {message} ({:?}) is not the child of the span that wrote it ({} {:?})",
                    span.attributes, writer.name, writer.attributes
                ));
            }
            if !span.parent_span_is_remote {
                return Err(format!(
                    "order {id}: the span of message {message} continues a local span, not the message's context"
                ));
            }
        }
        traces.insert(*id, Trace { spans: trace });
    }
    Ok(traces)
}

/// A span's attribute as text.
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv: &&KeyValue| kv.key.as_str() == key).map(|kv| match &kv.value {
        Value::String(text) => text.to_string(),
        other => other.to_string(),
    })
}
