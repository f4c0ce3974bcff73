//! A small reflector: list, then watch from the list's version; re-list when the watch
//! expires (410) or fails, re-watch when the server ends it.

use std::time::Duration;

use futures::StreamExt;
use keelson_core::client::{Api, Event, ListParams, WatchParams};
use keelson_core::k8s_openapi::Metadata;
use keelson_core::{ObjectMeta, Resource};
use tokio::sync::oneshot;

/// What the reflector tells its handler.
pub(crate) enum Change<K> {
    /// Every object, after a (re-)list: the handler replaces what it knew.
    Sync(Vec<K>),
    /// An object added or changed.
    Applied(K),
    /// An object deleted (its last state).
    Deleted(K),
}

fn version<K: Metadata<Ty = ObjectMeta>>(obj: &K) -> Option<String> {
    obj.metadata().resource_version.clone()
}

/// Runs until the task is aborted. `ready` fires after the first successful list has
/// been handled.
pub(crate) async fn reflect<K, F>(
    api: Api<K>,
    what: &'static str,
    mut handle: F,
    ready: oneshot::Sender<()>,
) where
    K: Resource + Metadata<Ty = ObjectMeta>,
    F: FnMut(Change<K>) + Send,
{
    let mut ready = Some(ready);
    let mut delay = Duration::from_millis(100);
    loop {
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(resource = what, error = %e, "list failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        let mut rv = list.resource_version.clone();
        handle(Change::Sync(list.items));
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        // Watch until it cannot continue; re-watch from the last version when the
        // server ends it normally.
        'watch: loop {
            let params = WatchParams {
                resource_version: Some(rv.clone()),
                bookmarks: true,
                ..WatchParams::default()
            };
            let mut stream = match api.watch(&params).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(resource = what, error = %e, "watch failed; listing again");
                    tokio::time::sleep(delay).await;
                    break 'watch;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(Event::Added(obj) | Event::Modified(obj)) => {
                        if let Some(v) = version(&obj) {
                            rv = v;
                        }
                        handle(Change::Applied(obj));
                    }
                    Ok(Event::Deleted(obj)) => {
                        if let Some(v) = version(&obj) {
                            rv = v;
                        }
                        handle(Change::Deleted(obj));
                    }
                    Ok(Event::Bookmark {
                        resource_version, ..
                    }) => {
                        if !resource_version.is_empty() {
                            rv = resource_version;
                        }
                    }
                    Err(e) => {
                        if e.is_expired() {
                            tracing::debug!(resource = what, "watch expired; listing again");
                        } else {
                            tracing::warn!(resource = what, error = %e, "watch error; listing again");
                        }
                        break 'watch;
                    }
                }
            }
        }
    }
}
