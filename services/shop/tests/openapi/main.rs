//! The API document tells the truth: requests made from the document the
//! gateway serves (`GET /api/openapi.json`), from its own schemas, are sent
//! to the whole shop (every service embedded, on throwaway SQLite files),
//! and every answer is held to the document:
//!
//! - no answer is a 5xx: nothing here breaks a service, so a 500, a 502, a
//!   503 or a 504 is a fault, documented or not;
//! - every status is one the document declares for the operation;
//! - every body is of a declared media type and valid against its schema
//!   (`schema.rs`), and a problem's `status` is the answer's;
//! - a query parameter the document does not declare for the operation
//!   is refused with a 400 naming it, never ignored;
//! - a request valid by the document in every part is not refused as
//!   malformed or invalid (400, 422): a client generated from the document
//!   does not send what the server refuses (placing an order may still be
//!   a 422: an unknown customer or product is no matter of form);
//! - every value an OpenAPI link passes on is valid for the parameter it
//!   feeds;
//! - and every operation answered at least one request with a success.
//!
//! The requests (`generate.rs`) are valid and invalid values of every
//! parameter and body, random path segments, unknown query parameters,
//! bodies of the wrong shape, not JSON or not declared as JSON; ids and skus
//! the shop answered with are reused, so that requests reach past the 404s.
//! The run is deterministic: a fixed seed and a fixed number of cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod generate;
mod schema;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Router;
use axum::body::Body as HttpBody;
use axum::http::{Method, Request, StatusCode, header};
use generate::{Body, Operation, Plan, Pools, Schemas};
use http_body_util::BodyExt;
use proptest::strategy::{Strategy, Union, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use schema::Validator;
use serde_json::Value;
use tower::ServiceExt;

/// How many requests one run sends.
const CASES: u32 = 4000;

/// How many more requests an operation that never succeeded gets afterwards.
const EXTRA_CASES: u32 = 500;

/// Operations that may answer 422 to a request valid in every part: the
/// schema cannot say which customers and products exist.
const SEMANTIC_422: [&str; 1] = ["create_order"];

/// Query parameters of an operation of which a request may give only one
/// (each parameter's description says so; a schema per parameter cannot):
/// a request with two of them may be a 422.
const EXCLUSIVE: [(&str, &[&str]); 1] = [("get_order", &["wait_ms", "version", "as_of"])];

/// One answer, read in full.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
}

async fn send(app: &Router, request: Request<HttpBody>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let header = |name| response.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (content_type, location) = (header(header::CONTENT_TYPE), header(header::LOCATION));
    let status = response.status();
    let body = if content_type.as_deref() == Some("text/event-stream") {
        first_event(response.into_body()).await
    } else {
        response.into_body().collect().await.unwrap().to_bytes().to_vec()
    };
    Answer { status, content_type, location, body }
}

/// The first event of a stream of server-sent events, which never ends.
async fn first_event(mut body: axum::body::Body) -> Vec<u8> {
    let mut read = Vec::new();
    while !read.windows(2).any(|two| two == b"\n\n") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame()).await;
        let frame = frame.expect("no event within 30 s").expect("the stream ended").unwrap();
        read.extend_from_slice(frame.data_ref().map_or(&[][..], |data| &data[..]));
    }
    read
}

/// The request a plan describes, with the pools' values filled in.
fn request(operation: &Operation, plan: &Plan, pools: &Pools) -> Request<HttpBody> {
    let mut uri = operation.path.clone();
    for (name, value) in &plan.path {
        uri = uri.replace(&format!("{{{name}}}"), &value.encoded(pools));
    }
    let query: Vec<String> =
        plan.query.iter().map(|(name, value)| format!("{name}={}", value.encoded(pools))).collect();
    if !query.is_empty() {
        uri = format!("{uri}?{}", query.join("&"));
    }
    let mut request = Request::builder().method(Method::from_bytes(operation.method.as_bytes()).unwrap()).uri(uri);
    for (name, value) in &plan.headers {
        let value = match value.resolve(pools) {
            Value::String(text) => text,
            other => other.to_string(),
        };
        request = request.header(name.as_str(), value);
    }
    let body = match &plan.body {
        None => HttpBody::empty(),
        Some(Body::Json(value)) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            HttpBody::from(serde_json::to_vec(&value.resolve(pools)).unwrap())
        }
        Some(Body::Raw { content_type, bytes }) => {
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type.as_str());
            }
            HttpBody::from(bytes.clone())
        }
    };
    request.body(body).unwrap()
}

