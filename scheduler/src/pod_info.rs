//! A pod as the scheduler holds it: the object and what the plugins read from it,
//! parsed once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keelson_core::k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use keelson_core::LabelSelector;

use crate::resources::{pod_requests, Resources};

/// A pod affinity or anti-affinity term, parsed: which pods (label selector, in which
/// namespaces) must (or must not) be in the same topology domain (`topologyKey`).
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// The pods the term is about.
    pub selector: LabelSelector,
    /// Namespaces listed by name (the pod's own when neither names nor a selector are
    /// given).
    pub namespaces: BTreeSet<String>,
    /// Namespaces selected by their labels (`None`: no selector; an empty selector
    /// selects every namespace).
    pub namespace_selector: Option<LabelSelector>,
    /// The node label that defines a domain.
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(term: &PodAffinityTerm, own_namespace: &str) -> Result<AffinityTerm, String> {
        let selector = LabelSelector::from_optional(term.label_selector.as_ref())
            .map_err(|e| format!("invalid labelSelector: {e}"))?;
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .map(LabelSelector::from_k8s)
            .transpose()
            .map_err(|e| format!("invalid namespaceSelector: {e}"))?;
        let mut namespaces: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(own_namespace.to_owned());
        }
        Ok(AffinityTerm {
            selector,
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
        })
    }

    /// Whether `pod` (whose namespace has `ns_labels`) is one of the pods the term is
    /// about.
    pub fn matches(&self, pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        self.matches_with(pod, || ns_labels)
    }

    /// [`AffinityTerm::matches`], looking the namespace's labels up only when a
    /// namespace selector needs them.
    pub fn matches_with<'a>(
        &self,
        pod: &PodInfo,
        ns_labels: impl FnOnce() -> Option<&'a BTreeMap<String, String>>,
    ) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                s.is_empty() || ns_labels().is_some_and(|labels| s.matches(labels))
            });
        ns_ok && self.selector.matches(&pod.labels)
    }
}

/// A weighted (preferred) affinity term.
#[derive(Clone, Debug)]
pub struct WeightedAffinityTerm {
    /// The term.
    pub term: AffinityTerm,
    /// Its weight, 1–100.
    pub weight: i32,
}

/// A pod and what scheduling reads from it, computed once when the pod is seen.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// The pod.
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it requests ([`pod_requests`]).
    pub requests: Resources,
    /// What it requests with scoring's defaults for unset CPU and memory.
    pub non_zero_requests: Resources,
    /// Required pod affinity terms.
    pub required_affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms.
    pub preferred_affinity: Vec<WeightedAffinityTerm>,
    /// Preferred pod anti-affinity terms.
    pub preferred_anti_affinity: Vec<WeightedAffinityTerm>,
    /// Why the pod's affinity could not be parsed, if it could not (the pod is then
    /// unschedulable, with this as the reason).
    pub parse_error: Option<String>,
}

impl PodInfo {
    /// Parses a pod.
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (requests, non_zero_requests) = pod.spec.as_ref().map(pod_requests).unwrap_or_default();
        let mut info = PodInfo {
            key: format!("{namespace}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests,
            non_zero_requests,
            required_affinity: Vec::new(),
            required_anti_affinity: Vec::new(),
            preferred_affinity: Vec::new(),
            preferred_anti_affinity: Vec::new(),
            parse_error: None,
            namespace,
            name,
            pod,
        };
        if let Err(e) = info.parse_affinity() {
            info.parse_error = Some(e);
        }
        info
    }

    fn parse_affinity(&mut self) -> Result<(), String> {
        let Some(affinity) = self.pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return Ok(());
        };
        let ns = self.namespace.clone();
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Result<Vec<AffinityTerm>, String> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::parse(t, &ns))
                .collect()
        };
        let preferred =
            |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Result<Vec<WeightedAffinityTerm>, String> {
                terms
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        Ok(WeightedAffinityTerm {
                            term: AffinityTerm::parse(&t.pod_affinity_term, &ns)?,
                            weight: t.weight,
                        })
                    })
                    .collect()
            };
        if let Some(a) = &affinity.pod_affinity {
            self.required_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            )?;
            self.preferred_affinity = preferred(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            )?;
        }
        if let Some(a) = &affinity.pod_anti_affinity {
            self.required_anti_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            )?;
            self.preferred_anti_affinity = preferred(
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            )?;
        }
        Ok(())
    }

    /// Whether the pod has any pod affinity or anti-affinity term.
    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    /// `spec.nodeName`, if set.
    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// `spec.schedulerName` (`default-scheduler` when unset).
    pub fn scheduler_name(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or(crate::DEFAULT_SCHEDULER_NAME)
    }

    /// `status.nominatedNodeName`, if set.
    pub fn nominated_node_name(&self) -> Option<&str> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// Whether the pod is being deleted.
    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// The pod's start time (or creation time), for preemption's tie-breaks.
    pub fn start_time(&self) -> Option<&keelson_core::k8s_openapi::jiff::Timestamp> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(self.pod.metadata.creation_timestamp.as_ref())
            .map(|t| &t.0)
    }
}
