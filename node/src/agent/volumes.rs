//! Volumes as directories: emptyDir, configMap, secret, downwardAPI, projected (with
//! service account tokens), hostPath.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use keelson_core::client::Api;
use keelson_core::k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::env::{field_ref, resource_field};
use super::{tokens, NodeCtx};

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

/// The files of a volume made from objects, as one pass writes them: each file is
/// replaced atomically, and [`Files::prune`] then removes what the pass did not write (a
/// key no longer in its ConfigMap), so the directory holds exactly the projection.
struct Files {
    dir: PathBuf,
    written: HashSet<PathBuf>,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_owned(),
            written: HashSet::new(),
        }
    }

    fn write(&mut self, rel: &str, data: &[u8], mode: Option<i32>) -> Result<(), VolumeError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(safe_rel(rel)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let tmp = path.with_extension("keelson-tmp");
        std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
        if let Some(m) = mode {
            let _ =
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode((m as u32) & 0o777));
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        self.written.insert(path);
        Ok(())
    }

    /// Removes the files (and then empty directories) this pass did not write.
    fn prune(self) {
        fn walk(dir: &Path, keep: &HashSet<PathBuf>) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            let mut empty = true;
            for entry in entries.flatten() {
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    if walk(&path, keep) {
                        let _ = std::fs::remove_dir(&path);
                    } else {
                        empty = false;
                    }
                } else if keep.contains(&path) {
                    empty = false;
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            empty
        }
        walk(&self.dir, &self.written);
    }
}

/// Writes `entries` (key → bytes) per `items` (all keys when `None`).
fn project(
    files: &mut Files,
    entries: &HashMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
    optional: bool,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (k, v) in entries {
                files.write(k, v, default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match entries.get(&item.key) {
                    Some(v) => files.write(&item.path, v, item.mode.or(default_mode))?,
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
    files: &mut Files,
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
        files.write(&item.path, value.as_bytes(), item.mode.or(default_mode))?;
    }
    Ok(())
}

/// Makes a pod's volumes under `root` (its volumes directory); returns each volume's
/// directory. Called again on a running pod to bring the volumes made from objects
/// (configMap, secret, downwardAPI, projected) up to date: files are rewritten in place,
/// each atomically, and a projected token is asked for again only when it is due.
///
/// # Errors
/// The first volume that cannot be made, named as kubelet names it
/// (`for volume "config" : configmap "settings" not found`).
pub(crate) async fn prepare(
    ctx: &NodeCtx,
    pod: &Pod,
    pod_ip: &str,
    root: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let mut out = HashMap::new();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    for v in volumes {
        let dir = prepare_one(ctx, pod, pod_ip, root, v)
            .await
            .map_err(|e| VolumeError(format!("for volume {:?} : {}", v.name, e.0)))?;
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// Where a volume's files come from: a ConfigMap or a Secret.
#[derive(Clone, Copy)]
enum Object {
    ConfigMap,
    Secret,
}

/// Projects the keys of the ConfigMap or Secret `name` (all, or `items`) into `files`;
/// a missing object is an error unless `optional`.
#[allow(clippy::too_many_arguments)]
async fn project_object(
    ctx: &NodeCtx,
    ns: &str,
    files: &mut Files,
    object: Object,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<(), VolumeError> {
    let optional = optional == Some(true);
    let (entries, kind) = match object {
        Object::ConfigMap => (config_map_entries(ctx, ns, name).await?, "configmap"),
        Object::Secret => (secret_entries(ctx, ns, name).await?, "secret"),
    };
    match entries {
        Some(entries) => project(
            files,
            &entries,
            items,
            default_mode,
            &format!("{kind} {ns}/{name}"),
            optional,
        ),
        None if optional => Ok(()),
        None => Err(VolumeError(format!("{kind} \"{name}\" not found"))),
    }
}

async fn prepare_one(
    ctx: &NodeCtx,
    pod: &Pod,
    pod_ip: &str,
    root: &Path,
    v: &Volume,
) -> Result<PathBuf, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
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
        return Ok(p);
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    if v.empty_dir.is_some() {
        // Nothing to fill.
        return Ok(dir);
    }
    let mut files = Files::new(&dir);
    if let Some(c) = &v.config_map {
        let (items, mode) = (c.items.as_ref(), c.default_mode);
        project_object(
            ctx,
            ns,
            &mut files,
            Object::ConfigMap,
            &c.name,
            items,
            mode,
            c.optional,
        )
        .await?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.as_deref().unwrap_or_default();
        let (items, mode) = (s.items.as_ref(), s.default_mode);
        project_object(
            ctx,
            ns,
            &mut files,
            Object::Secret,
            name,
            items,
            mode,
            s.optional,
        )
        .await?;
    } else if let Some(d) = &v.downward_api {
        downward(
            ctx,
            pod,
            pod_ip,
            &mut files,
            d.items.as_deref().unwrap_or(&[]),
            d.default_mode,
        )?;
    } else if let Some(p) = &v.projected {
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                let (items, mode) = (c.items.as_ref(), p.default_mode);
                project_object(
                    ctx,
                    ns,
                    &mut files,
                    Object::ConfigMap,
                    &c.name,
                    items,
                    mode,
                    c.optional,
                )
                .await?;
            }
            if let Some(s) = &source.secret {
                let (items, mode) = (s.items.as_ref(), p.default_mode);
                project_object(
                    ctx,
                    ns,
                    &mut files,
                    Object::Secret,
                    &s.name,
                    items,
                    mode,
                    s.optional,
                )
                .await?;
            }
            if let Some(d) = &source.downward_api {
                downward(
                    ctx,
                    pod,
                    pod_ip,
                    &mut files,
                    d.items.as_deref().unwrap_or(&[]),
                    p.default_mode,
                )?;
            }
            if let Some(t) = &source.service_account_token {
                let seconds = t
                    .expiration_seconds
                    .unwrap_or(tokens::DEFAULT_EXPIRATION_SECONDS);
                let token = ctx
                    .tokens
                    .token(&ctx.client, pod, t.audience.as_deref(), seconds)
                    .await
                    .map_err(|e| VolumeError(e.0))?;
                files.write(&t.path, token.as_bytes(), p.default_mode)?;
            }
        }
    } else {
        return Err(VolumeError(
            "the volume has a type this node does not support".into(),
        ));
    }
    files.prune();
    Ok(dir)
}
