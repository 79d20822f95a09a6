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
//! running. A read that fails is tried again after a short pause, not only at
//! the next commit, which may never come.
//!
//! Several instances of the service share one database, and the decision
//! may commit in another instance than the one waiting. Its commit is not a
//! candidate here, but its hint is heard
//! ([`peer_outbox_wakeups`](polis_core::outbox::TransactionalStore::peer_outbox_wakeups)):
//! on such a wake-up every order waited for is read, at most once per
//! [`PEER_CHECK_EVERY`], and at least once per [`PEER_POLL`] while anyone
//! waits, since a hint can be lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use contracts::order::OrderStatus;
use polis_store::sql::{Sql, SqlStore, Value};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// How long a candidate nobody waits for is kept.
const CANDIDATE_TTL: Duration = Duration::from_secs(10);

/// The first pause before a failed read of the waited-for orders is tried
/// again (it doubles, up to [`RETRY_MAX`]).
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The shortest time between two reads of every order waited for, which
/// other instances' commits prompt: what commits meanwhile waits that long.
const PEER_CHECK_EVERY: Duration = Duration::from_millis(20);

/// With other instances about, how often every order waited for is read
/// even without a hint (hints are only hints: one can be lost).
const PEER_POLL: Duration = Duration::from_secs(1);

/// The longest wait a request may ask for.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(contracts::order::MAX_WAIT_MS);

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
            let wakeups = (store.outbox_wakeups(), store.peer_outbox_wakeups());
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
        let waiting = self.pruned();
        let mut candidates = lock(&self.candidates);
        candidates.retain(|id, at| waiting.contains_key(id) || at.elapsed() < CANDIDATE_TTL);
        candidates.keys().filter(|id| waiting.contains_key(id)).copied().collect()
    }

    /// Every order waited for (whose request is still there).
    fn waited_for(&self) -> Vec<Uuid> {
        self.pruned().keys().copied().collect()
    }

    /// The waits, without those whose request is gone.
    fn pruned(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<oneshot::Sender<()>>>> {
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, waits| {
            waits.retain(|w| !w.is_closed());
            !waits.is_empty()
        });
        waiting
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

/// The query parameter `wait_ms` names.
pub(crate) const WAIT_PARAM: &str = "wait_ms";

/// The `wait_ms` query parameter, if given: how long a read may wait for the
/// decision. `wait_ms` alone or empty is an empty wait, not no wait.
pub(crate) fn wait_param(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) =
        polis_runtime::query::pairs(query).find_map(|(name, value)| (name == WAIT_PARAM).then_some(value))
    else {
        return Ok(None);
    };
    let max = MAX_WAIT.as_millis();
    match value.parse::<u64>() {
        Ok(ms) if u128::from(ms) <= max => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!("must be a whole number of milliseconds from 0 to {max}")),
    }
}

async fn watch_decisions<S>(
    store: Weak<S>,
    decisions: Weak<Decisions>,
    (mut wakeups, mut peers): (watch::Receiver<u64>, Option<watch::Receiver<u64>>),
) where
    S: SqlStore,
    S::Tx: Sql,
{
    // After a failed read the watcher tries again on its own, sooner than
    // the waits time out, instead of waiting for a commit that may not come.
    let mut retry: Option<Duration> = None;
    // A read of every order waited for failed: the next read is one too,
    // whatever wakes it (a peer's decision is noted nowhere else).
    let mut owed_everyone = false;
    let mut peer_checked = Instant::now();
    loop {
        // With other instances about, also every PEER_POLL: a hint can be lost.
        let pause = retry.unwrap_or(PEER_POLL);
        let polling = retry.is_some() || peers.is_some();
        let (woken, everyone) = tokio::select! {
            changed = wakeups.changed() => (changed.is_ok(), owed_everyone),
            () = peer_commit(&mut peers) => (true, true),
            () = tokio::time::sleep(pause), if polling => (true, true),
        };
        if !woken {
            return;
        }
        if everyone && let Some(early) = PEER_CHECK_EVERY.checked_sub(peer_checked.elapsed()) {
            // What commits meanwhile is read with it.
            tokio::time::sleep(early).await;
        }
        let Some(decisions) = decisions.upgrade() else { return };
        let ids = if everyone {
            peer_checked = Instant::now();
            decisions.waited_for()
        } else {
            decisions.to_check()
        };
        if ids.is_empty() {
            retry = None;
            owed_everyone &= !everyone;
            continue;
        }
        let Some(store) = store.upgrade() else { return };
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT order_id, status FROM orders WHERE order_id IN ({})", placeholders.join(", "));
        let args: Vec<Value> = ids.iter().map(|id| Value::from(*id)).collect();
        match store.query(&sql, &args).await {
            Ok(rows) => {
                retry = None;
                owed_everyone &= !everyone;
                let decided: Vec<Uuid> = rows
                    .iter()
                    .filter(|row| row.text("status").is_ok_and(|s| is_decided(&s)))
                    .filter_map(|row| row.uuid("order_id").ok())
                    .collect();
                decisions.wake(&decided);
            }
            Err(e) => {
                let pause = retry.map_or(RETRY_MIN, |p| (p * 2).min(RETRY_MAX));
                tracing::warn!(error = %polis_core::error::chain(&e), retry_in = ?pause, "cannot read the orders waited for");
                retry = Some(pause);
                owed_everyone |= everyone;
            }
        }
    }
}

