//! The conformance suite every [`Store`] implementation runs.
//!
//! Each case is an `async fn(&S)` that drives a fresh store through one part of the
//! contract written on [`Store`]. [`store_conformance_tests!`](crate::store_conformance_tests)
//! turns the whole list into one `#[tokio::test]` per case for a given store factory:
//!
//! ```ignore
//! // The factory returns the store and anything that must live as long as the test
//! // (a temporary directory, a server process).
//! keelson_store::store_conformance_tests!(mem, || async { (keelson_store::MemStore::ephemeral(), ()) });
//! ```
//!
//! The cases assume nothing about absolute revision numbers and only look at keys under
//! their own prefix, so stores that share a backend with other tests (an etcd with a key
//! namespace per store) can run them in parallel. Cases that compact take the suite's
//! exclusive lock ([`compaction_lock`]) because compaction is global to a backend.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{Event, EventKind, ListOptions, Revision, Store, StoreError, WatchStream};

/// Held shared by ordinary cases and exclusively by cases that compact.
pub fn compaction_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: LazyLock<tokio::sync::RwLock<()>> = LazyLock::new(|| tokio::sync::RwLock::new(()));
    &LOCK
}

/// How long a case waits for an expected watch event before failing.
const WAIT: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut WatchStream) -> Event {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended early"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

async fn take_events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(w).await);
    }
    out
}

/// Asserts that no event arrives for a short while.
async fn assert_quiet(w: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
        panic!("expected no more events, got {item:?}");
    }
}

/// A put then a get returns what was written; a missing key is `None`.
pub async fn create_then_get_returns_the_value<S: Store>(s: &S) {
    assert_eq!(s.get("/c1/missing").await.expect("get"), None);
    let kv = s.create("/c1/a", b("one")).await.expect("create");
    assert_eq!(&*kv.key, "/c1/a");
    assert_eq!(kv.value, b("one"));
    assert!(kv.mod_revision > 0);
    assert_eq!(kv.create_revision, kv.mod_revision);
    assert_eq!(kv.version, 1);
    assert_eq!(s.get("/c1/a").await.expect("get"), Some(kv.clone()));
    assert!(s.current_revision().await.expect("rev") >= kv.mod_revision);
}

/// Creating a key that exists fails and changes nothing.
pub async fn create_of_an_existing_key_is_already_exists<S: Store>(s: &S) {
    let kv = s.create("/c2/a", b("one")).await.expect("create");
    let err = s
        .create("/c2/a", b("two"))
        .await
        .expect_err("second create");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(s.get("/c2/a").await.expect("get"), Some(kv));
}

/// Compare-and-swap: the expected revision replaces, a stale one is a conflict naming the
/// actual revision, a missing key is not found.
pub async fn update_is_a_compare_and_swap_on_the_mod_revision<S: Store>(s: &S) {
    let v1 = s.create("/c3/a", b("1")).await.expect("create");
    let v2 = s
        .update("/c3/a", b("2"), v1.mod_revision)
        .await
        .expect("update");
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(v2.create_revision, v1.create_revision);
    assert_eq!(v2.version, 2);
    let err = s
        .update("/c3/a", b("3"), v1.mod_revision)
        .await
        .expect_err("stale");
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(actual, v2.mod_revision);
        }
        other => panic!("expected Conflict, got {other}"),
    }
    assert_eq!(
        s.get("/c3/a").await.expect("get").map(|kv| kv.value),
        Some(b("2"))
    );
    let err = s
        .update("/c3/missing", b("x"), 1)
        .await
        .expect_err("missing");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

