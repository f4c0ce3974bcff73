//! Test fixtures shared by the store's integration tests.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use keelson_store::{EtcdOptions, EtcdStore};

/// The etcd endpoint the tests use: `KEELSON_ETCD_ENDPOINTS` (comma-separated), or
/// `http://127.0.0.1:2379`, where `.ci/run` (and `scripts/etcd-for-tests`) start one.
pub fn etcd_endpoints() -> Vec<String> {
    std::env::var("KEELSON_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// An EtcdStore on the test etcd, with a key namespace of its own so tests do not see each
/// other's keys. Fails (never skips) when etcd is unreachable: the README and `.ci/run`
/// say how to start it.
pub async fn etcd_store() -> (EtcdStore, ()) {
    static N: AtomicU64 = AtomicU64::new(0);
    let namespace = format!(
        "/keelson-test/{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let options = EtcdOptions {
        endpoints: etcd_endpoints(),
        key_prefix: namespace,
        ..Default::default()
    };
    match EtcdStore::connect(options).await {
        Ok(store) => (store, ()),
        Err(e) => panic!(
            "these tests need a real etcd at {:?} ({e}); start one with `scripts/etcd-for-tests start` \
             or set KEELSON_ETCD_ENDPOINTS",
            etcd_endpoints()
        ),
    }
}
