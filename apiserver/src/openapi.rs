//! OpenAPI v3 documents generated from the served kinds' JSON schemas.
//!
//! kubectl fetches these for `apply`, `create -f`, `replace -f` and `diff` (whose
//! `--validate=strict` default needs them), for `explain`, and for the merge metadata of
//! client-side `apply`:
//!
//! 1. `GET /openapi/v3` — [`v3_root`]: one entry per served group-version,
//!    `{"paths":{"api/v1":{"serverRelativeURL":"/openapi/v3/api/v1?hash=<HASH>"},
//!    "apis/apps/v1":{...}}}`. The hash is [`content_hash`] of that group-version's
//!    document, so a client may cache a document for as long as its URL is unchanged.
//! 2. `GET /openapi/v3/api/v1`, `GET /openapi/v3/apis/<group>/<version>` —
//!    [`v3_group_version`]: an OpenAPI 3.0 document (`openapi`, `info`, `paths`,
//!    `components.schemas`).
//!
//! Every function here is pure and deterministic. Generating the documents is not free
//! (all of the built-in ones take about 130 ms in a debug build, and the core group's is
//! about 600 kB), so compute them once — [`v3_documents`] gives them all — and cache them
//! until the served resources change. Serve them as `application/json`.
//!
//! # Paths
//!
//! For each served kind, the paths Kubernetes has, with one operation per verb the kind
//! serves: the collection (`/api/v1/namespaces/{namespace}/pods`: `get` lists, `post`
//! creates, `delete` deletes a collection), the object (`.../pods/{name}`: `get`, `put`,
//! `patch`, `delete`), the list across namespaces (`/api/v1/pods`), and each subresource
//! whose kind has a schema here (`.../pods/{name}/status`). Every operation carries
//! `x-kubernetes-action` and `x-kubernetes-group-version-kind` (`{group, version, kind}`),
//! and its query parameters inline. kubectl's validation needs exactly that of the `patch`
//! operation: the GVK extension and an inline `fieldValidation` parameter; then it leaves
//! validation to the server and sends `fieldValidation=Strict`.
//!
//! The `patch` operation of a Kubernetes built-in kind (one whose schema is named
//! `io.k8s.…`) accepts `application/strategic-merge-patch+json`; that of any other kind
//! does not, which tells kubectl to send JSON merge patches for it, as for a custom
//! resource.
//!
//! # Schemas
//!
//! `components.schemas` holds each kind's schema under its Kubernetes definition name
//! (`io.k8s.api.core.v1.Pod`, `io.k8s.api.apps.v1.DeploymentSpec`,
//! `io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`): k8s-openapi's schemars output
//! already uses these names for its `$defs`, so they are kept. A kind whose schema has no
//! dotted name (a custom type) is named like a CRD's, by reversed group, version and kind
//! (`com.example.v1.Widget`), and its unqualified definitions get the same prefix. The
//! top-level kind schemas carry `x-kubernetes-group-version-kind: [{group, version,
//! kind}]`, which is how `kubectl explain` finds them, and each kind gets a synthesized
//! `<Kind>List`; `ListMeta`, `DeleteOptions`, `Status` and `Patch` come along for the
//! operations.
//!
//! JSON Schema 2020-12 is rewritten into OpenAPI 3.0: `$defs` are lifted into
//! `components.schemas` and every `$ref` points there (wrapped in `allOf` when it has
//! sibling keywords, as Kubernetes does); `$schema`, `$id` and `$comment` are dropped;
//! `"type": [T, "null"]` and `anyOf`/`oneOf` with a `{"type": "null"}` branch become `T` with
//! `nullable: true`; `const` becomes a one-value `enum`, `examples` an `example`, numeric
//! `exclusiveMinimum`/`exclusiveMaximum` their 3.0 boolean form; keywords 3.0 lacks
//! (`if`/`then`/`else`, `prefixItems`, `unevaluated*`, ...) are dropped. The `title`
//! schemars gives a root schema is dropped, and so is `metadata` from any `required` list
//! where it is `ObjectMeta` or `ListMeta` (k8s-openapi marks it required because the Rust
//! field is not optional; Kubernetes never does).
//!
//! # Merge metadata
//!
//! k8s-openapi's schemas carry no `x-kubernetes-patch-strategy`,
//! `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type` or
//! `x-kubernetes-list-map-keys`. kubectl's client-side `apply` computes its strategic merge
//! patch from this document when the `patch` operation offers strategic merge, so these
//! are added from a table of the Kubernetes 1.33 built-in fields that declare a patch
//! strategy, or a `map`/`set` list type (`PodSpec.containers` merges by `name`,
//! `Container.ports` by `containerPort`, `Container.volumeMounts` by `mountPath`,
//! `conditions` by `type`, `ObjectMeta.finalizers` merges as a set, ...). Lists with no
//! entry (`tolerations`, `args`) are replaced whole, as in Kubernetes. Extensions a schema
//! already has (a CRD's `x-kubernetes-list-type`) are kept.
//!
//! ```
//! use keelson_apiserver::{openapi, resources};
//!
//! let served = resources::builtin();
//! let root = openapi::v3_root(&served);
//! assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"]
//!     .as_str()
//!     .expect("a URL")
//!     .starts_with("/openapi/v3/apis/apps/v1?hash="));
//! let apps = openapi::v3_group_version(&served, "apps", "v1").expect("apps/v1 is served");
//! assert_eq!(apps["openapi"], "3.0.0");
//! assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use keelson_core::GroupVersionKind;
use serde_json::{json, Map, Value};

use crate::discovery::GIT_VERSION;
use crate::resources::ServedResource;

/// The JSON pointer prefix of references into `components.schemas`.
const COMPONENTS: &str = "#/components/schemas/";

const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

/// `GET /openapi/v3`: the index of group-version documents, each with a
/// `serverRelativeURL` carrying the [`content_hash`] of its document.
///
/// This generates every document to hash it; if you serve the documents too, use
/// [`v3_documents`] and [`v3_root_of`] to generate them once.
pub fn v3_root(served: &[ServedResource]) -> Value {
    v3_root_of(&v3_documents(served))
}

