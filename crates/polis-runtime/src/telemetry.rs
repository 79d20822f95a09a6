//! Logging and tracing set-up for every polis binary.
//!
//! One subscriber, installed by [`init_tracing_with`]:
//!
//! - **logs** on standard error, filtered by `RUST_LOG` (default `info`, or
//!   the binary's own default), as text with ANSI colours only when standard
//!   error is a terminal (a log redirected to a file, a supervised
//!   service's, holds plain text), or one JSON object per line with
//!   `POLIS_LOG_FORMAT=json`;
//! - **traces**, only when an OTLP endpoint is configured
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   for traces alone; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//!   turn it off again): an OpenTelemetry layer ([`trace_layer`]) whose spans
//!   a batch processor exports over OTLP/HTTP with protobuf bodies, on a
//!   thread of its own. The spans it sees are filtered apart from the logs,
//!   by `POLIS_TRACE_FILTER` (default [`DEFAULT_TRACE_FILTER`]), so a quiet
//!   log does not thin out the traces. With no endpoint there is no
//!   OpenTelemetry layer at all: `polis_core::trace` captures nothing and a
//!   span costs what it cost before.
//!
//! `OTEL_SERVICE_NAME` names the process in the traces (default `polis`),
//! `OTEL_RESOURCE_ATTRIBUTES` adds attributes; the exporter reads the other
//! standard `OTEL_EXPORTER_OTLP_*` variables (headers, timeout). The
//! endpoint is plain `http://` (a collector next to the process).
//!
//! Installing a global subscriber can happen once per process; a second
//! call, or one after something else installed a subscriber (another test
//! in the same binary), leaves it in place and succeeds, so tests can call
//! it freely.

use std::env::VarError;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::RuntimeError;

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// The spans and events traces keep when `POLIS_TRACE_FILTER` is unset or
/// empty: everything at `info` and above, but the database driver's and
/// the HTTP and NATS clients' own (a statement is not a hop).
pub const DEFAULT_TRACE_FILTER: &str = "info,sqlx=warn,hyper=warn,hyper_util=warn,async_nats=warn,tower=warn";

/// The variable choosing the log format: `text` (the default) or `json`.
pub const LOG_FORMAT_VAR: &str = "POLIS_LOG_FORMAT";

/// The variable filtering what traces keep (`RUST_LOG` syntax).
pub const TRACE_FILTER_VAR: &str = "POLIS_TRACE_FILTER";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector answer read back.
const MAX_EXPORT_ANSWER: usize = 1024 * 1024;

/// The process's telemetry, once installed: flushes the spans not yet
/// exported when dropped (so keep it alive until the process ends).
#[derive(Debug)]
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint is configured and this
    /// call installed the subscriber).
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("could not flush the last spans: {err}");
        }
    }
}

/// Installs the process-wide subscriber unless one is already installed.
///
/// An unparsable `RUST_LOG` is an error rather than a silent fallback: a
/// service that is not logging what its operator asked for should not start
/// quietly. So are an unknown `POLIS_LOG_FORMAT`, an unparsable
/// `POLIS_TRACE_FILTER` and an OTLP endpoint the exporter cannot use.
pub fn init_tracing() -> Result<Telemetry, RuntimeError> {
    init_tracing_with(DEFAULT_FILTER)
}

/// [`init_tracing`] with `default` as the filter when `RUST_LOG` is unset
/// or empty (a command-line tool's quieter default, say).
pub fn init_tracing_with(default: &str) -> Result<Telemetry, RuntimeError> {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV), default)?;
    let json = match std::env::var(LOG_FORMAT_VAR).as_deref().map(str::trim) {
        Ok("json") => true,
        Ok("text" | "") | Err(VarError::NotPresent) => false,
        Ok(other) => {
            return Err(RuntimeError::Telemetry(format!("{LOG_FORMAT_VAR} must be text or json, not {other:?}")));
        }
        Err(VarError::NotUnicode(_)) => {
            return Err(RuntimeError::Telemetry(format!("{LOG_FORMAT_VAR} is not valid UTF-8")));
        }
    };
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = if json { logs.json().boxed() } else { logs.boxed() };
    let provider = if export_configured() { Some(otlp_provider()?) } else { None };
    let traces = provider.as_ref().map(trace_layer).transpose()?;
    let installed = tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init().is_ok();
    if !installed {
        tracing::debug!("a tracing subscriber is already installed; keeping it");
        // Not ours to export from: flush nothing, stop its thread now.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry { provider: None });
    }
    if provider.is_some() {
        tracing::info!(filter = %trace_filter_directives(), "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// The OpenTelemetry layer over `provider`'s tracer, filtered by
/// `POLIS_TRACE_FILTER`: what [`init_tracing_with`] installs when export is
/// configured, and what a test installs over an in-memory exporter.
pub fn trace_layer<S>(provider: &SdkTracerProvider) -> Result<impl Layer<S> + use<S>, RuntimeError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let directives = trace_filter_directives();
    let filter = EnvFilter::try_new(&directives)
        .map_err(|err| RuntimeError::Telemetry(format!("invalid {TRACE_FILTER_VAR} {directives:?}: {err}")))?;
    Ok(tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("polis"))
        // Neither busy / idle times, nor threads, nor source locations:
        // attributes per span that a trace of hops does not need.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter))
}

fn trace_filter_directives() -> String {
    match std::env::var(TRACE_FILTER_VAR) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => DEFAULT_TRACE_FILTER.to_owned(),
    }
}

