//! Reaching a service: in process or over HTTP, behind one [`Upstream::call`].
//!
//! The embedded deployment hosts every service in the gateway's process, so
//! an upstream is the service's `Router`, called with `oneshot` (no socket,
//! no serialization beyond the JSON bodies). The distributed deployment runs
//! each service in its own process, so an upstream is a base URL reached with
//! hyper's pooled HTTP/1 client. Handlers cannot tell the two apart: both
//! answer an [`UpstreamResponse`] or an [`UpstreamError`], within the same
//! timeout, which covers connecting, sending and reading the whole answer.
//!
//! Both kinds send the current span's trace context as `traceparent`, so
//! the service's request span continues the gateway's trace.
//!
//! A timed-out in-process call is dropped mid-flight, exactly as a service's
//! HTTP server drops a handler whose client went away: the service may or may
//! not have applied the request.
//!
//! **Several instances.** A remote upstream may name several instances of
//! the service (`http://a:8084,http://b:8084`, ADR 0011). Calls go to them
//! in turn. An instance that cannot be reached, or does not answer in time,
//! is *ejected*: skipped for a second, then two, doubling up to
//! [`MAX_EJECTION`] while it keeps failing, and tried again once that has
//! passed (an answer ends its ejection). When every instance is ejected the
//! least recently ejected is tried all the same. A call that failed on one
//! instance is made again on the next, within the same timeout, when that
//! is safe: the connection was never made (nothing was sent), or the call
//! can be repeated (`GET`, `HEAD`, `PUT`, `DELETE`, or a request with an
//! `idempotency-key`).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use contracts::Service;
use contracts::order::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use polis_runtime::RequestId;
use polis_runtime::layers::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::GatewayError;

/// A boxed error, the cause of an [`UpstreamError::Unavailable`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The largest answer read from a service, so that a faulty upstream cannot
/// make the gateway buffer without bound. Lists are paged, so a list's
/// answer is bounded by its page: a default page (1,000) of the largest
/// orders (100 lines, about 13 KB each) stays well under it, while a page at
/// the largest limit (10,000) of such orders would not (a 502; the client
/// asks for smaller pages).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// How long a pooled connection to a remote service may stay idle.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an instance is first skipped after a failure; doubled per
/// failure in a row, up to [`MAX_EJECTION`].
pub const FIRST_EJECTION: Duration = Duration::from_secs(1);

/// The longest an instance that keeps failing is skipped at a time.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// One service, as the gateway reaches it (see the module docs).
///
/// Cloning is cheap: clones share the router or the connection pool.
#[derive(Clone)]
pub struct Upstream {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Local(Router),
    Remote(Arc<Remote>),
}

struct Remote {
    instances: Vec<Instance>,
    /// The instance the next call starts with (round robin).
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Instance {
    /// `http://host:port` plus an optional path prefix, without a trailing slash.
    base: String,
    health: Mutex<Health>,
}

/// An instance's failures in a row and, after one, until when it is skipped.
#[derive(Debug, Default)]
struct Health {
    failures: u32,
    ejected_until: Option<Instant>,
}

impl Instance {
    fn ejected_until(&self) -> Option<Instant> {
        let health = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        health.ejected_until.filter(|until| *until > Instant::now())
    }

    fn answered(&self) {
        let mut health = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *health = Health::default();
    }

