//! The scheduling queue: an active queue ordered by the profile's QueueSort, a backoff
//! queue for pods that just failed, and the unschedulable pods, parked until a cluster
//! event may make them fit.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::framework::{ClusterEvent, QueueSort};
use crate::pod_info::PodInfo;

/// Kubernetes' initial backoff for a pod that failed (`podInitialBackoffSeconds`).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Kubernetes' longest backoff (`podMaxBackoffSeconds`).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a pod stays parked as unschedulable without any event before the periodic
/// flush retries it (Kubernetes' `podMaxInUnschedulablePodsDuration`).
pub const DEFAULT_MAX_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);
/// How often the unschedulable pods are checked for that (Kubernetes: 30 s).
pub const UNSCHEDULABLE_FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// How often the backoff queue is checked for pods whose backoff is over (1 s).
pub const BACKOFF_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

const MAX_RECENT_EVENTS: usize = 10_000;

/// A pod in the queue, with its scheduling history.
#[derive(Clone, Debug)]
pub struct QueuedPodInfo {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// When it was last added to the queue.
    pub timestamp: Instant,
    /// When it was first tried.
    pub initial_attempt: Option<Instant>,
    /// How many times it was tried.
    pub attempts: u32,
    /// The plugins that rejected it last time: only their events move it back.
    pub unschedulable_plugins: BTreeSet<String>,
    /// The event sequence number when it was popped.
    pub(crate) popped_at_event: u64,
    /// Its last attempt failed with an error (not as unschedulable): it waits out its
    /// whole backoff.
    pub(crate) errored: bool,
}

impl QueuedPodInfo {
    fn new(pod: Arc<PodInfo>, now: Instant) -> QueuedPodInfo {
        QueuedPodInfo {
            pod,
            timestamp: now,
            initial_attempt: None,
            attempts: 0,
            unschedulable_plugins: BTreeSet::new(),
            popped_at_event: 0,
            errored: false,
        }
    }
}

struct ActiveEntry {
    seq: u64,
    info: QueuedPodInfo,
    less: Arc<dyn QueueSort>,
}

impl PartialEq for ActiveEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ActiveEntry {}
impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: "less" (scheduled first) is greater here.
        if self.less.less(&self.info, &other.info) {
            Ordering::Greater
        } else if self.less.less(&other.info, &self.info) {
            Ordering::Less
        } else {
            other.seq.cmp(&self.seq)
        }
    }
}

struct BackoffEntry {
    until: Instant,
    seq: u64,
    info: QueuedPodInfo,
}

impl PartialEq for BackoffEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.until, self.seq) == (other.until, other.seq)
    }
}
impl Eq for BackoffEntry {}
impl PartialOrd for BackoffEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BackoffEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.until, self.seq).cmp(&(other.until, other.seq))
    }
}

#[derive(Default)]
struct Inner {
    active: BinaryHeap<ActiveEntry>,
    active_seq: HashMap<String, u64>,
    backoff: BinaryHeap<Reverse<BackoffEntry>>,
    backoff_seq: HashMap<String, u64>,
    unschedulable: HashMap<String, QueuedPodInfo>,
    /// Popped and not yet back or done: the latest version of the pod seen meanwhile,
    /// `None` once it was deleted.
    in_flight: HashMap<String, Option<Arc<PodInfo>>>,
    seq: u64,
    event_seq: u64,
    recent_events: VecDeque<(u64, ClusterEvent)>,
    closed: bool,
}

/// Queue lengths, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLengths {
    /// Pods ready to be tried.
    pub active: usize,
    /// Pods waiting out their backoff.
    pub backoff: usize,
    /// Pods parked until an event.
    pub unschedulable: usize,
}

/// The scheduling queue of one scheduler (shared by its profiles).
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    less: Arc<dyn QueueSort>,
    registrations: HashMap<String, Vec<ClusterEvent>>,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_unschedulable: Duration,
}

