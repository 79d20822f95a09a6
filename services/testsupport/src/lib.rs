//! The test harness the reference shop's service crates share.
//!
//! Every service is generic over its store and must behave the same on
//! SQLite and PostgreSQL, so every service's tests need the same few things:
//!
//! - a fresh store on either backend ([`sqlite`], [`postgres`]), and each
//!   case of a suite run on both ([`suite!`]);
//! - a message handler run in one transaction, as the consumer runs it
//!   ([`handle`]), and what it sent, read back from the outbox ([`outbox`],
//!   [`sent`]) and checked to be the right outcome of its trigger
//!   ([`outcome`], [`sole_outcome`]);
//! - the service's router behind the standard layers, as a host serves it
//!   ([`hosted`]), called with `oneshot` ([`call`], [`oneshot`]) and its
//!   answer decoded, problem+json included ([`Answer`]).
//!
//! What is particular to one service (opening it with its config, building
//! the messages it takes, reading its tables) stays in that service's tests.
//!
//! This is a dev-dependency of the service crates only. It is a crate of its
//! own rather than a module of `polis-testkit` because it needs the bus's
//! `Handler`, the runtime's layers and the stores: `polis-bus`,
//! `polis-runtime` and `polis-store` use the testkit in their own tests, and
//! the shop uses it in production code to run local servers, which should
//! not pull an HTTP test client in.
//!
//! Helpers panic with a message on failure: they are for tests.

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use polis_bus::{Handler, HandlerError};
use polis_core::outbox::Transaction as _;
use polis_core::{Message, MessageKind, MessageType, TransactionalStore};
use polis_projection::{Projector, ProjectorOptions};
use polis_runtime::{HttpOptions, with_standard_stack};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt as _;

/// The media type of every error answer.
pub const PROBLEM: &str = "application/problem+json";

/// Keeps whatever backs a store (a temporary directory, a database) alive
/// for as long as a test holds it.
pub type Guard = Box<dyn Any + Send + Sync>;

/// A fresh SQLite store for `service` in a temporary directory.
pub async fn sqlite(service: &str) -> (Arc<SqliteEventStore>, Guard) {
    let dir = tempfile::tempdir().expect("a temporary directory for the SQLite store");
    let store = SqliteEventStore::open(dir.path().join(format!("{service}.db")), SqliteOptions::new(service))
        .await
        .expect("a SQLite store in a temporary directory");
    (Arc::new(store), Box::new(dir))
}

/// A fresh PostgreSQL store for `service`, on a database of its own on the
/// testkit's throwaway server.
pub async fn postgres(service: &str) -> (Arc<PgEventStore>, Guard) {
    let db = polis_testkit::postgres().await;
    let store =
        PgEventStore::connect(db.url(), PgOptions::new(service)).await.expect("a PostgreSQL store on a fresh database");
    (Arc::new(store), Box::new(db))
}

/// One `#[tokio::test]` per case and backend, `sqlite::<case>` and
/// `postgres::<case>`: each opens a fresh store for `service` ([`sqlite`],
/// [`postgres`]), turns it into the case's argument with `open` (anything
/// callable as `open(store).await`, such as a generic `async fn`), and runs
/// the case with it — and with `with`, when given, as a second argument.
///
/// ```text
/// testsupport::suite! {
///     service: SERVICE,
///     open: support::open,
///     cases: [setting_stock_creates_updates_and_announces, stock_is_listed_by_sku],
/// }
/// ```
///
/// The cases are generic `async fn`s of the module that invokes the macro
/// (or imported into it); `service` and `open` are resolved there too. The
/// calling crate depends on `tokio` (the tests run on two worker threads).
#[macro_export]
macro_rules! suite {
    (service: $service:expr, open: $open:expr, cases: [$($case:ident),+ $(,)?] $(,)?) => {
        $crate::suite!(@backend sqlite, $service, $open, [$($case),+]);
        $crate::suite!(@backend postgres, $service, $open, [$($case),+]);
    };
    (service: $service:expr, open: $open:expr, with: $arg:expr, cases: [$($case:ident),+ $(,)?] $(,)?) => {
        $crate::suite!(@backend sqlite, $service, $open, [$($case),+], $arg);
        $crate::suite!(@backend postgres, $service, $open, [$($case),+], $arg);
    };
    (@backend $backend:ident, $service:expr, $open:expr, [$($case:ident),+] $(, $arg:expr)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            $crate::suite!(@cases $backend, $service, $open, [$($case),+] $(, $arg)?);
        }
    };
    (@cases $backend:ident, $service:expr, $open:expr, [$($case:ident),+]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $crate::$backend($service).await;
                // `super::`: the test itself is named after its case.
                super::$case(($open)(store).await).await;
            }
        )+
    };
    (@cases $backend:ident, $service:expr, $open:expr, [$($case:ident),+], $arg:expr) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $crate::$backend($service).await;
                super::$case(($open)(store).await, $arg).await;
            }
        )+
    };
}

/// Runs `handler` on `message` in one transaction of `store`, as the
/// consumer does (minus the inbox): its writes and outgoing messages commit
/// if it succeeds and roll back if it fails.
pub async fn handle<S, H>(store: &S, handler: H, message: &Message) -> Result<(), HandlerError>
where
    S: TransactionalStore,
    H: Handler<S::Tx>,
{
    let message = message.clone();
    store
        .transaction::<_, _, HandlerError>(async move |tx| {
            handler.handle(tx, &message).await?;
            tx.ensure_committable().await?;
            Ok(())
        })
        .await
}

