//! What `polis demo` measures as a run goes, so that a long run shows
//! whether the shop stays flat over time: throughput, latency and the
//! shop's memory per window of orders, and the disk its databases take.
//!
//! - **Throughput** of a window: its orders over the time between the
//!   acceptance of its first order and of its last (client clock).
//! - **Latency** of a window: order placed → saga decided (server clocks)
//!   over its orders not cancelled, the orders ranked by creation.
//! - **The shop's memory**: the resident set of the shop's processes, read
//!   from `/proc` — in embedded mode this process (the shop runs in it; the
//!   client's part while orders are placed is the plan and the ids placed),
//!   sampled while orders are placed, so the end-of-run checks, which hold
//!   every order at once, are not in it; in distributed mode the service
//!   processes of the data directory's `run/*.pid` files (the local
//!   PostgreSQL and NATS servers excluded).
//! - **Disk**: each database's files in the data directory (embedded), and
//!   how its pages divide among its tables (SQLite's `dbstat`, indexes
//!   counted with their table). What *stays* per order is the rest once the
//!   tables whose rows retention deletes are left out ([`RETAINED`]): a
//!   shop running for months holds those for the retention period only,
//!   while the others grow with every order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::DateTime;
use contracts::order::{OrderStatus, OrderView};
use polis_core::stats::percentile;
use serde::Serialize;

/// Orders per window, unless `--window` says otherwise.
pub(crate) const DEFAULT_WINDOW: usize = 10_000;

/// How often the shop's memory is sampled while orders are placed.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One window of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Window {
    /// Orders in the window (the last one may be short).
    pub(crate) orders: usize,
    pub(crate) orders_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The shop's resident memory when the window's last order was
    /// accepted; `None` where `/proc` cannot tell.
    pub(crate) shop_rss_mib: Option<f64>,
}

/// Whose memory is the shop's.
#[derive(Debug, Clone)]
pub(crate) enum Shop {
    /// This process (embedded mode).
    ThisProcess,
    /// The processes whose pids are in `<data dir>/run/*.pid`, but the
    /// servers' (distributed mode).
    Processes(PathBuf),
}

impl Shop {
    /// The shop's resident memory now, in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        match self {
            Self::ThisProcess => status_kib("self", "VmRSS:").map(|kib| kib * 1024),
            Self::Processes(run) => {
                let mut total = None;
                for pid in service_pids(run) {
                    if let Some(kib) = status_kib(&pid.to_string(), "VmRSS:") {
                        total = Some(total.unwrap_or(0) + kib * 1024);
                    }
                }
                total
            }
        }
    }
}

/// The pids in `run/*.pid`, but the local PostgreSQL's and NATS server's.
fn service_pids(run: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(run) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "pid"))
        .filter(|path| !matches!(path.file_stem().and_then(|s| s.to_str()), Some("postgres" | "nats-server")))
        .filter_map(|path| std::fs::read_to_string(path).ok()?.trim().parse().ok())
        .collect()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// This process's peak resident memory so far, in bytes.
