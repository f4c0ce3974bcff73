//! The error type shared by every Keelson crate, mapped one-to-one to Kubernetes `Status`
//! reasons at the API edge.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

use crate::gvk::{GroupKind, GroupResource};

/// The standard detail of a [`Error::Conflict`] caused by a stale `resourceVersion`.
const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// An error, with the variants callers branch on.
///
/// Every variant maps to one Kubernetes `Status` (see [`Error::to_status`]) with the
/// HTTP code, `reason` and message wording that Kubernetes uses, so clients such as
/// `kubectl` print what they print against a real cluster. Build errors with the
/// constructors ([`Error::not_found`], [`Error::invalid`], ...): they word the message.
/// The `Display` form of an error is its Status message.
///
/// ```
/// use keelson_core::{Error, Resource, k8s_openapi::api::core::v1::Pod};
///
/// let err = Error::not_found(&Pod::resource_type(), "nope");
/// assert_eq!(err.to_string(), r#"pods "nope" not found"#);
/// assert_eq!((err.code(), err.reason()), (404, "NotFound"));
/// assert!(err.is_not_found());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 404: the object does not exist.
    #[error("{message}")]
    NotFound {
        /// The resource that was looked up.
        resource: GroupResource,
        /// The object's name.
        name: String,
        /// The Status message.
        message: String,
    },
    /// 409: creating an object that already exists.
    #[error("{message}")]
    AlreadyExists {
        /// The resource of the object.
        resource: GroupResource,
        /// The object's name.
        name: String,
        /// The Status message.
        message: String,
    },
    /// 409: a write lost a race, usually because its `resourceVersion` is stale.
    #[error("{message}")]
    Conflict {
        /// The resource of the object.
        resource: GroupResource,
        /// The object's name.
        name: String,
        /// The Status message.
        message: String,
    },
    /// 422: the object failed validation; `causes` says which fields and why.
    #[error("{message}")]
    Invalid {
        /// The kind of the object (Kubernetes names the kind, not the resource, here).
        kind: GroupKind,
        /// The object's name.
        name: String,
        /// One entry per failed field.
        causes: Vec<FieldError>,
        /// The Status message.
        message: String,
    },
    /// 400: the request itself is malformed (a bad selector, an undecodable body, ...).
    #[error("{message}")]
    BadRequest {
        /// The Status message.
        message: String,
    },
    /// 401: the request carries no valid credentials.
    #[error("{message}")]
    Unauthorized {
        /// The Status message.
        message: String,
    },
    /// 403: the caller may not do this.
    #[error("{message}")]
    Forbidden {
        /// The resource acted on (may be empty).
        resource: GroupResource,
        /// The object's name (may be empty).
        name: String,
        /// The Status message.
        message: String,
    },
    /// 405: the resource does not support this verb.
    #[error("{message}")]
    MethodNotAllowed {
        /// The resource acted on.
        resource: GroupResource,
        /// The Status message.
        message: String,
    },
    /// 406: none of the media types in `Accept` can be served.
    #[error("{message}")]
    NotAcceptable {
        /// The Status message.
        message: String,
    },
    /// 410: the requested `resourceVersion` has been compacted away ("too old resource
    /// version"); a watcher must list again. A store's `Compacted` error maps here.
    #[error("{message}")]
    Expired {
        /// The Status message.
        message: String,
    },
    /// 413: the request body is too large.
    #[error("{message}")]
    RequestEntityTooLarge {
        /// The Status message.
        message: String,
    },
    /// 415: the request body's media type is not supported.
    #[error("{message}")]
    UnsupportedMediaType {
        /// The Status message.
        message: String,
    },
    /// 429: the server is rate limiting this client.
    #[error("{message}")]
    TooManyRequests {
        /// The Status message.
        message: String,
        /// How long the client should wait before retrying, if known.
        retry_after_seconds: Option<u32>,
    },
    /// 500: something went wrong inside the server.
    #[error("{message}")]
    InternalError {
        /// The Status message.
        message: String,
    },
    /// 503: a component the request needs is not available right now.
    #[error("{message}")]
    ServiceUnavailable {
        /// The Status message.
        message: String,
    },
    /// 504: the operation did not finish in time.
    #[error("{message}")]
    Timeout {
        /// The Status message.
        message: String,
        /// How long the client should wait before retrying, if known.
        retry_after_seconds: Option<u32>,
    },
    /// Any other failure; reported to clients as a 500 `InternalError`.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// 404 `pods "web" not found`.
    pub fn not_found(resource: impl Into<GroupResource>, name: impl Into<String>) -> Self {
        let (resource, name) = (resource.into(), name.into());
        let message = format!("{resource} {} not found", quote(&name));
        Self::NotFound {
            resource,
            name,
            message,
        }
    }

    /// 409 `pods "web" already exists`.
    pub fn already_exists(resource: impl Into<GroupResource>, name: impl Into<String>) -> Self {
        let (resource, name) = (resource.into(), name.into());
        let message = format!("{resource} {} already exists", quote(&name));
        Self::AlreadyExists {
            resource,
            name,
            message,
        }
    }

    /// 409 `Operation cannot be fulfilled on pods "web": <detail>`.
    pub fn conflict(
        resource: impl Into<GroupResource>,
        name: impl Into<String>,
        detail: impl fmt::Display,
    ) -> Self {
        let (resource, name) = (resource.into(), name.into());
        let message = format!(
            "Operation cannot be fulfilled on {resource} {}: {detail}",
            quote(&name)
        );
        Self::Conflict {
            resource,
            name,
            message,
        }
    }

    /// The conflict of an update whose `resourceVersion` is stale: `Operation cannot be
    /// fulfilled on pods "web": the object has been modified; please apply your changes to
    /// the latest version and try again`.
    pub fn conflict_modified(resource: impl Into<GroupResource>, name: impl Into<String>) -> Self {
        Self::conflict(resource, name, MODIFIED)
    }

    /// 422 `Pod "bad" is invalid: spec.containers: Required value`.
    ///
    /// With several causes the message lists them all, as Kubernetes does:
    /// `Pod "bad" is invalid: [spec.a: Required value, spec.b: Required value]`.
    pub fn invalid(
        kind: impl Into<GroupKind>,
        name: impl Into<String>,
        causes: Vec<FieldError>,
    ) -> Self {
        let (kind, name) = (kind.into(), name.into());
        let mut message = format!("{kind} {} is invalid", quote(&name));
        if !causes.is_empty() {
            message.push_str(": ");
            message.push_str(&aggregate(&causes));
        }
        Self::Invalid {
            kind,
            name,
            causes,
            message,
        }
    }

    /// 400 with the given message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// 401 with the given message (`not authorized` when empty).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.is_empty() {
            message = "not authorized".to_owned();
        }
        Self::Unauthorized { message }
    }

    /// 403 `pods "web" is forbidden: <reason>` (`pods is forbidden: <reason>` without a
    /// name, `forbidden: <reason>` without a resource).
    pub fn forbidden(
        resource: impl Into<GroupResource>,
        name: impl Into<String>,
        reason: impl fmt::Display,
    ) -> Self {
        let (resource, name) = (resource.into(), name.into());
        let message = if resource.is_empty() {
            format!("forbidden: {reason}")
        } else if name.is_empty() {
            format!("{resource} is forbidden: {reason}")
        } else {
            format!("{resource} {} is forbidden: {reason}", quote(&name))
        };
        Self::Forbidden {
            resource,
            name,
            message,
        }
    }

    /// 405 `<action> is not supported on resources of kind "pods"`.
    pub fn method_not_allowed(resource: impl Into<GroupResource>, action: &str) -> Self {
        let resource = resource.into();
        let message = format!(
            "{action} is not supported on resources of kind {}",
            quote(&resource.to_string())
        );
        Self::MethodNotAllowed { resource, message }
    }

    /// 406 `only the following media types are accepted: application/json, ...`.
    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::NotAcceptable {
            message: format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        }
    }

    /// 410 `Expired` with the given message.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::Expired {
            message: message.into(),
        }
    }

    /// 410 `too old resource version: <requested> (<oldest available>)`, what a watch
    /// from a compacted revision gets.
    pub fn too_old_resource_version(
        requested: impl fmt::Display,
        oldest: impl fmt::Display,
    ) -> Self {
        Self::expired(format!("too old resource version: {requested} ({oldest})"))
    }

    /// 413 `Request entity too large: <detail>`.
    pub fn request_entity_too_large(detail: impl fmt::Display) -> Self {
        Self::RequestEntityTooLarge {
            message: format!("Request entity too large: {detail}"),
        }
    }

    /// 415 `the body of the request was in an unknown format - accepted media types
    /// include: application/json, ...`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::UnsupportedMediaType {
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        }
    }

    /// 429 with the given message and retry hint.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: Option<u32>) -> Self {
        Self::TooManyRequests {
            message: message.into(),
            retry_after_seconds,
        }
    }

    /// 500 `Internal error occurred: <detail>`.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::InternalError {
            message: format!("Internal error occurred: {detail}"),
        }
    }

    /// 503 with the given message.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::ServiceUnavailable {
            message: message.into(),
        }
    }

    /// 504 `Timeout: <detail>`.
    pub fn timeout(detail: impl fmt::Display, retry_after_seconds: Option<u32>) -> Self {
        Self::Timeout {
            message: format!("Timeout: {detail}"),
            retry_after_seconds,
        }
    }

    /// Wraps any other error; clients see a 500 `InternalError`.
    pub fn other(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Other(err.into())
    }

    /// The HTTP status code Kubernetes uses for this error.
    pub fn code(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::NotAcceptable { .. } => 406,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Expired { .. } => 410,
            Self::RequestEntityTooLarge { .. } => 413,
            Self::UnsupportedMediaType { .. } => 415,
            Self::Invalid { .. } => 422,
            Self::TooManyRequests { .. } => 429,
            Self::InternalError { .. } | Self::Other(_) => 500,
            Self::ServiceUnavailable { .. } => 503,
            Self::Timeout { .. } => 504,
        }
    }

    /// The Kubernetes `Status` reason (`NotFound`, `AlreadyExists`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } => "Invalid",
            Self::BadRequest { .. } => "BadRequest",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::MethodNotAllowed { .. } => "MethodNotAllowed",
            Self::NotAcceptable { .. } => "NotAcceptable",
            Self::Expired { .. } => "Expired",
            Self::RequestEntityTooLarge { .. } => "RequestEntityTooLarge",
            Self::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::InternalError { .. } | Self::Other(_) => "InternalError",
            Self::ServiceUnavailable { .. } => "ServiceUnavailable",
            Self::Timeout { .. } => "Timeout",
        }
    }

    /// The Status message. For [`Error::Other`] this is `Internal error occurred: <error>`.
    pub fn message(&self) -> String {
        match self {
            Self::NotFound { message, .. }
            | Self::AlreadyExists { message, .. }
            | Self::Conflict { message, .. }
            | Self::Invalid { message, .. }
            | Self::BadRequest { message }
            | Self::Unauthorized { message }
            | Self::Forbidden { message, .. }
            | Self::MethodNotAllowed { message, .. }
            | Self::NotAcceptable { message }
            | Self::Expired { message }
            | Self::RequestEntityTooLarge { message }
            | Self::UnsupportedMediaType { message }
            | Self::TooManyRequests { message, .. }
            | Self::InternalError { message }
            | Self::ServiceUnavailable { message }
            | Self::Timeout { message, .. } => message.clone(),
            Self::Other(err) => format!("Internal error occurred: {err}"),
        }
    }

    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether this is [`Error::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }

    /// Whether this is [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Whether this is [`Error::Invalid`].
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }

    /// Whether this is [`Error::Expired`] (the watcher must list again).
    pub fn is_expired(&self) -> bool {
        matches!(self, Self::Expired { .. })
    }

    /// The Kubernetes `Status` object for this error, as the API server sends it:
    /// `status: Failure`, the code, reason and message, and details naming the object
    /// (`kind` is the plural resource, except for `Invalid`, where it is the kind).
    pub fn to_status(&self) -> Status {
        let mut details = StatusDetails::default();
        match self {
            Self::NotFound { resource, name, .. }
            | Self::AlreadyExists { resource, name, .. }
            | Self::Conflict { resource, name, .. }
            | Self::Forbidden { resource, name, .. } => {
                details.group = non_empty(&resource.group);
                details.kind = non_empty(&resource.resource);
                details.name = non_empty(name);
            }
            Self::MethodNotAllowed { resource, .. } => {
                details.group = non_empty(&resource.group);
                details.kind = non_empty(&resource.resource);
            }
            Self::Invalid {
                kind, name, causes, ..
            } => {
                details.group = non_empty(&kind.group);
                details.kind = non_empty(&kind.kind);
                details.name = non_empty(name);
                if !causes.is_empty() {
                    details.causes = Some(causes.iter().map(FieldError::to_cause).collect());
                }
            }
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            }
            | Self::Timeout {
                retry_after_seconds,
                ..
            } => {
                details.retry_after_seconds =
                    retry_after_seconds.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
            }
            Self::Other(err) => {
                details.causes = Some(vec![StatusCause {
                    message: Some(err.to_string()),
                    ..StatusCause::default()
                }]);
            }
            _ => {}
        }
        Status {
            code: Some(i32::from(self.code())),
            details: (details != StatusDetails::default()).then_some(details),
            message: Some(self.message()),
            reason: Some(self.reason().to_owned()),
            status: Some("Failure".to_owned()),
            ..Status::default()
        }
    }

    /// The error a client reports for a failed `Status` from a server.
    ///
    /// The variant follows the `reason` (falling back to the `code` when the reason is
    /// unknown or missing); the message, name, resource and causes are taken from the
    /// Status as they are, so nothing the server said is lost.
    pub fn from_status(status: &Status) -> Self {
        let message = status.message.clone().unwrap_or_default();
        let details = status.details.clone().unwrap_or_default();
        let group = details.group.unwrap_or_default();
        let kind = details.kind.unwrap_or_default();
        let name = details.name.unwrap_or_default();
        let retry_after_seconds = details
            .retry_after_seconds
            .and_then(|s| u32::try_from(s).ok());
        let code = status.code.unwrap_or(500);
        let reason = match status.reason.as_deref() {
            Some(reason) if !reason.is_empty() && reason != "Unknown" => reason,
            _ => reason_for_code(code),
        };
        match reason {
            "NotFound" => Self::NotFound {
                resource: GroupResource::new(group, kind),
                name,
                message,
            },
            "AlreadyExists" => Self::AlreadyExists {
                resource: GroupResource::new(group, kind),
                name,
                message,
            },
            "Conflict" => Self::Conflict {
                resource: GroupResource::new(group, kind),
                name,
                message,
            },
            "Invalid" => Self::Invalid {
                kind: GroupKind::new(group, kind),
                name,
                causes: details
                    .causes
                    .unwrap_or_default()
                    .iter()
                    .map(FieldError::from_cause)
                    .collect(),
                message,
            },
            "BadRequest" => Self::BadRequest { message },
            "Unauthorized" => Self::Unauthorized { message },
            "Forbidden" => Self::Forbidden {
                resource: GroupResource::new(group, kind),
                name,
                message,
            },
            "MethodNotAllowed" => Self::MethodNotAllowed {
                resource: GroupResource::new(group, kind),
                message,
            },
            "NotAcceptable" => Self::NotAcceptable { message },
            "Expired" | "Gone" => Self::Expired { message },
            "RequestEntityTooLarge" => Self::RequestEntityTooLarge { message },
            "UnsupportedMediaType" => Self::UnsupportedMediaType { message },
            "TooManyRequests" => Self::TooManyRequests {
                message,
                retry_after_seconds,
            },
            "ServiceUnavailable" => Self::ServiceUnavailable { message },
            "Timeout" | "ServerTimeout" => Self::Timeout {
                message,
                retry_after_seconds,
            },
            _ => Self::InternalError { message },
        }
    }
}

/// The reason Kubernetes clients assume for a code when a Status carries none.
fn reason_for_code(code: i32) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// The machine-readable reason of a [`FieldError`], as in a Kubernetes `StatusCause`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CauseType {
    /// `FieldValueNotFound`: a referenced value does not exist.
    NotFound,
    /// `FieldValueRequired`: a required value is missing or empty.
    Required,
    /// `FieldValueDuplicate`: a value that must be unique is repeated.
    Duplicate,
    /// `FieldValueInvalid`: a malformed value.
    Invalid,
    /// `FieldValueNotSupported`: a value outside an enumeration.
    NotSupported,
    /// `FieldValueForbidden`: a well-formed value that is not allowed here.
    Forbidden,
    /// `FieldValueTooLong`: a value longer than allowed.
    TooLong,
    /// `FieldValueTooMany`: a list with too many items.
    TooMany,
    /// `InternalError`: a failure not caused by the input.
    Internal,
    /// `FieldValueTypeInvalid`: a value of the wrong type for the schema.
    TypeInvalid,
    /// Any other reason a server reported.
    Other(String),
}

impl CauseType {
    /// The reason string (`FieldValueRequired`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::Other(reason) => reason,
        }
    }

    /// Parses a reason string; unknown reasons become [`CauseType::Other`].
    pub fn parse(reason: &str) -> Self {
        match reason {
            "FieldValueNotFound" => Self::NotFound,
            "FieldValueRequired" => Self::Required,
            "FieldValueDuplicate" => Self::Duplicate,
            "FieldValueInvalid" => Self::Invalid,
            "FieldValueNotSupported" => Self::NotSupported,
            "FieldValueForbidden" => Self::Forbidden,
            "FieldValueTooLong" => Self::TooLong,
            "FieldValueTooMany" => Self::TooMany,
            "InternalError" => Self::Internal,
            "FieldValueTypeInvalid" => Self::TypeInvalid,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The words that start the message of a cause of this type (`Required value`, ...).
    fn label(&self) -> &str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
            Self::Other(reason) => reason,
        }
    }
}

impl fmt::Display for CauseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed field of an [`Error::Invalid`]: the field's path, a [`CauseType`] and a
/// message worded as Kubernetes words it (`Required value`, `Invalid value: "x": ...`).
///
/// ```
/// use keelson_core::FieldError;
///
/// let err = FieldError::invalid("metadata.name", "Bad_Name", "must be lower case");
/// assert_eq!(err.to_string(), r#"metadata.name: Invalid value: "Bad_Name": must be lower case"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldError {
    /// Why the field failed.
    pub reason: CauseType,
    /// The field's path, such as `spec.containers[0].image`; may be empty.
    pub field: String,
    /// The message without the field: `Required value`, `Invalid value: "x": detail`.
    pub message: String,
}

