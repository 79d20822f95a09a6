//! What a request may ask of the view: the rules of
//! [`contracts::order_history::ViewQuery`], which the gateway checks too,
//! plus paging.

use std::time::Duration;

use contracts::order::OrderStatus;
use contracts::order_history::{QueryError, ViewQuery};
use polis_runtime::{ApiError, Page};
use uuid::Uuid;

pub use contracts::order_history::MAX_WAIT_MS;

/// The query of `GET /customers/{id}/orders`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerOrdersQuery {
    /// `limit` and `after`.
    pub page: Page,
    /// `status`: only orders in this status.
    pub status: Option<OrderStatus>,
    /// `order` and `wait_ms`: wait until the view shows this order.
    pub wait: Option<(Uuid, Duration)>,
}

impl CustomerOrdersQuery {
    /// Reads the query; an unknown parameter is a 400, a bad value a 422,
    /// both naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        polis_runtime::query::refuse_unknown(query, &contracts::order_history::PARAMETERS)?;
        let (view, paging) = ViewQuery::parse(query).map_err(problem)?;
        let page = Page::from_query(Some(&paging.join("&")))?;
        Ok(Self { page, status: view.status, wait: view.wait.map(|(id, ms)| (id, Duration::from_millis(ms))) })
    }
}

/// A bad parameter as a problem.
pub fn problem(error: QueryError) -> ApiError {
    match error {
        QueryError::Unknown(name) => ApiError::bad_request(format!(
            "unknown query parameter `{name}` (expected limit, after, status, order, wait_ms)"
        )),
        QueryError::Invalid(name, message) => ApiError::validation(name, message),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refused(query: &str) -> (u16, String) {
        let error = CustomerOrdersQuery::parse(Some(query)).unwrap_err();
        let field = error.errors().first().map(|e| e.field.clone()).unwrap_or_default();
        (error.status().as_u16(), field)
    }

    #[test]
    fn reads_every_parameter_and_names_the_bad_ones() {
        let id = Uuid::now_v7();
        let query =
            CustomerOrdersQuery::parse(Some(&format!("status=APPROVED&limit=5&order={id}&wait_ms=250"))).unwrap();
        assert_eq!(query.status, Some(OrderStatus::Approved));
        assert_eq!(query.page.limit, 5);
        assert_eq!(query.wait, Some((id, Duration::from_millis(250))));
        assert_eq!(CustomerOrdersQuery::parse(None).unwrap().status, None);
        assert_eq!(refused("status=approved"), (422, "status".into()));
        // `wait_ms` bounds a wait for `order`; `order` alone waits the default.
        assert_eq!(CustomerOrdersQuery::parse(Some("wait_ms=5")).unwrap().wait, None);
        let default = Duration::from_millis(contracts::order_history::DEFAULT_WAIT_MS);
        assert_eq!(CustomerOrdersQuery::parse(Some(&format!("order={id}"))).unwrap().wait, Some((id, default)));
        assert_eq!(refused(&format!("order={id}&wait_ms=10001")), (422, "wait_ms".into()));
        assert_eq!(refused("order=nope&wait_ms=1"), (422, "order".into()));
        assert_eq!(refused(&format!("order={}&wait_ms=1", id.simple())), (422, "order".into()));
        assert_eq!(refused("limit=0"), (422, "limit".into()));
        assert_eq!(refused("sort=id").0, 400);
    }
}
