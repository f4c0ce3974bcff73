//! Schema-driven checks of incoming objects: unknown fields (the `fieldValidation` query
//! parameter) and required fields, plus the few required-by-validation rules of built-in
//! kinds that their schemas do not express.
//!
//! The schemas are the kinds' JSON Schemas (draft 2020-12, `$defs`, `$ref`), as
//! [`ServedResource::schema`](crate::ServedResource) holds them, compiled once per kind into
//! a [`Schema`] so that a check costs a walk of the object only. Paths are written the way
//! Kubernetes writes them: `spec.containers[0].image`.
//!
//! ```
//! use keelson_apiserver::validation::{check_unknown, FieldValidation};
//! use keelson_apiserver::ServedResource;
//! use keelson_core::k8s_openapi::api::core::v1::ConfigMap;
//!
//! let configmaps = ServedResource::of::<ConfigMap>();
//! let schema = configmaps.validator();
//! let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "datta": {}});
//! let warnings = check_unknown(FieldValidation::Warn, "ConfigMap", schema, &cm).unwrap();
//! assert_eq!(warnings, [r#"unknown field "datta""#]);
//! let err = check_unknown(FieldValidation::Strict, "ConfigMap", schema, &cm).unwrap_err();
//! assert_eq!(err.to_string(), r#"strict decoding error: unknown field "datta""#);
//! ```

use std::collections::HashSet;

use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use keelson_core::{CauseType, Error, FieldError, LabelSelector, ResourceType};
use serde_json::{json, Map, Value};

/// How far `$ref`, `allOf`, `anyOf` and `oneOf` are followed before a schema is treated
/// as allowing anything (guards against reference cycles).
const MAX_SCHEMA_DEPTH: usize = 32;

/// The values the `fieldValidation` query parameter may take, in Kubernetes' sorted order.
const FIELD_VALIDATION_VALUES: &[&str] = &["", "Ignore", "Strict", "Warn"];

/// What to do with fields of a request body that the kind's schema does not know: the
/// `fieldValidation` query parameter of create, update and patch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and warn about each (the server default).
    #[default]
    Warn,
    /// Reject the request with a 400 naming the unknown fields.
    Strict,
}

impl FieldValidation {
    /// Parses the parameter's value; the empty string means the default, [`Self::Warn`].
    ///
    /// # Errors
    ///
    /// Any other value is a `fieldValidation: Unsupported value: "x": supported values:
    /// "", "Ignore", "Strict", "Warn"` field error, as Kubernetes words it.
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        match value {
            "" | "Warn" => Ok(Self::Warn),
            "Ignore" => Ok(Self::Ignore),
            "Strict" => Ok(Self::Strict),
            other => Err(FieldError::not_supported(
                "fieldValidation",
                other,
                FIELD_VALIDATION_VALUES,
            )),
        }
    }

    /// Reads the parameter from a request's query: absent means [`Self::Warn`].
    /// `options_kind` is the options kind of the verb (`CreateOptions`, `UpdateOptions`,
    /// `PatchOptions`), which Kubernetes names in the error.
    ///
    /// # Errors
    ///
    /// An unknown value is the 422 Kubernetes returns: `CreateOptions.meta.k8s.io "" is
    /// invalid: fieldValidation: Unsupported value: "x": supported values: "", "Ignore",
    /// "Strict", "Warn"`.
    pub fn from_query(value: Option<&str>, options_kind: &str) -> Result<Self, Error> {
        Self::parse(value.unwrap_or_default())
            .map_err(|cause| Error::invalid(("meta.k8s.io", options_kind), "", vec![cause]))
    }

    /// The parameter's value: `Ignore`, `Warn` or `Strict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "Ignore",
            Self::Warn => "Warn",
            Self::Strict => "Strict",
        }
    }
}

impl std::fmt::Display for FieldValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FieldValidation {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The paths of the fields of `object` that `schema` does not know, in Kubernetes'
/// notation (`spec.foo`, `spec.containers[0].imagee`, `metadata.foo`), in the order the
/// object's maps iterate.
///
/// `$ref`s are resolved into the schema's `$defs`; maps (`additionalProperties`) accept
/// any key; `x-kubernetes-preserve-unknown-fields` and schemas that say nothing about an
/// object's properties accept anything. `apiVersion` and `kind` are always known at the
/// top level. A value of the wrong type is not an unknown field and is not reported.
pub fn unknown_fields(schema: &Schema, object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    schema.unknown(0, object, &mut String::new(), &mut out);
    out
}

/// Applies a `fieldValidation` directive to the unknown fields of `object`.
///
/// `kind_name` names the kind for diagnostics. Kubernetes itself wraps the strict error
/// as `<Kind> in version "<v>" cannot be handled as a <Kind>: strict decoding error: ...`;
/// that prefix is the REST layer's to add, since it knows the version.
///
/// Returns the warnings to send (`unknown field "spec.foo"`, one per field, for
/// `Warning: 299 - "..."` headers): none for [`FieldValidation::Ignore`] and for objects
/// without unknown fields.
///
/// # Errors
///
/// With [`FieldValidation::Strict`] and at least one unknown field, a 400
/// `strict decoding error: unknown field "a", unknown field "b"`.
pub fn check_unknown(
    validation: FieldValidation,
    kind_name: &str,
    schema: &Schema,
    object: &Value,
) -> Result<Vec<String>, Error> {
    if validation == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let warnings: Vec<String> = unknown_fields(schema, object)
        .iter()
        .map(|path| format!("unknown field {}", quote(path)))
        .collect();
    if validation == FieldValidation::Strict && !warnings.is_empty() {
        tracing::debug!(
            kind = kind_name,
            fields = warnings.len(),
            "rejecting unknown fields"
        );
        return Err(Error::bad_request(format!(
            "strict decoding error: {}",
            warnings.join(", ")
        )));
    }
    Ok(warnings)
}

/// The required fields `object` lacks, as `Required value` field errors, plus the
/// required-by-validation rules of built-in kinds that their schemas do not mark:
///
/// - Pods (and the pod templates of PodTemplates, workloads, Jobs and CronJobs) need a
///   non-empty `containers`, and each container and init container a `name` and an
///   `image`;
/// - Deployments, ReplicaSets, StatefulSets and DaemonSets need `spec.selector` and
///   `spec.template`, and the selector must match the template's labels;
/// - Services need at least one port unless headless (`clusterIP: None`) or
///   `ExternalName`.
///
/// `metadata` is never reported (k8s-openapi marks it required; Kubernetes does not),
/// and nothing under the top-level `status` is checked. Every cause is returned, each once,
/// ready for [`Error::invalid`].
pub fn required_fields(rt: &ResourceType, schema: &Schema, object: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    schema.required(0, object, &mut String::new(), &mut out);
    builtin_rules(rt, object, &mut out);
    if out.len() > 1 {
        let mut seen = HashSet::new();
        out.retain(|e| seen.insert((e.field.clone(), e.message.clone())));
    }
    out
}

struct Walker<'s> {
    root: &'s Value,
}

