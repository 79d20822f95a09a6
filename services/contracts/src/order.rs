//! The order service: the event-sourced Order aggregate and the
//! create-order saga.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Array, RefOr, Schema};
use uuid::Uuid;

use crate::{Money, OrderLine, Quantity, RejectionReason, SagaStyle, message_types};

pub const SERVICE: &str = "order";

/// An order's status. The wire names are exactly the issue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Approved,
    Rejected,
    CancelPending,
    Cancelled,
}

impl OrderStatus {
    /// No further change will happen without a new request.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::CancelPending => "CANCEL_PENDING",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// The request header that makes `POST /api/orders` (and the order
/// service's `POST /orders`) safe to retry: a request repeating an earlier
/// one with the same key answers with the order placed then instead of
/// placing another (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header that marks an answer as a repeat of an earlier one.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// An idempotency key's characters (visible ASCII) as a JSON Schema
/// `pattern`; [`idempotency_key_schema`] adds the length. A unit test holds
/// it against [`idempotency_key`].
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]+$";

/// The schema of an `Idempotency-Key`: [`idempotency_key`]'s rule.
pub fn idempotency_key_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
        .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
        .build()
}

/// Most items one order may have (`POST /api/orders`).
pub const MAX_ITEMS: usize = 100;

/// The longest `wait_ms` of `GET /orders/{id}`: the longest a read waits
/// for an order to be decided.
pub const MAX_WAIT_MS: u64 = 30_000;

/// The idempotency key of a request, from its `Idempotency-Key` header
/// values: none, or one value of 1 to 255 visible ASCII characters.
pub fn idempotency_key<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<&'a str>, String> {
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("must be sent once".to_owned());
    }
    if value.is_empty() || value.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters long"));
    }
    match std::str::from_utf8(value) {
        Ok(key) if value.iter().all(u8::is_ascii_graphic) => Ok(Some(key)),
        _ => Err("must be visible ASCII characters only".to_owned()),
    }
}

/// `order.order-created.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    /// How this order's flow runs, fixed when it is placed (see [`is_choreographed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaStyle>,
}

/// `order.order-approved.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderApproved {
    pub order_id: Uuid,
}

/// `order.order-rejected.v1`: every participant undoes what it did for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order_id: Uuid,
    pub reason: RejectionReason,
    /// How this order's flow runs (see [`is_choreographed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaStyle>,
}

/// `order.order-cancel-requested.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelRequested {
    pub order_id: Uuid,
    /// How this order's flow runs (see [`is_choreographed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaStyle>,
}

/// Whether the order event `data` (the body of an `OrderCreated`,
/// `OrderRejected` or `OrderCancelRequested`) is about an order whose flow
/// runs choreographed, reading only its `saga` field.
///
/// An order's style is the one recorded in its events, which the order
/// service fixes when the order is placed; for an order placed before
/// orders recorded it, `configured` (the reader's configured style, as
/// then) stands in. A body without a readable `saga` counts as
/// choreographed, so that the handler sees it and reports what is wrong
/// with it.
///
/// Every service subscribes to the inputs of both styles (commands and
/// replies, and each other's events), whatever style it is configured with,
/// so that changing the deployment's style across a restart leaves no order
/// in flight without the messages it waits for: an order placed under one
/// style finishes in it. A participant acts on an order event only for an
/// order that runs choreographed; an orchestrated order's saga sends it
/// commands instead, and for such orders the participants' outcomes are
/// replies, so their events only ever exist for choreographed orders.
pub fn is_choreographed(data: &serde_json::Value, configured: SagaStyle) -> bool {
    #[derive(Deserialize)]
    struct Flow {
        #[serde(default)]
        saga: Option<SagaStyle>,
    }
    Flow::deserialize(data).map_or(true, |flow| flow.saga.unwrap_or(configured) == SagaStyle::Choreography)
}

/// `order.order-cancelled.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
}

message_types! {
    OrderCreated => "order.order-created.v1",
    OrderApproved => "order.order-approved.v1",
    OrderRejected => "order.order-rejected.v1",
    OrderCancelRequested => "order.order-cancel-requested.v1",
    OrderCancelled => "order.order-cancelled.v1",
}

/// `POST /api/orders` (the gateway's public body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateOrder {
    pub customer_id: Uuid,
    /// 1 to 100 items.
    #[schema(schema_with = items_schema)]
    pub items: Vec<Quantity>,
}

/// 1 to [`MAX_ITEMS`] items.
fn items_schema() -> Array {
    ArrayBuilder::new()
        .items(RefOr::<Schema>::Ref(utoipa::openapi::Ref::from_schema_name("Quantity")))
        .min_items(Some(1))
        .max_items(Some(MAX_ITEMS))
        .build()
}

/// `POST /orders` on the order service: the gateway has priced the items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
}

/// The 202 answer to an order or a cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub status: OrderStatus,
}

/// `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<RejectionReason>,
    pub items: Vec<OrderLine>,
    #[schema(value_type = i64)]
    pub total: Money,
    /// When the order was placed and when it last changed status (RFC 3339).
    #[schema(schema_with = date_time_schema)]
    pub created_at: String,
    #[schema(schema_with = date_time_schema)]
    pub updated_at: String,
}

/// An RFC 3339 date-time, in UTC with microseconds.
fn date_time_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .build()
}

/// One event of an order's stream (`GET /orders/{id}/events`): the audit
/// trail event sourcing keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderEvent {
    /// The event's CloudEvents type, e.g. `order.order-created.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its place in the order's stream, from 1.
    pub version: u64,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// Its body.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The parameters of `GET /orders/{id}`: `wait_ms` (wait for a decision),
/// or one of `version` and `as_of` (the order as it was).
pub const ORDER_PARAMETERS: [&str; 3] = ["wait_ms", "version", "as_of"];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[&[u8]]) -> Result<Option<String>, String> {
        idempotency_key(values.iter().copied()).map(|k| k.map(str::to_owned))
    }

    #[test]
    fn an_idempotency_key_is_one_value_of_1_to_255_visible_ascii_characters() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[b"order-1"]), Ok(Some("order-1".to_owned())));
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN);
        assert_eq!(key(&[longest.as_bytes()]), Ok(Some(longest.clone())));
        let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
        for bad in [&b""[..], too_long.as_bytes(), b"two words", b"tab\there", "caf\u{e9}".as_bytes(), b"\xff\xfe"] {
            assert!(key(&[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(key(&[b"a", b"a"]), Err("must be sent once".to_owned()));
    }

    #[test]
    fn the_key_schema_says_what_idempotency_key_says() {
        let pattern = regex::Regex::new(IDEMPOTENCY_KEY_PATTERN).unwrap();
        let schema = serde_json::to_value(idempotency_key_schema()).unwrap();
        let max = schema["maxLength"].as_u64().unwrap() as usize;
        let fits = |key: &str| pattern.is_match(key) && (1..=max).contains(&key.chars().count());
        let every_char = (0u8..=0x7F).map(char::from).chain(['é']).map(|c| format!("k{c}"));
        for candidate in every_char.chain(["".into(), "k".repeat(255), "k".repeat(256)]) {
            assert_eq!(fits(&candidate), key(&[candidate.as_bytes()]).is_ok(), "{candidate:?}");
        }
    }
}
