//! The order service: the event-sourced Order aggregate and the
//! create-order saga, in either style.
//!
//! - [`aggregate`]: the pure Order aggregate (statuses, decisions).
//! - [`saga`]: the orchestrated create-order saga, a pure state machine run
//!   by polis-saga with durable state and deadlines.
//! - this module: the service — its HTTP API, its message handlers, and the
//!   one place that executes an order command (append the events, announce
//!   them through the outbox, update the `orders` read model, all in one
//!   transaction).
//!
//! In *choreography* there is no saga state: the service announces
//! `OrderCreated`, schedules a per-order deadline, and decides on the other
//! services' events (a failure rejects, `PaymentCaptured` approves; the
//! deadline rejects with `TIMEOUT` whatever is still pending).

pub mod aggregate;
mod decisions;
mod http;
pub mod saga;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Duration, Utc};
use contracts::inventory::{StockReleased, StockReservationFailed};
use contracts::order::OrderStatus;
use contracts::payment::{PaymentCaptured, PaymentFailed};
use contracts::shipping::ShipmentFailed;
use contracts::{OrderLine, RejectionReason, SagaStyle};
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError};
use polis_core::{CommandError, Message, MessageType, Metadata, NewEvent, Repository, StoreError, Topic, Transaction};
use polis_saga::{SagaError, Sagas};
use polis_store::args;
use polis_store::sql::{Dialect, Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::{Order, OrderCommand, OrderError};
use crate::saga::{CreateOrderSaga, SagaEffect};

pub const SERVICE: &str = contracts::order::SERVICE;

/// The choreography's per-order deadline: a command the service sends itself.
pub const ORDER_DEADLINE_TYPE: &str = "order.order-deadline.v1";

/// The order service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub saga: SagaStyle,
    /// Orchestration: how long each saga step waits for its reply.
    pub step_timeout_ms: u64,
    /// Choreography: how long an order may stay PENDING.
    pub order_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { saga: SagaStyle::Orchestration, step_timeout_ms: 5_000, order_timeout_ms: 15_000 }
    }
}

/// The order service over its own store.
pub struct OrderService<S> {
    store: Arc<S>,
    config: Config,
    orders: Arc<Repository<Order, S>>,
    sagas: Sagas<CreateOrderSaga>,
    decisions: Arc<decisions::Decisions>,
}

impl<S> Clone for OrderService<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            config: self.config.clone(),
            orders: self.orders.clone(),
            sagas: self.sagas.clone(),
            decisions: self.decisions.clone(),
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
        Ok(Self { store, config, orders, sagas: Sagas::new(SERVICE), decisions: Arc::default() })
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
}

/// Why a transaction of the order service failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderFailure {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("the order changed concurrently")]
    Conflict,
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt order event: {0}")]
    Decode(String),
    #[error("order {0} has no saga to run its cancellation (was it placed under choreography?)")]
    NoSaga(Uuid),
    #[error("idempotency key {0:?} was first used with a different request")]
    KeyReused(String),
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

/// The part of a placing request an idempotency key is bound to: who orders
/// which quantities. Prices are the gateway's lookup, not the client's
/// request, and may change between a request and its retry.
fn canonical_request(customer_id: Uuid, lines: &[OrderLine]) -> String {
    let lines: Vec<_> = lines.iter().map(|l| serde_json::json!([l.sku, l.quantity])).collect();
    serde_json::json!({ "customer_id": customer_id, "lines": lines }).to_string()
}

impl From<CommandError<OrderError>> for OrderFailure {
    fn from(e: CommandError<OrderError>) -> Self {
        match e {
            CommandError::Rejected(rejection) => Self::Order(rejection),
            CommandError::Conflict { .. } => Self::Conflict,
            CommandError::Store(e) if e.is_conflict() => Self::Conflict,
            CommandError::Store(e) => Self::Store(e),
            other => Self::Decode(other.to_string()),
        }
    }
}

impl From<OrderFailure> for HandlerError {
    fn from(e: OrderFailure) -> Self {
        match e {
            OrderFailure::Conflict | OrderFailure::Saga(SagaError::Conflict { .. }) => Self::Transient(e.to_string()),
            OrderFailure::Store(e) | OrderFailure::Saga(SagaError::Store(e)) => e.into(),
            other => Self::Permanent(other.to_string()),
        }
    }
}