/// The root document for already generated group-version documents, keyed as
/// [`v3_documents`] keys them.
pub fn v3_root_of(documents: &BTreeMap<String, Value>) -> Value {
    let paths: Map<String, Value> = documents
        .iter()
        .map(|(key, document)| {
            let url = format!("/openapi/v3/{key}?hash={}", content_hash(document));
            (key.clone(), json!({ "serverRelativeURL": url }))
        })
        .collect();
    json!({ "paths": paths })
}

/// Every served group-version's document, keyed by its path under `/openapi/v3/`:
/// `api/v1` for the core group, `apis/<group>/<version>` for the others.
pub fn v3_documents(served: &[ServedResource]) -> BTreeMap<String, Value> {
    let versions: BTreeSet<(&str, &str)> = served
        .iter()
        .map(|s| (&*s.rt.group, &*s.rt.version))
        .collect();
    versions
        .into_iter()
        .filter_map(|(group, version)| {
            let document = v3_group_version(served, group, version)?;
            Some((document_key(group, version), document))
        })
        .collect()
}

/// `api/v1` for the core group, `apis/<group>/<version>` otherwise.
pub(crate) fn document_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable hash of a document: 16 upper-case hex digits of the FNV-1a (64-bit) hash of
/// its compact JSON. It is the same across runs, machines and Rust versions, and changes
/// when the document does.
pub fn content_hash(document: &Value) -> String {
    format!("{:016X}", fnv1a_64(document.to_string().as_bytes()))
}

/// The 64-bit FNV-1a hash.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// `GET /openapi/v3/api/v1` or `GET /openapi/v3/apis/<group>/<version>`: the OpenAPI 3.0
/// document of one group-version (see the [module docs](self) for its shape), or `None`
/// when no resource of it is served.
pub fn v3_group_version(served: &[ServedResource], group: &str, version: &str) -> Option<Value> {
    let here: Vec<&ServedResource> = served
        .iter()
        .filter(|s| s.rt.group == group && s.rt.version == version)
        .collect();
    if here.is_empty() {
        return None;
    }

    let mut components = Components::default();
    for (name, schema) in [
        (LIST_META, schemars::schema_for!(meta::ListMeta)),
        (DELETE_OPTIONS, schemars::schema_for!(meta::DeleteOptions)),
        (STATUS, schemars::schema_for!(meta::Status)),
        (PATCH, schemars::schema_for!(meta::Patch)),
    ] {
        components.add_source(name, &schema.to_value());
    }

    let mut paths = Map::new();
    for resource in here {
        let kind = components.add_kind(resource);
        let list = components.add_list(resource, &kind);
        let builtin = kind.starts_with("io.k8s.");
        let mut subresources = Vec::new();
        for sub in &resource.subresources {
            // A subresource's path is described only when its kind's schema is at hand.
            let sub_kind = if sub.kind == resource.rt.gvk() {
                kind.clone()
            } else if let Some(other) = served.iter().find(|s| s.rt.gvk() == sub.kind) {
                components.add_kind(other)
            } else {
                continue;
            };
            subresources.push((sub, sub_kind));
        }
        let builder = PathBuilder {
            resource,
            kind: &kind,
            list: &list,
            strategic_merge: builtin,
        };
        builder.add_to(&mut paths, &subresources);
    }
    components.finish();

    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": components.schemas},
    }))
}

// ---------------------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------------------

/// The `components.schemas` of one document being built.
#[derive(Default)]
struct Components {
    schemas: Map<String, Value>,
}

impl Components {
    /// Adds a served kind's schema and its definitions; returns the kind's component name.
    /// The kind's schema gets its `x-kubernetes-group-version-kind`.
    fn add_kind(&mut self, resource: &ServedResource) -> String {
        let name = definition_name(resource);
        let root = match resource.schema.as_ref() {
            Value::Object(_) => (*resource.schema).clone(),
            // A kind without a usable schema still gets an entry kubectl can find.
            _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        let name = self.add_source(&name, &root);
        if let Some(Value::Object(schema)) = self.schemas.get_mut(&name) {
            let gvk = gvk_value(&resource.rt.gvk());
            let gvks = schema
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| json!([]));
            if let Value::Array(gvks) = gvks {
                if !gvks.contains(&gvk) {
                    gvks.push(gvk);
                }
            }
        }
        name
    }

    /// Adds the synthesized `<Kind>List` schema; returns its component name.
    fn add_list(&mut self, resource: &ServedResource, kind: &str) -> String {
        let name = format!("{kind}List");
        let kind_properties = self.schemas.get(kind).and_then(|k| k.get("properties"));
        let type_field = |field: &str, fallback: &str| {
            kind_properties
                .and_then(|p| p.get(field))
                .cloned()
                .unwrap_or_else(|| json!({"description": fallback, "type": "string"}))
        };
        let rt = &resource.rt;
        let list = json!({
            "description": format!("{} is a list of {} objects.", rt.list_kind(), rt.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": type_field("apiVersion", "The API version of this list."),
                "kind": type_field("kind", "The kind of this list."),
                "items": {
                    "description": format!("The {} in the list.", rt.plural),
                    "type": "array",
                    "items": {"$ref": format!("{COMPONENTS}{kind}")},
                },
                "metadata": {
                    "description": "Standard list metadata.",
                    "allOf": [{"$ref": format!("{COMPONENTS}{LIST_META}")}],
                },
            },
            "x-kubernetes-group-version-kind": [
                {"group": rt.group, "version": rt.version, "kind": rt.list_kind()},
            ],
        });
        self.schemas.insert(name.clone(), list);
        name
    }

