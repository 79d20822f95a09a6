//! Trace context through the outbox, a bus and a consumer, on SQLite with
//! the in-process bus and on PostgreSQL with NATS: a message written under
//! a span carries that span's context; a redelivered message's span is
//! still that span's (remote) child, with a link marking the redelivery;
//! an in-place retry runs in a sibling span linked to the attempt it
//! repeats; and what the retry sends is written under the retry's span.
//!
//! Its own test binary: the global subscriber is per process.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Outcome};
use polis_core::bus::{Bus, Topic};
use polis_core::outbox::{Transaction, TransactionalStore};
use polis_core::{Message, StoreError};
use serde_json::json;
use support::{Guard, unique};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const WAIT: Duration = Duration::from_secs(20);

fn exporter() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _) = INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing_subscriber::registry().with(layer).init();
        (exporter, provider)
    });
    exporter
}

/// Fails its first attempt (transiently), then sends a reply.
struct FlakyOnce {
    calls: AtomicU32,
}

#[async_trait]
impl<Tx: Transaction> Handler<Tx> for FlakyOnce {
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HandlerError::Transient("not yet".into()));
        }
        tx.send(
            &Message::event("billing", "billing.billed.v1", &message.key, json!({})).with_metadata(message.caused()),
        )
        .await?;
        Ok(())
    }
}

macro_rules! combinations {
    ($($name:ident => ($store:path, $bus:path)),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (store, _store_guard) = $store(&unique("shop")).await;
            let (bus, _bus_guard): (Arc<dyn Bus>, Guard) = $bus().await;
            a_redelivery_and_a_retry_are_linked_not_nested(store, bus).await;
        }
    )*};
}

combinations! {
    sqlite_in_process => (crate::support::sqlite, crate::support::in_process_bus),
    postgres_nats => (crate::support::postgres, crate::support::nats_bus),
}

async fn a_redelivery_and_a_retry_are_linked_not_nested<S: TransactionalStore>(store: Arc<S>, bus: Arc<dyn Bus>) {
    exporter();
    let service = store.service().to_owned();
    let key = unique("order-");
    let message = Message::event(&service, "shop.order-placed.v1", &key, json!({}));
    let placing = tracing::info_span!("place_order", key);
    let sent = message.clone();
    store
        .transaction::<_, _, StoreError>(async move |tx| tx.send(&sent).await)
        .instrument(placing.clone())
        .await
        .unwrap();
    let placing = polis_core::trace::of(&placing).unwrap();

    // The stored message carries the writer's context: publish it as the relay would.
    let entries = store.unpublished(10).await.unwrap();
    let stored = entries.iter().find(|e| e.message.id == message.id).unwrap().message.clone();
    assert_eq!(stored.metadata.traceparent.as_deref(), Some(placing.as_str()));
    let topic = Topic::events_of(&service);
    let mut subscription = bus.subscribe("billing", &topic).await.unwrap();
    bus.publish(&[stored]).await.unwrap();
    let first = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(first.attempt, 1);
    first.nack(Duration::ZERO).await.unwrap();
    let again = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2, "the nacked message comes back as a redelivery");

    let options = ConsumerOptions { retry_min: Duration::from_millis(1), ..ConsumerOptions::default() };
    let consumer = Consumer::new("billing", store.clone(), options);
    let handler: Arc<dyn Handler<S::Tx>> = Arc::new(FlakyOnce { calls: AtomicU32::new(0) });
    assert_eq!(consumer.process(&handler, again).await, Outcome::Handled);

    let spans = exporter().get_finished_spans().unwrap();
    let writer = polis_core::trace::parse(&placing).unwrap();
    let message_id = message.id.to_string();
    let handled = spans
        .iter()
        .find(|s| s.name == "handle_message" && attribute(s, "message_id").as_deref() == Some(&message_id))
        .unwrap();
    // The redelivery continues the writer's trace, as its remote child ...
    assert_eq!(handled.span_context.trace_id(), writer.trace_id());
    assert_eq!(handled.parent_span_id, writer.span_id());
    assert!(handled.parent_span_is_remote);
    assert_eq!(attribute(handled, "attempt").as_deref(), Some("2"));
    assert_eq!(attribute(handled, "outcome").as_deref(), Some("handled"));
    // ... and is marked as a redelivery by a link to the message's context.
    let [link] = &handled.links.links[..] else { panic!("one link expected: {:?}", handled.links) };
    assert_eq!(link.span_context.span_id(), writer.span_id());
    assert!(link.attributes.iter().any(|kv| kv.key.as_str() == "polis.link" && kv.value.as_str() == "redelivery"));

    // The retry: a child of the delivery's span, linked to the attempt it repeats.
    let retry = spans
        .iter()
        .find(|s| s.name == "retry_message" && s.parent_span_id == handled.span_context.span_id())
        .unwrap_or_else(|| panic!("no retry span under {handled:?}"));
    assert_eq!(retry.span_context.trace_id(), writer.trace_id());
    let [link] = &retry.links.links[..] else { panic!("one link expected: {:?}", retry.links) };
    assert_eq!(link.span_context.span_id(), handled.span_context.span_id());
    assert!(link.attributes.iter().any(|kv| kv.key.as_str() == "polis.link" && kv.value.as_str() == "retry"));
    assert_ne!(retry.parent_span_id, SpanId::INVALID);

    // What the retry sent was written under the retry's span.
    let reply =
        store.unpublished(10).await.unwrap().into_iter().find(|e| e.message.key == key && e.message.id != message.id);
    let reply = reply.expect("the handler's message is in the outbox").message;
    let written_by = polis_core::trace::parse(reply.metadata.traceparent.as_deref().unwrap()).unwrap();
    assert_eq!(written_by.span_id(), retry.span_context.span_id());
    let event = retry.events.events.iter().find(|e| e.name == polis_core::trace::OUTBOX_WRITE_EVENT).unwrap();
    assert!(
        event.attributes.iter().any(|kv| kv.key.as_str() == "message_id" && kv.value.as_str() == reply.id.to_string())
    );
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
}
