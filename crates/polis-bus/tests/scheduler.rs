//! Scheduled messages end to end: schedule → scheduler → outbox → relay →
//! bus → consumer, on every combination of store and bus; plus the
//! scheduler's resilience to store failures and its metrics.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Relay, RelayOptions, Scheduler, SchedulerOptions};
use polis_core::bus::{Bus, Topic};
use polis_core::outbox::{Backlog, DeadLetter, OutboxEntry, Purged, Transaction, TransactionalStore, Work};
use polis_core::{Message, StoreError};
use polis_testkit::wait_for;
use serde_json::json;
use support::{Applied, unique};
use tokio::sync::watch;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn consumer_options() -> ConsumerOptions {
    ConsumerOptions { retry_min: Duration::from_millis(5), retry_max: Duration::from_millis(50), ..Default::default() }
}

fn relay_options() -> RelayOptions {
    RelayOptions { poll_interval: Duration::from_millis(100), ..Default::default() }
}

fn scheduler_options() -> SchedulerOptions {
    SchedulerOptions { poll_interval: Duration::from_millis(50), ..Default::default() }
}

/// A command the producer sends (or schedules) to the consumer's service.
fn command(from: &str, to: &str, message_type: &str, key: &str) -> Message {
    Message::command(from, to, message_type, key, json!({ "order": key }))
}

async fn schedule<S: TransactionalStore>(store: &S, message: &Message, due_at: DateTime<Utc>) {
    let message = message.clone();
    store.transaction::<_, _, StoreError>(async move |tx| tx.schedule(&message, due_at).await).await.unwrap();
}

async fn send<S: TransactionalStore>(store: &S, message: &Message) {
    let message = message.clone();
    store.transaction::<_, _, StoreError>(async move |tx| tx.send(&message).await).await.unwrap();
}

/// Each handled message's id and when its handler ran.
type HandledAt = Arc<Mutex<Vec<(Uuid, DateTime<Utc>)>>>;

/// Records each handled message in the consumer's table and when it ran.
struct Timed<S> {
    handled: HandledAt,
    _store: std::marker::PhantomData<fn() -> S>,
}

#[async_trait]
impl<S: Applied> Handler<S::Tx> for Timed<S> {
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        let at = Utc::now();
        S::record_in(tx, message).await?;
        self.handled.lock().unwrap().push((message.id, at));
        Ok(())
    }
}

/// The consumer side of a test: its service subscribed to commands sent to it.
struct Receiver<S: Applied> {
    store: Arc<S>,
    handled: HandledAt,
    _running: polis_bus::ConsumerHandle,
}

impl<S: Applied> Receiver<S> {
    async fn start(store: Arc<S>, bus: Arc<dyn Bus>) -> Self {
        let handled = Arc::new(Mutex::new(Vec::new()));
        let handler = Timed::<S> { handled: handled.clone(), _store: std::marker::PhantomData };
        let running = Arc::new(
            Consumer::new(store.service().to_owned(), store.clone(), consumer_options())
                .route(Topic::commands_to(store.service()), handler),
        )
        .spawn(bus)
        .await
        .unwrap();
        Self { store, handled, _running: running }
    }

    /// Waits until `id` has been applied; returns when its handler ran.
    async fn wait_handled(&self, id: Uuid) -> DateTime<Utc> {
        let reached = wait_for(WAIT, || async { self.times_applied(id).await > 0 }).await;
        assert!(reached.is_ok(), "message {id} was not handled within {WAIT:?}");
        self.handled.lock().unwrap().iter().find(|(h, _)| *h == id).map(|(_, at)| *at).unwrap()
    }

    /// How often `id`'s effects are in the consumer's table.
    async fn times_applied(&self, id: Uuid) -> usize {
        self.store.applied().await.iter().filter(|a| a.2 == id).count()
    }
}

macro_rules! combos {
    ($($name:ident => ($store:path, $bus:path)),* $(,)?) => {$(
        mod $name {
            combos!(@cases $store, $bus;
                a_scheduled_command_is_handled_once_when_due,
                an_unscheduled_command_is_never_handled,
                a_deadline_missed_while_no_scheduler_ran_fires_after_restart,
            );
        }
    )*};
    (@cases $store:path, $bus:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (producer, _p) = $store(&crate::unique("orders")).await;
            let (consumer, _c) = $store(&crate::unique("payments")).await;
            crate::Applied::create_applied(&*consumer).await;
            let (bus, _b) = $bus().await;
            super::cases::$case(producer, consumer, bus).await;
        }
    )*};
}

