//! Messages a service cannot handle, for trying the operators' tools on
//! real dead letters (tests, and anyone exploring `polis dlq`): publish
//! them straight onto the shop's bus ([`crate::Embedded::bus`], or a
//! `polis_bus::NatsBus` on the distributed shop's NATS) and the payment
//! service's consumer dead-letters them as it would any bad message.
//!
//! - [`unknown_payment_command`]: a command type payment has no handler
//!   for. Dead-lettered at once (a permanent failure); a replay fails
//!   again, so it can only be discarded.
//! - [`authorization_for_unknown_customer`]: an authorization for a
//!   customer payment has never heard of. Retried (the registration may be
//!   on its way), then dead-lettered when the consumer's attempts run out;
//!   replayed successfully once [`customer_registered`] has reached
//!   payment's replica: the fix an operator makes before a replay.

use contracts::customer::{Customer, CustomerRegistered};
use contracts::payment::AuthorizePayment;
use contracts::{Address, Money};
use polis_core::{Message, MessageType};
use uuid::Uuid;

/// Where the messages say they come from (a name no service has).
const SOURCE: &str = "operator";

/// A command of a type the payment service does not know, keyed by a fresh id.
pub fn unknown_payment_command() -> Message {
    let key = Uuid::now_v7().to_string();
    Message::command(SOURCE, contracts::payment::SERVICE, "payment.no-such-command.v1", &key, serde_json::json!({}))
}

/// The order service's command to authorize `amount` for order `order_id`
/// of customer `customer_id`.
pub fn authorization_for_unknown_customer(order_id: Uuid, customer_id: Uuid, amount: Money) -> Message {
    let body = AuthorizePayment { order_id, customer_id, amount };
    let data = serde_json::to_value(body).unwrap_or_default();
    Message::command(
        contracts::order::SERVICE,
        contracts::payment::SERVICE,
        AuthorizePayment::TYPE,
        &order_id.to_string(),
        data,
    )
}

/// Customer `customer_id`'s registration, as the customer service announces
/// it (version 1, a credit limit of 1,000,000).
pub fn customer_registered(customer_id: Uuid) -> Message {
    let customer = Customer {
        id: customer_id,
        name: "Dee Letter".into(),
        email: format!("dee-{}@example.com", customer_id.simple()),
        address: Address {
            line1: "1 Replay Road".into(),
            city: "Polis".into(),
            postal_code: "10001".into(),
            country: "DE".into(),
        },
        credit_limit: 1_000_000,
    };
    let data = serde_json::to_value(CustomerRegistered { customer, version: 1 }).unwrap_or_default();
    Message::event(contracts::customer::SERVICE, CustomerRegistered::TYPE, &customer_id.to_string(), data)
}
