//! The one list of the shop's processes. Every assembly is built from it:
//! the embedded shop, the distributed processes and their supervisor, the
//! gateway's upstreams, the configuration's per-service sections. Adding a
//! service is one variant here (its name and default port) and one arm
//! where the shop opens it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One process of the shop: a business service with a database of its own,
/// or the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Customer,
    Catalog,
    Inventory,
    Payment,
    Shipping,
    Order,
    OrderHistory,
    Audit,
    Gateway,
}

impl Service {
    /// Every process, business services first and the gateway last (the
    /// order they start in; they stop in reverse).
    pub const ALL: [Service; 9] = [
        Service::Customer,
        Service::Catalog,
        Service::Inventory,
        Service::Payment,
        Service::Shipping,
        Service::Order,
        Service::OrderHistory,
        Service::Audit,
        Service::Gateway,
    ];

    /// The business services, each with a database of its own.
    pub const BUSINESS: [Service; 8] = [
        Service::Customer,
        Service::Catalog,
        Service::Inventory,
        Service::Payment,
        Service::Shipping,
        Service::Order,
        Service::OrderHistory,
        Service::Audit,
    ];

    /// The name used in messages, database names, commands and variables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => crate::customer::SERVICE,
            Self::Catalog => crate::catalog::SERVICE,
            Self::Inventory => crate::inventory::SERVICE,
            Self::Payment => crate::payment::SERVICE,
            Self::Shipping => crate::shipping::SERVICE,
            Self::Order => crate::order::SERVICE,
            Self::OrderHistory => crate::order_history::SERVICE,
            Self::Audit => crate::audit::SERVICE,
            Self::Gateway => "gateway",
        }
    }

    /// The name as an identifier (`-` written `_`): in database names and
    /// environment variables (`POLIS__LISTEN__ORDER_HISTORY`).
    pub fn ident(self) -> String {
        self.as_str().replace('-', "_")
    }

    /// Whether this process owns a database (every one but the gateway).
    pub fn has_database(self) -> bool {
        self != Self::Gateway
    }

    /// The port the process listens on unless configured otherwise: the
    /// gateway on 8080, the services from 8081 in the order of [`Service::ALL`].
    pub fn default_port(self) -> u16 {
        match self {
            Self::Gateway => 8080,
            Self::Customer => 8081,
            Self::Catalog => 8082,
            Self::Inventory => 8083,
            Self::Payment => 8084,
            Self::Shipping => 8085,
            Self::Order => 8086,
            Self::OrderHistory => 8087,
            Self::Audit => 8088,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Service::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownService(pub String);

impl fmt::Display for UnknownService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Service::ALL.iter().map(|s| s.as_str()).collect();
        write!(f, "unknown service {:?} (expected one of {})", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownService {}

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        // Configuration keys come from environment variables, where `-` cannot be.
        Self::ALL
            .into_iter()
            .find(|service| service.as_str() == name || service.ident() == name)
            .ok_or_else(|| UnknownService(name.to_owned()))
    }
}

impl Serialize for Service {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for service in Service::ALL {
            assert_eq!(service.as_str().parse::<Service>().unwrap(), service);
            assert_eq!(service.ident().parse::<Service>().unwrap(), service);
            let json = serde_json::to_string(&service).unwrap();
            assert_eq!(serde_json::from_str::<Service>(&json).unwrap(), service);
        }
        let err = "billing".parse::<Service>().unwrap_err().to_string();
        assert!(err.contains("\"billing\"") && err.contains("gateway"), "{err}");
        assert!(serde_json::from_str::<Service>("\"billing\"").is_err());
    }

    #[test]
    fn every_process_has_a_port_of_its_own() {
        let mut ports: Vec<_> = Service::ALL.iter().map(|s| s.default_port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Service::ALL.len());
        assert!(Service::BUSINESS.iter().all(|s| s.has_database()) && !Service::Gateway.has_database());
    }
}
