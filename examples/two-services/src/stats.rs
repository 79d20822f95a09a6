//! The stats service: how much each author has written, a read model of
//! the notes service's events.
//!
//! It never asks the notes service anything:
//!
//! - its consumer hands notes' `NoteWritten` events to [`Ingest`], which
//!   appends each to the service's **own** log (stream `notes/<author>`) in
//!   one transaction with its inbox record, so each event lands exactly once;
//! - its projection, [`AuthorWords`], applies that log to the `author_words`
//!   read model, moving its checkpoint in the same transaction; a rebuild
//!   or a new version replays the local log without asking notes again;
//! - `GET /authors/{author}` reads the view `author_words`.
//!
//! | request                  | answer                                                   |
//! |--------------------------|----------------------------------------------------------|
//! | `GET /authors/{author}`  | 200 `{author, notes, words, latest_note}`; 404; 503 while the first read model is built |

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::get;
use polis_bus::{Consumer, ConsumerOptions};
use polis_core::{Generation, MessageType, Projection, RecordedEvent, StoreError, Topic};
use polis_projection::Ingest;
use polis_runtime::{ApiError, Json};
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::{NOTES, NoteWritten};

/// The stats service's name.
pub(crate) const STATS: &str = "stats";

/// The stats service over its store `S` (SQLite or PostgreSQL).
pub(crate) struct Stats<S> {
    store: Arc<S>,
}

impl<S> Clone for Stats<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone() }
    }
}

/// One author's line of the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuthorStats {
    pub(crate) author: String,
    pub(crate) notes: i64,
    pub(crate) words: i64,
    /// The last note applied: with notes keyed by author, every earlier
    /// note of theirs has been applied too.
    pub(crate) latest_note: Uuid,
}

impl AuthorStats {
    fn from_row(row: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            author: row.text("author")?,
            notes: row.int("notes")?,
            words: row.int("words")?,
            latest_note: row.uuid("latest_note")?,
        })
    }
}

/// How the host opens and runs the stats service.
impl<S> polis_runtime::Service<S> for Stats<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = STATS;
    type Config = ();

    /// No migrations of its own: its only tables are its projection's,
    /// which the projector creates for each generation.
    async fn open(store: Arc<S>, _config: ()) -> Result<Self, StoreError> {
        Ok(Self { store })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn router(&self) -> Router {
        Router::new().route("/authors/{author}", get(author::<S>)).with_state(self.clone())
    }

    fn consumer(&self, options: ConsumerOptions) -> Option<Consumer<S>> {
        let ingest = Ingest::only([NoteWritten::TYPE]);
        Some(Consumer::new(STATS, self.store.clone(), options).route(Topic::events_of(NOTES), ingest))
    }

    fn projections(&self) -> Vec<Arc<dyn Projection<S::Tx>>> {
        vec![Arc::new(AuthorWords)]
    }
}

impl<S> Stats<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// What the read model says about `author`, if they wrote anything.
    pub(crate) async fn author(&self, author: &str) -> Result<Option<AuthorStats>, ApiError> {
        let read = self
            .store
            .query_optional(
                "SELECT author, notes, words, latest_note FROM author_words WHERE author = $1",
                args![author],
            )
            .await;
        match read {
            Ok(row) => Ok(row.as_ref().map(AuthorStats::from_row).transpose()?),
            Err(e) => {
                // The view exists from the moment the first generation goes
                // live, a moment after the very first start.
                if self.checkpoint().await?.is_some() {
                    Err(e.into())
                } else {
                    Err(ApiError::service_unavailable("the read model is being built; try again shortly"))
                }
            }
        }
    }

    /// The last position of the service's log that the live read model
    /// reflects (its checkpoint, committed with its rows), if it is live.
    pub(crate) async fn checkpoint(&self) -> Result<Option<u64>, StoreError> {
        let generations = polis_projection::generations(&*self.store, AuthorWords::NAME).await?;
        Ok(generations.iter().find(|g| g.state == polis_projection::State::Live).map(|g| g.position))
    }
}

async fn author<S>(
    State(stats): State<Stats<S>>,
    author: Result<Path<String>, PathRejection>,
) -> Result<Json<AuthorStats>, ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let Path(author) = author.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    match stats.author(&author).await? {
        Some(found) => Ok(Json(found)),
        None => Err(ApiError::not_found(format!("no notes by `{author}` yet"))),
    }
}

/// Notes and words per author, from `NoteWritten` events in the local log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthorWords;

impl AuthorWords {
    /// The projection's name, and the view readers query.
    pub(crate) const NAME: &'static str = "author_words";
}

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for AuthorWords {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// Raise it when the table or the counting changes: the projector then
    /// builds the new read model beside the live one and switches readers
    /// over once it has caught up.
    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        &[Self::NAME]
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (author TEXT PRIMARY KEY, notes BIGINT NOT NULL, words BIGINT NOT NULL, \
             latest_note TEXT NOT NULL)",
            generation.table(Self::NAME)
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == NoteWritten::TYPE
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        // Notes validated the event before sending it: one that does not
        // decode is a bug, and stopping here (the projector retries and
        // reports the error) beats skipping it without a trace.
        let note = NoteWritten::deserialize(&event.data)
            .map_err(|e| StoreError::backend(format!("event {} is not a NoteWritten: {e}", event.id)))?;
        let words = i64::try_from(note.text.split_whitespace().count()).unwrap_or(i64::MAX);
        let table = generation.table(Self::NAME);
        let upsert = format!(
            "INSERT INTO {table} (author, notes, words, latest_note) VALUES ($1, 1, $2, $3) \
             ON CONFLICT (author) DO UPDATE SET notes = {table}.notes + 1, words = {table}.words + excluded.words, \
             latest_note = excluded.latest_note"
        );
        tx.execute(&upsert, args![&note.author, words, note.note_id]).await?;
        Ok(())
    }
}
