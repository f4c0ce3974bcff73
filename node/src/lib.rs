//! keelson-node: Keelson's node agent (its kubelet), the container [`Runtime`] trait with a
//! runtime of real host processes ([`ProcessRuntime`]) and a simulated one
//! ([`SimRuntime`]), and the pod [`NetworkPlugin`] trait with the loopback plugin
//! ([`LoopbackNetwork`]).
//!
//! # Where to start
//!
//! ```no_run
//! # async fn demo(client: keelson_core::client::Client) -> Result<(), keelson_node::Error> {
//! use std::sync::Arc;
//! use keelson_node::{Agent, ProcessRuntime, LoopbackNetwork};
//!
//! let runtime = Arc::new(ProcessRuntime::open("/var/lib/keelson/node-1/runtime")?);
//! let network = Arc::new(LoopbackNetwork::open("/var/lib/keelson/node-1/network", 1)?);
//! let agent = Agent::builder(client, "node-1")
//!     .runtime(runtime)
//!     .network(network)
//!     .manifests("/etc/keelson/manifests")
//!     .state_dir("/var/lib/keelson/node-1")
//!     .build()?;
//! agent.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! For scale tests, [`SimFleet`] runs thousands of simulated nodes in one process on one
//! shared pod watch, one [`SimRuntime`] and one heartbeat loop:
//!
//! ```no_run
//! # async fn demo(client: keelson_core::client::Client) -> Result<(), keelson_node::Error> {
//! use keelson_node::SimFleet;
//!
//! let fleet = SimFleet::builder(client).nodes(5_000).prefix("sim-").build();
//! fleet.run(std::future::pending()).await?;   // nodes sim-0 .. sim-4999
//! # Ok(()) }
//! ```
//!
//! A simulated container's stages come from the pod annotation `sim.keelson.dev/<container>`
//! (or `sim.keelson.dev/all`), e.g. `start=2s,run=30s,exit=1` — see [`SimBehaviour`].
//!
//! # Design
//!
//! ```text
//!            API server (through keelson_core::client — in-process or HTTP)
//!   Node + Lease  ^         | pods with spec.nodeName=<node> (list + watch)
//!   heartbeats    |         v
//!           +---------------------------+      manifest dir (static pods)
//!           | Agent                     | <--- polled: add/change/remove
//!           |  node status, lease loop  |
//!           |  pod manager: uid -> task | ---> mirror pods (kubernetes.io/config.mirror)
//!           +---------------------------+
//!                 | one PodWorker task per pod: sandbox -> init containers -> containers,
//!                 | probes, hooks, restarts with back-off, termination, status patches
//!                 v
//!      Arc<dyn NetworkPlugin>  (add/remove/status: one 127.x.y.z per pod)
//!      Arc<dyn Runtime>        (CRI-shaped: sandboxes, containers, logs, exec, stats)
//! ```
//!
//! - [`Runtime`] is shaped like the CRI: a pod gets a *sandbox*; containers are created in
//!   it, started, stopped with a grace period and removed; every operation is idempotent
//!   (stopping a stopped container, removing a removed one succeed). Containers carry
//!   labels (pod uid, container name, attempt) so that an agent that restarts finds the
//!   containers it was running ([`Runtime::list_containers`]) and adopts them instead of
//!   starting duplicates; sandboxes of pods that no longer exist are stopped and removed.
//!   Every implementation runs the shared [`conformance`] suite.
//! - [`ProcessRuntime`] runs each container as a host process group; its state directory
//!   (metadata, pid and start time, log files) lets a new `ProcessRuntime` on the same
//!   directory re-adopt running processes. See its docs for how `image`, volumes and
//!   limits are treated.
//! - [`SimRuntime`] runs nothing: a container's state is a function of its configured
//!   stages and the time (`tokio::time`), so it costs a few hundred bytes and no task.
//! - [`NetworkPlugin`] is shaped like CNI; [`LoopbackNetwork`] hands each node a
//!   `127.<n>.0.0/16` and each pod one address in it, persisted so that no address is
//!   handed out twice.
//! - The agent's pod workers poll the runtime every sync period (default 1 s), so a
//!   runtime needs no event stream; all timing is `tokio::time`.
//!
//! # Paths instead of mounts
//!
//! There is no mount namespace: each volume is a directory under
//! `<state_dir>/pods/<uid>/volumes/<name>`. A container's [`ContainerConfig::mounts`]
//! map each `mountPath` to that directory; [`ProcessRuntime`] builds a per-container root
//! directory (`$KEELSON_ROOT`) with a symlink at every mount path, starts the process in
//! that directory (unless `workingDir` names an existing host directory), and also sets
//! `KEELSON_VOLUME_<VOLUME_NAME>` to each mounted volume's directory. So a container with
//! `mountPath: /etc/config` reads `$KEELSON_ROOT/etc/config/key` (or `etc/config/key`
//! relative to its working directory).
//!
//! # The HTTP endpoint (kubelet-like)
//!
//! With [`AgentBuilder::serve`], the agent serves plain HTTP on `127.0.0.1:<port>` and
//! publishes the port in `status.daemonEndpoints.kubeletEndpoint.port`:
//!
//! - `GET /healthz` → `ok`.
//! - `GET /pods` → a `PodList` (JSON) of the pods the agent runs.
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with the query parameters of
//!   `pods/log`: `follow=true` (keep the response open, chunked, until the container
//!   ends), `previous=true` (the previous instance), `tailLines=N`, `sinceSeconds=N`,
//!   `sinceTime=RFC3339`, `timestamps=true` (each line prefixed with its RFC 3339 time and
//!   a space), `limitBytes=N`. Answers `text/plain`; 404 with a JSON `Status` for an
//!   unknown pod or container, 400 for bad parameters.
//! - `POST /exec/{namespace}/{pod}/{container}?command=a&command=b[&timeoutSeconds=N]`
//!   runs a command non-interactively in the container's environment and answers JSON
//!   `{"exitCode": n, "stdout": "...", "stderr": "..."}`.
//! - `GET /exec/{namespace}/{pod}/{container}?command=..&stdin=..&stdout=..&stderr=..&tty=..`
//!   upgraded to a WebSocket with subprotocol `v5.channel.k8s.io` (or `v4.channel.k8s.io`):
//!   `kubectl exec`, streaming, through [`Runtime::exec_stream`]. Each binary message
//!   starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the closing `Status`, 4
//!   resize, 255 v5's close signal). The exit code travels as Kubernetes sends it: a
//!   `Failure` `Status` with reason `NonZeroExitCode` and a cause `ExitCode`. With
//!   `tty=true`, [`ProcessRuntime`] gives the command a pseudo-terminal (resized from
//!   channel 4; no controlling terminal, so shells run without job control). SPDY exec is
//!   refused (kubectl only falls back to it when the WebSocket fails).
//! - `GET /attach/{namespace}/{pod}/{container}?stdout=..&stderr=..`, upgraded as exec:
//!   the container's output from now on (from its log: standard error comes on the stdout
//!   channel) until the container ends. `stdin=true` is refused: containers run with
//!   their standard input closed.
//! - `GET /portforward/{namespace}/{pod}` upgraded to a WebSocket with subprotocol
//!   `SPDY/3.1+portforward.k8s.io` (SPDY frames carried in binary messages: what kubectl
//!   1.31+ sends first), or `POST` with `Upgrade: SPDY/3.1` and
//!   `X-Stream-Protocol-Version: portforward.k8s.io` (its fallback): each forwarded
//!   connection is a pair of SPDY streams (`error`, `data`) that the agent connects to the
//!   pod's address and the port asked for.
//!
//! The API server proxies `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to
//! these paths.
//!
//! # Pod semantics in brief
//!
//! - Container `env`: `HOSTNAME`, `POD_IP`, then the service variables of the Services in
//!   the pod's namespace (and `kubernetes` from `default`) unless `enableServiceLinks` is
//!   false, then `envFrom`, then `env` (with `valueFrom` and `$(VAR)` references). Without
//!   a `kubernetes` Service, [`AgentConfig::api_server`] (when set) gives the
//!   `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` that in-cluster clients read.
//! - Volumes: emptyDir, hostPath, configMap, secret, downwardAPI and projected. A
//!   projected `serviceAccountToken` is a TokenRequest for the pod's account, bound to the
//!   pod, for the source's `audience` (or the API server's) and `expirationSeconds`
//!   (default 3600), written at its `path` with the volume's mode; it is asked for again
//!   when 80% of its lifetime or 24 h have passed. Volumes made from objects are written
//!   again then, and every [`AgentConfig::volume_refresh_period`] (1 min): a changed
//!   ConfigMap shows in a running pod (each file replaced atomically; files of keys
//!   that are gone are removed). A volume that cannot be made keeps the pod in
//!   `ContainerCreating` with a `FailedMount` event (`MountVolume.SetUp failed for volume
//!   "x" : failed to fetch token: ...`).
//! - Restarts follow `restartPolicy`; a container that ends again waits 0 s, then 10 s,
//!   20 s, ... up to 5 min (`CrashLoopBackOff`), reset after it ran 10 min.
//! - A pod whose `metadata.deletionTimestamp` is set gets its preStop hooks, SIGTERM, the
//!   rest of its grace period and SIGKILL; then the agent deletes it with grace 0.
//! - Failures show as Kubernetes shows them: `CreateContainerConfigError` (a missing
//!   config map, secret or key), `RunContainerError` / `StartError` (a program that is not
//!   there), `CrashLoopBackOff`, `ContainerCreating` with a message and a `FailedMount`
//!   event (a volume that cannot be made), `DeadlineExceeded`.
//! - Pods bound to the node that carry `kubernetes.io/config.mirror` are mirror pods of
//!   static pods and are never run from the API.

pub(crate) mod agent;
pub mod conformance;
mod error;
mod network;
mod quantity;
mod runtime;
mod server;
mod sim_fleet;
mod static_pods;
mod streaming;

pub use agent::{Agent, AgentBuilder, AgentConfig, NodeResources};
pub use error::{Error, RuntimeError};
pub use network::{LoopbackNetwork, NetworkPlugin, NetworkStatus, PodNetwork, PodNetworkRef};
pub use runtime::process::ProcessRuntime;
pub use runtime::sim::{SimBehaviour, SimProfile, SimRuntime};
pub use runtime::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStats, ContainerStatus, ExecOutput,
    ExecReader, ExecRequest, ExecSession, ExecWriter, LogOptions, LogStream, Mount, ResourceLimits,
    Runtime, SandboxConfig, SandboxState, SandboxStatus, LABEL_ATTEMPT, LABEL_CONTAINER_NAME,
    LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};
pub use sim_fleet::{SimFleet, SimFleetBuilder, SimFleetStats};

pub use keelson_core as core;
