//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and, for built-in kinds,
//! strategic merge patch ([`crate::strategic`]).

use keelson_core::Error;
use serde_json::{Map, Value};

/// The patch types the server understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json` (built-in kinds only).
    Strategic,
}

impl PatchType {
    /// The patch type of a request's Content-Type.
    ///
    /// # Errors
    /// 415 for any other type, naming the ones accepted.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, Error> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/merge-patch+json") => Ok(PatchType::Merge),
            Some("application/json-patch+json") => Ok(PatchType::Json),
            Some("application/strategic-merge-patch+json") => Ok(PatchType::Strategic),
            _ => Err(Error::unsupported_media_type(&[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
                "application/strategic-merge-patch+json",
            ])),
        }
    }

    /// Applies `patch` to `target`, an object of the kind `res` serves. On error,
    /// `target` may be half patched: pass a copy.
    ///
    /// # Errors
    /// 400 for a malformed patch; 422 for a JSON patch that does not apply (a failed
    /// `test`, a path that does not exist); 415 for a strategic merge patch of a kind that
    /// is not built in (as Kubernetes answers for custom resources).
    pub fn apply(
        self,
        res: &crate::ServedResource,
        target: &mut Value,
        patch: &Value,
    ) -> Result<(), Error> {
        match self {
            PatchType::Merge => {
                merge(target, patch);
                Ok(())
            }
            PatchType::Json => json_patch(target, patch),
            PatchType::Strategic => match res.patch_schema() {
                // The registry patches a copy of its own: no second copy is needed.
                Some(schema) => crate::strategic::apply_in_place(schema, target, patch),
                None => Err(Error::unsupported_media_type(&[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ])),
            },
        }
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> Result<Vec<String>, Error> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| {
        Error::bad_request(format!(
            "invalid JSON patch path {path:?}: must start with '/'"
        ))
    })?;
    Ok(rest.split('/').map(unescape).collect())
}

fn unprocessable(message: String) -> Error {
    Error::Invalid {
        kind: keelson_core::GroupKind::new("", ""),
        name: String::new(),
        causes: Vec::new(),
        message,
    }
}

/// The parent container of `path` and the last token.
fn parent<'a>(
    target: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<(&'a mut Value, String), Error> {
    let (last, init) = tokens
        .split_last()
        .ok_or_else(|| unprocessable(format!("cannot operate on the root at {path:?}")))?;
    let mut cur = target;
    for t in init {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| unprocessable(format!("doc is missing path: {path:?}")))?;
    }
    Ok((cur, last.clone()))
}

fn get<'a>(target: &'a Value, path: &str) -> Result<&'a Value, Error> {
    target
        .pointer(path)
        .ok_or_else(|| unprocessable(format!("doc is missing path: {path:?}")))
}

fn remove(target: &mut Value, path: &str) -> Result<Value, Error> {
    let tokens = split(path)?;
    let (p, last) = parent(target, &tokens, path)?;
    match p {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    }
    .ok_or_else(|| unprocessable(format!("doc is missing path: {path:?}")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), Error> {
    let tokens = split(path)?;
    if tokens.is_empty() {
        *target = value;
        return Ok(());
    }
    let (p, last) = parent(target, &tokens, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(unprocessable(format!(
                "add operation does not apply: index out of range at {path:?}"
            ))),
        },
        _ => Err(unprocessable(format!("doc is missing path: {path:?}"))),
    }
}

/// RFC 6902, applied to a copy so that a failing operation changes nothing.
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let ops = patch
        .as_array()
        .ok_or_else(|| Error::bad_request("a JSON patch must be an array of operations"))?;
    let mut doc = target.clone();
    for op in ops {
        let field = |name: &str| -> Result<&str, Error> {
            op.get(name).and_then(Value::as_str).ok_or_else(|| {
                Error::bad_request(format!("JSON patch operation {op} has no {name:?}"))
            })
        };
        let path = field("path")?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                Error::bad_request(format!("JSON patch operation {op} has no \"value\""))
            })
        };
        match field("op")? {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, field("from")?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get(&doc, field("from")?)?.clone();
                add(&mut doc, path, v)?;
            }
            "test" => {
                if get(&doc, path)? != &value()? {
                    return Err(unprocessable(format!("testing value {path:?} failed")));
                }
            }
            other => {
                return Err(Error::bad_request(format!(
                    "unknown JSON patch operation {other:?}"
                )))
            }
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_merges_objects_and_null_removes() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge(
            &mut t,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"x": [3]}}),
        );
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"x": [3]}})
        );
    }

    #[test]
    fn a_json_patch_applies_every_operation_or_none() {
        let mut t = json!({"a": {"b": [1, 2]}, "c": "x"});
        let ok = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "test", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/b/0"}
        ]);
        let res =
            crate::ServedResource::of::<keelson_core::k8s_openapi::api::core::v1::ConfigMap>();
        PatchType::Json.apply(&res, &mut t, &ok).expect("applies");
        assert_eq!(t, json!({"a": {"b": [2, 3]}, "c": "y", "e": "y"}));
        let failing = json!([{"op": "replace", "path": "/c", "value": "z"}, {"op": "test", "path": "/c", "value": "no"}]);
        let err = PatchType::Json
            .apply(&res, &mut t, &failing)
            .expect_err("test fails");
        assert_eq!(err.code(), 422);
        assert_eq!(t["c"], "y", "nothing changed");
        let missing = json!([{"op": "remove", "path": "/nope"}]);
        assert_eq!(
            PatchType::Json
                .apply(&res, &mut t, &missing)
                .expect_err("missing")
                .code(),
            422
        );
    }

    #[test]
    fn other_patch_types_are_unsupported_media() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8").ok(),
            Some(PatchType::Merge)
        );
        let err = PatchType::from_content_type("text/plain").expect_err("unknown");
        assert_eq!(err.code(), 415);
    }

    #[test]
    fn strategic_merge_is_for_built_in_kinds_only() {
        use keelson_core::{ResourceType, Scope};
        let widgets = crate::ServedResource::new(
            ResourceType::new("example.com", "v1", "Widget", "widgets", Scope::Namespaced),
            json!({"type": "object"}),
        );
        let mut w = json!({"spec": {}});
        let err = PatchType::Strategic
            .apply(&widgets, &mut w, &json!({"spec": {"a": 1}}))
            .expect_err("custom kind");
        assert_eq!(err.code(), 415);
    }
}
