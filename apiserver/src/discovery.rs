//! `/version` and the discovery documents, built from the list of served resources.
//!
//! Clients learn what a server offers from these documents before they do anything else:
//! kubectl maps `po` to `pods` and `get all` to a list of kinds from them, kube-rs and the
//! Python client read them to find a kind's plural and scope. Every function here is pure
//! and deterministic, so the REST layer can build each document once and cache it.
//!
//! | Request | Function | Document |
//! |---|---|---|
//! | `GET /version` | [`version`] | `version.Info` (`"minor":"33"`) |
//! | `GET /api`, aggregated Accept | [`aggregated_core`] | `APIGroupDiscoveryList` v2, one group named `""` |
//! | `GET /apis`, aggregated Accept | [`aggregated_groups`] | `APIGroupDiscoveryList` v2, the named groups |
//! | `GET /api` | [`legacy_api_versions`] | `APIVersions` |
//! | `GET /apis` | [`legacy_group_list`] | `APIGroupList` |
//! | `GET /apis/<group>` | [`group`] | `APIGroup` |
//! | `GET /api/v1`, `GET /apis/<group>/<version>` | [`resource_list`] | `APIResourceList` |
//!
//! **Aggregated or legacy.** kubectl asks `/api` and `/apis` with
//! `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...,application/json`
//! and recognises the aggregated form only by the reply's Content-Type, which must be
//! [`AGGREGATED_CONTENT_TYPE`]. [`wants_aggregated`] decides from the Accept header. The
//! legacy `/api/v1` list is needed even so: `kubectl drain` and `auth can-i` read it
//! directly.
//!
//! **Order.** Groups appear in the order their first resource appears in the served list
//! (the core group is always served apart, at `/api`); resources keep their served order.
//! A group's versions are listed by Kubernetes' version priority (`v2`, `v1`, `v1beta2`,
//! `v1beta1`, `v1alpha1`, then anything else alphabetically); the first is the preferred
//! one.
//!
//! ```
//! use keelson_apiserver::{discovery, resources};
//!
//! let served = resources::builtin();
//! let core = discovery::aggregated_core(&served);
//! assert_eq!(core["items"][0]["metadata"]["name"], "");
//! let pods = discovery::resource_list(&served, "", "v1").expect("v1 is served");
//! assert!(pods["resources"].as_array().expect("a list").iter().any(|r| r["name"] == "pods/status"));
//! ```

use std::cmp::Ordering;

use keelson_core::GroupVersionKind;
use serde_json::{json, Map, Value};

use crate::resources::{ServedResource, Subresource};

/// The Kubernetes major version Keelson serves.
pub const MAJOR: &str = "1";

/// The Kubernetes minor version Keelson serves. kubectl's dispatcher on these machines runs
/// the kubectl whose minor version matches this.
pub const MINOR: &str = "33";

/// The `gitVersion` `/version` reports: the Kubernetes release whose API Keelson serves,
/// with `keelson` as semver build metadata (as k3s does with `+k3s1`).
pub const GIT_VERSION: &str = "v1.33.0+keelson";

/// The Content-Type of an aggregated discovery reply, `APIGroupDiscoveryList` in
/// `apidiscovery.k8s.io/v2`. Clients recognise the aggregated form only by it.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `GET /version`: the `version.Info` object.
///
/// `major`/`minor` say Kubernetes 1.33, which is what clients branch on; the build fields
/// describe Keelson itself (`gitCommit` is `keelson-<crate version>`, `compiler` is
/// `rustc`, `platform` the target this server was built for). `buildDate` is fixed, so
/// the document is the same on every call.
pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "emulationMajor": MAJOR,
        "emulationMinor": MINOR,
        "minCompatibilityMajor": MAJOR,
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": concat!("keelson-", env!("CARGO_PKG_VERSION")),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (rust)",
        "compiler": "rustc",
        "platform": platform(),
    })
}

