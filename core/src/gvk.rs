//! Names that identify a kind or a resource across API groups.

use std::fmt;

/// An API group, version and kind: what the `apiVersion` and `kind` fields of an object say.
///
/// The core group is the empty string, so a Pod is `("", "v1", "Pod")` and its
/// `apiVersion` is `v1`; a Deployment is `("apps", "v1", "Deployment")`, `apps/v1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupVersionKind {
    /// The API group; empty for the core group.
    pub group: String,
    /// The API version within the group, such as `v1`.
    pub version: String,
    /// The kind, in CamelCase, such as `Deployment`.
    pub kind: String,
}

impl GroupVersionKind {
    /// A group, version and kind.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    /// Splits an `apiVersion` (`v1` or `apps/v1`) and a kind into a `GroupVersionKind`.
    ///
    /// An `apiVersion` without a `/` is a version of the core group.
    pub fn from_api_version(api_version: &str, kind: impl Into<String>) -> Self {
        let (group, version) = split_api_version(api_version);
        Self::new(group, version, kind)
    }

    /// The `apiVersion` string: `version` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        join_api_version(&self.group, &self.version)
    }

    /// The group and kind, without the version.
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(self.group.clone(), self.kind.clone())
    }
}

impl fmt::Display for GroupVersionKind {
    /// Formats as `apps/v1, Kind=Deployment`, the way Kubernetes prints a GVK.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, Kind={}", self.api_version(), self.kind)
    }
}

/// A kind qualified by its API group, as Kubernetes names kinds in `Invalid` errors
/// (`Pod`, `Deployment.apps`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKind {
    /// The API group; empty for the core group.
    pub group: String,
    /// The kind, in CamelCase.
    pub kind: String,
}

impl GroupKind {
    /// A group and kind.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
        }
    }
}

impl fmt::Display for GroupKind {
    /// `Kind` for the core group, `Kind.group` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

impl From<(&str, &str)> for GroupKind {
    /// From `(group, kind)`.
    fn from((group, kind): (&str, &str)) -> Self {
        Self::new(group, kind)
    }
}

/// A resource (the plural, lower-case name in URLs) qualified by its API group, as
/// Kubernetes names resources in most errors (`pods`, `deployments.apps`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// The API group; empty for the core group.
    pub group: String,
    /// The resource: the plural, lower-case name, such as `deployments`.
    pub resource: String,
}

impl GroupResource {
    /// A group and resource.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// Whether both the group and the resource are empty.
    pub fn is_empty(&self) -> bool {
        self.group.is_empty() && self.resource.is_empty()
    }
}

impl fmt::Display for GroupResource {
    /// `resource` for the core group, `resource.group` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl From<(&str, &str)> for GroupResource {
    /// From `(group, resource)`.
    fn from((group, resource): (&str, &str)) -> Self {
        Self::new(group, resource)
    }
}

/// Splits `apps/v1` into `("apps", "v1")` and `v1` into `("", "v1")`.
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

/// Joins a group and a version into an `apiVersion` string.
pub(crate) fn join_api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_group_api_version_is_the_bare_version() {
        let gvk = GroupVersionKind::new("", "v1", "Pod");
        assert_eq!(gvk.api_version(), "v1");
        assert_eq!(gvk.to_string(), "v1, Kind=Pod");
    }

    #[test]
    fn named_group_api_version_is_group_slash_version() {
        let gvk = GroupVersionKind::from_api_version("apps/v1", "Deployment");
        assert_eq!(gvk, GroupVersionKind::new("apps", "v1", "Deployment"));
        assert_eq!(gvk.api_version(), "apps/v1");
    }

    #[test]
    fn qualified_names_omit_the_core_group() {
        assert_eq!(GroupResource::new("", "pods").to_string(), "pods");
        assert_eq!(
            GroupResource::new("apps", "deployments").to_string(),
            "deployments.apps"
        );
        assert_eq!(GroupKind::new("", "Pod").to_string(), "Pod");
        assert_eq!(
            GroupKind::new("apps", "Deployment").to_string(),
            "Deployment.apps"
        );
    }
}
