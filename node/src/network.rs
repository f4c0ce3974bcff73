//! The pod network: the [`NetworkPlugin`] trait and the loopback plugin.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::error::Error;

/// Which pod a network call is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodNetworkRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid (the key of its allocation).
    pub uid: String,
}

/// A pod's network, as a plugin set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// Its addresses, the primary first.
    pub ips: Vec<IpAddr>,
}

/// Whether the plugin is ready, and the node's pod range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStatus {
    /// Pods can get networks.
    pub ready: bool,
    /// The node's pod CIDR (`spec.podCIDR`), if it has one.
    pub pod_cidr: Option<String>,
    /// Why it is not ready.
    pub message: Option<String>,
}

/// A pod network plugin, shaped like CNI's ADD / DEL / STATUS.
///
/// Contracts: `add` for a uid that already has a network returns the same one (the agent
/// calls it again after a restart); `remove` of a uid without a network succeeds; an
/// address is never given to two pods at once, also across restarts of the agent.
#[async_trait::async_trait]
pub trait NetworkPlugin: Send + Sync + 'static {
    /// Sets up (or finds) a pod's network.
    async fn add(&self, pod: &PodNetworkRef) -> Result<PodNetwork, Error>;

    /// Tears down a pod's network and frees its addresses.
    async fn remove(&self, pod: &PodNetworkRef) -> Result<(), Error>;

    /// The plugin's state.
    async fn status(&self) -> Result<NetworkStatus, Error>;
}

/// The default plugin: node `n` owns `127.n.0.0/16` (n in 1..=254) and each pod gets one
/// address from it; Linux routes all of 127.0.0.0/8 to the loopback device, so a pod's
/// process can bind its own address and every other pod on the host can reach it.
///
/// With a state directory, each allocation is a file named after the address holding the
/// pod's uid, created with `O_EXCL`, so no address is handed out twice, also by two
/// plugins on one directory or after a restart. Without one ([`LoopbackNetwork::in_memory`],
/// for simulated nodes) allocations live in memory.
pub struct LoopbackNetwork {
    node: u8,
    dir: Option<PathBuf>,
    state: Mutex<Alloc>,
}

#[derive(Default)]
struct Alloc {
    by_uid: HashMap<String, u16>,
    used: HashMap<u16, String>,
    next: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoopbackNetwork {
    /// A plugin for node number `node` (1..=254) persisting under `dir`.
    ///
    /// # Errors
    /// A node number out of range, or a directory that cannot be read.
    pub fn open(dir: impl Into<PathBuf>, node: u8) -> Result<LoopbackNetwork, Error> {
        let dir = dir.into();
        check_node(node)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let mut alloc = Alloc {
            next: 2,
            ..Alloc::default()
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let o = ip.octets();
            if o[0] != 127 || o[1] != node {
                continue;
            }
            let host = u16::from_be_bytes([o[2], o[3]]);
            let uid = std::fs::read_to_string(entry.path()).unwrap_or_default();
            alloc.by_uid.insert(uid.clone(), host);
            alloc.used.insert(host, uid);
        }
        Ok(LoopbackNetwork {
            node,
            dir: Some(dir),
            state: Mutex::new(alloc),
        })
    }

    /// A plugin keeping its allocations in memory only.
    ///
    /// # Errors
    /// A node number out of range.
    pub fn in_memory(node: u8) -> Result<LoopbackNetwork, Error> {
        check_node(node)?;
        Ok(LoopbackNetwork {
            node,
            dir: None,
            state: Mutex::new(Alloc {
                next: 2,
                ..Alloc::default()
            }),
        })
    }

    /// The node's pod CIDR.
    pub fn cidr(&self) -> String {
        format!("127.{}.0.0/16", self.node)
    }

    fn addr(&self, host: u16) -> IpAddr {
        let [a, b] = host.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(127, self.node, a, b))
    }
}

fn check_node(node: u8) -> Result<(), Error> {
    if node == 0 || node == 255 {
        return Err(Error::Config(format!(
            "loopback node number {node} is out of range 1..=254"
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl NetworkPlugin for LoopbackNetwork {
    async fn add(&self, pod: &PodNetworkRef) -> Result<PodNetwork, Error> {
        let mut a = lock(&self.state);
        if let Some(host) = a.by_uid.get(&pod.uid) {
            return Ok(PodNetwork {
                ips: vec![self.addr(*host)],
            });
        }
        // Hosts 2..=65534 (x.y.0.0, .0.1 and .255.255 stay free).
        for _ in 0..65533u32 {
            let host = a.next;
            a.next = if a.next >= 65534 { 2 } else { a.next + 1 };
            if a.used.contains_key(&host) {
                continue;
            }
            if let Some(dir) = &self.dir {
                let path = dir.join(self.addr(host).to_string());
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path);
                match file {
                    Ok(mut f) => {
                        use std::io::Write;
                        f.write_all(pod.uid.as_bytes())
                            .map_err(|e| Error::io("write", &path, e))?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // Taken by another plugin on this directory.
                        continue;
                    }
                    Err(e) => return Err(Error::io("reserve the address", &path, e)),
                }
            }
            a.used.insert(host, pod.uid.clone());
            a.by_uid.insert(pod.uid.clone(), host);
            return Ok(PodNetwork {
                ips: vec![self.addr(host)],
            });
        }
        Err(Error::Network(format!(
            "no free address left in {}",
            self.cidr()
        )))
    }

    async fn remove(&self, pod: &PodNetworkRef) -> Result<(), Error> {
        let mut a = lock(&self.state);
        if let Some(host) = a.by_uid.remove(&pod.uid) {
            a.used.remove(&host);
            if let Some(dir) = &self.dir {
                let path = dir.join(self.addr(host).to_string());
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(Error::io("free the address", &path, e));
                    }
                }
            }
        }
        Ok(())
    }

    async fn status(&self) -> Result<NetworkStatus, Error> {
        Ok(NetworkStatus {
            ready: true,
            pod_cidr: Some(self.cidr()),
            message: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> PodNetworkRef {
        PodNetworkRef {
            namespace: "ns".into(),
            name: uid.into(),
            uid: uid.into(),
        }
    }

    #[tokio::test]
    async fn addresses_are_unique_stable_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = LoopbackNetwork::open(dir.path(), 7).expect("open");
        let a = net.add(&pod("a")).await.expect("add a");
        let b = net.add(&pod("b")).await.expect("add b");
        assert_ne!(a, b);
        assert_eq!(
            net.add(&pod("a")).await.expect("again"),
            a,
            "add is idempotent"
        );
        assert!(a.ips[0].to_string().starts_with("127.7."));
        drop(net);
        let net = LoopbackNetwork::open(dir.path(), 7).expect("reopen");
        assert_eq!(net.add(&pod("a")).await.expect("after restart"), a);
        let c = net.add(&pod("c")).await.expect("add c");
        assert!(c != a && c != b, "no address is handed out twice");
        // A second plugin on the same directory skips the taken addresses.
        let other = LoopbackNetwork::open(dir.path(), 7).expect("open twice");
        net.remove(&pod("b")).await.expect("remove");
        net.remove(&pod("b")).await.expect("remove is idempotent");
        let d = other.add(&pod("d")).await.expect("add d");
        assert!(d != a && d != c);
        assert!(LoopbackNetwork::in_memory(0).is_err());
    }
}
