//! The embedded bus: durable, in one SQLite file, shared by one process.
//!
//! In the embedded deployment every service runs in one process, but a bus
//! that only lived in memory would lose every message relayed but not yet
//! handled when the process dies. So this bus keeps what JetStream keeps:
//!
//! - a log of messages per service (`bus_messages`), appended by `publish`
//!   with `synchronous=FULL`, de-duplicated by message id;
//! - per durable consumer and topic, an *ack floor* (every message at or
//!   below it is acknowledged) plus the acknowledgements above it.
//!
//! Acknowledgements are written in the background, batched: losing the last
//! few in a crash only means those messages are delivered again, which the
//! consumer's inbox absorbs. Delivery counts live in memory: they survive a
//! re-subscription, not a process restart (after one, redeliveries start
//! counting at 1 again).
//!
//! # Retention
//!
//! The log would otherwise grow for as long as the process lives. A message
//! is deleted once it is older than [`InProcessOptions::retention`] *and*
//! every durable consumer of its topic has acknowledged it (it lies at or
//! below each one's stored ack floor); [`InProcessBus::cleanup`] does that,
//! every [`InProcessOptions::cleanup_interval`] in the background. So:
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
//! - the retention also bounds de-duplication: a message id published again
//!   after its message was deleted is stored and delivered again (the
//!   consumers' inboxes still recognize it), so keep it longer than a relay
//!   can take to republish, i.e. longer than a producer can stay down
//!   between publishing and marking a batch.
//!
//! Only acknowledgements already written count (they are written within
//! moments), which errs on the side of keeping.

use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use polis_core::Message;
use polis_core::bus::{Acker, Bus, BusError, Delivery, Malformed, Subscription, Topic};
use polis_core::message::validate_message;
use polis_store::sqlite::engine::{self, BatchWriter, Durability, Readers};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Messages read per query while delivering.
const FETCH: i64 = 256;
/// Messages deleted per statement by a cleanup, so that publishes and ack
/// writes get the single connection in between.
const CLEANUP_CHUNK: i64 = 5_000;

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
CREATE TABLE IF NOT EXISTS bus_acks (
    consumer TEXT    NOT NULL,
    service  TEXT    NOT NULL,
    segment  TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (consumer, service, segment, seq)
) WITHOUT ROWID;
";

