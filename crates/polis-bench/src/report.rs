//! Markdown output: tables, target checks and the closing summary.

use std::fmt;
use std::time::Duration;

use crate::load::Measurement;

/// One scenario's output.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) title: String,
    /// Markdown: what was run, then the tables.
    pub(crate) body: String,
    pub(crate) checks: Vec<Check>,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "## {}\n\n{}", self.title, self.body.trim_end())?;
        if !self.checks.is_empty() {
            writeln!(f, "\n{}", checks_table(&self.checks))?;
        }
        Ok(())
    }
}

/// A ratio held to a target.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) what: String,
    pub(crate) ratio: f64,
    pub(crate) target: Target,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Check {
    pub(crate) fn new(what: impl Into<String>, ratio: f64, target: Target) -> Self {
        Self { what: what.into(), ratio, target }
    }

    pub(crate) fn met(&self) -> bool {
        match self.target {
            Target::AtLeast(t) => self.ratio >= t,
            Target::AtMost(t) => self.ratio <= t,
        }
    }

    /// "met", or how far from the target as a fraction of it.
    fn verdict(&self) -> String {
        let shortfall = match self.target {
            Target::AtLeast(t) => 1.0 - self.ratio / t,
            Target::AtMost(t) => self.ratio / t - 1.0,
        };
        if self.met() { "met".to_owned() } else { format!("missed by {:.0}%", shortfall * 100.0) }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtLeast(t) => write!(f, "≥ {t}×"),
            Self::AtMost(t) => write!(f, "≤ {t}×"),
        }
    }
}

fn checks_table(checks: &[Check]) -> Table {
    let mut table = Table::new(["target", "ratio", "wanted", "verdict"]);
    for c in checks {
        table.row([c.what.clone(), ratio(c.ratio), c.target.to_string(), c.verdict()]);
    }
    table
}

/// Every scenario's checks in one table.
pub(crate) fn summary(sections: &[Section]) -> String {
    let mut table = Table::new(["scenario", "target", "ratio", "wanted", "verdict"]);
    for section in sections {
        for c in &section.checks {
            table.row([section.title.clone(), c.what.clone(), ratio(c.ratio), c.target.to_string(), c.verdict()]);
        }
    }
    format!("## Summary\n\n{table}")
}

/// A markdown table with padded columns, readable as plain text too.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = |i: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            for (cell, w) in cells.iter().zip(&widths) {
                write!(f, "| {cell}{} ", " ".repeat(w - cell.chars().count()))?;
            }
            writeln!(f, "|")
        };
        line(f, &self.header)?;
        for w in &widths {
            write!(f, "|{}", "-".repeat(w + 2))?;
        }
        writeln!(f, "|")?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// The usual columns for a run: events/s, commands or appends/s, p50, p99.
pub(crate) fn run_row(label: &str, m: &Measurement) -> [String; 6] {
    [
        label.to_owned(),
        rate(m.events_per_sec()),
        rate(m.ops_per_sec()),
        latency(m.p50()),
        latency(m.p99()),
        m.ops.to_string(),
    ]
}

pub(crate) const RUN_HEADER: [&str; 6] = ["run", "events/s", "ops/s", "p50", "p99", "ops measured"];

/// The row of ratios `a / b` for the run columns.
pub(crate) fn ratio_row(label: &str, a: &Measurement, b: &Measurement) -> [String; 6] {
    [
        label.to_owned(),
        ratio(a.events_per_sec() / b.events_per_sec()),
        ratio(a.ops_per_sec() / b.ops_per_sec()),
        ratio(a.p50().as_secs_f64() / b.p50().as_secs_f64()),
        ratio(a.p99().as_secs_f64() / b.p99().as_secs_f64()),
        String::new(),
    ]
}

pub(crate) fn rate(per_sec: f64) -> String {
    if per_sec >= 100.0 { format!("{per_sec:.0}") } else { format!("{per_sec:.1}") }
}

pub(crate) fn latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 { format!("{ms:.0} ms") } else { format!("{ms:.2} ms") }
}

pub(crate) fn ratio(r: f64) -> String {
    format!("{r:.2}×")
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
