//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) and the field
//! ownership it rests on (`metadata.managedFields`).
//!
//! Each manager owns a set of fields, written in Kubernetes' `FieldsV1` form
//! (`{"f:spec":{"f:replicas":{}}}`; list elements by merge key, `k:{"name":"web"}`, or by
//! value, `v:"x"`; `"."` for an element itself). An apply by manager M with configuration
//! C:
//!
//! 1. the fields C sets are M's new set;
//! 2. a field of that set owned by another manager, whose value C changes, is a conflict:
//!    409 naming each field and its manager, unless `force=true`, which takes it over;
//! 3. fields M owned before and no longer sets are removed from the object, unless
//!    another manager owns them too;
//! 4. C is merged into the object (lists by their merge keys, as strategic merge does;
//!    custom kinds' lists whole);
//! 5. M's entry (operation `Apply`) records the new set.
//!
//! Other writes made with a `fieldManager` (kubectl passes one on every write) record
//! the fields they change under that manager with operation `Update`, taking them from
//! the others, as Kubernetes does. Writes without one leave `managedFields` as it is.
//! Only `metadata.labels`, `annotations`, `finalizers` and `ownerReferences` are tracked
//! in metadata, and never the status of a kind whose status is a subresource.

use std::collections::BTreeMap;

use keelson_core::Error;
use serde_json::{json, Map, Value};

use crate::resources::ServedResource;
use crate::strategic::PatchSchema;

/// A set of fields, as a tree: each child is a path element (`f:name`, `k:{...}`,
/// `v:value`, `i:3`), and `own` marks a node owned as a whole (a leaf, or `"."`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet {
    own: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    /// The set in `FieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.own && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, v) in &self.children {
            m.insert(k.clone(), v.to_json());
        }
        Value::Object(m)
    }

    /// The set of `FieldsV1` JSON.
    pub fn from_json(v: &Value) -> FieldSet {
        let Some(m) = v.as_object() else {
            return FieldSet::default();
        };
        let mut set = FieldSet {
            own: m.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, v) in m {
            if k == "." {
                set.own = true;
            } else {
                set.children.insert(k.clone(), FieldSet::from_json(v));
            }
        }
        set
    }

    fn is_empty(&self) -> bool {
        !self.own && self.children.is_empty()
    }

    /// Every owned path, each as its list of elements.
    fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.own {
            out.push(prefix.clone());
        }
        for (k, v) in &self.children {
            prefix.push(k.clone());
            v.collect(prefix, out);
            prefix.pop();
        }
    }

    fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.own,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.own = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Removes a path; returns whether the set is now empty.
    fn remove(&mut self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.own = false,
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(first) {
                    if child.remove(rest) {
                        self.children.remove(first);
                    }
                }
            }
        }
        self.is_empty()
    }
}

/// The fields an object (or an applied configuration) sets.
pub fn fields_of(schema: Option<&PatchSchema>, res: &ServedResource, object: &Value) -> FieldSet {
    let mut set = FieldSet::default();
    let Some(map) = object.as_object() else {
        return set;
    };
    let status_apart = res.subresources.iter().any(|s| s.name == "status");
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "status" if status_apart => {}
            "metadata" => {
                let meta = schema
                    .map(|s| s.child(Some(0), "metadata").0)
                    .unwrap_or(None);
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(v) = value.get(field) {
                        let (node, list) = schema.map_or((None, None), |s| s.child(meta, field));
                        let mut child = FieldSet::default();
                        walk(schema, node, list, v, &mut child);
                        set.children
                            .entry("f:metadata".into())
                            .or_default()
                            .children
                            .insert(format!("f:{field}"), child);
                    }
                }
            }
            _ => {
                let (node, list) = schema.map_or((None, None), |s| s.child(Some(0), key));
                let mut child = FieldSet::default();
                walk(schema, node, list, value, &mut child);
                set.children.insert(format!("f:{key}"), child);
            }
        }
    }
    set
}

