//! polis-audit: reconciliation — event tracking's other half.
//!
//! Services that own their data agree with each other only eventually, and
//! only if nothing goes wrong behind their backs (a row deleted by hand, a
//! restore from an old backup, a bug). An [`Auditor`] checks that they do:
//!
//! - a [`Rule`] compares facts *across* services, through their APIs or
//!   events, never by reading another service's database, and returns the
//!   disagreements it sees now as [`Finding`]s, each with its kind (from a
//!   small, fixed set: it becomes a metric label), its subject (the ids) and,
//!   where one is safe, the command that repairs it;
//! - work in flight is not drift: an order mid-saga holds a reservation
//!   without a payment for a moment. A finding becomes a [`Drift`] only once
//!   every pass for at least [`AuditOptions::settle`] has seen it (the
//!   longest a healthy system takes to converge); one that goes away before
//!   is forgotten. Rules should also skip what is visibly in flight;
//! - a drift with a repair gets its command sent **once**, through the
//!   auditor's own service's outbox, in one transaction with its record in
//!   `polis_audit_repairs` (kind, subject, message, when): a restarted
//!   auditor, or a second pass, does not send it again. Repairs must be
//!   idempotent commands the owning service would accept from its own saga
//!   (release a reservation, void an authorization), so one that races the
//!   saga it doubles is harmless. The reply, when it comes, confirms it
//!   ([`Repairs::confirm`]);
//! - a pass's cost must not follow the history: most passes are *recent*
//!   ([`Scope::Recent`]), judging only what came to be within
//!   [`AuditOptions::recent`] (the orders of the last minutes, say), and a
//!   *full* pass ([`Scope::Full`]) judges everything once every
//!   [`AuditOptions::full_every`]. A finding says when its subject came to
//!   be ([`Finding::born`]); a recent pass forgets only the findings it
//!   covered and did not see again, so a drift about an old subject, seen
//!   by full passes, is reported by every pass in between and settles
//!   across full passes;
//! - each pass is a [`Report`]; [`Auditor::spawn`] runs one every
//!   [`AuditOptions::interval`] and keeps the last. Metrics:
//!   `polis_audit_drifts{service,kind}` (drifts now, unrepaired or repair
//!   pending), `polis_audit_suspected{service,kind}` (findings still within
//!   their settle time), `polis_audit_repairs_total{service,kind}`,
//!   `polis_audit_runs_total{service,outcome}` and
//!   `polis_audit_last_run_timestamp_seconds{service}`.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use polis_core::{Message, StoreError, Transaction};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// An error of a rule's fact-finding (a service unreachable, an answer that
/// does not decode): the pass reports it and judges nothing by that rule.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One disagreement a rule sees now.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What kind of disagreement (`undone-order-keeps-reservation`): a
    /// metric label, so from a small fixed set.
    pub kind: &'static str,
    /// What it is about: the ids, e.g. an order id.
    pub subject: String,
    /// What was seen, for people.
    pub detail: String,
    /// The command that repairs it, if one is safe; sent from the
    /// auditor's service, through its outbox.
    pub repair: Option<Message>,
    /// When its subject came to be (an order's creation): a recent pass
    /// ([`Scope::Recent`]) judges it only if that is within its scope.
    /// `None` (the default) for what every pass judges, however old;
    /// [`Finding::judged_in_full_passes`] for what only full passes judge.
    pub born: Option<DateTime<Utc>>,
}

impl Finding {
    /// A finding with no repair, judged by every pass.
    pub fn new(kind: &'static str, subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { kind, subject: subject.into(), detail: detail.into(), repair: None, born: None }
    }

    /// This finding, about a subject that came to be at `born` (see
    /// [`Finding::born`]).
    pub fn born(mut self, born: DateTime<Utc>) -> Self {
        self.born = Some(born);
        self
    }

    /// This finding, of a kind only full passes judge (one that needs
    /// every subject, such as a total over all of them).
    pub fn judged_in_full_passes(self) -> Self {
        self.born(DateTime::<Utc>::MIN_UTC)
    }

