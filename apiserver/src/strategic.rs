//! Strategic merge patch (`application/strategic-merge-patch+json`), as Kubernetes applies
//! it to built-in kinds.
//!
//! A strategic merge patch is a JSON merge patch whose lists know how to merge: a list whose
//! field declares the `merge` patch strategy with a merge key (`PodSpec.containers` by
//! `name`) merges element by element, matching elements by that key; a list of scalars
//! with the `merge` strategy (`ObjectMeta.finalizers`) is a set union; any other list is
//! replaced whole. The field metadata comes from the kind's schema and the table of
//! Kubernetes 1.33 patch strategies in [`crate::openapi`], compiled once per kind
//! ([`PatchSchema`]).
//!
//! The directives:
//! - `$patch: replace` in a map replaces the map; as an element of a merging list, it
//!   replaces the list; `$patch: delete` in a map deletes it, as an element of a merging
//!   list, deletes the element with its merge key; `$patch: merge` is the default;
//! - `$retainKeys: [..]` keeps only those keys of the map after merging;
//! - `$deleteFromPrimitiveList/<field>: [..]` removes values from a list of scalars;
//! - `$setElementOrder/<field>: [..]` gives the order of a merged list (by merge key, or
//!   value); elements it does not name follow in their existing order;
//! - `null` deletes a field, as in a JSON merge patch.
//!
//! ```
//! use keelson_apiserver::strategic::{apply, PatchSchema};
//! use keelson_apiserver::ServedResource;
//! use keelson_core::k8s_openapi::api::core::v1::Pod;
//! use serde_json::json;
//!
//! let schema = PatchSchema::compile(&ServedResource::of::<Pod>());
//! let mut pod = json!({"spec": {"containers": [
//!     {"name": "web", "image": "nginx:1"}, {"name": "log", "image": "fluentd"}]}});
//! apply(&schema, &mut pod, &json!({"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}))?;
//! assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:2");
//! assert_eq!(pod["spec"]["containers"][1]["name"], "log");
//! # Ok::<(), keelson_core::Error>(())
//! ```

use std::collections::HashMap;

use keelson_core::Error;
use serde_json::{Map, Value};

use crate::resources::ServedResource;

/// A kind's schema compiled for strategic merge: for each field, how its lists merge.
pub struct PatchSchema {
    /// Node 0 is the root.
    nodes: Vec<Node>,
}

impl std::fmt::Debug for PatchSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchSchema")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

#[derive(Default)]
struct Node {
    properties: HashMap<String, Field>,
    /// The schema of a map's values.
    additional: Option<usize>,
    /// The schema of a list's elements.
    items: Option<usize>,
}

#[derive(Clone, Copy, Default)]
struct Field {
    node: Option<usize>,
    list: ListMerge,
}

/// How a list field merges.
#[derive(Clone, Copy, Default)]
enum ListMerge {
    /// Replaced whole (no patch strategy).
    #[default]
    Replace,
    /// Elements matched by this merge key and merged.
    ByKey(&'static str),
    /// A set of scalars: the union.
    Set,
}

impl PatchSchema {
    /// Compiles the schema of a served kind.
    pub fn compile(res: &ServedResource) -> PatchSchema {
        let root = &res.schema;
        let mut c = Compiler {
            root,
            nodes: Vec::new(),
            memo: HashMap::new(),
        };
        c.node(root, &crate::openapi::definition_name(res), 0);
        PatchSchema { nodes: c.nodes }
    }

    fn field(&self, node: Option<usize>, name: &str) -> Field {
        let Some(node) = node.and_then(|n| self.nodes.get(n)) else {
            return Field::default();
        };
        match node.properties.get(name) {
            Some(f) => *f,
            None => Field {
                node: node.additional,
                list: ListMerge::Replace,
            },
        }
    }

    fn items(&self, node: Option<usize>) -> Option<usize> {
        node.and_then(|n| self.nodes.get(n)).and_then(|n| n.items)
    }

