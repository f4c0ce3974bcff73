//! The `meta.k8s.io/v1` Table form of objects: what `kubectl get` prints.
//!
//! kubectl asks for lists and watches with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...` and prints whatever columns
//! the server chooses. This module builds those tables with the columns kube-apiserver 1.33
//! prints for each built-in kind (its printers in `pkg/printers/internalversion`), and with
//! the apiserver's default two columns, `Name` and `Created At`, for every other kind.
//!
//! - [`table`]: a list, or a single object, as a Table;
//! - [`watch_table`]: the one-row Table a watch event carries; column definitions come only
//!   with the first event of a stream, as the apiserver sends them;
//! - [`column_definitions`] and [`row`]: the pieces;
//! - [`IncludeObject`]: what each row's `object` holds (the `includeObject` parameter);
//! - [`human_duration`]: the `AGE` format (`5s`, `3m20s`, `2d3h`, `4y`).
//!
//! As the apiserver does, every row carries the cells of every column, including the
//! priority 1 columns that kubectl shows only with `-o wide`: kubectl picks the columns.
//! Cells are computed from the object's JSON, so a field that is missing prints as kubectl
//! prints it (`<none>`, `<unknown>`, `0/1`), a field the apiserver would have defaulted
//! prints its default, and nothing here panics on an odd object.
//!
//! ```
//! use k8s_openapi::jiff::Timestamp;
//! use keelson_apiserver::table::{self, IncludeObject};
//! use keelson_core::{ResourceType, Scope};
//! use serde_json::json;
//!
//! let pods = ResourceType::new("", "v1", "Pod", "pods", Scope::Namespaced);
//! let pod = json!({
//!     "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": "2025-01-01T00:00:00Z"},
//!     "spec": {"containers": [{"name": "web", "image": "nginx"}]},
//!     "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
//!         {"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
//! });
//! let now: Timestamp = "2025-01-01T00:03:20Z".parse().expect("an RFC 3339 time");
//! let t = table::table(&pods, &[pod], "1004", None, None, IncludeObject::Metadata, now);
//! assert_eq!(t["metadata"]["resourceVersion"], "1004");
//! assert_eq!(t["columnDefinitions"][0]["name"], "Name");
//! assert_eq!(
//!     t["rows"][0]["cells"],
//!     json!(["web-1", "1/1", "Running", "0", "3m20s", "10.0.0.5", "<none>", "<none>", "<none>"])
//! );
//! assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
//! ```

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::jiff::Timestamp;
use keelson_core::{LabelSelector, ResourceType};
use serde_json::{json, Map, Value};

/// The `apiVersion` of Tables and of `PartialObjectMetadata`.
const META_V1: &str = "meta.k8s.io/v1";

// ---------------------------------------------------------------------------------------
// What a row carries

/// What each row's `object` holds: the `includeObject` query parameter.
///
/// kubectl sends nothing (which means [`IncludeObject::Metadata`]) for plain `get`, and
/// `includeObject=Object` for `--sort-by`, which sorts on fields of the whole object.
///
/// ```
/// use keelson_apiserver::table::IncludeObject;
///
/// assert_eq!("Object".parse::<IncludeObject>(), Ok(IncludeObject::Object));
/// assert_eq!("".parse::<IncludeObject>(), Ok(IncludeObject::Metadata));
/// assert!("object".parse::<IncludeObject>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IncludeObject {
    /// `None`: rows carry `"object": null`.
    None,
    /// `Metadata` (the default): rows carry a `PartialObjectMetadata`, the object's
    /// `metadata` under `"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1"`.
    /// kubectl reads the namespace (for `-A`) and labels (for `--show-labels`) from it.
    #[default]
    Metadata,
    /// `Object`: rows carry the whole object.
    Object,
}

impl FromStr for IncludeObject {
    type Err = UnknownIncludeObject;

    /// Parses `None`, `Metadata` or `Object`; the empty string means `Metadata`.
    ///
    /// # Errors
    ///
    /// [`UnknownIncludeObject`] for any other value (the apiserver answers it with a
    /// `BadRequest`). Values are case-sensitive.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "None" => Ok(Self::None),
            "" | "Metadata" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            other => Err(UnknownIncludeObject(other.to_owned())),
        }
    }
}

/// An `includeObject` value other than `None`, `Metadata` and `Object`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unrecognized includeObject value: {0:?}")]
pub struct UnknownIncludeObject(pub String);

// ---------------------------------------------------------------------------------------
// Public entry points

/// The column definitions of a kind's Table, in order: each
/// `{"name","type","format","description","priority"}`.
///
/// For built-in kinds these are kube-apiserver's columns; columns of priority 1 appear
/// only with `kubectl get -o wide`. The first column is `Name` with format `name`, except
/// for Events, which lead with `Last Seen` and keep `Name` as a wide column, as the
/// apiserver prints them. Every other kind gets `Name` and `Created At` (type `date`).
pub fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    if !rt.printer_columns.is_empty() {
        return custom_definitions(rt);
    }
    printer(rt).0.iter().map(Column::definition).collect()
}

/// One row, `{"cells":[...],"object":...}`, for one object of kind `rt`; `now` is the time
/// ages are measured to.
///
/// There is one cell per column of [`column_definitions`]. Pods that have succeeded or
/// failed also carry the row condition `Completed`, as the apiserver marks them.
pub fn row(rt: &ResourceType, object: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let cells = if rt.printer_columns.is_empty() {
        (printer(rt).1)(object, now)
    } else {
        custom_cells(rt, object, now)
    };
    let mut row = Map::new();
    row.insert("cells".into(), Value::Array(cells));
    if let Some(conditions) = row_conditions(rt, object) {
        row.insert("conditions".into(), conditions);
    }
    row.insert("object".into(), embedded(rt, object, include));
    Value::Object(row)
}

/// A Table of `objects`: `{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{...},
/// "columnDefinitions":[...],"rows":[...]}`.
///
/// `resource_version`, `continue_token` and `remaining` are the list's metadata
/// (`resourceVersion`, `continue`, `remainingItemCount`); empty values are left out, as
/// the apiserver leaves them out. For a single object (a `GET` of one name) pass an empty
/// `resource_version`: the Table then carries the object's own, as the apiserver's does.
///
/// `objects` may be plain values or shared ones (`&[Value]`, `&[Arc<Value>]`), so a list
/// read from the store needs no copy.
pub fn table<O: Borrow<Value>>(
    rt: &ResourceType,
    objects: &[O],
    resource_version: &str,
    continue_token: Option<&str>,
    remaining: Option<i64>,
    include: IncludeObject,
    now: Timestamp,
) -> Value {
    let resource_version = match objects {
        [only] if resource_version.is_empty() => {
            text(only.borrow(), &["metadata", "resourceVersion"])
        }
        _ => resource_version,
    };
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), json!(resource_version));
    }
    if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
        metadata.insert("continue".into(), json!(token));
    }
    if let Some(remaining) = remaining {
        metadata.insert("remainingItemCount".into(), json!(remaining));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(rt, o.borrow(), include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": META_V1,
        "metadata": metadata,
        "columnDefinitions": column_definitions(rt),
        "rows": rows,
    })
}

/// The one-row Table a watch event carries for `object` (`ADDED`, `MODIFIED` or
/// `DELETED`); its `resourceVersion` is the object's.
///
/// The apiserver sends column definitions with the first event of a stream only
/// (`with_columns`); later events carry `"columnDefinitions": null` and kubectl keeps the
/// columns it has.
pub fn watch_table(
    rt: &ResourceType,
    object: &Value,
    include: IncludeObject,
    now: Timestamp,
    with_columns: bool,
) -> Value {
    let mut metadata = Map::new();
    let resource_version = text(object, &["metadata", "resourceVersion"]);
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), json!(resource_version));
    }
    let columns = if with_columns {
        Value::Array(column_definitions(rt))
    } else {
        Value::Null
    };
    json!({
        "kind": "Table",
        "apiVersion": META_V1,
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": [row(rt, object, include, now)],
    })
}

/// A duration as kubectl prints ages: about two significant figures, from `59s` and
/// `119s` through `3m20s`, `10m`, `179m`, `3h`, `7h59m`, `47h`, `2d3h`, `7d23h`, `8d`,
/// `729d`, `2y3d` to `8y`. This is apimachinery's `duration.HumanDuration`.
///
/// ```
/// use std::time::Duration;
/// use keelson_apiserver::table::human_duration;
///
/// assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
/// assert_eq!(human_duration(Duration::from_secs(51 * 3600)), "2d3h");
/// ```
pub fn human_duration(d: Duration) -> String {
    human(i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

// ---------------------------------------------------------------------------------------
// Durations and times

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// `HumanDuration` of a signed number of nanoseconds: up to a second in the future still
/// reads `0s` (clocks differ), further is `<invalid>`.
fn human(nanos: i128) -> String {
    // Go converts with truncation toward zero, as Rust's integer division does.
    let seconds = nanos / NANOS_PER_SECOND;
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// Go's zero `time.Time` (0001-01-01T00:00:00Z), which Kubernetes treats as "not set".
const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// The timestamp at `path`, if it is set: missing, `null`, unparseable and Go's zero time
/// all count as unset.
fn time(v: &Value, path: &[&str]) -> Option<Timestamp> {
    at(v, path)
        .as_str()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .filter(|t| t.as_second() > GO_ZERO_SECONDS)
}

/// The time since `t`, as `AGE` prints it; `<unknown>` when unset.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(
        || "<unknown>".into(),
        |t| human(now.as_nanosecond() - t.as_nanosecond()),
    )
}

/// The `AGE` cell: the time since `metadata.creationTimestamp`.
fn age(o: &Value, now: Timestamp) -> Value {
    Value::String(since(time(o, &["metadata", "creationTimestamp"]), now))
}

/// Keeps the later of two times, as the pod printer tracks the last restart.
fn keep_latest(latest: &mut Option<Timestamp>, t: Option<Timestamp>) {
    if let Some(t) = t {
        if latest.is_none_or(|l| l < t) {
            *latest = Some(t);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Columns a kind declares (a CRD's additionalPrinterColumns)

fn custom_definitions(rt: &ResourceType) -> Vec<Value> {
    let mut out = vec![NAME.definition()];
    for c in &rt.printer_columns {
        out.push(json!({
            "name": c.name,
            "type": c.type_,
            "format": c.format,
            "description": c.description,
            "priority": c.priority,
        }));
    }
    out
}

fn custom_cells(rt: &ResourceType, object: &Value, now: Timestamp) -> Vec<Value> {
    let mut cells = vec![json!(text(object, &["metadata", "name"]))];
    for c in &rt.printer_columns {
        let value = json_path(object, &c.json_path);
        let cell = match (c.type_.as_str(), value) {
            (_, None | Some(Value::Null)) => Value::Null,
            ("date", Some(v)) => match v.as_str().and_then(|s| s.parse::<Timestamp>().ok()) {
                Some(t) => json!(since(Some(t), now)),
                None => v.clone(),
            },
            ("string", Some(v)) if !v.is_string() => json!(v.to_string()),
            (_, Some(v)) => v.clone(),
        };
        cells.push(cell);
    }
    cells
}

/// Evaluates the JSONPath forms printer columns use: `.a.b`, `.a[0]`, `.a['b.c']`, and a
/// filter picking the first matching element, `.a[?(@.type=="Ready")].status`.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    let mut cur = object;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if !key.is_empty() {
                cur = cur.get(key)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                let (lhs, rhs) = filter.split_once("==")?;
                let key = lhs.trim().strip_prefix("@.")?;
                let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|e| {
                    e.get(key).is_some_and(|v| match v {
                        Value::String(s) => s == want,
                        Value::Number(n) => n.to_string() == want,
                        Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
                        _ => false,
                    })
                })?;
            } else if let Ok(i) = inner.parse::<usize>() {
                cur = cur.get(i)?;
            } else if inner == "*" {
                cur = cur.as_array()?.first()?;
            } else {
                cur = cur.get(inner.trim_matches(|c| c == '"' || c == '\''))?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Where the `]` closing a bracket expression is (quotes and parentheses respected).
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Reading JSON without trusting its shape

static NULL: Value = Value::Null;

/// The value at a path of object keys; `null` when any step is missing or not an object.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, key| v.get(key).unwrap_or(&NULL))
}

/// The string at `path`, or `""`.
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

/// The integer at `path`, or `0`.
fn int(v: &Value, path: &[&str]) -> i64 {
    at(v, path).as_i64().unwrap_or(0)
}

/// The array at `path`, or an empty slice.
fn items<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_array().map_or(&[], Vec::as_slice)
}

/// The number of entries of the map at `path`.
fn entries(v: &Value, path: &[&str]) -> usize {
    at(v, path).as_object().map_or(0, Map::len)
}

/// Whether the value at `path` is `true`.
fn is_true(v: &Value, path: &[&str]) -> bool {
    at(v, path).as_bool() == Some(true)
}

/// Whether a pointer field is set (present and not `null`).
fn is_set(v: &Value, path: &[&str]) -> bool {
    !at(v, path).is_null()
}

/// `s`, or `fallback` when `s` is empty.
fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

/// A quantity (`resource.Quantity`) as its string form; `<nil>` when unset, as Go prints a
/// nil quantity.
fn quantity(v: &Value, path: &[&str]) -> String {
    match at(v, path) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "<nil>".into(),
    }
}

/// An int-or-string (`intstr.IntOrString`) as its string form.
fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The first condition of type `ty`.
fn condition<'a>(conditions: &'a [Value], ty: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| text(c, &["type"]) == ty)
}

