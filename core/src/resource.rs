//! The `Resource` trait, the run-time `ResourceType` descriptor and store keys.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{quote, Error};
use crate::fields;
use crate::gvk::{join_api_version, GroupKind, GroupResource, GroupVersionKind};

/// The root under which every object is stored.
pub const KEY_ROOT: &str = "/registry";

/// The group segment of store keys for the core (empty) API group.
pub const CORE_GROUP_SEGMENT: &str = "core";

/// Whether objects of a kind live in a namespace or belong to the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Objects live in a namespace (Pods, Services, Deployments, ...).
    Namespaced,
    /// Objects belong to the cluster (Nodes, Namespaces, ClusterRoles, ...).
    Cluster,
}

impl Scope {
    /// `Namespaced` or `Cluster`, as Kubernetes discovery and CRDs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespaced => "Namespaced",
            Self::Cluster => "Cluster",
        }
    }

    /// Whether this is [`Scope::Namespaced`].
    pub fn is_namespaced(self) -> bool {
        self == Self::Namespaced
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run-time description of a kind of object: its names, its scope, and where its
/// objects are stored.
///
/// Every [`Resource`] has one ([`Resource::resource_type`]); kinds known only at run time
/// (custom resources registered through a CustomResourceDefinition) are described by
/// building one with [`ResourceType::new`].
///
/// ```
/// use keelson_core::{ResourceType, Scope};
///
/// let widgets = ResourceType::new("example.com", "v1", "Widget", "widgets", Scope::Namespaced)
///     .with_short_names(["wd"]);
/// assert_eq!(widgets.api_version(), "example.com/v1");
/// assert_eq!(widgets.singular, "widget");
/// assert_eq!(
///     widgets.key(Some("default"), "w1").unwrap(),
///     "/registry/example.com/widgets/default/w1"
/// );
/// assert_eq!(widgets.prefix(None).unwrap(), "/registry/example.com/widgets/");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ResourceType {
    /// The API group; empty for the core group.
    pub group: Cow<'static, str>,
    /// The API version within the group, such as `v1`.
    pub version: Cow<'static, str>,
    /// The kind, in CamelCase (`Deployment`).
    pub kind: Cow<'static, str>,
    /// The resource name used in URLs and keys: plural and lower-case (`deployments`).
    pub plural: Cow<'static, str>,
    /// The singular, lower-case name (`deployment`); by default the lower-cased kind.
    pub singular: Cow<'static, str>,
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// Short names that `kubectl` accepts (`deploy`).
    pub short_names: Vec<Cow<'static, str>>,
    /// Categories the resource belongs to (`all` makes `kubectl get all` list it).
    pub categories: Vec<Cow<'static, str>>,
    /// Fields, beyond `metadata.name` and `metadata.namespace`, that field selectors may
    /// use (`spec.nodeName` for pods). For kinds that are not built in, each is a dotted
    /// path into the object (as a CRD's `selectableFields`, without the leading dot).
    pub selectable_fields: Vec<Cow<'static, str>>,
    /// The columns `kubectl get` shows beyond the name (a CRD's
    /// `additionalPrinterColumns`); empty for built-in kinds, which have their own.
    pub printer_columns: Vec<PrinterColumn>,
}

/// A column of a kind's Table, as a CRD's `additionalPrinterColumns` declares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrinterColumn {
    /// The header (`Replicas`).
    pub name: String,
    /// The OpenAPI type: `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    /// An OpenAPI format hint (`int32`, `byte`, ...), or empty.
    pub format: String,
    /// What the column shows.
    pub description: String,
    /// 0 for `kubectl get`, more for `-o wide` only.
    pub priority: i32,
    /// A simple JSONPath into the object (`.spec.replicas`,
    /// `.status.conditions[?(@.type=="Ready")].status`).
    pub json_path: String,
}

impl ResourceType {
    /// Describes a kind. The singular name is the lower-cased kind; a built-in kind gets
    /// the selectable fields Kubernetes gives it.
    pub fn new(
        group: impl Into<Cow<'static, str>>,
        version: impl Into<Cow<'static, str>>,
        kind: impl Into<Cow<'static, str>>,
        plural: impl Into<Cow<'static, str>>,
        scope: Scope,
    ) -> Self {
        let (group, kind) = (group.into(), kind.into());
        let selectable_fields = fields::builtin_fields(&group, &kind)
            .iter()
            .map(|f| Cow::Borrowed(*f))
            .collect();
        Self {
            singular: Cow::Owned(kind.to_lowercase()),
            group,
            version: version.into(),
            kind,
            plural: plural.into(),
            scope,
            short_names: Vec::new(),
            categories: Vec::new(),
            selectable_fields,
            printer_columns: Vec::new(),
        }
    }

