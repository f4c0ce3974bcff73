//! MemStore: the embedded default store.
//!
//! # Shape
//! The whole multi-version state lives in memory ([`state`]): a sorted map from key to that
//! key's retained versions. Reads take a read lock and never touch the disk. Writes go to
//! one committer thread, which takes every write waiting in its queue as one group: it
//! checks each against the state plus the writes still on their way to it, gives it the
//! next revision, and appends the group to the write-ahead log as one checksummed record.
//! A second thread, the syncer, takes every group written so far, calls `fdatasync` once
//! for all of them, and only then applies them to the state, publishes the events to the
//! watchers and answers the writers. The committer does not wait for the disk: while one
//! sync runs it checks and writes the next groups, which the next sync covers. So a write
//! is acknowledged only once it is on disk, one `fdatasync` serves every write that arrived
//! while the last one ran, and no reader ever sees a write that a crash could take back.
//!
//! When the log has grown past a threshold since the last snapshot, a snapshot of the
//! state is written in the background and the log segments it covers are removed.
//! Recovery loads the newest snapshot and replays the segments after it; a record cut
//! short at the very end of the log (a write that was never acknowledged) is cut off and
//! reported in the [`RecoveryReport`].
//!
//! # Why a log of our own rather than an embedded database
//! The state must be in memory anyway (reads at memory speed, watch history, MVCC at any
//! retained revision). What the disk has to do is make each group of writes durable with
//! one sequential append and one `fdatasync`, and give the state back on start. An embedded
//! B-tree such as redb keeps a second, paged copy of the data and updates it copy-on-write
//! at every commit, which is write amplification with no read to pay for it. Measured on
//! this project's 2-core machines (`cargo bench -p keelson-store --bench wal_vs_redb`, redb
//! 4 driven the best way for this job: one committer, every waiting write in one durable
//! transaction), the log does about 1.1× redb's durable writes with 1 writer, 1.3× with
//! 16 and 3.8× with 256 (figures in BENCHMARKS.md), so MemStore keeps its own log.
//!
//! # Snapshots
//! The snapshot is taken from a frozen copy of the state: the committer clones the map of
//! keys (values are shared, not copied) under the read lock, starts a new log segment, and
//! a background thread streams the copy to disk. Writers pause only for the clone. The log
//! is cut into segments of bounded size, so recovery reads it a piece at a time; a snapshot
//! is due once the log has grown by the larger of 64 MiB and the last snapshot's size.
//! History is kept until [`Store::compact`] discards it (the API server compacts
//! periodically, as Kubernetes' does); until then it is in memory and in every snapshot.
//!
//! # Watchers
//! Committed groups are published on a bounded broadcast ring. Each watcher reads the ring
//! at its own pace; one that falls a whole ring behind gets `WatchLagged` and must re-list.
//! Writers never wait for watchers.

mod codec;
mod snapshot;
mod state;
mod wal;

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use self::state::{key_value, Op, Overlay, Prepared, State};
use self::wal::{AppendError, RecordBuilder, Segment, Tail};
use crate::continue_token;
use crate::error::{Result, StoreError};
use crate::limits::{check_key, check_value};
use crate::store::{Store, WatchStream};
use crate::types::{Deleted, Event, KeyValue, ListOptions, ListPage, Revision};

/// Settings of a [`MemStore`].
#[derive(Clone, Debug)]
pub struct MemStoreOptions {
    /// Write a snapshot once the log has grown by this many bytes since the last one (or by
    /// the size of the last snapshot, if that is larger, so snapshotting costs at most about
    /// as much disk traffic as the log itself). Default 64 MiB.
    pub snapshot_after_bytes: u64,
    /// Start a new log segment once the current one holds this many bytes, so recovery
    /// reads the log a bounded piece at a time. Default 64 MiB.
    pub segment_bytes: u64,
    /// How many committed groups the watch ring holds; a watcher that falls further behind
    /// is cut off with `WatchLagged`. Default 8192.
    pub watch_buffer: usize,
    /// The most writes committed as one group. Default 4096.
    pub max_group: usize,
}

impl Default for MemStoreOptions {
    fn default() -> Self {
        MemStoreOptions {
            snapshot_after_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            watch_buffer: 8192,
            max_group: 4096,
        }
    }
}