pub(crate) fn own_peak_rss() -> Option<u64> {
    status_kib("self", "VmHWM:").map(|kib| kib * 1024)
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What is noted while orders are placed: the time and the shop's memory
/// at every window's end, and the shop's highest memory sampled.
#[derive(Debug)]
pub(crate) struct Recorder {
    shop: Shop,
    window: usize,
    total: usize,
    started: Instant,
    marks: Mutex<Vec<(Duration, Option<u64>)>>,
    peak: Mutex<Option<u64>>,
}

impl Recorder {
    pub(crate) fn new(shop: Shop, window: usize, total: usize) -> Self {
        Self {
            shop,
            window: window.max(1),
            total,
            started: Instant::now(),
            marks: Mutex::new(Vec::new()),
            peak: Mutex::new(None),
        }
    }

    /// The `n`-th order was accepted: a window's end is noted.
    pub(crate) fn accepted(&self, n: usize) {
        if n.is_multiple_of(self.window) || n == self.total {
            let rss = self.sample();
            if let Ok(mut marks) = self.marks.lock() {
                marks.push((self.started.elapsed(), rss));
            }
        }
    }

    /// Samples the shop's memory (keeping the highest), and returns it.
    fn sample(&self) -> Option<u64> {
        let rss = self.shop.rss();
        if let (Some(rss), Ok(mut peak)) = (rss, self.peak.lock()) {
            *peak = Some(peak.map_or(rss, |p| p.max(rss)));
        }
        rss
    }

    /// Samples the shop's memory every half second until `work` is done.
    pub(crate) async fn sampling<T>(&self, work: impl Future<Output = T>) -> T {
        let sampler = async {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                self.sample();
            }
        };
        tokio::select! {
            value = work => value,
            () = sampler => unreachable!("the sampler never ends"),
        }
    }

    /// The highest memory of the shop sampled while orders were placed.
    pub(crate) fn peak(&self) -> Option<u64> {
        self.peak.lock().ok().and_then(|peak| *peak)
    }

    /// The windows, from the marks and the decided orders.
    pub(crate) fn windows<'a>(&self, orders: impl Iterator<Item = &'a OrderView>) -> Vec<Window> {
        let marks = self.marks.lock().map(|marks| marks.clone()).unwrap_or_default();
        // Each order's creation and latency (None when cancelled), by creation.
        let mut created: Vec<(i64, Option<f64>)> = orders
            .filter_map(|o| {
                let created = DateTime::parse_from_rfc3339(&o.created_at).ok()?;
                let updated = DateTime::parse_from_rfc3339(&o.updated_at).ok()?;
                let latency = (o.status != OrderStatus::Cancelled)
                    .then(|| (updated - created).num_microseconds().map(|us| us as f64 / 1000.0))
                    .flatten();
                Some((created.timestamp_micros(), latency))
            })
            .collect();
        created.sort_by_key(|(at, _)| *at);
        let mut windows = Vec::with_capacity(marks.len());
        let mut previous = Duration::ZERO;
        for (i, (at, rss)) in marks.iter().enumerate() {
            let range = i * self.window..((i + 1) * self.window).min(self.total);
            let mut latencies: Vec<f64> =
                created.get(range.clone()).unwrap_or_default().iter().filter_map(|(_, l)| *l).collect();
            latencies.sort_by(f64::total_cmp);
            let seconds = at.saturating_sub(previous).as_secs_f64();
            previous = *at;
            windows.push(Window {
                orders: range.len(),
                orders_per_s: range.len() as f64 / seconds.max(1e-9),
                p50_ms: percentile(&latencies, 0.50).unwrap_or_default(),
                p99_ms: percentile(&latencies, 0.99).unwrap_or_default(),
                shop_rss_mib: rss.map(mib),
            });
        }
        windows
    }
}

/// Tables whose rows go after a retention period, or once consumers have
/// them: processed message ids (`polis_inbox`), records of published
/// messages (`polis_outbox_published`), saga instances (`polis_sagas`:
/// finished ones are purged, and at the end of a run every saga has
/// finished), the in-process bus's log (`bus_messages`) and the order
/// service's idempotency keys (`order_requests`, kept a day).
pub(crate) const RETAINED: [&str; 5] =
    ["polis_inbox", "polis_outbox_published", "polis_sagas", "bus_messages", "order_requests"];

/// One database's files after a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Disk {
    /// The database: a service's name, or `bus` for the in-process bus's log.
    pub(crate) database: String,
    /// Its file, write-ahead log and shared-memory index together.
    pub(crate) bytes: u64,
    pub(crate) bytes_per_order: f64,
    /// The pages of its tables not in [`RETAINED`] (free pages, which are
    /// reused, and the write-ahead log left out); `None` when the database
    /// could not be read.
    pub(crate) kept_bytes: Option<u64>,
    pub(crate) kept_bytes_per_order: Option<f64>,
    /// Its tables, largest first, each with its indexes.
    pub(crate) tables: Vec<Table>,
}

/// The pages of one table and its indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Table {
    pub(crate) table: String,
    pub(crate) bytes: u64,
    /// Whether retention deletes its rows ([`RETAINED`]).
    pub(crate) retained: bool,
}