    /// This finding, repaired by sending `command`.
    pub fn repaired_by(mut self, command: Message) -> Self {
        self.repair = Some(command);
        self
    }
}

/// A comparison of facts across services.
#[async_trait]
pub trait Rule: Send + Sync + 'static {
    /// The rule's name, in reports.
    fn name(&self) -> &'static str;

    /// Every kind of finding it can return: their metrics read 0 from the
    /// first pass, so an alert on them has a series before anything is wrong.
    fn kinds(&self) -> &'static [&'static str] {
        &[]
    }

    /// The disagreements seen now within `scope`: everything for
    /// [`Scope::Full`]; for [`Scope::Recent`] at least the subjects born
    /// since its start (more is allowed), each finding saying when its
    /// subject was born ([`Finding::born`]).
    async fn check(&self, scope: Scope) -> Result<Vec<Finding>, BoxError>;
}

/// What a pass judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scope {
    /// Everything.
    #[default]
    Full,
    /// The subjects born since `since`, and what every pass judges.
    Recent {
        /// The oldest birth judged.
        since: DateTime<Utc>,
    },
}

impl Scope {
    /// Whether a pass of this scope judges a finding whose subject was born
    /// at `born` (see [`Finding::born`]).
    pub fn covers(self, born: Option<DateTime<Utc>>) -> bool {
        match (self, born) {
            (Self::Full, _) | (_, None) => true,
            (Self::Recent { since }, Some(born)) => born >= since,
        }
    }
}

/// How an [`Auditor`] judges and paces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditOptions {
    /// How long a finding must last (seen by every pass that judges it)
    /// before it is a drift (default 30 s: longer than a saga step's
    /// timeout).
    pub settle: Duration,
    /// Time between passes of [`Auditor::spawn`] (default 30 s).
    pub interval: Duration,
    /// How far back a recent pass looks (default 2 min): over the settle
    /// time plus an interval and the time a subject takes to settle down
    /// (an order's decision), so what goes wrong while a subject is new
    /// settles into a drift within recent passes; short, as a pass reads
    /// what was born within it (at 400 orders/s, 2 min are 48,000 orders).
    pub recent: Duration,
    /// How often a pass is full (default 1 h); the first pass always is.
    pub full_every: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(30),
            interval: Duration::from_secs(30),
            recent: Duration::from_secs(120),
            full_every: Duration::from_secs(3600),
        }
    }
}

impl AuditOptions {
    /// These options with `settle` and `interval` (and the default
    /// [`recent`](Self::recent) and [`full_every`](Self::full_every)).
    pub fn new(settle: Duration, interval: Duration) -> Self {
        Self { settle, interval, ..Self::default() }
    }

    /// These options with recent passes looking back `recent`, and a full
    /// pass every `full_every`.
    pub fn passes(mut self, recent: Duration, full_every: Duration) -> Self {
        self.recent = recent;
        self.full_every = full_every;
        self
    }
}

/// What was done about a drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RepairState {
    /// No safe repair: an operator must look.
    None,
    /// The repair command was sent (now or by an earlier pass) and its reply
    /// has not come back yet.
    Sent {
        /// The command's message id.
        message_id: String,
        /// When it was sent.
        at: DateTime<Utc>,
    },
    /// The repair's reply came back, yet the drift is still seen: the
    /// repair did not work, an operator must look.
    Failed {
        /// The command's message id.
        message_id: String,
        /// When it was sent.
        at: DateTime<Utc>,
    },
}

/// A finding that lasted: the services disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Its kind (see [`Finding::kind`]).
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// What was seen, by the last pass.
    pub detail: String,
    /// Since when it has been seen.
    pub since: DateTime<Utc>,
    /// What was done about it.
    pub repair: RepairState,
}

impl Drift {
    /// Whether nothing is under way to fix it: no repair, or one that failed.
    pub fn unrepaired(&self) -> bool {
        !matches!(self.repair, RepairState::Sent { .. })
    }
}

