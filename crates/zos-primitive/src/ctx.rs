//! [`WorkloadCtx`]: what a primitive may know about the workload it handles, and typed access
//! to the workloads it refers to (a VM's disks, volumes, network and public IP).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use zos_types::data::WorkloadData;
use zos_types::{Deployment, ResultState, Workload, WorkloadType, workload_id};

use crate::primitive::PrimitiveError;
use crate::secret::NodeSecret;

/// Everything a primitive may know about the workload it handles.
#[derive(Debug, Clone)]
pub struct WorkloadCtx {
    /// Owner twin.
    pub twin: u32,
    /// Node contract id.
    pub contract_id: u64,
    /// `"<twin>-<contract>-<name>"`.
    pub workload_id: String,
    /// This node's id on the ledger (0 while unregistered).
    pub node_id: u32,
    /// The deployment as currently stored, with the latest result of every workload. Prefer
    /// [`WorkloadCtx::sibling`], which decodes data and results.
    pub deployment: Arc<Deployment>,
    /// The twin's other deployments, for sharable workloads (see [`WorkloadCtx::shared`]).
    twin_deployments: Arc<[Deployment]>,
    secret: NodeSecret,
}

/// A workload the handled one refers to, with its latest result, decoded on demand.
#[derive(Debug, Clone, Copy)]
pub struct SiblingRef<'a> {
    twin: u32,
    contract_id: u64,
    workload: &'a Workload,
}

impl<'a> SiblingRef<'a> {
    /// Its name in its deployment.
    pub fn name(&self) -> &'a str {
        &self.workload.name
    }

    /// Its type.
    pub fn workload_type(&self) -> &'a WorkloadType {
        &self.workload.workload_type
    }

    /// Its workload id (`"<twin>-<contract>-<name>"`): how its primitive named what it made.
    pub fn workload_id(&self) -> String {
        workload_id(self.twin, self.contract_id, &self.workload.name)
    }

    /// The raw workload, as stored.
    pub fn workload(&self) -> &'a Workload {
        self.workload
    }

    /// The state of its latest result.
    pub fn state(&self) -> ResultState {
        self.workload.result.state
    }

    /// Its data, decoded by type (`zos_types::data`).
    pub fn data(&self) -> Result<WorkloadData, PrimitiveError> {
        self.workload.typed_data().map_err(|e| {
            PrimitiveError::InvalidData(format!("workload {:?}: {e}", self.workload.name))
        })
    }

    /// Its result data as `T` (e.g. `zos_types::data::ZMountResult`), once it is deployed:
    /// a workload whose state is not `ok` (or `paused`) is an error saying which state it has.
    pub fn result<T: DeserializeOwned>(&self) -> Result<T, PrimitiveError> {
        let r = &self.workload.result;
        if !r.state.is_okay() {
            let state = serde_json::to_string(&r.state).unwrap_or_default();
            return Err(PrimitiveError::Failed(format!(
                "workload {:?} is not deployed (state {state}{}{})",
                self.workload.name,
                if r.error.is_empty() { "" } else { ": " },
                r.error
            )));
        }
        serde_json::from_value(r.data.clone()).map_err(|e| {
            PrimitiveError::Failed(format!(
                "result of workload {:?} does not decode: {e}",
                self.workload.name
            ))
        })
    }
}

impl WorkloadCtx {
    /// Builds a context (the engine does this; tests of primitives may too).
    pub fn new(
        node_id: u32,
        deployment: Arc<Deployment>,
        workload_name: &str,
        secret: NodeSecret,
    ) -> Self {
        WorkloadCtx {
            twin: deployment.twin_id,
            contract_id: deployment.contract_id,
            workload_id: workload_id(deployment.twin_id, deployment.contract_id, workload_name),
            node_id,
            deployment,
            twin_deployments: Arc::from(Vec::new()),
            secret,
        }
    }

    /// Adds the twin's other deployments, so that [`WorkloadCtx::shared`] finds their sharable
    /// workloads (the engine passes what its store holds for the twin).
    pub fn with_twin_deployments(mut self, deployments: Arc<[Deployment]>) -> Self {
        self.twin_deployments = deployments;
        self
    }

    /// A 32-byte key for this workload and `purpose` (e.g. `"zmount-luks"`), derived from the
    /// node's key root (kept off the data pools): the same on every call and every restart,
    /// different per workload.
    pub fn workload_key(&self, purpose: &str) -> [u8; 32] {
        self.secret.derive(purpose, &self.workload_id)
    }

