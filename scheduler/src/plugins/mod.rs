//! The default plugins, with Kubernetes' semantics, and the registry that builds
//! plugins by name from a configuration.

mod basic;
mod default_preemption;
pub(crate) mod helpers;
mod inter_pod_affinity;
mod node_memo;
mod node_resources;
mod pod_topology_spread;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

pub use basic::{
    DefaultBinder, ImageLocality, NodeAffinity, NodeName, NodeUnschedulable, PrioritySort,
    TaintToleration, ERR_NODE_AFFINITY, ERR_NODE_NAME, ERR_NODE_UNSCHEDULABLE,
};
pub use default_preemption::{Candidate, DefaultPreemption, NOT_HELPFUL, NO_VICTIMS};
pub use helpers::tolerates;
pub use inter_pod_affinity::{
    InterPodAffinity, InterPodAffinityArgs, ERR_AFFINITY, ERR_ANTI_AFFINITY,
    ERR_EXISTING_ANTI_AFFINITY,
};
pub use node_resources::{
    FitArgs, NodeResourcesBalancedAllocation, NodeResourcesFit, ResourceWeight, ScoringStrategy,
    ShapePoint,
};
pub use pod_topology_spread::{PodTopologySpread, SpreadArgs, ERR_SPREAD, ERR_SPREAD_LABEL};

use crate::framework::{Handle, Plugin};

/// Builds a plugin from its configuration arguments (`pluginConfig[].args`, `null`
/// when none) and the scheduler's [`Handle`].
pub type PluginFactory =
    Arc<dyn Fn(&Value, &Handle) -> Result<Arc<dyn Plugin>, String> + Send + Sync>;

/// Plugins by name, for profiles built from configuration. Start from
/// [`PluginRegistry::builtin`] and [`register`](PluginRegistry::register) your own.
#[derive(Clone)]
pub struct PluginRegistry {
    factories: BTreeMap<String, PluginFactory>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

fn args<T: serde::de::DeserializeOwned + Default>(v: &Value) -> Result<T, String> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// The plugins of Kubernetes' default profile, in its order, with its Score weights.
pub const DEFAULT_PLUGINS: &[(&str, i64)] = &[
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodeResourcesFit", 1),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
];

impl PluginRegistry {
    /// An empty registry.
    pub fn empty() -> PluginRegistry {
        PluginRegistry {
            factories: BTreeMap::new(),
        }
    }

    /// The built-in plugins.
    pub fn builtin() -> PluginRegistry {
        let mut r = PluginRegistry::empty();
        r.register("PrioritySort", |_, _| Ok(Arc::new(PrioritySort)));
        r.register("NodeUnschedulable", |_, _| Ok(Arc::new(NodeUnschedulable)));
        r.register("NodeName", |_, _| Ok(Arc::new(NodeName)));
        r.register("TaintToleration", |_, _| Ok(Arc::new(TaintToleration)));
        r.register("NodeAffinity", |_, _| Ok(Arc::new(NodeAffinity)));
        r.register("NodeResourcesFit", |a, _| {
            Ok(Arc::new(NodeResourcesFit::from_args(args::<FitArgs>(a)?)?))
        });
        r.register("NodeResourcesBalancedAllocation", |a, _| {
            #[derive(serde::Deserialize, Default)]
            struct BalancedArgs {
                #[serde(default)]
                resources: Option<Vec<ResourceWeight>>,
            }
            let a: BalancedArgs = args(a)?;
            Ok(Arc::new(match a.resources {
                Some(r) => NodeResourcesBalancedAllocation::new(r),
                None => NodeResourcesBalancedAllocation::default(),
            }))
        });
        r.register("PodTopologySpread", |a, _| {
            Ok(Arc::new(PodTopologySpread::from_args(args::<SpreadArgs>(
                a,
            )?)?))
        });
        r.register("InterPodAffinity", |a, _| {
            Ok(Arc::new(InterPodAffinity::new(
                args::<InterPodAffinityArgs>(a)?,
            )))
        });
        r.register("ImageLocality", |_, _| Ok(Arc::new(ImageLocality)));
        r.register("DefaultPreemption", |a, h| {
            #[derive(serde::Deserialize, Default)]
            #[serde(rename_all = "camelCase")]
            struct PreemptionArgs {
                min_candidate_nodes_percentage: Option<usize>,
                min_candidate_nodes_absolute: Option<usize>,
            }
            let a: PreemptionArgs = args(a)?;
            Ok(Arc::new(
                DefaultPreemption::new(Some(h.client.clone()), h.nominator.clone())
                    .with_candidates(
                        a.min_candidate_nodes_percentage.unwrap_or(10),
                        a.min_candidate_nodes_absolute.unwrap_or(100),
                    ),
            ))
        });
        r.register("DefaultBinder", |_, h| {
            Ok(Arc::new(DefaultBinder::new(h.client.clone())))
        });
        r
    }

    /// Registers (or replaces) a plugin factory.
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&Value, &Handle) -> Result<Arc<dyn Plugin>, String> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// The factory of a plugin.
    pub fn get(&self, name: &str) -> Option<&PluginFactory> {
        self.factories.get(name)
    }
}

#[cfg(test)]
mod tests;
