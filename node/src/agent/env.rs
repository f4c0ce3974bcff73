//! A container's environment: service links, envFrom, env with valueFrom, `$(VAR)`
//! expansion.

use std::collections::{BTreeMap, HashMap};

use keelson_core::client::{Api, ListParams};
use keelson_core::k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, ResourceRequirements, Secret, Service,
};

use super::NodeCtx;
use crate::quantity;

/// Why a container's configuration cannot be made (`CreateContainerConfigError`).
#[derive(Debug)]
pub(crate) struct ConfigError(pub String);

/// A pod's config maps and secrets, read once per container start.
#[derive(Default)]
struct Sources {
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl Sources {
    async fn config_map(
        &mut self,
        ctx: &NodeCtx,
        ns: &str,
        name: &str,
    ) -> Result<Option<&ConfigMap>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            let cm = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("failed to read configmap {ns}/{name}: {e}")))?;
            self.config_maps.insert(name.to_owned(), cm);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(
        &mut self,
        ctx: &NodeCtx,
        ns: &str,
        name: &str,
    ) -> Result<Option<&Secret>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| ConfigError(format!("failed to read secret {ns}/{name}: {e}")))?;
            self.secrets.insert(name.to_owned(), s);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

fn cm_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(key).cloned())
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

fn env_var_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Expands `$(VAR)` references from `env`; `$$` is a literal `$`; unknown references stay.
pub(crate) fn expand(text: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The Kubernetes service variables for the services a pod sees.
pub(crate) fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref() else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &keelson_core::k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), pr.to_ascii_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

async fn services_for(ctx: &NodeCtx, pod: &Pod, ns: &str) -> Vec<Service> {
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    // Any recent state will do (`resourceVersion=0`, served from the watch cache without
    // waiting for it), as a kubelet reads services from its informer.
    let recent = |p: ListParams| ListParams {
        resource_version: Some("0".into()),
        ..p
    };
    let mut out = Vec::new();
    if links {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
        match api.list(&recent(ListParams::default())).await {
            Ok(l) => out.extend(l.items),
            Err(e) => tracing::debug!(error = %e, "cannot list services for the environment"),
        }
    }
    if ns != "default" || !links {
        // The API server's own service is always visible, as `kubernetes`.
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), "default");
        if let Ok(params) = ListParams::default().fields("metadata.name=kubernetes") {
            if let Ok(l) = api.list(&recent(params)).await {
                out.retain(|s| s.metadata.name.as_deref() != Some("kubernetes"));
                out.extend(l.items);
            }
        }
    }
    let has_api_service = out
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some("kubernetes"));
    if let (false, Some(addr)) = (has_api_service, ctx.config.api_server) {
        out.push(api_server_service(addr));
    }
    out
}

/// The `kubernetes` Service as pods would see it, at the API server's own address (what
/// the agent is told when the cluster has no such Service).
fn api_server_service(addr: std::net::SocketAddr) -> Service {
    use keelson_core::k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    let mut svc = Service::default();
    svc.metadata.name = Some("kubernetes".into());
    svc.spec = Some(ServiceSpec {
        cluster_ip: Some(addr.ip().to_string()),
        ports: Some(vec![ServicePort {
            name: Some("https".into()),
            port: i32::from(addr.port()),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }]),
        ..ServiceSpec::default()
    });
    svc
}

fn resources_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ResourceRequirements> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.resources.as_ref())
}

/// `resourceFieldRef` value: limits fall back to the node's allocatable.
pub(crate) fn resource_field(
    ctx: &NodeCtx,
    pod: &Pod,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, ConfigError> {
    let res = resources_of(pod, container);
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource field {resource:?}")))?;
    let map = match which {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(ConfigError(format!(
                "unsupported resource field {resource:?}"
            )))
        }
    };
    let node = &ctx.config.resources;
    let fallback = match (which, name) {
        ("limits", "cpu") => Some(node.cpu.clone()),
        ("limits", "memory") => Some(node.memory.clone()),
        ("limits", "ephemeral-storage") => Some(node.ephemeral_storage.clone()),
        (_, "cpu" | "memory" | "ephemeral-storage") => Some("0".into()),
        _ => None,
    };
    let text = map
        .and_then(|m| m.get(name))
        .map(|q| q.0.clone())
        .or(fallback)
        .ok_or_else(|| ConfigError(format!("unsupported resource field {resource:?}")))?;
    let value = quantity::parse(&text)
        .ok_or_else(|| ConfigError(format!("bad quantity {text:?} for {resource}")))?;
    let div = divisor
        .and_then(quantity::parse)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / div).ceil() as i64))
}