/// Header values sent go to the pool of their pattern, so that a later
/// request may repeat one: an `Idempotency-Key` used again (a replay, or a
/// key reused for another order).
fn remember_headers(operation: &Operation, request: &Request<HttpBody>, pools: &mut Pools) {
    for parameter in operation.parameters.iter().filter(|p| p.location == "header") {
        let (Some(pattern), Some(value)) =
            (parameter.schema["pattern"].as_str(), request.headers().get(&parameter.name))
        else {
            continue;
        };
        if let Ok(value) = value.to_str() {
            pools.add(format!("pattern:{pattern}"), value.to_owned());
        }
    }
}

/// What the run learned.
#[derive(Default)]
struct Run {
    pools: Pools,
    /// Operation id → statuses answered.
    statuses: BTreeMap<String, BTreeSet<u16>>,
}

/// Holds one answer to the document; on success, feeds the pools.
fn judge(
    validator: &Validator<'_>,
    operations: &[Operation],
    operation: &Operation,
    plan: &Plan,
    answer: &Answer,
    run: &mut Run,
) -> Result<(), String> {
    let status = answer.status.as_u16();
    run.statuses.entry(operation.id.clone()).or_default().insert(status);
    if answer.status.is_server_error() {
        return Err(format!("a server error: {status} {}", String::from_utf8_lossy(&answer.body)));
    }
    let Some(documented) = operation.responses.get(&status.to_string()) else {
        let declared: Vec<&String> = operation.responses.keys().collect();
        return Err(format!(
            "{status} is not documented (only {declared:?}): {}",
            String::from_utf8_lossy(&answer.body)
        ));
    };
    if let Some(name) = &plan.unknown {
        // Named, unless the 400 is for a malformed path parameter, checked first.
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        let path: Vec<&str> = plan.path.iter().map(|(name, _)| name.as_str()).collect();
        let named = body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .any(|field| field == name || path.contains(&field));
        if status != 400 || !named {
            return Err(format!("the unknown query parameter `{name}` was not refused with a 400 naming it: {body}"));
        }
    }
    let exclusive_given = EXCLUSIVE.iter().any(|(id, names)| {
        *id == operation.id && plan.query.iter().filter(|(name, _)| names.contains(&name.as_str())).count() > 1
    });
    let semantic = SEMANTIC_422.contains(&operation.id.as_str()) || exclusive_given;
    if plan.valid && matches!(status, 400 | 422) && !(status == 422 && semantic) {
        return Err(format!(
            "a request valid by the document was refused with {status}: {}",
            String::from_utf8_lossy(&answer.body)
        ));
    }

    let mut seen = Vec::new();
    match documented.get("content").and_then(Value::as_object) {
        None => {
            if !answer.body.is_empty() {
                return Err(format!("a body where the document declares none: {:?}", answer.content_type));
            }
        }
        Some(content) => {
            let media_type = answer.content_type.as_deref().map(|c| c.split(';').next().unwrap_or(c).trim());
            let declared = media_type.and_then(|media_type| content.get(media_type)).ok_or_else(|| {
                let declared: Vec<&String> = content.keys().collect();
                format!("content type {:?} is not declared (only {declared:?})", answer.content_type)
            })?;
            // Text (the metrics, the dashboard's page, its stream's first
            // event) is held to its schema as a JSON string.
            let text = ["text/plain", "text/html", "text/event-stream"];
            let body: Value = if media_type.is_some_and(|m| text.contains(&m)) {
                let text = String::from_utf8(answer.body.to_vec()).map_err(|_| "text that is not UTF-8".to_owned())?;
                Value::String(text)
            } else {
                serde_json::from_slice(&answer.body)
                    .map_err(|err| format!("the body is not JSON ({err}): {}", String::from_utf8_lossy(&answer.body)))?
            };
            validator
                .validate(&declared["schema"], &body, &mut seen)
                .map_err(|reason| format!("the body breaks its schema: {reason}\nbody: {body}"))?;
            if media_type == Some("application/problem+json") && body["status"] != status {
                return Err(format!("a problem whose status is not the answer's: {body}"));
            }
            if answer.status.is_success() {
                follow_links(validator, operations, documented, &body, &mut run.pools)?;
            }
        }
    }
    if documented["headers"].get("location").is_some() && answer.location.is_none() {
        return Err("no location header, which the document declares".to_owned());
    }
    if answer.status.is_success() {
        for (key, value) in seen {
            run.pools.add(key, value);
        }
    }
    Ok(())
}