/// Whether the first condition of type `ty` has status `True`.
fn condition_true(conditions: &[Value], ty: &str) -> bool {
    condition(conditions, ty).is_some_and(|c| text(c, &["status"]) == "True")
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn name(o: &Value) -> Value {
    s(text(o, &["metadata", "name"]))
}

// ---------------------------------------------------------------------------------------
// Formats shared by several kinds

/// A label map as `a=b,c=d` (sorted by key); `<none>` when empty (`labels.FormatLabels`).
fn format_labels(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .map(|m| {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            keys.into_iter()
                .map(|k| format!("{k}={}", text(&m[k], &[])))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// A structured label selector in selector syntax (`app=web,tier in (be,fe)`); `""` for
/// an empty or missing one.
///
/// # Errors
///
/// When the selector does not convert (a bad operator, key or value).
fn selector_string(v: &Value) -> Result<String, ()> {
    if v.is_null() {
        return Ok(String::new());
    }
    let selector: metav1::LabelSelector = serde_json::from_value(v.clone()).map_err(drop)?;
    LabelSelector::from_k8s(&selector)
        .map(|s| s.to_string())
        .map_err(drop)
}

/// A structured label selector as the wide `SELECTOR` columns print it
/// (`metav1.FormatLabelSelector`): `<none>` when empty, `<error>` when invalid.
fn format_label_selector(v: &Value) -> String {
    match selector_string(v) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s,
        Err(()) => "<error>".into(),
    }
}

/// The `CONTAINERS` and `IMAGES` cells of a pod spec: names and images joined by commas.
fn container_cells(pod_spec: &Value) -> [Value; 2] {
    let containers = items(pod_spec, &["containers"]);
    let join = |field: &str| {
        containers
            .iter()
            .map(|c| text(c, &[field]))
            .collect::<Vec<_>>()
            .join(",")
    };
    [s(join("name")), s(join("image"))]
}

/// Load-balancer ingress points (IP, else hostname), sorted and without duplicates.
fn load_balancer_points(ingress: &Value) -> Vec<String> {
    let points: BTreeSet<&str> = items(ingress, &[])
        .iter()
        .map(|i| or(text(i, &["ip"]), text(i, &["hostname"])))
        .filter(|p| !p.is_empty())
        .collect();
    points.into_iter().map(str::to_owned).collect()
}

/// Up to three entries, then ` + N more...`; `<unset>` for none.
fn list_with_more(shown: &[String], count: usize) -> String {
    let joined = shown.join(",");
    if count > shown.len() {
        format!("{joined} + {} more...", count - shown.len())
    } else if joined.is_empty() {
        "<unset>".into()
    } else {
        joined
    }
}

/// `host:port`, with brackets around an IPv6 host (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Access modes in short form, in a fixed order: `RWO,ROX,RWX,RWOP`.
fn access_modes(modes: &[Value]) -> String {
    let has = |mode: &str| modes.iter().any(|m| m.as_str() == Some(mode));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| has(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class of a volume or claim: the beta annotation wins over the field.
fn storage_class(o: &Value) -> &str {
    let annotations = at(o, &["metadata", "annotations"]);
    match annotations.get("volume.beta.kubernetes.io/storage-class") {
        Some(class) => class.as_str().unwrap_or(""),
        None => text(o, &["spec", "storageClassName"]),
    }
}

// ---------------------------------------------------------------------------------------
// Columns

/// One column definition.
#[derive(Clone, Copy, Debug)]
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: i32,
    description: &'static str,
}

impl Column {
    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// A column shown by default.
const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority: 0,
        description,
    }
}

/// A column shown only with `-o wide`.
const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        priority: 1,
        ..col(name, ty, description)
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "The object's name, unique among objects of its kind in its namespace.",
};
const AGE: Column = col(
    "Age",
    "string",
    "Time since the object was created (metadata.creationTimestamp).",
);
const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "The names of the pod template's containers.",
);
const IMAGES: Column = wide(
    "Images",
    "string",
    "The images of the pod template's containers.",
);
const SELECTOR: Column = wide(
    "Selector",
    "string",
    "The label selector that picks the pods.",
);

const DEFAULT_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Created At",
        "date",
        "When the object was created (metadata.creationTimestamp), in RFC 3339.",
    ),
];

const POD: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready containers out of all containers."),
    col(
        "Status",
        "string",
        "A summary of the pod's state and its containers' states.",
    ),
    col(
        "Restarts",
        "string",
        "How many times the pod's containers have restarted, and how long ago the last one did.",
    ),
    AGE,
    wide("IP", "string", "The pod's IP address."),
    wide("Node", "string", "The node the pod is bound to."),
    wide(
        "Nominated Node",
        "string",
        "The node the scheduler expects to place the pod on after preemption.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "Readiness gates whose condition is true, out of all readiness gates.",
    ),
];

const POD_TEMPLATE: &[Column] = &[
    NAME,
    col(
        "Containers",
        "string",
        "The names of the template's containers.",
    ),
    col(
        "Images",
        "string",
        "The images of the template's containers.",
    ),
    col("Pod Labels", "string", "The labels of the template's pods."),
];

const REPLICAS: &[Column] = &[
    NAME,
    col("Desired", "integer", "The number of pods wanted."),
    col("Current", "integer", "The number of pods that exist."),
    col("Ready", "integer", "The number of pods that are ready."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready pods out of the pods wanted."),
    col(
        "Up-to-date",
        "string",
        "Pods that run the current pod template.",
    ),
    col(
        "Available",
        "string",
        "Pods that have been ready for at least minReadySeconds.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const STATEFUL_SET: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready pods out of the pods wanted."),
    AGE,
    CONTAINERS,
    IMAGES,
];

const DAEMON_SET: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "The number of nodes that should run the pod.",
    ),
    col(
        "Current",
        "integer",
        "The number of nodes that run the pod.",
    ),
    col(
        "Ready",
        "integer",
        "The number of nodes whose pod is ready.",
    ),
    col(
        "Up-to-date",
        "integer",
        "The number of nodes that run the current pod template.",
    ),
    col(
        "Available",
        "integer",
        "The number of nodes whose pod is available.",
    ),
    col(
        "Node Selector",
        "string",
        "The node selector of the pod template.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const CONTROLLER_REVISION: &[Column] = &[
    NAME,
    col(
        "Controller",
        "string",
        "The object that owns this revision.",
    ),
    col("Revision", "string", "The revision number."),
    AGE,
];

const JOB: &[Column] = &[
    NAME,
    col("Status", "string", "The state of the job."),
    col(
        "Completions",
        "string",
        "Succeeded pods out of the completions wanted.",
    ),
    col(
        "Duration",
        "string",
        "How long the job ran, or has been running.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const CRON_JOB: &[Column] = &[
    NAME,
    col("Schedule", "string", "The cron schedule."),
    col(
        "Timezone",
        "string",
        "The time zone the schedule is read in.",
    ),
    col("Suspend", "boolean", "Whether new runs are suspended."),
    col("Active", "integer", "The number of jobs running."),
    col(
        "Last Schedule",
        "string",
        "Time since a job was last scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const SERVICE: &[Column] = &[
    NAME,
    col("Type", "string", "How the service is exposed."),
    col(
        "Cluster-IP",
        "string",
        "The service's virtual IP inside the cluster.",
    ),
    col(
        "External-IP",
        "string",
        "Addresses the service is reachable at from outside.",
    ),
    col(
        "Port(s)",
        "string",
        "The service's ports, with node ports and protocols.",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "The labels of the pods behind the service.",
    ),
];

const ENDPOINTS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The addresses and ports of the endpoints.",
    ),
    AGE,
];

const ENDPOINT_SLICE: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "The kind of address the slice holds.",
    ),
    col("Ports", "string", "The ports of the slice."),
    col(
        "Endpoints",
        "string",
        "The addresses of the slice's endpoints.",
    ),
    AGE,
];

const NODE: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "Whether the node is ready, and whether it takes new pods.",
    ),
    col(
        "Roles",
        "string",
        "The node's roles, from its node-role labels.",
    ),
    AGE,
    col("Version", "string", "The kubelet's version."),
    wide(
        "Internal-IP",
        "string",
        "The node's first internal IP address.",
    ),
    wide(
        "External-IP",
        "string",
        "The node's first external IP address.",
    ),
    wide("OS-Image", "string", "The operating system image."),
    wide("Kernel-Version", "string", "The kernel version."),
    wide(
        "Container-Runtime",
        "string",
        "The container runtime and its version.",
    ),
];

const EVENT: &[Column] = &[
    col("Last Seen", "string", "Time since the event was last seen."),
    col("Type", "string", "The type of event (Normal, Warning)."),
    col("Reason", "string", "Why the event happened, in one word."),
    col("Object", "string", "The object the event is about."),
    wide(
        "Subobject",
        "string",
        "The part of the object the event is about.",
    ),
    wide("Source", "string", "The component that reported the event."),
    col("Message", "string", "What happened, for a human."),
    wide(
        "First Seen",
        "string",
        "Time since the event was first seen.",
    ),
    wide("Count", "string", "How many times the event happened."),
    Column {
        priority: 1,
        ..NAME
    },
];

const NAMESPACE: &[Column] = &[NAME, col("Status", "string", "The namespace's phase."), AGE];

const SECRET: &[Column] = &[
    NAME,
    col("Type", "string", "The type of secret."),
    col("Data", "string", "The number of keys in the secret."),
    AGE,
];

const SERVICE_ACCOUNT: &[Column] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "The number of secrets the account lists.",
    ),
    AGE,
];

const CONFIG_MAP: &[Column] = &[
    NAME,
    col("Data", "string", "The number of keys in the config map."),
    AGE,
];

const PERSISTENT_VOLUME: &[Column] = &[
    NAME,
    col("Capacity", "string", "The volume's storage capacity."),
    col("Access Modes", "string", "How the volume can be mounted."),
    col(
        "Reclaim Policy",
        "string",
        "What happens to the volume when its claim goes.",
    ),
    col("Status", "string", "The volume's phase."),
    col("Claim", "string", "The claim bound to the volume."),
    col("StorageClass", "string", "The volume's storage class."),
    col(
        "VolumeAttributesClass",
        "string",
        "The volume's attributes class.",
    ),
    col("Reason", "string", "Why the volume is in its phase."),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a block device.",
    ),
];

const PERSISTENT_VOLUME_CLAIM: &[Column] = &[
    NAME,
    col("Status", "string", "The claim's phase."),
    col("Volume", "string", "The volume bound to the claim."),
    col("Capacity", "string", "The bound volume's capacity."),
    col(
        "Access Modes",
        "string",
        "How the bound volume can be mounted.",
    ),
    col("StorageClass", "string", "The claim's storage class."),
    col(
        "VolumeAttributesClass",
        "string",
        "The claim's volume attributes class.",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a block device.",
    ),
];

const RESOURCE_QUOTA: &[Column] = &[
    NAME,
    col(
        "Request",
        "string",
        "Used and hard limits of everything but limits.*.",
    ),
    col("Limit", "string", "Used and hard limits of limits.*."),
    AGE,
];

