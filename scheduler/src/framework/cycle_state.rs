//! Typed data that plugins share within one scheduling cycle.

use std::any::{Any, TypeId};
use std::collections::HashMap;

/// A value plugins keep in a [`CycleState`]: any `Clone + Send + Sync` type.
pub trait StateData: Any + Send + Sync {
    /// A boxed copy (preemption works on copies of the state).
    fn clone_data(&self) -> Box<dyn StateData>;
    /// As `Any`, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// As `Any`, to downcast mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + Clone + Send + Sync> StateData for T {
    fn clone_data(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Per-cycle state, keyed by type: a plugin stores what its PreFilter computed under
/// a private type and reads it back in Filter, or PreScore for Score. A new state per
/// pod per cycle; plugins must not keep references to it.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<TypeId, Box<dyn StateData>>,
    /// Bit i set: filter plugin i skips this pod (its PreFilter answered Skip).
    pub(crate) skip_filter: u64,
    /// Bit i set: score plugin i skips this pod (its PreScore answered Skip).
    pub(crate) skip_score: u64,
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        CycleState {
            data: self
                .data
                .iter()
                .map(|(k, v)| (*k, v.as_ref().clone_data()))
                .collect(),
            skip_filter: self.skip_filter,
            skip_score: self.skip_score,
        }
    }
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState")
            .field("entries", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl CycleState {
    /// An empty state.
    pub fn new() -> CycleState {
        CycleState::default()
    }

    /// Stores a value (replacing one of the same type).
    pub fn insert<T: Any + Clone + Send + Sync>(&mut self, value: T) {
        self.data.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The value of type `T`, if stored.
    pub fn get<T: Any + Clone + Send + Sync>(&self) -> Option<&T> {
        self.data
            .get(&TypeId::of::<T>())
            .and_then(|v| v.as_ref().as_any().downcast_ref())
    }

    /// The value of type `T`, mutably, if stored.
    pub fn get_mut<T: Any + Clone + Send + Sync>(&mut self) -> Option<&mut T> {
        self.data
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| v.as_mut().as_any_mut().downcast_mut())
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Clone + Send + Sync>(&mut self) -> Option<T> {
        let v = self.data.remove(&TypeId::of::<T>())?;
        v.as_any().downcast_ref::<T>().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Counts(u32);

    #[test]
    fn state_is_typed_and_clones_deeply() {
        let mut s = CycleState::new();
        assert!(s.get::<Counts>().is_none());
        s.insert(Counts(1));
        let copy = s.clone();
        if let Some(c) = s.get_mut::<Counts>() {
            c.0 = 5;
        }
        assert_eq!(s.get::<Counts>(), Some(&Counts(5)));
        assert_eq!(copy.get::<Counts>(), Some(&Counts(1)));
        assert_eq!(s.remove::<Counts>(), Some(Counts(5)));
        assert!(s.get::<Counts>().is_none());
    }
}
