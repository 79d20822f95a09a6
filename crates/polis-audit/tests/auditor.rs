//! The auditor's judgement and repairs, on both backends: a finding is a
//! drift only once it lasted the settle time; one that goes away is
//! forgotten; a rule that fails judges nothing; a repair is sent once
//! through the outbox, however many passes see its drift, and a repair
//! whose reply came back while the drift stays is reported failed.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_audit::{AuditOptions, Auditor, BoxError, Finding, RepairState, Repairs, Rule, Scope};
use polis_core::Message;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};

/// A rule whose findings the test sets.
#[derive(Clone)]
struct Scripted(Arc<Mutex<Result<Vec<Finding>, String>>>);

impl Default for Scripted {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Ok(Vec::new()))))
    }
}

impl Scripted {
    fn set(&self, findings: Vec<Finding>) {
        *self.0.lock().unwrap() = Ok(findings);
    }

    fn fail(&self) {
        *self.0.lock().unwrap() = Err("the inventory service is unreachable".into());
    }
}

#[async_trait]
impl Rule for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    /// What the test set, within `scope`, as a real rule reads.
    async fn check(&self, scope: Scope) -> Result<Vec<Finding>, BoxError> {
        let findings = self.0.lock().unwrap().clone()?;
        Ok(findings.into_iter().filter(|f| scope.covers(f.born)).collect())
    }
}

fn born(order: &str, at: DateTime<Utc>) -> Finding {
    orphan(order).born(at)
}

fn orphan(order: &str) -> Finding {
    Finding::new("reservation-without-order", order, format!("a reservation for {order}, which no order has"))
}

fn release(order: &str) -> Message {
    Message::command(
        "auditor",
        "inventory",
        "inventory.release-stock.v1",
        order,
        serde_json::json!({ "order_id": order }),
    )
}

async fn judges_only_what_lasts<S: SqlStore>(store: Arc<S>)
where
    S::Tx: Sql,
{
    let rule = Scripted::default();
    let auditor = Auditor::new("auditor", store, AuditOptions::new(Duration::from_secs(3600), Duration::from_secs(1)))
        .rule(rule.clone());
    rule.set(vec![orphan("o-1"), orphan("o-2")]);
    let report = auditor.run().await;
    assert!(report.drifts.is_empty(), "{report:?}");
    assert_eq!(report.suspected.get("reservation-without-order"), Some(&2));
    assert_eq!(report.unrepaired(), 0);

    // A rule that cannot judge keeps what it saw, and says so.
    rule.fail();
    let report = auditor.run().await;
    assert!(report.incomplete());
    assert_eq!(report.rules[0].error.as_deref(), Some("the inventory service is unreachable"));

    rule.set(vec![orphan("o-2")]);
    assert_eq!(auditor.run().await.suspected.get("reservation-without-order"), Some(&1));
    rule.set(Vec::new());
    let report = auditor.run().await;
    assert!(report.suspected.is_empty() && report.drifts.is_empty(), "{report:?}");
}

async fn repairs_once<S: SqlStore>(store: Arc<S>)
where
    S::Tx: Sql,
{
    let rule = Scripted::default();
    let auditor = Auditor::new("auditor", store.clone(), AuditOptions::new(Duration::ZERO, Duration::from_secs(1)))
        .rule(rule.clone());
    rule.set(vec![orphan("o-1").repaired_by(release("o-1")), orphan("o-2")]);
    let first = auditor.run().await;
    assert_eq!(first.drifts.len(), 2, "{first:?}");
    assert_eq!(first.drifts[1].repair, RepairState::None, "o-2 has no repair");
    let RepairState::Sent { message_id, .. } = first.drifts[0].repair.clone() else {
        panic!("o-1's repair was not sent: {first:?}")
    };
    assert_eq!(first.unrepaired(), 1, "only o-2 needs an operator");

    // Seen again, by a new auditor too (a restart): not sent again.
    rule.set(vec![orphan("o-1").repaired_by(release("o-1"))]);
    let again = Auditor::new("auditor", store.clone(), AuditOptions::new(Duration::ZERO, Duration::from_secs(1)))
        .rule(rule.clone())
        .run()
        .await;
    assert_eq!(again.drifts[0].repair, first.drifts[0].repair);
    let outbox = store.unpublished(10).await.unwrap();
    assert_eq!(outbox.len(), 1, "one repair command in the outbox");
    assert_eq!(outbox[0].message.id.to_string(), message_id);
    assert_eq!(outbox[0].message.message_type, "inventory.release-stock.v1");

    // Its reply came back, and the drift is still there: the repair failed.
    let id = message_id.clone();
    let confirmed = store
        .transaction::<_, _, polis_core::StoreError>(async move |tx: &mut S::Tx| Repairs::<S>::confirm(tx, &id).await)
        .await
        .unwrap();
    assert!(confirmed);
    let report = auditor.run().await;
    assert!(matches!(&report.drifts[0].repair, RepairState::Failed { message_id: m, .. } if *m == message_id));
    assert_eq!(report.unrepaired(), 1);

    rule.set(Vec::new());
    assert!(auditor.run().await.drifts.is_empty());
}

