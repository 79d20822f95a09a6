//! A service as its host sees it, and the hosting of its background work.
//!
//! A polis service owns a store and describes itself with [`Service`]: how
//! it opens over that store (migrations, settings), its HTTP API, and what
//! it consumes. [`host`] then runs what every service needs beside its API —
//! the relay (outbox → bus), the scheduler (due messages → outbox), the
//! consumer (bus → handlers, through the inbox), the projections (its
//! log → its read models, `polis-projection`) and the bootstraps of its
//! replicas (another service's current state → its log, once) — until
//! [`Hosted::shutdown`]. The same description serves both deployments: the
//! store is SQLite or PostgreSQL, the bus in-process or NATS JetStream.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use polis_bus::{Consumer, ConsumerOptions};
//! use polis_core::{Bus, StoreError};
//! use polis_store::sql::{Sql, SqlStore};
//! use polis_runtime::service::{HostOptions, Service, host};
//!
//! struct Greeter<S> {
//!     store: Arc<S>,
//! }
//!
//! impl<S: SqlStore> Service<S> for Greeter<S>
//! where
//!     S::Tx: Sql,
//! {
//!     const NAME: &'static str = "greeter";
//!     type Config = ();
//!
//!     async fn open(store: Arc<S>, _config: ()) -> Result<Self, StoreError> {
//!         Ok(Self { store })
//!     }
//!
//!     fn store(&self) -> &Arc<S> {
//!         &self.store
//!     }
//!
//!     fn router(&self) -> axum::Router {
//!         axum::Router::new()
//!     }
//!
//!     fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
//!         Some(Consumer::new(Self::NAME, self.store.clone(), options)) // plus .route(topic, handler)
//!     }
//! }
//!
//! # async fn run<S: SqlStore>(store: Arc<S>, bus: Arc<dyn Bus>) -> Result<(), Box<dyn std::error::Error>> where S::Tx: Sql {
//! let greeter = Greeter::open(store, ()).await?;
//! let hosted = host(&greeter, bus, &HostOptions::default()).await?;
//! // ... serve hosted.router() ...
//! hosted.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use polis_bus::{
    Consumer, ConsumerHandle, ConsumerOptions, Relay, RelayHandle, RelayOptions, Scheduler, SchedulerHandle,
    SchedulerOptions,
};
use polis_core::lease::LeaseOptions;
use polis_core::{Bus, BusError, Projection, StoreError};
use polis_projection::{
    Bootstrap, BootstrapHandle, BootstrapOptions, BootstrapStatus, ProjectionStatus, Projector, ProjectorHandle,
    ProjectorOptions, SnapshotSource, StatusReader,
};
use polis_store::sql::{Sql, SqlStore};
use tokio::sync::watch;

use crate::ready::{Readiness, Report};

/// A service over its own store `S`, as its host sees it.
pub trait Service<S>: Sized + Send + Sync + 'static
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// The service's name: the source of the messages it sends and the name
    /// of its consumer (its durable subscriptions and inbox records).
    const NAME: &'static str;

    /// The service's settings, given once, when it opens.
    type Config: Clone + Send + Sync + 'static;

    /// Applies the service's migrations to `store` and returns the service.
    fn open(store: Arc<S>, config: Self::Config) -> impl Future<Output = Result<Self, StoreError>> + Send;

    /// The store the service owns.
    fn store(&self) -> &Arc<S>;

    /// The service's own HTTP API: its paths without any prefix, no layers
    /// (the host adds the standard stack).
    fn router(&self) -> Router;

    /// The service's consumer with its routes, or `None` for a service that
    /// consumes nothing (the default).
    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        let _ = options;
        None
    }

    /// The service's projections: its read models, fed by its own log (and
    /// by other services' events once its consumer ingests them,
    /// `polis_projection::Ingest`). None by default.
    fn projections(&self) -> Vec<Arc<dyn Projection<S::Tx>>> {
        Vec::new()
    }

    /// Where the service's replicas of other services bootstrap from
    /// (`polis_projection::replica`): a brand-new or wiped replica copies
    /// the source's current state into its log once, after the consumer
    /// has subscribed, then follows the source's events. None by default.
    fn replicas(&self) -> Vec<Arc<dyn SnapshotSource>> {
        Vec::new()
    }

    /// Work the service runs beside its API and its messages (an auditor's
    /// periodic passes, say): each future runs as a task from when the host
    /// has started everything else until it stops. None by default.
    fn background(&self) -> Vec<BackgroundTask> {
        Vec::new()
    }
}

