//! `GET /readyz` of the gateway: the readiness of every service behind it.
//!
//! The gateway can do its job when every business service can do its own:
//! it asks each one's `GET /readyz` at once (bounded by a second more than
//! `polis_runtime::ready::CHECK_TIMEOUT`) and reports them by service,
//! with the reason of each that is not ready (its own failed checks, or why
//! it could not be asked). Ready, 200; otherwise a 503 problem naming them.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use contracts::Service;
use polis_runtime::NoQuery;
use polis_runtime::ready::{CHECK_TIMEOUT, Check, READY_PATH, Report};

use crate::routes::{Gateway, MaybeRequestId, request_id};

/// How long a service gets to answer: its own checks take up to
/// `CHECK_TIMEOUT`, and its answer says which failed.
const ASK_TIMEOUT: std::time::Duration = CHECK_TIMEOUT.saturating_add(std::time::Duration::from_secs(1));

/// Asks every business service whether it is ready.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every service behind the gateway is ready: each one's database answers, \
            its bus is connected, its relay and consumer are not stalled.", body = crate::openapi::Readiness),
        (status = 503, description = "A service is not ready, or did not answer: the problem's `detail` names \
            each with its reason, and its `checks` member has every service's check.",
            content_type = "application/problem+json", body = crate::openapi::Problem),
    )
)]
pub(crate) async fn readyz(State(gateway): State<Gateway>, id: MaybeRequestId, _: NoQuery) -> Report {
    let request_id = request_id(&id).cloned();
    let asks = Service::BUSINESS.into_iter().map(|service| {
        let (gateway, request_id) = (gateway.clone(), request_id.clone());
        async move {
            let answer =
                gateway.upstream(service).call(Method::GET, READY_PATH, None, request_id.as_ref(), ASK_TIMEOUT).await;
            let check = match answer {
                Ok(response) if response.status == StatusCode::OK => Check::passed(),
                Ok(response) => Check::failed(reason(response.status, &response.body)),
                Err(error) => Check::failed(error_chain(&error)),
            };
            (service.as_str().to_owned(), check)
        }
    });
    let checks: BTreeMap<String, Check> = futures::future::join_all(asks).await.into_iter().collect();
    Report::new(Service::Gateway.as_str(), checks)
}

/// An error and its causes, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    std::iter::successors(Some(error), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// Why a service said it is not ready: its failed checks (`part: why; …`),
/// else its problem's `detail`, else the status.
fn reason(status: StatusCode, body: &[u8]) -> String {
    let problem = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    if let Ok(checks) = serde_json::from_value::<BTreeMap<String, Check>>(problem["checks"].clone()) {
        let report = Report::new("", checks);
        if !report.ready {
            return report.failures();
        }
    }
    problem["detail"].as_str().map_or_else(|| format!("answered {status}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_reason_is_its_failed_checks_or_its_problems_detail() {
        let body = br#"{"status":503,"detail":"payment is not ready: bus: down","checks":{"bus":{"ok":false,"error":"down"},"store":{"ok":true}}}"#;
        assert_eq!(reason(StatusCode::SERVICE_UNAVAILABLE, body), "bus: down");
        let body = br#"{"type":"about:blank","status":503,"detail":"this service is not running"}"#;
        assert_eq!(reason(StatusCode::SERVICE_UNAVAILABLE, body), "this service is not running");
        assert_eq!(reason(StatusCode::NOT_FOUND, b"<html>"), "answered 404 Not Found");
    }
}