/// The fields `value` sets, into `set` (the field's own node).
fn walk(
    schema: Option<&PatchSchema>,
    node: Option<usize>,
    list: Option<&'static str>,
    value: &Value,
    set: &mut FieldSet,
) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let (child_node, child_list) = schema.map_or((None, None), |s| s.child(node, k));
                let mut child = FieldSet::default();
                walk(schema, child_node, child_list, v, &mut child);
                set.children.insert(format!("f:{k}"), child);
            }
        }
        Value::Array(items) if list.is_some() && !items.is_empty() => {
            let element = schema.and_then(|s| s.element(node));
            for item in items {
                let Some(key) = element_key(list, item) else {
                    // An element the list cannot name: the list is owned whole.
                    set.own = true;
                    set.children.clear();
                    return;
                };
                let mut child = FieldSet {
                    own: true,
                    children: BTreeMap::new(),
                };
                if let Value::Object(_) = item {
                    walk(schema, element, None, item, &mut child);
                    child.own = true;
                }
                set.children.insert(key, child);
            }
        }
        _ => set.own = true,
    }
}

/// The path element of a list element: `k:{"name":"x"}` by merge key, `v:"x"` by value.
fn element_key(list: Option<&str>, item: &Value) -> Option<String> {
    match list {
        Some("") => Some(format!("v:{item}")),
        Some(key) => item.get(key).map(|k| format!("k:{}", json!({ key: k }))),
        None => None,
    }
}

/// Finds the value at a field path.
fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    let next = step(value, first)?;
    get_path(next, rest)
}

fn step<'a>(value: &'a Value, element: &str) -> Option<&'a Value> {
    if let Some(f) = element.strip_prefix("f:") {
        value.get(f)
    } else if let Some(k) = element.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        value
            .as_array()?
            .iter()
            .find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))
    } else if let Some(v) = element.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        value.as_array()?.iter().find(|e| **e == want)
    } else {
        None
    }
}

/// Removes the value at a field path (a map key, or a list element).
fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, init)) = path.split_last() else {
        return;
    };
    let mut cur = value;
    for element in init {
        let next = if let Some(f) = element.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = element.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|e| want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|e| !want.iter().all(|(wk, wv)| e.get(wk) == Some(wv)));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
            a.retain(|e| *e != want);
        }
    }
}

/// A path as Kubernetes prints it in conflicts: `.spec.replicas`,
/// `.spec.containers[name="web"].image`.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(f) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = element.strip_prefix("k:") {
            let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = element.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: FieldSet,
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            api_version: e
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            time: e
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            fields: e
                .get("fieldsV1")
                .map(FieldSet::from_json)
                .unwrap_or_default(),
        })
        .collect()
}

fn set_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": e.fields.to_json(),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> String {
    crate::registry::now().to_string()
}