impl<S> OrderService<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
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
    /// for the first to commit.
    pub async fn place(
        &self,
        customer_id: Uuid,
        lines: Vec<OrderLine>,
        idempotency_key: Option<String>,
    ) -> Result<Placed, OrderFailure> {
        let service = self.clone();
        let order_id = Uuid::now_v7();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                if let Some(key) = idempotency_key {
                    let request = canonical_request(customer_id, &lines);
                    let recorded = tx
                        .execute(
                            "INSERT INTO order_requests \
                                 (customer_id, idempotency_key, order_id, request, created_at_us) \
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, idempotency_key) DO NOTHING",
                            args![customer_id, key.as_str(), order_id, request.as_str(), Utc::now().timestamp_micros()],
                        )
                        .await?;
                    if recorded == 0 {
                        let earlier = tx
                            .fetch_one(
                                "SELECT order_id, request FROM order_requests \
                                     WHERE customer_id = $1 AND idempotency_key = $2",
                                args![customer_id, key.as_str()],
                            )
                            .await?;
                        if earlier.text("request")? != request {
                            return Err(OrderFailure::KeyReused(key));
                        }
                        return Ok(Placed::Replayed(earlier.uuid("order_id")?));
                    }
                }
                let saga = service.config.saga;
                let command = OrderCommand::Place { order_id, customer_id, lines, saga };
                let order = service.execute(tx, order_id, &command, &Metadata::default()).await?;
                let now = Utc::now();
                match saga {
                    SagaStyle::Orchestration => {
                        let (saga, step) = CreateOrderSaga::start(
                            order_id,
                            customer_id,
                            order
                                .lines
                                .iter()
                                .map(|l| contracts::Quantity { sku: l.sku.clone(), quantity: l.quantity })
                                .collect(),
                            order.total,
                            service.config.step_timeout_ms,
                            Metadata { correlation_id: Some(order_id), ..Metadata::default() },
                            now,
                        );
                        let mut instance = service.sagas.begin(order_id.to_string(), saga);
                        service.sagas.save(tx, &mut instance, &step).await?;
                    }
                    SagaStyle::Choreography => {
                        // Keyed apart from the order's messages: a dead letter
                        // of the order's key must not park its deadline.
                        let key = format!("deadline:{order_id}");
                        let deadline = Message::command(
                            SERVICE,
                            SERVICE,
                            ORDER_DEADLINE_TYPE,
                            &key,
                            serde_json::json!({ "order_id": order_id }),
                        );
                        let due = now + Duration::milliseconds(ms(service.config.order_timeout_ms));
                        tx.schedule(&deadline, due).await?;
                        tx.execute(
                            "UPDATE orders SET deadline_id = $1 WHERE order_id = $2",
                            args![deadline.id, order_id],
                        )
                        .await?;
                    }
                }
                Ok::<_, OrderFailure>(Placed::New(order_id))
            })
            .await
    }

    /// Requests the cancellation of an approved order.
    pub async fn cancel(&self, order_id: Uuid) -> Result<(), OrderFailure> {
        let service = self.clone();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
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

    /// Takes the order's read-model row lock before anything else. Every
    /// transaction about an existing order starts here, so two of them (a
    /// deadline and a reply, handled on different topics at once) queue on
    /// one lock instead of taking the stream, saga and outbox-key locks in
    /// opposite orders and deadlocking on PostgreSQL. SQLite runs one write
    /// transaction at a time, so there is nothing to take.
    async fn lock_order(&self, tx: &mut S::Tx, order_id: Uuid) -> Result<(), StoreError> {
        if self.store.dialect() == Dialect::Postgres {
            tx.execute("UPDATE orders SET version = version WHERE order_id = $1", args![order_id]).await?;
        }
        Ok(())
    }

    /// Executes an order command in `tx`: appends its events, sends each as
    /// a message, and updates the read model. Returns the new state.
    async fn execute(
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
        write_read_model(tx, &executed.state, executed.version, &appended).await?;
        if executed.state.status.is_some_and(|s| decisions::is_decided(s.as_str())) {
            self.decisions.touched(order_id);
        }
        Ok(executed.state)
    }

    /// Applies the saga's effects to the order.
    async fn apply_effects(
        &self,
        tx: &mut S::Tx,
        order_id: Uuid,
        effects: Vec<SagaEffect>,
        metadata: &Metadata,
    ) -> Result<(), OrderFailure> {
        for effect in effects {
            let command = match effect {
                SagaEffect::Approve => OrderCommand::Approve,
                SagaEffect::Reject(reason) => OrderCommand::Reject { reason, flow: SagaStyle::Orchestration },
                SagaEffect::CompleteCancel => OrderCommand::CompleteCancel,
            };
            self.execute(tx, order_id, &command, metadata).await?;
        }
        Ok(())
    }

    /// Choreography: decides the order on another service's outcome event.
    async fn decide(&self, tx: &mut S::Tx, message: &Message) -> Result<(), OrderFailure> {
        // A failure whose body this version cannot read (say, a reason added
        // by a newer participant) still rejects the order — keyed by the order
        // id, with the step's usual reason — rather than dead-lettering the
        // event, which would park the order's own deadline behind it.
        let failure = |fallback: RejectionReason, reason: Option<RejectionReason>| -> Result<_, OrderFailure> {
            let reason = reason.unwrap_or(fallback);
            Ok(Some((parse_key(message)?, OrderCommand::Reject { reason, flow: SagaStyle::Choreography })))
        };
        let command = if message.is::<StockReservationFailed>() {
            failure(RejectionReason::OutOfStock, message.decode::<StockReservationFailed>().ok().map(|b| b.reason))?
        } else if message.is::<PaymentFailed>() {
            failure(RejectionReason::PaymentDeclined, message.decode::<PaymentFailed>().ok().map(|b| b.reason))?
        } else if message.is::<ShipmentFailed>() {
            failure(RejectionReason::Undeliverable, message.decode::<ShipmentFailed>().ok().map(|b| b.reason))?
        } else if message.is::<PaymentCaptured>() {
            let body: PaymentCaptured = decode(message)?;
            Some((body.order_id, OrderCommand::Approve))
        } else if message.is::<StockReleased>() {
            // The last step of a choreographed cancellation (for a rejected
            // order it is a compensation, and changes nothing here).
            let body: StockReleased = decode(message)?;
            Some((body.order_id, OrderCommand::CompleteCancel))
        } else {
            None
        };
        let Some((order_id, command)) = command else { return Ok(()) };
        self.lock_order(tx, order_id).await?;
        let order = self.execute(tx, order_id, &command, &message.caused()).await;
        match order {
            // An outcome for an order this service never had is a bad message.
            Err(OrderFailure::Order(OrderError::NotFound)) => {
                Err(OrderFailure::Decode(format!("no order {order_id} for {}", message.message_type)))
            }
            Err(e) => Err(e),
            Ok(order) => {
                if order.status != Some(OrderStatus::Pending) {
                    self.clear_order_deadline(tx, order_id).await?;
                }
                Ok(())
            }
        }
    }

    /// Choreography: the order's deadline passed; reject it if still pending.
    async fn order_deadline(&self, tx: &mut S::Tx, message: &Message) -> Result<(), OrderFailure> {
        let order_id = deadline_order_id(message)?;
        let current = tx
            .fetch_optional("SELECT deadline_id FROM orders WHERE order_id = $1", args![order_id])
            .await?
            .map(|row| row.opt_text("deadline_id"))
            .transpose()?
            .flatten();
        if current.as_deref() != Some(message.id.to_string().as_str()) {
            return Ok(());
        }
        tx.execute("UPDATE orders SET deadline_id = NULL WHERE order_id = $1", args![order_id]).await?;
        let reject = OrderCommand::Reject { reason: RejectionReason::Timeout, flow: SagaStyle::Choreography };
        self.execute(tx, order_id, &reject, &message.caused()).await?;
        Ok(())
    }

    async fn clear_order_deadline(&self, tx: &mut S::Tx, order_id: Uuid) -> Result<(), OrderFailure> {
        let row = tx.fetch_optional("SELECT deadline_id FROM orders WHERE order_id = $1", args![order_id]).await?;
        if let Some(deadline) = row.map(|r| r.opt_text("deadline_id")).transpose()?.flatten() {
            if let Ok(id) = Uuid::parse_str(&deadline) {
                tx.unschedule(id).await?;
            }
            tx.execute("UPDATE orders SET deadline_id = NULL WHERE order_id = $1", args![order_id]).await?;
        }
        Ok(())
    }

    pub(crate) fn decisions(&self) -> &Arc<decisions::Decisions> {
        &self.decisions
    }
}

