//! The distributed deployment: one service per OS process.
//!
//! A [`Node`] is what one `polis serve <service>` process runs:
//!
//! - a business service (customer, catalog, inventory, payment, shipping,
//!   order) connects to **its own** PostgreSQL database,
//!   `<database_prefix>_<service>` on the configured server (created through
//!   a maintenance connection when missing), applies its migrations, connects
//!   to NATS JetStream, hosts its relay, scheduler and consumer
//!   ([`crate::start_service`]) and serves its own HTTP API;
//! - the gateway owns no data: it serves the public API over
//!   [`gateway::Upstream::remote`] URLs, one per service.
//!
//! Every process reads the same [`DistributedConfig`] (defaults → optional
//! TOML file → `POLIS_POSTGRES_URL` / `POLIS_NATS_URL` → `POLIS__…`
//! variables), so one file or one environment describes the whole
//! deployment, and a supervisor can hand each process its addresses through
//! `POLIS__LISTEN__<SERVICE>` and `POLIS__UPSTREAMS__<SERVICE>`.
//!
//! Isolation: a service's connection options carry only its own database,
//! and its connections name themselves `polis-<service>` (PostgreSQL's
//! `application_name`), so `pg_stat_activity` shows who is connected where.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use contracts::SagaStyle;
use polis_bus::NatsBus;
use polis_bus::nats::NatsOptions;
use polis_core::{Bus, BusError, StoreError};
use polis_runtime::serve::RunningServer;
use polis_runtime::{ConfigLoader, HttpOptions, Infra, RuntimeError};
use polis_store::{PgEventStore, PgOptions};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};

pub use contracts::Service;
use polis_runtime::{HostOptions, Hosted};

/// PostgreSQL's limit on identifiers, database names included.
const MAX_DATABASE_NAME: usize = 63;

/// What can go wrong configuring or starting a process of the distributed shop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistributedError {
    #[error(transparent)]
    UnknownService(#[from] contracts::UnknownService),
    /// A setting is missing or unusable; the message names it, never a
    /// secret's value.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the {service} store")]
    Store {
        service: Service,
        #[source]
        source: StoreError,
    },
    #[error("cannot connect the {service} service to nats")]
    Bus {
        service: Service,
        #[source]
        source: BusError,
    },
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
}