/// Delete returns the last value; a guard with the wrong revision is a conflict; deleting
/// a missing key is not found; a re-created key starts a new life.
pub async fn delete_is_guarded_and_a_recreated_key_starts_over<S: Store>(s: &S) {
    let v1 = s.create("/c4/a", b("1")).await.expect("create");
    let v2 = s
        .update("/c4/a", b("2"), v1.mod_revision)
        .await
        .expect("update");
    let err = s
        .delete("/c4/a", Some(v1.mod_revision))
        .await
        .expect_err("guarded");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let d = s
        .delete("/c4/a", Some(v2.mod_revision))
        .await
        .expect("delete");
    assert_eq!(d.prev.value, b("2"));
    assert_eq!(d.prev.mod_revision, v2.mod_revision);
    assert!(d.revision > v2.mod_revision);
    assert_eq!(s.get("/c4/a").await.expect("get"), None);
    let err = s.delete("/c4/a", None).await.expect_err("missing");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let v3 = s.create("/c4/a", b("3")).await.expect("recreate");
    assert_eq!(v3.version, 1);
    assert_eq!(v3.create_revision, v3.mod_revision);
    assert!(v3.mod_revision > d.revision);
    s.delete("/c4/a", None).await.expect("unguarded delete");
}

/// Every write gets a revision above every earlier one, across keys.
pub async fn revisions_grow_with_every_write_across_keys<S: Store>(s: &S) {
    let start = s.current_revision().await.expect("rev");
    let mut last = start;
    for i in 0..20 {
        let key = format!("/c5/k{}", i % 3);
        let rev = match s.get(&key).await.expect("get") {
            None => s.create(&key, b("x")).await.expect("create").mod_revision,
            Some(_) if i % 4 == 0 => s.delete(&key, None).await.expect("delete").revision,
            Some(kv) => {
                s.update(&key, b("y"), kv.mod_revision)
                    .await
                    .expect("update")
                    .mod_revision
            }
        };
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
    }
    assert!(s.current_revision().await.expect("rev") >= last);
}

/// A list shows the live keys under the prefix, in key order, and nothing else.
pub async fn list_shows_live_keys_under_the_prefix_in_order<S: Store>(s: &S) {
    for k in ["/c6/ns/b", "/c6/ns/a", "/c6/ns/c", "/c6/ns2/x", "/c6/n"] {
        s.create(k, b(k)).await.expect("create");
    }
    s.delete("/c6/ns/c", None).await.expect("delete");
    let page = s
        .list("/c6/ns/", ListOptions::default())
        .await
        .expect("list");
    let keys: Vec<&str> = page.items.iter().map(|kv| &*kv.key).collect();
    assert_eq!(keys, ["/c6/ns/a", "/c6/ns/b"]);
    assert_eq!(page.continue_token, None);
    assert!(
        page.revision
            >= page
                .items
                .iter()
                .map(|kv| kv.mod_revision)
                .max()
                .unwrap_or(0)
    );
    for kv in &page.items {
        assert_eq!(kv.value, b(&kv.key));
    }
    let empty = s
        .list("/c6/nothing/", ListOptions::default())
        .await
        .expect("list");
    assert!(empty.items.is_empty());
}

