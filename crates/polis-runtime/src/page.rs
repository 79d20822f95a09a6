//! Keyset pagination for list endpoints: `?limit=N&after=KEY`.
//!
//! A list answers at most `limit` items (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]) in key order, starting after `after` when given. A client
//! reads everything by asking again after the last key it got, until a page
//! comes back shorter than its limit. A page's memory stays bounded however
//! large the table grows. Pages are read one after another, not from one
//! snapshot: a row written meanwhile with a key below the cursor is not seen
//! by that pass (the demo's checks read again until their invariants
//! converge on a quiet system).
//!
//! The rules, the same on every list of the shop:
//!
//! - `limit` is a whole number from 1 to [`MAX_LIMIT`]; `after` is a key of
//!   the list's kind ([`PageKey`]: a UUID in its canonical form, or a text
//!   key such as a sku). A bad or empty value is a 422 problem naming the
//!   parameter; nothing is clamped or guessed.
//! - Any other query parameter is a 400 problem naming it
//!   ([`crate::query`]): a list reads nothing else, and says so rather
//!   than answer as if a filter or an order it ignored had been applied.
//! - Values are read as written: keys are made of characters a query never
//!   needs to percent-encode, so an encoded one (`%2D`) is refused rather
//!   than misread.

use std::fmt::Display;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::ApiError;

/// How many items a page has when the request does not say.
pub const DEFAULT_LIMIT: usize = 1_000;

/// The most items one page may have.
pub const MAX_LIMIT: usize = 10_000;

/// The key a list is ordered by, as `after` carries it.
///
/// Implemented for [`Uuid`] (ids, in the canonical form of [`crate::id`])
/// and [`String`] (text keys such as skus: 1 to [`MAX_TEXT_KEY_CHARS`] of
/// `A-Z a-z 0-9 - . _ ~`, the characters a query carries as they are). The
/// default value sorts below every key, so one statement,
/// `WHERE key > $1 ORDER BY key LIMIT $2`, serves every page.
pub trait PageKey: Sized + Clone + Default + PartialOrd + Display {
    /// What a valid `after` looks like, as the 422 says it.
    const FORM: &'static str;

    /// The key written as `text`, if it is one.
    fn parse_key(text: &str) -> Option<Self>;
}

/// The longest text key, in characters.
pub const MAX_TEXT_KEY_CHARS: usize = 255;

/// A text key's characters as a JSON Schema `pattern` (the length is
/// [`MAX_TEXT_KEY_CHARS`]), for documents that describe `after`; a unit test
/// holds it against [`PageKey::parse_key`].
pub const TEXT_KEY_PATTERN: &str = "^[A-Za-z0-9._~-]+$";

/// The query parameters a page is read from.
pub const PARAMETERS: [&str; 2] = ["limit", "after"];

impl PageKey for Uuid {
    const FORM: &'static str = crate::id::UUID_FORM;

    fn parse_key(text: &str) -> Option<Self> {
        crate::id::parse_uuid(text)
    }
}

impl PageKey for u64 {
    const FORM: &'static str = "must be a whole number (a position, such as a stream version)";

    fn parse_key(text: &str) -> Option<Self> {
        // Digits only: no sign, no spaces, nothing `parse` would forgive.
        (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    }
}

impl PageKey for String {
    const FORM: &'static str = "must be 1 to 255 characters of A-Z, a-z, 0-9, '-', '.', '_' and '~'";

    fn parse_key(text: &str) -> Option<Self> {
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        ((1..=MAX_TEXT_KEY_CHARS).contains(&text.len()) && text.bytes().all(unreserved)).then(|| text.to_owned())
    }
}

/// A `limit` as a query gives it: a whole number from 1 to [`MAX_LIMIT`],
/// else a 422 problem naming `limit`. For lists whose key is not a
/// [`PageKey`], or that read more parameters than [`Page`] does.
pub fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| ApiError::validation("limit", format!("must be a whole number from 1 to {MAX_LIMIT}")))
}

/// A page of a list keyed by `K`: the extractor for `?limit=N&after=KEY`.
/// A bad value is a 422 problem naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<K = Uuid> {
    /// Only items whose key is greater.
    pub after: Option<K>,
    /// At most this many items.
    pub limit: usize,
}

impl<K: PageKey> Page<K> {
    /// The first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The key to list after: `after`, or for the first page the default
    /// key, which sorts below every other (the nil UUID, the empty text).
    pub fn after_key(&self) -> K {
        self.after.clone().unwrap_or_default()
    }

    /// `limit` as an SQL argument.
    pub fn sql_limit(&self) -> i64 {
        i64::try_from(self.limit).unwrap_or(i64::MAX)
    }

