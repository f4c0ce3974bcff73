//! The built-in controllers, with Kubernetes' semantics and status fields.
//!
//! Each is a [`Reconciler`](crate::Reconciler) plus a constructor that wires it into a
//! [`Controller`](crate::Controller) on a shared [`InformerFactory`](crate::InformerFactory);
//! [`ControllerManager`](crate::ControllerManager) runs them all.

pub mod common;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod rootcacert;
pub mod serviceaccount;
pub mod serviceaccount_token;
pub mod statefulset;
