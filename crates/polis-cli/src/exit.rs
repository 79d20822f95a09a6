//! The exit statuses of `polis`, defined here and nowhere else, so that a
//! script can tell "the system is inconsistent" from "polis could not do its
//! job":
//!
//! - 0: the command did its job; for `demo`, `check` and `store-demo`,
//!   every invariant holds;
//! - 1: an operational error — it could not start, a bad configuration, a
//!   data directory in use or of the wrong mode, I/O, a server unreachable;
//!   nothing is known about the invariants;
//! - 2: a usage error: an argument clap cannot parse (clap's own status;
//!   a combination polis refuses after parsing is an operational error);
//! - 3: the run completed and its checks ran, but an invariant does not hold;
//! - 128 + N: `demo` stopped by signal N (130 for ctrl-c, 143 for SIGTERM).
//!   `up` and `serve` stop cleanly on those signals and exit with 0.

use std::process::ExitCode;

/// An operational error: see the module docs.
pub(crate) const OPERATIONAL_ERROR: u8 = 1;
/// A usage error, as clap reports it (`clap::Error::exit`).
const USAGE_ERROR: u8 = 2;
/// A completed run whose invariant checks failed.
const INVARIANT_VIOLATED: u8 = 3;
/// The shell's convention for a process ended by a signal: 128 + its number.
const SIGNALLED: u8 = 128;

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It did its job; every invariant it checked holds.
    Success,
    /// It ran to the end, and at least one invariant does not hold.
    InvariantViolated,
    /// It was stopped by this signal.
    Signalled(i32),
}

impl Outcome {
    /// The outcome of a run whose checks all hold, or do not.
    pub(crate) fn checked(all_invariants_hold: bool) -> Self {
        if all_invariants_hold { Self::Success } else { Self::InvariantViolated }
    }

    pub(crate) fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Self::Success => 0,
            Self::InvariantViolated => INVARIANT_VIOLATED,
            Self::Signalled(signal) => u8::try_from(signal).map_or(u8::MAX, |n| SIGNALLED.saturating_add(n)),
        })
    }
}

/// The statuses as `polis --help` lists them.
pub(crate) fn help() -> String {
    [
        "Exit status:".to_owned(),
        "  0      success; every invariant checked holds".to_owned(),
        format!(
            "  {OPERATIONAL_ERROR}      operational error: could not start, bad configuration, data directory in use, I/O, a \
             server unreachable"
        ),
        format!("  {USAGE_ERROR}      usage error: an argument clap cannot parse"),
        format!("  {INVARIANT_VIOLATED}      demo, check, store-demo: the run completed but an invariant does not hold"),
        format!("  {SIGNALLED}+N  demo interrupted by signal N (130 ctrl-c, 143 SIGTERM)"),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_own_status() {
        let codes = [
            Outcome::Success.code(),
            ExitCode::from(OPERATIONAL_ERROR),
            ExitCode::from(USAGE_ERROR),
            Outcome::InvariantViolated.code(),
            Outcome::Signalled(libc::SIGINT).code(),
            Outcome::Signalled(libc::SIGTERM).code(),
        ];
        let expected = [0, 1, 2, 3, 130, 143].map(ExitCode::from);
        assert_eq!(codes, expected);
        assert_eq!(Outcome::checked(true), Outcome::Success);
        assert_eq!(Outcome::checked(false), Outcome::InvariantViolated);
    }

    #[test]
    fn the_usage_status_is_clap_s() {
        use clap::Parser as _;
        let err = crate::Cli::try_parse_from(["polis", "demo", "--orders", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(USAGE_ERROR));
    }
}
