//! Hosting a polis service over HTTP.
//!
//! Every service of the reference system and its gateway are axum apps with
//! the same scaffolding; this crate is that scaffolding, so each service
//! only writes routes and handlers:
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use polis_runtime::{ApiError, ConfigLoader, HttpOptions, Infra, Json, serve};
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default)]
//! struct OrdersConfig {
//!     http: HttpOptions,
//!     infra: Infra,
//! }
//!
//! # async fn place_order(Json(body): Json<serde_json::Value>) -> Result<Json<serde_json::Value>, ApiError> { Ok(Json(body)) }
//! # async fn run() -> Result<(), polis_runtime::RuntimeError> {
//! let _telemetry = polis_runtime::init_tracing()?;
//! let config: OrdersConfig = ConfigLoader::new().file("orders.toml").load()?;
//! let routes = Router::new().route("/orders", post(place_order));
//! let router = polis_runtime::with_standard_stack(routes, &config.http);
//! let listener = serve::bind(config.http.listen).await?;
//! serve::serve(listener, router, &config.http, serve::shutdown_signal()).await
//! # }
//! ```
//!
//! Layout:
//!
//! - [`problem`]: [`ApiError`], RFC 9457 problem details, and the single
//!   mapping of library errors (`StoreError`, `CommandError`) to statuses;
//! - [`json`]: the [`Json`] extractor and response whose rejections are
//!   problems, and [`Validate`] / [`ValidJson`] for domain validation;
//! - [`layers`]: [`with_standard_stack`] (request id, trace, panics, body
//!   limit and deadline, 404 / 405 problems, `GET /healthz`) and
//!   [`HttpOptions`];
//! - [`metrics`]: the process's Prometheus recorder, `GET /metrics` (served
//!   by the standard stack) and the HTTP request histogram every hosted
//!   service and the gateway record;
//! - [`page`]: [`Page`], keyset pagination (`?limit=N&after=KEY`) for lists;
//! - [`query`]: [`NoQuery`] and the refusal of query parameters a route
//!   does not read (400 naming them);
//! - [`id`]: the one accepted form of a UUID in a request, and [`PathId`],
//!   the extractor of a route's id (400 naming the parameter otherwise), and
//!   [`PathText`], a route's one path parameter as text;
//! - [`ready`]: `GET /readyz`, what a hosted service needs to do its job
//!   (store, bus, relay, consumer), checked now;
//! - [`serve`]: binding, serving with head, idle and shutdown deadlines
//!   (graceful shutdown on ctrl-c / SIGTERM), problem+json for requests that
//!   do not parse, and background servers for tests and embedded hosting;
//! - [`service`]: [`Service`], a service as its host sees it (open over
//!   its store, router, consumer), and [`host`], which runs its relay,
//!   scheduler and consumer;
//! - [`admin`]: the routes every hosted service gets for its operators:
//!   dead letters (list, show, replay, discard), sagas (by state, counts
//!   in flight) and event streams;
//! - [`config`]: defaults → TOML file → environment, [`Secret`], [`Infra`];
//! - [`telemetry`]: [`init_tracing`], the log subscriber, JSON logs and the
//!   OTLP trace export when configured.

#![warn(missing_docs)]

use std::net::SocketAddr;

pub mod admin;
pub mod config;
pub mod id;
pub mod json;
pub mod layers;
pub mod metrics;
pub mod page;
pub mod problem;
pub mod query;
pub mod ready;
pub mod serve;
pub mod service;
pub mod telemetry;

pub use config::{ConfigLoader, Infra, Secret};
pub use id::{PathId, PathText};
pub use json::{Json, ValidJson, Validate, Violations};
pub use layers::{HttpOptions, RequestId, with_standard_stack};
pub use page::{Page, PageKey};
pub use problem::{ApiError, FieldError};
pub use query::NoQuery;
pub use service::{BackgroundTask, HostOptions, Hosted, Service, host};
pub use telemetry::init_tracing;

/// What can go wrong setting up or running a service's host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The listen address cannot be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server stopped on an I/O error of its listener.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// A background server's task panicked or was cancelled.
    #[error("the HTTP server task ended abnormally: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    /// A file, variable or value of the configuration is unusable; the
    /// message names which, never a secret's value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `RUST_LOG` is not a valid filter directive.
    #[error("invalid log filter in RUST_LOG {value:?}: {reason}")]
    LogFilter {
        /// The variable's value (empty if it is not UTF-8).
        value: String,
        /// What the filter parser says is wrong with it.
        reason: String,
    },
    /// The log format, the trace filter or the trace exporter is unusable
    /// (the message names the variable).
    #[error("invalid telemetry set-up: {0}")]
    Telemetry(String),
}