/// The configuration every process of the distributed shop reads (see the
/// module docs for the layers). In TOML:
///
/// ```toml
/// saga = "orchestration"
/// database_prefix = "polis"     # databases polis_customer, polis_catalog, ...
/// max_connections = 8           # per service
///
/// [infra]
/// postgres_url = "postgres://polis:secret@db:5432/postgres"   # the server; any database to connect to
/// nats_url = "nats://nats:4222"
///
/// [listen]                      # where each process listens
/// gateway = "0.0.0.0:8080"
/// payment = "0.0.0.0:8084"
///
/// [upstreams]                   # where the gateway finds each service (default: its listen address)
/// payment = "http://payment:8084"
///
/// [nats]
/// ack_wait_ms = 30000
/// max_age_s = 604800            # how long a stream keeps a message (7 days)
/// partitions = 1                # > 1 to run several instances of a service
///
/// [http]                        # every process's HTTP server (its listen address is in [listen])
/// max_body_bytes = 65536
/// header_read_timeout_ms = 10000
/// body_read_timeout_ms = 30000
/// idle_timeout_ms = 75000
/// shutdown_grace_ms = 10000
/// ```
///
/// plus the `order`, `payment`, `shipping`, `audit` and `gateway` sections
/// of each service's own settings (e.g. `[order]
/// idempotency_key_retention_s`, `[audit] recent_ms`, `full_every_ms`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DistributedConfig {
    /// `postgres_url` is the PostgreSQL *server* (the database in the URL is
    /// used only to create the services' databases); `nats_url` the NATS
    /// server. `redis_url` is accepted and not used yet.
    pub infra: Infra,
    /// Each service's database is `<database_prefix>_<service>`: lowercase
    /// ASCII letters, digits and `_`, starting with a letter.
    pub database_prefix: String,
    /// Connections in each service's pool (at least 2).
    pub max_connections: u32,
    pub saga: SagaStyle,
    /// Where each process listens (`[listen] payment = "0.0.0.0:8084"`, or
    /// `POLIS__LISTEN__PAYMENT`); a process not named listens on loopback at
    /// its [`Service::default_port`].
    pub listen: BTreeMap<Service, SocketAddr>,
    /// Where the gateway finds each service (`http://host:port`); unset, it
    /// is the service's listen address (loopback when that is a wildcard).
    pub upstreams: BTreeMap<Service, String>,
    pub nats: NatsSettings,
    pub customer: customer::Config,
    pub catalog: catalog::Config,
    pub inventory: inventory::Config,
    /// The order service's settings; its `saga` is replaced by the top-level `saga`.
    pub order: order::Config,
    pub order_history: order_history::Config,
    pub payment: payment::Config,
    pub shipping: shipping::Config,
    /// The auditor's settle time, interval and passes (`[audit] settle_ms`,
    /// `interval_ms`, `recent_ms`, `full_every_ms`).
    pub audit: ::audit::Config,
    pub gateway: gateway::GatewayConfig,
    /// Every process's HTTP server: body limit and timeouts; its `listen`
    /// is replaced by the process's address in `listen`.
    pub http: HttpOptions,
    /// Consumer, relay and scheduler tuning: not read from files or the
    /// environment (their defaults suit the shop); for tests and embedders.
    #[serde(skip)]
    pub host: HostOptions,
    /// This process's identity to its projections' leases (`instance = ...`,
    /// or `POLIS__INSTANCE`): unique among the running processes of a
    /// service, and the same when the process is restarted, which then
    /// applies its projections at once instead of waiting out the dead
    /// one's lease (5 s). `polis up` sets it for the services it supervises.
    /// Unset, every start is a new identity.
    pub instance: Option<String>,
    /// Services started without their consumer: they serve HTTP and send,
    /// but never hear a command or an event (fault injection, "a service
    /// that never answers", as `ShopConfig::silent`). Not read from files
    /// or the environment: a deployment that sets it is broken on purpose.
    #[serde(skip)]
    pub silent: Vec<Service>,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            infra: Infra::default(),
            database_prefix: "polis".to_owned(),
            max_connections: 8,
            saga: SagaStyle::default(),
            listen: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            nats: NatsSettings::default(),
            customer: customer::Config::default(),
            catalog: catalog::Config::default(),
            inventory: inventory::Config::default(),
            order: order::Config::default(),
            order_history: order_history::Config::default(),
            payment: payment::Config::default(),
            shipping: shipping::Config::default(),
            audit: ::audit::Config::default(),
            instance: None,
            gateway: gateway::GatewayConfig::default(),
            http: HttpOptions::default(),
            host: crate::host_options(),
            silent: Vec::new(),
        }
    }
}

/// The most partitions a topic may be split into: each is a durable
/// JetStream consumer per routed topic of every service.
const MAX_PARTITIONS: u32 = 64;

/// The `nats` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsSettings {
    /// How long a delivery may stay unacknowledged before JetStream
    /// delivers it again: after a service process dies, what it had pulled
    /// but not finished comes back after this. Default 30 000.
    pub ack_wait_ms: u64,
    /// How long each service's stream keeps a message, acknowledged or not
    /// (JetStream's maximum age; see polis-bus's NATS module docs,
    /// "Retention"). A service stopped for longer misses what expired
    /// meanwhile. Default 604 800 (seven days, the relay's retention of
    /// inbox records); 0 keeps messages until an operator limits the stream.
    pub max_age_s: u64,
    /// Into how many partitions each topic is split by ordering key, so
    /// that several instances of a service share its consumer (ADR 0011).
    /// Every process of a deployment must use the same count, and changing
    /// it needs the consumers drained. Default 1: no partitions, one
    /// instance per service.
    pub partitions: u32,
}

impl Default for NatsSettings {
    fn default() -> Self {
        let defaults = NatsOptions::default();
        Self {
            ack_wait_ms: defaults.ack_wait.as_millis().try_into().unwrap_or(u64::MAX),
            max_age_s: defaults.max_age.as_secs(),
            partitions: 1,
        }
    }
}

