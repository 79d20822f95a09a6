//! The event store contract: one suite, run against every backend.
//!
//! Each case is a generic async fn over `EventStore`; `contract_suite!`
//! instantiates all of them once per backend, so a backend cannot pass
//! without keeping every promise of the trait.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Duration as TimeDelta, Utc};
use futures::StreamExt;
use polis_core::repository::Executed;
use polis_core::{
    CatchUpOptions, CommandError, EventStore, ExpectedVersion, Metadata, NewEvent, Repository, SnapshotPolicy,
    StoreError, catch_up,
};
use serde_json::json;
use support::{Account, AccountCommand, AccountError, AccountEvent, account_upcasters, event};
use uuid::Uuid;

macro_rules! contract_suite {
    ($backend:ident => $open:path; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _guard) = $open().await;
                    super::cases::$case(store).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($($backend:ident => $open:path),*) => {$(
        contract_suite!($backend => $open;
            append_to_new_stream_assigns_versions_and_positions,
            expected_version_rules,
            exact_zero_means_no_stream,
            a_conflicting_append_writes_nothing,
            invalid_appends_are_rejected,
            duplicate_event_id_is_rejected_atomically,
            a_bad_append_among_concurrent_ones_fails_alone,
            read_stream_from_a_version_with_a_limit,
            read_all_pages_through_the_global_log_in_order,
            envelope_round_trips,
            stream_info_and_head_position,
            concurrent_writers_to_one_stream_never_share_a_version,
            catch_up_reads_history_then_follows_new_events,
            catch_up_resumes_from_a_checkpoint,
            snapshots_keep_the_newest,
            repository_executes_and_rejects,
            repository_retries_concurrency_conflicts,
            repository_uses_snapshots_and_upcasters,
            repository_loads_state_as_of_version_and_time,
        );
    )*};
}

all_cases!(sqlite => crate::support::sqlite, postgres => crate::support::postgres);

#[allow(unreachable_pub)]
mod cases {
    use super::*;

