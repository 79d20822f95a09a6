//! The NATS JetStream bus.
//!
//! # Mapping
//!
//! - **One stream per service.** The stream `POLIS_<SERVICE>` (see
//!   [`stream_name`]) holds the subjects `polis.<service>.>`: the service's
//!   events and the commands and replies addressed to it. A message goes to
//!   the stream of its [`Message::target`]. Streams use file storage and keep
//!   messages for [`NatsOptions::max_age`] (see "Retention" below); they are
//!   created on first use, by a publish or by a subscribe, whichever comes
//!   first.
//! - **Subjects** are [`Message::subject`]:
//!   `polis.<target>.<events|commands|replies>.<type>`. The subject carries
//!   the message's kind and target; everything else travels in the headers.
//!   With [`NatsOptions::partitions`] above 1, the key's partition
//!   ([`partition_of`]) comes before the type:
//!   `polis.<target>.<kind>.p<partition>.<type>`.
//! - **Partitions.** [`Bus::subscribe_partition`] is a durable consumer
//!   named `<consumer>_<kind>_p<partition>`, filtered to
//!   `polis.<target>.<kind>.p<partition>.>`, with at most one message
//!   unacknowledged: its order holds across the instances that take turns
//!   pulling it (ADR 0011). A plain subscription still sees every partition.
//! - **CloudEvents binary mode.** The body is the JSON `data`; the attributes
//!   are headers:
//!
//!   | header | value |
//!   | --- | --- |
//!   | `ce-specversion` | `1.0` |
//!   | `ce-id` | [`Message::id`] |
//!   | `ce-type` | [`Message::message_type`] |
//!   | `ce-source` | [`Message::source`] |
//!   | `ce-subject` | [`Message::key`] |
//!   | `ce-time` | [`Message::time`], RFC 3339 with microseconds |
//!   | `ce-correlationid` | the correlation id, when there is one |
//!   | `ce-causationid` | the causation id, when there is one |
//!   | `traceparent` | W3C trace context, when there is one |
//!   | `content-type` | `application/json` |
//!   | `Nats-Msg-Id` | [`Message::id`] again, for JetStream's de-duplication |
//!
//!   Correlation and causation ids are CloudEvents extension attributes, so
//!   their headers follow the binding's `ce-<attribute>` rule (extension
//!   names are lowercase letters and digits only); `traceparent` is named as
//!   the CloudEvents distributed-tracing extension and W3C name it. Header
//!   values are percent-encoded as the CloudEvents HTTP binding prescribes
//!   (space, `"`, `%` and everything outside printable ASCII), so any key
//!   survives the trip, line breaks included.
//! - **De-duplication.** `Nats-Msg-Id` makes the broker drop a message whose
//!   id it stored within the stream's `duplicate_window`
//!   ([`NatsOptions::duplicate_window`]): a relay that crashed after
//!   publishing and before marking its batch done publishes the batch again,
//!   and nothing is stored twice. Consumers still de-duplicate in their inbox,
//!   as redeliveries and windows longer ago than that remain possible.
//! - **Durable consumers.** A subscription is a durable pull consumer on the
//!   topic's service stream, named `<consumer>_<events|commands|replies>`
//!   (see [`durable_name`]), filtered to [`Topic::filter`], with explicit
//!   acks, [`NatsOptions::ack_wait`], unlimited deliveries (polis consumers
//!   dead-letter by themselves) and [`NatsOptions::max_ack_pending`]. Only
//!   features of nats-server 2.9 are used (one filter subject per consumer).
//!   A delivery's attempt is JetStream's delivered count; acks and nacks wait
//!   for the server's confirmation, so none is lost silently.
//!
//! Plain `nats://` only, unless the application installs a rustls crypto
//! provider: async-nats is built without `ring` / `aws-lc-rs` to keep the
//! build lean (see [`NatsBus::connect`]).
//!
//! Reconnection is async-nats's: the client reconnects by itself and pull
//! requests resume. A subscription whose pull stream fails (a missed
//! heartbeat, a deleted consumer) recreates the consumer and goes on;
//! `next` returns [`BusError::Backend`] only when that fails (the server has
//! been unreachable for a heartbeat and a request timeout), and calling it
//! again retries, backing off. A publish while the server is away fails
//! after [`NatsOptions::publish_timeout`]; the relay retries it.
//!
//! # Retention
//!
//! A stream keeps every message for [`NatsOptions::max_age`] (seven days by
//! default), acknowledged or not, and deletes it after (JetStream's limits
//! retention with a maximum age). Its size follows the traffic of that
//! period, not the history. Interest-based retention, which would delete a
//! message as soon as every consumer has it, is not used: JetStream drops a
//! message nobody is subscribed to *yet* at once, and polis creates
//! consumers when services subscribe, so events published before a new
//! service's first start would be lost to it. The price is disk: a stream
//! holds the whole period's messages where the in-process bus holds only
//! what some consumer still needs. A service stopped for longer than
//! `max_age` misses what expired meanwhile; set it above the longest outage
//! you plan for, and no longer than the consumers' inbox retention
//! ([`RelayOptions::retention`](crate::RelayOptions::retention)), so a
//! message that can still be redelivered is still recognized. The duplicate
//! window is cut to `max_age` when longer, as JetStream requires. Changed
//! options update an existing stream at the next publish or subscribe.
//!
//! What the broker guarantees: a publish ack means the message is in the
//! stream's files (nats-server fsyncs them periodically, not per message).
//! Consumer positions are written lazily, so after a server *crash* recent
//! acks can be forgotten and those messages delivered again: the inbox's
//! de-duplication is what makes effects happen once.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{ContextBuilder, GetStreamErrorKind, PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::{Acker as JetStreamAcker, PublishMessage};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt as _;
use polis_core::bus::{Acker, Bus, BusError, Delivery, Malformed, Subscription, Topic, partition_of};
use polis_core::error::BoxError;
use polis_core::message::{Message, MessageKind, validate_message};
use polis_core::{Metadata, envelope};
use uuid::Uuid;

