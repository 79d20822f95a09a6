//! The operators' API, `/api/admin`: the admin routes every service has
//! (`polis_runtime::admin`: dead letters, sagas, event streams), asked of
//! every service at once and answered as one list whose items say which
//! service they are from, so that one call (`polis dlq list`) sees the
//! whole shop in either deployment. `?service=NAME` asks one service only.
//!
//! - **Lists merge by key**: dead letters by id (UUIDv7: every service is
//!   asked for a page after the same id, and the merged page is the first
//!   `limit` of all answers); sagas by `(service, saga type, saga id)`,
//!   whose `after` is `<service>:<saga type>:<saga id>` (services before
//!   the cursor's are not asked, the cursor's own is asked after the rest).
//! - **A dead letter's id names it in every service**: showing, replaying
//!   or discarding one asks every service for it, then acts on the one
//!   that has it. A replay or discard may run many handlers (the messages
//!   parked behind the letter), so it may take [`RESOLVE_TIMEOUT`], not the
//!   usual call timeout.
//! - **A stream belongs to the services whose logs hold it**: without
//!   `service`, the one service that has it answers; a stream in several
//!   logs (a customer's, ingested by payment, shipping and order-history)
//!   is a 409 naming them.
//!
//! A service that fails or does not answer fails the whole answer (503,
//! 504, naming it): an admin list that quietly left a service out would
//! say "no dead letters" where there may be some; `service` reads the
//! others.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use contracts::Service;
use polis_runtime::admin::{SagaQuery, parse_saga_cursor, saga_cursor};
use polis_runtime::page::parse_limit;
use polis_runtime::{ApiError, Json, Page, PageKey, PathId, PathText, RequestId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::openapi::{AdminEventPage, AdminSagaPage, DeadLetterPage, Problem, ServiceParam, StreamPath};
use crate::routes::{Gateway, MaybeRequestId, bad_gateway, call_failed, pass_through, request_id, service_failed};
use crate::upstream::{UpstreamError, UpstreamResponse, encode_segment};

/// How long a replay or a discard may take: the letter's handler, then
/// every message parked behind it.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A dead letter, from the service that holds it (`polis_runtime::admin::DeadLetterView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The service whose consumer could not handle the message.
    pub service: String,
    /// The dead letter's own id: how it is shown, replayed or discarded.
    pub id: Uuid,
    /// The consumer that could not handle it.
    pub consumer: String,
    pub status: DeadLetterStatus,
    /// Why it is here: the handler's last error, why the message did not
    /// decode, or the letter it is parked behind.
    pub error: String,
    /// How many times handling was tried (0 for a parked message).
    pub attempts: u32,
    /// When it was given up on (RFC 3339).
    #[schema(format = DateTime)]
    pub failed_at: String,
    /// The message's id, when known.
    pub message_id: Option<Uuid>,
    /// The message's ordering key, when known.
    pub key: Option<String>,
    /// The message, when it decoded.
    pub message: Option<DeadMessage>,
    /// The payload of a message that did not decode.
    pub raw: Option<String>,
}

/// Why a dead letter is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterStatus {
    /// Handling failed, after every retry, or the message did not decode.
    Dead,
    /// Waiting behind an earlier dead letter of its key, so as not to overtake it.
    Parked,
}

/// The message of a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadMessage {
    /// `event`, `command` or `reply`.
    pub kind: String,
    /// Its CloudEvents type.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The sending service.
    pub source: String,
    /// The service whose stream carried it.
    pub target: String,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// Its body.
    pub data: Value,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

/// What a replay or a discard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resolved {
    /// The service that held the dead letter.
    pub service: String,
    /// The dead letter, now gone.
    pub id: Uuid,
    pub action: ResolveAction,
    /// A message parked behind it that failed when it was replayed in
    /// turn: now a dead letter of its own, blocking its key again.
    pub parked_failed: Option<ParkedFailure>,
}

/// How a dead letter was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResolveAction {
    /// Handled again, successfully.
    Replayed,
    /// Dropped without handling.
    Discarded,
}

/// A parked message that failed when it was released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParkedFailure {
    /// Its dead letter's id.
    pub id: Uuid,
    /// Why it failed.
    pub error: String,
}

