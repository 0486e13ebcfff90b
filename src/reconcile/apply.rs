//! `apply(Plan)` and `apply_cleanup(Cleanup)`: the only code that writes to LXD. It
//! decides nothing: it carries out steps that `plan` and `collect` decided. Each write that
//! succeeds is recorded in the observed cache at once, and the lifecycle event it will
//! cause is expected, so the controller's own writes never look like drift and need no
//! read-back.
//!
//! Profiles are shared by many instances: a profile step holds that profile's lock and
//! checks the cache again first, so concurrent reconciles create, rewrite or delete it
//! once, and a clean-up never deletes a profile a reconcile has just started to use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::lxd::{LxdApi, LxdError, ProfileContent};
use crate::store::observed::Stamp;
use crate::store::{Object, Store};

use super::collect::Cleanup;
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

/// Carries out `plan`, step by step; stops at the first refusal.
pub async fn apply<L: LxdApi>(
    lxd: &L,
    plan: &Plan,
    store: &Store,
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
            Step::CreateProfile {
                name,
                content,
                stamp,
            } => {
                let _held = locks.lock(name).await;
                if store.observed().profile(name).is_some() {
                    continue; // created meanwhile by another reconcile
                }
                create(lxd, name, content, stamp, store)
                    .await
                    .map_err(fail)?;
            }
            Step::ReplaceProfile {
                name,
                content,
                stamp,
            } => {
                let _held = locks.lock(name).await;
                if store
                    .observed()
                    .profile(name)
                    .is_some_and(|p| p.content == *content)
                {
                    continue; // rewritten meanwhile by another reconcile
                }
                // Read it fresh (one GET, for a rewrite, which is rare and costs LXD far
                // more): an operator's edit since the listing is seen, and the PUT carries
                // its ETag, so an edit made after this read is never overwritten (412).
                let (fresh, etag) = lxd.get_profile(name).await.map_err(fail)?;
                store.observed_mut().put_lxd_profile(fresh);
                match store.observed().profile(name) {
                    Some(p) if p.owned && p.content != *content => {}
                    // Not ours any more, or already what it should be: nothing to write;
                    // the next plan sees the fresh state.
                    _ => continue,
                }
                // LXD announces a profile update even when it fails part way: the echo
                // stays expected either way.
                store
                    .observed_mut()
                    .expect_echo(Object::Profile(name.clone()));
                if let Err(e) = lxd
                    .replace_profile(name, &stamp.on(content), etag.as_deref())
                    .await
                {
                    // An update can fail part way and still be saved ("profile change
                    // still saved"): read what LXD holds now rather than retry blindly;
                    // the queue's backoff decides when to look again.
                    if let Ok((p, _)) = lxd.get_profile(name).await {
                        store.observed_mut().put_lxd_profile(p);
                    }
                    return Err(fail(e));
                }
                store
                    .observed_mut()
                    .set_profile(name, content.clone(), stamp.clone());
                done.rewritten.push(name.clone());
            }
            Step::SetProfiles { profiles, claim } => {
                let object = Object::Instance(plan.instance.clone());
                store.observed_mut().expect_echo(object.clone());
                // The PATCH is synchronous and atomic: its success confirms the list
                // and the claim, recorded by the same request.
                if let Err(e) = lxd
                    .set_instance_profiles(&plan.instance, profiles, &claim.config(), None)
                    .await
                {
                    store.observed_mut().cancel_echo(&object);
                    return Err(fail(e));
                }
                {
                    let mut o = store.observed_mut();
                    o.set_instance_profiles(&plan.instance, profiles);
                    o.set_claim(&plan.instance, claim.clone());
                }
                done.profiles = profiles.clone();
                done.list_set = true;
            }
            // Deletions come in a `Cleanup`, not in an instance's plan.
            Step::DeleteProfile { .. } => {}
        }
    }
    Ok(done)
}

/// What a clean-up did.
#[derive(Debug, Default)]
pub struct Collected {
    pub deleted: Vec<String>,
    /// Profiles kept because LXD still reports them in use, or a reconcile took them
    /// since the listing.
    pub kept: Vec<String>,
    pub failed: Vec<(String, LxdError)>,
}

/// Carries out the deletions of `cleanup`. Each holds the profile's lock and checks the
/// cache again first: a profile that an instance uses now, or that is no longer ours, is
/// kept.
pub async fn apply_cleanup<L: LxdApi>(
    lxd: &L,
    cleanup: &Cleanup,
    store: &Store,
    locks: &ProfileLocks,
) -> Collected {
    let mut done = Collected::default();
    for step in &cleanup.steps {
        let Step::DeleteProfile { name } = step else {
            continue;
        };
        let _held = locks.lock(name).await;
        let still_doomed = store
            .observed()
            .profile(name)
            .is_some_and(|p| p.owned && p.used_by.is_empty());
        if !still_doomed {
            done.kept.push(name.clone());
            continue;
        }
        let object = Object::Profile(name.clone());
        store.observed_mut().expect_echo(object.clone());
        match lxd.delete_profile(name).await {
            Ok(()) => {
                store.observed_mut().remove_profile(name);
                done.deleted.push(name.clone());
            }
            Err(e) => {
                store.observed_mut().cancel_echo(&object);
                match e {
                    LxdError::NotFound { .. } => store.observed_mut().remove_profile(name),
                    LxdError::InUse { .. } => {
                        // The cache did not know a user (an instance no resource of ours
                        // names changed without a GET of ours): learn it, so the next
                        // clean-up does not ask again.
                        if let Ok((p, _)) = lxd.get_profile(name).await {
                            store.observed_mut().put_lxd_profile(p);
                        }
                        done.kept.push(name.clone());
                    }
                    // LXD may have deleted it (the answer was lost): read it back,
                    // so that the next clean-up does not ask again for what is gone.
                    e if e.may_have_happened() => match lxd.get_profile(name).await {
                        Err(LxdError::NotFound { .. }) => {
                            store.observed_mut().remove_profile(name);
                            done.deleted.push(name.clone());
                        }
                        _ => done.failed.push((name.clone(), e)),
                    },
                    e => done.failed.push((name.clone(), e)),
                }
            }
        }
    }
    done
}

async fn create<L: LxdApi>(
    lxd: &L,
    name: &str,
    content: &ProfileContent,
    stamp: &Stamp,
    store: &Store,
) -> Result<(), LxdError> {
    let object = Object::Profile(name.to_string());
    store.observed_mut().expect_echo(object.clone());
    match lxd.create_profile(name, &stamp.on(content)).await {
        Ok(()) => {
            store
                .observed_mut()
                .set_profile(name, content.clone(), stamp.clone());
            Ok(())
        }
        Err(LxdError::AlreadyExists { .. }) => {
            store.observed_mut().cancel_echo(&object);
            // Made by someone else since the last listing: read it, so that the next
            // plan sees its real content and owner; the list can use it now.
            let (p, _) = lxd.get_profile(name).await?;
            store.observed_mut().put_lxd_profile(p);
            Ok(())
        }
        Err(e) => {
            store.observed_mut().cancel_echo(&object);
            Err(e)
        }
    }
}
