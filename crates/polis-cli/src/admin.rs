//! The operators' commands, against a running shop through its gateway
//! (`--url`, `http://127.0.0.1:8080` by default: what `polis up` serves in
//! either mode), whose `/api/admin` routes ask every service at once:
//!
//! - `polis dlq list|show ID|replay ID|discard ID`: the dead letters of
//!   every service (or `--service`'s), each saying whose it is;
//! - `polis sagas [--state S] [--in-flight|--finished]`: saga instances,
//!   or with `--counts` how many are in flight by type and state;
//! - `polis events STREAM`: a stream's events, from the log that holds it.
//!
//! Answers print as aligned tables, or as the API's JSON with `--json`. A
//! list prints one page (`--limit`, 100 by default) and says on stderr how
//! to ask for the next (`--after`). A shop that cannot be reached, or an
//! answer that is a problem (no such dead letter, a replay that failed
//! again), is an error: its message on stderr, exit status 1.

use anyhow::{Context, bail};
use axum::http::{Method, StatusCode};
use clap::{Args, Subcommand};
use contracts::Service;
use gateway::admin::{DeadLetter, DeadLetterStatus, Resolved, Saga, SagasInFlight, StreamEvent};
use gateway::openapi::Problem;
use serde::de::DeserializeOwned;
use shop::client::Endpoint;
use uuid::Uuid;

/// Where the shop is and how to print its answers.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The running shop's gateway (`polis up --listen`).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = gateway_url)]
    url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The page a list command asks for.
#[derive(Debug, Args)]
pub(crate) struct PageArgs {
    /// At most this many items (1 to 10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List the dead letters of every service, oldest first.
    List {
        /// Only this service's.
        #[arg(long, value_parser = business_service())]
        service: Option<Service>,
        #[command(flatten)]
        page: PageArgs,
        /// Only those after this dead letter id (the last one of the previous page).
        #[arg(long, value_parser = id)]
        after: Option<Uuid>,
        #[command(flatten)]
        target: Target,
    },
    /// Show a dead letter: its message, its error, where it is.
    Show {
        /// The dead letter's id (from `polis dlq list`).
        #[arg(value_parser = id)]
        id: Uuid,
        #[command(flatten)]
        target: Target,
    },
    /// Run a dead letter's message through its handler again (then the messages parked behind it).
    Replay {
        /// The dead letter's id.
        #[arg(value_parser = id)]
        id: Uuid,
        #[command(flatten)]
        target: Target,
    },
    /// Drop a dead letter without handling it (then replay the messages parked behind it).
    Discard {
        /// The dead letter's id.
        #[arg(value_parser = id)]
        id: Uuid,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SagasArgs {
    /// Only sagas in this state (e.g. `authorizing`; `running` / `finished` for sagas that do not name theirs).
    #[arg(long, value_parser = state_name)]
    state: Option<String>,
    /// Only sagas still in flight.
    #[arg(long, conflicts_with = "finished")]
    in_flight: bool,
    /// Only finished sagas.
    #[arg(long)]
    finished: bool,
    /// Count the sagas in flight by service, type and state instead of listing them.
    #[arg(long, conflicts_with_all = ["state", "in_flight", "finished", "after"])]
    counts: bool,
    /// Only this service's.
    #[arg(long, value_parser = business_service())]
    service: Option<Service>,
    #[command(flatten)]
    page: PageArgs,
    /// Only sagas after this one: `<service>:<saga type>:<saga id>` of the last one of the previous page.
    #[arg(long)]
    after: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// The stream, e.g. `order-<id>` (an order's events) or `customer/<id>` (as a service ingested them).
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    stream: String,
    /// The service whose log to read (needed when several hold the stream).
    #[arg(long, value_parser = business_service())]
    service: Option<Service>,
    #[command(flatten)]
    page: PageArgs,
    /// Only events after this version (the last one of the previous page).
    #[arg(long)]
    after: Option<u64>,
    #[command(flatten)]
    target: Target,
}

/// `--url`'s parser: a URL the gateway's client can call (plain http).
fn gateway_url(text: &str) -> Result<String, String> {
    gateway::Upstream::remote(text).map(|_| text.to_owned()).map_err(|err| err.to_string())
}

/// An id's parser: a UUID in its hyphenated form.
fn id(text: &str) -> Result<Uuid, String> {
    polis_runtime::id::parse_uuid(text).ok_or_else(|| polis_runtime::id::UUID_FORM.to_owned())
}

fn state_name(text: &str) -> Result<String, String> {
    polis_saga::is_state_name(text).then(|| text.to_owned()).ok_or_else(|| polis_saga::STATE_NAME_FORM.to_owned())
}

/// A service name's parser: the shop's business services, listed by `--help`.
fn business_service() -> impl clap::builder::TypedValueParser<Value = Service> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Service::BUSINESS.map(Service::as_str))
        .try_map(|name| name.parse::<Service>().map_err(|e| format!("{e:?}")))
}

