//! `DynamicObject`: any object, for kinds known only at run time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::Error;
use crate::gvk::GroupVersionKind;
use crate::resource::{Resource, ResourceType};

/// An object of any kind: its `apiVersion`, `kind` and typed `metadata`, with every other
/// field kept as JSON in `data`.
///
/// Use it for kinds known only at run time (custom resources registered through a CRD)
/// and for code that handles every kind alike. Round trips through JSON keep every field
/// outside `metadata` exactly; `metadata` goes through [`ObjectMeta`], so it keeps every
/// field Kubernetes defines (timestamps in whole seconds, as Kubernetes writes them).
/// An empty `apiVersion` or `kind`, and empty metadata, are left out when serializing, so
/// a body such as `{"metadata":{"name":"x"}}` comes back as it went in.
///
/// ```
/// use keelson_core::{DynamicObject, k8s_openapi::api::core::v1::ConfigMap};
/// use serde_json::json;
///
/// let json = json!({
///     "apiVersion": "v1", "kind": "ConfigMap",
///     "metadata": {"name": "cfg", "namespace": "default"},
///     "data": {"a": "1"}
/// });
/// let obj: DynamicObject = serde_json::from_value(json.clone())?;
/// assert_eq!(obj.name(), Some("cfg"));
/// assert_eq!(obj.data["data"]["a"], "1");
/// assert_eq!(serde_json::to_value(&obj)?, json);
///
/// let cm: ConfigMap = obj.to_resource()?;
/// assert_eq!(cm.data.unwrap()["a"], "1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DynamicObject {
    /// The `apiVersion` (`v1`, `apps/v1`); may be empty when a request body omits it.
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// The kind; may be empty when a request body omits it.
    #[serde(default)]
    pub kind: String,
    /// The standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Every other top-level field (`spec`, `status`, `data`, ...), as a JSON object.
    #[serde(flatten)]
    pub data: Value,
}

impl Default for DynamicObject {
    fn default() -> Self {
        Self {
            api_version: String::new(),
            kind: String::new(),
            metadata: ObjectMeta::default(),
            data: Value::Object(serde_json::Map::new()),
        }
    }
}

impl DynamicObject {
    /// An empty object of a kind, with a name.
    pub fn new(resource: &ResourceType, name: impl Into<String>) -> Self {
        Self {
            api_version: resource.api_version(),
            kind: resource.kind.to_string(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Self::default()
        }
    }

    /// The same object in a namespace.
    pub fn within(mut self, namespace: impl Into<String>) -> Self {
        self.metadata.namespace = Some(namespace.into());
        self
    }

    /// The same object with `data` replaced (it must be a JSON object to serialize).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// The object's name, if set.
    pub fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }

    /// The object's namespace, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// The group, version and kind from `apiVersion` and `kind`.
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::from_api_version(&self.api_version, self.kind.as_str())
    }

    /// The store key of this object as an object of `resource`.
    ///
    /// # Errors
    ///
    /// As [`ResourceType::key`].
    pub fn key(&self, resource: &ResourceType) -> Result<String, Error> {
        resource.key(self.namespace(), self.name().unwrap_or_default())
    }

    /// The dynamic form of a typed object, with `apiVersion` and `kind` filled in from
    /// the type when its JSON form lacks them (as user types usually do).
    ///
    /// # Errors
    ///
    /// [`Error::InternalError`] when the object does not serialize to a JSON object.
    pub fn from_resource<K: Resource>(object: &K) -> Result<Self, Error> {
        let value = serde_json::to_value(object)
            .map_err(|e| Error::internal(format!("failed to encode {}: {e}", K::KIND)))?;
        let mut dynamic: Self = serde_json::from_value(value)
            .map_err(|e| Error::internal(format!("failed to encode {}: {e}", K::KIND)))?;
        if dynamic.api_version.is_empty() {
            dynamic.api_version = K::api_version().into_owned();
        }
        if dynamic.kind.is_empty() {
            dynamic.kind = K::KIND.to_owned();
        }
        Ok(dynamic)
    }

    /// The typed form of this object. An empty `apiVersion` or `kind` is taken to be the
    /// type's.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when `apiVersion` or `kind` names another kind, or the
    /// fields do not decode as `K`.
    pub fn to_resource<K: Resource>(&self) -> Result<K, Error> {
        let api_version = K::api_version();
        let wrong_version = !self.api_version.is_empty() && self.api_version != api_version;
        let wrong_kind = !self.kind.is_empty() && self.kind != K::KIND;
        if wrong_version || wrong_kind {
            return Err(Error::bad_request(format!(
                "cannot decode {}, Kind={} as {api_version}, Kind={}",
                self.api_version,
                self.kind,
                K::KIND
            )));
        }
        let mut value = self.to_value()?;
        if let Value::Object(map) = &mut value {
            map.insert("apiVersion".into(), Value::from(api_version.as_ref()));
            map.insert("kind".into(), Value::from(K::KIND));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::bad_request(format!("failed to decode {}: {e}", K::KIND)))
    }

    /// The JSON form of this object.
    ///
    /// # Errors
    ///
    /// [`Error::InternalError`] when `data` is not a JSON object (or `null`).
    pub fn to_value(&self) -> Result<Value, Error> {
        serde_json::to_value(self).map_err(Error::internal)
    }
}

