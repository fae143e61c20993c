//! `titan-operator`: runs Titan clusters on Kubernetes.
//!
//! Flow per reconcile (stackable style): validate the spec → build the desired
//! objects ([`builders`], pure) → apply them with server-side apply → observe
//! pods and every member's admin `Status` → ask the pure [`planner`] for exactly
//! one next step → execute it → write status.
//!
//! [`backup`] is a second controller, for one-shot `TitanBackup`s to S3.

pub mod admin;
pub mod backup;
pub mod builders;
pub mod controller;
pub mod crd;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod kube_io;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod planner;
pub mod reconcile;
pub mod tls;
