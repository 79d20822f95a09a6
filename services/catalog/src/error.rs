//! The catalog service's error type, and the one place where it becomes an
//! HTTP problem.

use polis_core::StoreError;
use polis_runtime::{ApiError, FieldError};

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request breaks the rules in [`crate::rules`]; every broken rule is listed.
    #[error("the request has {} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// No product has this sku (or the text cannot be a sku at all).
    #[error("no product with sku {0}")]
    NotFound(String),
    /// A product with this sku already exists.
    #[error("a product with sku {0} already exists")]
    SkuTaken(String),
    /// An event body could not be serialized (a bug, never the client's fault).
    #[error("cannot encode a catalog event")]
    Encode(#[source] serde_json::Error),
    #[error("catalog store failure")]
    Store(#[source] StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The one place where the service's errors become HTTP problems.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(errors) => ApiError::validation_errors(errors),
            Error::NotFound(sku) => ApiError::not_found(format!("no product with sku `{sku}`")),
            Error::SkuTaken(sku) => {
                ApiError::conflict(format!("a product with sku `{sku}` already exists")).with_extension("field", "sku")
            }
            Error::Encode(e) => ApiError::internal(e),
            Error::Store(e) => e.into(),
        }
    }
}