impl<'s> Walker<'s> {
    /// Looks up a local reference such as `#/$defs/io.k8s.api.core.v1.PodSpec`.
    fn lookup(&self, reference: &str) -> Option<&'s Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    /// The schemas that apply to a value: the schema itself, its `$ref` target and its
    /// `allOf`, `anyOf` and `oneOf` branches (except `{"type": "null"}`), recursively.
    /// With `definite`, only the branches that always apply (`$ref`, `allOf`).
    fn branches(&self, schema: &'s Value, definite: bool, depth: usize, out: &mut Vec<&'s Value>) {
        if depth > MAX_SCHEMA_DEPTH {
            return;
        }
        out.push(schema);
        let Some(obj) = schema.as_object() else {
            return;
        };
        if let Some(target) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.lookup(r))
        {
            self.branches(target, definite, depth + 1, out);
        }
        let combinators: &[&str] = if definite {
            &["allOf"]
        } else {
            &["allOf", "anyOf", "oneOf"]
        };
        for key in combinators {
            for branch in obj
                .get(*key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !is_null_schema(branch) {
                    self.branches(branch, definite, depth + 1, out);
                }
            }
        }
    }
}

/// A kind's JSON schema compiled for checking objects: `$ref`s resolved and `allOf`,
/// `anyOf` and `oneOf` merged once, so that a check walks only the object. Compile it once
/// per kind ([`ServedResource::validator`](crate::ServedResource::validator) does).
pub struct Schema {
    /// Node 0 is the root; the others are reached through it. Reference cycles (recursive
    /// types) point back to earlier nodes.
    nodes: Vec<Node>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// What a schema (with its references and combinators followed) says about a value.
#[derive(Default)]
struct Node {
    /// Required properties, from the branches that always apply (`$ref`, `allOf`), except
    /// `metadata` (k8s-openapi marks it required; Kubernetes does not).
    required: Vec<String>,
    /// Properties, from every branch (the first branch naming a property wins).
    properties: std::collections::HashMap<String, usize, foldhash::fast::RandomState>,
    /// `additionalProperties`, when some branch gives it.
    additional: Option<Additional>,
    /// Whether some branch has `properties` or `additionalProperties` at all; if none
    /// does, the schema says nothing about keys and accepts any.
    constrains_keys: bool,
    preserve_unknown: bool,
    embedded_resource: bool,
    /// `items` of the first branch that has it.
    items: Option<usize>,
    /// The value constraints of the schema itself (types, enum, ranges, lengths,
    /// patterns, item counts), checked for custom resources.
    checks: Option<Box<Checks>>,
    /// The `default` of each property that has one.
    defaults: Vec<(String, Value)>,
}

/// What a schema requires of a value besides its fields.
#[derive(Default)]
struct Checks {
    /// `type` (empty: any).
    types: Vec<String>,
    nullable: bool,
    int_or_string: bool,
    enum_values: Option<Vec<Value>>,
    /// `minimum` and whether it is exclusive.
    minimum: Option<(f64, bool)>,
    maximum: Option<(f64, bool)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<(String, regex_lite::Regex)>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

impl Checks {
    fn of(schema: &Map<String, Value>) -> Option<Checks> {
        let num = |k: &str| schema.get(k).and_then(Value::as_f64);
        let count = |k: &str| schema.get(k).and_then(Value::as_u64);
        // OpenAPI 3.0 marks exclusivity with a boolean; 3.1 gives the bound itself.
        let bound = |limit: &str, exclusive: &str| match (num(limit), schema.get(exclusive)) {
            (Some(v), Some(Value::Bool(true))) => Some((v, true)),
            (Some(v), _) => Some((v, false)),
            (None, Some(e)) => e.as_f64().map(|v| (v, true)),
            (None, None) => None,
        };
        let types = match schema.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let checks = Checks {
            nullable: schema.get("nullable").and_then(Value::as_bool) == Some(true)
                || types.iter().any(|t| t == "null"),
            types: types.into_iter().filter(|t| t != "null").collect(),
            int_or_string: flag(schema, "x-kubernetes-int-or-string"),
            enum_values: schema.get("enum").and_then(Value::as_array).cloned(),
            minimum: bound("minimum", "exclusiveMinimum"),
            maximum: bound("maximum", "exclusiveMaximum"),
            min_length: count("minLength"),
            max_length: count("maxLength"),
            pattern: schema
                .get("pattern")
                .and_then(Value::as_str)
                .and_then(|p| regex_lite::Regex::new(p).ok().map(|r| (p.to_owned(), r))),
            min_items: count("minItems"),
            max_items: count("maxItems"),
        };
        let any = !checks.types.is_empty()
            || checks.enum_values.is_some()
            || checks.minimum.is_some()
            || checks.maximum.is_some()
            || checks.min_length.is_some()
            || checks.max_length.is_some()
            || checks.pattern.is_some()
            || checks.min_items.is_some()
            || checks.max_items.is_some();
        any.then_some(checks)
    }

