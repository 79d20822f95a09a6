#![allow(clippy::unwrap_used)]
//! The admin routes every hosted service gets, on both stores, driven with
//! `oneshot` requests: dead letters listed, shown, replayed and discarded
//! (a second replay of a letter is a 404), sagas listed by state and
//! counted in flight, a stream's events read a page at a time, and every
//! bad request a problem naming what is wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::Utc;
use polis_bus::{Consumer, ConsumerOptions, Handler, HandlerError, Outcome};
use polis_core::bus::{Acker, BusError, Delivery, Malformed, Topic};
use polis_core::{ExpectedVersion, Message, NewEvent};
use polis_saga::{Deadline, Saga, SagaError, Sagas, Step};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

/// Fails every message whose data says `"poison": true`, while poisoned.
struct Poisonable {
    poisoned: Arc<AtomicBool>,
}

#[async_trait]
impl<Tx: Send> Handler<Tx> for Poisonable {
    async fn handle(&self, _tx: &mut Tx, message: &Message) -> Result<(), HandlerError> {
        if message.data["poison"] == true && self.poisoned.load(Ordering::SeqCst) {
            return Err(HandlerError::Permanent("poisoned".into()));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _: Duration) -> Result<(), BusError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Errand {
    step: u8,
}

impl Saga for Errand {
    const TYPE: &'static str = "errand";
    type Effect = ();

    fn on_reply(&mut self, _: &Message, _: chrono::DateTime<Utc>) -> Step<()> {
        Step::nothing()
    }

    fn on_deadline(&mut self, _: chrono::DateTime<Utc>) -> Step<()> {
        Step::nothing()
    }

    fn is_finished(&self) -> bool {
        self.step == 2
    }

    fn state_name(&self) -> &'static str {
        ["asking", "waiting", "done"][usize::from(self.step)]
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

async fn call(app: &Router, method: Method, uri: &str) -> Answer {
    let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

async fn get(app: &Router, uri: &str) -> Answer {
    call(app, Method::GET, uri).await
}

async fn post(app: &Router, uri: &str) -> Answer {
    call(app, Method::POST, uri).await
}

/// A problem's status, type slug and the fields it names.
fn problem(answer: &Answer) -> (StatusCode, String, Vec<String>) {
    let slug = answer.body["type"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
    let fields = answer.body["errors"].as_array().into_iter().flatten();
    let fields = fields.map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    assert_eq!(answer.body["status"], answer.status.as_u16(), "{}", answer.body);
    (answer.status, slug, fields)
}

async fn exercise<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let poisoned = Arc::new(AtomicBool::new(true));
    let topic = Topic::events_of("shop");
    let consumer = Arc::new(
        Consumer::new("billing", store.clone(), ConsumerOptions::default())
            .route(topic, Poisonable { poisoned: poisoned.clone() }),
    );
    let handler: Arc<dyn Handler<S::Tx>> = Arc::new(Poisonable { poisoned: poisoned.clone() });
    let app = polis_runtime::with_standard_stack(
        polis_runtime::admin::router(store.clone(), Some(consumer.clone())),
        &polis_runtime::HttpOptions::default(),
    );
    let deliver = async |message: Result<Message, Malformed>| {
        consumer.process(&handler, Delivery::new(message, 1, Box::new(NoAck))).await
    };

    // Nothing yet.
    let empty = get(&app, "/admin/dead-letters").await;
    assert_eq!((empty.status, empty.body.clone()), (StatusCode::OK, json!([])));

    // A poisoned message, one parked behind it, and one that never decoded.
    let poison = Message::event("shop", "thing.happened.v1", "k1", json!({ "poison": true }));
    let after = Message::event("shop", "thing.happened.v1", "k1", json!({ "seq": 2 }));
    assert_eq!(deliver(Ok(poison.clone())).await, Outcome::DeadLettered);
    assert_eq!(deliver(Ok(after.clone())).await, Outcome::Parked);
    let malformed = Malformed { id: None, raw: "{not json".into(), reason: "body is not JSON".into() };
    assert_eq!(deliver(Err(malformed)).await, Outcome::DeadLettered);

    let listed = get(&app, "/admin/dead-letters").await;
    assert_eq!(listed.status, StatusCode::OK);
    let letters = listed.body.as_array().unwrap().clone();
    assert_eq!(letters.len(), 3, "{}", listed.body);
    let id = |i: usize| letters[i]["id"].as_str().unwrap().to_owned();
    let (dead, parked, broken) = (id(0), id(1), id(2));
    assert_eq!(letters[0]["status"], "dead");
    assert_eq!(letters[0]["error"], "poisoned");
    assert_eq!(letters[0]["message_id"], poison.id.to_string());
    assert_eq!(letters[0]["message"]["type"], "thing.happened.v1");
    assert_eq!(letters[0]["message"]["data"], json!({ "poison": true }));
    assert_eq!(letters[1]["status"], "parked");
    assert_eq!(letters[2]["raw"], "{not json");
    assert_eq!(letters[2]["message"], Value::Null);

    // Paged by id.
    let page = get(&app, &format!("/admin/dead-letters?limit=1&after={dead}")).await;
    assert_eq!(page.body.as_array().unwrap().iter().map(|l| l["id"].clone()).collect::<Vec<_>>(), [json!(parked)]);

    // One by id; an unknown one is a 404, a malformed id a 400.
    let shown = get(&app, &format!("/admin/dead-letters/{dead}")).await;
    assert_eq!((shown.status, &shown.body), (StatusCode::OK, &letters[0]));
    let unknown = Uuid::now_v7();
    assert_eq!(problem(&get(&app, &format!("/admin/dead-letters/{unknown}")).await).0, StatusCode::NOT_FOUND);
    assert_eq!(problem(&get(&app, "/admin/dead-letters/nope").await).2, ["id"]);

    // Not while the cause persists: the letter stays with one more attempt.
    let failed = post(&app, &format!("/admin/dead-letters/{dead}/replay")).await;
    assert_eq!(problem(&failed).1, "replay-failed", "{}", failed.body);
    assert_eq!(get(&app, &format!("/admin/dead-letters/{dead}")).await.body["attempts"], 2);
    // Not the parked one first, and never the malformed one.
    assert_eq!(problem(&post(&app, &format!("/admin/dead-letters/{parked}/replay")).await).1, "dead-letter-blocked");
    let broken_replay = post(&app, &format!("/admin/dead-letters/{broken}/replay")).await;
    assert_eq!(problem(&broken_replay).1, "dead-letter-not-replayable");

    // Fixed: the replay handles it and releases the parked one; a second replay finds nothing.
    poisoned.store(false, Ordering::SeqCst);
    let replayed = post(&app, &format!("/admin/dead-letters/{dead}/replay")).await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.body);
    assert_eq!(replayed.body, json!({ "id": dead, "action": "replayed", "parked_failed": null }));
    assert_eq!(problem(&post(&app, &format!("/admin/dead-letters/{dead}/replay")).await).0, StatusCode::NOT_FOUND);
    assert_eq!(problem(&get(&app, &format!("/admin/dead-letters/{parked}")).await).0, StatusCode::NOT_FOUND);

    // The malformed one is discarded, once.
    let discarded = post(&app, &format!("/admin/dead-letters/{broken}/discard")).await;
    assert_eq!((discarded.status, &discarded.body["action"]), (StatusCode::OK, &json!("discarded")));
    assert_eq!(problem(&post(&app, &format!("/admin/dead-letters/{broken}/discard")).await).0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/admin/dead-letters").await.body, json!([]));

    // A parked message that fails when released: the discard is done all the same, and says so.
    poisoned.store(true, Ordering::SeqCst);
    let first = Message::event("shop", "thing.happened.v1", "k2", json!({ "poison": true }));
    let second = Message::event("shop", "thing.happened.v1", "k2", json!({ "poison": true }));
    assert_eq!(deliver(Ok(first)).await, Outcome::DeadLettered);
    assert_eq!(deliver(Ok(second)).await, Outcome::Parked);
    let letters = get(&app, "/admin/dead-letters").await.body;
    let (first, second) = (letters[0]["id"].as_str().unwrap(), letters[1]["id"].as_str().unwrap());
    let discarded = post(&app, &format!("/admin/dead-letters/{first}/discard")).await;
    assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.body);
    assert_eq!(discarded.body["parked_failed"], json!({ "id": second, "error": "poisoned" }));
    assert_eq!(get(&app, &format!("/admin/dead-letters/{second}")).await.body["status"], "dead");

    // Bad pages and parameters.
    assert_eq!(problem(&get(&app, "/admin/dead-letters?limit=0").await).2, ["limit"]);
    assert_eq!(problem(&get(&app, "/admin/dead-letters?after=x").await).2, ["after"]);
    assert_eq!(problem(&get(&app, "/admin/dead-letters?sort=id").await).2, ["sort"]);
    assert_eq!(problem(&post(&app, &format!("/admin/dead-letters/{second}/replay?force=1")).await).2, ["force"]);

    sagas(&app, &store).await;
    events(&app, &store).await;
}

async fn sagas<S>(app: &Router, store: &Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    for (id, step) in [("a", 0), ("b", 1), ("c", 1), ("d", 2), ("e/1", 0)] {
        let sagas = Sagas::<Errand>::new("billing");
        store
            .transaction::<_, _, SagaError>(async move |tx| {
                let mut instance = sagas.begin(id, Errand { step });
                let deadline = Deadline::At(Utc::now() + chrono::Duration::minutes(1));
                sagas.save(tx, &mut instance, &Step::<()>::default().deadline(deadline)).await
            })
            .await
            .unwrap();
    }
    let listed = |query: &str| {
        let uri = format!("/admin/sagas{query}");
        async move {
            let answer = get(app, &uri).await;
            assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
            let sagas = answer.body.as_array().unwrap().clone();
            sagas.iter().map(|s| format!("{}={}", s["saga_id"].as_str().unwrap(), s["state"])).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("").await,
        [r#"a="asking""#, r#"b="waiting""#, r#"c="waiting""#, r#"d="done""#, r#"e/1="asking""#]
    );
    assert_eq!(listed("?state=waiting").await, [r#"b="waiting""#, r#"c="waiting""#]);
    assert_eq!(listed("?finished=true").await, [r#"d="done""#]);
    assert_eq!(listed("?finished=false&state=asking").await, [r#"a="asking""#, r#"e/1="asking""#]);
    // The cursor is the last saga's `<type>:<id>`, percent-encoded or not.
    assert_eq!(listed("?limit=2&after=errand:b").await, [r#"c="waiting""#, r#"d="done""#]);
    assert_eq!(listed("?after=errand%3Ad").await, [r#"e/1="asking""#]);
    assert_eq!(listed("?after=errand:e/1").await, Vec::<String>::new());
    let one = get(app, "/admin/sagas?limit=1").await.body[0].clone();
    assert_eq!((&one["saga_type"], &one["finished"]), (&json!("errand"), &json!(false)));
    assert!(one["deadline"].is_string() && one["created_at"].is_string() && one["updated_at"].is_string(), "{one}");

    let counts = get(app, "/admin/sagas/in-flight").await;
    let mut body = counts.body.clone();
    for count in body.as_array_mut().unwrap() {
        let oldest = count.as_object_mut().unwrap().remove("oldest_change").unwrap();
        assert!(oldest.as_str().is_some_and(|t| t.ends_with('Z')), "{oldest}");
    }
    assert_eq!(
        body,
        json!([
            { "saga_type": "errand", "state": "asking", "count": 2 },
            { "saga_type": "errand", "state": "waiting", "count": 2 },
        ])
    );
    for (query, field) in [
        ("?state=", "state"),
        ("?state=no%20spaces", "state"),
        ("?finished=yes", "finished"),
        ("?after=errand", "after"),
        ("?after=bad%20type:x", "after"),
        ("?after=errand:", "after"),
        ("?limit=10001", "limit"),
    ] {
        let refused = get(app, &format!("/admin/sagas{query}")).await;
        assert_eq!(problem(&refused), (StatusCode::UNPROCESSABLE_ENTITY, "validation".into(), vec![field.into()]));
    }
    assert_eq!(problem(&get(app, "/admin/sagas?type=errand").await).2, ["type"]);
    assert_eq!(problem(&get(app, "/admin/sagas/in-flight?state=x").await).2, ["state"]);
}

async fn events<S>(app: &Router, store: &Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    let events: Vec<NewEvent> = (1..=3).map(|n| NewEvent::new("thing.counted.v1", json!({ "n": n }))).collect();
    store.append("customer/42", ExpectedVersion::NoStream, events.clone()).await.unwrap();
    let all = get(app, "/admin/events/customer%2F42").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let all = all.body.as_array().unwrap().clone();
    assert_eq!(all.iter().map(|e| e["version"].clone()).collect::<Vec<_>>(), [json!(1), json!(2), json!(3)]);
    assert_eq!((&all[0]["type"], &all[0]["data"]), (&json!("thing.counted.v1"), &json!({ "n": 1 })));
    assert_eq!(all[0]["id"], events[0].id.to_string());
    let page = get(app, "/admin/events/customer%2F42?after=1&limit=1").await.body;
    assert_eq!(page.as_array().unwrap().iter().map(|e| e["version"].clone()).collect::<Vec<_>>(), [json!(2)]);
    assert_eq!(problem(&get(app, "/admin/events/customer%2F43").await).0, StatusCode::NOT_FOUND);
    assert_eq!(problem(&get(app, "/admin/events/customer%00").await).0, StatusCode::NOT_FOUND);
    assert_eq!(problem(&get(app, "/admin/events/customer%2F42?after=-1").await).2, ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("admin.db"), SqliteOptions::new("billing")).await.unwrap();
    exercise(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_on_postgres() {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new("billing")).await.unwrap();
    exercise(Arc::new(store)).await;
}
