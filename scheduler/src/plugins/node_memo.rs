//! Counts over nodes kept from one pod to the next: what InterPodAffinity and
//! PodTopologySpread count per node for a pod depends only on the pod's labels, namespace
//! and terms, and between two pods few nodes change. The snapshot shares an unchanged
//! node's [`NodeInfo`] (same `Arc`), so only nodes whose pointer differs are recounted.

use std::sync::Arc;

use crate::node_info::NodeInfo;

/// Compares by identity: the same allocation, not equal contents.
#[derive(Debug)]
pub(crate) struct ByPtr<T>(pub Arc<T>);

impl<T> PartialEq for ByPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Counts `S` over a list of nodes, valid for one key `K` (what the counts depend on,
/// and the node list they follow).
#[derive(Debug)]
pub(crate) struct NodeMemo<K, S>(parking_lot::Mutex<Option<Entry<K, S>>>);

#[derive(Debug)]
struct Entry<K, S> {
    key: K,
    /// The nodes as counted, by position in the list.
    nodes: Vec<Arc<NodeInfo>>,
    counts: S,
}

impl<K, S> Default for NodeMemo<K, S> {
    fn default() -> Self {
        NodeMemo(parking_lot::Mutex::new(None))
    }
}

impl<K: PartialEq, S> NodeMemo<K, S> {
    /// Brings the counts for `key` up to date with `nodes` (`len` of them) and reads
    /// them. With another key (or a list of another length) the counts start from
    /// `init()` and every node is counted; else only the nodes that changed. `count(counts, i, old, new)` adds
    /// the `i`th node `new` and takes out `old`, the same node as counted before (`None`
    /// when counting from scratch).
    pub(crate) fn refresh<'a, R>(
        &self,
        key: K,
        nodes: impl Iterator<Item = &'a Arc<NodeInfo>>,
        len: usize,
        init: impl FnOnce() -> S,
        mut count: impl FnMut(&mut S, usize, Option<&NodeInfo>, &NodeInfo),
        read: impl FnOnce(&S) -> R,
    ) -> R {
        let mut memo = self.0.lock();
        match memo.as_mut() {
            Some(e) if e.key == key && e.nodes.len() == len => {
                for (i, (old, new)) in e.nodes.iter_mut().zip(nodes).enumerate() {
                    if Arc::ptr_eq(old, new) {
                        continue;
                    }
                    count(&mut e.counts, i, Some(old), new);
                    *old = new.clone();
                }
                read(&e.counts)
            }
            _ => {
                let mut counts = init();
                let mut kept = Vec::with_capacity(len);
                for (i, node) in nodes.enumerate() {
                    count(&mut counts, i, None, node);
                    kept.push(node.clone());
                }
                let r = read(&counts);
                *memo = Some(Entry {
                    key,
                    nodes: kept,
                    counts,
                });
                r
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;

    fn info(name: &str) -> Arc<NodeInfo> {
        Arc::new(NodeInfo::new(Arc::new(node(name).obj())))
    }

    #[test]
    fn only_changed_nodes_are_recounted_and_a_new_key_starts_over() {
        let memo: NodeMemo<&str, Vec<String>> = NodeMemo::default();
        let mut nodes = vec![info("a"), info("b"), info("c")];
        type Seen = Vec<(usize, Option<String>, String)>;
        let run = |key: &'static str, nodes: &[Arc<NodeInfo>]| -> (usize, Seen) {
            let mut seen = Vec::new();
            let n = memo.refresh(
                key,
                nodes.iter(),
                nodes.len(),
                Vec::new,
                |c: &mut Vec<String>, i, old, new| {
                    seen.push((i, old.map(|o| o.name().to_owned()), new.name().to_owned()));
                    c.push(new.name().to_owned());
                },
                Vec::len,
            );
            (n, seen)
        };
        let (n, seen) = run("k", &nodes);
        assert_eq!(n, 3);
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(_, old, _)| old.is_none()));
        // Unchanged: nothing is counted again.
        let (n, seen) = run("k", &nodes);
        assert_eq!(n, 3);
        assert!(seen.is_empty());
        // One node replaced (a new NodeInfo): only it, with the old one to take out.
        nodes[1] = info("b");
        let (n, seen) = run("k", &nodes);
        assert_eq!(n, 4);
        assert_eq!(seen, vec![(1, Some("b".to_owned()), "b".to_owned())]);
        // Another key counts everything from scratch.
        let (n, seen) = run("other", &nodes);
        assert_eq!(n, 3);
        assert_eq!(seen.len(), 3);
    }
}