/// Header names of the NATS mapping (see the module docs).
pub mod headers {
    /// The CloudEvents spec version, always `1.0`.
    pub const SPEC_VERSION: &str = "ce-specversion";
    /// The message id ([`Message::id`](polis_core::Message::id)).
    pub const ID: &str = "ce-id";
    /// The message type ([`Message::message_type`](polis_core::Message::message_type)).
    pub const TYPE: &str = "ce-type";
    /// The sending service ([`Message::source`](polis_core::Message::source)).
    pub const SOURCE: &str = "ce-source";
    /// The ordering key ([`Message::key`](polis_core::Message::key)).
    pub const SUBJECT: &str = "ce-subject";
    /// The creation time, RFC 3339 with microseconds.
    pub const TIME: &str = "ce-time";
    /// The correlation id; absent when the message has none.
    pub const CORRELATION_ID: &str = "ce-correlationid";
    /// The causation id; absent when the message has none.
    pub const CAUSATION_ID: &str = "ce-causationid";
    /// W3C trace context; absent when the message has none.
    pub const TRACEPARENT: &str = "traceparent";
    /// The body's media type, always `application/json`.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Set by async-nats from the message id; read by the broker.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
}

/// Publishes in flight per `publish` call before the oldest ack is awaited.
const PUBLISH_WINDOW: usize = 1024;
/// Publish acks in flight per connection (async-nats's limit).
const MAX_ACKS_IN_FLIGHT: usize = 16 * 1024;
/// Pull requests: how long one waits on the server, and the idle heartbeat
/// that reveals a pull stream the server forgot (after a restart).
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Backoff between attempts to recreate a failing pull stream.
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Stream and consumer names are cut to this many characters (before a hash).
const MAX_NAME_CHARS: usize = 120;

/// Options for [`NatsBus::connect`].
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// How long a delivery may stay unacknowledged before JetStream delivers
    /// it again, e.g. after its consumer died. A consumer resuming after a
    /// crash sees its unacknowledged messages again only after this.
    pub ack_wait: Duration,
    /// How long the broker remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How long a stream keeps a message, acknowledged or not (JetStream's
    /// `max_age`; zero keeps messages until an operator limits the stream).
    /// Seven days by default, the relay's default retention of inbox
    /// records ([`RelayOptions::retention`](crate::RelayOptions::retention)):
    /// a message the broker still holds can be redelivered, and consumers
    /// recognize a redelivery only while its inbox record lasts. A consumer
    /// that stays away longer than this misses what expired meanwhile (see
    /// the module docs, "Retention").
    pub max_age: Duration,
    /// Unacknowledged deliveries per consumer before JetStream pauses it.
    pub max_ack_pending: i64,
    /// Bounds each publish acknowledgement, ack / nack confirmation and
    /// JetStream API request.
    pub publish_timeout: Duration,
    /// Messages a subscription asks for per pull request. Messages pulled
    /// but not yet handed out when a subscription is dropped come back only
    /// after `ack_wait`.
    pub pull_batch: usize,
    /// Into how many partitions every topic is split by ordering key
    /// ([`Bus::partitions`], the module docs). 1, the default, splits
    /// nothing and leaves subjects as they are. Every publisher and
    /// consumer of a deployment must agree on it.
    pub partitions: u32,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_ack_pending: 1000,
            publish_timeout: Duration::from_secs(10),
            pull_batch: 64,
            partitions: 1,
        }
    }
}

impl NatsOptions {
    /// The duplicate window and maximum age a stream gets: the window is
    /// cut to the age when that is shorter (JetStream refuses a longer one).
    fn stream_limits(&self) -> (Duration, Duration) {
        let window = match self.max_age {
            Duration::ZERO => self.duplicate_window,
            max_age => self.duplicate_window.min(max_age),
        };
        (window, self.max_age)
    }
}

/// What went wrong talking to NATS: the source of [`BusError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The first connection failed (unreachable server, bad URL).
    #[error("cannot connect to nats at {url}")]
    Connect {
        /// The server URL as given.
        url: String,
        /// async-nats's error.
        source: BoxError,
    },
    /// A JetStream API request to create or look up a stream failed
    /// (JetStream disabled, no storage, server away).
    #[error("cannot create or look up jetstream stream {stream}")]
    Stream {
        /// The stream's name, `POLIS_<SERVICE>`.
        stream: String,
        /// async-nats's error.
        source: BoxError,
    },
    /// A stream of the expected name exists with other subjects: someone
    /// else's stream, or another shop sharing the server. polis does not
    /// change it.
    #[error("jetstream stream {stream} holds subjects {subjects:?}, not the expected {expected}")]
    StreamMismatch {
        /// The stream's name.
        stream: String,
        /// The subjects it holds.
        subjects: Vec<String>,
        /// The one subject filter polis expects, `polis.<service>.>`.
        expected: String,
    },
    /// A message was not stored: the publish or its acknowledgement failed or
    /// timed out ([`NatsOptions::publish_timeout`]).
    #[error("cannot publish message {id} to {subject}")]
    Publish {
        /// The message's id.
        id: Uuid,
        /// The subject it was published to.
        subject: String,
        /// async-nats's error.
        source: BoxError,
    },
    /// Creating (or looking up) a durable pull consumer failed.
    #[error("cannot create durable consumer {durable} on jetstream stream {stream}")]
    Consumer {
        /// The stream it reads.
        stream: String,
        /// The durable consumer's name, see [`durable_name`].
        durable: String,
        /// async-nats's error.
        source: BoxError,
    },
    /// Opening a pull stream on the durable consumer failed (the subscription
    /// retries on the next `next`).
    #[error("cannot pull from durable consumer {durable}")]
    Pull {
        /// The durable consumer's name.
        durable: String,
        /// async-nats's error.
        source: BoxError,
    },
    /// An ack or nack was not confirmed by the server in time: the delivery
    /// may come again.
    #[error("the server did not confirm the {what} of stream sequence {sequence}")]
    Ack {
        /// `ack` or `nack`.
        what: &'static str,
        /// The message's sequence number in its stream.
        sequence: u64,
        /// async-nats's error.
        source: BoxError,
    },
    /// The consumer name or topic cannot name a durable consumer (empty,
    /// NUL, a service that is not a subject token).
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
}

