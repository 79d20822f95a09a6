//! The payment service's rule: a customer's open exposure (its `AUTHORIZED`
//! and `CAPTURED` payments) plus the amount asked for must stay within its
//! credit limit. Whether the simulated provider then accepts is `provider`'s.

use contracts::Money;

/// Whether a customer with `exposure` open and `credit_limit` may be
/// charged `amount` more.
pub(crate) fn within_credit_limit(exposure: Money, amount: Money, credit_limit: Money) -> bool {
    // An overflowing sum is certainly over any limit.
    exposure.checked_add(amount).is_some_and(|total| total <= credit_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_itself_is_within_and_an_overflow_is_over() {
        assert!(within_credit_limit(700, 300, 1_000));
        assert!(!within_credit_limit(700, 301, 1_000));
        assert!(!within_credit_limit(Money::MAX, 1, Money::MAX));
    }
}