impl Serialize for DynamicObject {
    /// `apiVersion`, `kind`, `metadata` (each left out when empty), then the fields of
    /// `data` except those three.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = match &self.data {
            Value::Object(map) => Some(map),
            Value::Null => None,
            _ => return Err(S::Error::custom("DynamicObject data must be a JSON object")),
        };
        let mut map = serializer.serialize_map(None)?;
        if !self.api_version.is_empty() {
            map.serialize_entry("apiVersion", &self.api_version)?;
        }
        if !self.kind.is_empty() {
            map.serialize_entry("kind", &self.kind)?;
        }
        if self.metadata != ObjectMeta::default() {
            map.serialize_entry("metadata", &self.metadata)?;
        }
        for (key, value) in fields.into_iter().flatten() {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn deployment_json() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": "0b1c",
                "resourceVersion": "42",
                "generation": 3,
                "creationTimestamp": "2024-05-06T07:08:09Z",
                "labels": {"app": "web"},
                "annotations": {"note": "x"},
                "finalizers": ["keelson.io/test"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                                   "time": "2024-05-06T07:08:09Z", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
            },
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}},
                "futureField": {"nested": [1, 2.5, null, "x", true]}
            },
            "status": {"replicas": 3},
            "extra": 18446744073709551615u64
        })
    }

    #[test]
    fn dynamic_object_round_trips_arbitrary_json_losslessly() {
        let json = deployment_json();
        let obj: DynamicObject = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(obj.api_version, "apps/v1");
        assert_eq!(obj.kind, "Deployment");
        assert_eq!(obj.name(), Some("web"));
        assert_eq!(obj.namespace(), Some("default"));
        assert_eq!(obj.data["spec"]["replicas"], 3);
        assert!(obj.data.get("metadata").is_none());
        assert_eq!(serde_json::to_value(&obj).unwrap(), json);
        let text = serde_json::to_string(&obj).unwrap();
        let again: DynamicObject = serde_json::from_str(&text).unwrap();
        assert_eq!(again, obj);
    }

    #[test]
    fn bodies_without_type_or_metadata_round_trip_unchanged() {
        for json in [
            json!({"metadata": {"name": "py"}}),
            json!({"spec": {"x": 1}}),
            json!({}),
        ] {
            let obj: DynamicObject = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(serde_json::to_value(&obj).unwrap(), json);
        }
    }

    #[test]
    fn typed_objects_convert_to_and_from_the_dynamic_form() {
        let deployment: Deployment = serde_json::from_value(deployment_json()).unwrap();
        let dynamic = DynamicObject::from_resource(&deployment).unwrap();
        assert_eq!(
            dynamic.gvk(),
            GroupVersionKind::new("apps", "v1", "Deployment")
        );
        let back: Deployment = dynamic.to_resource().unwrap();
        assert_eq!(back, deployment);
    }

    #[test]
    fn converting_to_the_wrong_kind_is_a_bad_request() {
        let obj: DynamicObject = serde_json::from_value(deployment_json()).unwrap();
        let err = obj.to_resource::<Pod>().unwrap_err();
        assert_eq!(err.reason(), "BadRequest");
        assert_eq!(
            err.to_string(),
            "cannot decode apps/v1, Kind=Deployment as v1, Kind=Pod"
        );
    }

    #[test]
    fn missing_type_fields_are_taken_from_the_target_type() {
        let obj: DynamicObject =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
                .unwrap();
        let pod: Pod = obj.to_resource().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn undecodable_fields_are_a_bad_request() {
        let obj: DynamicObject =
            serde_json::from_value(json!({"spec": {"containers": "not a list"}})).unwrap();
        let err = obj.to_resource::<Pod>().unwrap_err();
        assert_eq!(err.reason(), "BadRequest");
        assert!(
            err.to_string().starts_with("failed to decode Pod: "),
            "{err}"
        );
    }

    #[test]
    fn new_objects_carry_their_type_and_key() {
        let obj = DynamicObject::new(&Pod::resource_type(), "web").within("default");
        assert_eq!(
            serde_json::to_value(&obj).unwrap(),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}})
        );
        assert_eq!(
            obj.key(&Pod::resource_type()).unwrap(),
            "/registry/core/pods/default/web"
        );
    }

    #[test]
    fn data_that_is_not_an_object_fails_to_serialize_instead_of_panicking() {
        let obj = DynamicObject::default().with_data(json!("text"));
        assert!(obj.to_value().is_err());
        let null = DynamicObject::default().with_data(Value::Null);
        assert_eq!(null.to_value().unwrap(), json!({}));
    }
}
