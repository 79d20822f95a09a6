//! The host a run happened on, and the process's resident memory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, SqliteConnection};

/// The markdown block printed at the top of every run.
pub(crate) async fn header(postgres_version: Option<&str>, dir: &Path) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = field(&meminfo, "MemTotal").and_then(|v| kib(&v)).map_or_else(|| "?".into(), gib);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out = String::from("# polis-bench\n\n");
    let _ = writeln!(out, "- command: `cargo run --release -p polis-bench -- {}`", args.join(" "));
    if let Some(rev) = git_revision() {
        let _ = writeln!(out, "- revision: {rev}");
    }
    let _ = writeln!(out, "- date: {}", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    let _ = writeln!(out, "- machine: {cores} × {model}, {ram} RAM, Linux {}", kernel.trim());
    let _ = writeln!(out, "- disk: a 4 KiB write + fdatasync in {} takes {}", dir.display(), fsync_latency(dir).await);
    if let Some(version) = postgres_version {
        let _ = writeln!(out, "- {version}");
    }
    if let Some(version) = sqlite_version().await {
        let _ = writeln!(out, "- SQLite {version} (bundled with sqlx)");
    }
    out
}

const FSYNC_SAMPLES: usize = 200;

/// How long a small durable write takes in `dir` right now, the floor under
/// every commit: "75 µs (p50), 1203 µs (p99)". This virtual disk's figure
/// moves by orders of magnitude over minutes, so scenarios report it too.
pub(crate) async fn fsync_latency(dir: &Path) -> String {
    let dir = dir.to_owned();
    match tokio::task::spawn_blocking(move || fsync_probe(&dir)).await {
        Ok(Ok((p50, p99))) => {
            format!("{:.0} µs (p50), {:.0} µs (p99)", p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6)
        }
        Ok(Err(e)) => format!("? (probe failed: {e})"),
        Err(e) => format!("? (probe failed: {e})"),
    }
}

fn fsync_probe(dir: &Path) -> std::io::Result<(Duration, Duration)> {
    let mut file = tempfile::tempfile_in(dir)?;
    let block = [0x5a_u8; 4096];
    let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    Ok((samples[FSYNC_SAMPLES / 2], samples[FSYNC_SAMPLES * 99 / 100]))
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

/// "24000000 kB" -> bytes.
fn kib(value: &str) -> Option<u64> {
    Some(value.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

fn git_revision() -> Option<String> {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let rev = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev} (with uncommitted changes)") } else { rev })
}

async fn sqlite_version() -> Option<String> {
    let mut conn = SqliteConnection::connect("sqlite::memory:").await.ok()?;
    let version = sqlx::query_scalar("SELECT sqlite_version()").fetch_one(&mut conn).await.ok();
    let _ = conn.close().await;
    version
}

/// CPU time (user + system) of process `pid` ("self" for this one) and of
/// its children that have exited and been waited for.
pub(crate) fn cpu_times(pid: &str) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let tick = Duration::from_secs(1) / clock_ticks_per_second();
    let own = tick * u32::try_from(ticks(11)? + ticks(12)?).ok()?;
    let children = tick * u32::try_from(ticks(13)? + ticks(14)?).ok()?;
    Some((own, children))
}

/// The parent of process `pid`.
pub(crate) fn parent_pid(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_second() -> u32 {
    static TICKS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// This process's cumulative CPU time and writes (`/proc/self/io`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessCounters {
    cpu: Duration,
    /// Bytes sent to the storage layer (page cache write-back or direct).
    write_bytes: u64,
    /// write-like system calls.
    write_calls: u64,
}

impl ProcessCounters {
    pub(crate) fn read() -> Self {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let number = |name: &str| field(&io, name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            cpu: cpu_times("self").map_or(Duration::ZERO, |(own, _)| own),
            write_bytes: number("write_bytes"),
            write_calls: number("syscw"),
        }
    }

    /// CPU time used since `before`.
    pub(crate) fn cpu_since(&self, before: &Self) -> Duration {
        self.cpu.saturating_sub(before.cpu)
    }

    /// What happened since `before`, while `events` events were written.
    pub(crate) fn since(&self, before: &Self, events: u64) -> ProcessCosts {
        ProcessCosts {
            cpu: self.cpu.saturating_sub(before.cpu),
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            write_calls: self.write_calls.saturating_sub(before.write_calls),
            events,
        }
    }
}

/// What writing some number of events cost this process, summed over runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessCosts {
    cpu: Duration,
    write_bytes: u64,
    write_calls: u64,
    events: u64,
}

/// The header of a table of [`ProcessCosts::per_event`] cells.
pub(crate) const PROCESS_COSTS_HEADER: [&str; 3] = ["CPU/event", "bytes written/event", "write calls/event"];

impl ProcessCosts {
    pub(crate) fn add(&mut self, other: ProcessCosts) {
        self.cpu += other.cpu;
        self.write_bytes += other.write_bytes;
        self.write_calls += other.write_calls;
        self.events += other.events;
    }

    /// Per event, as table cells in the order of [`PROCESS_COSTS_HEADER`].
    pub(crate) fn per_event(&self) -> [String; 3] {
        let events = self.events.max(1) as f64;
        [
            format!("{:.0} µs", self.cpu.as_secs_f64() * 1e6 / events),
            format!("{:.0} B", self.write_bytes as f64 / events),
            format!("{:.1}", self.write_calls as f64 / events),
        ]
    }
}

/// The process's resident set size now.
pub(crate) fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    field(&status, "VmRSS").and_then(|v| kib(&v)).unwrap_or(0)
}

/// Samples the resident set size every few milliseconds on a plain thread,
/// keeping the peak since the last [`RssSampler::take_peak`]. (VmHWM cannot
/// be reset, so phases after the first need their own peak.)
#[derive(Debug)]
pub(crate) struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub(crate) fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(rss()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self { peak, stop, thread: Some(thread) }
    }

    /// The peak since the previous call (or the start); restarts from now.
    pub(crate) fn take_peak(&self) -> u64 {
        let now = rss();
        self.peak.swap(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