impl FieldError {
    fn build(
        reason: CauseType,
        field: impl Into<String>,
        value: Option<String>,
        detail: &str,
    ) -> Self {
        let mut message = reason.label().to_owned();
        if let Some(value) = value {
            message.push_str(": ");
            message.push_str(&value);
        }
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Self {
            reason,
            field: field.into(),
            message,
        }
    }

    /// `Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::build(CauseType::Required, field, None, detail)
    }

    /// `Invalid value: <value>[: detail]`.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<serde_json::Value>,
        detail: &str,
    ) -> Self {
        Self::build(
            CauseType::Invalid,
            field,
            Some(render(&value.into())),
            detail,
        )
    }

    /// `Invalid value: <value>[: detail]`, with the type `FieldValueTypeInvalid`.
    pub fn type_invalid(
        field: impl Into<String>,
        value: impl Into<serde_json::Value>,
        detail: &str,
    ) -> Self {
        Self::build(
            CauseType::TypeInvalid,
            field,
            Some(render(&value.into())),
            detail,
        )
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<serde_json::Value>,
        supported: &[&str],
    ) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::build(
            CauseType::NotSupported,
            field,
            Some(render(&value.into())),
            &detail,
        )
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        Self::build(CauseType::Duplicate, field, Some(render(&value.into())), "")
    }

    /// `Not found: <value>`.
    pub fn not_found(field: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        Self::build(CauseType::NotFound, field, Some(render(&value.into())), "")
    }

    /// `Forbidden[: detail]`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self::build(CauseType::Forbidden, field, None, detail)
    }

    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        Self::build(
            CauseType::TooLong,
            field,
            None,
            &format!("may not be more than {max_bytes} {unit}"),
        )
    }

    /// `Too many: <actual>: must have at most <max> items`.
    pub fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Self {
        let unit = if max == 1 { "item" } else { "items" };
        Self::build(
            CauseType::TooMany,
            field,
            Some(actual.to_string()),
            &format!("must have at most {max} {unit}"),
        )
    }

    /// `Internal error: <detail>`.
    pub fn internal(field: impl Into<String>, detail: &str) -> Self {
        Self::build(CauseType::Internal, field, None, detail)
    }

    /// The same error for a field nested under `parent` (`spec` + `replicas` gives
    /// `spec.replicas`; an index such as `[0]` is appended without a dot).
    pub fn under(mut self, parent: &str) -> Self {
        if parent.is_empty() {
            return self;
        }
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// The Kubernetes `StatusCause`.
    pub fn to_cause(&self) -> StatusCause {
        StatusCause {
            field: non_empty(&self.field),
            message: Some(self.message.clone()),
            reason: Some(self.reason.as_str().to_owned()),
        }
    }

    /// A `FieldError` from a Kubernetes `StatusCause`.
    pub fn from_cause(cause: &StatusCause) -> Self {
        Self {
            reason: CauseType::parse(cause.reason.as_deref().unwrap_or_default()),
            field: cause.field.clone().unwrap_or_default(),
            message: cause.message.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for FieldError {
    /// `field: message`, or the message alone when there is no field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Joins field errors as Kubernetes aggregates them: one alone, several as
/// `[a, b]`, duplicates dropped.
pub(crate) fn aggregate(causes: &[FieldError]) -> String {
    let mut seen = std::collections::HashSet::new();
    let messages: Vec<String> = causes
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Renders a bad value the way Kubernetes field errors do: strings quoted, numbers and
/// booleans bare, anything else as compact JSON.
fn render(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => quote(s),
        other => other.to_string(),
    }
}

/// A double-quoted, escaped string (Go's `%q` for the strings that matter here).
pub(crate) fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> GroupResource {
        GroupResource::new("", "pods")
    }

    #[test]
    fn not_found_status_names_the_resource_and_the_object() {
        let status = Error::not_found(pods(), "nope").to_status();
        assert_eq!(status.code, Some(404));
        assert_eq!(status.reason.as_deref(), Some("NotFound"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.message.as_deref(), Some(r#"pods "nope" not found"#));
        let details = status.details.unwrap_or_default();
        assert_eq!(details.kind.as_deref(), Some("pods"));
        assert_eq!(details.name.as_deref(), Some("nope"));
        assert_eq!(details.group, None);
    }

    #[test]
    fn status_serializes_as_a_kubernetes_status_object() {
        let status = Error::not_found(("apps", "deployments"), "web").to_status();
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "deployments.apps \"web\" not found",
                "reason": "NotFound",
                "details": {"name": "web", "group": "apps", "kind": "deployments"},
                "code": 404
            })
        );
    }

    #[test]
    fn already_exists_is_a_409_with_kubernetes_wording() {
        let err = Error::already_exists(pods(), "web");
        assert_eq!(err.to_string(), r#"pods "web" already exists"#);
        assert_eq!((err.code(), err.reason()), (409, "AlreadyExists"));
        assert!(err.is_already_exists());
    }

    #[test]
    fn stale_update_conflict_says_the_object_has_been_modified() {
        let err = Error::conflict_modified(pods(), "x");
        assert_eq!(
            err.to_string(),
            "Operation cannot be fulfilled on pods \"x\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        assert_eq!((err.code(), err.reason()), (409, "Conflict"));
    }

    #[test]
    fn invalid_with_one_cause_reads_like_kubectl_expects() {
        let err = Error::invalid(
            ("", "Pod"),
            "bad",
            vec![FieldError::required("spec.containers", "")],
        );
        assert_eq!(
            err.to_string(),
            r#"Pod "bad" is invalid: spec.containers: Required value"#
        );
        let status = err.to_status();
        assert_eq!(status.code, Some(422));
        let details = status.details.unwrap_or_default();
        assert_eq!(details.kind.as_deref(), Some("Pod"));
        assert_eq!(details.name.as_deref(), Some("bad"));
        let causes = details.causes.unwrap_or_default();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].reason.as_deref(), Some("FieldValueRequired"));
        assert_eq!(causes[0].message.as_deref(), Some("Required value"));
        assert_eq!(causes[0].field.as_deref(), Some("spec.containers"));
    }

    #[test]
    fn invalid_with_several_causes_lists_them_in_brackets_without_duplicates() {
        let err = Error::invalid(
            ("apps", "Deployment"),
            "web",
            vec![
                FieldError::required("spec.selector", ""),
                FieldError::invalid("spec.replicas", -1, "must be greater than or equal to 0"),
                FieldError::required("spec.selector", ""),
            ],
        );
        assert_eq!(
            err.to_string(),
            "Deployment.apps \"web\" is invalid: [spec.selector: Required value, \
             spec.replicas: Invalid value: -1: must be greater than or equal to 0]"
        );
    }

    #[test]
    fn field_error_messages_follow_kubernetes_wording() {
        assert_eq!(
            FieldError::not_supported("spec.restartPolicy", "Sometimes", &["Always", "Never"])
                .to_string(),
            r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "Never""#
        );
        assert_eq!(
            FieldError::duplicate("spec.ports[1].name", "http").to_string(),
            r#"spec.ports[1].name: Duplicate value: "http""#
        );
        assert_eq!(
            FieldError::forbidden("spec.nodeName", "may not be changed").to_string(),
            "spec.nodeName: Forbidden: may not be changed"
        );
        assert_eq!(
            FieldError::too_long("metadata.annotations", 262144).to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
        assert_eq!(
            FieldError::too_many("spec.containers", 3, 2).to_string(),
            "spec.containers: Too many: 3: must have at most 2 items"
        );
        assert_eq!(
            FieldError::required("name", "")
                .under("spec.containers[0]")
                .field,
            "spec.containers[0].name"
        );
    }

    #[test]
    fn each_variant_maps_to_its_status_code_and_reason() {
        let cases = [
            (Error::bad_request("x"), 400, "BadRequest"),
            (Error::unauthorized(""), 401, "Unauthorized"),
            (Error::forbidden(pods(), "", "no"), 403, "Forbidden"),
            (
                Error::method_not_allowed(pods(), "watch"),
                405,
                "MethodNotAllowed",
            ),
            (
                Error::not_acceptable(&["application/json"]),
                406,
                "NotAcceptable",
            ),
            (Error::too_old_resource_version(5, 1011), 410, "Expired"),
            (
                Error::request_entity_too_large("limit is 3145728"),
                413,
                "RequestEntityTooLarge",
            ),
            (
                Error::unsupported_media_type(&["application/json"]),
                415,
                "UnsupportedMediaType",
            ),
            (
                Error::too_many_requests("slow down", Some(1)),
                429,
                "TooManyRequests",
            ),
            (Error::internal("boom"), 500, "InternalError"),
            (
                Error::other(std::io::Error::other("disk")),
                500,
                "InternalError",
            ),
            (
                Error::service_unavailable("store not ready"),
                503,
                "ServiceUnavailable",
            ),
            (
                Error::timeout("request did not complete within 60s", Some(2)),
                504,
                "Timeout",
            ),
        ];
        for (err, code, reason) in cases {
            assert_eq!((err.code(), err.reason()), (code, reason), "{err}");
            let status = err.to_status();
            assert_eq!(status.code, Some(i32::from(code)));
            assert_eq!(status.reason.as_deref(), Some(reason));
        }
    }

    #[test]
    fn messages_match_kubernetes_wording() {
        assert_eq!(Error::unauthorized("").to_string(), "not authorized");
        assert_eq!(
            Error::forbidden(pods(), "web", "User \"bob\" cannot get resource").to_string(),
            r#"pods "web" is forbidden: User "bob" cannot get resource"#
        );
        assert_eq!(
            Error::forbidden(pods(), "", "no").to_string(),
            "pods is forbidden: no"
        );
        assert_eq!(
            Error::method_not_allowed(pods(), "watch").to_string(),
            r#"watch is not supported on resources of kind "pods""#
        );
        assert_eq!(
            Error::too_old_resource_version(5, 1011).to_string(),
            "too old resource version: 5 (1011)"
        );
        assert_eq!(Error::timeout("x", None).to_string(), "Timeout: x");
        assert_eq!(
            Error::internal("boom").to_string(),
            "Internal error occurred: boom"
        );
    }

    #[test]
    fn retry_after_goes_into_the_status_details() {
        let status = Error::too_many_requests("slow down", Some(3)).to_status();
        assert_eq!(
            status.details.unwrap_or_default().retry_after_seconds,
            Some(3)
        );
    }

    #[test]
    fn other_errors_become_internal_errors_with_a_cause() {
        let err = Error::other(std::io::Error::other("disk on fire"));
        assert_eq!(err.to_string(), "disk on fire");
        let status = err.to_status();
        assert_eq!(
            status.message.as_deref(),
            Some("Internal error occurred: disk on fire")
        );
        let causes = status
            .details
            .unwrap_or_default()
            .causes
            .unwrap_or_default();
        assert_eq!(causes[0].message.as_deref(), Some("disk on fire"));
    }

    #[test]
    fn errors_without_details_send_none() {
        assert_eq!(Error::bad_request("nope").to_status().details, None);
    }

    #[test]
    fn from_status_round_trips_every_structured_variant() {
        let errors = [
            Error::not_found(("apps", "deployments"), "web"),
            Error::already_exists(pods(), "web"),
            Error::conflict_modified(pods(), "web"),
            Error::invalid(
                ("", "Pod"),
                "bad",
                vec![FieldError::required("spec.containers", "")],
            ),
            Error::forbidden(pods(), "web", "no"),
            Error::too_old_resource_version(1, 2),
            Error::timeout("slow", Some(4)),
        ];
        for err in errors {
            let back = Error::from_status(&err.to_status());
            assert_eq!(back.to_status(), err.to_status(), "{err}");
        }
    }

    #[test]
    fn from_status_without_a_reason_uses_the_code() {
        let status = Status {
            code: Some(404),
            message: Some("the server could not find the requested resource".into()),
            ..Status::default()
        };
        let err = Error::from_status(&status);
        assert!(err.is_not_found());
        assert_eq!(
            err.to_string(),
            "the server could not find the requested resource"
        );
    }
}