    /// Converts a JSON Schema (with `$defs`) into components: the root under `root_name`
    /// (or a variant of it, if a different schema already has that name) and each
    /// definition under its own name. Returns the name the root got.
    fn add_source(&mut self, root_name: &str, root: &Value) -> String {
        let defs = root
            .get("$defs")
            .or_else(|| root.get("definitions"))
            .and_then(Value::as_object);
        let package = root_name.rsplit_once('.').map_or("", |(p, _)| p);

        // What each definition is called here: qualified names are kept, bare ones get
        // the kind's package; a name some other, different schema already has is renamed.
        let mut names = BTreeMap::new();
        names.insert(String::new(), root_name.to_owned());
        for def in defs.into_iter().flat_map(|d| d.keys()) {
            let name = if def.contains('.') || package.is_empty() {
                def.clone()
            } else {
                format!("{package}.{def}")
            };
            names.insert(def.clone(), name);
        }
        loop {
            let converted = convert_source(root, defs, &names);
            let clash = converted.iter().find_map(|(key, (name, schema))| {
                self.schemas
                    .get(name)
                    .is_some_and(|existing| !same_schema(existing, schema))
                    .then(|| key.clone())
            });
            match clash {
                Some(key) => {
                    let taken = &names[&key];
                    let fresh = (2..)
                        .map(|n| format!("{taken}{n}"))
                        .find(|n| !self.schemas.contains_key(n) && !names.values().any(|v| v == n))
                        .unwrap_or_default();
                    names.insert(key, fresh);
                }
                None => {
                    for (_, (name, schema)) in converted {
                        self.schemas.entry(name).or_insert(schema);
                    }
                    return names[""].clone();
                }
            }
        }
    }

    /// The last touches, once every schema is in.
    fn finish(&mut self) {
        self.unrequire_metadata();
        self.add_list_extensions();
    }

    /// Drops `metadata` from the `required` list of every schema whose `metadata` is
    /// `ObjectMeta` or `ListMeta`: k8s-openapi marks it required because its Rust field is
    /// not optional, Kubernetes never does.
    fn unrequire_metadata(&mut self) {
        for schema in self.schemas.values_mut() {
            let Value::Object(schema) = schema else {
                continue;
            };
            let meta = schema
                .get("properties")
                .and_then(|p| p.get("metadata"))
                .is_some_and(is_meta_reference);
            if !meta {
                continue;
            }
            if let Some(Value::Array(required)) = schema.get_mut("required") {
                required.retain(|r| r != "metadata");
                if required.is_empty() {
                    schema.remove("required");
                }
            }
        }
    }

    /// Adds the merge and list extensions of [`LIST_EXTENSIONS`] to the properties they
    /// describe, leaving any a schema already has.
    fn add_list_extensions(&mut self) {
        for ext in LIST_EXTENSIONS {
            let Some(Value::Object(property)) = self
                .schemas
                .get_mut(ext.definition)
                .and_then(|d| d.get_mut("properties"))
                .and_then(|p| p.get_mut(ext.field))
            else {
                continue;
            };
            let mut set = |key: &str, value: Value| {
                property.entry(key).or_insert(value);
            };
            if !ext.patch_strategy.is_empty() {
                set("x-kubernetes-patch-strategy", json!(ext.patch_strategy));
            }
            if !ext.patch_merge_key.is_empty() {
                set("x-kubernetes-patch-merge-key", json!(ext.patch_merge_key));
            }
            if !ext.list_type.is_empty() {
                set("x-kubernetes-list-type", json!(ext.list_type));
            }
            if !ext.list_map_keys.is_empty() {
                set("x-kubernetes-list-map-keys", json!(ext.list_map_keys));
            }
        }
    }
}

/// Whether two converted schemas are the same, ignoring the GVK extension that
/// [`Components::add_kind`] adds.
fn same_schema(existing: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.remove("x-kubernetes-group-version-kind");
        }
        v
    };
    strip(existing) == strip(new)
}

