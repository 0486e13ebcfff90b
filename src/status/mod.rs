//! Status: what the controller says about each resource (SPEC §2), and where it is kept.
//!
//! `decide` is pure: previous status + a typed outcome -> the new status. `report` is the
//! one status stage the workers and the sources' invalid objects go through: it decides,
//! tells the metrics, and hands the result to a `StatusStore` that only persists
//! (`files`, `kubernetes`), and only when it changed. `metrics` and `http` serve what was
//! counted; `/readyz` reads the small `Health` handle.
//!
//! Nothing here writes to LXD or reads the store.

pub mod decide;
pub mod files;
pub mod health;
pub mod http;
pub mod kubernetes;
pub mod metrics;
pub mod process;
pub mod report;

pub use decide::{ERROR_PREFIX, Outcome, decide, spec_hash};
pub use health::Health;
pub use report::Reporter;

use std::sync::Arc;

use crate::resource::{ResourceKey, Status, Workload};

/// Where statuses are kept: files under the state directory, or the status subresource
/// of the Kubernetes objects. A store persists what it is given, and only when it differs
/// from what it holds; it decides nothing.
pub trait StatusStore: Send + Sync {
    /// Calls `f` once with the status stored for `key` (what `decide` starts from), lent
    /// under the store's lock: a status is a dozen allocations, and every reconcile
    /// reads one.
    fn with_status(&self, key: &ResourceKey, f: &mut dyn FnMut(Option<&Status>));
    /// A copy of the status stored for `key`.
    fn get(&self, key: &ResourceKey) -> Option<Status> {
        let mut copy = None;
        self.with_status(key, &mut |s| copy = s.cloned());
        copy
    }
    /// Stores `status` unless it equals the one stored. `workload` is the resource it
    /// describes (`None`: an object that does not load), for stores that keep whole
    /// objects. Returns whether it stored. The status is shared: a store that keeps it
    /// keeps the `Arc`, not a copy (a dozen allocations per status).
    fn write(
        &self,
        key: &ResourceKey,
        workload: Option<&Workload>,
        status: &Arc<Status>,
    ) -> std::io::Result<bool>;
    /// The resource is no longer managed.
    fn remove(&self, key: &ResourceKey);
    /// Makes what `write` stored durable and visible where it is not yet (the files: one
    /// device flush for a batch of writes, not one per write).
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// The source saw the object as its store holds it (uid, version, status): for
    /// stores that keep statuses on the objects themselves.
    fn stored(
        &self,
        _key: &ResourceKey,
        _uid: Option<String>,
        _version: Option<String>,
        _status: Option<Status>,
    ) {
    }
    /// The object does not load (`generation`, the problems): for stores that can tell
    /// a user beside the status (a Kubernetes Event).
    fn tell_invalid(&self, _key: &ResourceKey, _generation: Option<u64>, _message: &str) {}
    /// The object loads again.
    fn tell_valid(&self, _key: &ResourceKey) {}
}

impl<T: StatusStore + ?Sized> StatusStore for Arc<T> {
    fn with_status(&self, key: &ResourceKey, f: &mut dyn FnMut(Option<&Status>)) {
        (**self).with_status(key, f)
    }
    fn write(
        &self,
        key: &ResourceKey,
        workload: Option<&Workload>,
        status: &Arc<Status>,
    ) -> std::io::Result<bool> {
        (**self).write(key, workload, status)
    }
    fn remove(&self, key: &ResourceKey) {
        (**self).remove(key)
    }
    fn sync(&self) -> std::io::Result<()> {
        (**self).sync()
    }
    fn stored(
        &self,
        key: &ResourceKey,
        uid: Option<String>,
        version: Option<String>,
        status: Option<Status>,
    ) {
        (**self).stored(key, uid, version, status)
    }
    fn tell_invalid(&self, key: &ResourceKey, generation: Option<u64>, message: &str) {
        (**self).tell_invalid(key, generation, message)
    }
    fn tell_valid(&self, key: &ResourceKey) {
        (**self).tell_valid(key)
    }
}

/// The current time as RFC 3339, to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
