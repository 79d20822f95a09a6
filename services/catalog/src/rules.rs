//! What a valid product is. Every broken rule is reported with its field:
//!
//! - `sku`: 1 to [`MAX_SKU_CHARS`] characters of `A-Z a-z 0-9 - _`; it is an
//!   identifier (in paths, in message keys), so nothing is trimmed or folded.
//!   The rule is the contracts' ([`contracts::catalog::is_sku`]), which the
//!   inventory and the gateway check too;
//! - `name`: 1 to [`MAX_NAME_CHARS`] characters, surrounding whitespace
//!   dropped, without control, bidirectional or zero-width characters
//!   ([`contracts::text`], the rule of every text people read);
//! - `price`: not negative (minor units).

use contracts::catalog::{Product, SKU_FORM, UpdateProduct};
use polis_runtime::Violations;

use crate::Error;

pub use contracts::catalog::{MAX_NAME_CHARS, MAX_SKU_CHARS, is_sku};

/// The product, normalized, if it breaks no rule.
pub fn product(mut product: Product) -> Result<Product, Error> {
    let trimmed = product.name.trim();
    if trimmed.len() != product.name.len() {
        product.name = trimmed.to_owned();
    }
    let mut report = Violations::new();
    report.check(is_sku(&product.sku), "sku", SKU_FORM);
    check_name(&mut report, &product.name);
    check_price(&mut report, product.price);
    finish(report, product)
}

/// A change of name and / or price, normalized, if it breaks no rule (a
/// change of nothing is one too, as for a customer).
pub fn update(mut update: UpdateProduct) -> Result<UpdateProduct, Error> {
    let mut report = Violations::new();
    if let Some(name) = &mut update.name {
        let trimmed = name.trim();
        if trimmed.len() != name.len() {
            *name = trimmed.to_owned();
        }
        check_name(&mut report, name);
    }
    if let Some(price) = update.price {
        check_price(&mut report, price);
    }
    finish(report, update)
}

fn check_name(report: &mut Violations, name: &str) {
    if name.is_empty() {
        report.add("name", "must not be empty");
    } else if name.chars().count() > MAX_NAME_CHARS {
        report.add("name", format!("must be at most {MAX_NAME_CHARS} characters"));
    } else if let Err(message) = contracts::text::check_visible(name) {
        report.add("name", message);
    }
}

/// The price, if it is one.
pub fn price(price: i64) -> Result<i64, Error> {
    let mut report = Violations::new();
    check_price(&mut report, price);
    finish(report, price)
}

fn check_price(report: &mut Violations, price: i64) {
    report.check(price >= 0, "price", "must not be negative");
}

fn finish<T>(report: Violations, value: T) -> Result<T, Error> {
    if report.is_empty() { Ok(value) } else { Err(Error::Invalid(report.errors().to_vec())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(result: Result<impl std::fmt::Debug, Error>) -> Vec<String> {
        match result {
            Err(Error::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let bad = Product { sku: "no spaces".into(), name: "  ".into(), price: -1 };
        assert_eq!(fields(product(bad)), ["sku", "name", "price"]);
        for hidden in ["tab\there", "Mug\u{202E}gnp.exe", "Mu\u{200B}g", "\u{FEFF}Mug"] {
            let bad = Product { sku: "A".into(), name: hidden.into(), price: 0 };
            assert_eq!(fields(product(bad)), ["name"], "{hidden:?}");
        }
        assert_eq!(fields(price(-1)), ["price"]);
        assert!(update(UpdateProduct::default()).is_ok());
        assert_eq!(fields(update(UpdateProduct { name: Some(" ".into()), price: Some(-5) })), ["name", "price"]);
    }

    #[test]
    fn a_name_is_trimmed() {
        let mug = product(Product { sku: "A".into(), name: " Mug ".into(), price: 0 }).unwrap();
        assert_eq!(mug.name, "Mug");
    }
}