/// A [`Bus`] on NATS JetStream. Cheap to share behind an `Arc`; one
/// connection serves every publish and subscription.
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    options: NatsOptions,
    /// Services whose stream is known to exist.
    streams: Mutex<HashSet<String>>,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.inner.client.connection_state())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the NATS server at `url` (e.g. `nats://127.0.0.1:4222`).
    /// Fails if the first connection fails; after that the client
    /// reconnects by itself, forever.
    ///
    /// `tls://` URLs need a process-wide rustls crypto provider
    /// (`async_nats::rustls::crypto::CryptoProvider::install_default`), as
    /// polis builds async-nats without one; without it they are refused.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsBus, BusError> {
        let connect_error = |source: BoxError| BusError::backend(NatsError::Connect { url: url.to_owned(), source });
        // This build has no TLS crypto provider (see the module docs); rustls
        // would panic where it needs one.
        let wants_tls = url.split(',').any(|u| u.trim().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("tls://")));
        if wants_tls && async_nats::rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(connect_error(
                "tls needs a rustls crypto provider: install one with `CryptoProvider::install_default` first".into(),
            ));
        }
        let client = async_nats::ConnectOptions::new()
            .name("polis")
            .request_timeout(Some(options.publish_timeout))
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| connect_error(e.into()))?;
        let jetstream = ContextBuilder::new()
            .timeout(options.publish_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            // A full window is an error we handle (see `publish`), never a wait
            // that could deadlock callers each holding part of the window.
            .backpressure_on_inflight(false)
            .build(client.clone());
        let inner = Inner { client, jetstream, options, streams: Mutex::new(HashSet::new()) };
        Ok(NatsBus { inner: Arc::new(inner) })
    }

    /// What `service`'s stream holds now: its messages and their bytes as
    /// the server counts them; `None` if the stream does not exist (yet).
    ///
    /// # Errors
    ///
    /// [`BusError::Backend`] if the server cannot be asked.
    pub async fn stream_usage(&self, service: &str) -> Result<Option<StreamUsage>, BusError> {
        let name = stream_name(service);
        let mut stream = match self.inner.jetstream.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref api)
                    if api.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(BusError::backend(NatsError::Stream { stream: name, source: e.into() })),
        };
        let info =
            stream.info().await.map_err(|e| BusError::backend(NatsError::Stream { stream: name, source: e.into() }))?;
        Ok(Some(StreamUsage { messages: info.state.messages, bytes: info.state.bytes }))
    }
}

/// What a service's stream holds ([`NatsBus::stream_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamUsage {
    /// Messages in the stream.
    pub messages: u64,
    /// Their bytes, as the server counts them (headers and bodies).
    pub bytes: u64,
}

/// The JetStream stream of `service`: `POLIS_` and the service name in
/// upper case. Names with characters other than lowercase ASCII letters,
/// digits, `-` and `_` have them replaced and get a hash of the original
/// appended, so distinct services never share a stream.
pub fn stream_name(service: &str) -> String {
    let (name, exact) = nats_name(service, |c| match c {
        'a'..='z' => Some(c.to_ascii_uppercase()),
        '0'..='9' | '-' | '_' => Some(c),
        _ => None,
    });
    if exact { format!("POLIS_{name}") } else { format!("POLIS_{name}_{:08X}", fnv1a(service)) }
}

/// The durable consumer of `consumer` for messages of `kind`:
/// `<consumer>_<events|commands|replies>`. Consumer names with characters
/// other than ASCII letters, digits, `-` and `_` have them replaced and get
/// a hash of the original appended.
pub fn durable_name(consumer: &str, kind: MessageKind) -> String {
    let (name, exact) = nats_name(consumer, |c| (c.is_ascii_alphanumeric() || c == '-' || c == '_').then_some(c));
    if exact {
        format!("{name}_{}", kind.segment())
    } else {
        format!("{name}_{:08x}_{}", fnv1a(consumer), kind.segment())
    }
}

/// Maps `raw` character by character; `false` if anything was replaced or cut.
fn nats_name(raw: &str, map: impl Fn(char) -> Option<char>) -> (String, bool) {
    let mut exact = raw.chars().count() <= MAX_NAME_CHARS;
    let name = raw
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| {
            map(c).unwrap_or_else(|| {
                exact = false;
                '_'
            })
        })
        .collect();
    (name, exact)
}

/// FNV-1a: a hash that stays the same across Rust versions, as names must.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |hash, b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// A subject token: what a service name must be to fit `polis.<service>.>`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '\0'))
}

impl Inner {
    /// Creates `service`'s stream unless it is known to exist.
    async fn ensure_stream(&self, service: &str) -> Result<(), BusError> {
        if self.streams.lock().unwrap_or_else(PoisonError::into_inner).contains(service) {
            return Ok(());
        }
        let name = stream_name(service);
        let expected = format!("polis.{service}.>");
        let (duplicate_window, max_age) = self.options.stream_limits();
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("polis messages of service {service}")),
            subjects: vec![expected.clone()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            duplicate_window,
            max_age,
            ..Default::default()
        };
        let stream_error = |source: BoxError| BusError::backend(NatsError::Stream { stream: name.clone(), source });
        let stream = self.jetstream.get_or_create_stream(config).await.map_err(|e| stream_error(e.into()))?;
        let existing = &stream.cached_info().config;
        if existing.subjects != [expected.as_str()] {
            return Err(BusError::backend(NatsError::StreamMismatch {
                stream: name,
                subjects: existing.subjects.clone(),
                expected,
            }));
        }
        if (existing.duplicate_window, existing.max_age) != (duplicate_window, max_age) {
            let updated = stream::Config { duplicate_window, max_age, ..existing.clone() };
            self.jetstream.update_stream(updated).await.map_err(|e| stream_error(e.into()))?;
            tracing::info!(stream = %name, ?duplicate_window, ?max_age, "updated the stream's limits");
        }
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).insert(service.to_owned());
        Ok(())
    }

    /// Forgets that `service`'s stream exists, so the next use recreates it.
    fn forget_stream(&self, service: &str) {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).remove(service);
    }
}