/// `fieldRef` value.
pub(crate) fn field_ref(
    pod: &Pod,
    pod_ip: &str,
    host_ip: &str,
    path: &str,
) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |map: Option<&BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed(m.labels.as_ref(), "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = keyed(m.annotations.as_ref(), "metadata.annotations['") {
        return Ok(v);
    }
    let render = |map: Option<&BTreeMap<String, String>>| {
        map.map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => render(m.labels.as_ref()),
        "metadata.annotations" => render(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        other => return Err(ConfigError(format!("unsupported field path {other:?}"))),
    })
}

/// The environment of `container` in `pod`, in order (later entries win).
pub(crate) async fn container_env(
    ctx: &NodeCtx,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    env.push(("HOSTNAME".into(), hostname));
    env.push(("POD_IP".into(), pod_ip.to_owned()));
    env.extend(service_env(&services_for(ctx, pod, ns).await));
    let mut sources = Sources::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let name = r.name.as_str();
            match sources.config_map(ctx, ns, name).await? {
                Some(cm) => {
                    let mut keys: Vec<(String, String)> = cm
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    keys.sort();
                    for (k, v) in keys {
                        let name = format!("{prefix}{k}");
                        if env_var_name_ok(&name) {
                            env.push((name, v));
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{name}\" not found"))),
            }
        }
        if let Some(r) = &from.secret_ref {
            let name = r.name.as_str();
            match sources.secret(ctx, ns, name).await? {
                Some(s) => {
                    let mut keys: Vec<String> =
                        s.data.iter().flatten().map(|(k, _)| k.clone()).collect();
                    keys.sort();
                    for k in keys {
                        let name = format!("{prefix}{k}");
                        if env_var_name_ok(&name) {
                            env.push((name, secret_value(s, &k).unwrap_or_default()));
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
            }
        }
    }
    let mut known: HashMap<String, String> = env.iter().cloned().collect();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let v = if let Some(from) = value_from {
            if let Some(f) = &from.field_ref {
                Some(field_ref(pod, pod_ip, &ctx.host_ip, &f.field_path)?)
            } else if let Some(r) = &from.resource_field_ref {
                let cname = r
                    .container_name
                    .clone()
                    .unwrap_or_else(|| container.name.clone());
                Some(resource_field(
                    ctx,
                    pod,
                    &cname,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                )?)
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional == Some(true);
                match sources.config_map(ctx, ns, &r.name).await? {
                    Some(cm) => match cm_value(cm, &r.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if optional => None,
                    None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secret(ctx, ns, &r.name).await? {
                    Some(s) => match secret_value(s, &r.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if optional => None,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else {
                None
            }
        } else {
            Some(expand(value.as_deref().unwrap_or_default(), &known))
        };
        if let Some(v) = v {
            known.insert(name.clone(), v.clone());
            env.push((name.clone(), v));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    #[test]
    fn references_expand_and_double_dollars_escape() {
        let env: HashMap<String, String> = [("A".to_owned(), "x".to_owned())].into_iter().collect();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("pre $(A", &env), "pre $(A");
    }

    #[test]
    fn services_give_kubernetes_and_docker_link_variables() {
        let mut svc = Service::default();
        svc.metadata.name = Some("redis-primary".into());
        svc.spec = Some(ServiceSpec {
            cluster_ip: Some("10.0.0.11".into()),
            ports: Some(vec![ServicePort {
                name: Some("db".into()),
                port: 6379,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        });
        let env: HashMap<String, String> = service_env(&[svc]).into_iter().collect();
        assert_eq!(env["REDIS_PRIMARY_SERVICE_HOST"], "10.0.0.11");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_PORT_DB"], "6379");
        assert_eq!(env["REDIS_PRIMARY_PORT"], "tcp://10.0.0.11:6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP"], "tcp://10.0.0.11:6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_ADDR"], "10.0.0.11");
    }

    #[test]
    fn the_api_server_address_gives_the_variables_in_cluster_clients_read() {
        let addr: std::net::SocketAddr = "127.0.0.1:6443".parse().expect("addr");
        let env: HashMap<String, String> = service_env(&[api_server_service(addr)])
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "6443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "6443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://127.0.0.1:6443");
    }
}
