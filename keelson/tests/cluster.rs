//! Whole-cluster behaviour through the in-process [`Cluster`]: simulated nodes, the
//! scheduler, the controllers, all under paused tokio time, so that minutes of cluster
//! time take milliseconds and every run takes the same steps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use keelson::controllers::leader::{LeaderElectionConfig, LeaderElector};
use keelson::core::client::{
    Api, Client, DeleteOptions, Event, ListParams, Patch, PropagationPolicy, WatchParams,
};
use keelson::core::k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use keelson::core::k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use keelson::Cluster;
use serde_json::json;

/// Polls `check` every 100 ms of tokio time until it returns `Some`, for at most `within`.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deployment(
    name: &str,
    replicas: i32,
    image: &str,
    max_surge: i32,
    max_unavailable: i32,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }))
    .expect("a valid deployment")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// Waits until the Deployment has rolled out completely.
async fn rolled_out(client: &Client, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    eventually(
        &format!("deployment {name} rolled out"),
        Duration::from_secs(300),
        || {
            let api = api.clone();
            async move {
                let d = api.get(name).await.ok()?;
                let want = d.spec.as_ref()?.replicas?;
                let s = d.status.as_ref()?;
                (s.observed_generation == d.metadata.generation
                    && s.updated_replicas == Some(want)
                    && s.available_replicas == Some(want)
                    && s.replicas == Some(want))
                .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_cluster_with_simulated_nodes_is_ready_at_once_under_paused_time() {
    let start = tokio::time::Instant::now();
    let cluster = Cluster::builder()
        .sim_nodes(3)
        .build()
        .await
        .expect("cluster");
    assert_eq!(cluster.node_names(), ["sim-0", "sim-1", "sim-2"]);
    let nodes = Api::<Node>::all(cluster.client())
        .list(&ListParams::default())
        .await
        .expect("nodes");
    assert_eq!(nodes.items.len(), 3);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "ready after {:?} of cluster time",
        start.elapsed()
    );
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    deployments
        .create(&deployment("hello", 3, "hello:1", 1, 0))
        .await
        .expect("create");
    rolled_out(&cluster.client(), "hello").await;
    let pods = Api::<Pod>::namespaced(cluster.client(), "default")
        .list(&ListParams::default())
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 3);
    assert!(pods.items.iter().all(|p| node_of(p).starts_with("sim-")));
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_never_has_fewer_than_replicas_minus_max_unavailable_ready_pods() {
    const REPLICAS: i32 = 4;
    const MAX_SURGE: i32 = 1;
    const MAX_UNAVAILABLE: i32 = 1;
    let cluster = Cluster::builder()
        .sim_nodes(3)
        .build()
        .await
        .expect("cluster");
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&deployment(
            "web",
            REPLICAS,
            "web:1",
            MAX_SURGE,
            MAX_UNAVAILABLE,
        ))
        .await
        .expect("create");
    rolled_out(&client, "web").await;

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pod_list = pods_api
        .list(&ListParams::default().labels("app=web").expect("selector"))
        .await
        .expect("pods");
    let set_list = sets_api.list(&ListParams::default()).await.expect("sets");
    let mut pods: HashMap<String, Pod> = pod_list
        .items
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect();
    let mut sets: HashMap<String, ReplicaSet> = set_list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    let mut pod_events = pods_api
        .watch(
            &WatchParams::default()
                .labels("app=web")
                .expect("selector")
                .after(pod_list.resource_version),
        )
        .await
        .expect("watch pods");
    let mut set_events = sets_api
        .watch(&WatchParams::default().after(set_list.resource_version))
        .await
        .expect("watch replica sets");

    deployments
        .patch(
            "web",
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}})),
        )
        .await
        .expect("update the image");

    let serving = |pods: &HashMap<String, Pod>| {
        pods.values()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .count() as i32
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut events = 0;
    let mut fewest = i32::MAX;
    let mut most_desired = 0;
    let mut trace: Vec<String> = Vec::new();
    let t0 = tokio::time::Instant::now();
    loop {
        tokio::select! {
            e = pod_events.next() => {
                match e.expect("the pod watch goes on").expect("a pod event") {
                    Event::Added(p) | Event::Modified(p) => { pods.insert(p.metadata.name.clone().unwrap_or_default(), p); }
                    Event::Deleted(p) => { pods.remove(p.metadata.name.as_deref().unwrap_or_default()); }
                    Event::Bookmark { .. } => continue,
                }
            }
            e = set_events.next() => {
                match e.expect("the replica set watch goes on").expect("a replica set event") {
                    Event::Added(s) | Event::Modified(s) => { sets.insert(s.metadata.name.clone().unwrap_or_default(), s); }
                    Event::Deleted(s) => { sets.remove(s.metadata.name.as_deref().unwrap_or_default()); }
                    Event::Bookmark { .. } => continue,
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("the rollout did not finish: {} pods ready", serving(&pods)),
        }
        events += 1;
        trace.push(format!(
            "{:?} pods {:?} sets {:?}",
            tokio::time::Instant::now() - t0,
            {
                let mut v: Vec<_> = pods
                    .values()
                    .map(|p| {
                        format!(
                            "{}:{}:{}{}",
                            p.metadata.name.as_deref().unwrap_or_default(),
                            image(p),
                            if is_ready(p) { "R" } else { "-" },
                            if p.metadata.deletion_timestamp.is_some() {
                                "D"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                v.sort();
                v
            },
            sets.values()
                .map(|s| format!(
                    "{} spec={:?} avail={:?}",
                    s.metadata.name.as_deref().unwrap_or_default(),
                    s.spec.as_ref().and_then(|s| s.replicas),
                    s.status.as_ref().and_then(|s| s.available_replicas)
                ))
                .collect::<Vec<_>>()
        ));
        let ready = serving(&pods);
        fewest = fewest.min(ready);
        assert!(
            ready >= REPLICAS - MAX_UNAVAILABLE,
            "only {ready} ready pods after event {events}:\n{}",
            trace.join("\n")
        );
        let desired: i32 = sets
            .values()
            .filter_map(|s| s.spec.as_ref()?.replicas)
            .sum();
        most_desired = most_desired.max(desired);
        assert!(
            desired <= REPLICAS + MAX_SURGE,
            "the replica sets want {desired} pods after event {events}"
        );
        let live: Vec<&Pod> = pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live.len() == REPLICAS as usize
            && live.iter().all(|p| image(p) == "web:2" && is_ready(p))
        {
            break;
        }
    }
    // The rollout really went through the budget: one pod out (unavailable) and one
    // extra (surge) at some point.
    assert_eq!(
        fewest,
        REPLICAS - MAX_UNAVAILABLE,
        "no step used the unavailability budget"
    );
    assert_eq!(most_desired, REPLICAS + MAX_SURGE, "no step surged");
    rolled_out(&client, "web").await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn foreground_deletion_of_a_deployment_waits_for_its_replica_sets_and_pods() {
    let cluster = Cluster::builder()
        .sim_nodes(2)
        .build()
        .await
        .expect("cluster");
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&deployment("db", 3, "db:1", 1, 0))
        .await
        .expect("create");
    rolled_out(&client, "db").await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deps = deployments
        .list(&ListParams::default())
        .await
        .expect("list");
    let mut dependents: HashSet<String> = HashSet::new();
    for s in sets_api
        .list(&ListParams::default())
        .await
        .expect("sets")
        .items
    {
        dependents.insert(format!("rs/{}", s.metadata.name.unwrap_or_default()));
    }
    for p in pods_api
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
    {
        dependents.insert(format!("pod/{}", p.metadata.name.unwrap_or_default()));
    }
    assert_eq!(dependents.len(), 4, "{dependents:?}");
    let rv = deps.resource_version;
    let mut d_events = deployments
        .watch(&WatchParams::default().after(rv.clone()))
        .await
        .expect("watch");
    let mut s_events = sets_api
        .watch(&WatchParams::default().after(rv.clone()))
        .await
        .expect("watch");
    let mut p_events = pods_api
        .watch(&WatchParams::default().after(rv))
        .await
        .expect("watch");

    deployments
        .delete(
            "db",
            &DeleteOptions {
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..DeleteOptions::default()
            },
        )
        .await
        .expect("delete");
    // Right after the delete, the Deployment is still there, held by the finalizer.
    let held = deployments.get("db").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(held
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"foregroundDeletion".to_owned()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut gone: Vec<String> = Vec::new();
    loop {
        let deleted = tokio::select! {
            e = d_events.next() => match e.expect("watch").expect("event") {
                Event::Deleted(d) => Some(format!("deploy/{}", d.metadata.name.unwrap_or_default())),
                _ => None,
            },
            e = s_events.next() => match e.expect("watch").expect("event") {
                Event::Deleted(s) => Some(format!("rs/{}", s.metadata.name.unwrap_or_default())),
                _ => None,
            },
            e = p_events.next() => match e.expect("watch").expect("event") {
                Event::Deleted(p) => Some(format!("pod/{}", p.metadata.name.unwrap_or_default())),
                _ => None,
            },
            _ = tokio::time::sleep_until(deadline) => panic!("not deleted; gone so far: {gone:?}"),
        };
        let Some(name) = deleted else { continue };
        if name == "deploy/db" {
            let left: Vec<&String> = dependents.iter().filter(|d| !gone.contains(d)).collect();
            assert!(
                left.is_empty(),
                "the Deployment went before {left:?} (order: {gone:?})"
            );
            break;
        }
        gone.push(name);
    }
    // The ReplicaSet (itself deleted in the foreground) went after its pods.
    let rs_at = gone
        .iter()
        .position(|g| g.starts_with("rs/"))
        .expect("rs deleted");
    assert_eq!(rs_at, gone.len() - 1, "order: {gone:?}");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_cannot_write() {
    let cluster = Cluster::builder().build().await.expect("cluster");
    let client = cluster.client();
    let config = |id: &str| LeaderElectionConfig::new("kube-system", "demo-controller", id);
    let a = std::sync::Arc::new(LeaderElector::new(client.clone(), config("a")));
    let b = std::sync::Arc::new(LeaderElector::new(client.clone(), config("b")));
    let a_task = {
        let a = a.clone();
        tokio::spawn(async move { a.run(std::future::pending()).await })
    };
    let mut a_state = a.subscribe();
    a_state
        .wait_for(|s| s.is_leader())
        .await
        .expect("a campaigns");
    let a_writes = a.fenced_client(client.clone());
    let a_fence = a.fence().expect("a leads");
    let maps = |c: &Client| Api::<ConfigMap>::namespaced(c.clone(), "default");
    let map = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("config map")
    };
    maps(&a_writes)
        .create(&map("by-a-1"))
        .await
        .expect("the leader writes");
    a_fence
        .check()
        .await
        .expect("the fence holds while a leads");

    // a's elector hangs (a stuck process): no more renewals, but its controllers go on
    // trying to write through a's fenced client.
    a_task.abort();
    let _ = a_task.await;
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move { b.run(std::future::pending()).await })
    };
    let b_writes = b.fenced_client(client.clone());
    let started = tokio::time::Instant::now();
    let mut a_stopped_at = None;
    let mut i = 0;
    let b_led_at = loop {
        i += 1;
        let a_leads = a.leadership().is_leader();
        let b_leads = b.leadership().is_leader();
        assert!(
            !(a_leads && b_leads),
            "two leaders at {:?}",
            started.elapsed()
        );
        let a_write = maps(&a_writes)
            .create(&map(&format!("by-a-{}", i + 1)))
            .await;
        if a_leads {
            assert!(a_write.is_ok(), "a leads and cannot write: {a_write:?}");
        } else {
            let e = a_write.expect_err("a deposed leader wrote");
            assert_eq!(e.code(), 403, "{e}");
            a_stopped_at.get_or_insert(started.elapsed());
        }
        if b_leads {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "b never led");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let a_stopped_at = a_stopped_at.expect("a was deposed before b led");
    assert!(
        a_stopped_at <= Duration::from_secs(10),
        "a wrote for {a_stopped_at:?} after its last renewal"
    );
    assert!(
        b_led_at >= Duration::from_secs(15),
        "b took over a live lease after {b_led_at:?}"
    );
    // a's term is over for good: its fence fails, and the new leader writes.
    let e = a_fence.check().await.expect_err("a's fence must fail");
    assert_eq!(e.code(), 403, "{e}");
    maps(&b_writes)
        .create(&map("by-b"))
        .await
        .expect("the new leader writes");
    let written: BTreeMap<String, ()> = maps(&client)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|m| m.metadata.name.map(|n| (n, ())))
        .collect();
    assert!(written.contains_key("by-b"), "{written:?}");
    b_task.abort();
    cluster.shutdown().await;
}

fn taints(node: &Node) -> Vec<(String, String)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| {
            t.iter()
                .map(|t| (t.key.clone(), t.effect.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn node_ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(start_paused = true)]
async fn a_node_that_stops_heartbeating_is_tainted_and_its_pods_are_replaced_elsewhere() {
    let cluster = Cluster::builder()
        .sim_nodes(3)
        .build()
        .await
        .expect("cluster");
    let client = cluster.client();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "app", "image": "api:1"}]},
            },
        },
    }))
    .expect("replica set");
    sets.create(&rs).await.expect("create");
    let ready_pods = |pods_api: Api<Pod>| async move {
        pods_api
            .list(&ListParams::default().labels("app=api").expect("selector"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .collect::<Vec<_>>()
    };
    let running = eventually("six ready pods", Duration::from_secs(60), || {
        let api = pods_api.clone();
        async move { Some(ready_pods(api).await).filter(|p| p.len() == 6) }
    })
    .await;
    // The admission gave every pod five minutes' tolerance of a lost node.
    let tolerations = running[0]
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    assert!(
        tolerations.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds == Some(300)
        ),
        "{tolerations:?}"
    );
    let victim = node_of(&running[0]).to_owned();
    let doomed: HashSet<String> = running
        .iter()
        .filter(|p| node_of(p) == victim)
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(!doomed.is_empty());

    cluster.stop_node(&victim).await.expect("stop the node");
    let stopped = tokio::time::Instant::now();
    let tainted = eventually(
        "the silent node is tainted",
        Duration::from_secs(120),
        || {
            let nodes = nodes.clone();
            let victim = victim.clone();
            async move {
                let n = nodes.get(&victim).await.ok()?;
                let t = taints(&n);
                (node_ready(&n).as_deref() == Some("Unknown")
                    && t.contains(&("node.kubernetes.io/unreachable".into(), "NoExecute".into()))
                    && t.contains(&("node.kubernetes.io/unreachable".into(), "NoSchedule".into())))
                .then_some(n)
            }
        },
    )
    .await;
    let silent_for = stopped.elapsed();
    // The last renewal was at most one lease interval (10 s) before the stop; the grace
    // period is 40 s, checked at least every 5 s.
    assert!(
        silent_for >= Duration::from_secs(30) && silent_for <= Duration::from_secs(46),
        "tainted {silent_for:?} after the node stopped"
    );
    let ready = tainted
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
        .expect("a Ready condition");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    // The other nodes are untouched.
    for n in nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
    {
        if n.metadata.name.as_deref() != Some(victim.as_str()) {
            assert!(taints(&n).is_empty(), "{:?}", n.metadata.name);
            assert_eq!(node_ready(&n).as_deref(), Some("True"));
        }
    }
    // Its pods are marked not ready, but stay for their tolerationSeconds.
    let on_victim = pods_api
        .list(&ListParams::default().labels("app=api").expect("selector"))
        .await
        .expect("pods")
        .items;
    for p in on_victim
        .iter()
        .filter(|p| doomed.contains(p.metadata.name.as_deref().unwrap_or_default()))
    {
        assert!(p.metadata.deletion_timestamp.is_none(), "evicted early");
    }
    eventually(
        "the lost pods are marked not ready",
        Duration::from_secs(10),
        || {
            let api = pods_api.clone();
            let doomed = doomed.clone();
            async move {
                let all = api.list(&ListParams::default()).await.ok()?.items;
                all.iter()
                    .filter(|p| doomed.contains(p.metadata.name.as_deref().unwrap_or_default()))
                    .all(|p| !is_ready(p))
                    .then_some(())
            }
        },
    )
    .await;
    let taint_seen = tokio::time::Instant::now();
    eventually(
        "the lost pods are evicted",
        Duration::from_secs(400),
        || {
            let api = pods_api.clone();
            let doomed = doomed.clone();
            async move {
                let all = api.list(&ListParams::default()).await.ok()?.items;
                all.iter()
                    .filter(|p| doomed.contains(p.metadata.name.as_deref().unwrap_or_default()))
                    .all(|p| p.metadata.deletion_timestamp.is_some())
                    .then_some(())
            }
        },
    )
    .await;
    let evicted_after = taint_seen.elapsed();
    assert!(
        evicted_after >= Duration::from_secs(285) && evicted_after <= Duration::from_secs(306),
        "evicted {evicted_after:?} after the taint"
    );
    // The ReplicaSet replaced them on the other nodes.
    let replaced = eventually("six ready pods again", Duration::from_secs(60), || {
        let api = pods_api.clone();
        async move { Some(ready_pods(api).await).filter(|p| p.len() == 6) }
    })
    .await;
    assert!(
        replaced.iter().all(|p| node_of(p) != victim),
        "a pod went to the lost node: {:?}",
        replaced
            .iter()
            .map(|p| node_of(p).to_owned())
            .collect::<Vec<_>>()
    );

    // The node comes back: Ready again, untainted, and it finishes its deleted pods.
    cluster.start_node(&victim).expect("start the node");
    eventually(
        "the node is back and untainted",
        Duration::from_secs(60),
        || {
            let nodes = nodes.clone();
            let victim = victim.clone();
            async move {
                let n = nodes.get(&victim).await.ok()?;
                (node_ready(&n).as_deref() == Some("True") && taints(&n).is_empty()).then_some(())
            }
        },
    )
    .await;
    eventually(
        "the evicted pods are gone",
        Duration::from_secs(120),
        || {
            let api = pods_api.clone();
            let doomed = doomed.clone();
            async move {
                let all = api.list(&ListParams::default()).await.ok()?.items;
                (!all
                    .iter()
                    .any(|p| doomed.contains(p.metadata.name.as_deref().unwrap_or_default())))
                .then_some(())
            }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_durable_store_works_under_paused_time() {
    let cluster = Cluster::builder()
        .temp_dir()
        .without_controllers()
        .without_scheduler()
        .build()
        .await
        .expect("cluster");
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    // A timer somewhere in the process: while a write waits for the committer thread's
    // fdatasync, the runtime is idle, and paused time auto-advances to it (measured: 20
    // writes moved the clock by hours). Writes work; only the clock is not still, which
    // is why the builder's default store is in memory.
    let _timer = tokio::spawn(tokio::time::sleep(Duration::from_secs(3600)));
    let start = tokio::time::Instant::now();
    for i in 0..20 {
        let m: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("m{i}")}})).expect("map");
        maps.create(&m)
            .await
            .expect("a durable write under paused time");
    }
    let jumped = start.elapsed();
    assert_eq!(
        maps.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        20
    );
    println!("20 durable writes took {jumped:?} of paused time");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn controllers_under_leader_election_run_once_they_lead() {
    use keelson::controllers::ControllerManagerConfig;
    use keelson::core::k8s_openapi::api::coordination::v1::Lease;
    let config = ControllerManagerConfig {
        leader_election: Some(LeaderElectionConfig::new(
            "kube-system",
            "kube-controller-manager",
            "cm-a",
        )),
        ..ControllerManagerConfig::default()
    };
    let cluster = Cluster::builder()
        .controllers(config)
        .sim_nodes(1)
        .build()
        .await
        .expect("cluster");
    let client = cluster.client();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&deployment("led", 2, "led:1", 1, 0))
        .await
        .expect("create");
    rolled_out(&client, "led").await;
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("kube-controller-manager")
        .await
        .expect("the election's lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("cm-a")
    );
    cluster.shutdown().await;
}