/// A future a service runs in the background ([`Service::background`]).
pub type BackgroundTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How [`host`] runs a service's background work.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostOptions {
    /// The relay's batch size and pacing.
    pub relay: RelayOptions,
    /// The scheduler's batch size and pacing.
    pub scheduler: SchedulerOptions,
    /// The consumer's concurrency and retries.
    pub consumer: ConsumerOptions,
    /// The projections' batching, lease and polling.
    pub projector: ProjectorOptions,
    /// The replicas' bootstrap page size and retries.
    pub bootstrap: BootstrapOptions,
    /// Whether to start the consumer (on by default). Off, the service serves
    /// and sends but never hears a message: fault injection for "a service
    /// that never answers".
    pub consume: bool,
    /// How long [`Hosted::shutdown`] waits for the messages being handled.
    pub shutdown_grace: Duration,
    /// How often the gauges that need a query (dead letters by consumer)
    /// are sampled (default 5 s).
    pub sample_interval: Duration,
}

impl HostOptions {
    /// Gives this instance of the service a stable identity to the leases
    /// of its relay, scheduler and projections, derived from `name`, which
    /// must name one running instance at a time (see
    /// [`LeaseOptions::instance`]): restarted after a crash, it takes its
    /// leases back at once.
    pub fn instance(mut self, name: &str) -> Self {
        let lease = |lease: Option<LeaseOptions>| Some(lease.unwrap_or(LeaseOptions::new(LEASE_TTL)).instance(name));
        self.relay.lease = lease(self.relay.lease);
        self.scheduler.lease = lease(self.scheduler.lease);
        self.consumer.lease = lease(self.consumer.lease);
        self.projector = self.projector.instance(name);
        self
    }
}

/// The time-to-live of a hosted service's relay and scheduler leases, as of
/// its projections' (`ProjectorOptions::lease_ttl`).
const LEASE_TTL: Duration = Duration::from_secs(5);

impl Default for HostOptions {
    fn default() -> Self {
        // One identity for the instance's leases: the consumer takes a
        // lighter share of the partitions where the relay lease is its own.
        let lease = Some(LeaseOptions::new(LEASE_TTL));
        Self {
            // Several instances of a service may run (distributed mode): one
            // relay and one scheduler publish and fire at a time.
            relay: RelayOptions { lease, ..RelayOptions::default() },
            scheduler: SchedulerOptions { lease, ..SchedulerOptions::default() },
            // Shares the consumer's partitions when the bus has them.
            consumer: ConsumerOptions { lease, ..ConsumerOptions::default() },
            projector: ProjectorOptions::default(),
            bootstrap: BootstrapOptions::default(),
            consume: true,
            shutdown_grace: Duration::from_secs(10),
            sample_interval: Duration::from_secs(5),
        }
    }
}

/// A hosted service: its router and its running background work. Dropping
/// it stops everything at once; [`Hosted::shutdown`] stops it in order and
/// waits.
#[derive(Debug)]
pub struct Hosted {
    name: &'static str,
    router: Router,
    readiness: Readiness,
    consumer: Option<ConsumerHandle>,
    projector: Option<ProjectorHandle>,
    bootstraps: Vec<BootstrapHandle>,
    scheduler: SchedulerHandle,
    relay: RelayHandle,
    /// Samples the gauges that need a query (dead letters).
    _sampler: AbortOnDrop,
    /// The service's own background work ([`Service::background`]).
    _background: Vec<AbortOnDrop>,
    grace: Duration,
}