/// `os/arch` in Go's spelling (`linux/amd64`, `darwin/arm64`).
fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// Whether a request with this `Accept` header should get aggregated discovery
/// (`APIGroupDiscoveryList` v2, sent with [`AGGREGATED_CONTENT_TYPE`]) rather than the
/// legacy `APIVersions`/`APIGroupList`.
///
/// The header is a comma-separated list of media types whose parameters may come in any
/// order. As Kubernetes does, the media types are taken by preference (`q`, highest
/// first, then as written); the first one the server can answer decides: the aggregated
/// v2 form gives `true`; plain `application/json`, `application/*` or `*/*` gives `false`.
/// Media types the server cannot answer here (protobuf, `v2beta1`, `as=Table`) are
/// skipped, so a client that accepts only `v2beta1` gets the legacy documents, which it
/// also understands. An absent or empty header means JSON, so `false`.
///
/// ```
/// use keelson_apiserver::discovery::wants_aggregated;
///
/// let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
///                application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
///                application/json";
/// assert!(wants_aggregated(kubectl));
/// assert!(!wants_aggregated("application/json, */*"));
/// ```
pub fn wants_aggregated(accept: &str) -> bool {
    let mut clauses: Vec<(f32, MediaRange<'_>)> = accept
        .split(',')
        .filter_map(MediaRange::parse)
        .map(|range| (range.quality(), range))
        .filter(|(q, _)| *q > 0.0)
        .collect();
    // A stable sort keeps the client's order among equal preferences.
    clauses.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
    for (_, range) in &clauses {
        if range.is_aggregated_v2() {
            return true;
        }
        if range.is_plain_json() {
            return false;
        }
    }
    false
}

/// One media range of an Accept header: `type/subtype;name=value;...`.
struct MediaRange<'a> {
    essence: String,
    params: Vec<(String, &'a str)>,
}

impl<'a> MediaRange<'a> {
    fn parse(clause: &'a str) -> Option<Self> {
        let mut parts = clause.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        if essence.is_empty() {
            return None;
        }
        let params = parts
            .filter_map(|p| {
                let (name, value) = p.split_once('=')?;
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                Some((name.trim().to_ascii_lowercase(), value))
            })
            .collect();
        Some(Self { essence, params })
    }

    fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| *value)
    }

    fn quality(&self) -> f32 {
        self.param("q").map_or(1.0, |q| q.parse().unwrap_or(0.0))
    }

    /// Whether `q` is its only parameter.
    fn has_only_q(&self) -> bool {
        self.params.iter().all(|(n, _)| n == "q")
    }

    fn is_aggregated_v2(&self) -> bool {
        self.essence == "application/json"
            && self.param("g") == Some("apidiscovery.k8s.io")
            && self.param("v") == Some("v2")
            && self.param("as") == Some("APIGroupDiscoveryList")
    }

    fn is_plain_json(&self) -> bool {
        matches!(
            self.essence.as_str(),
            "application/json" | "application/*" | "*/*"
        ) && self.has_only_q()
    }
}

/// `GET /api` with an aggregated Accept header: an `APIGroupDiscoveryList` (v2) holding
/// the core group, whose `metadata.name` is `""`.
///
/// Each resource has a `responseKind`, `scope`, `singularResource`, `verbs`, and, when it
/// has any, `shortNames`, `categories` and `subresources` (each with its own
/// `responseKind`); every version is `"freshness": "Current"`. A client drops entries
/// without a `responseKind` and whole versions that are not `Current`.
pub fn aggregated_core(served: &[ServedResource]) -> Value {
    let items: Vec<Value> = groups_of(served)
        .into_iter()
        .filter(|g| g.name.is_empty())
        .map(|g| aggregated_group(&g))
        .collect();
    aggregated_list(items)
}

/// `GET /apis` with an aggregated Accept header: an `APIGroupDiscoveryList` (v2) of every
/// named group, each named by `metadata.name`; its first version is the preferred one.
/// Entries are as in [`aggregated_core`].
pub fn aggregated_groups(served: &[ServedResource]) -> Value {
    let items: Vec<Value> = groups_of(served)
        .into_iter()
        .filter(|g| !g.name.is_empty())
        .map(|g| aggregated_group(&g))
        .collect();
    aggregated_list(items)
}

fn aggregated_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_group(group: &Group<'_>) -> Value {
    let versions: Vec<Value> = group
        .versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> =
                v.resources.iter().map(|r| aggregated_resource(r)).collect();
            json!({"version": v.name, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group.name}, "versions": versions})
}

fn aggregated_resource(served: &ServedResource) -> Value {
    let rt = &served.rt;
    let mut entry = Map::new();
    entry.insert("resource".into(), json!(rt.plural));
    entry.insert("responseKind".into(), gvk_value(&rt.gvk()));
    entry.insert("scope".into(), json!(rt.scope.as_str()));
    entry.insert("singularResource".into(), json!(rt.singular));
    entry.insert("verbs".into(), json!(served.verbs));
    insert_nonempty(&mut entry, "shortNames", &rt.short_names);
    insert_nonempty(&mut entry, "categories", &rt.categories);
    if !served.subresources.is_empty() {
        let subresources: Vec<Value> = served
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": gvk_value(&s.kind),
                    "verbs": s.verbs,
                })
            })
            .collect();
        entry.insert("subresources".into(), Value::Array(subresources));
    }
    Value::Object(entry)
}

