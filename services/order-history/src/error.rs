//! Why a read of the view failed, and the one place it becomes a problem.

use polis_core::StoreError;
use polis_runtime::ApiError;

/// Why a read of the view failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The view has never been built yet (a new service catching up).
    #[error("the order-history view is being built")]
    NotReady,
    /// The view holds a value this version cannot read.
    #[error("corrupt view: {0}")]
    Corrupt(String),
    #[error("order-history store failure")]
    Store(#[from] StoreError),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotReady => {
                ApiError::service_unavailable("the order-history view is being built; retry in a moment")
            }
            Error::Corrupt(reason) => ApiError::internal(reason),
            Error::Store(e) => e.into(),
        }
    }
}