/// Starts `service`'s consumer (unless it has none, or `options.consume` is
/// off), then its replicas' bootstraps (so that no change made after a
/// snapshot is read can be missed), projections, relay and scheduler on
/// `bus`. Fails if a subscription cannot be made.
pub async fn host<T, S>(service: &T, bus: Arc<dyn Bus>, options: &HostOptions) -> Result<Hosted, BusError>
where
    T: Service<S>,
    S: SqlStore,
    S::Tx: Sql,
{
    let routes = service.consumer(options.consumer.clone()).map(Arc::new);
    let consumer = routes.clone().filter(|_| options.consume);
    let consumer_name = consumer.as_ref().map(|c| c.name().to_owned());
    let consumer = match consumer {
        Some(consumer) => Some(consumer.spawn(bus.clone()).await?),
        None => None,
    };
    let store = service.store().clone();
    let bootstraps: Vec<BootstrapHandle> = service
        .replicas()
        .into_iter()
        .map(|source| Bootstrap::new(store.clone(), source, options.bootstrap.clone()).spawn())
        .collect();
    let projector = service
        .projections()
        .into_iter()
        .fold(Projector::new(store.clone(), options.projector.clone()), Projector::with_arc);
    let projector = (!projector.is_empty()).then(|| projector.spawn());
    let relay = Relay::new(store.clone(), bus.clone(), options.relay.clone()).spawn();
    let scheduler = Scheduler::new(store.clone(), options.scheduler.clone()).spawn();
    let admin = crate::admin::router(store.clone(), routes);
    let probe = store.clone();
    let readiness = Readiness::new(
        T::NAME,
        move || {
            let store = probe.clone();
            async move { store.head_position().await.map(drop) }
        },
        bus,
        relay.progress(),
        consumer.as_ref().map(|c| c.progress().to_vec()),
    );
    let sampler = AbortOnDrop(tokio::spawn(crate::metrics::sample(store, consumer_name, options.sample_interval)));
    let background = service.background().into_iter().map(|task| AbortOnDrop(tokio::spawn(task))).collect();
    let mut router = service.router().merge(admin);
    if let Some(projector) = &projector {
        router = router.merge(projections_route(projector.reader()));
    }
    if !bootstraps.is_empty() {
        router = router.merge(replicas_route(bootstraps.iter().map(BootstrapHandle::subscribe).collect()));
    }
    router = router.merge(readiness.clone().route());
    let router = crate::metrics::with_http_metrics(router, T::NAME);
    Ok(Hosted {
        name: T::NAME,
        router,
        readiness,
        consumer,
        projector,
        bootstraps,
        scheduler,
        relay,
        _sampler: sampler,
        _background: background,
        grace: options.shutdown_grace,
    })
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `GET /projections`: each projection's state and lag, as this instance
/// sees it (JSON, by name). Added to the router of a service with
/// projections.
fn projections_route(reader: StatusReader) -> Router {
    Router::new().route(
        "/projections",
        axum::routing::get(move |_: crate::NoQuery| {
            let reader = reader.clone();
            async move { crate::Json(reader.status()) }
        }),
    )
}

/// `GET /replicas`: where each replica's bootstrap stands (JSON, by source
/// service). How stale a replica is shows in `GET /projections`: its
/// projection's lag is measured from the source's commit.
fn replicas_route(statuses: Vec<watch::Receiver<BootstrapStatus>>) -> Router {
    Router::new().route(
        "/replicas",
        axum::routing::get(move |_: crate::NoQuery| {
            let all: BTreeMap<String, BootstrapStatus> = statuses
                .iter()
                .map(|s| {
                    let status = s.borrow().clone();
                    (status.source.clone(), status)
                })
                .collect();
            async move { crate::Json(all) }
        }),
    )
}

impl Hosted {
    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The service's own router (no layers of the standard stack), with
    /// `GET /readyz` ([`crate::ready`]), `GET /projections` (each
    /// projection's state and lag, JSON) when it has projections and
    /// `GET /replicas` when it has replicas; every request it answers is
    /// recorded in `polis_http_request_duration_seconds`.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Checks now whether the service can do its job ([`crate::ready`]).
    pub async fn ready(&self) -> Report {
        self.readiness.check().await
    }

    /// The state and lag of each of the service's projections, by name.
    pub fn projections(&self) -> BTreeMap<String, ProjectionStatus> {
        self.projector.as_ref().map(ProjectorHandle::status).unwrap_or_default()
    }

    /// Where each replica's bootstrap stands, by source service.
    pub fn replicas(&self) -> BTreeMap<String, BootstrapStatus> {
        self.bootstraps
            .iter()
            .map(|b| {
                let status = b.status();
                (status.source.clone(), status)
            })
            .collect()
    }

    /// Waits until the service's projections reflect its log up to
    /// `position` (at once if it has none).
    pub async fn applied(&self, position: u64) {
        if let Some(projector) = &self.projector {
            projector.applied(position).await;
        }
    }

    /// Stops taking messages and waits (up to the grace period) for those
    /// being handled, then stops the bootstraps, the projections (which let
    /// their leases go), the scheduler and the relay, each after its current
    /// step. Nothing is lost: unacknowledged deliveries come again,
    /// unpublished outbox entries go out at the next start.
    ///
    /// The whole stop takes at most the grace period plus a second per
    /// stage after the consumer: a stage that cannot finish by then (its
    /// database or broker is gone) is abandoned, as a crash would leave it.
    pub async fn shutdown(self) {
        let Self { name, consumer, projector, bootstraps, scheduler, relay, grace, .. } = self;
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(consumer) = consumer
            && tokio::time::timeout(grace, consumer.shutdown()).await.is_err()
        {
            tracing::warn!(service = name, ?grace, "messages were still being handled at the end of the grace period");
        }
        let within = async |stage: &str, stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>| {
            let until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
            if tokio::time::timeout_at(until, stop).await.is_err() {
                tracing::warn!(service = name, stage, "did not stop in time; abandoned");
            }
        };
        within(
            "bootstraps",
            Box::pin(async move {
                for bootstrap in bootstraps {
                    bootstrap.shutdown().await;
                }
            }),
        )
        .await;
        if let Some(projector) = projector {
            within("projections", Box::pin(projector.shutdown())).await;
        }
        within("scheduler", Box::pin(scheduler.shutdown())).await;
        within("relay", Box::pin(relay.shutdown())).await;
    }
}