    /// The node of field `name` under `node`, and how the field's lists merge:
    /// `Some(key)` by that merge key, `Some("")` as a set of scalars, `None` whole.
    pub(crate) fn child(
        &self,
        node: Option<usize>,
        name: &str,
    ) -> (Option<usize>, Option<&'static str>) {
        let f = self.field(node, name);
        let list = match f.list {
            ListMerge::Replace => None,
            ListMerge::ByKey(k) => Some(k),
            ListMerge::Set => Some(""),
        };
        (f.node, list)
    }

    /// The node of a list's elements.
    pub(crate) fn element(&self, node: Option<usize>) -> Option<usize> {
        self.items(node)
    }
}

struct Compiler<'s> {
    root: &'s Value,
    nodes: Vec<Node>,
    memo: HashMap<*const Value, usize>,
}

/// How far references and combinators are followed.
const MAX_DEPTH: usize = 32;

impl<'s> Compiler<'s> {
    /// The object branches of a schema, each with the definition it belongs to: `$ref`s
    /// followed into `$defs`, `allOf`/`anyOf`/`oneOf` into their branches.
    fn branches(
        &self,
        schema: &'s Value,
        def: &str,
        depth: usize,
        out: &mut Vec<(&'s Value, String)>,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let Some(obj) = schema.as_object() else {
            return;
        };
        out.push((schema, def.to_owned()));
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            if let Some(name) = r.strip_prefix("#/$defs/") {
                if let Some(target) = self.root.get("$defs").and_then(|d| d.get(name)) {
                    self.branches(target, name, depth + 1, out);
                }
            } else if r == "#" {
                self.branches(self.root, def, depth + 1, out);
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for b in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                self.branches(b, def, depth + 1, out);
            }
        }
    }

    fn node(&mut self, schema: &'s Value, def: &str, depth: usize) -> usize {
        if let Some(id) = self.memo.get(&(schema as *const Value)) {
            return *id;
        }
        let id = self.nodes.len();
        self.nodes.push(Node::default());
        self.memo.insert(schema as *const Value, id);
        let mut branches = Vec::new();
        self.branches(schema, def, depth, &mut branches);
        let mut node = Node::default();
        for (branch, def) in &branches {
            if let Some(props) = branch.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    if node.properties.contains_key(name) {
                        continue;
                    }
                    let list = match crate::openapi::patch_strategy(def, name) {
                        Some((strategy, key)) if strategy.split(',').any(|s| s == "merge") => {
                            if key.is_empty() {
                                ListMerge::Set
                            } else {
                                ListMerge::ByKey(key)
                            }
                        }
                        _ => ListMerge::Replace,
                    };
                    let child = self.node(prop, def, depth + 1);
                    node.properties.insert(
                        name.clone(),
                        Field {
                            node: Some(child),
                            list,
                        },
                    );
                }
            }
            if node.additional.is_none() {
                if let Some(a) = branch.get("additionalProperties").filter(|a| a.is_object()) {
                    node.additional = Some(self.node(a, def, depth + 1));
                }
            }
            if node.items.is_none() {
                if let Some(items) = branch.get("items").filter(|i| i.is_object()) {
                    node.items = Some(self.node(items, def, depth + 1));
                }
            }
        }
        self.nodes[id] = node;
        id
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

/// Applies a strategic merge patch to `target`; on error `target` is unchanged.
///
/// # Errors
/// 400 for a patch that is not an object, an unknown `$patch` value, a merging list
/// element without its merge key, or malformed directives.
pub fn apply(schema: &PatchSchema, target: &mut Value, patch: &Value) -> Result<(), Error> {
    let mut copy = target.clone();
    apply_in_place(schema, &mut copy, patch)?;
    *target = copy;
    Ok(())
}

/// [`apply`] without the copy that keeps `target` unchanged on error: for a caller whose
/// `target` is a throwaway copy already (the registry's patch).
pub(crate) fn apply_in_place(
    schema: &PatchSchema,
    target: &mut Value,
    patch: &Value,
) -> Result<(), Error> {
    let Value::Object(patch) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(doc) = target else {
        return Ok(());
    };
    if let Outcome::Delete = merge_map(schema, Some(0), doc, patch)? {
        *target = Value::Object(Map::new());
    }
    Ok(())
}

