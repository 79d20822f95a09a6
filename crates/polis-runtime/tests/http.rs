#![allow(clippy::unwrap_used)]
//! The standard stack and the JSON extractor, driven with `oneshot` requests
//! against a small orders router (axum's `examples/testing` style).

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::routing::{get, post};
use axum::{Router, middleware};
use polis_core::{ExpectedVersion, StoreError};
use polis_runtime::problem::{PROBLEM_JSON, types};
use polis_runtime::{ApiError, HttpOptions, Json, RequestId, ValidJson, Validate, Violations, with_standard_stack};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const LIMIT: usize = 1024;
const KNOWN_ORDER: &str = "0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    customer_id: Uuid,
    items: Vec<Line>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    sku: String,
    quantity: u32,
}

impl Validate for Line {
    fn validate(&self, report: &mut Violations) {
        report.check(!self.sku.trim().is_empty(), "sku", "must not be empty");
        report.check(self.quantity >= 1, "quantity", "must be at least 1");
    }
}

impl Validate for PlaceOrder {
    fn validate(&self, report: &mut Violations) {
        report.check(!self.items.is_empty(), "items", "must contain at least one line");
        for (i, line) in self.items.iter().enumerate() {
            report.nested(format!("items[{i}]"), line);
        }
    }
}

async fn place_order(ValidJson(order): ValidJson<PlaceOrder>) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!({ "customer_id": order.customer_id, "lines": order.items.len() })))
}

async fn echo(Json(body): Json<Value>) -> Json<Value> {
    Json(body)
}

async fn get_order(Path(id): Path<Uuid>) -> Result<Json<Value>, ApiError> {
    if id.to_string() == KNOWN_ORDER {
        Ok(Json(json!({ "id": id, "status": "shipped" })))
    } else {
        Err(ApiError::not_found(format!("no order {id}")))
    }
}

async fn cancel_order(Path(_id): Path<Uuid>) -> Result<StatusCode, ApiError> {
    Err(ApiError::conflict("a shipped order cannot be cancelled").with_extension("current_status", "shipped"))
}

async fn store_failure(Path(kind): Path<String>) -> Result<(), ApiError> {
    let err = match kind.as_str() {
        "conflict" => StoreError::Conflict { stream: "order-1".into(), expected: ExpectedVersion::Exact(3), actual: 4 },
        "invalid" => StoreError::InvalidRequest("stream id must not be empty".into()),
        _ => StoreError::backend(std::io::Error::other("connection to postgres://app:hunter2@db refused")),
    };
    Err(err)?
}

#[derive(Debug, thiserror::Error)]
#[error("cannot reserve stock")]
struct ReserveFailed(#[source] std::io::Error);

async fn boom() -> Result<(), ApiError> {
    Err(ApiError::internal(ReserveFailed(std::io::Error::other("disk on fire"))))
}

async fn panics() -> StatusCode {
    panic!("handler bug: index out of range")
}

async fn upload(body: Bytes) -> String {
    body.len().to_string()
}

async fn whoami(id: RequestId) -> String {
    id.to_string()
}

async fn unauthorized() -> (StatusCode, [(header::HeaderName, &'static str); 1], &'static str) {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "token expired")
}

async fn plain_failure() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "stack trace: secret internals")
}

fn app() -> Router {
    let admin = Router::new().route("/stats", get(|| async { "ok" }));
    let routes = Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/echo", post(echo))
        .route("/upload", post(upload))
        .route("/store/{kind}", get(store_failure))
        .route("/boom", get(boom))
        .route("/panic", get(panics))
        .route("/whoami", get(whoami))
        .route("/unauthorized", get(unauthorized))
        .route("/plain-failure", get(plain_failure))
        .nest("/admin", admin);
    with_standard_stack(routes, &HttpOptions::default().with_max_body_bytes(LIMIT))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).map_or("", |v| v.to_str().unwrap())
    }

    fn request_id(&self) -> &str {
        self.headers.get("x-request-id").unwrap().to_str().unwrap()
    }

    /// Asserts a problem+json response of this status and type and returns
    /// the document.
    #[track_caller]
    fn problem(&self, status: StatusCode, problem_type: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.content_type(), PROBLEM_JSON);
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16());
        assert_eq!(problem["type"], problem_type);
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
        problem
    }

    /// The single field error of a 422.
    #[track_caller]
    fn field_error(&self) -> (String, String) {
        let problem = self.problem(StatusCode::UNPROCESSABLE_ENTITY, types::VALIDATION);
        let errors = problem["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{problem}");
        (errors[0]["field"].as_str().unwrap().to_owned(), errors[0]["message"].as_str().unwrap().to_owned())
    }
}

