//! The message bus contract.
//!
//! A bus carries [`Message`]s from relays to consumers, at least once. Every
//! implementation (the durable in-process bus of the embedded deployment and
//! NATS JetStream) keeps the same promises, checked by one contract suite:
//!
//! - `publish` returns only once the bus has stored every message durably,
//!   in the order given; a message id published twice is stored once;
//! - a subscription is *durable*: it belongs to a named consumer and resumes
//!   where that consumer left off, redelivering what it had not acknowledged;
//! - deliveries come in the order messages were stored; a negative
//!   acknowledgement redelivers the message after a delay, with its attempt
//!   count increased.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::message::{Message, MessageKind};

/// Errors from a bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The message cannot be carried (bad names, too large, ...).
    #[error("invalid message {id}: {reason}")]
    InvalidMessage {
        /// The rejected message's id.
        id: uuid::Uuid,
        /// Which rule it breaks, e.g. ``invalid source `a.b` ``.
        reason: String,
    },
    /// The broker or its storage failed; retry later.
    #[error("bus backend failure")]
    Backend(#[source] BoxError),
    /// The subscription or bus was closed.
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// Wraps a driver error as [`BusError::Backend`]: a failure worth retrying.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend(e.into())
    }
}

/// The partition (`0..partitions`) of the messages with ordering `key`:
/// FNV-1a of the key, modulo the count. Every publisher and consumer of a
/// deployment must use the same count.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let hash =
        key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// What a consumer subscribes to: one kind of message on one service's stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The service whose stream carries the messages (the publisher for events,
    /// the receiver for commands and replies).
    pub service: String,
    /// Which of the service's messages: its events, or the commands or
    /// replies addressed to it.
    pub kind: MessageKind,
}

impl Topic {
    /// The events `service` publishes about its own data.
    pub fn events_of(service: &str) -> Self {
        Self { service: service.to_owned(), kind: MessageKind::Event }
    }

    /// The commands other services send to `service`.
    pub fn commands_to(service: &str) -> Self {
        Self { service: service.to_owned(), kind: MessageKind::Command }
    }

    /// The replies to the commands `service` sent.
    pub fn replies_to(service: &str) -> Self {
        Self { service: service.to_owned(), kind: MessageKind::Reply }
    }

    /// The subject filter: `polis.<service>.<events|commands|replies>.>`.
    pub fn filter(&self) -> String {
        format!("polis.{}.{}.>", self.service, self.kind.segment())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.filter())
    }
}

/// One delivery of a message to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The decoded message, or why the payload could not be decoded (a
    /// malformed message goes straight to the consumer's dead letters).
    pub message: Result<Message, Malformed>,
    /// 1 on first delivery, then 2, 3, ... on redeliveries.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

/// A payload that is not a valid polis message.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// The message id, if it could be read.
    pub id: Option<uuid::Uuid>,
    /// The raw payload (headers and body), for the dead-letter record.
    pub raw: String,
    /// Why it is not a message (missing header, invalid JSON, bad name, ...).
    pub reason: String,
}

impl Delivery {
    /// A delivery for a bus implementation to hand out: the (decoded) message,
    /// its 1-based attempt number, and the bus's handle that settles it.
    pub fn new(message: Result<Message, Malformed>, attempt: u32, acker: Box<dyn Acker>) -> Self {
        Self { message, attempt, acker }
    }

    /// Done with: never deliver this message to this consumer again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Not done: deliver it again after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<(), BusError> {
        self.acker.nack(delay).await
    }
}

/// The bus-specific half of a delivery: settles it with the broker. Each
/// delivery is settled at most once (both methods consume the acker); one
/// never settled is delivered again once the bus's redelivery time passes.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// Marks the delivery done for this consumer; it is not delivered again.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Hands the delivery back, to be delivered again no sooner than `delay`
    /// from now, with its attempt count increased.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError>;
}

/// A durable subscription of a consumer to a topic.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; waits until one is available.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// The bus contract.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Stores `messages` durably, in order, each id at most once.
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError>;

    /// Opens, or resumes, `consumer`'s durable subscription to `topic`.
    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError>;

    /// Into how many partitions this bus splits every topic by ordering key
    /// ([`partition_of`]); 1 (the default) means none.
    fn partitions(&self) -> u32 {
        1
    }

    /// Opens, or resumes, `consumer`'s durable subscription to partition
    /// `partition` (`0..partitions()`) of `topic`: the messages whose key
    /// falls in it, in order, **at most one unacknowledged at a time** — so
    /// whoever subscribes next (another instance, after this one died) gets
    /// the message this one held before anything after it. With one
    /// partition, partition 0 is [`subscribe`](Self::subscribe).
    async fn subscribe_partition(
        &self,
        consumer: &str,
        topic: &Topic,
        partition: u32,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if partition == 0 && self.partitions() <= 1 {
            return self.subscribe(consumer, topic).await;
        }
        Err(BusError::backend(format!(
            "partition {partition} of {topic}: this bus has {} partition(s)",
            self.partitions()
        )))
    }

    /// Whether the bus can be reached now, for a readiness check: at most
    /// one cheap round trip to the broker, `Err` saying why not. The caller
    /// bounds how long it waits. A bus in the same process is always
    /// reachable (the default).
    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}
