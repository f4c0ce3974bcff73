//! `EtcdStore`: the [`Store`] contract over a real etcd v3 server, through `etcd-client`.
//!
//! How the contract maps onto etcd:
//!
//! - **Revisions** are etcd's own (`header.revision`, `mod_revision`, ...). They are
//!   cluster-wide: when several stores share one etcd (see [`EtcdOptions::key_prefix`]) or
//!   something else writes to it, a store sees gaps between its revisions, and a new etcd
//!   starts at revision 1, not 0.
//! - **Writes** are single transactions: create compares `create_revision == 0`; update and
//!   guarded delete compare `mod_revision == expected` (and that the key exists). When the
//!   comparison fails, the same transaction reads the key, so `NotFound` and `Conflict`
//!   are told apart without a second round trip.
//! - **Reads** are linearizable ranges; a list is one range with a limit per page, at the
//!   revision of its first page, which the continue token carries (the token format is the
//!   one [`MemStore`](crate::MemStore) uses).
//! - **Watches** are etcd watches with `prev_kv`, started at `after` itself (the change at
//!   `after`, if any, is dropped), so that etcd refuses them exactly when the contract does:
//!   when `after` is below the compacted revision. Every change after `after` then has its
//!   previous version, which compaction keeps. The etcd watch lives exactly as long as the
//!   returned stream: dropping the stream cancels it.
//! - **Compaction** is etcd's compaction. etcd does not report its compacted revision in a
//!   read error, so on `Compacted` the store asks with a short watch from the compacted
//!   revision (etcd answers such a watch with the compacted revision); when even that
//!   fails, it reports `requested + 1`, the smallest revision that can be the compacted one.
//!
//! Every request runs under [`EtcdOptions::request_timeout`]; a request that fails in
//! transport or times out is `Unavailable` (the write may or may not have happened, as
//! the contract allows).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchClient, WatchOptions,
};

use crate::continue_token;
use crate::error::{Result, StoreError};
use crate::limits::{check_key, check_value, prefix_end, MAX_VALUE_BYTES};
use crate::store::{Store, WatchStream};
use crate::types::{Deleted, Event, EventKind, KeyValue, ListOptions, ListPage, Revision};

/// The largest response accepted from etcd: gRPC's own limit (etcd sends up to it).
/// tonic's default of 4 MiB would make a page of a few large objects fail.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// HTTP/2 keep-alive on open streams, so that a watch on a connection to a vanished server
/// ends with `Unavailable` instead of waiting forever. Pings are sent only while a stream is
/// open: etcd's default policy refuses pings on idle connections.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach etcd and where in its key space the store lives.
///
/// ```
/// use std::time::Duration;
/// use keelson_store::EtcdOptions;
///
/// let options = EtcdOptions {
///     endpoints: vec!["http://10.0.0.7:2379".into()],
///     key_prefix: "/cluster-a".into(),
///     request_timeout: Duration::from_secs(5),
///     ..EtcdOptions::default()
/// };
/// assert_eq!(options.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// The etcd members' client URLs, e.g. `http://127.0.0.1:2379`. Requests are balanced
    /// over them. Default: `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// A namespace put in front of every key in etcd and taken off every key handed back,
    /// so that several stores (or test runs) can share one etcd. A store key `/a` is the
    /// etcd key `{key_prefix}/a`. Default: `""` (none).
    pub key_prefix: String,
    /// How long to wait for a TCP connection to a member. Default: 5 s.
    pub connect_timeout: Duration,
    /// How long any one request may take, from sending it to its answer (for a watch, until
    /// etcd accepts it). Default: 10 s.
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            key_prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`Store`] over a real etcd v3 server (feature `etcd`).
///
/// Cheap to clone: clones share one connection pool. Its semantics are those of the
/// [`Store`] contract, checked by the same conformance suite as
/// [`MemStore`](crate::MemStore); the module docs say how each operation maps onto etcd.
///
/// [`MAX_VALUE_BYTES`] leaves room for the longest key within etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB). A write that etcd still refuses as too large (an etcd
/// configured with a smaller limit, or a long [`EtcdOptions::key_prefix`]) fails with
/// `ValueTooLarge`, whose `limit` is then the store's, as etcd does not say its own.
///
/// ```no_run
/// use keelson_store::{EtcdOptions, EtcdStore, Store};
///
/// # async fn demo() -> keelson_store::Result<()> {
/// let store = EtcdStore::connect(EtcdOptions::default()).await?;
/// let kv = store.create("/registry/core/pods/default/web", "{}".into()).await?;
/// let page = store.list("/registry/core/pods/", Default::default()).await?;
/// assert!(page.revision >= kv.mod_revision);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kept for its connection management (the balanced channel's endpoint set).
    _client: Client,
    kv: KvClient,
    watch: WatchClient,
    key_prefix: String,
    endpoints: Vec<String>,
    request_timeout: Duration,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("key_prefix", &self.inner.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Why a request to etcd failed, before it becomes a [`StoreError`].
enum CallError {
    Etcd(etcd_client::Error),
    TimedOut(Duration),
}

/// The errors of etcd's multi-version store that the contract gives their own variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mvcc {
    Compacted,
    FutureRevision,
    TooLarge,
}

