//! The order service's business metrics, counted once they are certain.
//!
//! Each has the label `service` = `order`, like every polis series.
//!
//! - `polis_orders_placed_total` (label `saga`: the new order's style);
//! - `polis_orders_decided_total` (labels `outcome`: `approved`,
//!   `rejected` or `cancelled`, and `reason`: a rejection's, else `none`);
//! - `polis_saga_duration_seconds` (labels `saga` = `create-order`,
//!   `style`, `outcome`): from the order's placing (the time in its UUIDv7
//!   id) to its approval or rejection, in either saga style.
//!
//! A decision is made in a consumer's transaction, which can roll back and
//! be tried again. So [`Kpis::note`] only notes it, by the message that
//! caused it, and [`Kpis::committed`] (from the handler's
//! `polis_bus::Handler::committed`) counts what that message's committed
//! transaction decided: each decision once, however many tries it took.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use contracts::order::SERVICE;
use contracts::{RejectionReason, SagaStyle};
use uuid::Uuid;

/// How long a note whose transaction never committed (it rolled back and
/// the message was dead-lettered) is kept before it is dropped.
const NOTE_TTL: Duration = Duration::from_secs(300);

/// Notes beyond which the stale ones are swept.
const SWEEP_AT: usize = 1024;

/// What a transaction did to an order that the metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approved,
    Rejected(RejectionReason),
    Cancelled,
}

impl Decision {
    fn outcome(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected(_) => "rejected",
            Decision::Cancelled => "cancelled",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Decision::Rejected(reason) => reason.as_str(),
            _ => "none",
        }
    }
}

#[derive(Debug)]
struct Noted {
    at: Instant,
    /// By order: a retried transaction notes the same decision again.
    decisions: HashMap<Uuid, (Decision, Option<SagaStyle>)>,
}

/// Decisions noted in transactions not known to have committed yet, by the
/// id of the message that caused them.
#[derive(Debug, Default)]
pub(crate) struct Kpis {
    pending: Mutex<HashMap<Uuid, Noted>>,
}

impl Kpis {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Noted>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An order was placed (its transaction committed).
    pub(crate) fn placed(&self, saga: SagaStyle) {
        metrics::counter!("polis_orders_placed_total", "service" => SERVICE, "saga" => saga.as_str()).increment(1);
    }

    /// A transaction handling the message `cause` decided `order_id`.
    pub(crate) fn note(&self, cause: Uuid, order_id: Uuid, decision: Decision, style: Option<SagaStyle>) {
        let mut pending = self.pending();
        if pending.len() >= SWEEP_AT {
            pending.retain(|_, noted| noted.at.elapsed() < NOTE_TTL);
        }
        let noted = pending.entry(cause).or_insert_with(|| Noted { at: Instant::now(), decisions: HashMap::new() });
        noted.decisions.insert(order_id, (decision, style));
    }

    /// The transaction that handled `cause` committed: counts what it decided.
    pub(crate) fn committed(&self, cause: Uuid) {
        let Some(noted) = self.pending().remove(&cause) else { return };
        for (order_id, (decision, style)) in noted.decisions {
            metrics::counter!(
                "polis_orders_decided_total",
                "service" => SERVICE,
                "outcome" => decision.outcome(),
                "reason" => decision.reason(),
            )
            .increment(1);
            if decision == Decision::Cancelled {
                continue; // a cancellation comes after the saga's decision, at the customer's pace
            }
            if let Some(placed) = placed_at(order_id) {
                metrics::histogram!(
                    "polis_saga_duration_seconds",
                    "service" => SERVICE,
                    "saga" => <crate::saga::CreateOrderSaga as polis_saga::Saga>::TYPE,
                    "style" => style.unwrap_or_default().as_str(),
                    "outcome" => decision.outcome(),
                )
                .record(placed.elapsed().unwrap_or_default().as_secs_f64());
            }
        }
    }
}

/// When an order was placed: its id is a UUIDv7 made then.
fn placed_at(order_id: Uuid) -> Option<std::time::SystemTime> {
    let (seconds, nanos) = order_id.get_timestamp()?.to_unix();
    std::time::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orders_placing_time_is_in_its_id() {
        let before = std::time::SystemTime::now() - Duration::from_millis(1);
        let placed = placed_at(Uuid::now_v7()).unwrap();
        assert!(placed >= before && placed <= std::time::SystemTime::now(), "{placed:?}");
        assert_eq!(placed_at(Uuid::nil()), None);
    }

    #[test]
    fn a_decision_counts_once_whatever_the_tries_and_only_once_committed() {
        let kpis = Kpis::default();
        let (cause, order) = (Uuid::now_v7(), Uuid::now_v7());
        kpis.note(cause, order, Decision::Approved, Some(SagaStyle::Orchestration));
        kpis.note(cause, order, Decision::Approved, Some(SagaStyle::Orchestration)); // a retry
        assert_eq!(kpis.pending()[&cause].decisions.len(), 1);
        kpis.committed(Uuid::now_v7()); // another message's transaction
        assert_eq!(kpis.pending().len(), 1);
        kpis.committed(cause);
        assert!(kpis.pending().is_empty());
    }
}
