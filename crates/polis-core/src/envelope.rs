//! The event envelope.
//!
//! Every stored event and every message polis moves is a CloudEvents 1.0
//! event: `id`, `source`, `type`, `subject`, `time` and JSON `data`, plus the
//! polis extensions below. The envelope is the unit the store persists and the
//! bus carries; domain code never sees it unless it asks to.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// CloudEvents spec version of every envelope.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";
/// Content type of every envelope's `data`.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// Tracing and causality attributes carried alongside an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Groups every message caused by one user request.
    pub correlation_id: Option<Uuid>,
    /// The id of the message that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// W3C trace context, so traces follow messages across hops.
    pub traceparent: Option<String>,
}

impl Metadata {
    /// Metadata for a message caused by `cause`: same correlation, causation = cause's id.
    pub fn caused_by(cause: &RecordedEvent) -> Self {
        Self {
            correlation_id: cause.metadata.correlation_id.or(Some(cause.id)),
            causation_id: Some(cause.id),
            traceparent: cause.metadata.traceparent.clone(),
        }
    }
}

/// An event about to be appended; the store assigns its stream version and
/// global position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// UUIDv7, unique across the store; also the CloudEvents `id`.
    pub id: Uuid,
    /// CloudEvents `type`, e.g. `order.created`.
    pub event_type: String,
    /// Version of the `data` schema for this `event_type`, starting at 1.
    pub schema_version: u16,
    /// When the event happened (CloudEvents `time`); stores keep microseconds.
    pub time: DateTime<Utc>,
    /// The event's JSON body, in the shape of `event_type` at `schema_version`.
    pub data: serde_json::Value,
    /// Correlation, causation and trace context.
    pub metadata: Metadata,
}

impl NewEvent {
    /// A new event with a fresh UUIDv7 and the current time.
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            // Microseconds: what every backend stores, so a message round-trips exactly.
            time: Utc::now().trunc_subsecs(6),
            data,
            metadata: Metadata::default(),
        }
    }

    /// This event with its `data` declared to be at schema `version` (default 1);
    /// upcasters registered for lower versions are skipped on read.
    pub fn with_schema_version(mut self, version: u16) -> Self {
        self.schema_version = version;
        self
    }

    /// This event with `metadata` (for instance [`Metadata::caused_by`] the
    /// event or message that led to it) in place of the empty default.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// CloudEvents `id` (UUIDv7).
    pub id: Uuid,
    /// CloudEvents `source`: the service that owns the store.
    pub source: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// CloudEvents `subject`: the stream (aggregate) id.
    pub stream_id: String,
    /// 1-based position of the event within its stream.
    pub stream_version: u64,
    /// 1-based position in the store's global log; strictly increasing in the
    /// order catch-up readers see events, possibly with gaps.
    pub global_position: u64,
    /// Version of the `data` schema as stored (before upcasting).
    pub schema_version: u16,
    /// CloudEvents `time`, to the microsecond.
    pub time: DateTime<Utc>,
    /// The JSON body as stored, at `schema_version` (repositories upcast it
    /// before decoding).
    pub data: serde_json::Value,
    /// Correlation, causation and trace context, as appended.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The CloudEvents 1.0 JSON (structured mode) form of this event.
    pub fn to_cloudevent_json(&self) -> serde_json::Value {
        let mut event = serde_json::json!({
            "specversion": CLOUDEVENTS_SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.event_type,
            "subject": self.stream_id,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": self.data,
            "streamversion": self.stream_version,
            "globalposition": self.global_position,
            "schemaversion": self.schema_version,
        });
        let attrs = event.as_object_mut().expect("json object literal");
        if let Some(id) = self.metadata.correlation_id {
            attrs.insert("correlationid".into(), id.to_string().into());
        }
        if let Some(id) = self.metadata.causation_id {
            attrs.insert("causationid".into(), id.to_string().into());
        }
        if let Some(tp) = &self.metadata.traceparent {
            attrs.insert("traceparent".into(), tp.clone().into());
        }
        event
    }
}
