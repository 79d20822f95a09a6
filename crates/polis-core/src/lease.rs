//! Leases: work that runs on one instance at a time.
//!
//! Several instances of a service share its database. Work that must run
//! in one place at a time — the outbox relay, the scheduler, a projection —
//! is guarded by a lease row in that database: a `name`, an `owner` (an
//! instance's identity, new at every start), an expiry, and a fencing
//! token that grows at every acquisition: each tenure has its own.
//!
//! - An instance takes a lease that is free, expired or already its own
//!   ([`Transaction::acquire_lease`]) and renews it while it works, a third
//!   of the lease's time-to-live after the last renewal ([`LeaseKeeper`]).
//! - What it commits on the lease's behalf is *fenced*: the same
//!   transaction renews the lease with its token ([`Transaction::hold_lease`])
//!   and does not commit if that tenure is over. An owner that was paused
//!   or cut off past its expiry, and whose lease another instance took,
//!   can never commit as the owner again.
//! - Work outside the database (publishing to a broker) cannot be fenced
//!   by a transaction. For it the owner keeps a conservative view of its
//!   own: [`LeaseKeeper::valid_until`], the start of the last successful
//!   renewal plus two thirds of the time-to-live, by the local monotonic
//!   clock. It does nothing outside the database past that instant.
//! - A killed owner's lease expires after its time-to-live; a clean stop
//!   releases it ([`LeaseKeeper::release`]) and another instance takes over
//!   at once.
//!
//! Expiry is judged against the instances' wall clocks (it is stored as a
//! time): their clocks must agree to well within a lease's time-to-live.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::StoreError;
use crate::outbox::{Transaction, TransactionalStore};

/// One tenure of a lease: who holds `name`, under which token. A
/// transaction presents it to [`Transaction::hold_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: String,
    /// Its holder.
    pub owner: Uuid,
    /// The token of this tenure.
    pub token: u64,
}

/// Who takes a lease, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// This instance's identity: new at every start (`Uuid::now_v7()`).
    pub owner: Uuid,
    /// How long the lease lasts without renewal: the longest a killed
    /// owner's work stays undone, and the shortest pause (a stopped
    /// process, a lost network) that hands the work to another instance.
    pub ttl: Duration,
}

impl LeaseOptions {
    /// A new identity, and leases of `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { owner: Uuid::now_v7(), ttl }
    }

    /// A stable identity derived from `name`, which must name one running
    /// instance at a time (a service and its listening address, say): the
    /// instance restarted after a crash takes its leases back at once,
    /// where a new identity would wait up to the time-to-live for the dead
    /// one's to expire.
    pub fn instance(self, name: &str) -> Self {
        Self { owner: instance_owner(name), ..self }
    }
}

/// The owner identity of the instance `name` ([`LeaseOptions::instance`]):
/// two FNV-1a hashes of it.
pub fn instance_owner(name: &str) -> Uuid {
    let hash = |seed: u64| name.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    Uuid::from_u64_pair(hash(0xcbf2_9ce4_8422_2325), hash(0x6c62_272e_07bb_0142))
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    /// When the last successful renewal (or the acquisition) began.
    renewed: Instant,
}

/// Keeps one lease for a long-running task: takes it when it can, renews
/// it in time, and says whether the task may act (module docs).
#[derive(Debug)]
pub struct LeaseKeeper<S> {
    store: Arc<S>,
    name: String,
    options: LeaseOptions,
    held: Option<Held>,
}