const HORIZONTAL_POD_AUTOSCALER: &[Column] = &[
    NAME,
    col("Reference", "string", "The object whose scale is set."),
    col(
        "Targets",
        "string",
        "Current and target values of the metrics.",
    ),
    col("MinPods", "string", "The lowest number of replicas."),
    col("MaxPods", "string", "The highest number of replicas."),
    col("Replicas", "string", "The current number of replicas."),
    AGE,
];

const POD_DISRUPTION_BUDGET: &[Column] = &[
    NAME,
    col("Min Available", "string", "Pods that must stay available."),
    col("Max Unavailable", "string", "Pods that may be unavailable."),
    col(
        "Allowed Disruptions",
        "integer",
        "Pods that may be disrupted now.",
    ),
    AGE,
];

const INGRESS: &[Column] = &[
    NAME,
    col(
        "Class",
        "string",
        "The ingress class that handles the ingress.",
    ),
    col("Hosts", "string", "The hosts the rules match."),
    col("Address", "string", "The load balancer's addresses."),
    col("Ports", "string", "The ports the ingress serves."),
    AGE,
];

const INGRESS_CLASS: &[Column] = &[
    NAME,
    col(
        "Controller",
        "string",
        "The controller that implements the class.",
    ),
    col(
        "Parameters",
        "string",
        "The object holding the class's parameters.",
    ),
    AGE,
];

const NETWORK_POLICY: &[Column] = &[
    NAME,
    col("Pod-Selector", "string", "The pods the policy applies to."),
    AGE,
];

const ROLE_BINDING: &[Column] = &[
    NAME,
    col("Role", "string", "The role granted."),
    AGE,
    wide("Users", "string", "Users granted the role."),
    wide("Groups", "string", "Groups granted the role."),
    wide(
        "ServiceAccounts",
        "string",
        "Service accounts granted the role.",
    ),
];

const CERTIFICATE_SIGNING_REQUEST: &[Column] = &[
    NAME,
    AGE,
    col("SignerName", "string", "The signer asked to sign."),
    col("Requestor", "string", "The user who made the request."),
    col(
        "RequestedDuration",
        "string",
        "The validity period asked for.",
    ),
    col(
        "Condition",
        "string",
        "Whether the request is approved, denied, failed or issued.",
    ),
];

const LEASE: &[Column] = &[NAME, col("Holder", "string", "Who holds the lease."), AGE];

const PRIORITY_CLASS: &[Column] = &[
    NAME,
    col(
        "Value",
        "integer",
        "The priority given to pods of this class.",
    ),
    col(
        "Global-Default",
        "boolean",
        "Whether pods without a class get this one.",
    ),
    AGE,
    col(
        "PreemptionPolicy",
        "string",
        "Whether pods of this class preempt others.",
    ),
];

const STORAGE_CLASS: &[Column] = &[
    NAME,
    col(
        "Provisioner",
        "string",
        "The volume plugin that provisions volumes.",
    ),
    col(
        "ReclaimPolicy",
        "string",
        "What happens to provisioned volumes when released.",
    ),
    col(
        "VolumeBindingMode",
        "string",
        "When volumes are bound and provisioned.",
    ),
    col(
        "AllowVolumeExpansion",
        "string",
        "Whether volumes can be expanded.",
    ),
    AGE,
];

const CSI_DRIVER: &[Column] = &[
    NAME,
    col(
        "AttachRequired",
        "boolean",
        "Whether volumes need an attach step.",
    ),
    col(
        "PodInfoOnMount",
        "boolean",
        "Whether the driver gets pod information on mount.",
    ),
    col(
        "StorageCapacity",
        "boolean",
        "Whether the scheduler considers storage capacity.",
    ),
    col(
        "TokenRequests",
        "string",
        "Audiences of the service account tokens the driver gets.",
    ),
    col(
        "RequiresRepublish",
        "boolean",
        "Whether volumes are published again periodically.",
    ),
    col(
        "Modes",
        "string",
        "The volume lifecycle modes the driver supports.",
    ),
    AGE,
];

const CSI_NODE: &[Column] = &[
    NAME,
    col(
        "Drivers",
        "integer",
        "The number of CSI drivers on the node.",
    ),
    AGE,
];

const VOLUME_ATTACHMENT: &[Column] = &[
    NAME,
    Column {
        format: "name",
        ..col("Attacher", "string", "The volume driver that attaches.")
    },
    col("PV", "string", "The persistent volume attached."),
    col("Node", "string", "The node the volume is attached to."),
    col("Attached", "boolean", "Whether the volume is attached."),
    AGE,
];

const RUNTIME_CLASS: &[Column] = &[
    NAME,
    col("Handler", "string", "The container runtime handler."),
    AGE,
];

const WEBHOOK_CONFIGURATION: &[Column] = &[
    NAME,
    col(
        "Webhooks",
        "integer",
        "The number of webhooks in the configuration.",
    ),
    AGE,
];

const VALIDATING_ADMISSION_POLICY: &[Column] = &[
    NAME,
    col("Validations", "integer", "The number of validation rules."),
    col(
        "ParamKind",
        "string",
        "The kind of the objects that parameterize the policy.",
    ),
    AGE,
];

const VALIDATING_ADMISSION_POLICY_BINDING: &[Column] = &[
    NAME,
    col("PolicyName", "string", "The policy bound."),
    col("ParamRef", "string", "The parameters the binding passes."),
    AGE,
];

// ---------------------------------------------------------------------------------------
// Printers

/// Cells of one row, given the object and the time ages are measured to.
type Cells = fn(&Value, Timestamp) -> Vec<Value>;

/// The columns and the cell function of a kind.
fn printer(rt: &ResourceType) -> (&'static [Column], Cells) {
    match (&*rt.group, &*rt.kind) {
        ("", "Pod") => (POD, pod),
        ("", "PodTemplate") => (POD_TEMPLATE, pod_template),
        ("", "ReplicationController") => (REPLICAS, replication_controller),
        ("", "Service") => (SERVICE, service),
        ("", "Endpoints") => (ENDPOINTS, endpoints),
        ("", "Node") => (NODE, node),
        ("", "Event") => (EVENT, core_event),
        ("events.k8s.io", "Event") => (EVENT, events_event),
        ("", "Namespace") => (NAMESPACE, namespace),
        ("", "Secret") => (SECRET, secret),
        ("", "ServiceAccount") => (SERVICE_ACCOUNT, service_account),
        ("", "ConfigMap") => (CONFIG_MAP, config_map),
        ("", "PersistentVolume") => (PERSISTENT_VOLUME, persistent_volume),
        ("", "PersistentVolumeClaim") => (PERSISTENT_VOLUME_CLAIM, persistent_volume_claim),
        ("", "ResourceQuota") => (RESOURCE_QUOTA, resource_quota),
        ("apps", "Deployment") => (DEPLOYMENT, deployment),
        ("apps", "ReplicaSet") => (REPLICAS, replica_set),
        ("apps", "StatefulSet") => (STATEFUL_SET, stateful_set),
        ("apps", "DaemonSet") => (DAEMON_SET, daemon_set),
        ("apps", "ControllerRevision") => (CONTROLLER_REVISION, controller_revision),
        ("batch", "Job") => (JOB, job),
        ("batch", "CronJob") => (CRON_JOB, cron_job),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            (HORIZONTAL_POD_AUTOSCALER, horizontal_pod_autoscaler)
        }
        ("policy", "PodDisruptionBudget") => (POD_DISRUPTION_BUDGET, pod_disruption_budget),
        ("networking.k8s.io", "Ingress") => (INGRESS, ingress),
        ("networking.k8s.io", "IngressClass") => (INGRESS_CLASS, ingress_class),
        ("networking.k8s.io", "NetworkPolicy") => (NETWORK_POLICY, network_policy),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            (ROLE_BINDING, role_binding)
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            (CERTIFICATE_SIGNING_REQUEST, certificate_signing_request)
        }
        ("coordination.k8s.io", "Lease") => (LEASE, lease),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINT_SLICE, endpoint_slice),
        ("scheduling.k8s.io", "PriorityClass") => (PRIORITY_CLASS, priority_class),
        ("storage.k8s.io", "StorageClass") => (STORAGE_CLASS, storage_class_cells),
        ("storage.k8s.io", "CSIDriver") => (CSI_DRIVER, csi_driver),
        ("storage.k8s.io", "CSINode") => (CSI_NODE, csi_node),
        ("storage.k8s.io", "VolumeAttachment") => (VOLUME_ATTACHMENT, volume_attachment),
        ("node.k8s.io", "RuntimeClass") => (RUNTIME_CLASS, runtime_class),
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => (WEBHOOK_CONFIGURATION, webhook_configuration),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            (VALIDATING_ADMISSION_POLICY, validating_admission_policy)
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => (
            VALIDATING_ADMISSION_POLICY_BINDING,
            validating_admission_policy_binding,
        ),
        _ => (DEFAULT_COLUMNS, default_cells),
    }
}

/// Row conditions: a pod that has succeeded or failed is `Completed`, which clients may
/// show with less emphasis.
fn row_conditions(rt: &ResourceType, object: &Value) -> Option<Value> {
    if (&*rt.group, &*rt.kind) != ("", "Pod") {
        return None;
    }
    let (reason, message) = match text(object, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

/// The row's `object`, as `include` asks.
fn embedded(rt: &ResourceType, object: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => {
            let metadata = match object.get("metadata") {
                Some(m @ Value::Object(_)) => m.clone(),
                _ => json!({}),
            };
            json!({"kind": "PartialObjectMetadata", "apiVersion": META_V1, "metadata": metadata})
        }
        IncludeObject::Object => {
            let mut object = object.clone();
            if let Some(map) = object.as_object_mut() {
                for (field, value) in [
                    ("kind", rt.kind.to_string()),
                    ("apiVersion", rt.api_version()),
                ] {
                    if map
                        .get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        map.insert(field.into(), Value::String(value));
                    }
                }
            }
            object
        }
    }
}

/// The apiserver's default: the name and the creation time in RFC 3339 (Go's zero time
/// when unset, as the apiserver prints it).
fn default_cells(o: &Value, _now: Timestamp) -> Vec<Value> {
    let created = time(o, &["metadata", "creationTimestamp"])
        .and_then(|t| Timestamp::from_second(t.as_second()).ok())
        .map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), |t| t.to_string());
    vec![name(o), s(created)]
}