/// Runs `service`'s projections until they reflect every event in its log,
/// as its host does in the background: what a test checks after handling a
/// message that feeds a read model (a replica, a view).
pub async fn project<T, S>(service: &T)
where
    T: polis_runtime::Service<S>,
    S: SqlStore,
    S::Tx: Sql,
{
    let store = service.store();
    let row = store.query_optional("SELECT MAX(position) AS last FROM polis_events", &[]).await.expect("the log's end");
    let last = row.and_then(|row| row.opt_int("last").expect("a position")).unwrap_or(0);
    let projector = service
        .projections()
        .into_iter()
        .fold(Projector::new(store.clone(), ProjectorOptions::default()), Projector::with_arc);
    if projector.is_empty() {
        return;
    }
    let running = projector.spawn();
    let last = u64::try_from(last).expect("a position is positive");
    if tokio::time::timeout(std::time::Duration::from_secs(30), running.applied(last)).await.is_err() {
        panic!("the projections did not reach position {last}: {:?}", running.status());
    }
    running.shutdown().await;
}

/// Every message in the outbox, oldest first. Tests run no relay, so this
/// is everything the service sent (unless [`sent`] took it).
pub async fn outbox<S: TransactionalStore>(store: &S) -> Vec<Message> {
    let entries = store.unpublished(1000).await.expect("the outbox");
    entries.into_iter().map(|entry| entry.message).filter(|m| !is_state_event(m)).collect()
}

/// Whether `message` is a participant's state for read models
/// (`PaymentChanged`, `ShipmentChanged`), sent beside every outcome; the
/// outbox helpers leave these out, [`sent_all`] keeps them.
pub fn is_state_event(message: &Message) -> bool {
    message.is::<contracts::payment::PaymentChanged>() || message.is::<contracts::shipping::ShipmentChanged>()
}

/// The messages sent since the last call, state events for read models
/// left out: the outbox's unpublished entries, which it then marks published.
pub async fn sent<S: TransactionalStore>(store: &S) -> Vec<Message> {
    sent_all(store).await.into_iter().filter(|m| !is_state_event(m)).collect()
}

/// Every message sent since the last call, state events included.
pub async fn sent_all<S: TransactionalStore>(store: &S) -> Vec<Message> {
    let entries = store.unpublished(1000).await.expect("the outbox");
    let positions: Vec<u64> = entries.iter().map(|entry| entry.position).collect();
    store.mark_published(&positions).await.expect("marking the outbox published");
    entries.into_iter().map(|entry| entry.message).collect()
}

/// Asserts that `message` is `service`'s outcome `T` of `trigger`, in the
/// form the trigger asks for — a reply to the sender of a command, an event
/// on the service's own stream after an event — caused by the trigger and
/// keyed like it (by the order); returns its body.
pub fn outcome<T: MessageType>(message: &Message, trigger: &Message, service: &str) -> T {
    assert!(
        message.is::<T>(),
        "expected {} as the outcome of {}, got {}",
        T::TYPE,
        trigger.message_type,
        message.message_type
    );
    assert_eq!(message.key, trigger.key, "outcomes are keyed by the order");
    assert_eq!(message.source, service);
    assert_eq!(message.metadata.causation_id, Some(trigger.id));
    match trigger.kind {
        MessageKind::Command => {
            assert_eq!(message.kind, MessageKind::Reply);
            assert_eq!(message.target, trigger.source, "a reply goes back to the command's sender");
        }
        _ => {
            assert_eq!(message.kind, MessageKind::Event);
            assert_eq!(message.target, service, "an event is published on the service's own stream");
        }
    }
    message.decode().unwrap_or_else(|e| panic!("{} does not decode: {e}", T::TYPE))
}

/// The one message sent since the last look (see [`sent`]), checked with
/// [`outcome`].
pub async fn sole_outcome<S: TransactionalStore, T: MessageType>(store: &S, trigger: &Message, service: &str) -> T {
    let messages = sent(store).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    outcome(&messages[0], trigger, service)
}

/// `router` as a host serves it: behind polis-runtime's standard layers.
pub fn hosted(router: Router) -> Router {
    with_standard_stack(router, &HttpOptions::default())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when it is empty.
    pub body: Value,
}

impl Answer {
    /// The `content-type`; empty when there is none.
    pub fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).map_or("", |v| v.to_str().expect("a textual content-type"))
    }

    /// Whether this is an RFC 9457 problem.
    pub fn is_problem(&self) -> bool {
        self.content_type() == PROBLEM
    }

    /// The fields a 422 problem names, in order (asserting it is one).
    pub fn fields(&self) -> Vec<String> {
        assert_eq!(self.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", self.body);
        let errors = self.body["errors"].as_array().unwrap_or_else(|| panic!("no errors in {}", self.body));
        errors
            .iter()
            .map(|e| e["field"].as_str().unwrap_or_else(|| panic!("an error without a field: {e}")).to_owned())
            .collect()
    }

    /// The body as a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|e| panic!("unexpected body ({e}): {}", self.body))
    }
}

/// One request to `app`, with `body` as JSON when given.
pub async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Answer {
    let request = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(json) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(json.to_string())),
        None => request.body(Body::empty()),
    };
    oneshot(app, request.expect("a valid request")).await
}

/// `request` sent to `app` as it is (for bodies and headers [`call`] does
/// not write).
pub async fn oneshot(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("routers do not fail");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("a readable body").to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("a body that is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Answer { status, headers, body }
}