combos! {
    sqlite_in_process => (crate::support::sqlite, crate::support::in_process_bus),
    postgres_nats => (crate::support::postgres, crate::support::nats_bus),
    sqlite_nats => (crate::support::sqlite, crate::support::nats_bus),
    postgres_in_process => (crate::support::postgres, crate::support::in_process_bus),
}

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn a_scheduled_command_is_handled_once_when_due<S: Applied>(
        producer: Arc<S>,
        consumer: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let receiver = Receiver::start(consumer.clone(), bus.clone()).await;
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let _scheduler = Scheduler::new(producer.clone(), scheduler_options()).spawn();
        let (from, to) = (producer.service(), consumer.service());

        // A saga step: ask for something now, and time out if it takes over a second.
        let request = command(from, to, "payment.authorize.v1", "order-1");
        let deadline = command(from, to, "payment.authorization-timed-out.v1", "order-1");
        let due = Utc::now() + chrono::Duration::seconds(1);
        let (sent, scheduled) = (request.clone(), deadline.clone());
        producer
            .transaction::<_, _, StoreError>(async move |tx| {
                tx.send(&sent).await?;
                tx.schedule(&scheduled, due).await
            })
            .await
            .unwrap();

        receiver.wait_handled(request.id).await;
        let handled_at = receiver.wait_handled(deadline.id).await;
        assert!(handled_at >= due, "handled at {handled_at}, before its due time {due}");
        // Anything later through the same pipeline arrives after it: the
        // deadline had every chance to be delivered twice by now.
        let later = command(from, to, "payment.capture.v1", "order-1");
        send(&*producer, &later).await;
        receiver.wait_handled(later.id).await;
        assert_eq!(receiver.times_applied(deadline.id).await, 1, "handled once");
        assert_eq!(producer.scheduled_count().await.unwrap(), 0);
    }

    pub async fn an_unscheduled_command_is_never_handled<S: Applied>(
        producer: Arc<S>,
        consumer: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let receiver = Receiver::start(consumer.clone(), bus.clone()).await;
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let _scheduler = Scheduler::new(producer.clone(), scheduler_options()).spawn();
        let (from, to) = (producer.service(), consumer.service());

        // The reply came in time: the saga cancels its deadline.
        let now = Utc::now();
        let cancelled = command(from, to, "payment.authorization-timed-out.v1", "order-2");
        let kept = command(from, to, "payment.reminder.v1", "order-2");
        schedule(&*producer, &cancelled, now + chrono::Duration::milliseconds(500)).await;
        schedule(&*producer, &kept, now + chrono::Duration::milliseconds(800)).await;
        let id = cancelled.id;
        let was_pending =
            producer.transaction::<_, _, StoreError>(async move |tx| tx.unschedule(id).await).await.unwrap();
        assert!(was_pending, "unscheduled before it was due");

        // Same key, due later: had the cancelled one been released, it would
        // have been handled before this one.
        receiver.wait_handled(kept.id).await;
        assert_eq!(receiver.times_applied(cancelled.id).await, 0, "the unscheduled command was handled");
        assert!(!receiver.handled.lock().unwrap().iter().any(|(h, _)| *h == cancelled.id));
    }

    pub async fn a_deadline_missed_while_no_scheduler_ran_fires_after_restart<S: Applied>(
        producer: Arc<S>,
        consumer: Arc<S>,
        bus: Arc<dyn Bus>,
    ) {
        let receiver = Receiver::start(consumer.clone(), bus.clone()).await;
        let _relay = Relay::new(producer.clone(), bus.clone(), relay_options()).spawn();
        let (from, to) = (producer.service(), consumer.service());
        let scheduler = Scheduler::new(producer.clone(), scheduler_options()).spawn();
        let deadline = command(from, to, "payment.authorization-timed-out.v1", "order-3");
        let due = Utc::now() + chrono::Duration::milliseconds(300);
        schedule(&*producer, &deadline, due).await;
        // The process goes down before the deadline and stays down past it.
        drop(scheduler);
        wait_for(WAIT, || async { Utc::now() > due + chrono::Duration::milliseconds(100) }).await.unwrap();
        assert_eq!(producer.scheduled_count().await.unwrap(), 1, "still waiting in the store");
        assert_eq!(producer.outbox_backlog().await.unwrap().unpublished, 0);
        assert_eq!(receiver.times_applied(deadline.id).await, 0);

        let _restarted = Scheduler::new(producer.clone(), scheduler_options()).spawn();
        let handled_at = receiver.wait_handled(deadline.id).await;
        assert!(handled_at >= due);
        assert_eq!(producer.scheduled_count().await.unwrap(), 0);
    }
}

