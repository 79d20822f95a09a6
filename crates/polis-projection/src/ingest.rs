//! Other services' events into this service's own log.
//!
//! A projection reads one log: the service's own event store. Events of
//! other services reach it through the bus; [`Ingest`] is the consumer
//! handler that appends each one to the local log, in the consumer's
//! transaction with its inbox record (so exactly once). From there the
//! service's projections read them like its own events, rebuilds replay
//! them without asking anyone, and their time is still the commit time at
//! the source, so a projection's lag is measured end to end.

use async_trait::async_trait;
use polis_bus::{Handler, HandlerError};
use polis_core::{ExpectedVersion, Message, MessageKind, NewEvent, Transaction};

/// Appends the events it is given to the local log, each to the stream
/// `<source>/<key>` (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    types: Option<Vec<String>>,
}

impl Ingest {
    /// Ingests every event it is given.
    pub fn all() -> Self {
        Self { types: None }
    }

    /// Ingests only events of these CloudEvents types; the others are
    /// declined (acknowledged without a transaction).
    pub fn only<I, T>(types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self { types: Some(types.into_iter().map(Into::into).collect()) }
    }

    /// The local stream an ingested message is appended to.
    pub fn stream(message: &Message) -> String {
        stream(&message.source, &message.key)
    }
}

/// The local stream of `source`'s entity `key`: where its ingested events
/// and its bootstrap record ([`crate::replica`]) go.
pub fn stream(source: &str, key: &str) -> String {
    format!("{source}/{key}")
}

#[async_trait]
impl<Tx: Transaction> Handler<Tx> for Ingest {
    async fn handle(&self, tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        let event = NewEvent {
            id: message.id,
            event_type: message.message_type.clone(),
            schema_version: 1,
            time: message.time,
            data: message.data.clone(),
            metadata: message.metadata.clone(),
        };
        tx.append(&Self::stream(message), ExpectedVersion::Any, std::slice::from_ref(&event)).await?;
        Ok(())
    }

    fn accepts(&self, message: &Message) -> bool {
        message.kind == MessageKind::Event
            && self.types.as_ref().is_none_or(|types| types.contains(&message.message_type))
    }
}
