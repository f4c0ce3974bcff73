//! Leader election on coordination.k8s.io/v1 Leases, with fencing.
//!
//! Candidates share one Lease. The holder renews `spec.renewTime` every `retry_period`
//! (2 s); a candidate takes the Lease over when its record has not changed for
//! `lease_duration` (15 s) *by the candidate's own clock* (it times how long it has seen
//! the same record, so clocks need not agree). Every take-over increments
//! `spec.leaseTransitions`: that number is the **fencing token** of a term of leadership.
//! All Lease writes are compare-and-swap on its `resourceVersion`, so two candidates can
//! never both win the same term.
//!
//! How a deposed leader's writes are refused:
//!
//! 1. The leader deposes *itself* when it has not renewed for `renew_deadline` (10 s), or
//!    as soon as it sees another holder or a newer token. Because `renew_deadline <
//!    lease_duration`, an old leader has stopped before any other candidate can take the
//!    Lease (given clocks that run at about the same rate).
//! 2. Controllers write through [`LeaderElector::fenced_client`]: a client whose
//!    transport refuses every write (403, "not the leader") unless this process is the
//!    leader of the current term *and* its last successful renewal is less than
//!    `renew_deadline` old — checked locally before each write, so even a leader whose
//!    elector task is stuck stops writing on time.
//! 3. A write that must not race a take-over at all can use [`Fence::check`], which
//!    re-reads the Lease and fails unless its holder and `leaseTransitions` are still
//!    this process's, just before writing (with the write itself guarded by the object's
//!    `resourceVersion`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keelson_core::client::{
    Api, Client, DeleteOptions, ListParams, ObjectList, Patch, Transport, WatchParams, WatchStream,
};
use keelson_core::k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use keelson_core::{Error, GroupResource, ResourceType};
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock;

/// Leader election settings (Kubernetes' defaults).
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// The Lease's namespace (`kube-system`).
    pub namespace: String,
    /// The Lease's name (`kube-controller-manager`).
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a silent Lease stays held (15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal (10 s).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew (2 s).
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Kubernetes' defaults for the Lease `namespace/name`, as `identity`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// This process's view of the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading; `holder` leads, as last seen.
    Follower {
        /// The identity holding the Lease, if any.
        holder: Option<String>,
    },
    /// Leading the term `token`.
    Leader {
        /// The fencing token: the Lease's `leaseTransitions` when this term began.
        token: i32,
        /// Leadership lapses at this instant unless renewed.
        valid_until: Instant,
    },
}

impl Leadership {
    /// Whether this process leads right now.
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { valid_until, .. } if Instant::now() < *valid_until)
    }

    /// The fencing token of the current term, when leading.
    pub fn token(&self) -> Option<i32> {
        match self {
            Leadership::Leader { token, .. } if self.is_leader() => Some(*token),
            _ => None,
        }
    }
}

/// Runs one candidate's election (see the [module docs](self)).
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    state: watch::Sender<Leadership>,
}

impl fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

enum Attempt {
    Won(i32),
    Lost(Option<String>),
}

#[derive(Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<String>,
    transitions: Option<i32>,
}

impl LeaderElector {
    /// A candidate; nothing happens until [`LeaderElector::run`].
    pub fn new(client: Client, config: LeaderElectionConfig) -> LeaderElector {
        let api = Api::namespaced(client, &config.namespace);
        let (state, _) = watch::channel(Leadership::Follower { holder: None });
        LeaderElector { api, config, state }
    }

    /// The election's state, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// The current state.
    pub fn leadership(&self) -> Leadership {
        self.state.borrow().clone()
    }

    /// `client` with writes refused unless this process leads (see the module docs).
    pub fn fenced_client(&self, client: Client) -> Client {
        let namespace = client.default_namespace().to_owned();
        Client::new(Arc::new(FencedTransport {
            inner: client.transport().clone(),
            state: self.state.subscribe(),
        }))
        .with_default_namespace(&namespace)
    }

