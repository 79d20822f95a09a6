//! The standard stack every polis service and the gateway run behind.
//!
//! [`with_standard_stack`] takes a service's finished `Router` and adds,
//! from the outside in:
//!
//! 1. **request id**: `x-request-id` on every request and response. A
//!    client's id is kept if it is 1 to 128 visible ASCII characters (so it
//!    can neither flood nor forge log lines), otherwise a UUIDv7 is made.
//!    Handlers read it with the [`RequestId`] extractor.
//! 2. **trace**: `tower_http`'s `TraceLayer`, one `http_request` span per
//!    request carrying the method, path, matched route and request id, a
//!    log line per response (`info`), and 5xx reported as errors. A valid
//!    W3C `traceparent` header makes the span continue the caller's trace
//!    (its remote child; [`TRACEPARENT_HEADER`]), so a trace crosses HTTP
//!    hops as it crosses message hops (`polis_core::trace`).
//! 3. **panics**: a panicking handler answers a 500 problem instead of
//!    dropping the connection; the panic message is logged.
//! 4. **problems everywhere**: an error response that is not already
//!    `application/problem+json` (axum's own rejections, e.g. a `Path`
//!    that does not parse) is rewritten as an `about:blank` problem with
//!    the same status and headers; a short plain-text 4xx body becomes the
//!    `detail`, any other body is dropped (a handler that wants to say more
//!    returns an [`ApiError`]). So clients meet exactly one error shape.
//! 5. **body limit and deadline** ([`HttpOptions::max_body_bytes`], default
//!    64 KiB; [`HttpOptions::body_read_timeout_ms`], default 30 s): a
//!    declared `content-length` over the limit is answered 413 before the
//!    handler runs; a body that turns out larger while streaming fails to
//!    read, which [`Json`] answers with the same 413; a body that has not
//!    fully arrived by the deadline (counted from when the request reached
//!    the stack) fails to read too, which [`Json`] answers 408.
//!
//! plus `GET /healthz` (which reads no query parameters, [`crate::NoQuery`]),
//! `GET /metrics` (the process's Prometheus series, [`crate::metrics`]),
//! a 404 problem for unknown paths and a 405 problem (keeping axum's `allow`
//! header) for known paths with the wrong method.

use std::any::Any;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::DeadlineBody;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::json::Json;
use crate::problem::{ApiError, PROBLEM_JSON};

/// The request id header.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The W3C trace context header: honoured on every request by
/// [`with_standard_stack`], sent by callers that continue a trace.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

/// The health check route added by [`with_standard_stack`].
pub const HEALTH_PATH: &str = "/healthz";

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Longest plain-text error body that becomes a problem's `detail`; longer
/// ones are not meant for clients.
const MAX_DETAIL_BYTES: usize = 1024;

/// The `http` section of a service's configuration.
///
/// The four timeouts bound how long a client can hold a connection without
/// making progress (slowloris); [`crate::serve`] applies the head, idle and
/// shutdown ones, [`with_standard_stack`] the body one. Each is in
/// milliseconds, so that a TOML file and a `POLIS__HTTP__…` variable
/// write it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Address to listen on (default `127.0.0.1:8080`); port 0 picks a
    /// free port.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (default 64 KiB).
    pub max_body_bytes: usize,
    /// How long a client has to send a request's head (request line and
    /// headers), in milliseconds (default 10 000): from the connection's
    /// accept for its first request, from the head's first byte for later
    /// ones. Past it the connection is closed without an answer, as there
    /// is no request to answer.
    pub header_read_timeout_ms: NonZeroU64,
    /// How long a request's whole body may take to arrive once the request
    /// reached the service, in milliseconds (default 30 000, ample for 64
    /// KiB at modem speed). Past it the read fails and [`Json`] answers
    /// 408.
    pub body_read_timeout_ms: NonZeroU64,
    /// How long a keep-alive connection may wait for its next request, in
    /// milliseconds (default 75 000: longer than the gateway's 60 s pool
    /// idle timeout, so that the client side closes an idle connection
    /// first and never sends on one the server is closing).
    pub idle_timeout_ms: NonZeroU64,
    /// On shutdown, how long requests in flight get to finish, in
    /// milliseconds (default 10 000); then the remaining connections are
    /// closed and `serve` returns. 0 closes them at once.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_body_bytes: 64 * 1024,
            header_read_timeout_ms: millis(10_000),
            body_read_timeout_ms: millis(30_000),
            idle_timeout_ms: millis(75_000),
            shutdown_grace_ms: 10_000,
        }
    }
}

