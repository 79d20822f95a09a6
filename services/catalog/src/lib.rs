//! The catalog service of the reference shop: products with a sku, a name
//! and a price.
//!
//! It owns one table, `products`, in the service's own database, and
//! announces every change as an event written to its outbox in the same
//! transaction: `ProductAdded` (the whole product) and `PriceChanged` (old
//! and new price). It consumes nothing.
//!
//! Layout (no `handler`, since it consumes nothing):
//! - this module: [`Config`] and [`Catalog`]: `open`, `router`, `consumer`
//!   and its operations;
//! - [`rules`]: what a valid sku, name and price are;
//! - `db`: the SQL, written once for SQLite and PostgreSQL;
//! - `error`: [`Error`], and the one place it becomes an HTTP problem;
//! - `http`: the HTTP API, a thin layer over the service's methods:
//!
//! | request                      | answer                                   |
//! |------------------------------|------------------------------------------|
//! | `POST /products`             | 201 `Product` + `Location`; 422; 409 sku |
//! | `GET /products?limit&after`  | 200, a page of products ordered by sku   |
//! | `GET /products/{sku}`        | 200 `Product`; 404                       |
//! | `PUT /products/{sku}/price`  | 200 `Product`; 422; 404                  |
//!
//! Skus are case-sensitive and compared byte for byte, on both backends.
//! The list is paged by sku with `polis_runtime::Page` (`?limit=N&after=SKU`,
//! 1,000 by default, at most 10,000).

mod db;
mod error;
mod http;
pub mod rules;

use std::sync::Arc;

use contracts::catalog::{ChangePrice, PriceChanged, Product, ProductAdded, ProductRenamed, UpdateProduct};
use polis_core::{Message, StoreError, Transaction};
use polis_runtime::Page;
use polis_store::sql::{Sql, SqlStore};

pub use error::Error;

pub const SERVICE: &str = contracts::catalog::SERVICE;

/// The service's settings; it has none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {}

/// How the host opens and runs the catalog. It consumes nothing.
impl<S> polis_runtime::Service<S> for Catalog<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    const NAME: &'static str = SERVICE;
    type Config = Config;

    /// Applies the service's migrations (`migrations/{sqlite,postgres}`,
    /// versions `2026112220NN`) and returns the service.
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

/// The catalog service over its store `S` (SQLite or PostgreSQL).
pub struct Catalog<S> {
    store: Arc<S>,
    config: Config,
}

impl<S> Clone for Catalog<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), config: self.config.clone() }
    }
}

impl<S> std::fmt::Debug for Catalog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S> Catalog<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    /// Adds a product and announces it with `ProductAdded`.
    pub async fn add(&self, product: Product) -> Result<Product, Error> {
        let product = rules::product(product)?;
        let event = Message::typed_event(SERVICE, &product.sku, &ProductAdded { product: product.clone() })
            .map_err(Error::Encode)?;
        let row = product.clone();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                db::insert(tx, &row).await?;
                tx.send(&event).await?;
                Ok::<_, Error>(())
            })
            .await?;
        tracing::info!(sku = %product.sku, price = product.price, "product added");
        Ok(product)
    }

    /// The product with this sku.
    pub async fn get(&self, sku: &str) -> Result<Product, Error> {
        if !rules::is_sku(sku) {
            return Err(Error::NotFound(sku.to_owned()));
        }
        db::get(self.store.as_ref(), sku).await?.ok_or_else(|| Error::NotFound(sku.to_owned()))
    }

    /// A page of products, ordered by sku.
    pub async fn list(&self, page: &Page<String>) -> Result<Vec<Product>, Error> {
        Ok(db::list(self.store.as_ref(), page).await?)
    }

    /// Renames a product and / or sets its price, announcing each change
    /// (`ProductRenamed`, `PriceChanged`) in the same transaction; what is
    /// already so changes and announces nothing.
    pub async fn update(&self, sku: &str, update: UpdateProduct) -> Result<Product, Error> {
        if !rules::is_sku(sku) {
            return Err(Error::NotFound(sku.to_owned()));
        }
        let update = rules::update(update)?;
        let sku = sku.to_owned();
        self.store
            .transaction(async move |tx: &mut S::Tx| {
                let Some(mut product) = db::get_for_update(tx, &sku).await? else {
                    return Err(Error::NotFound(sku));
                };
                if let Some(new_name) = update.name.filter(|n| *n != product.name) {
                    db::set_name(tx, &sku, &new_name).await?;
                    let renamed = ProductRenamed { sku: sku.clone(), old_name: product.name.clone(), new_name };
                    tx.send(&Message::typed_event(SERVICE, &sku, &renamed).map_err(Error::Encode)?).await?;
                    tracing::info!(sku = %sku, old_name = %renamed.old_name, new_name = %renamed.new_name, "product renamed");
                    product.name = renamed.new_name;
                }
                if let Some(new_price) = update.price.filter(|p| *p != product.price) {
                    db::set_price(tx, &sku, new_price).await?;
                    let changed = PriceChanged { sku: sku.clone(), old_price: product.price, new_price };
                    tx.send(&Message::typed_event(SERVICE, &sku, &changed).map_err(Error::Encode)?).await?;
                    tracing::info!(sku = %sku, old_price = changed.old_price, new_price, "price changed");
                    product.price = new_price;
                }
                Ok::<_, Error>(product)
            })
            .await
    }

    /// Sets a product's price and announces it with `PriceChanged`; setting
    /// the price it already has changes and announces nothing.
    pub async fn change_price(&self, sku: &str, change: ChangePrice) -> Result<Product, Error> {
        if !rules::is_sku(sku) {
            return Err(Error::NotFound(sku.to_owned()));
        }
        let new_price = rules::price(change.price)?;
        let sku = sku.to_owned();
        let (product, old_price) = self
            .store
            .transaction(async move |tx: &mut S::Tx| {
                let Some(mut product) = db::get_for_update(tx, &sku).await? else {
                    return Err(Error::NotFound(sku));
                };
                let old_price = product.price;
                if old_price == new_price {
                    return Ok((product, old_price));
                }
                db::set_price(tx, &sku, new_price).await?;
                let event =
                    Message::typed_event(SERVICE, &sku, &PriceChanged { sku: sku.clone(), old_price, new_price })
                        .map_err(Error::Encode)?;
                tx.send(&event).await?;
                product.price = new_price;
                Ok((product, old_price))
            })
            .await?;
        if old_price != new_price {
            tracing::info!(sku = %product.sku, old_price, new_price, "price changed");
        }
        Ok(product)
    }
}
