//! The status stage: every outcome, from a reconcile or from a source's object that does
//! not load, goes through `Reporter`, which decides the status (`decide`), counts drift and
//! phases in the metrics, and hands the status to the store that persists it.
//!
//! It remembers which resources count as drifted (a drift being corrected is still one);
//! nothing reads that back from the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::hash::{HashMap, HashSet};
use crate::resource::{Kind, Phase, ResourceKey, Status, Workload};

use super::decide::{Outcome, decide, spec_hash};
use super::metrics::{DriftKind, ErrorKind, Metrics};
use super::{StatusStore, now};

/// How long a refused status waits before the writer tries the store again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The writer gathers statuses into one batch while they keep coming: it stores them
/// once `QUIET` has passed without a new one, or `GATHER` after the first. A status
/// superseded meanwhile (Applying, then Applied a PATCH later) is never written, and a
/// batch costs one device flush (`StatusFiles::sync`, a `syncfs` that also writes out
/// whatever else the filesystem holds dirty): an upgrade of 200 instances in 4 s is 4
/// or 5 batches, not 20. A flush or the end does not wait for either.
const QUIET: Duration = Duration::from_millis(100);
const GATHER: Duration = Duration::from_secs(1);
/// A batch this large is stored without waiting for the quiet: a fleet-wide pass
/// decides tens of thousands of statuses a second, and each pending one is held in
/// memory until it is stored.
const BATCH: usize = 2048;

pub struct Reporter {
    writer: Arc<Writer>,
    metrics: Arc<Metrics>,
    drifted: Mutex<HashSet<ResourceKey>>,
}

/// Statuses decided and not yet stored, and the thread that stores them: off the
/// reconcile path, and coalesced (a status that a newer one of the same key supersedes
/// before it is stored, such as Idle while applying, is never written).
struct Writer {
    store: Arc<dyn StatusStore>,
    metrics: Arc<Metrics>,
    pending: Mutex<Pending>,
    /// Signalled when a status is added, when the writer stored a batch, and on close.
    changed: Condvar,
    /// One store operation at a time: a removal never races a write of the same key.
    io: Mutex<()>,
    /// Whether the store refuses writes now (logged once per episode).
    failing: AtomicBool,
}

#[derive(Default)]
struct Pending {
    statuses: HashMap<ResourceKey, Decided>,
    next: u64,
    closed: bool,
    /// Flushes waiting: the writer stores at once, without gathering.
    hurry: usize,
}

/// A status decided for a key and not yet stored: its sequence number, the resource it
/// describes (`None`: an object that does not load), and the status. Cloned into the
/// writer's batch by sharing: a status is a dozen allocations, and copying and freeing
/// them took half the writer's CPU in the full loop.
#[derive(Clone)]
struct Decided {
    seq: u64,
    workload: Option<Arc<Workload>>,
    status: Arc<Status>,
}

impl Reporter {
    pub fn new(store: Arc<dyn StatusStore>, metrics: Arc<Metrics>) -> Arc<Reporter> {
        let writer = Arc::new(Writer {
            store,
            metrics: metrics.clone(),
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
            io: Mutex::new(()),
            failing: AtomicBool::new(false),
        });
        let thread = writer.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("status-writer".into())
            .spawn(move || thread.run())
        {
            // Without the thread, statuses are stored at the next flush.
            warn!(error = %e, "cannot start the status writer thread");
        }
        Arc::new(Reporter {
            writer,
            metrics,
            drifted: Mutex::new(HashSet::default()),
        })
    }

    /// The status last decided for `key` (stored or still on its way).
    pub fn last(&self, key: &ResourceKey) -> Option<Status> {
        self.with_last(key, |s| s.cloned())
    }

    /// `f` of the status last decided for `key`, lent rather than copied (a status is a
    /// dozen allocations).
    pub fn with_last<R>(&self, key: &ResourceKey, f: impl FnOnce(Option<&Status>) -> R) -> R {
        {
            let pending = self.writer.lock();
            if let Some(d) = pending.statuses.get(key) {
                return f(Some(&d.status));
            }
        }
        let mut f = Some(f);
        let mut out = None;
        self.writer.store.with_status(key, &mut |s| {
            if let Some(f) = f.take() {
                out = Some(f(s));
            }
        });
        match (out, f) {
            (Some(r), _) => r,
            // A store that did not call back: as if it held nothing.
            (None, Some(f)) => f(None),
            (None, None) => unreachable!("f was taken, so out was set"),
        }
    }

