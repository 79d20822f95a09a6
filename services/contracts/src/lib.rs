//! The reference shop's contracts: what each service promises the others.
//!
//! A service depends on other services' *contracts*, never on their
//! implementation. This crate holds, per service, the messages it sends and
//! accepts ([`polis_core::MessageType`]s with their CloudEvents types) and
//! the bodies of its HTTP API, which the gateway and the demo use.
//!
//! Conventions:
//! - money is `i64` minor units (cents), never floating point;
//! - ids are UUIDv7, exposed as opaque strings;
//! - every message about an order is keyed by the order id, so everything
//!   that happens to one order is delivered in order;
//! - a participant's *outcome* (e.g. [`inventory::StockReserved`]) travels
//!   as a reply to the orchestrator when a command asked for it
//!   (orchestration), and as an event when another service's event
//!   triggered it (choreography): one message type, two kinds;
//! - [`Service`] is the one list of the shop's processes;
//! - the rules more than one service checks live here, once: what a sku is
//!   ([`catalog::is_sku`]) and what text people read may hold ([`text`]).

pub mod audit;
pub mod catalog;
pub mod customer;
pub mod inventory;
pub mod order;
pub mod order_history;
pub mod payment;
mod service;
pub mod shipping;
pub mod text;

pub use service::{Service, UnknownService};

use serde::{Deserialize, Serialize};

/// Money in minor units (cents).
pub type Money = i64;

/// Declares `MessageType` impls: `message_types! { Type => "service.name.v1", ... }`.
macro_rules! message_types {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl polis_core::MessageType for $ty {
            const TYPE: &'static str = $name;
        })*
    };
}
pub(crate) use message_types;

/// Why an order was rejected. The wire names are exactly the issue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectionReason {
    OutOfStock,
    CreditLimitExceeded,
    PaymentDeclined,
    Undeliverable,
    Timeout,
}

impl RejectionReason {
    pub const ALL: [Self; 5] =
        [Self::OutOfStock, Self::CreditLimitExceeded, Self::PaymentDeclined, Self::Undeliverable, Self::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::CreditLimitExceeded => "CREDIT_LIMIT_EXCEEDED",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::Undeliverable => "UNDELIVERABLE",
            Self::Timeout => "TIMEOUT",
        }
    }
}

/// A postal address; `country` is an ISO 3166-1 alpha-2 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Address {
    #[schema(schema_with = customer::text_schema)]
    pub line1: String,
    #[schema(schema_with = customer::text_schema)]
    pub city: String,
    #[schema(schema_with = customer::text_schema)]
    pub postal_code: String,
    #[schema(schema_with = country_schema)]
    pub country: String,
}

/// An ISO 3166-1 alpha-2 code as a JSON Schema `pattern`; a unit test holds
/// it against [`is_country_code`].
pub const COUNTRY_PATTERN: &str = "^[A-Z]{2}$";

/// Whether `code` has the shape of an ISO 3166-1 alpha-2 code: two ASCII
/// upper-case letters.
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn country_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(COUNTRY_PATTERN))
        .build()
}

/// One line of an order: a sku, how many, and the unit price at order time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[schema(schema_with = catalog::sku_schema)]
    pub sku: String,
    #[schema(schema_with = item_quantity_schema)]
    pub quantity: i64,
    /// Minor units; never negative.
    #[schema(value_type = i64, minimum = 0)]
    pub unit_price: Money,
}

/// A sku and a quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quantity {
    #[schema(schema_with = catalog::sku_schema)]
    pub sku: String,
    #[schema(schema_with = item_quantity_schema)]
    pub quantity: i64,
}

/// How many of a sku one line holds: at least 1, at most what the inventory
/// can hold ([`inventory::MAX_QUANTITY`]).
fn item_quantity_schema() -> utoipa::openapi::schema::Object {
    inventory::quantity_schema(1)
}

/// How the create-order saga runs; every service is configured with the same style.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStyle {
    /// The order service's saga sends commands and waits for replies.
    #[default]
    Orchestration,
    /// Each service reacts to the previous step's events.
    Choreography,
}

impl SagaStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orchestration => "orchestration",
            Self::Choreography => "choreography",
        }
    }
}

impl std::str::FromStr for SagaStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "orchestration" => Ok(Self::Orchestration),
            "choreography" => Ok(Self::Choreography),
            other => Err(format!("unknown saga style `{other}` (expected orchestration or choreography)")),
        }
    }
}

/// A participant's outcome of handling `trigger`: the reply to the command
/// that asked for it (orchestration), or an event caused by the event that
/// triggered it (choreography). Either way it is keyed by `key` (the order id).
pub fn outcome<T: polis_core::MessageType>(
    service: &str,
    trigger: &polis_core::Message,
    key: &str,
    body: &T,
) -> Result<polis_core::Message, serde_json::Error> {
    if trigger.kind == polis_core::MessageKind::Command {
        polis_core::Message::typed_reply(trigger, body)
    } else {
        Ok(polis_core::Message::typed_event(service, key, body)?.with_metadata(trigger.caused()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_country_pattern_says_what_is_country_code_says() {
        let pattern = regex::Regex::new(COUNTRY_PATTERN).unwrap();
        let letters = (0u8..=0x7F).map(char::from).chain(['É']);
        let codes = letters.clone().flat_map(|a| ['F', 'r'].map(move |b| format!("{a}{b}")));
        for code in codes.chain(["", "F", "FRA", " FR"].map(String::from)) {
            assert_eq!(pattern.is_match(&code), is_country_code(&code), "{code:?}");
        }
    }
}
