//! One module per subcommand group.

pub mod client;
pub mod deployment;
pub mod diag;
pub mod flist;
pub mod gateway;
pub mod guest;
pub mod image;
pub mod key;
pub mod ledger;
pub mod mycelium;
pub mod network;
pub mod node;
pub mod rmb;
pub mod up;
pub mod up_image;
pub mod upgrade;
pub mod vm;
pub mod zdb;

/// Completes on SIGINT (Ctrl-C) or SIGTERM: how every long-running subcommand stops.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
