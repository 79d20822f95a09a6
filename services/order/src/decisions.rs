//! Waiting for an order's decision: `GET /orders/{id}?wait_ms=N` answers as
//! soon as the order is decided (APPROVED, REJECTED or CANCELLED), or after
//! `N` ms with whatever it is then, so a client learns the outcome without
//! polling.
//!
//! Every change of an order's status is written together with the events it
//! sends, so each one ends with an outbox commit, which the store signals
//! ([`outbox_wakeups`](polis_core::outbox::TransactionalStore::outbox_wakeups)). A transaction that decides
//! an order also notes its id as a *candidate*, before it commits. One
//! watcher task per service wakes on those signals and reads, in one query,
//! the status of the candidates someone waits for: no read at all for the
//! commits that decide nothing waited for. A candidate read before its
//! transaction committed stays a candidate for the next signal, which that
//! commit sends. One nobody waits for is dropped after [`CANDIDATE_TTL`], long
//! after its commit: a wait may be registered while its transaction is still
//! running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use contracts::order::OrderStatus;
use polis_store::sql::{Sql, SqlStore, Value};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// How long a candidate nobody waits for is kept.
const CANDIDATE_TTL: Duration = Duration::from_secs(10);

/// The longest wait a request may ask for.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);

/// Who waits for which order.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    waiting: Mutex<HashMap<Uuid, Vec<oneshot::Sender<()>>>>,
    /// Orders a transaction decided (committed or about to), and when.
    candidates: Mutex<HashMap<Uuid, Instant>>,
    watcher: OnceLock<()>,
}

impl Decisions {
    /// Registers a wait for `order_id`; the receiver fires once a commit
    /// left it decided. The caller must check the order again after
    /// registering: it may have been decided just before.
    pub(crate) fn register<S>(self: &Arc<Self>, store: &Arc<S>, order_id: Uuid) -> oneshot::Receiver<()>
    where
        S: SqlStore + 'static,
        S::Tx: Sql,
    {
        self.watcher.get_or_init(|| {
            let wakeups = store.outbox_wakeups();
            tokio::spawn(watch_decisions(Arc::downgrade(store), Arc::downgrade(self), wakeups));
        });
        let (decided, receiver) = oneshot::channel();
        lock(&self.waiting).entry(order_id).or_default().push(decided);
        receiver
    }

    /// Notes that a transaction is deciding `order_id`.
    pub(crate) fn touched(&self, order_id: Uuid) {
        lock(&self.candidates).insert(order_id, Instant::now());
    }

    /// The candidates still waited for, forgetting waits whose request is
    /// gone and candidates nobody waits for.
    fn to_check(&self) -> Vec<Uuid> {
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, waits| {
            waits.retain(|w| !w.is_closed());
            !waits.is_empty()
        });
        let mut candidates = lock(&self.candidates);
        candidates.retain(|id, at| waiting.contains_key(id) || at.elapsed() < CANDIDATE_TTL);
        candidates.keys().filter(|id| waiting.contains_key(id)).copied().collect()
    }

    fn wake(&self, decided: &[Uuid]) {
        let mut waiting = lock(&self.waiting);
        let mut candidates = lock(&self.candidates);
        for id in decided {
            candidates.remove(id);
            for wait in waiting.remove(id).unwrap_or_default() {
                let _ = wait.send(());
            }
        }
    }
}

/// Whether `status` (as stored) is a decision: nothing more happens to the
/// order by itself.
pub(crate) fn is_decided(status: &str) -> bool {
    [OrderStatus::Approved, OrderStatus::Rejected, OrderStatus::Cancelled].iter().any(|s| s.as_str() == status)
}

/// The `wait_ms` query parameter, if given: how long a read may wait for the decision.
pub(crate) fn wait_param(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("wait_ms="))
    else {
        return Ok(None);
    };
    let max = MAX_WAIT.as_millis();
    match value.parse::<u64>() {
        Ok(ms) if u128::from(ms) <= max => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!("must be a whole number of milliseconds from 0 to {max}")),
    }
}

async fn watch_decisions<S>(store: Weak<S>, decisions: Weak<Decisions>, mut wakeups: watch::Receiver<u64>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    while wakeups.changed().await.is_ok() {
        let Some(decisions) = decisions.upgrade() else { return };
        let ids = decisions.to_check();
        if ids.is_empty() {
            continue;
        }
        let Some(store) = store.upgrade() else { return };
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT order_id, status FROM orders WHERE order_id IN ({})", placeholders.join(", "));
        let args: Vec<Value> = ids.iter().map(|id| Value::from(*id)).collect();
        match store.query(&sql, &args).await {
            Ok(rows) => {
                let decided: Vec<Uuid> = rows
                    .iter()
                    .filter(|row| row.text("status").is_ok_and(|s| is_decided(&s)))
                    .filter_map(|row| row.uuid("order_id").ok())
                    .collect();
                decisions.wake(&decided);
            }
            // The waits time out on their own; the next commit tries again.
            Err(e) => tracing::warn!(error = %e, "cannot read the orders waited for"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