    /// The descriptor of a [`Resource`] type.
    pub fn of<K: Resource>() -> Self {
        K::resource_type()
    }

    /// Replaces the singular name.
    pub fn with_singular(mut self, singular: impl Into<Cow<'static, str>>) -> Self {
        self.singular = singular.into();
        self
    }

    /// Adds short names.
    pub fn with_short_names<S: Into<Cow<'static, str>>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        extend_unique(&mut self.short_names, names);
        self
    }

    /// Adds categories.
    pub fn with_categories<S: Into<Cow<'static, str>>>(
        mut self,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        extend_unique(&mut self.categories, categories);
        self
    }

    /// Adds selectable fields (see [`ResourceType::selectable_fields`]).
    pub fn with_selectable_fields<S: Into<Cow<'static, str>>>(
        mut self,
        fields: impl IntoIterator<Item = S>,
    ) -> Self {
        extend_unique(&mut self.selectable_fields, fields);
        self
    }

    /// The kind with the Table columns `kubectl get` shows after the name.
    pub fn with_printer_columns(mut self, columns: Vec<PrinterColumn>) -> Self {
        self.printer_columns = columns;
        self
    }

    /// The kinds a CustomResourceDefinition (as JSON) serves: one per served version,
    /// with its names, scope, selectable fields and printer columns, each paired with
    /// the version's own JSON (its schema and subresources). The API server installs
    /// them; controllers (the garbage collector) watch them.
    pub fn served_by_crd(crd: &serde_json::Value) -> Vec<(ResourceType, &serde_json::Value)> {
        use serde_json::Value;
        let text = |v: &Value, pointer: &str| -> String {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let strings = |pointer: &str| -> Vec<String> {
            crd.pointer(pointer)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        let scope = match crd.pointer("/spec/scope").and_then(Value::as_str) {
            Some("Cluster") => Scope::Cluster,
            _ => Scope::Namespaced,
        };
        let singular = text(crd, "/spec/names/singular");
        let versions = crd.pointer("/spec/versions").and_then(Value::as_array);
        versions
            .into_iter()
            .flatten()
            .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
            .map(|v| {
                let mut rt = ResourceType::new(
                    text(crd, "/spec/group"),
                    text(v, "/name"),
                    text(crd, "/spec/names/kind"),
                    text(crd, "/spec/names/plural"),
                    scope,
                )
                .with_short_names(strings("/spec/names/shortNames"))
                .with_categories(strings("/spec/names/categories"))
                .with_selectable_fields(
                    v.get("selectableFields")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                        .map(|p| p.trim_start_matches('.').to_owned()),
                );
                if !singular.is_empty() {
                    rt.singular = singular.clone().into();
                }
                let columns: Vec<PrinterColumn> = v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| PrinterColumn {
                        name: text(c, "/name"),
                        type_: text(c, "/type"),
                        format: text(c, "/format"),
                        description: text(c, "/description"),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                        json_path: text(c, "/jsonPath"),
                    })
                    .collect();
                if !columns.is_empty() {
                    rt = rt.with_printer_columns(columns);
                }
                (rt, v)
            })
            .collect()
    }

    /// The `apiVersion`: `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        join_api_version(&self.group, &self.version)
    }

    /// The group, version and kind.
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::new(&*self.group, &*self.version, &*self.kind)
    }

    /// The group and kind (`Deployment.apps`), as `Invalid` errors name it.
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(&*self.group, &*self.kind)
    }

    /// The group and plural resource (`deployments.apps`), as most errors name it.
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&*self.group, &*self.plural)
    }

    /// The kind of a list of these objects (`DeploymentList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether objects of this kind live in namespaces.
    pub fn is_namespaced(&self) -> bool {
        self.scope.is_namespaced()
    }

    /// The group's segment in store keys: the group, or `core` for the core group.
    pub fn group_segment(&self) -> &str {
        if self.group.is_empty() {
            CORE_GROUP_SEGMENT
        } else {
            &self.group
        }
    }

    /// The store key of one object: `/registry/<group>/<plural>/<namespace>/<name>`, or
    /// `/registry/<group>/<plural>/<name>` for a cluster-scoped kind. The core group is
    /// written `core`. An empty namespace counts as none.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when a namespaced kind gets no namespace, a cluster-scoped
    /// kind gets one, or the name or namespace is empty, `.`, `..`, or contains `/` or `%`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> Result<String, Error> {
        let mut key = self.prefix(namespace)?;
        if self.is_namespaced() && namespace.is_none_or(str::is_empty) {
            return Err(Error::bad_request("Namespace parameter required."));
        }
        check_segment("Name", name)?;
        key.push_str(name);
        Ok(key)
    }

    /// The key prefix under which [`key`](Self::key) stores objects, ending with `/`:
    /// all objects of the kind with no namespace (`/registry/core/pods/`), those of one
    /// namespace with one (`/registry/core/pods/default/`).
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when a cluster-scoped kind gets a namespace or the namespace
    /// is not a valid path segment.
    pub fn prefix(&self, namespace: Option<&str>) -> Result<String, Error> {
        let group = self.group_segment();
        // Room for a namespace and a name: `key` appends to this without growing it.
        let mut prefix =
            String::with_capacity(KEY_ROOT.len() + group.len() + self.plural.len() + 3 + 128);
        for part in [KEY_ROOT, "/", group, "/", &self.plural, "/"] {
            prefix.push_str(part);
        }
        match namespace.filter(|ns| !ns.is_empty()) {
            None => {}
            Some(ns) if !self.is_namespaced() => {
                return Err(Error::bad_request(format!(
                    "{} is cluster-scoped and cannot be in a namespace (got {})",
                    self.group_resource(),
                    quote(ns)
                )));
            }
            Some(ns) => {
                check_segment("Namespace", ns)?;
                prefix.push_str(ns);
                prefix.push('/');
            }
        }
        Ok(prefix)
    }

    /// Splits a key made by [`key`](Self::key) back into its namespace and name; `None`
    /// when the key is not the key of one object of this kind.
    pub fn parse_key<'k>(&self, key: &'k str) -> Option<(Option<&'k str>, &'k str)> {
        let rest = key
            .strip_prefix(KEY_ROOT)?
            .strip_prefix('/')?
            .strip_prefix(self.group_segment())?
            .strip_prefix('/')?
            .strip_prefix(&*self.plural)?
            .strip_prefix('/')?;
        let (namespace, name) = if self.is_namespaced() {
            let (ns, name) = rest.split_once('/')?;
            (Some(ns), name)
        } else {
            (None, rest)
        };
        let valid = |s: &str| segment_problems(s).is_empty();
        (namespace.is_none_or(valid) && valid(name)).then_some((namespace, name))
    }
}