    pub async fn append_to_new_stream_assigns_versions_and_positions<S: EventStore>(store: Arc<S>) {
        let r = store.append("s-1", ExpectedVersion::NoStream, vec![event("t", 1), event("t", 2)]).await.unwrap();
        assert_eq!(r.stream_version, 2);
        assert!(r.first_position >= 1 && r.last_position > r.first_position);
        let r2 = store.append("s-1", ExpectedVersion::Exact(2), vec![event("t", 3)]).await.unwrap();
        assert_eq!(r2.stream_version, 3);
        assert!(r2.first_position > r.last_position, "positions increase across appends");
        let events = store.read_stream("s-1", 1, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(events.iter().map(|e| e.data["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(events.windows(2).all(|w| w[0].global_position < w[1].global_position));
    }

    pub async fn expected_version_rules<S: EventStore>(store: Arc<S>) {
        let missing = store.append("s", ExpectedVersion::Exact(1), vec![event("t", 1)]).await.unwrap_err();
        assert!(matches!(missing, StoreError::Conflict { actual: 0, .. }), "{missing:?}");
        store.append("s", ExpectedVersion::NoStream, vec![event("t", 1)]).await.unwrap();
        let exists = store.append("s", ExpectedVersion::NoStream, vec![event("t", 2)]).await.unwrap_err();
        assert!(matches!(exists, StoreError::Conflict { actual: 1, expected: ExpectedVersion::NoStream, .. }));
        let stale = store.append("s", ExpectedVersion::Exact(5), vec![event("t", 2)]).await.unwrap_err();
        assert!(matches!(stale, StoreError::Conflict { actual: 1, expected: ExpectedVersion::Exact(5), .. }));
        assert_eq!(store.append("s", ExpectedVersion::Any, vec![event("t", 2)]).await.unwrap().stream_version, 2);
        assert_eq!(store.append("new", ExpectedVersion::Any, vec![event("t", 1)]).await.unwrap().stream_version, 1);
        assert_eq!(store.append("s", ExpectedVersion::Exact(2), vec![event("t", 3)]).await.unwrap().stream_version, 3);
    }

    pub async fn exact_zero_means_no_stream<S: EventStore>(store: Arc<S>) {
        store.append("z", ExpectedVersion::Exact(0), vec![event("t", 1)]).await.unwrap();
        let err = store.append("z", ExpectedVersion::Exact(0), vec![event("t", 1)]).await.unwrap_err();
        assert!(err.is_conflict());
    }

    pub async fn a_conflicting_append_writes_nothing<S: EventStore>(store: Arc<S>) {
        store.append("c", ExpectedVersion::NoStream, vec![event("t", 1)]).await.unwrap();
        let batch = (0..5).map(|n| event("t", n)).collect();
        assert!(store.append("c", ExpectedVersion::Exact(3), batch).await.unwrap_err().is_conflict());
        assert_eq!(store.read_stream("c", 1, 100).await.unwrap().len(), 1);
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
    }

    pub async fn invalid_appends_are_rejected<S: EventStore>(store: Arc<S>) {
        let e = store.append("", ExpectedVersion::Any, vec![event("t", 1)]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        let e = store.append("s", ExpectedVersion::Any, vec![]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        let twice = event("t", 1);
        let e = store.append("s", ExpectedVersion::Any, vec![twice.clone(), twice]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        let e = store.append("s", ExpectedVersion::Any, vec![event("", 1)]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        let e = store.append("s\0x", ExpectedVersion::Any, vec![event("t", 1)]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        let nul_data = NewEvent::new("t", json!({"nested": ["ok", "bad\u{0}"]}));
        let e = store.append("s", ExpectedVersion::Any, vec![nul_data]).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidRequest(_)), "{e:?}");
        assert!(store.stream_info("s").await.unwrap().is_none(), "nothing half-written");
    }

    pub async fn duplicate_event_id_is_rejected_atomically<S: EventStore>(store: Arc<S>) {
        let first = event("t", 1);
        store.append("a", ExpectedVersion::Any, vec![first.clone()]).await.unwrap();
        let e = store.append("b", ExpectedVersion::Any, vec![first.clone()]).await.unwrap_err();
        assert!(matches!(e, StoreError::DuplicateEventId(id) if id == first.id), "{e:?}");
        let e = store.append("b", ExpectedVersion::Any, vec![event("t", 2), first]).await.unwrap_err();
        assert!(!e.is_conflict(), "a duplicate id is not a concurrency conflict: {e:?}");
        assert!(store.stream_info("b").await.unwrap().is_none(), "the failed appends left nothing behind");
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
        // the store still works after the failure
        store.append("b", ExpectedVersion::NoStream, vec![event("t", 3)]).await.unwrap();
    }

    pub async fn a_bad_append_among_concurrent_ones_fails_alone<S: EventStore>(store: Arc<S>) {
        let taken = event("t", 0);
        store.append("taken", ExpectedVersion::Any, vec![taken.clone()]).await.unwrap();
        // Fired together so the SQLite writer commits them as one group.
        let tasks: Vec<_> = (0..40u64)
            .map(|i| {
                let store = store.clone();
                let events = if i == 17 { vec![event("t", i), taken.clone()] } else { vec![event("t", i)] };
                tokio::spawn(async move { store.append(&format!("g-{i}"), ExpectedVersion::NoStream, events).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let result = t.await.unwrap();
            if i == 17 {
                assert!(result.is_err(), "the append reusing an id fails");
                assert!(store.stream_info("g-17").await.unwrap().is_none(), "and leaves nothing behind");
            } else {
                assert_eq!(result.unwrap().stream_version, 1, "append {i} commits despite its neighbour");
            }
        }
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 40);
    }

    pub async fn read_stream_from_a_version_with_a_limit<S: EventStore>(store: Arc<S>) {
        store.append("r", ExpectedVersion::NoStream, (1..=10).map(|n| event("t", n)).collect()).await.unwrap();
        store.append("other", ExpectedVersion::NoStream, vec![event("t", 99)]).await.unwrap();
        let page = store.read_stream("r", 4, 3).await.unwrap();
        assert_eq!(page.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert!(page.iter().all(|e| e.stream_id == "r"));
        assert!(store.read_stream("r", 11, 10).await.unwrap().is_empty());
        assert!(store.read_stream("missing", 1, 10).await.unwrap().is_empty());
    }

    pub async fn read_all_pages_through_the_global_log_in_order<S: EventStore>(store: Arc<S>) {
        for i in 0..25u64 {
            store.append(&format!("s-{}", i % 4), ExpectedVersion::Any, vec![event("t", i)]).await.unwrap();
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.read_all(after, 7).await.unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            after = last.global_position;
            seen.extend(page);
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0].global_position < w[1].global_position));
        assert_eq!(seen.iter().map(|e| e.data["n"].as_u64().unwrap()).collect::<Vec<_>>(), (0..25).collect::<Vec<_>>());
    }

    pub async fn envelope_round_trips<S: EventStore>(store: Arc<S>) {
        let metadata = Metadata {
            correlation_id: Some(Uuid::now_v7()),
            causation_id: Some(Uuid::now_v7()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let time = Utc::now() - TimeDelta::hours(3);
        let new = NewEvent {
            id: Uuid::now_v7(),
            event_type: "order.created".into(),
            schema_version: 3,
            time,
            data: json!({"items": [{"sku": "A-1", "quantity": 2}], "total": 1999, "note": "é ✓"}),
            metadata: metadata.clone(),
        };
        store.append("order-1", ExpectedVersion::NoStream, vec![new.clone()]).await.unwrap();
        let got = store.read_stream("order-1", 1, 1).await.unwrap().remove(0);
        assert_eq!(got.id, new.id);
        assert_eq!(got.event_type, "order.created");
        assert_eq!(got.stream_id, "order-1");
        assert_eq!(got.source, "test");
        assert_eq!(got.schema_version, 3);
        assert_eq!(got.data, new.data);
        assert_eq!(got.metadata, metadata);
        assert_eq!(got.time.timestamp_micros(), time.timestamp_micros(), "time keeps microseconds");
        let ce = got.to_cloudevent_json();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["subject"], "order-1");
        assert_eq!(ce["type"], "order.created");
    }

    pub async fn stream_info_and_head_position<S: EventStore>(store: Arc<S>) {
        assert_eq!(store.head_position().await.unwrap(), 0);
        assert!(store.stream_info("i").await.unwrap().is_none());
        let r = store.append("i", ExpectedVersion::NoStream, vec![event("t", 1), event("t", 2)]).await.unwrap();
        assert_eq!(store.stream_info("i").await.unwrap().unwrap().version, 2);
        assert_eq!(store.head_position().await.unwrap(), r.last_position);
    }

    pub async fn concurrent_writers_to_one_stream_never_share_a_version<S: EventStore>(store: Arc<S>) {
        store.append("hot", ExpectedVersion::NoStream, vec![event("t", 0)]).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut wins = 0;
                for i in 0..10 {
                    let version = store.stream_info("hot").await.unwrap().unwrap().version;
                    match store.append("hot", ExpectedVersion::Exact(version), vec![event("t", w * 100 + i)]).await {
                        Ok(r) => {
                            assert_eq!(r.stream_version, version + 1);
                            wins += 1;
                        }
                        Err(e) => assert!(e.is_conflict(), "{e:?}"),
                    }
                }
                wins
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap();
        }
        let events = store.read_stream("hot", 1, 1000).await.unwrap();
        assert_eq!(events.len() as u64, wins + 1);
        assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), (1..=wins + 1).collect::<Vec<_>>());
    }

    pub async fn catch_up_reads_history_then_follows_new_events<S: EventStore>(store: Arc<S>) {
        for i in 0..30u64 {
            store.append("h", ExpectedVersion::Any, vec![event("t", i)]).await.unwrap();
        }
        let options = CatchUpOptions { batch_size: 8, poll_interval: Duration::from_secs(30) };
        let mut sub = Box::pin(catch_up(store.clone(), 0, options));
        for i in 0..30u64 {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(e.data["n"], i);
        }
        // Live: the poll interval is 30 s, so arriving within 10 s needs the wake-up hint.
        let writer = store.clone();
        tokio::spawn(async move {
            for i in 30..40u64 {
                writer.append("h", ExpectedVersion::Any, vec![event("t", i)]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        for i in 30..40u64 {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(e.data["n"], i);
        }
    }

    pub async fn catch_up_resumes_from_a_checkpoint<S: EventStore>(store: Arc<S>) {
        let mut positions = Vec::new();
        for i in 0..10u64 {
            positions.push(store.append("k", ExpectedVersion::Any, vec![event("t", i)]).await.unwrap().last_position);
        }
        let sub = catch_up(store.clone(), positions[5], CatchUpOptions::default());
        let rest: Vec<_> = sub.take(4).map(|e| e.unwrap().data["n"].as_u64().unwrap()).collect().await;
        assert_eq!(rest, vec![6, 7, 8, 9]);
    }

    pub async fn snapshots_keep_the_newest<S: EventStore>(store: Arc<S>) {
        assert!(store.load_snapshot("x").await.unwrap().is_none());
        let snap = |version: u64| polis_core::Snapshot {
            stream_id: "x".into(),
            version,
            schema_version: 1,
            state: json!({ "v": version }),
            taken_at: Utc::now(),
        };
        store.save_snapshot(&snap(5)).await.unwrap();
        store.save_snapshot(&snap(9)).await.unwrap();
        store.save_snapshot(&snap(7)).await.unwrap();
        let got = store.load_snapshot("x").await.unwrap().unwrap();
        assert_eq!((got.version, got.state), (9, json!({"v": 9})));
    }

    pub async fn repository_executes_and_rejects<S: EventStore>(store: Arc<S>) {
        let repo = Repository::<Account, S>::new(store.clone());
        let e = repo.execute("1", &AccountCommand::Deposit(5), Metadata::default()).await.unwrap_err();
        assert!(matches!(e, CommandError::Rejected(AccountError::NotOpen)), "{e:?}");
        repo.execute("1", &AccountCommand::Open, Metadata::default()).await.unwrap();
        let done: Executed<Account> =
            repo.execute("1", &AccountCommand::Deposit(500), Metadata::default()).await.unwrap();
        assert_eq!((done.state.balance, done.version), (500, 2));
        let e = repo.execute("1", &AccountCommand::Withdraw(501), Metadata::default()).await.unwrap_err();
        assert_eq!(e.rejection(), Some(&AccountError::InsufficientFunds { balance: 500, requested: 501 }));
        let stored = store.read_stream("account-1", 1, 10).await.unwrap();
        assert_eq!(stored.len(), 2, "rejections append nothing");
        assert_eq!(stored[1].event_type, "account.deposited");
        assert_eq!((stored[1].schema_version, &stored[1].data), (2, &json!({"amount": 500})));
    }

    pub async fn repository_retries_concurrency_conflicts<S: EventStore>(store: Arc<S>) {
        let repo = Repository::<Account, S>::new(store.clone()).with_max_attempts(50);
        repo.execute("c", &AccountCommand::Open, Metadata::default()).await.unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { repo.execute("c", &AccountCommand::Deposit(10), Metadata::default()).await })
            })
            .collect();
        let mut retried = 0;
        for t in tasks {
            let done = t.await.unwrap().unwrap();
            retried += u32::from(done.attempts > 1);
        }
        let state = repo.load("c").await.unwrap();
        assert_eq!((state.state.balance, state.state.deposits, state.version), (100, 10, 11));
        tracing::info!(retried, "commands that needed a retry");

        // Deterministic race: a rival deposit lands between every load and append.
        let racing = Arc::new(Racing { inner: store.clone(), rivals: std::sync::atomic::AtomicU32::new(1) });
        let once = Repository::<Account, Racing<S>>::new(racing.clone()).with_max_attempts(1);
        let e = once.execute("c", &AccountCommand::Deposit(1), Metadata::default()).await.unwrap_err();
        assert!(matches!(e, CommandError::Conflict { attempts: 1, .. }), "{e:?}");
        racing.rivals.store(1, std::sync::atomic::Ordering::SeqCst);
        let twice = Repository::<Account, Racing<S>>::new(racing.clone()).with_max_attempts(2);
        let done = twice.execute("c", &AccountCommand::Deposit(1), Metadata::default()).await.unwrap();
        assert_eq!(done.attempts, 2);
        // 100 + two rival deposits of 7 + this deposit; the conflicted command appended nothing.
        assert_eq!(done.state.balance, 115);
    }

    /// A store where a rival writer appends to the same stream just before our append.
    pub struct Racing<S> {
        pub inner: Arc<S>,
        pub rivals: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl<S: EventStore> EventStore for Racing<S> {
        fn source(&self) -> &str {
            self.inner.source()
        }
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<polis_core::AppendResult, StoreError> {
            let rival = self.rivals.fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            );
            if rival.is_ok() {
                let deposit = AccountEvent::Deposited { amount: 7 };
                let rival = polis_core::repository::encode(&deposit, &Metadata::default()).unwrap();
                self.inner.append(stream, ExpectedVersion::Any, vec![rival]).await?;
            }
            self.inner.append(stream, expected, events).await
        }
        async fn read_stream(
            &self,
            s: &str,
            from: u64,
            max: usize,
        ) -> Result<Vec<polis_core::RecordedEvent>, StoreError> {
            self.inner.read_stream(s, from, max).await
        }
        async fn read_all(&self, after: u64, max: usize) -> Result<Vec<polis_core::RecordedEvent>, StoreError> {
            self.inner.read_all(after, max).await
        }
        async fn stream_info(&self, s: &str) -> Result<Option<polis_core::StreamInfo>, StoreError> {
            self.inner.stream_info(s).await
        }
        async fn head_position(&self) -> Result<u64, StoreError> {
            self.inner.head_position().await
        }
        fn wakeups(&self) -> tokio::sync::watch::Receiver<u64> {
            self.inner.wakeups()
        }
        async fn load_snapshot(&self, s: &str) -> Result<Option<polis_core::Snapshot>, StoreError> {
            self.inner.load_snapshot(s).await
        }
        async fn save_snapshot(&self, s: &polis_core::Snapshot) -> Result<(), StoreError> {
            self.inner.save_snapshot(s).await
        }
    }

    pub async fn repository_uses_snapshots_and_upcasters<S: EventStore>(store: Arc<S>) {
        // A v1 deposit written by an older release of the code.
        store
            .append(
                "account-u",
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::new("account.opened", serde_json::Value::Null),
                    NewEvent::new("account.deposited", json!({"cents": 250})),
                ],
            )
            .await
            .unwrap();
        let plain = Repository::<Account, S>::new(store.clone());
        assert!(matches!(plain.load("u").await.unwrap_err(), CommandError::Decode(_)), "v1 needs its upcaster");

        let repo = Repository::<Account, S>::new(store.clone())
            .with_upcasters(account_upcasters())
            .with_snapshots(SnapshotPolicy::EveryNEvents(3));
        assert_eq!(repo.load("u").await.unwrap().state.balance, 250);
        repo.execute("u", &AccountCommand::Deposit(50), Metadata::default()).await.unwrap();
        let snapshot = store.load_snapshot("account-u").await.unwrap().expect("crossing 3 events takes a snapshot");
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.state["balance"], 300);

        // Loading starts from the snapshot: prove it by making the snapshot disagree with the events.
        let mut doctored = snapshot.clone();
        doctored.state["balance"] = json!(1_000_000);
        store.save_snapshot(&doctored).await.unwrap();
        assert_eq!(repo.load("u").await.unwrap().state.balance, 1_000_000);
        repo.execute("u", &AccountCommand::Deposit(1), Metadata::default()).await.unwrap();
        assert_eq!(repo.load("u").await.unwrap().state.balance, 1_000_001, "snapshot + later events");
        // ... while a state as of an older version ignores the newer snapshot.
        assert_eq!(repo.load_at_version("u", 2).await.unwrap().state.balance, 250);
    }

    pub async fn repository_loads_state_as_of_version_and_time<S: EventStore>(store: Arc<S>) {
        let t0 = Utc::now() - TimeDelta::minutes(10);
        let at = |minutes: i64, e: &AccountEvent| {
            let mut n = polis_core::repository::encode(e, &Metadata::default()).unwrap();
            n.time = t0 + TimeDelta::minutes(minutes);
            n
        };
        let history = vec![
            at(0, &AccountEvent::Opened),
            at(1, &AccountEvent::Deposited { amount: 100 }),
            at(2, &AccountEvent::Withdrawn { amount: 30 }),
            at(3, &AccountEvent::Deposited { amount: 5 }),
        ];
        store.append("account-t", ExpectedVersion::NoStream, history).await.unwrap();
        let repo = Repository::<Account, S>::new(store.clone());
        assert_eq!(repo.load_at_version("t", 0).await.unwrap().state, Account::default());
        assert_eq!(repo.load_at_version("t", 2).await.unwrap().state.balance, 100);
        assert_eq!(repo.load_at_version("t", 3).await.unwrap().state.balance, 70);
        let as_of = repo.load_as_of("t", t0 + TimeDelta::seconds(150)).await.unwrap();
        assert_eq!((as_of.version, as_of.state.balance), (3, 70));
        assert_eq!(repo.load_as_of("t", t0 - TimeDelta::seconds(1)).await.unwrap().version, 0);
        assert_eq!(repo.load("t").await.unwrap().state.balance, 75);
        let ids: HashSet<_> = store.read_stream("account-t", 1, 10).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 4);
    }
}
