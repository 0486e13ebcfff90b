//! The work queue between the store and the reconcilers, with client-go's semantics.
//!
//! This module owns *when* a key is handed to a worker: deduplication of waiting keys, the
//! rule that one key is never processed by two workers at once, delayed requeues, and the
//! per-key failure count with its exponential backoff ([`BackoffConfig`]). It also owns the
//! `workqueue_*` metrics ([`QueueMetrics`]). It knows nothing of what a key means: it does not
//! read the store, call LXD or decide whether a reconcile failed; the caller says so with
//! [`WorkQueue::add_rate_limited`] or [`WorkQueue::forget`].
//!
//! A worker's loop:
//!
//! ```ignore
//! while let Some(key) = queue.get().await {
//!     match reconcile(&key).await {
//!         Ok(()) => queue.forget(&key),
//!         Err(_) => queue.add_rate_limited(key.clone()),
//!     }
//!     queue.done(&key);
//! }
//! ```
//!
//! Delayed keys need no background task: a waiting [`WorkQueue::get`] sleeps until the
//! earliest deadline, and every call that looks at the queue first moves due keys to the
//! ready list. Time is `tokio::time::Instant`, so tests drive it with tokio's paused clock.

mod metrics;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hash::{HashMap, HashSet};

pub use crate::backoff::{BackoffConfig, JITTER};
pub use metrics::QueueMetrics;

use metrics::{QueueHandles, QueueProbe, QueueSample};

/// A deadline far enough away to mean "not in this process's lifetime", used when
/// `now + delay` does not fit in an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A queue of keys to reconcile. Cheap to clone: clones share one queue.
///
/// Guarantees, for any number of workers calling [`get`](Self::get) concurrently:
/// - a key waiting in the queue is not queued twice;
/// - a key handed out by `get` is not handed out again until [`done`](Self::done); if it was
///   added meanwhile, `done` queues it (once);
/// - ready keys come out in the order they became ready;
/// - a key has at most one pending delayed add, the earliest; a plain
///   [`add`](Self::add) makes it ready now and drops the delayed add.
pub struct WorkQueue<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

struct Shared<K> {
    name: String,
    backoff: BackoffConfig,
    state: Mutex<State<K>>,
    /// Woken on every change a waiting `get` may care about: a key became ready, a new
    /// earliest deadline, shutdown.
    changed: Notify,
    metrics: OnceLock<QueueHandles>,
}