    /// Another workload of the same deployment, by name, with its latest result.
    pub fn sibling(&self, name: &str) -> Option<SiblingRef<'_>> {
        self.deployment
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map(|workload| SiblingRef {
                twin: self.twin,
                contract_id: self.contract_id,
                workload,
            })
    }

    /// A workload `name` of this deployment, or else a sharable one (a network) of the same
    /// twin's other deployments given by [`WorkloadCtx::with_twin_deployments`].
    pub fn shared(&self, name: &str) -> Option<SiblingRef<'_>> {
        self.sibling(name).or_else(|| {
            self.twin_deployments
                .iter()
                .filter(|d| d.twin_id == self.twin && d.contract_id != self.contract_id)
                .find_map(|d| {
                    d.workloads
                        .iter()
                        .find(|w| w.name == name && w.workload_type.is_sharable())
                        .map(|workload| SiblingRef {
                            twin: d.twin_id,
                            contract_id: d.contract_id,
                            workload,
                        })
                })
        })
    }

    /// The workloads of this deployment of type `t`, in deployment order.
    pub fn siblings_of_type<'a>(
        &'a self,
        t: &'a WorkloadType,
    ) -> impl Iterator<Item = SiblingRef<'a>> + 'a {
        self.deployment
            .workloads
            .iter()
            .filter(move |w| &w.workload_type == t)
            .map(|workload| SiblingRef {
                twin: self.twin,
                contract_id: self.contract_id,
                workload,
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use zos_types::data::{ZMount, ZMountResult};

    use super::*;

    fn wl(name: &str, t: WorkloadType, data: serde_json::Value) -> Workload {
        Workload {
            name: name.into(),
            workload_type: t,
            data,
            ..Workload::default()
        }
    }

    fn ctx() -> WorkloadCtx {
        let mut disk = wl("disk", WorkloadType::Zmount, json!({"size": 1024}));
        disk.result.state = ResultState::Ok;
        disk.result.data = json!({"volume_id": "3-1-disk"});
        let vm = wl("vm", WorkloadType::Zmachine, json!({}));
        let mut broken = wl("bad", WorkloadType::Zmount, json!({"size": "big"}));
        broken.result.state = ResultState::Error;
        broken.result.error = "no space".into();
        let d = Deployment {
            twin_id: 3,
            contract_id: 1,
            workloads: vec![disk, vm, broken],
            ..Deployment::default()
        };
        WorkloadCtx::new(7, Arc::new(d), "vm", NodeSecret::new([1; 32]))
    }

    #[test]
    fn siblings_decode_data_and_results() {
        let c = ctx();
        assert_eq!(c.workload_id, "3-1-vm");
        let disk = c.sibling("disk").expect("disk");
        assert_eq!(disk.workload_id(), "3-1-disk");
        assert_eq!(disk.workload_type(), &WorkloadType::Zmount);
        assert_eq!(
            disk.data().expect("data"),
            WorkloadData::Zmount(ZMount { size: 1024 })
        );
        let r: ZMountResult = disk.result().expect("result");
        assert_eq!(r.volume_id, "3-1-disk");
        let bad = c.sibling("bad").expect("bad");
        let e = bad.result::<ZMountResult>().expect_err("not deployed");
        assert!(e.to_string().contains("state \"error\": no space"), "{e}");
        assert!(matches!(bad.data(), Err(PrimitiveError::InvalidData(_))));
        assert!(c.sibling("nope").is_none());
        assert_eq!(c.siblings_of_type(&WorkloadType::Zmount).count(), 2);
    }

    #[test]
    fn shared_finds_only_the_twins_sharable_workloads() {
        let net = |twin, contract, t: WorkloadType| Deployment {
            twin_id: twin,
            contract_id: contract,
            workloads: vec![wl("net", t, json!({}))],
            ..Deployment::default()
        };
        let others: Arc<[Deployment]> = Arc::from(vec![
            net(4, 9, WorkloadType::Network),
            net(3, 2, WorkloadType::Volume),
            net(3, 5, WorkloadType::Network),
        ]);
        let c = ctx().with_twin_deployments(others);
        let found = c.shared("net").expect("shared network");
        assert_eq!(found.workload_id(), "3-5-net");
        assert!(c.shared("disk").is_some(), "own deployment first");
        assert!(ctx().shared("net").is_none());
    }

    #[test]
    fn workload_keys_are_per_workload() {
        let c = ctx();
        let other = WorkloadCtx::new(7, c.deployment.clone(), "disk", NodeSecret::new([1; 32]));
        assert_eq!(c.workload_key("p"), c.workload_key("p"));
        assert_ne!(c.workload_key("p"), other.workload_key("p"));
    }
}
