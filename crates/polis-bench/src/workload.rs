//! The event every scenario writes (about 200 bytes of JSON, the same for
//! polis and for each baseline) and the polis writer both append scenarios use.

use anyhow::{Context, Result};
use async_trait::async_trait;
use polis_core::{EventStore, ExpectedVersion, NewEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::load::Client;

/// The event type polis stores (and baselines copy into their rows).
pub(crate) const EVENT_TYPE: &str = "bench.entry_recorded";

/// An order line, sized like a typical small domain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) order_id: Uuid,
    pub(crate) customer: String,
    pub(crate) sku: String,
    pub(crate) quantity: u32,
    pub(crate) amount_cents: u64,
    pub(crate) currency: String,
    pub(crate) note: String,
}

impl Entry {
    pub(crate) fn new(seq: u64) -> Self {
        Self {
            seq,
            order_id: Uuid::now_v7(),
            customer: format!("customer-{:06}", seq % 100_000),
            sku: format!("SKU-{:05}-XL", seq % 10_000),
            quantity: (seq % 7 + 1) as u32,
            amount_cents: 1_000 + seq % 50_000,
            currency: "EUR".to_owned(),
            note: "leave at the back door, ring twice".to_owned(),
        }
    }
}

/// The JSON `data` of event number `seq`.
pub(crate) fn payload(seq: u64) -> serde_json::Value {
    serde_json::to_value(Entry::new(seq)).unwrap_or_default()
}

/// A polis writer: one `append` of one event per operation to its own
/// stream, expecting the version it last wrote.
pub(crate) struct Appender<S> {
    store: S,
    stream: String,
    version: u64,
}

impl<S> Appender<S> {
    pub(crate) fn new(store: S, stream: String) -> Self {
        Self { store, stream, version: 0 }
    }
}

#[async_trait]
impl<S: EventStore> Client for Appender<S> {
    async fn op(&mut self) -> Result<u64> {
        let event = NewEvent::new(EVENT_TYPE, payload(self.version + 1));
        let appended = self
            .store
            .append(&self.stream, ExpectedVersion::from_loaded(self.version), vec![event])
            .await
            .context("appending to the polis store")?;
        self.version = appended.stream_version;
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn payload_is_about_200_bytes() {
        let size = payload(123_456).to_string().len();
        assert!((180..=230).contains(&size), "payload is {size} bytes");
    }
}