/// Whether a property schema is (a reference to) `ObjectMeta` or `ListMeta`.
fn is_meta_reference(property: &Value) -> bool {
    let target = property
        .get("$ref")
        .or_else(|| property.pointer("/allOf/0/$ref"))
        .and_then(Value::as_str);
    target.is_some_and(|t| {
        t == format!("{COMPONENTS}{LIST_META}")
            || t == format!("{COMPONENTS}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    })
}

/// The component name of a served kind's schema: its dotted schemars title when it has
/// one (k8s-openapi's are Kubernetes' definition names), else the CRD-style
/// `<reversed group>.<version>.<Kind>`.
pub(crate) fn definition_name(resource: &ServedResource) -> String {
    if let Some(title) = resource.schema.get("title").and_then(Value::as_str) {
        if title.contains('.') {
            return title.to_owned();
        }
    }
    let rt = &resource.rt;
    let group = if rt.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        rt.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{}.{}", rt.version, rt.kind)
}

/// Converts a root schema and its definitions; keys are definition names as in the source
/// (`""` for the root), values the component name and converted schema.
fn convert_source(
    root: &Value,
    defs: Option<&Map<String, Value>>,
    names: &BTreeMap<String, String>,
) -> BTreeMap<String, (String, Value)> {
    let mut converted_root = convert(root, names);
    if let Value::Object(root) = &mut converted_root {
        // schemars titles a root schema with its type's name; Kubernetes has no titles.
        root.remove("title");
    }
    let mut out = BTreeMap::new();
    out.insert(String::new(), (names[""].clone(), converted_root));
    for (def, schema) in defs.into_iter().flatten() {
        out.insert(def.clone(), (names[def].clone(), convert(schema, names)));
    }
    out
}

/// Rewrites one JSON Schema 2020-12 schema as an OpenAPI 3.0 schema object.
fn convert(schema: &Value, names: &BTreeMap<String, String>) -> Value {
    let map = match schema {
        Value::Object(map) => map,
        Value::Bool(true) => return json!({}),
        Value::Bool(false) => return json!({"not": {}}),
        other => return other.clone(),
    };
    let mut out = Map::new();
    let mut nullable = false;
    for (key, value) in map {
        match key.as_str() {
            "$schema"
            | "$id"
            | "$anchor"
            | "$comment"
            | "$defs"
            | "definitions"
            | "if"
            | "then"
            | "else"
            | "prefixItems"
            | "contains"
            | "propertyNames"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "dependentSchemas"
            | "dependentRequired"
            | "minContains"
            | "maxContains"
            | "contentEncoding"
            | "contentMediaType"
            | "contentSchema" => {}
            "$ref" => {
                let target = value
                    .as_str()
                    .map_or_else(String::new, |r| rewrite_ref(r, names));
                out.insert(key.clone(), json!(target));
            }
            "properties" | "patternProperties" => {
                let converted: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), convert(v, names)))
                    .collect();
                out.insert(key.clone(), Value::Object(converted));
            }
            "additionalProperties" => {
                let converted = match value {
                    Value::Bool(b) => Value::Bool(*b),
                    other => convert(other, names),
                };
                out.insert(key.clone(), converted);
            }
            "items" => {
                let item = match value {
                    Value::Array(tuple) => tuple
                        .first()
                        .map_or_else(|| json!({}), |v| convert(v, names)),
                    other => convert(other, names),
                };
                out.insert(key.clone(), item);
            }
            "not" => {
                out.insert(key.clone(), convert(value, names));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let mut branches: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| convert(v, names))
                    .collect();
                if key != "allOf" {
                    let before = branches.len();
                    branches.retain(|b| {
                        b != &json!({"type": "null"}) && b != &json!({"nullable": true})
                    });
                    nullable |= branches.len() != before;
                }
                out.insert(key.clone(), Value::Array(branches));
            }
            "type" => match value {
                Value::Array(types) => {
                    let mut types: Vec<&Value> = types.iter().collect();
                    let before = types.len();
                    types.retain(|t| *t != "null");
                    nullable |= types.len() != before;
                    match types.as_slice() {
                        [] => {}
                        [one] => {
                            out.insert(key.clone(), (*one).clone());
                        }
                        many => {
                            let branches: Vec<Value> =
                                many.iter().map(|t| json!({"type": t})).collect();
                            out.entry("anyOf").or_insert(Value::Array(branches));
                        }
                    }
                }
                Value::String(t) if t == "null" => nullable = true,
                other => {
                    out.insert(key.clone(), other.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "examples" => {
                if let Some(first) = value.as_array().and_then(|e| e.first()) {
                    out.insert("example".into(), first.clone());
                }
            }
            "exclusiveMinimum" | "exclusiveMaximum" if value.is_number() => {
                let bound = if key == "exclusiveMinimum" {
                    "minimum"
                } else {
                    "maximum"
                };
                out.insert(bound.into(), value.clone());
                out.insert(key.clone(), json!(true));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    // A oneOf/anyOf left with one branch (after dropping `null`) is that branch.
    for key in ["anyOf", "oneOf"] {
        let single = matches!(out.get(key), Some(Value::Array(b)) if b.len() == 1);
        if single {
            if let Some(Value::Array(mut branches)) = out.remove(key) {
                if let Some(Value::Object(branch)) = branches.pop() {
                    for (k, v) in branch {
                        if k == "$ref" && out.contains_key("$ref") {
                            continue;
                        }
                        out.entry(k).or_insert(v);
                    }
                }
            }
        } else if matches!(out.get(key), Some(Value::Array(b)) if b.is_empty()) {
            out.remove(key);
        }
    }
    if nullable {
        out.insert("nullable".into(), json!(true));
    }
    // OpenAPI 3.0 ignores a `$ref`'s siblings, so a reference with any is put in `allOf`.
    if out.len() > 1 {
        if let Some(reference) = out.remove("$ref") {
            let wrapped = json!({"$ref": reference});
            match out.get_mut("allOf") {
                Some(Value::Array(all)) => all.insert(0, wrapped),
                _ => {
                    out.insert("allOf".into(), json!([wrapped]));
                }
            }
        }
    }
    Value::Object(out)
}

/// `#/$defs/<name>` (or `#/definitions/<name>`, or `#` for the root) as a reference into
/// `components.schemas`, with the name the definition gets there.
fn rewrite_ref(reference: &str, names: &BTreeMap<String, String>) -> String {
    let def = if reference == "#" {
        Some(String::new())
    } else {
        reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"))
            .map(|d| d.replace("~1", "/").replace("~0", "~"))
    };
    match def {
        Some(def) => {
            let name = names.get(&def).cloned().unwrap_or(def);
            format!("{COMPONENTS}{name}")
        }
        None => reference.to_owned(),
    }
}

fn gvk_value(gvk: &GroupVersionKind) -> Value {
    json!({"group": gvk.group, "version": gvk.version, "kind": gvk.kind})
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// Builds the paths of one served kind.
struct PathBuilder<'a> {
    resource: &'a ServedResource,
    /// The component name of the kind's schema.
    kind: &'a str,
    /// The component name of its list schema.
    list: &'a str,
    /// Whether `patch` accepts strategic merge patches.
    strategic_merge: bool,
}

/// The operations on one path, by HTTP method.
type Operations = Map<String, Value>;

impl PathBuilder<'_> {
    fn add_to(
        &self,
        paths: &mut Map<String, Value>,
        subresources: &[(&crate::Subresource, String)],
    ) {
        let rt = &self.resource.rt;
        let namespaced = rt.is_namespaced();
        let prefix = if rt.group.is_empty() {
            format!("/api/{}", rt.version)
        } else {
            format!("/apis/{}/{}", rt.group, rt.version)
        };
        let collection = if namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{prefix}/{}", rt.plural)
        };
        let object = format!("{collection}/{{name}}");
        let scoped = if namespaced { "Namespaced" } else { "" };
        let gvk = rt.gvk();
        let kind_ref = format!("{COMPONENTS}{}", self.kind);
        let list_ref = format!("{COMPONENTS}{}", self.list);

        let mut ops = Operations::new();
        for verb in &self.resource.verbs {
            match verb.as_str() {
                "list" => self.operation(
                    &mut ops,
                    "get",
                    "list",
                    &format!("list{{}}{scoped}{}", rt.kind),
                    &gvk,
                    None,
                    &list_ref,
                ),
                "create" => self.operation(
                    &mut ops,
                    "post",
                    "post",
                    &format!("create{{}}{scoped}{}", rt.kind),
                    &gvk,
                    Some(&kind_ref),
                    &kind_ref,
                ),
                "deletecollection" => self.operation(
                    &mut ops,
                    "delete",
                    "deletecollection",
                    &format!("delete{{}}Collection{scoped}{}", rt.kind),
                    &gvk,
                    None,
                    &format!("{COMPONENTS}{STATUS}"),
                ),
                _ => {}
            }
        }
        self.insert_path(paths, &collection, ops, false);

        let mut ops = Operations::new();
        for verb in &self.resource.verbs {
            match verb.as_str() {
                "get" => self.operation(
                    &mut ops,
                    "get",
                    "get",
                    &format!("read{{}}{scoped}{}", rt.kind),
                    &gvk,
                    None,
                    &kind_ref,
                ),
                "update" => self.operation(
                    &mut ops,
                    "put",
                    "put",
                    &format!("replace{{}}{scoped}{}", rt.kind),
                    &gvk,
                    Some(&kind_ref),
                    &kind_ref,
                ),
                "patch" => self.operation(
                    &mut ops,
                    "patch",
                    "patch",
                    &format!("patch{{}}{scoped}{}", rt.kind),
                    &gvk,
                    None,
                    &kind_ref,
                ),
                "delete" => self.operation(
                    &mut ops,
                    "delete",
                    "delete",
                    &format!("delete{{}}{scoped}{}", rt.kind),
                    &gvk,
                    None,
                    &kind_ref,
                ),
                _ => {}
            }
        }
        self.insert_path(paths, &object, ops, true);

        if namespaced && self.resource.verbs.iter().any(|v| v == "list") {
            let mut ops = Operations::new();
            self.operation(
                &mut ops,
                "get",
                "list",
                &format!("list{{}}{}ForAllNamespaces", rt.kind),
                &gvk,
                None,
                &list_ref,
            );
            let all = format!("{prefix}/{}", rt.plural);
            let mut item = Map::new();
            item.extend(ops);
            item.insert("parameters".into(), json!([pretty_parameter()]));
            paths.insert(all, Value::Object(item));
        }

        for (sub, sub_kind) in subresources {
            let sub_ref = format!("{COMPONENTS}{sub_kind}");
            let suffix = upper_first(&sub.name);
            let mut ops = Operations::new();
            for verb in &sub.verbs {
                let id = |action: &str| format!("{action}{{}}{scoped}{}{suffix}", rt.kind);
                match verb.as_str() {
                    "get" => self.operation(
                        &mut ops,
                        "get",
                        "get",
                        &id("read"),
                        &sub.kind,
                        None,
                        &sub_ref,
                    ),
                    "update" => self.operation(
                        &mut ops,
                        "put",
                        "put",
                        &id("replace"),
                        &sub.kind,
                        Some(&sub_ref),
                        &sub_ref,
                    ),
                    "patch" => self.operation(
                        &mut ops,
                        "patch",
                        "patch",
                        &id("patch"),
                        &sub.kind,
                        None,
                        &sub_ref,
                    ),
                    "create" => self.operation(
                        &mut ops,
                        "post",
                        "post",
                        &id("create"),
                        &sub.kind,
                        Some(&sub_ref),
                        &sub_ref,
                    ),
                    _ => {}
                }
            }
            self.insert_path(paths, &format!("{object}/{}", sub.name), ops, true);
        }
    }

    fn insert_path(
        &self,
        paths: &mut Map<String, Value>,
        path: &str,
        ops: Operations,
        named: bool,
    ) {
        if ops.is_empty() {
            return;
        }
        let mut parameters = Vec::new();
        if named {
            parameters.push(json!({
                "name": "name", "in": "path", "required": true,
                "description": format!("name of the {}", self.resource.rt.kind),
                "schema": {"type": "string"},
            }));
        }
        if self.resource.rt.is_namespaced() {
            parameters.push(json!({
                "name": "namespace", "in": "path", "required": true,
                "description": "object name and auth scope, such as for teams and projects",
                "schema": {"type": "string"},
            }));
        }
        parameters.push(pretty_parameter());
        let mut item = ops;
        item.insert("parameters".into(), Value::Array(parameters));
        paths.insert(path.to_owned(), Value::Object(item));
    }

    /// Adds one operation. `id` has a `{}` where the group and version go
    /// (`read{}NamespacedPod` → `readCoreV1NamespacedPod`).
    #[allow(clippy::too_many_arguments)]
    fn operation(
        &self,
        ops: &mut Operations,
        method: &str,
        action: &str,
        id: &str,
        gvk: &GroupVersionKind,
        body: Option<&str>,
        response: &str,
    ) {
        let rt = &self.resource.rt;
        let group_version = format!("{}{}", group_camel(&rt.group), upper_first(&rt.version));
        let tag = format!("{}_{}", lower_first(&group_camel(&rt.group)), rt.version);
        let mut op = Map::new();
        op.insert("tags".into(), json!([tag]));
        op.insert("description".into(), json!(describe(action, &gvk.kind)));
        op.insert(
            "operationId".into(),
            json!(id.replacen("{}", &group_version, 1)),
        );
        let parameters = query_parameters(action);
        if !parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(parameters));
        }
        let request_body = match action {
            "patch" => Some(self.patch_body()),
            "delete" | "deletecollection" => Some(
                json!({"content": {"*/*": {"schema": {"$ref": format!("{COMPONENTS}{DELETE_OPTIONS}")}}}}),
            ),
            _ => {
                body.map(|b| json!({"content": {"*/*": {"schema": {"$ref": b}}}, "required": true}))
            }
        };
        if let Some(request_body) = request_body {
            op.insert("requestBody".into(), request_body);
        }
        let content = json!({"application/json": {"schema": {"$ref": response}}});
        let mut responses = Map::new();
        let codes: &[(&str, &str)] = match action {
            "post" => &[("200", "OK"), ("201", "Created"), ("202", "Accepted")],
            "put" | "patch" => &[("200", "OK"), ("201", "Created")],
            "delete" => &[("200", "OK"), ("202", "Accepted")],
            _ => &[("200", "OK")],
        };
        for (code, text) in codes {
            responses.insert(
                (*code).into(),
                json!({"description": text, "content": content}),
            );
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        op.insert("responses".into(), Value::Object(responses));
        op.insert("x-kubernetes-action".into(), json!(action));
        op.insert("x-kubernetes-group-version-kind".into(), gvk_value(gvk));
        ops.insert(method.to_owned(), Value::Object(op));
    }

    fn patch_body(&self) -> Value {
        let patch = json!({"schema": {"$ref": format!("{COMPONENTS}{PATCH}")}});
        let mut content = Map::new();
        for media_type in [
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
        ] {
            content.insert(media_type.into(), patch.clone());
        }
        if self.strategic_merge {
            content.insert("application/strategic-merge-patch+json".into(), patch);
        }
        json!({"content": content, "required": true})
    }
}

fn describe(action: &str, kind: &str) -> String {
    match action {
        "get" => format!("read the specified {kind}"),
        "list" => format!("list or watch objects of kind {kind}"),
        "post" => format!("create a {kind}"),
        "put" => format!("replace the specified {kind}"),
        "patch" => format!("partially update the specified {kind}"),
        "delete" => format!("delete a {kind}"),
        "deletecollection" => format!("delete collection of {kind}"),
        other => format!("{other} {kind}"),
    }
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind}})
}

