//! JSON in and out, with rejections that are problems.
//!
//! [`Json<T>`] replaces axum's extractor of the same name; its rejections
//! are [`ApiError`]s, so a client sees one error shape whatever went wrong:
//!
//! | request                                   | status | problem type             |
//! |-------------------------------------------|--------|--------------------------|
//! | content type missing or not JSON          | 415    | `unsupported-media-type` |
//! | body over the limit                       | 413    | `payload-too-large`      |
//! | body not arrived by its deadline          | 408    | `request-timeout`        |
//! | not JSON (syntax error, truncated, empty) | 400    | `bad-request`            |
//! | JSON of the wrong shape                   | 422    | `validation`, field named|
//!
//! "Wrong shape" names the field by its path (`items[0].quantity`), found
//! with `serde_path_to_error`; a missing field is named itself, not by its
//! parent object.
//!
//! Domain rules that serde cannot express (a quantity of at least 1, a
//! non-empty list) go in a [`Validate`] impl; [`ValidJson<T>`] extracts and
//! then validates, answering 422 with every violation listed.

use std::error::Error as StdError;
use std::ops::{Deref, DerefMut};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutError;

use crate::layers::{BodyDeadline, BodyLimit};
use crate::problem::{ApiError, FieldError};

/// A JSON request body or response.
///
/// As an extractor it requires a JSON content type (`application/json` or
/// any `application/*+json`) and answers problems on every failure (see the
/// module docs). As a response it serializes with `content-type:
/// application/json`; a value that cannot be serialized is a 500.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(req.headers())?;
        let limit = req.extensions().get::<BodyLimit>().copied();
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                payload_too_large(limit)
            } else if caused_by::<TimeoutError>(&rejection) {
                request_timeout(deadline)
            } else {
                // The connection broke or the body stream failed mid-way.
                ApiError::bad_request("the request body could not be read").with_cause(rejection)
            }
        })?;
        Self::from_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// Parses a body already read, with the same rejections as the
    /// extractor (minus the content type and size checks).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApiError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(reject)?;
        // Trailing garbage after a valid document is a syntax error too.
        deserializer.end().map_err(|err| not_json(&err))?;
        Ok(Self(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => {
                let mut response = body.into_response();
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Err(err) => ApiError::internal(err).into_response(),
        }
    }
}

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type(
            "the request has no content-type; send the body as application/json",
        ));
    };
    let is_json = value.to_str().ok().and_then(|value| value.parse::<mime::Mime>().ok()).is_some_and(|mime| {
        mime.type_() == mime::APPLICATION
            && (mime.subtype() == mime::JSON || mime.suffix().is_some_and(|suffix| suffix == mime::JSON))
    });
    if is_json {
        Ok(())
    } else {
        let received = String::from_utf8_lossy(value.as_bytes());
        Err(ApiError::unsupported_media_type(format!(
            "content-type {received:?} is not JSON; send the body as application/json"
        )))
    }
}

fn payload_too_large(limit: Option<BodyLimit>) -> ApiError {
    match limit {
        Some(BodyLimit(bytes)) => {
            ApiError::payload_too_large(format!("the request body is larger than the limit of {bytes} bytes"))
                .with_extension("limit_bytes", bytes)
        }
        None => ApiError::payload_too_large("the request body is larger than this endpoint accepts"),
    }
}

fn request_timeout(deadline: Option<BodyDeadline>) -> ApiError {
    match deadline {
        Some(BodyDeadline(timeout)) => {
            let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            ApiError::request_timeout(format!("the request body did not arrive within {millis} ms"))
                .with_extension("timeout_ms", millis)
        }
        None => ApiError::request_timeout("the request body did not arrive in time"),
    }
}

/// Whether `err` or any error in its `source()` chain is an `E` (the body
/// errors come wrapped in axum's and http-body-util's boxes).
fn caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<E>() {
            return true;
        }
        next = err.source();
    }
    false
}

fn reject(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    match err.inner().classify() {
        serde_json::error::Category::Data => {
            let (field, message) = field_and_message(&err);
            ApiError::validation(field, message)
        }
        // Io cannot happen on a slice; treat it like the others rather than panic.
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            not_json(err.inner())
        }
    }
}

fn not_json(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
}

/// The path of the offending field and serde's message without its
/// position (the path says where, and is stable across reformatting).
fn field_and_message(err: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let inner = err.inner();
    let full = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let message = full.strip_suffix(&position).unwrap_or(&full).to_owned();

    let path = err.path().to_string();
    let path = if path == "." { None } else { Some(path) };
    // serde reports a missing field against its parent object (an unknown
    // one already against itself); the client wants the field.
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    let field = match (missing, path) {
        (Some(name), Some(parent)) => format!("{parent}.{name}"),
        (Some(name), None) => name.to_owned(),
        (None, Some(path)) => path,
        // The document itself has the wrong type (an array for an object).
        (None, None) => "$".to_owned(),
    };
    (field, message)
}