/// A message ready to go: its subject, headers and body.
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Outgoing {
    /// The size the server checks against its `max_payload`.
    fn wire_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, values)| {
                let name: &str = name.as_ref();
                values.iter().map(|v| name.len() + ": \r\n".len() + v.as_str().len()).sum::<usize>()
            })
            .sum();
        "NATS/1.0\r\n\r\n".len() + headers + self.body.len()
    }
}

/// Header names as `HeaderName`s built at compile time: inserting one
/// allocates nothing (a `&str` name is parsed and copied on every insert).
mod names {
    use async_nats::HeaderName;

    use super::headers;

    pub(super) const SPEC_VERSION: HeaderName = HeaderName::from_static(headers::SPEC_VERSION);
    pub(super) const ID: HeaderName = HeaderName::from_static(headers::ID);
    pub(super) const TYPE: HeaderName = HeaderName::from_static(headers::TYPE);
    pub(super) const SOURCE: HeaderName = HeaderName::from_static(headers::SOURCE);
    pub(super) const SUBJECT: HeaderName = HeaderName::from_static(headers::SUBJECT);
    pub(super) const TIME: HeaderName = HeaderName::from_static(headers::TIME);
    pub(super) const CORRELATION_ID: HeaderName = HeaderName::from_static(headers::CORRELATION_ID);
    pub(super) const CAUSATION_ID: HeaderName = HeaderName::from_static(headers::CAUSATION_ID);
    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    pub(super) const CONTENT_TYPE: HeaderName = HeaderName::from_static(headers::CONTENT_TYPE);
    pub(super) const NATS_MSG_ID: HeaderName = HeaderName::from_static(headers::NATS_MSG_ID);
}

/// CloudEvents binary mode: headers from the attributes, body from `data`.
///
/// Runs once per relayed message, so it allocates little: static header
/// names, each value formatted straight into the `String` the header keeps.
fn encode(message: &Message, partitions: u32) -> Result<Outgoing, String> {
    let mut headers = HeaderMap::new();
    let mut put = |name: HeaderName, value: String| -> Result<(), String> {
        let value = match percent_encode(&value) {
            Cow::Borrowed(_) => value,
            Cow::Owned(encoded) => encoded,
        };
        // Percent-encoding leaves no line break; checked anyway, since
        // `HeaderValue::from(String)` (which keeps the string, no copy)
        // panics on one.
        if value.contains(['\r', '\n']) {
            return Err(format!("`{name}` cannot be carried in a header"));
        }
        headers.insert(name, HeaderValue::from(value));
        Ok(())
    };
    let id = message.id.to_string();
    put(names::SPEC_VERSION, envelope::CLOUDEVENTS_SPEC_VERSION.to_owned())?;
    put(names::ID, id.clone())?;
    put(names::TYPE, message.message_type.clone())?;
    put(names::SOURCE, message.source.clone())?;
    put(names::SUBJECT, message.key.clone())?;
    put(names::TIME, message.time.to_rfc3339_opts(SecondsFormat::Micros, true))?;
    put(names::CONTENT_TYPE, envelope::DATA_CONTENT_TYPE.to_owned())?;
    if let Some(id) = message.metadata.correlation_id {
        put(names::CORRELATION_ID, id.to_string())?;
    }
    if let Some(id) = message.metadata.causation_id {
        put(names::CAUSATION_ID, id.to_string())?;
    }
    if let Some(traceparent) = &message.metadata.traceparent {
        put(names::TRACEPARENT, traceparent.clone())?;
    }
    put(names::NATS_MSG_ID, id)?;
    let body = serde_json::to_vec(&message.data).map_err(|e| format!("cannot serialize data: {e}"))?;
    let subject = if partitions > 1 {
        let partition = partition_of(&message.key, partitions);
        format!("polis.{}.{}.p{partition}.{}", message.target, message.kind.segment(), message.message_type)
    } else {
        message.subject()
    };
    Ok(Outgoing { subject, headers, body })
}

/// Whether the type part of a subject names `message_type`, after the
/// partition token if there is one (`p<digits>.`).
fn is_subject_type(subject_type: &str, message_type: &str) -> bool {
    subject_type == message_type
        || subject_type.strip_prefix('p').and_then(|rest| rest.split_once('.')).is_some_and(|(digits, rest)| {
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && rest == message_type
        })
}

