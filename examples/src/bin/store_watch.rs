//! A durable MemStore: write, watch, compare-and-swap, reopen.
//!
//! `cargo run -p keelson-examples --bin store_watch`

use bytes::Bytes;
use futures::StreamExt;
use keelson::store::{EventKind, ListOptions, MemStore, Store, StoreError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Io {
        op: "making a temp dir".into(),
        source: e,
    })?;
    let revision = {
        let store = MemStore::open(dir.path())?;
        // Watch everything under /demo/ from the beginning.
        let mut watch = store.watch("/demo/", 0).await?;
        let a = store
            .create("/demo/a", Bytes::from_static(b"hello"))
            .await?;
        let a = store
            .update("/demo/a", Bytes::from_static(b"world"), a.mod_revision)
            .await?;
        // A stale compare-and-swap is refused.
        match store
            .update("/demo/a", Bytes::from_static(b"late"), a.mod_revision - 1)
            .await
        {
            Err(StoreError::Conflict { actual, .. }) => {
                println!("stale update refused: current revision is {actual}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        store
            .create("/demo/b", Bytes::from_static(b"second"))
            .await?;
        store.delete("/demo/b", None).await?;
        for _ in 0..4 {
            let e = watch.next().await.expect("an event")?;
            let kind = match e.kind {
                EventKind::Put => "put",
                EventKind::Delete => "delete",
            };
            println!(
                "event at revision {}: {kind} {} = {}",
                e.revision(),
                e.kv.key,
                String::from_utf8_lossy(&e.kv.value)
            );
        }
        store.current_revision().await?
    };
    // Everything acknowledged is there after reopening.
    let store = MemStore::open(dir.path())?;
    let page = store.list("/demo/", ListOptions::default()).await?;
    assert_eq!(store.current_revision().await?, revision);
    println!(
        "after reopening at revision {revision}: {} key(s)",
        page.items.len()
    );
    for kv in page.items {
        println!("  {} = {}", kv.key, String::from_utf8_lossy(&kv.value));
    }
    Ok(())
}
