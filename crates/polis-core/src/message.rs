//! Messages between services.
//!
//! Every message is a CloudEvents 1.0 event. A message is one of three kinds:
//! an *event* a service announces about its own data, a *command* it asks
//! another service to carry out, and the *reply* to a command. Messages are
//! written to the sender's outbox in the same transaction as the change that
//! caused them, relayed to the bus, and taken in by the receiver's inbox in
//! the same transaction as their effects.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{Metadata, RecordedEvent};

/// What a message is for; decides its subject on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A fact about the sender's own data, for anyone interested.
    Event,
    /// A request addressed to one service.
    Command,
    /// The answer to a command, addressed to the service that sent it.
    Reply,
}

impl MessageKind {
    /// The kind's name in stores and headers: `event`, `command` or `reply`
    /// (what [`str::parse`] reads back).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Command => "command",
            Self::Reply => "reply",
        }
    }

    /// The subject segment of this kind: `events`, `commands` or `replies`.
    pub fn segment(self) -> &'static str {
        match self {
            Self::Event => "events",
            Self::Command => "commands",
            Self::Reply => "replies",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MessageKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "event" => Ok(Self::Event),
            "command" => Ok(Self::Command),
            "reply" => Ok(Self::Reply),
            other => Err(format!("unknown message kind `{other}`")),
        }
    }
}

/// A message as it travels: a CloudEvent with polis's extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// CloudEvents `id` (UUIDv7); the de-duplication key everywhere.
    pub id: Uuid,
    /// Event, command or reply; with `target`, decides the stream and subject.
    pub kind: MessageKind,
    /// CloudEvents `source`: the sending service.
    pub source: String,
    /// The service whose stream carries the message: the sender for events,
    /// the receiver for commands and replies.
    pub target: String,
    /// CloudEvents `type`, e.g. `inventory.stock-reserved.v1`.
    pub message_type: String,
    /// CloudEvents `subject`: the ordering key (stream or aggregate id).
    /// Messages with the same key are delivered in commit order.
    pub key: String,
    /// CloudEvents `time`: when the message was created, to the microsecond.
    pub time: DateTime<Utc>,
    /// CloudEvents `data`: the JSON body, in the shape of `message_type`.
    pub data: serde_json::Value,
    /// Correlation, causation and trace context.
    pub metadata: Metadata,
}

impl Message {
    fn new(
        kind: MessageKind,
        source: &str,
        target: &str,
        message_type: &str,
        key: &str,
        data: serde_json::Value,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            source: source.to_owned(),
            target: target.to_owned(),
            message_type: message_type.to_owned(),
            key: key.to_owned(),
            // Microseconds: what every backend stores, so a message round-trips exactly.
            time: Utc::now().trunc_subsecs(6),
            data,
            metadata: Metadata::default(),
        }
    }

    /// An event `source` announces about `key`.
    pub fn event(source: &str, message_type: &str, key: &str, data: serde_json::Value) -> Self {
        Self::new(MessageKind::Event, source, source, message_type, key, data)
    }

    /// A command from `source` to `target` about `key`.
    pub fn command(source: &str, target: &str, message_type: &str, key: &str, data: serde_json::Value) -> Self {
        Self::new(MessageKind::Command, source, target, message_type, key, data)
    }

    /// The reply to `command`, sent by the service that handled it. It keeps
    /// the command's key and correlation id, and names the command as its cause.
    pub fn reply_to(command: &Message, message_type: &str, data: serde_json::Value) -> Self {
        let mut reply =
            Self::new(MessageKind::Reply, &command.target, &command.source, message_type, &command.key, data);
        reply.metadata = command.caused();
        reply
    }

    /// An event that republishes a stored domain event under the store's source.
    pub fn from_recorded(event: &RecordedEvent) -> Self {
        Self {
            id: event.id,
            kind: MessageKind::Event,
            source: event.source.clone(),
            target: event.source.clone(),
            message_type: event.event_type.clone(),
            key: event.stream_id.clone(),
            time: event.time,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
        }
    }

    /// The event message announcing an event `source` is appending to the
    /// stream keyed `key` (same id, type, time, data and metadata).
    pub fn from_new_event(source: &str, key: &str, event: &crate::envelope::NewEvent) -> Self {
        Self {
            id: event.id,
            kind: MessageKind::Event,
            source: source.to_owned(),
            target: source.to_owned(),
            message_type: event.event_type.clone(),
            key: key.to_owned(),
            time: event.time,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
        }
    }

    /// This message with `metadata` in place of its own (usually
    /// [`Message::caused`] of the message being handled).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Metadata for a message this one causes: same correlation, causation = this id.
    pub fn caused(&self) -> Metadata {
        Metadata {
            correlation_id: self.metadata.correlation_id.or(Some(self.id)),
            causation_id: Some(self.id),
            traceparent: self.metadata.traceparent.clone(),
        }
    }

    /// The bus subject: `polis.<target>.<events|commands|replies>.<type>`.
    pub fn subject(&self) -> String {
        subject(&self.target, self.kind, &self.message_type)
    }
}