/// Reads a message back from its subject, headers and body.
fn decode(subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> Result<Message, Malformed> {
    let header = |name: &str| -> Result<Option<String>, String> {
        // Header names are case-insensitive, as in the CloudEvents HTTP binding.
        let value = headers.and_then(|h| {
            h.get(name).or_else(|| {
                h.iter().find(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first())
            })
        });
        let Some(value) = value else { return Ok(None) };
        percent_decode(value.as_str()).map(Some).map_err(|reason| format!("header `{name}`: {reason}"))
    };
    let required = |name: &str| header(name)?.ok_or_else(|| format!("missing header `{name}`"));
    let uuid = |name: &str, value: &str| Uuid::parse_str(value).map_err(|e| format!("header `{name}`: {e}"));

    let id = required(headers::ID).and_then(|id| uuid(headers::ID, &id));
    let fields = || -> Result<Message, String> {
        let id = id.clone()?;
        let (target, kind, subject_type) = parse_subject(subject)?;
        let spec_version = required(headers::SPEC_VERSION)?;
        if spec_version != envelope::CLOUDEVENTS_SPEC_VERSION {
            return Err(format!("unsupported cloudevents spec version `{spec_version}`"));
        }
        if let Some(content_type) = header(headers::CONTENT_TYPE)? {
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if !media_type.eq_ignore_ascii_case(envelope::DATA_CONTENT_TYPE) {
                return Err(format!("unsupported content type `{content_type}`"));
            }
        }
        let message_type = required(headers::TYPE)?;
        if !is_subject_type(subject_type, &message_type) {
            return Err(format!("type `{message_type}` does not match subject `{subject}`"));
        }
        let time = required(headers::TIME)?;
        let time = DateTime::parse_from_rfc3339(&time)
            .map_err(|e| format!("header `{}`: {e}", headers::TIME))?
            .with_timezone(&Utc);
        let metadata = Metadata {
            correlation_id: header(headers::CORRELATION_ID)?.map(|v| uuid(headers::CORRELATION_ID, &v)).transpose()?,
            causation_id: header(headers::CAUSATION_ID)?.map(|v| uuid(headers::CAUSATION_ID, &v)).transpose()?,
            traceparent: header(headers::TRACEPARENT)?,
        };
        let data = serde_json::from_slice(body).map_err(|e| format!("the body is not json: {e}"))?;
        let message = Message {
            id,
            kind,
            source: required(headers::SOURCE)?,
            target: target.to_owned(),
            message_type,
            key: required(headers::SUBJECT)?,
            time,
            data,
            metadata,
        };
        validate_message(&message)?;
        Ok(message)
    };
    fields().map_err(|reason| Malformed { id: id.ok(), raw: raw_payload(subject, headers, body), reason })
}

/// `polis.<target>.<events|commands|replies>.<type>`.
fn parse_subject(subject: &str) -> Result<(&str, MessageKind, &str), String> {
    let unexpected = || format!("unexpected subject `{subject}`");
    let rest = subject.strip_prefix("polis.").ok_or_else(unexpected)?;
    let (target, rest) = rest.split_once('.').ok_or_else(unexpected)?;
    let (segment, message_type) = rest.split_once('.').ok_or_else(unexpected)?;
    let kind = [MessageKind::Event, MessageKind::Command, MessageKind::Reply]
        .into_iter()
        .find(|kind| kind.segment() == segment)
        .ok_or_else(unexpected)?;
    Ok((target, kind, message_type))
}

/// The subject, headers (sorted) and body as text, for a dead letter.
fn raw_payload(subject: &str, headers: Option<&HeaderMap>, body: &[u8]) -> String {
    let mut lines: Vec<String> = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| values.iter().map(move |v| format!("{}: {}", name.as_ref() as &str, v.as_str())))
        .collect();
    lines.sort();
    format!("{subject}\n{}\n\n{}", lines.join("\n"), String::from_utf8_lossy(body))
}

/// Percent-encodes what the CloudEvents HTTP binding requires: space, `"`,
/// `%` and every byte outside printable ASCII.
fn percent_encode(value: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(plain) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

fn percent_decode(value: &str) -> Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad percent-encoding")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not utf-8".to_owned())
}

#[async_trait]
impl Bus for NatsBus {
    /// Connected, and JetStream answers a request (for its account
    /// information): a broker that is frozen or cut off keeps the
    /// connection "up" until the client's own pings time out, minutes later.
    async fn check(&self) -> Result<(), BusError> {
        let inner = &self.inner;
        match inner.client.connection_state() {
            // Any answer will do: the reply's schema differs across server versions.
            async_nats::connection::State::Connected => {
                inner.client.request("$JS.API.INFO", Vec::new().into()).await.map(drop).map_err(BusError::backend)
            }
            state => Err(BusError::backend(format!("not connected to NATS (connection state: {state:?})"))),
        }
    }

    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        let inner = &self.inner;
        let max_payload = inner.client.server_info().max_payload;
        let mut outgoing = Vec::with_capacity(messages.len());
        for message in messages {
            let invalid = |reason: String| BusError::InvalidMessage { id: message.id, reason };
            validate_message(message).map_err(invalid)?;
            let encoded = encode(message, inner.options.partitions).map_err(invalid)?;
            if max_payload > 0 && encoded.wire_len() > max_payload {
                let size = encoded.wire_len();
                return Err(invalid(format!("{size} bytes exceed the server's limit of {max_payload}")));
            }
            outgoing.push(encoded);
        }
        let mut services: Vec<&str> = messages.iter().map(|m| m.target.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        for service in services {
            inner.ensure_stream(service).await?;
        }

        // Send everything, then await the acks in order; the connection keeps
        // the order, the broker stores in arrival order.
        let mut pending: VecDeque<(&Message, PublishAckFuture)> =
            VecDeque::with_capacity(messages.len().min(PUBLISH_WINDOW));
        for (message, encoded) in messages.iter().zip(outgoing) {
            // `send_publish` takes the message even when it refuses it, so a
            // retry encodes it again: rare, and cheaper than cloning every
            // message's headers in case it happens.
            let mut encoded = Some(encoded);
            let ack = loop {
                let Outgoing { subject, headers, body } = match encoded.take() {
                    Some(encoded) => encoded,
                    None => encode(message, inner.options.partitions)
                        .map_err(|reason| BusError::InvalidMessage { id: message.id, reason })?,
                };
                let publish = PublishMessage::build().headers(headers).payload(body.into());
                match inner.jetstream.send_publish(subject, publish).await {
                    Ok(ack) => break ack,
                    // The connection's window of unacknowledged publishes is
                    // full: make room by awaiting ours, or wait for others'.
                    Err(e) if e.kind() == PublishErrorKind::MaxAckPending => match pending.pop_front() {
                        Some(oldest) => await_ack(inner, oldest).await?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    },
                    Err(e) => {
                        let subject = message.subject();
                        return Err(BusError::backend(NatsError::Publish {
                            id: message.id,
                            subject,
                            source: e.into(),
                        }));
                    }
                }
            };
            pending.push_back((message, ack));
            if pending.len() >= PUBLISH_WINDOW
                && let Some(oldest) = pending.pop_front()
            {
                await_ack(inner, oldest).await?;
            }
        }
        while let Some(oldest) = pending.pop_front() {
            await_ack(inner, oldest).await?;
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        let durable = durable_name(consumer, topic.kind);
        self.open(consumer, topic, durable, topic.filter(), self.inner.options.max_ack_pending).await
    }

    fn partitions(&self) -> u32 {
        self.inner.options.partitions.max(1)
    }

    async fn subscribe_partition(
        &self,
        consumer: &str,
        topic: &Topic,
        partition: u32,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let partitions = self.partitions();
        if partitions <= 1 && partition == 0 {
            return self.subscribe(consumer, topic).await;
        }
        if partition >= partitions {
            let reason = format!("partition {partition} of {topic}: the bus has {partitions}");
            return Err(BusError::backend(NatsError::InvalidSubscription(reason)));
        }
        let durable = format!("{}_p{partition}", durable_name(consumer, topic.kind));
        let filter = format!("polis.{}.{}.p{partition}.>", topic.service, topic.kind.segment());
        self.open(consumer, topic, durable, filter, 1).await
    }
}

impl NatsBus {
    /// Opens (creating or updating) the durable pull consumer `durable` of
    /// `topic`'s stream, filtered to `filter`.
    async fn open(
        &self,
        consumer: &str,
        topic: &Topic,
        durable: String,
        filter: String,
        max_ack_pending: i64,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if consumer.is_empty() || consumer.contains('\0') {
            let reason = format!("invalid consumer name `{consumer}`");
            return Err(BusError::backend(NatsError::InvalidSubscription(reason)));
        }
        if !is_token(&topic.service) {
            let reason = format!("invalid service `{}`", topic.service);
            return Err(BusError::backend(NatsError::InvalidSubscription(reason)));
        }
        let options = &self.inner.options;
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("polis consumer {consumer} of {filter}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver: -1,
            filter_subject: filter,
            max_ack_pending,
            ..Default::default()
        };
        let mut subscription = NatsSubscription {
            inner: Arc::clone(&self.inner),
            service: topic.service.clone(),
            stream: stream_name(&topic.service),
            durable,
            config,
            messages: None,
            failures: 0,
        };
        subscription.open().await?;
        Ok(Box::new(subscription))
    }
}

async fn await_ack(inner: &Inner, (message, ack): (&Message, PublishAckFuture)) -> Result<(), BusError> {
    match ack.await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e.kind() == PublishErrorKind::StreamNotFound {
                inner.forget_stream(&message.target);
            }
            let subject = message.subject();
            Err(BusError::backend(NatsError::Publish { id: message.id, subject, source: e.into() }))
        }
    }
}