enum Outcome {
    Keep,
    Delete,
}

fn directive(patch: &Map<String, Value>) -> Result<Option<&str>, Error> {
    match patch.get("$patch") {
        None => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "replace" | "delete" | "merge") => {
            Ok(Some(s.as_str()))
        }
        Some(other) => Err(bad(format!("Unknown patch type: {other}"))),
    }
}

fn merge_map(
    schema: &PatchSchema,
    node: Option<usize>,
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Outcome, Error> {
    match directive(patch)? {
        Some("replace") => {
            *original = strip(patch);
            return Ok(Outcome::Keep);
        }
        Some("delete") => return Ok(Outcome::Delete),
        _ => {}
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let list = value
                .as_array()
                .ok_or_else(|| bad(format!("invalid $setElementOrder/{field}: must be a list")))?;
            orders.push((field, list));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value.as_array().ok_or_else(|| {
                bad(format!(
                    "invalid $deleteFromPrimitiveList/{field}: must be a list"
                ))
            })?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            if !matches!(key.as_str(), "$patch" | "$retainKeys") {
                return Err(bad(format!("unknown patch directive {key:?}")));
            }
            continue;
        }
        let field = schema.field(node, key);
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(p) => match original.get_mut(key) {
                Some(Value::Object(o)) => {
                    if let Outcome::Delete = merge_map(schema, field.node, o, p)? {
                        original.remove(key);
                    }
                }
                _ => match directive(p)? {
                    Some("delete") => {
                        original.remove(key);
                    }
                    _ => {
                        original.insert(key.clone(), Value::Object(strip(p)));
                    }
                },
            },
            Value::Array(p) => {
                let merged = match (field.list, original.remove(key)) {
                    (ListMerge::ByKey(merge_key), Some(Value::Array(o))) => {
                        merge_list(schema, schema.items(field.node), o, p, merge_key)?
                    }
                    (ListMerge::Set, Some(Value::Array(mut o))) => {
                        for v in p {
                            if !o.contains(v) {
                                o.push(v.clone());
                            }
                        }
                        o
                    }
                    (ListMerge::ByKey(_), _) => without_directive_elements(p)?,
                    _ => p.iter().map(strip_value).collect(),
                };
                original.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (field, order) in orders {
        let key = match schema.field(node, field).list {
            ListMerge::ByKey(k) => Some(k),
            _ => None,
        };
        if let Some(Value::Array(list)) = original.get_mut(field) {
            reorder(list, order, key);
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keys = retain
            .as_array()
            .ok_or_else(|| bad("invalid $retainKeys: must be a list of strings"))?;
        original.retain(|k, _| keys.iter().any(|r| r.as_str() == Some(k.as_str())));
    }
    Ok(Outcome::Keep)
}

/// Merges a list whose elements are matched by `merge_key`.
fn merge_list(
    schema: &PatchSchema,
    items: Option<usize>,
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
) -> Result<Vec<Value>, Error> {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return without_directive_elements(patch);
    }
    for element in patch {
        let Value::Object(p) = element else {
            // A scalar in a list that merges by key: add it if absent.
            if !original.contains(element) {
                original.push(element.clone());
            }
            continue;
        };
        let Some(key_value) = p.get(merge_key) else {
            return Err(bad(format!(
                "map: {} does not contain declared merge key: {merge_key}",
                Value::Object(p.clone())
            )));
        };
        let found = original
            .iter()
            .position(|o| o.get(merge_key) == Some(key_value));
        match (directive(p)?, found) {
            (Some("delete"), _) => original.retain(|o| o.get(merge_key) != Some(key_value)),
            (_, Some(i)) => {
                if let Value::Object(o) = &mut original[i] {
                    if let Outcome::Delete = merge_map(schema, items, o, p)? {
                        original.remove(i);
                    }
                } else {
                    original[i] = Value::Object(strip(p));
                }
            }
            (_, None) => original.push(Value::Object(strip(p))),
        }
    }
    Ok(original)
}

/// A patch list as a new value: directive-only elements dropped, directives stripped.
fn without_directive_elements(patch: &[Value]) -> Result<Vec<Value>, Error> {
    let mut out = Vec::with_capacity(patch.len());
    for e in patch {
        if let Value::Object(m) = e {
            if directive(m)?.is_some() && m.len() == 1 {
                continue;
            }
            if directive(m)? == Some("delete") {
                continue;
            }
        }
        out.push(strip_value(e));
    }
    Ok(out)
}

/// Orders a merged list as `$setElementOrder` says; elements it does not name follow.
fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let ident = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&ident).collect();
    let mut rest = Vec::new();
    let mut placed: Vec<Option<Value>> = vec![None; wanted.len()];
    for v in list.drain(..) {
        match wanted.iter().position(|w| *w == ident(&v)) {
            Some(i) if placed[i].is_none() => placed[i] = Some(v),
            _ => rest.push(v),
        }
    }
    list.extend(placed.into_iter().flatten());
    list.extend(rest);
}

