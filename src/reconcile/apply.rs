//! `apply(Plan)`: the only code that writes to LXD. Each write that succeeds is recorded
//! in the observed cache at once, so the controller's own writes never look like drift.

use std::sync::RwLock;

use crate::lxd::{LxdApi, LxdError};
use crate::store::Observed;

use super::expected::owned;
use super::plan::{Plan, Step};

/// A plan step LXD refused.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct ApplyError {
    pub step: Step,
    #[source]
    pub cause: LxdError,
}

/// What LXD accepted: the instance's list now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub profiles: Vec<String>,
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Carries out `plan`, step by step; stops at the first refusal.
pub async fn apply<L: LxdApi>(
    lxd: &L,
    plan: &Plan,
    observed: &RwLock<Observed>,
) -> Result<Applied, ApplyError> {
    let mut profiles = plan.current.clone();
    for step in &plan.steps {
        let fail = |cause| ApplyError {
            step: step.clone(),
            cause,
        };
        match step {
            Step::CreateProfile { name, content } => {
                match lxd.create_profile(name, &owned(content)).await {
                    Ok(()) => {}
                    // Made meanwhile (another worker planned the same profile): the content
                    // is checked on the next pass.
                    Err(LxdError::Conflict { .. }) => {}
                    Err(e) if e.to_string().contains("already exists") => {}
                    Err(e) => return Err(fail(e)),
                }
                write(observed).set_profile(name, content.clone(), true);
            }
            Step::ReplaceProfile { name, content } => {
                lxd.replace_profile(name, &owned(content), None)
                    .await
                    .map_err(fail)?;
                write(observed).set_profile(name, content.clone(), true);
            }
            Step::SetProfiles { profiles: list } => {
                // The PATCH is synchronous and atomic: its success confirms the list.
                lxd.set_instance_profiles(&plan.instance, list, None)
                    .await
                    .map_err(fail)?;
                write(observed).set_instance_profiles(&plan.instance, list);
                profiles = list.clone();
            }
        }
    }
    Ok(Applied { profiles })
}
