//! The replica of each customer's email and credit limit
//! (`payment_customers`), a projection of the customer service's events
//! ingested into the payment service's log, and of the snapshot records its
//! bootstrap copies there (`polis_projection::replica`).
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
pub struct CustomerReplica;

/// The replica's table, a view of its live generation.
pub(crate) const TABLE: &str = "payment_customers";

#[async_trait]
impl<Tx: Sql + Send + 'static> Projection<Tx> for CustomerReplica {
    fn name(&self) -> &str {
        "payment_customers"
    }

    fn version(&self) -> u32 {
        1
    }

    fn tables(&self) -> &[&'static str] {
        &[TABLE]
    }

    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError> {
        let sql = format!(
            "CREATE TABLE {} (id TEXT PRIMARY KEY, email TEXT NOT NULL, credit_limit BIGINT NOT NULL, \
             version BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)",
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
        let table = generation.table(TABLE);
        let customer = &state.customer;
        tx.execute(
            &format!(
                "INSERT INTO {table} (id, email, credit_limit, version, updated_at_us) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, credit_limit = excluded.credit_limit, \
                 version = excluded.version, updated_at_us = excluded.updated_at_us \
                 WHERE {table}.version <= excluded.version"
            ),
            args![
                customer.id,
                &customer.email,
                customer.credit_limit,
                i64::try_from(state.version).unwrap_or(i64::MAX),
                event.time.timestamp_micros()
            ],
        )
        .await?;
        Ok(())
    }
}
