//! Field selectors (`metadata.name=web,status.phase!=Running`), with Kubernetes' syntax,
//! escapes and per-kind field sets.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::error::Error;
use crate::resource::ResourceType;

/// The fields every kind supports.
pub const METADATA_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The fields, beyond [`METADATA_FIELDS`], that Kubernetes lets field selectors use on a
/// built-in kind; empty for other kinds.
pub(crate) fn builtin_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => POD_FIELDS,
        ("", "Event") => EVENT_FIELDS,
        ("", "Secret") => &["type"],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        ("certificates.k8s.io", "CertificateSigningRequest") => &["spec.signerName"],
        _ => &[],
    }
}

/// Old field names Kubernetes still accepts, and what they mean now.
fn canonical_field<'f>(group: &str, kind: &str, field: &'f str) -> &'f str {
    match (group, kind, field) {
        ("", "Pod", "spec.host") => "spec.nodeName",
        _ => field,
    }
}

/// How a term compares its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `=` or `==`: the field equals the value (a missing field equals `""`).
    Equals,
    /// `!=`: the field differs from the value.
    NotEquals,
}

/// One `field=value` or `field!=value` term of a [`FieldSelector`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    field: String,
    operator: FieldOperator,
    value: String,
}

impl FieldRequirement {
    /// A term; the value is taken literally (no escapes).
    pub fn new(
        field: impl Into<String>,
        operator: FieldOperator,
        value: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            operator,
            value: value.into(),
        }
    }

    /// The field's dotted path, such as `spec.nodeName`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The comparison.
    pub fn operator(&self) -> FieldOperator {
        self.operator
    }

    /// The value compared with, unescaped.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a field whose value is `actual` satisfies this term.
    pub fn matches_value(&self, actual: &str) -> bool {
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    /// `field=value` or `field!=value`, with `\`, `,` and `=` in the value escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operator {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{op}{}", self.field, escape_value(&self.value))
    }
}

/// A field selector: terms that must all hold, as in `?fieldSelector=` and
/// `kubectl --field-selector`.
///
/// The syntax is Kubernetes': comma-separated `field=value`, `field==value` or
/// `field!=value` terms; in values, `\\`, `\,` and `\=` escape a backslash, comma or
/// equals sign. [`FieldSelector::parse`] checks only the syntax;
/// [`FieldSelector::check_supported`] then checks the fields against a kind, and
/// [`FieldSelector::matches`] evaluates the selector on an object's JSON form, reading
/// fields as Kubernetes does (booleans and numbers by their string forms, a missing
/// field as `""`).
///
/// ```
/// use keelson_core::{FieldSelector, Resource, k8s_openapi::api::core::v1::Pod};
/// use serde_json::json;
///
/// let pods = Pod::resource_type();
/// let selector: FieldSelector = "spec.nodeName=n1,status.phase!=Failed".parse()?;
/// selector.check_supported(&pods)?;
/// let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
/// assert!(selector.matches(&pods, &pod));
///
/// let bad: FieldSelector = "spec.color=red".parse()?;
/// assert_eq!(
///     bad.check_supported(&pods).unwrap_err().to_string(),
///     "field label not supported: spec.color"
/// );
/// # Ok::<(), keelson_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses Kubernetes' field selector syntax. The empty string (and empty terms, as in
    /// `a=b,,c=d`) select everything.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] with Kubernetes' wording: `invalid selector: 'x'; can't
    /// understand 'x'` for a term without an operator, `invalid field selector: invalid
    /// escape sequence: \x` and `invalid field selector: unescaped character in value: =`
    /// for bad values.
    pub fn parse(selector: &str) -> Result<Self, Error> {
        let mut parts = split_terms(selector);
        parts.sort_unstable();
        let mut requirements = Vec::with_capacity(parts.len());
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((field, operator, raw)) = split_term(part) else {
                return Err(Error::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(raw)?;
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                operator,
                value,
            });
        }
        Ok(Self { requirements })
    }

    /// A selector of `field=value` terms, one per entry.
    pub fn from_pairs<F: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (F, V)>,
    ) -> Self {
        let mut requirements: Vec<FieldRequirement> = pairs
            .into_iter()
            .map(|(f, v)| FieldRequirement::new(f, FieldOperator::Equals, v))
            .collect();
        requirements.sort_by_cached_key(ToString::to_string);
        Self { requirements }
    }

    /// Adds a term.
    pub fn and(mut self, requirement: FieldRequirement) -> Self {
        self.requirements.push(requirement);
        self
    }

    /// The terms, all of which must hold.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Whether the selector has no terms (it matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value a term `field=value` requires, if there is one; an API server can then
    /// fetch one object (`metadata.name`) or one namespace instead of scanning.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// Checks that every field may be used with this kind: `metadata.name`,
    /// `metadata.namespace`, or one of the kind's selectable fields.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] `field label not supported: <field>` for the first field
    /// that may not.
    pub fn check_supported(&self, resource: &ResourceType) -> Result<(), Error> {
        for r in &self.requirements {
            let field = canonical_field(&resource.group, &resource.kind, &r.field);
            let supported = METADATA_FIELDS.contains(&field)
                || resource.selectable_fields.iter().any(|f| f == field);
            if !supported {
                return Err(Error::bad_request(format!(
                    "field label not supported: {}",
                    r.field
                )));
            }
        }
        Ok(())
    }

    /// Whether an object (its JSON form) of the given kind satisfies every term.
    /// Fields the object lacks read as `""`, so `spec.nodeName=` selects unscheduled
    /// pods. Call [`check_supported`](Self::check_supported) first to reject fields the
    /// kind does not have.
    pub fn matches(&self, resource: &ResourceType, object: &Value) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(&field_value(resource, object, &r.field)))
    }

    /// Whether the values `lookup` gives for the fields satisfy every term; `None`
    /// reads as `""`.
    pub fn matches_with<'a>(&self, mut lookup: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(lookup(&r.field).unwrap_or_default()))
    }
}

