//! Test doubles and fixtures shared by unit tests (compiled only with cfg(test)): the
//! in-memory LXD (`MemLxd`), an in-memory status store, and a small model's resources.

#[cfg(test)]
mod full_loop;
pub mod lxd;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

pub use lxd::MemLxd;

use crate::lxd::ProfileContent;
use crate::pipeline::Pipeline;
use crate::reconcile::Options;
use crate::resource::{ProfileNames, Resource, ResourceKey, Status, Workload, parse_str};
use crate::status::StatusStore;
use crate::status::metrics::Telemetry;
use crate::store::{OWNER_KEY, OWNER_VALUE};

/// Statuses kept in memory; counts the writes it was asked for and the ones it made.
#[derive(Default)]
pub struct MemStatus {
    statuses: Mutex<HashMap<ResourceKey, Arc<Status>>>,
    pub written: std::sync::atomic::AtomicUsize,
    /// Refuse every write, as a full disk does.
    pub full: std::sync::atomic::AtomicBool,
}

impl StatusStore for MemStatus {
    fn with_status(&self, key: &ResourceKey, f: &mut dyn FnMut(Option<&Status>)) {
        f(self
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|s| &**s))
    }
    fn write(
        &self,
        key: &ResourceKey,
        _workload: Option<&Workload>,
        status: &Arc<Status>,
    ) -> std::io::Result<bool> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("No space left on device"));
        }
        let mut s = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        if s.get(key) == Some(status) {
            return Ok(false);
        }
        s.insert(key.clone(), status.clone());
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(true)
    }
    fn remove(&self, key: &ResourceKey) {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// The model of the fixtures.
pub const MODEL: &str = "m";

/// An Application of model `m` whose profile sets `security.nesting`.
pub fn app(name: &str, revision: u64) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: {name}, namespace: {MODEL}}}\nspec: {{revision: {revision}, lxdProfile: {{config: {{security.nesting: \"true\"}}}}}}\n---\n"
    )
}

/// A Machine of model `m`.
pub fn machine(name: &str, instance: &str, apps: &[&str]) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: \"{name}\", namespace: {MODEL}}}\nspec: {{instance: {instance}, applications: [{}]}}\n---\n",
        apps.join(", ")
    )
}

/// The resources of some YAML text; panics on a problem (a fixture is wrong).
pub fn resources(yaml: &str) -> Vec<Resource> {
    let parsed = parse_str("fixture.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed.resources.into_iter().map(|l| l.resource).collect()
}

/// The content the fixtures' applications expect, with the owner key when `owned`.
pub fn nesting(owned: bool) -> ProfileContent {
    let mut c = ProfileContent::default();
    c.config.insert("security.nesting".into(), "true".into());
    if owned {
        c.config.insert(OWNER_KEY.into(), OWNER_VALUE.into());
    }
    c
}

/// A profile as LXD lists it: the fixtures' content, used by `used_by` (instance names).
pub fn lxd_profile(name: &str, owned: bool, used_by: &[&str]) -> crate::lxd::Profile {
    crate::lxd::Profile {
        name: name.into(),
        content: nesting(owned),
        used_by: used_by
            .iter()
            .map(|i| format!("/1.0/instances/{i}?project=p"))
            .collect(),
    }
}

/// A pipeline on `lxd` with statuses in memory.
pub fn pipeline(
    lxd: &MemLxd,
    opts: impl FnOnce(&mut Options),
) -> (Pipeline<MemLxd>, Arc<MemStatus>) {
    let mut o = Options::new(ProfileNames::default());
    opts(&mut o);
    let status = Arc::new(MemStatus::default());
    let p = Pipeline::new(lxd.clone(), status.clone(), o, &Telemetry::new());
    (p, status)
}