    fn check(&self, value: &Value, path: &str, out: &mut Vec<FieldError>) {
        if value.is_null() {
            if !self.nullable && !self.types.is_empty() {
                out.push(FieldError::type_invalid(
                    path,
                    Value::Null,
                    &format!(
                        "{path} in body must be of type {}: \"null\"",
                        self.types.join(",")
                    ),
                ));
            }
            return;
        }
        let actual = json_type(value);
        let type_ok = self.int_or_string && matches!(actual, "integer" | "string")
            || self.types.is_empty()
            || self
                .types
                .iter()
                .any(|t| t == actual || (t == "number" && actual == "integer"));
        if !type_ok {
            out.push(FieldError::type_invalid(
                path,
                json!(actual),
                &format!(
                    "{path} in body must be of type {}: \"{actual}\"",
                    self.types.join(",")
                ),
            ));
            return;
        }
        if let Some(allowed) = &self.enum_values {
            if !allowed.contains(value) {
                let names: Vec<String> = allowed
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                out.push(FieldError::not_supported(path, value.clone(), &names));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some((min, exclusive)) = self.minimum {
                if n < min || (exclusive && n == min) {
                    let how = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    out.push(FieldError::invalid(
                        path,
                        value.clone(),
                        &format!("{path} in body should be {how} {}", number(min)),
                    ));
                }
            }
            if let Some((max, exclusive)) = self.maximum {
                if n > max || (exclusive && n == max) {
                    let how = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    out.push(FieldError::invalid(
                        path,
                        value.clone(),
                        &format!("{path} in body should be {how} {}", number(max)),
                    ));
                }
            }
        }
        if let Some(text) = value.as_str() {
            let chars = text.chars().count() as u64;
            if let Some(max) = self.max_length.filter(|m| chars > *m) {
                out.push(FieldError::too_long(path, max as usize));
            }
            if let Some(min) = self.min_length.filter(|m| chars < *m) {
                out.push(FieldError::invalid(
                    path,
                    value.clone(),
                    &format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some((source, pattern)) = &self.pattern {
                if !pattern.is_match(text) {
                    out.push(FieldError::invalid(
                        path,
                        value.clone(),
                        &format!("{path} in body should match '{source}'"),
                    ));
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = self.max_items.filter(|m| items.len() as u64 > *m) {
                out.push(FieldError::too_many(path, items.len(), max as usize));
            }
            if let Some(min) = self.min_items.filter(|m| (items.len() as u64) < *m) {
                out.push(FieldError::invalid(
                    path,
                    json!(items.len()),
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
        }
    }
}

/// The JSON Schema type of a value (`integer` for whole numbers).
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A bound as Kubernetes prints it (`100`, not `100.0`).
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

impl Node {
    /// The node of a field: its property's, or the map's value schema.
    fn child(&self, key: &str) -> Option<usize> {
        self.properties.get(key).copied().or(match self.additional {
            Some(Additional::Schema(a)) => Some(a),
            _ => None,
        })
    }
}

#[derive(Clone, Copy)]
enum Additional {
    /// `additionalProperties: false`.
    Forbidden,
    /// A schema every other property must satisfy.
    Schema(usize),
    /// `true` or anything else that is not a schema object: any value.
    Any,
}

impl Schema {
    /// Compiles a schema (draft 2020-12, local `$ref`s into `$defs`).
    pub fn compile(root: &Value) -> Schema {
        let mut compiler = Compiler {
            walker: Walker { root },
            nodes: Vec::new(),
            memo: std::collections::HashMap::new(),
        };
        compiler.node(root);
        Schema {
            nodes: compiler.nodes,
        }
    }

    /// The values of `object` the schema does not allow — wrong types, values outside
    /// an `enum`, numbers out of range, strings too long or not matching their `pattern`,
    /// lists with too many or too few items — as field errors with Kubernetes' wording.
    /// (Custom resources are checked this way; built-in kinds by their own rules.)
    pub fn check_values(&self, object: &Value) -> Vec<FieldError> {
        let mut out = Vec::new();
        self.values(0, object, &mut String::new(), &mut out);
        out
    }

    /// Sets every missing field that has a `default` in the schema, at every level of the
    /// object that is present, as Kubernetes defaults custom resources.
    pub fn apply_defaults(&self, object: &mut Value) {
        self.defaults(0, object);
    }

    fn defaults(&self, id: usize, value: &mut Value) {
        let node = &self.nodes[id];
        match value {
            Value::Object(fields) => {
                for (name, default) in &node.defaults {
                    if !fields.contains_key(name) {
                        fields.insert(name.clone(), default.clone());
                    }
                }
                for (key, child) in fields.iter_mut() {
                    let next = node.child(key);
                    if let Some(next) = next {
                        if child.is_object() || child.is_array() {
                            self.defaults(next, child);
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = node.items {
                    for child in items.iter_mut().filter(|c| c.is_object() || c.is_array()) {
                        self.defaults(item, child);
                    }
                }
            }
            _ => {}
        }
    }

    fn values(&self, id: usize, value: &Value, path: &mut String, out: &mut Vec<FieldError>) {
        let node = &self.nodes[id];
        if let Some(checks) = &node.checks {
            if !path.is_empty() {
                checks.check(value, path, out);
            }
        }
        match value {
            Value::Object(fields) => {
                let top = path.is_empty();
                for (key, child) in fields {
                    if top && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    let next = node.child(key);
                    if let Some(next) = next {
                        let len = push_key(path, key);
                        self.values(next, child, path, out);
                        path.truncate(len);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = node.items {
                    for (i, child) in items.iter().enumerate() {
                        let len = push_index(path, i);
                        self.values(item, child, path, out);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }

    fn unknown(&self, id: usize, value: &Value, path: &mut String, out: &mut Vec<String>) {
        let node = &self.nodes[id];
        match value {
            Value::Object(fields) => {
                if !node.constrains_keys {
                    return;
                }
                let top = path.is_empty();
                for (key, child) in fields {
                    let len = push_key(path, key);
                    if let Some(prop) = node.properties.get(key.as_str()) {
                        self.unknown(*prop, child, path, out);
                    } else if (top || node.embedded_resource)
                        && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        // Always known on a whole object, even if the schema omits them.
                    } else {
                        match node.additional {
                            Some(Additional::Forbidden) | None => {
                                if !node.preserve_unknown {
                                    out.push(path.clone());
                                }
                            }
                            Some(Additional::Schema(a)) => self.unknown(a, child, path, out),
                            Some(Additional::Any) => {}
                        }
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                if let Some(item) = node.items {
                    for (i, child) in items.iter().enumerate() {
                        let len = push_index(path, i);
                        self.unknown(item, child, path, out);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }

    fn required(&self, id: usize, value: &Value, path: &mut String, out: &mut Vec<FieldError>) {
        let node = &self.nodes[id];
        match value {
            Value::Object(fields) => {
                for name in &node.required {
                    if is_missing(fields.get(name)) {
                        out.push(FieldError::required(join(path, name), ""));
                    }
                }
                let top = path.is_empty();
                for (key, child) in fields {
                    if top && key == "status" {
                        continue;
                    }
                    let Some(next) = node.child(key) else {
                        continue;
                    };
                    if matches!(child, Value::Object(_) | Value::Array(_)) {
                        let len = push_key(path, key);
                        self.required(next, child, path, out);
                        path.truncate(len);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = node.items {
                    for (i, child) in items.iter().enumerate() {
                        if matches!(child, Value::Object(_) | Value::Array(_)) {
                            let len = push_index(path, i);
                            self.required(item, child, path, out);
                            path.truncate(len);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Appends `.key` (or `key` at the top) to a path; returns the length to truncate back to.
fn push_key(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if len > 0 {
        path.push('.');
    }
    path.push_str(key);
    len
}

/// Appends `[i]` to a path; returns the length to truncate back to.
fn push_index(path: &mut String, i: usize) -> usize {
    use std::fmt::Write;
    let len = path.len();
    let _ = write!(path, "[{i}]");
    len
}

struct Compiler<'s> {
    walker: Walker<'s>,
    nodes: Vec<Node>,
    /// Schemas already compiled, by address (each schema value is compiled once).
    memo: std::collections::HashMap<*const Value, usize>,
}

impl<'s> Compiler<'s> {
    fn node(&mut self, schema: &'s Value) -> usize {
        if let Some(id) = self.memo.get(&(schema as *const Value)) {
            return *id;
        }
        let id = self.nodes.len();
        self.nodes.push(Node::default());
        self.memo.insert(schema as *const Value, id);

        let mut definite = Vec::new();
        self.walker.branches(schema, true, 0, &mut definite);
        let mut required: Vec<String> = Vec::new();
        for name in definite
            .iter()
            .filter_map(|b| b.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
        {
            if name != "metadata" && !required.iter().any(|r| r == name) {
                required.push(name.to_owned());
            }
        }

        let mut all = Vec::new();
        self.walker.branches(schema, false, 0, &mut all);
        let mut node = Node {
            required,
            checks: schema.as_object().and_then(Checks::of).map(Box::new),
            ..Node::default()
        };
        let mut properties: Vec<(&'s str, &'s Value)> = Vec::new();
        let mut additional = None;
        let mut items = None;
        for branch in all.iter().filter_map(|b| b.as_object()) {
            if let Some(props) = branch.get("properties").and_then(Value::as_object) {
                node.constrains_keys = true;
                for (name, prop) in props {
                    if !properties.iter().any(|(n, _)| *n == name.as_str()) {
                        properties.push((name.as_str(), prop));
                    }
                }
            }
            if let Some(a) = branch.get("additionalProperties") {
                node.constrains_keys = true;
                additional.get_or_insert(a);
            }
            node.preserve_unknown |= flag(branch, "x-kubernetes-preserve-unknown-fields");
            node.embedded_resource |= flag(branch, "x-kubernetes-embedded-resource");
            if items.is_none() {
                items = branch.get("items");
            }
        }
        for (name, prop) in properties {
            if let Some(default) = prop.get("default") {
                node.defaults.push((name.to_owned(), default.clone()));
            }
            let child = self.node(prop);
            node.properties.insert(name.to_owned(), child);
        }
        node.additional = additional.map(|a| {
            if a.as_bool() == Some(false) {
                Additional::Forbidden
            } else if a.is_object() {
                Additional::Schema(self.node(a))
            } else {
                Additional::Any
            }
        });
        node.items = items.map(|i| self.node(i));
        self.nodes[id] = node;
        id
    }
}

/// The fields an update may not change, with Kubernetes' messages:
///
/// - a Pod's spec, but for the images of its containers, `activeDeadlineSeconds`,
///   `terminationGracePeriodSeconds`, added tolerations and removed scheduling gates;
/// - the `spec.selector` of Deployments, ReplicaSets, StatefulSets and DaemonSets; the
///   spec of a StatefulSet but for `replicas`, `ordinals`, `template`, `updateStrategy`,
///   `persistentVolumeClaimRetentionPolicy` and `minReadySeconds`;
/// - a Job's `selector`, `template` and `completions`;
/// - the `data`, `binaryData` (and `stringData`) of ConfigMaps and Secrets marked
///   `immutable`, and the mark itself;
/// - a PersistentVolumeClaim's spec, but for `resources.requests` and
///   `volumeAttributesClassName`.
///
/// Status updates are not checked (the caller passes only spec updates).
pub fn immutable_fields(rt: &ResourceType, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let spec = |v: &Value| v.get("spec").cloned().unwrap_or(Value::Null);
    let same = |path: &str| old.pointer(path) == new.pointer(path);
    let immutable = |out: &mut Vec<FieldError>, path: &str, field: &str| {
        if !same(path) {
            let value = new.pointer(path).cloned().unwrap_or(Value::Null);
            out.push(FieldError::invalid(field, value, "field is immutable"));
        }
    };
    match (rt.group.as_ref(), rt.kind.as_ref()) {
        ("", "Pod") => {
            let mask = |v: &Value| {
                let mut s = spec(v);
                if let Some(m) = s.as_object_mut() {
                    for f in [
                        "activeDeadlineSeconds",
                        "terminationGracePeriodSeconds",
                        "tolerations",
                        "schedulingGates",
                    ] {
                        m.remove(f);
                    }
                    for list in ["containers", "initContainers", "ephemeralContainers"] {
                        for c in m
                            .get_mut(list)
                            .and_then(Value::as_array_mut)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                }
                s
            };
            let old_tolerations = old.pointer("/spec/tolerations").and_then(Value::as_array);
            let new_tolerations = new.pointer("/spec/tolerations").and_then(Value::as_array);
            let kept = old_tolerations
                .into_iter()
                .flatten()
                .all(|t| new_tolerations.is_some_and(|n| n.contains(t)));
            // Scheduling gates may only be removed.
            let gates = |v: &Value| -> Vec<Value> {
                v.pointer("/spec/schedulingGates")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let old_gates = gates(old);
            for gate in gates(new).iter().filter(|g| !old_gates.contains(g)) {
                let name = gate.get("name").and_then(Value::as_str).unwrap_or_default();
                out.push(FieldError::forbidden(
                    "spec.schedulingGates",
                    &format!("only deletion is allowed, but found new scheduling gate '{name}'"),
                ));
            }
            if mask(old) != mask(new) || !kept {
                out.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        ("apps", kind @ ("Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")) => {
            immutable(&mut out, "/spec/selector", "spec.selector");
            if kind == "StatefulSet" {
                let mask = |v: &Value| {
                    let mut s = spec(v);
                    if let Some(m) = s.as_object_mut() {
                        for f in [
                            "replicas",
                            "ordinals",
                            "template",
                            "updateStrategy",
                            "persistentVolumeClaimRetentionPolicy",
                            "minReadySeconds",
                            "selector",
                        ] {
                            m.remove(f);
                        }
                    }
                    s
                };
                if mask(old) != mask(new) {
                    out.push(FieldError::forbidden(
                        "spec",
                        "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                    ));
                }
            }
        }
        ("batch", "Job") => {
            immutable(&mut out, "/spec/selector", "spec.selector");
            immutable(&mut out, "/spec/template", "spec.template");
            immutable(&mut out, "/spec/completions", "spec.completions");
        }
        ("", "ConfigMap" | "Secret")
            if old.get("immutable").and_then(Value::as_bool) == Some(true) =>
        {
            for field in ["immutable", "data", "binaryData", "stringData"] {
                if old.get(field) != new.get(field)
                    && !(field == "stringData" && new.get(field).is_none())
                {
                    out.push(FieldError::forbidden(
                        field,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            let mask = |v: &Value| {
                let mut s = spec(v);
                if let Some(m) = s.as_object_mut() {
                    m.remove("volumeAttributesClassName");
                    if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                        r.remove("requests");
                    }
                }
                s
            };
            if mask(old) != mask(new) {
                out.push(FieldError::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
        }
        _ => {}
    }
    out
}

/// The checks Kubernetes' validation makes that the schemas do not express.
fn builtin_rules(rt: &ResourceType, object: &Value, out: &mut Vec<FieldError>) {
    match (rt.group.as_ref(), rt.kind.as_ref()) {
        ("", "Pod") => pod_spec(object.get("spec"), "spec", out),
        ("", "PodTemplate") => {
            if let Some(template) = object.get("template") {
                pod_spec(template.get("spec"), "template.spec", out);
            }
        }
        ("", "ReplicationController") => {
            if let Some(template) = object.pointer("/spec/template") {
                pod_spec(template.get("spec"), "spec.template.spec", out);
            }
        }
        ("", "Service") => service(object, out),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::validate(object, out),
        ("apps", kind @ ("Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")) => {
            workload(kind, object.get("spec"), out);
        }
        ("batch", "Job") => {
            job_policies(object.get("spec"), "spec", out);
            if let Some(template) = object.pointer("/spec/template") {
                pod_spec(template.get("spec"), "spec.template.spec", out);
            }
        }
        ("batch", "CronJob") => {
            cron_job_schedule(object.get("spec"), out);
            job_policies(
                object.pointer("/spec/jobTemplate/spec"),
                "spec.jobTemplate.spec",
                out,
            );
            if let Some(template) = object.pointer("/spec/jobTemplate/spec/template") {
                pod_spec(
                    template.get("spec"),
                    "spec.jobTemplate.spec.template.spec",
                    out,
                );
            }
        }
        _ => {}
    }
}

/// A Job's failure and success policies, as Kubernetes checks them: a pod failure
/// policy needs `restartPolicy: Never` and well-formed rules (`FailIndex` only with
/// `backoffLimitPerIndex`); a success policy and `backoffLimitPerIndex` need Indexed
/// completion, and `maxFailedIndexes` needs `backoffLimitPerIndex`.
fn job_policies(spec: Option<&Value>, path: &str, out: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let indexed = spec.get("completionMode").and_then(Value::as_str) == Some("Indexed");
    let completions = spec.get("completions").and_then(Value::as_i64);
    let per_index = spec.get("backoffLimitPerIndex").and_then(Value::as_i64);
    if let Some(limit) = per_index {
        if !indexed {
            out.push(FieldError::invalid(
                format!("{path}.backoffLimitPerIndex"),
                limit,
                "requires indexed completion mode",
            ));
        } else if limit < 0 {
            out.push(FieldError::invalid(
                format!("{path}.backoffLimitPerIndex"),
                limit,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(max) = spec.get("maxFailedIndexes").and_then(Value::as_i64) {
        let field = format!("{path}.maxFailedIndexes");
        if per_index.is_none() {
            out.push(FieldError::required(
                format!("{path}.backoffLimitPerIndex"),
                "when maxFailedIndexes is specified",
            ));
        } else if max < 0 {
            out.push(FieldError::invalid(
                field,
                max,
                "must be greater than or equal to 0",
            ));
        } else if completions.is_some_and(|c| max > c) {
            out.push(FieldError::invalid(
                field,
                max,
                "must be less than or equal to completions",
            ));
        }
    }
    if let Some(policy) = spec.get("podFailurePolicy").filter(|v| !v.is_null()) {
        let restart = spec
            .pointer("/template/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always");
        if restart != "Never" {
            out.push(FieldError::invalid(
                format!("{path}.template.spec.restartPolicy"),
                restart,
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        let rules = policy.get("rules").and_then(Value::as_array);
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let at = format!("{path}.podFailurePolicy.rules[{i}]");
            match rule.get("action").and_then(Value::as_str) {
                Some("FailJob" | "Ignore" | "Count") => {}
                Some("FailIndex") if per_index.is_some() => {}
                Some("FailIndex") => out.push(FieldError::invalid(
                    format!("{at}.action"),
                    "FailIndex",
                    "valid only when backoffLimitPerIndex is set",
                )),
                Some(other) => out.push(FieldError::not_supported(
                    format!("{at}.action"),
                    other,
                    &["Count", "FailIndex", "FailJob", "Ignore"],
                )),
                None => out.push(FieldError::required(format!("{at}.action"), "")),
            }
            let exit_codes = rule.get("onExitCodes").filter(|v| !v.is_null());
            let conditions = rule.get("onPodConditions").filter(|v| !v.is_null());
            match (exit_codes, conditions) {
                (Some(_), Some(_)) => out.push(FieldError::invalid(
                    at.clone(),
                    Value::Null,
                    "specifying both OnExitCodes and OnPodConditions is not supported",
                )),
                (None, None) => out.push(FieldError::invalid(
                    at.clone(),
                    Value::Null,
                    "specifying one of OnExitCodes and OnPodConditions is required",
                )),
                _ => {}
            }
            if let Some(req) = exit_codes {
                let operator = req.get("operator").and_then(Value::as_str).unwrap_or("");
                if !matches!(operator, "In" | "NotIn") {
                    out.push(FieldError::not_supported(
                        format!("{at}.onExitCodes.operator"),
                        operator,
                        &["In", "NotIn"],
                    ));
                }
                let values = req.get("values").and_then(Value::as_array);
                let values: Vec<i64> = values
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect();
                if values.is_empty() {
                    out.push(FieldError::required(
                        format!("{at}.onExitCodes.values"),
                        "at least one value is required",
                    ));
                }
                for (j, v) in values.iter().enumerate() {
                    let field = format!("{at}.onExitCodes.values[{j}]");
                    if values[..j].contains(v) {
                        out.push(FieldError::duplicate(field, *v));
                    } else if *v == 0 && operator == "In" {
                        out.push(FieldError::invalid(
                            field,
                            *v,
                            "must not be 0 for the In operator",
                        ));
                    }
                }
            }
        }
    }
    if let Some(policy) = spec.get("successPolicy").filter(|v| !v.is_null()) {
        if !indexed {
            out.push(FieldError::invalid(
                format!("{path}.successPolicy"),
                policy.clone(),
                "requires indexed completion mode",
            ));
        }
        let rules = policy.get("rules").and_then(Value::as_array);
        if rules.is_none_or(Vec::is_empty) {
            out.push(FieldError::required(
                format!("{path}.successPolicy.rules"),
                "at least one rule is required",
            ));
        }
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let at = format!("{path}.successPolicy.rules[{i}]");
            let indexes = rule.get("succeededIndexes").and_then(Value::as_str);
            let count = rule.get("succeededCount").and_then(Value::as_i64);
            if indexes.is_none() && count.is_none() {
                out.push(FieldError::required(
                    at.clone(),
                    "at least one of succeededCount or succeededIndexes must be specified",
                ));
            }
            if let Some(c) = count {
                if c < 0 {
                    out.push(FieldError::invalid(
                        format!("{at}.succeededCount"),
                        c,
                        "must be greater than or equal to 0",
                    ));
                } else if completions.is_some_and(|n| c > n) {
                    out.push(FieldError::invalid(
                        format!("{at}.succeededCount"),
                        c,
                        "must be less than or equal to the number of completions",
                    ));
                }
            }
        }
    }
}

/// A CronJob's `schedule` must parse (five fields or a macro, no `TZ=` prefix: the
/// `timeZone` field says that) and its `timeZone` must be one the server knows.
fn cron_job_schedule(spec: Option<&Value>, out: &mut Vec<FieldError>) {
    match spec.and_then(|s| s.get("schedule")).and_then(Value::as_str) {
        None | Some("") => out.push(FieldError::required("spec.schedule", "")),
        Some(schedule) if schedule.contains("TZ") => out.push(FieldError::invalid(
            "spec.schedule",
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(schedule) => {
            if let Err(e) = keelson_core::cron::Schedule::parse(schedule) {
                out.push(FieldError::invalid("spec.schedule", schedule, &e.reason));
            }
        }
    }
    if let Some(zone) = spec.and_then(|s| s.get("timeZone")).and_then(Value::as_str) {
        let known = !zone.is_empty()
            && !zone.starts_with(' ')
            && keelson_core::k8s_openapi::jiff::tz::TimeZone::get(zone).is_ok();
        if !known {
            out.push(FieldError::invalid(
                "spec.timeZone",
                zone,
                "unknown time zone",
            ));
        }
    }
}

/// A pod spec needs containers, and each container a name and an image.
fn pod_spec(spec: Option<&Value>, path: &str, out: &mut Vec<FieldError>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        out.push(FieldError::required(format!("{path}.containers"), ""));
    }
    for list in ["initContainers", "containers"] {
        let items = spec.and_then(|s| s.get(list)).and_then(Value::as_array);
        for (i, container) in items.into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            if is_blank(container.get("name")) {
                out.push(FieldError::required(format!("{at}.name"), ""));
            }
            match container.get("image").and_then(Value::as_str) {
                None | Some("") => out.push(FieldError::required(format!("{at}.image"), "")),
                Some(image) if image.trim() != image => out.push(FieldError::invalid(
                    format!("{at}.image"),
                    image,
                    "must not have leading or trailing whitespace",
                )),
                Some(_) => {}
            }
        }
    }
    if let Some(spec) = spec {
        token_projections(spec, path, out);
        scheduling(spec, path, out);
    }
}

/// Projected service account tokens: a lifetime from 10 minutes to 2^32 seconds, as
/// Kubernetes validates them (their `path` is required by the schema).
fn token_projections(spec: &Value, path: &str, out: &mut Vec<FieldError>) {
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for (i, v) in volumes.into_iter().flatten().enumerate() {
        let sources = v.pointer("/projected/sources").and_then(Value::as_array);
        for (j, source) in sources.into_iter().flatten().enumerate() {
            let Some(token) = source.get("serviceAccountToken").filter(|t| t.is_object()) else {
                continue;
            };
            let at = format!("{path}.volumes[{i}].projected.sources[{j}].serviceAccountToken");
            let seconds = token
                .get("expirationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(3600);
            if seconds < 600 {
                out.push(FieldError::invalid(
                    format!("{at}.expirationSeconds"),
                    seconds,
                    "may not specify a duration less than 10 minutes",
                ));
            } else if seconds > 1 << 32 {
                out.push(FieldError::invalid(
                    format!("{at}.expirationSeconds"),
                    seconds,
                    "may not specify a duration larger than 2^32 seconds",
                ));
            }
        }
    }
}

/// A pod's scheduling constraints, as Kubernetes validates them: topology spread
/// constraints (`maxSkew`, `topologyKey`, `whenUnsatisfiable`, `minDomains`) and affinity
/// (node selector operators and values, pod affinity terms' `topologyKey`, weights).
fn scheduling(spec: &Value, path: &str, out: &mut Vec<FieldError>) {
    let constraints = spec
        .get("topologySpreadConstraints")
        .and_then(Value::as_array);
    for (i, c) in constraints.into_iter().flatten().enumerate() {
        let at = format!("{path}.topologySpreadConstraints[{i}]");
        let skew = c.get("maxSkew").and_then(Value::as_i64).unwrap_or(0);
        if skew <= 0 {
            out.push(FieldError::invalid(
                format!("{at}.maxSkew"),
                skew,
                "must be greater than zero",
            ));
        }
        if is_blank(c.get("topologyKey")) {
            out.push(FieldError::required(
                format!("{at}.topologyKey"),
                "can not be empty",
            ));
        }
        let when = c
            .get("whenUnsatisfiable")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(when, "DoNotSchedule" | "ScheduleAnyway") {
            out.push(FieldError::not_supported(
                format!("{at}.whenUnsatisfiable"),
                when,
                &["DoNotSchedule", "ScheduleAnyway"],
            ));
        }
        if let Some(min) = c.get("minDomains").filter(|v| !v.is_null()) {
            let n = min.as_i64().unwrap_or(0);
            if n <= 0 {
                out.push(FieldError::invalid(
                    format!("{at}.minDomains"),
                    n,
                    "must be greater than zero",
                ));
            } else if when != "DoNotSchedule" {
                out.push(FieldError::invalid(
                    format!("{at}.minDomains"),
                    n,
                    "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                ));
            }
        }
    }
    let Some(affinity) = spec.get("affinity") else {
        return;
    };
    let at = format!("{path}.affinity.nodeAffinity");
    let node = affinity.get("nodeAffinity");
    let required = node.and_then(|n| {
        n.pointer("/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
    });
    for (i, term) in required
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let term_at =
            format!("{at}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]");
        node_selector_term(term, &term_at, out);
    }
    let preferred = node.and_then(|n| n.get("preferredDuringSchedulingIgnoredDuringExecution"));
    for (i, p) in preferred
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p_at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
        weight(p, &p_at, out);
        if let Some(term) = p.get("preference") {
            node_selector_term(term, &format!("{p_at}.preference"), out);
        }
    }
    for kind in ["podAffinity", "podAntiAffinity"] {
        let at = format!("{path}.affinity.{kind}");
        let Some(pa) = affinity.get(kind) else {
            continue;
        };
        let required = pa
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array);
        for (i, term) in required.into_iter().flatten().enumerate() {
            pod_affinity_term(
                term,
                &format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                out,
            );
        }
        let preferred = pa
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array);
        for (i, p) in preferred.into_iter().flatten().enumerate() {
            let p_at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            weight(p, &p_at, out);
            if let Some(term) = p.get("podAffinityTerm") {
                pod_affinity_term(term, &format!("{p_at}.podAffinityTerm"), out);
            }
        }
    }
}

fn weight(preferred: &Value, at: &str, out: &mut Vec<FieldError>) {
    let w = preferred.get("weight").and_then(Value::as_i64).unwrap_or(0);
    if !(1..=100).contains(&w) {
        out.push(FieldError::invalid(
            format!("{at}.weight"),
            w,
            "must be in the range 1-100",
        ));
    }
}

fn pod_affinity_term(term: &Value, at: &str, out: &mut Vec<FieldError>) {
    if is_blank(term.get("topologyKey")) {
        out.push(FieldError::required(
            format!("{at}.topologyKey"),
            "can not be empty",
        ));
    }
    if let Some(selector) = term.get("labelSelector").filter(|v| !v.is_null()) {
        if let Err(e) = parse_selector(selector) {
            out.push(FieldError::invalid(
                format!("{at}.labelSelector"),
                selector.clone(),
                &e.message(),
            ));
        }
    }
}

fn node_selector_term(term: &Value, at: &str, out: &mut Vec<FieldError>) {
    for list in ["matchExpressions", "matchFields"] {
        let exprs = term.get(list).and_then(Value::as_array);
        for (j, e) in exprs.into_iter().flatten().enumerate() {
            let e_at = format!("{at}.{list}[{j}]");
            let values = e
                .get("values")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" | "NotIn" if values == 0 => out.push(FieldError::required(
                    format!("{e_at}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )),
                "Exists" | "DoesNotExist" if values > 0 => out.push(FieldError::forbidden(
                    format!("{e_at}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )),
                "Gt" | "Lt" => {
                    let one_int = e
                        .get("values")
                        .and_then(Value::as_array)
                        .filter(|v| v.len() == 1)
                        .and_then(|v| v[0].as_str())
                        .is_some_and(|v| v.parse::<i64>().is_ok());
                    if !one_int {
                        out.push(FieldError::required(
                            format!("{e_at}.values"),
                            "must be specified single value when `operator` is 'Lt' or 'Gt'",
                        ));
                    }
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => out.push(FieldError::invalid(
                    format!("{e_at}.operator"),
                    other,
                    "not a valid selector operator",
                )),
            }
        }
    }
}

/// A workload needs a selector and a template whose labels the selector matches.
fn workload(kind: &str, spec: Option<&Value>, out: &mut Vec<FieldError>) {
    let selector_value = spec
        .and_then(|s| s.get("selector"))
        .filter(|v| !v.is_null());
    let template = spec
        .and_then(|s| s.get("template"))
        .filter(|v| !v.is_null());
    let selector = match selector_value {
        None => {
            out.push(FieldError::required("spec.selector", ""));
            // A missing selector selects nothing, so no template matches it.
            Some(LabelSelector::nothing())
        }
        Some(value) => match parse_selector(value) {
            Ok(selector) if selector.is_empty() => {
                out.push(FieldError::invalid(
                    "spec.selector",
                    value.clone(),
                    &format!("empty selector is invalid for {}", kind.to_lowercase()),
                ));
                None
            }
            Ok(selector) => Some(selector),
            Err(err) => {
                out.push(FieldError::invalid(
                    "spec.selector",
                    value.clone(),
                    &err.to_string(),
                ));
                None
            }
        },
    };
    let Some(template) = template else {
        out.push(FieldError::required("spec.template", ""));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(selector) = selector {
        let set: std::collections::BTreeMap<String, String> = labels
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        if !selector.matches(&set) {
            out.push(FieldError {
                reason: CauseType::Invalid,
                field: "spec.template.metadata.labels".to_owned(),
                message: format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    go_string_map(labels)
                ),
            });
        }
    }
    pod_spec(template.get("spec"), "spec.template.spec", out);
}

fn parse_selector(value: &Value) -> Result<LabelSelector, Error> {
    let selector: metav1::LabelSelector = serde_json::from_value(value.clone())
        .map_err(|err| Error::bad_request(format!("invalid label selector: {err}")))?;
    LabelSelector::from_k8s(&selector)
}

/// A Service needs a port unless it is headless or an `ExternalName` service.
fn service(object: &Value, out: &mut Vec<FieldError>) {
    let spec = object.get("spec");
    let field = |name: &str| spec.and_then(|s| s.get(name));
    let has_ports = field("ports")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let headless = field("clusterIP").and_then(Value::as_str) == Some("None");
    let external_name = field("type").and_then(Value::as_str) == Some("ExternalName");
    if !has_ports && !headless && !external_name {
        out.push(FieldError::required("spec.ports", ""));
    }
}

/// Go's `%#v` of a `map[string]string`, which Kubernetes prints for invalid label maps:
/// `map[string]string{"app":"web", "tier":"fe"}`, or `map[string]string(nil)`.
fn go_string_map(labels: Option<&Map<String, Value>>) -> String {
    let Some(labels) = labels else {
        return "map[string]string(nil)".to_owned();
    };
    let mut entries: Vec<(&String, &Value)> = labels.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v.as_str().unwrap_or_default())))
        .collect();
    format!("map[string]string{{{}}}", body.join(", "))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn quote(s: &str) -> String {
    Value::from(s).to_string()
}

fn flag(schema: &Map<String, Value>, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

fn is_missing(value: Option<&Value>) -> bool {
    value.is_none_or(Value::is_null)
}

fn is_blank(value: Option<&Value>) -> bool {
    is_missing(value) || value.and_then(Value::as_str) == Some("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServedResource;
    use keelson_core::k8s_openapi::api::apps::v1::Deployment;
    use keelson_core::k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
    use keelson_core::Resource;
    use serde_json::json;

    fn schema_of<K: Resource>() -> Schema {
        Schema::compile(&ServedResource::of::<K>().schema)
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": spec})
    }

    fn deployment(selector: Value, template_labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": selector,
                "template": {
                    "metadata": {"labels": template_labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                        "ports": [{"containerPort": 80}],
                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}]}
                }
            }
        })
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_unknown_top_level_spec_field_is_reported_with_its_path() {
        let object = pod(json!({"containers": [{"name": "a", "image": "x"}], "foo": 1}));
        assert_eq!(unknown_fields(&schema_of::<Pod>(), &object), ["spec.foo"]);
    }

    #[test]
    fn a_typo_inside_a_container_is_reported_with_its_index() {
        let object = pod(json!({"containers": [
            {"name": "a", "image": "x"},
            {"name": "b", "imagee": "x", "env": [{"name": "A", "valeu": "1"}]}
        ]}));
        assert_eq!(
            unknown_fields(&schema_of::<Pod>(), &object),
            // In the order the body gives them, as Kubernetes reports them.
            [
                "spec.containers[1].imagee",
                "spec.containers[1].env[0].valeu"
            ]
        );
    }

    #[test]
    fn unknown_fields_in_metadata_and_at_the_top_are_reported() {
        let object = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "foo": "x"}, "extra": true,
            "spec": {"containers": [{"name": "a", "image": "x"}]}});
        assert_eq!(
            unknown_fields(&schema_of::<Pod>(), &object),
            ["metadata.foo", "extra"]
        );
    }

    #[test]
    fn maps_accept_any_key() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"any/key": "v"},
                "annotations": {"example.com/whatever": "x"}},
            "data": {"anything": "goes", "config.yaml": "a: b"},
            "binaryData": {"blob": "AAEC"}});
        assert!(unknown_fields(&schema_of::<ConfigMap>(), &cm).is_empty());
        let object = pod(json!({"containers": [{"name": "a", "image": "x",
            "resources": {"limits": {"cpu": "1", "example.com/gpu": 2}}}],
            "nodeSelector": {"disk": "ssd"}}));
        assert!(unknown_fields(&schema_of::<Pod>(), &object).is_empty());
    }

    #[test]
    fn int_or_string_and_managed_fields_accept_their_json_shapes() {
        let object = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "managedFields": [{"manager": "kubectl",
                "operation": "Apply", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {".": {}}}}}]},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}]}});
        assert!(unknown_fields(&schema_of::<Service>(), &object).is_empty());
    }

    #[test]
    fn preserve_unknown_fields_accepts_unknown_keys_but_checks_known_ones() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {"$ref": "#/$defs/Spec"},
                "config": {"type": ["object", "null"], "x-kubernetes-preserve-unknown-fields": true}
            },
            "$defs": {"Spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"inner": {"type": "object", "properties": {"a": {"type": "string"}}}}
            }}
        });
        let object = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "config": {"free": {"form": [1, 2]}},
            "spec": {"anything": 1, "inner": {"a": "x", "b": "y"}}});
        assert_eq!(
            unknown_fields(&Schema::compile(&schema), &object),
            ["spec.inner.b"]
        );
    }

    #[test]
    fn nullable_refs_and_combinators_are_followed() {
        let schema = json!({
            "type": "object",
            "properties": {"spec": {"anyOf": [{"$ref": "#/$defs/Spec"}, {"type": "null"}]}},
            "$defs": {"Spec": {"type": ["object", "null"], "properties": {
                "items": {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/Item"}]}}
            }}, "Item": {"type": "object", "properties": {"n": {"type": "integer"}},
                "required": ["n"]}}
        });
        let object = json!({"spec": {"items": [{"n": 1}, {"m": 2}]}});
        assert_eq!(
            unknown_fields(&Schema::compile(&schema), &object),
            ["spec.items[1].m"]
        );
        let rt = ResourceType::new(
            "example.com",
            "v1",
            "Widget",
            "widgets",
            keelson_core::Scope::Namespaced,
        );
        assert_eq!(
            messages(&required_fields(&rt, &Schema::compile(&schema), &object)),
            ["spec.items[1].n: Required value"]
        );
    }

    #[test]
    fn strict_rejects_unknown_fields_with_kubernetes_wording() {
        let object = pod(json!({"containers": [{"name": "a", "image": "x"}], "foo": 1, "bar": 2}));
        let err = check_unknown(FieldValidation::Strict, "Pod", &schema_of::<Pod>(), &object)
            .expect_err("should fail");
        assert_eq!((err.code(), err.reason()), (400, "BadRequest"));
        assert_eq!(
            err.to_string(),
            r#"strict decoding error: unknown field "spec.foo", unknown field "spec.bar""#
        );
    }

    #[test]
    fn warn_returns_one_warning_per_unknown_field() {
        let object = pod(json!({"containers": [{"name": "a", "image": "x"}], "foo": 1}));
        let warnings = check_unknown(FieldValidation::Warn, "Pod", &schema_of::<Pod>(), &object)
            .expect("should succeed");
        assert_eq!(warnings, [r#"unknown field "spec.foo""#]);
    }

    #[test]
    fn ignore_and_known_fields_produce_nothing() {
        let schema = schema_of::<Pod>();
        let bad = pod(json!({"containers": [{"name": "a", "image": "x"}], "foo": 1}));
        assert!(check_unknown(FieldValidation::Ignore, "Pod", &schema, &bad)
            .expect("should succeed")
            .is_empty());
        let good = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        assert!(
            check_unknown(FieldValidation::Strict, "Pod", &schema, &good)
                .expect("should succeed")
                .is_empty()
        );
    }

    #[test]
    fn field_validation_parses_like_kubernetes() {
        assert_eq!(FieldValidation::parse(""), Ok(FieldValidation::Warn));
        assert_eq!(
            FieldValidation::parse("Strict"),
            Ok(FieldValidation::Strict)
        );
        assert_eq!(
            FieldValidation::parse("Ignore"),
            Ok(FieldValidation::Ignore)
        );
        assert_eq!(
            FieldValidation::from_query(None, "CreateOptions").expect("should succeed"),
            FieldValidation::Warn
        );
        let err =
            FieldValidation::from_query(Some("strict"), "CreateOptions").expect_err("should fail");
        assert_eq!(err.code(), 422);
        assert_eq!(
            err.to_string(),
            r#"CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "strict": supported values: "", "Ignore", "Strict", "Warn""#
        );
    }

    #[test]
    fn a_pod_with_no_containers_needs_containers() {
        let rt = Pod::resource_type();
        let schema = schema_of::<Pod>();
        for object in [
            pod(json!({"containers": []})),
            pod(json!({})),
            json!({"metadata": {"name": "a"}}),
        ] {
            assert_eq!(
                messages(&required_fields(&rt, &schema, &object)),
                ["spec.containers: Required value"],
                "{object}"
            );
        }
    }

    #[test]
    fn a_container_without_an_image_or_name_is_invalid() {
        let object = pod(json!({"containers": [{"name": "a"}, {"image": "x"}],
            "initContainers": [{"name": "init", "image": " x"}]}));
        let errors = required_fields(&Pod::resource_type(), &schema_of::<Pod>(), &object);
        assert_eq!(
            messages(&errors),
            [
                "spec.containers[1].name: Required value",
                "spec.initContainers[0].image: Invalid value: \" x\": must not have leading or trailing whitespace",
                "spec.containers[0].image: Required value",
            ]
        );
        let err = Error::invalid(Pod::resource_type().group_kind(), "web", errors);
        assert_eq!(err.code(), 422);
    }

    #[test]
    fn a_projected_token_needs_a_path_and_a_lifetime_of_ten_minutes_to_2_pow_32_seconds() {
        let object = pod(
            json!({"containers": [{"name": "a", "image": "x"}], "volumes": [
                {"name": "ok", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 600}}]}},
                {"name": "bad", "projected": {"sources": [
                    {"configMap": {"name": "c"}},
                    {"serviceAccountToken": {"expirationSeconds": 599}},
                    {"serviceAccountToken": {"path": "t", "expirationSeconds": 4294967297_i64}},
                ]}},
            ]}),
        );
        let errors = required_fields(&Pod::resource_type(), &schema_of::<Pod>(), &object);
        assert_eq!(
            messages(&errors),
            [
                "spec.volumes[1].projected.sources[1].serviceAccountToken.path: Required value",
                "spec.volumes[1].projected.sources[1].serviceAccountToken.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes",
                "spec.volumes[1].projected.sources[2].serviceAccountToken.expirationSeconds: Invalid value: 4294967297: may not specify a duration larger than 2^32 seconds",
            ]
        );
    }

    #[test]
    fn a_deployment_whose_selector_does_not_match_its_template_is_invalid() {
        let object = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "api", "tier": "fe"}),
        );
        let errors = required_fields(
            &Deployment::resource_type(),
            &schema_of::<Deployment>(),
            &object,
        );
        assert_eq!(
            messages(&errors),
            ["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\", \"tier\":\"fe\"}: `selector` does not match template `labels`"]
        );
        assert_eq!(errors[0].reason, CauseType::Invalid);
    }

    #[test]
    fn a_deployment_without_selector_or_template_reports_every_cause() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 1}});
        let errors = required_fields(
            &Deployment::resource_type(),
            &schema_of::<Deployment>(),
            &object,
        );
        assert_eq!(
            messages(&errors),
            [
                "spec.selector: Required value",
                "spec.template: Required value"
            ]
        );
        let no_selector = deployment(Value::Null, json!({"app": "web"}));
        let errors = required_fields(
            &Deployment::resource_type(),
            &schema_of::<Deployment>(),
            &no_selector,
        );
        assert_eq!(
            messages(&errors),
            [
                "spec.selector: Required value",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
            ]
        );
    }

    #[test]
    fn a_valid_deployment_produces_no_errors_or_unknown_fields() {
        let object = deployment(
            json!({"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}),
            json!({"app": "web", "tier": "fe"}),
        );
        let schema = schema_of::<Deployment>();
        assert_eq!(
            messages(&required_fields(
                &Deployment::resource_type(),
                &schema,
                &object
            )),
            Vec::<String>::new()
        );
        assert_eq!(unknown_fields(&schema, &object), Vec::<String>::new());
    }

    #[test]
    fn metadata_is_never_reported_as_required() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}});
        assert!(required_fields(
            &ConfigMap::resource_type(),
            &schema_of::<ConfigMap>(),
            &object
        )
        .is_empty());
        let object = json!({"apiVersion": "v1", "kind": "Pod",
            "spec": {"containers": [{"name": "a", "image": "x"}]},
            "status": {"conditions": [{"lastProbeTime": null}], "containerStatuses": [{}]}});
        assert!(required_fields(&Pod::resource_type(), &schema_of::<Pod>(), &object).is_empty());
    }

    #[test]
    fn a_service_needs_ports_unless_headless() {
        let rt = Service::resource_type();
        let schema = schema_of::<Service>();
        let svc = |spec: Value| json!({"metadata": {"name": "s"}, "spec": spec});
        assert_eq!(
            messages(&required_fields(
                &rt,
                &schema,
                &svc(json!({"selector": {"app": "a"}}))
            )),
            ["spec.ports: Required value"]
        );
        assert!(required_fields(&rt, &schema, &svc(json!({"clusterIP": "None"}))).is_empty());
        assert!(required_fields(&rt, &schema, &svc(json!({"ports": [{"port": 80}]}))).is_empty());
        assert_eq!(
            messages(&required_fields(
                &rt,
                &schema,
                &svc(json!({"ports": [{"name": "x"}]}))
            )),
            ["spec.ports[0].port: Required value"]
        );
    }
}

#[cfg(test)]
mod scheduling_tests {
    use super::*;
    use keelson_core::Resource;
    use serde_json::json;

    fn causes(spec: Value) -> Vec<String> {
        let rt = k8s_openapi::api::core::v1::Pod::resource_type();
        let mut out = Vec::new();
        builtin_rules(&rt, &json!({"spec": spec}), &mut out);
        out.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn bad_spread_and_affinity_specs_are_refused_with_the_field_named() {
        let containers = json!([{"name": "a", "image": "x"}]);
        let ok = json!({"containers": containers,
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 2}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}, {"key": "n", "operator": "Gt", "values": ["3"]}]}]}},
              "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "a"}}}}]}}});
        assert!(causes(ok).is_empty());
        let bad = json!({"containers": containers,
            "topologySpreadConstraints": [{"maxSkew": 0, "whenUnsatisfiable": "Sometimes", "minDomains": 2}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "k", "operator": "In"}, {"key": "n", "operator": "Near", "values": ["x"]}]}]}},
              "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}],
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "podAffinityTerm": {"topologyKey": "z"}}]}}});
        let got = causes(bad);
        for field in [
            "spec.topologySpreadConstraints[0].maxSkew",
            "spec.topologySpreadConstraints[0].topologyKey",
            "spec.topologySpreadConstraints[0].whenUnsatisfiable",
            "spec.topologySpreadConstraints[0].minDomains",
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].operator",
            "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
            "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
        ] {
            assert!(got.iter().any(|c| c.starts_with(&format!("{field}: "))), "{field} not in {got:#?}");
        }
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;
    use keelson_core::Resource;
    use serde_json::json;

    #[test]
    fn scheduling_gates_may_only_be_removed() {
        let rt = k8s_openapi::api::core::v1::Pod::resource_type();
        let pod = |gates: Value| json!({"spec": {"containers": [{"name": "a", "image": "x"}], "schedulingGates": gates}});
        let two = pod(json!([{"name": "a"}, {"name": "b"}]));
        assert!(immutable_fields(&rt, &two, &pod(json!([{"name": "b"}]))).is_empty());
        assert!(immutable_fields(&rt, &two, &pod(json!([]))).is_empty());
        let added = immutable_fields(
            &rt,
            &two,
            &pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}])),
        );
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0].field, "spec.schedulingGates");
        assert!(
            added[0].message.contains("found new scheduling gate 'c'"),
            "{added:?}"
        );
    }
}