/// The gateway, and how to print.
struct Shop {
    endpoint: Endpoint,
    url: String,
    json: bool,
}

impl Shop {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let endpoint = Endpoint::remote(&target.url)?;
        Ok(Self { endpoint, url: target.url.clone(), json: target.json })
    }

    /// Calls the gateway; a problem answer is an error saying what the shop said.
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.endpoint.call(method.clone(), path, None::<&()>).await.with_context(|| {
            format!("cannot reach the shop's gateway at {} (is the shop running? `polis up`, or --url)", self.url)
        })?;
        if status != StatusCode::OK {
            let said = serde_json::from_slice::<Problem>(&body)
                .ok()
                .and_then(|problem| problem.detail)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{said} ({status} from {method} {path})");
        }
        serde_json::from_slice(&body).with_context(|| format!("reading the answer of {method} {path}"))
    }

    fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// `?name=value&...` of the given parameters (values written so that no
/// encoding is needed, or encoded).
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let pairs: Vec<String> =
        pairs.iter().filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={value}"))).collect();
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

use gateway::upstream::encode_segment as encode;

pub(crate) async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { service, page, after, target } => {
            let shop = Shop::new(&target)?;
            let path = format!(
                "/api/admin/dead-letters{}",
                query(&[
                    ("service", service.map(|s| s.as_str().to_owned())),
                    ("limit", Some(page.limit.to_string())),
                    ("after", after.map(|id| id.to_string())),
                ])
            );
            let letters: Vec<DeadLetter> = shop.call(Method::GET, &path).await?;
            if shop.json {
                return shop.print_json(&letters);
            }
            let rows = letters.iter().map(|l| {
                let message_type = l.message.as_ref().map_or("(malformed)", |m| m.message_type.as_str());
                vec![
                    l.service.clone(),
                    l.id.to_string(),
                    status(l.status).to_owned(),
                    message_type.to_owned(),
                    l.key.clone().unwrap_or_default(),
                    l.attempts.to_string(),
                    l.failed_at.clone(),
                    l.error.clone(),
                ]
            });
            let headers = ["SERVICE", "ID", "STATUS", "TYPE", "KEY", "ATTEMPTS", "FAILED AT", "ERROR"];
            print_table(&headers, rows.collect(), "no dead letters");
            more(letters.len(), page.limit, letters.last().map(|l| l.id.to_string()));
            Ok(())
        }
        DlqCommand::Show { id, target } => {
            let shop = Shop::new(&target)?;
            let letter: DeadLetter = shop.call(Method::GET, &format!("/api/admin/dead-letters/{id}")).await?;
            if shop.json {
                return shop.print_json(&letter);
            }
            let mut fields = vec![
                ("id", letter.id.to_string()),
                ("service", letter.service.clone()),
                ("consumer", letter.consumer.clone()),
                ("status", status(letter.status).to_owned()),
                ("error", letter.error.clone()),
                ("attempts", letter.attempts.to_string()),
                ("failed at", letter.failed_at.clone()),
                ("message id", letter.message_id.map(|id| id.to_string()).unwrap_or_default()),
                ("key", letter.key.clone().unwrap_or_default()),
            ];
            if let Some(message) = &letter.message {
                fields.extend([
                    ("kind", message.kind.clone()),
                    ("type", message.message_type.clone()),
                    ("source", message.source.clone()),
                    ("target", message.target.clone()),
                    ("time", message.time.clone()),
                    ("data", serde_json::to_string_pretty(&message.data)?),
                ]);
            }
            if let Some(raw) = &letter.raw {
                fields.push(("raw", raw.clone()));
            }
            let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
            for (name, value) in fields {
                // A multi-line value (the data) is indented under its name.
                let value = value.replace('\n', &format!("\n{:width$}  ", ""));
                println!("{name:width$}  {value}");
            }
            Ok(())
        }
        DlqCommand::Replay { id, target } => resolve(&target, id, "replay").await,
        DlqCommand::Discard { id, target } => resolve(&target, id, "discard").await,
    }
}

async fn resolve(target: &Target, id: Uuid, action: &str) -> anyhow::Result<()> {
    let shop = Shop::new(target)?;
    let resolved: Resolved = shop.call(Method::POST, &format!("/api/admin/dead-letters/{id}/{action}")).await?;
    if shop.json {
        return shop.print_json(&resolved);
    }
    let done = if action == "replay" { "replayed" } else { "discarded" };
    println!("{done} dead letter {} of the {} service", resolved.id, resolved.service);
    if let Some(failed) = &resolved.parked_failed {
        eprintln!(
            "warning: a message parked behind it failed when replayed and is now dead letter {}: {}",
            failed.id, failed.error
        );
    }
    Ok(())
}

