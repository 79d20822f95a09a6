//! The embedded bus: durable, in one SQLite file, shared by one process.
//!
//! In the embedded deployment every service runs in one process, but a bus
//! that only lived in memory would lose every message relayed but not yet
//! handled when the process dies. So this bus keeps what JetStream keeps:
//!
//! - a log of messages per service (`bus_messages`), appended by `publish`,
//!   de-duplicated by message id;
//! - per durable consumer and topic, an *ack floor*: every message at or
//!   below it is acknowledged.
//!
//! # Delivery before the fsync
//!
//! A message is delivered as soon as its insert commits, before that commit
//! is on disk: the log is written with `synchronous=NORMAL`, and a thread of
//! its own syncs the WAL right after (coalescing every commit made while an
//! fsync runs; `polis_store::sqlite::engine::WalSync`). `publish` returns
//! only once the sync covers its messages, so a relay marks them published
//! only then. A power loss can take the unsynced tail of the log, but every
//! message in it is still unpublished in its sender's outbox and is
//! published again; a consumer that handled it already recognizes it in its
//! inbox. So the fsync leaves each hop's path without weakening "nothing
//! lost". (A process crash loses nothing at all: the commit is in the OS.)
//!
//! Fresh messages are also kept in memory, the last 1,024 per topic: a
//! consumer that keeps up is handed them from there, without reading and
//! parsing the log again; one that lags reads the log.
//!
//! A consumer has one live subscription per topic: subscribing again
//! replaces the previous subscription, whose `next` then reports
//! [`BusError::Closed`], and delivers again from the ack floor.
//!
//! Acknowledgements are kept in memory. What is written, in the background
//! and batched, is each consumer's floor, which moves over acknowledged
//! messages with no gap. Acknowledgements above the floor (messages of
//! different keys are handled at once and finish out of order) and the last
//! floor not yet written are lost in a crash: those messages are delivered
//! again after the restart, which the consumer's inbox absorbs. Delivery counts live in memory: they survive a
//! re-subscription, not a process restart (after one, redeliveries start
//! counting at 1 again).
//!
//! # Retention
//!
//! The log would otherwise grow for as long as the process lives. Like a
//! JetStream stream with interest-based retention, a message is deleted
//! once every durable consumer of its topic has acknowledged it (it lies at
//! or below each one's stored ack floor) and it is older than
//! [`InProcessOptions::replay_window`] (none by default); a message of a
//! topic nobody subscribed to, once older than
//! [`InProcessOptions::retention`]. [`InProcessBus::cleanup`] does that,
//! every [`InProcessOptions::cleanup_interval`] in the background, a prefix
//! of each topic at a time (its cost follows what it deletes, not the
//! log's length). So:
//!
//! - a message some consumer has not acknowledged is never deleted, however
//!   old, and neither is anything above that consumer's floor;
//! - a consumer is durable from its first `subscribe` (which records it), so
//!   it holds back deletion even before its first ack; one that is gone for
//!   good must be removed with [`InProcessBus::remove_consumer`], or its
//!   topic keeps everything from its floor on;
//! - a topic nobody has subscribed to keeps its messages for the retention
//!   period only, like a JetStream stream with a maximum age: a consumer
//!   subscribing for the first time later starts from what is left;
//! - the log's size follows the consumers' lag (plus the replay window),
//!   not the history: what every consumer has is gone within a cleanup
//!   interval;
//! - the replay window also bounds de-duplication: a message id published
//!   again after its message was deleted is stored and delivered again
//!   (the consumers' inboxes still recognize it, as they do any
//!   redelivery); a window longer than a producer can stay down between
//!   publishing and marking a batch spares the consumers that work.
//!
//! Only acknowledgements already written count (they are written within
//! moments), which errs on the side of keeping.

