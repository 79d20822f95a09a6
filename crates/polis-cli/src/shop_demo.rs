//! `polis demo`: the reference shop under load, then its invariants.
//!
//! 1. start the shop: embedded (one SQLite file per service and the
//!    in-process bus under the data directory, all in this process) or
//!    distributed (a `polis serve` process per service, PostgreSQL and NATS,
//!    as `polis up --mode distributed` runs it);
//! 2. seed customers, products and stock through the gateway so that every
//!    business rejection reason occurs (see `shop::workload`);
//! 3. drive the orders concurrently through the gateway, with a progress bar;
//! 4. cancel some of the approved orders;
//! 5. wait until every order is terminal, then check the invariants,
//!    waiting (bounded) for compensations still in flight to land — the
//!    system is eventually consistent, the invariants must converge;
//! 6. print the report and stop the shop.
//!
//! Between seeding and the first order, the run is recorded in the data
//! directory (`shop::workload::RunRecord`), so that `polis check` can
//! finish and check a run whose process died.
//!
//! Without `--data-dir` the data lives in a temporary directory that is
//! removed when the demo ends, however it ends short of SIGKILL: after the
//! report, on an error, and on ctrl-c or SIGTERM (the shop is stopped
//! first; the exit status is then 130 or 143). With `--data-dir` the data is kept,
//! and an interrupted run says how to finish it.
//!
//! Both modes run the same workload and checks over the same APIs: in
//! process for the embedded shop, over HTTP for the distributed one.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::DateTime;
use clap::Args;
use contracts::order::{OrderStatus, OrderView};
use contracts::{SagaStyle, Service};
use indicatif::{ProgressBar, ProgressStyle};
use polis_core::stats::percentile;
use serde::Serialize;
use shop::client::Endpoint;
use shop::supervisor::Supervisor;
use shop::workload::{self, Apis, Check, Deployment, Pacing, RunRecord, Scope};

use crate::Mode;
use crate::measure::{self, Disk, Recorder, Window};

/// How long the invariants may take to converge once every order is terminal.
pub(crate) const CONVERGENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Orders to place (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = crate::at_least_one)]
    orders: usize,
    /// Orders in flight at once (at least 1).
    #[arg(long, default_value_t = 32, value_parser = crate::at_least_one)]
    concurrency: usize,
    /// Deployment: embedded (one process, SQLite files, in-process bus) or
    /// distributed (a process per service, PostgreSQL and NATS JetStream).
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// How the create-order saga runs.
    #[arg(long, default_value = "orchestration", value_parser = crate::saga_style())]
    saga: SagaStyle,
    /// Random seed, for a repeatable workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the shop's data here (default: a temporary directory, removed
    /// when the demo ends).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Distributed mode: a TOML file with the deployment's settings, read by every process.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Distributed mode: processes per service (1 to 8), sharing its work.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    instances: u8,
    /// Embedded mode: run without the read side (the order-history service
    /// and its invariant), to measure what it costs.
    #[arg(long)]
    without_read_side: bool,
    /// Also serve the shop's gateway here while the demo runs (IP:PORT, or
    /// HOST:PORT), to watch it live on `/dashboard` or scrape `/metrics`.
    #[arg(long, value_parser = crate::listen_address)]
    listen: Option<SocketAddr>,
    /// Orders per window of the report's throughput, latency and memory
    /// figures (at least 1).
    #[arg(long, default_value_t = measure::DEFAULT_WINDOW, value_parser = crate::at_least_one)]
    window: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    mode: Mode,
    saga: SagaStyle,
    orders: usize,
    concurrency: usize,
    #[serde(flatten)]
    tally: Tally,
    cancel_requests: usize,
    seconds: f64,
    orders_per_second: f64,
    /// Order placed → saga decided (server clocks), over orders not cancelled.
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// An event's commit → the order-history view showing it, over the
    /// events the view applied last (its own measure, `GET /projections`).
    view_lag_ms_p50: Option<f64>,
    view_lag_ms_p99: Option<f64>,
    /// Throughput, latency and the shop's memory per window of `--window`
    /// orders, in the order they were placed (`measure`).
    windows: Vec<Window>,
    /// The shop's highest resident memory sampled while orders were placed
    /// (the checks after them not included).
    shop_rss_peak_mib: Option<f64>,
    /// This process's peak resident memory: in embedded mode the shop's,
    /// the client's and the end-of-run checks' together.
    process_rss_peak_mib: Option<f64>,
    /// Each database's files after the run (embedded mode).
    disk: Vec<Disk>,
    invariants: Vec<Check>,
    /// Where the data is kept; `None` for a temporary directory, which is
    /// removed when the demo ends.
    data_dir: Option<String>,
}

