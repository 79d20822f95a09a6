//! Logging setup for every polis binary.
//!
//! One `fmt` subscriber on standard error, filtered by `RUST_LOG` (default
//! `info`, or the binary's own default), with ANSI colours only when
//! standard error is a terminal: a log redirected to a file (a supervised
//! service's) holds plain text. Installing
//! a global subscriber can happen once per process; a second call, or one
//! after something else installed a subscriber (another test in the same
//! binary), leaves it in place and succeeds, so tests can call it freely.

use std::env::VarError;

use tracing_subscriber::EnvFilter;

use crate::RuntimeError;

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the process-wide subscriber unless one is already installed.
///
/// An unparsable `RUST_LOG` is an error rather than a silent fallback: a
/// service that is not logging what its operator asked for should not start
/// quietly.
pub fn init_tracing() -> Result<(), RuntimeError> {
    init_tracing_with(DEFAULT_FILTER)
}

/// [`init_tracing`] with `default` as the filter when `RUST_LOG` is unset
/// or empty (a command-line tool's quieter default, say).
pub fn init_tracing_with(default: &str) -> Result<(), RuntimeError> {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV), default)?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if subscriber.try_init().is_err() {
        tracing::debug!("a tracing subscriber is already installed; keeping it");
    }
    Ok(())
}

fn filter(variable: Result<String, VarError>, default: &str) -> Result<EnvFilter, RuntimeError> {
    let directives = match variable {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(VarError::NotPresent) => default.to_owned(),
        Err(VarError::NotUnicode(_)) => {
            return Err(RuntimeError::LogFilter { value: String::new(), reason: "not valid UTF-8".to_owned() });
        }
    };
    EnvFilter::try_new(&directives)
        .map_err(|err| RuntimeError::LogFilter { value: directives, reason: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_or_empty_variable_means_info() {
        assert_eq!(filter(Err(VarError::NotPresent), DEFAULT_FILTER).unwrap().to_string(), "info");
        assert_eq!(filter(Ok("  ".into()), DEFAULT_FILTER).unwrap().to_string(), "info");
    }

    #[test]
    fn a_binarys_own_default_stands_in_for_an_unset_variable() {
        let quiet = filter(Err(VarError::NotPresent), "warn,polis=info").unwrap().to_string();
        assert!(quiet.contains("polis=info") && quiet.contains("warn"), "{quiet}");
        assert_eq!(filter(Ok("debug".into()), "warn,polis=info").unwrap().to_string(), "debug");
    }

    #[test]
    fn directives_are_taken_as_given() {
        let filter = filter(Ok("warn,polis_bus=debug".into()), DEFAULT_FILTER).unwrap().to_string();
        assert!(filter.contains("polis_bus=debug") && filter.contains("warn"), "{filter}");
    }

    #[test]
    fn an_invalid_filter_is_an_error_naming_it() {
        let err = filter(Ok("polis=loud".into()), DEFAULT_FILTER).unwrap_err();
        assert!(err.to_string().contains("polis=loud"), "{err}");
        assert!(matches!(
            filter(Err(VarError::NotUnicode("x".into())), DEFAULT_FILTER),
            Err(RuntimeError::LogFilter { .. })
        ));
    }
}