impl fmt::Display for FieldSelector {
    /// The terms joined by commas, values escaped; parses back to the same selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The value of a selectable field of an object, as the string Kubernetes compares:
/// strings as they are, booleans as `true`/`false`, numbers in decimal, and `""` when
/// the field is missing. Built-in kinds read some fields specially, as Kubernetes does
/// (a pod's `spec.hostNetwork` defaults to `false`, a job's `status.successful` is its
/// `status.succeeded`, an event's `source` is its source component or reporting
/// controller, ...).
pub fn field_value(resource: &ResourceType, object: &Value, field: &str) -> String {
    let (group, kind) = (&*resource.group, &*resource.kind);
    let field = canonical_field(group, kind, field);
    match (group, kind, field) {
        ("", "Pod", "spec.hostNetwork") | ("", "Node", "spec.unschedulable") => {
            or_default(lookup(object, field), "false")
        }
        ("", "Pod", "status.podIP" | "status.podIPs") => {
            // Kubernetes selects on the primary IP: the first of `status.podIPs`.
            let first = object
                .pointer("/status/podIPs/0/ip")
                .or_else(|| object.pointer("/status/podIP"));
            or_default(first, "")
        }
        ("", "Event", "source") => {
            let component = string_of(object.pointer("/source/component"));
            if component.is_empty() {
                string_of(object.get("reportingComponent"))
            } else {
                component
            }
        }
        ("", "ReplicationController", "status.replicas")
        | ("apps", "ReplicaSet", "status.replicas") => or_default(lookup(object, field), "0"),
        ("batch", "Job", "status.successful") => {
            or_default(object.pointer("/status/succeeded"), "0")
        }
        _ => string_of(lookup(object, field)),
    }
}

/// Follows a dotted path (`spec.nodeName`) through nested objects.
fn lookup<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(object, |v, segment| v.get(segment))
}

fn or_default(value: Option<&Value>, default: &str) -> String {
    match value {
        None | Some(Value::Null) => default.to_owned(),
        value => string_of(value),
    }
}

/// The string form Kubernetes compares: strings as they are, scalars printed, anything
/// else (missing, null, objects, arrays) as `""`.
fn string_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Splits on commas that are not escaped, keeping escapes in place.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at its first operator: `!=`, `==` or `=`, tried in that order at each
/// position. The field cannot contain escapes.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, operator) in [
            ("!=", FieldOperator::NotEquals),
            ("==", FieldOperator::Equals),
            ("=", FieldOperator::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], operator, value));
            }
        }
    }
    None
}

/// Undoes `\\`, `\,` and `\=`; any other escape, a trailing backslash, or a bare `,` or
/// `=` is an error.
fn unescape_value(raw: &str) -> Result<String, Error> {
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => value.push(e),
                Some(other) => {
                    return Err(Error::bad_request(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    )))
                }
                None => {
                    return Err(Error::bad_request(
                        "invalid field selector: invalid escape sequence: \\",
                    ))
                }
            },
            ',' | '=' => {
                return Err(Error::bad_request(format!(
                    "invalid field selector: unescaped character in value: {c}"
                )))
            }
            other => value.push(other),
        }
    }
    Ok(value)
}