impl fmt::Display for ResourceType {
    /// `deployments.apps/v1` style: the plural resource qualified by group, then version.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group_resource(), self.version)
    }
}

impl From<&ResourceType> for GroupResource {
    fn from(rt: &ResourceType) -> Self {
        rt.group_resource()
    }
}

impl From<&ResourceType> for GroupKind {
    fn from(rt: &ResourceType) -> Self {
        rt.group_kind()
    }
}

fn extend_unique<S: Into<Cow<'static, str>>>(
    list: &mut Vec<Cow<'static, str>>,
    items: impl IntoIterator<Item = S>,
) {
    for item in items {
        let item = item.into();
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// What makes a string unusable as a path segment (a name or namespace), in Kubernetes'
/// words; empty when it is fine.
fn segment_problems(segment: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if segment.is_empty() {
        problems.push("may not be empty".to_owned());
    }
    for bad in [".", ".."] {
        if segment == bad {
            problems.push(format!("may not be '{bad}'"));
        }
    }
    for bad in ["/", "%"] {
        if segment.contains(bad) {
            problems.push(format!("may not contain '{bad}'"));
        }
    }
    problems
}

fn check_segment(what: &str, segment: &str) -> Result<(), Error> {
    if segment.is_empty() {
        return Err(Error::bad_request(format!("{what} parameter required.")));
    }
    if !matches!(segment, "." | "..") && !segment.contains(['/', '%']) {
        return Ok(());
    }
    let problems = segment_problems(segment);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "{what} parameter invalid: {}: {}",
            quote(segment),
            problems.join(";")
        )))
    }
}