/// A store whose `release_due` fails a given number of times first.
struct Flaky<S> {
    inner: Arc<S>,
    failures_left: AtomicU32,
}

#[async_trait]
impl<S: TransactionalStore> TransactionalStore for Flaky<S> {
    type Tx = S::Tx;

    fn service(&self) -> &str {
        self.inner.service()
    }
    async fn transaction_boxed<T, E>(&self, work: Work<S::Tx, T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.transaction_boxed(work).await
    }
    async fn unpublished(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.unpublished(max).await
    }
    async fn mark_published(&self, positions: &[u64]) -> Result<(), StoreError> {
        self.inner.mark_published(positions).await
    }
    fn outbox_wakeups(&self) -> watch::Receiver<u64> {
        self.inner.outbox_wakeups()
    }
    async fn outbox_backlog(&self) -> Result<Backlog, StoreError> {
        self.inner.outbox_backlog().await
    }
    async fn purge(&self, before: DateTime<Utc>) -> Result<Purged, StoreError> {
        self.inner.purge(before).await
    }
    async fn release_due(&self, now: DateTime<Utc>, max: usize) -> Result<usize, StoreError> {
        if self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::backend("injected: the database is unreachable"));
        }
        self.inner.release_due(now, max).await
    }
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_due().await
    }
    async fn scheduled_count(&self) -> Result<u64, StoreError> {
        self.inner.scheduled_count().await
    }
    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(consumer).await
    }
    async fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters_page(consumer, after, limit).await
    }
    async fn find_dead_letter(&self, id: uuid::Uuid) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.find_dead_letter(id).await
    }
}

/// What one service reported, accumulated over snapshots (the debugging
/// recorder resets every value it hands out).
#[derive(Debug, Default)]
struct Reported {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, Vec<f64>>,
}

impl Reported {
    fn take(&mut self, snapshotter: &metrics_util::debugging::Snapshotter, service: &str) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if !key.key().labels().any(|l| l.key() == "service" && l.value() == service) {
                continue;
            }
            let name = key.key().name().to_owned();
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Gauge(v) => self.gauges.entry(name).or_default().push(v.into_inner()),
                DebugValue::Histogram(_) => {}
            }
        }
    }
}

/// The only test in this binary that installs a metrics recorder; it reads
/// only its own service's metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_store_failures_and_reports_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let service = unique("flaky");
    let (store, _guard) = support::sqlite(&service).await;
    let flaky = Arc::new(Flaky { inner: store.clone(), failures_left: AtomicU32::new(3) });
    let now = Utc::now();
    for i in 0..3 {
        schedule(&*store, &command(&service, "payments", "payment.timed-out.v1", &format!("o-{i}")), now).await;
    }
    schedule(
        &*store,
        &command(&service, "payments", "payment.timed-out.v1", "later"),
        now + chrono::Duration::hours(1),
    )
    .await;
    let options = SchedulerOptions {
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        gauge_interval: Duration::from_millis(20),
        ..scheduler_options()
    };
    let _scheduler = Scheduler::new(flaky.clone(), options).spawn();

    wait_for(WAIT, || async { store.outbox_backlog().await.unwrap().unpublished == 3 }).await.unwrap();
    assert_eq!(flaky.failures_left.load(Ordering::SeqCst), 0, "it kept going after three failures");
    assert_eq!(store.scheduled_count().await.unwrap(), 1, "the later one waits");
    let reported = Mutex::new(Reported::default());
    let complete = wait_for(WAIT, || async {
        let mut r = reported.lock().unwrap();
        r.take(&snapshotter, &service);
        r.counters.get("polis_scheduled_released_total") >= Some(&3)
            && r.counters.get("polis_scheduler_failures_total") >= Some(&3)
            && r.gauges.get("polis_scheduled_pending").is_some_and(|v| v.contains(&1.0))
    })
    .await;
    let reported = reported.into_inner().unwrap();
    assert!(complete.is_ok(), "{reported:?}");
    assert_eq!(reported.counters["polis_scheduled_released_total"], 3, "{reported:?}");
    assert_eq!(reported.counters["polis_scheduler_failures_total"], 3, "{reported:?}");
}