impl DistributedConfig {
    /// Loads the layers: defaults, `file` if given (it must exist), then the
    /// process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, DistributedError> {
        let loader = match file {
            Some(path) => ConfigLoader::new().required_file(path),
            None => ConfigLoader::new(),
        };
        Self::from_loader(&loader)
    }

    /// Loads and checks the configuration with `loader`.
    pub fn from_loader(loader: &ConfigLoader) -> Result<Self, DistributedError> {
        let config: Self = loader.load()?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn validate(&self) -> Result<(), DistributedError> {
        let prefix = &self.database_prefix;
        let longest = Service::BUSINESS.iter().map(|s| s.as_str().len() + 1).max().unwrap_or(0);
        let valid = prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && prefix.len() + longest <= MAX_DATABASE_NAME;
        if !valid {
            return Err(DistributedError::Config(format!(
                "database_prefix {prefix:?} must start with a lowercase ASCII letter, hold only lowercase letters, \
                 digits and `_`, and be at most {} characters long",
                MAX_DATABASE_NAME - longest
            )));
        }
        if self.max_connections < 2 {
            return Err(DistributedError::Config(format!(
                "max_connections must be at least 2 (a service needs one for LISTEN and one for work), got {}",
                self.max_connections
            )));
        }
        if self.nats.ack_wait_ms == 0 {
            return Err(DistributedError::Config("nats.ack_wait_ms must be above 0".into()));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.nats.partitions) {
            return Err(DistributedError::Config(format!(
                "nats.partitions must be 1 to {MAX_PARTITIONS}, got {}",
                self.nats.partitions
            )));
        }
        self.payment.validate().map_err(|err| DistributedError::Config(err.to_string()))?;
        Ok(())
    }

    /// The database of `service`: `<database_prefix>_<service>`; `None` for the gateway.
    pub fn database(&self, service: Service) -> Option<String> {
        service.has_database().then(|| format!("{}_{}", self.database_prefix, service.ident()))
    }

    /// Where `service` listens: as configured, or loopback at its default port.
    pub fn listen(&self, service: Service) -> SocketAddr {
        self.listen
            .get(&service)
            .copied()
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, service.default_port())))
    }

    /// The base URL the gateway calls `service` at.
    pub fn upstream_url(&self, service: Service) -> String {
        match self.upstreams.get(&service) {
            Some(url) => url.to_owned(),
            None => format!("http://{}", connectable(self.listen(service))),
        }
    }

    /// The services' settings, as both deployments take them.
    pub fn shop(&self) -> crate::ShopConfig {
        crate::ShopConfig {
            saga: self.saga,
            customer: self.customer.clone(),
            catalog: self.catalog.clone(),
            inventory: self.inventory.clone(),
            payment: self.payment.clone(),
            shipping: self.shipping.clone(),
            order: self.order.clone(),
            order_history: self.order_history.clone(),
            audit: self.audit.clone(),
            gateway: self.gateway.clone(),
            host: self.host.clone(),
            silent: self.silent.clone(),
            read_side: true,
        }
    }

    fn nats_options(&self) -> NatsOptions {
        NatsOptions {
            ack_wait: Duration::from_millis(self.nats.ack_wait_ms),
            max_age: Duration::from_secs(self.nats.max_age_s),
            partitions: self.nats.partitions,
            ..NatsOptions::default()
        }
    }
}

/// The address to connect to for a listen address: a wildcard listens on
/// loopback too.
pub(crate) fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// One running process of the distributed shop (see the module docs).
/// Dropping it stops the HTTP server and the background tasks; prefer
/// [`Node::shutdown`], which lets in-flight requests finish.
#[derive(Debug)]
pub struct Node {
    service: Service,
    database: Option<String>,
    server: RunningServer,
    // Dropped after the server has stopped: the relay and consumer keep
    // running while the last requests finish.
    hosted: Option<Hosted>,
}