/// What [`MemStore::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The revision of the snapshot recovery started from, if there was one.
    pub snapshot_revision: Option<Revision>,
    /// How many log segments were read.
    pub segments: usize,
    /// How many log records (commit groups) were replayed.
    pub records: u64,
    /// The store's revision after recovery.
    pub revision: Revision,
    /// The unfinished write cut off the end of the log, if there was one. Such a write was
    /// never acknowledged.
    pub torn_tail: Option<TornTail>,
    /// How long recovery took.
    pub duration: Duration,
    /// How many bytes of log recovery replayed after the snapshot.
    pub log_bytes: u64,
}

/// An incomplete record found at the end of the log and cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Where the incomplete record started.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
}

/// The embedded store: multi-version state in memory, durable through a write-ahead log
/// with group commit and snapshots (see the module docs). Cheap to clone; clones share one
/// store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> keelson_store::Result<()> {
/// use keelson_store::{MemStore, Store};
/// let dir = tempfile::tempdir().expect("temp dir");
/// let store = MemStore::open(dir.path())?;
/// let kv = store.create("/registry/core/configmaps/default/a", "{}".into()).await?;
/// assert_eq!(store.get("/registry/core/configmaps/default/a").await?, Some(kv));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// The committer's queue; `None` for an ephemeral store (writes apply inline).
    queue: Option<mpsc::UnboundedSender<Request>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    recovery: Option<RecoveryReport>,
    /// Held for the store's life so no second process opens the same directory.
    _lock: Option<File>,
}

/// What the readers and the committer share.
struct Shared {
    state: RwLock<State>,
    /// Committed groups for the watchers; sent to only under the state's write lock, so a
    /// watcher that subscribes under the read lock misses nothing and sees nothing twice.
    events: broadcast::Sender<Arc<Published>>,
    /// Set when the log can no longer be trusted to have written what it was given.
    failed: Mutex<Option<String>>,
    is_failed: AtomicBool,
}

/// What the watch ring carries.
enum Published {
    /// The events of one committed group, in revision order.
    Group(Vec<Event>),
    /// The log failed: watchers end with `Unavailable`.
    Failed(String),
}

enum Request {
    Write(Op, oneshot::Sender<Result<Prepared>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

impl MemStore {
    /// A store with no disk at all: for tests and throwaway clusters. Everything is lost
    /// when the last clone is dropped.
    pub fn ephemeral() -> MemStore {
        Self::ephemeral_with(MemStoreOptions::default())
    }

    /// [`MemStore::ephemeral`] with settings.
    pub fn ephemeral_with(options: MemStoreOptions) -> MemStore {
        let shared = Shared::new(State::default(), &options);
        MemStore {
            inner: Arc::new(Inner {
                shared,
                queue: None,
                committer: Mutex::new(None),
                recovery: None,
                _lock: None,
            }),
        }
    }

    /// Opens (or creates) a durable store in `dir`, recovering what it holds.
    ///
    /// # Errors
    /// `Io` when the directory cannot be read or written, or another process has it open;
    /// `Corrupt` when a snapshot or a log record other than the very last one is damaged.
    pub fn open(dir: impl AsRef<Path>) -> Result<MemStore> {
        Self::open_with(dir, MemStoreOptions::default())
    }

    /// [`MemStore::open`] with settings.
    ///
    /// # Errors
    /// As [`MemStore::open`].
    pub fn open_with(dir: impl AsRef<Path>, options: MemStoreOptions) -> Result<MemStore> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StoreError::io(format!("creating store directory {}", dir.display()), e)
            })?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                wal::sync_dir(parent)?;
            }
        }
        let lock = lock_dir(&dir)?;
        let (state, segment, report) = recover(&dir)?;
        if let Some(torn) = &report.torn_tail {
            tracing::warn!(
                segment = %torn.segment.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "cut an unfinished write off the end of the log"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            revision = report.revision,
            records = report.records,
            elapsed_ms = report.duration.as_millis() as u64,
            "store recovered"
        );
        let shared = Shared::new(state, &options);
        let (tx, rx) = mpsc::unbounded_channel();
        let (publish, published) = std::sync::mpsc::channel();
        let events = shared.events.clone();
        std::thread::Builder::new()
            .name("keelson-store-publish".into())
            .spawn(move || publisher(published, events))
            .map_err(|e| StoreError::io("starting the publish thread", e))?;
        let progress = Arc::new(Progress::default());
        let (written, to_sync) = std::sync::mpsc::sync_channel(MAX_IN_FLIGHT);
        let syncer = Syncer {
            rx: to_sync,
            shared: shared.clone(),
            progress: progress.clone(),
            publish,
        };
        let syncer = std::thread::Builder::new()
            .name("keelson-store-sync".into())
            .spawn(move || syncer.run())
            .map_err(|e| StoreError::io("starting the sync thread", e))?;
        let committer = Committer {
            rx,
            shared: shared.clone(),
            dir,
            segment,
            record: RecordBuilder::new(),
            options,
            last_snapshot_bytes: Arc::new(AtomicU64::new(0)),
            since_snapshot: report.log_bytes,
            snapshotter: None,
            pending: Overlay::new(),
            revision: report.revision,
            written: Some(written),
            sent: 0,
            progress,
            syncer: Some(syncer),
        };
        let handle = std::thread::Builder::new()
            .name("keelson-store-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| StoreError::io("starting the commit thread", e))?;
        Ok(MemStore {
            inner: Arc::new(Inner {
                shared,
                queue: Some(tx),
                committer: Mutex::new(Some(handle)),
                recovery: Some(report),
                _lock: Some(lock),
            }),
        })
    }

    /// What recovery found when the store was opened (`None` for an ephemeral store).
    pub fn recovery_report(&self) -> Option<&RecoveryReport> {
        self.inner.recovery.as_ref()
    }

    async fn write(&self, op: Op) -> Result<Prepared> {
        let shared = &self.inner.shared;
        match &self.inner.queue {
            None => {
                let mut state = shared.state.write();
                let p = state.prepare(&mut Overlay::new(), &op, state.revision + 1)?;
                let group = std::slice::from_ref(&p);
                Shared::apply(&mut state, group, None);
                if let Some(events) = shared.events_of(group) {
                    let _ = shared.events.send(Arc::new(Published::Group(events)));
                }
                Ok(p)
            }
            Some(queue) => {
                shared.check_failed()?;
                let (tx, rx) = oneshot::channel();
                queue.send(Request::Write(op, tx)).map_err(|_| closed())?;
                rx.await.map_err(|_| closed())?
            }
        }
    }
}