/// Whether the environment asks for trace export.
fn export_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let is = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

fn otlp_provider() -> Result<SdkTracerProvider, RuntimeError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(OtlpClient::new()?)
        .build()
        .map_err(|err| RuntimeError::Telemetry(format!("cannot export traces over OTLP: {err}")))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("polis");
    }
    Ok(SdkTracerProvider::builder().with_resource(resource.build()).with_batch_exporter(exporter).build())
}

/// The OTLP exporter's HTTP client: hyper's (HTTP/1, plain http), driven by
/// a runtime of its own, because the batch processor exports from its own
/// thread, outside any runtime, and blocks it while a request is out.
struct OtlpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

impl OtlpClient {
    fn new() -> Result<Self, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| RuntimeError::Telemetry(format!("cannot start the trace exporter's runtime: {err}")))?;
        // No idle connections kept: between exports nothing drives them.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
        Ok(Self { client, runtime: Some(runtime) })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self.runtime.as_ref().ok_or("the trace exporter's runtime is gone")?;
        let request = request.map(Full::new);
        runtime.block_on(async {
            let response = tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(request))
                .await
                .map_err(|_| format!("no answer from the OTLP endpoint within {EXPORT_TIMEOUT:?}"))??;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_EXPORT_ANSWER).collect().await?.to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}

impl Drop for OtlpClient {
    fn drop(&mut self) {
        // Dropped on the exporter's thread, or anywhere: never block here.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn filter(variable: Result<String, VarError>, default: &str) -> Result<EnvFilter, RuntimeError> {
    let directives = match variable {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(VarError::NotPresent) => default.to_owned(),
        Err(VarError::NotUnicode(_)) => {
            return Err(RuntimeError::LogFilter { value: String::new(), reason: "not valid UTF-8".to_owned() });
        }
    };
    EnvFilter::try_new(&directives)
        .map_err(|err| RuntimeError::LogFilter { value: directives, reason: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_or_empty_variable_means_info() {
        assert_eq!(filter(Err(VarError::NotPresent), DEFAULT_FILTER).unwrap().to_string(), "info");
        assert_eq!(filter(Ok("  ".into()), DEFAULT_FILTER).unwrap().to_string(), "info");
    }

    #[test]
    fn a_binarys_own_default_stands_in_for_an_unset_variable() {
        let quiet = filter(Err(VarError::NotPresent), "warn,polis=info").unwrap().to_string();
        assert!(quiet.contains("polis=info") && quiet.contains("warn"), "{quiet}");
        assert_eq!(filter(Ok("debug".into()), "warn,polis=info").unwrap().to_string(), "debug");
    }

    #[test]
    fn directives_are_taken_as_given() {
        let filter = filter(Ok("warn,polis_bus=debug".into()), DEFAULT_FILTER).unwrap().to_string();
        assert!(filter.contains("polis_bus=debug") && filter.contains("warn"), "{filter}");
    }

    #[test]
    fn an_invalid_filter_is_an_error_naming_it() {
        let err = filter(Ok("polis=loud".into()), DEFAULT_FILTER).unwrap_err();
        assert!(err.to_string().contains("polis=loud"), "{err}");
        assert!(matches!(
            filter(Err(VarError::NotUnicode("x".into())), DEFAULT_FILTER),
            Err(RuntimeError::LogFilter { .. })
        ));
    }

    #[test]
    fn the_default_trace_filter_parses() {
        assert!(EnvFilter::try_new(DEFAULT_TRACE_FILTER).is_ok());
    }
}
