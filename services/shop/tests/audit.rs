//! The auditor on the embedded shop under load: rows changed behind the
//! services' backs while orders flow — a rejected order's stock reserved
//! again (its reservation set back to RESERVED, the stock moved with it),
//! an approved order's shipment deleted, a customer's credit limit changed
//! in payment's replica, an approved order deleted from the order-history
//! view — are reported as drifts; the first is repaired through the outbox
//! (the inventory releases the stock, the reply confirms the repair), the
//! others, which have no safe repair, stay reported (the deleted shipment
//! twice: the view still shows it); nothing else is ever reported, in
//! flight or after.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use contracts::inventory::{Reservation, ReservationStatus};
use contracts::order::{OrderStatus, OrderView};
use polis_audit::{RepairState, Report};
use shop::client::Endpoint;
use shop::workload::{self, Apis, Pacing, Scope};
use shop::{Embedded, Service, ShopConfig};

const ORDERS: usize = 800;
const WAIT: Duration = Duration::from_secs(60);

fn sqlite(dir: &Path, service: Service) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(format!("{service}.db"))).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// The live generation's table behind the view `name` (`name_g<N>`).
fn live_table(conn: &rusqlite::Connection, name: &str) -> String {
    let sql = "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?1";
    let definition: String = conn.query_row(sql, [name], |row| row.get(0)).unwrap();
    let table = regex::Regex::new(&format!(r"\b{name}_g\d+\b")).unwrap();
    table.find(&definition).unwrap_or_else(|| panic!("no generation table in {definition}")).as_str().to_owned()
}

async fn report(apis: &Apis) -> Option<Report> {
    let (status, body) = apis.get(Service::Audit).call(axum::http::Method::GET, "/audit", None::<&()>).await.ok()?;
    (status == axum::http::StatusCode::OK).then(|| serde_json::from_slice(&body).unwrap())
}

