//! The controller: the work queue, the workers, the resync, the file source and the
//! status writes, wired together. Each reconcile is level-triggered: it reads the whole
//! desired state of its key and the cached observed state, plans, applies, and says so.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::lxd::{LxdApi, LxdError};
use crate::queue::{BackoffConfig, WorkQueue};
use crate::reconcile::apply::apply;
use crate::reconcile::{Decision, Plan, Step, plan};
use crate::resource::{Application, Kind, Phase, ProfileNames, Resource, ResourceKey, Workload};
use crate::status::files::StatusFiles;
use crate::status::{self, ERROR_PREFIX, Outcome};
use crate::store::{Desired, Observed};

/// What the queue holds: a resource to reconcile, or the clean-up of unused profiles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkKey {
    Resource(ResourceKey),
    /// Delete owned charm profiles that nothing expects and LXD reports unused.
    Collect,
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Container flavour only, for the containers of this host machine.
    pub machine: Option<String>,
    pub workers: usize,
    pub resync: Duration,
    pub dry_run: bool,
    pub backoff: BackoffConfig,
    pub names: ProfileNames,
}

/// Why a reconcile did not succeed, for the queue and for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// LXD refused or failed: retried with backoff.
    #[error(transparent)]
    Lxd(#[from] LxdError),
    /// The instance is not in LXD: retried with backoff.
    #[error("instance {0:?} not found")]
    MissingInstance(String),
}

/// The controller's state, shared by its tasks.
pub struct Controller<L: LxdApi> {
    pub lxd: L,
    pub desired: RwLock<Desired>,
    pub observed: RwLock<Observed>,
    pub queue: WorkQueue<WorkKey>,
    pub status: StatusFiles,
    pub opts: Options,
    desired_loaded: AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The result of one reconcile, for `--once` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciled {
    pub phase: Phase,
    pub message: String,
}

impl<L: LxdApi> Controller<L> {
    pub fn new(lxd: L, status: StatusFiles, opts: Options) -> Arc<Self> {
        let queue = WorkQueue::new("lxd_mutater", opts.backoff);
        Arc::new(Controller {
            lxd,
            desired: RwLock::new(Desired::default()),
            observed: RwLock::new(Observed::default()),
            queue,
            status,
            opts,
            desired_loaded: AtomicBool::new(false),
        })
    }

    /// The flavour that manages a kind here, if any: with `--machine` only the
    /// containers of that host.
    fn manages(&self, key: &ResourceKey, w: &Workload) -> bool {
        match (&self.opts.machine, key.kind) {
            (None, Kind::Machine | Kind::Container) => true,
            (Some(host), Kind::Container) => w.spec.machine.as_deref() == Some(host.as_str()),
            _ => false,
        }
    }

    /// Replaces the desired state with a full snapshot from the source; enqueues what
    /// changed and forgets what went away.
    pub fn load_snapshot(&self, resources: Vec<Resource>) {
        let mut changed = Vec::new();
        {
            let mut d = write(&self.desired);
            let keep: HashSet<ResourceKey> = resources.iter().map(Resource::key).collect();
            for key in d.keys() {
                if !keep.contains(&key) {
                    changed.extend(d.remove(&key));
                    if key.kind != Kind::Application {
                        self.status.remove(&key);
                    }
                }
            }
            for r in resources {
                changed.extend(d.upsert(r));
            }
        }
        self.desired_loaded.store(true, Ordering::SeqCst);
        for k in changed {
            self.queue.add(WorkKey::Resource(k));
        }
    }

    /// Lists LXD (two requests whatever the fleet's size) and replaces the cache.
    pub async fn relist(&self) -> Result<(), LxdError> {
        let (instances, profiles) =
            tokio::try_join!(self.lxd.list_instances(), self.lxd.list_profiles())?;
        write(&self.observed).replace(instances, profiles);
        Ok(())
    }

    /// Whether desired state and the first full listing are both loaded.
    pub fn is_loaded(&self) -> bool {
        self.desired_loaded.load(Ordering::SeqCst) && read(&self.observed).is_listed()
    }

    /// Enqueues every managed resource and the clean-up.
    pub fn enqueue_all(&self) {
        let keys: Vec<ResourceKey> = read(&self.desired)
            .workloads()
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.queue.add(WorkKey::Resource(k));
        }
        self.queue.add(WorkKey::Collect);
    }

    /// Runs one key. Errors go back to the queue with backoff.
    pub async fn process(&self, key: &WorkKey) -> Result<Option<Reconciled>, ReconcileError> {
        match key {
            WorkKey::Collect => {
                self.collect().await;
                Ok(None)
            }
            WorkKey::Resource(k) => self.reconcile(k).await,
        }
    }

