//! The view, as a projection of the service's log (the other services'
//! events, ingested by its consumer).
//!
//! Denormalized, so a page of a customer's orders is one indexed read:
//!
//! - `history_orders`: one row per order, with the customer's name and
//!   email and the payment's and shipment's status copied in;
//! - `history_items`: its lines, with the product's name copied in;
//! - `history_customers`, `history_products`: the names to copy, kept for
//!   orders placed after a customer or product was seen;
//! - `history_sources`: per source service, its last event applied (the
//!   freshness every answer reports).
//!
//! Events of different services arrive in any order relative to each other
//! (each service's topic is consumed on its own), so every write tolerates
//! the others not being there yet: a payment's status that comes before its
//! order lands in a stub row (no `status`) that readers skip and the order
//! completes; an order placed before its customer was seen takes the name
//! when the customer's event arrives. A rename fans out to every row that
//! shows the name.

use async_trait::async_trait;
use contracts::catalog::{ProductAdded, ProductRenamed};
use contracts::customer::{CustomerRegistered, CustomerUpdated};
use contracts::order::{OrderApproved, OrderCancelRequested, OrderCancelled, OrderCreated, OrderRejected};
use contracts::payment::PaymentChanged;
use contracts::shipping::ShipmentChanged;
use polis_core::{Generation, MessageType, Projection, RecordedEvent, StoreError};
use polis_store::args;
use polis_store::sql::{Sql, Value};
use serde::de::DeserializeOwned;

/// The projection's name (its checkpoint and lease).
pub const NAME: &str = "order-history";

/// The tables of a generation; readers query them by these names.
pub const TABLES: &[&str] =
    &["history_orders", "history_items", "history_customers", "history_products", "history_sources"];

/// The event types the view reads; the consumer ingests only these.
pub fn event_types() -> Vec<&'static str> {
    vec![
        OrderCreated::TYPE,
        OrderApproved::TYPE,
        OrderRejected::TYPE,
        OrderCancelRequested::TYPE,
        OrderCancelled::TYPE,
        CustomerRegistered::TYPE,
        CustomerUpdated::TYPE,
        ProductAdded::TYPE,
        ProductRenamed::TYPE,
        PaymentChanged::TYPE,
        ShipmentChanged::TYPE,
    ]
}

/// The order-history projection (version 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderHistoryProjection;

fn decode<T: DeserializeOwned>(event: &RecordedEvent) -> Result<T, StoreError> {
    serde_json::from_value(event.data.clone())
        .map_err(|e| StoreError::InvalidRequest(format!("{} {} is unreadable: {e}", event.event_type, event.id)))
}

fn micros(event: &RecordedEvent) -> i64 {
    event.time.timestamp_micros()
}

