//! The reference shop, assembled.
//!
//! Every service is a library crate exposing `open`, `router` and `consumer`;
//! this crate hosts them:
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
//! - [`host`]: one service's background machinery, used by both deployments.
//! - [`client`]: calls into the shop's APIs, in-process or over HTTP.
//! - [`workload`]: the demo's orders and the shop's invariants, for the CLI
//!   and the fault tests.

pub mod client;
pub mod data_dir;
pub mod distributed;
pub mod host;
pub mod supervisor;
pub mod workload;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use contracts::SagaStyle;
use polis_bus::{ConsumerOptions, InProcessBus};
use polis_core::Bus;
use polis_store::{Durability, SqliteEventStore, SqliteOptions};

pub use host::{HostOptions, Hosted};

use crate::data_dir::{DataDir, Wanted};

/// The shop's settings, shared by both deployments.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    pub saga: SagaStyle,
    pub order: order::Config,
    pub payment: payment::Config,
    pub shipping: shipping::Config,
    pub gateway: gateway::GatewayConfig,
    pub consumer: ConsumerOptions,
    pub host: HostOptions,
    /// Services whose consumer is not started: they never hear a command or
    /// an event (fault injection: "a service that never answers").
    pub silent: Vec<String>,
}

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            saga: SagaStyle::default(),
            order: order::Config::default(),
            payment: payment::Config::default(),
            shipping: shipping::Config::default(),
            gateway: gateway::GatewayConfig::default(),
            consumer: consumer_options(),
            host: HostOptions::default(),
            silent: Vec::new(),
        }
    }
}

/// The shop's consumers retry a transient failure for about 15 s before
/// dead-lettering it. The library's default gives up after ~0.75 s, which
/// is too short for the shop's one expected transient failure: a command
/// about a customer whose registration has not reached the service's
/// replica yet (replication is asynchronous). A dead letter would also park
/// every later message of that order, its compensations included.
pub fn consumer_options() -> ConsumerOptions {
    ConsumerOptions { max_attempts: 10, ..ConsumerOptions::default() }
}

impl ShopConfig {
    /// The order service's settings with the shop's saga style applied.
    fn order_config(&self) -> order::Config {
        order::Config { saga: self.saga, ..self.order.clone() }
    }
}

/// Each service's own router (no layers), e.g. for the demo's admin checks.
#[derive(Debug, Clone)]
pub struct ServiceRouters {
    pub customer: Router,
    pub catalog: Router,
    pub inventory: Router,
    pub payment: Router,
    pub shipping: Router,
    pub order: Router,
}

/// The whole shop in one process.
#[derive(Debug)]
pub struct Embedded {
    routers: ServiceRouters,
    gateway: Router,
    hosted: Vec<Hosted>,
    /// Owned while the shop runs; declared last so that it is let go last.
    data_dir: DataDir,
}

async fn sqlite(dir: &Path, service: &str) -> anyhow::Result<Arc<SqliteEventStore>> {
    let path = dir.join(format!("{service}.db"));
    let options = SqliteOptions { durability: Durability::Full, ..SqliteOptions::new(service) };
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
        let style = config.saga;
        let mut hosted = Vec::new();

        macro_rules! start_service {
            ($name:literal, $open:expr) => {{
                let store = sqlite(data_dir, $name).await?;
                let service = $open(store.clone()).await.with_context(|| format!("starting the {} service", $name))?;
                let consumer = (!config.silent.iter().any(|s| s == $name))
                    .then(|| service.consumer(style, config.consumer.clone()));
                hosted.push(
                    host::host(store, bus.clone(), consumer, &config.host)
                        .await
                        .with_context(|| format!("subscribing the {} service", $name))?,
                );
                service.router()
            }};
        }

        let routers = ServiceRouters {
            customer: start_service!("customer", |s| customer::Customer::open(s, customer::Config::default())),
            catalog: start_service!("catalog", |s| catalog::Catalog::open(s, catalog::Config::default())),
            inventory: start_service!("inventory", |s| inventory::Inventory::open(s, inventory::Config::default())),
            payment: start_service!("payment", |s| payment::Payment::open(s, config.payment.clone())),
            shipping: start_service!("shipping", |s| shipping::Shipping::open(s, config.shipping.clone())),
            order: start_service!("order", |s| order::OrderService::open(s, config.order_config())),
        };
        let upstreams = gateway::Upstreams {
            customer: gateway::Upstream::local(routers.customer.clone()),
            catalog: gateway::Upstream::local(routers.catalog.clone()),
            inventory: gateway::Upstream::local(routers.inventory.clone()),
            payment: gateway::Upstream::local(routers.payment.clone()),
            shipping: gateway::Upstream::local(routers.shipping.clone()),
            order: gateway::Upstream::local(routers.order.clone()),
        };
        let gateway = gateway::router(upstreams, config.gateway.clone());
        owned.record()?;
        Ok(Self { routers, gateway, hosted, data_dir: owned })
    }

    /// The gateway's router (bare; the caller adds the standard stack).
    pub fn gateway(&self) -> Router {
        self.gateway.clone()
    }

    pub fn routers(&self) -> &ServiceRouters {
        &self.routers
    }

    /// The data directory, owned by this shop while it runs.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The services running, by name.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.hosted.iter().map(|h| h.service.as_str())
    }
}
