//! `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1), as YAML or JSON:
//! profiles with their plugins enabled and disabled per extension point, Score weights,
//! plugin arguments, `percentageOfNodesToScore`, `parallelism` and the backoffs.
//!
//! ```
//! use keelson_scheduler::SchedulerConfig;
//! let config = SchedulerConfig::from_yaml(r#"
//! apiVersion: kubescheduler.config.k8s.io/v1
//! kind: KubeSchedulerConfiguration
//! percentageOfNodesToScore: 30
//! profiles:
//! - schedulerName: default-scheduler
//! - schedulerName: bin-packing
//!   plugins:
//!     score:
//!       disabled: [{name: NodeResourcesBalancedAllocation}]
//!   pluginConfig:
//!   - name: NodeResourcesFit
//!     args:
//!       scoringStrategy: {type: MostAllocated}
//! "#)?;
//! assert_eq!(config.profiles.len(), 2);
//! # Ok::<(), keelson_scheduler::ConfigError>(())
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;
use crate::framework::{ExtensionPoint, Handle, ProfileBuilder};
use crate::plugins::{PluginRegistry, DEFAULT_PLUGINS};
use crate::DEFAULT_SCHEDULER_NAME;

/// The scheduler's configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// `kubescheduler.config.k8s.io/v1` when given.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `KubeSchedulerConfiguration` when given.
    #[serde(default)]
    pub kind: Option<String>,
    /// Threads that filter nodes.
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Percentage of nodes to find feasible before scoring (0: adaptive).
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Initial backoff of a failed pod, seconds.
    #[serde(default)]
    pub pod_initial_backoff_seconds: Option<u64>,
    /// Maximum backoff, seconds.
    #[serde(default)]
    pub pod_max_backoff_seconds: Option<u64>,
    /// The profiles.
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
}

/// One profile.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileConfig {
    /// The `schedulerName` it serves (default `default-scheduler`).
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Its own `percentageOfNodesToScore`.
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Plugins enabled and disabled, on top of the default ones.
    #[serde(default)]
    pub plugins: Option<PluginsConfig>,
    /// Plugin arguments.
    #[serde(default)]
    pub plugin_config: Vec<PluginArgs>,
}

/// Plugins per extension point.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PluginsConfig {
    pub multi_point: Option<PluginSet>,
    pub queue_sort: Option<PluginSet>,
    pub pre_filter: Option<PluginSet>,
    pub filter: Option<PluginSet>,
    pub post_filter: Option<PluginSet>,
    pub pre_score: Option<PluginSet>,
    pub score: Option<PluginSet>,
    pub reserve: Option<PluginSet>,
    pub permit: Option<PluginSet>,
    pub pre_bind: Option<PluginSet>,
    pub bind: Option<PluginSet>,
    pub post_bind: Option<PluginSet>,
}

/// Plugins enabled and disabled at one point (`*` disables every default one).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSet {
    /// Enabled, in order.
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    /// Disabled.
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

/// A plugin by name, with a Score weight.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// The plugin.
    pub name: String,
    /// Its Score weight.
    #[serde(default)]
    pub weight: Option<i64>,
}

/// A plugin's arguments.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginArgs {
    /// The plugin.
    pub name: String,
    /// Its arguments (the plugin's `*Args` kind).
    #[serde(default)]
    pub args: Value,
}

impl SchedulerConfig {
    /// Parses YAML (or JSON, which is YAML).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad syntax, unknown fields in profiles, or another
    /// apiVersion or kind.
    pub fn from_yaml(text: &str) -> Result<SchedulerConfig, ConfigError> {
        let config: SchedulerConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(v) = config.api_version.as_deref() {
            if v != "kubescheduler.config.k8s.io/v1" {
                return Err(ConfigError::Parse(format!(
                    "unsupported apiVersion {v} (want kubescheduler.config.k8s.io/v1)"
                )));
            }
        }
        if let Some(k) = config.kind.as_deref() {
            if k != "KubeSchedulerConfiguration" {
                return Err(ConfigError::Parse(format!("unsupported kind {k}")));
            }
        }
        if config.percentage_of_nodes_to_score.is_some_and(|p| p > 100) {
            return Err(ConfigError::Parse(
                "percentageOfNodesToScore must be 0-100".into(),
            ));
        }
        let mut names = HashSet::new();
        for p in &config.profiles {
            let name = p
                .scheduler_name
                .as_deref()
                .unwrap_or(DEFAULT_SCHEDULER_NAME);
            if !names.insert(name) {
                return Err(ConfigError::Parse(format!("duplicate profile {name}")));
            }
        }
        Ok(config)
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// The file cannot be read, or [`SchedulerConfig::from_yaml`]'s.
    pub fn from_file(path: &std::path::Path) -> Result<SchedulerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
        SchedulerConfig::from_yaml(&text)
    }