impl std::fmt::Debug for SchedulingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulingQueue")
            .field("lengths", &self.lengths())
            .finish_non_exhaustive()
    }
}

impl SchedulingQueue {
    /// A queue ordered by `less`; `registrations` are the cluster events each plugin
    /// cares about.
    pub fn new(
        less: Arc<dyn QueueSort>,
        registrations: HashMap<String, Vec<ClusterEvent>>,
    ) -> SchedulingQueue {
        SchedulingQueue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            less,
            registrations,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_unschedulable: DEFAULT_MAX_UNSCHEDULABLE,
        }
    }

    /// The same queue with other backoff bounds.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> SchedulingQueue {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The backoff after `attempts` failures: the initial backoff doubled per further
    /// attempt, up to the maximum.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.initial_backoff;
        for _ in 1..attempts {
            d = d.saturating_mul(2);
            if d >= self.max_backoff {
                return self.max_backoff;
            }
        }
        d.min(self.max_backoff)
    }

    fn push_active(&self, inner: &mut Inner, info: QueuedPodInfo) {
        inner.seq += 1;
        let seq = inner.seq;
        inner.active_seq.insert(info.pod.uid.clone(), seq);
        inner.active.push(ActiveEntry {
            seq,
            info,
            less: self.less.clone(),
        });
    }

    fn push_backoff(&self, inner: &mut Inner, info: QueuedPodInfo, until: Instant) {
        inner.seq += 1;
        let seq = inner.seq;
        inner.backoff_seq.insert(info.pod.uid.clone(), seq);
        inner
            .backoff
            .push(Reverse(BackoffEntry { until, seq, info }));
        self.notify.notify_one();
    }

    fn backoff_until(&self, info: &QueuedPodInfo) -> Instant {
        info.timestamp + self.backoff_duration(info.attempts)
    }

    /// Adds a pod waiting to be scheduled (or updates it if queued).
    pub fn add(&self, pod: Arc<PodInfo>) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return;
        }
        let uid = pod.uid.clone();
        if let Some(slot) = inner.in_flight.get_mut(&uid) {
            *slot = Some(pod);
            return;
        }
        if inner.active_seq.contains_key(&uid)
            || inner.backoff_seq.contains_key(&uid)
            || inner.unschedulable.contains_key(&uid)
        {
            drop(inner);
            self.update(pod, true);
            return;
        }
        let info = QueuedPodInfo::new(pod, Instant::now());
        self.push_active(&mut inner, info);
        drop(inner);
        self.notify.notify_one();
    }

    /// A queued pod changed. `significant`: its spec or labels changed (not only its
    /// status), which may make a parked pod fit.
    pub fn update(&self, pod: Arc<PodInfo>, significant: bool) {
        let mut inner = self.inner.lock();
        let uid = pod.uid.clone();
        if let Some(slot) = inner.in_flight.get_mut(&uid) {
            *slot = Some(pod);
            return;
        }
        if inner.active_seq.contains_key(&uid) {
            // Replace: the old heap entry becomes stale.
            let old = inner
                .active
                .iter()
                .find(|e| e.info.pod.uid == uid && inner.active_seq.get(&uid) == Some(&e.seq))
                .map(|e| e.info.clone());
            let mut info = old.unwrap_or_else(|| QueuedPodInfo::new(pod.clone(), Instant::now()));
            info.pod = pod;
            self.push_active(&mut inner, info);
            return;
        }
        if let Some(&seq) = inner.backoff_seq.get(&uid) {
            let found = inner
                .backoff
                .iter()
                .find(|e| e.0.seq == seq)
                .map(|e| (e.0.until, e.0.info.clone()));
            if let Some((until, mut info)) = found {
                info.pod = pod;
                self.push_backoff(&mut inner, info, until);
            }
            return;
        }
        if let Some(mut info) = inner.unschedulable.remove(&uid) {
            info.pod = pod;
            if significant {
                let until = self.backoff_until(&info);
                if until > Instant::now() {
                    self.push_backoff(&mut inner, info, until);
                } else {
                    self.push_active(&mut inner, info);
                    drop(inner);
                    self.notify.notify_one();
                }
            } else {
                inner.unschedulable.insert(uid, info);
            }
        }
    }

    /// A pod deleted (or bound by someone else): drops it wherever it is.
    pub fn delete(&self, uid: &str) {
        let mut inner = self.inner.lock();
        inner.active_seq.remove(uid);
        inner.backoff_seq.remove(uid);
        inner.unschedulable.remove(uid);
        if let Some(slot) = inner.in_flight.get_mut(uid) {
            *slot = None;
        }
    }

    /// Waits for the next pod to try; `None` once the queue is closed.
    pub async fn pop(&self) -> Option<QueuedPodInfo> {
        loop {
            let notified = self.notify.notified();
            {
                let mut inner = self.inner.lock();
                if inner.closed {
                    return None;
                }
                let mut next = None;
                while let Some(entry) = inner.active.pop() {
                    let uid = entry.info.pod.uid.clone();
                    if inner.active_seq.get(&uid) != Some(&entry.seq) {
                        continue;
                    }
                    inner.active_seq.remove(&uid);
                    next = Some(entry.info);
                    break;
                }
                // As Kubernetes 1.33 does (SchedulerPopFromBackoffQ): when nothing else
                // is ready, the pod whose backoff ends first goes now.
                // Pods that failed with an error wait out their backoff.
                if next.is_none() {
                    let mut errored = Vec::new();
                    while let Some(Reverse(entry)) = inner.backoff.pop() {
                        let uid = entry.info.pod.uid.clone();
                        if inner.backoff_seq.get(&uid) != Some(&entry.seq) {
                            continue;
                        }
                        if entry.info.errored {
                            errored.push(entry);
                            continue;
                        }
                        inner.backoff_seq.remove(&uid);
                        next = Some(entry.info);
                        break;
                    }
                    for e in errored {
                        inner.backoff.push(Reverse(e));
                    }
                }
                if let Some(info) = next {
                    let uid = info.pod.uid.clone();
                    let mut info = info;
                    info.attempts += 1;
                    info.initial_attempt.get_or_insert_with(Instant::now);
                    info.popped_at_event = inner.event_seq;
                    inner.in_flight.insert(uid, Some(info.pod.clone()));
                    return Some(info);
                }
            }
            notified.await;
        }
    }

    /// The cycle of a popped pod ended with the pod bound or assumed: it leaves the
    /// queue's care.
    pub fn done(&self, uid: &str) {
        self.inner.lock().in_flight.remove(uid);
    }

    /// Puts back a pod whose cycle failed. `error`: it failed for an internal error
    /// (straight to backoff). Otherwise it is parked unless an event that may make it
    /// fit happened while it was being tried. A pod deleted meanwhile is dropped.
    pub fn requeue(&self, mut info: QueuedPodInfo, error: bool) {
        let mut inner = self.inner.lock();
        let uid = info.pod.uid.clone();
        match inner.in_flight.remove(&uid) {
            Some(Some(latest)) => info.pod = latest,
            Some(None) => return,
            None => {}
        }
        if inner.closed {
            return;
        }
        info.timestamp = Instant::now();
        info.errored = error;
        let missed_event = inner
            .recent_events
            .front()
            .is_some_and(|(seq, _)| *seq > info.popped_at_event + 1)
            && inner.event_seq > info.popped_at_event;
        let moved = error
            || missed_event
            || inner
                .recent_events
                .iter()
                .rev()
                .take_while(|(seq, _)| *seq > info.popped_at_event)
                .any(|(_, ev)| self.relevant(&info, ev));
        if moved {
            let until = self.backoff_until(&info);
            self.push_backoff(&mut inner, info, until);
        } else {
            inner.unschedulable.insert(uid, info);
        }
    }

    fn relevant(&self, info: &QueuedPodInfo, event: &ClusterEvent) -> bool {
        info.unschedulable_plugins.is_empty()
            || info.unschedulable_plugins.iter().any(|p| {
                self.registrations
                    .get(p)
                    .is_some_and(|evs| evs.iter().any(|r| r.covers(event)))
            })
    }

    /// A cluster event: moves the parked pods it may help to the active queue (or to
    /// backoff while theirs lasts).
    pub fn on_event(&self, event: ClusterEvent) {
        let mut inner = self.inner.lock();
        inner.event_seq += 1;
        let seq = inner.event_seq;
        if !inner.in_flight.is_empty() {
            inner.recent_events.push_back((seq, event));
            if inner.recent_events.len() > MAX_RECENT_EVENTS {
                inner.recent_events.pop_front();
            }
        } else {
            inner.recent_events.clear();
        }
        if inner.unschedulable.is_empty() {
            return;
        }
        let moving: Vec<String> = inner
            .unschedulable
            .iter()
            .filter(|(_, info)| self.relevant(info, &event))
            .map(|(uid, _)| uid.clone())
            .collect();
        if self.move_pods(&mut inner, moving) {
            drop(inner);
            self.notify.notify_one();
        }
    }

    fn move_pods(&self, inner: &mut Inner, uids: Vec<String>) -> bool {
        let now = Instant::now();
        let mut activated = false;
        for uid in uids {
            if let Some(info) = inner.unschedulable.remove(&uid) {
                let until = self.backoff_until(&info);
                if until > now {
                    self.push_backoff(inner, info, until);
                } else {
                    self.push_active(inner, info);
                    activated = true;
                }
            }
        }
        activated
    }

    /// Moves pods whose backoff is over to the active queue.
    pub fn flush_backoff(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let mut activated = false;
        while inner.backoff.peek().is_some_and(|e| e.0.until <= now) {
            let Some(Reverse(entry)) = inner.backoff.pop() else {
                break;
            };
            let uid = entry.info.pod.uid.clone();
            if inner.backoff_seq.get(&uid) != Some(&entry.seq) {
                continue;
            }
            inner.backoff_seq.remove(&uid);
            self.push_active(&mut inner, entry.info);
            activated = true;
        }
        drop(inner);
        if activated {
            self.notify.notify_one();
        }
    }

    /// Retries the pods parked longer than the maximum (5 minutes) without an event.
    pub fn flush_unschedulable(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let old: Vec<String> = inner
            .unschedulable
            .iter()
            .filter(|(_, i)| now.duration_since(i.timestamp) >= self.max_unschedulable)
            .map(|(uid, _)| uid.clone())
            .collect();
        if self.move_pods(&mut inner, old) {
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// The queue lengths.
    pub fn lengths(&self) -> QueueLengths {
        let inner = self.inner.lock();
        QueueLengths {
            active: inner.active_seq.len(),
            backoff: inner.backoff_seq.len(),
            unschedulable: inner.unschedulable.len(),
        }
    }

    /// The parked pods' uids.
    pub fn unschedulable_uids(&self) -> Vec<String> {
        self.inner.lock().unschedulable.keys().cloned().collect()
    }

    /// Stops the queue: `pop` returns `None`.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::{ActionType, EventResource};
    use crate::plugins::PrioritySort;
    use crate::testing::pod;

    fn queue() -> SchedulingQueue {
        let registrations = HashMap::from([(
            "NodeResourcesFit".to_owned(),
            vec![ClusterEvent::new(
                EventResource::Node,
                ActionType::ADD.or(ActionType::UPDATE_NODE_ALLOCATABLE),
            )],
        )]);
        SchedulingQueue::new(Arc::new(PrioritySort), registrations)
    }

    fn info(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(pod(name).priority(priority).obj())))
    }

    #[tokio::test(start_paused = true)]
    async fn active_queue_pops_by_priority_then_age() {
        let q = queue();
        q.add(info("low", 0));
        tokio::time::advance(Duration::from_millis(1)).await;
        q.add(info("high", 10));
        q.add(info("low-later", 0));
        let order: Vec<String> = [q.pop().await, q.pop().await, q.pop().await]
            .into_iter()
            .flatten()
            .map(|i| i.pod.name.clone())
            .collect();
        assert_eq!(order, ["high", "low", "low-later"]);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten() {
        let q = queue();
        let secs: Vec<u64> = (1..=6).map(|a| q.backoff_duration(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_move_only_on_events_their_plugins_registered() {
        let q = queue();
        q.add(info("p", 0));
        let mut popped = q.pop().await.expect("pod");
        popped
            .unschedulable_plugins
            .insert("NodeResourcesFit".into());
        q.requeue(popped, false);
        assert_eq!(q.lengths().unschedulable, 1);

        // An irrelevant event: the pod stays parked.
        q.on_event(ClusterEvent::new(
            EventResource::AssignedPod,
            ActionType::ADD,
        ));
        assert_eq!(q.lengths().unschedulable, 1);

        // A node added may make it fit: to backoff first (1 s), then active.
        q.on_event(ClusterEvent::new(EventResource::Node, ActionType::ADD));
        assert_eq!(
            q.lengths(),
            QueueLengths {
                active: 0,
                backoff: 1,
                unschedulable: 0
            }
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        q.flush_backoff();
        assert_eq!(q.lengths().active, 1);
        let again = q.pop().await.expect("pod");
        assert_eq!(again.attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_the_cycle_sends_the_pod_to_backoff_not_parking() {
        let q = queue();
        q.add(info("p", 0));
        let mut popped = q.pop().await.expect("pod");
        q.on_event(ClusterEvent::new(EventResource::Node, ActionType::ADD));
        popped
            .unschedulable_plugins
            .insert("NodeResourcesFit".into());
        q.requeue(popped, false);
        assert_eq!(q.lengths().backoff, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_takes_backoff_pods_early_but_not_errored_ones() {
        let q = queue();
        q.add(info("unlucky", 0));
        q.add(info("broken", 0));
        let a = q.pop().await.expect("pod");
        let b = q.pop().await.expect("pod");
        let (unlucky, broken) = if a.pod.name == "unlucky" {
            (a, b)
        } else {
            (b, a)
        };
        q.requeue(broken, true);
        let mut unlucky = unlucky;
        unlucky
            .unschedulable_plugins
            .insert("NodeResourcesFit".into());
        q.requeue(unlucky, false);
        q.on_event(ClusterEvent::new(EventResource::Node, ActionType::ADD));
        assert_eq!(q.lengths().backoff, 2);
        let next = tokio::time::timeout(Duration::from_millis(10), q.pop()).await;
        assert_eq!(
            next.ok().flatten().map(|i| i.pod.name.clone()).as_deref(),
            Some("unlucky")
        );
        let none = tokio::time::timeout(Duration::from_millis(10), q.pop()).await;
        assert!(none.is_err(), "the errored pod waits its backoff");
        tokio::time::advance(Duration::from_secs(1)).await;
        q.flush_backoff();
        assert_eq!(
            q.pop().await.map(|i| i.pod.name.clone()).as_deref(),
            Some("broken")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parked_pods_are_retried_after_five_minutes_without_events() {
        let q = queue();
        q.add(info("p", 0));
        let mut popped = q.pop().await.expect("pod");
        popped
            .unschedulable_plugins
            .insert("NodeResourcesFit".into());
        q.requeue(popped, false);
        tokio::time::advance(Duration::from_secs(299)).await;
        q.flush_unschedulable();
        assert_eq!(q.lengths().unschedulable, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        q.flush_unschedulable();
        assert_eq!(q.lengths().active, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_deleted_while_in_flight_is_not_requeued() {
        let q = queue();
        let p = info("p", 0);
        q.add(p.clone());
        let popped = q.pop().await.expect("pod");
        q.delete(&p.uid);
        q.requeue(popped, true);
        assert_eq!(q.lengths(), QueueLengths::default());
    }
}