fn gvk_value(gvk: &GroupVersionKind) -> Value {
    json!({"group": gvk.group, "version": gvk.version, "kind": gvk.kind})
}

fn insert_nonempty<T: serde::Serialize>(entry: &mut Map<String, Value>, key: &str, items: &[T]) {
    if !items.is_empty() {
        entry.insert(key.into(), json!(items));
    }
}

/// `GET /api` without an aggregated Accept header: `APIVersions`, listing `v1`.
///
/// `serverAddressByClientCIDRs` is empty: clients do not use it, and a pure function does
/// not know the address it is served on.
pub fn legacy_api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

/// `GET /apis` without an aggregated Accept header: `APIGroupList`, each group with its
/// versions and `preferredVersion`.
pub fn legacy_group_list(served: &[ServedResource]) -> Value {
    let groups: Vec<Value> = groups_of(served)
        .iter()
        .filter(|g| !g.name.is_empty())
        .map(legacy_group)
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`: the `APIGroup`, or `None` when no resource of that group is served
/// (and for the core group `""`, which is served at `/api`).
pub fn group(served: &[ServedResource], group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    let found = groups_of(served).into_iter().find(|g| g.name == group)?;
    let mut value = legacy_group(&found);
    value["kind"] = json!("APIGroup");
    value["apiVersion"] = json!("v1");
    Some(value)
}

fn legacy_group(group: &Group<'_>) -> Value {
    let version = |v: &str| json!({"groupVersion": format!("{}/{v}", group.name), "version": v});
    let versions: Vec<Value> = group.versions.iter().map(|v| version(v.name)).collect();
    let preferred = group.versions.first().map(|v| version(v.name));
    json!({"name": group.name, "versions": versions, "preferredVersion": preferred})
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`: the `APIResourceList` of that
/// group-version, or `None` when nothing is served there.
///
/// Each resource has `name`, `singularName`, `namespaced`, `kind`, `verbs`, and, when it
/// has any, `shortNames` and `categories`. Each subresource follows its resource as
/// `<plural>/<subresource>` (`pods/status`) with an empty `singularName`; a subresource
/// whose kind is in another group-version also says `group` and `version`, as
/// `pods/eviction` does (`policy/v1 Eviction`) — `kubectl drain` evicts only when it finds
/// that entry.
pub fn resource_list(served: &[ServedResource], group: &str, version: &str) -> Option<Value> {
    let in_version: Vec<&ServedResource> = served
        .iter()
        .filter(|s| s.rt.group == group && s.rt.version == version)
        .collect();
    if in_version.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for s in in_version {
        let rt = &s.rt;
        let mut entry = Map::new();
        entry.insert("name".into(), json!(rt.plural));
        entry.insert("singularName".into(), json!(rt.singular));
        entry.insert("namespaced".into(), json!(rt.is_namespaced()));
        entry.insert("kind".into(), json!(rt.kind));
        entry.insert("verbs".into(), json!(s.verbs));
        insert_nonempty(&mut entry, "shortNames", &rt.short_names);
        insert_nonempty(&mut entry, "categories", &rt.categories);
        resources.push(Value::Object(entry));
        for sub in &s.subresources {
            resources.push(legacy_subresource(s, sub));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GroupVersionKind::new(group, version, "").api_version(),
        "resources": resources,
    }))
}

fn legacy_subresource(parent: &ServedResource, sub: &Subresource) -> Value {
    let mut entry = Map::new();
    entry.insert(
        "name".into(),
        json!(format!("{}/{}", parent.rt.plural, sub.name)),
    );
    entry.insert("singularName".into(), json!(""));
    entry.insert("namespaced".into(), json!(parent.rt.is_namespaced()));
    if sub.kind.group != parent.rt.group || sub.kind.version != parent.rt.version {
        entry.insert("group".into(), json!(sub.kind.group));
        entry.insert("version".into(), json!(sub.kind.version));
    }
    entry.insert("kind".into(), json!(sub.kind.kind));
    entry.insert("verbs".into(), json!(sub.verbs));
    Value::Object(entry)
}

/// The served resources of one API group, by version.
struct Group<'a> {
    name: &'a str,
    /// By version priority: the first is the preferred version.
    versions: Vec<Version<'a>>,
}

struct Version<'a> {
    name: &'a str,
    resources: Vec<&'a ServedResource>,
}