/// One rule's part of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRun {
    /// The rule.
    pub rule: String,
    /// How many findings it returned.
    pub findings: usize,
    /// Why it could not judge, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One pass of an auditor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// When the pass ran.
    pub at: DateTime<Utc>,
    /// What it judged.
    #[serde(default)]
    pub scope: Scope,
    /// How long a finding must last to be a drift, in milliseconds.
    pub settle_ms: u64,
    /// Each rule's part.
    pub rules: Vec<RuleRun>,
    /// Findings still within their settle time (possibly work in flight), by kind.
    pub suspected: BTreeMap<String, usize>,
    /// The drifts.
    pub drifts: Vec<Drift>,
}

impl Report {
    /// Drifts with nothing under way to fix them.
    pub fn unrepaired(&self) -> usize {
        self.drifts.iter().filter(|d| d.unrepaired()).count()
    }

    /// Whether a rule could not judge.
    pub fn incomplete(&self) -> bool {
        self.rules.iter().any(|r| r.error.is_some())
    }
}

/// The repairs an auditor sent, in its service's store.
#[derive(Debug)]
pub struct Repairs<S> {
    store: Arc<S>,
}

impl<S> Clone for Repairs<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone() }
    }
}

impl<S> Repairs<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// The repairs recorded in `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// Sends `command` to repair the drift (`kind`, `subject`) unless a
    /// repair was sent for it before; the repair's record either way.
    async fn send_once(&self, kind: &str, subject: &str, command: &Message) -> Result<Recorded, StoreError> {
        let (kind, subject, command) = (kind.to_owned(), subject.to_owned(), command.clone());
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                // As stored: to the microsecond.
                let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap_or_default();
                let inserted = tx
                    .execute(
                        "INSERT INTO polis_audit_repairs (kind, subject, message_id, message_type, sent_at_us) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, subject) DO NOTHING",
                        args![
                            kind.as_str(),
                            subject.as_str(),
                            command.id.to_string(),
                            command.message_type.as_str(),
                            now.timestamp_micros()
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    tx.send(&command).await?;
                    metrics::counter!("polis_audit_repairs_total", "service" => command.source.clone(), "kind" => kind)
                        .increment(1);
                    return Ok(Recorded { message_id: command.id.to_string(), at: now, confirmed: false, new: true });
                }
                let row = tx
                    .fetch_one(
                        "SELECT message_id, sent_at_us, confirmed_at_us FROM polis_audit_repairs \
                         WHERE kind = $1 AND subject = $2",
                        args![kind.as_str(), subject.as_str()],
                    )
                    .await?;
                Ok(Recorded {
                    message_id: row.text("message_id")?,
                    at: DateTime::from_timestamp_micros(row.int("sent_at_us")?).unwrap_or_default(),
                    confirmed: row.opt_int("confirmed_at_us")?.is_some(),
                    new: false,
                })
            })
            .await
    }

    /// Records, in `tx`, that the reply to the repair command `message_id`
    /// came back; `false` if no repair was sent with that id.
    pub async fn confirm(tx: &mut S::Tx, message_id: &str) -> Result<bool, StoreError> {
        let updated = tx
            .execute(
                "UPDATE polis_audit_repairs SET confirmed_at_us = $1 WHERE message_id = $2 AND confirmed_at_us IS NULL",
                args![Utc::now().timestamp_micros(), message_id],
            )
            .await?;
        Ok(updated > 0)
    }
}

struct Recorded {
    message_id: String,
    at: DateTime<Utc>,
    confirmed: bool,
    new: bool,
}

/// A pass's findings judged: the drifts (with since when) and the
/// suspects (by kind).
type Judged = (Vec<(Finding, DateTime<Utc>)>, BTreeMap<String, usize>);

/// A finding this auditor saw: when first, and as last seen.
#[derive(Debug, Clone)]
struct Seen {
    first: Instant,
    since: DateTime<Utc>,
    finding: Finding,
    /// Whether it was a drift when last seen.
    drift: bool,
}

