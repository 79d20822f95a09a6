//! What a valid customer is.
//!
//! Input is normalized first (surrounding whitespace is dropped from every
//! text field), then checked; every broken rule is reported with its field's
//! path in the request body (`address.country`), so a client fixes them all in
//! one round trip:
//!
//! - `name`: 1 to [`MAX_TEXT_CHARS`] characters;
//! - `email`: shaped like an address (`local@domain.tld`), at most
//!   [`MAX_EMAIL_CHARS`] characters;
//! - `address.line1`, `address.city`, `address.postal_code`: 1 to
//!   [`MAX_TEXT_CHARS`] characters;
//! - `address.country`: an ISO 3166-1 alpha-2 code, two ASCII upper-case letters;
//! - `credit_limit`: not negative (minor units).
//!
//! No text may contain control, bidirectional or zero-width characters
//! ([`contracts::text`], the one rule of every text people read): they have
//! no place in a name or an address, they make one name display as another,
//! and PostgreSQL refuses NUL in text outright.

use contracts::Address;
use contracts::customer::{RegisterCustomer, UpdateCustomer};
use polis_runtime::Violations;

use crate::Error;

/// The limits are the contracts', which the OpenAPI document's schemas are built from too.
pub use contracts::customer::{MAX_EMAIL_CHARS, MAX_TEXT_CHARS};

/// The registration, normalized, if it breaks no rule.
pub fn registration(mut request: RegisterCustomer) -> Result<RegisterCustomer, Error> {
    trim(&mut request.name);
    trim(&mut request.email);
    trim_address(&mut request.address);
    let mut report = Violations::new();
    check_name(&mut report, &request.name);
    check_email(&mut report, &request.email);
    check_address(&mut report, &request.address);
    check_credit_limit(&mut report, request.credit_limit);
    finish(report, request)
}

/// The change, normalized, if none of its present fields breaks a rule.
pub fn update(mut change: UpdateCustomer) -> Result<UpdateCustomer, Error> {
    let mut report = Violations::new();
    if let Some(name) = &mut change.name {
        trim(name);
        check_name(&mut report, name);
    }
    if let Some(email) = &mut change.email {
        trim(email);
        check_email(&mut report, email);
    }
    if let Some(address) = &mut change.address {
        trim_address(address);
        check_address(&mut report, address);
    }
    if let Some(limit) = change.credit_limit {
        check_credit_limit(&mut report, limit);
    }
    finish(report, change)
}

/// The key under which emails are unique: emails differing only in case
/// belong to the same person in practice, whatever RFC 5321 allows.
pub fn email_key(email: &str) -> String {
    email.to_lowercase()
}

fn finish<T>(report: Violations, value: T) -> Result<T, Error> {
    if report.is_empty() { Ok(value) } else { Err(Error::Invalid(report.errors().to_vec())) }
}

fn trim(value: &mut String) {
    let trimmed = value.trim();
    if trimmed.len() != value.len() {
        *value = trimmed.to_owned();
    }
}

fn trim_address(address: &mut Address) {
    trim(&mut address.line1);
    trim(&mut address.city);
    trim(&mut address.postal_code);
    trim(&mut address.country);
}

fn check_name(report: &mut Violations, name: &str) {
    check_text(report, "name", name);
}

fn check_address(report: &mut Violations, address: &Address) {
    check_text(report, "address.line1", &address.line1);
    check_text(report, "address.city", &address.city);
    check_text(report, "address.postal_code", &address.postal_code);
    let country = &address.country;
    report.check(
        contracts::is_country_code(country),
        "address.country",
        "must be an ISO 3166-1 alpha-2 code: two upper-case letters such as FR",
    );
}

fn check_credit_limit(report: &mut Violations, limit: i64) {
    report.check(limit >= 0, "credit_limit", "must not be negative");
}

fn check_text(report: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        report.add(field, "must not be empty");
    } else if value.chars().count() > MAX_TEXT_CHARS {
        report.add(field, format!("must be at most {MAX_TEXT_CHARS} characters"));
    } else if let Err(message) = contracts::text::check_visible(value) {
        report.add(field, message);
    }
}

fn check_email(report: &mut Violations, email: &str) {
    if email.is_empty() {
        report.add("email", "must not be empty");
    } else if email.chars().count() > MAX_EMAIL_CHARS {
        report.add("email", format!("must be at most {MAX_EMAIL_CHARS} characters"));
    } else if let Err(message) = contracts::text::check_visible(email) {
        report.add("email", message);
    } else if !looks_like_email(email) {
        report.add("email", "must be an email address such as name@example.com");
    }
}

/// A deliberately plain shape check (`local@label.label`, no spaces or
/// control characters): full RFC 5322 syntax accepts addresses no mail
/// system delivers to, and only sending a mail proves one works anyway.
fn looks_like_email(email: &str) -> bool {
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else { return false };
    if local.is_empty() || domain.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> Address {
        Address {
            line1: "1 Rue de Rivoli".into(),
            city: "Paris".into(),
            postal_code: "75001".into(),
            country: "FR".into(),
        }
    }

    fn request() -> RegisterCustomer {
        RegisterCustomer { name: "Ada".into(), email: "ada@example.com".into(), address: address(), credit_limit: 0 }
    }

    fn fields(result: Result<impl std::fmt::Debug, Error>) -> Vec<String> {
        match result {
            Err(Error::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn emails_are_checked_for_their_shape() {
        for good in ["a@b.co", "first.last+tag@mail.example.org", "zoë@exämple.de", "x@sub-domain.example.com"] {
            assert!(looks_like_email(good), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@b.",
            "a@.b",
            "a@b..c",
            "a b@c.d",
            "a@b@c.d",
            "a@-b.c",
            "a@b_c.d",
        ] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }

    #[test]
    fn surrounding_whitespace_is_dropped() {
        let mut request = request();
        request.name = "  Ada Lovelace\t".into();
        request.address.country = " GB ".into();
        let request = registration(request).unwrap();
        assert_eq!((request.name.as_str(), request.address.country.as_str()), ("Ada Lovelace", "GB"));
    }

    #[test]
    fn every_broken_rule_is_reported_with_its_path() {
        let request = RegisterCustomer {
            name: " ".into(),
            email: "nope".into(),
            address: Address {
                line1: String::new(),
                city: "x".repeat(201),
                postal_code: "7\0".into(),
                country: "fr".into(),
            },
            credit_limit: -1,
        };
        assert_eq!(
            fields(registration(request)),
            [
                "name",
                "email",
                "address.line1",
                "address.city",
                "address.postal_code",
                "address.country",
                "credit_limit"
            ]
        );
    }

    #[test]
    fn a_name_may_have_200_characters_not_201() {
        let mut request = request();
        request.name = "é".repeat(200);
        assert!(registration(request.clone()).is_ok());
        request.name.push('é');
        assert_eq!(fields(registration(request)), ["name"]);
    }

    #[test]
    fn an_update_checks_only_what_it_changes() {
        assert!(update(UpdateCustomer::default()).is_ok());
        let change = UpdateCustomer { credit_limit: Some(-5), email: Some("x".into()), ..Default::default() };
        assert_eq!(fields(update(change)), ["email", "credit_limit"]);
    }

    #[test]
    fn email_keys_ignore_case() {
        assert_eq!(email_key("Ada@Example.COM"), email_key("ada@example.com"));
    }
}