/// A list at a past revision shows the state as it was then.
pub async fn list_at_a_past_revision_shows_the_past<S: Store>(s: &S) {
    let a = s.create("/c7/a", b("a1")).await.expect("create");
    let at = a.mod_revision;
    s.update("/c7/a", b("a2"), a.mod_revision)
        .await
        .expect("update");
    s.create("/c7/b", b("b1")).await.expect("create");
    let past = s
        .list(
            "/c7/",
            ListOptions {
                revision: Some(at),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(past.revision, at);
    assert_eq!(past.items.len(), 1);
    assert_eq!(past.items[0].value, b("a1"));
    let now = s.list("/c7/", ListOptions::default()).await.expect("list");
    assert_eq!(now.items.len(), 2);
    assert_eq!(now.items[0].value, b("a2"));
}

/// Pages of one list are read at one revision, whatever happens between them.
pub async fn pagination_is_consistent_at_the_first_pages_revision<S: Store>(s: &S) {
    for i in 0..25 {
        s.create(&format!("/c8/k{i:02}"), b("v0"))
            .await
            .expect("create");
    }
    let first = s
        .list(
            "/c8/",
            ListOptions {
                limit: Some(10),
                ..Default::default()
            },
        )
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.remaining, Some(15));
    let token = first.continue_token.clone().expect("a continue token");
    // Change the keyspace between pages.
    s.delete("/c8/k15", None).await.expect("delete");
    s.create("/c8/k99", b("new")).await.expect("create");
    let k12 = s.get("/c8/k12").await.expect("get").expect("exists");
    s.update("/c8/k12", b("v1"), k12.mod_revision)
        .await
        .expect("update");

    let mut items = first.items.clone();
    let mut token = Some(token);
    let mut pages = 1;
    while let Some(t) = token {
        let page = s
            .list(
                "/c8/",
                ListOptions {
                    limit: Some(10),
                    continue_token: Some(t),
                    ..Default::default()
                },
            )
            .await
            .expect("next page");
        assert_eq!(
            page.revision, first.revision,
            "every page is read at the first page's revision"
        );
        items.extend(page.items);
        token = page.continue_token;
        pages += 1;
    }
    assert_eq!(pages, 3);
    let keys: Vec<String> = items.iter().map(|kv| kv.key.to_string()).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("/c8/k{i:02}")).collect();
    assert_eq!(keys, expected);
    assert!(items.iter().all(|kv| kv.value == b("v0")));
}

/// Continue tokens from another list, altered tokens and future revisions are refused.
pub async fn bad_continue_tokens_and_future_revisions_are_refused<S: Store>(s: &S) {
    for i in 0..3 {
        s.create(&format!("/c9/a/k{i}"), b("v"))
            .await
            .expect("create");
    }
    let page = s
        .list(
            "/c9/a/",
            ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let token = page.continue_token.expect("token");
    let other = s
        .list(
            "/c9/b/",
            ListOptions {
                continue_token: Some(token.clone()),
                ..Default::default()
            },
        )
        .await
        .expect_err("token of another list");
    assert!(
        matches!(other, StoreError::InvalidContinue { .. }),
        "{other}"
    );
    let mut altered = token.into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    let err = s
        .list(
            "/c9/a/",
            ListOptions {
                continue_token: Some(altered),
                ..Default::default()
            },
        )
        .await
        .expect_err("altered token");
    assert!(matches!(err, StoreError::InvalidContinue { .. }), "{err}");
    let current = s.current_revision().await.expect("rev");
    let err = s
        .list(
            "/c9/a/",
            ListOptions {
                revision: Some(current + 1000),
                ..Default::default()
            },
        )
        .await
        .expect_err("future");
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
}

/// Empty, relative and oversized keys, and oversized values, are refused before anything
/// is written.
pub async fn bad_keys_and_oversized_values_are_refused<S: Store>(s: &S) {
    let before = s.current_revision().await.expect("rev");
    for key in ["", "no-slash", "/nul\0byte"] {
        let err = s.create(key, b("v")).await.expect_err("bad key");
        assert!(
            matches!(err, StoreError::InvalidKey { .. }),
            "{key:?}: {err}"
        );
    }
    let long = format!("/{}", "k".repeat(crate::MAX_KEY_BYTES));
    assert!(matches!(
        s.get(&long).await,
        Err(StoreError::InvalidKey { .. })
    ));
    let big = Bytes::from(vec![b'x'; crate::MAX_VALUE_BYTES + 1]);
    let err = s.create("/c10/big", big).await.expect_err("too big");
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    let ok = Bytes::from(vec![b'x'; crate::MAX_VALUE_BYTES]);
    let kv = s
        .create("/c10/max", ok)
        .await
        .expect("a value at the limit is accepted");
    assert_eq!(kv.value.len(), crate::MAX_VALUE_BYTES);
    assert!(s.get("/c10/big").await.expect("get").is_none());
    assert!(kv.mod_revision > before);
}

/// A watch yields the history after its revision, then live changes, in revision order,
/// with previous values, and only under its prefix.
pub async fn watch_yields_history_then_live_changes_in_order<S: Store>(s: &S) {
    let a = s.create("/c11/w/a", b("a1")).await.expect("create");
    let start = a.mod_revision;
    let a2 = s
        .update("/c11/w/a", b("a2"), a.mod_revision)
        .await
        .expect("update");
    s.create("/c11/other", b("x"))
        .await
        .expect("create outside the prefix");
    let mut w = s.watch("/c11/w/", start).await.expect("watch");
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.value.clone(), e.revision()),
        (EventKind::Put, b("a2"), a2.mod_revision)
    );
    assert_eq!(e.prev.as_ref().map(|p| p.value.clone()), Some(b("a1")));
    let bkv = s.create("/c11/w/b", b("b1")).await.expect("create");
    let d = s.delete("/c11/w/a", None).await.expect("delete");
    s.create("/c11/w2", b("not under /c11/w/"))
        .await
        .expect("create");
    let events = take_events(&mut w, 2).await;
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv, bkv);
    assert_eq!(events[0].prev, None);
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(&*events[1].kv.key, "/c11/w/a");
    assert_eq!(events[1].revision(), d.revision);
    assert_eq!(
        events[1].kv.value,
        b("a2"),
        "a delete event carries the last value"
    );
    assert_eq!(
        events[1].prev.as_ref().map(|p| p.mod_revision),
        Some(a2.mod_revision)
    );
    assert_quiet(&mut w).await;
}