fn pod(pod: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(pod, &["spec"]);
    let status = at(pod, &["status"]);
    let phase = text(status, &["phase"]);
    let conditions = items(status, &["conditions"]);
    let mut reason = or(text(status, &["reason"]), phase).to_owned();
    if conditions
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    // Init containers with restartPolicy Always are sidecars: they count as containers.
    let init_specs = items(spec, &["initContainers"]);
    let is_sidecar = |c: &Value| text(c, &["restartPolicy"]) == "Always";
    let sidecar_named = |name: &str| {
        init_specs
            .iter()
            .rev()
            .find(|c| text(c, &["name"]) == name)
            .is_some_and(is_sidecar)
    };
    let total =
        items(spec, &["containers"]).len() + init_specs.iter().filter(|c| is_sidecar(c)).count();
    let mut ready = 0;
    let (mut restarts, mut sidecar_restarts) = (0, 0);
    let (mut last_restart, mut last_sidecar_restart) = (None, None);
    let last_finished = |c: &Value| time(c, &["lastState", "terminated", "finishedAt"]);

    let mut initializing = false;
    for (i, c) in items(status, &["initContainerStatuses"]).iter().enumerate() {
        restarts += int(c, &["restartCount"]);
        keep_latest(&mut last_restart, last_finished(c));
        let sidecar = sidecar_named(text(c, &["name"]));
        if sidecar {
            sidecar_restarts += int(c, &["restartCount"]);
            keep_latest(&mut last_sidecar_restart, last_finished(c));
        }
        let terminated = at(c, &["state", "terminated"]);
        let waiting_reason = text(c, &["state", "waiting", "reason"]);
        if !terminated.is_null() && int(terminated, &["exitCode"]) == 0 {
            continue;
        }
        if sidecar && is_true(c, &["started"]) {
            if is_true(c, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        reason = if !terminated.is_null() {
            match text(terminated, &["reason"]) {
                "" if int(terminated, &["signal"]) != 0 => {
                    format!("Init:Signal:{}", int(terminated, &["signal"]))
                }
                "" => format!("Init:ExitCode:{}", int(terminated, &["exitCode"])),
                r => format!("Init:{r}"),
            }
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // The first container's state wins: walk them last to first.
        for c in items(status, &["containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            keep_latest(&mut last_restart, last_finished(c));
            let terminated = at(c, &["state", "terminated"]);
            let waiting_reason = text(c, &["state", "waiting", "reason"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_owned();
            } else if !terminated.is_null() {
                reason = match text(terminated, &["reason"]) {
                    "" if int(terminated, &["signal"]) != 0 => {
                        format!("Signal:{}", int(terminated, &["signal"]))
                    }
                    "" => format!("ExitCode:{}", int(terminated, &["exitCode"])),
                    r => r.to_owned(),
                };
            } else if is_true(c, &["ready"]) && is_set(c, &["state", "running"]) {
                has_running = true;
                ready += 1;
            }
        }
        // A container still running turns a "Completed" pod back to running.
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| text(c, &["type"]) == "Ready" && text(c, &["status"]) == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }

    if is_set(pod, &["metadata", "deletionTimestamp"]) {
        if text(status, &["reason"]) == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }

    let restarts = match last_restart {
        Some(last) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(last), now)),
        _ => restarts.to_string(),
    };

    let pod_ip = match items(status, &["podIPs"]).first() {
        Some(first) => text(first, &["ip"]),
        None => text(status, &["podIP"]),
    };
    let gates = items(spec, &["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let true_gates = gates
            .iter()
            .filter(|g| condition_true(conditions, text(g, &["conditionType"])))
            .count();
        format!("{true_gates}/{}", gates.len())
    };
    vec![
        name(pod),
        s(format!("{ready}/{total}")),
        s(reason),
        s(restarts),
        age(pod, now),
        s(or(pod_ip, "<none>")),
        s(or(text(spec, &["nodeName"]), "<none>")),
        s(or(text(status, &["nominatedNodeName"]), "<none>")),
        s(readiness_gates),
    ]
}

fn pod_template(o: &Value, _now: Timestamp) -> Vec<Value> {
    let template = at(o, &["template"]);
    let [containers, images] = container_cells(at(template, &["spec"]));
    vec![
        name(o),
        containers,
        images,
        s(format_labels(at(template, &["metadata", "labels"]))),
    ]
}

/// Replicas, defaulted to 1 as the apiserver defaults them.
fn desired_replicas(o: &Value) -> i64 {
    at(o, &["spec", "replicas"]).as_i64().unwrap_or(1)
}

fn replication_controller(o: &Value, now: Timestamp) -> Vec<Value> {
    let [containers, images] = container_cells(at(o, &["spec", "template", "spec"]));
    vec![
        name(o),
        json!(desired_replicas(o)),
        json!(int(o, &["status", "replicas"])),
        json!(int(o, &["status", "readyReplicas"])),
        age(o, now),
        containers,
        images,
        s(format_labels(at(o, &["spec", "selector"]))),
    ]
}

fn replica_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let [containers, images] = container_cells(at(o, &["spec", "template", "spec"]));
    vec![
        name(o),
        json!(desired_replicas(o)),
        json!(int(o, &["status", "replicas"])),
        json!(int(o, &["status", "readyReplicas"])),
        age(o, now),
        containers,
        images,
        s(format_label_selector(at(o, &["spec", "selector"]))),
    ]
}

fn deployment(o: &Value, now: Timestamp) -> Vec<Value> {
    let [containers, images] = container_cells(at(o, &["spec", "template", "spec"]));
    let selector =
        selector_string(at(o, &["spec", "selector"])).unwrap_or_else(|()| "<invalid>".into());
    vec![
        name(o),
        s(format!(
            "{}/{}",
            int(o, &["status", "readyReplicas"]),
            desired_replicas(o)
        )),
        json!(int(o, &["status", "updatedReplicas"])),
        json!(int(o, &["status", "availableReplicas"])),
        age(o, now),
        containers,
        images,
        s(selector),
    ]
}

fn stateful_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let [containers, images] = container_cells(at(o, &["spec", "template", "spec"]));
    vec![
        name(o),
        s(format!(
            "{}/{}",
            int(o, &["status", "readyReplicas"]),
            desired_replicas(o)
        )),
        age(o, now),
        containers,
        images,
    ]
}

fn daemon_set(o: &Value, now: Timestamp) -> Vec<Value> {
    let pod_spec = at(o, &["spec", "template", "spec"]);
    let [containers, images] = container_cells(pod_spec);
    let status = |field: &str| json!(int(o, &["status", field]));
    vec![
        name(o),
        status("desiredNumberScheduled"),
        status("currentNumberScheduled"),
        status("numberReady"),
        status("updatedNumberScheduled"),
        status("numberAvailable"),
        s(format_labels(at(pod_spec, &["nodeSelector"]))),
        age(o, now),
        containers,
        images,
        s(format_label_selector(at(o, &["spec", "selector"]))),
    ]
}

fn controller_revision(o: &Value, now: Timestamp) -> Vec<Value> {
    let owner = items(o, &["metadata", "ownerReferences"])
        .iter()
        .find(|r| is_true(r, &["controller"]));
    let controller = owner.map_or_else(
        || "<none>".to_owned(),
        |r| {
            let (kind, owner_name) = (text(r, &["kind"]), text(r, &["name"]));
            let group = text(r, &["apiVersion"])
                .rsplit_once('/')
                .map_or("", |(group, _)| group);
            match (kind, group) {
                ("", "") => owner_name.to_owned(),
                (kind, "") => format!("{}/{owner_name}", kind.to_lowercase()),
                (kind, group) => format!(
                    "{}.{}/{owner_name}",
                    kind.to_lowercase(),
                    group.to_lowercase()
                ),
            }
        },
    );
    vec![
        name(o),
        s(controller),
        json!(int(o, &["revision"])),
        age(o, now),
    ]
}

fn job(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let status = at(o, &["status"]);
    let succeeded = int(status, &["succeeded"]);
    let completions = match at(spec, &["completions"]).as_i64() {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match int(spec, &["parallelism"]) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (
        time(status, &["startTime"]),
        time(status, &["completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => since(Some(start), now),
        (Some(start), Some(end)) => human(end.as_nanosecond() - start.as_nanosecond()),
    };
    let conditions = items(status, &["conditions"]);
    let state = if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if is_set(o, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let [containers, images] = container_cells(at(spec, &["template", "spec"]));
    vec![
        name(o),
        s(state),
        s(completions),
        s(duration),
        age(o, now),
        containers,
        images,
        s(format_label_selector(at(spec, &["selector"]))),
    ]
}

fn cron_job(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let job_spec = at(spec, &["jobTemplate", "spec"]);
    let last_schedule = match time(o, &["status", "lastScheduleTime"]) {
        Some(t) => since(Some(t), now),
        None => "<none>".into(),
    };
    let suspend = match at(spec, &["suspend"]) {
        Value::Bool(true) => "True",
        // Defaulted to false by the apiserver.
        _ => "False",
    };
    let [containers, images] = container_cells(at(job_spec, &["template", "spec"]));
    vec![
        name(o),
        s(text(spec, &["schedule"])),
        s(or(text(spec, &["timeZone"]), "<none>")),
        s(suspend),
        json!(items(o, &["status", "active"]).len()),
        s(last_schedule),
        age(o, now),
        containers,
        images,
        s(format_label_selector(at(job_spec, &["selector"]))),
    ]
}

fn service(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let ty = or(text(spec, &["type"]), "ClusterIP");
    let cluster_ip = match items(spec, &["clusterIPs"]).first() {
        Some(first) => first.as_str().unwrap_or(""),
        None => text(spec, &["clusterIP"]),
    };
    let external_ips: Vec<&str> = items(spec, &["externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".to_owned(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let mut points = load_balancer_points(at(o, &["status", "loadBalancer", "ingress"]));
            if points.is_empty() && external_ips.is_empty() {
                "<pending>".to_owned()
            } else {
                points.extend(external_ips.iter().map(|ip| (*ip).to_owned()));
                points.join(",")
            }
        }
        "ExternalName" => text(spec, &["externalName"]).to_owned(),
        _ => "<unknown>".to_owned(),
    };
    let ports: Vec<String> = items(spec, &["ports"])
        .iter()
        .map(|p| {
            let protocol = or(text(p, &["protocol"]), "TCP");
            match (int(p, &["port"]), int(p, &["nodePort"])) {
                (port, node_port) if node_port > 0 => format!("{port}:{node_port}/{protocol}"),
                (port, _) => format!("{port}/{protocol}"),
            }
        })
        .collect();
    vec![
        name(o),
        s(ty),
        s(or(cluster_ip, "<none>")),
        s(external),
        s(if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        }),
        age(o, now),
        s(format_labels(at(spec, &["selector"]))),
    ]
}

fn endpoints(o: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let subsets = items(o, &["subsets"]);
    let cell = if subsets.is_empty() {
        "<none>".to_owned()
    } else {
        let mut shown: Vec<String> = Vec::new();
        let mut count = 0;
        for subset in subsets {
            let addresses = items(subset, &["addresses"]);
            let ports = items(subset, &["ports"]);
            // A headless service may have no ports: list the bare addresses.
            let ports: Vec<Option<i64>> = if ports.is_empty() {
                vec![None]
            } else {
                ports.iter().map(|p| Some(int(p, &["port"]))).collect()
            };
            for port in ports {
                count += addresses.len();
                for address in addresses.iter().take(MAX.saturating_sub(shown.len())) {
                    let ip = text(address, &["ip"]);
                    shown.push(port.map_or_else(|| ip.to_owned(), |port| join_host_port(ip, port)));
                }
            }
        }
        let joined = shown.join(",");
        if count > MAX {
            format!("{joined} + {} more...", count - MAX)
        } else {
            joined
        }
    };
    vec![name(o), s(cell), age(o, now)]
}

fn endpoint_slice(o: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let ports = items(o, &["ports"]);
    let shown_ports: Vec<String> = ports
        .iter()
        .take(MAX)
        .map(
            |p| match (at(p, &["port"]).as_i64(), at(p, &["name"]).as_str()) {
                (Some(port), _) => port.to_string(),
                (None, Some(port_name)) => port_name.to_owned(),
                (None, None) => "*".to_owned(),
            },
        )
        .collect();
    let addresses: Vec<&str> = items(o, &["endpoints"])
        .iter()
        .flat_map(|e| items(e, &["addresses"]))
        .map(|a| a.as_str().unwrap_or(""))
        .collect();
    let shown_addresses: Vec<String> = addresses
        .iter()
        .take(MAX)
        .map(|a| (*a).to_owned())
        .collect();
    vec![
        name(o),
        s(text(o, &["addressType"])),
        s(list_with_more(&shown_ports, ports.len())),
        s(list_with_more(&shown_addresses, addresses.len())),
        age(o, now),
    ]
}

fn node(o: &Value, now: Timestamp) -> Vec<Value> {
    let status = at(o, &["status"]);
    let ready = items(status, &["conditions"])
        .iter()
        .rev()
        .find(|c| text(c, &["type"]) == "Ready");
    let mut state = match ready {
        Some(c) if text(c, &["status"]) == "True" => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if is_true(o, &["spec", "unschedulable"]) {
        state.push_str(",SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = at(o, &["metadata", "labels"]).as_object() {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role);
                }
            } else if key == "kubernetes.io/role" {
                if let Some(role) = value.as_str().filter(|r| !r.is_empty()) {
                    roles.insert(role);
                }
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };
    let address = |ty: &str| {
        items(status, &["addresses"])
            .iter()
            .find(|a| text(a, &["type"]) == ty)
            .map_or("<none>", |a| text(a, &["address"]))
    };
    let info = |field: &str| s(or(text(status, &["nodeInfo", field]), "<unknown>"));
    vec![
        name(o),
        s(state),
        s(roles),
        age(o, now),
        s(text(status, &["nodeInfo", "kubeletVersion"])),
        s(address("InternalIP")),
        s(address("ExternalIP")),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ]
}

/// Where an Event's fields are: `core/v1` and `events.k8s.io/v1` name some differently.
struct EventFields {
    regarding: &'static str,
    note: &'static str,
    source: &'static str,
    first_timestamp: &'static str,
    last_timestamp: &'static str,
    count: &'static str,
}

fn core_event(o: &Value, now: Timestamp) -> Vec<Value> {
    event(
        o,
        now,
        &EventFields {
            regarding: "involvedObject",
            note: "message",
            source: "source",
            first_timestamp: "firstTimestamp",
            last_timestamp: "lastTimestamp",
            count: "count",
        },
    )
}

fn events_event(o: &Value, now: Timestamp) -> Vec<Value> {
    event(
        o,
        now,
        &EventFields {
            regarding: "regarding",
            note: "note",
            source: "deprecatedSource",
            first_timestamp: "deprecatedFirstTimestamp",
            last_timestamp: "deprecatedLastTimestamp",
            count: "deprecatedCount",
        },
    )
}

fn event(o: &Value, now: Timestamp, f: &EventFields) -> Vec<Value> {
    let first_seen = match time(o, &[f.first_timestamp]) {
        Some(t) => since(Some(t), now),
        None => since(time(o, &["eventTime"]), now),
    };
    let mut last_seen = match time(o, &[f.last_timestamp]) {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = int(o, &[f.count]);
    if is_set(o, &["series"]) {
        last_seen = since(time(o, &["series", "lastObservedTime"]), now);
        count = int(o, &["series", "count"]);
    } else if count == 0 {
        // Singleton events of the new API have no count.
        count = 1;
    }
    let regarding = at(o, &[f.regarding]);
    let kind = text(regarding, &["kind"]).to_lowercase();
    let target = match text(regarding, &["name"]) {
        "" => kind,
        regarding_name => format!("{kind}/{regarding_name}"),
    };
    let component = or(
        text(o, &[f.source, "component"]),
        text(o, &["reportingController"]),
    );
    let host = or(
        text(o, &[f.source, "host"]),
        text(o, &["reportingInstance"]),
    );
    let source = if host.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {host}")
    };
    vec![
        s(last_seen),
        s(text(o, &["type"])),
        s(text(o, &["reason"])),
        s(target),
        s(text(regarding, &["fieldPath"])),
        s(source),
        s(text(o, &[f.note]).trim()),
        s(first_seen),
        json!(count),
        name(o),
    ]
}

fn namespace(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(o),
        s(or(text(o, &["status", "phase"]), "Active")),
        age(o, now),
    ]
}

fn secret(o: &Value, now: Timestamp) -> Vec<Value> {
    // stringData is merged into data when the apiserver decodes a secret.
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for field in ["data", "stringData"] {
        if let Some(map) = at(o, &[field]).as_object() {
            keys.extend(map.keys().map(String::as_str));
        }
    }
    vec![
        name(o),
        s(or(text(o, &["type"]), "Opaque")),
        json!(keys.len()),
        age(o, now),
    ]
}

fn service_account(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(o), json!(items(o, &["secrets"]).len()), age(o, now)]
}

fn config_map(o: &Value, now: Timestamp) -> Vec<Value> {
    let keys = entries(o, &["data"]) + entries(o, &["binaryData"]);
    vec![name(o), json!(keys), age(o, now)]
}

/// `Terminating` while a deletion is pending, else the phase (defaulted to `Pending`).
fn volume_phase(o: &Value) -> &str {
    if is_set(o, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else {
        or(text(o, &["status", "phase"]), "Pending")
    }
}

fn persistent_volume(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let claim = at(spec, &["claimRef"]);
    let claim = if claim.is_null() {
        String::new()
    } else {
        format!("{}/{}", text(claim, &["namespace"]), text(claim, &["name"]))
    };
    let capacity = match at(spec, &["capacity", "storage"]) {
        Value::Null => "0".to_owned(),
        q => int_or_string(q),
    };
    vec![
        name(o),
        s(capacity),
        s(access_modes(items(spec, &["accessModes"]))),
        s(or(text(spec, &["persistentVolumeReclaimPolicy"]), "Retain")),
        s(volume_phase(o)),
        s(claim),
        s(storage_class(o)),
        s(or(text(spec, &["volumeAttributesClassName"]), "<unset>")),
        s(text(o, &["status", "reason"])),
        age(o, now),
        s(or(text(spec, &["volumeMode"]), "Filesystem")),
    ]
}

fn persistent_volume_claim(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let volume = text(spec, &["volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        let capacity = match at(o, &["status", "capacity", "storage"]) {
            Value::Null => "0".to_owned(),
            q => int_or_string(q),
        };
        (capacity, access_modes(items(o, &["status", "accessModes"])))
    };
    vec![
        name(o),
        s(volume_phase(o)),
        s(volume),
        s(capacity),
        s(modes),
        s(storage_class(o)),
        s(or(text(spec, &["volumeAttributesClassName"]), "<unset>")),
        age(o, now),
        s(or(text(spec, &["volumeMode"]), "Filesystem")),
    ]
}

fn resource_quota(o: &Value, now: Timestamp) -> Vec<Value> {
    let status = at(o, &["status"]);
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    if let Some(hard) = at(status, &["hard"]).as_object() {
        let mut resources: Vec<&String> = hard.keys().collect();
        resources.sort();
        for resource in resources {
            let used = match at(status, &["used", resource]) {
                Value::Null => "0".to_owned(),
                q => int_or_string(q),
            };
            let entry = format!("{resource}: {used}/{}", int_or_string(&hard[resource]));
            match resource.split_once('.') {
                Some(("limits", _)) => limits.push(entry),
                _ => requests.push(entry),
            }
        }
    }
    vec![
        name(o),
        s(requests.join(", ")),
        s(limits.join(", ")),
        age(o, now),
    ]
}

fn horizontal_pod_autoscaler(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let target = at(spec, &["scaleTargetRef"]);
    let min_pods = at(spec, &["minReplicas"])
        .as_i64()
        .map_or_else(|| "<unset>".to_owned(), |m| m.to_string());
    vec![
        name(o),
        s(format!(
            "{}/{}",
            text(target, &["kind"]),
            text(target, &["name"])
        )),
        s(hpa_metrics(
            items(spec, &["metrics"]),
            items(o, &["status", "currentMetrics"]),
        )),
        s(min_pods),
        json!(int(spec, &["maxReplicas"])),
        json!(int(o, &["status", "currentReplicas"])),
        age(o, now),
    ]
}

/// The `TARGETS` cell of an autoscaling/v2 HPA: `current/target` per metric, at most two.
fn hpa_metrics(specs: &[Value], statuses: &[Value]) -> String {
    const MAX: usize = 2;
    if specs.is_empty() {
        return "<none>".into();
    }
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .take(MAX)
        .map(|(i, spec)| {
            let status = statuses.get(i).unwrap_or(&NULL);
            // The current value from the status at the same index, `<unknown>` without
            // one; a missing quantity prints `<nil>` unless `required` asks for `<unknown>`.
            let current = |source: &str, field: &str, required: bool| {
                let source_status = at(status, &[source]);
                if source_status.is_null()
                    || (required && !is_set(source_status, &["current", field]))
                {
                    "<unknown>".to_owned()
                } else {
                    quantity(source_status, &["current", field])
                }
            };
            match text(spec, &["type"]) {
                source_type @ ("External" | "Object") => {
                    let source = if source_type == "External" {
                        "external"
                    } else {
                        "object"
                    };
                    let target = at(spec, &[source, "target"]);
                    if is_set(target, &["averageValue"]) {
                        format!(
                            "{}/{} (avg)",
                            current(source, "averageValue", true),
                            quantity(target, &["averageValue"])
                        )
                    } else {
                        format!(
                            "{}/{}",
                            current(source, "value", false),
                            quantity(target, &["value"])
                        )
                    }
                }
                "Pods" => format!(
                    "{}/{}",
                    current("pods", "averageValue", false),
                    quantity(spec, &["pods", "target", "averageValue"])
                ),
                source_type @ ("Resource" | "ContainerResource") => {
                    let source = if source_type == "Resource" {
                        "resource"
                    } else {
                        "containerResource"
                    };
                    let resource = text(spec, &[source, "name"]);
                    let target = at(spec, &[source, "target"]);
                    if is_set(target, &["averageValue"]) {
                        format!(
                            "{resource}: {}/{}",
                            current(source, "averageValue", false),
                            quantity(target, &["averageValue"])
                        )
                    } else {
                        let current = at(status, &[source, "current", "averageUtilization"])
                            .as_i64()
                            .map_or_else(|| "<unknown>".to_owned(), |u| format!("{u}%"));
                        let target = at(target, &["averageUtilization"])
                            .as_i64()
                            .map_or_else(|| "<auto>".to_owned(), |u| format!("{u}%"));
                        format!("{resource}: {current}/{target}")
                    }
                }
                _ => "<unknown type>".to_owned(),
            }
        })
        .collect();
    let joined = shown.join(", ");
    if specs.len() > MAX {
        format!("{joined} + {} more...", specs.len() - MAX)
    } else {
        joined
    }
}

fn pod_disruption_budget(o: &Value, now: Timestamp) -> Vec<Value> {
    let bound = |field: &str| match at(o, &["spec", field]) {
        Value::Null => "N/A".to_owned(),
        v => int_or_string(v),
    };
    vec![
        name(o),
        s(bound("minAvailable")),
        s(bound("maxUnavailable")),
        json!(int(o, &["status", "disruptionsAllowed"])),
        age(o, now),
    ]
}

fn ingress(o: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let spec = at(o, &["spec"]);
    let rules = items(spec, &["rules"]);
    // Hosts of the rules that have one, up to three; "more" once a rule is left over.
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if hosts.len() == MAX {
            more = true;
            break;
        }
        let host = text(rule, &["host"]);
        if !host.is_empty() {
            hosts.push(host);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_owned()
    } else if more {
        format!("{} + {} more...", hosts.join(","), rules.len() - MAX)
    } else {
        hosts.join(",")
    };
    let ports = if items(spec, &["tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(o),
        s(or(text(spec, &["ingressClassName"]), "<none>")),
        s(hosts),
        s(load_balancer_points(at(o, &["status", "loadBalancer", "ingress"])).join(",")),
        s(ports),
        age(o, now),
    ]
}

fn ingress_class(o: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = at(o, &["spec", "parameters"]);
    let parameters = if parameters.is_null() {
        "<none>".to_owned()
    } else {
        let kind = match at(parameters, &["apiGroup"]).as_str() {
            Some(group) => format!("{}.{group}", text(parameters, &["kind"])),
            None => text(parameters, &["kind"]).to_owned(),
        };
        format!("{kind}/{}", text(parameters, &["name"]))
    };
    vec![
        name(o),
        s(text(o, &["spec", "controller"])),
        s(parameters),
        age(o, now),
    ]
}

fn network_policy(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(o),
        s(format_label_selector(at(o, &["spec", "podSelector"]))),
        age(o, now),
    ]
}

fn role_binding(o: &Value, now: Timestamp) -> Vec<Value> {
    let role = at(o, &["roleRef"]);
    let (mut users, mut groups, mut service_accounts) = (Vec::new(), Vec::new(), Vec::new());
    for subject in items(o, &["subjects"]) {
        let subject_name = text(subject, &["name"]);
        match text(subject, &["kind"]) {
            "User" => users.push(subject_name.to_owned()),
            "Group" => groups.push(subject_name.to_owned()),
            "ServiceAccount" => {
                service_accounts.push(format!("{}/{subject_name}", text(subject, &["namespace"])));
            }
            _ => {}
        }
    }
    vec![
        name(o),
        s(format!(
            "{}/{}",
            text(role, &["kind"]),
            text(role, &["name"])
        )),
        age(o, now),
        s(users.join(", ")),
        s(groups.join(", ")),
        s(service_accounts.join(", ")),
    ]
}

fn certificate_signing_request(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let conditions = items(o, &["status", "conditions"]);
    let has = |ty: &str| condition(conditions, ty).is_some();
    let mut state = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_owned();
    if has("Failed") {
        state.push_str(",Failed");
    }
    if !text(o, &["status", "certificate"]).is_empty() {
        state.push_str(",Issued");
    }
    let requested = at(spec, &["expirationSeconds"]).as_i64().map_or_else(
        || "<none>".to_owned(),
        |secs| human(i128::from(secs) * NANOS_PER_SECOND),
    );
    vec![
        name(o),
        age(o, now),
        s(or(text(spec, &["signerName"]), "<none>")),
        s(text(spec, &["username"])),
        s(requested),
        s(state),
    ]
}

fn lease(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(o),
        s(text(o, &["spec", "holderIdentity"])),
        age(o, now),
    ]
}

fn priority_class(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(o),
        json!(int(o, &["value"])),
        json!(is_true(o, &["globalDefault"])),
        age(o, now),
        s(or(text(o, &["preemptionPolicy"]), "PreemptLowerPriority")),
    ]
}

fn storage_class_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let annotations = at(o, &["metadata", "annotations"]);
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|key| text(annotations, &[key]) == "true");
    let mut class_name = text(o, &["metadata", "name"]).to_owned();
    if is_default {
        class_name.push_str(" (default)");
    }
    vec![
        s(class_name),
        s(text(o, &["provisioner"])),
        s(or(text(o, &["reclaimPolicy"]), "Delete")),
        s(or(text(o, &["volumeBindingMode"]), "Immediate")),
        json!(is_true(o, &["allowVolumeExpansion"])),
        age(o, now),
    ]
}

fn csi_driver(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    let token_requests = match at(spec, &["tokenRequests"]).as_array() {
        Some(requests) => requests
            .iter()
            .map(|r| text(r, &["audience"]))
            .collect::<Vec<_>>()
            .join(","),
        None => "<unset>".to_owned(),
    };
    let modes: Vec<&str> = items(spec, &["volumeLifecycleModes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vec![
        name(o),
        json!(at(spec, &["attachRequired"]).as_bool().unwrap_or(true)),
        json!(is_true(spec, &["podInfoOnMount"])),
        json!(is_true(spec, &["storageCapacity"])),
        s(token_requests),
        json!(is_true(spec, &["requiresRepublish"])),
        // Defaulted to Persistent by the apiserver.
        s(if modes.is_empty() {
            "Persistent".to_owned()
        } else {
            modes.join(",")
        }),
        age(o, now),
    ]
}

fn csi_node(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(o),
        json!(items(o, &["spec", "drivers"]).len()),
        age(o, now),
    ]
}

fn volume_attachment(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = at(o, &["spec"]);
    vec![
        name(o),
        s(text(spec, &["attacher"])),
        s(text(spec, &["source", "persistentVolumeName"])),
        s(text(spec, &["nodeName"])),
        json!(is_true(o, &["status", "attached"])),
        age(o, now),
    ]
}

fn runtime_class(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(o), s(text(o, &["handler"])), age(o, now)]
}

fn webhook_configuration(o: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(o), json!(items(o, &["webhooks"]).len()), age(o, now)]
}