async fn send_to(app: Router, request: Request<Body>) -> Answer {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    // Every response, whatever produced it, carries a request id.
    assert!(headers.contains_key("x-request-id"), "{status} without x-request-id");
    Answer { status, headers, body }
}

async fn send(request: Request<Body>) -> Answer {
    send_to(app(), request).await
}

fn get_request(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

fn order(items: Value) -> String {
    json!({ "customer_id": Uuid::now_v7(), "items": items }).to_string()
}

#[tokio::test]
async fn healthz_answers_ok() {
    let answer = send(get_request("/healthz")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(answer.json(), json!({ "status": "ok" }));
}

#[tokio::test]
async fn a_valid_order_is_accepted() {
    let answer = send(post_json("/orders", order(json!([{ "sku": "A-1", "quantity": 2 }])))).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(answer.json()["lines"], 1);
}

#[tokio::test]
async fn a_missing_or_foreign_content_type_is_415() {
    let body = order(json!([{ "sku": "A-1", "quantity": 2 }]));
    let missing = send(Request::post("/orders").body(Body::from(body.clone())).unwrap()).await;
    let problem = missing.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, types::UNSUPPORTED_MEDIA_TYPE);
    assert!(problem["detail"].as_str().unwrap().contains("no content-type"), "{problem}");

    let form = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.clone()))
        .unwrap();
    let problem = send(form).await.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, types::UNSUPPORTED_MEDIA_TYPE);
    assert!(problem["detail"].as_str().unwrap().contains("application/x-www-form-urlencoded"), "{problem}");

    // A structured-syntax JSON type is JSON.
    let cloudevent = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/cloudevents+json; charset=utf-8")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(cloudevent).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let trailing = format!("{} {{}}", order(json!([{ "sku": "A-1", "quantity": 1 }])));
    for body in ["{\"customer_id\": ", "", "not json", trailing.as_str()] {
        let answer = send(post_json("/orders", body.to_owned())).await;
        let problem = answer.problem(StatusCode::BAD_REQUEST, types::BAD_REQUEST);
        assert!(problem["detail"].as_str().unwrap().starts_with("the request body is not valid JSON"), "{problem}");
        assert!(problem.get("errors").is_none());
    }
}

