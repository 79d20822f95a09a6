//! `polis up`: the shop, embedded, until ctrl-c or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use contracts::SagaStyle;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// How the create-order saga runs.
    #[arg(long, default_value = "orchestration")]
    saga: SagaStyle,
    /// The shop's data (created if missing; an existing one is resumed).
    #[arg(long, default_value = "polis-data")]
    data_dir: PathBuf,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = shop::ShopConfig { saga: args.saga, ..shop::ShopConfig::default() };
    let shop = shop::Embedded::start(&args.data_dir, &config).await?;
    let http = polis_runtime::HttpOptions::default().with_listen(args.listen);
    let router = polis_runtime::with_standard_stack(shop.gateway(), &http);
    let listener = polis_runtime::serve::bind(args.listen).await.context("binding the gateway")?;
    let addr = listener.local_addr().context("reading the gateway's address")?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), saga = args.saga.as_str(), "the shop is up");
    eprintln!("polis: the shop is up at http://{addr}/api (data in {}); ctrl-c stops it", args.data_dir.display());
    polis_runtime::serve::serve(listener, router, polis_runtime::serve::shutdown_signal()).await?;
    Ok(())
}
