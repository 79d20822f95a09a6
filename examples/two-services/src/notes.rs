//! The notes service: people write notes.
//!
//! Each note is a row in the service's own table, `notes` (its migrations
//! are `migrations/{sqlite,postgres}`), and a `NoteWritten` event sent
//! through its outbox **in the same transaction**: the row and the event
//! commit together or not at all, and the host's relay publishes the event
//! to the bus afterwards, however long the bus is away.
//!
//! | request                                  | answer                                 |
//! |------------------------------------------|----------------------------------------|
//! | `POST /notes` `{"author": …, "text": …}` | 201 the note; 422 naming each bad field |

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use polis_core::{Message, StoreError, Transaction};
use polis_runtime::{ApiError, Json, ValidJson, Validate, Violations};
use polis_store::args;
use polis_store::sql::{Sql, SqlStore};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::{NOTES, NoteWritten};

/// The longest note, in characters.
const MAX_TEXT: usize = 10_000;

/// The notes service over its store `S` (SQLite or PostgreSQL).
pub(crate) struct Notes<S> {
    store: Arc<S>,
}

impl<S> Clone for Notes<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone() }
    }
}

/// A request to write a note.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteNote {
    author: String,
    text: String,
}

impl Validate for WriteNote {
    fn validate(&self, report: &mut Violations) {
        // The author is the event's key and a path segment at the stats service: keep it plain.
        let author_ok = (1..=64).contains(&self.author.len())
            && self.author.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        report.check(author_ok, "author", "must be 1 to 64 of a-z 0-9 - _");
        report.check(!self.text.trim().is_empty(), "text", "must not be blank");
        report.check(self.text.chars().count() <= MAX_TEXT, "text", format!("must be at most {MAX_TEXT} characters"));
    }
}

/// A written note.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Note {
    pub(crate) id: Uuid,
    pub(crate) author: String,
    pub(crate) text: String,
}

/// How the host opens and runs the notes service. It consumes nothing, so
/// it has no consumer; its host runs the relay that empties its outbox.
impl<S> polis_runtime::Service<S> for Notes<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = NOTES;
    type Config = ();

    /// Applies the service's own migrations and returns the service.
    async fn open(store: Arc<S>, _config: ()) -> Result<Self, StoreError> {
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        Ok(Self { store })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn router(&self) -> Router {
        Router::new().route("/notes", post(write::<S>)).with_state(self.clone())
    }
}

impl<S> Notes<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Stores the note and announces it with `NoteWritten`, in one transaction.
    pub(crate) async fn write(&self, request: WriteNote) -> Result<Note, ApiError> {
        let note = Note { id: Uuid::now_v7(), author: request.author, text: request.text };
        let written = NoteWritten { note_id: note.id, author: note.author.clone(), text: note.text.clone() };
        let event = Message::typed_event(NOTES, &note.author, &written).map_err(ApiError::internal)?;
        let row = note.clone();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                tx.execute(
                    "INSERT INTO notes (id, author, text, written_at) VALUES ($1, $2, $3, $4)",
                    args![row.id, &row.author, &row.text, event.time.timestamp_micros()],
                )
                .await?;
                tx.send(&event).await
            })
            .await?;
        Ok(note)
    }
}

async fn write<S>(
    State(notes): State<Notes<S>>,
    ValidJson(request): ValidJson<WriteNote>,
) -> Result<(StatusCode, Json<Note>), ApiError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    Ok((StatusCode::CREATED, Json(notes.write(request).await?)))
}
