//! The audit service: the shop's reconciliation auditor.
//!
//! It reads the other services' facts through their APIs ([`rules::Facts`],
//! given by the host: in-process routers or URLs), judges them with the
//! shop's [`rules`] (orders against what the other services hold for them)
//! and [`read_side`] (replicas and the order-history view against their
//! sources) every `interval_ms` (`polis_audit::Auditor`: a
//! disagreement is a drift once it lasted `settle_ms`; most passes judge
//! only the orders of the last `recent_ms`, one every `full_every_ms` all
//! of them), and repairs what it
//! safely can by sending the owning service a command through its own
//! outbox, once. The replies to those commands come back to it and confirm
//! the repair. It owns no business data: its database holds the outbox, the
//! inbox and the record of the repairs it sent.
//!
//! | route | answer |
//! |---|---|
//! | `GET /audit` | 200 the last pass's `polis_audit::Report`; 503 before the first |
//! | `POST /audit/runs` | 200 the `Report` of a full pass run now |

pub mod read_side;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use polis_audit::{AuditOptions, Auditor, Repairs, Report};
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError};
use polis_core::{Message, StoreError, Topic};
use polis_runtime::{ApiError, BackgroundTask, Json, NoQuery};
use polis_store::sql::{Sql, SqlStore};
use serde::Deserialize;
use tokio::sync::watch;

pub use contracts::audit::SERVICE;
pub use rules::Facts;

/// Where the auditor reads the other services' facts; set by the host, not
/// read from configuration. Without one, every pass reports that its rule
/// could not judge.
#[derive(Clone, Default)]
pub struct FactsSource(Option<Arc<dyn Facts>>);

impl FactsSource {
    pub fn new(facts: Arc<dyn Facts>) -> Self {
        Self(Some(facts))
    }
}

impl std::fmt::Debug for FactsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "FactsSource(set)" } else { "FactsSource(none)" })
    }
}

/// The audit service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How long a disagreement must last to be a drift, in milliseconds
    /// (default 30 000: longer than any saga step's timeout).
    pub settle_ms: u64,
    /// Time between passes, in milliseconds (default 30 000).
    pub interval_ms: u64,
    /// How far back a recent pass looks, in milliseconds: the orders
    /// created within it (default 120 000, 2 minutes; a pass reads what
    /// was created within it, so its cost follows the order rate).
    pub recent_ms: u64,
    /// How often a pass is full, judging every order, in milliseconds
    /// (default 3 600 000, an hour); the first pass always is.
    pub full_every_ms: u64,
    #[serde(skip)]
    pub facts: FactsSource,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            settle_ms: 30_000,
            interval_ms: 30_000,
            recent_ms: 120_000,
            full_every_ms: 3_600_000,
            facts: FactsSource::default(),
        }
    }
}

/// The facts of no service: every read fails, saying so.
struct NoFacts;

#[async_trait]
impl Facts for NoFacts {
    async fn orders(&self, _: Option<uuid::Uuid>) -> Result<Vec<contracts::order::OrderView>, polis_audit::BoxError> {
        Err("the audit service was given no way to read the other services".into())
    }
    async fn reservations(
        &self,
        _: Option<uuid::Uuid>,
    ) -> Result<Vec<contracts::inventory::Reservation>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn stock(&self) -> Result<Vec<contracts::inventory::StockLevel>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn payments(&self, _: Option<uuid::Uuid>) -> Result<Vec<contracts::payment::Payment>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn shipments(
        &self,
        _: Option<uuid::Uuid>,
    ) -> Result<Vec<contracts::shipping::Shipment>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn customers(&self) -> Result<Vec<contracts::customer::Customer>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn credit_replica(&self) -> Result<Vec<contracts::payment::Credit>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn address_replica(&self) -> Result<Vec<contracts::shipping::CustomerAddress>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| Vec::new())
    }
    async fn history(
        &self,
        _: Option<uuid::Uuid>,
    ) -> Result<Option<Vec<contracts::order_history::HistoryOrder>>, polis_audit::BoxError> {
        self.orders(None).await.map(|_| None)
    }
}

