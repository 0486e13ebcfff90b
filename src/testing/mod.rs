//! Test doubles and fixtures shared by unit tests (compiled only with cfg(test)).

pub mod lxd;

pub use lxd::MemLxd;
