//! The work queue: keys to reconcile, de-duplicated, never handed out twice at once,
//! delayed and rate-limited.
//!
//! Contract (client-go's workqueue semantics):
//! - a key added while it is already queued is queued once;
//! - a key handed out by [`WorkQueue::get`] is *processing* until [`WorkQueue::done`]; if it
//!   is added meanwhile it is queued again after `done`, never handed to a second worker
//!   at the same time;
//! - [`WorkQueue::add_after`] delays a key (the earliest pending delay wins);
//!   [`WorkQueue::add_rate_limited`] delays it by the [`RateLimiter`]'s answer, and
//!   [`WorkQueue::forget`] resets the key's failure count;
//! - after [`WorkQueue::shut_down`], adds are ignored and `get` answers `None`.
//!
//! The default limiter ([`default_rate_limiter`]) is the larger of a per-key exponential
//! backoff (5 ms doubling, capped at 1000 s) and an overall token bucket (10 per second,
//! burst 100), as client-go's default controller rate limiter.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::ControllerMetrics;

/// Decides how long a key waits before its next attempt.
///
/// Implementations must be cheap and thread-safe; `forget` may be called for keys never
/// seen.
pub trait RateLimiter<T>: Send + Sync + 'static {
    /// How long `item` waits now (and records the attempt).
    fn when(&self, item: &T) -> Duration;
    /// Forgets `item`'s history (after a success).
    fn forget(&self, item: &T);
    /// How many times `item` has been delayed since it was last forgotten.
    fn retries(&self, item: &T) -> u32;
}

/// Per-key exponential backoff: `base * 2^failures`, capped at `max`.
#[derive(Debug)]
pub struct ExponentialBackoff<T> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<T, u32>>,
}

impl<T: Hash + Eq> ExponentialBackoff<T> {
    /// A backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        ExponentialBackoff {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> RateLimiter<T> for ExponentialBackoff<T> {
    fn when(&self, item: &T) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(item.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        if exp >= 63 {
            return self.max;
        }
        let factor = 1u64 << exp;
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    fn forget(&self, item: &T) {
        self.failures.lock().remove(item);
    }

    fn retries(&self, item: &T) -> u32 {
        self.failures.lock().get(item).copied().unwrap_or(0)
    }
}

/// An overall token bucket: `qps` tokens per second, at most `burst` saved. Each call of
/// `when` takes a token, waiting for it when none is left.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            qps: qps.max(f64::MIN_POSITIVE),
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }
}

impl<T> RateLimiter<T> for TokenBucket {
    fn when(&self, _item: &T) -> Duration {
        let mut state = self.state.lock();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.qps).min(self.burst);
        state.1 = now;
        state.0 -= 1.0;
        if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.qps)
        }
    }

    fn forget(&self, _item: &T) {}

    fn retries(&self, _item: &T) -> u32 {
        0
    }
}

/// The largest delay of several limiters (each records every attempt).
pub struct MaxOf<T>(pub Vec<Box<dyn RateLimiter<T>>>);

impl<T> fmt::Debug for MaxOf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaxOf({} limiters)", self.0.len())
    }
}

impl<T: 'static> RateLimiter<T> for MaxOf<T> {
    fn when(&self, item: &T) -> Duration {
        self.0
            .iter()
            .map(|l| l.when(item))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn forget(&self, item: &T) {
        for l in &self.0 {
            l.forget(item);
        }
    }

    fn retries(&self, item: &T) -> u32 {
        self.0.iter().map(|l| l.retries(item)).max().unwrap_or(0)
    }
}

/// client-go's default controller limiter: per-key 5 ms doubling to 1000 s, and 10 qps
/// with a burst of 100 overall.
pub fn default_rate_limiter<T: Hash + Eq + Clone + Send + Sync + 'static>() -> MaxOf<T> {
    MaxOf(vec![
        Box::new(ExponentialBackoff::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        )),
        Box::new(TokenBucket::new(10.0, 100)),
    ])
}

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    /// Delayed keys: (when, sequence) in a heap; the live sequence per key in `waiting`.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    by_seq: HashMap<u64, T>,
    waiting: HashMap<T, (Instant, u64)>,
    seq: u64,
    shutting_down: bool,
}

impl<T: Hash + Eq + Clone> State<T> {
    /// Queues `item` unless it is queued already; `true` when a worker should wake.
    fn add(&mut self, item: T) -> bool {
        if self.shutting_down || self.dirty.contains(&item) {
            return false;
        }
        self.dirty.insert(item.clone());
        if self.processing.contains(&item) {
            return false;
        }
        self.queue.push_back(item);
        true
    }

