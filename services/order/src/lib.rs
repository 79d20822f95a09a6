//! The order service: the event-sourced Order aggregate and the
//! create-order saga, in either style.
//!
//! Every order command is executed in one place, `OrderService::execute`:
//! it appends the events, announces them through the outbox and updates the
//! `orders` read model, all in one transaction.
//!
//! In *orchestration* a saga drives the other services with commands and
//! decides on their replies. In *choreography* there is no saga state: the
//! service announces `OrderCreated`, schedules a per-order deadline, and
//! decides on the other services' events (a failure rejects,
//! `PaymentCaptured` approves; the deadline rejects with `TIMEOUT` whatever
//! is still pending). An order finishes in the style it was placed in.
//!
//! Layout:
//! - this module: [`Config`] and [`OrderService`]: `open`, `router`,
//!   `consumer`, placing and cancelling orders, and executing a command;
//! - [`aggregate`]: the pure Order aggregate (statuses, decisions);
//! - [`saga`]: the orchestrated create-order saga, a pure state machine run
//!   by polis-saga with durable state and deadlines, and the glue that
//!   starts it and applies its effects to the order;
//! - `choreography`: deciding an order on the other services' outcome
//!   events, and its deadline ([`ORDER_DEADLINE_TYPE`]);
//! - `handler`: the message handler, routing deadlines, replies and events
//!   to the saga or the choreography;
//! - `http`: the HTTP API (its routes are listed there);
//! - `decisions`: answering `GET /orders/{id}?wait_ms=N` once the order is
//!   decided;
//! - `db`: every statement on the service's tables (`orders`,
//!   `order_requests`), written once for SQLite and PostgreSQL;
//! - `rules`: what an idempotency key is bound to;
//! - `error`: [`OrderFailure`], and how it maps to consumer retries and HTTP
//!   problems.

pub mod aggregate;
mod choreography;
mod db;
mod decisions;
mod error;
mod handler;
mod http;
mod kpi;
mod rules;
pub mod saga;

use std::sync::Arc;

use chrono::Utc;
use contracts::order::{OrderApproved, OrderCancelled, OrderRejected, OrderStatus};
use contracts::{OrderLine, SagaStyle};
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::MessageType as _;
use polis_core::{Message, Metadata, Repository, StoreError, Topic, Transaction};
use polis_saga::Sagas;
use polis_store::sql::{Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Order, OrderCommand};
use crate::handler::OrderHandler;
use crate::saga::CreateOrderSaga;

pub use choreography::ORDER_DEADLINE_TYPE;
pub use error::OrderFailure;

pub const SERVICE: &str = contracts::order::SERVICE;

/// The order service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub saga: SagaStyle,
    /// Orchestration: how long each saga step waits for its reply.
    pub step_timeout_ms: u64,
    /// Choreography: how long an order may stay PENDING.
    pub order_timeout_ms: u64,
    /// How long an `Idempotency-Key` of `POST /orders` is remembered, in
    /// seconds (default 86 400, a day); 0 remembers keys for ever. A key
    /// sent again after it expired places a new order.
    pub idempotency_key_retention_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            saga: SagaStyle::Orchestration,
            step_timeout_ms: 5_000,
            order_timeout_ms: 15_000,
            idempotency_key_retention_s: 24 * 3600,
        }
    }
}

/// The order service over its own store.
pub struct OrderService<S> {
    store: Arc<S>,
    config: Config,
    orders: Arc<Repository<Order, S>>,
    sagas: Sagas<CreateOrderSaga>,
    decisions: Arc<decisions::Decisions>,
    kpis: Arc<kpi::Kpis>,
}

impl<S> Clone for OrderService<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
            orders: self.orders.clone(),
            sagas: self.sagas.clone(),
            decisions: self.decisions.clone(),
            kpis: self.kpis.clone(),
        }
    }
}