pub(crate) async fn sagas(args: SagasArgs) -> anyhow::Result<()> {
    let shop = Shop::new(&args.target)?;
    let service = args.service.map(|s| s.as_str().to_owned());
    if args.counts {
        let path = format!("/api/admin/sagas/in-flight{}", query(&[("service", service)]));
        let counts: Vec<SagasInFlight> = shop.call(Method::GET, &path).await?;
        if shop.json {
            return shop.print_json(&counts);
        }
        let rows =
            counts.iter().map(|c| vec![c.service.clone(), c.saga_type.clone(), c.state.clone(), c.count.to_string()]);
        print_table(&["SERVICE", "TYPE", "STATE", "IN FLIGHT"], rows.collect(), "no sagas in flight");
        return Ok(());
    }
    let finished = match (args.in_flight, args.finished) {
        (true, _) => Some("false".to_owned()),
        (_, true) => Some("true".to_owned()),
        _ => None,
    };
    let path = format!(
        "/api/admin/sagas{}",
        query(&[
            ("service", service),
            ("state", args.state.clone()),
            ("finished", finished),
            ("limit", Some(args.page.limit.to_string())),
            ("after", args.after.as_deref().map(encode)),
        ])
    );
    let sagas: Vec<Saga> = shop.call(Method::GET, &path).await?;
    if shop.json {
        return shop.print_json(&sagas);
    }
    let rows = sagas.iter().map(|s| {
        vec![
            s.service.clone(),
            s.saga_type.clone(),
            s.saga_id.clone(),
            s.state.clone(),
            if s.finished { "yes" } else { "no" }.to_owned(),
            s.updated_at.clone(),
            s.deadline.clone().unwrap_or_default(),
        ]
    });
    let headers = ["SERVICE", "TYPE", "ID", "STATE", "FINISHED", "UPDATED AT", "DEADLINE"];
    print_table(&headers, rows.collect(), "no sagas");
    more(sagas.len(), args.page.limit, sagas.last().map(Saga::cursor));
    Ok(())
}

pub(crate) async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let shop = Shop::new(&args.target)?;
    let path = format!(
        "/api/admin/events/{}{}",
        encode(&args.stream),
        query(&[
            ("service", args.service.map(|s| s.as_str().to_owned())),
            ("limit", Some(args.page.limit.to_string())),
            ("after", args.after.map(|v| v.to_string())),
        ])
    );
    let events: Vec<StreamEvent> = shop.call(Method::GET, &path).await?;
    if shop.json {
        return shop.print_json(&events);
    }
    let rows = events.iter().map(|e| {
        vec![e.service.clone(), e.version.to_string(), e.event_type.clone(), e.time.clone(), e.data.to_string()]
    });
    print_table(&["SERVICE", "VERSION", "TYPE", "TIME", "DATA"], rows.collect(), "no events");
    more(
        events.len(),
        args.page.limit,
        events.last().map(|e| format!("polis events {} --after {}", args.stream, e.version)),
    );
    Ok(())
}

fn status(status: DeadLetterStatus) -> &'static str {
    match status {
        DeadLetterStatus::Dead => "dead",
        DeadLetterStatus::Parked => "parked",
    }
}

/// On stderr, how to read the next page (`after`: the last item's key), if this one was full.
fn more(received: usize, limit: u32, after: Option<String>) {
    if received >= limit as usize
        && let Some(after) = after
    {
        eprintln!("(more may follow: ask again with --after {after})");
    }
}

/// The widest a cell is printed; longer text ends in `…`.
const MAX_CELL_CHARS: usize = 80;

/// `rows` under `headers` in columns two spaces apart, each as wide as its
/// widest cell; `empty` instead when there are no rows. Control characters
/// (a newline in an error) print as spaces, so each row stays one line.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>, empty: &str) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    print!("{}", table(headers, rows));
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let cell = |text: &str| -> String {
        let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        match clean.char_indices().nth(MAX_CELL_CHARS - 1) {
            Some((cut, _)) if clean.chars().count() > MAX_CELL_CHARS => format!("{}…", &clean[..cut]),
            _ => clean,
        }
    };
    let rows: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows.into_iter().map(|row| row.iter().map(|c| cell(c)).collect()))
        .collect();
    let mut widths = vec![0; headers.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns_and_keep_each_row_on_one_line() {
        let rows = vec![
            vec!["payment".to_owned(), "1".to_owned(), "a\nb".to_owned()],
            vec!["order-history".to_owned(), "22".to_owned(), "x".repeat(100)],
        ];
        let printed = table(&["SERVICE", "N", "ERROR"], rows);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines[0], "SERVICE        N   ERROR");
        assert_eq!(lines[1], "payment        1   a b");
        assert_eq!(lines[2], format!("order-history  22  {}…", "x".repeat(79)));
    }

    #[test]
    fn queries_leave_out_what_is_not_given() {
        assert_eq!(query(&[("a", None), ("b", None)]), "");
        assert_eq!(query(&[("a", Some("1".into())), ("b", None), ("c", Some("x".into()))]), "?a=1&c=x");
    }
}