/// The first order that `pick` accepts, once there is one.
async fn an_order(apis: &Apis, pick: impl Fn(&OrderView, Option<&Reservation>) -> bool) -> OrderView {
    let found = std::sync::Mutex::new(None);
    let waited = polis_testkit::wait_for(WAIT, || async {
        let orders: Vec<OrderView> = apis.get(Service::Order).get_all("/orders", |o: &OrderView| o.id).await.unwrap();
        let reservations: Vec<Reservation> =
            apis.get(Service::Inventory).get_all("/reservations", |r: &Reservation| r.order_id).await.unwrap();
        let order = orders.into_iter().find(|o| pick(o, reservations.iter().find(|r| r.order_id == o.id)));
        let some = order.is_some();
        *found.lock().unwrap() = order;
        some
    })
    .await;
    assert!(waited.is_ok(), "no such order appeared");
    found.into_inner().unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_behind_the_services_backs_is_reported_and_repaired_where_safe() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ShopConfig::default();
    config.audit.settle_ms = 1_500;
    config.audit.interval_ms = 250;
    let shop = Embedded::start(dir.path(), &config).await.unwrap();
    let http = polis_runtime::HttpOptions::default();
    let apis = Apis::new(|service| {
        Ok(match service {
            Service::Gateway => Endpoint::local(polis_runtime::with_standard_stack(shop.gateway(), &http)),
            service => Endpoint::local(shop.router(service)),
        })
    })
    .unwrap();

    let mut rng = workload::rng(5);
    let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let load = tokio::spawn({
        let apis = apis.clone();
        async move { workload::place_orders(&apis, &plan, 4, Pacing::Decided, &|_| {}).await.unwrap() }
    });

    // Under load: one approved order loses its shipment; one rejected
    // order's released stock is reserved again.
    let shipped = an_order(&apis, |o, _| o.status == OrderStatus::Approved).await;
    let released = an_order(&apis, |o, r| {
        o.status == OrderStatus::Rejected && r.is_some_and(|r| r.status == ReservationStatus::Released)
    })
    .await;
    let unseen = an_order(&apis, |o, _| o.status == OrderStatus::Approved && o.id != shipped.id).await;
    // All at once, so that each is seen before the repairable one is repaired.
    let deleted = sqlite(dir.path(), Service::Shipping)
        .execute("DELETE FROM shipments WHERE order_id = ?1", [shipped.id.to_string()])
        .unwrap();
    assert_eq!(deleted, 1);
    let mut inventory = sqlite(dir.path(), Service::Inventory);
    let tx = inventory.transaction().unwrap();
    for line in &released.items {
        tx.execute(
            "UPDATE stock SET available = available - ?1, reserved = reserved + ?1 WHERE sku = ?2",
            rusqlite::params![line.quantity, line.sku],
        )
        .unwrap();
    }
    tx.execute("UPDATE reservations SET status = 'RESERVED' WHERE order_id = ?1", [released.id.to_string()]).unwrap();
    tx.commit().unwrap();
    // The read side: a customer's credit limit changed in payment's replica,
    // another approved order deleted from the order-history view (each in
    // its projection's live generation table, behind the view of its name).
    let payment = sqlite(dir.path(), Service::Payment);
    let replica = live_table(&payment, "payment_customers");
    let changed: String = payment
        .query_row(&format!("UPDATE {replica} SET credit_limit = credit_limit + 1 WHERE id = (SELECT MIN(id) FROM {replica}) RETURNING id"), [], |row| row.get(0))
        .unwrap();
    let history = sqlite(dir.path(), Service::OrderHistory);
    let view = live_table(&history, "history_orders");
    let deleted = history.execute(&format!("DELETE FROM {view} WHERE order_id = ?1"), [unseen.id.to_string()]).unwrap();
    assert_eq!(deleted, 1);
    let injected = Instant::now();

    // Seen once it lasted the settle time; the reservation released again.
    let (lost, leftover) = (shipped.id.to_string(), released.id.to_string());
    let (changed_credit, unseen) = (format!("payment/{changed}"), unseen.id.to_string());
    // The repairable drift lasts from the pass that sends its repair to the
    // one after the repair's reply, which can be a single pass: it counts
    // as reported once a report showed it with its repair sent, or once the
    // auditor recorded that repair (it repairs only what it reported).
    let audit_db = sqlite(dir.path(), Service::Audit);
    let repair_recorded = || {
        audit_db
            .query_row(
                "SELECT count(*) FROM polis_audit_repairs WHERE kind = 'undone-order-keeps-reservation' AND subject = ?1",
                [&leftover],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|n| n > 0)
    };
    let seen = polis_testkit::wait_for(WAIT, || async {
        let Some(report) = report(&apis).await else { return false };
        report.drifts.iter().any(|d| d.kind == "approved-order-without-shipment" && d.subject == lost)
            && report.drifts.iter().any(|d| d.kind == "replica-differs" && d.subject == changed_credit)
            && report.drifts.iter().any(|d| d.kind == "view-missing-order" && d.subject == unseen)
            && (report.drifts.iter().any(|d| {
                d.kind == "undone-order-keeps-reservation"
                    && d.subject == leftover
                    && matches!(d.repair, RepairState::Sent { .. })
            }) || repair_recorded())
    })
    .await;
    assert!(seen.is_ok(), "the drifts were not reported: {:#?}", report(&apis).await);
    println!("every drift reported {:?} after they were made (settle 1.5 s, a pass every 0.25 s)", injected.elapsed());
    assert!(!load.is_finished(), "the orders were all placed before the drifts were seen: not under load");
    let repaired = polis_testkit::wait_for(WAIT, || async {
        let path = format!("/reservations/{}", released.id);
        apis.get(Service::Inventory)
            .get::<Reservation>(&path)
            .await
            .is_ok_and(|r| r.status == ReservationStatus::Released)
    })
    .await;
    assert!(repaired.is_ok(), "the leftover reservation was not released");

    let placed = load.await.unwrap();
    assert_eq!(placed.len(), ORDERS);
    workload::wait_terminal(&apis, Scope::Placed(&placed), WAIT, &|_| {}).await.unwrap();

    // In the end: what has no repair is left, unrepaired — the deleted
    // shipment (which the view, still showing it, now disagrees with too),
    // the changed replica, the order missing from the view; the repair was
    // sent once and its reply confirmed it.
    let settled = polis_testkit::wait_for(WAIT, || async {
        report(&apis).await.is_some_and(|r| r.drifts.len() == 4 && r.suspected.is_empty())
    })
    .await;
    let last = report(&apis).await.unwrap();
    assert!(settled.is_ok(), "other drift or findings: {last:#?}");
    let mut left: Vec<(&str, &str)> = last.drifts.iter().map(|d| (d.kind.as_str(), d.subject.as_str())).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        [
            ("approved-order-without-shipment", lost.as_str()),
            ("replica-differs", changed_credit.as_str()),
            ("view-differs", lost.as_str()),
            ("view-missing-order", unseen.as_str()),
        ]
    );
    assert_eq!(last.unrepaired(), 4);
    let repairs: Vec<(String, String, Option<i64>)> = sqlite(dir.path(), Service::Audit)
        .prepare("SELECT kind, subject, confirmed_at_us FROM polis_audit_repairs")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert_eq!((repairs[0].0.as_str(), repairs[0].1.as_str()), ("undone-order-keeps-reservation", leftover.as_str()));
    assert!(repairs[0].2.is_some(), "the release's reply did not confirm the repair");

    // The shop's own checks agree: stock is conserved again after the repair.
    let checks = workload::check(&apis, &seeded, Scope::Placed(&placed)).await.unwrap();
    let conserved = checks.iter().find(|c| c.name.starts_with("stock conserved")).unwrap();
    assert!(conserved.holds, "{conserved:?}");
    shop.shutdown().await;
}