impl<S: TransactionalStore> LeaseKeeper<S> {
    /// A keeper of `store`'s lease `name`; it holds nothing until [`keep`](Self::keep).
    pub fn new(store: Arc<S>, name: impl Into<String>, options: LeaseOptions) -> Self {
        Self { store, name: name.into(), options, held: None }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease's time-to-live.
    pub fn ttl(&self) -> Duration {
        self.options.ttl
    }

    /// Holds the lease if it can: renews it once a third of its
    /// time-to-live has passed since the last renewal, or takes it when it
    /// is free or expired. Returns this tenure's fence while the lease is
    /// held, `None` while another instance holds it.
    ///
    /// # Errors
    ///
    /// The store failed; what was held is kept until its validity runs out.
    pub async fn keep(&mut self) -> Result<Option<Fence>, StoreError> {
        if let Some(held) = self.held
            && held.renewed.elapsed() < self.options.ttl / 3
        {
            return Ok(self.fence());
        }
        let started = Instant::now();
        let (name, owner, ttl) = (self.name.clone(), self.options.owner, self.options.ttl);
        let token = match self.fence() {
            Some(fence) => {
                let token = fence.token;
                let held = self
                    .store
                    .transaction::<_, _, StoreError>(async move |tx| tx.hold_lease(&fence, Utc::now(), ttl).await)
                    .await?;
                held.then_some(token)
            }
            None => None,
        };
        let token = match token {
            Some(token) => Some(token),
            None => {
                self.store
                    .transaction::<_, _, StoreError>(async move |tx| {
                        tx.acquire_lease(&name, owner, Utc::now(), ttl).await
                    })
                    .await?
            }
        };
        let was_held = self.held.is_some();
        self.held = token.map(|token| Held { token, renewed: started });
        if was_held != self.held.is_some() {
            let service = self.store.service();
            match token {
                Some(token) => tracing::info!(service, lease = self.name, token, "lease taken"),
                None => tracing::warn!(service, lease = self.name, "lease lost to another instance"),
            }
        }
        metrics::gauge!("polis_lease_held", "service" => self.store.service().to_owned(), "lease" => self.name.clone())
            .set(if self.held.is_some() { 1.0 } else { 0.0 });
        Ok(self.fence())
    }

    /// This tenure's fence, while the lease is held.
    pub fn fence(&self) -> Option<Fence> {
        self.held.map(|held| Fence { name: self.name.clone(), owner: self.options.owner, token: held.token })
    }

    /// Until when this instance may act outside the database on the lease's
    /// behalf: two thirds of the time-to-live after the start of the last
    /// successful renewal (module docs). `None` while not held.
    pub fn valid_until(&self) -> Option<Instant> {
        self.held.map(|held| held.renewed + self.options.ttl * 2 / 3)
    }

    /// Forgets the lease without touching the database (a fenced
    /// transaction found it lost); the next [`keep`](Self::keep) tries to
    /// take it again.
    pub fn lost(&mut self) {
        self.held = None;
    }

    /// Lets the lease go, so that another instance takes over at once.
    ///
    /// # Errors
    ///
    /// The store failed: the lease then expires on its own.
    pub async fn release(&mut self) -> Result<(), StoreError> {
        if self.held.take().is_none() {
            return Ok(());
        }
        let (name, owner) = (self.name.clone(), self.options.owner);
        self.store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease(&name, owner).await).await
    }
}

/// A lease to let go once the task that held it is gone: what a task
/// handle's `shutdown` runs after the task ended, so that another instance
/// takes over at once instead of when the lease expires.
pub struct Release(Option<BoxFuture<'static, ()>>);

impl Release {
    /// Nothing to let go (the task ran without a lease).
    pub fn none() -> Self {
        Self(None)
    }

    /// Lets `owner`'s lease `name` of `store` go, when [`run`](Self::run).
    pub fn of<S: TransactionalStore>(store: Arc<S>, name: &'static str, owner: Uuid) -> Self {
        Self(Some(Box::pin(async move {
            let released =
                store.transaction::<_, _, StoreError>(async move |tx| tx.release_lease(name, owner).await).await;
            if let Err(e) = released {
                let error = crate::error::chain(&e);
                tracing::warn!(service = store.service(), lease = name, %error, "could not release a lease; it expires on its own");
            }
        })))
    }

    /// Lets go every lease `owner` holds in `store` whose name starts with
    /// one of `prefixes`, when [`run`](Self::run).
    pub fn held_by<S: TransactionalStore>(store: Arc<S>, prefixes: Vec<String>, owner: Uuid) -> Self {
        Self(Some(Box::pin(async move {
            let released = store
                .transaction::<_, _, StoreError>(async move |tx| {
                    let now = Utc::now();
                    for prefix in &prefixes {
                        for (name, holder) in tx.leases_held(prefix, now).await? {
                            if holder == owner {
                                tx.release_lease(&name, owner).await?;
                            }
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = released {
                let error = crate::error::chain(&e);
                tracing::warn!(service = store.service(), %error, "could not release leases; they expire on their own");
            }
        })))
    }

    /// Lets the lease go (once; later calls do nothing).
    pub async fn run(&mut self) {
        if let Some(release) = self.0.take() {
            release.await;
        }
    }
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Release(lease)" } else { "Release(none)" })
    }
}
