//! Ids in requests: one UUID form, and [`PathId`], the extractor of a
//! route's id.
//!
//! An id is accepted in exactly one form, the canonical hyphenated one
//! (`0190a4b2-7d5e-7c3a-9f1e-2b3c4d5e6f70`: 8-4-4-4-12 hex digits), its hex
//! digits in either case; answers always write it in lower case. The other
//! spellings the `uuid` crate reads (`urn:uuid:…`, `{…}`, 32 digits without
//! hyphens) are refused rather than taken as aliases: one resource, one
//! address, so caches, logs and links never see the same order under two
//! names. An id that is not in that form is a 400 problem naming the
//! parameter, not a 404: the request is malformed, nothing was looked up.

use axum::extract::{FromRequestParts, RawPathParams};
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
        // A segment that does not decode (invalid UTF-8) is no id either.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
        let mut params = params.iter();
        let (Some((name, value)), None) = (params.next(), params.next()) else {
            return Err(ApiError::internal("PathId is for routes with exactly one path parameter"));
        };
        parse_uuid(value).map(Self).ok_or_else(|| {
            ApiError::bad_request(format!("the path parameter `{name}` is not an id")).with_field_error(name, UUID_FORM)
        })
    }
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
    }
}