/// The result of an apply: the object to write.
pub(crate) fn apply(
    res: &ServedResource,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Error> {
    let schema = res.patch_schema();
    let api_version = res.rt.api_version();
    let new_set = fields_of(schema, res, config);
    let Some(live) = live else {
        let mut obj = config.clone();
        set_entries(
            &mut obj,
            &[Entry {
                manager: manager.to_owned(),
                operation: "Apply".into(),
                api_version,
                time: now(),
                subresource: String::new(),
                fields: new_set,
            }],
        );
        return Ok(obj);
    };
    let mut managers = entries(live);
    // Conflicts: a field another manager owns, whose value this apply changes.
    let mut conflicts: Vec<(String, String, Vec<String>)> = Vec::new();
    for path in new_set.leaves() {
        for other in managers
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        {
            if other.fields.contains(&path) && get_path(live, &path) != get_path(config, &path) {
                conflicts.push((
                    other.manager.clone(),
                    other.api_version.clone(),
                    path.clone(),
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let listed: Vec<String> = conflicts
            .iter()
            .map(|(m, v, p)| format!("- {m} using {v}: {}", display(p)))
            .collect();
        let message = format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            if conflicts.len() == 1 {
                let (m, v, p) = &conflicts[0];
                format!("conflict with \"{m}\" using {v}: {}", display(p))
            } else {
                format!("conflicts with\n{}", listed.join("\n"))
            }
        );
        return Err(Error::Conflict {
            resource: res.rt.group_resource(),
            name: config
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            message,
        });
    }
    for (m, _, path) in &conflicts {
        for e in managers.iter_mut().filter(|e| &e.manager == m) {
            e.fields.remove(path);
        }
    }
    // Fields this manager stops applying go, unless someone else owns them.
    let mut object = live.clone();
    let old_set = managers
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for path in old_set.leaves() {
        let still = new_set.contains(&path);
        let others = managers
            .iter()
            .any(|e| !(e.manager == manager && e.operation == "Apply") && e.fields.contains(&path));
        if !still && !others {
            remove_path(&mut object, &path);
        }
    }
    // Merge the configuration in.
    let mut patch = config.clone();
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    match schema {
        Some(schema) => crate::strategic::apply(schema, &mut object, &patch)?,
        None => crate::patch::merge(&mut object, &patch),
    }
    match managers
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Apply")
    {
        Some(e) => {
            e.fields = new_set;
            e.time = now();
            e.api_version = api_version;
        }
        None => managers.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".into(),
            api_version,
            time: now(),
            subresource: String::new(),
            fields: new_set,
        }),
    }
    set_entries(&mut object, &managers);
    Ok(object)
}

/// Records a non-apply write by `manager`: the fields that differ from `old` (all of
/// them on create) become its own (operation `Update`) and no one else's.
pub(crate) fn record_update(
    res: &ServedResource,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
) {
    let schema = res.patch_schema();
    let mut managers = old.map(entries).unwrap_or_default();
    let new_fields = fields_of(schema, res, new);
    let changed: Vec<Vec<String>> = match old {
        None => new_fields.leaves(),
        Some(old) => new_fields
            .leaves()
            .into_iter()
            .filter(|p| get_path(old, p) != get_path(new, p))
            .collect(),
    };
    if changed.is_empty() {
        set_entries(new, &managers);
        return;
    }
    for e in managers.iter_mut() {
        for p in &changed {
            e.fields.remove(p);
        }
    }
    let api_version = res.rt.api_version();
    let idx = managers.iter().position(|e| {
        e.manager == manager && e.operation == "Update" && e.subresource == subresource
    });
    let entry = match idx {
        Some(i) => &mut managers[i],
        None => {
            managers.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.clone(),
                time: String::new(),
                subresource: subresource.to_owned(),
                fields: FieldSet::default(),
            });
            let last = managers.len() - 1;
            &mut managers[last]
        }
    };
    for p in &changed {
        entry.fields.insert(p);
    }
    entry.time = now();
    entry.api_version = api_version;
    set_entries(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::k8s_openapi::api::apps::v1::Deployment;

    fn deployments() -> ServedResource {
        ServedResource::of::<Deployment>().with_status()
    }

    #[test]
    fn field_sets_name_list_elements_by_merge_key() {
        let res = deployments();
        let set = fields_of(
            res.patch_schema(),
            &res,
            &json!({"metadata": {"name": "d", "labels": {"a": "b"}},
                    "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "x"}]}}}}),
        );
        assert_eq!(
            set.to_json(),
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        assert_eq!(FieldSet::from_json(&set.to_json()), set);
    }

    #[test]
    fn apply_conflicts_forces_and_removes_what_a_manager_stops_applying() {
        let res = deployments();
        let base = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "template": {"metadata": {"labels": {"a": "b", "extra": "1"}}}}});
        let first = apply(&res, None, &base, "alice", false).expect("create");
        // Bob changes the replicas with an ordinary update.
        let mut scaled = first.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(&res, Some(&first), &mut scaled, "bob", "");
        // Alice re-applies replicas 1: a conflict with bob.
        let e = apply(&res, Some(&scaled), &base, "alice", false).expect_err("conflict");
        assert_eq!(e.code(), 409);
        assert!(
            e.to_string()
                .contains(r#"conflict with "bob" using apps/v1: .spec.replicas"#),
            "{e}"
        );
        // Without replicas, no conflict; and the label alice stopped applying goes.
        let mut less = base.clone();
        less["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        less["spec"]["template"]["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("extra");
        let out = apply(&res, Some(&scaled), &less, "alice", false).expect("apply");
        assert_eq!(out["spec"]["replicas"], 3, "bob's value stays");
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"],
            json!({"a": "b"})
        );
        // Forced, alice takes replicas over.
        let forced = apply(&res, Some(&scaled), &base, "alice", true).expect("force");
        assert_eq!(forced["spec"]["replicas"], 1);
        let managers: Vec<String> = entries(&forced).iter().map(|e| e.manager.clone()).collect();
        assert!(
            !entries(&forced).iter().any(|e| e.manager == "bob"
                && e.fields.contains(&["f:spec".into(), "f:replicas".into()])),
            "{managers:?}"
        );
    }
}
