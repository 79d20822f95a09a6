//! Reading the view: every query goes through the views named after the
//! tables, so it reads the live generation, whole.

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use contracts::order::OrderStatus;
use contracts::order_history::{Freshness, HistoryItem, HistoryOrder};
use polis_runtime::Page;
use polis_store::args;
use polis_store::sql::{Row, Sql, SqlStore, Value};
use uuid::Uuid;

use crate::Error;

const ORDER_COLUMNS: &str = "order_id, customer_id, status, reason, total, customer_name, customer_email, \
                             payment_status, shipment_status, placed_at_us, updated_at_us";

/// A page of a customer's orders by id, optionally only those in `status`.
pub(crate) async fn customer_orders<S>(
    store: &S,
    customer_id: Uuid,
    status: Option<OrderStatus>,
    page: &Page,
) -> Result<Vec<HistoryOrder>, Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let mut sql = format!(
        "SELECT {ORDER_COLUMNS} FROM history_orders WHERE customer_id = $1 AND status IS NOT NULL AND order_id > $2"
    );
    let mut args: Vec<Value> = vec![customer_id.into(), page.after_key().into(), page.sql_limit().into()];
    if let Some(status) = status {
        sql.push_str(" AND status = $4");
        args.push(status.as_str().into());
    }
    sql.push_str(" ORDER BY order_id LIMIT $3");
    let rows = store.query(&sql, &args).await?;
    let mut orders = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
    attach_items(store, &mut orders).await?;
    Ok(orders)
}

/// A page of every order the view has, by id.
pub(crate) async fn orders<S>(store: &S, page: &Page) -> Result<Vec<HistoryOrder>, Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM history_orders WHERE status IS NOT NULL AND order_id > $1 ORDER BY order_id LIMIT $2"
    );
    let rows = store.query(&sql, args![page.after_key(), page.sql_limit()]).await?;
    let mut orders = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
    attach_items(store, &mut orders).await?;
    Ok(orders)
}

/// One order, if the view has it.
pub(crate) async fn order<S>(store: &S, order_id: Uuid) -> Result<Option<HistoryOrder>, Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let sql = format!("SELECT {ORDER_COLUMNS} FROM history_orders WHERE order_id = $1 AND status IS NOT NULL");
    let Some(row) = store.query_optional(&sql, args![order_id]).await? else { return Ok(None) };
    let mut orders = vec![order_row(&row)?];
    attach_items(store, &mut orders).await?;
    Ok(orders.pop())
}

/// What the view had applied, per source.
pub(crate) async fn sources<S>(store: &S) -> Result<BTreeMap<String, String>, Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let rows = store.query("SELECT source, last_event_at_us FROM history_sources", &[]).await?;
    rows.iter().map(|row| Ok((row.text("source")?, time(row.int("last_event_at_us")?)?))).collect()
}

/// The view's freshness: its checkpoint and its sources' last events.
pub(crate) async fn freshness<S>(store: &S) -> Result<Freshness, Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    let live = polis_projection::generations(store, crate::projection::NAME)
        .await?
        .into_iter()
        .find(|g| g.state == polis_projection::State::Live)
        .ok_or(Error::NotReady)?;
    Ok(Freshness {
        position: live.position,
        applied_at: live.applied_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        sources: sources(store).await?,
    })
}

async fn attach_items<S>(store: &S, orders: &mut [HistoryOrder]) -> Result<(), Error>
where
    S: SqlStore,
    S::Tx: Sql,
{
    if orders.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=orders.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT order_id, sku, product_name, quantity, unit_price FROM history_items \
         WHERE order_id IN ({}) ORDER BY order_id, line_no",
        placeholders.join(", ")
    );
    let args: Vec<Value> = orders.iter().map(|o| o.id.into()).collect();
    let mut by_order: HashMap<Uuid, Vec<HistoryItem>> = HashMap::new();
    for row in store.query(&sql, &args).await? {
        by_order.entry(row.uuid("order_id")?).or_default().push(HistoryItem {
            sku: row.text("sku")?,
            product_name: row.opt_text("product_name")?,
            quantity: row.int("quantity")?,
            unit_price: row.int("unit_price")?,
        });
    }
    for order in orders {
        order.items = by_order.remove(&order.id).unwrap_or_default();
    }
    Ok(())
}

fn order_row(row: &Row) -> Result<HistoryOrder, Error> {
    Ok(HistoryOrder {
        id: row.uuid("order_id")?,
        customer_id: row.uuid("customer_id")?,
        status: wire(&row.text("status")?)?,
        reason: row.opt_text("reason")?.map(|r| wire(&r)).transpose()?,
        items: Vec::new(),
        total: row.int("total")?,
        customer_name: row.opt_text("customer_name")?,
        customer_email: row.opt_text("customer_email")?,
        payment_status: row.opt_text("payment_status")?.map(|s| wire(&s)).transpose()?,
        shipment_status: row.opt_text("shipment_status")?.map(|s| wire(&s)).transpose()?,
        placed_at: time(row.int("placed_at_us")?)?,
        updated_at: time(row.int("updated_at_us")?)?,
    })
}

/// An enum from its wire name.
fn wire<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| Error::Corrupt(format!("unknown value `{name}` in the view")))
}

fn time(micros: i64) -> Result<String, Error> {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .ok_or_else(|| Error::Corrupt(format!("bad time {micros} in the view")))
}
