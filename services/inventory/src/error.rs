//! The inventory service's error type and how it maps to HTTP problems and
//! to consumer retries.

use polis_bus::HandlerError;
use polis_core::StoreError;
use polis_runtime::ApiError;

/// What can go wrong in the inventory service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// A request or message broke a rule; `field` names where (e.g. `items[1].quantity`).
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// The service's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An outgoing message could not be serialized.
    #[error("cannot encode an outgoing message: {0}")]
    Encode(#[from] serde_json::Error),
    /// Stored rows contradict each other or the schema; not something a retry fixes.
    #[error("inconsistent inventory data: {0}")]
    Corrupt(String),
}

impl InventoryError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

impl From<InventoryError> for HandlerError {
    fn from(e: InventoryError) -> Self {
        match e {
            // Database trouble may pass (connection lost, lock timeout): the
            // library's mapping decides which store errors are retried.
            InventoryError::Store(store) => store.into(),
            other @ (InventoryError::Invalid { .. } | InventoryError::Encode(_) | InventoryError::Corrupt(_)) => {
                Self::Permanent(other.to_string())
            }
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Invalid { field, message } => ApiError::validation(field, message),
            InventoryError::Store(store) => store.into(),
            other @ (InventoryError::Encode(_) | InventoryError::Corrupt(_)) => ApiError::internal(other),
        }
    }
}
