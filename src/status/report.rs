//! The status stage: every outcome, from a reconcile or from a source's object that does
//! not load, goes through `Reporter`, which decides the status (`decide`), counts drift and
//! phases in the metrics, and hands the status to the store that persists it.
//!
//! It remembers which resources count as drifted (a drift being corrected is still one);
//! nothing reads that back from the metrics.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};

use crate::resource::{Kind, Phase, ResourceKey, Status, Workload};

use super::decide::{Outcome, decide, spec_hash};
use super::metrics::{DriftKind, ErrorKind, Metrics};
use super::{StatusStore, now};

pub struct Reporter {
    store: Arc<dyn StatusStore>,
    metrics: Arc<Metrics>,
    drifted: Mutex<HashSet<ResourceKey>>,
    /// Statuses the store refused (a full disk), written again at the next write that
    /// succeeds; and whether the store is failing now (logged once per episode).
    unwritten: Mutex<HashMap<ResourceKey, (serde_json::Value, Status)>>,
    failing: AtomicBool,
}

impl Reporter {
    pub fn new(store: Arc<dyn StatusStore>, metrics: Arc<Metrics>) -> Arc<Reporter> {
        Arc::new(Reporter {
            store,
            metrics,
            drifted: Mutex::new(HashSet::new()),
            unwritten: Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
        })
    }

    /// The status last decided for `key`.
    pub fn last(&self, key: &ResourceKey) -> Option<Status> {
        self.store.get(key)
    }

    /// Where statuses are kept (for a source that reports what its objects hold).
    pub fn store(&self) -> &Arc<dyn StatusStore> {
        &self.store
    }

    fn was_drifted(&self, key: &ResourceKey) -> bool {
        self.drifted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    fn set_drifted(&self, key: &ResourceKey, drifted: bool) {
        let mut d = self.drifted.lock().unwrap_or_else(PoisonError::into_inner);
        if drifted {
            d.insert(key.clone());
        } else {
            d.remove(key);
        }
    }

    /// Decides and persists the status of `workload` after `outcome`; its phase.
    pub fn report(&self, key: &ResourceKey, workload: &Workload, outcome: &Outcome) -> Phase {
        self.count_drift(key.kind, outcome);
        let generation = workload
            .metadata
            .generation
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or_else(|| spec_hash(&workload.spec));
        let decided = decide(
            self.last(key).as_ref(),
            outcome,
            generation,
            self.was_drifted(key),
            &now(),
        );
        let phase = decided.status.phase;
        self.set_drifted(key, decided.drifted);
        self.metrics.set_state(key, phase, decided.drifted);
        // Plain data with string keys: serializing cannot fail.
        let mut obj = serde_json::to_value(workload).unwrap_or_default();
        obj["kind"] = serde_json::Value::String(key.kind.as_str().into());
        obj["status"] = serde_json::to_value(&decided.status).unwrap_or_default();
        self.persist(key, &obj, &decided.status);
        phase
    }

    /// A source's object that does not load: the store is told (once per generation it
    /// may tell the user), and a Machine or Container with no good version to keep
    /// managing goes to Error with the reason. One that has a good version keeps it, as a
    /// file that stops parsing does, and its status keeps describing that version.
    pub fn invalid(
        &self,
        key: &ResourceKey,
        generation: Option<u64>,
        message: &str,
        has_good_version: bool,
    ) {
        self.store.tell_invalid(key, generation, message);
        if key.kind == Kind::Application || has_good_version {
            return;
        }
        let decided = decide(
            self.last(key).as_ref(),
            &Outcome::InvalidSpec(message.to_string()),
            generation.unwrap_or(0),
            self.was_drifted(key),
            &now(),
        );
        self.persist(key, &serde_json::Value::Null, &decided.status);
    }

    /// The object loads again.
    pub fn valid(&self, key: &ResourceKey) {
        self.store.tell_valid(key);
    }

    /// The resource is no longer managed: its status and series go.
    pub fn forget(&self, key: &ResourceKey) {
        if key.kind == Kind::Application {
            return;
        }
        self.store.remove(key);
        self.metrics.forget(key);
        self.set_drifted(key, false);
        self.lock_unwritten().remove(key);
    }

    /// Hands a status to the store. A refusal is counted each time, logged once while the
    /// store keeps failing, and the status is kept to be written again after the next
    /// write that succeeds (LXD keeps being reconciled meanwhile).
    fn persist(&self, key: &ResourceKey, object: &serde_json::Value, status: &Status) {
        match self.store.write(key, object, status) {
            // Unchanged: nothing was written, so it says nothing about the store.
            Ok(false) => {
                self.lock_unwritten().remove(key);
            }
            Ok(true) => {
                self.lock_unwritten().remove(key);
                if self.failing.swap(false, Ordering::SeqCst) {
                    info!("statuses can be written again");
                }
                self.flush_unwritten();
            }
            Err(e) => {
                self.metrics.error(key.kind, ErrorKind::status_write);
                if !self.failing.swap(true, Ordering::SeqCst) {
                    warn!(resource = %key, error = %e, "cannot write status (kept, and written again once the store accepts writes)");
                }
                self.lock_unwritten()
                    .insert(key.clone(), (object.clone(), status.clone()));
            }
        }
    }

    fn lock_unwritten(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ResourceKey, (serde_json::Value, Status)>> {
        self.unwritten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what was refused earlier; stops at the first refusal.
    fn flush_unwritten(&self) {
        let pending: Vec<(ResourceKey, (serde_json::Value, Status))> =
            self.lock_unwritten().drain().collect();
        let mut rest = pending.into_iter();
        for (key, (object, status)) in rest.by_ref() {
            if self.store.write(&key, &object, &status).is_err() {
                self.failing.store(true, Ordering::SeqCst);
                self.lock_unwritten().insert(key, (object, status));
                break;
            }
        }
        self.lock_unwritten().extend(rest);
    }

    /// Statuses refused by the store and not written yet.
    pub fn unwritten(&self) -> usize {
        self.lock_unwritten().len()
    }

    /// Drift counters: a list drift when it is found and when the write that corrects
    /// it succeeds; a content drift once per rewrite, however many instances use the
    /// profile; in `--dry-run`, once per distinct drift.
    fn count_drift(&self, kind: Kind, outcome: &Outcome) {
        let m = &self.metrics;
        match outcome {
            Outcome::Applying {
                list_drift: Some(_),
                ..
            } => m.drift_detected(kind, DriftKind::profiles),
            Outcome::Applied {
                rewritten,
                list_drift_corrected,
                ..
            } => {
                for _ in rewritten {
                    m.drift_detected(kind, DriftKind::content);
                    m.drift_corrected(kind, DriftKind::content);
                }
                if *list_drift_corrected {
                    m.drift_corrected(kind, DriftKind::profiles);
                }
            }
            Outcome::Drifted {
                new: true,
                list_drift,
                content_drift,
                ..
            } => {
                if *list_drift {
                    m.drift_detected(kind, DriftKind::profiles);
                }
                if *content_drift {
                    m.drift_detected(kind, DriftKind::content);
                }
            }
            _ => {}
        }
    }
}