use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use polis_core::Message;
use polis_core::bus::{Acker, Bus, BusError, Delivery, Malformed, Subscription, Topic};
use polis_core::message::validate_message;
use polis_store::sqlite::engine::{self, BatchWriter, Durability, Readers, WalSync, WriterOptions};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Messages read per query while delivering.
const FETCH: i64 = 256;
/// Fresh messages kept in memory per topic (see the module docs).
const TAIL: usize = 1024;
/// Messages deleted per statement by a cleanup, so that publishes and ack
/// writes get the single connection in between.
const CLEANUP_CHUNK: i64 = 1_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bus_messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   BLOB    NOT NULL UNIQUE,
    service      TEXT    NOT NULL,
    segment      TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    stored_at_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bus_messages_topic ON bus_messages (service, segment, seq);
-- Retention looks at messages old enough to go, not at the whole log.
CREATE INDEX IF NOT EXISTS bus_messages_stored ON bus_messages (stored_at_us);
CREATE TABLE IF NOT EXISTS bus_consumers (
    consumer  TEXT    NOT NULL,
    service   TEXT    NOT NULL,
    segment   TEXT    NOT NULL,
    ack_floor INTEGER NOT NULL,
    PRIMARY KEY (consumer, service, segment)
) WITHOUT ROWID;
-- Acknowledgements above the floor were stored here before; they are kept
-- in memory now (see the module docs).
DROP TABLE IF EXISTS bus_acks;
";

/// Options for [`InProcessBus::open_with`].
#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// How long a message of a topic nobody has subscribed to stays (see
    /// the module docs, "Retention").
    pub retention: Duration,
    /// How long a message stays after every durable consumer of its topic
    /// acknowledged it: none by default (deleted at the next cleanup).
    pub replay_window: Duration,
    /// How often the background cleanup runs.
    pub cleanup_interval: Duration,
    /// How long the integrity check of the bus file at open may take
    /// (default 10 s; `None` skips it). A damaged file fails the open.
    pub integrity_check: Option<Duration>,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            replay_window: Duration::ZERO,
            cleanup_interval: Duration::from_secs(1),
            integrity_check: Some(polis_store::sqlite::INTEGRITY_CHECK_BUDGET),
        }
    }
}

/// The durable in-process bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The only writing connection, on a thread of its own: publishes and ack
    /// flushes queued together commit together.
    writer: BatchWriter,
    /// Deliveries and counts read here, beside the writer.
    readers: Readers,
    /// Bumped after each commit of published messages.
    published: Arc<watch::Sender<u64>>,
    tails: Arc<Tails>,
    consumers: Mutex<HashMap<ConsumerKey, Arc<Mutex<ConsumerState>>>>,
    /// Ack floors to write, per consumer and topic.
    acks: mpsc::UnboundedSender<(ConsumerKey, i64)>,
    options: InProcessOptions,
    /// Dropped with the bus, which stops the cleanup task.
    _stop_cleanup: oneshot::Sender<()>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConsumerKey {
    consumer: String,
    service: String,
    segment: &'static str,
}

/// What a consumer has been sent and has acknowledged, shared by its subscriptions.
#[derive(Debug, Default)]
struct ConsumerState {
    /// Loaded from the database on first subscription.
    loaded: bool,
    /// Every seq <= floor is acknowledged.
    floor: i64,
    /// Acknowledged seqs above the floor.
    acked: BTreeSet<i64>,
    /// Seqs of this topic above the floor, in log order, as read so far: what
    /// the floor advances over once they are acknowledged.
    window: VecDeque<i64>,
    /// Deliveries so far, per seq above the floor.
    attempts: HashMap<i64, u32>,
    /// Negatively acknowledged: (due, seq), redelivered when due.
    retry: BinaryHeap<std::cmp::Reverse<(Instant, i64)>>,
    /// Bumped by each subscription: only the newest one reads (see
    /// [`Bus::subscribe`] for [`InProcessBus`]).
    generation: u64,
    /// Set by [`InProcessBus::remove_consumer`]: its floor is no longer written.
    removed: bool,
}

