//! Hosting one service's background machinery: its relay (outbox → bus),
//! its scheduler (due scheduled messages → outbox) and its consumer (bus →
//! handlers, through the inbox). Everything stops when the [`Hosted`] drops.

use std::sync::Arc;

use polis_bus::{
    Consumer, ConsumerHandle, Relay, RelayHandle, RelayOptions, Scheduler, SchedulerHandle, SchedulerOptions,
};
use polis_core::{Bus, BusError, TransactionalStore};

/// Tuning shared by every hosted service.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub relay: RelayOptions,
    pub scheduler: SchedulerOptions,
}

/// A running service's relay, scheduler and consumer.
#[derive(Debug)]
pub struct Hosted {
    pub service: String,
    _relay: RelayHandle,
    _scheduler: SchedulerHandle,
    _consumer: Option<ConsumerHandle>,
}

/// Starts `store`'s relay and scheduler and `consumer`'s subscriptions on
/// `bus`. Without a consumer the service sends but never hears anything (a
/// service that never answers, for fault tests).
pub async fn host<S: TransactionalStore>(
    store: Arc<S>,
    bus: Arc<dyn Bus>,
    consumer: Option<Consumer<S>>,
    options: &HostOptions,
) -> Result<Hosted, BusError> {
    let service = store.service().to_owned();
    let consumer = match consumer {
        Some(consumer) => Some(Arc::new(consumer).spawn(bus.clone()).await?),
        None => None,
    };
    let relay = Relay::new(store.clone(), bus, options.relay.clone()).spawn();
    let scheduler = Scheduler::new(store, options.scheduler.clone()).spawn();
    Ok(Hosted { service, _relay: relay, _scheduler: scheduler, _consumer: consumer })
}
