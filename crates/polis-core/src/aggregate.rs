//! Aggregates and domain events.
//!
//! An aggregate is pure: `handle` decides which events a command produces
//! given the current state, `apply` folds one event into the state. All I/O
//! (loading, appending, retrying) lives in [`Repository`](crate::Repository).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An event-sourced aggregate.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stream-name prefix, e.g. `order`: the stream of aggregate `id` is `order-{id}`.
    const TYPE: &'static str;
    /// Bump when the serialized state's shape changes: older snapshots are then ignored.
    const SNAPSHOT_VERSION: u16 = 1;

    /// What callers ask of the aggregate (usually an enum).
    type Command: Send + Sync;
    /// What the aggregate records about itself; its history is a sequence of these.
    type Event: DomainEvent;
    /// Why [`handle`](Self::handle) rejects a command: a business outcome for
    /// the caller, reported as [`CommandError::Rejected`](crate::CommandError::Rejected).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides the events `command` produces from this state, or rejects it.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(self, event: &Self::Event) -> Self;

    /// The stream that holds aggregate `id`'s events.
    fn stream_id(id: &str) -> String {
        format!("{}-{}", Self::TYPE, id)
    }
}

/// A domain event type (usually an enum) and its mapping to envelopes.
///
/// The default `to_data` / `from_data` expect serde's adjacently tagged
/// representation, `#[serde(tag = "type", content = "data")]`, with each
/// variant renamed to its event type; the tag becomes the envelope's `type`
/// and the content its `data`.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The envelope `type` of this event, e.g. `order.created`.
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's `data` (what the code writes).
    fn schema_version(&self) -> u16 {
        1
    }

    /// The envelope `data` of this event.
    fn to_data(&self) -> Result<serde_json::Value, serde_json::Error> {
        match serde_json::to_value(self)? {
            serde_json::Value::Object(mut tagged) => Ok(tagged.remove("data").unwrap_or(serde_json::Value::Null)),
            other => Ok(other),
        }
    }

    /// Rebuilds an event from its envelope `type` and (upcasted) `data`.
    fn from_data(event_type: &str, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut tagged = serde_json::Map::new();
        tagged.insert("type".into(), event_type.into());
        if !data.is_null() {
            tagged.insert("data".into(), data);
        }
        serde_json::from_value(serde_json::Value::Object(tagged))
    }
}
