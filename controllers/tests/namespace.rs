//! The Namespace and ServiceAccount controllers against an in-process API server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cluster, eventually, template};
use keelson_controllers::builtin::namespace::{default_kinds, NamespaceController};
use keelson_controllers::builtin::serviceaccount::ServiceAccountController;
use keelson_controllers::InformerFactory;
use keelson_core::client::{Api, DeleteOptions, Patch};
use keelson_core::k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, NamespaceSpec, Pod, ServiceAccount,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn condition(ns: &Namespace, t: &str) -> Option<(String, String, String)> {
    ns.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[tokio::test(start_paused = true)]
async fn deleting_a_namespace_deletes_its_content_then_the_namespace() {
    let (_server, client) = cluster(&[]).await;
    let factory = InformerFactory::new();
    let (ctl, rec) = NamespaceController::controller(&client, &factory, default_kinds()).await;
    tokio::spawn(ctl.run(rec));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("doomed".into());
    // Kubernetes defaults spec.finalizers; this server is held by the metadata one.
    ns.metadata.finalizers = Some(vec!["kubernetes".into()]);
    ns.spec = Some(NamespaceSpec {
        finalizers: Some(vec!["kubernetes".into()]),
    });
    namespaces.create(&ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    for name in ["a", "b", "held"] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        if name == "held" {
            cm.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        }
        cms.create(&cm).await.unwrap();
    }
    let mut pod = Pod::default();
    pod.metadata.name = Some("p".into());
    pod.spec = template(&[], "x").spec;
    Api::<Pod>::namespaced(client.clone(), "doomed")
        .create(&pod)
        .await
        .unwrap();
    // Another namespace's content is untouched.
    let mut other = Namespace::default();
    other.metadata.name = Some("kept".into());
    namespaces.create(&other).await.unwrap();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("a".into());
    Api::<ConfigMap>::namespaced(client.clone(), "kept")
        .create(&cm)
        .await
        .unwrap();

    namespaces
        .delete("doomed", &DeleteOptions::default())
        .await
        .unwrap();
    let ns = eventually("content deleted but the held one", WAIT, || async {
        let ns = namespaces.get("doomed").await.unwrap();
        let c = condition(&ns, "NamespaceFinalizersRemaining")?;
        (c.0 == "True").then_some(ns)
    })
    .await;
    assert_eq!(
        ns.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert_eq!(
        condition(&ns, "NamespaceContentRemaining"),
        Some((
            "True".into(),
            "SomeResourcesRemain".into(),
            "Some resources are remaining: configmaps has 1 resource instances".into()
        ))
    );
    assert_eq!(
        condition(&ns, "NamespaceFinalizersRemaining").map(|c| c.2),
        Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into())
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionContentFailure").map(|c| (c.0, c.1)),
        Some(("False".into(), "ContentDeleted".into()))
    );
    assert!(cms.get_opt("a").await.unwrap().is_none());
    assert!(Api::<Pod>::namespaced(client.clone(), "doomed")
        .get_opt("p")
        .await
        .unwrap()
        .is_none());

    cms.patch(
        "held",
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("namespace gone", WAIT, || async {
        namespaces
            .get_opt("doomed")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(Api::<ConfigMap>::namespaced(client.clone(), "kept")
        .get_opt("a")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn every_namespace_gets_a_default_service_account_back_after_deletion() {
    let (_server, client) = cluster(&["one"]).await;
    let factory = InformerFactory::new();
    let (ctl, rec) = ServiceAccountController::controller(&client, &factory);
    tokio::spawn(ctl.run(rec));
    let mut two = Namespace::default();
    two.metadata.name = Some("two".into());
    Api::<Namespace>::all(client.clone())
        .create(&two)
        .await
        .unwrap();
    for ns in ["one", "two"] {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually("default account", WAIT, || async {
            api.get_opt("default").await.unwrap().map(|_| ())
        })
        .await;
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "one");
    let before = api.get("default").await.unwrap().metadata.uid;
    api.delete("default", &DeleteOptions::default())
        .await
        .unwrap();
    eventually("recreated", WAIT, || async {
        api.get_opt("default")
            .await
            .unwrap()
            .filter(|sa| sa.metadata.uid != before)
            .map(|_| ())
    })
    .await;
}
