//! Keyset pagination for list endpoints: `?limit=N&after=KEY`.
//!
//! A list answers at most `limit` items (default [`Page::DEFAULT_LIMIT`], at
//! most [`Page::MAX_LIMIT`]) in key order, starting after `after` when given.
//! A client reads everything by asking again after the last key it got,
//! until a page comes back shorter than its limit. A page's memory stays
//! bounded however large the table grows. Pages are read one after another,
//! not from one snapshot: a row written meanwhile with a key below the
//! cursor is not seen by that pass (the demo's checks read again until their
//! invariants converge on a quiet system).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::ApiError;

/// A page of a list keyed by UUID: the extractor for `?limit=N&after=UUID`.
/// A bad value is a 422 problem naming the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Only items whose key is greater.
    pub after: Option<Uuid>,
    /// At most this many items.
    pub limit: usize,
}

impl Page {
    /// The page size when the query has no `limit`.
    pub const DEFAULT_LIMIT: usize = 1_000;
    /// The largest `limit` accepted; above it (or below 1) is a 422.
    pub const MAX_LIMIT: usize = 10_000;

    /// The first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The key to list after: `after`, or for the first page the nil UUID,
    /// which sorts below every other (as a UUID and as its text), so one
    /// statement, `WHERE key > $1 ORDER BY key LIMIT $2`, serves every page.
    pub fn after_key(&self) -> Uuid {
        self.after.unwrap_or(Uuid::nil())
    }

    /// `limit` as an SQL argument.
    pub fn sql_limit(&self) -> i64 {
        i64::try_from(self.limit).unwrap_or(i64::MAX)
    }

    /// Reads `limit` and `after` from a query string; other parameters are left alone.
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let mut page = Self::first(Self::DEFAULT_LIMIT);
        for (name, value) in query.into_iter().flat_map(|q| q.split('&')).filter_map(|pair| pair.split_once('=')) {
            match name {
                "limit" => {
                    page.limit = value.parse().ok().filter(|n| (1..=Self::MAX_LIMIT).contains(n)).ok_or_else(|| {
                        ApiError::validation("limit", format!("must be a whole number from 1 to {}", Self::MAX_LIMIT))
                    })?;
                }
                "after" => {
                    let key = Uuid::parse_str(value).map_err(|_| ApiError::validation("after", "must be a UUID"))?;
                    page.after = Some(key);
                }
                _ => {}
            }
        }
        Ok(page)
    }

    /// The query string asking for this page.
    pub fn query(&self) -> String {
        match self.after {
            Some(after) => format!("limit={}&after={after}", self.limit),
            None => format!("limit={}", self.limit),
        }
    }

    /// The page after one that ended with `last`, if a page of `received`
    /// items means there may be more.
    pub fn next(&self, received: usize, last: Option<Uuid>) -> Option<Self> {
        (received >= self.limit).then_some(Self { after: last, limit: self.limit }).filter(|p| p.after.is_some())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_query(parts.uri.query())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_limit_and_after_and_refuses_bad_values() {
        assert_eq!(Page::from_query(None).unwrap(), Page::first(Page::DEFAULT_LIMIT));
        let key = Uuid::now_v7();
        let page = Page::from_query(Some(&format!("x=1&limit=5&after={key}"))).unwrap();
        assert_eq!(page, Page { after: Some(key), limit: 5 });
        assert_eq!(Page::from_query(Some(&page.query())).unwrap(), page);
        for (query, field) in
            [("limit=0", "limit"), ("limit=10001", "limit"), ("limit=-1", "limit"), ("after=x", "after")]
        {
            let error = Page::from_query(Some(query)).unwrap_err();
            assert_eq!(error.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{query}");
            assert!(format!("{error:?}").contains(field), "{query}: {error:?}");
        }
    }

    #[test]
    fn a_full_page_asks_for_the_next() {
        let page = Page::first(2);
        let key = Uuid::now_v7();
        assert_eq!(page.next(2, Some(key)), Some(Page { after: Some(key), limit: 2 }));
        assert_eq!(page.next(1, Some(key)), None);
        assert_eq!(page.next(0, None), None);
    }
}
