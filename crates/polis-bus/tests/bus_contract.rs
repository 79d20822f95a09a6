//! The bus contract: one suite, run against the in-process bus and NATS JetStream.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use polis_core::bus::{Bus, Delivery, Subscription, Topic};
use polis_core::{Message, MessageKind, Metadata};
use serde_json::json;
use uuid::Uuid;

/// Keeps whatever backs a bus alive for a test.
type Guard = Box<dyn std::any::Any + Send>;

async fn in_process() -> (Arc<dyn Bus>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let bus = polis_bus::InProcessBus::open(dir.path().join("bus.db")).await.unwrap();
    (Arc::new(bus), Box::new(dir))
}

async fn nats() -> (Arc<dyn Bus>, Guard) {
    let server = polis_testkit::nats().await;
    let options = polis_bus::nats::NatsOptions { ack_wait: ACK_WAIT, ..Default::default() };
    let bus = polis_bus::NatsBus::connect(server.url(), options).await.unwrap();
    (Arc::new(bus), Box::new(server))
}

/// A service name no other test uses (the NATS server is shared per binary).
fn service() -> String {
    format!("svc{}", &Uuid::now_v7().simple().to_string()[20..])
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("a delivery within 20 s").unwrap()
}

/// How long NATS (as these tests configure it) waits for an acknowledgement
/// before delivering again.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Waits out the bus's redelivery time: a delivery whose acknowledgement did
/// not take comes back only then, and nothing but waiting shows that it
/// does not. (The in-process bus redelivers only on a new subscription.)
async fn past_the_ack_wait() {
    tokio::time::sleep(ACK_WAIT + Duration::from_millis(500)).await;
}

/// A message on `topic` that nothing else in a test sends.
fn marker(topic: &Topic) -> Message {
    match topic.kind {
        MessageKind::Event => Message::event(&topic.service, "marker.set.v1", "marker", json!({})),
        MessageKind::Command => Message::command("caller", &topic.service, "marker.set.v1", "marker", json!({})),
        MessageKind::Reply => {
            let command = Message::command(&topic.service, "other", "marker.set.v1", "marker", json!({}));
            Message::reply_to(&command, "marker.set.v1", json!({}))
        }
    }
}

/// Checks that `marker`, published last, is the subscription's next
/// delivery: anything else stored for it before (a duplicate, another
/// topic's message, a redelivery that is due) would come first.
async fn the_next_is(sub: &mut Box<dyn Subscription>, marker: &Message) {
    let d = next(sub).await;
    assert_eq!(d.message.as_ref().unwrap().id, marker.id, "only the marker follows: {:?}", d.message);
    d.ack().await.unwrap();
}

/// Publishes a marker on `topic`; [`the_next_is`] it.
async fn the_next_is_a_marker(bus: &Arc<dyn Bus>, sub: &mut Box<dyn Subscription>, topic: &Topic) {
    let marker = marker(topic);
    bus.publish(std::slice::from_ref(&marker)).await.unwrap();
    the_next_is(sub, &marker).await;
}

fn events(service: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::event(service, "thing.happened.v1", &format!("k-{}", i % 3), json!({ "n": i }))).collect()
}

macro_rules! contract {
    ($($backend:ident => $open:path),*) => {$(
        mod $backend {
            contract!(@cases $open;
                delivers_in_order_with_every_attribute,
                acknowledged_messages_are_not_redelivered_to_a_resumed_consumer,
                unacknowledged_messages_are_redelivered,
                nack_redelivers_with_a_higher_attempt,
                a_message_id_is_stored_once,
                topics_and_consumers_are_independent,
            );
        }
    )*};
    (@cases $open:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (bus, _guard) = $open().await;
            super::cases::$case(bus).await;
        }
    )*};
}