fn ms(millis: u64) -> i64 {
    i64::try_from(millis).unwrap_or(i64::MAX / 1_000_000)
}

fn decode<T: MessageType>(message: &Message) -> Result<T, OrderFailure> {
    message.decode::<T>().map_err(|e| OrderFailure::Decode(format!("{}: {e}", message.message_type)))
}

/// The order a choreography deadline is for (its body; its key is the deadline's own).
fn deadline_order_id(message: &Message) -> Result<Uuid, OrderFailure> {
    #[derive(Deserialize)]
    struct Body {
        order_id: Uuid,
    }
    Body::deserialize(&message.data)
        .map(|body| body.order_id)
        .map_err(|e| OrderFailure::Decode(format!("an order deadline without a valid order id: {e}")))
}

fn parse_order_id(id: &str) -> Result<Uuid, OrderFailure> {
    Uuid::parse_str(id).map_err(|e| OrderFailure::Decode(format!("`{id}` is not an order id: {e}")))
}

fn parse_key(message: &Message) -> Result<Uuid, OrderFailure> {
    Uuid::parse_str(&message.key)
        .map_err(|e| OrderFailure::Decode(format!("key `{}` is not an order id: {e}", message.key)))
}

/// Upserts the order's row from its new state.
async fn write_read_model<Tx: Sql + ?Sized>(
    tx: &mut Tx,
    order: &Order,
    version: u64,
    appended: &[NewEvent],
) -> Result<(), StoreError> {
    let (Some(id), Some(customer_id), Some(status)) = (order.id, order.customer_id, order.status) else {
        return Err(StoreError::InvalidRequest("an order without identity cannot be stored".into()));
    };
    let at = appended.last().map_or_else(Utc::now, |e| e.time).timestamp_micros();
    let lines = serde_json::to_string(&order.lines).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
    tx.execute(
        "INSERT INTO orders (order_id, customer_id, status, reason, lines, total, version, created_at_us, updated_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, reason = excluded.reason, \
         version = excluded.version, updated_at_us = excluded.updated_at_us",
        args![
            id,
            customer_id,
            status.as_str(),
            order.reason.map(RejectionReason::as_str),
            lines,
            order.total,
            i64::try_from(version).unwrap_or(i64::MAX),
            at
        ],
    )
    .await?;
    Ok(())
}

