//! Cluster events: what can make an unschedulable pod fit.

/// The kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventResource {
    /// A Node.
    Node,
    /// A pod bound (or assumed) to a node.
    AssignedPod,
    /// A pod waiting to be scheduled (the pod itself changed).
    UnscheduledPod,
    /// A Namespace.
    Namespace,
    /// A PodDisruptionBudget.
    PodDisruptionBudget,
    /// Anything else (a user plugin's own kinds).
    Other,
}

/// What happened, as a bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActionType(pub u32);

impl ActionType {
    /// Created.
    pub const ADD: ActionType = ActionType(1);
    /// Deleted.
    pub const DELETE: ActionType = ActionType(1 << 1);
    /// A node's allocatable resources changed.
    pub const UPDATE_NODE_ALLOCATABLE: ActionType = ActionType(1 << 2);
    /// A node's labels changed.
    pub const UPDATE_NODE_LABEL: ActionType = ActionType(1 << 3);
    /// A node's taints (or `spec.unschedulable`) changed.
    pub const UPDATE_NODE_TAINT: ActionType = ActionType(1 << 4);
    /// A node's images or other fields changed.
    pub const UPDATE_NODE_OTHER: ActionType = ActionType(1 << 5);
    /// A pod's labels changed.
    pub const UPDATE_POD_LABEL: ActionType = ActionType(1 << 6);
    /// A pod's requests went down.
    pub const UPDATE_POD_SCALE_DOWN: ActionType = ActionType(1 << 7);
    /// Any other update.
    pub const UPDATE_OTHER: ActionType = ActionType(1 << 8);
    /// Every update.
    pub const UPDATE: ActionType = ActionType(0b1_1111_1100);
    /// Everything.
    pub const ALL: ActionType = ActionType(u32::MAX);

    /// Both sets.
    pub const fn or(self, other: ActionType) -> ActionType {
        ActionType(self.0 | other.0)
    }

    /// Whether the sets share an action.
    pub fn intersects(self, other: ActionType) -> bool {
        self.0 & other.0 != 0
    }
}

/// An event in the cluster: a resource and what happened to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterEvent {
    /// The resource.
    pub resource: EventResource,
    /// What happened (for registrations: what the plugin cares about).
    pub actions: ActionType,
}

impl ClusterEvent {
    /// An event.
    pub const fn new(resource: EventResource, actions: ActionType) -> ClusterEvent {
        ClusterEvent { resource, actions }
    }

    /// Whether `self` (a registration) covers `event` (what happened).
    pub fn covers(&self, event: &ClusterEvent) -> bool {
        self.resource == event.resource && self.actions.intersects(event.actions)
    }
}