    /// A fence for the current term, or `None` when not leading.
    pub fn fence(&self) -> Option<Fence> {
        self.leadership().token().map(|token| Fence {
            api: self.api.clone(),
            name: self.config.name.clone(),
            identity: self.config.identity.clone(),
            token,
        })
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(Record, Instant)>,
    ) -> Result<Attempt, Error> {
        let cfg = &self.config;
        let now = clock::now_micro();
        let duration = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&cfg.name).await? else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(cfg.name.clone());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            });
            return match self.api.create(&lease).await {
                Ok(_) => Ok(Attempt::Won(0)),
                Err(e) if e.is_already_exists() => Ok(Attempt::Lost(None)),
                Err(e) => Err(e),
            };
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        let record = Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        };
        let seen_at = match observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                *observed = Some((record.clone(), at));
                at
            }
        };
        let held_by_me = record.holder.as_deref() == Some(cfg.identity.as_str());
        let lease_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(cfg.lease_duration, Duration::from_secs);
        let expired = Instant::now() >= seen_at + lease_for;
        if record.holder.is_some() && !held_by_me && !expired {
            return Ok(Attempt::Lost(record.holder));
        }
        let mut transitions = spec.lease_transitions.unwrap_or(0);
        if !held_by_me {
            transitions += 1;
            spec.acquire_time = Some(now.clone());
            spec.holder_identity = Some(cfg.identity.clone());
        }
        spec.lease_transitions = Some(transitions);
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration);
        lease.spec = Some(spec);
        match self.api.replace(&cfg.name, &lease).await {
            Ok(_) => Ok(Attempt::Won(transitions)),
            Err(e) if e.is_conflict() => Ok(Attempt::Lost(record.holder)),
            Err(e) => Err(e),
        }
    }

    fn jittered(&self, d: Duration) -> Duration {
        d.mul_f64(rand::rng().random_range(1.0..1.2))
    }

    /// Campaigns, leads, and campaigns again after losing, until `shutdown` completes;
    /// then releases the Lease if it holds it.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let cfg = &self.config;
        let mut observed = None;
        loop {
            // Campaign.
            let token = loop {
                let attempt = tokio::select! {
                    _ = &mut shutdown => return,
                    a = self.try_acquire_or_renew(&mut observed) => a,
                };
                match attempt {
                    Ok(Attempt::Won(token)) => break token,
                    Ok(Attempt::Lost(holder)) => {
                        self.state.send_if_modified(|s| {
                            let new = Leadership::Follower { holder };
                            let changed = *s != new;
                            *s = new;
                            changed
                        });
                    }
                    Err(e) => {
                        tracing::warn!(lease = %cfg.name, error = %e, "could not read or take the lease")
                    }
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(self.jittered(cfg.retry_period)) => {}
                }
            };
            let mut renewed = Instant::now();
            tracing::info!(lease = %cfg.name, identity = %cfg.identity, token, "became leader");
            self.state.send_replace(Leadership::Leader {
                token,
                valid_until: renewed + cfg.renew_deadline,
            });
            // Lead.
            loop {
                tokio::select! {
                    _ = &mut shutdown => {
                        self.release(token).await;
                        return;
                    }
                    _ = tokio::time::sleep(cfg.retry_period) => {}
                }
                let left = (renewed + cfg.renew_deadline).saturating_duration_since(Instant::now());
                let attempt =
                    tokio::time::timeout(left, self.try_acquire_or_renew(&mut observed)).await;
                match attempt {
                    Ok(Ok(Attempt::Won(t))) if t == token => {
                        renewed = Instant::now();
                        self.state.send_replace(Leadership::Leader {
                            token,
                            valid_until: renewed + cfg.renew_deadline,
                        });
                    }
                    Ok(Ok(Attempt::Won(_) | Attempt::Lost(_))) => {
                        tracing::warn!(lease = %cfg.name, "another candidate took the lease");
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %cfg.name, error = %e, "could not renew the lease");
                        if Instant::now() >= renewed + cfg.renew_deadline {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            tracing::warn!(lease = %cfg.name, identity = %cfg.identity, "lost leadership");
            self.state
                .send_replace(Leadership::Follower { holder: None });
        }
    }

    async fn release(&self, token: i32) {
        self.state
            .send_replace(Leadership::Follower { holder: None });
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str())
            || spec.lease_transitions.unwrap_or(0) != token
        {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(clock::now_micro());
        if let Err(e) = self.api.replace(&self.config.name, &lease).await {
            tracing::debug!(error = %e, "could not release the lease");
        }
    }
}

/// A term of leadership that can be re-checked against the Lease before a write.
#[derive(Clone, Debug)]
pub struct Fence {
    api: Api<Lease>,
    name: String,
    identity: String,
    token: i32,
}

impl Fence {
    /// The fencing token.
    pub fn token(&self) -> i32 {
        self.token
    }

    /// Re-reads the Lease.
    ///
    /// # Errors
    /// 403 when another identity holds it or its `leaseTransitions` moved on; the read's
    /// own errors.
    pub async fn check(&self) -> Result<(), Error> {
        let lease = self.api.get(&self.name).await?;
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() == Some(self.identity.as_str())
            && spec.lease_transitions.unwrap_or(0) == self.token
        {
            Ok(())
        } else {
            Err(not_leader(&self.identity))
        }
    }
}

fn not_leader(identity: &str) -> Error {
    Error::forbidden(
        GroupResource::default(),
        "",
        format!("{identity} is not the leader: its term has ended"),
    )
}

struct FencedTransport {
    inner: Arc<dyn Transport>,
    state: watch::Receiver<Leadership>,
}

impl FencedTransport {
    fn check(&self) -> Result<(), Error> {
        if self.state.borrow().is_leader() {
            Ok(())
        } else {
            Err(not_leader("this process"))
        }
    }
}

#[async_trait]
impl Transport for FencedTransport {
    async fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, Error> {
        self.inner.get(rt, ns, name).await
    }

    async fn get_subresource(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: &str,
    ) -> Result<Arc<Value>, Error> {
        self.inner.get_subresource(rt, ns, name, sub).await
    }

    async fn create_subresource(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: &str,
        body: Value,
    ) -> Result<Arc<Value>, Error> {
        self.check()?;
        self.inner.create_subresource(rt, ns, name, sub, body).await
    }

    async fn list(&self, rt: &ResourceType, params: &ListParams) -> Result<ObjectList, Error> {
        self.inner.list(rt, params).await
    }

    async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>, Error> {
        self.check()?;
        self.inner.create(rt, ns, object).await
    }

    async fn replace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        object: Value,
    ) -> Result<Arc<Value>, Error> {
        self.check()?;
        self.inner.replace(rt, ns, name, sub, object).await
    }

    async fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        patch: &Patch,
    ) -> Result<Arc<Value>, Error> {
        self.check()?;
        self.inner.patch(rt, ns, name, sub, patch).await
    }

    async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Option<Arc<Value>>, Error> {
        self.check()?;
        self.inner.delete(rt, ns, name, options).await
    }

    async fn watch(&self, rt: &ResourceType, params: &WatchParams) -> Result<WatchStream, Error> {
        self.inner.watch(rt, params).await
    }
}