/// Groups in order of first appearance, versions by priority, resources in served order.
fn groups_of(served: &[ServedResource]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for s in served {
        let index = match groups.iter().position(|g| g.name == s.rt.group) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    name: &s.rt.group,
                    versions: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let versions = &mut groups[index].versions;
        match versions.iter_mut().find(|v| v.name == s.rt.version) {
            Some(v) => v.resources.push(s),
            None => versions.push(Version {
                name: &s.rt.version,
                resources: vec![s],
            }),
        }
    }
    for g in &mut groups {
        g.versions
            .sort_by(|a, b| compare_version_priority(a.name, b.name));
    }
    groups
}

/// Orders API versions as Kubernetes prefers them: GA before beta before alpha, higher
/// numbers first within each (`v2`, `v1`, `v11beta2`, `v10beta3`, `v3beta1`, `v12alpha1`),
/// and versions of another shape after all those, alphabetically.
fn compare_version_priority(a: &str, b: &str) -> Ordering {
    match (parse_kube_version(a), parse_kube_version(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// `v<major>[(alpha|beta)<minor>]` as a sortable key: (stability, major, minor), where a
/// larger key is preferred.
fn parse_kube_version(v: &str) -> Option<(u8, u64, u64)> {
    let rest = v.strip_prefix('v')?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let major: u64 = rest[..digits].parse().ok().filter(|m| *m > 0)?;
    let tail = &rest[digits..];
    if tail.is_empty() {
        return Some((2, major, 0));
    }
    let (stability, minor) = if let Some(m) = tail.strip_prefix("beta") {
        (1, m)
    } else {
        (0, tail.strip_prefix("alpha")?)
    };
    let minor: u64 = minor.parse().ok().filter(|m| *m > 0)?;
    Some((stability, major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtin;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

    const KUBECTL_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    fn resource<'a>(list: &'a Value, name: &str) -> &'a Value {
        list.as_array()
            .expect("an array")
            .iter()
            .find(|r| r["resource"] == name || r["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed"))
    }

    fn item<'a>(list: &'a Value, group: &str) -> &'a Value {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["metadata"]["name"] == group)
            .unwrap_or_else(|| panic!("group {group:?} is listed"))
    }

    #[test]
    fn version_reports_kubernetes_1_33() {
        let v = version();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        assert!(v["gitVersion"]
            .as_str()
            .expect("a string")
            .starts_with("v1.33."));
        let info: k8s_openapi::apimachinery::pkg::version::Info =
            serde_json::from_value(v).expect("a version.Info");
        assert_eq!(info.minor, "33");
        assert!(info.platform.contains('/'));
    }

    #[test]
    fn aggregated_discovery_describes_pods_fully() {
        let core = aggregated_core(&builtin());
        assert_eq!(core["kind"], "APIGroupDiscoveryList");
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        let v1 = &core["items"][0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        assert_eq!(v1["freshness"], "Current");
        let pods = resource(&v1["resources"], "pods");
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert!(pods["verbs"]
            .as_array()
            .expect("verbs")
            .contains(&json!("watch")));
        let status = &pods["subresources"][0];
        assert_eq!(status["subresource"], "status");
        assert_eq!(
            status["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
    }

    #[test]
    fn aggregated_core_holds_only_the_group_named_empty() {
        let core = aggregated_core(&builtin());
        let items = core["items"].as_array().expect("items");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "");
    }

    #[test]
    fn every_aggregated_entry_has_a_response_kind_and_current_freshness() {
        let served = builtin();
        for list in [aggregated_core(&served), aggregated_groups(&served)] {
            for item in list["items"].as_array().expect("items") {
                for version in item["versions"].as_array().expect("versions") {
                    assert_eq!(version["freshness"], "Current");
                    for r in version["resources"].as_array().expect("resources") {
                        assert_ne!(r["responseKind"]["kind"], "", "{r}");
                        assert!(r["responseKind"]["kind"].is_string(), "{r}");
                        for s in r["subresources"].as_array().into_iter().flatten() {
                            assert!(s["responseKind"]["kind"].is_string(), "{s}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn aggregated_groups_list_apps_with_deployments_and_no_core_group() {
        let groups = aggregated_groups(&builtin());
        assert!(groups["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["metadata"]["name"] != ""));
        let apps = item(&groups, "apps");
        let deployments = resource(&apps["versions"][0]["resources"], "deployments");
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        assert_eq!(deployments["responseKind"]["group"], "apps");
    }

    #[test]
    fn the_preferred_version_is_listed_first() {
        use keelson_core::{ResourceType, Scope};
        let widget = |version: &'static str| {
            let mut w = ServedResource::new(
                ResourceType::new(
                    "example.com",
                    version,
                    "Widget",
                    "widgets",
                    Scope::Namespaced,
                ),
                json!({}),
            );
            w.verbs = vec!["get".into()];
            w
        };
        let served = vec![
            widget("v1beta1"),
            widget("v2alpha1"),
            widget("v1"),
            widget("v2"),
        ];
        let groups = aggregated_groups(&served);
        let versions: Vec<&Value> = item(&groups, "example.com")["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| &v["version"])
            .collect();
        assert_eq!(versions, ["v2", "v1", "v1beta1", "v2alpha1"]);
        let legacy = group(&served, "example.com").expect("served");
        assert_eq!(legacy["preferredVersion"]["groupVersion"], "example.com/v2");
    }

    #[test]
    fn version_priority_follows_kubernetes() {
        let mut versions = vec![
            "v1alpha1",
            "foo",
            "v11beta2",
            "v1",
            "v10beta3",
            "v2",
            "v3beta1",
            "v12alpha1",
            "bar",
        ];
        versions.sort_by(|a, b| compare_version_priority(a, b));
        assert_eq!(
            versions,
            [
                "v2",
                "v1",
                "v11beta2",
                "v10beta3",
                "v3beta1",
                "v12alpha1",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }

    #[test]
    fn kubectls_accept_header_wants_aggregated_discovery() {
        assert!(wants_aggregated(KUBECTL_ACCEPT));
        assert!(wants_aggregated(
            "application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io"
        ));
        assert!(wants_aggregated(
            "application/json;q=0.9, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn plain_json_preferred_before_aggregated_gets_legacy_discovery() {
        assert!(!wants_aggregated(
            "application/json, application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList; q=1.0"
        ));
    }

    #[test]
    fn plain_json_and_other_forms_do_not_want_aggregated_discovery() {
        assert!(!wants_aggregated("application/json"));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(""));
        assert!(!wants_aggregated("*/*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0,application/json"
        ));
    }

    #[test]
    fn legacy_resource_list_for_v1_includes_pods_status() {
        let list = resource_list(&builtin(), "", "v1").expect("v1 is served");
        assert_eq!(list["kind"], "APIResourceList");
        assert_eq!(list["groupVersion"], "v1");
        let resources = &list["resources"];
        let pods = resource(resources, "pods");
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        let status = resource(resources, "pods/status");
        assert_eq!(status["kind"], "Pod");
        assert!(status.get("group").is_none());
        let parsed: meta::APIResourceList =
            serde_json::from_value(list).expect("an APIResourceList");
        assert!(parsed
            .resources
            .iter()
            .any(|r| r.name == "nodes" && !r.namespaced));
    }

    #[test]
    fn a_subresource_of_another_group_names_its_group_and_version() {
        // What `kubectl drain` looks for before it evicts.
        let list = resource_list(&builtin(), "", "v1").expect("v1 is served");
        assert_eq!(
            resource(&list["resources"], "pods/eviction"),
            &json!({"name": "pods/eviction", "singularName": "", "group": "policy", "version": "v1",
                    "kind": "Eviction", "namespaced": true, "verbs": ["create"]})
        );
        let apps = resource_list(&builtin(), "apps", "v1").expect("apps/v1 is served");
        assert_eq!(
            resource(&apps["resources"], "deployments/scale")["group"],
            "autoscaling"
        );
    }

    #[test]
    fn legacy_group_documents_parse_as_kubernetes_types() {
        let served = builtin();
        let versions: meta::APIVersions =
            serde_json::from_value(legacy_api_versions()).expect("APIVersions");
        assert_eq!(versions.versions, ["v1"]);
        let list: meta::APIGroupList =
            serde_json::from_value(legacy_group_list(&served)).expect("APIGroupList");
        let apps = list.groups.iter().find(|g| g.name == "apps").expect("apps");
        assert_eq!(
            apps.preferred_version
                .as_ref()
                .map(|v| v.group_version.as_str()),
            Some("apps/v1")
        );
        assert!(list.groups.iter().all(|g| !g.name.is_empty()));
        let value = group(&served, "apps").expect("apps is served");
        assert_eq!(value["kind"], "APIGroup");
        let apps: meta::APIGroup = serde_json::from_value(value).expect("APIGroup");
        assert_eq!(apps.versions[0].version, "v1");
        assert!(group(&served, "").is_none());
        assert!(group(&served, "nope.example.com").is_none());
        assert!(resource_list(&served, "apps", "v1beta1").is_none());
    }
}
