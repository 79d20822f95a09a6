//! Two instances of every service in distributed mode (ADR 0011), as
//! `polis serve` would run them twice: one database per service shared by
//! its instances, NATS with partitions, the gateway spreading calls over
//! both. Orders flow while one instance of every service dies (dropped
//! without a clean stop: leases left to expire, what it had pulled left
//! unacknowledged): every order ends terminal and every invariant holds.
//! Real processes killed with SIGKILL are `crates/polis-cli`'s business.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use contracts::SagaStyle;
use polis_runtime::Secret;
use polis_testkit::NatsServer;
use shop::Service;
use shop::client::Endpoint;
use shop::distributed::{DistributedConfig, Node};
use shop::workload::{self, Apis, Pacing};

const ORDERS: usize = 80;

async fn two_of_every_service_survive_losing_one(style: SagaStyle) {
    let postgres = polis_testkit::postgres().await;
    let nats = NatsServer::start().await.unwrap();
    let mut config = DistributedConfig::default();
    config.infra.postgres_url = Some(Secret::new(postgres.url().to_owned()));
    config.infra.nats_url = Some(Secret::new(nats.url()));
    config.database_prefix = postgres.name().to_owned();
    // Sixteen processes' pools on one test server, two tests at a time.
    config.max_connections = 4;
    config.saga = style;
    config.nats.partitions = 4;
    // What a dead instance had pulled comes back this soon.
    config.nats.ack_wait_ms = 2_000;
    // Long enough that an instance's death alone never times an order out.
    config.order.step_timeout_ms = 20_000;
    config.order.order_timeout_ms = 40_000;
    for service in Service::ALL {
        config.listen.insert(service, std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)));
    }
    let mut first = BTreeMap::new();
    let mut second = BTreeMap::new();
    for service in Service::BUSINESS {
        for (n, nodes) in [(0, &mut first), (1, &mut second)] {
            let mut config = config.clone();
            config.instance = Some(format!("{service}-{n}"));
            nodes.insert(service, Node::start(service, &config).await.unwrap());
        }
        let urls = format!("{},{}", first[&service].url(), second[&service].url());
        config.upstreams.insert(service, urls);
    }
    let gateway = Node::start(Service::Gateway, &config).await.unwrap();
    let apis = Apis::new(|service| match service {
        Service::Gateway => Endpoint::remote(&gateway.url()),
        service => Endpoint::remote(&config.upstream_url(service)),
    })
    .unwrap();

    let mut rng = workload::rng(17);
    let seeded = workload::seed(&apis, &workload::run_tag(), ORDERS, &mut rng).await.unwrap();
    let plan = workload::plan(&seeded, ORDERS, &mut rng);
    let placing = workload::place_in_background(&apis, plan, 8, Pacing::Accepted);
    placing.until_placed(ORDERS / 4, Duration::from_secs(120)).await.unwrap();
    // Both instances of the order service hold some of its partitions:
    // the owners of its live partition leases, with how many each holds,
    // and how many partition leases there are.
    let owners = async || {
        let url =
            format!("{}/{}", postgres.url().rsplit_once('/').unwrap().0, config.database(Service::Order).unwrap());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT owner, count(*) FROM polis_leases WHERE name LIKE 'partition:%' AND expires_at_us >= $1 \
             GROUP BY owner ORDER BY owner",
        )
        .bind(now)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM polis_leases WHERE name LIKE 'partition:%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (held, total)
    };
    let shared = polis_testkit::wait_for(Duration::from_secs(30), || async { owners().await.0.len() == 2 }).await;
    assert!(shared.is_ok(), "the order service's partitions are not shared: {:?}", owners().await);

    // The first instance of every service dies at once.
    drop(first);
    let placed = placing.finish().await.unwrap();
    assert_eq!(placed.len(), ORDERS);
    workload::wait_safe(&apis, &seeded, &placed, Duration::from_secs(180)).await.unwrap();
    // The dead instance's leases expire (5 s) and the survivor takes them,
    // whether or not its partitions had anything left to do.
    let survivor = polis_core::lease::instance_owner("order@order-1").to_string();
    let taken = polis_testkit::wait_for(Duration::from_secs(30), || async {
        let (held, total) = owners().await;
        held == [(survivor.clone(), total)]
    })
    .await;
    assert!(taken.is_ok(), "the survivor did not take every partition: {:?}", owners().await);

    gateway.shutdown().await.unwrap();
    for (_, node) in second.into_iter().rev() {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_with_two_instances_of_every_service_survives_losing_one() {
    two_of_every_service_survive_losing_one(SagaStyle::Orchestration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_with_two_instances_of_every_service_survives_losing_one() {
    two_of_every_service_survive_losing_one(SagaStyle::Choreography).await;
}