#[tokio::test]
async fn a_wrongly_typed_field_is_422_naming_its_path() {
    let body = order(json!([{ "sku": "A-1", "quantity": 1 }, { "sku": "B-2", "quantity": "two" }]));
    let (field, message) = send(post_json("/orders", body)).await.field_error();
    assert_eq!(field, "items[1].quantity");
    assert_eq!(message, r#"invalid type: string "two", expected u32"#);

    let negative = order(json!([{ "sku": "A-1", "quantity": -1 }]));
    let (field, _) = send(post_json("/orders", negative)).await.field_error();
    assert_eq!(field, "items[0].quantity");

    let bad_uuid = json!({ "customer_id": "nope", "items": [] }).to_string();
    let (field, _) = send(post_json("/orders", bad_uuid)).await.field_error();
    assert_eq!(field, "customer_id");
}

#[tokio::test]
async fn a_missing_or_unknown_field_is_422_naming_it() {
    let missing = order(json!([{ "sku": "A-1" }]));
    let (field, message) = send(post_json("/orders", missing)).await.field_error();
    assert_eq!(field, "items[0].quantity");
    assert_eq!(message, "missing field `quantity`");

    let unknown = order(json!([{ "sku": "A-1", "quantity": 1, "gift": true }]));
    let (field, message) = send(post_json("/orders", unknown)).await.field_error();
    assert_eq!(field, "items[0].gift");
    assert!(message.starts_with("unknown field `gift`"), "{message}");

    let (field, _) = send(post_json("/orders", r#"{"items": []}"#)).await.field_error();
    assert_eq!(field, "customer_id");
}

#[tokio::test]
async fn domain_validation_is_422_listing_every_violation() {
    let body = order(json!([{ "sku": "A-1", "quantity": 1 }, { "sku": " ", "quantity": 0 }]));
    let answer = send(post_json("/orders", body)).await;
    let problem = answer.problem(StatusCode::UNPROCESSABLE_ENTITY, types::VALIDATION);
    assert_eq!(
        problem["errors"],
        json!([
            { "field": "items[1].sku", "message": "must not be empty" },
            { "field": "items[1].quantity", "message": "must be at least 1" },
        ])
    );
    assert_eq!(problem["detail"], "the request has 2 invalid fields");

    let (field, _) = send(post_json("/orders", order(json!([])))).await.field_error();
    assert_eq!(field, "items");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_the_handler() {
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(LIMIT));
    let answer = send(post_json("/echo", big)).await;
    let problem = answer.problem(StatusCode::PAYLOAD_TOO_LARGE, types::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["limit_bytes"], LIMIT);

    // Exactly at the limit is fine.
    let pad = LIMIT - r#"{"pad":""}"#.len();
    let at_limit = format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad));
    assert_eq!(at_limit.len(), LIMIT);
    assert_eq!(send(post_json("/echo", at_limit)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    // No content-length: the limit only shows while the body is read.
    let streamed = || {
        let chunks = (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; LIMIT / 4])));
        Body::from_stream(futures::stream::iter(chunks))
    };
    let answer = send(post_json("/echo", streamed())).await;
    let problem = answer.problem(StatusCode::PAYLOAD_TOO_LARGE, types::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["limit_bytes"], LIMIT);

    // axum's own extractors hit the same limit, and still answer a problem.
    let raw = Request::post("/upload").body(streamed()).unwrap();
    send(raw).await.problem(StatusCode::PAYLOAD_TOO_LARGE, "about:blank");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408_problem_at_the_deadline() {
    // Four bytes of a declared hundred, then nothing: a slowloris body.
    let stalled = || {
        let start = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"a\""))]);
        Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending()))
    };
    let deadline = std::time::Duration::from_millis(200);
    let app = with_standard_stack(
        Router::new().route("/echo", post(echo)),
        &HttpOptions::default().with_body_read_timeout(deadline),
    );
    let request = Request::post("/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "100")
        .body(stalled())
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), send_to(app, request)).await.unwrap();
    let problem = answer.problem(StatusCode::REQUEST_TIMEOUT, types::REQUEST_TIMEOUT);
    assert_eq!(problem["timeout_ms"], 200);
}

