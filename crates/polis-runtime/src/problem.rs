//! RFC 9457 problem details: the one place where errors become HTTP responses.
//!
//! Every error a polis service answers is an [`ApiError`] rendered as
//! `application/problem+json`:
//!
//! ```json
//! {
//!   "type": "https://polis.dev/problems/validation",
//!   "title": "Validation failed",
//!   "status": 422,
//!   "detail": "the request has 1 invalid field",
//!   "errors": [{ "field": "items[0].quantity", "message": "must be at least 1" }]
//! }
//! ```
//!
//! **Problem types are absolute URIs under [`PROBLEM_TYPE_BASE`]**
//! (`https://polis.dev/problems/<slug>`). RFC 9457 makes `type` the problem's
//! identifier and recommends absolute URIs: a relative one would resolve
//! against each service's own address, so the gateway and the six services
//! would report "the same" problem under different identifiers. Clients
//! compare `type` as a string; it is an identifier, not a link they must be
//! able to fetch. Problems that mean no more than their status code (the
//! rewritten bare responses of [`crate::layers`]) use `about:blank`, as the
//! RFC prescribes.
//!
//! Server errors never show their cause to the client: a 5xx carries a
//! generic `detail`, and the cause chain is logged with `tracing::error!`
//! when the response is built, inside the request's span (so with its
//! request id).
//!
//! The mapping of library errors ([`StoreError`], [`CommandError`],
//! [`DecodeError`]) to statuses lives here and nowhere else.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polis_core::error::{BoxError, DecodeError};
use polis_core::{CommandError, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every polis problem type; the slug follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://polis.dev/problems/";

/// Members RFC 9457 (and polis's `errors`) define; an extension may not take
/// these names.
const RESERVED_MEMBERS: [&str; 6] = ["type", "title", "status", "detail", "instance", "errors"];

/// The `detail` of every 500: the cause is logged, never sent.
const INTERNAL_DETAIL: &str = "an unexpected error occurred; it has been logged";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field in the request body, e.g. `items[0].quantity`.
    pub field: String,
    /// What is wrong with it, e.g. `must be at least 1`.
    pub message: String,
}

impl FieldError {
    /// The violation `message` of the field at path `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// An error answered as an RFC 9457 problem (`application/problem+json`).
///
/// Build one with a constructor per status ([`ApiError::not_found`],
/// [`ApiError::validation`], ...) or [`ApiError::new`] for a service's own
/// problem type, refine it with the `with_*` methods, and return it from a
/// handler. Library errors convert with `?` (`From<StoreError>`,
/// `From<CommandError<E>>`).
#[derive(Debug)]
#[must_use]
// Boxed: handlers return `Result<_, ApiError>` everywhere, and a small error
// keeps their `Ok` path cheap (and clippy's `result_large_err` quiet).
pub struct ApiError(Box<Problem>);

#[derive(Debug)]
struct Problem {
    status: StatusCode,
    problem_type: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<String>,
    errors: Vec<FieldError>,
    extensions: Map<String, Value>,
    /// Logged, never sent.
    cause: Option<BoxError>,
}

impl ApiError {
    /// A problem of a service's own type: `slug` becomes
    /// `https://polis.dev/problems/<slug>`; `title` is the type's fixed,
    /// human-readable summary (RFC 9457: it should not change from one
    /// occurrence to the next; put specifics in the detail).
    ///
    /// Use a lowercase, hyphenated slug such as `out-of-stock`.
    pub fn new(status: StatusCode, slug: &str, title: impl Into<Cow<'static, str>>) -> Self {
        Self::with_type(status, Cow::Owned(format!("{PROBLEM_TYPE_BASE}{slug}")), title.into())
    }

    fn with_type(status: StatusCode, problem_type: Cow<'static, str>, title: Cow<'static, str>) -> Self {
        Self(Box::new(Problem {
            status,
            problem_type,
            title,
            detail: None,
            errors: Vec::new(),
            extensions: Map::new(),
            cause: None,
        }))
    }