/// A durable pull consumer, reopened when its pull stream fails.
struct NatsSubscription {
    inner: Arc<Inner>,
    service: String,
    stream: String,
    durable: String,
    config: pull::Config,
    messages: Option<pull::Stream>,
    /// Pull stream failures since the last delivery.
    failures: u32,
}

impl NatsSubscription {
    /// Creates (or updates) the stream and the consumer, and starts pulling.
    async fn open(&mut self) -> Result<(), BusError> {
        self.messages = None;
        self.inner.ensure_stream(&self.service).await?;
        let consumer_error = |source: BoxError| {
            BusError::backend(NatsError::Consumer {
                stream: self.stream.clone(),
                durable: self.durable.clone(),
                source,
            })
        };
        let consumer: consumer::PullConsumer =
            self.inner.jetstream.create_consumer_on_stream(self.config.clone(), &self.stream).await.map_err(|e| {
                // The stream may have been deleted behind our back.
                self.inner.forget_stream(&self.service);
                consumer_error(e.into())
            })?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.inner.options.pull_batch.max(1))
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| BusError::backend(NatsError::Pull { durable: self.durable.clone(), source: e.into() }))?;
        self.messages = Some(messages);
        Ok(())
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                // The first reopen is immediate; repeated failures back off.
                if self.failures > 1 {
                    let backoff = REOPEN_BACKOFF_MIN.saturating_mul(1 << (self.failures - 2).min(6));
                    tokio::time::sleep(backoff.min(REOPEN_BACKOFF_MAX)).await;
                }
                if let Err(error) = self.open().await {
                    self.failures = self.failures.saturating_add(1);
                    return Err(error);
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    self.failures = 0;
                    return Ok(delivery(message));
                }
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.durable, stream = %self.stream, error = %polis_core::error::chain(&error), "pull stream failed; reopening");
                    self.messages = None;
                    self.failures = self.failures.saturating_add(1);
                }
                None => {
                    tracing::warn!(consumer = %self.durable, stream = %self.stream, "pull stream ended; reopening");
                    self.messages = None;
                    self.failures = self.failures.saturating_add(1);
                }
            }
        }
    }
}

fn delivery(message: jetstream::Message) -> Delivery {
    let (attempt, sequence) = match message.info() {
        Ok(info) => (u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX), info.stream_sequence),
        Err(_) => (1, 0),
    };
    let (message, acker) = message.split();
    let decoded = decode(message.subject.as_str(), message.headers.as_ref(), &message.payload);
    Delivery::new(decoded, attempt, Box::new(NatsAcker { acker, sequence }))
}

/// Acks and nacks one JetStream delivery, waiting for the server to confirm.
struct NatsAcker {
    acker: JetStreamAcker,
    sequence: u64,
}

impl fmt::Debug for NatsAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAcker").field("sequence", &self.sequence).finish_non_exhaustive()
    }
}