impl Report {
    pub(crate) fn all_invariants_hold(&self) -> bool {
        self.invariants.iter().all(|c| c.holds)
    }
}

/// The shop the demo runs against, kept alive until the report is printed.
pub(crate) enum Running {
    /// The shop, and its gateway's server when it is served on a port.
    Embedded(Box<shop::Embedded>, Option<polis_runtime::serve::RunningServer>),
    Distributed(Box<Supervisor>),
}

/// The demo was stopped by ctrl-c or SIGTERM; the shop is stopped and a
/// temporary data directory removed. `main` exits with 128 + the signal's
/// number (130 for ctrl-c, 143 for SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct Interrupted {
    /// What happened to the data.
    pub(crate) what: String,
    /// The signal's number.
    pub(crate) signal: i32,
}

/// Resolves with the number of the first SIGINT or SIGTERM.
async fn interruption() -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without handlers the signals keep their default action: the
        // process ends, as before; nothing to wait for here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => libc::SIGINT,
        _ = terminate.recv() => libc::SIGTERM,
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Report> {
    let (data_dir, temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            // Searchable by others (not listable): under root, the local
            // PostgreSQL of the distributed mode runs as `postgres` and must
            // reach its directory below this one.
            let temp = tempfile::Builder::new()
                .prefix("polis-demo-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .tempdir()
                .context("creating a temporary data directory")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    // The run's future owns the shop: dropping it on a signal stops the shop
    // (the supervisor's drop stops its processes) before the directory goes.
    let outcome = tokio::select! {
        report = demo(&args, &data_dir, temp.is_none()) => report,
        signal = interruption() => {
            let what = match &temp {
                Some(_) => format!("interrupted; removed the temporary data directory {}", data_dir.display()),
                None => format!(
                    "interrupted; the data is kept in {}; `polis check --data-dir {}` finishes the run",
                    data_dir.display(),
                    data_dir.display()
                ),
            };
            Err(Interrupted { what, signal }.into())
        }
    };
    if let Some(temp) = temp {
        remove_temporary(temp).await;
    }
    outcome
}

/// Removes the demo's temporary data directory. The stopped shop's last
/// writes may still be landing (its tasks are told to stop, not awaited), so
/// a failed removal is tried once more after a moment; a second failure is
/// reported, naming the directory, without hiding how the demo ended.
async fn remove_temporary(temp: tempfile::TempDir) {
    let path = temp.path().to_path_buf();
    if temp.close().is_ok() {
        return;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Err(err) = std::fs::remove_dir_all(&path) {
        eprintln!("polis: could not remove the temporary data directory {}: {err}", path.display());
    }
}

async fn demo(args: &DemoArgs, data_dir: &Path, keep: bool) -> anyhow::Result<Report> {
    let read_side = !args.without_read_side;
    let shop = Start {
        mode: args.mode,
        saga: args.saga,
        config: args.config.clone(),
        instances: args.instances,
        quiet: args.json,
        read_side,
    };
    let (apis, mut running) = start(&shop, data_dir, args.listen).await?;
    let mut report = running.supervised(args.json, workload_run(args, &apis, data_dir, keep)).await?;
    if let Running::Distributed(supervisor) = &running {
        let config = supervisor.config().context("reading the shop's configuration")?;
        let usage = shop::distributed::disk_usage(&config).await.context("measuring the servers' disk")?;
        report.disk = measure::distributed_disk(usage, args.orders);
    }
    print(&report, args.json)?;
    running.stop().await;
    Ok(report)
}

/// Seeds, records the run, places and decides the orders, cancels some,
/// and checks the invariants: the demo's report.
async fn workload_run(args: &DemoArgs, apis: &Apis, data_dir: &Path, keep: bool) -> anyhow::Result<Report> {
    let data_dir = data_dir.to_path_buf();
    let tag = workload::run_tag();
    let mut rng = workload::rng(args.seed);
    let seeded = workload::seed(apis, &tag, args.orders, &mut rng).await?;
    let record =
        RunRecord { tag, deployment: args.mode.into(), saga: args.saga, orders: args.orders, seeded: seeded.clone() };
    // `polis check` needs the record if this process dies mid-run; saving
    // it syncs the file, which blocks, so off the async threads.
    let dir = data_dir.clone();
    tokio::task::spawn_blocking(move || record.save(&dir)).await.context("recording the run")??;
    let plan = workload::plan(&seeded, args.orders, &mut rng);

    let started = Instant::now();
    let bar = progress(plan.len(), "placing", args.json);
    let shop = match args.mode {
        Mode::Embedded => measure::Shop::ThisProcess,
        Mode::Distributed => measure::Shop::Processes(data_dir.join("run")),
    };
    let recorder = Recorder::new(shop, args.window, plan.len());
    let accepted = |n: usize| {
        bar.set_position(n as u64);
        recorder.accepted(n);
    };
    let placing = workload::place_orders(apis, &plan, args.concurrency, Pacing::Decided, &accepted);
    let placed = recorder.sampling(placing).await?;
    bar.finish();
    let patience = workload::patience(placed.len());
    let bar = progress(placed.len(), "deciding", args.json);
    let scope = Scope::Placed(&placed);
    let orders = workload::wait_terminal(apis, scope, patience, &|n| bar.set_position(n as u64)).await?;
    bar.finish();
    let cancel_requests = workload::cancel_some(apis, &placed, &orders).await?;
    let orders = workload::wait_terminal(apis, scope, patience, &|_| {}).await?;
    let seconds = started.elapsed().as_secs_f64();

    let mut latencies: Vec<f64> = orders
        .values()
        .filter(|o| o.status != OrderStatus::Cancelled)
        .filter_map(|o| {
            let created = DateTime::parse_from_rfc3339(&o.created_at).ok()?;
            let updated = DateTime::parse_from_rfc3339(&o.updated_at).ok()?;
            Some((updated - created).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let tally = Tally::of(orders.values());
    let windows = recorder.windows(orders.values());
    let invariants = workload::check_until_converged(apis, &seeded, scope, CONVERGENCE).await?;
    let view_lag = workload::view_lag(apis).await?;
    // Reading every page of every database blocks: off the async threads.
    let disk = match args.mode {
        Mode::Embedded => {
            let (dir, orders) = (data_dir.clone(), args.orders);
            tokio::task::spawn_blocking(move || measure::embedded_disk(&dir, orders))
                .await
                .context("measuring the disk")?
        }
        Mode::Distributed => Vec::new(),
    };
    let report = Report {
        mode: args.mode,
        saga: args.saga,
        orders: args.orders,
        concurrency: args.concurrency,
        tally,
        cancel_requests,
        seconds,
        orders_per_second: args.orders as f64 / seconds.max(1e-9),
        latency_ms_p50: percentile(&latencies, 0.50).unwrap_or_default(),
        latency_ms_p99: percentile(&latencies, 0.99).unwrap_or_default(),
        view_lag_ms_p50: view_lag.map(|(p50, _)| p50),
        view_lag_ms_p99: view_lag.map(|(_, p99)| p99),
        windows,
        shop_rss_peak_mib: recorder.peak().map(measure::mib),
        process_rss_peak_mib: measure::own_peak_rss().map(measure::mib),
        disk,
        invariants,
        data_dir: keep.then(|| data_dir.display().to_string()),
    };
    Ok(report)
}

/// Orders counted by final status and by rejection reason.
#[derive(Debug, Serialize)]
pub(crate) struct Tally {
    by_status: BTreeMap<String, usize>,
    by_reason: BTreeMap<String, usize>,
}

impl Tally {
    pub(crate) fn of<'a>(orders: impl Iterator<Item = &'a OrderView>) -> Self {
        let mut tally = Self { by_status: BTreeMap::new(), by_reason: BTreeMap::new() };
        for order in orders {
            *tally.by_status.entry(order.status.as_str().to_owned()).or_insert(0) += 1;
            if let Some(reason) = order.reason {
                *tally.by_reason.entry(reason.as_str().to_owned()).or_insert(0) += 1;
            }
        }
        tally
    }

    pub(crate) fn print(&self) {
        println!("  final status");
        for (status, n) in &self.by_status {
            println!("    {status:<16} {n:>7}");
        }
        println!("  rejection reasons");
        for (reason, n) in &self.by_reason {
            println!("    {reason:<24} {n:>7}");
        }
    }
}

/// One line per invariant, as the human-readable reports show them.
pub(crate) fn print_invariants(checks: &[Check]) {
    for check in checks {
        println!("    [{}] {} — {}", if check.holds { "ok" } else { "FAIL" }, check.name, check.detail);
    }
}

impl Running {
    /// Runs `work` while the distributed shop's supervisor restarts any of
    /// its processes that dies (saying so on stderr unless `quiet`); the
    /// embedded shop runs it as it is.
    pub(crate) async fn supervised<T>(&mut self, quiet: bool, work: impl Future<Output = T>) -> T {
        match self {
            Self::Embedded(..) => work.await,
            Self::Distributed(supervisor) => {
                let (done, finished) = tokio::sync::oneshot::channel::<()>();
                let until = async {
                    let _ = finished.await;
                };
                let report = |line: &str| {
                    if !quiet {
                        eprintln!("polis: {line}");
                    }
                };
                let work = async {
                    let value = work.await;
                    let _ = done.send(());
                    value
                };
                let (value, ()) = tokio::join!(work, supervisor.supervise(until, &report));
                value
            }
        }
    }

    pub(crate) async fn stop(self) {
        match self {
            Self::Embedded(shop, server) => {
                if let Some(server) = server {
                    let _ = server.shutdown().await;
                }
                drop(shop);
            }
            Self::Distributed(supervisor) => supervisor.stop().await,
        }
    }
}

impl From<Mode> for Deployment {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Embedded => Self::Embedded,
            Mode::Distributed => Self::Distributed,
        }
    }
}

impl From<Deployment> for Mode {
    fn from(deployment: Deployment) -> Self {
        match deployment {
            Deployment::Embedded => Self::Embedded,
            Deployment::Distributed => Self::Distributed,
        }
    }
}

/// How to start the shop.
pub(crate) struct Start {
    pub(crate) mode: Mode,
    pub(crate) saga: SagaStyle,
    /// Distributed mode's configuration file.
    pub(crate) config: Option<PathBuf>,
    /// Distributed mode's processes per service.
    pub(crate) instances: u8,
    /// Say nothing on stderr.
    pub(crate) quiet: bool,
    pub(crate) read_side: bool,
}

/// Starts the shop on `data_dir` and returns its APIs; with `listen`, its
/// gateway is also served there (the distributed shop's gateway listens
/// there instead of on a free port).
pub(crate) async fn start(how: &Start, data_dir: &Path, listen: Option<SocketAddr>) -> anyhow::Result<(Apis, Running)> {
    let say = |line: String| {
        if !how.quiet {
            eprintln!("polis: {line}");
        }
    };
    match how.mode {
        Mode::Embedded => {
            anyhow::ensure!(how.config.is_none(), "--config is for --mode distributed");
            anyhow::ensure!(how.instances == 1, "--instances is for --mode distributed");
            let config = shop::ShopConfig { saga: how.saga, read_side: how.read_side, ..shop::ShopConfig::default() };
            let shop = shop::Embedded::start(data_dir, &config).await?;
            let http = polis_runtime::HttpOptions::default();
            let server = match listen {
                Some(addr) => {
                    let listener = polis_runtime::serve::bind(addr).await.context("binding the gateway")?;
                    let app = polis_runtime::with_standard_stack(shop.gateway(), &http);
                    let server = polis_runtime::serve::spawn(listener, app, &http)?;
                    say(format!("the gateway is served at {}; watch it at {}/dashboard", server.url(), server.url()));
                    Some(server)
                }
                None => None,
            };
            let apis = Apis::new(|service| {
                Ok(match service {
                    Service::Gateway => Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http)),
                    service => Endpoint::local(shop.router(service)),
                })
            })?;
            let apis = if how.read_side { apis } else { apis.without_view() };
            Ok((apis, Running::Embedded(Box::new(shop), server)))
        }
        Mode::Distributed => {
            anyhow::ensure!(how.read_side, "--without-read-side is for the embedded mode");
            let gateway = listen.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
            let options = crate::up::supervisor_options(
                data_dir.to_path_buf(),
                Some(how.saga),
                gateway,
                how.config.clone(),
                how.instances,
            )?;
            say("starting the distributed shop (a process per service)…".to_owned());
            let supervisor = Supervisor::start(options).await.context("starting the distributed shop")?;
            if listen.is_some() {
                let url = supervisor.gateway_url();
                say(format!("the gateway is served at {url}; watch it at {url}/dashboard"));
            }
            Ok((supervisor.apis()?, Running::Distributed(Box::new(supervisor))))
        }
    }
}

pub(crate) fn progress(len: usize, message: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!();
    println!(
        "polis demo — {} orders, {} concurrent, {:?} mode, {} saga",
        report.orders,
        report.concurrency,
        report.mode,
        report.saga.as_str()
    );
    match &report.data_dir {
        Some(dir) => println!("  data: {dir}"),
        None => println!("  data: a temporary directory, removed at exit (--data-dir keeps it)"),
    }
    println!();
    report.tally.print();
    println!("  cancellations requested: {}", report.cancel_requests);
    println!();
    println!("  {:.1} orders/s ({:.2} s)", report.orders_per_second, report.seconds);
    println!("  order → decision latency: p50 {:.1} ms, p99 {:.1} ms", report.latency_ms_p50, report.latency_ms_p99);
    if let (Some(p50), Some(p99)) = (report.view_lag_ms_p50, report.view_lag_ms_p99) {
        println!("  event commit → order-history view: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    print_windows(report);
    println!();
    println!("  invariants");
    print_invariants(&report.invariants);
    Ok(())
}

/// The windows, the memory and the disk, when there is more than one
/// window (a short run's one window says what the totals say).
fn print_windows(report: &Report) {
    let mib = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |v| format!("{v:.0} MiB"));
    println!(
        "  shop memory: peak {} while placing; this process's peak {}",
        mib(report.shop_rss_peak_mib),
        mib(report.process_rss_peak_mib)
    );
    if report.windows.len() > 1 {
        println!("  per window           orders  orders/s    p50 ms    p99 ms   shop RSS");
        let mut first = 0;
        for window in &report.windows {
            println!(
                "    {:>15}  {:>7}  {:>8.1}  {:>8.1}  {:>8.1}  {:>9}",
                format!("{}-{}", first + 1, first + window.orders),
                window.orders,
                window.orders_per_s,
                window.p50_ms,
                window.p99_ms,
                mib(window.shop_rss_mib)
            );
            first += window.orders;
        }
    }
    if !report.disk.is_empty() {
        let total: u64 = report.disk.iter().map(|d| d.bytes).sum();
        println!(
            "  on disk: {:.1} MiB, {:.0} bytes per order",
            measure::mib(total),
            total as f64 / report.orders.max(1) as f64
        );
        let kept: Option<u64> = report.disk.iter().map(|d| d.kept_bytes).sum();
        if let Some(kept) = kept {
            println!(
                "  of which stays once retention has run: {:.0} bytes per order (inbox, published-message records, \
                 finished sagas, idempotency keys and the bus left out)",
                kept as f64 / report.orders.max(1) as f64
            );
        }
        println!("    database               files    B/order    stays B/order   largest tables");
        for disk in &report.disk {
            let largest: Vec<String> = disk
                .tables
                .iter()
                .take(3)
                .map(|t| format!("{} {:.0}", t.table, t.bytes as f64 / report.orders.max(1) as f64))
                .collect();
            println!(
                "    {:<16} {:>9.1} MiB  {:>8.0}  {:>14}   {}",
                disk.database,
                measure::mib(disk.bytes),
                disk.bytes_per_order,
                disk.kept_bytes_per_order.map_or_else(|| "?".to_owned(), |b| format!("{b:.0}")),
                largest.join(", ")
            );
        }
    }
}
