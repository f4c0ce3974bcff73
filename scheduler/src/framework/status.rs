//! What a plugin answers: a code and the reasons.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

/// A reason: static text costs no allocation.
pub type Reason = Cow<'static, str>;

/// The outcome class of a plugin call, as in the Kubernetes scheduling framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// It went well.
    Success,
    /// Something broke (not the pod's fault): the pod is retried after a backoff.
    Error,
    /// The pod does not fit here now; preemption may help.
    Unschedulable,
    /// The pod does not fit here and preemption cannot change that.
    UnschedulableAndUnresolvable,
    /// A Permit plugin holds the pod until it is allowed, rejected or times out.
    Wait,
    /// The plugin has nothing to do for this pod (PreFilter, PreScore, Bind).
    Skip,
}

/// A plugin's answer: a [`Code`], human-readable reasons, and the plugin that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    reasons: SmallVec<[Reason; 1]>,
    plugin: Option<Arc<str>>,
}

impl Status {
    fn new(code: Code, reason: impl Into<Reason>) -> Status {
        let reason = reason.into();
        let mut reasons = SmallVec::new();
        if !reason.is_empty() {
            reasons.push(reason);
        }
        Status {
            code,
            reasons,
            plugin: None,
        }
    }

    /// Success.
    pub fn success() -> Status {
        Status::new(Code::Success, "")
    }

    /// The pod does not fit, for `reason` (preemption may help).
    pub fn unschedulable(reason: impl Into<Reason>) -> Status {
        Status::new(Code::Unschedulable, reason)
    }

    /// The pod does not fit, for `reason`, and preemption cannot help.
    pub fn unresolvable(reason: impl Into<Reason>) -> Status {
        Status::new(Code::UnschedulableAndUnresolvable, reason)
    }

    /// An internal error.
    pub fn error(message: impl Into<Reason>) -> Status {
        Status::new(Code::Error, message)
    }

    /// Skip.
    pub fn skip() -> Status {
        Status::new(Code::Skip, "")
    }

    /// Wait.
    pub fn wait(reason: impl Into<Reason>) -> Status {
        Status::new(Code::Wait, reason)
    }

    /// Adds a reason.
    pub fn with_reason(mut self, reason: impl Into<Reason>) -> Status {
        self.reasons.push(reason.into());
        self
    }

    /// Names the plugin that answered (the framework does this).
    pub fn with_plugin(mut self, plugin: &str) -> Status {
        if self.plugin.is_none() {
            self.plugin = Some(Arc::from(plugin));
        }
        self
    }

    /// Names the plugin that answered, sharing the name.
    pub(crate) fn with_plugin_arc(mut self, plugin: &Arc<str>) -> Status {
        if self.plugin.is_none() {
            self.plugin = Some(plugin.clone());
        }
        self
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The reasons.
    pub fn reasons(&self) -> &[Reason] {
        &self.reasons
    }

    /// The plugin that answered (empty until the framework sets it).
    pub fn plugin(&self) -> &str {
        self.plugin.as_deref().unwrap_or("")
    }

    /// The reasons joined by `, `.
    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }

    /// Whether the code is [`Code::Success`].
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    /// Whether the pod was rejected ([`Code::Unschedulable`] or
    /// [`Code::UnschedulableAndUnresolvable`]).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plugin {
            None => write!(f, "{:?}: {}", self.code, self.message()),
            Some(p) => write!(f, "{:?} from {p}: {}", self.code, self.message()),
        }
    }
}
