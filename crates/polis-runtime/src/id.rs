//! Ids in requests: one UUID form, and [`PathId`], the extractor of a
//! route's id; and [`PathText`], a route's one path parameter as text (a
//! sku). A segment that is not UTF-8 once percent-decoded is a 400 problem
//! naming the parameter, for both.
//!
//! An id is accepted in exactly one form, the canonical hyphenated one
//! (`0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70`: 8-4-4-4-12 hex digits), its hex
//! digits in either case; answers always write it in lower case. The other
//! spellings the `uuid` crate reads (`urn:uuid:…`, `{…}`, 32 digits without
//! hyphens) are refused rather than taken as aliases: one resource, one
//! address, so caches, logs and links never see the same order under two
//! names. An id that is not in that form is a 400 problem naming the
//! parameter, not a 404: the request is malformed, nothing was looked up.

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::ApiError;

/// What a valid id looks like, as a problem's message says it.
pub const UUID_FORM: &str = "must be a UUID in its hyphenated form, 8-4-4-4-12 hex digits";

/// `text` as a UUID if it is one in the canonical hyphenated form (either case).
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    // Of the forms `Uuid::try_parse` reads, only the hyphenated one is 36
    // bytes long (simple: 32, braced: 38, URN: 45).
    (text.len() == 36).then(|| Uuid::try_parse(text).ok()).flatten()
}

/// The id in a route's one path parameter (`/orders/{id}`), in the canonical
/// form (see the module docs). Anything else is a 400 problem whose `errors`
/// name the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (name, value) = one_parameter(parts, state).await?;
        parse_uuid(&value).map(Self).ok_or_else(|| {
            ApiError::bad_request(format!("the path parameter `{name}` is not an id")).with_field_error(name, UUID_FORM)
        })
    }
}

/// The text of a route's one path parameter (`/products/{sku}`),
/// percent-decoded. Judging it is the handler's business; a segment that
/// does not decode to UTF-8 is a 400 problem whose `errors` name the
/// parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        one_parameter(parts, state).await.map(|(_, value)| Self(value))
    }
}

/// What a segment must be to be read at all.
const UTF8_FORM: &str = "must be UTF-8 once percent-decoded";

/// The name and decoded value of the route's one path parameter.
async fn one_parameter<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<(String, String), ApiError> {
    let params = match RawPathParams::from_request_parts(parts, state).await {
        Ok(params) => params,
        Err(RawPathParamsRejection::InvalidUtf8InPathParam(_)) => {
            // The rejection does not say which parameter; the route does.
            let name = parts.extensions.get::<MatchedPath>().and_then(|path| only_parameter(path.as_str()));
            let name = name.unwrap_or("path");
            return Err(ApiError::bad_request(format!(
                "the path parameter `{name}` is not UTF-8 once percent-decoded"
            ))
            .with_field_error(name, UTF8_FORM));
        }
        Err(rejection) => {
            return Err(ApiError::internal(format!("reading the path parameter: {}", rejection.body_text())));
        }
    };
    let mut params = params.iter();
    let (Some((name, value)), None) = (params.next(), params.next()) else {
        return Err(ApiError::internal("PathId and PathText are for routes with exactly one path parameter"));
    };
    Ok((name.to_owned(), value.to_owned()))
}

/// `id` in a route written `/orders/{id}/cancel`, if it has one parameter.
fn only_parameter(route: &str) -> Option<&str> {
    let (_, rest) = route.split_once('{')?;
    let (name, rest) = rest.split_once('}')?;
    (!rest.contains('{')).then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const ID: &str = "0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70";

    #[test]
    fn only_the_hyphenated_form_is_an_id() {
        let id = Uuid::parse_str(ID).unwrap();
        assert_eq!(parse_uuid(ID), Some(id));
        assert_eq!(parse_uuid(&ID.to_uppercase()), Some(id), "hex digits in either case");
        for alias in [
            format!("urn:uuid:{ID}"),
            format!("{{{ID}}}"),
            ID.replace('-', ""),
            format!(" {ID}"),
            ID.replacen('-', "+", 1),
            "nope".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse_uuid(&alias), None, "{alias}");
        }
    }

    async fn get_id(uri: &str) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route("/orders/{order_id}", get(|PathId(id): PathId| async move { id.to_string() }));
        let response = app.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into());
        (status, body)
    }

    #[tokio::test]
    async fn a_path_id_is_extracted_and_anything_else_is_a_400_naming_the_parameter() {
        assert_eq!(get_id(&format!("/orders/{}", ID.to_uppercase())).await, (StatusCode::OK, ID.into()));
        for bad in [
            "not-a-uuid",
            "urn:uuid:0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70",
            "%7B0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70%7D",
        ] {
            let (status, body) = get_id(&format!("/orders/{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(body["errors"][0]["field"], "order_id", "{bad}: {body}");
            assert!(body["detail"].as_str().unwrap().contains("`order_id`"), "{body}");
        }
        let (status, body) = get_id("/orders/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errors"][0]["field"], "order_id", "{body}");
    }

    #[tokio::test]
    async fn path_text_is_decoded_and_a_segment_that_does_not_decode_is_a_400_naming_it() {
        let app = Router::new().route("/products/{sku}/price", get(|PathText(sku): PathText| async move { sku }));
        let read = |uri: &'static str| {
            let app = app.clone();
            async move {
                let response = app.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        assert_eq!(read("/products/A%2FB%20%C3%A9/price").await, (StatusCode::OK, "A/B é".to_owned()));
        let (status, body) = read("/products/%C3/price").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["field"], "sku", "{body}");
    }

    #[test]
    fn the_parameter_is_found_in_the_route() {
        assert_eq!(only_parameter("/orders/{id}/cancel"), Some("id"));
        assert_eq!(only_parameter("/orders/{id}"), Some("id"));
        assert_eq!(only_parameter("/a/{x}/{y}"), None);
        assert_eq!(only_parameter("/orders"), None);
    }
}
