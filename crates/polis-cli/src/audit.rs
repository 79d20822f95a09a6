//! `polis audit`: one reconciliation pass of a running shop, now.
//!
//! It asks the gateway (`POST /api/audit/runs`, either deployment) for a
//! pass of the audit service: every rule reads the services' facts through
//! their APIs, repairs due are sent, and the report comes back. It prints
//! the drifts (a table, or the report as JSON with `--json`) and exits with
//! 3 if a drift has nothing under way to fix it (no safe repair, or one
//! that did not work), 1 if the pass could not judge (a service
//! unreachable) or the shop could not be asked.

use anyhow::Context;
use axum::http::{Method, StatusCode};
use clap::Args;
use polis_audit::Report;
use shop::client::Endpoint;

use crate::exit::Outcome;

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The gateway of the running shop.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<Outcome> {
    let gateway = Endpoint::remote(&args.url)?;
    let (status, body) = gateway
        .call(Method::POST, "/api/audit/runs", None::<&()>)
        .await
        .with_context(|| format!("asking the shop at {} for an audit", args.url))?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "the shop at {} answered {status} to an audit: {}",
        args.url,
        String::from_utf8_lossy(&body)
    );
    let report: Report = serde_json::from_slice(&body).context("reading the audit's report")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    if report.incomplete() {
        let failed: Vec<String> =
            report.rules.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.rule))).collect();
        anyhow::bail!("the audit could not judge everything: {}", failed.join("; "));
    }
    Ok(Outcome::checked(report.unrepaired() == 0))
}

/// The report for people: a line per drift, then a summary.
fn table(report: &Report) -> String {
    let mut out = String::new();
    if !report.drifts.is_empty() {
        let rows: Vec<[String; 5]> = report
            .drifts
            .iter()
            .map(|d| {
                let repair = match &d.repair {
                    polis_audit::RepairState::None => "none: needs an operator".to_owned(),
                    polis_audit::RepairState::Sent { at, .. } => format!("sent {}", at.format("%H:%M:%S")),
                    polis_audit::RepairState::Failed { .. } => "failed: needs an operator".to_owned(),
                };
                [
                    d.kind.clone(),
                    d.subject.clone(),
                    d.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                    repair,
                    d.detail.clone(),
                ]
            })
            .collect();
        let header = ["KIND", "SUBJECT", "SINCE", "REPAIR", "DETAIL"].map(str::to_owned);
        let widths: Vec<usize> =
            (0..4).map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        for row in [&header].into_iter().chain(&rows) {
            let cells: Vec<String> = (0..4).map(|i| format!("{:<w$}", row[i], w = widths[i])).collect();
            out.push_str(&format!("{}  {}\n", cells.join("  "), row[4]));
        }
    }
    let suspected: usize = report.suspected.values().sum();
    out.push_str(&format!(
        "{} drift(s), {} with nothing under way to fix them; {suspected} finding(s) younger than {} ms (possibly work in flight)\n",
        report.drifts.len(),
        report.unrepaired(),
        report.settle_ms
    ));
    out
}
