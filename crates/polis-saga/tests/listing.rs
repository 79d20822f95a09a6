//! Saga instances read back for operators, on both stores: a page at a
//! time by state and finished or not, and the counts in flight by type and
//! state, following every save.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::Utc;
use polis_core::Message;
use polis_saga::{Deadline, InFlight, Saga, SagaError, SagaFilter, SagaKey, Sagas, Step};
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde::{Deserialize, Serialize};

/// Names its own states: `asking`, then `answered` (finished).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Question {
    answered: bool,
}

impl Saga for Question {
    const TYPE: &'static str = "question";
    type Effect = ();

    fn on_reply(&mut self, _reply: &Message, _now: chrono::DateTime<Utc>) -> Step<()> {
        self.answered = true;
        Step::default().deadline(Deadline::Clear)
    }

    fn on_deadline(&mut self, _now: chrono::DateTime<Utc>) -> Step<()> {
        Step::nothing()
    }

    fn is_finished(&self) -> bool {
        self.answered
    }

    fn state_name(&self) -> &'static str {
        if self.answered { "answered" } else { "asking" }
    }
}

/// Keeps the default state names: `running`, then `finished`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Errand {
    done: bool,
}

impl Saga for Errand {
    const TYPE: &'static str = "errand";
    type Effect = ();

    fn on_reply(&mut self, _reply: &Message, _now: chrono::DateTime<Utc>) -> Step<()> {
        self.done = true;
        Step::nothing()
    }

    fn on_deadline(&mut self, _now: chrono::DateTime<Utc>) -> Step<()> {
        Step::nothing()
    }

    fn is_finished(&self) -> bool {
        self.done
    }
}

async fn start<S, T>(store: &Arc<S>, id: &str, state: T, deadline: bool)
where
    S: SqlStore,
    S::Tx: Sql,
    T: Saga<Effect = ()>,
{
    let (sagas, id) = (Sagas::<T>::new("asker"), id.to_owned());
    store
        .transaction::<_, _, SagaError>(async move |tx| {
            let mut instance = sagas.begin(id, state);
            let due = Utc::now() + chrono::Duration::minutes(5);
            let step: Step<()> = if deadline { Step::default().deadline(Deadline::At(due)) } else { Step::nothing() };
            sagas.save(tx, &mut instance, &step).await
        })
        .await
        .unwrap();
}

async fn reply<S, T>(store: &Arc<S>, id: &str)
where
    S: SqlStore,
    S::Tx: Sql,
    T: Saga<Effect = ()>,
{
    let (sagas, id) = (Sagas::<T>::new("asker"), id.to_owned());
    let reply = Message::command("answerer", "asker", "answer", &id, serde_json::json!({}));
    store
        .transaction::<_, _, SagaError>(async move |tx| sagas.on_reply(tx, &id, &reply, Utc::now()).await)
        .await
        .unwrap();
}

fn ids(page: &[polis_saga::SagaSummary]) -> Vec<String> {
    page.iter().map(|s| format!("{}/{}={}", s.saga_type, s.saga_id, s.state)).collect()
}

async fn listing<S>(store: Arc<S>)
where
    S: SqlStore,
    S::Tx: Sql,
{
    assert!(polis_saga::list(&*store, &SagaFilter::all(), None, 10).await.unwrap().is_empty());
    assert!(polis_saga::in_flight(&*store).await.unwrap().is_empty());

    for id in ["q1", "q2", "q3"] {
        start(&store, id, Question { answered: false }, true).await;
    }
    for id in ["e1", "e2"] {
        start(&store, id, Errand { done: false }, false).await;
    }
    reply::<S, Question>(&store, "q2").await;
    reply::<S, Errand>(&store, "e1").await;

    // Everything, in (type, id) order, with each state's name.
    let all = polis_saga::list(&*store, &SagaFilter::all(), None, 10).await.unwrap();
    assert_eq!(
        ids(&all),
        ["errand/e1=finished", "errand/e2=running", "question/q1=asking", "question/q2=answered", "question/q3=asking"]
    );
    let q1 = &all[2];
    assert!(!q1.finished && q1.deadline.is_some() && q1.created_at <= q1.updated_at, "{q1:?}");
    let q2 = &all[3];
    assert!(q2.finished && q2.deadline.is_none(), "{q2:?}");

    // A page at a time, each after the last key of the one before.
    let first = polis_saga::list(&*store, &SagaFilter::all(), None, 2).await.unwrap();
    let second = polis_saga::list(&*store, &SagaFilter::all(), Some(&first[1].key()), 2).await.unwrap();
    let third = polis_saga::list(&*store, &SagaFilter::all(), Some(&second[1].key()), 2).await.unwrap();
    assert_eq!([ids(&first), ids(&second), ids(&third)].concat(), ids(&all));
    let past = SagaKey { saga_type: "question".into(), saga_id: "q3".into() };
    assert!(polis_saga::list(&*store, &SagaFilter::all(), Some(&past), 2).await.unwrap().is_empty());

    // By state, by finished or not, and both.
    let asking = polis_saga::list(&*store, &SagaFilter::all().state("asking"), None, 10).await.unwrap();
    assert_eq!(ids(&asking), ["question/q1=asking", "question/q3=asking"]);
    let unfinished = polis_saga::list(&*store, &SagaFilter::all().finished(false), None, 10).await.unwrap();
    assert_eq!(ids(&unfinished), ["errand/e2=running", "question/q1=asking", "question/q3=asking"]);
    let finished = polis_saga::list(&*store, &SagaFilter::all().finished(true), None, 10).await.unwrap();
    assert_eq!(ids(&finished), ["errand/e1=finished", "question/q2=answered"]);
    let none = polis_saga::list(&*store, &SagaFilter::all().state("asking").finished(true), None, 10).await.unwrap();
    assert!(none.is_empty());
    let after_q1 = SagaKey { saga_type: "question".into(), saga_id: "q1".into() };
    let asking = polis_saga::list(&*store, &SagaFilter::all().state("asking"), Some(&after_q1), 10).await.unwrap();
    assert_eq!(ids(&asking), ["question/q3=asking"]);

    // In flight: unfinished ones only, by type and state.
    let counted = |counts: Vec<InFlight>| -> Vec<(String, String, u64)> {
        counts.into_iter().map(|c| (c.saga_type, c.state, c.count)).collect()
    };
    let before = polis_saga::in_flight(&*store).await.unwrap();
    let oldest = before[1].oldest_change;
    assert!(oldest <= chrono::Utc::now() && chrono::Utc::now() - oldest < chrono::Duration::minutes(1), "{oldest}");
    let expected =
        [("errand", "running", 1), ("question", "asking", 2)].map(|(t, s, n)| (t.to_owned(), s.to_owned(), n));
    assert_eq!(counted(before), expected);
    reply::<S, Question>(&store, "q1").await;
    let counts = counted(polis_saga::in_flight(&*store).await.unwrap());
    assert_eq!(counts[1], ("question".to_owned(), "asking".to_owned(), 1));
}

#[tokio::test]
async fn sagas_are_listed_and_counted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("saga.db"), SqliteOptions::new("asker")).await.unwrap();
    listing(Arc::new(store)).await;
}

#[tokio::test]
async fn sagas_are_listed_and_counted_on_postgres() {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new("asker")).await.unwrap();
    listing(Arc::new(store)).await;
}