impl ConsumerState {
    fn ack(&mut self, seq: i64) {
        if seq <= self.floor {
            return;
        }
        self.acked.insert(seq);
        self.attempts.remove(&seq);
        while let Some(&front) = self.window.front() {
            if !self.acked.remove(&front) {
                break;
            }
            self.floor = front;
            self.window.pop_front();
        }
    }

    /// Records that `seq` of this topic was read from the log.
    fn read(&mut self, seq: i64) {
        if seq > self.floor && self.window.back().is_none_or(|&last| last < seq) {
            self.window.push_back(seq);
        }
    }
}

impl InProcessBus {
    /// Opens (creating if needed) the bus file at `path`, with the default
    /// [`InProcessOptions`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, BusError> {
        Self::open_with(path, InProcessOptions::default()).await
    }

    /// Opens (creating if needed) the bus file at `path`.
    pub async fn open_with(path: impl AsRef<Path>, options: InProcessOptions) -> Result<Self, BusError> {
        if options.cleanup_interval.is_zero() {
            return Err(BusError::backend("the in-process bus cleanup interval must be positive"));
        }
        let path = path.as_ref();
        let existing = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if let (Some(budget), true) = (options.integrity_check, existing) {
            polis_store::sqlite::check_integrity(path, budget).await.map_err(BusError::backend)?;
        }
        let conn = engine::open_writer(path, Durability::Normal).map_err(BusError::backend)?;
        conn.execute_batch(SCHEMA).map_err(BusError::backend)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(max(seq), 0) FROM bus_messages", [], |r| r.get(0))
            .map_err(BusError::backend)?;
        let readers = Readers::open(path, 4).map_err(BusError::backend)?;
        let tails = Arc::new(Tails::new(last));
        let published = Arc::new(watch::Sender::new(0u64));
        let after_commit = {
            let (tails, published) = (tails.clone(), published.clone());
            Box::new(move |committed: bool| {
                if tails.commit(committed) {
                    published.send_modify(|n| *n = n.wrapping_add(1));
                }
            })
        };
        let wal_sync = WalSync::new(&conn, Duration::ZERO).map_err(BusError::backend)?;
        let options_for_writer = WriterOptions { after_commit: Some(after_commit), wal_sync: Some(wal_sync) };
        let writer =
            BatchWriter::spawn_with("polis-bus-writer".into(), conn, options_for_writer).map_err(BusError::backend)?;
        let (acks, pending) = mpsc::unbounded_channel();
        tokio::spawn(ack_writer(writer.clone(), pending));
        let (stop_cleanup, stopped) = oneshot::channel();
        let interval = options.cleanup_interval;
        let consumers = Mutex::default();
        let inner = Inner { writer, readers, published, tails, consumers, acks, options, _stop_cleanup: stop_cleanup };
        let bus = Self { inner: Arc::new(inner) };
        tokio::spawn(cleanup_task(Arc::downgrade(&bus.inner), interval, stopped));
        Ok(bus)
    }

    /// Deletes the messages the retention allows to go now (see the module
    /// docs); returns how many. The bus also runs this by itself, every
    /// [`InProcessOptions::cleanup_interval`].
    pub async fn cleanup(&self) -> Result<u64, BusError> {
        let now = Utc::now();
        let cutoff = |window: Duration| {
            chrono::Duration::from_std(window)
                .ok()
                .and_then(|window| now.checked_sub_signed(window))
                .map_or(i64::MIN, |t| t.timestamp_micros())
        };
        let (replayed, retained) = (cutoff(self.inner.options.replay_window), cutoff(self.inner.options.retention));
        let mut deleted = 0;
        loop {
            let tails = self.inner.tails.clone();
            let done = self
                .inner
                .writer
                .run(move |conn| {
                    let gone = delete_chunk(conn, replayed, retained)?;
                    // A consumer subscribing later starts from what is left,
                    // in the tail too (forgotten even if this rolls back: the
                    // log still serves those).
                    tails.forget(&gone);
                    Ok(gone.len() as u64)
                })
                .await
                .map_err(BusError::backend)?;
            deleted += done;
            if done < CLEANUP_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Forgets `consumer`'s durable subscription to `topic`: its position and
    /// acknowledgements. Messages it alone held back become subject to the
    /// retention; subscribing again later starts from the oldest message left.
    /// Do this for a consumer that is gone for good.
    pub async fn remove_consumer(&self, consumer: &str, topic: &Topic) -> Result<(), BusError> {
        let key = ConsumerKey {
            consumer: consumer.to_owned(),
            service: topic.service.clone(),
            segment: topic.kind.segment(),
        };
        let forget = key.clone();
        self.inner
            .writer
            .run(move |conn| {
                conn.execute(
                    "DELETE FROM bus_consumers WHERE consumer = ?1 AND service = ?2 AND segment = ?3",
                    params![forget.consumer, forget.service, forget.segment],
                )?;
                Ok(0)
            })
            .await
            .map_err(BusError::backend)?;
        if let Some(state) = lock(&self.inner.consumers).remove(&key) {
            lock(&state).removed = true;
        }
        Ok(())
    }

    /// How many messages of `topic` `consumer` has not acknowledged: its
    /// backlog, for monitoring. For a consumer subscribed in this process
    /// the count is exact; for another one, it is what its stored floor
    /// tells (acknowledgements above the floor are not stored).
    pub async fn unacknowledged(&self, consumer: &str, topic: &Topic) -> Result<u64, BusError> {
        let key = ConsumerKey {
            consumer: consumer.to_owned(),
            service: topic.service.clone(),
            segment: topic.kind.segment(),
        };
        let known = lock(&self.inner.consumers).get(&key).cloned();
        let in_memory = known.and_then(|state| {
            let s = lock(&state);
            s.loaded.then(|| (s.floor, s.acked.len() as i64))
        });
        let n: i64 = self.read(|conn| match in_memory {
            Some((floor, acked_above)) => conn
                .query_row(
                    "SELECT count(*) FROM bus_messages WHERE service = ?1 AND segment = ?2 AND seq > ?3",
                    params![key.service, key.segment, floor],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n - acked_above),
            None => conn.query_row(
                "SELECT count(*) FROM bus_messages m \
                 WHERE m.service = ?2 AND m.segment = ?3 \
                   AND m.seq > COALESCE((SELECT ack_floor FROM bus_consumers \
                                         WHERE consumer = ?1 AND service = ?2 AND segment = ?3), 0)",
                params![key.consumer, key.service, key.segment],
                |r| r.get(0),
            ),
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many messages the log holds.
    pub async fn stored_messages(&self) -> Result<u64, BusError> {
        let n: i64 = self.read(|conn| conn.query_row("SELECT count(*) FROM bus_messages", [], |r| r.get(0)))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Runs `read` on a reader connection, on this thread.
    fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, BusError> {
        self.inner.readers.read(read).and_then(|r| r).map_err(BusError::backend)
    }

    fn state(&self, key: &ConsumerKey) -> Arc<Mutex<ConsumerState>> {
        let mut consumers = lock(&self.inner.consumers);
        consumers.entry(key.clone()).or_default().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them half-updated in a
    // way that matters more than losing the bus; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, messages: &[Message]) -> Result<(), BusError> {
        for m in messages {
            validate_message(m).map_err(|reason| BusError::InvalidMessage { id: m.id, reason })?;
        }
        if messages.is_empty() {
            return Ok(());
        }
        let rows = messages
            .iter()
            .map(|m| Ok((serde_json::to_string(m)?, Arc::new(m.clone()))))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(BusError::backend)?;
        let now = Utc::now().timestamp_micros();
        let tails = self.inner.tails.clone();
        // Delivered once committed, returned once synced (see the module docs).
        self.inner
            .writer
            .run_durable(move |conn| {
                let mut insert = conn.prepare_cached(
                    "INSERT INTO bus_messages (message_id, service, segment, body, stored_at_us) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (message_id) DO NOTHING RETURNING seq",
                )?;
                let mut fresh = Vec::with_capacity(rows.len());
                for (body, message) in rows {
                    let seq = insert
                        .query_row(params![message.id, message.target, message.kind.segment(), body, now], |r| {
                            r.get::<_, i64>(0)
                        })
                        .optional()?;
                    // None: a duplicate, stored and delivered before.
                    if let Some(seq) = seq {
                        fresh.push((seq, message));
                    }
                }
                tails.stage(fresh);
                Ok(0)
            })
            .await
            .map_err(BusError::backend)?;
        Ok(())
    }

    async fn subscribe(&self, consumer: &str, topic: &Topic) -> Result<Box<dyn Subscription>, BusError> {
        let key = ConsumerKey {
            consumer: consumer.to_owned(),
            service: topic.service.clone(),
            segment: topic.kind.segment(),
        };
        // Recorded before anything is read: from now on this consumer holds
        // back the retention of its topic, acknowledged anything or not.
        let record = key.clone();
        self.inner
            .writer
            .run(move |conn| {
                conn.execute(
                    "INSERT INTO bus_consumers (consumer, service, segment, ack_floor) VALUES (?1, ?2, ?3, 0) \
                     ON CONFLICT DO NOTHING",
                    params![record.consumer, record.service, record.segment],
                )?;
                Ok(0)
            })
            .await
            .map_err(BusError::backend)?;
        let state = self.state(&key);
        let needs_load = !lock(&state).loaded;
        if needs_load {
            let floor = self.read(|conn| {
                conn.query_row(
                    "SELECT ack_floor FROM bus_consumers WHERE consumer = ?1 AND service = ?2 AND segment = ?3",
                    params![key.consumer, key.service, key.segment],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
            })?;
            let mut s = lock(&state);
            if !s.loaded {
                s.loaded = true;
                s.floor = floor.unwrap_or(0);
            }
        }
        let (cursor, generation) = {
            let mut s = lock(&state);
            // Whatever was delivered and not acknowledged is redelivered, from
            // the floor on, by this subscription alone: an earlier one of the
            // same consumer and topic stops (its next() reports Closed), or
            // its reads would push the floor past messages it never saw.
            s.retry.clear();
            s.window.clear();
            s.generation += 1;
            (s.floor, s.generation)
        };
        Ok(Box::new(InProcessSubscription {
            bus: self.clone(),
            key,
            state,
            generation,
            cursor,
            buffer: VecDeque::new(),
            published: self.inner.published.subscribe(),
        }))
    }
}

/// A durable subscription of one consumer to one topic.
struct InProcessSubscription {
    bus: InProcessBus,
    key: ConsumerKey,
    state: Arc<Mutex<ConsumerState>>,
    /// This subscription's generation in `state`.
    generation: u64,
    /// Highest seq read from the log by this subscription.
    cursor: i64,
    buffer: VecDeque<(i64, Body)>,
    published: watch::Receiver<u64>,
}

/// A message as the log or the in-memory tail holds it.
enum Body {
    Stored(String),
    Fresh(Arc<Message>),
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Redeliveries that are due come first.
            let due = {
                let mut s = lock(&self.state);
                if s.generation != self.generation {
                    // Replaced by a newer subscription (see the module docs).
                    return Err(BusError::Closed);
                }
                match s.retry.peek() {
                    Some(std::cmp::Reverse((at, _))) if *at <= Instant::now() => s.retry.pop().map(|r| r.0.1),
                    _ => None,
                }
            };
            if let Some(seq) = due {
                let body = self.bus.read(|conn| {
                    conn.prepare_cached("SELECT body FROM bus_messages WHERE seq = ?1")?
                        .query_row([seq], |r| r.get::<_, String>(0))
                        .optional()
                });
                let body = match body {
                    Ok(body) => body,
                    Err(e) => {
                        // Put it back, or the redelivery would be lost until a resubscribe.
                        lock(&self.state).retry.push(std::cmp::Reverse((Instant::now(), seq)));
                        return Err(BusError::backend(e));
                    }
                };
                if let Some(body) = body {
                    return Ok(self.deliver(seq, Body::Stored(body)));
                }
                continue;
            }
            while let Some((seq, body)) = self.buffer.pop_front() {
                let acked = {
                    let s = lock(&self.state);
                    seq <= s.floor || s.acked.contains(&seq)
                };
                if !acked {
                    return Ok(self.deliver(seq, body));
                }
            }
            self.published.borrow_and_update();
            if let Some(fresh) = self.bus.inner.tails.after(&self.key, self.cursor) {
                if let Some(&(seq, _)) = fresh.last() {
                    self.record_reads(fresh.iter().map(|(seq, _)| *seq))?;
                    self.cursor = seq;
                    self.buffer.extend(fresh.into_iter().map(|(seq, m)| (seq, Body::Fresh(m))));
                    continue;
                }
            } else {
                // Everything of this topic committed up to here is in the read
                // below: if it is not cut by the limit, the cursor may move up
                // to here, and meet the in-memory tail.
                let horizon = self.bus.inner.tails.last();
                let rows = self.fetch()?;
                let complete = rows.len() < FETCH as usize;
                self.record_reads(rows.iter().map(|(seq, _)| *seq))?;
                if let Some(&(seq, _)) = rows.last() {
                    self.cursor = seq;
                }
                if complete {
                    self.cursor = self.cursor.max(horizon);
                }
                let fetched = !rows.is_empty();
                self.buffer.extend(rows.into_iter().map(|(seq, body)| (seq, Body::Stored(body))));
                if fetched {
                    continue;
                }
            }
            // Nothing new: wait for a publish, the next due redelivery, or a poll.
            let next_retry = lock(&self.state).retry.peek().map(|r| r.0.0);
            let wait = next_retry
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, self.published.changed()).await;
        }
    }
}

impl InProcessSubscription {
    /// Notes seqs read, unless a newer subscription replaced this one.
    fn record_reads(&self, seqs: impl Iterator<Item = i64>) -> Result<(), BusError> {
        let mut s = lock(&self.state);
        if s.generation != self.generation {
            return Err(BusError::Closed);
        }
        for seq in seqs {
            s.read(seq);
        }
        Ok(())
    }

    /// The next messages of the topic after the cursor, from the log.
    fn fetch(&self) -> Result<Vec<(i64, String)>, BusError> {
        self.bus.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, body FROM bus_messages WHERE service = ?1 AND segment = ?2 AND seq > ?3 \
                 ORDER BY seq LIMIT ?4",
            )?;
            let rows = statement.query_map(params![self.key.service, self.key.segment, self.cursor, FETCH], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })
    }

    fn deliver(&mut self, seq: i64, body: Body) -> Delivery {
        let attempt = {
            let mut s = lock(&self.state);
            let n = s.attempts.entry(seq).or_insert(0);
            *n += 1;
            *n
        };
        let message = match body {
            Body::Fresh(message) => Ok(Message::clone(&message)),
            Body::Stored(body) => serde_json::from_str::<Message>(&body).map_err(|e| Malformed {
                id: None,
                raw: body.clone(),
                reason: format!("not a polis message: {e}"),
            }),
        };
        let acker =
            InProcessAcker { key: self.key.clone(), seq, state: self.state.clone(), acks: self.bus.inner.acks.clone() };
        Delivery::new(message, attempt, Box::new(acker))
    }
}

/// The newest messages per topic, in memory (see the module docs).
#[derive(Debug)]
struct Tails {
    /// Staged by publishes in the writer's current transaction, in order;
    /// made visible when it commits.
    staged: Mutex<Vec<(i64, Arc<Message>)>>,
    topics: Mutex<HashMap<(String, &'static str), Tail>>,
    /// The highest seq committed so far.
    last: AtomicI64,
    /// The highest seq when the bus opened: every message of a topic
    /// published since is in its tail unless trimmed.
    opened_at: i64,
}

#[derive(Debug)]
struct Tail {
    /// Every message of the topic with a higher seq is in `entries`.
    complete_after: i64,
    entries: VecDeque<(i64, Arc<Message>)>,
}

impl Tails {
    fn new(last: i64) -> Self {
        Self { staged: Mutex::default(), topics: Mutex::default(), last: AtomicI64::new(last), opened_at: last }
    }

    fn stage(&self, fresh: Vec<(i64, Arc<Message>)>) {
        lock(&self.staged).extend(fresh);
    }

    /// After the writer's transaction: its staged messages join their
    /// tails if it committed, else are forgotten. Whether any joined.
    fn commit(&self, committed: bool) -> bool {
        let staged = std::mem::take(&mut *lock(&self.staged));
        if !committed || staged.is_empty() {
            return false;
        }
        let mut topics = lock(&self.topics);
        let mut last = self.last.load(Ordering::Acquire);
        for (seq, message) in staged {
            let tail = topics
                .entry((message.target.clone(), message.kind.segment()))
                .or_insert_with(|| Tail { complete_after: self.opened_at, entries: VecDeque::new() });
            tail.entries.push_back((seq, message));
            if tail.entries.len() > TAIL
                && let Some((dropped, _)) = tail.entries.pop_front()
            {
                tail.complete_after = dropped;
            }
            last = last.max(seq);
        }
        self.last.store(last, Ordering::Release);
        true
    }

    fn last(&self) -> i64 {
        self.last.load(Ordering::Acquire)
    }

    /// Drops deleted messages `(service, segment, seq)` from the tails: each
    /// topic's tail then starts above the highest deleted one.
    fn forget(&self, deleted: &[(String, String, i64)]) {
        let mut highest: HashMap<(&str, &str), i64> = HashMap::new();
        for (service, segment, seq) in deleted {
            let top = highest.entry((service, segment)).or_insert(*seq);
            *top = (*top).max(*seq);
        }
        let mut topics = lock(&self.topics);
        for ((service, segment), tail) in topics.iter_mut() {
            if let Some(&seq) = highest.get(&(service.as_str(), *segment))
                && seq > tail.complete_after
            {
                tail.complete_after = seq;
                while tail.entries.front().is_some_and(|(front, _)| *front <= seq) {
                    tail.entries.pop_front();
                }
            }
        }
    }

    /// The messages of `key`'s topic after `cursor`, at most [`FETCH`], if
    /// the tail holds every one of them; `None` if the log must be read.
    fn after(&self, key: &ConsumerKey, cursor: i64) -> Option<Vec<(i64, Arc<Message>)>> {
        let topics = lock(&self.topics);
        let Some(tail) = topics.get(&(key.service.clone(), key.segment)) else {
            // Nothing published to it since opening: the log has all there is.
            return (cursor >= self.last()).then(Vec::new);
        };
        if cursor < tail.complete_after {
            return None;
        }
        let from = tail.entries.partition_point(|(seq, _)| *seq <= cursor);
        Some(tail.entries.range(from..).take(FETCH as usize).cloned().collect())
    }
}

#[derive(Debug)]
struct InProcessAcker {
    key: ConsumerKey,
    seq: i64,
    state: Arc<Mutex<ConsumerState>>,
    acks: mpsc::UnboundedSender<(ConsumerKey, i64)>,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let moved = {
            let mut s = lock(&self.state);
            let before = s.floor;
            s.ack(self.seq);
            (s.floor > before && !s.removed).then_some(s.floor)
        };
        match moved {
            Some(floor) => self.acks.send((self.key, floor)).map_err(|_| BusError::Closed),
            None => Ok(()),
        }
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        lock(&self.state).retry.push(std::cmp::Reverse((Instant::now() + delay, self.seq)));
        Ok(())
    }
}

/// Deletes up to [`CLEANUP_CHUNK`] messages the retention lets go (module
/// docs): of each topic with consumers, the oldest ones at or below the
/// lowest ack floor and stored before `replayed`; then, of topics without
/// any, those stored before `retained`. Returns them.
fn delete_chunk(conn: &Connection, replayed: i64, retained: i64) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let gone_row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?));
    let floors = conn
        .prepare_cached("SELECT service, segment, MIN(ack_floor) FROM bus_consumers GROUP BY service, segment")?
        .query_map([], gone_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut gone = Vec::new();
    // A prefix of the topic, by its index.
    let mut acknowledged = conn.prepare_cached(
        "DELETE FROM bus_messages WHERE seq IN ( \
             SELECT seq FROM bus_messages \
             WHERE service = ?1 AND segment = ?2 AND seq <= ?3 AND stored_at_us < ?4 \
             ORDER BY seq LIMIT ?5) \
         RETURNING service, segment, seq",
    )?;
    for (service, segment, floor) in floors {
        let room = CLEANUP_CHUNK - gone.len() as i64;
        if room <= 0 {
            return Ok(gone);
        }
        let deleted = acknowledged.query_map(params![service, segment, floor, replayed, room], gone_row)?;
        gone.extend(deleted.collect::<rusqlite::Result<Vec<_>>>()?);
    }
    let room = CLEANUP_CHUNK - gone.len() as i64;
    if room > 0 {
        // By age: only messages older than the retention are looked at.
        let mut unsubscribed = conn.prepare_cached(
            "DELETE FROM bus_messages WHERE seq IN ( \
                 SELECT m.seq FROM bus_messages m WHERE m.stored_at_us < ?1 AND NOT EXISTS ( \
                     SELECT 1 FROM bus_consumers c WHERE c.service = m.service AND c.segment = m.segment) \
                 LIMIT ?2) \
             RETURNING service, segment, seq",
        )?;
        let deleted = unsubscribed.query_map(params![retained, room], gone_row)?;
        gone.extend(deleted.collect::<rusqlite::Result<Vec<_>>>()?);
    }
    Ok(gone)
}

