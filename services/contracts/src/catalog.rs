//! The catalog service: products with a price.

use serde::{Deserialize, Serialize};

use crate::{Money, message_types};

pub const SERVICE: &str = "catalog";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    pub sku: String,
    pub name: String,
    #[schema(value_type = i64)]
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

message_types! {
    ProductAdded => "catalog.product-added.v1",
    PriceChanged => "catalog.price-changed.v1",
}

/// `PUT /products/{sku}/price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePrice {
    pub price: Money,
}