struct State<K> {
    /// Ready keys, in the order they became ready.
    ready: VecDeque<K>,
    /// Keys that need processing: those in `ready`, and those added while being processed
    /// (queued again by `done`). A key here is never added twice.
    dirty: HashSet<K>,
    /// Keys handed out by `get` and not yet `done`, with when processing began.
    processing: HashMap<K, Instant>,
    /// When each dirty key was added, for `workqueue_queue_duration_seconds`.
    added_at: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    /// Pending delayed adds: one per key, ordered by deadline (then by arrival).
    delayed: BTreeMap<(Instant, u64), K>,
    delayed_by_key: HashMap<K, (Instant, u64)>,
    next_seq: u64,
    rng: fastrand::Rng,
    shutting_down: bool,
}

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    /// An empty queue; `name` labels its metrics and log lines.
    pub fn new(name: &str, backoff: BackoffConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                backoff,
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    dirty: HashSet::default(),
                    processing: HashMap::default(),
                    added_at: HashMap::default(),
                    failures: HashMap::default(),
                    delayed: BTreeMap::new(),
                    delayed_by_key: HashMap::default(),
                    next_seq: 0,
                    rng: fastrand::Rng::new(),
                    shutting_down: false,
                }),
                changed: Notify::new(),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Reports this queue in `metrics` under its name. Only the first call has an effect.
    pub fn with_metrics(self, metrics: QueueMetrics) -> Self {
        let probe: Weak<dyn QueueProbe> = Arc::downgrade(&self.shared) as Weak<dyn QueueProbe>;
        if self.shared.metrics.get().is_none() {
            let handles = metrics.for_queue(&self.shared.name, probe);
            // A lost race with another first call leaves that call's handles: same series.
            let _ = self.shared.metrics.set(handles);
        }
        self
    }

    /// Seeds the jitter of [`add_rate_limited`](Self::add_rate_limited), so a test can
    /// predict each delay with [`BackoffConfig::delay`] and a `fastrand::Rng` of the same seed.
    pub fn with_jitter_seed(self, seed: u64) -> Self {
        self.shared.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// Queues `key` now. A key already waiting stays where it is; a key being processed is
    /// held back and queued by [`done`](Self::done). Ignored after shutdown.
    pub fn add(&self, key: K) {
        let woke = {
            let mut state = self.shared.lock();
            let now = Instant::now();
            let promoted = self.shared.promote_due(&mut state, now);
            self.shared.add_locked(&mut state, key, now) || promoted
        };
        if woke {
            self.shared.changed.notify_waiters();
        }
    }

    /// Queues `key` once `delay` has passed. If the key already has a pending delayed add,
    /// the earlier deadline wins; if it is already waiting to be processed, this does
    /// nothing. Ignored after shutdown.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        {
            let mut state = self.shared.lock();
            let now = Instant::now();
            self.shared.promote_due(&mut state, now);
            // A delay past what an `Instant` can hold means "not in this process's lifetime".
            match now
                .checked_add(delay)
                .or_else(|| now.checked_add(FAR_FUTURE))
            {
                Some(deadline) => Shared::add_after_locked(&mut state, key, deadline),
                None => return,
            }
        }
        // A waiting `get` may be sleeping towards a later deadline.
        self.shared.changed.notify_waiters();
    }

    /// Records a failed attempt on `key` and queues it after the backoff for that many
    /// failures: 500 ms, 1 s, 2 s, ... up to the cap (with the defaults), plus jitter.
    ///
    /// If the key is already waiting (it was added while being processed), it is retried
    /// as soon as it is done rather than after the backoff; the failure still counts.
    pub fn add_rate_limited(&self, key: K) {
        let delay = {
            let mut state = self.shared.lock();
            if state.shutting_down {
                return;
            }
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            let failures = *failures;
            let delay = self.shared.backoff.delay(failures, &mut state.rng);
            tracing::debug!(
                queue = %self.shared.name,
                ?key,
                failures,
                delay_ms = delay.as_millis(),
                "requeue with backoff"
            );
            delay
        };
        if let Some(metrics) = self.shared.metrics.get() {
            metrics.retries.inc();
        }
        self.add_after(key, delay);
    }

    /// Records a success on `key`: its next failure waits the base delay again.
    pub fn forget(&self, key: &K) {
        self.shared.lock().failures.remove(key);
    }

    /// Failed attempts on `key` since it was last forgotten.
    pub fn failures(&self, key: &K) -> u32 {
        self.shared.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for a ready key and marks it as being processed; the caller must call
    /// [`done`](Self::done) with it.
    ///
    /// Returns `None` as soon as the queue is shut down, even if keys are still ready or
    /// delayed: a shutdown does not wait for the backlog. Cancel-safe: dropping the future
    /// takes nothing from the queue.
    pub async fn get(&self) -> Option<K> {
        loop {
            // Registered before the state is read, so no wake-up between the read and the
            // wait is lost.
            let mut changed = pin!(self.shared.changed.notified());
            changed.as_mut().enable();
            let next_deadline = {
                let mut state = self.shared.lock();
                if state.shutting_down {
                    return None;
                }
                let now = Instant::now();
                self.shared.promote_due(&mut state, now);
                if let Some(key) = self.shared.take_ready(&mut state, now) {
                    return Some(key);
                }
                state.delayed.keys().next().map(|&(deadline, _)| deadline)
            };
            match next_deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Marks `key` as processed. If it was added while being processed, it is queued now.
    pub fn done(&self, key: &K) {
        let requeued = {
            let mut state = self.shared.lock();
            let now = Instant::now();
            let started = state.processing.remove(key);
            if let (Some(metrics), Some(started)) = (self.shared.metrics.get(), started) {
                metrics
                    .work_duration
                    .observe(now.saturating_duration_since(started).as_secs_f64());
            }
            // Only a key that was held back is queued here: a `done` for a key that was
            // never handed out must not queue a second copy of a waiting key.
            let requeue = started.is_some() && !state.shutting_down && state.dirty.contains(key);
            if requeue {
                state.ready.push_back(key.clone());
            }
            self.shared.promote_due(&mut state, now) || requeue
        };
        if requeued {
            self.shared.changed.notify_waiters();
        }
    }

    /// Stops the queue: every waiting and later [`get`](Self::get) returns `None`, and adds
    /// are ignored. Keys being processed may still be marked [`done`](Self::done).
    pub fn shutdown(&self) {
        self.shared.lock().shutting_down = true;
        self.shared.changed.notify_waiters();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.lock().shutting_down
    }

    /// Ready keys waiting for a worker (the depth), counting delayed keys now due.
    pub fn len(&self) -> usize {
        let (len, promoted) = {
            let mut state = self.shared.lock();
            let promoted = self.shared.promote_due(&mut state, Instant::now());
            (state.ready.len(), promoted)
        };
        if promoted {
            self.shared.changed.notify_waiters();
        }
        len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys handed out by [`get`](Self::get) and not yet [`done`](Self::done).
    pub fn processing(&self) -> usize {
        self.shared.lock().processing.len()
    }

    /// How long the oldest key being processed has been held (zero when none is).
    pub fn longest_processing(&self) -> Duration {
        let now = Instant::now();
        self.shared
            .lock()
            .processing
            .values()
            .map(|started| now.saturating_duration_since(*started))
            .max()
            .unwrap_or_default()
    }
}

impl<K> Shared<K>
where
    K: Clone + Eq + Hash + fmt::Debug,
{
    /// A panic while the lock was held cannot leave the sets half-updated in a way that
    /// breaks the guarantees worse than losing the queue would, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns whether `key` became ready (a waiting `get` should wake).
    fn add_locked(&self, state: &mut State<K>, key: K, now: Instant) -> bool {
        if state.shutting_down {
            return false;
        }
        // Ready now is earlier than any pending deadline.
        if let Some(slot) = state.delayed_by_key.remove(&key) {
            state.delayed.remove(&slot);
        }
        if !state.dirty.insert(key.clone()) {
            return false;
        }
        state.added_at.insert(key.clone(), now);
        if let Some(metrics) = self.metrics.get() {
            metrics.adds.inc();
        }
        if state.processing.contains_key(&key) {
            // Held back: `done` queues it, so no second worker sees it meanwhile.
            return false;
        }
        state.ready.push_back(key);
        true
    }

    fn add_after_locked(state: &mut State<K>, key: K, deadline: Instant) {
        if state.shutting_down || state.dirty.contains(&key) {
            return;
        }
        if let Some(&slot) = state.delayed_by_key.get(&key) {
            if slot.0 <= deadline {
                return;
            }
            state.delayed.remove(&slot);
        }
        let slot = (deadline, state.next_seq);
        state.next_seq = state.next_seq.wrapping_add(1);
        state.delayed.insert(slot, key.clone());
        state.delayed_by_key.insert(key, slot);
    }

    /// Moves delayed keys whose deadline has passed to the ready list, earliest first.
    /// Returns whether any became ready.
    fn promote_due(&self, state: &mut State<K>, now: Instant) -> bool {
        let mut any = false;
        while let Some(entry) = state.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            state.delayed_by_key.remove(&key);
            any |= self.add_locked(state, key, now);
        }
        any
    }

    fn take_ready(&self, state: &mut State<K>, now: Instant) -> Option<K> {
        let key = state.ready.pop_front()?;
        state.dirty.remove(&key);
        let added = state.added_at.remove(&key);
        state.processing.insert(key.clone(), now);
        if let (Some(metrics), Some(added)) = (self.metrics.get(), added) {
            metrics
                .queue_duration
                .observe(now.saturating_duration_since(added).as_secs_f64());
        }
        Some(key)
    }
}

impl<K> QueueProbe for Shared<K>
where
    K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    fn sample(&self) -> QueueSample {
        let (sample, promoted) = {
            let mut state = self.lock();
            let now = Instant::now();
            let promoted = self.promote_due(&mut state, now);
            let ages = state
                .processing
                .values()
                .map(|started| now.saturating_duration_since(*started).as_secs_f64());
            let (unfinished, longest) = ages.fold((0.0, 0.0), |(sum, max): (f64, f64), age| {
                (sum + age, max.max(age))
            });
            let sample = QueueSample {
                name: self.name.clone(),
                depth: i64::try_from(state.ready.len()).unwrap_or(i64::MAX),
                unfinished_work_seconds: unfinished,
                longest_running_processor_seconds: longest,
            };
            (sample, promoted)
        };
        if promoted {
            self.changed.notify_waiters();
        }
        sample
    }
}

#[cfg(test)]
mod tests;
