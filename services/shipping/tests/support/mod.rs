//! Shared test support: a service on either backend, driving its handler,
//! reading its outbox, and calling its router.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use polis_bus::{Handler, HandlerError};
use polis_core::Message;
use polis_core::outbox::TransactionalStore;
use polis_store::sql::{Sql, SqlStore};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde_json::Value;
use shipping::{Config, Shipping};
use tower::ServiceExt as _;

/// Keeps whatever backs a store (a temp dir, a database) alive for a test.
pub type Guard = Box<dyn std::any::Any + Send>;

pub async fn sqlite() -> (Shipping<SqliteEventStore>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteEventStore::open(dir.path().join("shipping.db"), SqliteOptions::new(shipping::SERVICE)).await.unwrap();
    (Shipping::open(Arc::new(store), Config::default()).await.unwrap(), Box::new(dir))
}

pub async fn postgres() -> (Shipping<PgEventStore>, Guard) {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new(shipping::SERVICE)).await.unwrap();
    (Shipping::open(Arc::new(store), Config::default()).await.unwrap(), Box::new(db))
}

/// Runs the service's handler on `message` in one transaction, as the consumer does.
pub async fn handle<S>(service: &Shipping<S>, message: &Message) -> Result<(), HandlerError>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let (handler, message) = (service.handler(), message.clone());
    service
        .store()
        .transaction::<_, HandlerError>(Box::new(move |tx| Box::pin(async move { handler.handle(tx, &message).await })))
        .await
}

/// The messages the service has sent since the last call (marked published).
pub async fn sent<S: TransactionalStore>(store: &S) -> Vec<Message> {
    let entries = store.unpublished(1000).await.unwrap();
    let positions: Vec<u64> = entries.iter().map(|e| e.position).collect();
    store.mark_published(&positions).await.unwrap();
    entries.into_iter().map(|e| e.message).collect()
}

/// The router as a host serves it: with polis-runtime's standard layers.
pub fn app<S>(service: &Shipping<S>) -> Router
where
    S: SqlStore,
    S::Tx: Sql,
{
    polis_runtime::with_standard_stack(service.router(), &polis_runtime::HttpOptions::default())
}

/// One request; the status, the content type and the JSON body (`Null` if empty).
pub async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, String, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (status, content_type, json)
}

/// The single field a 422 problem names.
pub fn invalid_field(problem: &Value) -> &str {
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{problem}");
    errors[0]["field"].as_str().unwrap()
}