fn closed() -> StoreError {
    StoreError::unavailable("the store's commit thread has stopped")
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the committer finish its last group and stop.
        self.queue = None;
        if let Some(handle) = self.committer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn new(state: State, options: &MemStoreOptions) -> Arc<Shared> {
        let (events, _) = broadcast::channel(options.watch_buffer.max(16));
        Arc::new(Shared {
            state: RwLock::new(state),
            events,
            failed: Mutex::new(None),
            is_failed: AtomicBool::new(false),
        })
    }

    fn check_failed(&self) -> Result<()> {
        if self.is_failed.load(Ordering::Acquire) {
            let reason = self.failed.lock().clone().unwrap_or_default();
            return Err(StoreError::unavailable(format!(
                "an earlier write to the log failed ({reason}); the store accepts no more writes until it is reopened"
            )));
        }
        Ok(())
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "store log failed; refusing further writes");
        *self.failed.lock() = Some(reason.clone());
        self.is_failed.store(true, Ordering::Release);
        let _state = self.state.write();
        let _ = self.events.send(Arc::new(Published::Failed(reason)));
    }

    /// Applies committed writes (and a compaction) to the state.
    fn apply(state: &mut State, group: &[Prepared], compact: Option<Revision>) {
        for p in group {
            state.apply(p);
        }
        if let Some(c) = compact {
            state.compact(c);
        }
    }

    /// The events of a group, if anyone watches.
    fn events_of(&self, group: &[Prepared]) -> Option<Vec<Event>> {
        (!group.is_empty() && self.events.receiver_count() > 0)
            .then(|| group.iter().map(Prepared::event).collect())
    }
}

/// Takes the directory's lock file, so two processes never write one store.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    // A lock just released can stay held for a moment by a child process this process is
    // forking (until it execs and closes its copy), so a busy lock is retried briefly.
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(StoreError::io(
                    format!(
                        "locking {} (is another process using this store?)",
                        path.display()
                    ),
                    std::io::Error::other(e.to_string()),
                ))
            }
        }
    }
}

