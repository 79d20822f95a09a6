//! The catalog service: products with a price.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

use crate::{Money, message_types};

pub const SERVICE: &str = "catalog";

/// Longest sku, in characters.
pub const MAX_SKU_CHARS: usize = 64;

/// Longest product name, in characters (a text people read, [`crate::text`]).
pub const MAX_NAME_CHARS: usize = 200;

/// The characters of a sku as a JSON Schema `pattern`; [`sku_schema`] adds
/// the length. A unit test holds it against [`is_sku`].
pub const SKU_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// What a valid sku is, as a problem's message says it.
pub const SKU_FORM: &str = "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'";

/// Whether `sku` is a well-formed sku: 1 to [`MAX_SKU_CHARS`] characters of
/// `A-Z a-z 0-9 - _`. A sku is an identifier (in paths, in message keys, in
/// every service that keeps something per sku), so nothing is trimmed or
/// folded, and this is the one rule every service checks it with.
pub fn is_sku(sku: &str) -> bool {
    (1..=MAX_SKU_CHARS).contains(&sku.len()) && sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The schema of a sku: [`is_sku`] as a schema.
pub fn sku_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_SKU_CHARS))
        .pattern(Some(SKU_PATTERN))
        .build()
}

/// The schema of a product's name: a text people read of at most [`MAX_NAME_CHARS`].
fn name_schema() -> Object {
    crate::text::schema(MAX_NAME_CHARS)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    #[schema(schema_with = sku_schema)]
    pub sku: String,
    #[schema(schema_with = name_schema)]
    pub name: String,
    /// Minor units; never negative.
    #[schema(value_type = i64, minimum = 0)]
    pub price: Money,
}

/// `catalog.product-added.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductAdded {
    pub product: Product,
}

/// `catalog.price-changed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChanged {
    pub sku: String,
    pub old_price: Money,
    pub new_price: Money,
}

/// `catalog.product-renamed.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRenamed {
    pub sku: String,
    pub old_name: String,
    pub new_name: String,
}

message_types! {
    ProductAdded => "catalog.product-added.v1",
    PriceChanged => "catalog.price-changed.v1",
    ProductRenamed => "catalog.product-renamed.v1",
}

/// `PATCH /products/{sku}`: a new name, a new price, or both; a field left
/// out is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = name_schema)]
    pub name: Option<String>,
    /// Minor units; never negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub price: Option<Money>,
}

/// `PUT /products/{sku}/price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePrice {
    pub price: Money,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_1_to_64_safe_ascii_characters() {
        for good in ["A", "sku-1_B", &"x".repeat(64)] {
            assert!(is_sku(good), "{good}");
        }
        for bad in ["", " A", "A B", "a b", "a/b", "a.b", "é", "sku\0", &"x".repeat(65)] {
            assert!(!is_sku(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_schema_says_what_is_sku_says() {
        let pattern = regex::Regex::new(SKU_PATTERN).unwrap();
        let schema = serde_json::to_value(sku_schema()).unwrap();
        let fits = |sku: &str| {
            let chars = sku.chars().count();
            pattern.is_match(sku)
                && schema["minLength"].as_u64().is_some_and(|min| chars as u64 >= min)
                && schema["maxLength"].as_u64().is_some_and(|max| chars as u64 <= max)
        };
        let every_char = (0u8..=0x7F).map(char::from).chain(['é', '\u{FF21}']).map(|c| format!("A{c}"));
        for sku in every_char.chain([String::new(), "A".into(), "x".repeat(64), "x".repeat(65)]) {
            assert_eq!(fits(&sku), is_sku(&sku), "{sku:?}");
        }
    }
}
