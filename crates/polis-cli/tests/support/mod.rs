//! What the CLI's process tests share: running the `polis` binary.

use std::process::Command;

/// `polis` without the caller's deployment settings (`POLIS_POSTGRES_URL`,
/// `POLIS__…`); the testkit's `POLIS_TEST_*` are kept.
pub(crate) fn polis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_polis"));
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("POLIS") && !upper.starts_with("POLIS_TEST_") {
            command.env_remove(name);
        }
    }
    command
}
