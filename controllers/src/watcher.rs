//! The watcher: a never-ending stream of an object set's changes, built from list and
//! watch calls on a [`ListWatch`] source.
//!
//! It reads the initial state as a streaming list (one watch with `sendInitialEvents`:
//! objects arrive one event at a time, so a large list never sits in memory at once) or,
//! where the server refuses that, as a paged list; then watches from that version, resumes a watch that ends from the last version it saw
//! (objects and bookmarks both move it), lists again when the server answers 410 Gone,
//! and backs off exponentially (0.8 s doubling to 30 s, with jitter) after errors. Errors
//! are yielded as items so callers can log them; the stream goes on after them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use keelson_core::client::{Event as ApiEvent, ListParams, Selection, WatchParams};
use keelson_core::{FieldSelector, LabelSelector, Result as CoreResult};
use rand::Rng;

use crate::object::{ListWatch, Object};

/// One change seen by a [`watcher`].
///
/// A (re-)list is framed: `Init`, one `InitApply` per object, then `InitDone`; a consumer
/// that caches the set replaces its whole content at `InitDone` (objects it held that
/// were not listed are gone).
#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    /// A list starts.
    Init,
    /// An object of the list.
    InitApply(K),
    /// The list is complete; live changes follow.
    InitDone,
    /// An object was created or changed.
    Apply(K),
    /// An object was deleted (its last state).
    Delete(K),
}

/// How the initial state is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialList {
    /// A (paged) LIST, then a WATCH from its version.
    #[default]
    ListWatch,
    /// One WATCH with `sendInitialEvents=true`: ADDED events for the current objects, then
    /// a bookmark marking their end (Kubernetes' streaming list).
    Streaming,
}

/// What a watcher selects and how it lists: the `params` of a [`Controller`](crate::Controller)
/// or an [`Informer`](crate::Informer).
#[derive(Clone, Debug)]
pub struct Config {
    /// Label and field selectors (the namespace comes from the source).
    pub selection: Selection,
    /// Page size of the initial list (0: one answer).
    pub page_size: usize,
    /// Streaming list (the default; falls back to list and watch when the server
    /// refuses it), or list and watch.
    pub initial_list: InitialList,
    /// Ask the server to end each watch after about this long (jittered), as client-go
    /// does, so that connections are rebalanced.
    pub watch_timeout: Option<Duration>,
    /// Drop `metadata.managedFields` from cached objects (it is most of an applied
    /// object's size and controllers do not read it). On by default.
    pub strip_managed_fields: bool,
    /// How an informer built with this configuration holds its objects.
    pub storage: crate::reflector::Storage,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            selection: Selection::default(),
            page_size: 500,
            initial_list: InitialList::Streaming,
            watch_timeout: Some(Duration::from_secs(290)),
            strip_managed_fields: true,
            storage: crate::reflector::Storage::Decoded,
        }
    }
}

impl Config {
    /// Selects by labels (`app=web`).
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn labels(mut self, selector: &str) -> CoreResult<Self> {
        self.selection.labels = Some(LabelSelector::parse(selector)?);
        Ok(self)
    }

    /// Selects by fields (`spec.nodeName=n1`).
    ///
    /// # Errors
    /// 400 for a malformed selector.
    pub fn fields(mut self, selector: &str) -> CoreResult<Self> {
        self.selection.fields = Some(FieldSelector::parse(selector)?);
        Ok(self)
    }

    /// Makes an informer hold its objects compactly (see
    /// [`Storage::Compact`](crate::reflector::Storage::Compact)).
    pub fn compact(mut self) -> Self {
        self.storage = crate::reflector::Storage::Compact;
        self
    }

    /// Uses a streaming list for the initial state.
    pub fn streaming_list(mut self) -> Self {
        self.initial_list = InitialList::Streaming;
        self
    }

    /// The selector part of an informer's identity.
    pub(crate) fn selector_key(&self) -> String {
        format!(
            "{}|{}",
            self.selection
                .labels
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            self.selection
                .fields
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        )
    }
}