    /// Reads `limit` and `after` from a query string; any other parameter
    /// is a 400 problem naming it.
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        crate::query::refuse_unknown(query, &PARAMETERS)?;
        let mut page = Self::first(DEFAULT_LIMIT);
        // `?limit` alone is an empty limit, not no limit.
        for (name, value) in crate::query::pairs(query) {
            match name {
                "limit" => page.limit = parse_limit(value)?,
                "after" => {
                    page.after = Some(K::parse_key(value).ok_or_else(|| ApiError::validation("after", K::FORM))?)
                }
                _ => {}
            }
        }
        Ok(page)
    }

    /// The query string asking for this page (keys need no encoding, see [`PageKey`]).
    pub fn query(&self) -> String {
        match &self.after {
            Some(after) => format!("limit={}&after={after}", self.limit),
            None => format!("limit={}", self.limit),
        }
    }

    /// The page after one that ended with `last`, if a page of `received`
    /// items means there may be more.
    pub fn next(&self, received: usize, last: Option<K>) -> Option<Self> {
        (received >= self.limit).then_some(Self { after: last, limit: self.limit }).filter(|p| p.after.is_some())
    }
}

impl<K: PageKey, S: Send + Sync> FromRequestParts<S> for Page<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_query(parts.uri.query())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refused<K: PageKey + std::fmt::Debug>(query: &str) -> String {
        let error = Page::<K>::from_query(Some(query)).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(error.errors().len(), 1, "{query}");
        error.errors()[0].field.clone()
    }

    #[test]
    fn reads_limit_and_after_and_refuses_bad_values() {
        assert_eq!(Page::<Uuid>::from_query(None).unwrap(), Page::first(DEFAULT_LIMIT));
        assert_eq!(Page::<Uuid>::from_query(Some("")).unwrap(), Page::first(DEFAULT_LIMIT));
        let key = Uuid::now_v7();
        let page = Page::from_query(Some(&format!("limit=5&after={key}"))).unwrap();
        assert_eq!(page, Page { after: Some(key), limit: 5 });
        assert_eq!(Page::from_query(Some(&page.query())).unwrap(), page);
        assert_eq!(Page::<Uuid>::from_query(Some("limit=10000")).unwrap().limit, MAX_LIMIT);
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("limit=", "limit"),
            ("limit", "limit"),
            ("limit=1.5", "limit"),
            ("after=nope", "after"),
            ("after=", "after"),
            ("after=urn:uuid:0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70", "after"),
            ("after=0190a4b2%2D7d5e-7c3a-9f1e-2b3c4d5e6f70", "after"),
        ] {
            assert_eq!(refused::<Uuid>(query), field, "{query}");
        }
    }

    #[test]
    fn other_parameters_are_refused() {
        let error = Page::<Uuid>::from_query(Some("limit=5&sort=id")).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(error.errors()[0].field, "sort");
    }

    #[test]
    fn the_text_key_pattern_says_what_parse_key_says() {
        let pattern = regex::Regex::new(TEXT_KEY_PATTERN).unwrap();
        let fits = |key: &str| pattern.is_match(key) && (1..=MAX_TEXT_KEY_CHARS).contains(&key.chars().count());
        let every_char = (0u8..=0x7F).map(char::from).chain(['é']).map(|c| format!("k{c}"));
        for key in every_char.chain([String::new(), "k".repeat(255), "k".repeat(256)]) {
            assert_eq!(fits(&key), String::parse_key(&key).is_some(), "{key:?}");
        }
    }

    #[test]
    fn text_keys_are_unreserved_characters_and_the_empty_text_comes_first() {
        let page = Page::<String>::from_query(Some("limit=2&after=SKU-1_a.b~c")).unwrap();
        assert_eq!(page.after.as_deref(), Some("SKU-1_a.b~c"));
        assert_eq!(Page::from_query(Some(&page.query())).unwrap(), page);
        assert_eq!(Page::<String>::first(1).after_key(), "");
        for query in ["after=", "after=a%20b", "after=a b", "after=é", &format!("after={}", "x".repeat(256))] {
            assert_eq!(refused::<String>(query), "after", "{query}");
        }
    }

    #[test]
    fn a_full_page_asks_for_the_next() {
        let page = Page::first(2);
        let key = Uuid::now_v7();
        assert_eq!(page.next(2, Some(key)), Some(Page { after: Some(key), limit: 2 }));
        assert_eq!(page.next(1, Some(key)), None);
        assert_eq!(page.next(0, None), None);
        assert_eq!(Page::<Uuid>::first(1).after_key(), Uuid::nil());
    }
}
