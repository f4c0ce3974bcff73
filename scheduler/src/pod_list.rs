//! The pods on a node, cheap to copy: the snapshot shares each node with the cache,
//! so every pod added to a node copies its [`NodeInfo`](crate::NodeInfo). Held in
//! shared chunks, a copy costs one reference per chunk and a change copies one chunk,
//! instead of the whole list: a node with 30,000 pods (a DaemonSet's worth of pods all
//! pinned to one node, scheduler_perf's SchedulingDaemonset) no longer costs each pod
//! time in proportion to the pods before it.

use std::sync::Arc;

use crate::pod_info::PodInfo;

/// Pods per chunk.
const CHUNK: usize = 64;

type Chunk = Arc<Vec<Arc<PodInfo>>>;

/// A list of pods in shared chunks. Iterates in order; removal moves the last pod into
/// the gap.
#[derive(Clone, Debug, Default)]
pub struct PodList {
    chunks: Vec<Chunk>,
    len: usize,
}

/// Iterates over a [`PodList`].
pub type Iter<'a> = std::iter::FlatMap<
    std::slice::Iter<'a, Chunk>,
    std::slice::Iter<'a, Arc<PodInfo>>,
    fn(&'a Chunk) -> std::slice::Iter<'a, Arc<PodInfo>>,
>;

impl PodList {
    /// How many pods.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pods, in order.
    pub fn iter(&self) -> Iter<'_> {
        fn chunk(c: &Chunk) -> std::slice::Iter<'_, Arc<PodInfo>> {
            c.iter()
        }
        let chunk: fn(&Chunk) -> std::slice::Iter<'_, Arc<PodInfo>> = chunk;
        self.chunks.iter().flat_map(chunk)
    }

    /// Adds a pod at the end.
    pub(crate) fn push(&mut self, pod: Arc<PodInfo>) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => Arc::make_mut(c).push(pod),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(pod);
                self.chunks.push(Arc::new(c));
            }
        }
        self.len += 1;
    }

    /// Removes the pod with this uid (looking from the end, where the pods added last
    /// are, which are the ones confirmed or forgotten soonest); the last pod takes its
    /// place.
    pub(crate) fn remove(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let (ci, i) = self
            .chunks
            .iter()
            .enumerate()
            .rev()
            .find_map(|(ci, c)| c.iter().rposition(|p| p.uid == uid).map(|i| (ci, i)))?;
        let last = self.pop()?;
        if ci == self.chunks.len() && i == 0 {
            // It was the last pod, and its chunk went with it.
            return Some(last);
        }
        let chunk = self.chunks.get_mut(ci)?;
        if i == chunk.len() {
            // It was the last pod of the last chunk.
            return Some(last);
        }
        let slot = Arc::make_mut(chunk).get_mut(i)?;
        Some(std::mem::replace(slot, last))
    }

    fn pop(&mut self) -> Option<Arc<PodInfo>> {
        let c = self.chunks.last_mut()?;
        let pod = Arc::make_mut(c).pop()?;
        if c.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        Some(pod)
    }
}

impl<'a> IntoIterator for &'a PodList {
    type Item = &'a Arc<PodInfo>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pod;

    fn info(name: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(pod(name).obj())))
    }

    fn names(l: &PodList) -> Vec<String> {
        l.iter()
            .map(|p| p.pod.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn removal_fills_the_gap_with_the_last_pod_and_copies_share_untouched_chunks() {
        let mut l = PodList::default();
        for i in 0..(CHUNK * 2 + 3) {
            l.push(info(&format!("p{i}")));
        }
        assert_eq!(l.len(), CHUNK * 2 + 3);
        let copy = l.clone();
        let last = format!("p{}", CHUNK * 2 + 2);
        let removed = l.remove("uid-p1").expect("p1");
        assert_eq!(removed.pod.metadata.name.as_deref(), Some("p1"));
        assert_eq!(names(&l)[1], last);
        assert_eq!(l.len(), CHUNK * 2 + 2);
        // The copy is unchanged; the chunk nobody touched is still shared.
        assert_eq!(names(&copy)[1], "p1");
        assert!(Arc::ptr_eq(&l.chunks[1], &copy.chunks[1]));
        // Removing the last pod, then emptying a chunk, then everything.
        assert!(l.remove(&format!("uid-p{}", CHUNK * 2 + 1)).is_some());
        assert!(l.remove("uid-missing").is_none());
        let all: Vec<String> = l.iter().map(|p| p.uid.clone()).collect();
        for uid in all
            .iter()
            .rev()
            .step_by(2)
            .chain(all.iter().rev().skip(1).step_by(2))
        {
            assert!(l.remove(uid).is_some(), "{uid}");
        }
        assert!(l.is_empty());
        assert!(l.chunks.is_empty());
        assert_eq!(copy.len(), CHUNK * 2 + 3);
    }
}