impl<S> std::fmt::Debug for OrderService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderService").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How the host opens and runs the order service.
impl<S> polis_runtime::Service<S> for OrderService<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112260NN`) and returns the service.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        // Deadlines are added to the clock; an absurd timeout would overflow it.
        const DAY_MS: u64 = 24 * 3600 * 1000;
        for (name, value) in
            [("step_timeout_ms", config.step_timeout_ms), ("order_timeout_ms", config.order_timeout_ms)]
        {
            if value == 0 || value > DAY_MS {
                return Err(StoreError::InvalidRequest(format!(
                    "order config `{name}` must be between 1 ms and one day, not {value}"
                )));
            }
        }
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        let orders = Arc::new(Repository::new(store.clone()));
        // Loading an order's saga takes the order's lock (db::lock_order).
        let sagas = match store.dialect() {
            polis_store::sql::Dialect::Postgres => Sagas::new(SERVICE).lock_with(db::LOCK_ORDER),
            polis_store::sql::Dialect::Sqlite => Sagas::new(SERVICE),
        };
        Ok(Self { store, config, orders, sagas, decisions: Arc::default(), kpis: Arc::default() })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The service's own HTTP API.
    fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The service's consumer: saga replies and its own deadlines for
    /// orchestrated orders; the other services' outcome events for
    /// choreographed ones. Both, whatever style new orders run in
    /// ([`Config::saga`]): an order placed under the other style before a
    /// restart finishes in it ([`contracts::order::is_choreographed`]).
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        let handler = OrderHandler { service: self.clone() };
        Some(
            Consumer::new(SERVICE, self.store.clone(), options)
                .route(Topic::commands_to(SERVICE), handler.clone())
                .route(Topic::replies_to(SERVICE), handler.clone())
                .route(Topic::events_of(contracts::inventory::SERVICE), handler.clone())
                .route(Topic::events_of(contracts::payment::SERVICE), handler.clone())
                .route(Topic::events_of(contracts::shipping::SERVICE), handler),
        )
    }

    /// Deletes the expired idempotency keys
    /// ([`Config::idempotency_key_retention_s`]) every quarter of their
    /// retention, at most every minute.
    fn background(&self) -> Vec<polis_runtime::BackgroundTask> {
        let Some(retention) = self.key_retention() else { return Vec::new() };
        let store = self.store.clone();
        let every = (retention / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(60));
        vec![Box::pin(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let back = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                let before = Utc::now().checked_sub_signed(back).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
                match db::expire_requests(&*store, before).await {
                    Ok(0) => {}
                    Ok(expired) => tracing::debug!(expired, "deleted expired idempotency keys"),
                    Err(e) => {
                        tracing::warn!(error = %polis_core::error::chain(&e), "deleting expired idempotency keys failed")
                    }
                }
            }
        })]
    }
}

/// Which past state of an order to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After its first `n` events.
    Version(u64),
    /// As it was at this time (the events recorded up to it).
    Time(chrono::DateTime<chrono::Utc>),
}

/// An order as it was: its state, its version then, and when its first
/// and its last event then were recorded.
#[derive(Debug, Clone)]
pub struct OrderThen {
    pub order: Order,
    pub version: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// What [`OrderService::place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Placed a new order.
    New(Uuid),
    /// Placed nothing: the idempotency key's earlier request placed this order.
    Replayed(Uuid),
}

impl Placed {
    pub fn id(self) -> Uuid {
        match self {
            Self::New(id) | Self::Replayed(id) => id,
        }
    }
}

