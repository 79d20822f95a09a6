//! The demo's aggregate: one stock item (a sku) with reservations per order.

use std::collections::BTreeMap;

use polis_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StockItem {
    pub(crate) received: u64,
    pub(crate) available: u64,
    /// Units held per order id.
    pub(crate) reservations: BTreeMap<String, u64>,
}

impl StockItem {
    pub(crate) fn reserved(&self) -> u64 {
        self.reservations.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StockCommand {
    Receive { quantity: u64 },
    Reserve { order_id: String, quantity: u64 },
    Release { order_id: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum StockEvent {
    #[serde(rename = "stock.received")]
    Received { quantity: u64 },
    #[serde(rename = "stock.reserved")]
    Reserved { order_id: String, quantity: u64 },
    #[serde(rename = "stock.released")]
    Released { order_id: String, quantity: u64 },
}

impl DomainEvent for StockEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Received { .. } => "stock.received",
            Self::Reserved { .. } => "stock.reserved",
            Self::Released { .. } => "stock.released",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum StockError {
    #[error("out of stock: {available} available, {requested} requested")]
    OutOfStock { available: u64, requested: u64 },
    #[error("quantity must be positive")]
    ZeroQuantity,
}

impl Aggregate for StockItem {
    const TYPE: &'static str = "stock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;

    fn handle(&self, command: &StockCommand) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::Receive { quantity: 0 } | StockCommand::Reserve { quantity: 0, .. } => {
                Err(StockError::ZeroQuantity)
            }
            StockCommand::Receive { quantity } => Ok(vec![StockEvent::Received { quantity: *quantity }]),
            // Idempotent per order: a repeated reservation changes nothing.
            StockCommand::Reserve { order_id, .. } if self.reservations.contains_key(order_id) => Ok(vec![]),
            StockCommand::Reserve { quantity, .. } if *quantity > self.available => {
                Err(StockError::OutOfStock { available: self.available, requested: *quantity })
            }
            StockCommand::Reserve { order_id, quantity } => {
                Ok(vec![StockEvent::Reserved { order_id: order_id.clone(), quantity: *quantity }])
            }
            StockCommand::Release { order_id } => Ok(self
                .reservations
                .get(order_id)
                .map(|&quantity| StockEvent::Released { order_id: order_id.clone(), quantity })
                .into_iter()
                .collect()),
        }
    }

    fn apply(mut self, event: &StockEvent) -> Self {
        match event {
            StockEvent::Received { quantity } => {
                self.received += quantity;
                self.available += quantity;
            }
            StockEvent::Reserved { order_id, quantity } => {
                self.available -= quantity;
                self.reservations.insert(order_id.clone(), *quantity);
            }
            StockEvent::Released { order_id, quantity } => {
                self.available += quantity;
                self.reservations.remove(order_id);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polis_core::testing::AggregateFixture;

    fn reserve(order: &str, quantity: u64) -> StockCommand {
        StockCommand::Reserve { order_id: order.into(), quantity }
    }

    #[test]
    fn reserves_what_is_available() {
        AggregateFixture::<StockItem>::given([StockEvent::Received { quantity: 5 }])
            .when(reserve("o1", 3))
            .then_expect_events(vec![StockEvent::Reserved { order_id: "o1".into(), quantity: 3 }]);
    }

    #[test]
    fn never_oversells() {
        AggregateFixture::<StockItem>::given([
            StockEvent::Received { quantity: 5 },
            StockEvent::Reserved { order_id: "o1".into(), quantity: 4 },
        ])
        .when(reserve("o2", 2))
        .then_expect_error(|e| *e == StockError::OutOfStock { available: 1, requested: 2 });
    }

    #[test]
    fn reservation_is_idempotent_per_order() {
        let state = AggregateFixture::<StockItem>::given([
            StockEvent::Received { quantity: 5 },
            StockEvent::Reserved { order_id: "o1".into(), quantity: 4 },
        ])
        .when(reserve("o1", 4))
        .then_expect_events(vec![]);
        assert_eq!(state.available, 1);
    }

    #[test]
    fn release_returns_the_units_once() {
        let state = AggregateFixture::<StockItem>::given([
            StockEvent::Received { quantity: 5 },
            StockEvent::Reserved { order_id: "o1".into(), quantity: 4 },
        ])
        .when(StockCommand::Release { order_id: "o1".into() })
        .then_expect_events(vec![StockEvent::Released { order_id: "o1".into(), quantity: 4 }]);
        assert_eq!((state.available, state.reserved()), (5, 0));
        AggregateFixture::<StockItem>::given([StockEvent::Received { quantity: 5 }])
            .when(StockCommand::Release { order_id: "o1".into() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn zero_quantities_are_rejected() {
        AggregateFixture::<StockItem>::given_no_history()
            .when(StockCommand::Receive { quantity: 0 })
            .then_expect_error(|e| *e == StockError::ZeroQuantity);
    }
}
