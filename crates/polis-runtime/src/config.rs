//! Layered configuration, and secrets that never print.
//!
//! A service describes its configuration as a serde struct and loads it with
//! [`ConfigLoader`]. Layers, later ones winning:
//!
//! 1. **defaults**: the struct's own `Default`, through `#[serde(default)]`
//!    (so defaults are typed and live next to the fields);
//! 2. **a TOML file**, if one is given (optional unless
//!    [`ConfigLoader::required_file`]);
//! 3. **`POLIS_POSTGRES_URL`, `POLIS_NATS_URL`, `POLIS_REDIS_URL`**: the
//!    plain variables every polis binary and test already uses, read into
//!    the shared `infra` section ([`Infra`]);
//! 4. **`POLIS__SECTION__KEY`** variables: double underscores separate the
//!    prefix, sections and key (`POLIS__HTTP__MAX_BODY_BYTES=1048576` sets
//!    `http.max_body_bytes`; single underscores stay part of a name). Names
//!    are case-insensitive. So `POLIS__INFRA__POSTGRES_URL` beats
//!    `POLIS_POSTGRES_URL`.
//!
//! An empty variable counts as unset. Values are strings that serde parses
//! for the field's type, so `"0123"` stays `"0123"` in a string field.
//!
//! A configuration struct with `#[serde(deny_unknown_fields)]` must have an
//! `infra` field: wherever `POLIS_POSTGRES_URL` is set (CI, the demo), the
//! loader fills `infra` whether the service asked for it or not.
//!
//! ```
//! use polis_runtime::config::{ConfigLoader, Infra};
//! use polis_runtime::HttpOptions;
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default)]
//! struct OrdersConfig {
//!     http: HttpOptions,
//!     infra: Infra,
//! }
//!
//! let config: OrdersConfig = ConfigLoader::new()
//!     .file("orders.toml")
//!     .env_vars([("POLIS__HTTP__MAX_BODY_BYTES", "1024"), ("POLIS_POSTGRES_URL", "postgres://u:pw@db/orders")])
//!     .load()?;
//! assert_eq!(config.http.max_body_bytes, 1024);
//! assert!(!format!("{config:?}").contains("pw"));
//! # Ok::<(), polis_runtime::RuntimeError>(())
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::RuntimeError;

/// The environment prefix of polis services.
pub const DEFAULT_PREFIX: &str = "POLIS";

/// The plain infrastructure variables (after `<PREFIX>_`) and the `infra`
/// keys they set.
const INFRA_VARIABLES: [(&str, &str); 3] =
    [("POSTGRES_URL", "postgres_url"), ("NATS_URL", "nats_url"), ("REDIS_URL", "redis_url")];

