//! Removal, pause and resume of a stored deployment's workloads.

use super::Engine;
use super::jobs::{install_sort, result};
use crate::model::{Deployment, ResultState, Workload};
use crate::store::{Apply, StoreError};

impl Engine {
    /// Deprovisions one workload: `deleted` (and dropped from the view) or `error`.
    pub(super) async fn deprovision_one(
        &self,
        twin: u32,
        contract: u64,
        dl: &Deployment,
        wl: &Workload,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let outcome = match self.inner.registry.get(&wl.workload_type).cloned() {
            Some(p) => p.deprovision(&self.ctx(dl, &wl.name), wl).await,
            None => Ok(()), // nothing of this type can exist here
        };
        let mut new = wl.clone();
        match outcome {
            Ok(()) => {
                new.result = result(
                    ResultState::Deleted,
                    reason.to_string(),
                    wl.result.data.clone(),
                );
                self.save(twin, contract, Some(wl), new, Apply::Remove)?;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(twin, contract, name = %wl.name, error = %e, "deprovision failed");
                new.result = super::jobs::failure(
                    ResultState::Error,
                    Some(zos_types::ErrorCode::Deprovision),
                    format!("failed to deprovision: {e}"),
                );
                self.save(twin, contract, Some(wl), new, Apply::Upsert)?;
                Ok(false)
            }
        }
    }

    /// Removes every workload (reverse type order); the deployment is deleted from the store
    /// only if all succeeded (otherwise the next sync retries).
    pub(super) async fn deprovision_all(
        &self,
        twin: u32,
        contract: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(rec) = self.inner.store.get(twin, contract)? else {
            return Ok(());
        };
        let mut order = rec.deployment.workloads.clone();
        install_sort(&mut order);
        order.reverse();
        let mut all_ok = true;
        for wl in order {
            all_ok &= self
                .deprovision_one(twin, contract, &rec.deployment, &wl, reason)
                .await?;
        }
        if all_ok {
            self.inner.store.delete(twin, contract)?;
            self.inner
                .used
                .lock()
                .expect("usage index lock")
                .retain(|_, (c, _)| *c != contract);
            tracing::info!(twin, contract, reason, "deployment deprovisioned");
        }
        Ok(())
    }

    /// Pauses ok workloads (reverse type order).
    pub(super) async fn pause_all(&self, twin: u32, contract: u64) -> Result<(), StoreError> {
        self.flip(twin, contract, ResultState::Ok, ResultState::Paused)
            .await
    }

    /// Resumes paused workloads (type order).
    pub(super) async fn resume_all(&self, twin: u32, contract: u64) -> Result<(), StoreError> {
        self.flip(twin, contract, ResultState::Paused, ResultState::Ok)
            .await
    }

    async fn flip(
        &self,
        twin: u32,
        contract: u64,
        from: ResultState,
        to: ResultState,
    ) -> Result<(), StoreError> {
        let Some(rec) = self.inner.store.get(twin, contract)? else {
            return Ok(());
        };
        let mut order: Vec<Workload> = rec
            .deployment
            .workloads
            .iter()
            .filter(|w| w.result.state == from)
            .cloned()
            .collect();
        install_sort(&mut order);
        if to == ResultState::Paused {
            order.reverse();
        }
        for wl in order {
            let Some(p) = self.inner.registry.get(&wl.workload_type).cloned() else {
                continue;
            };
            let ctx = self.ctx(&rec.deployment, &wl.name);
            let outcome = if to == ResultState::Paused {
                p.pause(&ctx, &wl).await
            } else {
                p.resume(&ctx, &wl).await
            };
            match outcome {
                Ok(()) => {
                    let msg = if to == ResultState::Paused {
                        "paused"
                    } else {
                        ""
                    };
                    let mut new = wl.clone();
                    new.result = result(to, msg.to_string(), wl.result.data.clone());
                    self.save(twin, contract, Some(&wl), new, Apply::Upsert)?;
                }
                Err(e) => {
                    tracing::warn!(twin, contract, name = %wl.name, error = %e, "pause/resume failed");
                }
            }
        }
        Ok(())
    }
}
