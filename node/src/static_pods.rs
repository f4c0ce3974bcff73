//! Static pods: a directory of pod manifests the agent runs without the API server, and
//! the mirror pods that show them in the API.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use keelson_core::client::{Api, DeleteOptions};
use keelson_core::k8s_openapi::api::core::v1::Node;
use keelson_core::k8s_openapi::api::core::v1::Pod;
use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::agent::{lock, NodeCtx, MIRROR_ANNOTATION};

const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";

fn fnv(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable hash of a manifest on a node, formatted as a uid.
fn manifest_uid(node: &str, data: &[u8]) -> String {
    let mut input = node.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(data);
    let a = fnv(1, &input);
    let b = fnv(2, &input);
    let x = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

struct Known {
    hash: String,
    pod: Arc<Pod>,
}

pub(crate) struct StaticPods {
    ctx: Arc<NodeCtx>,
    dir: PathBuf,
    known: HashMap<PathBuf, Known>,
    uids: Arc<Mutex<HashSet<String>>>,
    node_uid: Option<String>,
}

impl StaticPods {
    pub(crate) fn new(ctx: Arc<NodeCtx>, dir: PathBuf) -> StaticPods {
        StaticPods {
            ctx,
            dir,
            known: HashMap::new(),
            uids: Arc::new(Mutex::new(HashSet::new())),
            node_uid: None,
        }
    }

    /// The uids of the static pods (shared with the pod watch, which must not stop them).
    pub(crate) fn uids(&self) -> Arc<Mutex<HashSet<String>>> {
        self.uids.clone()
    }

    fn parse(&self, data: &[u8], path: &std::path::Path) -> Option<(String, Pod)> {
        let text = String::from_utf8_lossy(data);
        let mut pod: Pod = match serde_yaml_ng::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a static pod manifest that does not parse");
                return None;
            }
        };
        let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
        let node = &self.ctx.node_name;
        let uid = manifest_uid(node, data);
        pod.metadata.name = Some(format!("{name}-{node}"));
        if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
            pod.metadata.namespace = Some("default".into());
        }
        pod.metadata.uid = Some(uid.clone());
        let ann = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        ann.insert(HASH_ANNOTATION.into(), uid.clone());
        ann.insert(SOURCE_ANNOTATION.into(), "file".into());
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.clone());
            if spec.restart_policy.is_none() {
                spec.restart_policy = Some("Always".into());
            }
        }
        Some((uid, pod))
    }

    /// Reads the directory once: starts new pods, restarts changed ones, stops removed
    /// ones, and keeps their mirror pods.
    pub(crate) async fn scan(&mut self) {
        let mut seen = HashSet::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for path in paths {
                    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                    if !matches!(ext, "yaml" | "yml" | "json") {
                        continue;
                    }
                    let Ok(data) = std::fs::read(&path) else {
                        continue;
                    };
                    let Some((uid, pod)) = self.parse(&data, &path) else {
                        continue;
                    };
                    seen.insert(path.clone());
                    match self.known.get(&path) {
                        Some(k) if k.hash == uid => {}
                        Some(k) => {
                            tracing::info!(file = %path.display(), "static pod manifest changed; restarting the pod");
                            let old = k.pod.metadata.uid.clone().unwrap_or_default();
                            self.ctx.remove(&old);
                            lock(&self.uids).remove(&old);
                            self.start(path.clone(), uid, pod);
                        }
                        None => {
                            tracing::info!(file = %path.display(), "starting a static pod");
                            self.start(path.clone(), uid, pod);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the manifest directory");
                return;
            }
        }
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(k) = self.known.remove(&path) {
                tracing::info!(file = %path.display(), "static pod manifest removed; stopping the pod");
                let uid = k.pod.metadata.uid.clone().unwrap_or_default();
                self.ctx.remove(&uid);
                lock(&self.uids).remove(&uid);
                self.delete_mirror(&k.pod).await;
            }
        }
        let pods: Vec<Arc<Pod>> = self.known.values().map(|k| k.pod.clone()).collect();
        for pod in pods {
            self.ensure_mirror(&pod).await;
        }
    }

    fn start(&mut self, path: PathBuf, uid: String, pod: Pod) {
        let pod = Arc::new(pod);
        lock(&self.uids).insert(uid.clone());
        self.ctx.upsert(pod.clone(), true);
        self.known.insert(path, Known { hash: uid, pod });
    }

    async fn delete_mirror(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        if let Err(e) = api.delete(&name, &opts).await {
            if !e.is_not_found() {
                tracing::warn!(pod = %name, error = %e, "failed to delete a mirror pod");
            }
        }
    }

    /// Creates the mirror pod when it is missing; replaces one that is stale or being
    /// deleted (a mirror pod cannot be deleted while its manifest is there).
    async fn ensure_mirror(&mut self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let hash = pod.metadata.uid.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(Some(existing)) => {
                let ann = existing.metadata.annotations.clone().unwrap_or_default();
                let current = ann.get(MIRROR_ANNOTATION) == Some(&hash);
                if current && existing.metadata.deletion_timestamp.is_none() {
                    return;
                }
                self.delete_mirror(&existing).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(pod = %name, error = %e, "cannot read a mirror pod");
                return;
            }
        }
        if self.node_uid.is_none() {
            let nodes: Api<Node> = Api::all(self.ctx.client.clone());
            self.node_uid = nodes
                .get_opt(&self.ctx.node_name)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.uid);
        }
        let mut mirror = pod.clone();
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        mirror.status = None;
        mirror
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(MIRROR_ANNOTATION.into(), hash);
        if let Some(uid) = &self.node_uid {
            mirror.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.ctx.node_name.clone(),
                uid: uid.clone(),
                controller: Some(true),
                ..OwnerReference::default()
            }]);
        }
        match api.create(&mirror).await {
            Ok(_) => {
                // Let the worker write the status it has at once.
                if let Some(uid) = &pod.metadata.uid {
                    self.ctx.resend(uid);
                }
            }
            Err(e) if e.is_already_exists() => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "failed to create a mirror pod"),
        }
    }

    /// Reads the directory every `manifest_poll`, until aborted.
    pub(crate) async fn run(&mut self) {
        let period = self.ctx.config.manifest_poll;
        loop {
            tokio::time::sleep(period).await;
            self.scan().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_uids_are_stable_and_differ_per_node_and_content() {
        let a = manifest_uid("n1", b"x");
        assert_eq!(a, manifest_uid("n1", b"x"));
        assert_ne!(a, manifest_uid("n2", b"x"));
        assert_ne!(a, manifest_uid("n1", b"y"));
        assert_eq!(a.len(), 36);
    }
}
