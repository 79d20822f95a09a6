//! `polis up`: the shop until ctrl-c or SIGTERM.
//!
//! - `--mode embedded` (default): every service in this process, SQLite
//!   files and the in-process bus under the data directory.
//! - `--mode distributed`: a supervisor. It starts local PostgreSQL and NATS
//!   servers under `<data-dir>/servers/` unless `POLIS_POSTGRES_URL` /
//!   `POLIS_NATS_URL` (or `--config`) name servers, then one `polis serve
//!   <service>` process per service (`--instances N` of each, sharing its
//!   work: ADR 0011) and the gateway, waits until they all answer, and
//!   serves nothing itself. A process that exits, a service or
//!   a local server, is started again after a back-off (1 s, doubling up to
//!   30 s; reset once it has run for a minute). Ctrl-c stops the processes,
//!   then the local servers.
//!
//! Either way the data directory is this process's alone while it runs, and
//! must hold the mode asked for (`shop::data_dir`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use contracts::SagaStyle;
use shop::supervisor::{Supervisor, SupervisorOptions};

use crate::Mode;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Deployment: embedded (one process) or distributed (a process per service).
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// How the create-order saga runs: orchestration (the default) or
    /// choreography. Distributed, it overrides the config file's `saga`.
    #[arg(long, value_parser = crate::saga_style())]
    saga: Option<SagaStyle>,
    /// The shop's data (created if missing; an existing one is resumed).
    #[arg(long, default_value = "polis-data")]
    data_dir: PathBuf,
    /// Where the gateway listens: IP:PORT, or HOST:PORT with a host name
    /// that resolves (`localhost:8080`).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = crate::listen_address)]
    listen: SocketAddr,
    /// Distributed mode: a TOML file with the deployment's settings, read by every process.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Distributed mode: processes per service (1 to 8). Above 1 they
    /// share each service's work, and the gateway spreads calls over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    instances: u8,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Embedded => embedded(args).await,
        Mode::Distributed => distributed(args).await,
    }
}

async fn embedded(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.config.is_none(),
        "--config is for --mode distributed; the embedded shop has no settings file"
    );
    anyhow::ensure!(args.instances == 1, "--instances is for --mode distributed; the embedded shop is one process");
    let saga = args.saga.unwrap_or_default();
    let config = shop::ShopConfig { saga, ..shop::ShopConfig::default() };
    let shop = shop::Embedded::start(&args.data_dir, &config).await?;
    let http = polis_runtime::HttpOptions::default().with_listen(args.listen);
    let router = polis_runtime::with_standard_stack(shop.gateway(), &http);
    let listener = polis_runtime::serve::bind(args.listen).await.context("binding the gateway")?;
    let addr = listener.local_addr().context("reading the gateway's address")?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), saga = saga.as_str(), "the shop is up");
    eprintln!("polis: the shop is up at http://{addr}/api (data in {}); ctrl-c stops it", args.data_dir.display());
    polis_runtime::serve::serve(listener, router, &http, crate::armed_shutdown_signal().await).await?;
    Ok(())
}

/// The supervisor's options for this binary and these arguments.
pub(crate) fn supervisor_options(
    data_dir: PathBuf,
    saga: Option<SagaStyle>,
    listen: SocketAddr,
    config: Option<PathBuf>,
    instances: u8,
) -> anyhow::Result<SupervisorOptions> {
    let program = std::env::current_exe().context("finding the polis binary to start the services with")?;
    let mut options = SupervisorOptions::new(program, data_dir).with_gateway_listen(listen).with_instances(instances);
    if let Some(saga) = saga {
        options = options.with_saga(saga);
    }
    if let Some(file) = config {
        options = options.with_config_file(file);
    }
    Ok(options)
}

async fn distributed(args: UpArgs) -> anyhow::Result<()> {
    let options = supervisor_options(args.data_dir.clone(), args.saga, args.listen, args.config, args.instances)?;
    let mut supervisor = Supervisor::start(options).await.context("starting the distributed shop")?;
    tracing::info!(gateway = %supervisor.gateway_url(), data_dir = %args.data_dir.display(), "the shop is up");
    eprintln!(
        "polis: the shop is up at {}/api (distributed: {} per service; data and logs in {}); ctrl-c stops it",
        supervisor.gateway_url(),
        if args.instances == 1 { "a process".to_owned() } else { format!("{} processes", args.instances) },
        args.data_dir.display()
    );

    supervisor.supervise(crate::armed_shutdown_signal().await, &|line| eprintln!("polis: {line}")).await;
    eprintln!("polis: stopping the shop");
    supervisor.stop().await;
    Ok(())
}
