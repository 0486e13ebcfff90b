//! Reconciliation: what an instance's profiles should be (`expected`), what must change
//! (`plan`, pure), and the only code that writes to LXD (`apply`).

pub mod apply;
pub mod expected;
pub mod plan;

pub use expected::{ExpectedProfiles, expected_profiles};
pub use plan::{Decision, Plan, Step, plan};
