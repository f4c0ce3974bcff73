//! Why MemStore keeps its own write-ahead log instead of an embedded database: the same
//! durable write workload through MemStore, and through redb used the best way it can be
//! for this job (one committer thread, every waiting write in one durable transaction).
//!
//! ```sh
//! cargo bench -p keelson-store --bench wal_vs_redb            # 3 rounds of 3 s
//! cargo bench -p keelson-store --bench wal_vs_redb -- --quick
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keelson_store::{MemStore, Store};
use tokio::sync::{mpsc, oneshot};

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");

/// redb behind a group-commit thread: the committer takes every write waiting in its
/// queue and commits them as one durable transaction.
#[derive(Clone)]
struct RedbGroup {
    tx: mpsc::UnboundedSender<(String, Bytes, oneshot::Sender<()>)>,
}

impl RedbGroup {
    fn open(path: &std::path::Path) -> RedbGroup {
        let db = redb::Database::create(path).expect("redb");
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes, oneshot::Sender<()>)>();
        std::thread::spawn(move || {
            let mut batch = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let txn = db.begin_write().expect("begin");
                {
                    let mut table = txn.open_table(TABLE).expect("table");
                    for (k, v, _) in &batch {
                        table.insert(k.as_str(), v.as_ref()).expect("insert");
                    }
                }
                txn.commit().expect("commit");
                for (_, _, done) in batch.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        RedbGroup { tx }
    }

    async fn put(&self, key: String, value: Bytes) {
        let (done, wait) = oneshot::channel();
        self.tx.send((key, value, done)).expect("committer");
        wait.await.expect("committed");
    }
}

async fn run<F, Fut>(writers: usize, duration: Duration, write: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (stop, ops, write) = (stop.clone(), ops.clone(), write.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                write(w, i).await;
                i += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    ops.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, secs) = if quick {
        (1, Duration::from_secs(1))
    } else {
        (3, Duration::from_secs(3))
    };
    println!(
        "# MemStore's log vs redb, durable 256-byte writes (median of {rounds} rounds of {secs:?})"
    );
    println!("| writers | MemStore ops/s | redb (group commit) ops/s | ratio |");
    println!("|---|---|---|---|");
    let value = Bytes::from(vec![b'v'; 256]);
    for writers in [1usize, 16, 256] {
        let (mut mem, mut redb) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let dir = tempfile::tempdir_in("/var/tmp").expect("dir");
            let store = MemStore::open(dir.path().join("mem")).expect("open");
            let revs: Arc<Vec<AtomicU64>> =
                Arc::new((0..writers * 100).map(|_| AtomicU64::new(0)).collect());
            let v = value.clone();
            mem.push(
                run(writers, secs, move |w, i| {
                    let (store, revs, v) = (store.clone(), revs.clone(), v.clone());
                    async move {
                        let slot = w * 100 + (i % 100) as usize;
                        let key = format!("/bench/{slot}");
                        let rev = revs[slot].load(Ordering::Relaxed) as i64;
                        let kv = if rev == 0 {
                            store.create(&key, v).await
                        } else {
                            store.update(&key, v, rev).await
                        }
                        .expect("write");
                        revs[slot].store(kv.mod_revision as u64, Ordering::Relaxed);
                    }
                })
                .await,
            );
            let db = RedbGroup::open(&dir.path().join("redb"));
            let v = value.clone();
            redb.push(
                run(writers, secs, move |w, i| {
                    let (db, v) = (db.clone(), v.clone());
                    async move {
                        db.put(format!("/bench/{}", w * 100 + (i % 100) as usize), v)
                            .await
                    }
                })
                .await,
            );
        }
        mem.sort_by(f64::total_cmp);
        redb.sort_by(f64::total_cmp);
        let (m, r) = (mem[mem.len() / 2], redb[redb.len() / 2]);
        println!("| {writers} | {m:.0} | {r:.0} | {:.1}× |", m / r);
    }
}
