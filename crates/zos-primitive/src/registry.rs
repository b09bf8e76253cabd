//! [`PrimitiveRegistry`]: what the binary composes from primitive crates and hands to the agent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use zos_types::WorkloadType;

use crate::api::ApiCommand;
use crate::lifecycle::{Health, Lifecycle};
use crate::pools::PoolReporter;
use crate::primitive::{Primitive, rank_of};

/// The primitives this node can run, plus what their crates contribute: a pool reporter,
/// features, API commands and lifecycle hooks.
#[derive(Clone, Default)]
pub struct PrimitiveRegistry {
    by_type: BTreeMap<String, Arc<dyn Primitive>>,
    pools: Option<Arc<dyn PoolReporter>>,
    features: Vec<String>,
    commands: BTreeMap<String, Arc<dyn ApiCommand>>,
    lifecycles: Vec<Arc<dyn Lifecycle>>,
}

impl fmt::Debug for PrimitiveRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrimitiveRegistry")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .field("features", &self.features)
            .field("commands", &self.commands.keys().collect::<Vec<_>>())
            .field(
                "lifecycles",
                &self.lifecycles.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PrimitiveRegistry {
    /// An empty registry: the node then refuses every workload type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `p` for its type; returns the primitive it replaced, if any.
    pub fn register(&mut self, p: Arc<dyn Primitive>) -> Option<Arc<dyn Primitive>> {
        self.by_type
            .insert(p.workload_type().as_str().to_string(), p)
    }

    /// Sets the storage pool reporter (used for capacity, statistics and `zos.storage.pools`).
    pub fn set_pool_reporter(&mut self, r: Arc<dyn PoolReporter>) {
        self.pools = Some(r);
    }

    /// Advertises an extra node feature (e.g. `"mycelium"`) in `node_features_get`.
    pub fn add_feature(&mut self, feature: impl Into<String>) {
        self.features.push(feature.into());
    }

    /// Adds an API command (e.g. `zos.storage.volume.snapshots`); the agent's built-in names
    /// win over a command of the same name.
    pub fn add_command(&mut self, name: impl Into<String>, command: Arc<dyn ApiCommand>) {
        self.commands.insert(name.into(), command);
    }

    /// Adds lifecycle hooks (started in the order added, shut down in reverse).
    pub fn add_lifecycle(&mut self, l: Arc<dyn Lifecycle>) {
        self.lifecycles.push(l);
    }

    /// The extra API commands.
    pub fn commands(&self) -> impl Iterator<Item = (&str, &Arc<dyn ApiCommand>)> {
        self.commands.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The API command `name`, if a primitive crate added it.
    pub fn command(&self, name: &str) -> Option<&Arc<dyn ApiCommand>> {
        self.commands.get(name)
    }

    /// The primitive for `t`.
    pub fn get(&self, t: &WorkloadType) -> Option<&Arc<dyn Primitive>> {
        self.by_type.get(t.as_str())
    }

    /// Whether `t` has a primitive.
    pub fn supports(&self, t: &WorkloadType) -> bool {
        self.by_type.contains_key(t.as_str())
    }

    /// The pool reporter, if storage is wired in.
    pub fn pool_reporter(&self) -> Option<&Arc<dyn PoolReporter>> {
        self.pools.as_ref()
    }

    /// `zos.system.node_features_get`: registered types in install order, then extra features.
    pub fn features(&self) -> Vec<String> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_by_key(|n| rank_of(n));
        let mut out: Vec<String> = types.into_iter().map(str::to_string).collect();
        for f in &self.features {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// Runs every [`Lifecycle::start`] in order. On the first failure that set and those
    /// already started are shut down again (reverse order; a set's shutdown must cope with its
    /// own half-done start) and the error names the set that failed.
    pub async fn start(&self) -> Result<(), String> {
        for (i, l) in self.lifecycles.iter().enumerate() {
            tracing::info!(set = l.name(), "starting primitive set");
            if let Err(e) = l.start().await {
                for started in self.lifecycles[..=i].iter().rev() {
                    started.shutdown().await;
                }
                return Err(format!("{}: {e}", l.name()));
            }
        }
        Ok(())
    }

    /// [`Lifecycle::health`] of every set, by name.
    pub async fn health(&self) -> Vec<(String, Health)> {
        let mut out = Vec::with_capacity(self.lifecycles.len());
        for l in &self.lifecycles {
            out.push((l.name().to_string(), l.health().await));
        }
        out
    }

    /// Hands a changed public config to every set ([`Lifecycle::public_config`]); a set that
    /// fails is logged and does not stop the others.
    pub async fn public_config_changed(&self, config: Option<&serde_json::Value>) {
        for l in &self.lifecycles {
            if let Err(e) = l.public_config(config).await {
                tracing::warn!(set = l.name(), error = %e, "public config not applied");
            }
        }
    }

    /// Runs every [`Lifecycle::shutdown`], last started first.
    pub async fn shutdown(&self) {
        for l in self.lifecycles.iter().rev() {
            tracing::info!(set = l.name(), "stopping primitive set");
            l.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    struct Step {
        name: &'static str,
        fail: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Lifecycle for Step {
        fn name(&self) -> &str {
            self.name
        }
        async fn start(&self) -> Result<(), String> {
            self.log
                .lock()
                .expect("log")
                .push(format!("start {}", self.name));
            if self.fail {
                return Err("broken".into());
            }
            Ok(())
        }
        async fn health(&self) -> Health {
            Health::failing(format!("{} degraded", self.name))
        }
        async fn shutdown(&self) {
            self.log
                .lock()
                .expect("log")
                .push(format!("stop {}", self.name));
        }
    }

    fn registry(fail_b: bool) -> (PrimitiveRegistry, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut r = PrimitiveRegistry::new();
        for (name, fail) in [("a", false), ("b", fail_b)] {
            r.add_lifecycle(Arc::new(Step {
                name,
                fail,
                log: log.clone(),
            }));
        }
        (r, log)
    }

    #[tokio::test]
    async fn lifecycles_start_in_order_and_stop_in_reverse() {
        let (r, log) = registry(false);
        r.start().await.expect("start");
        r.shutdown().await;
        assert_eq!(
            *log.lock().expect("log"),
            ["start a", "start b", "stop b", "stop a"]
        );
        let h = r.health().await;
        assert_eq!(h[1], ("b".to_string(), Health::failing("b degraded")));
    }

    #[tokio::test]
    async fn a_failed_start_stops_what_was_started() {
        let (r, log) = registry(true);
        assert_eq!(r.start().await, Err("b: broken".to_string()));
        assert_eq!(
            *log.lock().expect("log"),
            ["start a", "start b", "stop b", "stop a"]
        );
    }

    #[test]
    fn features_follow_install_order() {
        let mut r = PrimitiveRegistry::new();
        r.add_feature("mycelium");
        r.add_feature("mycelium");
        assert_eq!(r.features(), ["mycelium"]);
    }
}
