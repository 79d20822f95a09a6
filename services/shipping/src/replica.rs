//! The replica of each customer's address (`customer_addresses`), a
//! projection of the customer service's events ingested into the shipping
//! service's log, and of the snapshot records its bootstrap copies there
//! (`polis_projection::replica`).
//!
//! A customer's row holds its latest version: a state reaches the row only
//! over an older version, so events and snapshot records converge on the
//! customer service's latest state in whatever order they arrive
//! ([`CustomerVersioned`]). Rebuilt from the log like any projection.

use async_trait::async_trait;
use contracts::customer::CustomerVersioned;
use polis_core::{Generation, Projection, RecordedEvent, StoreError};
use polis_store::args;
use polis_store::sql::Sql;

/// The projection (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressReplica;

/// The replica's table, a view of its live generation.
pub(crate) const TABLE: &str = "customer_addresses";

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for AddressReplica {
    fn name(&self) -> &str {
        TABLE
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        &[TABLE]
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (customer_id TEXT PRIMARY KEY, line1 TEXT NOT NULL, city TEXT NOT NULL, \
             postal_code TEXT NOT NULL, country TEXT NOT NULL, version BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
            generation.table(TABLE)
        );
        tx.execute(&sql, &[]).await?;
        Ok(())
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        CustomerVersioned::is_state(&event.event_type)
    }

    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError> {
        let Some(state) = CustomerVersioned::from_logged(event) else { return Ok(()) };
        let (table, a) = (generation.table(TABLE), &state.customer.address);
        tx.execute(
            &format!(
                "INSERT INTO {table} (customer_id, line1, city, postal_code, country, version, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (customer_id) DO UPDATE SET line1 = excluded.line1, city = excluded.city, \
                 postal_code = excluded.postal_code, country = excluded.country, version = excluded.version, \
                 updated_at = excluded.updated_at WHERE {table}.version <= excluded.version"
            ),
            args![
                state.customer.id,
                &a.line1,
                &a.city,
                &a.postal_code,
                &a.country,
                i64::try_from(state.version).unwrap_or(i64::MAX),
                event.time.timestamp_micros()
            ],
        )
        .await?;
        Ok(())
    }
}