/// A watch from any revision yields exactly the changes after it.
pub async fn watch_resumes_from_any_revision<S: Store>(s: &S) {
    let mut revs = Vec::new();
    for i in 0..12 {
        let key = format!("/c12/k{}", i % 4);
        let rev = match s.get(&key).await.expect("get") {
            None => {
                s.create(&key, b(&format!("v{i}")))
                    .await
                    .expect("create")
                    .mod_revision
            }
            Some(kv) if i % 5 == 0 => {
                s.delete(&key, Some(kv.mod_revision))
                    .await
                    .expect("delete")
                    .revision
            }
            Some(kv) => {
                s.update(&key, b(&format!("v{i}")), kv.mod_revision)
                    .await
                    .expect("update")
                    .mod_revision
            }
        };
        revs.push(rev);
    }
    let mut all = s.watch("/c12/", revs[0] - 1).await.expect("watch all");
    let full = take_events(&mut all, revs.len()).await;
    assert_eq!(full.iter().map(Event::revision).collect::<Vec<_>>(), revs);
    for (i, &after) in revs.iter().enumerate() {
        let mut w = s.watch("/c12/", after).await.expect("watch");
        let got = take_events(&mut w, revs.len() - i - 1).await;
        assert_eq!(got, full[i + 1..], "watch after revision {after}");
        assert_quiet(&mut w).await;
    }
}

/// A watch from the current revision sees only new changes; one from the future is refused.
pub async fn watch_from_now_sees_only_new_changes<S: Store>(s: &S) {
    s.create("/c13/old", b("x")).await.expect("create");
    let now = s.current_revision().await.expect("rev");
    let mut w = s.watch("/c13/", now).await.expect("watch");
    let kv = s.create("/c13/new", b("y")).await.expect("create");
    let e = next_event(&mut w).await;
    assert_eq!(e.kv, kv);
    let err = match s.watch("/c13/", now + 1000).await {
        Err(e) => e,
        Ok(_) => panic!("a watch from a future revision must be refused"),
    };
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
}

/// Many watchers of one prefix each see every change, in the same order.
pub async fn many_watchers_see_the_same_changes<S: Store>(s: &S) {
    let now = s.current_revision().await.expect("rev");
    let mut watchers = Vec::new();
    for _ in 0..20 {
        watchers.push(s.watch("/c14/", now).await.expect("watch"));
    }
    let mut written = Vec::new();
    for i in 0..30 {
        written.push(
            s.create(&format!("/c14/k{i}"), b("v"))
                .await
                .expect("create"),
        );
    }
    for w in &mut watchers {
        let got: Vec<_> = take_events(w, written.len())
            .await
            .into_iter()
            .map(|e| e.kv.clone())
            .collect();
        assert_eq!(got, written);
    }
}

