//! The bank-account domain: one aggregate, two views.

use kafka_tower_streams::aggregate::{Aggregate, EventEnvelope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An account's state, as the aggregate sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) customer_id: Option<String>,
    pub(crate) balance: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Command {
    Open { customer_id: String },
    Deposit { amount: i64 },
    Withdraw { amount: i64 },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    Opened { customer_id: String },
    Deposited { amount: i64 },
    Withdrew { amount: i64 },
}

pub(crate) struct BankAccount;

impl Aggregate for BankAccount {
    type State = Account;
    type Command = Command;
    type Event = Event;

    fn decide(state: &Account, command: &Command) -> Result<Vec<Event>, String> {
        match command {
            Command::Open { customer_id } if state.customer_id.is_none() => {
                Ok(vec![Event::Opened {
                    customer_id: customer_id.clone(),
                }])
            }
            Command::Open { .. } => Err("account already open".into()),
            _ if state.customer_id.is_none() => Err("account not open".into()),
            Command::Deposit { amount } if *amount > 0 => {
                Ok(vec![Event::Deposited { amount: *amount }])
            }
            Command::Withdraw { amount } if *amount > 0 && *amount <= state.balance => {
                Ok(vec![Event::Withdrew { amount: *amount }])
            }
            Command::Withdraw { .. } => Err("insufficient funds or bad amount".into()),
            Command::Deposit { .. } => Err("bad amount".into()),
        }
    }

    fn apply(state: &mut Account, event: &Event) {
        match event {
            Event::Opened { customer_id } => state.customer_id = Some(customer_id.clone()),
            Event::Deposited { amount } => state.balance += amount,
            Event::Withdrew { amount } => state.balance -= amount,
        }
    }
}

/// The by-account view.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct AccountView {
    pub(crate) customer_id: Option<String>,
    pub(crate) balance: i64,
    pub(crate) version: u64,
}

pub(crate) fn fold_account(view: &mut AccountView, e: &EventEnvelope<Event>) {
    match &e.event {
        Event::Opened { customer_id } => view.customer_id = Some(customer_id.clone()),
        Event::Deposited { amount } => view.balance += amount,
        Event::Withdrew { amount } => view.balance -= amount,
    }
    view.version = e.version;
}

/// The by-customer view: every account of a customer and the total.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CustomerView {
    pub(crate) accounts: BTreeMap<String, i64>,
    pub(crate) total: i64,
}

pub(crate) fn fold_customer(view: &mut CustomerView, e: &EventEnvelope<Event>) {
    let delta = match &e.event {
        Event::Opened { .. } => 0,
        Event::Deposited { amount } => *amount,
        Event::Withdrew { amount } => -amount,
    };
    *view.accounts.entry(e.aggregate_id.clone()).or_insert(0) += delta;
    view.total += delta;
}
