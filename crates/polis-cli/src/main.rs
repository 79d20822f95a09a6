//! `polis`: the command-line entry point.
//!
//! - `polis demo`: the reference shop under a concurrent order workload,
//!   then a report with its invariant checks (the README's main command);
//! - `polis up`: the shop, serving the gateway API until interrupted,
//!   embedded in this process or as one process per service;
//! - `polis check`: finish the demo run recorded in a data directory (after
//!   a crash, say) and check its invariants;
//! - `polis serve <service>`: one process of the distributed shop;
//! - `polis store-demo`: the event store alone — aggregates under concurrent
//!   commands, a catch-up projection, invariant checks, on SQLite or PostgreSQL;
//! - `polis dlq`, `polis sagas`, `polis events`: a running shop's dead
//!   letters, sagas and event streams, through its gateway (`admin`).
//!
//! The exit status tells an invariant that does not hold (3) from an
//! operational error (1); [`exit`] defines them all.

#![warn(missing_docs)]

mod admin;
mod audit;
mod check;
mod exit;
mod measure;
mod serve;
mod shop_demo;
mod stock;
mod store_demo;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use exit::Outcome;
use serde::Serialize;

/// The shop allocates and frees many small buffers per message (rows,
/// JSON, HTTP); mimalloc's per-thread free lists do that with less CPU
/// and fewer lock round trips than glibc's malloc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "polis", version, about = "Data management for microservices", after_help = exit::help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reference shop, drive orders through its gateway, then check every invariant.
    Demo(shop_demo::DemoArgs),
    /// Run the reference shop until ctrl-c (resumes an existing data directory).
    Up(up::UpArgs),
    /// Resume the shop on a demo's data directory, wait until every order of its run is decided, check every invariant.
    Check(check::CheckArgs),
    /// Run one process of the distributed shop until ctrl-c or SIGTERM.
    Serve(serve::ServeArgs),
    /// Drive reservations concurrently through event-sourced stock items, then check every invariant.
    StoreDemo(store_demo::DemoArgs),
    /// Run a reconciliation pass of a running shop now: print its drifts, send the repairs due.
    Audit(audit::AuditArgs),
    /// A running shop's dead letters: list, show, replay or discard them.
    #[command(subcommand)]
    Dlq(admin::DlqCommand),
    /// A running shop's sagas, by state, or counted in flight.
    Sagas(admin::SagasArgs),
    /// A stream's events, from the service whose log holds it.
    Events(admin::EventsArgs),
}

/// How the shop is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// One process: a SQLite file per service and the in-process bus.
    Embedded,
    /// A process per service: a PostgreSQL database per service and NATS JetStream.
    Distributed,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Distributed => "distributed",
        }
    }
}

/// The shutdown signal (ctrl-c or SIGTERM) with its handlers installed
/// now: `shutdown_signal` installs them when first polled, and a SIGTERM
/// that came between a process answering and that first poll would kill it
/// instead of stopping it cleanly.
pub(crate) async fn armed_shutdown_signal() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut signal = Box::pin(polis_runtime::serve::shutdown_signal());
    tokio::select! {
        biased;
        () = &mut signal => return Box::pin(std::future::ready(())),
        () = std::future::ready(()) => {}
    }
    signal
}

/// `--saga`'s parser: its values listed by `--help` and in its errors.
pub(crate) fn saga_style() -> impl clap::builder::TypedValueParser<Value = contracts::SagaStyle> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["orchestration", "choreography"])
        .try_map(|name| name.parse::<contracts::SagaStyle>())
}

/// A process name's parser: the shop's processes ([`contracts::Service::ALL`])
/// listed by `--help` and in its errors.
pub(crate) fn service_name() -> impl clap::builder::TypedValueParser<Value = contracts::Service> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(contracts::Service::ALL.map(contracts::Service::as_str))
        .try_map(|name| name.parse::<contracts::Service>().map_err(|e| format!("{e:?}")))
}

/// Parses a count that must be at least 1.
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// Parses a listen address: `IP:PORT`, or `HOST:PORT` with a host name
/// that resolves (`localhost:8080`): its first IPv4 address, or its first
/// address if it has no IPv4 one (so `localhost` means 127.0.0.1, which
/// every client tries, rather than an `::1` that some do not).
pub(crate) fn listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let resolved: Vec<std::net::SocketAddr> =
        text.to_socket_addrs().map_err(|err| format!("expected HOST:PORT or IP:PORT ({err})"))?.collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(outcome) => outcome.code(),
        Err(err) => {
            // As `main` returning the error would print it, with its causes.
            eprintln!("Error: {err:?}");
            ExitCode::from(exit::OPERATIONAL_ERROR)
        }
    }
}

/// Runs the command; an error is an operational one (see [`exit`]).
async fn run() -> anyhow::Result<Outcome> {
    // An unparsable RUST_LOG stops the command rather than being ignored.
    // Kept to the end: dropping it flushes the spans not yet exported.
    let _telemetry = polis_runtime::telemetry::init_tracing_with("warn,polis=info,shop=info")?;
    // Before any service starts: what they record from their first moment
    // is in `GET /metrics`.
    polis_runtime::metrics::prometheus();
    Ok(match Cli::parse().command {
        Command::Demo(args) => match shop_demo::run(args).await {
            Ok(report) => Outcome::checked(report.all_invariants_hold()),
            Err(err) => match err.downcast::<shop_demo::Interrupted>() {
                Ok(interrupted) => {
                    eprintln!("polis: {interrupted}");
                    Outcome::Signalled(interrupted.signal)
                }
                Err(err) => return Err(err),
            },
        },
        Command::Up(args) => {
            up::run(args).await?;
            Outcome::Success
        }
        Command::Check(args) => Outcome::checked(check::run(args).await?.all_invariants_hold()),
        Command::Serve(args) => {
            serve::run(args).await?;
            Outcome::Success
        }
        Command::StoreDemo(args) => Outcome::checked(store_demo::run(args).await?.all_invariants_hold()),
        Command::Audit(args) => audit::run(args).await?,
        Command::Dlq(command) => {
            admin::dlq(command).await?;
            Outcome::Success
        }
        Command::Sagas(args) => {
            admin::sagas(args).await?;
            Outcome::Success
        }
        Command::Events(args) => {
            admin::events(args).await?;
            Outcome::Success
        }
    })
}