/// The order status an order event sets, and its reason.
fn status_of(event: &RecordedEvent) -> Result<Option<(&'static str, Option<&'static str>)>, StoreError> {
    Ok(Some(match event.event_type.as_str() {
        t if t == OrderApproved::TYPE => ("APPROVED", None),
        t if t == OrderRejected::TYPE => ("REJECTED", Some(decode::<OrderRejected>(event)?.reason.as_str())),
        t if t == OrderCancelRequested::TYPE => ("CANCEL_PENDING", None),
        t if t == OrderCancelled::TYPE => ("CANCELLED", None),
        _ => return Ok(None),
    }))
}

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for OrderHistoryProjection {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        TABLES
    }

    async fn create(&self, tx: &mut Tx, g: Generation) -> Result<(), StoreError> {
        let orders = g.table("history_orders");
        let items = g.table("history_items");
        for sql in [
            format!(
                "CREATE TABLE {orders} (order_id TEXT PRIMARY KEY, customer_id TEXT, status TEXT, reason TEXT, \
                 total BIGINT, customer_name TEXT, customer_email TEXT, payment_status TEXT, shipment_status TEXT, \
                 status_rank BIGINT, payment_rank BIGINT, shipment_rank BIGINT, \
                 placed_at_us BIGINT, updated_at_us BIGINT NOT NULL)"
            ),
            format!("CREATE INDEX {orders}_by_customer ON {orders} (customer_id, order_id)"),
            format!(
                "CREATE TABLE {items} (order_id TEXT NOT NULL, line_no BIGINT NOT NULL, sku TEXT NOT NULL, \
                 product_name TEXT, quantity BIGINT NOT NULL, unit_price BIGINT NOT NULL, PRIMARY KEY (order_id, line_no))"
            ),
            format!("CREATE INDEX {items}_by_sku ON {items} (sku)"),
            format!(
                "CREATE TABLE {} (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)",
                g.table("history_customers")
            ),
            format!("CREATE TABLE {} (sku TEXT PRIMARY KEY, name TEXT NOT NULL)", g.table("history_products")),
            format!(
                "CREATE TABLE {} (source TEXT PRIMARY KEY, last_event_at_us BIGINT NOT NULL, position BIGINT NOT NULL)",
                g.table("history_sources")
            ),
        ] {
            tx.execute(&sql, &[]).await?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut Tx, g: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        match apply(tx, g, event).await {
            // An event this version cannot read changes nothing here; the
            // view goes on (the source service's own checks keep such events rare).
            Err(StoreError::InvalidRequest(reason)) => {
                tracing::warn!(event_id = %event.id, event_type = event.event_type, reason, "skipping an unreadable event");
                Ok(())
            }
            other => other,
        }
    }

    /// Each source's bookmark moves to its last event of the batch: one
    /// statement per batch, not one per event.
    async fn applied(&self, tx: &mut Tx, g: Generation, events: &[&RecordedEvent]) -> Result<(), StoreError> {
        let mut last: Vec<(&str, i64, i64)> = Vec::new();
        for event in events {
            let source = event.stream_id.split_once('/').map_or(event.source.as_str(), |(source, _)| source);
            let position = i64::try_from(event.global_position).unwrap_or(i64::MAX);
            match last.iter_mut().find(|(s, _, _)| *s == source) {
                Some(entry) => *entry = (source, micros(event), position),
                None => last.push((source, micros(event), position)),
            }
        }
        let rows: Vec<String> =
            (0..last.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
        let values: Vec<Value> = last
            .iter()
            .flat_map(|(source, at, position)| [(*source).into(), (*at).into(), (*position).into()])
            .collect();
        tx.execute(
            &format!(
                "INSERT INTO {} (source, last_event_at_us, position) VALUES {} \
                 ON CONFLICT (source) DO UPDATE SET last_event_at_us = excluded.last_event_at_us, \
                 position = excluded.position",
                g.table("history_sources"),
                rows.join(", ")
            ),
            &values,
        )
        .await?;
        Ok(())
    }
}

async fn apply<Tx: Sql + Send>(tx: &mut Tx, g: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
    {
        let (orders, items) = (g.table("history_orders"), g.table("history_items"));
        let at = micros(event);
        let kind = event.event_type.as_str();
        if kind == OrderCreated::TYPE {
            let created: OrderCreated = decode(event)?;
            let customers = g.table("history_customers");
            tx.execute(
                &format!(
                    "INSERT INTO {orders} (order_id, customer_id, status, status_rank, total, customer_name, \
                     customer_email, placed_at_us, updated_at_us) \
                     SELECT $1, $2, 'PENDING', 0, $3, c.name, c.email, $4, $4 FROM (SELECT 1 AS one) AS o \
                     LEFT JOIN {customers} c ON c.customer_id = $2 WHERE TRUE \
                     ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, \
                     status = COALESCE({orders}.status, excluded.status), \
                     status_rank = COALESCE({orders}.status_rank, excluded.status_rank), total = excluded.total, \
                     customer_name = excluded.customer_name, customer_email = excluded.customer_email, \
                     placed_at_us = excluded.placed_at_us"
                ),
                args![created.order_id, created.customer_id, created.total, at],
            )
            .await?;
            // All lines in one statement: a round trip per statement is
            // what a rebuild on PostgreSQL spends its time on.
            if !created.lines.is_empty() {
                let products = g.table("history_products");
                let rows: Vec<String> = (0..created.lines.len())
                    .map(|i| {
                        let p = 5 * i;
                        format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5)
                    })
                    .collect();
                let mut values: Vec<Value> = Vec::with_capacity(5 * created.lines.len());
                for (line_no, line) in created.lines.iter().enumerate() {
                    values.extend([
                        created.order_id.into(),
                        i64::try_from(line_no).unwrap_or(i64::MAX).into(),
                        line.sku.as_str().into(),
                        line.quantity.into(),
                        line.unit_price.into(),
                    ]);
                }
                // VALUES names its columns column1 … column5 on both backends.
                tx.execute(
                    &format!(
                        "INSERT INTO {items} (order_id, line_no, sku, product_name, quantity, unit_price) \
                         SELECT v.column1, v.column2, v.column3, p.name, v.column4, v.column5 \
                         FROM (VALUES {}) AS v LEFT JOIN {products} p ON p.sku = v.column3 WHERE TRUE \
                         ON CONFLICT (order_id, line_no) DO NOTHING",
                        rows.join(", ")
                    ),
                    &values,
                )
                .await?;
            }
        } else if let Some((status, reason)) = status_of(event)? {
            let order_id = order_id(event)?;
            // Only forward: a stale event (redelivered late) never undoes a later one.
            tx.execute(
                &format!(
                    "INSERT INTO {orders} (order_id, status, status_rank, reason, updated_at_us) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, \
                     status_rank = excluded.status_rank, \
                     reason = COALESCE(excluded.reason, {orders}.reason), updated_at_us = excluded.updated_at_us \
                     WHERE COALESCE({orders}.status_rank, -1) < excluded.status_rank"
                ),
                args![order_id, status, rank(status), reason, at],
            )
            .await?;
        } else if kind == CustomerRegistered::TYPE || kind == CustomerUpdated::TYPE {
            let customer = if kind == CustomerRegistered::TYPE {
                decode::<CustomerRegistered>(event)?.customer
            } else {
                decode::<CustomerUpdated>(event)?.customer
            };
            tx.execute(
                &format!(
                    "INSERT INTO {} (customer_id, name, email) VALUES ($1, $2, $3) \
                     ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, email = excluded.email",
                    g.table("history_customers")
                ),
                args![customer.id, customer.name.as_str(), customer.email.as_str()],
            )
            .await?;
            // Fan-out: every order of the customer shows the new name.
            tx.execute(
                &format!("UPDATE {orders} SET customer_name = $1, customer_email = $2 WHERE customer_id = $3"),
                args![customer.name.as_str(), customer.email.as_str(), customer.id],
            )
            .await?;
        } else if kind == ProductAdded::TYPE || kind == ProductRenamed::TYPE {
            let (sku, name) = if kind == ProductAdded::TYPE {
                let added = decode::<ProductAdded>(event)?.product;
                (added.sku, added.name)
            } else {
                let renamed = decode::<ProductRenamed>(event)?;
                (renamed.sku, renamed.new_name)
            };
            tx.execute(
                &format!(
                    "INSERT INTO {} (sku, name) VALUES ($1, $2) ON CONFLICT (sku) DO UPDATE SET name = excluded.name",
                    g.table("history_products")
                ),
                args![sku.as_str(), name.as_str()],
            )
            .await?;
            // Fan-out: every line of every order with the product.
            tx.execute(
                &format!("UPDATE {items} SET product_name = $1 WHERE sku = $2"),
                args![name.as_str(), sku.as_str()],
            )
            .await?;
        } else if kind == PaymentChanged::TYPE || kind == ShipmentChanged::TYPE {
            let (order_id, column, status) = if kind == PaymentChanged::TYPE {
                let payment = decode::<PaymentChanged>(event)?.payment;
                (payment.order_id, "payment_status", enum_name(&payment.status)?)
            } else {
                let shipment = decode::<ShipmentChanged>(event)?.shipment;
                (shipment.order_id, "shipment_status", enum_name(&shipment.status)?)
            };
            // Only forward, as for the order's status.
            let ranked = column.replace("status", "rank");
            tx.execute(
                &format!(
                    "INSERT INTO {orders} (order_id, {column}, {ranked}, updated_at_us) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (order_id) DO UPDATE SET {column} = excluded.{column}, {ranked} = excluded.{ranked}, \
                     updated_at_us = excluded.updated_at_us \
                     WHERE COALESCE({orders}.{ranked}, -1) < excluded.{ranked}"
                ),
                args![order_id, status.as_str(), rank(&status), at],
            )
            .await?;
        }
        Ok(())
    }
}

/// How far along its one-way path a status is: the order's, the payment's
/// and the shipment's statuses only ever move forward, so the view keeps
/// the furthest it has seen. Events of one key are delivered in order, but
/// a delivery cut short by a restart can come again after a later one; a
/// stale status must not overwrite a newer one.
fn rank(status: &str) -> i64 {
    match status {
        "PENDING" => 0,
        "AUTHORIZED" | "SCHEDULED" | "APPROVED" => 1,
        "CAPTURED" | "CANCEL_PENDING" => 2,
        // Terminal.
        _ => 3,
    }
}

/// The order an order event is about (its key, the local stream's tail).
fn order_id(event: &RecordedEvent) -> Result<uuid::Uuid, StoreError> {
    #[derive(serde::Deserialize)]
    struct About {
        order_id: uuid::Uuid,
    }
    Ok(decode::<About>(event)?.order_id)
}

/// An enum's wire name (`"CAPTURED"`).
fn enum_name<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        _ => Err(StoreError::backend("a status without a wire name")),
    }
}
