//! `polis serve <service>`: one process of the distributed shop, until
//! ctrl-c or SIGTERM.
//!
//! The configuration is the deployment's (see `shop::distributed`):
//! defaults, then `--config FILE`, then `POLIS_POSTGRES_URL`,
//! `POLIS_NATS_URL` and `POLIS__…` variables. `polis up --mode distributed`
//! starts one of these per service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shop::distributed::{DistributedConfig, Service};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The process to run.
    #[arg(value_parser = crate::service_name())]
    service: Service,
    /// A TOML file with the deployment's settings (the environment overrides it).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let service = args.service;
    let config = DistributedConfig::load(args.config.as_deref()).context("loading the configuration")?;
    shop::distributed::serve(service, &config, crate::armed_shutdown_signal().await)
        .await
        .with_context(|| format!("serving {service}"))
}
