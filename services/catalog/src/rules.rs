//! What a valid product is. Every broken rule is reported with its field:
//!
//! - `sku`: 1 to [`MAX_SKU_CHARS`] characters of `A-Z a-z 0-9 - _`; it is an
//!   identifier (in paths, in message keys), so nothing is trimmed or folded;
//! - `name`: 1 to [`MAX_NAME_CHARS`] characters without control characters,
//!   surrounding whitespace dropped;
//! - `price`: not negative (minor units).

use contracts::catalog::Product;
use polis_runtime::Violations;

use crate::Error;

/// Longest sku, in characters.
pub const MAX_SKU_CHARS: usize = 64;

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Whether `sku` is a well-formed sku.
pub fn is_sku(sku: &str) -> bool {
    (1..=MAX_SKU_CHARS).contains(&sku.len()) && sku.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The product, normalized, if it breaks no rule.
pub fn product(mut product: Product) -> Result<Product, Error> {
    let trimmed = product.name.trim();
    if trimmed.len() != product.name.len() {
        product.name = trimmed.to_owned();
    }
    let mut report = Violations::new();
    report.check(
        is_sku(&product.sku),
        "sku",
        format!("must be 1 to {MAX_SKU_CHARS} characters of A-Z, a-z, 0-9, '-' and '_'"),
    );
    let name = &product.name;
    if name.is_empty() {
        report.add("name", "must not be empty");
    } else if name.chars().count() > MAX_NAME_CHARS {
        report.add("name", format!("must be at most {MAX_NAME_CHARS} characters"));
    } else if name.chars().any(char::is_control) {
        report.add("name", "must not contain control characters");
    }
    check_price(&mut report, product.price);
    finish(report, product)
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
    fn skus_are_1_to_64_safe_ascii_characters() {
        for good in ["A", "sku-1_B", &"x".repeat(64)] {
            assert!(is_sku(good), "{good}");
        }
        for bad in ["", " A", "A B", "a/b", "a.b", "é", "sku\0", &"x".repeat(65)] {
            assert!(!is_sku(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let bad = Product { sku: "no spaces".into(), name: "  ".into(), price: -1 };
        assert_eq!(fields(product(bad)), ["sku", "name", "price"]);
        let bad = Product { sku: "A".into(), name: "tab\there".into(), price: 0 };
        assert_eq!(fields(product(bad)), ["name"]);
        assert_eq!(fields(price(-1)), ["price"]);
    }

    #[test]
    fn a_name_is_trimmed() {
        let mug = product(Product { sku: "A".into(), name: " Mug ".into(), price: 0 }).unwrap();
        assert_eq!(mug.name, "Mug");
    }
}