#[tokio::test]
async fn a_request_id_is_generated_as_uuid_v7() {
    let answer = send(get_request("/whoami")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let id = Uuid::parse_str(answer.request_id()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    // The handler saw the same id the client got.
    assert_eq!(String::from_utf8(answer.body.to_vec()).unwrap(), answer.request_id());

    let other = send(get_request("/whoami")).await;
    assert_ne!(other.request_id(), answer.request_id());
}

#[tokio::test]
async fn a_client_request_id_is_propagated() {
    let request = Request::get("/whoami").header("x-request-id", "gateway-42").body(Body::empty()).unwrap();
    let answer = send(request).await;
    assert_eq!(answer.request_id(), "gateway-42");
    assert_eq!(answer.body, "gateway-42");

    // Also on problems, whichever layer produced them.
    let request = Request::get("/nowhere").header("x-request-id", "gateway-43").body(Body::empty()).unwrap();
    assert_eq!(send(request).await.request_id(), "gateway-43");
}

#[tokio::test]
async fn an_unacceptable_client_request_id_is_replaced() {
    let long = "x".repeat(200);
    for bad in [long.as_str(), "two words"] {
        let request = Request::get("/whoami").header("x-request-id", bad).body(Body::empty()).unwrap();
        let answer = send(request).await;
        assert_ne!(answer.request_id(), bad);
        assert_eq!(Uuid::parse_str(answer.request_id()).unwrap().get_version_num(), 7);
    }
}

#[tokio::test]
async fn an_unknown_path_is_a_404_problem() {
    let answer = send(get_request("/no/such/thing")).await;
    let problem = answer.problem(StatusCode::NOT_FOUND, types::NOT_FOUND);
    assert_eq!(problem["detail"], "no resource at /no/such/thing");

    // A handler's own 404 has the same shape.
    let answer = send(get_request(&format!("/orders/{}", Uuid::now_v7()))).await;
    answer.problem(StatusCode::NOT_FOUND, types::NOT_FOUND);
    let found = send(get_request(&format!("/orders/{KNOWN_ORDER}"))).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json()["status"], "shipped");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    for (method, uri, allowed) in
        [(Method::DELETE, "/orders", "POST"), (Method::POST, "/healthz", "GET"), (Method::PUT, "/admin/stats", "GET")]
    {
        let answer = send(Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()).await;
        answer.problem(StatusCode::METHOD_NOT_ALLOWED, types::METHOD_NOT_ALLOWED);
        let allow = answer.headers.get(header::ALLOW).unwrap().to_str().unwrap();
        assert!(allow.contains(allowed), "{uri}: allow {allow}");
    }
}

#[tokio::test]
async fn a_conflict_carries_its_extension_members() {
    let answer = send(Request::post(format!("/orders/{KNOWN_ORDER}/cancel")).body(Body::empty()).unwrap()).await;
    let problem = answer.problem(StatusCode::CONFLICT, types::CONFLICT);
    assert_eq!(problem["current_status"], "shipped");
    assert_eq!(problem["detail"], "a shipped order cannot be cancelled");
}

#[tokio::test]
async fn store_errors_map_to_problems_without_leaking() {
    send(get_request("/store/conflict")).await.problem(StatusCode::CONFLICT, types::CONFLICT);

    let invalid = send(get_request("/store/invalid")).await;
    let problem = invalid.problem(StatusCode::UNPROCESSABLE_ENTITY, types::INVALID_REQUEST);
    assert_eq!(problem["detail"], "stream id must not be empty");

    let backend = send(get_request("/store/backend")).await;
    backend.problem(StatusCode::SERVICE_UNAVAILABLE, types::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&backend.body);
    assert!(!text.contains("hunter2") && !text.contains("postgres"), "{text}");
}

#[tokio::test]
async fn an_internal_error_is_a_generic_500() {
    let answer = send(get_request("/boom")).await;
    let problem = answer.problem(StatusCode::INTERNAL_SERVER_ERROR, types::INTERNAL);
    assert_eq!(problem["detail"], "an unexpected error occurred; it has been logged");
    let text = String::from_utf8_lossy(&answer.body);
    assert!(!text.contains("disk on fire") && !text.contains("reserve"), "{text}");
}

#[tokio::test]
async fn a_panicking_handler_answers_500() {
    let answer = send(get_request("/panic")).await;
    let problem = answer.problem(StatusCode::INTERNAL_SERVER_ERROR, types::INTERNAL);
    assert!(!problem.to_string().contains("index out of range"));
}

#[tokio::test]
async fn axum_rejections_become_problems() {
    let answer = send(get_request("/orders/not-a-uuid")).await;
    let problem = answer.problem(StatusCode::BAD_REQUEST, "about:blank");
    assert_eq!(problem["title"], "Bad Request");
    assert!(problem["detail"].as_str().unwrap().contains("UUID"), "{problem}");
}

#[tokio::test]
async fn bare_error_responses_become_problems_keeping_their_headers() {
    let answer = send(get_request("/unauthorized")).await;
    let problem = answer.problem(StatusCode::UNAUTHORIZED, "about:blank");
    assert_eq!(problem["detail"], "token expired");
    assert_eq!(answer.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");

    // A server error's body is not for the client.
    let answer = send(get_request("/plain-failure")).await;
    let problem = answer.problem(StatusCode::INTERNAL_SERVER_ERROR, "about:blank");
    assert!(problem.get("detail").is_none(), "{problem}");
}

#[tokio::test]
async fn the_router_state_type_is_kept() {
    #[derive(Clone)]
    struct AppState {
        greeting: &'static str,
    }
    let routes = Router::new().route(
        "/hello",
        get(|axum::extract::State(state): axum::extract::State<AppState>| async move { state.greeting }),
    );
    let app = with_standard_stack(routes, &HttpOptions::default()).with_state(AppState { greeting: "hi" });
    let answer = send_to(app, get_request("/hello")).await;
    assert_eq!(answer.body, "hi");
}

#[tokio::test]
async fn service_middleware_composes_with_the_stack() {
    // A service's own layer added after the stack still sees problems and ids.
    let app = app().layer(middleware::map_response(|mut response: axum::response::Response| async move {
        response.headers_mut().insert("x-service", "orders".parse().unwrap());
        response
    }));
    let answer = send_to(app, get_request("/nowhere")).await;
    answer.problem(StatusCode::NOT_FOUND, types::NOT_FOUND);
    assert_eq!(answer.headers.get("x-service").unwrap(), "orders");
}
