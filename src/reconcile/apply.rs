//! `apply(Plan)`: the only code that writes to LXD. Each write that succeeds is recorded
//! in the observed cache at once, and the lifecycle event it will cause is expected, so
//! the controller's own writes never look like drift and need no read-back.
//!
//! Profiles are shared by many instances: a profile step holds that profile's lock and
//! checks the cache again first, so concurrent reconciles create or rewrite it once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::lxd::{LxdApi, LxdError, ProfileContent};
use crate::store::{Object, Observed};

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

/// What apply really did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The instance's list now (accepted by LXD).
    pub profiles: Vec<String>,
    /// Owned profiles whose drifted content this apply rewrote.
    pub rewritten: Vec<String>,
    /// Whether the instance's list was written.
    pub list_set: bool,
}

/// One async lock per profile name, held while the profile is created or rewritten.
#[derive(Debug, Default)]
pub struct ProfileLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl ProfileLocks {
    async fn lock(&self, name: &str) -> ProfileGuard<'_> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        let guard = m.clone().lock_owned().await;
        ProfileGuard {
            locks: self,
            name: name.to_string(),
            _guard: guard,
        }
    }
}

struct ProfileGuard<'a> {
    locks: &'a ProfileLocks,
    name: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ProfileGuard<'_> {
    fn drop(&mut self) {
        // Forget the lock when nobody else holds or waits for it (ours + the map's).
        let mut map = self
            .locks
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.name);
        }
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Carries out `plan`, step by step; stops at the first refusal.
pub async fn apply<L: LxdApi>(
    lxd: &L,
    plan: &Plan,
    observed: &RwLock<Observed>,
    locks: &ProfileLocks,
) -> Result<Applied, ApplyError> {
    let mut done = Applied {
        profiles: plan.current.clone(),
        ..Applied::default()
    };
    for step in &plan.steps {
        let fail = |cause| ApplyError {
            step: step.clone(),
            cause,
        };
        match step {
            Step::CreateProfile { name, content } => {
                let _held = locks.lock(name).await;
                if read(observed).profile(name).is_some() {
                    continue; // created meanwhile by another reconcile
                }
                create(lxd, name, content, observed).await.map_err(fail)?;
            }
            Step::ReplaceProfile { name, content } => {
                let _held = locks.lock(name).await;
                if read(observed)
                    .profile(name)
                    .is_some_and(|p| p.content == *content)
                {
                    continue; // rewritten meanwhile by another reconcile
                }
                // LXD announces a profile update even when it fails part way: the echo
                // stays expected either way.
                write(observed).expect_echo(Object::Profile(name.clone()));
                lxd.replace_profile(name, &owned(content), None)
                    .await
                    .map_err(fail)?;
                write(observed).set_profile(name, content.clone(), true);
                done.rewritten.push(name.clone());
            }
            Step::SetProfiles { profiles } => {
                let object = Object::Instance(plan.instance.clone());
                write(observed).expect_echo(object.clone());
                // The PATCH is synchronous and atomic: its success confirms the list.
                if let Err(e) = lxd
                    .set_instance_profiles(&plan.instance, profiles, None)
                    .await
                {
                    write(observed).cancel_echo(&object);
                    return Err(fail(e));
                }
                write(observed).set_instance_profiles(&plan.instance, profiles);
                done.profiles = profiles.clone();
                done.list_set = true;
            }
        }
    }
    Ok(done)
}

async fn create<L: LxdApi>(
    lxd: &L,
    name: &str,
    content: &ProfileContent,
    observed: &RwLock<Observed>,
) -> Result<(), LxdError> {
    let object = Object::Profile(name.to_string());
    write(observed).expect_echo(object.clone());
    match lxd.create_profile(name, &owned(content)).await {
        Ok(()) => {
            write(observed).set_profile(name, content.clone(), true);
            Ok(())
        }
        Err(e) => {
            write(observed).cancel_echo(&object);
            // Made by someone else since the last listing: read it, so that the next
            // plan sees its real content and owner; the list can use it now.
            if e.to_string().contains("already exists") {
                let found = lxd
                    .list_profiles()
                    .await?
                    .into_iter()
                    .find(|p| p.name == name);
                if let Some(p) = found {
                    write(observed).put_lxd_profile(p);
                }
                return Ok(());
            }
            Err(e)
        }
    }
}