    fn polis(status: StatusCode, problem_type: &'static str, title: &'static str) -> Self {
        Self::with_type(status, Cow::Borrowed(problem_type), Cow::Borrowed(title))
    }

    /// A problem that means no more than its status code (`about:blank`,
    /// titled with the status's reason phrase, as RFC 9457 §4.2.1 asks).
    pub fn from_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Self::polis(status, "about:blank", title)
    }

    /// 404: the resource does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::NOT_FOUND, types::NOT_FOUND, "Not found").with_detail(detail)
    }

    /// 405: the path exists but not for this method.
    pub fn method_not_allowed() -> Self {
        Self::polis(StatusCode::METHOD_NOT_ALLOWED, types::METHOD_NOT_ALLOWED, "Method not allowed")
            .with_detail("this resource does not support the request's method; see the allow header")
    }

    /// 409: the request conflicts with the resource's current state (add
    /// the state with [`ApiError::with_extension`], e.g. `current_status`).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::CONFLICT, types::CONFLICT, "Conflict").with_detail(detail)
    }

    /// 422: one field of a well-formed request is invalid.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation_errors(vec![FieldError::new(field, message)])
    }

    /// 422: several fields are invalid (see [`crate::json::Violations`]).
    pub fn validation_errors(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => "the request has 1 invalid field".to_owned(),
            n => format!("the request has {n} invalid fields"),
        };
        let mut problem = Self::polis(StatusCode::UNPROCESSABLE_ENTITY, types::VALIDATION, "Validation failed");
        problem.0.detail = Some(detail);
        problem.0.errors = errors;
        problem
    }

    /// 400: the request is malformed (not JSON, unreadable, ...).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::BAD_REQUEST, types::BAD_REQUEST, "Bad request").with_detail(detail)
    }

    /// 415: the body is not of a media type the endpoint accepts.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::UNSUPPORTED_MEDIA_TYPE, types::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
            .with_detail(detail)
    }

    /// 413: the body is larger than the endpoint accepts.
    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::PAYLOAD_TOO_LARGE, types::PAYLOAD_TOO_LARGE, "Payload too large").with_detail(detail)
    }

    /// 408: the client did not send the request (its body) in time.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::REQUEST_TIMEOUT, types::REQUEST_TIMEOUT, "Request timeout").with_detail(detail)
    }

    /// 503: a dependency is down; the client may retry later. Attach the
    /// cause with [`ApiError::with_cause`] so that it is logged.
    pub fn service_unavailable(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::SERVICE_UNAVAILABLE, types::SERVICE_UNAVAILABLE, "Service unavailable")
            .with_detail(detail)
    }

    /// 504: an upstream service did not answer in time (the gateway's case).
    pub fn gateway_timeout(detail: impl Into<String>) -> Self {
        Self::polis(StatusCode::GATEWAY_TIMEOUT, types::GATEWAY_TIMEOUT, "Gateway timeout").with_detail(detail)
    }

    /// 500: a fault. The client sees a generic detail; `err` and its whole
    /// `source()` chain are logged when the response is built.
    pub fn internal(err: impl Into<BoxError>) -> Self {
        Self::polis(StatusCode::INTERNAL_SERVER_ERROR, types::INTERNAL, "Internal server error")
            .with_detail(INTERNAL_DETAIL)
            .with_cause(err)
    }

    /// Sets the human-readable explanation of this occurrence. For 5xx
    /// keep it generic: it is sent to the client.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Adds an invalid field (turning any problem into one that names its
    /// fields; mostly useful on 422s).
    pub fn with_field_error(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.0.errors.push(FieldError::new(field, message));
        self
    }

    /// Adds an extension member, e.g. `current_status` on a 409.
    ///
    /// A name RFC 9457 reserves (`type`, `title`, `status`, `detail`,
    /// `instance`) or `errors` would change the meaning of the problem, so
    /// it is ignored with a warning rather than sent.
    pub fn with_extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        if RESERVED_MEMBERS.contains(&name) {
            tracing::warn!(member = name, "ignored a problem extension that would overwrite a standard member");
        } else {
            self.0.extensions.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Keeps `cause` for the log; it is never sent. A 5xx logs it when the
    /// response is built; a 4xx does not (the client's mistake is no fault).
    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.0.cause = Some(cause.into());
        self
    }

    /// The HTTP status answered (also the problem's `status` member).
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The problem type URI: `https://polis.dev/problems/<slug>`, or
    /// `about:blank` for a problem made with [`ApiError::from_status`].
    pub fn problem_type(&self) -> &str {
        &self.0.problem_type
    }

    /// The problem type's fixed, human-readable summary.
    pub fn title(&self) -> &str {
        &self.0.title
    }

    /// The explanation of this occurrence, if one was set.
    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// The invalid fields (sent as `errors`; empty for most problems).
    pub fn errors(&self) -> &[FieldError] {
        &self.0.errors
    }

    /// The extension member `name`, if one was added.
    pub fn extension(&self, name: &str) -> Option<&Value> {
        self.0.extensions.get(name)
    }

    /// The problem document as sent.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::String(self.0.problem_type.to_string()));
        body.insert("title".into(), Value::String(self.0.title.to_string()));
        body.insert("status".into(), Value::from(self.0.status.as_u16()));
        if let Some(detail) = &self.0.detail {
            body.insert("detail".into(), Value::String(detail.clone()));
        }
        if !self.0.errors.is_empty() {
            let errors = self
                .0
                .errors
                .iter()
                .map(|e| {
                    let mut error = Map::new();
                    error.insert("field".into(), Value::String(e.field.clone()));
                    error.insert("message".into(), Value::String(e.message.clone()));
                    Value::Object(error)
                })
                .collect();
            body.insert("errors".into(), Value::Array(errors));
        }
        for (name, value) in &self.0.extensions {
            body.insert(name.clone(), value.clone());
        }
        Value::Object(body)
    }
}