    /// Reconciles one Machine or Container.
    pub async fn reconcile(&self, key: &ResourceKey) -> Result<Option<Reconciled>, ReconcileError> {
        let Some((workload, apps)) = self.snapshot(key) else {
            return Ok(None); // deleted meanwhile: no longer managed
        };
        if !self.manages(key, &workload) {
            return Ok(None);
        }
        let decide = || {
            plan(
                key.kind,
                &workload,
                |n| {
                    apps.iter()
                        .find(|a| a.metadata.name == n)
                        .map(|a| a.as_ref())
                },
                &read(&self.observed),
                &self.opts.names,
            )
        };
        let mut decision = decide();
        if let Decision::UnknownInstance(_) = &decision {
            // The cache may be older than the instance: list LXD again (two requests,
            // whatever the fleet's size) before saying it is missing.
            if let Err(e) = self.relist().await {
                let message = format!("{ERROR_PREFIX}{e}");
                self.set_status(key, &workload, outcome(Phase::Error, &message, None, None));
                return Err(e.into());
            }
            decision = decide();
        }
        let (phase, message, profiles, drift, result) = match decision {
            Decision::Skip(why) => (Phase::Skipped, why, None, None, Ok(())),
            Decision::Pending => (Phase::Pending, String::new(), None, None, Ok(())),
            Decision::Invalid(why) => (
                Phase::Error,
                format!("{ERROR_PREFIX}{why}"),
                None,
                None,
                Ok(()),
            ),
            Decision::UnknownInstance(instance) => {
                let message = format!("{ERROR_PREFIX}instance {instance:?} not found");
                (
                    Phase::Error,
                    message,
                    None,
                    None,
                    Err(ReconcileError::MissingInstance(instance)),
                )
            }
            Decision::Act(p) => return self.act(key, &workload, p).await,
        };
        self.set_status(key, &workload, outcome(phase, &message, profiles, drift));
        result.map(|()| Some(Reconciled { phase, message }))
    }

