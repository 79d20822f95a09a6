//! The customer service: customers with a shipping address and a credit limit.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Address, Money, message_types};

pub const SERVICE: &str = "customer";

/// A customer as the service publishes and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub address: Address,
    #[schema(value_type = i64)]
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
    pub name: String,
    pub email: String,
    pub address: Address,
    #[schema(value_type = i64)]
    pub credit_limit: Money,
}

/// `PUT /customers/{id}`: fields to change; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCustomer {
    pub name: Option<String>,
    pub email: Option<String>,
    pub address: Option<Address>,
    pub credit_limit: Option<Money>,
}
