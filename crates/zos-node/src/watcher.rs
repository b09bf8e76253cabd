//! The ledger watcher: follows events from the last processed height (persisted in the engine
//! store as `event_height`) and turns the ones about this node into engine jobs.
//!
//! - `NodeContractCanceled` → deprovision ("contract canceled event received");
//! - `ContractGracePeriodStarted` / `Ended` → pause / resume;
//! - `NodePublicConfigStored` → the node's public config is replaced (reconfigure);
//! - `FarmStored` of our farm → the farm twin (admin API) is refreshed.
//!
//! The height is persisted after each event concerning this node (and at most every 5 s
//! otherwise); on restart the watcher resubscribes from that height, so a suffix of history is
//! seen again, in order: every action is idempotent (a second deprovision finds nothing, a
//! replayed pause is followed by the replayed resume), so the end state is right and nothing is
//! skipped. Events that
//! happened while the node was down are therefore applied when it comes back. A full sync
//! against the node's active contracts runs at start and every `sync_interval`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use zos_ledger::{Event, EventRecord, PublicConfig};

use crate::api::NodeState;
use crate::engine::Engine;
use crate::ledger::NodeLedger;
use crate::store::JobOp;

/// The meta key holding the last processed event height.
pub const HEIGHT_KEY: &str = "event_height";
/// Longest time the persisted height lags behind events that did not concern this node.
const PERSIST_EVERY: Duration = Duration::from_secs(5);

/// Upstream's JSON shape of a public config (`zos.network.public_config_get`).
pub fn public_config_json(c: &PublicConfig) -> Value {
    json!({
        "type": "macvlan",
        "ipv4": c.ip4.ip,
        "gw4": c.ip4.gw,
        "ipv6": c.ip6.as_ref().map(|i| i.ip.clone()).unwrap_or_default(),
        "gw6": c.ip6.as_ref().map(|i| i.gw.clone()).unwrap_or_default(),
        "domain": c.domain.clone().unwrap_or_default(),
    })
}

