//! What a running node has reached, for the process that embeds it: the binary's upgrader
//! gates a release on trial on these milestones (registered, first reconcile pass done, the
//! API answering over the bus) and publishes its own status here for `zos.admin.diag.health`.

use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use crate::ledger::NodeLedger;

/// Milestones of one node run; they only ever move forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The node id once registered (0 before).
    pub node_id: u32,
    /// The node's twin once registered (0 before).
    pub twin_id: u32,
    /// The deployments stored at start were all re-provisioned (the job queue drained once).
    pub reconciled: bool,
    /// What the node's API answered to `zos.system.version` when called over the relay like a
    /// client calls it (`None` until it answered).
    pub api_version: Option<String>,
}

#[derive(Debug)]
struct Inner {
    tx: watch::Sender<Milestones>,
    ledger: Mutex<Option<NodeLedger>>,
    upgrade: RwLock<Option<Value>>,
}

/// A shared handle on a node run's milestones. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Inner>);

impl Default for Progress {
    fn default() -> Self {
        Progress(Arc::new(Inner {
            tx: watch::channel(Milestones::default()).0,
            ledger: Mutex::new(None),
            upgrade: RwLock::new(None),
        }))
    }
}

impl Progress {
    /// The milestones now, and each change after.
    pub fn subscribe(&self) -> watch::Receiver<Milestones> {
        self.0.tx.subscribe()
    }
    /// The milestones now.
    pub fn get(&self) -> Milestones {
        self.0.tx.borrow().clone()
    }
    /// The node is registered; `ledger` signs as the node (what it reports goes through it).
    pub fn registered(&self, node_id: u32, twin_id: u32, ledger: NodeLedger) {
        *self.0.ledger.lock().expect("progress ledger lock") = Some(ledger);
        self.0.tx.send_modify(|m| {
            m.node_id = node_id;
            m.twin_id = twin_id;
        });
    }
    /// The first reconcile pass is done.
    pub fn reconciled(&self) {
        self.0.tx.send_modify(|m| m.reconciled = true);
    }
    /// The API answered a client's `zos.system.version` with `version`.
    pub fn api_answered(&self, version: String) {
        self.0.tx.send_modify(|m| m.api_version = Some(version));
    }
    /// The node's ledger handle, once registered.
    pub fn ledger(&self) -> Option<NodeLedger> {
        self.0.ledger.lock().expect("progress ledger lock").clone()
    }
    /// Sets the upgrade section `zos.admin.diag.health` shows.
    pub fn set_upgrade(&self, v: Value) {
        *self.0.upgrade.write().expect("progress upgrade lock") = Some(v);
    }
    /// The upgrade section, if the embedder set one.
    pub fn upgrade(&self) -> Option<Value> {
        self.0
            .upgrade
            .read()
            .expect("progress upgrade lock")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn milestones_reach_every_subscriber() {
        let p = Progress::default();
        let mut rx = p.clone().subscribe();
        assert_eq!(p.get(), Milestones::default());
        p.reconciled();
        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().reconciled);
        p.api_answered("v2".into());
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().api_version.as_deref(), Some("v2"));
        assert!(p.ledger().is_none() && p.upgrade().is_none());
        p.set_upgrade(serde_json::json!({"running": "v2"}));
        assert_eq!(p.upgrade().unwrap()["running"], "v2");
    }
}
