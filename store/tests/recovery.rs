//! MemStore on disk: reopening gives back exactly the acknowledged state, torn tails are cut
//! and reported, damage is refused, a full disk fails writes cleanly.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use keelson_store::{EventKind, ListOptions, MemStore, MemStoreOptions, Store, StoreError};

fn v(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

async fn dump(s: &MemStore) -> Vec<(String, Bytes, i64, i64, i64)> {
    s.list("/", ListOptions::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|kv| {
            (
                kv.key.to_string(),
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

#[tokio::test]
async fn reopening_gives_back_the_same_state_and_history() {
    let dir = tempfile::tempdir().expect("dir");
    let (before, revision, history) = {
        let s = MemStore::open(dir.path()).expect("open");
        let a = s.create("/r/a", v("1")).await.expect("create");
        s.update("/r/a", v("2"), a.mod_revision)
            .await
            .expect("update");
        s.create("/r/b", v("b")).await.expect("create");
        s.delete("/r/b", None).await.expect("delete");
        s.create("/r/c", v("c")).await.expect("create");
        s.compact(2).await.expect("compact");
        let mut w = s.watch("/r/", 2).await.expect("watch");
        let mut history = Vec::new();
        for _ in 0..3 {
            history.push(w.next().await.expect("event").expect("ok"));
        }
        (
            dump(&s).await,
            s.current_revision().await.expect("rev"),
            history,
        )
    };
    let s = MemStore::open(dir.path()).expect("reopen");
    assert_eq!(dump(&s).await, before);
    assert_eq!(s.current_revision().await.expect("rev"), revision);
    let report = s.recovery_report().expect("report");
    assert_eq!(report.revision, revision);
    assert_eq!(report.torn_tail, None);
    // History after the compaction survives the restart; before it, it is still compacted.
    let mut w = s.watch("/r/", 2).await.expect("watch");
    for expected in &history {
        assert_eq!(&w.next().await.expect("event").expect("ok"), expected);
    }
    assert!(matches!(
        s.list(
            "/r/",
            ListOptions {
                revision: Some(1),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Compacted { .. })
    ));
    let next = s.create("/r/d", v("d")).await.expect("create");
    assert_eq!(next.mod_revision, revision + 1);
}

#[tokio::test]
async fn snapshots_bound_the_log_and_recovery_starts_from_them() {
    let dir = tempfile::tempdir().expect("dir");
    let options = MemStoreOptions {
        snapshot_after_bytes: 32 << 10,
        ..Default::default()
    };
    let before = {
        let s = MemStore::open_with(dir.path(), options.clone()).expect("open");
        for round in 0..20 {
            for i in 0..50 {
                let key = format!("/s/{i:03}");
                let value = Bytes::from(format!("{round}-{}", "x".repeat(100)));
                match s.get(&key).await.expect("get") {
                    Some(kv) => s
                        .update(&key, value, kv.mod_revision)
                        .await
                        .expect("update"),
                    None => s.create(&key, value).await.expect("create"),
                };
            }
            let now = s.current_revision().await.expect("rev");
            s.compact(now).await.expect("compact");
        }
        dump(&s).await
    };
    // The snapshot thread finishes when the store is dropped.
    let snaps = files(dir.path(), "snap");
    assert_eq!(snaps.len(), 1, "older snapshots are removed: {snaps:?}");
    let logs = files(dir.path(), "log");
    assert!(
        logs.len() <= 2,
        "segments covered by the snapshot are removed: {logs:?}"
    );
    let s = MemStore::open_with(dir.path(), options).expect("reopen");
    assert!(s
        .recovery_report()
        .expect("report")
        .snapshot_revision
        .is_some());
    assert_eq!(dump(&s).await, before);
}

#[tokio::test]
async fn the_log_rotates_into_segments_and_replays_across_them() {
    let dir = tempfile::tempdir().expect("dir");
    let options = MemStoreOptions {
        segment_bytes: 4 << 10,
        snapshot_after_bytes: u64::MAX,
        ..Default::default()
    };
    let before = {
        let s = MemStore::open_with(dir.path(), options.clone()).expect("open");
        for i in 0..200 {
            s.create(&format!("/g/{i:03}"), Bytes::from(vec![b'x'; 100]))
                .await
                .expect("create");
        }
        dump(&s).await
    };
    let segments = files(dir.path(), "log");
    assert!(segments.len() > 5, "{segments:?}");
    assert!(files(dir.path(), "snap").is_empty());
    let s = MemStore::open_with(dir.path(), options).expect("reopen");
    let report = s.recovery_report().expect("report");
    assert_eq!(report.segments, segments.len());
    assert_eq!(report.revision, 200);
    assert_eq!(dump(&s).await, before);
}

#[tokio::test]
async fn a_torn_last_record_is_cut_off_and_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let before = {
        let s = MemStore::open(dir.path()).expect("open");
        for i in 0..10 {
            s.create(&format!("/t/{i}"), v("x")).await.expect("create");
        }
        dump(&s).await
    };
    let segment = files(dir.path(), "log").pop().expect("segment");
    let whole = std::fs::metadata(&segment).expect("meta").len();
    // The first bytes of a record that never finished: magic, a length, part of a payload.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    f.write_all(&0x4b4c_5357u32.to_le_bytes()).expect("write");
    f.write_all(&500u32.to_le_bytes()).expect("write");
    f.write_all(&[7; 40]).expect("write");
    drop(f);
    let s = MemStore::open(dir.path()).expect("reopen");
    let torn = s
        .recovery_report()
        .expect("report")
        .torn_tail
        .clone()
        .expect("a torn tail is reported");
    assert_eq!(torn.offset, whole);
    assert_eq!(torn.bytes, 48);
    assert_eq!(
        std::fs::metadata(&segment).expect("meta").len(),
        whole,
        "the tail is cut off"
    );
    assert_eq!(dump(&s).await, before);
    let kv = s
        .create("/t/after", v("y"))
        .await
        .expect("write after recovery");
    assert_eq!(kv.mod_revision, 11);
    drop(s);
    let s = MemStore::open(dir.path()).expect("reopen again");
    assert_eq!(s.recovery_report().expect("report").torn_tail, None);
    assert_eq!(
        s.get("/t/after").await.expect("get").map(|kv| kv.value),
        Some(v("y"))
    );
}

#[tokio::test]
async fn damage_before_acknowledged_records_refuses_to_open() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let s = MemStore::open(dir.path()).expect("open");
        for i in 0..10 {
            s.create(&format!("/d/{i}"), v("some value"))
                .await
                .expect("create");
        }
    }
    let segment = files(dir.path(), "log").pop().expect("segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[30] ^= 0x55; // inside the first record
    std::fs::write(&segment, &bytes).expect("write");
    match MemStore::open(dir.path()) {
        Err(StoreError::Corrupt { reason }) => assert!(reason.contains("damaged"), "{reason}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a damaged log must not open"),
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let _first = MemStore::open(dir.path()).expect("open");
    match MemStore::open(dir.path()) {
        Err(StoreError::Io { op, .. }) => assert!(op.contains("another process"), "{op}"),
        Err(e) => panic!("expected Io, got {e}"),
        Ok(_) => panic!("two stores on one directory"),
    }
}

#[tokio::test]
async fn a_watcher_that_falls_a_whole_ring_behind_is_cut_off() {
    let s = MemStore::ephemeral_with(MemStoreOptions {
        watch_buffer: 16,
        ..Default::default()
    });
    let mut w = s.watch("/w/", 0).await.expect("watch");
    for i in 0..100 {
        s.create(&format!("/w/{i}"), v("x")).await.expect("create");
    }
    match w.next().await {
        Some(Err(StoreError::WatchLagged { prefix, .. })) => assert_eq!(prefix, "/w/"),
        other => panic!("expected WatchLagged, got {other:?}"),
    }
    assert!(w.next().await.is_none());
    // A new watch from the last revision starts cleanly.
    let mut w = s.watch("/w/", 100).await.expect("watch again");
    s.create("/w/new", v("y")).await.expect("create");
    let e = w.next().await.expect("event").expect("ok");
    assert_eq!((e.kind, e.revision()), (EventKind::Put, 101));
}

/// Mounts a 1 MiB tmpfs; `None` (with a loud message) where mounting is not allowed.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("dir").keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(SmallDisk(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_an_error_and_loses_nothing() {
    let Some(disk) = SmallDisk::mount() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("SKIPPED a_full_disk_fails_writes_with_an_error_and_loses_nothing: cannot mount a tmpfs (not root?)");
        return;
    };
    let dir = disk.0.join("store");
    let mut acked = Vec::new();
    let value = Bytes::from(vec![b'z'; 100 << 10]);
    {
        let s = MemStore::open(&dir).expect("open");
        let mut failure = None;
        for i in 0..40 {
            match s.create(&format!("/f/{i}"), value.clone()).await {
                Ok(kv) => acked.push(kv),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.expect("a 1 MiB disk fills up");
        assert!(matches!(failure, StoreError::Io { .. }), "{failure}");
        // The store is consistent: reads work, the failed write is not there, and a
        // write that fits still succeeds.
        assert_eq!(
            s.list("/f/", ListOptions::default())
                .await
                .expect("list")
                .items,
            acked
        );
        let small = s
            .create("/f/small", v("s"))
            .await
            .expect("a small write fits");
        assert_eq!(
            small.mod_revision,
            acked.last().map_or(0, |kv| kv.mod_revision) + 1
        );
        acked.push(small);
    }
    let s = MemStore::open(&dir).expect("reopen");
    assert_eq!(
        s.list("/f/", ListOptions::default())
            .await
            .expect("list")
            .items,
        acked
    );
}

/// The committer checks a group against writes that are logged but not yet durable (the
/// syncer has not applied them): racing creates of one key, from groups that overlap on
/// their way to the disk, give exactly one winner, and reopening shows the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_still_on_their_way_to_the_disk_are_seen_by_later_groups() {
    let dir = tempfile::tempdir().expect("dir");
    let before = {
        let s = MemStore::open(dir.path()).expect("open");
        for round in 0..20 {
            let mut tasks = Vec::new();
            for t in 0..64 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.create(&format!("/p/{round}/{}", t % 4), v(&t.to_string()))
                        .await
                }));
            }
            let mut won = 0;
            for t in tasks {
                match t.await.expect("task") {
                    Ok(_) => won += 1,
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => panic!("create failed: {e}"),
                }
            }
            assert_eq!(won, 4, "round {round}: one create of each key wins");
        }
        let all = dump(&s).await;
        assert_eq!(all.len(), 80);
        let revisions: Vec<i64> = all.iter().map(|e| e.3).collect();
        let mut sorted = revisions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 80, "every write has its own revision");
        all
    };
    let s = MemStore::open(dir.path()).expect("reopen");
    assert_eq!(dump(&s).await, before);
}
