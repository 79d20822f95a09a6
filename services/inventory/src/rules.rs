//! What a valid stock level and reservation request are. Every broken rule
//! is reported with its field (`items[1].quantity`):
//!
//! - a sku: the catalog's rule ([`contracts::catalog::is_sku`]);
//! - a sku's available quantity: 0 to [`MAX_QUANTITY`];
//! - a reservation's items: at least one, each quantity 1 to
//!   [`MAX_QUANTITY`], and at most [`MAX_QUANTITY`] of one sku in all.

use std::collections::BTreeMap;

use contracts::Quantity;

use crate::error::InventoryError;

pub use contracts::inventory::MAX_QUANTITY;

/// Checks a sku's form with the catalog's rule ([`contracts::catalog::is_sku`],
/// the one rule every service checks skus with): stock is kept only for
/// what can be a product, and a reservation naming anything else is a
/// malformed message. The message says what a sku must be.
pub fn check_sku(sku: &str) -> Result<(), &'static str> {
    if contracts::catalog::is_sku(sku) { Ok(()) } else { Err(contracts::catalog::SKU_FORM) }
}

/// Checks a sku's available quantity.
pub(crate) fn check_available(available: i64) -> Result<(), InventoryError> {
    if !(0..=MAX_QUANTITY).contains(&available) {
        return Err(InventoryError::invalid("available", format!("must be between 0 and {MAX_QUANTITY}")));
    }
    Ok(())
}

/// One item per sku (quantities of repeated skus added up), sorted by sku.
pub(crate) fn merge_items(items: &[Quantity]) -> Result<Vec<Quantity>, InventoryError> {
    if items.is_empty() {
        return Err(InventoryError::invalid("items", "must not be empty"));
    }
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        check_sku(&item.sku).map_err(|m| InventoryError::invalid(format!("items[{i}].sku"), m))?;
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(InventoryError::invalid(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        let total = merged.entry(&item.sku).or_default();
        *total = total
            .checked_add(item.quantity)
            .filter(|q| *q <= MAX_QUANTITY)
            .ok_or_else(|| InventoryError::invalid(format!("items[{i}].quantity"), "adds up to too much of one sku"))?;
    }
    Ok(merged.into_iter().map(|(sku, quantity)| Quantity { sku: sku.to_owned(), quantity }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64) -> Quantity {
        Quantity { sku: sku.into(), quantity }
    }

    #[test]
    fn items_are_merged_per_sku_and_sorted() {
        let merged = merge_items(&[item("b", 1), item("a", 2), item("b", 3)]).unwrap();
        assert_eq!(merged, [item("a", 2), item("b", 4)]);
    }

    #[test]
    fn bad_items_name_the_field() {
        let field = |items: &[Quantity]| match merge_items(items) {
            Err(InventoryError::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(field(&[]), "items");
        assert_eq!(field(&[item("a", 1), item("b", 0)]), "items[1].quantity");
        assert_eq!(field(&[item("a", -5)]), "items[0].quantity");
        assert_eq!(field(&[item("", 1)]), "items[0].sku");
        assert_eq!(field(&[item("a\0", 1)]), "items[0].sku");
        assert_eq!(field(&[item("a", MAX_QUANTITY), item("a", 1)]), "items[1].quantity");
    }

    #[test]
    fn skus_are_checked() {
        assert!(check_sku("SKU-0001").is_ok());
        assert!(check_sku(&"x".repeat(64)).is_ok());
        for bad in ["", " a", "a b", "a/b", &"x".repeat(65), "a\nb"] {
            assert_eq!(check_sku(bad), Err(contracts::catalog::SKU_FORM), "{bad:?}");
        }
    }
}