/// Loads the newest snapshot, replays the log after it, cuts a torn tail, and opens the
/// segment to append to.
fn recover(dir: &Path) -> Result<(State, Segment, RecoveryReport)> {
    let started = Instant::now();
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rev) = snapshot::parse_file_name(name) {
            snapshots.push((rev, entry.path()));
        } else if let Some(first) = wal::parse_segment_name(name) {
            segments.push((first, entry.path()));
        } else if name.starts_with("snap-") && name.ends_with(".tmp") {
            // A snapshot that was being written when the process stopped.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    snapshots.sort();
    segments.sort();

    let mut report = RecoveryReport::default();
    let mut state = match snapshots.last() {
        Some((rev, path)) => {
            report.snapshot_revision = Some(*rev);
            snapshot::load(path)?
        }
        None => State::default(),
    };
    let snapshot_revision = state.revision;
    let corrupt = |reason: String| StoreError::Corrupt { reason };

    // Only segments that can hold revisions after the snapshot matter.
    let first_needed = segments
        .iter()
        .rposition(|(first, _)| *first <= state.revision + 1)
        .unwrap_or(0);
    let segments = &segments[first_needed..];
    if let Some((first, path)) = segments.first() {
        if *first > state.revision + 1 {
            return Err(corrupt(format!(
                "log segment {} starts at revision {first} but the state before it ends at {}",
                path.display(),
                state.revision
            )));
        }
    }
    let mut append_to = None;
    for (i, (_, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next_first = segments.get(i + 1).map(|(first, _)| *first);
        let buf = wal::read_file(path)?;
        let (records, tail) = wal::scan(&buf);
        report.segments += 1;
        let mut good_len = 0u64;
        for payload in records {
            good_len += (payload.len() + 12) as u64;
            let entries = wal::entries(payload).ok_or_else(|| {
                corrupt(format!(
                    "log segment {}: a record with a valid checksum does not decode",
                    path.display()
                ))
            })?;
            report.records += 1;
            for entry in entries {
                match entry {
                    codec::Entry::Write { key, version } => {
                        if version.mod_revision <= snapshot_revision {
                            continue; // already in the snapshot
                        }
                        if version.mod_revision != state.revision + 1 {
                            return Err(corrupt(format!(
                                "log segment {}: revision {} follows {}",
                                path.display(),
                                version.mod_revision,
                                state.revision
                            )));
                        }
                        let key: Arc<str> = match state.keys.get_key_value(key.as_str()) {
                            Some((k, _)) => k.clone(),
                            None => Arc::from(key),
                        };
                        state.apply_version(key, version);
                    }
                    codec::Entry::Compact { revision } => state.compact(revision),
                }
            }
        }
        match tail {
            Tail::Clean => {}
            // A torn last record; or a write that failed just before the log moved on to
            // a new segment, which starts right where this one's whole records end.
            Tail::Torn { offset, bytes } if last || next_first == Some(state.revision + 1) => {
                report.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset,
                    bytes,
                });
            }
            Tail::Torn { offset, .. } | Tail::Damaged { offset } => {
                return Err(corrupt(format!(
                    "log segment {} is damaged at byte {offset}, before records that were acknowledged",
                    path.display()
                )));
            }
        }
        report.log_bytes += good_len;
        if last {
            append_to = Some((path.clone(), good_len));
        }
    }
    let segment = match append_to {
        Some((path, len)) => Segment::reopen(path, len)?,
        None => Segment::create(dir, state.revision + 1)?,
    };
    report.revision = state.revision;
    report.duration = started.elapsed();
    Ok((state, segment, report))
}

/// The thread that checks groups of writes and appends them to the log. It does not wait
/// for the disk: each written group goes to the [`Syncer`], and the committer goes on with
/// the next one, checking it against the state plus `pending` (what is written but not
/// yet applied).
struct Committer {
    rx: mpsc::UnboundedReceiver<Request>,
    shared: Arc<Shared>,
    dir: PathBuf,
    segment: Segment,
    record: RecordBuilder,
    options: MemStoreOptions,
    /// The size of the last snapshot, set by the snapshot thread.
    last_snapshot_bytes: Arc<AtomicU64>,
    /// Log bytes written since the last snapshot.
    since_snapshot: u64,
    snapshotter: Option<JoinHandle<()>>,
    /// The latest version of each key written by a group the syncer has not applied yet.
    pending: Overlay,
    /// The last revision given to a write (the state's, once every group is applied).
    revision: Revision,
    /// Written groups, to the syncer; bounded, so a slow disk holds the committer back.
    written: Option<std::sync::mpsc::SyncSender<Written>>,
    /// How many groups have gone to the syncer.
    sent: u64,
    progress: Arc<Progress>,
    syncer: Option<JoinHandle<()>>,
}