impl Table {
    fn new(table: String, bytes: u64) -> Self {
        let retained = RETAINED.contains(&table.as_str());
        Self { table, bytes, retained }
    }
}

/// The tables of the SQLite database `path`, largest first.
fn tables(path: &Path) -> rusqlite::Result<Vec<Table>> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut statement = conn.prepare(
        "SELECT coalesce(m.tbl_name, s.name) AS owner, sum(s.pgsize) AS bytes \
         FROM dbstat AS s LEFT JOIN sqlite_schema AS m ON m.name = s.name \
         GROUP BY owner ORDER BY bytes DESC, owner",
    )?;
    let rows = statement.query_map([], |row| Ok(Table::new(row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)))?;
    rows.collect()
}

/// Every SQLite database under `data_dir` (`<name>.db` with its `-wal` and
/// `-shm` files), by name, with its tables.
pub(crate) fn embedded_disk(data_dir: &Path, orders: usize) -> Vec<Disk> {
    let mut by_database: BTreeMap<String, (u64, Option<PathBuf>)> = BTreeMap::new();
    let mut pending = vec![data_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let database = ["", "-wal", "-shm"].iter().find_map(|suffix| name.strip_suffix(&format!(".db{suffix}")));
            if let Some(database) = database {
                let entry = by_database.entry(database.to_owned()).or_default();
                entry.0 += meta.len();
                if name.ends_with(".db") {
                    entry.1 = Some(path.clone());
                }
            }
        }
    }
    let per_order = |bytes: u64| bytes as f64 / orders.max(1) as f64;
    by_database
        .into_iter()
        .map(|(database, (bytes, file))| {
            let tables = match file.as_deref().map(tables) {
                Some(Ok(tables)) => Some(tables),
                Some(Err(e)) => {
                    tracing::warn!(database, error = %e, "cannot read the database's tables");
                    None
                }
                None => None,
            };
            let kept_bytes = tables.as_ref().map(|t| t.iter().filter(|t| !t.retained).map(|t| t.bytes).sum());
            Disk {
                database,
                bytes,
                bytes_per_order: per_order(bytes),
                kept_bytes,
                kept_bytes_per_order: kept_bytes.map(per_order),
                tables: tables.unwrap_or_default(),
            }
        })
        .collect()
}

