//! Shared test support: store factories for both backends and a small
//! event-sourced aggregate to drive the repository with.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

use polis_core::{Aggregate, DomainEvent, NewEvent};
use polis_store::{PgEventStore, PgOptions, SqliteEventStore, SqliteOptions};
use serde::{Deserialize, Serialize};

/// Keeps whatever backs a store (a temp dir, a database) alive for a test.
pub type Guard = Box<dyn std::any::Any + Send>;

pub async fn sqlite() -> (Arc<SqliteEventStore>, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteOptions::new("test"))
        .await
        .expect("open sqlite store");
    (Arc::new(store), Box::new(dir))
}

pub async fn postgres() -> (Arc<PgEventStore>, Guard) {
    let db = polis_testkit::postgres().await;
    let store = PgEventStore::connect(db.url(), PgOptions::new("test")).await.expect("connect postgres store");
    (Arc::new(store), Box::new(db))
}

pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, serde_json::json!({ "n": n }))
}

/// A bank account: small, but with rules that can reject commands.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: i64,
    pub deposits: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    #[serde(rename = "account.opened")]
    Opened,
    /// v2 renamed `cents` to `amount`.
    #[serde(rename = "account.deposited")]
    Deposited { amount: i64 },
    #[serde(rename = "account.withdrawn")]
    Withdrawn { amount: i64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened => "account.opened",
            Self::Deposited { .. } => "account.deposited",
            Self::Withdrawn { .. } => "account.withdrawn",
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            Self::Deposited { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("account already open")]
    AlreadyOpen,
    #[error("account not open")]
    NotOpen,
    #[error("amount must be positive")]
    NonPositive,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: i64, requested: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match *command {
            AccountCommand::Open if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit(a) | AccountCommand::Withdraw(a) if a <= 0 => Err(AccountError::NonPositive),
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount > self.balance => {
                Err(AccountError::InsufficientFunds { balance: self.balance, requested: amount })
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }

    fn apply(mut self, event: &AccountEvent) -> Self {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
        self
    }
}

/// Upcasts `account.deposited` v1 (`{"cents": n}`) to v2 (`{"amount": n}`).
pub fn account_upcasters() -> polis_core::Upcasters {
    polis_core::Upcasters::new().register("account.deposited", 1, |mut data| {
        let cents = data.get_mut("cents").map(serde_json::Value::take).ok_or("missing field `cents`")?;
        Ok(serde_json::json!({ "amount": cents }))
    })
}