impl<S> OrderService<S> {
    /// How long idempotency keys are remembered; `None`: for ever.
    fn key_retention(&self) -> Option<std::time::Duration> {
        let seconds = self.config.idempotency_key_retention_s;
        (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
    }
}

impl<S> OrderService<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Deletes the idempotency keys recorded before `before`, as the
    /// service's background task does with its retention
    /// ([`Config::idempotency_key_retention_s`]); how many.
    pub async fn expire_idempotency_keys(&self, before: chrono::DateTime<Utc>) -> Result<u64, StoreError> {
        db::expire_requests(&*self.store, before).await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Places an order: appends `OrderCreated`, announces it, and starts the
    /// saga (orchestration) or the order's deadline (choreography) — one transaction.
    ///
    /// With an idempotency key, a request that repeats an earlier one (same
    /// customer and key, same sku/quantity lines) places nothing and answers
    /// with the earlier order; the customer's key with other lines is
    /// [`OrderFailure::KeyReused`]. Keys are per customer. Two such requests at once place one order:
    /// the key is recorded in the placing transaction, and the second waits
    /// for the first to commit. Keys expire
    /// ([`Config::idempotency_key_retention_s`]): a key sent again after
    /// that places a new order.
    pub async fn place(
        &self,
        customer_id: Uuid,
        lines: Vec<OrderLine>,
        idempotency_key: Option<String>,
    ) -> Result<Placed, OrderFailure> {
        let service = self.clone();
        let order_id = Uuid::now_v7();
        let placed = self
            .store
            .transaction(async move |tx: &mut S::Tx| {
                if let Some(key) = idempotency_key {
                    let request = rules::canonical_request(customer_id, &lines);
                    if !db::record_request(tx, customer_id, &key, order_id, &request).await? {
                        match db::recorded_request(tx, customer_id, &key).await? {
                            Some((_, earlier_request)) if earlier_request != request => {
                                return Err(OrderFailure::KeyReused(key));
                            }
                            Some((earlier, _)) => return Ok(Placed::Replayed(earlier)),
                            // Expired and deleted since the insert found it: record it anew.
                            None => {
                                if !db::record_request(tx, customer_id, &key, order_id, &request).await? {
                                    return Err(StoreError::Unique(format!("idempotency key {key:?}")).into());
                                }
                            }
                        }
                    }
                }
                let saga = service.config.saga;
                let command = OrderCommand::Place { order_id, customer_id, lines, saga };
                let order = service.execute(tx, order_id, &command, &Metadata::default()).await?;
                let now = Utc::now();
                match saga {
                    SagaStyle::Orchestration => service.start_saga(tx, order_id, customer_id, &order, now).await?,
                    SagaStyle::Choreography => service.schedule_order_deadline(tx, order_id, now).await?,
                }
                Ok::<_, OrderFailure>(Placed::New(order_id))
            })
            .await?;
        if let Placed::New(_) = placed {
            self.kpis.placed(self.config.saga);
        }
        Ok(placed)
    }

    /// Requests the cancellation of an approved order.
    pub async fn cancel(&self, order_id: Uuid) -> Result<(), OrderFailure> {
        let service = self.clone();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                // The lock first, in a statement of its own: a request must
                // not fail because a reply raced it (a load that waited for
                // the lock would read the saga as it was and conflict).
                service.lock_order(tx, order_id).await?;
                // The order's own style, whatever the service runs new
                // orders in; an order from before orders recorded it is
                // orchestrated if and only if it has a saga.
                let instance = service.sagas.load(tx, &order_id.to_string()).await?;
                let flow = if instance.is_some() { SagaStyle::Orchestration } else { SagaStyle::Choreography };
                let command = OrderCommand::RequestCancel { flow };
                let order = service.execute(tx, order_id, &command, &Metadata::default()).await?;
                if order.saga.unwrap_or(flow) == SagaStyle::Orchestration {
                    let Some(mut instance) = instance else {
                        return Err(OrderFailure::NoSaga(order_id));
                    };
                    let step = instance.state.cancel();
                    service.sagas.save(tx, &mut instance, &step).await?;
                }
                Ok::<_, OrderFailure>(())
            })
            .await
    }

    /// Takes the order's lock: see [`db::lock_order`].
    pub(crate) async fn lock_order(&self, tx: &mut S::Tx, order_id: Uuid) -> Result<(), StoreError> {
        db::lock_order(tx, self.store.dialect(), order_id).await
    }

    /// Executes an order command in `tx`: appends its events, sends each as
    /// a message, and updates the read model. Returns the new state.
    pub(crate) async fn execute(
        &self,
        tx: &mut S::Tx,
        order_id: Uuid,
        command: &OrderCommand,
        metadata: &Metadata,
    ) -> Result<Order, OrderFailure> {
        let id = order_id.to_string();
        let (executed, appended) = self.orders.execute_in(tx, &id, command, metadata).await?;
        if appended.is_empty() {
            return Ok(executed.state);
        }
        for event in &appended {
            tx.send(&Message::from_new_event(SERVICE, &id, event)).await?;
        }
        db::write_read_model(tx, &executed.state, executed.version, &appended).await?;
        if executed.state.status.is_some_and(|s| decisions::is_decided(s.as_str())) {
            self.decisions.touched(order_id);
            let decided = |kind: &str| appended.iter().any(|e| e.event_type == kind);
            let decision = match executed.state.status {
                Some(OrderStatus::Approved) if decided(OrderApproved::TYPE) => Some(kpi::Decision::Approved),
                Some(OrderStatus::Rejected) if decided(OrderRejected::TYPE) => {
                    executed.state.reason.map(kpi::Decision::Rejected)
                }
                Some(OrderStatus::Cancelled) if decided(OrderCancelled::TYPE) => Some(kpi::Decision::Cancelled),
                _ => None,
            };
            // Decisions are made handling a message; counted once that commits.
            if let (Some(decision), Some(cause)) = (decision, metadata.causation_id) {
                self.kpis.note(cause, order_id, decision, executed.state.saga);
            }
        }
        Ok(executed.state)
    }

    /// The order as it was ([`AsOf`]), from its event stream (snapshots
    /// where configured); `None` if it did not exist then, or has fewer
    /// events than the version asked for.
    pub async fn as_it_was(&self, order_id: Uuid, at: AsOf) -> Result<Option<OrderThen>, OrderFailure> {
        let id = order_id.to_string();
        let loaded = match at {
            AsOf::Version(version) => self.orders.load_at_version(&id, version).await?,
            AsOf::Time(time) => self.orders.load_as_of(&id, time).await?,
        };
        let wanted = match at {
            AsOf::Version(version) => version,
            AsOf::Time(_) => loaded.version,
        };
        if loaded.version == 0 || loaded.version != wanted {
            return Ok(None);
        }
        let stream = <Order as polis_core::Aggregate>::stream_id(&id);
        let first = self.store.read_stream(&stream, 1, 1).await?;
        let last = self.store.read_stream(&stream, loaded.version, 1).await?;
        let (Some(first), Some(last)) = (first.first(), last.first()) else {
            return Err(OrderFailure::Decode(format!("order {order_id}'s stream lost events")));
        };
        Ok(Some(OrderThen {
            order: loaded.state,
            version: loaded.version,
            created_at: first.time,
            updated_at: last.time,
        }))
    }

    /// A page of the order's events, after version `after`; `None` if there
    /// is no such order.
    pub async fn events(
        &self,
        order_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<polis_core::RecordedEvent>>, OrderFailure> {
        let stream = <Order as polis_core::Aggregate>::stream_id(&order_id.to_string());
        if self.store.stream_info(&stream).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.store.read_stream(&stream, after.saturating_add(1), limit).await?))
    }

    pub(crate) fn decisions(&self) -> &Arc<decisions::Decisions> {
        &self.decisions
    }
}