#[tokio::test]
async fn sqlite_auditor_judges_only_what_lasts_and_repairs_once() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| SqliteEventStore::open(dir.path().join(name), SqliteOptions::new("auditor"));
    judges_only_what_lasts(Arc::new(open("a.db").await.unwrap())).await;
    repairs_once(Arc::new(open("b.db").await.unwrap())).await;
}

#[tokio::test]
async fn postgres_auditor_judges_only_what_lasts_and_repairs_once() {
    let first = polis_testkit::postgres().await;
    judges_only_what_lasts(Arc::new(PgEventStore::connect(first.url(), PgOptions::new("auditor")).await.unwrap()))
        .await;
    let second = polis_testkit::postgres().await;
    repairs_once(Arc::new(PgEventStore::connect(second.url(), PgOptions::new("auditor")).await.unwrap())).await;
}

/// The settle time, on a paused clock: a finding seen by every pass turns
/// into a drift once it has lasted that long, dated from its first sighting.
#[tokio::test]
async fn a_finding_becomes_a_drift_once_it_lasted_the_settle_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("a.db"), SqliteOptions::new("auditor")).await.unwrap());
    tokio::time::pause();
    let rule = Scripted::default();
    let auditor = Auditor::new("auditor", store, AuditOptions::new(Duration::from_secs(30), Duration::from_secs(5)))
        .rule(rule.clone());
    rule.set(vec![orphan("o-1")]);
    let first = auditor.run().await;
    assert!(first.drifts.is_empty());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(auditor.run().await.drifts.is_empty(), "not yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    let lasted = auditor.run().await;
    assert_eq!(lasted.drifts.len(), 1);
    assert_eq!(lasted.drifts[0].since, first.at, "dated from its first sighting");
    assert_eq!(lasted.unrepaired(), 1);
}

/// Recent passes judge only what is new: a drift about an old subject, seen
/// by a full pass, is reported by the recent passes after it (they do not
/// look at it, so cannot clear it), and only a full pass clears it; what a
/// recent pass covers and does not see again is forgotten.
#[tokio::test]
async fn a_recent_pass_forgets_only_what_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("a.db"), SqliteOptions::new("auditor")).await.unwrap());
    let rule = Scripted::default();
    let options = AuditOptions::new(Duration::ZERO, Duration::from_secs(1))
        .passes(Duration::from_secs(600), Duration::from_secs(3600));
    let auditor = Auditor::new("auditor", store, options).rule(rule.clone());
    let long_ago = Utc::now() - chrono::Duration::days(30);
    let total = Finding::new("reserved-stock-differs", "sku-1", "totals differ").judged_in_full_passes();
    let everywhere = Finding::new("replica-missing", "customer-1", "not replicated");
    rule.set(vec![born("old", long_ago), born("new", Utc::now()), total.clone(), everywhere.clone()]);
    let full = auditor.run_due().await;
    assert_eq!(full.scope, Scope::Full, "the first pass is full");
    assert_eq!(full.drifts.len(), 4, "{full:?}");

    // Everything went away; a recent pass sees only what it covers.
    rule.set(Vec::new());
    let recent = auditor.run_due().await;
    assert!(matches!(recent.scope, Scope::Recent { since } if since > long_ago), "{recent:?}");
    let subjects: Vec<&str> = recent.drifts.iter().map(|d| d.subject.as_str()).collect();
    assert_eq!(subjects, ["old", "sku-1"], "uncovered drifts are reported again, covered ones cleared");
    assert_eq!(recent.drifts[0].since, full.at);

    let full = auditor.run().await;
    assert!(full.drifts.is_empty(), "{full:?}");
}

/// A finding about an old subject settles across full passes: recent
/// passes in between neither clear it nor count as seeing it.
#[tokio::test]
async fn an_old_subject_settles_across_full_passes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path().join("a.db"), SqliteOptions::new("auditor")).await.unwrap());
    tokio::time::pause();
    let rule = Scripted::default();
    let options = AuditOptions::new(Duration::from_secs(30), Duration::from_secs(5))
        .passes(Duration::from_secs(600), Duration::from_secs(60));
    let auditor = Auditor::new("auditor", store, options).rule(rule.clone());
    rule.set(vec![born("old", Utc::now() - chrono::Duration::days(30))]);
    let first = auditor.run_due().await;
    assert_eq!((first.scope, first.suspected.get("reservation-without-order")), (Scope::Full, Some(&1)));
    for _ in 0..11 {
        tokio::time::advance(Duration::from_secs(5)).await;
        let recent = auditor.run_due().await;
        assert!(matches!(recent.scope, Scope::Recent { .. }), "{recent:?}");
        assert!(recent.drifts.is_empty() && recent.suspected.is_empty(), "not judged: {recent:?}");
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let second = auditor.run_due().await;
    assert_eq!(second.scope, Scope::Full, "a minute after the first");
    assert_eq!(second.drifts.len(), 1, "{second:?}");
    assert_eq!(second.drifts[0].since, first.at, "dated from its first sighting");
}
