//! The reference shop, assembled.
//!
//! Every service is a library crate describing itself with
//! [`polis_runtime::Service`] (open over its store, router, consumer); this
//! crate hosts them, driven by the one list of processes, [`Service`]:
//!
//! - [`Embedded`]: the whole shop in one process — one SQLite file per
//!   service and the durable in-process bus (`bus.db`) under a data
//!   directory, each service's relay, scheduler and consumer running as
//!   tasks, and the gateway calling the services' routers in-process.
//!   Opening an existing data directory resumes where the last run stopped:
//!   unpublished outbox messages, unacknowledged deliveries, sagas and their
//!   deadlines are all in the files.
//! - [`distributed`]: one service per OS process — [`distributed::Node`] is
//!   what `polis serve <service>` runs: the service over its own PostgreSQL
//!   database and NATS JetStream, or the gateway over the services' URLs.
//! - [`supervisor`]: all seven processes on one machine (`polis up --mode
//!   distributed`), with local PostgreSQL and NATS servers when none are
//!   configured.
//! - [`data_dir`]: the data directory both deployments keep their state
//!   in, locked by its one owner and recording what it holds.
//! - [`start_service`]: opens one service of [`Service`] over its store and
//!   hosts it ([`polis_runtime::host`]), for both deployments.
//! - [`client`]: calls into the shop's APIs, in-process or over HTTP.
//! - [`audit`]: the audit service's reading of the other services' APIs.
//! - [`workload`]: the demo's orders and the shop's invariants, for the CLI
//!   and the fault tests.
//! - [`faults`]: messages a service cannot handle, to make dead letters on
//!   purpose (the admin commands' tests).

pub mod audit;
pub mod client;
pub mod data_dir;
pub mod distributed;
pub mod faults;
pub mod replica;
pub mod supervisor;
pub mod workload;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use contracts::SagaStyle;
pub use contracts::Service;
use polis_bus::InProcessBus;
use polis_core::{Bus, BusError, StoreError};
use polis_projection::ReplicaSource;
use polis_runtime::{HostOptions, Hosted};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{Durability, SqliteEventStore, SqliteOptions};

use crate::data_dir::{DataDir, Wanted};

/// The shop's settings, shared by both deployments.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// The style new orders' create-order saga runs in; every service is
    /// opened with it (participants use it for orders whose events do not
    /// record their style).
    pub saga: SagaStyle,
    pub customer: customer::Config,
    pub catalog: catalog::Config,
    pub inventory: inventory::Config,
    pub payment: payment::Config,
    pub shipping: shipping::Config,
    /// The order service's settings; its `saga` is replaced by [`ShopConfig::saga`].
    pub order: order::Config,
    pub order_history: order_history::Config,
    pub audit: ::audit::Config,
    pub gateway: gateway::GatewayConfig,
    /// Relay, scheduler and consumer tuning for every service.
    pub host: HostOptions,
    /// Services whose consumer is not started: they never hear a command or
    /// an event (fault injection: "a service that never answers").
    pub silent: Vec<Service>,
    /// Whether the read side (the order-history service) runs; off, its
    /// routes answer 503. On by default; off is for measuring its price.
    pub read_side: bool,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            saga: SagaStyle::default(),
            customer: customer::Config::default(),
            catalog: catalog::Config::default(),
            inventory: inventory::Config::default(),
            payment: payment::Config::default(),
            shipping: shipping::Config::default(),
            order: order::Config::default(),
            order_history: order_history::Config::default(),
            audit: ::audit::Config::default(),
            gateway: gateway::GatewayConfig::default(),
            host: host_options(),
            silent: Vec::new(),
            read_side: true,
        }
    }
}

/// The shop's consumers retry a transient failure for about 15 s before
/// dead-lettering it. The library's default gives up after ~0.75 s, which
/// is too short for the shop's one expected transient failure: a command
/// about a customer whose registration has not reached the service's
/// replica yet (replication is asynchronous). A dead letter would also park
/// every later message of that order, its compensations included.
pub fn host_options() -> HostOptions {
    let mut options = HostOptions::default();
    options.consumer.max_attempts = 10;
    options
}

