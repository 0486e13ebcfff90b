//! Where desired state comes from (SPEC §6): a directory of YAML files.
//!
//! A source only reads; it hands resources to the store and never talks to LXD.

pub mod files;
pub mod watch;