fn token_volume(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .find(|n| n.starts_with("kube-api-access-"))
}

#[tokio::test(start_paused = true)]
async fn pods_run_as_the_default_account_with_a_token_volume_and_the_ca_is_published() {
    let cluster = Cluster::builder()
        .root_ca("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        .build()
        .await
        .expect("cluster");
    // Created at once: the admission plugin waits briefly for the controller's account.
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
    )
    .expect("pod");
    let created = Api::<Pod>::namespaced(cluster.client(), "default")
        .create(&pod)
        .await
        .expect("admitted");
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert!(token_volume(&created).is_some(), "{spec:?}");
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "kube-system");
    let ca = eventually("the published CA", Duration::from_secs(30), || async {
        cms.get_opt("kube-root-ca.crt")
            .await
            .expect("get")
            .and_then(|cm| cm.data?.get("ca.crt").cloned())
    })
    .await;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    cluster.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_the_serviceaccount_controller_pods_need_no_account() {
    let cluster = Cluster::builder()
        .without_controllers()
        .build()
        .await
        .expect("cluster");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
    )
    .expect("pod");
    let created = Api::<Pod>::namespaced(cluster.client(), "default")
        .create(&pod)
        .await
        .expect("admitted without an account");
    assert!(token_volume(&created).is_none());
    assert_eq!(
        created.spec.and_then(|s| s.service_account_name),
        None,
        "the plugin is off"
    );
    cluster.shutdown().await;
    let err = Cluster::builder()
        .disable_admission_plugins(&["NoSuchPlugin"])
        .build()
        .await
        .expect_err("unknown plugin");
    assert_eq!(
        err.to_string(),
        r#"unknown admission plugin "NoSuchPlugin"; known: ServiceAccount"#
    );
}

/// Real processes: a pod whose token volume has an empty `ca.crt` (a cluster without
/// TLS) still starts, and finds its token and namespace where Kubernetes puts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_a_local_node_reads_its_token_volume_in_a_cluster_without_a_ca() {
    let cluster = Cluster::builder()
        .temp_dir()
        .process_nodes(1)
        .build()
        .await
        .expect("cluster");
    let dir = "$KEELSON_ROOT/var/run/secrets/kubernetes.io/serviceaccount";
    let check = format!(
        "test \"$(cat {dir}/namespace)\" = default && test -s {dir}/token && test -f {dir}/ca.crt && test ! -s {dir}/ca.crt"
    );
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "reader"}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "a", "image": "busybox", "command": ["sh", "-c", check]}],
    }}))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    pods.create(&pod).await.expect("admitted");
    let phase = eventually("the pod finished", Duration::from_secs(60), || async {
        let p = pods.get("reader").await.ok()?;
        p.status?
            .phase
            .filter(|p| p == "Succeeded" || p == "Failed")
    })
    .await;
    assert_eq!(phase, "Succeeded");
    cluster.shutdown().await;
}