/// Returns once another process may have committed to the outbox; never,
/// if nobody else writes to the store.
async fn peer_commit(peers: &mut Option<watch::Receiver<u64>>) {
    if let Some(receiver) = peers {
        if receiver.changed().await.is_ok() {
            return;
        }
        *peers = None;
    }
    std::future::pending().await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use polis_core::outbox::{Transaction, TransactionalStore};
    use polis_core::{Message, StoreError};
    use polis_store::{SqliteEventStore, SqliteTx};

    /// Runs `sql` in a transaction, which also sends a message if `send`.
    async fn run(store: &SqliteEventStore, sql: String, send: bool) {
        store
            .transaction::<_, _, StoreError>(async move |tx: &mut SqliteTx| {
                tx.execute(&sql, &[]).await?;
                if send {
                    tx.send(&Message::command("order", "order", "Nudge", "k", serde_json::json!({}))).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    /// A read of the waited-for orders that fails is tried again on its
    /// own: the wait is answered without another commit.
    #[tokio::test]
    async fn a_failed_read_is_tried_again_without_a_commit() {
        let (store, _guard) = testsupport::sqlite(contracts::order::SERVICE).await;
        <crate::OrderService<_> as polis_runtime::Service<_>>::open(store.clone(), crate::Config::default())
            .await
            .unwrap();
        let id = Uuid::now_v7();
        let insert = format!(
            "INSERT INTO orders (order_id, customer_id, status, lines, total, version, created_at_us, updated_at_us) \
             VALUES ('{id}', '{}', 'APPROVED', '[]', 0, 1, 0, 0)",
            Uuid::now_v7()
        );
        run(&store, insert, false).await;

        let decisions = Arc::new(Decisions::default());
        let decided = decisions.register(&store, id);
        decisions.touched(id);
        // The watcher's read fails while the table is away; the commit that
        // moves it sends a message, so the watcher reads (and fails) at once.
        run(&store, "ALTER TABLE orders RENAME TO orders_away".into(), true).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Putting it back sends nothing: no commit wakes the watcher again.
        run(&store, "ALTER TABLE orders_away RENAME TO orders".into(), false).await;
        tokio::time::timeout(Duration::from_secs(5), decided)
            .await
            .expect("the wait is answered after the failed read")
            .unwrap();
    }

    /// Two instances on one database: the wait is registered in one, the
    /// decision commits in the other (which notes no candidate here). The
    /// other's hint answers the wait.
    #[tokio::test]
    async fn a_decision_another_instance_commits_answers_the_wait() {
        use polis_store::{PgEventStore, PgOptions, PgTx};
        let db = polis_testkit::postgres().await;
        let connect = async || Arc::new(PgEventStore::connect(db.url(), PgOptions::new("order")).await.unwrap());
        let (here, there) = (connect().await, connect().await);
        <crate::OrderService<_> as polis_runtime::Service<_>>::open(here.clone(), crate::Config::default())
            .await
            .unwrap();
        let id = Uuid::now_v7();
        let write = async |store: &PgEventStore, sql: String| {
            store
                .transaction::<_, _, StoreError>(async move |tx: &mut PgTx| {
                    sqlx::query(&sql).execute(tx.conn()).await.map_err(|e| StoreError::backend(e.to_string()))?;
                    tx.send(&Message::command("order", "order", "Nudge", "k", serde_json::json!({}))).await?;
                    Ok(())
                })
                .await
                .unwrap();
        };
        write(
            &here,
            format!(
                "INSERT INTO orders (order_id, customer_id, status, lines, total, version, created_at_us, updated_at_us) \
                 VALUES ('{id}', '{}', 'PENDING', '[]', 0, 1, 0, 0)",
                Uuid::now_v7()
            ),
        )
        .await;
        let decisions = Arc::new(Decisions::default());
        let mut decided = decisions.register(&here, id);
        write(&there, format!("UPDATE orders SET status = 'APPROVED' WHERE order_id = '{id}'")).await;
        // The instances greet each other as they start; a commit before the
        // greeting sends no hint, so later commits (any) nudge until then.
        for _ in 0..20 {
            if tokio::time::timeout(Duration::from_millis(500), &mut decided).await.is_ok() {
                return;
            }
            write(&there, "SELECT 1".into()).await;
        }
        panic!("the wait was not answered");
    }
}