fn validating_admission_policy(o: &Value, now: Timestamp) -> Vec<Value> {
    let param_kind = at(o, &["spec", "paramKind"]);
    let param_kind = if param_kind.is_null() {
        "<unset>".to_owned()
    } else {
        format!(
            "{}/{}",
            text(param_kind, &["apiVersion"]),
            text(param_kind, &["kind"])
        )
    };
    vec![
        name(o),
        json!(items(o, &["spec", "validations"]).len()),
        s(param_kind),
        age(o, now),
    ]
}

fn validating_admission_policy_binding(o: &Value, now: Timestamp) -> Vec<Value> {
    let param_ref = at(o, &["spec", "paramRef"]);
    let param_ref = match (text(param_ref, &["name"]), text(param_ref, &["namespace"])) {
        _ if param_ref.is_null() => "<unset>".to_owned(),
        ("", _) if is_set(param_ref, &["selector"]) => {
            selector_string(at(param_ref, &["selector"])).unwrap_or_else(|()| "<error>".into())
        }
        ("", _) => "<unset>".to_owned(),
        // Whether the parameter is cluster-scoped is unknown here: `*` stands for any.
        (ref_name, "") => format!("*/{ref_name}"),
        (ref_name, ref_namespace) => format!("{ref_namespace}/{ref_name}"),
    };
    vec![
        name(o),
        s(text(o, &["spec", "policyName"])),
        s(param_ref),
        age(o, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_core::Scope;

    fn rt(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> ResourceType {
        ResourceType::new(group, version, kind, plural, Scope::Namespaced)
    }

    fn pods() -> ResourceType {
        rt("", "v1", "Pod", "pods")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("a valid timestamp")
    }

    /// Ten minutes after every test object's creation.
    fn now() -> Timestamp {
        ts("2025-01-01T00:10:00Z")
    }

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default", "resourceVersion": "7",
               "creationTimestamp": "2025-01-01T00:00:00Z", "labels": {"app": name}})
    }

    fn cells(rt: &ResourceType, object: &Value) -> Vec<Value> {
        let row = row(rt, object, IncludeObject::None, now());
        row["cells"].as_array().expect("cells are an array").clone()
    }

    /// The cells of the columns kubectl shows without `-o wide`.
    fn narrow_cells(rt: &ResourceType, object: &Value) -> Vec<Value> {
        let columns = column_definitions(rt);
        cells(rt, object)
            .into_iter()
            .zip(columns)
            .filter(|(_, c)| c["priority"] == 0)
            .map(|(cell, _)| cell)
            .collect()
    }

    fn column_names(rt: &ResourceType) -> Vec<String> {
        column_definitions(rt)
            .iter()
            .map(|c| {
                let name = c["name"].as_str().expect("a column name").to_uppercase();
                if c["priority"] == 1 {
                    format!("[{name}]")
                } else {
                    name
                }
            })
            .collect()
    }

    fn running(name: &str, ready: bool) -> Value {
        json!({"name": name, "ready": ready, "started": true, "restartCount": 0,
               "state": {"running": {"startedAt": "2025-01-01T00:00:05Z"}}})
    }

    fn pod_with(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("web"), "spec": spec, "status": status})
    }

    fn two_containers() -> Value {
        json!({"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}],
               "nodeName": "node-1"})
    }

    // -- pods ----------------------------------------------------------------------------

    #[test]
    fn pod_columns_are_kube_apiservers_with_wide_extras() {
        assert_eq!(
            column_names(&pods()),
            [
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "[IP]",
                "[NODE]",
                "[NOMINATED NODE]",
                "[READINESS GATES]"
            ]
        );
        let defs = column_definitions(&pods());
        assert_eq!(
            defs[0],
            json!({"name": "Name", "type": "string", "format": "name",
            "description": NAME.description, "priority": 0})
        );
    }

    #[test]
    fn running_pod_with_both_containers_ready_is_two_of_two_running() {
        let pod = pod_with(
            two_containers(),
            json!({"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}], "podIP": "10.0.0.5",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [running("a", true), running("b", true)]}),
        );
        assert_eq!(
            cells(&pods(), &pod),
            [
                json!("web"),
                json!("2/2"),
                json!("Running"),
                json!("0"),
                json!("10m"),
                json!("10.0.0.5"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn crash_looping_pod_shows_the_waiting_reason_and_when_it_last_restarted() {
        let pod = pod_with(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [
                running("a", true),
                {"name": "b", "ready": false, "restartCount": 4,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                              "finishedAt": "2025-01-01T00:08:00Z"}}}]}),
        );
        assert_eq!(
            narrow_cells(&pods(), &pod),
            [
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("4 (2m ago)"),
                json!("10m")
            ]
        );
    }

    #[test]
    fn restarts_without_a_finish_time_print_the_bare_count() {
        let pod = pod_with(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 3, "state": {"running": {}}}]}),
        );
        assert_eq!(cells(&pods(), &pod)[3], "3");
    }

    #[test]
    fn pod_being_deleted_is_terminating_unless_it_already_finished() {
        let mut pod = pod_with(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [running("a", true), running("b", true)]}),
        );
        pod["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:09:00Z");
        assert_eq!(cells(&pods(), &pod)[2], "Terminating");

        pod["status"]["phase"] = json!("Succeeded");
        pod["status"]["containerStatuses"] = json!([]);
        assert_eq!(cells(&pods(), &pod)[2], "Succeeded");

        pod["status"]["reason"] = json!("NodeLost");
        assert_eq!(cells(&pods(), &pod)[2], "Unknown");
    }

    #[test]
    fn succeeded_pod_is_completed_and_its_row_is_marked_completed() {
        let pod = pod_with(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Succeeded", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        let row = row(&pods(), &pod, IncludeObject::None, now());
        assert_eq!(row["cells"][1], "0/1");
        assert_eq!(row["cells"][2], "Completed");
        assert_eq!(row["conditions"][0]["type"], "Completed");
        assert_eq!(row["conditions"][0]["reason"], "Succeeded");
    }

    #[test]
    fn a_container_still_running_turns_completed_back_into_running_or_not_ready() {
        let status = json!({"phase": "Running", "containerStatuses": [
            running("a", true),
            {"name": "b", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
        let pod = pod_with(two_containers(), status.clone());
        assert_eq!(cells(&pods(), &pod)[2], "NotReady");

        let mut ready = status;
        ready["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        assert_eq!(
            cells(&pods(), &pod_with(two_containers(), ready))[2],
            "Running"
        );
    }

    #[test]
    fn pod_waiting_for_its_init_container_is_init_zero_of_one() {
        let pod = pod_with(
            json!({"initContainers": [{"name": "setup"}], "containers": [{"name": "a"}]}),
            json!({"phase": "Pending",
                   "initContainerStatuses": [{"name": "setup", "ready": false, "restartCount": 0,
                                              "state": {"running": {}}}],
                   "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0,
                                          "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        );
        assert_eq!(
            narrow_cells(&pods(), &pod)[1..3],
            [json!("0/1"), json!("Init:0/1")]
        );
    }

    #[test]
    fn failing_init_container_shows_its_reason_or_exit_code() {
        let init = |state: Value| {
            pod_with(
                json!({"initContainers": [{"name": "setup"}], "containers": [{"name": "a"}]}),
                json!({"phase": "Pending", "initContainerStatuses": [
                    {"name": "setup", "restartCount": 2, "state": state}]}),
            )
        };
        let crash = init(json!({"waiting": {"reason": "CrashLoopBackOff"}}));
        assert_eq!(cells(&pods(), &crash)[2], "Init:CrashLoopBackOff");
        assert_eq!(cells(&pods(), &crash)[3], "2");
        let exit = init(json!({"terminated": {"exitCode": 3}}));
        assert_eq!(cells(&pods(), &exit)[2], "Init:ExitCode:3");
        let signal = init(json!({"terminated": {"exitCode": 137, "signal": 9}}));
        assert_eq!(cells(&pods(), &signal)[2], "Init:Signal:9");
    }

    #[test]
    fn started_sidecars_count_as_containers_and_do_not_hold_up_the_pod() {
        let pod = pod_with(
            json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
                   "containers": [{"name": "a"}]}),
            json!({"phase": "Running",
                   "conditions": [{"type": "Initialized", "status": "True"}],
                   "initContainerStatuses": [running("proxy", true)],
                   "containerStatuses": [running("a", true)]}),
        );
        assert_eq!(
            narrow_cells(&pods(), &pod)[1..3],
            [json!("2/2"), json!("Running")]
        );
    }

    #[test]
    fn scheduling_gated_pod_says_so() {
        let pod = pod_with(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
        );
        assert_eq!(cells(&pods(), &pod)[2], "SchedulingGated");
    }

    #[test]
    fn readiness_gates_count_the_true_conditions() {
        let pod = pod_with(
            json!({"containers": [{"name": "a"}],
                   "readinessGates": [{"conditionType": "lb/ready"}, {"conditionType": "other"}]}),
            json!({"phase": "Running", "nominatedNodeName": "node-2",
                   "conditions": [{"type": "lb/ready", "status": "True"}]}),
        );
        let cells = cells(&pods(), &pod);
        assert_eq!(cells[7], "node-2");
        assert_eq!(cells[8], "1/2");
    }

    // -- services ------------------------------------------------------------------------

    fn services() -> ResourceType {
        rt("", "v1", "Service", "services")
    }

    fn service_of(spec: Value, status: Value) -> Value {
        json!({"metadata": meta("web"), "spec": spec, "status": status})
    }

    #[test]
    fn service_columns_are_kube_apiservers() {
        assert_eq!(
            column_names(&services()),
            [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "[SELECTOR]"
            ]
        );
    }

    #[test]
    fn cluster_ip_service_has_no_external_ip() {
        let svc = service_of(
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "selector": {"tier": "fe", "app": "web"},
                   "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}),
            json!({}),
        );
        assert_eq!(
            cells(&services(), &svc),
            [
                json!("web"),
                json!("ClusterIP"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80/TCP,53/UDP"),
                json!("10m"),
                json!("app=web,tier=fe")
            ]
        );
    }

    #[test]
    fn node_port_service_shows_its_node_ports_and_external_ips() {
        let svc = service_of(
            json!({"type": "NodePort", "clusterIPs": ["10.96.1.1"], "externalIPs": ["1.2.3.4"],
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
            json!({}),
        );
        assert_eq!(
            cells(&services(), &svc)[3..5],
            [json!("1.2.3.4"), json!("80:30080/TCP")]
        );
    }

    #[test]
    fn load_balancer_is_pending_until_it_has_an_ingress() {
        let spec = json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.2"],
                          "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]});
        let pending = service_of(spec.clone(), json!({"loadBalancer": {}}));
        assert_eq!(cells(&services(), &pending)[3], "<pending>");

        let ready = service_of(
            spec,
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}]}}),
        );
        assert_eq!(cells(&services(), &ready)[3], "203.0.113.9,lb.example.com");
    }

    #[test]
    fn external_name_service_prints_the_name_and_no_cluster_ip() {
        let svc = service_of(
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            json!({}),
        );
        assert_eq!(
            narrow_cells(&services(), &svc),
            [
                json!("web"),
                json!("ExternalName"),
                json!("<none>"),
                json!("db.example.com"),
                json!("<none>"),
                json!("10m")
            ]
        );
    }

    #[test]
    fn headless_service_prints_none_as_its_cluster_ip_and_defaults_fill_gaps() {
        let svc = service_of(
            json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
            json!({}),
        );
        assert_eq!(
            cells(&services(), &svc)[1..5],
            [
                json!("ClusterIP"),
                json!("None"),
                json!("<none>"),
                json!("5432/TCP")
            ]
        );
    }

    // -- workloads -----------------------------------------------------------------------

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "web", "image": "nginx:1.27"},
                                       {"name": "log", "image": "busybox"}]}})
    }

    #[test]
    fn deployment_shows_ready_of_desired_and_its_template_when_wide() {
        let deployments = rt("apps", "v1", "Deployment", "deployments");
        assert_eq!(
            column_names(&deployments),
            [
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "[CONTAINERS]",
                "[IMAGES]",
                "[SELECTOR]"
            ]
        );
        let d = json!({"metadata": meta("web"),
            "spec": {"replicas": 3, "template": template(),
                     "selector": {"matchLabels": {"app": "web"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            cells(&deployments, &d),
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("10m"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,tier in (be,fe)")
            ]
        );
        let fresh = json!({"metadata": meta("new"), "spec": {}});
        assert_eq!(
            narrow_cells(&deployments, &fresh)[1..4],
            [json!("0/1"), json!(0), json!(0)]
        );
    }

    #[test]
    fn replica_sets_stateful_sets_and_daemon_sets_print_their_counts() {
        let replica_sets = rt("apps", "v1", "ReplicaSet", "replicasets");
        let rs = json!({"metadata": meta("web-5d8f"), "spec": {"replicas": 2, "template": template(),
            "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2, "readyReplicas": 1}});
        assert_eq!(
            cells(&replica_sets, &rs),
            [
                json!("web-5d8f"),
                json!(2),
                json!(2),
                json!(1),
                json!("10m"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web")
            ]
        );

        let stateful_sets = rt("apps", "v1", "StatefulSet", "statefulsets");
        assert_eq!(
            column_names(&stateful_sets),
            ["NAME", "READY", "AGE", "[CONTAINERS]", "[IMAGES]"]
        );
        let sts = json!({"metadata": meta("db"), "spec": {"replicas": 3, "template": template()},
                         "status": {"readyReplicas": 3}});
        assert_eq!(
            narrow_cells(&stateful_sets, &sts),
            [json!("db"), json!("3/3"), json!("10m")]
        );

        let daemon_sets = rt("apps", "v1", "DaemonSet", "daemonsets");
        assert_eq!(
            column_names(&daemon_sets),
            [
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE",
                "[CONTAINERS]",
                "[IMAGES]",
                "[SELECTOR]"
            ]
        );
        let ds = json!({"metadata": meta("agent"),
            "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                           "containers": [{"name": "agent", "image": "agent:1"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                       "updatedNumberScheduled": 3, "numberAvailable": 2}});
        assert_eq!(
            narrow_cells(&daemon_sets, &ds),
            [
                json!("agent"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux"),
                json!("10m")
            ]
        );
    }

    #[test]
    fn jobs_show_status_completions_and_duration() {
        let jobs = rt("batch", "v1", "Job", "jobs");
        assert_eq!(
            column_names(&jobs),
            [
                "NAME",
                "STATUS",
                "COMPLETIONS",
                "DURATION",
                "AGE",
                "[CONTAINERS]",
                "[IMAGES]",
                "[SELECTOR]"
            ]
        );
        let done = json!({"metadata": meta("pi"), "spec": {"completions": 1, "parallelism": 1},
            "status": {"succeeded": 1, "startTime": "2025-01-01T00:00:00Z",
                       "completionTime": "2025-01-01T00:00:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(
            narrow_cells(&jobs, &done),
            [
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("42s"),
                json!("10m")
            ]
        );
        let running = json!({"metadata": meta("work"), "spec": {"parallelism": 3},
            "status": {"startTime": "2025-01-01T00:05:00Z"}});
        assert_eq!(
            narrow_cells(&jobs, &running)[1..4],
            [json!("Running"), json!("0/1 of 3"), json!("5m")]
        );
    }

    #[test]
    fn cron_jobs_show_schedule_time_zone_and_last_run() {
        let cron_jobs = rt("batch", "v1", "CronJob", "cronjobs");
        assert_eq!(
            column_names(&cron_jobs),
            [
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
                "[CONTAINERS]",
                "[IMAGES]",
                "[SELECTOR]"
            ]
        );
        let cj = json!({"metadata": meta("backup"), "spec": {"schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": template()}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": "2025-01-01T00:05:00Z"}});
        assert_eq!(
            cells(&cron_jobs, &cj),
            [
                json!("backup"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("5m"),
                json!("10m"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("<none>")
            ]
        );
    }

    // -- nodes ---------------------------------------------------------------------------

    fn nodes() -> ResourceType {
        ResourceType::new("", "v1", "Node", "nodes", Scope::Cluster)
    }

    #[test]
    fn node_roles_come_from_role_labels_in_order() {
        assert_eq!(
            column_names(&nodes()),
            [
                "NAME",
                "STATUS",
                "ROLES",
                "AGE",
                "VERSION",
                "[INTERNAL-IP]",
                "[EXTERNAL-IP]",
                "[OS-IMAGE]",
                "[KERNEL-VERSION]",
                "[CONTAINER-RUNTIME]"
            ]
        );
        let node = json!({"metadata": {"name": "cp-1", "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": "",
                           "kubernetes.io/role": "master", "kubernetes.io/hostname": "cp-1"}},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "Hostname", "address": "cp-1"},
                                     {"type": "InternalIP", "address": "192.168.1.10"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian GNU/Linux 12",
                                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0"}}});
        assert_eq!(
            cells(&nodes(), &node),
            [
                json!("cp-1"),
                json!("Ready"),
                json!("control-plane,etcd,master"),
                json!("10m"),
                json!("v1.33.0"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12"),
                json!("6.1.0"),
                json!("containerd://1.7.0")
            ]
        );
    }

    #[test]
    fn cordoned_node_shows_scheduling_disabled_and_a_bare_node_is_unknown() {
        let cordoned = json!({"metadata": {"name": "w-1"}, "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(
            narrow_cells(&nodes(), &cordoned),
            [
                json!("w-1"),
                json!("NotReady,SchedulingDisabled"),
                json!("<none>"),
                json!("<unknown>"),
                json!("")
            ]
        );
        let bare = json!({"metadata": {"name": "w-2"}});
        assert_eq!(
            cells(&nodes(), &bare)[1..],
            [
                json!("Unknown"),
                json!("<none>"),
                json!("<unknown>"),
                json!(""),
                json!("<none>"),
                json!("<none>"),
                json!("<unknown>"),
                json!("<unknown>"),
                json!("<unknown>")
            ]
        );
    }

    // -- other kinds ---------------------------------------------------------------------

    #[test]
    fn core_events_lead_with_last_seen_and_keep_the_name_for_wide() {
        let events = rt("", "v1", "Event", "events");
        assert_eq!(
            column_names(&events),
            [
                "LAST SEEN",
                "TYPE",
                "REASON",
                "OBJECT",
                "[SUBOBJECT]",
                "[SOURCE]",
                "MESSAGE",
                "[FIRST SEEN]",
                "[COUNT]",
                "[NAME]"
            ]
        );
        assert_eq!(column_definitions(&events)[9]["format"], "name");
        let ev = json!({"metadata": meta("web.1"), "type": "Warning", "reason": "BackOff",
            "message": "Back-off restarting failed container\n",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{web}"},
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2025-01-01T00:01:00Z", "lastTimestamp": "2025-01-01T00:09:30Z", "count": 7});
        assert_eq!(
            cells(&events, &ev),
            [
                json!("30s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web"),
                json!("spec.containers{web}"),
                json!("kubelet, node-1"),
                json!("Back-off restarting failed container"),
                json!("9m"),
                json!(7),
                json!("web.1")
            ]
        );
    }

    #[test]
    fn events_api_events_print_like_core_events() {
        let events = rt("events.k8s.io", "v1", "Event", "events");
        let ev = json!({"metadata": meta("web.2"), "type": "Normal", "reason": "Scheduled",
            "note": "Successfully assigned default/web to node-1", "eventTime": "2025-01-01T00:00:00.000000Z",
            "regarding": {"kind": "Pod", "name": "web"}, "reportingController": "default-scheduler"});
        assert_eq!(
            cells(&events, &ev),
            [
                json!("10m"),
                json!("Normal"),
                json!("Scheduled"),
                json!("pod/web"),
                json!(""),
                json!("default-scheduler"),
                json!("Successfully assigned default/web to node-1"),
                json!("10m"),
                json!(1),
                json!("web.2")
            ]
        );
    }

    #[test]
    fn simple_kinds_print_their_counts() {
        let check = |rt: ResourceType, object: Value, expected: Vec<Value>| {
            assert_eq!(cells(&rt, &object), expected, "{}", rt.kind);
        };
        check(
            rt("", "v1", "Namespace", "namespaces"),
            json!({"metadata": meta("team-a"), "status": {"phase": "Active"}}),
            vec![json!("team-a"), json!("Active"), json!("10m")],
        );
        check(
            rt("", "v1", "ConfigMap", "configmaps"),
            json!({"metadata": meta("cfg"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
            vec![json!("cfg"), json!(3), json!("10m")],
        );
        check(
            rt("", "v1", "Secret", "secrets"),
            json!({"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
            vec![
                json!("tls"),
                json!("kubernetes.io/tls"),
                json!(2),
                json!("10m"),
            ],
        );
        check(
            rt("", "v1", "ServiceAccount", "serviceaccounts"),
            json!({"metadata": meta("default")}),
            vec![json!("default"), json!(0), json!("10m")],
        );
        check(
            rt("coordination.k8s.io", "v1", "Lease", "leases"),
            json!({"metadata": meta("kube-scheduler"), "spec": {"holderIdentity": "cp-1_abc"}}),
            vec![json!("kube-scheduler"), json!("cp-1_abc"), json!("10m")],
        );
        check(
            rt(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
            ),
            json!({"metadata": meta("read"), "roleRef": {"kind": "Role", "name": "reader"},
                   "subjects": [{"kind": "User", "name": "ann"}, {"kind": "Group", "name": "devs"},
                                {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"},
                                {"kind": "User", "name": "bob"}]}),
            vec![
                json!("read"),
                json!("Role/reader"),
                json!("10m"),
                json!("ann, bob"),
                json!("devs"),
                json!("tools/ci"),
            ],
        );
        check(
            ResourceType::new(
                "storage.k8s.io",
                "v1",
                "StorageClass",
                "storageclasses",
                Scope::Cluster,
            ),
            json!({"metadata": {"name": "standard", "creationTimestamp": "2025-01-01T00:00:00Z",
                      "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                   "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
            vec![
                json!("standard (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false),
                json!("10m"),
            ],
        );
        check(
            rt(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            json!({"metadata": meta("web"), "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}}),
            vec![
                json!("web"),
                json!("50%"),
                json!("N/A"),
                json!(1),
                json!("10m"),
            ],
        );
        check(
            rt("apps", "v1", "ControllerRevision", "controllerrevisions"),
            json!({"metadata": {"name": "db-7f9", "creationTimestamp": "2025-01-01T00:00:00Z",
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                           "controller": true}]}, "revision": 2}),
            vec![
                json!("db-7f9"),
                json!("statefulset.apps/db"),
                json!(2),
                json!("10m"),
            ],
        );
    }

    #[test]
    fn endpoints_list_three_addresses_then_count_the_rest() {
        let endpoints = rt("", "v1", "Endpoints", "endpoints");
        let ep = json!({"metadata": meta("web"), "subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::3"}, {"ip": "10.0.0.4"}],
            "ports": [{"port": 8080}]}]});
        assert_eq!(
            cells(&endpoints, &ep)[1],
            "10.0.0.1:8080,10.0.0.2:8080,[fd00::3]:8080 + 1 more..."
        );
        let empty = json!({"metadata": meta("none")});
        assert_eq!(cells(&endpoints, &empty)[1], "<none>");

        let slices = rt("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices");
        let slice = json!({"metadata": meta("web-abc"), "addressType": "IPv4",
            "ports": [{"port": 8080, "name": "http"}, {"name": "metrics"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        assert_eq!(
            cells(&slices, &slice),
            [
                json!("web-abc"),
                json!("IPv4"),
                json!("8080,metrics"),
                json!("10.0.0.1,10.0.0.2"),
                json!("10m")
            ]
        );
        let unset = json!({"metadata": meta("empty"), "addressType": "IPv4"});
        assert_eq!(
            cells(&slices, &unset)[2..4],
            [json!("<unset>"), json!("<unset>")]
        );
    }

    #[test]
    fn volumes_and_claims_print_capacity_modes_and_class() {
        let volumes = ResourceType::new(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            Scope::Cluster,
        );
        let pv = json!({"metadata": {"name": "pv-1", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "fast",
                     "claimRef": {"namespace": "default", "name": "data"}},
            "status": {"phase": "Bound"}});
        assert_eq!(
            cells(&volumes, &pv),
            [
                json!("pv-1"),
                json!("10Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data"),
                json!("fast"),
                json!("<unset>"),
                json!(""),
                json!("10m"),
                json!("Filesystem")
            ]
        );
        let claims = rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims");
        let pending = json!({"metadata": meta("data"), "spec": {"storageClassName": "fast"},
                             "status": {"phase": "Pending"}});
        assert_eq!(
            narrow_cells(&claims, &pending),
            [
                json!("data"),
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!("fast"),
                json!("<unset>"),
                json!("10m")
            ]
        );
    }

    #[test]
    fn horizontal_pod_autoscaler_shows_current_and_target_metrics() {
        let hpas = rt(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
        );
        let hpa = json!({"metadata": meta("web"),
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5,
                     "metrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                        {"type": "Pods", "pods": {"target": {"averageValue": "1k"}}},
                        {"type": "Resource", "resource": {"name": "memory", "target": {"averageValue": "1Gi"}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 35}}}]}});
        assert_eq!(
            cells(&hpas, &hpa),
            [
                json!("web"),
                json!("Deployment/web"),
                json!("cpu: 35%/80%, <unknown>/1k + 1 more..."),
                json!("2"),
                json!(5),
                json!(2),
                json!("10m")
            ]
        );
    }

    #[test]
    fn ingresses_show_class_hosts_address_and_ports() {
        let ingresses = rt("networking.k8s.io", "v1", "Ingress", "ingresses");
        let ing = json!({"metadata": meta("web"),
            "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example.com"]}],
                     "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}});
        assert_eq!(
            cells(&ingresses, &ing),
            [
                json!("web"),
                json!("nginx"),
                json!("a.example.com,b.example.com"),
                json!("203.0.113.1"),
                json!("80, 443"),
                json!("10m")
            ]
        );
        let bare = json!({"metadata": meta("any"), "spec": {"rules": [{}]}});
        assert_eq!(
            cells(&ingresses, &bare)[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }

    // -- the default convertor -----------------------------------------------------------

    #[test]
    fn kinds_without_a_printer_get_name_and_created_at() {
        let widgets = rt("example.com", "v1", "Widget", "widgets");
        assert_eq!(
            column_definitions(&widgets),
            [
                json!({"name": "Name", "type": "string", "format": "name", "description": NAME.description, "priority": 0}),
                json!({"name": "Created At", "type": "date", "format": "",
                       "description": DEFAULT_COLUMNS[1].description, "priority": 0}),
            ]
        );
        let w =
            json!({"metadata": {"name": "w1", "creationTimestamp": "2025-01-01T00:00:00.250Z"}});
        assert_eq!(
            cells(&widgets, &w),
            [json!("w1"), json!("2025-01-01T00:00:00Z")]
        );
        let undated = json!({"metadata": {"name": "w2"}});
        assert_eq!(
            cells(&widgets, &undated),
            [json!("w2"), json!("0001-01-01T00:00:00Z")]
        );

        // Roles, cluster roles, limit ranges and CRDs have no printer in kube-apiserver.
        for (group, kind) in [
            ("rbac.authorization.k8s.io", "Role"),
            ("rbac.authorization.k8s.io", "ClusterRole"),
            ("", "LimitRange"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ] {
            assert_eq!(
                column_names(&rt(group, "v1", kind, "x")),
                ["NAME", "CREATED AT"],
                "{kind}"
            );
        }
    }

    #[test]
    fn every_builtin_kind_prints_one_cell_per_column_even_for_odd_objects() {
        let odd = [
            json!(null),
            json!({}),
            json!([1, 2]),
            json!({"metadata": "x", "spec": 3, "status": []}),
            json!({"metadata": {"name": 5, "creationTimestamp": "yesterday", "deletionTimestamp": "now"},
                   "spec": {"containers": "none", "ports": [null, 7], "selector": {"matchExpressions": [{"operator": "Bad"}]},
                            "replicas": "two", "metrics": [null], "capacity": []},
                   "status": {"containerStatuses": [null, {"state": []}], "initContainerStatuses": [{}],
                              "conditions": {"Ready": true}, "podIPs": [null]},
                   "subsets": [{"addresses": [null], "ports": [{}]}], "involvedObject": 1, "series": {}}),
        ];
        let mut kinds = keelson_core::builtin_resource_types();
        kinds.push(rt("example.com", "v1", "Widget", "widgets"));
        for kind in &kinds {
            let columns = column_definitions(kind).len();
            for object in &odd {
                for include in [
                    IncludeObject::None,
                    IncludeObject::Metadata,
                    IncludeObject::Object,
                ] {
                    let row = row(kind, object, include, now());
                    let cells = row["cells"].as_array().expect("cells");
                    assert_eq!(cells.len(), columns, "{} with {object}", kind.kind);
                }
            }
        }
    }

    #[test]
    fn bad_selectors_print_error_and_deployments_print_invalid() {
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]});
        assert_eq!(format_label_selector(&bad), "<error>");
        let d = json!({"metadata": meta("web"), "spec": {"selector": bad}});
        assert_eq!(
            cells(&rt("apps", "v1", "Deployment", "deployments"), &d)[7],
            "<invalid>"
        );
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(
            format_label_selector(&json!({"matchExpressions": [
            {"key": "canary", "operator": "DoesNotExist"}, {"key": "app", "operator": "Exists"}]})),
            "app,!canary"
        );
    }

    // -- ages ----------------------------------------------------------------------------

    #[test]
    fn human_duration_follows_apimachinery_at_every_boundary() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (60, "60s"),
            (119, "119s"),
            (120, "2m"),
            (121, "2m1s"),
            (200, "3m20s"),
            (599, "9m59s"),
            (600, "10m"),
            (659, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600 - 1, "7h59m"),
            (8 * 3600, "8h"),
            (48 * 3600 - 1, "47h"),
            (48 * 3600, "2d"),
            (51 * 3600, "2d3h"),
            (8 * 86400 - 1, "7d23h"),
            (8 * 86400, "8d"),
            (2 * 365 * 86400 - 1, "729d"),
            (2 * 365 * 86400, "2y"),
            (2 * 365 * 86400 + 3 * 86400, "2y3d"),
            (8 * 365 * 86400 - 1, "7y364d"),
            (8 * 365 * 86400, "8y"),
            (20 * 365 * 86400, "20y"),
        ];
        for &(secs, expected) in cases {
            assert_eq!(
                human_duration(Duration::from_secs(secs)),
                expected,
                "{secs}s"
            );
        }
        assert_eq!(human_duration(Duration::from_millis(1999)), "1s");
    }

    #[test]
    fn ages_tolerate_a_second_of_clock_skew_and_mark_the_future_invalid() {
        let pod = |created: &str| json!({"metadata": {"name": "p", "creationTimestamp": created}});
        let created_in = |offset: &str| cells(&pods(), &pod(offset))[4].clone();
        assert_eq!(created_in("2025-01-01T00:10:01Z"), "0s");
        assert_eq!(created_in("2025-01-01T00:10:02Z"), "<invalid>");
        assert_eq!(created_in("not a time"), "<unknown>");
    }

    // -- objects, tables and watch events -------------------------------------------------

    #[test]
    fn include_object_parses_the_query_values_kubectl_sends() {
        assert_eq!("None".parse(), Ok(IncludeObject::None));
        assert_eq!("Metadata".parse(), Ok(IncludeObject::Metadata));
        assert_eq!("Object".parse(), Ok(IncludeObject::Object));
        assert_eq!("".parse(), Ok(IncludeObject::Metadata));
        assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
        let err = "All".parse::<IncludeObject>().expect_err("not a value");
        assert_eq!(err.to_string(), "unrecognized includeObject value: \"All\"");
    }

    #[test]
    fn rows_carry_partial_metadata_the_full_object_or_nothing() {
        let pod = json!({"metadata": meta("web"), "spec": {"containers": [{"name": "a"}]}});
        let partial = row(&pods(), &pod, IncludeObject::Metadata, now());
        assert_eq!(
            partial["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta("web")})
        );
        let full = row(&pods(), &pod, IncludeObject::Object, now());
        assert_eq!(full["object"]["kind"], "Pod");
        assert_eq!(full["object"]["apiVersion"], "v1");
        assert_eq!(full["object"]["spec"], pod["spec"]);
        let none = row(&pods(), &pod, IncludeObject::None, now());
        assert_eq!(none["object"], Value::Null);
        assert!(none.get("conditions").is_none());
    }

    #[test]
    fn table_carries_list_metadata_columns_and_one_row_per_object() {
        let objects = [
            json!({"metadata": meta("a")}),
            json!({"metadata": meta("b")}),
        ];
        let t = table(
            &pods(),
            &objects,
            "1004",
            Some("token"),
            Some(12),
            IncludeObject::Metadata,
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "1004", "continue": "token", "remainingItemCount": 12})
        );
        assert_eq!(
            t["columnDefinitions"],
            Value::Array(column_definitions(&pods()))
        );
        assert_eq!(t["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["rows"][1]["cells"][0], "b");

        let shared: &[std::sync::Arc<Value>] = &[];
        let empty = table(
            &pods(),
            shared,
            "9",
            Some(""),
            None,
            IncludeObject::Metadata,
            now(),
        );
        assert_eq!(empty["metadata"], json!({"resourceVersion": "9"}));
        assert_eq!(empty["rows"], json!([]));
    }

    #[test]
    fn table_of_one_object_without_a_list_version_takes_the_objects() {
        let t = table(
            &pods(),
            &[json!({"metadata": meta("a")})],
            "",
            None,
            None,
            IncludeObject::None,
            now(),
        );
        assert_eq!(t["metadata"], json!({"resourceVersion": "7"}));
    }

    #[test]
    fn watch_events_carry_column_definitions_only_when_asked() {
        let pod = json!({"metadata": meta("web")});
        let first = watch_table(&pods(), &pod, IncludeObject::Metadata, now(), true);
        assert_eq!(first["kind"], "Table");
        assert_eq!(first["metadata"], json!({"resourceVersion": "7"}));
        assert_eq!(
            first["columnDefinitions"],
            Value::Array(column_definitions(&pods()))
        );
        assert_eq!(first["rows"].as_array().map(Vec::len), Some(1));
        assert_eq!(first["rows"][0]["object"]["kind"], "PartialObjectMetadata");

        let later = watch_table(&pods(), &pod, IncludeObject::Metadata, now(), false);
        assert_eq!(later["columnDefinitions"], Value::Null);
        assert_eq!(later["rows"], first["rows"]);
    }
}