/// Loads a configuration struct from defaults, a file and the environment
/// (see the module docs).
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigLoader {
    prefix: String,
    file: Option<(PathBuf, bool)>,
    /// `None`: the process environment.
    env: Option<Vec<(String, String)>>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// Defaults and the process environment under `POLIS`.
    pub fn new() -> Self {
        Self { prefix: DEFAULT_PREFIX.to_owned(), file: None, env: None }
    }

    /// Reads `<prefix>__SECTION__KEY` and `<prefix>_POSTGRES_URL` (...)
    /// instead of `POLIS...`. ASCII letters, digits and inner underscores
    /// only.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Reads this TOML file if it exists.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some((path.into(), false));
        self
    }

    /// Reads this TOML file, failing if it does not exist.
    pub fn required_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some((path.into(), true));
        self
    }

    /// Uses these variables instead of the process environment: for tests
    /// (setting process variables is racy across test threads) and for
    /// callers that gather their environment themselves.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// Builds the layers and deserializes them into `T`.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, RuntimeError> {
        self.check_prefix()?;
        let structured_prefix = format!("{}__", self.prefix.to_ascii_uppercase());
        let mut structured = config::Map::new();
        let mut plain = config::Map::new();
        for (name, value) in self.environment()? {
            let upper = name.to_ascii_uppercase();
            if upper.starts_with(&structured_prefix) {
                structured.insert(name, value);
            } else if let Some(key) = self.infra_key(&upper) {
                plain.insert(format!("infra__{key}"), value);
            }
        }

        let mut builder = config::Config::builder();
        if let Some((path, required)) = &self.file {
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml).required(*required));
        }
        builder = builder
            .add_source(config::Environment::default().separator("__").ignore_empty(true).source(Some(plain)))
            .add_source(
                config::Environment::with_prefix(&self.prefix)
                    .prefix_separator("__")
                    .separator("__")
                    .ignore_empty(true)
                    .source(Some(structured)),
            );
        builder.build().and_then(config::Config::try_deserialize).map_err(|err| RuntimeError::Config(err.to_string()))
    }

    /// Only the `infra` section, for binaries without a configuration
    /// struct of their own; other sections present are ignored.
    pub fn load_infra(&self) -> Result<Infra, RuntimeError> {
        #[derive(Deserialize)]
        struct OnlyInfra {
            #[serde(default)]
            infra: Infra,
        }
        self.load::<OnlyInfra>().map(|only| only.infra)
    }

    fn check_prefix(&self) -> Result<(), RuntimeError> {
        let valid = !self.prefix.is_empty()
            && !self.prefix.starts_with('_')
            && !self.prefix.ends_with('_')
            && self.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(())
        } else {
            Err(RuntimeError::Config(format!(
                "invalid environment prefix {:?}: use ASCII letters, digits and inner underscores",
                self.prefix
            )))
        }
    }

    fn infra_key(&self, upper_name: &str) -> Option<&'static str> {
        let rest = upper_name.strip_prefix(&self.prefix.to_ascii_uppercase())?.strip_prefix('_')?;
        INFRA_VARIABLES.iter().find(|(variable, _)| *variable == rest).map(|(_, key)| *key)
    }

    /// The variables this loader may read. Only those are checked for UTF-8,
    /// so an unrelated odd variable cannot fail a service's start.
    fn environment(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        if let Some(vars) = &self.env {
            return Ok(vars.clone());
        }
        let structured_prefix = format!("{}__", self.prefix.to_ascii_uppercase());
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let upper = name.to_ascii_uppercase();
            if !upper.starts_with(&structured_prefix) && self.infra_key(&upper).is_none() {
                continue;
            }
            // The value may be a secret: name the variable, never the value.
            let value = value
                .into_string()
                .map_err(|_| RuntimeError::Config(format!("environment variable {name} is not valid UTF-8")))?;
            vars.push((name.to_owned(), value));
        }
        Ok(vars)
    }
}

/// The infrastructure a service may connect to: the `infra` section.
///
/// `None` means "not configured": the embedded deployment (SQLite and the
/// in-process bus) needs none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Infra {
    /// `POLIS_POSTGRES_URL`: the service's PostgreSQL database.
    pub postgres_url: Option<Secret<String>>,
    /// `POLIS_NATS_URL`: the NATS server (JetStream enabled).
    pub nats_url: Option<Secret<String>>,
    /// `POLIS_REDIS_URL`: the Redis server.
    pub redis_url: Option<Secret<String>>,
}

impl Infra {
    /// The `infra` section from a `POLIS` environment (no file).
    pub fn from_env() -> Result<Self, RuntimeError> {
        ConfigLoader::new().load_infra()
    }
}

/// A value that must not end up in logs: connection URLs with passwords,
/// tokens. `Debug` and `Display` print `[redacted]`; [`Secret::expose`] is
/// the one, greppable, way in. There is deliberately no `Serialize`.
///
/// It guards against printing, not against memory inspection (no zeroing).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value` so that it prints as `[redacted]`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself: hand it to the driver, never to a formatter.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret, for a driver that takes it by value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

/// A duration as settings hold it: whole milliseconds, rounded up, at
/// least 1 (a zero timeout would fail every call), saturating at
/// `u64::MAX`.
pub fn whole_millis(duration: std::time::Duration) -> std::num::NonZeroU64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    std::num::NonZeroU64::new(u64::try_from(millis).unwrap_or(u64::MAX)).unwrap_or(std::num::NonZeroU64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_formats_its_value() {
        let secret = Secret::new("postgres://app:hunter2@db/orders".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret([redacted]))");
        assert_eq!(secret.expose(), "postgres://app:hunter2@db/orders");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for prefix in ["", "_X", "X_", "a-b", "É"] {
            let err = ConfigLoader::new().with_prefix(prefix).env_vars(Vec::<(String, String)>::new()).load::<Infra>();
            assert!(matches!(err, Err(RuntimeError::Config(_))), "{prefix:?}");
        }
    }
}
