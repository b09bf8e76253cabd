//! `zos deployment …`: challenge, hash, sign and check deployment documents.

use clap::Subcommand;

/// Deployment document tools.
#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {}

/// Runs a deployment subcommand.
pub fn run(cmd: DeploymentCmd) -> anyhow::Result<()> {
    match cmd {}
}
