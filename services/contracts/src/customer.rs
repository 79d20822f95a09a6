//! The customer service: customers with a shipping address and a credit limit.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use uuid::Uuid;

use crate::{Address, Money, message_types};

pub const SERVICE: &str = "customer";

/// Longest name and address field, in characters (texts people read, [`crate::text`]).
pub const MAX_TEXT_CHARS: usize = 200;

/// Longest email, in characters (RFC 5321's limit on a forward path).
pub const MAX_EMAIL_CHARS: usize = 254;

/// The schema of a name or an address field.
pub(crate) fn text_schema() -> Object {
    crate::text::schema(MAX_TEXT_CHARS)
}

/// The schema of an email: the service checks a plain `local@domain.tld`
/// shape, at most [`MAX_EMAIL_CHARS`] characters.
fn email_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .min_length(Some(1))
        .max_length(Some(MAX_EMAIL_CHARS))
        .build()
}

/// A customer as the service publishes and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    pub id: Uuid,
    #[schema(schema_with = text_schema)]
    pub name: String,
    #[schema(schema_with = email_schema)]
    pub email: String,
    pub address: Address,
    /// Minor units; never negative.
    #[schema(value_type = i64, minimum = 0)]
    pub credit_limit: Money,
}

/// `customer.customer-registered.v1`: a new customer (full state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    pub customer: Customer,
}

/// `customer.customer-updated.v1`: a customer's new full state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUpdated {
    pub customer: Customer,
}

message_types! {
    CustomerRegistered => "customer.customer-registered.v1",
    CustomerUpdated => "customer.customer-updated.v1",
}

/// `POST /customers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterCustomer {
    #[schema(schema_with = text_schema)]
    pub name: String,
    /// Unique: a second customer with this email (in any case) is a 409.
    #[schema(schema_with = email_schema)]
    pub email: String,
    pub address: Address,
    /// Minor units; never negative.
    #[schema(value_type = i64, minimum = 0)]
    pub credit_limit: Money,
}

/// `PUT /customers/{id}`: fields to change; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateCustomer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = text_schema)]
    pub name: Option<String>,
    /// Unique: another customer's email (in any case) is a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = email_schema)]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// Minor units; never negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub credit_limit: Option<Money>,
}
