//! The payment service: payments per order, against the customer's credit
//! limit (a local replica fed by customer events) and a simulated provider.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Money, RejectionReason, message_types};

pub const SERVICE: &str = "payment";

/// Command: authorize `amount` for an order. Idempotent per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Money,
}

/// Command: capture an order's authorized payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturePayment {
    pub order_id: Uuid,
}

/// Command (a compensation): undo an order's payment whatever it got to —
/// void an authorization, refund a capture. Idempotent; arriving first, it
/// makes a later authorization fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidPayment {
    pub order_id: Uuid,
}

/// Command: refund an order's captured payment (cancellation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    pub order_id: Uuid,
}

/// Outcome: the amount is authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount: Money,
}

/// Outcome: `CREDIT_LIMIT_EXCEEDED` or `PAYMENT_DECLINED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub reason: RejectionReason,
}

/// Outcome: the payment is captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: Uuid,
    pub amount: Money,
}

/// Outcome: the authorization is void (or there was none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {
    pub order_id: Uuid,
}

/// Outcome: the captured amount is refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub amount: Money,
}

/// An order's payment as it now is, after any change (and again when an
/// outcome is re-sent), in both saga styles: what read models follow. No
/// participant acts on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentChanged {
    pub payment: Payment,
}

message_types! {
    PaymentChanged => "payment.payment-changed.v1",
    AuthorizePayment => "payment.authorize-payment.v1",
    CapturePayment => "payment.capture-payment.v1",
    VoidPayment => "payment.void-payment.v1",
    RefundPayment => "payment.refund-payment.v1",
    PaymentAuthorized => "payment.payment-authorized.v1",
    PaymentFailed => "payment.payment-failed.v1",
    PaymentCaptured => "payment.payment-captured.v1",
    PaymentVoided => "payment.payment-voided.v1",
    PaymentRefunded => "payment.payment-refunded.v1",
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Authorized,
    Captured,
    Voided,
    Refunded,
    Failed,
}

/// `GET /payments/{order_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payment {
    pub order_id: Uuid,
    pub customer_id: Option<Uuid>,
    #[schema(value_type = i64)]
    pub amount: Money,
    pub status: PaymentStatus,
    pub reason: Option<RejectionReason>,
}

/// `GET /credit/{customer_id}`: a customer's credit limit (as the payment
/// service replicated it) and open exposure, the sum of its AUTHORIZED and
/// CAPTURED payments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub customer_id: Uuid,
    pub credit_limit: Money,
    pub exposure: Money,
}
