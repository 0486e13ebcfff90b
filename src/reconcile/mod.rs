//! Reconciliation, a short chain per key: snapshot -> plan (pure) -> apply -> report.
//!
//! - `expected`: what an instance's profiles should be (pure);
//! - `plan`: what must change for one Machine or Container (pure);
//! - `collect`: which owned profiles nothing uses any more (pure);
//! - `apply`: the only code that writes to LXD; it decides nothing;
//! - `worker`: takes a key from the queue, runs the chain, hands the typed outcome to the
//!   status stage. It formats no status.

pub mod apply;
pub mod collect;
pub mod expected;
pub mod plan;
pub mod worker;

pub use collect::{Cleanup, collect};
pub use expected::{ExpectedProfiles, expected_profiles};
pub use plan::{Decision, Plan, Step, plan};
pub use worker::{Flavour, Options, ReconcileError, WorkKey, Worker};

#[cfg(test)]
mod tests;
