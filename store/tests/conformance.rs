//! The shared conformance suite, run against MemStore (ephemeral and durable) and a real
//! etcd.

mod common;

keelson_store::store_conformance_tests!(mem_ephemeral, || async {
    (keelson_store::MemStore::ephemeral(), ())
});

keelson_store::store_conformance_tests!(mem_durable, || async {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = keelson_store::MemStore::open(dir.path()).expect("open");
    (store, dir)
});

// Snapshots every 64 KiB of log, so the cases also run across snapshots and segment changes.
keelson_store::store_conformance_tests!(mem_durable_frequent_snapshots, || async {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = keelson_store::MemStoreOptions {
        snapshot_after_bytes: 64 << 10,
        segment_bytes: 16 << 10,
        ..Default::default()
    };
    let store = keelson_store::MemStore::open_with(dir.path(), options).expect("open");
    (store, dir)
});

keelson_store::store_conformance_tests!(etcd, || async { common::etcd_store().await });