fn pretty_parameter() -> Value {
    query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed.",
    )
}

/// The query parameters of an action, inline (kubectl looks for `fieldValidation` among
/// a `patch` operation's own parameters).
fn query_parameters(action: &str) -> Vec<Value> {
    let dry_run = || {
        query("dryRun", "string", "When present (`All`), the request is validated and processed but nothing is persisted.")
    };
    let field_manager = || {
        query("fieldManager", "string", "The name of the actor making these changes, recorded in managedFields. Required for apply patches.")
    };
    let field_validation = || {
        query("fieldValidation", "string", "What to do with unknown or duplicate fields in the object: Ignore, Warn or Strict (reject the request).")
    };
    let write = || vec![dry_run(), field_manager(), field_validation()];
    match action {
        "post" | "put" => write(),
        "patch" => {
            let mut params = write();
            params.push(query("force", "boolean", "For apply patches: take ownership of fields that other managers own. Must be unset for other patches."));
            params
        }
        "delete" | "deletecollection" => {
            let mut params = vec![
                dry_run(),
                query("gracePeriodSeconds", "integer", "Seconds to wait before deleting; zero deletes at once; unset uses the kind's default."),
                query("propagationPolicy", "string", "Whether and how dependents are garbage collected: Orphan, Background or Foreground."),
            ];
            if action == "deletecollection" {
                params.extend(list_parameters());
            }
            params
        }
        "list" => list_parameters(),
        _ => Vec::new(),
    }
}