    /// Where statuses are kept (for a source that reports what its objects hold).
    pub fn store(&self) -> &Arc<dyn StatusStore> {
        &self.writer.store
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

    /// Decides the status of `workload` after `outcome` and hands it to the writer; its
    /// phase. The object the store keeps is made by the writer, off the reconcile path.
    pub fn report(&self, key: &ResourceKey, workload: &Arc<Workload>, outcome: &Outcome) -> Phase {
        self.count_drift(key.kind, outcome);
        let generation = workload
            .metadata
            .generation
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or_else(|| spec_hash(&workload.spec));
        let (was_drifted, now) = (self.was_drifted(key), now());
        let (decided, unchanged) = self.with_last(key, |last| {
            let decided = decide(last, outcome, generation, was_drifted, &now);
            let unchanged = last == Some(&decided.status);
            (decided, unchanged)
        });
        let phase = decided.status.phase;
        self.set_drifted(key, decided.drifted);
        self.metrics.set_state(key, phase, decided.drifted);
        if unchanged {
            return phase;
        }
        self.writer
            .push(key, Some(workload.clone()), decided.status);
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
        self.writer.store.tell_invalid(key, generation, message);
        if key.kind == Kind::Application || has_good_version {
            return;
        }
        let (was_drifted, now) = (self.was_drifted(key), now());
        let outcome = Outcome::InvalidSpec(message.to_string());
        let (decided, unchanged) = self.with_last(key, |last| {
            let decided = decide(last, &outcome, generation.unwrap_or(0), was_drifted, &now);
            let unchanged = last == Some(&decided.status);
            (decided, unchanged)
        });
        if !unchanged {
            self.writer.push(key, None, decided.status);
        }
    }

    /// The object loads again.
    pub fn valid(&self, key: &ResourceKey) {
        self.writer.store.tell_valid(key);
    }

    /// The resource is no longer managed: its status and series go.
    pub fn forget(&self, key: &ResourceKey) {
        if key.kind == Kind::Application {
            return;
        }
        self.writer.remove(key);
        self.metrics.forget(key);
        self.set_drifted(key, false);
    }

    /// Statuses decided and not stored yet (refused by a full disk, or on their way).
    pub fn unwritten(&self) -> usize {
        self.writer.lock().statuses.len()
    }

    /// Waits until every status decided so far is stored, `deadline` at most (a store
    /// that refuses writes ends the wait early); whether all were.
    pub fn flush(&self, deadline: Duration) -> bool {
        self.writer.lock().hurry += 1;
        self.writer.changed.notify_all();
        let stored = self.wait_stored(deadline);
        self.writer.lock().hurry -= 1;
        // What the writer stored, durable (the directories' entries included).
        stored && self.writer.store.sync().is_ok()
    }

    fn wait_stored(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let mut pending = self.writer.lock();
        loop {
            if pending.statuses.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            if self.writer.failing.load(Ordering::SeqCst) {
                // The store refuses writes: one more try is all a flush waits for.
                drop(pending);
                return self.writer.write_pending() && self.writer.lock().statuses.is_empty();
            }
            pending = self
                .writer
                .changed
                .wait_timeout(pending, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
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

impl Drop for Reporter {
    fn drop(&mut self) {
        self.writer.lock().closed = true;
        self.writer.changed.notify_all();
    }
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, key: &ResourceKey, workload: Option<Arc<Workload>>, status: Status) {
        let mut p = self.lock();
        p.next += 1;
        let seq = p.next;
        let idle = p.statuses.is_empty();
        let decided = Decided {
            seq,
            workload,
            status: Arc::new(status),
        };
        p.statuses.insert(key.clone(), decided);
        drop(p);
        // Only an idle writer waits for a status; one gathering a batch looks for
        // more every `QUIET` (a wake per status cost a context switch each).
        if idle {
            self.changed.notify_all();
        }
    }

    fn remove(&self, key: &ResourceKey) {
        let _io = self.io.lock().unwrap_or_else(PoisonError::into_inner);
        self.lock().statuses.remove(key);
        self.store.remove(key);
    }

    /// Until the reporter goes: waits for statuses and stores them; after a refusal,
    /// tries again every `RETRY_AFTER`.
    fn run(&self) {
        loop {
            {
                let mut p = self.lock();
                // A store that failed is tried again (its sync) even with nothing pending.
                while p.statuses.is_empty() && !p.closed && !self.failing.load(Ordering::SeqCst) {
                    p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                if p.statuses.is_empty() && p.closed {
                    return;
                }
                // Pushes during the gathering do not wake the writer (a wake per status
                // cost a context switch each): it looks every `QUIET` whether any came.
                let until = Instant::now() + GATHER;
                let mut seen = p.next;
                while !p.closed && p.hurry == 0 {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    p = self
                        .changed
                        .wait_timeout(p, QUIET.min(until - now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if p.next == seen || p.statuses.len() >= BATCH {
                        break;
                    }
                    seen = p.next;
                }
            }
            if !self.write_pending() {
                let p = self.lock();
                if p.closed {
                    return;
                }
                drop(
                    self.changed
                        .wait_timeout(p, RETRY_AFTER)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
    }

    /// Stores every pending status; whether the store took them all. A refusal is
    /// counted each time and logged once while the store keeps failing; the status stays
    /// pending (LXD keeps being reconciled meanwhile).
    fn write_pending(&self) -> bool {
        let batch: Vec<(ResourceKey, Decided)> = self
            .lock()
            .statuses
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        let mut all = true;
        for (key, d) in batch {
            let _io = self.io.lock().unwrap_or_else(PoisonError::into_inner);
            // Forgotten meanwhile, or superseded (the next batch has the newer one).
            if self.lock().statuses.get(&key).map(|p| p.seq) != Some(d.seq) {
                continue;
            }
            match self.store.write(&key, d.workload.as_deref(), &d.status) {
                Ok(_) => {
                    let mut p = self.lock();
                    if p.statuses.get(&key).is_some_and(|p| p.seq == d.seq) {
                        p.statuses.remove(&key);
                    }
                }
                Err(e) => {
                    self.metrics.error(key.kind, ErrorKind::status_write);
                    if !self.failing.swap(true, Ordering::SeqCst) {
                        warn!(resource = %key, error = %e, "cannot write status (kept, and written again once the store accepts writes)");
                    }
                    all = false;
                    break;
                }
            }
        }
        // What was written becomes durable and visible; what the store could not sync it
        // keeps, and the writer tries again after `RETRY_AFTER`.
        if let Err(e) = self.store.sync() {
            if !self.failing.swap(true, Ordering::SeqCst) {
                warn!(error = %e, "cannot sync the status files (tried again every second)");
            }
            all = false;
        } else if all && self.failing.swap(false, Ordering::SeqCst) {
            info!("statuses can be written again");
        }
        self.changed.notify_all();
        all
    }
}