/// Why a watcher had to start over or wait.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The initial list failed.
    #[error("failed to list {resource}: {source}")]
    List {
        /// The resource listed.
        resource: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// A watch could not start.
    #[error("failed to start a watch on {resource}: {source}")]
    WatchStart {
        /// The resource watched.
        resource: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
    /// A running watch failed.
    #[error("the watch on {resource} failed: {source}")]
    Watch {
        /// The resource watched.
        resource: String,
        /// The cause.
        #[source]
        source: keelson_core::Error,
    },
}

/// Exponential backoff with jitter, on tokio time.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: None,
        }
    }

    /// The next delay (jittered between 50 % and 100 % of the nominal one).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = match self.current {
            None => self.initial,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(nominal);
        let jitter: f64 = rand::rng().random_range(0.5..=1.0);
        nominal.mul_f64(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

enum Phase<K> {
    /// Nothing read yet, or a fresh list is needed.
    Empty,
    /// Listing, page after page.
    Listing { continue_token: Option<String> },
    /// Between watches: start one from `rv`.
    Resume,
    /// A streaming list in progress (initial events not over).
    Streaming(BoxStream<'static, CoreResult<ApiEvent<K>>>),
    /// Watching.
    Watching(BoxStream<'static, CoreResult<ApiEvent<K>>>),
}

struct State<K> {
    source: Arc<dyn ListWatch<K>>,
    config: Config,
    phase: Phase<K>,
    pending: VecDeque<Event<K>>,
    rv: Option<String>,
    backoff: Backoff,
    delay: Option<Duration>,
    /// Watches that ended without delivering anything, in a row.
    idle_watches: u32,
}

fn rv_of<K: Object>(k: &K) -> Option<String> {
    k.metadata().resource_version.clone()
}

impl<K: Object> State<K> {
    fn resource(&self) -> String {
        match self.source.namespace() {
            Some(ns) => format!("{} in {ns}", self.source.resource_type()),
            None => self.source.resource_type().to_string(),
        }
    }

    fn prepare(&self, mut k: K) -> K {
        if self.config.strip_managed_fields {
            k.metadata_mut().managed_fields = None;
        }
        k
    }

    fn watch_params(&self) -> WatchParams {
        let timeout = self.config.watch_timeout.map(|t| {
            let jitter: f64 = rand::rng().random_range(1.0..=2.0);
            t.mul_f64(jitter / 2.0 + 0.5)
        });
        WatchParams {
            selection: self.config.selection.clone(),
            resource_version: self.rv.clone(),
            send_initial_events: false,
            bookmarks: true,
            timeout,
        }
    }

    fn fail(&mut self, e: Error) -> Option<CoreResult<Event<K>, Error>> {
        self.delay = Some(self.backoff.next_delay());
        Some(Err(e))
    }

    async fn step(&mut self) -> Option<CoreResult<Event<K>, Error>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if let Some(d) = self.delay.take() {
                tokio::time::sleep(d).await;
            }
            match std::mem::replace(&mut self.phase, Phase::Empty) {
                Phase::Empty => match self.config.initial_list {
                    InitialList::ListWatch => {
                        self.phase = Phase::Listing {
                            continue_token: None,
                        };
                        self.pending.push_back(Event::Init);
                    }
                    InitialList::Streaming => {
                        let mut params = self.watch_params();
                        params.resource_version = None;
                        params.send_initial_events = true;
                        match self.source.watch(&params).await {
                            Ok(s) => {
                                self.phase = Phase::Streaming(s);
                                self.pending.push_back(Event::Init);
                            }
                            Err(source) if source.is_invalid() || source.code() == 400 => {
                                // A server without streaming lists (Kubernetes' WatchList
                                // off) refuses `sendInitialEvents`: list and watch instead.
                                tracing::info!(resource = %self.resource(), error = %source, "no streaming lists; falling back to list and watch");
                                self.config.initial_list = InitialList::ListWatch;
                            }
                            Err(source) => {
                                let resource = self.resource();
                                return self.fail(Error::WatchStart { resource, source });
                            }
                        }
                    }
                },
                Phase::Listing { continue_token } => {
                    let params = ListParams {
                        selection: self.config.selection.clone(),
                        limit: self.config.page_size,
                        continue_token: continue_token.clone(),
                        // As client-go's reflector: "any recent state", which the
                        // server answers from its watch cache (and so starts it).
                        resource_version: continue_token.is_none().then(|| "0".to_owned()),
                        ..ListParams::default()
                    };
                    match self.source.list(&params).await {
                        Ok(list) => {
                            self.backoff.reset();
                            for item in list.items {
                                let item = self.prepare(item);
                                self.pending.push_back(Event::InitApply(item));
                            }
                            match list.continue_token.filter(|t| !t.is_empty()) {
                                Some(token) => {
                                    self.phase = Phase::Listing {
                                        continue_token: Some(token),
                                    };
                                }
                                None => {
                                    self.rv =
                                        Some(list.resource_version).filter(|rv| !rv.is_empty());
                                    self.pending.push_back(Event::InitDone);
                                    self.phase = Phase::Resume;
                                }
                            }
                        }
                        Err(source) => {
                            // An expired continue token restarts the list from the top
                            // (the `Init` already sent frames the new attempt too).
                            self.phase = if source.is_expired() {
                                Phase::Listing {
                                    continue_token: None,
                                }
                            } else {
                                Phase::Listing { continue_token }
                            };
                            if source.is_expired() {
                                self.pending.push_back(Event::Init);
                            }
                            let resource = self.resource();
                            return self.fail(Error::List { resource, source });
                        }
                    }
                }
                Phase::Resume => {
                    if self.idle_watches >= 2 {
                        // Watches keep ending at once: do not spin.
                        tokio::time::sleep(self.backoff.next_delay()).await;
                    }
                    let params = self.watch_params();
                    match self.source.watch(&params).await {
                        Ok(s) => {
                            self.idle_watches += 1;
                            self.phase = Phase::Watching(s);
                        }
                        Err(source) => {
                            self.phase = if source.is_expired() {
                                Phase::Empty
                            } else {
                                Phase::Resume
                            };
                            let resource = self.resource();
                            return self.fail(Error::WatchStart { resource, source });
                        }
                    }
                }
                Phase::Streaming(mut s) => match s.next().await {
                    Some(Ok(ApiEvent::Added(k) | ApiEvent::Modified(k))) => {
                        let k = self.prepare(k);
                        self.phase = Phase::Streaming(s);
                        return Some(Ok(Event::InitApply(k)));
                    }
                    Some(Ok(ApiEvent::Deleted(_))) => self.phase = Phase::Streaming(s),
                    Some(Ok(ApiEvent::Bookmark {
                        resource_version,
                        initial_events_end,
                    })) => {
                        if initial_events_end {
                            self.rv = Some(resource_version);
                            self.backoff.reset();
                            self.phase = Phase::Watching(s);
                            return Some(Ok(Event::InitDone));
                        }
                        self.phase = Phase::Streaming(s);
                    }
                    Some(Err(source)) => {
                        self.phase = Phase::Empty;
                        let resource = self.resource();
                        return self.fail(Error::Watch { resource, source });
                    }
                    None => self.phase = Phase::Empty,
                },
                Phase::Watching(mut s) => match s.next().await {
                    Some(Ok(ev)) => {
                        self.idle_watches = 0;
                        self.backoff.reset();
                        self.phase = Phase::Watching(s);
                        match ev {
                            ApiEvent::Added(k) | ApiEvent::Modified(k) => {
                                self.rv = rv_of(&k).or(self.rv.take());
                                return Some(Ok(Event::Apply(self.prepare(k))));
                            }
                            ApiEvent::Deleted(k) => {
                                self.rv = rv_of(&k).or(self.rv.take());
                                return Some(Ok(Event::Delete(self.prepare(k))));
                            }
                            ApiEvent::Bookmark {
                                resource_version, ..
                            } => {
                                if !resource_version.is_empty() {
                                    self.rv = Some(resource_version);
                                }
                            }
                        }
                    }
                    Some(Err(source)) => {
                        if source.is_expired() {
                            // 410 Gone: the version is compacted; list again at once.
                            tracing::debug!(resource = %self.resource(), "watch expired, re-listing");
                            self.phase = Phase::Empty;
                            self.rv = None;
                            continue;
                        }
                        self.phase = Phase::Resume;
                        let resource = self.resource();
                        return self.fail(Error::Watch { resource, source });
                    }
                    None => self.phase = Phase::Resume,
                },
            }
        }
    }
}

/// Watches the objects of `source` selected by `config`, forever (until dropped).
///
/// ```no_run
/// # async fn demo(client: keelson_core::client::Client) {
/// use futures::StreamExt;
/// use keelson_controllers::watcher::{self, watcher};
/// use keelson_core::{client::Api, k8s_openapi::api::core::v1::Pod};
///
/// let pods: Api<Pod> = Api::namespaced(client, "default");
/// let mut changes = watcher(pods, watcher::Config::default());
/// while let Some(change) = changes.next().await {
///     println!("{:?}", change.map(|c| matches!(c, watcher::Event::Apply(_))));
/// }
/// # }
/// ```
pub fn watcher<K: Object>(
    source: impl ListWatch<K>,
    config: Config,
) -> BoxStream<'static, Result<Event<K>, Error>> {
    watcher_arc(Arc::new(source), config)
}

/// [`watcher`] over a shared source.
pub fn watcher_arc<K: Object>(
    source: Arc<dyn ListWatch<K>>,
    config: Config,
) -> BoxStream<'static, Result<Event<K>, Error>> {
    let state = State {
        source,
        config,
        phase: Phase::Empty,
        pending: VecDeque::new(),
        rv: None,
        backoff: Backoff::new(Duration::from_millis(800), Duration::from_secs(30)),
        delay: None,
        idle_watches: 0,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.step().await?;
        Some((item, state))
    })
    .boxed()
}
