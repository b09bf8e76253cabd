//! One module per subcommand group.

pub mod client;
pub mod deployment;
pub mod key;
pub mod ledger;
pub mod node;
pub mod rmb;
pub mod up;
pub mod zdb;
