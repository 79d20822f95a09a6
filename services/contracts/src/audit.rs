//! The audit service: reconciliation of the other services' facts (see
//! `polis-audit`); it owns only the record of the repairs it sent.

pub const SERVICE: &str = "audit";