/// Problem type URIs of the constructors above.
pub mod types {
    /// 404, [`ApiError::not_found`](super::ApiError::not_found).
    pub const NOT_FOUND: &str = "https://polis.dev/problems/not-found";
    /// 405, [`ApiError::method_not_allowed`](super::ApiError::method_not_allowed).
    pub const METHOD_NOT_ALLOWED: &str = "https://polis.dev/problems/method-not-allowed";
    /// 409, [`ApiError::conflict`](super::ApiError::conflict), and store
    /// conflicts and duplicates.
    pub const CONFLICT: &str = "https://polis.dev/problems/conflict";
    /// 422 naming invalid fields, [`ApiError::validation`](super::ApiError::validation).
    pub const VALIDATION: &str = "https://polis.dev/problems/validation";
    /// 422 for a request the store refused as invalid
    /// ([`StoreError::InvalidRequest`](polis_core::StoreError::InvalidRequest)).
    pub const INVALID_REQUEST: &str = "https://polis.dev/problems/invalid-request";
    /// 400, [`ApiError::bad_request`](super::ApiError::bad_request).
    pub const BAD_REQUEST: &str = "https://polis.dev/problems/bad-request";
    /// 415, [`ApiError::unsupported_media_type`](super::ApiError::unsupported_media_type).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "https://polis.dev/problems/unsupported-media-type";
    /// 413, [`ApiError::payload_too_large`](super::ApiError::payload_too_large).
    pub const PAYLOAD_TOO_LARGE: &str = "https://polis.dev/problems/payload-too-large";
    /// 408, [`ApiError::request_timeout`](super::ApiError::request_timeout).
    pub const REQUEST_TIMEOUT: &str = "https://polis.dev/problems/request-timeout";
    /// 503, [`ApiError::service_unavailable`](super::ApiError::service_unavailable),
    /// and store backend failures.
    pub const SERVICE_UNAVAILABLE: &str = "https://polis.dev/problems/service-unavailable";
    /// 504, [`ApiError::gateway_timeout`](super::ApiError::gateway_timeout).
    pub const GATEWAY_TIMEOUT: &str = "https://polis.dev/problems/gateway-timeout";
    /// 500, [`ApiError::internal`](super::ApiError::internal).
    pub const INTERNAL: &str = "https://polis.dev/problems/internal";
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0.status.as_u16(), self.0.title)?;
        if let Some(detail) = &self.0.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.cause.as_deref().map(|cause| cause as &(dyn StdError + 'static))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error()
            && let Some(cause) = &self.0.cause
        {
            tracing::error!(
                status = self.0.status.as_u16(),
                problem_type = %self.0.problem_type,
                error = %error_chain(cause.as_ref()),
                "request failed"
            );
        }
        let body = self.to_json().to_string();
        let mut response = (self.0.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// `err: its source: its source's source ...`, the way the log shows a
/// cause so that the root reason is never lost behind a generic message.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut chain = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        chain.push_str(": ");
        chain.push_str(&source.to_string());
        next = source.source();
    }
    chain
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            // The caller raced another writer; reloading and retrying is its move.
            StoreError::Conflict { .. } => {
                Self::conflict("the resource was changed by a concurrent request; reload it and retry")
            }
            StoreError::DuplicateEventId(_) | StoreError::Unique(_) => {
                // The constraint's or event's name is ours, not the client's business.
                Self::conflict("a resource with the same identity already exists")
            }
            StoreError::InvalidRequest(reason) => {
                Self::polis(StatusCode::UNPROCESSABLE_ENTITY, types::INVALID_REQUEST, "Invalid request")
                    .with_detail(reason)
            }
            // Connection lost, pool exhausted, disk full: likely to pass, so 503 invites a retry.
            err @ StoreError::Backend(_) => {
                Self::service_unavailable("a backend this service needs is unavailable; retry later").with_cause(err)
            }
            // Corrupt rows and anything added later are faults of ours.
            err => Self::internal(err),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(err: DecodeError) -> Self {
        Self::internal(err)
    }
}

/// A domain rejection maps through the service's own `From<E> for ApiError`
/// (usually a 409 or 422 of a service-specific type); the rest like
/// [`StoreError`].
impl<E> From<CommandError<E>> for ApiError
where
    E: Into<ApiError> + StdError + Send + Sync + 'static,
{
    fn from(err: CommandError<E>) -> Self {
        match err {
            CommandError::Rejected(rejection) => rejection.into(),
            CommandError::Conflict { attempts, .. } => Self::conflict(format!(
                "the resource kept changing under concurrent requests ({attempts} attempts); retry later"
            )),
            CommandError::Decode(err) => err.into(),
            CommandError::Store(err) => err.into(),
            err => Self::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_problem_document_has_the_standard_members_then_extensions() {
        let problem = ApiError::conflict("order is shipped").with_extension("current_status", "shipped");
        assert_eq!(
            problem.to_json(),
            json!({
                "type": "https://polis.dev/problems/conflict",
                "title": "Conflict",
                "status": 409,
                "detail": "order is shipped",
                "current_status": "shipped",
            })
        );
    }

    #[test]
    fn an_extension_cannot_overwrite_a_standard_member() {
        let problem = ApiError::not_found("no such order").with_extension("status", 200).with_extension("type", "x");
        assert_eq!(problem.to_json()["status"], 404);
        assert_eq!(problem.to_json()["type"], types::NOT_FOUND);
        assert_eq!(problem.extension("status"), None);
    }

    #[test]
    fn validation_names_the_field() {
        let problem = ApiError::validation("items[0].quantity", "must be at least 1");
        assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            problem.to_json()["errors"],
            json!([{ "field": "items[0].quantity", "message": "must be at least 1" }])
        );
    }

    #[test]
    fn an_own_problem_type_lives_under_the_polis_base() {
        let problem = ApiError::new(StatusCode::CONFLICT, "out-of-stock", "Out of stock");
        assert_eq!(problem.problem_type(), "https://polis.dev/problems/out-of-stock");
    }

    #[test]
    fn every_type_constant_lives_under_the_base() {
        for t in [
            types::NOT_FOUND,
            types::METHOD_NOT_ALLOWED,
            types::CONFLICT,
            types::VALIDATION,
            types::INVALID_REQUEST,
            types::BAD_REQUEST,
            types::UNSUPPORTED_MEDIA_TYPE,
            types::PAYLOAD_TOO_LARGE,
            types::REQUEST_TIMEOUT,
            types::SERVICE_UNAVAILABLE,
            types::GATEWAY_TIMEOUT,
            types::INTERNAL,
        ] {
            assert!(t.starts_with(PROBLEM_TYPE_BASE), "{t}");
        }
    }

    #[test]
    fn an_internal_error_hides_its_cause_but_keeps_it_as_source() {
        let io = std::io::Error::other("disk on fire at /var/lib/secret");
        let problem = ApiError::internal(io);
        assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!problem.to_json().to_string().contains("disk on fire"));
        assert_eq!(problem.source().map(ToString::to_string).as_deref(), Some("disk on fire at /var/lib/secret"));
    }

    #[test]
    fn the_error_chain_lists_every_source() {
        let err = StoreError::backend(std::io::Error::other("connection reset"));
        assert_eq!(error_chain(&err), "event store backend failure: connection reset");
    }

    #[test]
    fn store_errors_map_to_statuses() {
        let conflict = StoreError::Conflict {
            stream: "order-1".into(),
            expected: polis_core::ExpectedVersion::Exact(1),
            actual: 2,
        };
        assert_eq!(ApiError::from(conflict).status(), StatusCode::CONFLICT);
        assert_eq!(ApiError::from(StoreError::DuplicateEventId(uuid::Uuid::nil())).status(), StatusCode::CONFLICT);
        let invalid = ApiError::from(StoreError::InvalidRequest("empty stream id".into()));
        assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.detail(), Some("empty stream id"));
        let backend = ApiError::from(StoreError::backend(std::io::Error::other("password=hunter2")));
        assert_eq!(backend.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!backend.to_json().to_string().contains("hunter2"));
        let corrupt = ApiError::from(StoreError::Corrupt { position: 7, reason: "bad json".into() });
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!corrupt.to_json().to_string().contains("bad json"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("order already shipped")]
    struct AlreadyShipped;

    impl From<AlreadyShipped> for ApiError {
        fn from(_: AlreadyShipped) -> Self {
            ApiError::conflict("the order has already shipped").with_extension("current_status", "shipped")
        }
    }

    #[test]
    fn command_errors_map_rejections_through_the_domain_mapping() {
        let rejected = ApiError::from(CommandError::Rejected(AlreadyShipped));
        assert_eq!(rejected.status(), StatusCode::CONFLICT);
        assert_eq!(rejected.extension("current_status"), Some(&json!("shipped")));
        let raced = ApiError::from(CommandError::<AlreadyShipped>::Conflict { stream: "order-1".into(), attempts: 5 });
        assert_eq!(raced.status(), StatusCode::CONFLICT);
        let store =
            ApiError::from(CommandError::<AlreadyShipped>::Store(StoreError::backend(std::io::Error::other("gone"))));
        assert_eq!(store.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn from_status_uses_about_blank_and_the_reason_phrase() {
        let problem = ApiError::from_status(StatusCode::UNAUTHORIZED);
        assert_eq!(problem.problem_type(), "about:blank");
        assert_eq!(problem.title(), "Unauthorized");
    }
}
