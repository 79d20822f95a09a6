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
    /// The customer's version: 1 at registration, one more at every change
    /// ([`CustomerVersioned`]). Absent (0) in events sent before versions.
    #[serde(default)]
    pub version: u64,
}

/// `customer.customer-updated.v1`: a customer's new full state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUpdated {
    pub customer: Customer,
    /// The customer's version after the change.
    #[serde(default)]
    pub version: u64,
}

/// `customer.customer-snapshot.v1`: a customer's current state, as the
/// customer service serves it to a replica that bootstraps
/// (`GET /customers/snapshot`, [`SNAPSHOT_PATH`]); never sent on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerSnapshot {
    pub customer: Customer,
    pub version: u64,
}

message_types! {
    CustomerRegistered => "customer.customer-registered.v1",
    CustomerUpdated => "customer.customer-updated.v1",
    CustomerSnapshot => "customer.customer-snapshot.v1",
}

/// The customer service's snapshot, for replicas that bootstrap: pages of
/// [`CustomerSnapshot`] records in id order (`?after=<id>&limit=N`), as
/// `polis_projection::SnapshotPage` JSON.
pub const SNAPSHOT_PATH: &str = "/customers/snapshot";

/// A customer's state and version, from any of the events (or records) that
/// carry it whole: what a replica keeps, the latest version winning.
///
/// Versions order a customer's states whatever order their events and a
/// bootstrap's snapshot arrive in: a replica keeps a state only over an
/// older version. An event sent before versions (0) counts as older than
/// any versioned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerVersioned {
    pub customer: Customer,
    pub version: u64,
}

impl CustomerVersioned {
    /// The state `data` carries if `event_type` is one of the customer's
    /// full-state types (`None` for other types; an error if it is one of
    /// them but `data` does not fit it).
    pub fn from_event(event_type: &str, data: &serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
        // The three share one shape: the customer and its version (absent,
        // 0, in events sent before versions).
        let decode = |data: &serde_json::Value| {
            serde_json::from_value::<CustomerUpdated>(data.clone())
                .map(|state| Self { customer: state.customer, version: state.version })
        };
        Self::is_state(event_type).then(|| decode(data))
    }

    /// Whether `event_type` is one of the customer's full-state types.
    pub fn is_state(event_type: &str) -> bool {
        use polis_core::MessageType as _;
        [CustomerRegistered::TYPE, CustomerUpdated::TYPE, CustomerSnapshot::TYPE].contains(&event_type)
    }

    /// The state an event of a replica's log carries, `None` for other
    /// types. One of the types that does not decode is skipped with a
    /// warning, never allowed to stop the replica: its consumer decoded it
    /// before putting it in the log.
    pub fn from_logged(event: &polis_core::RecordedEvent) -> Option<Self> {
        match Self::from_event(&event.event_type, &event.data)? {
            Ok(state) => Some(state),
            Err(error) => {
                tracing::warn!(event_id = %event.id, %error, "skipping a customer state that does not decode");
                None
            }
        }
    }
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
