//! Upcasters: old event versions become new ones on read.
//!
//! Stored events are immutable; when an event's schema changes, register an
//! upcaster from the old version to the next. On read, an event stored at v1
//! runs through v1 → v2 → v3 until no upcaster for its version is left.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// A registry of upcaster chains, one per event type.
#[derive(Clone, Default)]
pub struct Upcasters {
    // (event type, from version) -> upcaster to from version + 1
    steps: HashMap<(String, u16), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// An empty registry: every event is read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that turns `event_type` data at `from_version` into
    /// `from_version + 1`. A failing step makes the read fail with its reason.
    pub fn register(
        mut self,
        event_type: impl Into<String>,
        from_version: u16,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert((event_type.into(), from_version), Arc::new(step));
        self
    }

    /// Runs the chain for `event_type` from `version`; returns the final version and data.
    pub fn upcast(&self, event_type: &str, mut version: u16, mut data: Value) -> Result<(u16, Value), String> {
        // Lookup by (String, u16) without allocating per step would need a
        // borrowed key type; one allocation per read event is cheap next to I/O.
        let mut key = (event_type.to_owned(), version);
        while let Some(step) = self.steps.get(&key) {
            data = step(data).map_err(|reason| format!("upcasting v{version}: {reason}"))?;
            version += 1;
            key.1 = version;
        }
        Ok((version, data))
    }

    /// Whether no step is registered: every event is then read as stored.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chain_runs_from_stored_version_to_latest() {
        let upcasters = Upcasters::new()
            .register("price.changed", 1, |mut d| {
                // v2 renamed `price` to `amount`
                let price = d["price"].take();
                Ok(json!({ "amount": price }))
            })
            .register("price.changed", 2, |mut d| {
                // v3 added a currency, defaulting to EUR
                d["currency"] = json!("EUR");
                Ok(d)
            });
        assert_eq!(
            upcasters.upcast("price.changed", 1, json!({"price": 5})).unwrap(),
            (3, json!({"amount": 5, "currency": "EUR"}))
        );
        assert_eq!(
            upcasters.upcast("price.changed", 2, json!({"amount": 7})).unwrap(),
            (3, json!({"amount": 7, "currency": "EUR"}))
        );
        assert_eq!(upcasters.upcast("other", 1, json!(1)).unwrap(), (1, json!(1)));
    }

    #[test]
    fn failing_step_reports_its_version() {
        let upcasters = Upcasters::new().register("x", 1, |_| Err("missing field".into()));
        let err = upcasters.upcast("x", 1, json!({})).unwrap_err();
        assert_eq!(err, "upcasting v1: missing field");
    }
}