/// Each link of a success: the value it passes on must fit the target
/// parameter's schema; it goes to that parameter's pool.
fn follow_links(
    validator: &Validator<'_>,
    operations: &[Operation],
    response: &Value,
    body: &Value,
    pools: &mut Pools,
) -> Result<(), String> {
    for (name, link) in response["links"].as_object().into_iter().flatten() {
        let target = link["operationId"].as_str().unwrap();
        let target = operations.iter().find(|o| o.id == target).ok_or(format!("link {name}: no operation {target}"))?;
        for (parameter, expression) in link["parameters"].as_object().into_iter().flatten() {
            let pointer = expression
                .as_str()
                .and_then(|e| e.strip_prefix("$response.body#"))
                .ok_or(format!("link {name}: unsupported expression {expression}"))?;
            let value = body.pointer(pointer).ok_or(format!("link {name}: {pointer} is not in the answer {body}"))?;
            let declared = target
                .parameters
                .iter()
                .find(|p| &p.name == parameter)
                .ok_or(format!("link {name}: {} has no parameter {parameter}", target.id))?;
            validator
                .validate(&declared.schema, value, &mut Vec::new())
                .map_err(|reason| format!("link {name} passes {value} to {}'s {parameter}: {reason}", target.id))?;
            if let Some(text) = value.as_str() {
                pools.add(generate::link_pool(&target.id, parameter), text.to_owned());
            }
        }
    }
    Ok(())
}