impl CallError {
    /// etcd sends these as gRPC statuses whose messages are part of its API
    /// (`rpctypes.ErrGRPCCompacted` and friends).
    fn mvcc(&self) -> Option<Mvcc> {
        let CallError::Etcd(etcd_client::Error::GRpcStatus(status)) = self else {
            return None;
        };
        let message = status.message();
        if message.contains("required revision has been compacted") {
            Some(Mvcc::Compacted)
        } else if message.contains("required revision is a future revision") {
            Some(Mvcc::FutureRevision)
        } else if message.contains("request is too large") || message.contains("larger than max") {
            Some(Mvcc::TooLarge)
        } else {
            None
        }
    }

    fn into_unavailable(self, what: &str) -> StoreError {
        match self {
            CallError::Etcd(e) => StoreError::Unavailable {
                reason: format!("etcd {what} failed: {}", describe(&e)),
                source: Some(Box::new(e)),
            },
            CallError::TimedOut(after) => {
                StoreError::unavailable(format!("etcd {what} failed: no answer within {after:?}"))
            }
        }
    }
}

/// A short account of an etcd client error: a gRPC status's `Display` repeats its whole
/// source chain, which the `Unavailable` error keeps as its source anyway.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{} ({})", status.message(), status.code().description())
        }
        other => other.to_string(),
    }
}

