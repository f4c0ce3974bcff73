//! The ServiceAccount admission plugin, rule by rule, through the in-process client.

use std::sync::Arc;
use std::time::Duration;

use keelson_apiserver::admission::{
    AdmissionChain, ServiceAccountAdmission, TOKEN_MOUNT_PATH, TOKEN_VOLUME_PREFIX,
};
use keelson_apiserver::{resources, ApiServer, Registry};
use keelson_core::client::{Api, Client};
use keelson_core::k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use keelson_store::MemStore;
use serde_json::{json, Value};

const NS: &str = "team";

/// A server whose admission is the ServiceAccount plugin, with namespace `team` and
/// its `default` account (as the serviceaccount controller would make it).
async fn setup() -> Client {
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let plugin = ServiceAccountAdmission::new(&registry);
    let registry = registry.with_admission(AdmissionChain::default().plugin(plugin));
    let client = ApiServer::new(registry, resources::builtin()).client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&ns)
        .await
        .expect("namespace");
    account(&client, json!({"metadata": {"name": "default"}})).await;
    client
}

async fn account(client: &Client, sa: Value) {
    let sa: ServiceAccount = serde_json::from_value(sa).expect("account");
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&sa)
        .await
        .expect("create the account");
}

async fn create(client: &Client, pod: Value) -> keelson_core::Result<Value> {
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    let created = Api::<Pod>::namespaced(client.clone(), NS)
        .create(&pod)
        .await?;
    Ok(serde_json::to_value(created).expect("json"))
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn one_container() -> Value {
    json!({"containers": [{"name": "app", "image": "busybox"}]})
}

fn token_volume(pod: &Value) -> Option<&Value> {
    pod["spec"]["volumes"].as_array()?.iter().find(|v| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
    })
}