/// A saga instance, from the service that runs it (`polis_saga::SagaSummary`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Saga {
    /// The service that runs it.
    pub service: String,
    /// The saga's type, e.g. `create-order`.
    pub saga_type: String,
    /// The instance's id within its type (the order's id for `create-order`).
    pub saga_id: String,
    /// The state it was in when last saved, e.g. `authorizing`.
    pub state: String,
    /// Whether it has nothing left to wait for.
    pub finished: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When its current deadline fires, if it has one (RFC 3339).
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
}

impl Saga {
    /// This saga's place in the merged list: what `after` takes to read the page after it.
    pub fn cursor(&self) -> String {
        format!("{}:{}:{}", self.service, self.saga_type, self.saga_id)
    }
}

/// How many unfinished sagas of a type are in a state, in one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagasInFlight {
    pub service: String,
    pub saga_type: String,
    pub state: String,
    pub count: u64,
}

/// One event of a stream, from the service whose log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamEvent {
    /// The service whose log holds the stream.
    pub service: String,
    pub id: Uuid,
    /// Its version within the stream, from 1.
    pub version: u64,
    /// Its position in the service's whole log.
    pub position: u64,
    /// Its CloudEvents type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version of `data`'s schema, as stored.
    pub schema_version: u16,
    /// When it was appended; for an event ingested from another service,
    /// when that service committed it (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// Its body, as stored.
    pub data: Value,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

/// What `service` must be, as its 422 says it.
const SERVICE_FORM: &str =
    "must be one of the shop's services: customer, catalog, inventory, payment, shipping, order, order-history";

fn parse_service(value: &str) -> Result<Service, ApiError> {
    value
        .parse::<Service>()
        .ok()
        .filter(|s| s.has_database())
        .ok_or_else(|| ApiError::validation("service", SERVICE_FORM))
}

/// The services asked: `only`, or every business service in name order
/// (the order of merged lists).
fn asked(only: Option<Service>) -> Vec<Service> {
    let mut services = only.map_or_else(|| Service::BUSINESS.to_vec(), |service| vec![service]);
    services.sort_by_key(|service| service.as_str());
    services
}

/// One answer of a fan-out.
type Called = (Service, Result<UpstreamResponse, UpstreamError>);

/// Calls `path(service)` on each of `services` at once.
async fn call_each(
    gateway: &Gateway,
    method: Method,
    services: &[Service],
    path: impl Fn(Service) -> String,
    request_id: Option<&RequestId>,
    timeout: Duration,
) -> Vec<Called> {
    let calls = services.iter().map(|&service| {
        let (path, method) = (path(service), method.clone());
        async move { (service, gateway.upstream(service).call(method, &path, None, request_id, timeout).await) }
    });
    futures::future::join_all(calls).await
}

/// A service's 200 answer, each item tagged with the service and read as
/// the public type; anything else is the client's problem (503, 502).
fn tagged<T: DeserializeOwned>(
    service: Service,
    called: Result<UpstreamResponse, UpstreamError>,
) -> Result<T, ApiError> {
    let answer = called.map_err(|err| call_failed(service, err))?;
    if answer.status.is_server_error() {
        return Err(service_failed(service, answer.status));
    }
    if answer.status != StatusCode::OK {
        return Err(bad_gateway(service, format!("the admin API answered {}", answer.status)));
    }
    let mut value: Value = serde_json::from_slice(&answer.body).map_err(|err| bad_gateway(service, err))?;
    let tag = |item: &mut Value| {
        if let Some(members) = item.as_object_mut() {
            members.insert("service".to_owned(), service.as_str().into());
        }
    };
    match &mut value {
        Value::Array(items) => items.iter_mut().for_each(tag),
        item => tag(item),
    }
    serde_json::from_value(value).map_err(|err| bad_gateway(service, err))
}

/// Every answer of a fan-out of lists, in the order asked.
fn merged<T: DeserializeOwned>(answers: Vec<Called>) -> Result<Vec<T>, ApiError> {
    let mut all = Vec::new();
    for (service, called) in answers {
        all.extend(tagged::<Vec<T>>(service, called)?);
    }
    Ok(all)
}

/// The query parameters of `GET /api/admin/dead-letters`.
const DEAD_LETTER_PARAMETERS: [&str; 3] = ["service", "limit", "after"];