/// The order service's message handler (all its topics).
struct OrderHandler<S> {
    service: OrderService<S>,
}

impl<S> Clone for OrderHandler<S> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone() }
    }
}

#[async_trait]
impl<S> Handler<S::Tx> for OrderHandler<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        let service = &self.service;
        let now = Utc::now();
        match message.kind {
            polis_core::MessageKind::Command if message.message_type == polis_saga::DEADLINE_TYPE => {
                let Some(saga_id) = service.sagas.deadline_target(message) else {
                    return Err(HandlerError::Permanent("a saga deadline for an unknown saga type".into()));
                };
                let order_id = parse_order_id(&saga_id)?;
                service.lock_order(tx, order_id).await?;
                let effects = service.sagas.fire_deadline(tx, message, now).await.map_err(OrderFailure::from)?;
                service.apply_effects(tx, order_id, effects, &message.caused()).await?;
            }
            polis_core::MessageKind::Command if message.message_type == ORDER_DEADLINE_TYPE => {
                service.lock_order(tx, deadline_order_id(message)?).await?;
                service.order_deadline(tx, message).await?;
            }
            polis_core::MessageKind::Command => {
                return Err(HandlerError::Permanent(format!("unknown command {}", message.message_type)));
            }
            polis_core::MessageKind::Reply => {
                let order_id = parse_key(message)?;
                service.lock_order(tx, order_id).await?;
                let effects =
                    service.sagas.on_reply(tx, &message.key, message, now).await.map_err(OrderFailure::from)?;
                service.apply_effects(tx, order_id, effects, &message.caused()).await?;
            }
            polis_core::MessageKind::Event => service.decide(tx, message).await?,
        }
        Ok(())
    }

    /// Declines the other services' events that decide nothing here (see
    /// `decide`); commands and replies are all its own.
    fn accepts(&self, message: &Message) -> bool {
        message.kind != polis_core::MessageKind::Event
            || message.is::<StockReservationFailed>()
            || message.is::<PaymentFailed>()
            || message.is::<ShipmentFailed>()
            || message.is::<PaymentCaptured>()
            || message.is::<StockReleased>()
    }
}