    /// Moves delayed keys that are due into the queue.
    fn promote(&mut self, now: Instant) -> bool {
        let mut woke = false;
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(item) = self.by_seq.remove(&seq) {
                if self.waiting.get(&item).is_some_and(|(_, s)| *s == seq) {
                    self.waiting.remove(&item);
                }
                woke |= self.add(item);
            }
        }
        woke
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    limiter: Box<dyn RateLimiter<T>>,
    metrics: Option<Arc<ControllerMetrics>>,
}

/// A work queue of keys (see the [module docs](self)). Cheap to clone; clones share the
/// queue.
pub struct WorkQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("WorkQueue")
            .field("queued", &s.queue.len())
            .field("processing", &s.processing.len())
            .field("waiting", &s.waiting.len())
            .finish()
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue::new()
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> WorkQueue<T> {
    /// A queue with the [`default_rate_limiter`].
    pub fn new() -> WorkQueue<T> {
        WorkQueue::with_rate_limiter(Box::new(default_rate_limiter()))
    }

    /// A queue with its own limiter.
    pub fn with_rate_limiter(limiter: Box<dyn RateLimiter<T>>) -> WorkQueue<T> {
        WorkQueue::build(limiter, None)
    }

    pub(crate) fn build(
        limiter: Box<dyn RateLimiter<T>>,
        metrics: Option<Arc<ControllerMetrics>>,
    ) -> WorkQueue<T> {
        WorkQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    dirty: HashSet::new(),
                    processing: HashSet::new(),
                    heap: BinaryHeap::new(),
                    by_seq: HashMap::new(),
                    waiting: HashMap::new(),
                    seq: 0,
                    shutting_down: false,
                }),
                notify: Notify::new(),
                limiter,
                metrics,
            }),
        }
    }

    fn gauge(&self, s: &State<T>) {
        if let Some(m) = &self.inner.metrics {
            m.set_queue_depth(s.queue.len());
        }
    }

    /// Queues `item` now.
    pub fn add(&self, item: T) {
        let mut s = self.inner.state.lock();
        let wake = s.add(item);
        if let Some(m) = &self.inner.metrics {
            m.record_add();
        }
        self.gauge(&s);
        drop(s);
        if wake {
            self.inner.notify.notify_one();
        }
    }

    /// Queues `item` after `delay` (at once for zero). A pending earlier delay wins.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let at = Instant::now() + delay;
        let mut s = self.inner.state.lock();
        if s.shutting_down {
            return;
        }
        if s.waiting.get(&item).is_some_and(|(w, _)| *w <= at) {
            return;
        }
        s.seq += 1;
        let seq = s.seq;
        if let Some((_, old)) = s.waiting.insert(item.clone(), (at, seq)) {
            s.by_seq.remove(&old);
        }
        s.by_seq.insert(seq, item);
        let earliest = s.next_deadline().is_none_or(|d| at < d);
        s.heap.push(Reverse((at, seq)));
        drop(s);
        if earliest {
            // A sleeping worker may be waiting for a later deadline.
            self.inner.notify.notify_waiters();
        }
    }

    /// Queues `item` after its rate limiter's delay (counting a retry).
    pub fn add_rate_limited(&self, item: T) {
        let delay = self.inner.limiter.when(&item);
        if let Some(m) = &self.inner.metrics {
            m.record_retry();
        }
        self.add_after(item, delay);
    }

    /// Forgets `item`'s failures (call after it succeeded).
    pub fn forget(&self, item: &T) {
        self.inner.limiter.forget(item);
    }

    /// How many times `item` has been rate-limited since it was last forgotten.
    pub fn retries(&self, item: &T) -> u32 {
        self.inner.limiter.retries(item)
    }

    /// The next key to process, waiting for one; `None` once the queue is shut down. The
    /// caller must call [`WorkQueue::done`] with it.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut s = self.inner.state.lock();
                if s.shutting_down {
                    return None;
                }
                s.promote(Instant::now());
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    let more = !s.queue.is_empty();
                    self.gauge(&s);
                    drop(s);
                    if more {
                        self.inner.notify.notify_one();
                    }
                    return Some(item);
                }
                s.next_deadline()
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `item` processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, item: &T) {
        let mut s = self.inner.state.lock();
        s.processing.remove(item);
        let again = s.dirty.contains(item) && !s.shutting_down;
        if again {
            s.queue.push_back(item.clone());
        }
        self.gauge(&s);
        drop(s);
        if again {
            self.inner.notify.notify_one();
        }
    }

    /// How many keys are queued (not counting delayed or processing ones).
    pub fn len(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    /// Whether no key is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys wait for a delay.
    pub fn delayed(&self) -> usize {
        self.inner.state.lock().waiting.len()
    }

    /// Stops the queue: adds are ignored, `get` answers `None`.
    pub fn shut_down(&self) {
        self.inner.state.lock().shutting_down = true;
        self.inner.notify.notify_waiters();
    }

    /// Whether [`WorkQueue::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.lock().shutting_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_is_queued_once() {
        let q = WorkQueue::<u32>::new();
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some(1));
        assert_eq!(q.get().await, Some(2));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_processing_is_handed_out_again_only_after_done() {
        let q = WorkQueue::<u32>::new();
        q.add(7);
        assert_eq!(q.get().await, Some(7));
        q.add(7);
        assert!(
            q.is_empty(),
            "the key must not be handed to a second worker"
        );
        let second = tokio::time::timeout(Duration::from_secs(1), q.get()).await;
        assert!(second.is_err(), "nothing to get while 7 is processing");
        q.done(&7);
        assert_eq!(q.get().await, Some(7));
        q.done(&7);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_come_out_after_their_delay_and_the_earliest_delay_wins() {
        let q = WorkQueue::<u32>::new();
        let start = Instant::now();
        q.add_after(1, Duration::from_secs(10));
        q.add_after(1, Duration::from_secs(20));
        q.add_after(1, Duration::from_secs(5));
        assert_eq!(q.get().await, Some(1));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        q.done(&1);
        let nothing = tokio::time::timeout(Duration::from_secs(30), q.get()).await;
        assert!(
            nothing.is_err(),
            "the later delays of the same key were merged"
        );
    }

    #[test]
    fn per_key_backoff_doubles_from_5ms_to_a_1000s_cap_and_forget_resets_it() {
        let b = ExponentialBackoff::new(Duration::from_millis(5), Duration::from_secs(1000));
        let delays: Vec<_> = (0..4).map(|_| b.when(&"k")).collect();
        assert_eq!(delays, [5, 10, 20, 40].map(Duration::from_millis).to_vec());
        for _ in 0..100 {
            b.when(&"k");
        }
        assert_eq!(b.when(&"k"), Duration::from_secs(1000));
        assert_eq!(b.when(&"other"), Duration::from_millis(5));
        b.forget(&"k");
        assert_eq!(b.retries(&"k"), 0);
        assert_eq!(b.when(&"k"), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_allows_a_burst_of_100_then_10_per_second() {
        let t = TokenBucket::new(10.0, 100);
        for _ in 0..100 {
            assert_eq!(RateLimiter::<u32>::when(&t, &0), Duration::ZERO);
        }
        let d = RateLimiter::<u32>::when(&t, &0);
        assert!((d.as_secs_f64() - 0.1).abs() < 1e-6, "{d:?}");
        let d = RateLimiter::<u32>::when(&t, &0);
        assert!((d.as_secs_f64() - 0.2).abs() < 1e-6, "{d:?}");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(RateLimiter::<u32>::when(&t, &0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_back_off_per_key() {
        let q = WorkQueue::<u32>::new();
        let start = Instant::now();
        q.add_rate_limited(3);
        q.add_rate_limited(3);
        assert_eq!(q.get().await, Some(3));
        // The first (5 ms) delay wins over the second (10 ms).
        assert_eq!(Instant::now() - start, Duration::from_millis(5));
        assert_eq!(q.retries(&3), 2);
        q.forget(&3);
        assert_eq!(q.retries(&3), 0);
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers_with_none() {
        let q = WorkQueue::<u32>::new();
        let q2 = q.clone();
        let worker = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(worker.await.expect("join"), None);
        q.add(1);
        assert!(q.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_workers_never_hold_the_same_key() {
        let q = WorkQueue::<u32>::new();
        let busy = Arc::new(Mutex::new(HashSet::new()));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (q, busy) = (q.clone(), busy.clone());
            workers.push(tokio::spawn(async move {
                let mut n = 0;
                while let Some(k) = q.get().await {
                    assert!(busy.lock().insert(k), "key {k} handed out twice at once");
                    tokio::task::yield_now().await;
                    busy.lock().remove(&k);
                    q.done(&k);
                    n += 1;
                }
                n
            }));
        }
        for i in 0..2000u32 {
            q.add(i % 10);
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        while !q.is_empty() || !q.inner.state.lock().processing.is_empty() {
            tokio::task::yield_now().await;
        }
        q.shut_down();
        let mut total = 0;
        for w in workers {
            total += w.await.expect("join");
        }
        assert!(total >= 10);
    }
}
