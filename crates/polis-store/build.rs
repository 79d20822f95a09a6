//! `sqlx::migrate!` embeds the migration files at compile time but cannot
//! tell cargo to watch the directory: without this, a newly added migration
//! is missing from the binary until something else triggers a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