/// Applies one event to the engine; returns whether it concerned this node.
pub fn apply(
    engine: &Engine,
    state: &NodeState,
    rec: &EventRecord,
) -> Result<bool, crate::engine::EngineError> {
    let me = engine.node_id();
    match &rec.event {
        Event::NodeContractCanceled {
            contract_id,
            node_id,
            twin_id,
        } if *node_id == me => {
            tracing::info!(contract = contract_id, "contract canceled: deprovisioning");
            engine.enqueue(
                *twin_id,
                *contract_id,
                JobOp::Deprovision {
                    reason: "contract canceled event received".into(),
                },
            )?;
        }
        Event::ContractGracePeriodStarted {
            contract_id,
            node_id,
            twin_id,
        } if *node_id == me => {
            tracing::info!(contract = contract_id, "grace period started: pausing");
            engine.enqueue(*twin_id, *contract_id, JobOp::Pause)?;
        }
        Event::ContractGracePeriodEnded {
            contract_id,
            node_id,
            twin_id,
        } if *node_id == me => {
            tracing::info!(contract = contract_id, "grace period ended: resuming");
            engine.enqueue(*twin_id, *contract_id, JobOp::Resume)?;
        }
        Event::ContractNodeMaintenance {
            contract_id,
            node_id,
            twin_id,
            on,
            pause,
        } if *node_id == me => {
            // The farmer paused the node's workloads for maintenance, or ended it: the same
            // jobs as a grace period (the pause is confirmed against the proven node record).
            if *on && *pause {
                tracing::info!(contract = contract_id, "maintenance with pause: pausing");
                engine.enqueue(*twin_id, *contract_id, JobOp::Pause)?;
            } else if !*on {
                tracing::info!(contract = contract_id, "maintenance ended: resuming");
                engine.enqueue(*twin_id, *contract_id, JobOp::Resume)?;
            } else {
                tracing::info!(
                    contract = contract_id,
                    "node in maintenance; workloads keep running"
                );
            }
        }
        Event::NodeMaintenanceSet { node_id, on, pause } if *node_id == me => {
            tracing::info!(on, pause, "the farmer set this node's maintenance mode");
            *state.maintenance.write().expect("maintenance lock") =
                on.then(|| json!({ "pause": pause, "height": rec.height }));
        }
        Event::NodeMoved { from, to, .. } if *to == me => {
            // The farmer gave this identity a lost node's record: the id (and what hangs off
            // it: contracts, public config) is learnt at registration, so at the next start.
            tracing::warn!(
                node = to,
                becomes = from,
                "this node's record was moved to node {from} by its farmer: restart the node to serve as node {from}"
            );
        }
        Event::NodePublicConfigStored { node_id, config } if *node_id == me => {
            tracing::info!(?config, "public config changed: reconfiguring");
            let json = config.as_ref().map(public_config_json);
            *state.public_config.write().expect("public config lock") = json.clone();
            // Applied in place by the primitive sets (the network's public side); the event
            // loop does not wait for it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let registry = engine.registry().clone();
                rt.spawn(async move { registry.public_config_changed(json.as_ref()).await });
            }
        }
        Event::FarmStored { farm } if farm.id == state.farm_id => {
            state.farm_twin.store(farm.twin_id, Ordering::Relaxed);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Follows events until `shutdown`, reconnecting with backoff; runs the periodic full sync.
pub async fn run(
    ledger: NodeLedger,
    engine: Engine,
    state: Arc<NodeState>,
    sync_interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = ledger.client().clone();
    // First start: nothing before the current head concerns us (the full sync covers state).
    if engine.store().meta(HEIGHT_KEY).ok().flatten().is_none() {
        match client.head().await {
            Ok(h) => {
                let _ = engine.store().set_meta(HEIGHT_KEY, h);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read ledger head"),
        }
    }
    let mut sync_tick = tokio::time::interval(sync_interval);
    let mut backoff = Duration::from_millis(200);
    let mut last_persist = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let from = engine.store().meta(HEIGHT_KEY).ok().flatten().unwrap_or(0);
        let mut stream = match client.subscribe_events(from).await {
            Ok(s) => {
                state.set_module("watcher", "running", "");
                backoff = Duration::from_millis(200);
                s
            }
            Err(e) => {
                state.set_module("watcher", "error", e.to_string());
                tracing::warn!(error = %e, "event subscription failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sync_tick.tick() => {
                    if let Err(e) = engine.sync().await {
                        tracing::warn!(error = %e, "full sync failed");
                    }
                }
                item = stream.next() => match item {
                    Some(Ok(rec)) => {
                        let mine = match apply(&engine, &state, &rec) {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::error!(error = %e, height = rec.height, "cannot apply event; will retry");
                                break;
                            }
                        };
                        // Persisting is only an optimisation of the replay on restart (every
                        // action is idempotent): do it after our own events, and otherwise at
                        // most every few seconds, so a busy ledger does not cost an fsync per
                        // event.
                        if mine || last_persist.elapsed() >= PERSIST_EVERY {
                            if let Err(e) = engine.store().set_meta_lazy(HEIGHT_KEY, rec.height) {
                                tracing::error!(error = %e, "cannot persist event height");
                            }
                            last_persist = std::time::Instant::now();
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "event stream failed; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use zos_ledger::IpConfig;

    fn rec(event: Event) -> EventRecord {
        EventRecord {
            height: 1,
            index: 0,
            event,
        }
    }

    #[test]
    fn events_for_this_node_become_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::engine::test_engine(&dir.path().join("e.redb"));
        engine.set_node_id(7);
        let state = NodeState {
            farm_id: 1,
            ..NodeState::default()
        };
        let other = Event::NodeContractCanceled {
            contract_id: 1,
            node_id: 8,
            twin_id: 3,
        };
        assert!(!apply(&engine, &state, &rec(other)).unwrap());
        for ev in [
            Event::NodeContractCanceled {
                contract_id: 1,
                node_id: 7,
                twin_id: 3,
            },
            Event::ContractGracePeriodStarted {
                contract_id: 2,
                node_id: 7,
                twin_id: 3,
            },
            Event::ContractGracePeriodEnded {
                contract_id: 2,
                node_id: 7,
                twin_id: 3,
            },
            // maintenance: kept running, paused, ended
            Event::ContractNodeMaintenance {
                contract_id: 4,
                node_id: 7,
                twin_id: 3,
                on: true,
                pause: false,
            },
            Event::ContractNodeMaintenance {
                contract_id: 4,
                node_id: 7,
                twin_id: 3,
                on: true,
                pause: true,
            },
            Event::ContractNodeMaintenance {
                contract_id: 4,
                node_id: 7,
                twin_id: 3,
                on: false,
                pause: false,
            },
        ] {
            assert!(apply(&engine, &state, &rec(ev)).unwrap());
        }
        let mut ops = Vec::new();
        while let Some((id, job)) = engine.store().peek_job().unwrap() {
            ops.push((job.contract, job.op));
            engine.store().ack_job(id).unwrap();
        }
        assert_eq!(
            ops,
            [
                (
                    1,
                    JobOp::Deprovision {
                        reason: "contract canceled event received".into()
                    }
                ),
                (2, JobOp::Pause),
                (2, JobOp::Resume),
                (4, JobOp::Pause),
                (4, JobOp::Resume)
            ]
        );
        // the farmer's maintenance mode is what health shows
        let set = |on, pause| {
            rec(Event::NodeMaintenanceSet {
                node_id: 7,
                on,
                pause,
            })
        };
        assert!(apply(&engine, &state, &set(true, true)).unwrap());
        assert_eq!(
            *state.maintenance.read().unwrap(),
            Some(json!({"pause": true, "height": 1}))
        );
        assert!(apply(&engine, &state, &set(false, false)).unwrap());
        assert_eq!(*state.maintenance.read().unwrap(), None);
        let cfg = PublicConfig {
            ip4: IpConfig {
                ip: "185.1.2.3/24".into(),
                gw: "185.1.2.1".into(),
            },
            ip6: None,
            domain: Some("gw.example".into()),
        };
        apply(
            &engine,
            &state,
            &rec(Event::NodePublicConfigStored {
                node_id: 7,
                config: Some(cfg),
            }),
        )
        .unwrap();
        let v = state.public_config.read().unwrap().clone().unwrap();
        assert_eq!(
            (v["ipv4"].as_str(), v["domain"].as_str()),
            (Some("185.1.2.3/24"), Some("gw.example"))
        );
        apply(
            &engine,
            &state,
            &rec(Event::NodePublicConfigStored {
                node_id: 7,
                config: None,
            }),
        )
        .unwrap();
        assert!(state.public_config.read().unwrap().is_none());
    }
}
