//! The cloud controllers on the in-process [`Cluster`]'s local cloud: nodes initialised,
//! routed, tainted when shut down and deleted when gone; load balancers served on
//! loopback addresses.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use keelson::controllers::cloud::{TAINT_SHUTDOWN, TAINT_UNINITIALIZED};
use keelson::core::client::{Api, DeleteOptions, ListParams, Patch};
use keelson::core::k8s_openapi::api::core::v1::{Node, Service};
use keelson::core::k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson::{Cluster, LocalCloudConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `check` every 50 ms of tokio time until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

fn condition(node: &Node, kind: &str) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(start_paused = true)]
async fn the_local_cloud_initialises_and_routes_the_clusters_nodes() {
    let cluster = Cluster::builder()
        .sim_nodes(2)
        .build()
        .await
        .expect("the cluster starts");
    let nodes: Api<Node> = Api::all(cluster.client());
    // `build` waited for the cloud: the nodes are initialised already.
    for name in ["sim-0", "sim-1"] {
        let n = nodes.get(name).await.expect("the node");
        assert!(taints(&n).is_empty(), "{:?}", taints(&n));
        assert_eq!(
            n.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
            Some(format!("keelson://local/{name}").as_str())
        );
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["node.kubernetes.io/instance-type"], "simulated");
        assert_eq!(labels["topology.kubernetes.io/region"], "local");
        assert_eq!(labels["topology.kubernetes.io/zone"], "local-1");
    }
    let routed = eventually("every node has its route", Duration::from_secs(60), || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?.items;
            list.iter()
                .all(|n| {
                    condition(n, "NetworkUnavailable")
                        == Some(("False".into(), "RouteCreated".into()))
                })
                .then_some(list)
        }
    })
    .await;
    let cloud = cluster.local_cloud().expect("the local cloud");
    let mut routes: Vec<(String, String)> = cloud
        .route_table()
        .into_iter()
        .map(|r| (r.target_node, r.destination_cidr))
        .collect();
    routes.sort();
    let mut wanted: Vec<(String, String)> = routed
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    wanted.sort();
    assert_eq!(routes, wanted);
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_node_is_tainted_shut_down_and_a_removed_one_is_deleted() {
    let cluster = Cluster::builder()
        .sim_nodes(2)
        .build()
        .await
        .expect("the cluster starts");
    let nodes: Api<Node> = Api::all(cluster.client());
    cluster.stop_node("sim-0").await.expect("stop");
    eventually(
        "the stopped node is tainted",
        Duration::from_secs(120),
        || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("sim-0").await.ok()?;
                taints(&n)
                    .contains(&TAINT_SHUTDOWN.to_owned())
                    .then_some(())
            }
        },
    )
    .await;
    // Back: the taint goes, and the node is not initialised again.
    cluster.start_node("sim-0").expect("start");
    eventually(
        "the node is back and untainted",
        Duration::from_secs(120),
        || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("sim-0").await.ok()?;
                let t = taints(&n);
                (condition(&n, "Ready").map(|c| c.0).as_deref() == Some("True") && t.is_empty())
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        !taints(&nodes.get("sim-0").await.expect("node")).contains(&TAINT_UNINITIALIZED.to_owned())
    );

    // A machine that goes for good takes its Node along once it is not Ready.
    cluster.stop_node("sim-1").await.expect("stop");
    cluster
        .local_cloud()
        .expect("the local cloud")
        .remove_instance("sim-1");
    eventually(
        "the removed node is deleted",
        Duration::from_secs(120),
        || {
            let nodes = nodes.clone();
            async move { nodes.get_opt("sim-1").await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_cloud_provider_nodes_are_not_tainted_for_it() {
    let cluster = Cluster::builder()
        .sim_nodes(1)
        .without_cloud_provider()
        .build()
        .await
        .expect("the cluster starts");
    assert!(cluster.local_cloud().is_none());
    let n = Api::<Node>::all(cluster.client())
        .get("sim-0")
        .await
        .expect("node");
    assert!(taints(&n).is_empty());
    assert!(n.spec.and_then(|s| s.provider_id).is_none());
    cluster.shutdown().await;
}

/// A TCP server on 127.0.0.1 answering each connection with `name` and a newline.
async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(format!("{name}\n").as_bytes()).await;
        }
    });
    (addr, task)
}

/// What a connection to `addr` is answered (`None`: refused or closed at once).
async fn answer(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    (!out.is_empty()).then_some(out)
}

fn slice(endpoints: &[SocketAddr]) -> serde_json::Value {
    let port = endpoints.first().map_or(1, |a| a.port());
    json!({
        "metadata": {"name": "external-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "external"}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|a| json!({
            "addresses": [a.ip().to_string()], "conditions": {"ready": true},
        })).collect::<Vec<_>>(),
    })
}

