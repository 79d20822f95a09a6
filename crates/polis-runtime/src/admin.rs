//! Operating a service over HTTP: its dead letters, its sagas and its event
//! streams. [`crate::host`] adds these routes to every service it hosts,
//! so an operator (the `polis` CLI, through the gateway) reaches them the
//! same way in both deployments:
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/dead-letters?limit=N&after=ID` | 200 a page of dead letters ([`DeadLetterView`]) by id |
//! | `GET /admin/dead-letters/{id}` | 200 [`DeadLetterView`]; 404 |
//! | `POST /admin/dead-letters/{id}/replay` | 200 [`Resolved`]: handled again, then what was parked behind it; 404; 409 |
//! | `POST /admin/dead-letters/{id}/discard` | 200 [`Resolved`]: dropped, then what was parked behind it replayed; 404; 409 |
//! | `GET /admin/sagas?state=S&finished=B&limit=N&after=TYPE:ID` | 200 a page of sagas ([`SagaSummary`]) by type and id |
//! | `GET /admin/sagas/in-flight` | 200 unfinished sagas counted by type and state ([`InFlight`]) |
//! | `GET /admin/events/{stream}?limit=N&after=V` | 200 a page of the stream's events ([`EventView`]) by version; 404 |
//!
//! The routes are merged into the service's own router, so a service must
//! not serve paths of its own under `/admin/dead-letters`, `/admin/sagas`
//! or `/admin/events` (axum refuses overlapping routes when `host` starts
//! it). They answer whoever reaches the service: put them behind whatever
//! guards the service's other routes.
//!
//! Lists follow [`crate::Page`]'s rules (a query parameter a route does not
//! read is a 400, a bad `limit` or `after` a 422 naming it); ids are
//! [`crate::PathId`]s. A stream whose name holds a `/` (`customer/<id>`,
//! an ingested one) is written with it percent-encoded, as one segment.
//!
//! A replay runs the message through the consumer's handler again in a
//! transaction with the letter's removal ([`polis_bus::Consumer::replay`]):
//! a second replay of the same letter, or a replay racing a discard, finds
//! it gone (404). What cannot be replayed is a 409 of its own problem type:
//! `dead-letter-not-replayable` (a payload that never decoded: discard it),
//! `dead-letter-blocked` (parked behind an earlier letter of its key:
//! resolve that first), `replay-failed` (the handler failed again; the
//! letter stays, with the new error and one more attempt) and `no-handler`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use polis_bus::{Consumer, DeadLetterError};
use polis_core::outbox::{DeadLetter, DeadLetterStatus};
use polis_core::{Message, RecordedEvent};
use polis_saga::{InFlight, SagaFilter, SagaKey, SagaSummary};
use polis_store::sql::{Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ApiError, Json, NoQuery, Page, PathId, PathText};

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The dead letter's own id, by which it is shown, replayed or discarded.
    pub id: Uuid,
    /// The consumer that could not handle the message.
    pub consumer: String,
    /// `dead` (handling failed, or the message was malformed) or `parked`
    /// (waiting behind an earlier dead letter of its key).
    pub status: DeadLetterStatus,
    /// Why it is here: the handler's last error, the decoding error, or the
    /// letter it is parked behind.
    pub error: String,
    /// How many times handling was tried.
    pub attempts: u32,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
    /// The message's id, when known.
    pub message_id: Option<Uuid>,
    /// The message's ordering key, when known.
    pub key: Option<String>,
    /// The message, when it decoded.
    pub message: Option<MessageView>,
    /// The payload of a message that did not decode.
    pub raw: Option<String>,
}

/// A dead letter's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// `event`, `command` or `reply`.
    pub kind: String,
    /// The CloudEvents type, e.g. `payment.authorize-payment.v1`.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The sending service.
    pub source: String,
    /// The service whose stream carried it.
    pub target: String,
    /// When it was created.
    pub time: DateTime<Utc>,
    /// Its JSON body.
    pub data: serde_json::Value,
    /// The request it belongs to, if any.
    pub correlation_id: Option<Uuid>,
    /// The message that caused it, if any.
    pub causation_id: Option<Uuid>,
}

impl From<&Message> for MessageView {
    fn from(message: &Message) -> Self {
        Self {
            kind: message.kind.as_str().to_owned(),
            message_type: message.message_type.clone(),
            source: message.source.clone(),
            target: message.target.clone(),
            time: message.time,
            data: message.data.clone(),
            correlation_id: message.metadata.correlation_id,
            causation_id: message.metadata.causation_id,
        }
    }
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        Self {
            id: letter.id,
            consumer: letter.consumer,
            status: letter.status,
            error: letter.error,
            attempts: letter.attempts,
            failed_at: letter.failed_at,
            message_id: letter.message_id,
            key: letter.key,
            message: letter.message.as_ref().map(MessageView::from),
            raw: letter.raw,
        }
    }
}

/// What a replay or a discard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The dead letter resolved.
    pub id: Uuid,
    /// `replayed` or `discarded`.
    pub action: String,
    /// A message that was parked behind it and failed when it was replayed
    /// in turn: now a dead letter of its own, blocking its key again.
    pub parked_failed: Option<ParkedFailure>,
}

/// A parked message that failed when it was released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedFailure {
    /// Its dead letter's id.
    pub id: Uuid,
    /// Why it failed.
    pub error: String,
}

/// An event of a stream as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// The event's id.
    pub id: Uuid,
    /// Its version within the stream, from 1.
    pub version: u64,
    /// Its position in the service's whole log.
    pub position: u64,
    /// The CloudEvents type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version of `data`'s schema, as stored.
    pub schema_version: u16,
    /// When it was appended (for an ingested event: when its source committed it).
    pub time: DateTime<Utc>,
    /// Its JSON body, as stored.
    pub data: serde_json::Value,
    /// The request it belongs to, if any.
    pub correlation_id: Option<Uuid>,
    /// The message that caused it, if any.
    pub causation_id: Option<Uuid>,
}

impl From<RecordedEvent> for EventView {
    fn from(event: RecordedEvent) -> Self {
        Self {
            id: event.id,
            version: event.stream_version,
            position: event.global_position,
            event_type: event.event_type,
            schema_version: event.schema_version,
            time: event.time,
            data: event.data,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
        }
    }
}

/// The query parameters of `GET /admin/sagas`.
pub const SAGA_PARAMETERS: [&str; 4] = ["state", "finished", "limit", "after"];

/// What a saga list's `after` must be, as its 422 says it.
pub const SAGA_KEY_FORM: &str =
    "must be `<saga type>:<saga id>`, the type and id of the last saga of the previous page";

/// A saga's place in a list as `after` writes it: `<type>:<id>`.
pub fn saga_cursor(key: &SagaKey) -> String {
    format!("{}:{}", key.saga_type, key.saga_id)
}

/// A list's `after` read back ([`saga_cursor`]): split at the first `:`
/// (saga types hold none, [`polis_saga::is_type_name`]). `None` for
/// anything else.
pub fn parse_saga_cursor(text: &str) -> Option<SagaKey> {
    let (saga_type, saga_id) = text.split_once(':')?;
    (polis_saga::is_type_name(saga_type) && !saga_id.is_empty() && !saga_id.contains('\0'))
        .then(|| SagaKey { saga_type: saga_type.to_owned(), saga_id: saga_id.to_owned() })
}

/// A saga list's query (`GET /admin/sagas`), read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaQuery {
    /// Which sagas.
    pub filter: SagaFilter,
    /// Only those after this one.
    pub after: Option<SagaKey>,
    /// At most this many.
    pub limit: usize,
}

impl SagaQuery {
    /// Reads `state`, `finished`, `limit` and `after` (percent-encoded or
    /// not): an unknown parameter is a 400, a bad value a 422 naming it.
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        crate::query::refuse_unknown(query, &SAGA_PARAMETERS)?;
        let mut read = Self { filter: SagaFilter::all(), after: None, limit: crate::page::DEFAULT_LIMIT };
        for (name, value) in crate::query::pairs(query) {
            match name {
                "state" => {
                    let state = crate::query::decode(value).filter(|s| polis_saga::is_state_name(s));
                    let state = state.ok_or_else(|| ApiError::validation("state", polis_saga::STATE_NAME_FORM))?;
                    read.filter = read.filter.state(state);
                }
                "finished" => {
                    let finished = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(ApiError::validation("finished", "must be `true` or `false`")),
                    };
                    read.filter = read.filter.finished(finished);
                }
                "limit" => read.limit = crate::page::parse_limit(value)?,
                "after" => {
                    let after = crate::query::decode(value).as_deref().and_then(parse_saga_cursor);
                    read.after = Some(after.ok_or_else(|| ApiError::validation("after", SAGA_KEY_FORM))?);
                }
                _ => {}
            }
        }
        Ok(read)
    }
}

/// The admin routes over `store`, replaying and discarding through
/// `consumer` (a service without one can list its dead letters, if it has
/// any, but not resolve them: 409).
pub fn router<S>(store: Arc<S>, consumer: Option<Arc<Consumer<S>>>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    Router::new()
        .route("/admin/dead-letters", get(dead_letters::<S>))
        .route("/admin/dead-letters/{id}", get(dead_letter::<S>))
        .route("/admin/dead-letters/{id}/replay", post(replay::<S>))
        .route("/admin/dead-letters/{id}/discard", post(discard::<S>))
        .route("/admin/sagas", get(sagas::<S>))
        .route("/admin/sagas/in-flight", get(in_flight::<S>))
        .route("/admin/events/{stream}", get(events::<S>))
        .with_state(Admin { store, consumer })
}

struct Admin<S: SqlStore>
where
    S::Tx: Sql,
{
    store: Arc<S>,
    consumer: Option<Arc<Consumer<S>>>,
}

impl<S: SqlStore> Clone for Admin<S>
where
    S::Tx: Sql,
{
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), consumer: self.consumer.clone() }
    }
}

async fn dead_letters<S>(State(admin): State<Admin<S>>, page: Page) -> Result<Json<Vec<DeadLetterView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let letters = admin.store.dead_letters_page(None, page.after, page.limit).await?;
    Ok(Json(letters.into_iter().map(DeadLetterView::from).collect()))
}

async fn dead_letter<S>(
    State(admin): State<Admin<S>>,
    PathId(id): PathId,
    _: NoQuery,
) -> Result<Json<DeadLetterView>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let letter = admin.store.find_dead_letter(id).await?.ok_or_else(|| no_dead_letter(id))?;
    Ok(Json(letter.into()))
}

async fn replay<S>(State(admin): State<Admin<S>>, PathId(id): PathId, _: NoQuery) -> Result<Json<Resolved>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let consumer = admin.consumer_for(id).await?;
    resolved(id, "replayed", consumer.replay(id).await)
}

async fn discard<S>(State(admin): State<Admin<S>>, PathId(id): PathId, _: NoQuery) -> Result<Json<Resolved>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let consumer = admin.consumer_for(id).await?;
    resolved(id, "discarded", consumer.discard(id).await)
}

impl<S: SqlStore> Admin<S>
where
    S::Tx: Sql,
{
    /// The consumer that resolves letter `id`: 404 if there is no such
    /// letter, 409 if the service has no consumer.
    async fn consumer_for(&self, id: Uuid) -> Result<&Consumer<S>, ApiError> {
        match &self.consumer {
            Some(consumer) => Ok(consumer),
            None => {
                self.store.find_dead_letter(id).await?.ok_or_else(|| no_dead_letter(id))?;
                Err(ApiError::new(axum::http::StatusCode::CONFLICT, "no-handler", "No handler")
                    .with_detail("this service has no consumer to resolve dead letters with"))
            }
        }
    }
}

fn no_dead_letter(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no dead letter {id} (never was, or it was already replayed or discarded)"))
}

/// A replay's or a discard's outcome as an answer.
fn resolved(id: Uuid, action: &str, outcome: Result<(), DeadLetterError>) -> Result<Json<Resolved>, ApiError> {
    let conflict = |slug: &str, title: &'static str, detail: String| {
        ApiError::new(axum::http::StatusCode::CONFLICT, slug, title).with_detail(detail)
    };
    let parked_failed = match outcome {
        Ok(()) => None,
        Err(DeadLetterError::ParkedFailed { parked, error }) => {
            Some(ParkedFailure { id: parked, error: error.to_string() })
        }
        Err(DeadLetterError::NotFound(_)) => return Err(no_dead_letter(id)),
        Err(DeadLetterError::NotReplayable(_)) => {
            return Err(conflict(
                "dead-letter-not-replayable",
                "Dead letter not replayable",
                format!("dead letter {id} holds a message that never decoded; there is nothing to replay, discard it"),
            ));
        }
        Err(DeadLetterError::Blocked(_)) => {
            return Err(conflict(
                "dead-letter-blocked",
                "Dead letter blocked",
                format!("dead letter {id} is parked behind an earlier one of its key; resolve that one first"),
            ));
        }
        Err(DeadLetterError::ReplayFailed(error)) => {
            return Err(conflict(
                "replay-failed",
                "Replay failed",
                format!("the handler failed again: {error}; the dead letter stays, with this error"),
            ));
        }
        Err(DeadLetterError::NoHandler(subject)) => {
            return Err(conflict("no-handler", "No handler", format!("the consumer has no handler for {subject}")));
        }
        Err(DeadLetterError::Store(error)) => return Err(error.into()),
        Err(other) => return Err(ApiError::internal(other)),
    };
    Ok(Json(Resolved { id, action: action.to_owned(), parked_failed }))
}

async fn sagas<S>(State(admin): State<Admin<S>>, RawQuery(query): RawQuery) -> Result<Json<Vec<SagaSummary>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let read = SagaQuery::from_query(query.as_deref())?;
    Ok(Json(polis_saga::list(&*admin.store, &read.filter, read.after.as_ref(), read.limit).await?))
}

async fn in_flight<S>(State(admin): State<Admin<S>>, _: NoQuery) -> Result<Json<Vec<InFlight>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok(Json(polis_saga::in_flight(&*admin.store).await?))
}

async fn events<S>(
    State(admin): State<Admin<S>>,
    PathText(stream): PathText,
    page: Page<u64>,
) -> Result<Json<Vec<EventView>>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let no_stream = || ApiError::not_found(format!("no stream {stream:?} in this service's log"));
    // No stream can hold a NUL (the stores refuse it): nothing to look up.
    if stream.contains('\0') || admin.store.stream_info(&stream).await?.is_none() {
        return Err(no_stream());
    }
    let events = admin.store.read_stream(&stream, page.after_key().saturating_add(1), page.limit).await?;
    Ok(Json(events.into_iter().map(EventView::from).collect()))
}
