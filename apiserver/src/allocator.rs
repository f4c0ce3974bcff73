//! Allocation of Service cluster IPs and node ports.
//!
//! Each range keeps its allocations in one store key (`/registry/core/ranges/serviceips`,
//! `/registry/core/ranges/servicenodeports`), changed by compare-and-swap, so any number
//! of API servers on one store never hand out the same address or port twice. A Service
//! create allocates first and releases again if the create then fails; a delete releases.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use keelson_core::{Error, FieldError, ResourceType};
use keelson_store::{Store, StoreError};
use serde_json::{json, Value};

/// The ranges Services are given addresses and ports from.
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    /// The cluster IP range's network address.
    pub network: Ipv4Addr,
    /// The cluster IP range's prefix length.
    pub prefix: u8,
    /// The node port range, inclusive.
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    /// 10.96.0.0/12 (kubeadm's default) and ports 30000–32767.
    fn default() -> Self {
        ServiceRanges {
            network: Ipv4Addr::new(10, 96, 0, 0),
            prefix: 12,
            node_ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    /// Parses `a.b.c.d/n`.
    ///
    /// # Errors
    /// When the text is not an IPv4 CIDR with a prefix between 8 and 30.
    pub fn with_cidr(mut self, cidr: &str) -> Result<Self, String> {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{cidr:?} has a bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "{cidr:?}: the prefix length must be between 8 and 30"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        self.network = Ipv4Addr::from(u32::from(ip) & mask);
        self.prefix = prefix;
        Ok(self)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The usable addresses: the network and broadcast addresses excluded.
    fn first_last(&self) -> (u32, u32) {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (base + 1, base + size - 2)
    }
}

const IPS_KEY: &str = "/registry/core/ranges/serviceips";
const PORTS_KEY: &str = "/registry/core/ranges/servicenodeports";

/// Allocates and releases Service addresses and node ports.
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn Store>,
    ranges: ServiceRanges,
}

fn store_err(e: StoreError) -> Error {
    Error::internal(format!("service allocation: {e}"))
}

impl Allocator {
    /// An allocator over `store` for `ranges`.
    pub fn new(store: Arc<dyn Store>, ranges: ServiceRanges) -> Allocator {
        Allocator { store, ranges }
    }

    /// Changes the set stored at `key` with `change`, retrying on conflicts.
    async fn update_set<T, F>(&self, key: &str, mut change: F) -> Result<T, Error>
    where
        F: FnMut(&mut BTreeSet<String>) -> Result<T, Error>,
    {
        loop {
            let current = self.store.get(key).await.map_err(store_err)?;
            let mut set: BTreeSet<String> = match &current {
                Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .and_then(|v| v.get("allocated").cloned())
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default(),
                None => BTreeSet::new(),
            };
            let out = change(&mut set)?;
            let value =
                Bytes::from(json!({ "range": self.ranges.cidr(), "allocated": set }).to_string());
            let written = match &current {
                Some(kv) => self
                    .store
                    .update(key, value, kv.mod_revision)
                    .await
                    .map(|_| ()),
                None => self.store.create(key, value).await.map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(out),
                Err(
                    StoreError::Conflict { .. }
                    | StoreError::AlreadyExists { .. }
                    | StoreError::NotFound { .. },
                ) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Gives a Service its cluster IP (the one it asks for, or a free one; none for
    /// `clusterIP: None` and ExternalName) and node ports (for NodePort and LoadBalancer
    /// Services), writing them into the object.
    ///
    /// # Errors
    /// 422 when a requested address or port is outside its range or taken, or a range is full.
    pub async fn allocate(&self, rt: &ResourceType, service: &mut Value) -> Result<(), Error> {
        let name = service
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |field: &str, value: &str, detail: &str| {
            Error::invalid(
                rt,
                name.as_str(),
                vec![FieldError::invalid(field, value, detail)],
            )
        };
        let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let kind = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if kind != "ExternalName" {
            let requested = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            if requested.as_deref() != Some("None") {
                if let Some(ip) = &requested {
                    let parsed: Ipv4Addr = ip
                        .parse()
                        .map_err(|_| invalid("spec.clusterIP", ip, "must be a valid IP address"))?;
                    if !self.ranges.contains(parsed) {
                        return Err(invalid(
                            "spec.clusterIP",
                            ip,
                            &format!("provided IP is not in the valid range. The range of valid IPs is {}", self.ranges.cidr()),
                        ));
                    }
                }
                let (first, last) = self.ranges.first_last();
                let ip = self
                    .update_set(IPS_KEY, |set| match &requested {
                        Some(ip) if set.contains(ip) => Err(invalid(
                            "spec.clusterIP",
                            ip,
                            "provided IP is already allocated",
                        )),
                        Some(ip) => {
                            set.insert(ip.clone());
                            Ok(ip.clone())
                        }
                        None => {
                            // The first address is the API server's own (`kubernetes` Service).
                            let free = (first + 1..=last)
                                .map(Ipv4Addr::from)
                                .map(|a| a.to_string())
                                .find(|a| !set.contains(a));
                            let ip = free
                                .ok_or_else(|| Error::internal("the service IP range is full"))?;
                            set.insert(ip.clone());
                            Ok(ip)
                        }
                    })
                    .await?;
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.insert("ipFamilies".into(), json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            let (lo, hi) = self.ranges.node_ports;
            let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
            for (i, port) in ports.into_iter().flatten().enumerate() {
                let Some(port) = port.as_object_mut() else {
                    continue;
                };
                let requested = port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|p| *p != 0);
                if let Some(p) = requested {
                    if !(u64::from(lo)..=u64::from(hi)).contains(&p) {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &p.to_string(),
                            &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                        ));
                    }
                }
                let field = format!("spec.ports[{i}].nodePort");
                let chosen = self
                    .update_set(PORTS_KEY, |set| match requested {
                        Some(p) if set.contains(&p.to_string()) => Err(invalid(
                            &field,
                            &p.to_string(),
                            "provided port is already allocated",
                        )),
                        Some(p) => {
                            set.insert(p.to_string());
                            Ok(p)
                        }
                        None => {
                            let free = (lo..=hi)
                                .map(u64::from)
                                .find(|p| !set.contains(&p.to_string()));
                            let p =
                                free.ok_or_else(|| Error::internal("the node port range is full"))?;
                            set.insert(p.to_string());
                            Ok(p)
                        }
                    })
                    .await?;
                port.insert("nodePort".into(), json!(chosen));
            }
        }
        Ok(())
    }

    /// Releases what a Service holds.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn release(&self, service: &Value) -> Result<(), Error> {
        let ip = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| *ip != "None" && !ip.is_empty());
        if let Some(ip) = ip {
            let ip = ip.to_owned();
            self.update_set(IPS_KEY, |set| {
                set.remove(&ip);
                Ok(())
            })
            .await?;
        }
        let ports: Vec<String> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                    .map(|p| p.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !ports.is_empty() {
            self.update_set(PORTS_KEY, |set| {
                for p in &ports {
                    set.remove(p);
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}