impl NatsAcker {
    async fn confirm(&self, what: &'static str, kind: AckKind) -> Result<(), BusError> {
        self.acker
            .double_ack_with(kind)
            .await
            .map_err(|source| BusError::backend(NatsError::Ack { what, sequence: self.sequence, source }))
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.confirm("ack", AckKind::Ack).await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.confirm("nack", AckKind::Nak((!delay.is_zero()).then_some(delay))).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn sample() -> Message {
        let command = Message::command("order", "payment", "payment.authorize.v1", "order 1\r\n\"%ü", json!({"n": 1}));
        Message::reply_to(&command, "payment.authorized.v1", json!({"amount": 12.5, "tags": ["a"]})).with_metadata(
            Metadata {
                correlation_id: Some(Uuid::now_v7()),
                causation_id: Some(command.id),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            },
        )
    }

    #[test]
    fn a_message_round_trips_through_headers_and_body() {
        let message = sample();
        let out = encode(&message, 1).unwrap();
        assert_eq!(out.subject, "polis.order.replies.payment.authorized.v1");
        assert_eq!(out.headers.get(headers::SUBJECT).unwrap().as_str(), "order%201%0D%0A%22%25%C3%BC");
        assert_eq!(out.headers.get(headers::NATS_MSG_ID).unwrap().as_str(), message.id.to_string());
        assert_eq!(decode(&out.subject, Some(&out.headers), &out.body).unwrap(), message);

        let mut shouting = HeaderMap::new();
        for (name, values) in out.headers.iter() {
            let name: &str = name.as_ref();
            shouting.insert(name.to_ascii_uppercase().as_str(), values[0].clone());
        }
        assert_eq!(decode(&out.subject, Some(&shouting), &out.body).unwrap(), message);
    }

    #[test]
    fn bad_payloads_are_malformed_not_panics() {
        let message = sample();
        let out = encode(&message, 1).unwrap();

        let not_json = decode(&out.subject, Some(&out.headers), b"{nope").unwrap_err();
        assert_eq!(not_json.id, Some(message.id));
        assert!(not_json.reason.contains("not json"), "{}", not_json.reason);
        assert!(not_json.raw.contains("{nope") && not_json.raw.contains("ce-type: payment.authorized.v1"));

        let no_headers = decode(&out.subject, None, &out.body).unwrap_err();
        assert_eq!((no_headers.id, no_headers.reason.as_str()), (None, "missing header `ce-id`"));

        let mut bad_time = out.headers.clone();
        bad_time.insert(headers::TIME, "yesterday");
        assert!(decode(&out.subject, Some(&bad_time), &out.body).unwrap_err().reason.contains("ce-time"));

        let mut bad_escape = out.headers.clone();
        bad_escape.insert(headers::SUBJECT, "50%");
        assert!(decode(&out.subject, Some(&bad_escape), &out.body).unwrap_err().reason.contains("percent"));

        for subject in ["elsewhere", "polis.order", "polis.order.gossip.x", "polis.order.replies.other.v1"] {
            let err = decode(subject, Some(&out.headers), &out.body).unwrap_err();
            assert_eq!(err.id, Some(message.id), "{subject}");
        }
    }

    #[test]
    fn names_are_valid_and_distinct() {
        assert_eq!(stream_name("order-history"), "POLIS_ORDER-HISTORY");
        assert_eq!(durable_name("order", MessageKind::Event), "order_events");
        assert_eq!(durable_name("order", MessageKind::Reply), "order_replies");
        assert_ne!(stream_name("Order"), stream_name("order"));
        assert_ne!(durable_name("a.b", MessageKind::Event), durable_name("a_b", MessageKind::Event));
        let long = "x".repeat(500);
        for name in [stream_name("a/b c"), durable_name("a/b c", MessageKind::Command), stream_name(&long)] {
            assert!(name.len() < 140 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }
}

/// Behaviour beyond the bus contract, against a real nats-server.
#[cfg(test)]
mod server_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn service() -> String {
        format!("nt{}", &Uuid::now_v7().simple().to_string()[20..])
    }

    async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("a delivery within 30 s").unwrap()
    }

    fn options() -> NatsOptions {
        NatsOptions { ack_wait: Duration::from_secs(2), publish_timeout: Duration::from_secs(2), ..Default::default() }
    }

    #[tokio::test]
    async fn a_consumer_may_subscribe_before_anything_is_published() {
        let server = polis_testkit::nats().await;
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        let svc = service();
        let mut sub = bus.subscribe("early", &Topic::commands_to(&svc)).await.unwrap();
        let command = Message::command("caller", &svc, "thing.do.v1", "k", json!({"x": 1}));
        bus.publish(std::slice::from_ref(&command)).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.message.as_ref().unwrap(), &command);
        d.ack().await.unwrap();
    }

