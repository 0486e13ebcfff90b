//! The controller's memory: the desired state (resources, with an index from each
//! Application to the Machines and Containers that name it) and the observed LXD state
//! (a cache fed by listings, events and the controller's own writes).
//!
//! `Desired` and `Observed` do no I/O. `lxd_feed` is the one room here that talks to
//! LXD, and it only reads: listings, and one GET for an event a resource cares about.
//! Nothing in the store writes to LXD, enqueues work or decides a status: its methods
//! return the keys a change affects, and the caller hands them on.

pub mod desired;
pub mod lxd_feed;
pub mod observed;
pub mod packed;
pub mod prepared;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use desired::Desired;
pub use lxd_feed::LxdFeed;
pub use observed::{OWNER_KEY, OWNER_VALUE, Object, Observed, ObservedProfile, Relisting};
pub use packed::PackedContent;
pub use prepared::PreparedApp;

use crate::resource::{Resource, ResourceKey, Workload};

/// The two truths, shared by the feeds (writers) and the workers (readers).
#[derive(Debug)]
pub struct Store {
    desired: RwLock<Desired>,
    observed: RwLock<Observed>,
    /// The source has delivered its whole state once.
    desired_loaded: AtomicBool,
    /// The source cannot see its whole state now: its last good view is kept, and
    /// nothing may be deleted on it.
    desired_partial: AtomicBool,
}

/// The workload of one key and the applications it names, cloned out of the lock: what a
/// reconcile plans from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub workload: Arc<Workload>,
    pub applications: Vec<Arc<PreparedApp>>,
}

impl Snapshot {
    pub fn application(&self, name: &str) -> Option<&PreparedApp> {
        self.applications
            .iter()
            .find(|a| a.metadata.name == name)
            .map(|a| a.as_ref())
    }

    /// The subordinates of `principal` among the snapshot's applications.
    pub fn subordinates(&self, principal: &str) -> Vec<&PreparedApp> {
        self.applications
            .iter()
            .filter(|a| a.spec.subordinate_to.iter().any(|p| p == principal))
            .map(|a| a.as_ref())
            .collect()
    }
}

impl Store {
    /// The store of the controller `owner` (`--owner`): what it owns in LXD is what
    /// carries that value.
    pub fn new(owner: &str) -> Arc<Store> {
        Arc::new(Store {
            desired: RwLock::default(),
            observed: RwLock::new(Observed::with_owner(owner)),
            desired_loaded: AtomicBool::new(false),
            desired_partial: AtomicBool::new(false),
        })
    }

    /// A poisoned lock only means a panic elsewhere; the maps stay consistent per call.
    pub fn desired(&self) -> RwLockReadGuard<'_, Desired> {
        self.desired.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn observed(&self) -> RwLockReadGuard<'_, Observed> {
        self.observed.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// For the LXD feed and for `apply`, which records its own writes.
    pub fn observed_mut(&self) -> RwLockWriteGuard<'_, Observed> {
        self.observed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn desired_mut(&self) -> RwLockWriteGuard<'_, Desired> {
        self.desired.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces a resource; the Machines and Containers it affects.
    pub fn upsert(&self, resource: Resource) -> Vec<ResourceKey> {
        self.desired_mut().upsert(resource)
    }

    /// Forgets a resource (LXD is not touched for it); the Machines and Containers it
    /// affects.
    pub fn remove(&self, key: &ResourceKey) -> Vec<ResourceKey> {
        self.desired_mut().remove(key)
    }

    /// Replaces the whole desired state (`diff`, tests): what changed, and the keys that
    /// went away.
    pub fn replace_desired(
        &self,
        resources: Vec<Resource>,
    ) -> (Vec<ResourceKey>, Vec<ResourceKey>) {
        let keep: HashSet<ResourceKey> = resources.iter().map(Resource::key).collect();
        let mut d = self.desired_mut();
        let gone: Vec<ResourceKey> = d.keys().into_iter().filter(|k| !keep.contains(k)).collect();
        let mut changed = Vec::new();
        for key in &gone {
            changed.extend(d.remove(key));
        }
        for r in resources {
            changed.extend(d.upsert(r));
        }
        drop(d);
        self.set_desired_loaded();
        (changed, gone)
    }

    /// Whether the store holds a usable version of `key`.
    pub fn holds(&self, key: &ResourceKey) -> bool {
        let d = self.desired();
        match key.kind {
            crate::resource::Kind::Application => {
                d.application(&key.namespace, &key.name).is_some()
            }
            _ => d.workload(key).is_some(),
        }
    }

    pub fn set_desired_loaded(&self) {
        self.desired_loaded.store(true, Ordering::SeqCst);
    }

    /// Desired state and a full LXD listing are both loaded: the only state in which
    /// `/readyz` says ready.
    pub fn is_loaded(&self) -> bool {
        self.desired_loaded.load(Ordering::SeqCst) && self.observed().is_listed()
    }

    pub fn set_desired_partial(&self, partial: bool) {
        self.desired_partial.store(partial, Ordering::SeqCst);
    }

    /// Loaded, and the source sees its whole state now: the only state in which a
    /// deletion may be planned.
    pub fn is_whole(&self) -> bool {
        self.is_loaded() && !self.desired_partial.load(Ordering::SeqCst)
    }

    /// Every Machine and Container key.
    pub fn workload_keys(&self) -> Vec<ResourceKey> {
        self.desired().workloads().map(|(k, _)| k.clone()).collect()
    }

    /// What one reconcile plans from; `None` once the resource is gone.
    pub fn snapshot(&self, key: &ResourceKey) -> Option<Snapshot> {
        let d = self.desired();
        let workload = d.workload(key)?.clone();
        let mut applications: Vec<Arc<PreparedApp>> = workload
            .spec
            .applications
            .iter()
            .filter_map(|a| d.application(&key.namespace, a).cloned())
            .collect();
        let subordinates: Vec<Arc<PreparedApp>> = workload
            .spec
            .applications
            .iter()
            .flat_map(|a| d.subordinates(&key.namespace, a))
            .cloned()
            .collect();
        for s in subordinates {
            if !applications
                .iter()
                .any(|a| a.metadata.name == s.metadata.name)
            {
                applications.push(s);
            }
        }
        Some(Snapshot {
            workload,
            applications,
        })
    }
}