/// Domain validation of a request that deserialized fine.
///
/// Report every violation, not only the first: the client fixes them all in
/// one round trip.
///
/// ```
/// use polis_runtime::json::{Validate, Violations};
///
/// struct Line { sku: String, quantity: u32 }
/// struct PlaceOrder { lines: Vec<Line> }
///
/// impl Validate for Line {
///     fn validate(&self, report: &mut Violations) {
///         report.check(!self.sku.is_empty(), "sku", "must not be empty");
///         report.check(self.quantity >= 1, "quantity", "must be at least 1");
///     }
/// }
///
/// impl Validate for PlaceOrder {
///     fn validate(&self, report: &mut Violations) {
///         report.check(!self.lines.is_empty(), "lines", "must not be empty");
///         for (i, line) in self.lines.iter().enumerate() {
///             report.nested(format!("lines[{i}]"), line);
///         }
///     }
/// }
///
/// let order = PlaceOrder { lines: vec![Line { sku: "A-1".into(), quantity: 0 }] };
/// let problem = order.validated().unwrap_err();
/// assert_eq!(problem.errors()[0].field, "lines[0].quantity");
/// ```
pub trait Validate {
    /// Adds every rule this value breaks to `report`.
    fn validate(&self, report: &mut Violations);

    /// `Ok` if no rule is broken, else a 422 listing every violation.
    fn validated(&self) -> Result<(), ApiError> {
        let mut report = Violations::new();
        self.validate(&mut report);
        report.into_result()
    }
}

/// The violations found while validating one request.
#[derive(Debug, Default)]
pub struct Violations {
    prefix: String,
    errors: Vec<FieldError>,
}

impl Violations {
    /// No violations yet; fields are named from the root of the request body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field` (relative to the value being
    /// validated) unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl AsRef<str>, message: impl Into<String>) {
        if !ok {
            self.add(field, message);
        }
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        let field = join_path(&self.prefix, field.as_ref());
        self.errors.push(FieldError { field, message: message.into() });
    }

    /// Validates a nested value whose fields live under `path` (e.g.
    /// `items[0]`).
    pub fn nested(&mut self, path: impl AsRef<str>, value: &(impl Validate + ?Sized)) {
        let outer = std::mem::take(&mut self.prefix);
        self.prefix = join_path(&outer, path.as_ref());
        value.validate(self);
        self.prefix = outer;
    }

    /// Whether nothing was recorded: the value is valid.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The violations recorded so far, in the order found, with their full paths.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// `Ok` if nothing was recorded, else a 422 naming every field.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.errors.is_empty() { Ok(()) } else { Err(ApiError::validation_errors(self.errors)) }
    }
}

fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() || field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// A JSON body that also passed its [`Validate`] rules: [`Json<T>`]'s
/// rejections, then a 422 naming every violated field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidJson<T>(pub T);

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        value.validated()?;
        Ok(Self(value))
    }
}

impl<T> Deref for ValidJson<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        quantity: u32,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        items: Vec<Item>,
    }

    fn rejection(body: &str) -> ApiError {
        match Json::<Order>::from_bytes(body.as_bytes()) {
            Ok(order) => panic!("expected a rejection, got {order:?}"),
            Err(problem) => problem,
        }
    }

    #[test]
    fn a_wrong_type_names_the_nested_field() {
        let problem = rejection(r#"{"items":[{"sku":"a","quantity":1},{"sku":"b","quantity":"two"}]}"#);
        assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors()[0].field, "items[1].quantity");
        assert_eq!(problem.errors()[0].message, r#"invalid type: string "two", expected u32"#);
    }

    #[test]
    fn a_missing_field_is_named_itself() {
        let problem = rejection(r#"{"items":[{"sku":"a"}]}"#);
        assert_eq!(problem.errors()[0].field, "items[0].quantity");
        assert_eq!(problem.errors()[0].message, "missing field `quantity`");
        assert_eq!(rejection("{}").errors()[0].field, "items");
    }

    #[test]
    fn an_unknown_field_is_named_itself() {
        let problem = rejection(r#"{"items":[{"sku":"a","quantity":1,"colour":"red"}]}"#);
        assert_eq!(problem.errors()[0].field, "items[0].colour");
    }

    #[test]
    fn a_top_level_type_error_is_named_with_the_root() {
        let problem = rejection("42");
        assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem.errors()[0].field, "$");
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        for body in ["{", "", r#"{"items":[]} trailing"#, "{items: []}"] {
            let problem = rejection(body);
            assert_eq!(problem.status(), StatusCode::BAD_REQUEST, "{body:?}");
            assert!(problem.errors().is_empty());
        }
    }

    #[test]
    fn nested_violations_join_their_paths() {
        let mut report = Violations::new();
        struct Quantity(u32);
        impl Validate for Quantity {
            fn validate(&self, report: &mut Violations) {
                report.check(self.0 >= 1, "quantity", "must be at least 1");
            }
        }
        report.nested("items[2]", &Quantity(0));
        report.nested("items[3]", &Quantity(1));
        report.add("coupon", "has expired");
        let fields: Vec<_> = report.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["items[2].quantity", "coupon"]);
        let problem = report.into_result().unwrap_err();
        assert_eq!(problem.detail(), Some("the request has 2 invalid fields"));
    }

    #[test]
    fn json_content_types_are_recognised() {
        let accepts = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            check_content_type(&headers).is_ok()
        };
        assert!(accepts("application/json"));
        assert!(accepts("application/json; charset=utf-8"));
        assert!(accepts("application/cloudevents+json"));
        assert!(!accepts("text/json"));
        assert!(!accepts("application/x-www-form-urlencoded"));
        assert!(!accepts("nonsense"));
        assert_eq!(check_content_type(&HeaderMap::new()).unwrap_err().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