/// A watcher that nobody reads never holds up writers; when it is read at last it either
/// yields every change in order or ends with `WatchLagged`.
pub async fn a_stalled_watcher_never_blocks_writers<S: Store>(s: &S) {
    let now = s.current_revision().await.expect("rev");
    let mut w = s.watch("/c15/", now).await.expect("watch");
    let value = Bytes::from(vec![b'v'; 1024]);
    let writes = async {
        let mut revs = Vec::new();
        for i in 0..2000 {
            revs.push(
                s.create(&format!("/c15/k{i}"), value.clone())
                    .await
                    .expect("create")
                    .mod_revision,
            );
        }
        revs
    };
    let revs = tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("writes finish while the watcher is stalled");
    let mut seen = 0;
    loop {
        match tokio::time::timeout(WAIT, w.next()).await {
            Ok(Some(Ok(e))) => {
                assert_eq!(e.revision(), revs[seen], "events in order, none skipped");
                seen += 1;
                if seen == revs.len() {
                    break;
                }
            }
            Ok(Some(Err(StoreError::WatchLagged { .. }))) => {
                assert!(w.next().await.is_none(), "a lagged watch ends");
                break;
            }
            other => panic!("unexpected watch item after {seen} events: {other:?}"),
        }
    }
}

/// Writers racing on one key through compare-and-swap lose no update, and concurrent
/// creates all land with distinct revisions.
pub async fn concurrent_writers_lose_nothing<S: Store + Clone>(s: &S) {
    s.create("/c16/counter", b("0"))
        .await
        .expect("create counter");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                revs.push(
                    s.create(&format!("/c16/items/{t}-{i}"), b("x"))
                        .await
                        .expect("create")
                        .mod_revision,
                );
                loop {
                    let cur = s.get("/c16/counter").await.expect("get").expect("counter");
                    let n: u64 = std::str::from_utf8(&cur.value)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    match s
                        .update("/c16/counter", b(&(n + 1).to_string()), cur.mod_revision)
                        .await
                    {
                        Ok(kv) => {
                            revs.push(kv.mod_revision);
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
            }
            revs
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.extend(t.await.expect("task"));
    }
    let n = revs.len();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), n, "every write has its own revision");
    let counter = s.get("/c16/counter").await.expect("get").expect("counter");
    assert_eq!(counter.value, b("200"));
    assert_eq!(counter.version, 201);
    let items = s
        .list("/c16/items/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(items.items.len(), 200);
}

/// After compaction, reads and watches before the compacted revision fail with
/// `Compacted`, and everything from it on still works.
pub async fn compaction_discards_history_before_the_revision<S: Store>(s: &S) {
    let a = s.create("/c17/a", b("1")).await.expect("create");
    let a2 = s
        .update("/c17/a", b("2"), a.mod_revision)
        .await
        .expect("update");
    let c = s
        .create("/c17/c", b("c"))
        .await
        .expect("create")
        .mod_revision;
    let a3 = s
        .update("/c17/a", b("3"), a2.mod_revision)
        .await
        .expect("update");
    s.compact(c).await.expect("compact");
    let err = s
        .list(
            "/c17/",
            ListOptions {
                revision: Some(a2.mod_revision),
                ..Default::default()
            },
        )
        .await
        .expect_err("read before the compacted revision");
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let at_c = s
        .list(
            "/c17/",
            ListOptions {
                revision: Some(c),
                ..Default::default()
            },
        )
        .await
        .expect("read at the compacted revision");
    assert_eq!(
        at_c.items
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        [b("2"), b("c")]
    );
    match s.watch("/c17/", c - 1).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("a watch from before the compacted revision must fail"),
    }
    let mut w = s
        .watch("/c17/", c)
        .await
        .expect("watch from the compacted revision");
    let got = next_event(&mut w).await;
    assert_eq!(got.revision(), a3.mod_revision);
    assert_eq!(
        got.prev.as_ref().map(|p| p.value.clone()),
        Some(b("2")),
        "the previous value survives compaction"
    );
    s.compact(a.mod_revision)
        .await
        .expect("compacting to an older revision does nothing");
    let now = s.current_revision().await.expect("rev");
    let err = s.compact(now + 1000).await.expect_err("future compaction");
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
    assert_eq!(
        s.get("/c17/a").await.expect("get").map(|kv| kv.value),
        Some(b("3"))
    );
}