/// The audit service over its own store.
pub struct Audit<S> {
    store: Arc<S>,
    auditor: Arc<Auditor<S>>,
    interval: Duration,
    last: watch::Sender<Option<Arc<Report>>>,
}

impl<S> std::fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("interval", &self.interval).finish_non_exhaustive()
    }
}

struct Api<S> {
    auditor: Arc<Auditor<S>>,
    last: watch::Sender<Option<Arc<Report>>>,
}

impl<S> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self { auditor: self.auditor.clone(), last: self.last.clone() }
    }
}

impl<S> polis_runtime::Service<S> for Audit<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// The service has no tables of its own: the library's
    /// (`polis_audit_repairs` among them) are applied when its store opens.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        if config.interval_ms == 0 {
            return Err(StoreError::InvalidRequest("audit config `interval_ms` must be at least 1".into()));
        }
        let facts = config.facts.0.clone().unwrap_or_else(|| Arc::new(NoFacts));
        if config.recent_ms < config.settle_ms {
            return Err(StoreError::InvalidRequest(
                "audit config `recent_ms` must be at least `settle_ms`: what goes wrong with a new order must settle \
                 within recent passes"
                    .into(),
            ));
        }
        let options =
            AuditOptions::new(Duration::from_millis(config.settle_ms), Duration::from_millis(config.interval_ms))
                .passes(Duration::from_millis(config.recent_ms), Duration::from_millis(config.full_every_ms));
        let auditor = Auditor::new(SERVICE, store.clone(), options)
            .rule(rules::OrdersAgree::new(facts.clone()))
            .rule(read_side::ReadSideAgrees::new(facts));
        let (last, _) = watch::channel(None);
        Ok(Self { store, auditor: Arc::new(auditor), interval: Duration::from_millis(config.interval_ms), last })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn router(&self) -> Router {
        let api = Api { auditor: self.auditor.clone(), last: self.last.clone() };
        Router::new().route("/audit", get(last_report)).route("/audit/runs", post(run_now)).with_state(api)
    }

    /// The replies to its repairs, which confirm them.
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        let consumer = Consumer::new(SERVICE, self.store.clone(), options);
        Some(consumer.route(Topic::replies_to(SERVICE), RepairReplies::<S>(std::marker::PhantomData)))
    }

    /// A full pass at once, then the pass due every `interval_ms` (recent,
    /// or full once every `full_every_ms`).
    fn background(&self) -> Vec<BackgroundTask> {
        let (auditor, last, interval) = (self.auditor.clone(), self.last.clone(), self.interval);
        vec![Box::pin(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let report = auditor.run_due().await;
                last.send_replace(Some(Arc::new(report)));
            }
        })]
    }
}

/// `GET /audit`.
async fn last_report<S>(State(api): State<Api<S>>, _: NoQuery) -> Result<Json<Report>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let last = api.last.borrow().clone();
    last.map(|report| Json(Report::clone(&report)))
        .ok_or_else(|| ApiError::service_unavailable("the first audit pass has not finished yet"))
}

/// `POST /audit/runs`.
async fn run_now<S>(State(api): State<Api<S>>, _: NoQuery) -> Json<Report>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let report = api.auditor.run().await;
    api.last.send_replace(Some(Arc::new(report.clone())));
    Json(report)
}

/// Confirms a repair when its command's reply comes back.
struct RepairReplies<S>(std::marker::PhantomData<fn() -> S>);

#[async_trait]
impl<S> Handler<S::Tx> for RepairReplies<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn handle(&self, tx: &mut S::Tx, message: &Message) -> Result<(), HandlerError> {
        let Some(command) = message.metadata.causation_id else {
            return Err(HandlerError::Permanent("a reply that names no command".into()));
        };
        if !Repairs::<S>::confirm(tx, &command.to_string()).await? {
            tracing::debug!(command = %command, reply = message.message_type, "a reply to no repair of ours, or one confirmed before");
        }
        Ok(())
    }
}