    async fn act(
        &self,
        key: &ResourceKey,
        w: &Workload,
        p: Plan,
    ) -> Result<Option<Reconciled>, ReconcileError> {
        let prev = self.status.get(key);
        let foreign = (!p.foreign.is_empty()).then(|| {
            format!(
                "{ERROR_PREFIX}profile(s) {} exist without the owner key {} and differ: not rewritten",
                p.foreign.join(", "),
                crate::store::OWNER_KEY
            )
        });
        if p.is_empty() {
            let (phase, message) = match &foreign {
                Some(m) => (Phase::Error, m.clone()),
                None => (Phase::Applied, String::new()),
            };
            self.set_status(
                key,
                w,
                outcome(phase, &message, Some(p.current.clone()), None),
            );
            return Ok(Some(Reconciled { phase, message }));
        }
        // Drift: LXD moved away from what was applied, the desired list unchanged.
        let was_applied = prev.as_ref().is_some_and(|s| {
            matches!(s.phase, Phase::Applied | Phase::Drifted) && s.profiles == p.expected
        });
        let drift = (was_applied || p.rewritten().next().is_some()).then(|| p.describe());
        if self.opts.dry_run {
            let described = p.describe();
            let new_drift = prev
                .as_ref()
                .and_then(|s| s.drift.as_ref())
                .map(|d| d.last.as_str())
                != Some(described.as_str());
            let message = format!("drift: {described}");
            self.set_status(
                key,
                w,
                outcome(
                    Phase::Drifted,
                    &message,
                    Some(p.current.clone()),
                    new_drift.then_some(described),
                ),
            );
            return Ok(Some(Reconciled {
                phase: Phase::Drifted,
                message,
            }));
        }
        self.set_status(
            key,
            w,
            outcome(Phase::Idle, "", Some(p.current.clone()), drift.clone()),
        );
        let started = std::time::Instant::now();
        match apply(&self.lxd, &p, &self.observed).await {
            Ok(applied) => {
                info!(
                    resource = %key,
                    instance = %p.instance,
                    current = ?p.current,
                    expected = ?p.expected,
                    drift = drift.is_some(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "applied"
                );
                let (phase, message) = match foreign {
                    Some(m) => (Phase::Error, m),
                    None => (Phase::Applied, String::new()),
                };
                self.set_status(
                    key,
                    w,
                    outcome(phase, &message, Some(applied.profiles), None),
                );
                if p.steps
                    .iter()
                    .any(|s| matches!(s, Step::SetProfiles { .. }))
                {
                    self.queue.add(WorkKey::Collect);
                }
                Ok(Some(Reconciled { phase, message }))
            }
            Err(e) => {
                let message = format!("{ERROR_PREFIX}{e}");
                warn!(resource = %key, instance = %p.instance, error = %e, "apply failed");
                let now = read(&self.observed)
                    .instance_profiles(&p.instance)
                    .map(<[String]>::to_vec);
                self.set_status(key, w, outcome(Phase::Error, &message, now, None));
                Err(e.cause.into())
            }
        }
    }

    /// The workload and the applications it names, cloned out of the lock.
    fn snapshot(&self, key: &ResourceKey) -> Option<(Arc<Workload>, Vec<Arc<Application>>)> {
        let d = read(&self.desired);
        let w = d.workload(key)?.clone();
        let apps = w
            .spec
            .applications
            .iter()
            .filter_map(|a| d.application(&key.namespace, a).cloned())
            .collect();
        Some((w, apps))
    }

    fn set_status(&self, key: &ResourceKey, w: &Workload, o: Outcome) {
        let prev = self.status.get(key);
        let generation = w
            .metadata
            .generation
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or_else(|| status::spec_hash(&w.spec));
        let new = status::next(prev.as_ref(), &o, generation, &status::now());
        let mut obj = Resource::Machine(w.clone()).to_json();
        obj["kind"] = serde_json::Value::String(key.kind.as_str().into());
        obj["status"] = serde_json::to_value(&new).unwrap_or_default();
        if let Err(e) = self.status.write(key, &obj, &new) {
            warn!(resource = %key, error = %e, "cannot write status");
        }
    }

    /// Deletes owned charm profiles that no managed resource expects and that LXD
    /// reports unused. Never before both the desired state and a full listing are loaded.
    pub async fn collect(&self) {
        if !self.is_loaded() || self.opts.dry_run {
            return;
        }
        let expected = self.expected_everywhere();
        let doomed: Vec<String> = read(&self.observed)
            .profiles()
            .filter(|(name, p)| {
                p.owned
                    && p.used_by.is_empty()
                    && self.opts.names.is_charm_profile(name)
                    && !expected.contains(name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in doomed {
            match self.lxd.delete_profile(&name).await {
                Ok(()) | Err(LxdError::NotFound { .. }) => {
                    info!(profile = %name, "deleted unused profile");
                    write(&self.observed).remove_profile(&name);
                }
                Err(LxdError::InUse { .. }) => {
                    debug!(profile = %name, "profile still in use: kept")
                }
                Err(e) => warn!(profile = %name, error = %e, "cannot delete unused profile"),
            }
        }
    }

    /// Every charm profile any resource expects (whatever the flavour filter: another
    /// host's containers still need theirs).
    fn expected_everywhere(&self) -> HashSet<String> {
        let d = read(&self.desired);
        let mut out = HashSet::new();
        for (key, w) in d.workloads() {
            for app in &w.spec.applications {
                if let Some(a) = d.application(&key.namespace, app)
                    && a.spec.lxd_profile.as_ref().is_some_and(|p| !p.is_empty())
                {
                    out.insert(
                        self.opts
                            .names
                            .charm_profile(&key.namespace, app, a.spec.revision),
                    );
                }
            }
        }
        out
    }

    /// The plans of every managed resource, without touching anything (for `diff`).
    pub fn plans(&self) -> Vec<(ResourceKey, Decision)> {
        let d = read(&self.desired);
        let o = read(&self.observed);
        d.workloads()
            .filter(|(k, w)| self.manages(k, w))
            .map(|(k, w)| {
                let decision = plan(
                    k.kind,
                    w,
                    |n| d.application(&k.namespace, n).map(|a| a.as_ref()),
                    &o,
                    &self.opts.names,
                );
                (k.clone(), decision)
            })
            .collect()
    }
}

fn outcome(
    phase: Phase,
    message: &str,
    profiles: Option<Vec<String>>,
    drift: Option<String>,
) -> Outcome {
    Outcome {
        phase,
        message: message.to_string(),
        profiles,
        drift,
    }
}

/// Runs workers until the queue shuts down. In `once` mode a failure is final (no
/// backoff waits) except a conflict, retried at once.
pub async fn run_workers<L: LxdApi>(ctl: Arc<Controller<L>>, once: bool) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctl.opts.workers.max(1) {
        let ctl = ctl.clone();
        tasks.spawn(async move {
            while let Some(key) = ctl.queue.get().await {
                let result = ctl.process(&key).await;
                match result {
                    Ok(_) => ctl.queue.forget(&key),
                    Err(ReconcileError::Lxd(LxdError::Conflict { .. })) => {
                        ctl.queue.add(key.clone())
                    }
                    Err(e) if !once => {
                        debug!(key = ?key, error = %e, "requeued with backoff");
                        ctl.queue.add_rate_limited(key.clone());
                    }
                    Err(_) => {}
                }
                ctl.queue.done(&key);
                if once && ctl.queue.is_empty() && ctl.queue.processing() == 0 {
                    ctl.queue.shutdown();
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
