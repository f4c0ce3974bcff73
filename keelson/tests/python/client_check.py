"""The official Python client (`kubernetes`) against `keelson up`.

Usage: python3 client_check.py KUBECONFIG
Prints one line per check and exits non-zero on the first failure.
"""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def check(name, ok):
    print(("ok   " if ok else "FAIL ") + name, flush=True)
    if not ok:
        sys.exit(1)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    version = client.VersionApi().get_code()
    check("GET /version/ reports minor 33", version.minor == "33")

    # Python sends bodies without apiVersion/kind, and POSTs without a Content-Type.
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    names = [n.metadata.name for n in core.list_namespace().items]
    check("create and list namespaces", "py" in names)

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}),
                            data={"mode": "slow"})
    core.create_namespaced_config_map("py", cm)
    core.patch_namespaced_config_map("settings", "py", {"data": {"mode": "fast"}})
    got = core.read_namespaced_config_map("settings", "py")
    check("patch (strategic merge, the Python default)", got.data["mode"] == "fast")
    selected = core.list_namespaced_config_map("py", label_selector="app=py").items
    check("label selector", [c.metadata.name for c in selected] == ["settings"])

    try:
        core.read_namespaced_config_map("absent", "py")
        check("404 for a missing object", False)
    except ApiException as e:
        check("404 for a missing object", e.status == 404)

    stale = got
    stale.metadata.resource_version = "1"
    try:
        core.replace_namespaced_config_map("settings", "py", stale)
        check("409 for a stale replace", False)
    except ApiException as e:
        check("409 for a stale replace", e.status == 409)

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]))))
    apps.create_namespaced_deployment("py", deployment)
    apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 4}})
    check("scale subresource",
          apps.read_namespaced_deployment("web", "py").spec.replicas == 4)

    # A watch without a resourceVersion starts with ADDED events for what exists (the
    # namespace's kube-root-ca.crt too, once the controllers have published it).
    w = watch.Watch()
    seen = [e["object"].metadata.name
            for e in w.stream(core.list_namespaced_config_map, "py", timeout_seconds=2)]
    check("watch with timeoutSeconds and synthetic ADDED events",
          "settings" in seen and set(seen) <= {"settings", "kube-root-ca.crt"})

    # Python deletes without a body.
    core.delete_namespaced_config_map("settings", "py")
    left = [c.metadata.name for c in core.list_namespaced_config_map("py").items]
    check("delete", "settings" not in left)
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
