//! lxd-mutater: keeps the LXD profiles of machines and containers in line with the
//! applications that run on them.
//!
//! The folders follow the pipeline, data flowing one way:
//! `source` (files, kubernetes) -> `store` (desired, observed; `lxd_feed`) -> `queue`
//! -> `reconcile` (snapshot -> plan -> apply -> report) -> `status` (decide, then persist
//! to files or Kubernetes; metrics, http). `pipeline` assembles them, `cmd` runs them.
//! At the bottom: `resource` (kinds, names, rules, parsing, CRDs), `lxd` (the REST
//! client), `leader` (lease and write fence), `backoff`.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod cmd;
pub mod hash;
pub mod import;
pub mod leader;
pub mod lxd;
pub mod pipeline;
pub mod queue;
pub mod reconcile;
pub mod resource;
pub mod source;
pub mod status;
pub mod store;
#[cfg(test)]
pub mod testing;
