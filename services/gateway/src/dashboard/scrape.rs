//! Reading the Prometheus text format, as every polis process's
//! `GET /metrics` writes it: one sample per line, `name{label="value",...}
//! value`, comments starting with `#`.

use std::collections::BTreeMap;

/// One sample: a series and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// The samples of one or more scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Scrape {
    samples: Vec<Sample>,
}

/// Samples summed by the values of some labels, in their order.
pub(crate) type Sums = BTreeMap<Vec<String>, f64>;

impl Scrape {
    /// The samples of `text`, each given the label `process` = `process`
    /// (which process's memory and CPU they are). Lines that are not
    /// samples (or that this reader does not understand) are skipped: a
    /// dashboard shows what it can read.
    pub(crate) fn parse(text: &str, process: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(sample)
            .map(|mut sample| {
                sample.labels.push(("process".to_owned(), process.to_owned()));
                sample
            })
            .collect();
        Self { samples }
    }

    /// Adds another scrape's samples.
    pub(crate) fn extend(&mut self, other: Scrape) {
        self.samples.extend(other.samples);
    }

    /// The samples named `name`, summed by the values of the labels `by`
    /// (a missing label counts as empty).
    pub(crate) fn sum_by(&self, name: &str, by: &[&str]) -> Sums {
        let mut sums = Sums::new();
        for sample in self.samples.iter().filter(|sample| sample.name == name && sample.value.is_finite()) {
            let key = by.iter().map(|label| sample.label(label).unwrap_or_default().to_owned()).collect();
            *sums.entry(key).or_default() += sample.value;
        }
        sums
    }
}

/// `name{labels} value [timestamp]`, or `None`.
fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// The labels after a `{`, and what follows the closing `}`.
fn labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = &after_key[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP polis_outbox_backlog Messages written and not yet published.
# TYPE polis_outbox_backlog gauge
polis_outbox_backlog{service="order"} 3
polis_outbox_backlog{service="payment"} 0
polis_consumer_lag_seconds_sum{service="payment",consumer="payment"} 0.25
polis_consumer_lag_seconds_count{service="payment",consumer="payment"} 10
polis_http_request_duration_seconds_bucket{service="gateway",route="/api/x",le="+Inf"} 7
polis_audit_drifts{service="audit",kind="odd \"kind\", with\\ escapes"} 2
process_resident_memory_bytes 1.5e7
not a sample
"#;

    #[test]
    fn samples_are_read_with_their_labels_and_summed_by_some() {
        let scrape = Scrape::parse(TEXT, "shop");
        assert_eq!(scrape.samples.len(), 7);
        let backlog = scrape.sum_by("polis_outbox_backlog", &["service"]);
        assert_eq!(backlog[&vec!["order".to_owned()]], 3.0);
        assert_eq!(scrape.sum_by("polis_outbox_backlog", &[])[&Vec::new()], 3.0);
        let lag = scrape.sum_by("polis_consumer_lag_seconds_count", &["service", "consumer"]);
        assert_eq!(lag[&vec!["payment".to_owned(), "payment".to_owned()]], 10.0);
        let buckets = scrape.sum_by("polis_http_request_duration_seconds_bucket", &["le"]);
        assert_eq!(buckets[&vec!["+Inf".to_owned()]], 7.0);
        let drifts = scrape.sum_by("polis_audit_drifts", &["kind"]);
        assert_eq!(drifts[&vec!["odd \"kind\", with\\ escapes".to_owned()]], 2.0);
        let memory = scrape.sum_by("process_resident_memory_bytes", &["process"]);
        assert_eq!(memory[&vec!["shop".to_owned()]], 1.5e7);
    }

    #[test]
    fn scrapes_of_several_processes_add_up() {
        let mut scrape = Scrape::parse("polis_outbox_backlog{service=\"order\"} 3\n", "order");
        scrape.extend(Scrape::parse("polis_outbox_backlog{service=\"payment\"} 4\n", "payment"));
        assert_eq!(scrape.sum_by("polis_outbox_backlog", &[])[&Vec::new()], 7.0);
        assert_eq!(scrape.sum_by("polis_outbox_backlog", &["process"]).len(), 2);
    }

    #[test]
    fn broken_lines_are_skipped() {
        let scrape = Scrape::parse("a{b=\"c} 1\nd{e=\"f\"}\ng NaN\nh{i=\"j\"} x\n", "p");
        assert_eq!(scrape.samples.len(), 1, "{scrape:?}");
        assert!(scrape.sum_by("g", &[]).is_empty(), "NaN is no figure");
    }
}