/// Escapes `\`, `,` and `=` so a literal value can go into a field selector.
pub fn escape_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, Scope};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Secret};
    use serde_json::json;

    fn parse(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap()
    }

    fn parse_err(s: &str) -> String {
        let err = FieldSelector::parse(s).unwrap_err();
        assert_eq!(err.reason(), "BadRequest");
        err.to_string()
    }

    #[test]
    fn equals_double_equals_and_not_equals_parse() {
        let s = parse("a=b,c==d,e!=f");
        let terms: Vec<_> = s
            .requirements()
            .iter()
            .map(|r| (r.field(), r.operator(), r.value()))
            .collect();
        assert_eq!(
            terms,
            [
                ("a", FieldOperator::Equals, "b"),
                ("c", FieldOperator::Equals, "d"),
                ("e", FieldOperator::NotEquals, "f")
            ]
        );
        assert_eq!(s.to_string(), "a=b,c=d,e!=f");
    }

    #[test]
    fn empty_selector_and_empty_terms_select_everything() {
        assert!(parse("").is_empty());
        assert!(parse(",").is_empty());
        assert_eq!(parse("a=b,,c=d").requirements().len(), 2);
    }

    #[test]
    fn empty_values_are_allowed() {
        let s = parse("spec.nodeName=");
        assert_eq!(s.requirements()[0].value(), "");
    }

    #[test]
    fn terms_are_sorted_as_kubernetes_sorts_them() {
        assert_eq!(parse("b=1,a=2").to_string(), "a=2,b=1");
    }

    #[test]
    fn term_without_an_operator_is_an_error() {
        assert_eq!(
            parse_err("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            parse_err("a=b,c"),
            "invalid selector: 'a=b,c'; can't understand 'c'"
        );
    }

    #[test]
    fn backslash_escapes_commas_equals_and_backslashes_in_values() {
        let s = parse(r"a=x\,y\=z\\w,b=c");
        assert_eq!(s.requirements()[0].value(), r"x,y=z\w");
        assert_eq!(s.requirements()[1].value(), "c");
        assert_eq!(s.to_string(), r"a=x\,y\=z\\w,b=c");
        assert_eq!(parse(&s.to_string()), s);
    }

    #[test]
    fn bad_escapes_and_bare_special_characters_are_errors() {
        assert_eq!(
            parse_err(r"a=b\x"),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            parse_err(r"a=b\"),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            parse_err("a=b=c"),
            "invalid field selector: unescaped character in value: ="
        );
        assert_eq!(
            parse_err("a!==b"),
            "invalid field selector: unescaped character in value: ="
        );
    }

    #[test]
    fn the_first_operator_splits_a_term() {
        let s = parse("a=!b");
        assert_eq!(s.requirements()[0].value(), "!b");
        let s = parse("a==b");
        assert_eq!(s.requirements()[0].value(), "b");
    }

    #[test]
    fn metadata_fields_are_supported_on_every_kind() {
        let widgets =
            ResourceType::new("example.com", "v1", "Widget", "widgets", Scope::Namespaced);
        parse("metadata.name=a,metadata.namespace=b")
            .check_supported(&widgets)
            .unwrap();
        assert_eq!(
            parse("spec.nodeName=a")
                .check_supported(&widgets)
                .unwrap_err()
                .to_string(),
            "field label not supported: spec.nodeName"
        );
    }

    #[test]
    fn pod_fields_are_supported_on_pods_only() {
        let s = parse("spec.nodeName=n,spec.restartPolicy=Always,spec.schedulerName=s,spec.serviceAccountName=sa,spec.hostNetwork=true,status.phase=Running,status.podIP=1.2.3.4,status.podIPs=1.2.3.4,status.nominatedNodeName=n,spec.host=n");
        s.check_supported(&Pod::resource_type()).unwrap();
        assert!(s.check_supported(&Node::resource_type()).is_err());
    }

    #[test]
    fn per_kind_fields_match_kubernetes() {
        for (rt, field) in [
            (Secret::resource_type(), "type"),
            (Namespace::resource_type(), "status.phase"),
            (Node::resource_type(), "spec.unschedulable"),
            (Job::resource_type(), "status.successful"),
            (
                k8s_openapi::api::apps::v1::ReplicaSet::resource_type(),
                "status.replicas",
            ),
            (
                k8s_openapi::api::core::v1::ReplicationController::resource_type(),
                "status.replicas",
            ),
            (
                k8s_openapi::api::certificates::v1::CertificateSigningRequest::resource_type(),
                "spec.signerName",
            ),
            (Event::resource_type(), "involvedObject.uid"),
            (Event::resource_type(), "reportingComponent"),
        ] {
            FieldSelector::from_pairs([(field, "x")])
                .check_supported(&rt)
                .unwrap();
        }
    }

    #[test]
    fn custom_kinds_support_their_declared_selectable_fields() {
        let widgets =
            ResourceType::new("example.com", "v1", "Widget", "widgets", Scope::Namespaced)
                .with_selectable_fields(["spec.color"]);
        let s = parse("spec.color=red");
        s.check_supported(&widgets).unwrap();
        assert!(s.matches(&widgets, &json!({"spec": {"color": "red"}})));
        assert!(!s.matches(&widgets, &json!({"spec": {"color": "blue"}})));
    }

    #[test]
    fn pod_selection_reads_fields_as_kubernetes_does() {
        let pods = Pod::resource_type();
        let pod = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
        });
        let yes = [
            "metadata.name=web",
            "metadata.namespace=default",
            "spec.nodeName=n1",
            "spec.host=n1",
            "spec.hostNetwork=false",
            "status.phase!=Pending",
            "status.podIP=10.0.0.5",
            "spec.schedulerName=",
            "metadata.name=web,spec.nodeName=n1",
        ];
        for s in yes {
            assert!(parse(s).matches(&pods, &pod), "{s} should match");
        }
        let no = [
            "metadata.name=db",
            "spec.nodeName=",
            "spec.hostNetwork=true",
            "status.phase=Running,spec.nodeName=n2",
        ];
        for s in no {
            assert!(!parse(s).matches(&pods, &pod), "{s} should not match");
        }
        let host = json!({"spec": {"hostNetwork": true}});
        assert!(parse("spec.hostNetwork=true").matches(&pods, &host));
    }

    #[test]
    fn events_select_by_involved_object_and_source() {
        let events = Event::resource_type();
        let event = json!({
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u-1"},
            "reason": "Scheduled",
            "type": "Normal",
            "reportingComponent": "default-scheduler"
        });
        assert!(parse(
            "involvedObject.name=web,involvedObject.namespace=default,involvedObject.uid=u-1"
        )
        .matches(&events, &event));
        assert!(
            parse("involvedObject.kind=Pod,reason=Scheduled,type=Normal").matches(&events, &event)
        );
        assert!(parse("source=default-scheduler").matches(&events, &event));
        let with_source = json!({"source": {"component": "kubelet"}, "reportingComponent": "x"});
        assert!(parse("source=kubelet").matches(&events, &with_source));
    }

    #[test]
    fn numbers_and_booleans_compare_by_their_string_forms() {
        let nodes = Node::resource_type();
        assert!(parse("spec.unschedulable=false").matches(&nodes, &json!({"spec": {}})));
        assert!(parse("spec.unschedulable=true")
            .matches(&nodes, &json!({"spec": {"unschedulable": true}})));
        let jobs = Job::resource_type();
        assert!(parse("status.successful=3").matches(&jobs, &json!({"status": {"succeeded": 3}})));
        assert!(parse("status.successful=0").matches(&jobs, &json!({})));
        let rs = k8s_openapi::api::apps::v1::ReplicaSet::resource_type();
        assert!(parse("status.replicas=0").matches(&rs, &json!({"status": {}})));
        assert!(parse("status.replicas!=0").matches(&rs, &json!({"status": {"replicas": 2}})));
    }

    #[test]
    fn requires_exact_match_finds_equality_terms() {
        let s = parse("metadata.name=web,metadata.namespace!=kube-system");
        assert_eq!(s.requires_exact_match("metadata.name"), Some("web"));
        assert_eq!(s.requires_exact_match("metadata.namespace"), None);
    }

    #[test]
    fn matches_with_uses_the_given_values() {
        let s = parse("a=1,b!=2");
        assert!(s.matches_with(|f| match f {
            "a" => Some("1"),
            _ => None,
        }));
    }

    #[test]
    fn non_ascii_input_does_not_panic() {
        assert!(FieldSelector::parse("ä=ö,ü!=é").is_ok());
        assert!(FieldSelector::parse("é").is_err());
        assert!(FieldSelector::parse("a=\\é").is_err());
    }
}
