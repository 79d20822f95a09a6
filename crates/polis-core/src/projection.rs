//! Projections: events into read models.
//!
//! A [`Projection`] turns the events of a service's global log into rows of
//! its own tables (a read model, a materialized view, a replica). The
//! runtime that drives it (`polis-projection`) applies each batch of events
//! and stores the projection's checkpoint in **one** transaction, so a row
//! and the position it reflects commit together: effects exactly once,
//! nothing to drift.
//!
//! A read model is built in *generations*: each generation has its own
//! tables ([`Generation::table`]) and its own checkpoint, and readers see
//! the live generation through a view named after each table. A new version
//! of a projection, or a rebuild, builds a new generation beside the live
//! one and switches the views over in one transaction once it has caught up,
//! so no reader ever sees a half-built read model.

use async_trait::async_trait;

use crate::envelope::RecordedEvent;
use crate::error::StoreError;

/// One generation of a projection's read model: its tables are the
/// projection's table names with the generation's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Generation(u32);

impl Generation {
    /// The generation numbered `n` (the first is 1).
    pub fn new(n: u32) -> Self {
        Self(n)
    }

    /// Its number.
    pub fn number(self) -> u32 {
        self.0
    }

    /// The name of table `base` in this generation: `base_g<n>`. Readers
    /// query `base` itself, a view of the live generation's table.
    pub fn table(self, base: &str) -> String {
        format!("{base}_g{}", self.0)
    }
}

/// A read model fed by events, inside transactions of type `Tx`.
///
/// `apply` must be deterministic given the events (a rebuild replays them
/// all) and must only touch the generation's tables: the runtime commits
/// its effects with the checkpoint, and rolls both back together.
#[async_trait]
pub trait Projection<Tx: Send>: Send + Sync + 'static {
    /// The projection's name: the key of its checkpoints and lease.
    fn name(&self) -> &str;

    /// The version of the read model's shape and logic. Raising it builds a
    /// new generation beside the live one (blue/green) and cuts over to it
    /// once it has caught up.
    fn version(&self) -> u32;

    /// The base names of the tables the projection owns. Each generation
    /// has its own copy ([`Generation::table`]); readers see the live one
    /// through a view with the base name. Plain lowercase SQL identifiers.
    fn tables(&self) -> &[&'static str];

    /// Creates the generation's (empty) tables and their indexes.
    async fn create(&self, tx: &mut Tx, generation: Generation) -> Result<(), StoreError>;

    /// Whether the projection wants `event` at all; the others are skipped
    /// (the checkpoint still moves past them). Everything by default.
    fn wants(&self, event: &RecordedEvent) -> bool {
        let _ = event;
        true
    }

    /// Applies one event to the generation's tables.
    async fn apply(&self, tx: &mut Tx, generation: Generation, event: &RecordedEvent) -> Result<(), StoreError>;

    /// Called once per batch, in its transaction, after
    /// [`apply`](Self::apply) ran for each event of it the projection
    /// [`wants`](Self::wants) (`events`, in log order): for what only the
    /// batch as a whole decides, such as a bookmark of the last event seen
    /// per source, written once instead of once per event. Nothing by
    /// default.
    async fn applied(&self, tx: &mut Tx, generation: Generation, events: &[&RecordedEvent]) -> Result<(), StoreError> {
        let _ = (tx, generation, events);
        Ok(())
    }
}
