//! What the notes service promises others: its name and its one event.
//!
//! The stats service depends on this module, never on `notes` itself. In a
//! system of several crates it would be a small contracts crate of its own.

use polis_core::MessageType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The notes service's name: the source of its events and the stream that
/// carries them (`polis.notes.events.*`; `POLIS_NOTES` on NATS).
pub(crate) const NOTES: &str = "notes";

/// A note was written. Keyed by its author, so each author's notes reach
/// every subscriber in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NoteWritten {
    pub(crate) note_id: Uuid,
    pub(crate) author: String,
    pub(crate) text: String,
}

impl MessageType for NoteWritten {
    const TYPE: &'static str = "notes.note-written.v1";
}
