//! The order service's error type, and how it maps to consumer retries and
//! to HTTP problems (the one place either mapping is written).

use axum::http::StatusCode;
use polis_bus::HandlerError;
use polis_core::{CommandError, StoreError};
use polis_runtime::ApiError;
use polis_saga::SagaError;
use uuid::Uuid;

use crate::aggregate::OrderError;

/// Why a transaction of the order service failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderFailure {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("the order changed concurrently")]
    Conflict,
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt order event: {0}")]
    Decode(String),
    #[error("order {0} has no saga to run its cancellation (was it placed under choreography?)")]
    NoSaga(Uuid),
    #[error("idempotency key {0:?} was first used with a different request")]
    KeyReused(String),
}

impl From<CommandError<OrderError>> for OrderFailure {
    fn from(e: CommandError<OrderError>) -> Self {
        match e {
            CommandError::Rejected(rejection) => Self::Order(rejection),
            CommandError::Conflict { .. } => Self::Conflict,
            CommandError::Store(e) if e.is_conflict() => Self::Conflict,
            CommandError::Store(e) => Self::Store(e),
            other => Self::Decode(other.to_string()),
        }
    }
}

impl From<OrderFailure> for HandlerError {
    fn from(e: OrderFailure) -> Self {
        match e {
            OrderFailure::Conflict | OrderFailure::Saga(SagaError::Conflict { .. }) => Self::Transient(e.to_string()),
            OrderFailure::Store(e) | OrderFailure::Saga(SagaError::Store(e)) => e.into(),
            other => Self::Permanent(other.to_string()),
        }
    }
}

impl From<OrderFailure> for ApiError {
    fn from(e: OrderFailure) -> Self {
        match e {
            OrderFailure::Order(e) => e.into(),
            OrderFailure::Conflict | OrderFailure::Saga(SagaError::Conflict { .. }) => {
                ApiError::conflict("the order changed concurrently; retry")
            }
            OrderFailure::NoSaga(_) => ApiError::conflict(e.to_string()),
            OrderFailure::KeyReused(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency key reused")
                    .with_detail(
                        "this Idempotency-Key was first used with a different request; use a new key per order",
                    )
            }
            OrderFailure::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => ApiError::not_found("no such order"),
            OrderError::AlreadyExists => ApiError::conflict("the order already exists"),
            OrderError::NoLines => ApiError::validation("lines", "an order needs at least one line"),
            OrderError::TotalOverflow => ApiError::validation("lines", "the order total is too large"),
            OrderError::InvalidLine { index, reason } => ApiError::validation(format!("lines[{index}]"), reason),
            OrderError::NotCancellable { status } => {
                ApiError::conflict(format!("the order is {}; only an APPROVED order can be cancelled", status.as_str()))
                    .with_extension("current_status", status.as_str())
            }
        }
    }
}
