//! Calling the shop's HTTP APIs in-process: the gateway (as a user does)
//! and each service's admin lists (to check invariants), from the CLI's
//! demo and from tests.

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// An HTTP API reachable in-process (a router, no socket).
#[derive(Debug, Clone)]
pub struct Endpoint {
    router: Router,
}

impl Endpoint {
    pub fn local(router: Router) -> Self {
        Self { router }
    }

    /// Sends a request; returns the status and the raw body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
        let mut request = Request::builder().method(method.clone()).uri(path);
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(body)?)
            }
            None => Body::empty(),
        };
        let request = request.body(body).with_context(|| format!("building {method} {path}"))?;
        let response = self.router.clone().oneshot(request).await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.with_context(|| format!("reading {method} {path}"))?;
        Ok((status, bytes.to_bytes()))
    }

    /// Sends a request that must answer `expect`; decodes its JSON body.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        expect: StatusCode,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        if status != expect {
            anyhow::bail!("{method} {path} answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the answer of {method} {path}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::GET, path, None::<&()>, StatusCode::OK).await
    }
}