/// Each service's PostgreSQL database and JetStream stream, as entries
/// `<service>` and `<service> stream`. A stream keeps its messages for
/// its maximum age only, so none of it stays.
pub(crate) fn distributed_disk(usage: Vec<shop::distributed::ServiceDisk>, orders: usize) -> Vec<Disk> {
    let per_order = |bytes: u64| bytes as f64 / orders.max(1) as f64;
    let mut disk = Vec::new();
    for service in usage {
        if let Some(bytes) = service.database_bytes {
            let tables: Vec<Table> =
                service.tables.into_iter().map(|(table, bytes)| Table::new(table, bytes)).collect();
            // The database's size counts its catalogs too, which do not
            // grow with orders: what stays is its other tables.
            let kept: u64 = tables.iter().filter(|t| !t.retained).map(|t| t.bytes).sum();
            disk.push(Disk {
                database: service.service.as_str().to_owned(),
                bytes,
                bytes_per_order: per_order(bytes),
                kept_bytes: Some(kept),
                kept_bytes_per_order: Some(per_order(kept)),
                tables,
            });
        }
        if let Some(bytes) = service.stream_bytes {
            disk.push(Disk {
                database: format!("{} stream", service.service.as_str()),
                bytes,
                bytes_per_order: per_order(bytes),
                kept_bytes: Some(0),
                kept_bytes_per_order: Some(0.0),
                tables: Vec::new(),
            });
        }
    }
    disk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(created_ms: i64, latency_ms: i64, status: OrderStatus) -> OrderView {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339();
        OrderView {
            id: uuid::Uuid::now_v7(),
            customer_id: uuid::Uuid::now_v7(),
            status,
            reason: None,
            items: Vec::new(),
            total: 0,
            created_at: at(created_ms),
            updated_at: at(created_ms + latency_ms),
        }
    }

    #[test]
    fn windows_follow_creation_and_leave_cancelled_orders_out_of_latency() {
        let recorder = Recorder::new(Shop::ThisProcess, 2, 5);
        // Windows end at the 2nd (2 s), 4th (5 s) and 5th (6 s, the short last one) order accepted.
        recorder
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([2000, 5000, 6000].map(|ms| (Duration::from_millis(ms), None)));
        // Out of order on purpose; the 3rd created is cancelled (its latency would be the highest).
        let orders = [
            order(40, 50, OrderStatus::Approved),
            order(10, 10, OrderStatus::Approved),
            order(30, 900, OrderStatus::Cancelled),
            order(20, 30, OrderStatus::Rejected),
            order(50, 70, OrderStatus::Approved),
        ];
        let windows = recorder.windows(orders.iter());
        let summary: Vec<(usize, f64, f64)> = windows.iter().map(|w| (w.orders, w.orders_per_s, w.p99_ms)).collect();
        assert_eq!(summary, [(2, 1.0, 30.0), (2, 2.0 / 3.0, 50.0), (1, 1.0, 70.0)]);
    }

    #[test]
    fn a_window_ends_every_window_orders_and_at_the_last() {
        let recorder = Recorder::new(Shop::ThisProcess, 3, 7);
        for n in 1..=7 {
            recorder.accepted(n);
        }
        assert_eq!(recorder.marks.lock().map(|m| m.len()).unwrap_or_default(), 3);
        assert!(recorder.peak().is_some_and(|peak| peak > 0), "this process's memory is read from /proc");
    }

    #[test]
    fn databases_are_their_files_together() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
        let write = |name: &str, len: usize| {
            std::fs::write(dir.path().join(name), vec![0u8; len]).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        std::fs::create_dir(dir.path().join("order")).unwrap_or_else(|e| panic!("a directory: {e}"));
        write("bus.db", 100);
        write("bus.db-wal", 50);
        write("order/order.db", 30);
        write("order/order.db-shm", 2);
        write("run.json", 1000);
        let disk: Vec<(String, u64)> =
            embedded_disk(dir.path(), 10).into_iter().map(|d| (d.database, d.bytes)).collect();
        assert_eq!(disk, [("bus".to_owned(), 150), ("order".to_owned(), 32)]);
    }

    #[test]
    fn what_stays_leaves_out_the_tables_retention_empties() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
        let conn = rusqlite::Connection::open(dir.path().join("order.db")).unwrap_or_else(|e| panic!("open: {e}"));
        conn.execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, body TEXT);
             CREATE INDEX orders_by_body ON orders (body);
             CREATE TABLE polis_inbox (consumer TEXT, message_id BLOB, PRIMARY KEY (consumer, message_id)) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
             INSERT INTO orders (body) SELECT printf('%0500d', i) FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
             INSERT INTO polis_inbox SELECT 'c', randomblob(16) FROM n;",
        )
        .unwrap_or_else(|e| panic!("fill: {e}"));
        drop(conn);
        let [disk] = embedded_disk(dir.path(), 100).try_into().unwrap_or_else(|d| panic!("one database: {d:?}"));
        let tables: Vec<(&str, bool)> = disk.tables.iter().map(|t| (t.table.as_str(), t.retained)).collect();
        assert_eq!(tables, [("orders", false), ("polis_inbox", true), ("sqlite_schema", false)]);
        let orders = disk.tables[0].bytes;
        // 100 rows of 500 bytes, in the table and again in its index: at least 25 pages of 4 KiB.
        assert!(orders >= 25 * 4096, "{orders}");
        let kept = disk.kept_bytes.unwrap_or_default();
        assert_eq!(kept, orders + disk.tables[2].bytes);
        assert_eq!(kept + disk.tables[1].bytes, disk.tables.iter().map(|t| t.bytes).sum::<u64>());
        assert!(kept < disk.bytes, "the file also holds what retention deletes");
    }
}