/// A group appended to the log, waiting for `fdatasync`.
struct Written {
    group: Vec<Prepared>,
    replies: Vec<Reply>,
    compact_to: Option<Revision>,
    /// The segment holding the group's record and its path; `None` when the group wrote
    /// nothing (only refusals), which still waits for the groups before it.
    file: Option<(Arc<File>, Arc<Path>)>,
}

/// How many groups the syncer has finished, for the committer to wait on.
#[derive(Default)]
struct Progress {
    finished: Mutex<u64>,
    changed: parking_lot::Condvar,
}

/// The thread that makes written groups durable: it takes every group waiting, calls
/// `fdatasync` once for all of them, then applies them to the state in order, answers
/// their writers and hands their events to the publisher. While it waits for the disk, the
/// committer writes the next groups, so one sync serves every group written meanwhile.
struct Syncer {
    rx: std::sync::mpsc::Receiver<Written>,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    /// Committed groups' events, to the publisher thread.
    publish: std::sync::mpsc::Sender<Vec<Event>>,
}

/// The most written groups waiting for the syncer.
const MAX_IN_FLIGHT: usize = 64;

impl Syncer {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = self.rx.try_recv() {
                batch.push(more);
            }
            let n = batch.len() as u64;
            self.finish(batch);
            *self.progress.finished.lock() += n;
            self.progress.changed.notify_all();
        }
    }

    fn finish(&self, batch: Vec<Written>) {
        let mut synced: Option<&Arc<File>> = None;
        let mut outcome = self.shared.check_failed();
        for (file, path) in batch.iter().filter_map(|w| w.file.as_ref()) {
            if outcome.is_err() {
                break;
            }
            // Every group of a batch is in one segment (the committer drains before it
            // starts another), so this syncs once.
            if synced.is_some_and(|f| Arc::ptr_eq(f, file)) {
                continue;
            }
            if let Err(AppendError::Fatal(e) | AppendError::Retryable(e)) = wal::sync(file, path) {
                // The kernel may still write the data: the outcome is unknown.
                self.shared.fail(e.to_string());
                outcome = self.shared.check_failed();
            }
            synced = Some(file);
        }
        if let Err(e) = outcome {
            for reply in batch.into_iter().flat_map(|w| w.replies) {
                reply.refuse(StoreError::unavailable(format!("the log failed: {e}")));
            }
            return;
        }
        {
            let mut state = self.shared.state.write();
            for w in &batch {
                Shared::apply(&mut state, &w.group, w.compact_to);
            }
        }
        let mut events = Vec::new();
        for w in batch {
            for reply in w.replies {
                reply.send();
            }
            if let Some(e) = self.shared.events_of(&w.group) {
                events.extend(e);
            }
        }
        // Waking every watcher is the publisher's job, off the path of the next group.
        if !events.is_empty() {
            let _ = self.publish.send(events);
        }
    }
}

/// The publisher thread: hands committed events to the watch ring, merging every group
/// that waits into one delivery, so each watcher is woken once per delivery rather than
/// once per group. Events reach the ring after their group is applied and in commit order,
/// which is all a watcher that subscribes under the state's read lock needs: a group
/// applied before it subscribed is in its history (and filtered out of the ring), one
/// applied after comes through the ring.
fn publisher(rx: std::sync::mpsc::Receiver<Vec<Event>>, events: broadcast::Sender<Arc<Published>>) {
    while let Ok(mut batch) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let _ = events.send(Arc::new(Published::Group(batch)));
    }
}

/// A list page counts the keys after it only up to this many (see `ListPage::remaining`).
const REMAINING_COUNT_LIMIT: usize = 10_000;

/// The most bytes one commit group's log record may hold; a longer queue is split.
const MAX_GROUP_BYTES: usize = 64 << 20;