/// Real time: real sockets. The Service has no selector, so its EndpointSlice is the
/// test's own (as a user writes one for backends outside the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_is_served_on_a_loopback_address_until_it_goes() {
    let (a, _a) = backend("a").await;
    let cluster = Cluster::builder()
        .sim_nodes(1)
        .local_cloud(LocalCloudConfig {
            load_balancer_pool: "127.0.201.0/24".parse().expect("a range"),
            ..LocalCloudConfig::default()
        })
        .build()
        .await
        .expect("the cluster starts");
    let client = cluster.client();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .create(&serde_json::from_value(slice(&[a])).expect("slice"))
        .await
        .expect("create the slice");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "external"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "tcp", "port": port, "targetPort": a.port()}]},
    }))
    .expect("service");
    services.create(&svc).await.expect("create the service");
    let ip = eventually("an address", Duration::from_secs(30), || {
        let services = services.clone();
        async move {
            let s = services.get("external").await.ok()?;
            s.status?.load_balancer?.ingress?.first()?.ip.clone()
        }
    })
    .await;
    assert!(ip.starts_with("127.0.201."), "{ip}");
    let frontend: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    assert_eq!(answer(frontend).await.as_deref(), Some("a\n"));

    // The endpoints change: new connections follow.
    let (b, _b) = backend("b").await;
    let mut moved = slice(&[b]);
    moved["ports"][0]["port"] = json!(b.port());
    slices
        .patch(
            "external-1",
            &Patch::Merge(json!({"ports": moved["ports"], "endpoints": moved["endpoints"]})),
        )
        .await
        .expect("patch the slice");
    eventually(
        "connections go to the new endpoint",
        Duration::from_secs(30),
        || async { (answer(frontend).await.as_deref() == Some("b\n")).then_some(()) },
    )
    .await;

    services
        .delete("external", &DeleteOptions::default())
        .await
        .expect("delete the service");
    eventually(
        "the address stops answering",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(frontend)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    eventually("the Service is gone", Duration::from_secs(30), || {
        let services = services.clone();
        async move {
            services
                .get_opt("external")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    // One more, then the cluster stops: its load balancers close with it.
    let mut again = svc.clone();
    again.metadata.name = Some("again".into());
    services.create(&again).await.expect("create");
    let ip = eventually("an address", Duration::from_secs(30), || {
        let services = services.clone();
        async move {
            let s = services.get("again").await.ok()?;
            s.status?.load_balancer?.ingress?.first()?.ip.clone()
        }
    })
    .await;
    let frontend: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    // (It has no endpoints: it accepts connections and closes them.)
    eventually(
        "the second load balancer listens",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(frontend)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(answer(frontend).await, None);
    cluster.shutdown().await;
    eventually(
        "the cluster's load balancers are closed",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(frontend)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_port_is_refused_with_a_warning_event() {
    let cluster = Cluster::builder()
        .local_cloud(LocalCloudConfig {
            load_balancer_pool: "127.0.202.0/24".parse().expect("a range"),
            ..LocalCloudConfig::default()
        })
        .build()
        .await
        .expect("the cluster starts");
    let client = cluster.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "dns"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "dns"},
                 "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]},
    }))
    .expect("service");
    services.create(&svc).await.expect("create");
    let events: Api<keelson::core::k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let message = eventually(
        "a SyncLoadBalancerFailed event",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.involved_object.name.as_deref() == Some("dns")
                            && e.reason.as_deref() == Some("SyncLoadBalancerFailed")
                    })
                    .and_then(|e| e.message)
            }
        },
    )
    .await;
    assert_eq!(
        message,
        "Error syncing load balancer: failed to ensure load balancer: the local load balancer serves TCP only; port 5353 (dns) is UDP"
    );
    let s = services.get("dns").await.expect("service");
    assert!(s
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .is_none());
    cluster.shutdown().await;
}

async fn ingress_ip(services: &Api<Service>, name: &str) -> Option<String> {
    let s = services.get(name).await.ok()?;
    s.status?.load_balancer?.ingress?.first()?.ip.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_ask_for_its_load_balancer_address_and_move_it() {
    let cluster = Cluster::builder()
        .local_cloud(LocalCloudConfig {
            load_balancer_pool: "127.0.203.0/24".parse().expect("a range"),
            ..LocalCloudConfig::default()
        })
        .build()
        .await
        .expect("the cluster starts");
    let client = cluster.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "pinned"},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": "127.0.203.7", "selector": {"app": "x"},
                 "ports": [{"port": port}]},
    }))
    .expect("service");
    services.create(&svc).await.expect("create");
    eventually("the asked address", Duration::from_secs(30), || async {
        (ingress_ip(&services, "pinned").await.as_deref() == Some("127.0.203.7")).then_some(())
    })
    .await;
    let first: SocketAddr = format!("127.0.203.7:{port}").parse().expect("address");
    assert!(tokio::net::TcpStream::connect(first).await.is_ok());

    services
        .patch(
            "pinned",
            &Patch::Merge(json!({"spec": {"loadBalancerIP": "127.0.203.9"}})),
        )
        .await
        .expect("patch");
    eventually(
        "the load balancer moved",
        Duration::from_secs(30),
        || async {
            (ingress_ip(&services, "pinned").await.as_deref() == Some("127.0.203.9")).then_some(())
        },
    )
    .await;
    let second: SocketAddr = format!("127.0.203.9:{port}").parse().expect("address");
    assert!(tokio::net::TcpStream::connect(second).await.is_ok());
    eventually(
        "the old address is closed",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(first)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    // An address outside the pool is refused, and says why.
    services
        .patch(
            "pinned",
            &Patch::Merge(json!({"spec": {"loadBalancerIP": "10.1.2.3"}})),
        )
        .await
        .expect("patch");
    let events: Api<keelson::core::k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "default");
    eventually("a SyncLoadBalancerFailed event", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            events.list(&ListParams::default()).await.ok()?.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("SyncLoadBalancerFailed")
                    && e.message.as_deref().is_some_and(|m| {
                        m.ends_with("loadBalancerIP 10.1.2.3 is not a free address of the pool 127.0.203.1-127.0.203.254")
                    })
            })
        }
    })
    .await;
    cluster.shutdown().await;
}