/// Runs rules and judges their findings (see the crate docs).
pub struct Auditor<S> {
    service: String,
    rules: Vec<Arc<dyn Rule>>,
    repairs: Repairs<S>,
    options: AuditOptions,
    seen: Mutex<HashMap<(&'static str, String), Seen>>,
    /// Every kind exported so far: one that is gone reads 0, not its last value.
    exported: Mutex<std::collections::BTreeSet<String>>,
    /// When the last full pass started.
    last_full: Mutex<Option<Instant>>,
}

impl<S> std::fmt::Debug for Auditor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<&str> = self.rules.iter().map(|r| r.name()).collect();
        f.debug_struct("Auditor").field("service", &self.service).field("rules", &rules).finish_non_exhaustive()
    }
}

impl<S> Auditor<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// An auditor of `service` (its metrics' label) with no rules yet,
    /// sending repairs through `store`'s outbox.
    pub fn new(service: impl Into<String>, store: Arc<S>, options: AuditOptions) -> Self {
        Self {
            service: service.into(),
            rules: Vec::new(),
            repairs: Repairs::new(store),
            options,
            seen: Mutex::default(),
            exported: Mutex::default(),
            last_full: Mutex::default(),
        }
    }

    /// This auditor with `rule` too.
    pub fn rule(mut self, rule: impl Rule) -> Self {
        self.rules.push(Arc::new(rule));
        self
    }

    /// A full pass now ([`run_scoped`](Self::run_scoped) with
    /// [`Scope::Full`]).
    pub async fn run(&self) -> Report {
        self.run_scoped(Scope::Full).await
    }

    /// The pass due now: full if none was for [`AuditOptions::full_every`]
    /// (or ever), else recent.
    pub async fn run_due(&self) -> Report {
        let full_due = lock(&self.last_full).is_none_or(|at| at.elapsed() >= self.options.full_every);
        let scope = match full_due {
            true => Scope::Full,
            false => {
                let back = chrono::Duration::from_std(self.options.recent).unwrap_or(chrono::Duration::MAX);
                let since = Utc::now().checked_sub_signed(back).unwrap_or(DateTime::<Utc>::MIN_UTC);
                // To the millisecond, as UUIDv7 ids and most clocks in messages.
                Scope::Recent { since: DateTime::from_timestamp_millis(since.timestamp_millis()).unwrap_or(since) }
            }
        };
        self.run_scoped(scope).await
    }

    /// Runs every rule once within `scope`, judges the findings, sends the
    /// repairs due and reports. A rule that fails judges nothing: what it
    /// found before is kept as it was, neither cleared nor aged into a
    /// drift by this pass; so is what the scope does not cover, and what
    /// was a drift is reported again.
    pub async fn run_scoped(&self, scope: Scope) -> Report {
        let at = Utc::now();
        if scope == Scope::Full {
            *lock(&self.last_full) = Some(Instant::now());
        }
        let checks = self.rules.iter().map(|rule| async move { (rule.name(), rule.check(scope).await) });
        let results = futures::future::join_all(checks).await;
        let mut rules = Vec::new();
        let mut findings = Vec::new();
        let mut failed = false;
        for (name, result) in results {
            match result {
                Ok(found) => {
                    rules.push(RuleRun { rule: name.to_owned(), findings: found.len(), error: None });
                    findings.extend(found);
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(service = self.service, rule = name, %error, "an audit rule could not judge");
                    rules.push(RuleRun { rule: name.to_owned(), findings: 0, error: Some(error.to_string()) });
                }
            }
        }
        let (lasting, suspected) = self.judge(findings, failed, scope, at);
        let mut drifts = Vec::new();
        for (finding, since) in lasting {
            let repair = match &finding.repair {
                None => RepairState::None,
                Some(command) => match self.repairs.send_once(finding.kind, &finding.subject, command).await {
                    Ok(recorded) => {
                        if recorded.new {
                            tracing::info!(service = self.service, kind = finding.kind, subject = finding.subject, command = %command.message_type, "repair sent");
                        }
                        let (message_id, at) = (recorded.message_id, recorded.at);
                        if recorded.confirmed {
                            RepairState::Failed { message_id, at }
                        } else {
                            RepairState::Sent { message_id, at }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(service = self.service, kind = finding.kind, subject = finding.subject, error = %polis_core::error::chain(&error), "a repair could not be sent");
                        RepairState::None
                    }
                },
            };
            drifts.push(Drift {
                kind: finding.kind.to_owned(),
                subject: finding.subject.clone(),
                detail: finding.detail.clone(),
                since,
                repair,
            });
        }
        drifts.sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
        let report = Report { at, scope, settle_ms: millis(self.options.settle), rules, suspected, drifts };
        self.export(&report, failed);
        report
    }

    /// Splits `findings` into drifts (with since when) and suspects (by
    /// kind), remembering first sightings and forgetting what went away
    /// within `scope`.
    fn judge(&self, findings: Vec<Finding>, failed: bool, scope: Scope, at: DateTime<Utc>) -> Judged {
        let mut seen = lock(&self.seen);
        let now = Instant::now();
        let mut lasting = Vec::new();
        let mut suspected = BTreeMap::new();
        let mut current = HashMap::new();
        for finding in findings {
            let key = (finding.kind, finding.subject.clone());
            let (first, since) = seen.get(&key).map_or((now, at), |s| (s.first, s.since));
            let drift = now.duration_since(first) >= self.options.settle;
            if drift {
                lasting.push((finding.clone(), since));
            } else {
                *suspected.entry(finding.kind.to_owned()).or_insert(0) += 1;
            }
            current.insert(key, Seen { first, since, finding, drift });
        }
        for (key, entry) in seen.drain() {
            if current.contains_key(&key) {
                continue;
            }
            // What a failed rule would have found, or what this pass did
            // not look at, stays as it was; a drift is reported again.
            if failed || !scope.covers(entry.finding.born) {
                if entry.drift {
                    lasting.push((entry.finding.clone(), entry.since));
                }
                current.insert(key, entry);
            }
        }
        *seen = current;
        (lasting, suspected)
    }

    fn export(&self, report: &Report, failed: bool) {
        let service = self.service.clone();
        let mut drifts: BTreeMap<&str, usize> = BTreeMap::new();
        for drift in &report.drifts {
            *drifts.entry(&drift.kind).or_insert(0) += 1;
        }
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        let declared = self.rules.iter().flat_map(|r| r.kinds().iter().copied());
        for kind in declared.chain(drifts.keys().copied()).chain(report.suspected.keys().map(String::as_str)) {
            exported.insert(kind.to_owned());
        }
        for kind in exported.iter() {
            let labels = [("service", service.clone()), ("kind", kind.clone())];
            metrics::gauge!("polis_audit_drifts", &labels).set(drifts.get(kind.as_str()).copied().unwrap_or(0) as f64);
            metrics::gauge!("polis_audit_suspected", &labels)
                .set(report.suspected.get(kind).copied().unwrap_or(0) as f64);
        }
        let outcome = if failed { "incomplete" } else { "complete" };
        metrics::counter!("polis_audit_runs_total", "service" => service.clone(), "outcome" => outcome).increment(1);
        metrics::gauge!("polis_audit_last_run_timestamp_seconds", "service" => service)
            .set(report.at.timestamp_millis() as f64 / 1000.0);
    }

    /// Runs a full pass now, then the pass due ([`run_due`](Self::run_due))
    /// every [`AuditOptions::interval`], until the handle is dropped or shut
    /// down.
    pub fn spawn(self: Arc<Self>) -> AuditHandle
    where
        S: 'static,
    {
        let (reports, last) = watch::channel(None);
        let interval = self.options.interval.max(Duration::from_millis(10));
        let auditor = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let report = auditor.run_due().await;
                reports.send_replace(Some(Arc::new(report)));
            }
        });
        AuditHandle { task, last }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A running auditor ([`Auditor::spawn`]).
#[derive(Debug)]
pub struct AuditHandle {
    task: tokio::task::JoinHandle<()>,
    last: watch::Receiver<Option<Arc<Report>>>,
}

impl AuditHandle {
    /// The last pass's report (`None` before the first ends).
    pub fn last(&self) -> Option<Arc<Report>> {
        self.last.borrow().clone()
    }

    /// The reports as they come.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Report>>> {
        self.last.clone()
    }

    /// Stops the passes (one under way is cut short; a repair's transaction
    /// commits or not as a whole).
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for AuditHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