#[test]
fn every_answer_is_documented_and_matches_its_schema() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Few attempts per message, so that a message payment cannot handle yet
    // is a dead letter within moments (`DeadLetters`); everything else
    // either succeeds at once or fails for good.
    let mut config = shop::ShopConfig::default();
    config.host.consumer.max_attempts = 3;
    let shop = runtime.block_on(shop::Embedded::start(dir.path(), &config)).unwrap();
    let app = polis_runtime::with_standard_stack(shop.gateway(), &polis_runtime::HttpOptions::default());

    let served = runtime.block_on(send(&app, Request::get("/api/openapi.json").body(HttpBody::empty()).unwrap()));
    assert_eq!(served.status, StatusCode::OK);
    let document: Value = serde_json::from_slice(&served.body).unwrap();
    let validator = Validator::new(&document);
    let operations = generate::operations(&document, &validator);
    assert!(operations.len() >= 21, "{} operations", operations.len());
    let schemas = Schemas { validator: &validator };
    let strategy =
        Union::new(operations.iter().enumerate().map(|(i, operation)| generate::plans(i, operation, &schemas))).boxed();

    let config = Config { cases: CASES, failure_persistence: None, max_shrink_iters: 256, ..Config::default() };
    let seed = [7u8; 32];
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let run = RefCell::new(Run::default());
    let outcome = runner.run(&strategy, |plan: Plan| {
        let operation = &operations[plan.operation];
        let mut run = run.borrow_mut();
        let request = request(operation, &plan, &run.pools);
        remember_headers(operation, &request, &mut run.pools);
        let described = format!("{} {}", request.method(), request.uri());
        let answer = runtime.block_on(send(&app, request));
        judge(&validator, &operations, operation, &plan, &answer, &mut run)
            .map_err(|reason| TestCaseError::fail(format!("{} ({described}): {reason}", operation.id)))
    });
    let run = run.into_inner();
    let report: Vec<String> =
        run.statuses.iter().map(|(operation, statuses)| format!("{operation}: {statuses:?}")).collect();
    println!("statuses answered, by operation:\n{}", report.join("\n"));
    if let Err(failure) = outcome {
        panic!("{failure}\nstatuses answered:\n{}", report.join("\n"));
    }
    // An operation that never succeeded gets more of its own requests, now
    // that the shop has moved on: still judged, still from the document. A
    // cancellation needs an approved order, which random customers and
    // products seldom give: one is placed for it first, through the API.
    let mut run = run;
    let approved = runtime.block_on(approved_order(&shop, &app));
    run.pools.add(generate::link_pool("cancel_order", "id"), approved.clone());
    // The admin operations need things that exist: an order's event stream,
    // and dead letters to show, replay (once fixable) and discard.
    run.pools.add(generate::link_pool("stream_events", "stream"), format!("order-{approved}"));
    let letters = runtime.block_on(DeadLetters::make(&shop, &app));
    run.pools.add(generate::link_pool("get_dead_letter", "id"), letters.shown);
    run.pools.add(generate::link_pool("replay_dead_letter", "id"), letters.replayable);
    run.pools.add(generate::link_pool("discard_dead_letter", "id"), letters.discardable);
    for (index, operation) in operations.iter().enumerate() {
        let succeeded = |run: &Run| {
            run.statuses.get(&operation.id).is_some_and(|statuses| statuses.iter().any(|s| (200..300).contains(s)))
        };
        let strategy = generate::plans(index, operation, &schemas);
        let mut extra = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        for _ in 0..EXTRA_CASES {
            if succeeded(&run) {
                break;
            }
            let plan = strategy.new_tree(&mut extra).unwrap().current();
            let request = request(operation, &plan, &run.pools);
            let described = format!("{} {}", request.method(), request.uri());
            let answer = runtime.block_on(send(&app, request));
            if let Err(reason) = judge(&validator, &operations, operation, &plan, &answer, &mut run) {
                panic!("{} ({described}): {reason}", operation.id);
            }
        }
    }
    for operation in &operations {
        let statuses = run.statuses.get(&operation.id).cloned().unwrap_or_default();
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{} never succeeded in {CASES} requests: {statuses:?}",
            operation.id
        );
    }
    runtime.block_on(async move { drop(shop) });
}

/// Dead letters in the payment service, made with `shop::faults` once
/// the random requests are done (they would resolve them): two it can
/// never handle, and an authorization for a customer it did not know,
/// replayable since the customer's registration reached it.
struct DeadLetters {
    shown: String,
    replayable: String,
    discardable: String,
}

impl DeadLetters {
    async fn make(shop: &shop::Embedded, app: &Router) -> Self {
        let customer = uuid::Uuid::now_v7();
        let unknown = [shop::faults::unknown_payment_command(), shop::faults::unknown_payment_command()];
        let authorization = shop::faults::authorization_for_unknown_customer(uuid::Uuid::now_v7(), customer, 100);
        let messages = [unknown[0].clone(), unknown[1].clone(), authorization.clone()];
        shop.bus().publish(&messages).await.unwrap();
        let list = || async {
            let request = Request::get("/api/admin/dead-letters?service=payment").body(HttpBody::empty()).unwrap();
            serde_json::from_slice::<Value>(&send(app, request).await.body).unwrap_or_default()
        };
        let letter_of = |letters: &Value, message: &polis_core::Message| {
            let mut letters = letters.as_array().into_iter().flatten();
            letters.find(|l| l["message_id"] == message.id.to_string()).map(|l| l["id"].as_str().unwrap().to_owned())
        };
        let all_dead = polis_testkit::wait_for(Duration::from_secs(30), || async {
            let letters = list().await;
            messages.iter().all(|message| letter_of(&letters, message).is_some())
        })
        .await;
        assert!(all_dead.is_ok(), "not every message was dead-lettered: {}", list().await);
        shop.bus().publish(&[shop::faults::customer_registered(customer)]).await.unwrap();
        wait_until_payment_knows(shop, &customer.to_string()).await;
        let letters = list().await;
        let id = |message: &polis_core::Message| letter_of(&letters, message).unwrap();
        DeadLetters { shown: id(&unknown[0]), discardable: id(&unknown[1]), replayable: id(&authorization) }
    }
}

