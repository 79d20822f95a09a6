//! Query strings: each route reads the parameters it knows and refuses the
//! rest.
//!
//! A parameter a route does not read is a 400 problem whose `errors` name
//! every unknown parameter, never silently ignored: a client that misspells
//! `limit` as `limt`, or sends `sort=price` to a list that has no order but
//! its key, learns at once that the server did not do what it asked.
//!
//! - [`NoQuery`] is the extractor of a route that reads no parameter;
//! - [`crate::Page`] reads `limit` and `after` and refuses the rest;
//! - [`refuse_unknown`] checks a query against the names a route reads, for
//!   routes with parameters of their own; [`pairs`] splits a query the way
//!   every one of them reads it.
//!
//! Names and values are read as written, without percent-decoding: every
//! parameter name and most values the services read are made of characters
//! a query carries as they are, so `%6Cimit` is an unknown parameter, not
//! `limit`. A value that may hold characters clients encode (a time's `:`
//! and `+`) is decoded by the route that reads it, with [`decode`].

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::ApiError;

/// The `name=value` pairs of `query`, in order. Empty pairs (`a=1&&b=2`,
/// a trailing `&`) are skipped; a name without `=` has the empty value.
pub fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// `value` with its `%XX` escapes decoded (`+` stays a plus: this is a URI
/// query, not a form); `None` if an escape is malformed or the result is
/// not UTF-8.
pub fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `Ok` if every parameter of `query` is one of `known`, else a 400 problem
/// naming each unknown parameter once (in `errors`, field = its name).
pub fn refuse_unknown(query: Option<&str>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = Vec::new();
    for (name, _) in pairs(query) {
        if !known.contains(&name) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    let Some(first) = unknown.first() else {
        return Ok(());
    };
    let reads = match known {
        [] => "this resource takes no query parameters".to_owned(),
        known => format!("this resource reads only {}", quoted(known)),
    };
    let detail = match unknown.len() {
        1 => format!("unknown query parameter `{first}`; {reads}"),
        _ => format!("unknown query parameters {}; {reads}", quoted(&unknown)),
    };
    let message = format!("is not a query parameter of this resource; {reads}");
    Err(unknown
        .iter()
        .fold(ApiError::bad_request(detail), |problem, name| problem.with_field_error(*name, message.clone())))
}

/// `a`, `` `a` and `b` ``, `` `a`, `b` and `c` ``.
fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The extractor of a route that reads no query parameter: any parameter
/// is a 400 problem naming it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        refuse_unknown(parts.uri.query(), &[]).map(|()| Self)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn fields(problem: &ApiError) -> Vec<&str> {
        problem.errors().iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn decode_reads_escapes_and_keeps_a_plus() {
        assert_eq!(decode("2026-12-05T10%3A00%3A00%2B01%3A00").as_deref(), Some("2026-12-05T10:00:00+01:00"));
        assert_eq!(decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode("caf%C3%A9").as_deref(), Some("café"));
        for bad in ["%", "%2", "%zz", "%C3"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn pairs_skip_empty_ones_and_read_a_bare_name_as_empty() {
        let read: Vec<_> = pairs(Some("a=1&&b&c=x=y&")).collect();
        assert_eq!(read, [("a", "1"), ("b", ""), ("c", "x=y")]);
        assert_eq!(pairs(None).count(), 0);
        assert_eq!(pairs(Some("")).count(), 0);
    }

    #[test]
    fn known_parameters_pass_and_unknown_ones_are_named_once() {
        assert!(refuse_unknown(None, &[]).is_ok());
        assert!(refuse_unknown(Some("&"), &[]).is_ok());
        assert!(refuse_unknown(Some("limit=5&after=x"), &["limit", "after"]).is_ok());
        let problem = refuse_unknown(Some("limit=5&sort=price&x&sort=name"), &["limit", "after"]).unwrap_err();
        assert_eq!(problem.status(), StatusCode::BAD_REQUEST);
        assert_eq!(fields(&problem), ["sort", "x"]);
        assert_eq!(
            problem.detail(),
            Some("unknown query parameters `sort` and `x`; this resource reads only `limit` and `after`")
        );
        let problem = refuse_unknown(Some("%6Cimit=5"), &["limit"]).unwrap_err();
        assert_eq!(fields(&problem), ["%6Cimit"]);
        let problem = refuse_unknown(Some("a=1"), &[]).unwrap_err();
        assert_eq!(problem.detail(), Some("unknown query parameter `a`; this resource takes no query parameters"));
    }
}