impl Node {
    /// Starts `service`: for a business service, its database (created if
    /// missing), migrations, NATS connection, relay, scheduler and consumer;
    /// then its HTTP API on `config.listen`. Returns once it answers.
    pub async fn start(service: Service, config: &DistributedConfig) -> Result<Self, DistributedError> {
        config.validate()?;
        let (router, hosted) = match service {
            Service::Gateway => (gateway_router(config)?, None),
            service => {
                let (router, hosted) = start_service(service, config).await?;
                (router, Some(hosted))
            }
        };
        let listen = config.listen(service);
        let http = config.http.clone().with_listen(listen);
        let router = polis_runtime::with_standard_stack(router, &http);
        let listener = polis_runtime::serve::bind(listen).await?;
        let server = polis_runtime::serve::spawn(listener, router, &http)?;
        tracing::info!(%service, addr = %server.addr(), "service is up");
        Ok(Self { service, database: config.database(service), server, hosted })
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// The address the HTTP API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", connectable(self.addr()))
    }

    /// The database this process uses, if it has one.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// Stops accepting requests, lets those in flight finish, then stops the
    /// consumer (waiting for the messages being handled, up to the grace),
    /// the bootstraps, the projections (letting their leases go), the
    /// scheduler and the relay. Nothing is lost: a message cut short is
    /// delivered again later.
    pub async fn shutdown(self) -> Result<(), DistributedError> {
        let Self { service, server, hosted, .. } = self;
        let result = server.shutdown().await;
        // In order, and waited for: the projections let their leases go, so
        // the next start (or another instance) applies them at once.
        if let Some(hosted) = hosted {
            hosted.shutdown().await;
        }
        tracing::info!(%service, "service stopped");
        Ok(result?)
    }
}

/// Runs `service` until `shutdown` resolves (`polis serve`), then stops it
/// gracefully.
pub async fn serve<F>(service: Service, config: &DistributedConfig, shutdown: F) -> Result<(), DistributedError>
where
    F: Future<Output = ()>,
{
    let node = Node::start(service, config).await?;
    shutdown.await;
    node.shutdown().await
}

fn gateway_router(config: &DistributedConfig) -> Result<Router, DistributedError> {
    let upstreams = gateway::Upstreams::try_new(|service| gateway::Upstream::remote(&config.upstream_url(service)))?;
    Ok(gateway::router(upstreams, config.gateway.clone()))
}

/// What one service's data takes on the servers after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDisk {
    pub service: Service,
    /// Its database's size (`pg_database_size`); `None` for the gateway.
    pub database_bytes: Option<u64>,
    /// The database's tables, each with its indexes and TOAST
    /// (`pg_total_relation_size`), largest first.
    pub tables: Vec<(String, u64)>,
    /// The bytes of the JetStream stream of messages addressed to it
    /// (see [`NatsBus::stream_usage`]); `None` if it has none.
    pub stream_bytes: Option<u64>,
}

/// What each service's database and stream take on the configured servers.
pub async fn disk_usage(config: &DistributedConfig) -> Result<Vec<ServiceDisk>, DistributedError> {
    let nats_url = config.infra.nats_url.as_ref().ok_or_else(|| {
        DistributedError::Config("no NATS server configured: set POLIS_NATS_URL (or infra.nats_url)".into())
    })?;
    let mut usage = Vec::new();
    for service in Service::ALL {
        let bus = NatsBus::connect(nats_url.expose(), config.nats_options())
            .await
            .map_err(|source| DistributedError::Bus { service, source })?;
        let stream =
            bus.stream_usage(service.as_str()).await.map_err(|source| DistributedError::Bus { service, source })?;
        let (database_bytes, tables) = match service.has_database() {
            false => (None, Vec::new()),
            true => {
                let failed = |source| DistributedError::Database {
                    context: format!("cannot measure the {service} database"),
                    source,
                };
                let mut conn = database_options(service, config)?.connect().await.map_err(failed)?;
                let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(failed)?;
                let tables: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT relname::text, pg_total_relation_size(oid) AS bytes FROM pg_class \
                     WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace \
                     ORDER BY bytes DESC, relname",
                )
                .fetch_all(&mut conn)
                .await
                .map_err(failed)?;
                let tables = tables.into_iter().map(|(name, bytes)| (name, bytes.max(0) as u64)).collect();
                (Some(size.max(0) as u64), tables)
            }
        };
        usage.push(ServiceDisk { service, database_bytes, tables, stream_bytes: stream.map(|s| s.bytes) });
    }
    Ok(usage)
}