fn list_parameters() -> Vec<Value> {
    vec![
        query(
            "allowWatchBookmarks",
            "boolean",
            "Ask for BOOKMARK watch events.",
        ),
        query(
            "continue",
            "string",
            "The continue token from a previous, limited list, to fetch the next chunk.",
        ),
        query(
            "fieldSelector",
            "string",
            "Restrict the list to objects whose fields match (`spec.nodeName=n1`).",
        ),
        query(
            "labelSelector",
            "string",
            "Restrict the list to objects whose labels match (`app=web,tier!=db`).",
        ),
        query(
            "limit",
            "integer",
            "The most objects to return; the reply carries a continue token if there are more.",
        ),
        query(
            "resourceVersion",
            "string",
            "The resource version the list or watch must be at least as new as.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "How resourceVersion applies to a list: Exact or NotOlderThan.",
        ),
        query(
            "sendInitialEvents",
            "boolean",
            "Start a watch with the current objects as ADDED events.",
        ),
        query(
            "timeoutSeconds",
            "integer",
            "End the list or watch after this many seconds.",
        ),
        query("watch", "boolean", "Watch for changes instead of listing."),
    ]
}

/// A group's name as operation IDs spell it: `Core` for the core group, otherwise the
/// group without `.k8s.io`, each dot- or dash-separated part capitalised
/// (`rbac.authorization.k8s.io` → `RbacAuthorization`).
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_owned();
    }
    let trimmed = group.strip_suffix(".k8s.io").unwrap_or(group);
    trimmed.split(['.', '-']).map(upper_first).collect()
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Merge metadata of built-in types
// ---------------------------------------------------------------------------------------

/// The patch strategy (`merge`, `retainKeys`, `merge,retainKeys`, `replace`) and merge
/// key of a field of a built-in type, if it declares one.
pub(crate) fn patch_strategy(
    definition: &str,
    field: &str,
) -> Option<(&'static str, &'static str)> {
    LIST_EXTENSIONS
        .iter()
        .find(|e| e.definition == definition && e.field == field && !e.patch_strategy.is_empty())
        .map(|e| (e.patch_strategy, e.patch_merge_key))
}

/// The merge and list metadata of one field of a built-in type.
struct ListExtension {
    definition: &'static str,
    field: &'static str,
    /// `x-kubernetes-patch-strategy`, or empty.
    patch_strategy: &'static str,
    /// `x-kubernetes-patch-merge-key`, or empty.
    patch_merge_key: &'static str,
    /// `x-kubernetes-list-type` when `map` or `set` (`atomic` is the default), or empty.
    list_type: &'static str,
    /// `x-kubernetes-list-map-keys`.
    list_map_keys: &'static [&'static str],
}

const fn ext(
    definition: &'static str,
    field: &'static str,
    patch_strategy: &'static str,
    patch_merge_key: &'static str,
    list_type: &'static str,
    list_map_keys: &'static [&'static str],
) -> ListExtension {
    ListExtension {
        definition,
        field,
        patch_strategy,
        patch_merge_key,
        list_type,
        list_map_keys,
    }
}

