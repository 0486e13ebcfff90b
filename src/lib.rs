//! lxd-mutater: keeps the LXD profiles of machines and containers in line with the
//! applications that run on them.
//!
//! The folders follow the pipeline, data flowing one way:
//! `source` (files, k8s) -> `store` (desired + observed cache) -> `queue` (dedup, backoff)
//! -> `reconcile` (plan: pure; apply: the only LXD writes) -> `lxd` (REST client, events)
//! -> `status` (files, metrics).
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod crd;
pub mod fence;
pub mod k8s;
pub mod lxd;
pub mod queue;
pub mod reconcile;
pub mod resource;
pub mod run;
pub mod source;
pub mod status;
pub mod store;