/// A typed message body: a serde type with its CloudEvents `type`.
///
/// Services declare their contracts as `MessageType`s, build messages with
/// [`Message::typed_event`] / [`Message::typed_command`] / [`Message::typed_reply`]
/// and read them with [`Message::decode`].
pub trait MessageType: Serialize + serde::de::DeserializeOwned {
    /// The CloudEvents `type`, e.g. `inventory.stock-reserved.v1`.
    const TYPE: &'static str;
}

impl Message {
    /// An event of type `T` that `source` announces about `key`.
    pub fn typed_event<T: MessageType>(source: &str, key: &str, body: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::event(source, T::TYPE, key, serde_json::to_value(body)?))
    }

    /// A command of type `T` from `source` to `target` about `key`.
    pub fn typed_command<T: MessageType>(
        source: &str,
        target: &str,
        key: &str,
        body: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::command(source, target, T::TYPE, key, serde_json::to_value(body)?))
    }

    /// The reply of type `T` to `command`.
    pub fn typed_reply<T: MessageType>(command: &Message, body: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::reply_to(command, T::TYPE, serde_json::to_value(body)?))
    }

    /// Whether this message is a `T`.
    pub fn is<T: MessageType>(&self) -> bool {
        self.message_type == T::TYPE
    }

    /// The body as a `T` (whatever the message's type; check [`Message::is`] first).
    pub fn decode<T: MessageType>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

/// `polis.<service>.<events|commands|replies>.<type>`.
pub fn subject(service: &str, kind: MessageKind, message_type: &str) -> String {
    format!("polis.{service}.{}.{message_type}", kind.segment())
}

/// Rejects messages no transport should carry: empty names, characters
/// that break subjects (whitespace, `*`, `>`), NUL anywhere.
pub fn validate_message(message: &Message) -> Result<(), String> {
    let name_ok = |name: &str| {
        !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !name.chars().any(|c| c.is_whitespace() || c == '*' || c == '>' || c == '\0')
    };
    if !name_ok(&message.source) || message.source.contains('.') {
        return Err(format!("invalid source `{}`", message.source));
    }
    if !name_ok(&message.target) || message.target.contains('.') {
        return Err(format!("invalid target `{}`", message.target));
    }
    if !name_ok(&message.message_type) {
        return Err(format!("invalid message type `{}`", message.message_type));
    }
    if message.key.is_empty() || message.key.contains('\0') {
        return Err("the message key must be non-empty and free of NUL".into());
    }
    if message.metadata.traceparent.as_deref().is_some_and(|t| t.contains('\0')) {
        return Err("the traceparent contains a NUL character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subjects_follow_the_naming_scheme() {
        let event = Message::event("inventory", "inventory.stock-reserved.v1", "order-1", json!({}));
        assert_eq!(event.subject(), "polis.inventory.events.inventory.stock-reserved.v1");
        let command = Message::command("order", "payment", "payment.authorize.v1", "order-1", json!({}));
        assert_eq!(command.subject(), "polis.payment.commands.payment.authorize.v1");
        let reply = Message::reply_to(&command, "payment.authorized.v1", json!({}));
        assert_eq!(reply.subject(), "polis.order.replies.payment.authorized.v1");
        assert_eq!((reply.source.as_str(), reply.key.as_str()), ("payment", "order-1"));
        assert_eq!(reply.metadata.causation_id, Some(command.id));
        assert_eq!(reply.metadata.correlation_id, Some(command.id));
    }

    #[test]
    fn names_that_would_break_subjects_are_rejected() {
        let ok = Message::event("inventory", "stock.reserved", "k", json!({}));
        assert!(validate_message(&ok).is_ok());
        for bad_type in ["", "a b", "a.*", "a.>", ".a", "a..b"] {
            let m = Message { message_type: bad_type.into(), ..ok.clone() };
            assert!(validate_message(&m).is_err(), "{bad_type:?}");
        }
        let m = Message { source: "in.ventory".into(), ..ok.clone() };
        assert!(validate_message(&m).is_err());
        let m = Message { key: String::new(), ..ok };
        assert!(validate_message(&m).is_err());
    }
}