/// Every field of the built-in types Keelson serves that declares a patch strategy or a
/// `map`/`set` list type in Kubernetes 1.33: the `patchStrategy`/`patchMergeKey` struct
/// tags and `+listType`/`+listMapKey` markers of k8s.io/api, k8s.io/apimachinery,
/// k8s.io/apiextensions-apiserver and k8s.io/kube-aggregator at v0.33.0, for the types
/// reachable from the served kinds.
#[rustfmt::skip]
const LIST_EXTENSIONS: &[ListExtension] = &[
    ext("io.k8s.api.admissionregistration.v1.MutatingWebhook", "matchConditions", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.admissionregistration.v1.MutatingWebhookConfiguration", "webhooks", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.admissionregistration.v1.ValidatingWebhook", "matchConditions", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration", "webhooks", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.apps.v1.DaemonSetStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.apps.v1.DeploymentSpec", "strategy", "retainKeys", "", "", &[]),
    ext("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.apps.v1.StatefulSetStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.batch.v1.JobStatus", "conditions", "merge", "type", "", &[]),
    ext("io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement", "values", "", "", "set", &[]),
    ext("io.k8s.api.batch.v1.UncountedTerminatedPods", "failed", "", "", "set", &[]),
    ext("io.k8s.api.batch.v1.UncountedTerminatedPods", "succeeded", "", "", "set", &[]),
    ext("io.k8s.api.certificates.v1.CertificateSigningRequestStatus", "conditions", "", "", "map", &["type"]),
    ext("io.k8s.api.core.v1.Container", "env", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.Container", "ports", "merge", "containerPort", "map", &["containerPort", "protocol"]),
    ext("io.k8s.api.core.v1.Container", "volumeDevices", "merge", "devicePath", "map", &["devicePath"]),
    ext("io.k8s.api.core.v1.Container", "volumeMounts", "merge", "mountPath", "map", &["mountPath"]),
    ext("io.k8s.api.core.v1.ContainerStatus", "allocatedResourcesStatus", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.ContainerStatus", "volumeMounts", "merge", "mountPath", "map", &["mountPath"]),
    ext("io.k8s.api.core.v1.EphemeralContainer", "env", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.EphemeralContainer", "ports", "merge", "containerPort", "map", &["containerPort", "protocol"]),
    ext("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", "merge", "devicePath", "map", &["devicePath"]),
    ext("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", "merge", "mountPath", "map", &["mountPath"]),
    ext("io.k8s.api.core.v1.NamespaceStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge", "", "set", &[]),
    ext("io.k8s.api.core.v1.NodeStatus", "addresses", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.NodeStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.PersistentVolumeClaimStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip", "map", &["ip"]),
    ext("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "initContainers", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "resourceClaims", "merge,retainKeys", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "schedulingGates", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "merge", "topologyKey", "map", &["topologyKey", "whenUnsatisfiable"]),
    ext("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.PodStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", "ip", "", &[]),
    ext("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", "ip", "map", &["ip"]),
    ext("io.k8s.api.core.v1.PodStatus", "resourceClaimStatuses", "merge,retainKeys", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.ReplicationControllerStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.core.v1.ResourceRequirements", "claims", "", "", "map", &["name"]),
    ext("io.k8s.api.core.v1.ResourceStatus", "resources", "", "", "map", &["resourceID"]),
    ext("io.k8s.api.core.v1.ServiceAccount", "secrets", "merge", "name", "map", &["name"]),
    ext("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port", "map", &["port", "protocol"]),
    ext("io.k8s.api.core.v1.ServiceStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.discovery.v1.Endpoint", "addresses", "", "", "set", &[]),
    ext("io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector", "replace", "", "", &[]),
    ext("io.k8s.api.policy.v1.PodDisruptionBudgetStatus", "conditions", "merge", "type", "map", &["type"]),
    ext("io.k8s.api.storage.v1.CSIDriverSpec", "volumeLifecycleModes", "", "", "set", &[]),
    ext("io.k8s.api.storage.v1.CSINodeSpec", "drivers", "merge", "name", "map", &["name"]),
    ext("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus", "conditions", "", "", "map", &["type"]),
    ext("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps", "x-kubernetes-validations", "merge", "rule", "map", &["rule"]),
    ext("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", "merge", "", "set", &[]),
    ext("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "merge", "uid", "map", &["uid"]),
    ext("io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.APIServiceStatus", "conditions", "merge", "type", "map", &["type"]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtin;

    fn document(group: &str, version: &str) -> Value {
        v3_group_version(&builtin(), group, version).expect("the group-version is served")
    }

    fn schema<'a>(document: &'a Value, name: &str) -> &'a Value {
        let schema = &document["components"]["schemas"][name];
        assert!(schema.is_object(), "{name} is a component");
        schema
    }

    /// Every value of every `$ref` key in a document.
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every key used as a schema keyword (not as a property name) in a document's schemas.
    fn keywords(schema: &Value, out: &mut BTreeSet<String>) {
        let Value::Object(map) = schema else { return };
        for (key, value) in map {
            out.insert(key.clone());
            match key.as_str() {
                "properties" | "patternProperties" => {
                    for v in value.as_object().into_iter().flatten().map(|(_, v)| v) {
                        keywords(v, out);
                    }
                }
                "allOf" | "anyOf" | "oneOf" => {
                    for v in value.as_array().into_iter().flatten() {
                        keywords(v, out);
                    }
                }
                _ => keywords(value, out),
            }
        }
    }

    #[test]
    fn the_root_lists_core_and_apps_with_stable_hashes() {
        let served = builtin();
        let first = v3_root(&served);
        let second = v3_root(&served);
        assert_eq!(first, second);
        let core = first["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .expect("api/v1 has a URL");
        let hash = core
            .strip_prefix("/openapi/v3/api/v1?hash=")
            .expect("a hashed URL");
        assert_eq!(hash.len(), 16);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(first["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps/v1 has a URL")
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert_ne!(
            first["paths"]["api/v1"]["serverRelativeURL"],
            first["paths"]["apis/batch/v1"]["serverRelativeURL"]
        );
    }

    #[test]
    fn the_content_hash_is_fnv1a_and_changes_with_the_document() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            content_hash(&json!("a")),
            format!("{:016X}", fnv1a_64(b"\"a\""))
        );
        let a = content_hash(&json!({"a": 1}));
        assert_eq!(a, content_hash(&json!({"a": 1})));
        assert_ne!(a, content_hash(&json!({"a": 2})));
    }

    #[test]
    fn apps_v1_has_a_deployments_patch_operation_kubectl_can_validate_with() {
        let apps = document("apps", "v1");
        let path = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &path["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        let params = patch["parameters"].as_array().expect("inline parameters");
        let field_validation = params
            .iter()
            .find(|p| p["name"] == "fieldValidation")
            .expect("a fieldValidation parameter");
        assert_eq!(field_validation["in"], "query");
        assert_eq!(field_validation["schema"]["type"], "string");
        for name in ["dryRun", "fieldManager"] {
            assert!(params.iter().any(|p| p["name"] == name), "{name}");
        }
        assert!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        for method in ["get", "put", "delete"] {
            assert!(path[method].is_object(), "{method}");
        }
        let collection = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"];
        assert_eq!(collection["post"]["x-kubernetes-action"], "post");
        assert_eq!(collection["get"]["x-kubernetes-action"], "list");
        assert!(apps["paths"]["/apis/apps/v1/deployments"]["get"].is_object());
        assert_eq!(
            apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status"]
                ["patch"]["operationId"],
            "patchAppsV1NamespacedDeploymentStatus"
        );
    }

    #[test]
    fn cluster_scoped_kinds_have_paths_without_a_namespace() {
        let core = document("", "v1");
        let nodes = &core["paths"]["/api/v1/nodes/{name}"];
        assert_eq!(nodes["get"]["operationId"], "readCoreV1Node");
        assert!(nodes["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .all(|p| p["name"] != "namespace"));
        let rbac = document("rbac.authorization.k8s.io", "v1");
        assert_eq!(
            rbac["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles"]["post"]["tags"],
            json!(["rbacAuthorization_v1"])
        );
    }

    #[test]
    fn every_ref_resolves_to_a_component_of_the_same_document() {
        for (key, doc) in v3_documents(&builtin()) {
            let mut found = Vec::new();
            refs(&doc, &mut found);
            assert!(!found.is_empty(), "{key}");
            for reference in found {
                let name = reference
                    .strip_prefix(COMPONENTS)
                    .unwrap_or_else(|| panic!("{key}: {reference} points into components"));
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{key}: {reference} resolves"
                );
            }
        }
    }

    #[test]
    fn no_json_schema_2020_keywords_are_left() {
        for (key, doc) in v3_documents(&builtin()) {
            let mut used = BTreeSet::new();
            for schema in doc["components"]["schemas"]
                .as_object()
                .expect("schemas")
                .values()
            {
                keywords(schema, &mut used);
            }
            for gone in ["$defs", "$schema", "definitions", "const", "prefixItems"] {
                assert!(!used.contains(gone), "{key} still uses {gone}");
            }
            for schema in doc["components"]["schemas"]
                .as_object()
                .expect("schemas")
                .values()
            {
                if let Some(t) = schema.get("type") {
                    assert!(t.is_string(), "{key}: type {t} is one type");
                }
            }
        }
    }

    #[test]
    fn pod_spec_describes_its_containers_and_how_they_merge() {
        let core = document("", "v1");
        let pod = schema(&core, "io.k8s.api.core.v1.Pod");
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert!(pod.get("title").is_none());
        assert!(pod.get("required").is_none(), "metadata is not required");
        let status = schema(&core, STATUS);
        assert!(status.get("title").is_none());
        assert!(!status["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("metadata"))));
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        let containers = &schema(&core, "io.k8s.api.core.v1.PodSpec")["properties"]["containers"];
        assert!(containers["description"]
            .as_str()
            .is_some_and(|d| d.contains("containers")));
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let ports = &schema(&core, "io.k8s.api.core.v1.Container")["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let tolerations = &schema(&core, "io.k8s.api.core.v1.PodSpec")["properties"]["tolerations"];
        assert!(tolerations.get("x-kubernetes-patch-strategy").is_none());
        schema(&core, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
        let list = schema(&core, "io.k8s.api.core.v1.PodList");
        assert_eq!(
            list["x-kubernetes-group-version-kind"][0]["kind"],
            "PodList"
        );
    }

    #[test]
    fn every_merge_table_entry_names_a_real_property() {
        let documents = v3_documents(&builtin());
        for ext in LIST_EXTENSIONS {
            let found = documents.values().any(|doc| {
                doc["components"]["schemas"][ext.definition]["properties"][ext.field].is_object()
            });
            assert!(found, "{}.{}", ext.definition, ext.field);
        }
    }

    #[test]
    fn unserved_group_versions_have_no_document() {
        assert!(v3_group_version(&builtin(), "apps", "v1beta1").is_none());
        assert!(v3_group_version(&builtin(), "nope.example.com", "v1").is_none());
    }

    #[test]
    fn json_schema_2020_constructs_become_openapi_3_0() {
        let names = BTreeMap::from([
            (String::new(), "com.example.v1.Widget".to_owned()),
            ("Spec".to_owned(), "com.example.v1.Spec".to_owned()),
        ]);
        let converted = convert(
            &json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Widget",
                "type": "object",
                "properties": {
                    "size": {"type": ["integer", "null"], "format": "int32", "exclusiveMinimum": 0},
                    "spec": {"anyOf": [{"$ref": "#/$defs/Spec"}, {"type": "null"}], "description": "The spec."},
                    "mode": {"const": "fast"},
                    "parent": {"$ref": "#"},
                    "$ref": {"type": "string"},
                },
            }),
            &names,
        );
        assert_eq!(
            converted,
            json!({
                "title": "Widget",
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "format": "int32", "nullable": true,
                             "minimum": 0, "exclusiveMinimum": true},
                    "spec": {"allOf": [{"$ref": "#/components/schemas/com.example.v1.Spec"}],
                             "description": "The spec.", "nullable": true},
                    "mode": {"enum": ["fast"]},
                    "parent": {"$ref": "#/components/schemas/com.example.v1.Widget"},
                    "$ref": {"type": "string"},
                },
            })
        );
    }

    #[test]
    fn a_custom_kind_is_named_like_a_crd_and_merges_without_strategic_patches() {
        use keelson_core::{ResourceType, Scope};
        let widget = ServedResource::new(
            ResourceType::new("example.com", "v1", "Widget", "widgets", Scope::Namespaced),
            json!({
                "title": "Widget",
                "type": "object",
                "properties": {"spec": {"$ref": "#/$defs/WidgetSpec"}},
                "$defs": {"WidgetSpec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
            }),
        );
        let doc = v3_group_version(&[widget], "example.com", "v1").expect("served");
        let kind = schema(&doc, "com.example.v1.Widget");
        assert_eq!(
            kind["properties"]["spec"]["$ref"],
            "#/components/schemas/com.example.v1.WidgetSpec"
        );
        schema(&doc, "com.example.v1.WidgetSpec");
        let patch =
            &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        assert!(patch["requestBody"]["content"]["application/merge-patch+json"].is_object());
        assert!(patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none());
    }
}