/// An answer from etcd that lacks what every answer to that request has.
fn malformed(what: &str, missing: &str) -> StoreError {
    StoreError::unavailable(format!("etcd {what}: the answer has no {missing}"))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>, what: &str) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| malformed(what, "header"))
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    ///
    /// # Errors
    /// `Unavailable`, naming the endpoints, when no endpoint is given or etcd does not
    /// answer within the timeouts.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore> {
        let EtcdOptions {
            endpoints,
            key_prefix,
            connect_timeout,
            request_timeout,
        } = options;
        let named = endpoints.join(", ");
        if endpoints.is_empty() {
            return Err(StoreError::unavailable(
                "cannot connect to etcd: no endpoints given",
            ));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let client = match tokio::time::timeout(
            connect_timeout.saturating_add(request_timeout),
            Client::connect(&endpoints, Some(connect)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable {
                    reason: format!("cannot connect to etcd at {named}: {e}"),
                    source: Some(Box::new(e)),
                });
            }
            Err(_) => {
                return Err(StoreError::unavailable(format!(
                    "cannot connect to etcd at {named}: no answer within {:?}",
                    connect_timeout.saturating_add(request_timeout)
                )));
            }
        };
        let store = EtcdStore {
            inner: Arc::new(Inner {
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                _client: client,
                key_prefix,
                endpoints,
                request_timeout,
            }),
        };
        // The client connects lazily: ask something to find out whether etcd is there.
        let unreachable = |e: StoreError| match e {
            StoreError::Unavailable { reason, source } => StoreError::Unavailable {
                reason: format!("cannot reach etcd at {named}: {reason}"),
                source,
            },
            other => other,
        };
        let revision = store.current_revision().await.map_err(unreachable)?;
        tracing::info!(endpoints = %named, key_prefix = %store.inner.key_prefix, revision, "connected to etcd");
        Ok(store)
    }

    fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }

    /// Runs one request under the request timeout.
    async fn call<T>(
        &self,
        request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.inner.request_timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(CallError::Etcd(e)),
            Err(_) => Err(CallError::TimedOut(self.inner.request_timeout)),
        }
    }

    /// The etcd key of a store key.
    fn etcd_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.key_prefix.len() + key.len());
        k.extend_from_slice(self.inner.key_prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The etcd range end of every key under a store prefix.
    fn etcd_range_end(&self, prefix: &str) -> Vec<u8> {
        prefix_end(&format!("{}{prefix}", self.inner.key_prefix))
    }

    /// The store key of an etcd key.
    fn store_key(&self, etcd_key: &[u8]) -> Result<Arc<str>> {
        let corrupt = |why: &str| StoreError::Corrupt {
            reason: format!("etcd key {:?} {why}", String::from_utf8_lossy(etcd_key)),
        };
        let rest = etcd_key
            .strip_prefix(self.inner.key_prefix.as_bytes())
            .ok_or_else(|| corrupt("is outside the store's key prefix"))?;
        std::str::from_utf8(rest)
            .map(Arc::from)
            .map_err(|_| corrupt("is not UTF-8"))
    }

    /// A key-value etcd handed over, without copying its value.
    fn owned_kv(&self, kv: etcd_client::KeyValue) -> Result<KeyValue> {
        let (create_revision, mod_revision, version) =
            (kv.create_revision(), kv.mod_revision(), kv.version());
        let (key, value) = kv.into_key_value();
        Ok(KeyValue {
            key: self.store_key(&key)?,
            value: Bytes::from(value),
            create_revision,
            mod_revision,
            version,
        })
    }

    /// A key-value etcd handed over inside a larger answer.
    fn borrowed_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.store_key(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        })
    }

    /// The error of a read at `requested` that etcd refused; `what` names the read.
    async fn read_error(&self, what: &str, requested: Revision, e: CallError) -> StoreError {
        match e.mvcc() {
            Some(Mvcc::Compacted) => StoreError::Compacted {
                requested,
                compacted: self.compacted_revision(requested).await,
            },
            Some(Mvcc::FutureRevision) => match self.current_revision().await {
                Ok(current) => StoreError::FutureRevision { requested, current },
                Err(e) => e,
            },
            _ => e.into_unavailable(what),
        }
    }

    /// The revision etcd is compacted to, when reads at `requested` are known to fail as
    /// compacted (or `requested` is below 1). etcd does not put it in read errors, but a
    /// watch from a compacted revision is answered with it.
    async fn compacted_revision(&self, requested: Revision) -> Revision {
        let start = requested.max(1);
        if requested < 1 {
            // Nothing names a revision below 1: is revision 1 itself still readable?
            let at_one = GetOptions::new().with_count_only().with_revision(1);
            match self
                .call(self.kv().get(self.etcd_key("/"), Some(at_one)))
                .await
            {
                Err(e) if e.mvcc() == Some(Mvcc::Compacted) => {}
                _ => return 0,
            }
        }
        let mut watch = self.inner.watch.clone();
        let key = self.etcd_key("/");
        let probe = async move {
            let mut stream = watch
                .watch(key, Some(WatchOptions::new().with_start_revision(start)))
                .await
                .ok()?;
            while let Some(answer) = stream.message().await.ok()? {
                if answer.compact_revision() > 0 {
                    return Some(answer.compact_revision());
                }
                if answer.canceled() || !answer.events().is_empty() {
                    return None;
                }
            }
            None
        };
        match tokio::time::timeout(self.inner.request_timeout, probe).await {
            Ok(Some(compacted)) => compacted,
            _ => {
                tracing::debug!(
                    requested,
                    "could not learn etcd's compacted revision; reporting the lowest possible one"
                );
                start.saturating_add(1)
            }
        }
    }

    /// Runs a transaction that writes `key` (whose value is `value_len` bytes long).
    async fn write_txn(
        &self,
        what: &str,
        key: &str,
        value_len: usize,
        txn: Txn,
    ) -> Result<TxnResponse> {
        self.call(self.kv().txn(txn)).await.map_err(|e| {
            if e.mvcc() == Some(Mvcc::TooLarge) {
                tracing::warn!(
                    key,
                    size = value_len,
                    "etcd refused a write as too large; run it with --max-request-bytes of at least 1572864 (its default)"
                );
                StoreError::ValueTooLarge { key: key.to_owned(), size: value_len, limit: MAX_VALUE_BYTES }
            } else {
                e.into_unavailable(what)
            }
        })
    }

    /// `NotFound` or `Conflict`, from the read a failed compare-and-swap transaction made.
    fn cas_failure(
        &self,
        what: &str,
        key: &str,
        expected: Revision,
        answer: &TxnResponse,
    ) -> StoreError {
        match answer.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                None => StoreError::NotFound {
                    key: key.to_owned(),
                },
                Some(kv) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    actual: kv.mod_revision(),
                },
            },
            _ => malformed(what, "read of the key"),
        }
    }

    /// Turns one etcd watch event into the contract's event.
    async fn event(&self, ev: &etcd_client::Event) -> Result<Event> {
        let kv = ev
            .kv()
            .ok_or_else(|| malformed("watch", "key-value in an event"))?;
        let revision = kv.mod_revision();
        let prev = ev.prev_kv().map(|p| self.borrowed_kv(p)).transpose()?;
        // etcd marks a delete with a tombstone whose create_revision is 0 (its own rule, in
        // mvcc's watchable store). `Event::event_type` would say the same, but panics on a
        // type number it does not know, and nothing from the network may panic the store.
        let is_delete = kv.create_revision() == 0;
        // etcd leaves prev_kv out when the previous version was compacted away under the
        // watch; the event cannot be told in full then, and the watcher must re-list.
        if prev.is_none() && (is_delete || kv.version() > 1) {
            let requested = revision.saturating_sub(1);
            return Err(StoreError::Compacted {
                requested,
                compacted: self.compacted_revision(requested).await,
            });
        }
        match prev {
            Some(prev) if is_delete => {
                let kv = KeyValue {
                    mod_revision: revision,
                    ..prev.clone()
                };
                Ok(Event::new(EventKind::Delete, kv, Some(prev)))
            }
            prev => Ok(Event::new(EventKind::Put, self.borrowed_kv(kv)?, prev)),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let mut answer = self
            .call(self.kv().get(self.etcd_key(key), None))
            .await
            .map_err(|e| e.into_unavailable(&format!("get {key}")))?;
        answer
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| self.owned_kv(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        check_key(prefix)?;
        let token = continue_token::from_options(prefix, &options)?;
        let (start, revision) = match &token {
            Some(t) => (t.start_key(prefix), Some(t.revision)),
            None => (prefix.to_owned(), options.revision.filter(|r| *r != 0)),
        };
        if let Some(r) = revision.filter(|r| *r < 0) {
            return Err(StoreError::Compacted {
                requested: r,
                compacted: self.compacted_revision(r).await,
            });
        }
        let what = format!("list {prefix}");
        let mut range = GetOptions::new()
            .with_range(self.etcd_range_end(prefix))
            .with_revision(revision.unwrap_or(0));
        if let Some(limit) = options.limit.filter(|l| *l > 0) {
            range = range.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let mut answer = match self
            .call(self.kv().get(self.etcd_key(&start), Some(range)))
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let requested = revision.unwrap_or(0);
                return Err(match self.read_error(&what, requested, e).await {
                    StoreError::FutureRevision { .. } if token.is_some() => {
                        StoreError::InvalidContinue {
                            reason: "the token's revision is newer than the store's".into(),
                        }
                    }
                    other => other,
                });
            }
        };
        let revision = match revision {
            Some(r) => r,
            None => header_revision(answer.header(), &what)?,
        };
        let (more, count) = (answer.more(), answer.count());
        let items = answer
            .take_kvs()
            .into_iter()
            .map(|kv| self.owned_kv(kv))
            .collect::<Result<Vec<_>>>()?;
        let mut page = ListPage {
            revision,
            ..ListPage::default()
        };
        if more {
            let last = items
                .last()
                .ok_or_else(|| malformed(&what, "keys although it says more follow"))?;
            // Keys hold no NUL byte, so the next page starts right after the last key.
            page.continue_token = Some(continue_token::encode(
                prefix,
                revision,
                &format!("{}\0", last.key),
            ));
            page.remaining = Some(
                u64::try_from(count)
                    .unwrap_or(0)
                    .saturating_sub(items.len() as u64),
            );
        }
        page.items = items;
        Ok(page)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value)?;
        let what = format!("create {key}");
        let k = self.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value.to_vec(), None)]);
        let answer = self.write_txn(&what, key, value.len(), txn).await?;
        if !answer.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision(answer.header(), &what)?;
        Ok(KeyValue {
            key: Arc::from(key),
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        check_key(key)?;
        check_value(key, &value)?;
        let what = format!("update {key}");
        let k = self.etcd_key(key);
        let read = || TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only()));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
                Compare::create_revision(k.clone(), CompareOp::Greater, 0),
            ])
            // The read after the put sees it: it gives the new version's revisions.
            .and_then([TxnOp::put(k.clone(), value.to_vec(), None), read()])
            .or_else([read()]);
        let answer = self.write_txn(&what, key, value.len(), txn).await?;
        if !answer.succeeded() {
            return Err(self.cas_failure(&what, key, expected, &answer));
        }
        let written = match answer.op_responses().into_iter().nth(1) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
            _ => None,
        }
        .ok_or_else(|| malformed(&what, "read of the written key"))?;
        Ok(KeyValue {
            key: Arc::from(key),
            value,
            create_revision: written.create_revision(),
            mod_revision: written.mod_revision(),
            version: written.version(),
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        check_key(key)?;
        let what = format!("delete {key}");
        let k = self.etcd_key(key);
        let delete = DeleteOptions::new().with_prev_key();
        let (revision, prev) = match expected {
            None => {
                let mut answer = self
                    .call(self.kv().delete(k, Some(delete)))
                    .await
                    .map_err(|e| e.into_unavailable(&what))?;
                if answer.deleted() == 0 {
                    return Err(StoreError::NotFound {
                        key: key.to_owned(),
                    });
                }
                (
                    header_revision(answer.header(), &what)?,
                    answer.take_prev_kvs().into_iter().next(),
                )
            }
            Some(expected) => {
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
                        Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                    ])
                    .and_then([TxnOp::delete(k.clone(), Some(delete))])
                    .or_else([TxnOp::get(k, Some(GetOptions::new().with_keys_only()))]);
                let answer = self.write_txn(&what, key, 0, txn).await?;
                if !answer.succeeded() {
                    return Err(self.cas_failure(&what, key, expected, &answer));
                }
                let prev = match answer.op_responses().into_iter().next() {
                    Some(TxnOpResponse::Delete(mut deleted)) => {
                        deleted.take_prev_kvs().into_iter().next()
                    }
                    _ => None,
                };
                (header_revision(answer.header(), &what)?, prev)
            }
        };
        let prev = prev.ok_or_else(|| malformed(&what, "previous value"))?;
        Ok(Deleted {
            prev: self.owned_kv(prev)?,
            revision,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        check_key(prefix)?;
        let what = format!("watch {prefix}");
        let current = self.current_revision().await?;
        if after > current {
            return Err(StoreError::FutureRevision {
                requested: after,
                current,
            });
        }
        // etcd's revisions start at 1; the watch starts at `after` so that etcd checks `after`
        // against its compacted revision, and the change at `after` is dropped below.
        let start = after.max(1);
        if start <= current {
            // A read at `start` fails exactly when a watch from `start` would, and tells so
            // now rather than as the stream's first item.
            let range = GetOptions::new()
                .with_range(self.etcd_range_end(prefix))
                .with_count_only()
                .with_revision(start);
            if let Err(e) = self
                .call(self.kv().get(self.etcd_key(prefix), Some(range)))
                .await
            {
                return Err(match self.read_error(&what, start, e).await {
                    StoreError::Compacted { compacted, .. } => StoreError::Compacted {
                        requested: after,
                        compacted,
                    },
                    other => other,
                });
            }
        }
        let options = WatchOptions::new()
            .with_range(self.etcd_range_end(prefix))
            .with_start_revision(start)
            .with_prev_key();
        let mut client = self.inner.watch.clone();
        let stream = self
            .call(client.watch(self.etcd_key(prefix), Some(options)))
            .await
            .map_err(|e| e.into_unavailable(&what))?;
        tracing::debug!(prefix, after, "etcd watch started");
        let state = WatchState {
            store: self.clone(),
            prefix: prefix.to_owned(),
            stream,
            pending: VecDeque::new(),
            next: after.max(0) + 1,
            after,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut state| async move {
                let item = state.next_item().await?;
                Some((item, state))
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= 0 {
            return Ok(());
        }
        let current = self.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        // Not physical: etcd refuses reads and watches below `revision` as soon as the
        // compaction is applied; waiting for the backend to drop the data would only make
        // the request slower on a large database.
        match self.call(self.kv().compact(revision, None)).await {
            Ok(_) => Ok(()),
            Err(e) => match e.mvcc() {
                Some(Mvcc::Compacted) => Ok(()),
                Some(Mvcc::FutureRevision) => match self.current_revision().await {
                    Ok(current) => Err(StoreError::FutureRevision {
                        requested: revision,
                        current,
                    }),
                    Err(e) => Err(e),
                },
                _ => Err(e.into_unavailable(&format!("compact to {revision}"))),
            },
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        let what = "current revision";
        let answer = self
            .call(self.kv().get(
                self.etcd_key("/"),
                Some(GetOptions::new().with_count_only()),
            ))
            .await
            .map_err(|e| e.into_unavailable(what))?;
        header_revision(answer.header(), what)
    }
}

/// A live watch: the etcd watch stream (dropping it cancels the etcd watch) and the events
/// of its last answer not yet handed out.
struct WatchState {
    store: EtcdStore,
    prefix: String,
    stream: etcd_client::WatchStream,
    pending: VecDeque<Result<Event>>,
    /// The first revision not handed out yet.
    next: Revision,
    /// The watch's `after`: changes at or before it are not handed out.
    after: Revision,
    /// An error is queued (or the stream ended): nothing is read from etcd any more.
    done: bool,
}

impl WatchState {
    async fn next_item(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    tracing::debug!(prefix = %self.prefix, next = self.next, "etcd watch ended");
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            let answer = match self.stream.message().await {
                Ok(Some(answer)) => answer,
                Ok(None) => {
                    let reason = format!(
                        "etcd closed the watch on {} at revision {}",
                        self.prefix, self.next
                    );
                    self.fail(StoreError::unavailable(reason));
                    continue;
                }
                Err(e) => {
                    let reason = format!("etcd watch on {} failed: {}", self.prefix, describe(&e));
                    self.fail(StoreError::Unavailable {
                        reason,
                        source: Some(Box::new(e)),
                    });
                    continue;
                }
            };
            for ev in answer.events() {
                match self.store.event(ev).await {
                    // The change at `after` itself (the watch starts there); one etcd
                    // revision may hold several changes, all wanted when after `after`.
                    Ok(event) if event.revision() <= self.after => {}
                    Ok(event) => {
                        self.next = event.revision().saturating_add(1);
                        self.pending.push_back(Ok(event));
                    }
                    Err(e) => {
                        self.fail(e);
                        break;
                    }
                }
            }
            if self.done {
                continue;
            }
            if answer.compact_revision() > 0 {
                let requested = self.next.saturating_sub(1);
                self.fail(StoreError::Compacted {
                    requested,
                    compacted: answer.compact_revision(),
                });
            } else if answer.canceled() {
                let reason = format!(
                    "etcd canceled the watch on {}: {}",
                    self.prefix,
                    answer.cancel_reason()
                );
                self.fail(StoreError::unavailable(reason));
            }
        }
    }

    fn fail(&mut self, error: StoreError) {
        self.pending.push_back(Err(error));
        self.done = true;
    }
}
