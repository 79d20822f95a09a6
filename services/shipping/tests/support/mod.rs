//! The shipping service's part of the test harness; the rest (stores on
//! both backends, the outbox, routers called with `oneshot`) is
//! `testsupport`'s.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use polis_runtime::Service as _;
use std::sync::Arc;

use polis_bus::HandlerError;
use polis_core::Message;
use polis_store::sql::{Sql, SqlStore};
use shipping::{Config, Shipping};

/// The service, with its default settings, on `store`.
pub async fn open<S>(store: Arc<S>) -> Shipping<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let service = Shipping::open(store, Config::default()).await.unwrap();
    // The replica's first (empty) generation, so that its view exists.
    testsupport::project(&service).await;
    service
}

/// Runs the service's handler on `message` in one transaction, as the consumer does.
pub async fn handle<S>(service: &Shipping<S>, message: &Message) -> Result<(), HandlerError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    testsupport::handle(&**service.store(), service.handler(), message).await?;
    // The address replica is a projection: bring it up to date, as the host would.
    testsupport::project(service).await;
    Ok(())
}