impl HttpOptions {
    /// These options listening on `listen` (port 0 picks a free port).
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// These options accepting request bodies of at most `bytes` bytes; a
    /// larger one is answered 413.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets [`HttpOptions::header_read_timeout_ms`] (whole milliseconds, rounded up, at least 1).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout_ms = crate::config::whole_millis(timeout);
        self
    }

    /// Sets [`HttpOptions::body_read_timeout_ms`] (whole milliseconds, rounded up, at least 1).
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout_ms = crate::config::whole_millis(timeout);
        self
    }

    /// Sets [`HttpOptions::idle_timeout_ms`] (whole milliseconds, rounded up, at least 1).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout_ms = crate::config::whole_millis(timeout);
        self
    }

    /// Sets [`HttpOptions::shutdown_grace_ms`].
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace_ms = grace.as_millis().try_into().unwrap_or(u64::MAX);
        self
    }

    /// How long a client may take to send a request head ([`HttpOptions::header_read_timeout_ms`]).
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms.get())
    }

    /// How long a client may take to send a request body before the read fails
    /// with 408 ([`HttpOptions::body_read_timeout_ms`]).
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms.get())
    }

    /// How long a keep-alive connection may wait for its next request
    /// ([`HttpOptions::idle_timeout_ms`]).
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.get())
    }

    /// How long requests in flight get to finish at shutdown before their
    /// connections are closed ([`HttpOptions::shutdown_grace_ms`]).
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

const fn millis(millis: u64) -> NonZeroU64 {
    match NonZeroU64::new(millis) {
        Some(millis) => millis,
        None => NonZeroU64::MIN,
    }
}

/// Wraps a service's router in the standard stack (see the module docs).
///
/// Pass the router with all its routes: the 405 handler is attached to the
/// routes that exist at this point. The stack installs its own fallback
/// (the 404 problem); services should not set one.
///
/// # Panics
///
/// Like any axum route registration, if the router already has a
/// `GET /healthz` or `GET /metrics` route.
pub fn with_standard_stack<S>(router: Router<S>, options: &HttpOptions) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let limit = options.max_body_bytes;
    let guard = BodyGuard { limit, deadline: options.body_read_timeout() };
    // `Router::layer` wraps routes and fallbacks alike; the last layer added
    // is the outermost.
    let router = match crate::metrics::prometheus() {
        Some(_) => router.route(crate::metrics::METRICS_PATH, get(crate::metrics::serve_metrics)),
        None => router,
    };
    router
        .route(HEALTH_PATH, get(healthz))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // axum's own extractors (Bytes, String, ...) apply their default 2 MiB
        // limit on top of ours unless told the same number.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(guard, guard_body))
        .layer(middleware::from_fn(problems_everywhere))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(middleware::from_fn(request_id))
}