/// A Rust type that is a Kubernetes-style kind: it serializes to the object's JSON form,
/// has a JSON schema, and carries an `ObjectMeta`.
///
/// Implemented for the built-in kinds of [`k8s_openapi`] (see
/// [`builtin_resource_types`](crate::builtin_resource_types)) and, with
/// [`impl_resource!`](crate::impl_resource), in one line for your own types.
///
/// ```
/// use keelson_core::{Resource, Scope, k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod}};
///
/// assert_eq!((Pod::GROUP, Pod::VERSION, Pod::PLURAL), ("", "v1", "pods"));
/// assert_eq!(Deployment::api_version(), "apps/v1");
/// assert_eq!(Deployment::SCOPE, Scope::Namespaced);
/// ```
pub trait Resource:
    Serialize + DeserializeOwned + schemars::JsonSchema + Clone + Send + Sync + 'static
{
    /// The API group; empty for the core group.
    const GROUP: &'static str;
    /// The API version within the group.
    const VERSION: &'static str;
    /// The kind, in CamelCase.
    const KIND: &'static str;
    /// The plural, lower-case resource name used in URLs and store keys.
    const PLURAL: &'static str;
    /// Namespaced or cluster-scoped.
    const SCOPE: Scope;

    /// The `apiVersion`: `VERSION` for the core group, `GROUP/VERSION` otherwise.
    fn api_version() -> Cow<'static, str> {
        if Self::GROUP.is_empty() {
            Cow::Borrowed(Self::VERSION)
        } else {
            Cow::Owned(join_api_version(Self::GROUP, Self::VERSION))
        }
    }

    /// Short names `kubectl` accepts for this resource. None by default.
    fn short_names() -> &'static [&'static str] {
        &[]
    }

    /// Categories (such as `all`) this resource belongs to. None by default.
    fn categories() -> &'static [&'static str] {
        &[]
    }

    /// Fields, beyond `metadata.name` and `metadata.namespace`, that field selectors may
    /// use: dotted paths into the object. None by default.
    fn selectable_fields() -> &'static [&'static str] {
        &[]
    }

    /// The run-time descriptor of this kind.
    fn resource_type() -> ResourceType {
        ResourceType::new(
            Self::GROUP,
            Self::VERSION,
            Self::KIND,
            Self::PLURAL,
            Self::SCOPE,
        )
        .with_short_names(Self::short_names().iter().copied())
        .with_categories(Self::categories().iter().copied())
        .with_selectable_fields(Self::selectable_fields().iter().copied())
    }

    /// The JSON schema (draft 2020-12, with `$defs`) of this kind, from its
    /// [`schemars::JsonSchema`] implementation.
    ///
    /// (Named `schema` rather than `json_schema` so that it never clashes with
    /// `JsonSchema::json_schema`, which every `Resource` also has.) To build OpenAPI
    /// documents, use a [`schemars::SchemaGenerator`] on the type directly.
    fn schema() -> serde_json::Value {
        schemars::schema_for!(Self).to_value()
    }

    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;

    /// The object's metadata, mutably.
    fn meta_mut(&mut self) -> &mut ObjectMeta;

    /// The store key of this object, from its namespace and name.
    ///
    /// # Errors
    ///
    /// As [`ResourceType::key`]; in particular, an object without a name has no key.
    fn key(&self) -> Result<String, Error> {
        let meta = self.meta();
        Self::resource_type().key(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

/// Implements [`Resource`] for your own type in one line.
///
/// The type needs `Serialize`, `Deserialize`, `JsonSchema` (use the `schemars` that
/// this crate re-exports), `Clone`, and a `metadata: ObjectMeta` field. `scope` is
/// `Namespaced` or `Cluster`; `short_names`, `categories` and `selectable_fields` are
/// optional and come in that order.
///
/// ```
/// use keelson_core::{impl_resource, ObjectMeta, Resource, Scope};
/// use keelson_core::schemars::{self, JsonSchema};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
/// struct Widget {
///     metadata: ObjectMeta,
///     spec: WidgetSpec,
/// }
///
/// #[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
/// struct WidgetSpec {
///     size: u32,
/// }
///
/// impl_resource!(Widget, group = "example.com", version = "v1", kind = "Widget",
///     plural = "widgets", scope = Namespaced, short_names = ["wd"],
///     selectable_fields = ["spec.size"]);
///
/// let rt = Widget::resource_type();
/// assert_eq!(rt.api_version(), "example.com/v1");
/// assert_eq!(rt.scope, Scope::Namespaced);
/// assert_eq!(rt.short_names, ["wd"]);
/// assert!(Widget::schema()["properties"]["spec"].is_object());
/// ```
#[macro_export]
macro_rules! impl_resource {
    (
        $ty:ty,
        group = $group:expr,
        version = $version:expr,
        kind = $kind:expr,
        plural = $plural:expr,
        scope = $scope:ident
        $(, short_names = [$($short:expr),* $(,)?])?
        $(, categories = [$($category:expr),* $(,)?])?
        $(, selectable_fields = [$($field:expr),* $(,)?])?
        $(,)?
    ) => {
        impl $crate::Resource for $ty {
            const GROUP: &'static str = $group;
            const VERSION: &'static str = $version;
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            const SCOPE: $crate::Scope = $crate::Scope::$scope;

            fn short_names() -> &'static [&'static str] {
                &[$($($short),*)?]
            }

            fn categories() -> &'static [&'static str] {
                &[$($($category),*)?]
            }

            fn selectable_fields() -> &'static [&'static str] {
                &[$($($field),*)?]
            }

            fn meta(&self) -> &$crate::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut $crate::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Node, Pod};

    fn pods() -> ResourceType {
        Pod::resource_type()
    }

    fn nodes() -> ResourceType {
        Node::resource_type()
    }

    fn message(err: Error) -> String {
        assert_eq!(err.reason(), "BadRequest", "{err}");
        err.to_string()
    }

    #[test]
    fn namespaced_keys_use_the_core_segment_for_the_core_group() {
        assert_eq!(
            pods().key(Some("default"), "web").unwrap(),
            "/registry/core/pods/default/web"
        );
        assert_eq!(
            Deployment::resource_type()
                .key(Some("prod"), "api")
                .unwrap(),
            "/registry/apps/deployments/prod/api"
        );
    }

    #[test]
    fn cluster_scoped_keys_have_no_namespace_segment() {
        assert_eq!(nodes().key(None, "n1").unwrap(), "/registry/core/nodes/n1");
        assert_eq!(
            nodes().key(Some(""), "n1").unwrap(),
            "/registry/core/nodes/n1"
        );
        assert_eq!(nodes().prefix(None).unwrap(), "/registry/core/nodes/");
    }

    #[test]
    fn prefixes_end_with_a_slash_so_namespaces_do_not_share_them() {
        assert_eq!(pods().prefix(None).unwrap(), "/registry/core/pods/");
        assert_eq!(pods().prefix(Some("a")).unwrap(), "/registry/core/pods/a/");
        let key = pods().key(Some("ab"), "x").unwrap();
        assert!(!key.starts_with(&pods().prefix(Some("a")).unwrap()));
    }

    #[test]
    fn namespaced_key_without_a_namespace_is_a_bad_request() {
        assert_eq!(
            message(pods().key(None, "web").unwrap_err()),
            "Namespace parameter required."
        );
        assert_eq!(
            message(pods().key(Some(""), "web").unwrap_err()),
            "Namespace parameter required."
        );
    }

    #[test]
    fn cluster_scoped_key_with_a_namespace_is_a_bad_request() {
        let err = message(nodes().key(Some("default"), "n1").unwrap_err());
        assert!(err.contains("cluster-scoped"), "{err}");
        assert!(nodes().prefix(Some("default")).is_err());
    }

    #[test]
    fn empty_or_path_like_names_are_rejected() {
        assert_eq!(
            message(pods().key(Some("default"), "").unwrap_err()),
            "Name parameter required."
        );
        assert_eq!(
            message(pods().key(Some("default"), "a/b").unwrap_err()),
            r#"Name parameter invalid: "a/b": may not contain '/'"#
        );
        assert_eq!(
            message(pods().key(Some("default"), "..").unwrap_err()),
            r#"Name parameter invalid: "..": may not be '..'"#
        );
        assert_eq!(
            message(pods().key(Some("default"), ".").unwrap_err()),
            r#"Name parameter invalid: ".": may not be '.'"#
        );
        assert_eq!(
            message(pods().key(Some("default"), "50%").unwrap_err()),
            r#"Name parameter invalid: "50%": may not contain '%'"#
        );
        assert_eq!(
            message(pods().key(Some("a/b"), "x").unwrap_err()),
            r#"Namespace parameter invalid: "a/b": may not contain '/'"#
        );
        assert_eq!(
            message(pods().prefix(Some("..")).unwrap_err()),
            r#"Namespace parameter invalid: "..": may not be '..'"#
        );
    }

    #[test]
    fn parse_key_inverts_key() {
        let key = pods().key(Some("default"), "web").unwrap();
        assert_eq!(pods().parse_key(&key), Some((Some("default"), "web")));
        let key = nodes().key(None, "n1").unwrap();
        assert_eq!(nodes().parse_key(&key), Some((None, "n1")));
        assert_eq!(pods().parse_key("/registry/core/pods/default"), None);
        assert_eq!(pods().parse_key("/registry/core/pods/a/b/c"), None);
        assert_eq!(pods().parse_key("/registry/core/nodes/n1"), None);
        assert_eq!(nodes().parse_key("/registry/core/nodes/a/b"), None);
    }

    #[test]
    fn resource_type_names_and_versions() {
        let rt = Deployment::resource_type();
        assert_eq!(rt.api_version(), "apps/v1");
        assert_eq!(rt.gvk(), GroupVersionKind::new("apps", "v1", "Deployment"));
        assert_eq!(rt.list_kind(), "DeploymentList");
        assert_eq!(rt.singular, "deployment");
        assert_eq!(rt.group_resource().to_string(), "deployments.apps");
        assert_eq!(rt.group_kind().to_string(), "Deployment.apps");
        assert_eq!(rt.to_string(), "deployments.apps/v1");
        assert_eq!(pods().api_version(), "v1");
    }

    #[test]
    fn new_resource_types_of_builtin_kinds_get_their_selectable_fields() {
        let rt = ResourceType::new("", "v1", "Pod", "pods", Scope::Namespaced);
        assert!(rt.selectable_fields.iter().any(|f| f == "spec.nodeName"));
        let custom = ResourceType::new("example.com", "v1", "Pod", "pods", Scope::Namespaced);
        assert!(custom.selectable_fields.is_empty());
    }

    #[test]
    fn builders_do_not_duplicate_names() {
        let rt = ResourceType::new("x.io", "v1", "Thing", "things", Scope::Cluster)
            .with_short_names(["th", "th"])
            .with_categories(["all"])
            .with_categories(["all"])
            .with_singular("thingy");
        assert_eq!(rt.short_names, ["th"]);
        assert_eq!(rt.categories, ["all"]);
        assert_eq!(rt.singular, "thingy");
    }

    #[test]
    fn object_key_comes_from_its_metadata() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("default".into());
        assert_eq!(pod.key().unwrap(), "/registry/core/pods/default/web");
        pod.metadata.name = None;
        assert!(pod.key().is_err());
    }

    #[derive(
        Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
    )]
    struct Gadget {
        metadata: ObjectMeta,
        #[serde(default)]
        spec: GadgetSpec,
    }

    #[derive(
        Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
    )]
    struct GadgetSpec {
        color: String,
    }

    crate::impl_resource!(
        Gadget,
        group = "toys.example.com",
        version = "v1alpha1",
        kind = "Gadget",
        plural = "gadgets",
        scope = Cluster,
        short_names = ["gd", "gad"],
        categories = ["all", "toys"],
        selectable_fields = ["spec.color"],
    );

    #[test]
    fn user_types_become_resources_with_one_macro_call() {
        assert_eq!(Gadget::api_version(), "toys.example.com/v1alpha1");
        assert_eq!(Gadget::SCOPE, Scope::Cluster);
        let rt = Gadget::resource_type();
        assert_eq!(rt.kind, "Gadget");
        assert_eq!(rt.plural, "gadgets");
        assert_eq!(rt.singular, "gadget");
        assert_eq!(rt.short_names, ["gd", "gad"]);
        assert_eq!(rt.categories, ["all", "toys"]);
        assert_eq!(rt.selectable_fields, ["spec.color"]);
        assert_eq!(
            rt.key(None, "g1").unwrap(),
            "/registry/toys.example.com/gadgets/g1"
        );
        let schema = Gadget::schema();
        assert_eq!(schema["properties"]["spec"]["$ref"], "#/$defs/GadgetSpec");
        assert!(schema["$defs"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    }

    #[test]
    fn user_types_convert_through_the_dynamic_form_with_their_type_filled_in() {
        let mut gadget = Gadget::default();
        gadget.meta_mut().name = Some("g1".into());
        gadget.spec.color = "red".into();
        let dynamic = crate::DynamicObject::from_resource(&gadget).unwrap();
        assert_eq!(dynamic.api_version, "toys.example.com/v1alpha1");
        assert_eq!(dynamic.kind, "Gadget");
        assert_eq!(dynamic.data["spec"]["color"], "red");
        let back: Gadget = dynamic.to_resource().unwrap();
        assert_eq!(back, gadget);
    }
}
