//! Which addresses the shipping service accepts and delivers to:
//!
//! - a replicated address holds no NUL in any part (PostgreSQL refuses it
//!   in text), reported with the part's path in the customer event
//!   (`customer.address.city`);
//! - a shipment to a blocked country (`Config::blocked_countries`, compared
//!   without regard to case or surrounding whitespace) fails with
//!   `UNDELIVERABLE`.

use contracts::Address;

use crate::error::ShippingError;

/// Checks an address from a customer event before it is replicated.
pub(crate) fn check_address(a: &Address) -> Result<(), ShippingError> {
    for (field, value) in
        [("line1", &a.line1), ("city", &a.city), ("postal_code", &a.postal_code), ("country", &a.country)]
    {
        if value.contains('\0') {
            return Err(ShippingError::invalid(format!("customer.address.{field}"), "must not contain NUL"));
        }
    }
    Ok(())
}

/// Whether `country` is one of `blocked_countries`.
pub(crate) fn is_blocked(blocked_countries: &[String], country: &str) -> bool {
    blocked_countries.iter().any(|c| c.trim().eq_ignore_ascii_case(country.trim()))
}