/// An answer held until its group is durable.
enum Reply {
    Write(oneshot::Sender<Result<Prepared>>, Result<Prepared>),
    Compact(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::Write(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Compact(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }

    fn refuse(self, e: StoreError) {
        match self {
            Reply::Write(tx, _) => {
                let _ = tx.send(Err(e));
            }
            Reply::Compact(tx, _) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

impl From<Request> for Reply {
    fn from(r: Request) -> Reply {
        match r {
            Request::Write(_, tx) => Reply::Write(tx, Err(closed())),
            Request::Compact(_, tx) => Reply::Compact(tx, Err(closed())),
        }
    }
}

impl Committer {
    fn run(mut self) {
        let mut requests = VecDeque::with_capacity(self.options.max_group);
        while let Some(first) = self.rx.blocking_recv() {
            requests.push_back(first);
            while requests.len() < self.options.max_group {
                match self.rx.try_recv() {
                    Ok(r) => requests.push_back(r),
                    Err(_) => break,
                }
            }
            while !requests.is_empty() {
                self.commit(&mut requests);
                self.maybe_snapshot();
            }
        }
        // Closing the syncer's queue lets it finish every written group and stop.
        self.written = None;
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.snapshotter.take() {
            let _ = handle.join();
        }
    }

    /// Waits until the syncer has finished every group sent to it, so the state holds every
    /// write the committer has accepted.
    fn drain(&mut self) {
        let mut finished = self.progress.finished.lock();
        while *finished < self.sent {
            self.progress.changed.wait(&mut finished);
        }
        drop(finished);
        self.pending.clear();
    }

    /// Checks and logs one group taken from the front of `requests` (all of them, unless
    /// their values together pass [`MAX_GROUP_BYTES`]) and hands it to the syncer. Every
    /// answer, refusals included, waits until the group is durable and applied: a refusal
    /// may rest on an earlier write not yet durable.
    fn commit(&mut self, requests: &mut VecDeque<Request>) {
        if let Err(e) = self.shared.check_failed() {
            for r in requests.drain(..) {
                Reply::from(r).refuse(StoreError::unavailable(e.to_string()));
            }
            return;
        }
        let mut replies = Vec::with_capacity(requests.len());
        let mut group = Vec::with_capacity(requests.len());
        let mut compact_to = None;
        self.record.clear();
        {
            let state = self.shared.state.read();
            // What the state now shows needs no overlay.
            if state.revision == self.revision {
                self.pending.clear();
            } else {
                self.pending.retain(|_, v| v.mod_revision > state.revision);
            }
            while self.record.len() < MAX_GROUP_BYTES {
                let Some(r) = requests.pop_front() else { break };
                match r {
                    Request::Write(op, tx) => {
                        match state.prepare(&mut self.pending, &op, self.revision + 1) {
                            Ok(p) => {
                                self.revision += 1;
                                codec::encode_write(self.record.body(), &p.key, &p.new);
                                group.push(p.clone());
                                replies.push(Reply::Write(tx, Ok(p)));
                            }
                            Err(e) => replies.push(Reply::Write(tx, Err(e))),
                        }
                    }
                    Request::Compact(rev, tx) => {
                        if rev > self.revision {
                            let e = StoreError::FutureRevision {
                                requested: rev,
                                current: self.revision,
                            };
                            replies.push(Reply::Compact(tx, Err(e)));
                        } else {
                            if rev > compact_to.unwrap_or(state.compacted) {
                                compact_to = Some(rev);
                            }
                            replies.push(Reply::Compact(tx, Ok(())));
                        }
                    }
                }
            }
        }
        if let Some(c) = compact_to {
            codec::encode_compact(self.record.body(), c);
        }
        let mut file = None;
        if !self.record.is_empty() {
            let appended = match self.record.finish() {
                Ok(bytes) => {
                    self.since_snapshot += bytes.len() as u64;
                    self.segment.write(bytes)
                }
                Err(e) => Err(AppendError::Retryable(e)),
            };
            self.record.shrink();
            if let Err(err) = appended {
                let (reason, fatal) = match err {
                    AppendError::Retryable(e) => {
                        tracing::warn!(error = %e, "log write failed; the group is refused");
                        // Forget the group's writes: once the groups before it are applied,
                        // the state is exactly what was accepted.
                        self.drain();
                        self.revision = self.shared.state.read().revision;
                        (e.to_string(), false)
                    }
                    AppendError::Fatal(e) => {
                        // The kernel may still write the data: the outcome is unknown.
                        self.shared.fail(e.to_string());
                        (e.to_string(), true)
                    }
                };
                for reply in replies {
                    reply.refuse(if fatal {
                        StoreError::unavailable(format!("the log failed: {reason}"))
                    } else {
                        StoreError::Io {
                            op: "committing to the log".into(),
                            source: std::io::Error::other(reason.clone()),
                        }
                    });
                }
                return;
            }
            let path: Arc<Path> = Arc::from(self.segment.path.as_path());
            file = Some((self.segment.syncer().clone(), path));
        }
        let written = Written {
            group,
            replies,
            compact_to,
            file,
        };
        match &self.written {
            Some(tx) => match tx.send(written) {
                Ok(()) => self.sent += 1,
                Err(std::sync::mpsc::SendError(w)) => {
                    for reply in w.replies {
                        reply.refuse(closed());
                    }
                }
            },
            None => {
                for reply in written.replies {
                    reply.refuse(closed());
                }
            }
        }
    }

    /// Starts a snapshot when the log has grown enough since the last one, and a new
    /// segment when the current one is full. Both first wait for every written group to be
    /// applied, so a new segment starts right after the state's revision, and a snapshot
    /// holds everything the segments before it do.
    fn maybe_snapshot(&mut self) {
        if self.shared.is_failed.load(Ordering::Acquire) {
            return;
        }
        let threshold = self
            .options
            .snapshot_after_bytes
            .max(self.last_snapshot_bytes.load(Ordering::Relaxed));
        // One snapshot at a time; while one is still being written, the log just grows.
        let writing = self.snapshotter.as_ref().is_some_and(|h| !h.is_finished());
        if self.since_snapshot < threshold || writing {
            if self.segment.len >= self.options.segment_bytes {
                self.drain();
                let revision = self.shared.state.read().revision;
                match Segment::create(&self.dir, revision + 1) {
                    Ok(next) => self.segment = next,
                    Err(e) => tracing::warn!(error = %e, "could not start a new log segment"),
                }
            }
            return;
        }
        if let Some(handle) = self.snapshotter.take() {
            let _ = handle.join();
        }
        self.drain();
        let frozen = self.shared.state.read().freeze();
        let revision = frozen.revision;
        // The snapshot covers every segment before this new one, which can then go.
        let next = match Segment::create(&self.dir, revision + 1) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not start a new log segment; snapshot postponed");
                return;
            }
        };
        self.segment = next;
        self.since_snapshot = 0;
        let dir = self.dir.clone();
        let size = self.last_snapshot_bytes.clone();
        let spawned = std::thread::Builder::new()
            .name("keelson-store-snapshot".into())
            .spawn(move || write_snapshot(&dir, &frozen, &size));
        match spawned {
            Ok(handle) => self.snapshotter = Some(handle),
            Err(e) => tracing::warn!(error = %e, "could not start the snapshot thread"),
        }
    }
}

/// Writes a snapshot, then removes the log segments and snapshots it makes unnecessary.
fn write_snapshot(dir: &Path, frozen: &state::Frozen, size: &AtomicU64) {
    let started = Instant::now();
    let revision = frozen.revision;
    let bytes = match snapshot::write(dir, frozen) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, revision, "snapshot failed; the log is kept");
            let _ = std::fs::remove_file(dir.join(format!("snap-{revision:020}.tmp")));
            return;
        }
    };
    size.store(bytes, Ordering::Relaxed);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let obsolete = wal::parse_segment_name(name).is_some_and(|first| first <= revision)
            || snapshot::parse_file_name(name).is_some_and(|rev| rev < revision);
        if obsolete {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = wal::sync_dir(dir);
    tracing::debug!(
        revision,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let state = self.inner.shared.state.read();
        Ok(state.keys.get_key_value(key).and_then(|(k, h)| {
            h.last()
                .filter(|v| v.value.is_some())
                .map(|v| key_value(k, v))
        }))
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        check_key(prefix)?;
        let token = continue_token::from_options(prefix, &options)?;
        let state = self.inner.shared.state.read();
        let revision = match &token {
            Some(t) => state.read_revision(Some(t.revision)).map_err(|e| match e {
                StoreError::FutureRevision { .. } => StoreError::InvalidContinue {
                    reason: "the token's revision is newer than the store's".into(),
                },
                other => other,
            })?,
            None => state.read_revision(options.revision)?,
        };
        let start = token
            .as_ref()
            .map_or_else(|| prefix.to_owned(), |t| t.start_key(prefix));
        let limit = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut page = ListPage {
            revision,
            ..ListPage::default()
        };
        let mut live = state
            .keys
            .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, h)| {
                State::at(h, revision)
                    .filter(|v| v.value.is_some())
                    .map(|v| (k, v))
            });
        for (k, v) in live.by_ref().take(limit) {
            page.items.push(key_value(k, v));
        }
        if let Some((next, _)) = live.next() {
            page.continue_token = Some(continue_token::encode(prefix, revision, next));
            // Counting is cheap for the usual page sizes; past a bound it would make every
            // page of a huge list cost as much as the whole list, so the count is left out.
            let rest = live.take(REMAINING_COUNT_LIMIT).count();
            page.remaining = (rest < REMAINING_COUNT_LIMIT).then_some(1 + rest as u64);
        }
        Ok(page)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value)?;
        Ok(self
            .write(Op::Create {
                key: key.to_owned(),
                value,
            })
            .await?
            .result())
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value)?;
        Ok(self
            .write(Op::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
            .result())
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        check_key(key)?;
        let p = self
            .write(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?;
        Ok(Deleted {
            prev: p.result(),
            revision: p.new.mod_revision,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        check_key(prefix)?;
        let after = after.max(0);
        let shared = &self.inner.shared;
        let (rx, history, current) = {
            let state = shared.state.read();
            if after > state.revision {
                return Err(StoreError::FutureRevision {
                    requested: after,
                    current: state.revision,
                });
            }
            if after < state.compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: state.compacted,
                });
            }
            let rx = shared.events.subscribe();
            let history = if after == state.revision {
                Vec::new()
            } else {
                state.history_since(prefix, after)
            };
            (rx, history, state.revision)
        };
        Ok(Box::pin(watch_stream(
            prefix.to_owned(),
            history,
            rx,
            current,
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match &self.inner.queue {
            None => {
                let mut state = self.inner.shared.state.write();
                if revision > state.revision {
                    return Err(StoreError::FutureRevision {
                        requested: revision,
                        current: state.revision,
                    });
                }
                state.compact(revision);
                Ok(())
            }
            Some(queue) => {
                self.inner.shared.check_failed()?;
                let (tx, rx) = oneshot::channel();
                queue
                    .send(Request::Compact(revision, tx))
                    .map_err(|_| closed())?;
                rx.await.map_err(|_| closed())?
            }
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.shared.state.read().revision)
    }
}

/// A MemStore watch: the history first, then the live deliveries after `current`, filtered
/// to the prefix. A plain `Stream` (no future rebuilt per item): with many watchers this is
/// the hot path.
struct MemWatch {
    history: std::vec::IntoIter<Event>,
    live: BroadcastStream<Arc<Published>>,
    delivery: Option<Arc<Published>>,
    next: usize,
    prefix: String,
    /// The revision of the last event handed out (or of the state when the watch started).
    last: Revision,
    done: bool,
}

fn watch_stream(
    prefix: String,
    history: Vec<Event>,
    rx: broadcast::Receiver<Arc<Published>>,
    current: Revision,
) -> MemWatch {
    MemWatch {
        history: history.into_iter(),
        live: BroadcastStream::new(rx),
        delivery: None,
        next: 0,
        prefix,
        last: current,
        done: false,
    }
}

impl MemWatch {
    fn end(&mut self, e: StoreError) -> Poll<Option<Result<Event>>> {
        self.done = true;
        self.delivery = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl futures::Stream for MemWatch {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(e) = this.history.next() {
            return Poll::Ready(Some(Ok(e)));
        }
        loop {
            if let Some(delivery) = &this.delivery {
                match &**delivery {
                    Published::Group(events) => {
                        while let Some(e) = events.get(this.next) {
                            this.next += 1;
                            if e.revision() > this.last
                                && e.kv.key.starts_with(this.prefix.as_str())
                            {
                                this.last = e.revision();
                                return Poll::Ready(Some(Ok(e.clone())));
                            }
                        }
                    }
                    Published::Failed(reason) => {
                        let e =
                            StoreError::unavailable(format!("the store's log failed: {reason}"));
                        return this.end(e);
                    }
                }
                this.delivery = None;
            }
            match std::task::ready!(Pin::new(&mut this.live).poll_next(cx)) {
                Some(Ok(delivery)) => {
                    this.delivery = Some(delivery);
                    this.next = 0;
                }
                Some(Err(BroadcastStreamRecvError::Lagged(_))) => {
                    let e = StoreError::WatchLagged {
                        prefix: this.prefix.clone(),
                        revision: this.last,
                    };
                    return this.end(e);
                }
                None => return this.end(StoreError::unavailable("the store was closed")),
            }
        }
    }
}