/// Options for [`InProcessBus::open_with`].
#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// How long a message stays after every durable consumer of its topic
    /// acknowledged it (see the module docs, "Retention").
    pub retention: Duration,
    /// How often the background cleanup runs.
    pub cleanup_interval: Duration,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        Self { retention: Duration::from_secs(24 * 3600), cleanup_interval: Duration::from_secs(60) }
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
    published: watch::Sender<u64>,
    consumers: Mutex<HashMap<ConsumerKey, Arc<Mutex<ConsumerState>>>>,
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
        let conn = engine::open_writer(path, Durability::Full).map_err(BusError::backend)?;
        conn.execute_batch(SCHEMA).map_err(BusError::backend)?;
        let readers = Readers::open(path, 4).map_err(BusError::backend)?;
        let writer = BatchWriter::spawn("polis-bus-writer".into(), conn).map_err(BusError::backend)?;
        let (published, _) = watch::channel(0);
        let (acks, pending) = mpsc::unbounded_channel();
        tokio::spawn(ack_writer(writer.clone(), pending));
        let (stop_cleanup, stopped) = oneshot::channel();
        let interval = options.cleanup_interval;
        let consumers = Mutex::default();
        let inner = Inner { writer, readers, published, consumers, acks, options, _stop_cleanup: stop_cleanup };
        let bus = Self { inner: Arc::new(inner) };
        tokio::spawn(cleanup_task(Arc::downgrade(&bus.inner), interval, stopped));
        Ok(bus)
    }

    /// Deletes the messages the retention allows to go now (see the module
    /// docs); returns how many. The bus also runs this by itself, every
    /// [`InProcessOptions::cleanup_interval`].
    pub async fn cleanup(&self) -> Result<u64, BusError> {
        let retention = chrono::Duration::from_std(self.inner.options.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now().checked_sub_signed(retention).map_or(i64::MIN, |t| t.timestamp_micros());
        let mut deleted = 0;
        loop {
            // Per message: old enough, and at or below the stored ack floor of
            // every consumer of its topic (no consumer: nothing holds it).
            let done = self
                .inner
                .writer
                .run(move |conn| {
                    let deleted = conn.execute(
                        "DELETE FROM bus_messages WHERE seq IN ( \
                             SELECT m.seq FROM bus_messages m WHERE m.stored_at_us < ?1 AND NOT EXISTS ( \
                                 SELECT 1 FROM bus_consumers c \
                                 WHERE c.service = m.service AND c.segment = m.segment AND c.ack_floor < m.seq) \
                             LIMIT ?2)",
                        params![cutoff, CLEANUP_CHUNK],
                    )?;
                    Ok(deleted as u64)
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
                for table in ["bus_consumers", "bus_acks"] {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE consumer = ?1 AND service = ?2 AND segment = ?3"),
                        params![forget.consumer, forget.service, forget.segment],
                    )?;
                }
                Ok(0)
            })
            .await
            .map_err(BusError::backend)?;
        lock(&self.inner.consumers).remove(&key);
        Ok(())
    }

    /// How many messages of `topic` `consumer` has not acknowledged, as far
    /// as the stored acknowledgements tell (they trail the consumer by the
    /// moments it takes to write them): its backlog, for monitoring.
    pub async fn unacknowledged(&self, consumer: &str, topic: &Topic) -> Result<u64, BusError> {
        let n: i64 = self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM bus_messages m \
                 WHERE m.service = ?2 AND m.segment = ?3 \
                   AND m.seq > COALESCE((SELECT ack_floor FROM bus_consumers \
                                         WHERE consumer = ?1 AND service = ?2 AND segment = ?3), 0) \
                   AND NOT EXISTS (SELECT 1 FROM bus_acks a \
                                   WHERE a.consumer = ?1 AND a.service = ?2 AND a.segment = ?3 AND a.seq = m.seq)",
                params![consumer, topic.service, topic.kind.segment()],
                |r| r.get(0),
            )
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
            .map(|m| Ok((m.id, m.target.clone(), m.kind.segment(), serde_json::to_string(m)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(BusError::backend)?;
        let now = Utc::now().timestamp_micros();
        self.inner
            .writer
            .run(move |conn| {
                let mut insert = conn.prepare_cached(
                    "INSERT INTO bus_messages (message_id, service, segment, body, stored_at_us) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (message_id) DO NOTHING",
                )?;
                for (id, service, segment, body) in &rows {
                    insert.execute(params![id, service, segment, body, now])?;
                }
                Ok(0)
            })
            .await
            .map_err(BusError::backend)?;
        self.inner.published.send_modify(|n| *n = n.wrapping_add(1));
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
            let (floor, acked) = self.read(|conn| {
                let who = params![key.consumer, key.service, key.segment];
                let floor: Option<i64> = conn
                    .query_row(
                        "SELECT ack_floor FROM bus_consumers WHERE consumer = ?1 AND service = ?2 AND segment = ?3",
                        who,
                        |r| r.get(0),
                    )
                    .optional()?;
                let mut statement =
                    conn.prepare("SELECT seq FROM bus_acks WHERE consumer = ?1 AND service = ?2 AND segment = ?3")?;
                let acked = statement.query_map(who, |r| r.get::<_, i64>(0))?.collect::<Result<Vec<_>, _>>()?;
                Ok((floor, acked))
            })?;
            let mut s = lock(&state);
            if !s.loaded {
                s.loaded = true;
                let floor = floor.unwrap_or(0);
                s.floor = floor;
                s.acked.extend(acked.into_iter().filter(|&seq| seq > floor));
            }
        }
        let cursor = {
            let mut s = lock(&state);
            // Whatever was delivered and not acknowledged is redelivered, from the floor on.
            s.retry.clear();
            s.window.clear();
            s.floor
        };
        Ok(Box::new(InProcessSubscription {
            bus: self.clone(),
            key,
            state,
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
    /// Highest seq read from the log by this subscription.
    cursor: i64,
    buffer: VecDeque<(i64, String)>,
    published: watch::Receiver<u64>,
}

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Redeliveries that are due come first.
            let due = {
                let mut s = lock(&self.state);
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
                    return Ok(self.deliver(seq, body));
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
            let rows = self.bus.read(|conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT seq, body FROM bus_messages WHERE service = ?1 AND segment = ?2 AND seq > ?3 \
                     ORDER BY seq LIMIT ?4",
                )?;
                let rows = statement
                    .query_map(params![self.key.service, self.key.segment, self.cursor, FETCH], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?;
                rows.collect::<Result<Vec<_>, _>>()
            })?;
            if !rows.is_empty() {
                let mut s = lock(&self.state);
                for &(seq, _) in &rows {
                    s.read(seq);
                }
            }
            if let Some(&(seq, _)) = rows.last() {
                self.cursor = seq;
            }
            let fetched = !rows.is_empty();
            self.buffer.extend(rows);
            if fetched {
                continue;
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
    fn deliver(&mut self, seq: i64, body: String) -> Delivery {
        let attempt = {
            let mut s = lock(&self.state);
            let n = s.attempts.entry(seq).or_insert(0);
            *n += 1;
            *n
        };
        let message = serde_json::from_str::<Message>(&body).map_err(|e| Malformed {
            id: None,
            raw: body.clone(),
            reason: format!("not a polis message: {e}"),
        });
        let acker =
            InProcessAcker { key: self.key.clone(), seq, state: self.state.clone(), acks: self.bus.inner.acks.clone() };
        Delivery::new(message, attempt, Box::new(acker))
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
        lock(&self.state).ack(self.seq);
        self.acks.send((self.key, self.seq)).map_err(|_| BusError::Closed)
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        lock(&self.state).retry.push(std::cmp::Reverse((Instant::now() + delay, self.seq)));
        Ok(())
    }
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
            Err(e) => tracing::warn!(error = %e, "bus retention cleanup failed"),
        }
    }
}

/// Persists acknowledgements in batches and advances ack floors.
async fn ack_writer(writer: BatchWriter, mut pending: mpsc::UnboundedReceiver<(ConsumerKey, i64)>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 1024).await > 0 {
        // Keep the batch until it is written: the acks are already settled in
        // memory and would never be sent again, so the stored floor would stick.
        let shared = Arc::new(std::mem::take(&mut batch));
        let mut pause = Duration::from_millis(50);
        loop {
            let acks = shared.clone();
            match writer.run(move |conn| write_acks(conn, &acks)).await {
                Ok(_) => break,
                Err(engine::WriteError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "failed to persist bus acknowledgements");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn write_acks(conn: &Connection, batch: &[(ConsumerKey, i64)]) -> rusqlite::Result<u64> {
    let mut touched: Vec<&ConsumerKey> = Vec::new();
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO bus_acks (consumer, service, segment, seq) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?;
        for (key, seq) in batch {
            insert.execute(params![key.consumer, key.service, key.segment, seq])?;
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
    }
    // Advance each floor over contiguous acknowledgements and drop them.
    for key in touched {
        let who = params![key.consumer, key.service, key.segment];
        conn.prepare_cached(
            "INSERT INTO bus_consumers (consumer, service, segment, ack_floor) VALUES (?1, ?2, ?3, 0) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(who)?;
        let floor: i64 = conn
            .prepare_cached(
                "SELECT ack_floor FROM bus_consumers WHERE consumer = ?1 AND service = ?2 AND segment = ?3",
            )?
            .query_row(who, |r| r.get(0))?;
        let acked: Vec<i64> = conn
            .prepare_cached(
                "SELECT seq FROM bus_acks WHERE consumer = ?1 AND service = ?2 AND segment = ?3 AND seq > ?4 \
                 ORDER BY seq",
            )?
            .query_map(params![key.consumer, key.service, key.segment, floor], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // Messages of other topics interleave in the log, so "contiguous" means
        // no unacknowledged message of this topic in between.
        let unacked: Vec<i64> = conn
            .prepare_cached(
                "SELECT seq FROM bus_messages WHERE service = ?1 AND segment = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?
            .query_map(params![key.service, key.segment, floor, acked.len() as i64 + 1], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut new_floor = floor;
        for seq in unacked {
            if acked.binary_search(&seq).is_ok() {
                new_floor = seq;
            } else {
                break;
            }
        }
        if new_floor > floor {
            let at = params![new_floor, key.consumer, key.service, key.segment];
            conn.prepare_cached(
                "UPDATE bus_consumers SET ack_floor = ?1 WHERE consumer = ?2 AND service = ?3 AND segment = ?4",
            )?
            .execute(at)?;
            conn.prepare_cached(
                "DELETE FROM bus_acks WHERE seq <= ?1 AND consumer = ?2 AND service = ?3 AND segment = ?4",
            )?
            .execute(at)?;
        }
    }
    Ok(0)
}
