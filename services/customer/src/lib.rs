//! The customer service of the reference shop: customers with a shipping
//! address and a credit limit.
//!
//! It owns one table, `customers`, in the service's own database, and
//! announces every change as an event written to its outbox in the same
//! transaction: `CustomerRegistered` and `CustomerUpdated`, each with the
//! customer's full state, so that the payment service (credit limits) and
//! the shipping service (addresses) can keep replicas without ever asking.
//! It consumes nothing.
//!
//! Layout (no `handler`, since it consumes nothing):
//! - this module: [`Config`] and [`Customer`]: `open`, `router`, `consumer`
//!   and its operations;
//! - [`rules`]: what a valid registration or change is (and the
//!   normalization applied first);
//! - `db`: the SQL, written once for SQLite and PostgreSQL;
//! - `error`: [`Error`], and the one place it becomes an HTTP problem;
//! - `http`: the HTTP API, a thin layer over the service's methods:
//!
//! | request                | answer                                     |
//! |------------------------|--------------------------------------------|
//! | `POST /customers`      | 201 `Customer` + `Location`; 422; 409 email |
//! | `GET /customers?limit&after` | 200, a page of customers by id (admin list) |
//! | `GET /customers/{id}`  | 200 `Customer`; 400 not an id; 404         |
//! | `PUT /customers/{id}`  | 200 `Customer` (partial update); 422; 400; 404; 409 |
//!
//! The list is paged with `polis_runtime::Page`; `{id}` is a UUID in its
//! canonical form (`polis_runtime::PathId`), anything else a 400.
//!
//! Emails are unique whatever their case: the table keeps a lower-cased copy
//! under a unique constraint, so the database (not a racy read-then-write)
//! decides which of two concurrent registrations wins.

mod db;
mod error;
mod http;
pub mod rules;

use std::sync::Arc;

use contracts::customer::{
    self as api, CustomerRegistered, CustomerSnapshot, CustomerUpdated, RegisterCustomer, UpdateCustomer,
};
use polis_core::MessageType as _;
use polis_core::{Message, StoreError, Transaction};
use polis_projection::{SnapshotPage, SnapshotRecord};
use polis_runtime::Page;
use polis_store::sql::{Sql, SqlStore};
use uuid::Uuid;

pub use error::Error;

pub const SERVICE: &str = contracts::customer::SERVICE;

/// The service's settings; it has none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {}

/// The customer service over its store `S` (SQLite or PostgreSQL).
pub struct Customer<S> {
    store: Arc<S>,
    config: Config,
}

/// How the host opens and runs the customer service. It consumes nothing.
impl<S> polis_runtime::Service<S> for Customer<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112210NN`) and returns the service.
    async fn open(store: Arc<S>, config: Config) -> Result<Self, StoreError> {
        store.migrate(&polis_store::service_migrator!(store.dialect())).await?;
        Ok(Self { store, config })
    }

    fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The service's own HTTP API (paths without any `/api` prefix, no layers).
    fn router(&self) -> axum::Router {
        http::router(self.clone())
    }
}

impl<S> Clone for Customer<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), config: self.config.clone() }
    }
}

impl<S> std::fmt::Debug for Customer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S> Customer<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Registers a customer and announces it with `CustomerRegistered`.
    pub async fn register(&self, request: RegisterCustomer) -> Result<api::Customer, Error> {
        let request = rules::registration(request)?;
        let customer = api::Customer {
            id: Uuid::now_v7(),
            name: request.name,
            email: request.email,
            address: request.address,
            credit_limit: request.credit_limit,
        };
        let event = Message::typed_event(
            SERVICE,
            &customer.id.to_string(),
            &CustomerRegistered { customer: customer.clone(), version: 1 },
        )
        .map_err(Error::Encode)?;
        let row = customer.clone();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                db::insert(tx, &row).await?;
                tx.send(&event).await?;
                Ok::<_, Error>(())
            })
            .await?;
        tracing::info!(customer_id = %customer.id, "customer registered");
        Ok(customer)
    }

    /// The customer with this id.
    pub async fn get(&self, id: Uuid) -> Result<api::Customer, Error> {
        db::get(self.store.as_ref(), id).await?.ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// A page of customers, oldest first (ids are UUIDv7, so id order is
    /// registration order).
    pub async fn list(&self, page: &Page) -> Result<Vec<api::Customer>, Error> {
        Ok(db::list(self.store.as_ref(), page).await?)
    }

    /// A page of the snapshot replicas bootstrap from: every customer's
    /// current state and version, in id order.
    pub async fn snapshot(&self, page: &Page) -> Result<SnapshotPage, Error> {
        let rows = db::snapshot(self.store.as_ref(), page).await?;
        let next = (rows.len() == page.limit).then(|| rows.last().map(|(c, _)| c.id.to_string())).flatten();
        let time = chrono::Utc::now();
        let records = rows
            .into_iter()
            .map(|(customer, version)| {
                let key = customer.id.to_string();
                let data = serde_json::to_value(CustomerSnapshot { customer, version }).map_err(Error::Encode)?;
                Ok(SnapshotRecord { key, event_type: CustomerSnapshot::TYPE.to_owned(), data, time })
            })
            .collect::<Result<_, Error>>()?;
        Ok(SnapshotPage { records, next })
    }

    /// Changes the fields present in `change` and announces the new state
    /// with `CustomerUpdated`; a change that changes nothing announces nothing.
    pub async fn update(&self, id: Uuid, change: UpdateCustomer) -> Result<api::Customer, Error> {
        let change = rules::update(change)?;
        let (customer, changed) = self
            .store
            .transaction(async move |tx: &mut S::Tx| {
                let Some(old) = db::get_for_update(tx, id).await? else {
                    return Err(Error::NotFound(id.to_string()));
                };
                let new = api::Customer {
                    id: old.id,
                    name: change.name.unwrap_or_else(|| old.name.clone()),
                    email: change.email.unwrap_or_else(|| old.email.clone()),
                    address: change.address.unwrap_or_else(|| old.address.clone()),
                    credit_limit: change.credit_limit.unwrap_or(old.credit_limit),
                };
                if new == old {
                    return Ok((new, false));
                }
                let version = db::update(tx, &new).await?;
                let updated = CustomerUpdated { customer: new.clone(), version };
                let event = Message::typed_event(SERVICE, &id.to_string(), &updated).map_err(Error::Encode)?;
                tx.send(&event).await?;
                Ok((new, true))
            })
            .await?;
        if changed {
            tracing::info!(customer_id = %id, "customer updated");
        }
        Ok(customer)
    }
}