/// A patch map as a value to store: every directive removed, recursively.
fn strip(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip_value(v)))
        .collect()
}

/// A patch with its directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`) removed: the fields it sets, to check against the schema.
pub fn without_directives(patch: &Value) -> Value {
    strip_value(patch)
}

fn strip_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| {
                    !e.as_object()
                        .is_some_and(|m| m.len() == 1 && m.contains_key("$patch"))
                })
                .map(strip_value)
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::apps::v1::Deployment;
    use keelson_core::k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pods() -> PatchSchema {
        PatchSchema::compile(&ServedResource::of::<Pod>())
    }

    fn deployments() -> PatchSchema {
        PatchSchema::compile(&ServedResource::of::<Deployment>())
    }

    fn patched(schema: &PatchSchema, mut target: Value, patch: Value) -> Value {
        apply(schema, &mut target, &patch).expect("applies");
        target
    }

    #[test]
    fn containers_merge_by_name_and_new_ones_are_appended() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "y:1"}]}});
        let out = patched(
            &pods(),
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "x:2"}, {"name": "c", "image": "z"}]}}),
        );
        let c = &out["spec"]["containers"];
        assert_eq!(
            c[0],
            json!({"name": "a", "image": "x:2", "ports": [{"containerPort": 80}]})
        );
        assert_eq!(c[1]["name"], "b");
        assert_eq!(c[2], json!({"name": "c", "image": "z"}));
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_sets_are_unions() {
        let pod = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"tolerations": [{"key": "k1"}], "containers": [{"name": "a", "args": ["1", "2"]}]}});
        let out = patched(
            &pods(),
            pod,
            json!({"metadata": {"finalizers": ["b", "a"]},
                "spec": {"tolerations": [{"key": "k2"}], "containers": [{"name": "a", "args": ["3"]}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "k2"}]));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
    }

    #[test]
    fn directives_delete_replace_retain_and_order() {
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "web", "tier": "x"}},
            "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}, {"name": "c", "image": "3"}]}}}});
        let out = patched(
            &deployments(),
            d,
            json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "template": {
                "metadata": {"labels": {"$patch": "replace", "app": "api"}},
                "spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "image": "9"}]
                }}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"],
            json!({"app": "api"})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c", "image": "3"}, {"name": "a", "image": "9"}])
        );
    }

    #[test]
    fn replace_a_whole_list_delete_from_a_primitive_list_and_null_removes() {
        let pod = json!({"metadata": {"finalizers": ["a", "b", "c"], "labels": {"x": "1"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = patched(
            &pods(),
            pod,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "labels": {"x": null}},
                "spec": {"containers": [{"$patch": "replace"}, {"name": "z"}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
    }

    #[test]
    fn bad_patches_are_400_and_change_nothing() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "1"}]}});
        let before = pod.clone();
        for patch in [
            json!({"spec": {"containers": [{"image": "no-name"}]}}),
            json!({"spec": {"$patch": "explode"}}),
            json!([1, 2]),
            json!({"$retainKeys": "nope"}),
        ] {
            let e = apply(&pods(), &mut pod, &patch).expect_err("bad patch");
            assert_eq!(e.code(), 400, "{patch}: {e}");
            assert_eq!(pod, before);
        }
    }
}
