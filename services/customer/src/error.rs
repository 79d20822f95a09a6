//! The customer service's error type, and the one place where it becomes an
//! HTTP problem.

use polis_core::StoreError;
use polis_runtime::{ApiError, FieldError};

/// Why a customer operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request breaks the rules in [`crate::rules`]; every broken rule is listed.
    #[error("the request has {} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// No customer has this id.
    #[error("no customer with id {0}")]
    NotFound(String),
    /// Another customer already has this email (compared case-insensitively).
    #[error("a customer with email {0} is already registered")]
    EmailTaken(String),
    /// An event body could not be serialized (a bug, never the client's fault).
    #[error("cannot encode a customer event")]
    Encode(#[source] serde_json::Error),
    #[error("customer store failure")]
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
            Error::NotFound(id) => ApiError::not_found(format!("no customer with id `{id}`")),
            Error::EmailTaken(email) => {
                ApiError::conflict(format!("a customer with email {email} is already registered"))
                    .with_extension("field", "email")
            }
            Error::Encode(e) => ApiError::internal(e),
            Error::Store(e) => e.into(),
        }
    }
}
