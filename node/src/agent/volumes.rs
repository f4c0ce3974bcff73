//! Volumes as directories: emptyDir, configMap, secret, downwardAPI, projected, hostPath.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keelson_core::client::Api;
use keelson_core::k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::env::{field_ref, resource_field};
use super::NodeCtx;

/// Why a volume cannot be made (the pod stays `ContainerCreating`, as on a failed mount).
#[derive(Debug)]
pub(crate) struct VolumeError(pub String);

fn io(path: &Path, e: std::io::Error) -> VolumeError {
    VolumeError(format!("{}: {e}", path.display()))
}

fn safe_rel(p: &str) -> Result<&str, VolumeError> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|s| s == "..") {
        return Err(VolumeError(format!(
            "path {p:?} must be relative and must not contain '..'"
        )));
    }
    Ok(p)
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: Option<i32>) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(safe_rel(rel)?);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let tmp = path.with_extension("keelson-tmp");
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
    if let Some(m) = mode {
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode((m as u32) & 0o777));
    }
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
}

/// Writes `entries` (key → bytes) per `items` (all keys when `None`).
fn project(
    dir: &Path,
    entries: &HashMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
    optional: bool,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (k, v) in entries {
                write_file(dir, k, v, default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match entries.get(&item.key) {
                    Some(v) => write_file(dir, &item.path, v, item.mode.or(default_mode))?,
                    None if optional => {}
                    None => {
                        return Err(VolumeError(format!(
                            "configuration key {:?} not found in {what}",
                            item.key
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

async fn config_map_entries(
    ctx: &NodeCtx,
    ns: &str,
    name: &str,
) -> Result<Option<HashMap<String, Vec<u8>>>, VolumeError> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| VolumeError(format!("failed to read configmap {ns}/{name}: {e}")))?;
    Ok(cm.map(|cm| {
        let mut m: HashMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            m.insert(k, v.0);
        }
        m
    }))
}

async fn secret_entries(
    ctx: &NodeCtx,
    ns: &str,
    name: &str,
) -> Result<Option<HashMap<String, Vec<u8>>>, VolumeError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| VolumeError(format!("failed to read secret {ns}/{name}: {e}")))?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

fn downward(
    ctx: &NodeCtx,
    pod: &Pod,
    pod_ip: &str,
    dir: &Path,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field_ref(pod, pod_ip, &ctx.host_ip, &f.field_path).map_err(|e| VolumeError(e.0))?
        } else if let Some(r) = &item.resource_field_ref {
            let cname = r.container_name.clone().unwrap_or_default();
            resource_field(
                ctx,
                pod,
                &cname,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
            )
            .map_err(|e| VolumeError(e.0))?
        } else {
            continue;
        };
        write_file(
            dir,
            &item.path,
            value.as_bytes(),
            item.mode.or(default_mode),
        )?;
    }
    Ok(())
}

/// Makes a pod's volumes under `root` (its volumes directory); returns each volume's
/// directory.
pub(crate) async fn prepare(
    ctx: &NodeCtx,
    pod: &Pod,
    pod_ip: &str,
    root: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = HashMap::new();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    for v in volumes {
        let dir = root.join(&v.name);
        if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(|e| io(&p, e))?,
                "Directory" if !p.is_dir() => {
                    return Err(VolumeError(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    )))
                }
                "File" if !p.is_file() => {
                    return Err(VolumeError(format!(
                        "hostPath type check failed: {} is not a file",
                        h.path
                    )))
                }
                "FileOrCreate" if !p.exists() => std::fs::write(&p, b"").map_err(|e| io(&p, e))?,
                _ => {}
            }
            out.insert(v.name.clone(), p);
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if v.empty_dir.is_some() {
            // Nothing to fill.
        } else if let Some(c) = &v.config_map {
            let name = c.name.as_str();
            match config_map_entries(ctx, ns, name).await? {
                Some(entries) => project(
                    &dir,
                    &entries,
                    c.items.as_ref(),
                    c.default_mode,
                    &format!("configmap {ns}/{name}"),
                    c.optional == Some(true),
                )?,
                None if c.optional == Some(true) => {}
                None => return Err(VolumeError(format!("configmap \"{name}\" not found"))),
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match secret_entries(ctx, ns, &name).await? {
                Some(entries) => project(
                    &dir,
                    &entries,
                    s.items.as_ref(),
                    s.default_mode,
                    &format!("secret {ns}/{name}"),
                    s.optional == Some(true),
                )?,
                None if s.optional == Some(true) => {}
                None => return Err(VolumeError(format!("secret \"{name}\" not found"))),
            }
        } else if let Some(d) = &v.downward_api {
            downward(
                ctx,
                pod,
                pod_ip,
                &dir,
                d.items.as_deref().unwrap_or(&[]),
                d.default_mode,
            )?;
        } else if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                if let Some(c) = &source.config_map {
                    let name = c.name.as_str();
                    match config_map_entries(ctx, ns, name).await? {
                        Some(entries) => project(
                            &dir,
                            &entries,
                            c.items.as_ref(),
                            p.default_mode,
                            &format!("configmap {ns}/{name}"),
                            c.optional == Some(true),
                        )?,
                        None if c.optional == Some(true) => {}
                        None => return Err(VolumeError(format!("configmap \"{name}\" not found"))),
                    }
                }
                if let Some(s) = &source.secret {
                    let name = s.name.as_str();
                    match secret_entries(ctx, ns, name).await? {
                        Some(entries) => project(
                            &dir,
                            &entries,
                            s.items.as_ref(),
                            p.default_mode,
                            &format!("secret {ns}/{name}"),
                            s.optional == Some(true),
                        )?,
                        None if s.optional == Some(true) => {}
                        None => return Err(VolumeError(format!("secret \"{name}\" not found"))),
                    }
                }
                if let Some(d) = &source.downward_api {
                    downward(
                        ctx,
                        pod,
                        pod_ip,
                        &dir,
                        d.items.as_deref().unwrap_or(&[]),
                        p.default_mode,
                    )?;
                }
                if source.service_account_token.is_some() {
                    tracing::debug!(volume = %v.name, "service account tokens are not issued yet; the projected file is left out");
                }
            }
        } else {
            return Err(VolumeError(format!(
                "volume {:?} has a type this node does not support",
                v.name
            )));
        }
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}