/// Why a business service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Its store refused to open it (migrations, invalid settings).
    #[error("cannot open the {service} service")]
    Open {
        service: Service,
        #[source]
        source: StoreError,
    },
    /// Its consumer could not subscribe.
    #[error("cannot subscribe the {service} service")]
    Subscribe {
        service: Service,
        #[source]
        source: BusError,
    },
    /// The gateway owns no store; it is not started this way.
    #[error("the {0} is not a business service")]
    NotABusinessService(Service),
}

/// Opens `service` over `store` with its settings from `config` and hosts
/// it on `bus`: the one place where a service's name becomes its type, for
/// both deployments. `upstreams` is where the other services answer: the
/// customer service for the replicas of payment and shipping to bootstrap
/// from, every service for the auditor to read (`None`: the replicas follow
/// events only, the auditor reads nothing and says so).
pub async fn start_service<S>(
    service: Service,
    store: Arc<S>,
    bus: Arc<dyn Bus>,
    config: &ShopConfig,
    upstreams: Option<&gateway::Upstreams>,
) -> Result<Hosted, StartError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let mut options = config.host.clone();
    options.consume = !config.silent.contains(&service);
    let saga = config.saga;
    let replica_source = || match upstreams.and_then(|u| u.get(Service::Customer)) {
        Some(upstream) => ReplicaSource::new(Arc::new(replica::CustomerSnapshots::new(upstream.clone()))),
        None => ReplicaSource::default(),
    };
    match service {
        Service::Customer => {
            host::<customer::Customer<S>, S>(service, store, bus, config.customer.clone(), &options).await
        }
        Service::Catalog => host::<catalog::Catalog<S>, S>(service, store, bus, config.catalog.clone(), &options).await,
        Service::Inventory => {
            let mut settings = config.inventory.clone();
            settings.saga = saga;
            host::<inventory::Inventory<S>, S>(service, store, bus, settings, &options).await
        }
        Service::Payment => {
            let settings = payment::Config { saga, customers: replica_source(), ..config.payment.clone() };
            host::<payment::Payment<S>, S>(service, store, bus, settings, &options).await
        }
        Service::Shipping => {
            let settings = shipping::Config { saga, customers: replica_source(), ..config.shipping.clone() };
            host::<shipping::Shipping<S>, S>(service, store, bus, settings, &options).await
        }
        Service::Order => {
            let settings = order::Config { saga, ..config.order.clone() };
            host::<order::OrderService<S>, S>(service, store, bus, settings, &options).await
        }
        Service::OrderHistory => {
            let settings = config.order_history.clone();
            host::<order_history::OrderHistory<S>, S>(service, store, bus, settings, &options).await
        }
        Service::Audit => {
            let facts = upstreams
                .and_then(audit::ApiFacts::new)
                .map(|facts| if config.read_side { facts } else { facts.without_view() })
                .map(|f| ::audit::FactsSource::new(Arc::new(f)));
            let settings = ::audit::Config { facts: facts.unwrap_or_default(), ..config.audit.clone() };
            host::<::audit::Audit<S>, S>(service, store, bus, settings, &options).await
        }
        Service::Gateway => Err(StartError::NotABusinessService(service)),
    }
}

async fn host<T, S>(
    name: Service,
    store: Arc<S>,
    bus: Arc<dyn Bus>,
    config: T::Config,
    options: &HostOptions,
) -> Result<Hosted, StartError>
where
    T: polis_runtime::Service<S>,
    S: SqlStore,
    S::Tx: Sql,
{
    let service = T::open(store, config).await.map_err(|source| StartError::Open { service: name, source })?;
    polis_runtime::host(&service, bus, options).await.map_err(|source| StartError::Subscribe { service: name, source })
}