    fn failed(&self, error: &UpstreamError) {
        let mut health = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if health.ejected_until.is_some_and(|until| until > Instant::now()) {
            // Calls that were under way when it was ejected: one failure.
            return;
        }
        let ejection = FIRST_EJECTION.saturating_mul(1 << health.failures.min(5)).min(MAX_EJECTION);
        health.failures = health.failures.saturating_add(1);
        health.ejected_until = Some(Instant::now() + ejection);
        tracing::warn!(instance = self.base, %error, ejected_for = ?ejection, "an upstream instance failed; skipping it");
    }
}

impl Remote {
    /// The instances in the order this call tries them: the available ones
    /// from the round robin's turn on, then the ejected ones, soonest back first.
    fn order(&self) -> Vec<&Instance> {
        let n = self.instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let turn = (0..n).map(|k| &self.instances[(start + k) % n]);
        let (mut available, mut ejected): (Vec<_>, Vec<_>) = turn.partition(|i| i.ejected_until().is_none());
        ejected.sort_by_key(|i| i.ejected_until());
        available.append(&mut ejected);
        available
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Local(_) => f.write_str("Upstream::Local"),
            Kind::Remote(remote) => {
                let mut tuple = f.debug_tuple("Upstream::Remote");
                for instance in &remote.instances {
                    tuple.field(&instance.base);
                }
                tuple.finish()
            }
        }
    }
}

/// One instance of a remote upstream, as [`Upstream::instances`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceStatus {
    /// Its base URL.
    pub url: String,
    /// Whether it is being skipped after failing.
    pub ejected: bool,
}

/// A service's answer, read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    /// The `location` header of a 201 or 202, in the service's own paths.
    pub location: Option<HeaderValue>,
    /// `idempotent-replayed: true`: the answer repeats an earlier request's.
    pub replayed: bool,
    pub body: Bytes,
}

/// Why a call got no usable answer. An answer with an error status is not
/// an error here: it is an [`UpstreamResponse`] like any other.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No complete answer within the call's timeout.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The service could not be reached, or the connection failed mid-way.
    #[error("the service is unreachable or the connection failed")]
    Unavailable(#[source] BoxError),
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("the answer is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    /// The gateway built a request that HTTP cannot carry (a bug, not the
    /// service's fault).
    #[error("invalid request to the service: {0}")]
    InvalidRequest(String),
}

impl Upstream {
    /// A service hosted in this process: its bare or fully layered router.
    pub fn local(router: Router) -> Self {
        Self { kind: Kind::Local(router) }
    }

    /// A service in another process, at `base_url`: `http://host:port`,
    /// optionally with a path prefix (`http://proxy:8080/customer`), or
    /// several instances of it, comma-separated (see the module docs).
    /// Plain `http` only: services talk inside the deployment, without TLS.
    ///
    /// Builds the connection pool; needs no runtime until the first call.
    pub fn remote(base_url: &str) -> Result<Self, GatewayError> {
        let instances = base_url
            .split(',')
            .map(|url| base(url.trim()).map(|base| Instance { base, health: Mutex::default() }))
            .collect::<Result<Vec<_>, _>>()?;

        let mut connector = HttpConnector::new();
        // Small request/response exchanges: do not wait to coalesce packets.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let remote = Remote { instances, next: AtomicUsize::new(0), client };
        Ok(Self { kind: Kind::Remote(Arc::new(remote)) })
    }

    /// A remote upstream's instances and whether each is being skipped;
    /// none for a local one.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        match &self.kind {
            Kind::Local(_) => Vec::new(),
            Kind::Remote(remote) => remote
                .instances
                .iter()
                .map(|i| InstanceStatus { url: i.base.clone(), ejected: i.ejected_until().is_some() })
                .collect(),
        }
    }

    /// Whether the service runs in this process: then its metrics are this
    /// process's own.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// Calls the service: `method` on `path_and_query` (the service's own
    /// path, starting with `/`, already percent-encoded), with `body` sent
    /// as `application/json`, `request_id` as `x-request-id`, and the whole
    /// exchange bounded by `timeout`.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        request_id: Option<&RequestId>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.call_with(method, path_and_query, body, request_id, &[], timeout).await
    }

    /// [`Upstream::call`] with more request headers (`name` in lowercase).
    pub async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        request_id: Option<&RequestId>,
        headers: &[(&'static str, &str)],
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let path: PathAndQuery = path_and_query
            .parse()
            .map_err(|err| UpstreamError::InvalidRequest(format!("path {path_and_query:?}: {err}")))?;
        if !path.path().starts_with('/') {
            return Err(UpstreamError::InvalidRequest(format!("path {path_and_query:?} does not start with /")));
        }
        let remote = match &self.kind {
            Kind::Local(router) => {
                let exchange = async {
                    let request = build(method, path.as_str(), body.map(Body::from), request_id, headers)?;
                    let response = match router.clone().oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    read(response).await
                };
                return tokio::time::timeout(timeout, exchange).await.map_err(|_| UpstreamError::Timeout(timeout))?;
            }
            Kind::Remote(remote) => remote,
        };
        let repeatable = matches!(method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE)
            || headers.iter().any(|(name, _)| *name == IDEMPOTENCY_KEY);
        let deadline = Instant::now() + timeout;
        let mut failure = UpstreamError::Timeout(timeout);
        for instance in remote.order() {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
                break;
            };
            let uri = format!("{}{}", instance.base, path.as_str());
            let body = Full::new(body.clone().unwrap_or_default());
            let request = build(method.clone(), &uri, Some(body), request_id, headers)?;
            let exchange = async {
                match remote.client.request(request).await {
                    Ok(response) => read(response).await.map_err(|err| (err, false)),
                    // Not connected: nothing was sent, so any call may go elsewhere.
                    Err(err) => {
                        let unsent = err.is_connect();
                        Err((UpstreamError::Unavailable(err.into()), unsent))
                    }
                }
            };
            let (error, unsent) = match tokio::time::timeout(left, exchange).await {
                Ok(Ok(response)) => {
                    instance.answered();
                    return Ok(response);
                }
                Ok(Err((error @ UpstreamError::Unavailable(_), unsent))) => (error, unsent),
                Ok(Err((error, _))) => return Err(error),
                Err(_) => (UpstreamError::Timeout(timeout), false),
            };
            // With one instance there is nothing to skip it for.
            if remote.instances.len() > 1 {
                instance.failed(&error);
            }
            failure = error;
            if !(unsent || repeatable) {
                break;
            }
        }
        Err(failure)
    }
}

