//! `polis check`: finish and check the demo run recorded in a data
//! directory, typically one whose `polis demo` process died mid-run.
//!
//! 1. read the run's record (`shop::workload::RunRecord`: deployment, saga
//!    style, seeded customers and stock), written by the demo before its
//!    first order;
//! 2. start the shop on the data directory as `polis up` would, so that it
//!    resumes: unpublished outbox messages, unacknowledged deliveries,
//!    sagas and their deadlines carry the interrupted orders on;
//! 3. wait until every order of the run's customers is terminal — all of
//!    them, not only those a client saw accepted: orders in flight when the
//!    demo died exist, and must be decided too;
//! 4. check the demo's invariants over those orders (waiting, bounded, for
//!    compensations to converge), print the report and stop the shop.
//!
//! If an invariant does not hold, the command exits with status 3, not the
//! 1 of an operational error (`crate::exit`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use contracts::SagaStyle;
use serde::Serialize;
use shop::workload::{self, Check, RunRecord, Scope};

use crate::Mode;
use crate::shop_demo::{self, CONVERGENCE, Tally};

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The data directory of the `polis demo` run to check.
    #[arg(long)]
    data_dir: PathBuf,
    /// Distributed runs: the TOML file with the deployment's settings, as given to the demo.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct CheckReport {
    mode: Mode,
    saga: SagaStyle,
    /// The run's tag (its skus and customers' emails carry it).
    tag: String,
    /// Orders the run meant to place.
    planned: usize,
    /// Orders of the run's customers that the order service holds.
    orders: usize,
    #[serde(flatten)]
    tally: Tally,
    /// Seconds from the shop's start to the checks' verdict.
    seconds: f64,
    invariants: Vec<Check>,
    data_dir: String,
}

impl CheckReport {
    pub(crate) fn all_invariants_hold(&self) -> bool {
        self.invariants.iter().all(|c| c.holds)
    }
}

pub(crate) async fn run(args: CheckArgs) -> anyhow::Result<CheckReport> {
    let record = RunRecord::load(&args.data_dir)?;
    let mode = Mode::from(record.deployment);
    let started = Instant::now();
    if !args.json {
        eprintln!(
            "polis: resuming the {} shop in {} to finish run {}…",
            mode.as_str(),
            args.data_dir.display(),
            record.tag
        );
    }
    // One process per service: a demo's extra instances only shared its work.
    let how = shop_demo::Start {
        mode,
        saga: record.saga,
        config: args.config,
        instances: 1,
        quiet: args.json,
        read_side: true,
    };
    let (apis, mut running) = shop_demo::start(&how, &args.data_dir, None).await?;
    let scope = Scope::Run(&record.seeded);
    let checked = running.supervised(args.json, async {
        let orders = workload::wait_terminal(&apis, scope, workload::patience(record.orders), &|_| {}).await?;
        let invariants = workload::check_until_converged(&apis, &record.seeded, scope, CONVERGENCE).await?;
        anyhow::Ok((orders, invariants))
    });
    let (orders, invariants) = checked.await?;
    let report = CheckReport {
        mode,
        saga: record.saga,
        tag: record.tag,
        planned: record.orders,
        orders: orders.len(),
        tally: Tally::of(orders.values()),
        seconds: started.elapsed().as_secs_f64(),
        invariants,
        data_dir: args.data_dir.display().to_string(),
    };
    print(&report, args.json)?;
    running.stop().await;
    Ok(report)
}

fn print(report: &CheckReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!();
    println!(
        "polis check — run {}, {} of {} orders placed, {} mode, {} saga",
        report.tag,
        report.orders,
        report.planned,
        report.mode.as_str(),
        report.saga.as_str()
    );
    println!("  data: {}", report.data_dir);
    println!();
    report.tally.print();
    println!();
    println!("  invariants ({:.2} s)", report.seconds);
    shop_demo::print_invariants(&report.invariants);
    Ok(())
}