contract!(in_process => crate::in_process, nats => crate::nats);

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn delivers_in_order_with_every_attribute(bus: Arc<dyn Bus>) {
        let svc = service();
        let mut sent = events(&svc, 10);
        sent[4].metadata = Metadata {
            correlation_id: Some(Uuid::now_v7()),
            causation_id: Some(Uuid::now_v7()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        bus.publish(&sent).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for expected in &sent {
            let d = next(&mut sub).await;
            assert_eq!(d.attempt, 1);
            assert_eq!(d.message.as_ref().unwrap(), expected);
            d.ack().await.unwrap();
        }
        past_the_ack_wait().await;
        the_next_is_a_marker(&bus, &mut sub, &Topic::events_of(&svc)).await;
    }

    pub async fn acknowledged_messages_are_not_redelivered_to_a_resumed_consumer(bus: Arc<dyn Bus>) {
        let svc = service();
        let sent = events(&svc, 6);
        bus.publish(&sent[..3]).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for _ in 0..3 {
            next(&mut sub).await.ack().await.unwrap();
        }
        drop(sub);
        bus.publish(&sent[3..]).await.unwrap();
        let mut resumed = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for expected in &sent[3..] {
            let d = next(&mut resumed).await;
            assert_eq!(d.message.as_ref().unwrap().id, expected.id);
            d.ack().await.unwrap();
        }
        past_the_ack_wait().await;
        the_next_is_a_marker(&bus, &mut resumed, &Topic::events_of(&svc)).await;
    }

    pub async fn unacknowledged_messages_are_redelivered(bus: Arc<dyn Bus>) {
        let svc = service();
        let sent = events(&svc, 2);
        bus.publish(&sent).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        let first = next(&mut sub).await;
        assert_eq!(first.message.as_ref().unwrap().id, sent[0].id);
        // The consumer dies before acknowledging.
        drop(first);
        drop(sub);
        let mut resumed = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        let again = next(&mut resumed).await;
        assert_eq!(again.message.as_ref().unwrap().id, sent[0].id, "the unacknowledged message comes back first");
        assert!(again.attempt >= 2, "and says it is a redelivery (attempt {})", again.attempt);
        again.ack().await.unwrap();
        let second = next(&mut resumed).await;
        assert_eq!(second.message.as_ref().unwrap().id, sent[1].id);
        second.ack().await.unwrap();
    }

    pub async fn nack_redelivers_with_a_higher_attempt(bus: Arc<dyn Bus>) {
        let svc = service();
        let sent = events(&svc, 1);
        bus.publish(&sent).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for attempt in 1..=3 {
            let d = next(&mut sub).await;
            assert_eq!((d.message.as_ref().unwrap().id, d.attempt), (sent[0].id, attempt));
            d.nack(Duration::from_millis(50)).await.unwrap();
        }
        next(&mut sub).await.ack().await.unwrap();
        past_the_ack_wait().await;
        the_next_is_a_marker(&bus, &mut sub, &Topic::events_of(&svc)).await;
    }

    pub async fn a_message_id_is_stored_once(bus: Arc<dyn Bus>) {
        let svc = service();
        let sent = events(&svc, 3);
        bus.publish(&sent[..2]).await.unwrap();
        // A relay that crashed before marking its batch published sends it again.
        bus.publish(&sent).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for expected in &sent {
            let d = next(&mut sub).await;
            assert_eq!(d.message.as_ref().unwrap().id, expected.id);
            d.ack().await.unwrap();
        }
        // No duplicate was stored.
        the_next_is_a_marker(&bus, &mut sub, &Topic::events_of(&svc)).await;
    }

    pub async fn topics_and_consumers_are_independent(bus: Arc<dyn Bus>) {
        let svc = service();
        let event = Message::event(&svc, "thing.happened.v1", "k", json!({}));
        let command = Message::command("caller", &svc, "thing.do.v1", "k", json!({}));
        let reply = Message::reply_to(&command, "thing.done.v1", json!({}));
        bus.publish(&[event.clone(), command.clone(), reply.clone()]).await.unwrap();

        let mut events_a = bus.subscribe("a", &Topic::events_of(&svc)).await.unwrap();
        let mut events_b = bus.subscribe("b", &Topic::events_of(&svc)).await.unwrap();
        let mut commands = bus.subscribe("a", &Topic::commands_to(&svc)).await.unwrap();
        let mut replies = bus.subscribe("caller", &Topic::replies_to("caller")).await.unwrap();
        for (sub, expected) in
            [(&mut events_a, &event), (&mut events_b, &event), (&mut commands, &command), (&mut replies, &reply)]
        {
            let d = next(sub).await;
            assert_eq!(d.message.as_ref().unwrap(), expected);
            d.ack().await.unwrap();
        }
        // Nothing of the other topics: only each one's own marker follows.
        let markers =
            [Topic::events_of(&svc), Topic::commands_to(&svc), Topic::replies_to("caller")].map(|t| marker(&t));
        bus.publish(&markers).await.unwrap();
        for (sub, marker) in [
            (&mut events_a, &markers[0]),
            (&mut events_b, &markers[0]),
            (&mut commands, &markers[1]),
            (&mut replies, &markers[2]),
        ] {
            the_next_is(sub, marker).await;
        }
    }
}