#[utoipa::path(
    get, path = "/api/admin/dead-letters", tag = "admin",
    params(DeadLetterPage),
    responses(
        (status = 200, description = "A page of the dead letters of every service (or of `service`), by id: about \
            the order they were given up on. A page shorter than `limit` is the last one.", body = Vec<DeadLetter>),
        (status = 422, description = "`service`, `limit` or `after` is invalid; `errors` names it.", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_dead_letters(
    State(gateway): State<Gateway>,
    RawQuery(query): RawQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    polis_runtime::query::refuse_unknown(query.as_deref(), &DEAD_LETTER_PARAMETERS)?;
    let mut only = None;
    let mut page: Page<Uuid> = Page::first(polis_runtime::page::DEFAULT_LIMIT);
    for (name, value) in polis_runtime::query::pairs(query.as_deref()) {
        match name {
            "service" => only = Some(parse_service(value)?),
            "limit" => page.limit = parse_limit(value)?,
            "after" => {
                page.after = Some(Uuid::parse_key(value).ok_or_else(|| ApiError::validation("after", Uuid::FORM))?)
            }
            _ => {}
        }
    }
    Ok(Json(dead_letters(&gateway, only, &page, request_id(&id)).await?).into_response())
}

/// A page of the dead letters of every service (or of `only`), by id.
pub(crate) async fn dead_letters(
    gateway: &Gateway,
    only: Option<Service>,
    page: &Page<Uuid>,
    request_id: Option<&RequestId>,
) -> Result<Vec<DeadLetter>, ApiError> {
    let path = format!("/admin/dead-letters?{}", page.query());
    let answers =
        call_each(gateway, Method::GET, &asked(only), |_| path.clone(), request_id, gateway.call_timeout()).await;
    let mut letters: Vec<DeadLetter> = merged(answers)?;
    letters.sort_by_key(|letter| letter.id);
    letters.truncate(page.limit);
    Ok(letters)
}

#[utoipa::path(
    get, path = "/api/admin/dead-letters/{id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The dead letter's id.")),
    responses(
        (status = 200, description = "The dead letter, from whichever service holds it.", body = DeadLetter),
        (status = 404, description = "No service holds a dead letter with this id (any more).", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_dead_letter(
    State(gateway): State<Gateway>,
    PathId(letter): PathId,
    _: polis_runtime::NoQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    Ok(Json(holder(&gateway, letter, request_id(&id)).await?).into_response())
}

/// The dead letter `letter`, asking every service at once. Not found only
/// if every service says so.
async fn holder(gateway: &Gateway, letter: Uuid, request_id: Option<&RequestId>) -> Result<DeadLetter, ApiError> {
    let path = format!("/admin/dead-letters/{letter}");
    let answers =
        call_each(gateway, Method::GET, &asked(None), |_| path.clone(), request_id, gateway.call_timeout()).await;
    let mut failure = None;
    for (service, called) in answers {
        if called.as_ref().is_ok_and(|answer| answer.status == StatusCode::NOT_FOUND) {
            continue;
        }
        match tagged(service, called) {
            Ok(found) => return Ok(found),
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    Err(failure.unwrap_or_else(|| {
        ApiError::not_found(format!(
            "no service has a dead letter {letter} (never was, or it was already replayed or discarded)"
        ))
    }))
}

#[utoipa::path(
    post, path = "/api/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The dead letter's id.")),
    responses(
        (status = 200, description = "The message was handled again and the dead letter is gone; then the \
            messages parked behind it were replayed in order (`parked_failed` names one that failed).",
            body = Resolved),
        (status = 404, description = "No service holds a dead letter with this id: never did, or it was already \
            replayed or discarded.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It cannot be replayed: its message never decoded \
            (`dead-letter-not-replayable`: discard it), it is parked behind an earlier dead letter of its key \
            (`dead-letter-blocked`), or the handler failed again (`replay-failed`: it stays, with the new error).",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn replay_dead_letter(
    State(gateway): State<Gateway>,
    PathId(letter): PathId,
    _: polis_runtime::NoQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    resolve(&gateway, letter, "replay", request_id(&id)).await
}

#[utoipa::path(
    post, path = "/api/admin/dead-letters/{id}/discard", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The dead letter's id.")),
    responses(
        (status = 200, description = "The dead letter is dropped without being handled; then the messages parked \
            behind it were replayed in order (`parked_failed` names one that failed).", body = Resolved),
        (status = 404, description = "No service holds a dead letter with this id: never did, or it was already \
            replayed or discarded.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The service holding it cannot resolve dead letters (it has no consumer).",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn discard_dead_letter(
    State(gateway): State<Gateway>,
    PathId(letter): PathId,
    _: polis_runtime::NoQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    resolve(&gateway, letter, "discard", request_id(&id)).await
}

/// Replays or discards `letter` at the service that holds it.
async fn resolve(
    gateway: &Gateway,
    letter: Uuid,
    action: &str,
    request_id: Option<&RequestId>,
) -> Result<Response, ApiError> {
    let found = holder(gateway, letter, request_id).await?;
    let service = parse_service(&found.service).map_err(|_| ApiError::internal("a dead letter of no service"))?;
    let path = format!("/admin/dead-letters/{letter}/{action}");
    let called = gateway.upstream(service).call(Method::POST, &path, None, request_id, RESOLVE_TIMEOUT).await;
    match called {
        // Resolved meanwhile (404), or not resolvable (409): the service's problem says why.
        Ok(answer) if answer.status.is_client_error() => Ok(pass_through(answer)),
        called => Ok(Json(tagged::<Resolved>(service, called)?).into_response()),
    }
}

/// The query parameters of `GET /api/admin/sagas`.
const SAGA_PARAMETERS: [&str; 5] = ["service", "state", "finished", "limit", "after"];

/// What the merged saga list's `after` must be, as its 422 says it.
const SAGA_CURSOR_FORM: &str =
    "must be `<service>:<saga type>:<saga id>`, the service, type and id of the last saga of the previous page";

#[utoipa::path(
    get, path = "/api/admin/sagas", tag = "admin",
    params(AdminSagaPage),
    responses(
        (status = 200, description = "A page of the sagas of every service (or of `service`), by service, saga \
            type and saga id. A page shorter than `limit` is the last one.", body = Vec<Saga>),
        (status = 422, description = "A parameter is invalid; `errors` names it.", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_sagas(
    State(gateway): State<Gateway>,
    RawQuery(query): RawQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    polis_runtime::query::refuse_unknown(query.as_deref(), &SAGA_PARAMETERS)?;
    let (mut only, mut after, mut rest) = (None, None, Vec::new());
    for (name, value) in polis_runtime::query::pairs(query.as_deref()) {
        match name {
            "service" => only = Some(parse_service(value)?),
            "after" => {
                let cursor = polis_runtime::query::decode(value).and_then(|text| {
                    let (service, key) = text.split_once(':')?;
                    Some((service.to_owned(), parse_saga_cursor(key)?))
                });
                after = Some(cursor.ok_or_else(|| ApiError::validation("after", SAGA_CURSOR_FORM))?);
            }
            _ => rest.push(format!("{name}={value}")),
        }
    }
    // The services' own rules for the rest (`state`, `finished`, `limit`).
    let read = SagaQuery::from_query(Some(&rest.join("&")))?;
    let mut filter = Vec::new();
    if let Some(state) = &read.filter.state {
        filter.push(format!("state={state}"));
    }
    if let Some(finished) = read.filter.finished {
        filter.push(format!("finished={finished}"));
    }
    filter.push(format!("limit={}", read.limit));
    // Services before the cursor's have nothing after it; the cursor's own
    // is read after its key; those after it from their start.
    let services: Vec<Service> = asked(only)
        .into_iter()
        .filter(|service| after.as_ref().is_none_or(|(name, _)| service.as_str() >= name.as_str()))
        .collect();
    let path = |service: Service| {
        let mut query = filter.clone();
        if let Some((name, key)) = &after
            && service.as_str() == name
        {
            query.push(format!("after={}", encode_segment(&saga_cursor(key))));
        }
        format!("/admin/sagas?{}", query.join("&"))
    };
    let answers = call_each(&gateway, Method::GET, &services, path, request_id(&id), gateway.call_timeout()).await;
    let mut sagas: Vec<Saga> = merged(answers)?;
    sagas.truncate(read.limit);
    Ok(Json(sagas).into_response())
}

#[utoipa::path(
    get, path = "/api/admin/sagas/in-flight", tag = "admin",
    params(ServiceParam),
    responses(
        (status = 200, description = "How many unfinished sagas each service (or `service`) has, by saga type and \
            state; a state with none is not listed.", body = Vec<SagasInFlight>),
        (status = 422, description = "`service` is invalid.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn sagas_in_flight(
    State(gateway): State<Gateway>,
    RawQuery(query): RawQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    let only = only_service(query.as_deref(), &["service"])?;
    Ok(Json(in_flight(&gateway, only, request_id(&id)).await?).into_response())
}

/// The unfinished sagas of every service (or of `only`), counted by type
/// and state.
pub(crate) async fn in_flight(
    gateway: &Gateway,
    only: Option<Service>,
    request_id: Option<&RequestId>,
) -> Result<Vec<SagasInFlight>, ApiError> {
    let path = |_| "/admin/sagas/in-flight".to_owned();
    merged(call_each(gateway, Method::GET, &asked(only), path, request_id, gateway.call_timeout()).await)
}

/// The `service` of a query that reads only `known`, after refusing the others.
fn only_service(query: Option<&str>, known: &[&str]) -> Result<Option<Service>, ApiError> {
    polis_runtime::query::refuse_unknown(query, known)?;
    polis_runtime::query::pairs(query)
        .find(|(name, _)| *name == "service")
        .map(|(_, value)| parse_service(value))
        .transpose()
}

/// The query parameters of `GET /api/admin/events/{stream}`.
const EVENT_PARAMETERS: [&str; 3] = ["service", "limit", "after"];

#[utoipa::path(
    get, path = "/api/admin/events/{stream}", tag = "admin",
    params(StreamPath, AdminEventPage),
    responses(
        (status = 200, description = "A page of the stream's events by version, from the service whose log holds \
            it. A page shorter than `limit` is the last one.", body = Vec<StreamEvent>),
        (status = 404, description = "No service's log (or not `service`'s) holds this stream.", body = Problem,
            content_type = "application/problem+json"),
        (status = 409, description = "Several services' logs hold a stream of this name (`services` names them): \
            say which with `service`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`service`, `limit` or `after` is invalid; `errors` names it.", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub(crate) async fn stream_events(
    State(gateway): State<Gateway>,
    PathText(stream): PathText,
    RawQuery(query): RawQuery,
    id: MaybeRequestId,
) -> Result<Response, ApiError> {
    polis_runtime::query::refuse_unknown(query.as_deref(), &EVENT_PARAMETERS)?;
    let mut only = None;
    let mut page: Page<u64> = Page::first(polis_runtime::page::DEFAULT_LIMIT);
    for (name, value) in polis_runtime::query::pairs(query.as_deref()) {
        match name {
            "service" => only = Some(parse_service(value)?),
            "limit" => page.limit = parse_limit(value)?,
            "after" => {
                page.after = Some(u64::parse_key(value).ok_or_else(|| ApiError::validation("after", u64::FORM))?)
            }
            _ => {}
        }
    }
    let path = format!("/admin/events/{}?{}", encode_segment(&stream), page.query());
    let answers =
        call_each(&gateway, Method::GET, &asked(only), |_| path.clone(), request_id(&id), gateway.call_timeout()).await;
    let mut found: Vec<Vec<StreamEvent>> = Vec::new();
    let mut holders: Vec<&'static str> = Vec::new();
    let mut failure = None;
    for (service, called) in answers {
        if called.as_ref().is_ok_and(|answer| answer.status == StatusCode::NOT_FOUND) {
            continue;
        }
        match tagged(service, called) {
            Ok(events) => {
                found.push(events);
                holders.push(service.as_str());
            }
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    match (found.len(), failure) {
        (1, None) => Ok(Json(found.remove(0)).into_response()),
        (0, None) => Err(ApiError::not_found(format!("no service's log holds a stream {stream:?}"))),
        (0 | 1, Some(failure)) => Err(failure),
        _ => Err(ApiError::conflict(format!(
            "the logs of {} each hold a stream {stream:?}; say which with `service`",
            holders.join(", ")
        ))
        .with_extension("services", holders)),
    }
}
