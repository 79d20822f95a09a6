//! `polis`: the command-line entry point.
//!
//! Today it runs `polis demo`, an end-to-end scenario of the event store
//! (aggregates under concurrent commands, a catch-up projection, invariant
//! checks). The reference shop replaces the scenario once it exists.

mod demo;
mod stock;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "polis", version, about = "Data management for microservices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive reservations concurrently through event-sourced stock items, then check every invariant.
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,polis=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo(args) => {
            let report = demo::run(args).await?;
            if !report.all_invariants_hold() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
