//! The test projection both suites run (`contract.rs`, `kill.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use polis_core::{Generation, Projection, RecordedEvent, StoreError};
use polis_store::args;
use polis_store::sql::Sql;

/// Counts each stream's events into `tally`, `weight` per event. It refuses
/// an event out of its stream's order, so a duplicate or a skip stalls it
/// (and the test fails) instead of going unnoticed.
pub(crate) struct Tally {
    version: u32,
    weight: i64,
    /// Fails the next apply once when set (a transient failure).
    pub(crate) fail_once: Arc<AtomicBool>,
    /// Applications, committed or not.
    pub(crate) calls: Arc<AtomicU64>,
    /// Slows each apply down, to catch a build half-way.
    pub(crate) delay: Duration,
}

impl Tally {
    pub(crate) fn new(version: u32, weight: i64) -> Self {
        Self { version, weight, fail_once: Arc::default(), calls: Arc::default(), delay: Duration::ZERO }
    }
}

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for Tally {
    fn name(&self) -> &str {
        "tally"
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn tables(&self) -> &[&'static str] {
        &["tally"]
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL, total BIGINT NOT NULL)",
            generation.table("tally")
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == "counted"
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_once.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend("injected failure"));
        }
        let table = generation.table("tally");
        let version = i64::try_from(event.stream_version).unwrap();
        let changed = if version == 1 {
            tx.execute(
                &format!("INSERT INTO {table} (stream_id, events, total) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING"),
                args![event.stream_id.as_str(), self.weight],
            )
            .await?
        } else {
            tx.execute(
                &format!(
                    "UPDATE {table} SET events = events + 1, total = total + $1 WHERE stream_id = $2 AND events = $3"
                ),
                args![self.weight, event.stream_id.as_str(), version - 1],
            )
            .await?
        };
        if changed != 1 {
            return Err(StoreError::backend(format!(
                "event {} of {} out of order or applied twice",
                event.stream_version, event.stream_id
            )));
        }
        Ok(())
    }
}