async fn healthz(_: crate::query::NoQuery) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(parts: Parts) -> ApiError {
    ApiError::not_found(format!("no resource at {}", parts.uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The id of the current request, as sent back in `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    id: String,
    header: HeaderValue,
}

impl RequestId {
    /// A fresh UUIDv7: time-ordered, so ids sort by arrival in logs.
    pub fn generate() -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        // A hyphenated UUID is always a valid header value.
        let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Self { id, header }
    }

    /// A client's id, if it is 1 to 128 visible ASCII characters.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let acceptable =
            !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(|b| b.is_ascii_graphic());
        if !acceptable {
            return None;
        }
        let id = value.to_str().ok()?.to_owned();
        Some(Self { id, header: value.clone() })
    }

    /// The id as text, for logs and for passing on to upstream requests.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<RequestId>().cloned().ok_or_else(|| {
            ApiError::internal("no request id on the request; wrap the router with polis_runtime::with_standard_stack")
        })
    }
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req.headers().get(&REQUEST_ID_HEADER).and_then(RequestId::parse).unwrap_or_else(RequestId::generate);
    // Rewritten on the request too, so a handler that forwards headers
    // (the gateway) passes on the id that was logged.
    req.headers_mut().insert(REQUEST_ID_HEADER, id.header.clone());
    req.extensions_mut().insert(id.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id.header);
    response
}

fn request_span(req: &Request) -> Span {
    let request_id = req.extensions().get::<RequestId>().map_or("", RequestId::as_str);
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    // The path, not the URI: query strings may carry what logs must not keep.
    let span = tracing::info_span!(
        "http_request",
        otel.kind = "server",
        method = %req.method(),
        path = req.uri().path(),
        route,
        request_id,
    );
    let traceparent = req.headers().get(&TRACEPARENT_HEADER).and_then(|value| value.to_str().ok());
    polis_core::trace::set_remote_parent(&span, traceparent);
    span
}

/// The configured body limit, for rejections that want to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// The configured body read timeout, for rejections that want to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyDeadline(pub(crate) Duration);

/// What [`guard_body`] enforces on every request body.
#[derive(Debug, Clone, Copy)]
struct BodyGuard {
    limit: usize,
    deadline: Duration,
}

async fn guard_body(State(guard): State<BodyGuard>, mut req: Request, next: Next) -> Response {
    let BodyGuard { limit, deadline } = guard;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return ApiError::payload_too_large(format!("the request body is larger than the limit of {limit} bytes"))
            .with_extension("limit_bytes", limit)
            .into_response();
    }
    // Chunked or lying bodies are cut off while they stream. The deadline
    // is for the whole body, not between chunks: a client trickling a byte
    // now and then must not hold the request open either.
    req.extensions_mut().insert(BodyLimit(limit));
    req.extensions_mut().insert(BodyDeadline(deadline));
    let req = req.map(|body| axum::body::Body::new(DeadlineBody::new(deadline, Limited::new(body, limit))));
    next.run(req).await
}

async fn problems_everywhere(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = if status.is_client_error() && is_plain_text(&parts.headers) {
        match Limited::new(body, MAX_DETAIL_BYTES).collect().await {
            Ok(collected) => String::from_utf8(collected.to_bytes().to_vec()).ok(),
            Err(_) => None,
        }
    } else {
        None
    };
    let mut problem = ApiError::from_status(status);
    if let Some(detail) = detail.as_deref().map(str::trim).filter(|detail| !detail.is_empty()) {
        problem = problem.with_detail(detail);
    }
    let mut rewritten = problem.into_response();
    // Keep what else the response said (allow, www-authenticate,
    // retry-after, ...), but not how its old body was framed.
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    rewritten.headers_mut().extend(parts.headers);
    rewritten
}

fn is_problem(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|media_type| media_type.eq_ignore_ascii_case(PROBLEM_JSON))
}

fn is_plain_text(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|media_type| media_type.eq_ignore_ascii_case("text/plain"))
}

/// The content type without parameters.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    value.split(';').next().map(str::trim)
}

/// Why a handler panicked, for the log.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
struct Panicked(String);

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string payload".to_owned()
    };
    ApiError::internal(Panicked(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_short_and_visible() {
        let keep = |value: &'static str| RequestId::parse(&HeaderValue::from_static(value)).is_some();
        assert!(keep("abc-123"));
        assert!(keep("0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70"));
        assert!(!keep(""));
        assert!(!keep("has space"));
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        assert!(RequestId::parse(&HeaderValue::from_str(&long).unwrap()).is_none());
        let max = "x".repeat(MAX_REQUEST_ID_LEN);
        assert!(RequestId::parse(&HeaderValue::from_str(&max).unwrap()).is_some());
        let non_ascii = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(RequestId::parse(&non_ascii).is_none());
    }

    #[test]
    fn generated_request_ids_are_uuid_v7() {
        let id = RequestId::generate();
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
    }

    #[test]
    fn default_options_limit_bodies_to_64_kib() {
        assert_eq!(HttpOptions::default().max_body_bytes, 65_536);
    }

    #[test]
    fn default_timeouts_are_the_documented_ones() {
        let options = HttpOptions::default();
        assert_eq!(options.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(options.body_read_timeout(), Duration::from_secs(30));
        assert_eq!(options.idle_timeout(), Duration::from_secs(75));
        assert_eq!(options.shutdown_grace(), Duration::from_secs(10));
        // A zero read timeout would close every connection at once.
        assert_eq!(options.with_idle_timeout(Duration::ZERO).idle_timeout(), Duration::from_millis(1));
    }
}