/// The whole shop in one process.
pub struct Embedded {
    gateway: Router,
    /// The in-process bus every service publishes to and consumes from.
    bus: Arc<dyn Bus>,
    /// Every business service, in [`Service::BUSINESS`] order.
    hosted: Vec<(Service, Hosted)>,
    /// Owned while the shop runs; declared last so that it is let go last.
    data_dir: DataDir,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("hosted", &self.hosted)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The router of a service this shop does not run: 503 to everything.
fn not_running() -> Router {
    Router::new().fallback(|| async { polis_runtime::ApiError::service_unavailable("this service is not running") })
}

async fn sqlite(dir: &Path, service: Service) -> anyhow::Result<Arc<SqliteEventStore>> {
    let path = dir.join(format!("{service}.db"));
    let options = SqliteOptions { durability: Durability::Full, ..SqliteOptions::new(service.as_str()) };
    let store = SqliteEventStore::open(&path, options)
        .await
        .with_context(|| format!("opening the {service} database at {}", path.display()))?;
    Ok(Arc::new(store))
}

impl Embedded {
    /// Opens (or creates) the shop's files under `data_dir` and starts every
    /// service. Fails at once, saying why, if another process owns the
    /// directory or it holds a distributed shop ([`data_dir`]).
    pub async fn start(data_dir: &Path, config: &ShopConfig) -> anyhow::Result<Self> {
        let mut owned = DataDir::open(data_dir, &Wanted::embedded())?;
        let bus_path = data_dir.join("bus.db");
        let bus: Arc<dyn Bus> = Arc::new(
            InProcessBus::open(&bus_path)
                .await
                .with_context(|| format!("opening the bus at {}", bus_path.display()))?,
        );
        let mut hosted = Vec::new();
        for service in Service::BUSINESS {
            if service == Service::OrderHistory && !config.read_side {
                continue;
            }
            let store = sqlite(data_dir, service).await?;
            // The services started before this one, in process (the customer
            // service first, for the replicas; the auditor last, reading all).
            let upstreams = gateway::Upstreams::new(|s| {
                let router = hosted.iter().find(|(h, _): &&(Service, Hosted)| *h == s).map(|(_, h)| h.router());
                gateway::Upstream::local(router.unwrap_or_else(not_running))
            });
            // The data directory is this process's alone: a restarted shop
            // takes its leases back at once.
            let mut config = config.clone();
            config.host = config.host.clone().instance(service.as_str());
            let started = start_service(service, store, bus.clone(), &config, Some(&upstreams))
                .await
                .with_context(|| format!("starting the {service} service"))?;
            hosted.push((service, started));
        }
        let local = |service: Service| {
            let router = hosted.iter().find(|(s, _)| *s == service).map_or_else(not_running, |(_, h)| h.router());
            gateway::Upstream::local(router)
        };
        let gateway = gateway::router(gateway::Upstreams::new(local), config.gateway.clone());
        owned.record()?;
        Ok(Self { gateway, bus, hosted, data_dir: owned })
    }

    /// A process's own router (bare; the caller adds the standard stack):
    /// the gateway's, or a business service's (one that is not running
    /// answers 503).
    pub fn router(&self, service: Service) -> Router {
        if service == Service::Gateway {
            return self.gateway.clone();
        }
        self.hosted.iter().find(|(s, _)| *s == service).map_or_else(not_running, |(_, hosted)| hosted.router())
    }

    /// The gateway's router (bare; the caller adds the standard stack).
    pub fn gateway(&self) -> Router {
        self.gateway.clone()
    }

    /// The bus the services share: what is published here reaches their
    /// consumers as any service's message would ([`faults`]).
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// The data directory, owned by this shop while it runs.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The services running, by name.
    pub fn services(&self) -> impl Iterator<Item = Service> + '_ {
        self.hosted.iter().map(|(service, _)| *service)
    }

    /// Stops every service — each stops taking messages and finishes the
    /// ones it is handling — in the reverse of the order they started,
    /// then lets the data directory go.
    pub async fn shutdown(self) {
        let Self { hosted, data_dir, .. } = self;
        for (_, hosted) in hosted.into_iter().rev() {
            hosted.shutdown().await;
        }
        drop(data_dir);
    }
}