    #[tokio::test]
    async fn a_foreign_payload_is_delivered_as_malformed_and_can_be_acked() {
        let server = polis_testkit::nats().await;
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        let svc = service();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        let subject = format!("polis.{svc}.events.thing.v1");
        bus.inner.jetstream.publish(subject, "not json".into()).await.unwrap().await.unwrap();
        let good = Message::event(&svc, "thing.v1", "k", json!(null));
        bus.publish(std::slice::from_ref(&good)).await.unwrap();

        let bad = next(&mut sub).await;
        let malformed = bad.message.as_ref().unwrap_err();
        assert_eq!((malformed.id, malformed.reason.as_str()), (None, "missing header `ce-id`"));
        assert!(malformed.raw.contains("not json"));
        bad.ack().await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.message.as_ref().unwrap(), &good);
        d.ack().await.unwrap();
    }

    #[tokio::test]
    async fn big_batches_keep_their_order() {
        let server = polis_testkit::nats().await;
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        let svc = service();
        let sent: Vec<Message> =
            (0..3 * PUBLISH_WINDOW).map(|i| Message::event(&svc, "thing.v1", "k", json!({"n": i}))).collect();
        bus.publish(&sent).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        for expected in &sent {
            let d = next(&mut sub).await;
            assert_eq!(d.message.as_ref().unwrap().id, expected.id);
            d.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn too_large_and_invalid_messages_are_refused_before_anything_is_sent() {
        let server = polis_testkit::nats().await;
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        let svc = service();
        let ok = Message::event(&svc, "thing.v1", "k", json!({}));
        let huge = Message::event(&svc, "thing.v1", "k", json!("x".repeat(2 << 20)));
        let err = bus.publish(&[ok.clone(), huge.clone()]).await.unwrap_err();
        assert!(matches!(err, BusError::InvalidMessage { id, .. } if id == huge.id), "{err:?}");
        let bad = Message { target: "a b".into(), ..ok.clone() };
        assert!(matches!(bus.publish(&[bad]).await, Err(BusError::InvalidMessage { .. })));
        assert!(bus.subscribe("c", &Topic::events_of("a.b")).await.is_err());
        assert!(bus.subscribe("", &Topic::events_of(&svc)).await.is_err());
        let tls = server.url().replace("nats://", "tls://");
        assert!(matches!(NatsBus::connect(&tls, options()).await, Err(BusError::Backend(_))));
    }

    #[tokio::test]
    async fn changed_options_update_an_existing_consumer() {
        let server = polis_testkit::nats().await;
        let svc = service();
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        drop(bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap());
        let longer = NatsOptions {
            ack_wait: Duration::from_secs(7),
            duplicate_window: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
            ..options()
        };
        let bus = NatsBus::connect(server.url(), longer).await.unwrap();
        drop(bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap());
        let stream = bus.inner.jetstream.get_stream(stream_name(&svc)).await.unwrap();
        let info = stream.consumer_info(durable_name("c", MessageKind::Event)).await.unwrap();
        assert_eq!(info.config.ack_wait, Duration::from_secs(7));
        assert_eq!(info.config.filter_subject, Topic::events_of(&svc).filter());
        assert_eq!(stream.cached_info().config.duplicate_window, Duration::from_secs(30));
        assert_eq!(stream.cached_info().config.max_age, Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn a_stream_deletes_messages_older_than_its_maximum_age_acknowledged_or_not() {
        let server = polis_testkit::nats().await;
        let svc = service();
        assert_eq!(options().stream_limits(), (Duration::from_secs(120), Duration::from_secs(7 * 24 * 3600)));
        let short = NatsOptions { max_age: Duration::from_secs(1), ..options() };
        assert_eq!(short.stream_limits(), (Duration::from_secs(1), Duration::from_secs(1)));
        let bus = NatsBus::connect(server.url(), short).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        let sent: Vec<Message> = (0..3).map(|i| Message::event(&svc, "thing.v1", "k", json!({"n": i}))).collect();
        bus.publish(&sent).await.unwrap();
        let first = next(&mut sub).await;
        assert_eq!(first.message.as_ref().unwrap().id, sent[0].id);
        first.ack().await.unwrap();
        let mut stream = bus.inner.jetstream.get_stream(stream_name(&svc)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let state = stream.info().await.unwrap().state.clone();
            if state.messages == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {} messages after 15 s", state.messages);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(sub);
        let later = Message::event(&svc, "thing.v1", "k", json!({"n": 3}));
        bus.publish(std::slice::from_ref(&later)).await.unwrap();
        let mut again = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        let d = next(&mut again).await;
        assert_eq!(d.message.as_ref().unwrap().id, later.id, "the unacknowledged messages expired");
        let usage = bus.stream_usage(&svc).await.unwrap().unwrap();
        assert_eq!(usage.messages, 1);
        assert!(usage.bytes > 0, "{usage:?}");
        assert_eq!(bus.stream_usage(&service()).await.unwrap(), None, "no stream yet");
    }

    /// Publishes until the client has reconnected, as a relay would.
    async fn publish_eventually(bus: &NatsBus, messages: &[Message]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Err(err) = bus.publish(messages).await {
            assert!(tokio::time::Instant::now() < deadline, "still failing after 30 s: {err:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes deliveries until `expected` came, in order; redeliveries of
    /// anything before (after a crash) are acked and skipped.
    async fn receive_in_order(sub: &mut Box<dyn Subscription>, expected: &[Message], earlier: &[Message]) {
        let expected_all = expected;
        let mut expected = expected.iter().peekable();
        while let Some(want) = expected.peek() {
            let d = next(sub).await;
            let id = d.message.as_ref().unwrap().id;
            if id == want.id {
                expected.next();
            } else {
                let position = |ms: &[Message]| ms.iter().position(|m| m.id == id);
                assert!(
                    position(earlier).is_some(),
                    "unexpected delivery {id} (attempt {}, position {:?}), waiting for {}",
                    d.attempt,
                    position(&[earlier, expected_all].concat()),
                    want.id
                );
            }
            d.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_server_restart_is_transparent() {
        let mut server = polis_testkit::NatsServer::start().await.unwrap();
        let bus = NatsBus::connect(&server.url(), options()).await.unwrap();
        let svc = service();
        let sent: Vec<Message> = (0..4).map(|i| Message::event(&svc, "thing.v1", "k", json!({"n": i}))).collect();
        bus.publish(&sent[..2]).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        receive_in_order(&mut sub, &sent[..2], &[]).await;

        server.restart().await.unwrap();
        publish_eventually(&bus, &sent[2..]).await;
        // A clean shutdown keeps the consumer's acks: nothing comes twice.
        receive_in_order(&mut sub, &sent[2..], &[]).await;
    }

    #[tokio::test]
    async fn after_a_server_crash_nothing_is_lost() {
        let mut server = polis_testkit::NatsServer::start().await.unwrap();
        let bus = NatsBus::connect(&server.url(), options()).await.unwrap();
        let svc = service();
        let sent: Vec<Message> = (0..4).map(|i| Message::event(&svc, "thing.v1", "k", json!({"n": i}))).collect();
        bus.publish(&sent[..2]).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        receive_in_order(&mut sub, &sent[..2], &[]).await;

        server.kill();
        server.restart().await.unwrap();
        publish_eventually(&bus, &sent[2..]).await;
        // nats-server writes consumer state lazily: acks of the last moments
        // before a crash may be lost, and those messages come again.
        receive_in_order(&mut sub, &sent[2..], &sent[..2]).await;
    }

    #[tokio::test]
    async fn a_deleted_consumer_is_recreated() {
        let server = polis_testkit::nats().await;
        let bus = NatsBus::connect(server.url(), options()).await.unwrap();
        let svc = service();
        let sent: Vec<Message> = (0..3).map(|i| Message::event(&svc, "thing.v1", "k", json!({"n": i}))).collect();
        bus.publish(&sent[..1]).await.unwrap();
        let mut sub = bus.subscribe("c", &Topic::events_of(&svc)).await.unwrap();
        receive_in_order(&mut sub, &sent[..1], &[]).await;

        let stream = bus.inner.jetstream.get_stream(stream_name(&svc)).await.unwrap();
        stream.delete_consumer(&durable_name("c", MessageKind::Event)).await.unwrap();
        bus.publish(&sent[1..]).await.unwrap();
        // The new consumer starts from the beginning of the stream again.
        let first = next(&mut sub).await;
        assert_eq!(first.message.as_ref().unwrap().id, sent[0].id);
        first.ack().await.unwrap();
        receive_in_order(&mut sub, &sent[1..], &[]).await;
    }
}
