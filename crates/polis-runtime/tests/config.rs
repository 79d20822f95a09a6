#![allow(clippy::unwrap_used)]
//! Configuration layering: defaults → TOML file → environment.
//!
//! Every test hands the loader its own variables (`env_vars`) instead of
//! setting process variables, so tests cannot see each other's; the one test
//! of the process environment uses a prefix nothing else sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use polis_runtime::{ConfigLoader, HttpOptions, Infra, RuntimeError};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OrdersConfig {
    http: HttpOptions,
    infra: Infra,
    orders: Orders,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Orders {
    max_lines: u32,
    currency: String,
    reference_prefix: String,
    express: bool,
}

impl Default for Orders {
    fn default() -> Self {
        Self { max_lines: 50, currency: "EUR".into(), reference_prefix: "ORD".into(), express: false }
    }
}

const NO_ENV: [(&str, &str); 0] = [];

struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file(contents: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.toml");
    std::fs::write(&path, contents).unwrap();
    ConfigFile { _dir: dir, path }
}

fn config_error(result: Result<OrdersConfig, RuntimeError>) -> String {
    match result {
        Err(RuntimeError::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn defaults_apply_without_file_or_environment() {
    let config: OrdersConfig = ConfigLoader::new().env_vars(NO_ENV).load().unwrap();
    assert_eq!(config.http, HttpOptions::default());
    assert_eq!(config.http.max_body_bytes, 64 * 1024);
    assert_eq!(config.infra, Infra::default());
    assert_eq!(config.orders.max_lines, 50);
    assert_eq!(config.orders.currency, "EUR");
}

#[test]
fn a_missing_optional_file_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config: OrdersConfig =
        ConfigLoader::new().file(dir.path().join("absent.toml")).env_vars(NO_ENV).load().unwrap();
    assert_eq!(config.orders.max_lines, 50);
}

#[test]
fn the_file_overrides_defaults_field_by_field() {
    let file = file(
        r#"
        [http]
        listen = "0.0.0.0:9000"
        idle_timeout_ms = 5000

        [orders]
        currency = "CHF"
        "#,
    );
    let config: OrdersConfig = ConfigLoader::new().file(&file.path).env_vars(NO_ENV).load().unwrap();
    assert_eq!(config.http.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(config.http.idle_timeout(), std::time::Duration::from_secs(5));
    assert_eq!(config.orders.currency, "CHF");
    // What the file leaves out keeps its default.
    assert_eq!(config.http.max_body_bytes, 64 * 1024);
    assert_eq!(config.http.header_read_timeout(), HttpOptions::default().header_read_timeout());
    assert_eq!(config.orders.max_lines, 50);
}

#[test]
fn the_environment_overrides_the_file() {
    let file = file(
        r#"
        [http]
        max_body_bytes = 2048

        [orders]
        currency = "CHF"
        max_lines = 10
        "#,
    );
    let env = [
        ("POLIS__ORDERS__MAX_LINES", "20"),
        ("POLIS__HTTP__MAX_BODY_BYTES", "4096"),
        ("polis__orders__express", "true"),
        // Strings stay strings, leading zeros and all.
        ("POLIS__ORDERS__REFERENCE_PREFIX", "007"),
        // Empty counts as unset.
        ("POLIS__ORDERS__CURRENCY", ""),
        // Not ours.
        ("POLISH__ORDERS__MAX_LINES", "99"),
        ("OTHER__ORDERS__MAX_LINES", "99"),
        ("PATH", "/usr/bin"),
    ];
    let config: OrdersConfig = ConfigLoader::new().file(&file.path).env_vars(env).load().unwrap();
    assert_eq!(config.orders.max_lines, 20);
    assert_eq!(config.http.max_body_bytes, 4096);
    assert!(config.orders.express);
    assert_eq!(config.orders.reference_prefix, "007");
    assert_eq!(config.orders.currency, "CHF");
}

#[test]
fn plain_infrastructure_variables_fill_the_infra_section() {
    let env = [
        ("POLIS_POSTGRES_URL", "postgres://orders:hunter2@db:5432/orders"),
        ("POLIS_NATS_URL", "nats://bus:4222"),
        ("POLIS_REDIS_URL", "redis://:s3cret@cache:6379"),
    ];
    let config: OrdersConfig = ConfigLoader::new().env_vars(env).load().unwrap();
    assert_eq!(config.infra.postgres_url.as_ref().unwrap().expose(), "postgres://orders:hunter2@db:5432/orders");
    assert_eq!(config.infra.nats_url.as_ref().unwrap().expose(), "nats://bus:4222");
    assert_eq!(config.infra.redis_url.as_ref().unwrap().expose(), "redis://:s3cret@cache:6379");

    // Nothing secret shows in Debug, however deep.
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2") && !debug.contains("s3cret") && !debug.contains("bus:4222"), "{debug}");
    assert!(debug.contains("[redacted]"));
}

#[test]
fn structured_variables_beat_plain_ones_and_both_beat_the_file() {
    let file = file(
        r#"
        [infra]
        postgres_url = "postgres://from-file/orders"
        nats_url = "nats://from-file:4222"
        "#,
    );
    let env = [
        ("POLIS_POSTGRES_URL", "postgres://plain/orders"),
        ("POLIS__INFRA__POSTGRES_URL", "postgres://structured/orders"),
        ("POLIS_NATS_URL", "nats://plain:4222"),
    ];
    let config: OrdersConfig = ConfigLoader::new().file(&file.path).env_vars(env).load().unwrap();
    assert_eq!(config.infra.postgres_url.unwrap().expose(), "postgres://structured/orders");
    assert_eq!(config.infra.nats_url.unwrap().expose(), "nats://plain:4222");
    assert!(config.infra.redis_url.is_none());
}

#[test]
fn a_custom_prefix_reads_only_its_own_variables() {
    let env = [
        ("SHOP__ORDERS__MAX_LINES", "7"),
        ("SHOP_POSTGRES_URL", "postgres://shop/orders"),
        ("POLIS__ORDERS__MAX_LINES", "99"),
        ("POLIS_POSTGRES_URL", "postgres://polis/orders"),
    ];
    let config: OrdersConfig = ConfigLoader::new().with_prefix("SHOP").env_vars(env).load().unwrap();
    assert_eq!(config.orders.max_lines, 7);
    assert_eq!(config.infra.postgres_url.unwrap().expose(), "postgres://shop/orders");
}

#[test]
fn the_process_environment_is_read_by_default() {
    // A prefix no environment sets: only defaults, through the real
    // `std::env` path.
    let prefix = format!("POLISRT{}", uuid::Uuid::now_v7().simple()).to_ascii_uppercase();
    let config: OrdersConfig = ConfigLoader::new().with_prefix(prefix).load().unwrap();
    assert_eq!(config.orders.max_lines, 50);
}

#[test]
fn a_required_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let message = config_error(ConfigLoader::new().required_file(&path).env_vars(NO_ENV).load());
    assert!(message.contains("absent.toml"), "{message}");
}

#[test]
fn a_broken_file_is_an_error_naming_it() {
    let file = file("[orders\nmax_lines = 3");
    let message = config_error(ConfigLoader::new().file(&file.path).env_vars(NO_ENV).load());
    assert!(message.contains("orders.toml"), "{message}");
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_the_key() {
    let message = config_error(ConfigLoader::new().env_vars([("POLIS__ORDERS__MAX_LINES", "many")]).load());
    assert!(message.contains("orders.max_lines"), "{message}");

    let file = file("[http]\nlisten = \"not an address\"");
    let message = config_error(ConfigLoader::new().file(&file.path).env_vars(NO_ENV).load());
    assert!(message.contains("http.listen"), "{message}");
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let message = config_error(ConfigLoader::new().env_vars([("POLIS__HTTP__MAX_BODY", "1")]).load());
    assert!(message.contains("max_body"), "{message}");
}

#[test]
fn the_infra_section_loads_alone() {
    let env = [("POLIS_REDIS_URL", "redis://cache:6379"), ("POLIS__ORDERS__MAX_LINES", "3")];
    let infra = ConfigLoader::new().env_vars(env).load_infra().unwrap();
    assert_eq!(infra.redis_url.unwrap().expose(), "redis://cache:6379");
    assert!(infra.postgres_url.is_none());
}
