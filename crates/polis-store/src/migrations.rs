//! Embedded, versioned schema migrations for each backend.
//!
//! The migrations are compiled into the binary and applied at start-up; a
//! database already at the latest version is left untouched. Versions are
//! timestamps so a service's own migrations can share the same history table
//! (`_sqlx_migrations`) without colliding: both migrators ignore versions they
//! don't know.

use sqlx::migrate::Migrator;

/// The event store schema for SQLite.
pub fn sqlite() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
}

/// The event store schema for PostgreSQL.
pub fn postgres() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}
