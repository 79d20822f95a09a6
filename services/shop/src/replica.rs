//! Where the shop's replicas bootstrap from: the customer service's
//! snapshot (`GET /customers/snapshot`), read through the same [`Upstream`]
//! the gateway uses — the service's router in the embedded deployment, its
//! HTTP address in the distributed one.

use std::time::Duration;

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use contracts::customer::SNAPSHOT_PATH;
use gateway::Upstream;
use polis_core::error::BoxError;
use polis_projection::{SnapshotPage, SnapshotSource};

/// How long one page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The customer service's snapshot, a page at a time (see the module docs).
#[derive(Debug, Clone)]
pub struct CustomerSnapshots {
    upstream: Upstream,
}

impl CustomerSnapshots {
    /// Reads the snapshot from the customer service at `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }
}

#[async_trait]
impl SnapshotSource for CustomerSnapshots {
    fn source(&self) -> &str {
        contracts::customer::SERVICE
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<SnapshotPage, BoxError> {
        let limit = limit.clamp(1, polis_runtime::page::MAX_LIMIT);
        // A cursor is a customer id the service gave: nothing to percent-encode.
        let path = match after {
            Some(after) => format!("{SNAPSHOT_PATH}?limit={limit}&after={after}"),
            None => format!("{SNAPSHOT_PATH}?limit={limit}"),
        };
        let response = self.upstream.call(Method::GET, &path, None, None, PAGE_TIMEOUT).await?;
        if response.status != StatusCode::OK {
            let body = String::from_utf8_lossy(&response.body);
            return Err(format!("the customer service answered {}: {}", response.status, body.trim()).into());
        }
        Ok(serde_json::from_slice(&response.body)?)
    }
}