/// The connection options of `service`'s own database.
fn database_options(service: Service, config: &DistributedConfig) -> Result<PgConnectOptions, DistributedError> {
    let server = server_options(config)?;
    let database = config
        .database(service)
        .ok_or_else(|| DistributedError::Config(format!("the {service} process has no database of its own")))?;
    Ok(server.database(&database).application_name(&format!("polis-{service}")))
}

/// The configured server, connecting to the URL's own database.
fn server_options(config: &DistributedConfig) -> Result<PgConnectOptions, DistributedError> {
    let url = config.infra.postgres_url.as_ref().ok_or_else(|| {
        DistributedError::Config(
            "no PostgreSQL server configured: set POLIS_POSTGRES_URL (or infra.postgres_url in the config file)".into(),
        )
    })?;
    let invalid =
        || DistributedError::Config("POLIS_POSTGRES_URL (infra.postgres_url) is not a postgres:// URL".into());
    // The driver accepts any scheme, and its messages may quote the URL,
    // password included: check the scheme here and name the setting instead.
    let scheme = url.expose().split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return Err(invalid());
    }
    PgConnectOptions::from_str(url.expose()).map_err(|_| invalid())
}

/// Creates `service`'s database unless it exists, through a connection to
/// the server URL's own database. Safe to race: a concurrent creation of the
/// same database counts as success.
pub async fn ensure_database(service: Service, config: &DistributedConfig) -> Result<(), DistributedError> {
    let Some(database) = config.database(service) else {
        return Ok(());
    };
    let context = |what: &str| format!("{what} (for the {service} database {database:?})");
    let mut conn =
        server_options(config)?.application_name(&format!("polis-{service}-setup")).connect().await.map_err(
            |source| DistributedError::Database { context: context("cannot connect to PostgreSQL"), source },
        )?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_optional(&mut conn)
        .await
        .map_err(|source| DistributedError::Database { context: context("cannot list databases"), source })?;
    if exists.is_none() {
        // The name was validated (lowercase letters, digits, `_`), so quoting it is enough.
        let created = sqlx::query(&format!(r#"CREATE DATABASE "{database}""#)).execute(&mut conn).await;
        match created {
            Ok(_) => tracing::info!(%service, %database, "created the service's database"),
            // 42P04 duplicate_database, 23505 unique_violation: another process won the race.
            Err(sqlx::Error::Database(err)) if matches!(err.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(source) => {
                return Err(DistributedError::Database { context: context("cannot create the database"), source });
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn start_service(service: Service, config: &DistributedConfig) -> Result<(Router, Hosted), DistributedError> {
    // Every setting is checked before anything is created.
    let database = database_options(service, config)?;
    let nats_url = config.infra.nats_url.as_ref().ok_or_else(|| {
        DistributedError::Config(
            "no NATS server configured: set POLIS_NATS_URL (or infra.nats_url in the config file)".into(),
        )
    })?;
    ensure_database(service, config).await?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        // As `PgEventStore::connect`: every statement is one round trip; a
        // ping before each would double them.
        .test_before_acquire(false)
        .connect_with(database)
        .await
        .map_err(|source| DistributedError::Database {
            context: format!("cannot connect to the {service} database"),
            source,
        })?;
    let store = Arc::new(
        PgEventStore::from_pool(pool, PgOptions::new(service.as_str()))
            .await
            .map_err(|source| DistributedError::Store { service, source })?,
    );
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(nats_url.expose(), config.nats_options())
            .await
            .map_err(|source| DistributedError::Bus { service, source })?,
    );
    let upstreams = gateway::Upstreams::try_new(|service| gateway::Upstream::remote(&config.upstream_url(service)))?;
    let mut shop = config.shop();
    if let Some(instance) = &config.instance {
        shop.host = shop.host.clone().instance(&format!("{service}@{instance}"));
    }
    let hosted = crate::start_service(service, store, bus, &shop, Some(&upstreams)).await?;
    let router = hosted.router();
    Ok((router, hosted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<DistributedConfig, DistributedError> {
        DistributedConfig::from_loader(&ConfigLoader::new().env_vars(vars.iter().copied()))
    }

    #[test]
    fn defaults_give_every_service_its_own_database_and_port() {
        let config = load(&[]).unwrap();
        let databases: Vec<_> = Service::ALL.iter().filter_map(|s| config.database(*s)).collect();
        assert_eq!(
            databases,
            [
                "polis_customer",
                "polis_catalog",
                "polis_inventory",
                "polis_payment",
                "polis_shipping",
                "polis_order",
                "polis_order_history",
                "polis_audit"
            ]
        );
        let mut ports: Vec<_> = Service::ALL.iter().map(|s| config.listen(*s).port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Service::ALL.len());
        assert_eq!(config.upstream_url(Service::Payment), "http://127.0.0.1:8084");
    }

    #[test]
    fn the_environment_sets_addresses_upstreams_and_infra() {
        let config = load(&[
            ("POLIS_POSTGRES_URL", "postgres://u:pw@db/postgres"),
            ("POLIS__LISTEN__PAYMENT", "0.0.0.0:9004"),
            ("POLIS__UPSTREAMS__ORDER", "http://order:9006"),
            ("POLIS__SAGA", "choreography"),
            ("POLIS__DATABASE_PREFIX", "shop1"),
            ("POLIS__NATS__ACK_WAIT_MS", "2500"),
            ("POLIS__HTTP__IDLE_TIMEOUT_MS", "5000"),
        ])
        .unwrap();
        assert_eq!(config.listen(Service::Payment), "0.0.0.0:9004".parse().unwrap());
        // A wildcard listen address is reached on loopback.
        assert_eq!(config.upstream_url(Service::Payment), "http://127.0.0.1:9004");
        assert_eq!(config.upstream_url(Service::Order), "http://order:9006");
        assert_eq!(config.saga, SagaStyle::Choreography);
        assert_eq!(config.database(Service::Order).as_deref(), Some("shop1_order"));
        assert_eq!(config.nats_options().ack_wait, Duration::from_millis(2500));
        assert_eq!(config.http.idle_timeout(), Duration::from_secs(5));
        assert!(config.infra.postgres_url.is_some());
        assert!(!format!("{config:?}").contains("pw"));
    }

    #[test]
    fn unusable_settings_are_refused_by_name() {
        for (vars, named) in [
            (vec![("POLIS__DATABASE_PREFIX", "Shop")], "database_prefix"),
            (vec![("POLIS__DATABASE_PREFIX", "a\"; DROP")], "database_prefix"),
            (vec![("POLIS__DATABASE_PREFIX", "x".repeat(60).leak() as &str)], "database_prefix"),
            (vec![("POLIS__MAX_CONNECTIONS", "1")], "max_connections"),
            (vec![("POLIS__NATS__ACK_WAIT_MS", "0")], "ack_wait_ms"),
            (vec![("POLIS__HTTP__HEADER_READ_TIMEOUT_MS", "0")], "header_read_timeout_ms"),
            (vec![("POLIS__PAYMENT__DECLINE_RATE", "1.5")], "decline_rate"),
            (vec![("POLIS__LISTEN__PAYMENT", "nowhere")], "payment"),
            (vec![("POLIS__NOPE", "1")], "nope"),
        ] {
            let err = load(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
    }

    #[test]
    fn a_bad_postgres_url_is_named_without_its_value() {
        for url in ["mysql://u:hunter2@db", "postgres://u:hunter2@db:port", "u:hunter2@db"] {
            let config = load(&[("POLIS_POSTGRES_URL", url)]).unwrap();
            let err = database_options(Service::Order, &config).unwrap_err().to_string();
            assert!(err.contains("POLIS_POSTGRES_URL") && !err.contains("hunter2"), "{url}: {err}");
        }
        let err = database_options(Service::Order, &load(&[]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("no PostgreSQL server configured"), "{err}");
    }

    #[test]
    fn each_service_connects_to_its_own_database_only() {
        let config = load(&[("POLIS_POSTGRES_URL", "postgres://u:pw@db:5432/postgres?sslmode=disable")]).unwrap();
        for service in Service::BUSINESS {
            let options = database_options(service, &config).unwrap();
            assert_eq!(options.get_database(), Some(format!("polis_{}", service.ident()).as_str()));
            assert_eq!(options.get_application_name(), Some(format!("polis-{service}").as_str()));
            assert_eq!(options.get_host(), "db");
        }
        assert!(database_options(Service::Gateway, &config).is_err());
    }
}
