//! One module per subcommand group.

pub mod deployment;
pub mod ledger;
pub mod zdb;