    pub(crate) fn backoff(&self) -> Option<(Duration, Duration)> {
        if self.pod_initial_backoff_seconds.is_none() && self.pod_max_backoff_seconds.is_none() {
            return None;
        }
        Some((
            Duration::from_secs(self.pod_initial_backoff_seconds.unwrap_or(1)),
            Duration::from_secs(self.pod_max_backoff_seconds.unwrap_or(10)),
        ))
    }

    /// The profiles, as builders of plugins from `registry`.
    ///
    /// # Errors
    /// An unknown plugin, or arguments a plugin refuses.
    pub fn profile_builders(
        &self,
        registry: &PluginRegistry,
        handle: &Handle,
    ) -> Result<Vec<ProfileBuilder>, ConfigError> {
        self.profiles
            .iter()
            .map(|p| p.builder(registry, handle, self.percentage_of_nodes_to_score))
            .collect()
    }
}

impl ProfileConfig {
    fn builder(
        &self,
        registry: &PluginRegistry,
        handle: &Handle,
        _global_percentage: Option<u32>,
    ) -> Result<ProfileBuilder, ConfigError> {
        let profile = self
            .scheduler_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SCHEDULER_NAME.to_owned());
        let make = |name: &str| -> Result<std::sync::Arc<dyn crate::Plugin>, ConfigError> {
            let factory = registry
                .get(name)
                .ok_or_else(|| ConfigError::UnknownPlugin {
                    profile: profile.clone(),
                    plugin: name.to_owned(),
                })?;
            let args = self
                .plugin_config
                .iter()
                .find(|a| a.name == name)
                .map_or(Value::Null, |a| a.args.clone());
            factory(&args, handle).map_err(|message| ConfigError::Invalid {
                profile: profile.clone(),
                message: format!("plugin {name}: {message}"),
            })
        };
        let empty = PluginsConfig::default();
        let plugins = self.plugins.as_ref().unwrap_or(&empty);
        let multi = plugins.multi_point.clone().unwrap_or_default();
        let disabled_all = multi.disabled.iter().any(|d| d.name == "*");
        let mut b = ProfileBuilder::new(profile.clone())
            .percentage_of_nodes_to_score(self.percentage_of_nodes_to_score.filter(|p| *p > 0));
        if !disabled_all {
            for (name, weight) in DEFAULT_PLUGINS {
                if multi.disabled.iter().any(|d| d.name == *name) {
                    continue;
                }
                b = b.plugin(make(name)?);
                if *weight > 0 {
                    b = b.weight(name, *weight);
                }
            }
        }
        for e in &multi.enabled {
            b = b.plugin(make(&e.name)?);
            if let Some(w) = e.weight {
                b = b.weight(&e.name, w);
            }
        }
        let points = [
            (&plugins.queue_sort, ExtensionPoint::QueueSort),
            (&plugins.pre_filter, ExtensionPoint::PreFilter),
            (&plugins.filter, ExtensionPoint::Filter),
            (&plugins.post_filter, ExtensionPoint::PostFilter),
            (&plugins.pre_score, ExtensionPoint::PreScore),
            (&plugins.score, ExtensionPoint::Score),
            (&plugins.reserve, ExtensionPoint::Reserve),
            (&plugins.permit, ExtensionPoint::Permit),
            (&plugins.pre_bind, ExtensionPoint::PreBind),
            (&plugins.bind, ExtensionPoint::Bind),
            (&plugins.post_bind, ExtensionPoint::PostBind),
        ];
        for (set, point) in points {
            let Some(set) = set else { continue };
            for d in &set.disabled {
                if d.name == "*" {
                    for name in b.plugin_names() {
                        b = b.disable_at(&name, point);
                    }
                } else {
                    b = b.disable_at(&d.name, point);
                }
            }
            for e in &set.enabled {
                let plugin = make(&e.name)?;
                b = b.plugin_at(plugin, &[point]);
                if let Some(w) = e.weight {
                    b = b.weight(&e.name, w);
                }
            }
        }
        Ok(b)
    }
}