/// A list of many keys across many pages equals a list in one page.
pub async fn paging_through_many_keys_equals_one_list<S: Store>(s: &S) {
    let mut expected = BTreeMap::new();
    for i in 0..300 {
        let key = format!("/c18/{:04}", (i * 7919) % 1000);
        if expected.contains_key(&key) {
            continue;
        }
        s.create(&key, b(&key)).await.expect("create");
        expected.insert(key.clone(), b(&key));
    }
    let whole = s.list("/c18/", ListOptions::default()).await.expect("list");
    let mut paged = Vec::new();
    let mut token = None;
    loop {
        let page = s
            .list(
                "/c18/",
                ListOptions {
                    limit: Some(37),
                    continue_token: token,
                    revision: Some(whole.revision),
                },
            )
            .await
            .expect("page");
        paged.extend(page.items);
        token = page.continue_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(paged, whole.items);
    let got: BTreeMap<String, Bytes> = paged
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv.value))
        .collect();
    assert_eq!(got, expected);
}

/// Concurrent writers and a watcher: the watcher sees every write exactly once, in
/// revision order.
pub async fn a_watch_under_concurrent_writers_sees_each_write_once_in_order<S: Store + Clone>(
    s: &S,
) {
    let now = s.current_revision().await.expect("rev");
    let mut w = s.watch("/c19/", now).await.expect("watch");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                revs.push(
                    s.create(&format!("/c19/{t}/{i}"), b("v"))
                        .await
                        .expect("create")
                        .mod_revision,
                );
            }
            revs
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.extend(t.await.expect("task"));
    }
    revs.sort_unstable();
    let got: Vec<Revision> = take_events(&mut w, revs.len())
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(got, revs);
    assert_quiet(&mut w).await;
}

/// Every case, by name, for the macro.
#[macro_export]
macro_rules! store_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_conformance_tests!(@cases $factory;
                create_then_get_returns_the_value,
                create_of_an_existing_key_is_already_exists,
                update_is_a_compare_and_swap_on_the_mod_revision,
                delete_is_guarded_and_a_recreated_key_starts_over,
                revisions_grow_with_every_write_across_keys,
                list_shows_live_keys_under_the_prefix_in_order,
                list_at_a_past_revision_shows_the_past,
                pagination_is_consistent_at_the_first_pages_revision,
                bad_continue_tokens_and_future_revisions_are_refused,
                bad_keys_and_oversized_values_are_refused,
                watch_yields_history_then_live_changes_in_order,
                watch_resumes_from_any_revision,
                watch_from_now_sees_only_new_changes,
                many_watchers_see_the_same_changes,
                a_stalled_watcher_never_blocks_writers,
                concurrent_writers_lose_nothing,
                paging_through_many_keys_equals_one_list,
                a_watch_under_concurrent_writers_sees_each_write_once_in_order,
            );
            $crate::store_conformance_tests!(@exclusive $factory;
                compaction_discards_history_before_the_revision,
            );
        }
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let _shared = $crate::conformance::compaction_lock().read().await;
                let (store, _guard) = ($factory)().await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
    (@exclusive $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let _exclusive = $crate::conformance::compaction_lock().write().await;
                let (store, _guard) = ($factory)().await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}