/// Runs [`InProcessBus::cleanup`] every `interval` until the bus is dropped.
async fn cleanup_task(bus: Weak<Inner>, interval: Duration, mut stopped: oneshot::Receiver<()>) {
    // The first run is one interval after opening, not at once: callers
    // that clean up explicitly right after opening see their own count.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        let Some(inner) = bus.upgrade() else { return };
        match (InProcessBus { inner }).cleanup().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted acknowledged bus messages past their retention"),
            Err(e) => tracing::warn!(error = %polis_core::error::chain(&e), "bus retention cleanup failed"),
        }
    }
}

/// Writes ack floors in batches: the highest of each consumer's in a batch.
async fn ack_writer(writer: BatchWriter, mut pending: mpsc::UnboundedReceiver<(ConsumerKey, i64)>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 1024).await > 0 {
        let mut floors: HashMap<ConsumerKey, i64> = HashMap::new();
        for (key, floor) in batch.drain(..) {
            let highest = floors.entry(key).or_insert(floor);
            *highest = (*highest).max(floor);
        }
        // Keep the floors until they are written: they are settled in memory
        // and would not be sent again until the next acknowledgement.
        let floors = Arc::new(floors);
        let mut pause = Duration::from_millis(50);
        loop {
            let write = floors.clone();
            match writer.run(move |conn| write_floors(conn, &write)).await {
                Ok(_) => break,
                Err(engine::WriteError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %polis_core::error::chain(&e), retry_in = ?pause, "failed to persist bus ack floors");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn write_floors(conn: &Connection, floors: &HashMap<ConsumerKey, i64>) -> rusqlite::Result<u64> {
    // An update only: a consumer removed meanwhile stays removed.
    let mut update = conn.prepare_cached(
        "UPDATE bus_consumers SET ack_floor = ?1 \
         WHERE consumer = ?2 AND service = ?3 AND segment = ?4 AND ack_floor < ?1",
    )?;
    for (key, floor) in floors {
        update.execute(params![floor, key.consumer, key.service, key.segment])?;
    }
    Ok(0)
}