/// `url` as a base: `http://host:port` and its path prefix without a
/// trailing slash.
fn base(url: &str) -> Result<String, GatewayError> {
    let invalid = |reason: &str| GatewayError::InvalidUpstreamUrl { url: url.to_owned(), reason: reason.into() };
    let uri: Uri = url.parse().map_err(|err: axum::http::uri::InvalidUri| invalid(&err.to_string()))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(invalid("the scheme must be http (https is not supported)"));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("the url has no host"));
    };
    if uri.query().is_some() {
        return Err(invalid("the url must not have a query"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

/// The request as both kinds send it. `body` is `None` for a local call
/// without a body; a remote call always has one (possibly empty), and an
/// empty one is sent without a content type.
fn build<B>(
    method: Method,
    uri: &str,
    body: Option<B>,
    request_id: Option<&RequestId>,
    headers: &[(&'static str, &str)],
) -> Result<Request<B>, UpstreamError>
where
    B: HttpBody + Default,
{
    let mut request = Request::builder().method(method).uri(uri);
    let has_body = body.as_ref().is_some_and(|body| !body.is_end_stream());
    if has_body {
        request = request.header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(id) = request_id {
        // Already checked by the standard stack: 1 to 128 visible ASCII characters.
        let value = HeaderValue::from_str(id.as_str())
            .map_err(|err| UpstreamError::InvalidRequest(format!("request id {:?}: {err}", id.as_str())))?;
        request = request.header(REQUEST_ID_HEADER, value);
    }
    if let Some(traceparent) = polis_core::trace::current() {
        let value = HeaderValue::from_str(&traceparent)
            .map_err(|err| UpstreamError::InvalidRequest(format!("traceparent {traceparent:?}: {err}")))?;
        request = request.header(TRACEPARENT_HEADER, value);
    }
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|err| UpstreamError::InvalidRequest(format!("header {name}: {err}")))?;
        request = request.header(*name, value);
    }
    request.body(body.unwrap_or_default()).map_err(|err| UpstreamError::InvalidRequest(err.to_string()))
}

async fn read<B>(response: Response<B>) -> Result<UpstreamResponse, UpstreamError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|err| {
        if err.is::<LengthLimitError>() {
            UpstreamError::ResponseTooLarge { limit: MAX_RESPONSE_BYTES }
        } else {
            UpstreamError::Unavailable(err)
        }
    })?;
    Ok(UpstreamResponse {
        status: parts.status,
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        location: parts.headers.get(header::LOCATION).cloned(),
        replayed: parts.headers.get(IDEMPOTENT_REPLAYED).is_some_and(|v| v.as_bytes() == b"true"),
        body: body.to_bytes(),
    })
}

/// The services behind the gateway: an [`Upstream`] for every one of
/// [`Service::BUSINESS`].
#[derive(Debug, Clone)]
pub struct Upstreams(BTreeMap<Service, Upstream>);

impl Upstreams {
    /// Every business service's upstream, from `upstream`.
    pub fn new(mut upstream: impl FnMut(Service) -> Upstream) -> Self {
        Self(Service::BUSINESS.into_iter().map(|service| (service, upstream(service))).collect())
    }

    /// [`Upstreams::new`] with an upstream that can fail (a remote URL).
    pub fn try_new<E>(mut upstream: impl FnMut(Service) -> Result<Upstream, E>) -> Result<Self, E> {
        Service::BUSINESS
            .into_iter()
            .map(|service| Ok((service, upstream(service)?)))
            .collect::<Result<_, E>>()
            .map(Self)
    }

    /// Replaces one service's upstream (the gateway itself has none; it is ignored).
    pub fn set(&mut self, service: Service, upstream: Upstream) {
        if service.has_database() {
            self.0.insert(service, upstream);
        }
    }

    /// The upstream of a business service; `None` for the gateway itself.
    pub fn get(&self, service: Service) -> Option<&Upstream> {
        self.0.get(&service)
    }
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved
/// characters, so a sku like `A/B 1` stays one segment.
pub fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_unreserved_characters_and_encode_the_rest() {
        assert_eq!(encode_segment("SKU-1_a.b~"), "SKU-1_a.b~");
        assert_eq!(encode_segment("A/B 1?#%"), "A%2FB%201%3F%23%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn remote_urls_must_be_plain_http_with_a_host() {
        for (url, reason) in [
            ("https://svc:443", "scheme"),
            ("ftp://svc", "scheme"),
            ("svc:8080", "scheme"),
            ("/customers", "scheme"),
            ("http://svc:8080/x?y=1", "query"),
            ("not a url", "invalid"),
        ] {
            match Upstream::remote(url) {
                Err(GatewayError::InvalidUpstreamUrl { url: named, reason: why }) => {
                    assert_eq!(named, url);
                    assert!(why.contains(reason) || reason == "invalid", "{url}: {why}");
                }
                other => panic!("{url}: expected an invalid url, got {other:?}"),
            }
        }
    }

    #[test]
    fn remote_base_urls_lose_their_trailing_slash() {
        let upstream = Upstream::remote("http://127.0.0.1:8081/prefix/").unwrap();
        assert_eq!(format!("{upstream:?}"), r#"Upstream::Remote("http://127.0.0.1:8081/prefix")"#);
        let upstream = Upstream::remote("http://127.0.0.1:8081").unwrap();
        assert_eq!(format!("{upstream:?}"), r#"Upstream::Remote("http://127.0.0.1:8081")"#);
        let upstream = Upstream::remote("http://a:8081/, http://b:8081").unwrap();
        assert_eq!(format!("{upstream:?}"), r#"Upstream::Remote("http://a:8081", "http://b:8081")"#);
        assert!(Upstream::remote("http://a:8081,").is_err(), "an empty instance is refused");
    }

    #[tokio::test]
    async fn a_path_without_a_leading_slash_is_refused() {
        let upstream = Upstream::local(Router::new());
        let err = upstream.call(Method::GET, "customers", None, None, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::InvalidRequest(_)), "{err:?}");
    }
}
