//! Calling the shop's HTTP APIs: the gateway (as a user does) and each
//! service's admin lists (to check invariants), from the CLI's demo and
//! from tests. An [`Endpoint`] is either a router in this process (the
//! embedded deployment) or a base URL (the distributed one); callers cannot
//! tell the two apart.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use contracts::order::IDEMPOTENT_REPLAYED;
use http_body_util::BodyExt;
use polis_runtime::PageKey;
use polis_runtime::page::{DEFAULT_LIMIT, Page};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// How long a remote call may take, answer included. Generous: a page of an
/// admin list is up to a thousand items.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer: its status, body, and the headers the shop's clients read.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    /// `idempotent-replayed: true`: the answer repeats an earlier request's.
    pub replayed: bool,
    pub body: bytes::Bytes,
}

/// An HTTP API, reachable in-process (a router, no socket) or over HTTP.
#[derive(Debug, Clone)]
pub struct Endpoint {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Local(Router),
    /// The gateway's own client: pooled HTTP/1 connections, plain http.
    Remote(gateway::Upstream),
}

impl Endpoint {
    pub fn local(router: Router) -> Self {
        Self { kind: Kind::Local(router) }
    }

    /// The API behind a gateway's upstream (in-process or remote).
    pub fn upstream(upstream: gateway::Upstream) -> Self {
        Self { kind: Kind::Remote(upstream) }
    }

    /// An API at `base_url` (`http://host:port`, optionally with a path
    /// prefix). Fails if the URL is not plain http with a host.
    pub fn remote(base_url: &str) -> anyhow::Result<Self> {
        let upstream = gateway::Upstream::remote(base_url).with_context(|| format!("using {base_url}"))?;
        Ok(Self { kind: Kind::Remote(upstream) })
    }

    /// Sends a request; returns the status and the raw body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
        let answer = self.call_with(method, path, &[], body).await?;
        Ok((answer.status, answer.body))
    }

    /// [`Endpoint::call`] with more request headers (`name` in lowercase),
    /// answering with the headers the shop's clients look at.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<Answer> {
        let body = body.map(serde_json::to_vec).transpose()?.map(bytes::Bytes::from);
        match &self.kind {
            Kind::Local(router) => {
                let mut request = Request::builder().method(method.clone()).uri(path);
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                if body.is_some() {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                }
                let request = request
                    .body(body.map_or_else(Body::empty, Body::from))
                    .with_context(|| format!("building {method} {path}"))?;
                let response = router.clone().oneshot(request).await.with_context(|| format!("{method} {path}"))?;
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await.with_context(|| format!("reading {method} {path}"))?;
                Ok(Answer {
                    status: parts.status,
                    location: parts.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned),
                    replayed: parts.headers.get(IDEMPOTENT_REPLAYED).is_some_and(|v| v.as_bytes() == b"true"),
                    body: bytes.to_bytes(),
                })
            }
            Kind::Remote(upstream) => {
                let response = upstream
                    .call_with(method.clone(), path, body, None, headers, REMOTE_TIMEOUT)
                    .await
                    .with_context(|| format!("{method} {path}"))?;
                Ok(Answer {
                    status: response.status,
                    location: response.location.and_then(|v| v.to_str().ok().map(str::to_owned)),
                    replayed: response.replayed,
                    body: response.body,
                })
            }
        }
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

    /// Every item of a paginated list (`?limit=N&after=KEY`, see
    /// [`polis_runtime::Page`]), page by page; `key` is an item's key (an id,
    /// or a text key such as a sku).
    pub async fn get_all<T, K>(&self, path: &str, key: impl Fn(&T) -> K) -> anyhow::Result<Vec<T>>
    where
        T: DeserializeOwned,
        K: PageKey + std::fmt::Debug,
    {
        self.get_all_by(path, DEFAULT_LIMIT, key).await
    }

    /// [`Endpoint::get_all`] in pages of `limit` items.
    pub async fn get_all_by<T, K>(&self, path: &str, limit: usize, key: impl Fn(&T) -> K) -> anyhow::Result<Vec<T>>
    where
        T: DeserializeOwned,
        K: PageKey + std::fmt::Debug,
    {
        self.get_pages(path, Page::first(limit), key).await
    }

    /// The items of a paginated list whose key is greater than `after`
    /// (every one for `None`), page by page.
    pub async fn get_all_from<T, K>(
        &self,
        path: &str,
        after: Option<K>,
        key: impl Fn(&T) -> K,
    ) -> anyhow::Result<Vec<T>>
    where
        T: DeserializeOwned,
        K: PageKey + std::fmt::Debug,
    {
        self.get_pages(path, Page { after, limit: DEFAULT_LIMIT }, key).await
    }

    async fn get_pages<T, K>(&self, path: &str, first: Page<K>, key: impl Fn(&T) -> K) -> anyhow::Result<Vec<T>>
    where
        T: DeserializeOwned,
        K: PageKey + std::fmt::Debug,
    {
        let mut all = Vec::new();
        let mut page = Some(first);
        let separator = if path.contains('?') { '&' } else { '?' };
        while let Some(current) = page {
            let items: Vec<T> = self.get(&format!("{path}{separator}{}", current.query())).await?;
            page = current.next(items.len(), items.last().map(&key));
            if let Some(next) = &page
                && next.after <= current.after
            {
                anyhow::bail!("GET {path} does not page by key: a full page ended at {:?}", next.after);
            }
            all.extend(items);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::routing::get;
    use uuid::Uuid;

    use super::*;

    /// `get_all` follows the pages to the end, asking after each page's last key.
    #[tokio::test]
    async fn get_all_reads_every_page() {
        let keys: Arc<Vec<Uuid>> = Arc::new((0..2_500).map(|_| Uuid::now_v7()).collect());
        let requests = Arc::new(AtomicUsize::new(0));
        let list = |State((keys, requests)): State<(Arc<Vec<Uuid>>, Arc<AtomicUsize>)>, page: Page| async move {
            requests.fetch_add(1, Ordering::SeqCst);
            let page: Vec<Uuid> = keys.iter().filter(|k| **k > page.after_key()).take(page.limit).copied().collect();
            polis_runtime::Json(page)
        };
        let router = Router::new().route("/items", get(list)).with_state((keys.clone(), requests.clone()));
        let all = Endpoint::local(router).get_all("/items", |k: &Uuid| *k).await.unwrap();
        assert_eq!(all, *keys);
        assert_eq!(requests.load(Ordering::SeqCst), 3, "pages of 1,000, 1,000 and 500");
    }

    /// A list that ignores `after` would hand back the same full page for
    /// ever: `get_all` stops with an error instead.
    #[tokio::test]
    async fn get_all_refuses_a_list_that_does_not_page() {
        let keys: Vec<Uuid> = (0..DEFAULT_LIMIT).map(|_| Uuid::now_v7()).collect();
        let router = Router::new().route("/items", get(move || async move { polis_runtime::Json(keys.clone()) }));
        let error = Endpoint::local(router).get_all("/items", |k: &Uuid| *k).await.unwrap_err();
        assert!(error.to_string().contains("does not page by key"), "{error}");
    }
}
