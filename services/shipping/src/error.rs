//! The shipping service's error type and how it maps to HTTP problems and
//! to consumer retries.

use polis_bus::HandlerError;
use polis_core::StoreError;
use polis_runtime::ApiError;
use uuid::Uuid;

/// What can go wrong in the shipping service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShippingError {
    /// A request or message broke a rule; `field` names where.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// The customer's address has not reached the replica yet. Replication
    /// is eventually consistent, so this is worth retrying.
    #[error("customer {0} is not in the address replica yet")]
    UnknownCustomer(Uuid),
    /// The service's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An outgoing message could not be serialized.
    #[error("cannot encode an outgoing message: {0}")]
    Encode(#[from] serde_json::Error),
    /// Stored rows contradict the schema; not something a retry fixes.
    #[error("inconsistent shipping data: {0}")]
    Corrupt(String),
}

impl ShippingError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

impl From<ShippingError> for HandlerError {
    fn from(e: ShippingError) -> Self {
        match e {
            ShippingError::UnknownCustomer(_) => Self::Transient(e.to_string()),
            // The library's mapping decides which store errors are retried.
            ShippingError::Store(store) => store.into(),
            other @ (ShippingError::Invalid { .. } | ShippingError::Encode(_) | ShippingError::Corrupt(_)) => {
                Self::Permanent(other.to_string())
            }
        }
    }
}

impl From<ShippingError> for ApiError {
    fn from(e: ShippingError) -> Self {
        match e {
            ShippingError::Invalid { field, message } => ApiError::validation(field, message),
            ShippingError::UnknownCustomer(id) => ApiError::not_found(format!("no address is known for customer {id}")),
            ShippingError::Store(store) => store.into(),
            other @ (ShippingError::Encode(_) | ShippingError::Corrupt(_)) => ApiError::internal(other),
        }
    }
}