/// Waits until the payment service's replica has customer `id`.
async fn wait_until_payment_knows(shop: &shop::Embedded, id: &str) {
    let payment = shop.router(shop::Service::Payment);
    let known = polis_testkit::wait_for(Duration::from_secs(30), || async {
        let request = Request::get(format!("/credit/{id}")).body(HttpBody::empty()).unwrap();
        send(&payment, request).await.status == StatusCode::OK
    })
    .await;
    assert!(known.is_ok(), "payment never learnt customer {id}");
}

/// Places an order the saga approves, through the public API, and returns
/// its id once it is APPROVED.
async fn approved_order(shop: &shop::Embedded, app: &Router) -> String {
    let post = |path: &str, body: Value| {
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(HttpBody::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    };
    let json = |answer: Answer| -> Value { serde_json::from_slice(&answer.body).unwrap() };
    let address =
        serde_json::json!({ "line1": "1 Main St", "city": "Utrecht", "postal_code": "3511", "country": "NL" });
    let customer = json(
        send(
            app,
            post(
                "/api/customers",
                serde_json::json!({
                    "name": "Ann", "email": format!("ann-{}@example.com", uuid::Uuid::now_v7().simple()),
                    "address": address, "credit_limit": 1_000_000
                }),
            ),
        )
        .await,
    );
    // Payment learns customers from events: with few attempts per message,
    // an authorization must not come before the registration.
    wait_until_payment_knows(shop, customer["id"].as_str().unwrap()).await;
    let sku = format!("FIX-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    send(app, post("/api/products", serde_json::json!({ "sku": sku, "name": "Mug", "price": 100 }))).await;
    let stock = Request::put(format!("/api/inventory/{sku}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(HttpBody::from(r#"{"available":10}"#))
        .unwrap();
    send(app, stock).await;
    let order = json(
        send(
            app,
            post(
                "/api/orders",
                serde_json::json!({
                    "customer_id": customer["id"], "items": [{ "sku": sku, "quantity": 1 }]
                }),
            ),
        )
        .await,
    );
    let id = order["id"].as_str().unwrap().to_owned();
    let decided =
        send(app, Request::get(format!("/api/orders/{id}?wait_ms=10000")).body(HttpBody::empty()).unwrap()).await;
    assert_eq!(json(decided)["status"], "APPROVED", "the fixture order was not approved");
    id
}

/// The validator fails an answer that breaks its schema, and the judge an
/// undocumented status: the property above can fail.
#[test]
fn an_answer_off_the_document_is_caught() {
    let document = serde_json::json!({
        "paths": {},
        "components": { "schemas": { "Thing": {
            "type": "object", "required": ["id"], "properties": { "id": { "type": "string", "format": "uuid" } }
        } } }
    });
    let validator = Validator::new(&document);
    let response = serde_json::json!({
        "description": "a thing",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Thing" } } }
    });
    let operation = Operation {
        id: "get_thing".into(),
        method: "GET".into(),
        path: "/things".into(),
        parameters: Vec::new(),
        body: None,
        responses: BTreeMap::from([("200".to_owned(), response)]),
    };
    let plan =
        Plan { operation: 0, path: vec![], query: vec![], headers: vec![], body: None, valid: true, unknown: None };
    let answer = |status: u16, body: &str| Answer {
        status: StatusCode::from_u16(status).unwrap(),
        content_type: Some("application/json".into()),
        location: None,
        body: body.as_bytes().to_vec(),
    };
    let judged = |answer: &Answer| {
        judge(&validator, std::slice::from_ref(&operation), &operation, &plan, answer, &mut Run::default())
    };
    let id = "0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70";
    assert_eq!(judged(&answer(200, &format!(r#"{{"id":"{id}"}}"#))), Ok(()));
    assert!(judged(&answer(200, r#"{"id":"not-a-uuid"}"#)).unwrap_err().contains("breaks its schema"));
    assert!(judged(&answer(200, "{}")).unwrap_err().contains("required"));
    assert!(judged(&answer(404, "{}")).unwrap_err().contains("not documented"));
    assert!(judged(&answer(503, "{}")).unwrap_err().contains("server error"));
}