#[tokio::test]
async fn a_pod_runs_as_default_with_a_token_volume_mounted_in_every_container() {
    let client = setup().await;
    let created = create(
        &client,
        pod(
            "web",
            json!({
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox"}],
            }),
        ),
    )
    .await
    .expect("admitted");
    assert_eq!(created["spec"]["serviceAccountName"], json!("default"));
    assert_eq!(created["spec"]["serviceAccount"], json!("default"));
    let volume = token_volume(&created).expect("a token volume");
    let name = volume["name"].as_str().expect("name");
    assert_eq!(name.len(), TOKEN_VOLUME_PREFIX.len() + 5, "{name}");
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        json!({"expirationSeconds": 3607, "path": "token"})
    );
    assert_eq!(
        volume["projected"]["sources"][1]["configMap"],
        json!({"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    assert_eq!(
        volume["projected"]["sources"][2]["downwardAPI"]["items"][0],
        json!({"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}})
    );
    assert_eq!(volume["projected"]["defaultMode"], json!(420));
    let mount = json!({"mountPath": TOKEN_MOUNT_PATH, "name": name, "readOnly": true});
    for list in ["initContainers", "containers"] {
        for c in created["spec"][list].as_array().expect("containers") {
            assert_eq!(c["volumeMounts"], json!([mount]), "{c}");
        }
    }
}

#[tokio::test]
async fn a_named_account_must_exist_or_the_pod_is_forbidden() {
    let client = setup().await;
    let err = create(
        &client,
        pod(
            "web",
            json!({"serviceAccountName": "builder", "containers": [{"name": "a", "image": "x"}]}),
        ),
    )
    .await
    .expect_err("no such account");
    assert_eq!(err.code(), 403);
    assert_eq!(
        err.to_string(),
        r#"pods "web" is forbidden: error looking up service account team/builder: serviceaccount "builder" not found"#
    );
    account(&client, json!({"metadata": {"name": "builder"}})).await;
    // The deprecated field alone names the account too.
    let created = create(
        &client,
        pod(
            "web",
            json!({"serviceAccount": "builder", "containers": [{"name": "a", "image": "x"}]}),
        ),
    )
    .await
    .expect("admitted");
    assert_eq!(created["spec"]["serviceAccountName"], json!("builder"));
}

#[tokio::test]
async fn a_generated_pod_is_named_by_its_prefix_in_the_refusal() {
    let client = setup().await;
    let err = create(
        &client,
        json!({"metadata": {"generateName": "web-"}, "spec": {"serviceAccountName": "nobody", "containers": [{"name": "a", "image": "x"}]}}),
    )
    .await
    .expect_err("no such account");
    assert!(
        err.to_string().starts_with(r#"pods "web-" is forbidden: "#),
        "{err}"
    );
}

/// Deletes the `default` account, and lets the watch cache the plugin reads see it gone
/// (it may lag the store a little, as an informer does).
async fn delete_default(client: &Client) {
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .delete("default", &Default::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_default_account_is_waited_for_briefly_then_refused() {
    let client = setup().await;
    delete_default(&client).await;
    // Created 500 ms later, as the serviceaccount controller would: the pod waits for it.
    let later = client.clone();
    let maker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        account(&later, json!({"metadata": {"name": "default"}})).await;
    });
    let started = tokio::time::Instant::now();
    create(&client, pod("early", one_container()))
        .await
        .expect("admitted once the account exists");
    assert!(started.elapsed() >= Duration::from_millis(500));
    maker.await.expect("maker");
    // Never created: refused after about ten tries.
    delete_default(&client).await;
    let started = tokio::time::Instant::now();
    let err = create(&client, pod("late", one_container()))
        .await
        .expect_err("no default account");
    assert_eq!(
        err.to_string(),
        r#"pods "late" is forbidden: error looking up service account team/default: serviceaccount "default" not found"#
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn automount_false_on_the_pod_or_the_account_means_no_token_and_the_pod_wins() {
    let client = setup().await;
    account(
        &client,
        json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false}),
    )
    .await;
    let created = create(
        &client,
        pod(
            "a",
            json!({"automountServiceAccountToken": false, "containers": [{"name": "a", "image": "x"}]}),
        ),
    )
    .await
    .expect("admitted");
    assert!(token_volume(&created).is_none(), "{created}");
    assert!(created["spec"]["containers"][0]
        .get("volumeMounts")
        .is_none());
    let created = create(
        &client,
        pod(
            "b",
            json!({"serviceAccountName": "quiet", "containers": [{"name": "a", "image": "x"}]}),
        ),
    )
    .await
    .expect("admitted");
    assert!(token_volume(&created).is_none(), "{created}");
    let created = create(
        &client,
        pod(
            "c",
            json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true,
                   "containers": [{"name": "a", "image": "x"}]}),
        ),
    )
    .await
    .expect("admitted");
    assert!(token_volume(&created).is_some(), "the pod's choice wins");
}

#[tokio::test]
async fn a_container_with_its_own_mount_at_the_token_path_keeps_it() {
    let client = setup().await;
    let created = create(
        &client,
        pod(
            "own",
            json!({
                "containers": [{"name": "a", "image": "x",
                    "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]}],
                "volumes": [{"name": "mine", "emptyDir": {}}],
            }),
        ),
    )
    .await
    .expect("admitted");
    assert!(token_volume(&created).is_none(), "{created}");
    assert_eq!(
        created["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}])
    );
}

#[tokio::test]
async fn the_accounts_pull_secrets_are_copied_to_a_pod_without_any() {
    let client = setup().await;
    account(
        &client,
        json!({"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "registry"}]}),
    )
    .await;
    let spec = |extra: Value| {
        let mut s =
            json!({"serviceAccountName": "puller", "containers": [{"name": "a", "image": "x"}]});
        if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        s
    };
    let created = create(&client, pod("a", spec(json!({}))))
        .await
        .expect("admitted");
    assert_eq!(
        created["spec"]["imagePullSecrets"],
        json!([{"name": "registry"}])
    );
    let created = create(
        &client,
        pod("b", spec(json!({"imagePullSecrets": [{"name": "mine"}]}))),
    )
    .await
    .expect("admitted");
    assert_eq!(
        created["spec"]["imagePullSecrets"],
        json!([{"name": "mine"}])
    );
}

#[tokio::test]
async fn an_account_enforcing_mountable_secrets_refuses_others() {
    let client = setup().await;
    account(
        &client,
        json!({"metadata": {"name": "strict", "annotations": {"kubernetes.io/enforce-mountable-secrets": "true"}},
               "secrets": [{"name": "allowed"}]}),
    )
    .await;
    let with_secret = |name: &str, secret: &str| {
        pod(
            name,
            json!({"serviceAccountName": "strict",
                   "containers": [{"name": "a", "image": "x"}],
                   "volumes": [{"name": "s", "secret": {"secretName": secret}}]}),
        )
    };
    create(&client, with_secret("ok", "allowed"))
        .await
        .expect("admitted");
    let err = create(&client, with_secret("no", "other"))
        .await
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        r#"pods "no" is forbidden: volume with secret.secretName="other" is not allowed because service account strict does not reference that secret"#
    );
}

#[tokio::test]
async fn a_mirror_pod_is_left_as_it_is_and_may_not_use_accounts_secrets_or_tokens() {
    let client = setup().await;
    let mirror = |name: &str, spec: Value| json!({"metadata": {"name": name, "annotations": {"kubernetes.io/config.mirror": "hash"}}, "spec": spec});
    let created = create(&client, mirror("static-web", one_container()))
        .await
        .expect("admitted");
    assert!(
        created["spec"].get("serviceAccountName").is_none(),
        "{created}"
    );
    assert!(token_volume(&created).is_none());
    let refused = [
        (
            json!({"serviceAccountName": "default", "containers": [{"name": "a", "image": "x"}]}),
            "a mirror pod may not reference service accounts",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
            "a mirror pod may not reference secrets",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x"}],
                   "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]}),
            "a mirror pod may not use ServiceAccountToken volume projections",
        ),
    ];
    for (spec, reason) in refused {
        let err = create(&client, mirror("bad", spec))
            .await
            .expect_err(reason);
        assert_eq!(err.code(), 403);
        assert_eq!(
            err.to_string(),
            format!(r#"pods "bad" is forbidden: {reason}"#)
        );
    }
}

#[tokio::test]
async fn updates_and_other_kinds_are_not_touched() {
    let client = setup().await;
    let created = create(&client, pod("web", one_container()))
        .await
        .expect("admitted");
    // Deleting the account does not stop the pod's updates (only creates are admitted).
    Api::<ServiceAccount>::namespaced(client.clone(), "team")
        .delete("default", &Default::default())
        .await
        .expect("delete");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.patch(
        "web",
        &keelson_core::client::Patch::Merge(json!({"metadata": {"labels": {"tier": "fe"}}})),
    )
    .await
    .expect("an update is not admitted by the plugin");
    assert!(token_volume(&created).is_some());
}

#[tokio::test]
async fn a_pod_in_a_missing_namespace_is_refused_for_the_namespace_at_once() {
    let client = setup().await;
    let started = std::time::Instant::now();
    let pod: Pod = serde_json::from_value(pod("web", one_container())).expect("pod");
    let err = Api::<Pod>::namespaced(client.clone(), "nowhere")
        .create(&pod)
        .await
        .expect_err("no namespace");
    assert_eq!(err.to_string(), r#"namespaces "nowhere" not found"#);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no wait for an account"
    );
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims")
}

#[tokio::test]
async fn a_pods_3607_second_token_is_extended_to_a_year_with_a_warning_after_the_hour() {
    let client = setup().await;
    let created = create(&client, pod("web", one_container()))
        .await
        .expect("admitted");
    let uid = created["metadata"]["uid"].as_str().expect("uid");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let request = |seconds: i64, audiences: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": audiences, "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": uid}}})
    };
    let answer: Value = accounts
        .create_subresource("token", "default", &request(3607, json!([])))
        .await
        .expect("token");
    let c = claims(answer["status"]["token"].as_str().expect("token"));
    let iat = c["iat"].as_i64().expect("iat");
    assert_eq!(c["exp"].as_i64(), Some(iat + 365 * 24 * 3600), "{c}");
    assert_eq!(c["kubernetes.io"]["warnafter"].as_i64(), Some(iat + 3607));
    assert_eq!(c["kubernetes.io"]["pod"]["name"], json!("web"));
    let expires = answer["status"]["expirationTimestamp"]
        .as_str()
        .expect("expiration")
        .parse::<keelson_core::k8s_openapi::jiff::Timestamp>()
        .expect("a time");
    assert!(
        (expires.as_second() - iat - 3607).abs() <= 1,
        "the status says the hour: {expires}"
    );
    // A pod's token is only for the account it runs as.
    account(&client, json!({"metadata": {"name": "other"}})).await;
    let err = accounts
        .create_subresource::<_, Value>("token", "other", &request(3607, json!([])))
        .await
        .expect_err("another account");
    assert_eq!(err.code(), 400);
    assert_eq!(
        err.to_string(),
        r#"cannot bind token for serviceaccount "other" to pod running with different serviceaccount name."#
    );
    // Any other lifetime, or another audience, is what was asked for.
    for (seconds, audiences) in [(3600, json!([])), (3607, json!(["vault"]))] {
        let answer: Value = accounts
            .create_subresource("token", "default", &request(seconds, audiences))
            .await
            .expect("token");
        let c = claims(answer["status"]["token"].as_str().expect("token"));
        assert_eq!(
            c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
            seconds
        );
        assert!(c["kubernetes.io"].get("warnafter").is_none(), "{c}");
    }
}

#[tokio::test]
async fn a_legacy_token_authenticates_while_its_secret_holds_it_and_its_account_exists() {
    use keelson_apiserver::auth::Authenticator;
    use keelson_apiserver::satoken::LegacyClaims;
    use keelson_core::k8s_openapi::api::core::v1::Secret;
    let registry = Registry::new(Arc::new(MemStore::ephemeral()));
    let auth = Authenticator::default().with_service_accounts(registry.clone());
    let client = ApiServer::new(registry.clone(), resources::builtin()).client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&ns)
        .await
        .expect("namespace");
    account(&client, json!({"metadata": {"name": "builder"}})).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let uid = accounts
        .get("builder")
        .await
        .expect("account")
        .metadata
        .uid
        .expect("uid");
    let token = registry
        .service_account_tokens()
        .issue_legacy(&LegacyClaims {
            namespace: NS.into(),
            name: "builder".into(),
            uid: uid.clone(),
            secret: "builder-token".into(),
        })
        .expect("token");
    let bearer = format!("Bearer {token}");
    assert_eq!(
        auth.service_account(Some(&bearer)).await,
        None,
        "no secret yet"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = |data: &str| -> Secret {
        use base64::Engine as _;
        serde_json::from_value(json!({
            "metadata": {"name": "builder-token", "annotations": {"kubernetes.io/service-account.name": "builder"}},
            "type": "kubernetes.io/service-account-token",
            "data": {"token": base64::engine::general_purpose::STANDARD.encode(data)},
        }))
        .expect("secret")
    };
    secrets.create(&secret(&token)).await.expect("secret");
    let user = auth
        .service_account(Some(&bearer))
        .await
        .expect("authenticated");
    assert_eq!(user.name, "system:serviceaccount:team:builder");
    assert_eq!(user.uid, uid);
    assert!(user
        .groups
        .contains(&"system:serviceaccounts:team".to_owned()));
    // A secret that holds another token does not vouch for this one.
    secrets
        .replace("builder-token", &secret("something else"))
        .await
        .expect("replace");
    assert_eq!(auth.service_account(Some(&bearer)).await, None);
    secrets
        .replace("builder-token", &secret(&token))
        .await
        .expect("replace");
    assert!(auth.service_account(Some(&bearer)).await.is_some());
    // Gone with its secret, and with its account.
    secrets
        .delete("builder-token", &Default::default())
        .await
        .expect("delete");
    assert_eq!(auth.service_account(Some(&bearer)).await, None);
    secrets.create(&secret(&token)).await.expect("secret");
    assert!(auth.service_account(Some(&bearer)).await.is_some());
    accounts
        .delete("builder", &Default::default())
        .await
        .expect("delete");
    assert_eq!(auth.service_account(Some(&bearer)).await, None);
}
