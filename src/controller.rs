//! The controller: the work queue, the workers, the reconcile of one resource, the
//! clean-up of unused profiles and the handling of LXD events, sharing one desired state
//! and one observed cache. Each reconcile is level-triggered: it reads the whole desired
//! state of its key and the cached observed state, plans, applies, and says so.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::lxd::{LifecycleAction, LifecycleEvent, LxdApi, LxdError};
use crate::queue::{BackoffConfig, WorkQueue};
use crate::reconcile::apply::{ProfileLocks, apply};
use crate::reconcile::{Decision, Plan, plan};
use crate::resource::{Application, Kind, Phase, ProfileNames, Resource, ResourceKey, Workload};
use crate::status::metrics::{DriftKind, ErrorKind, Metrics, ReconcileResult, Telemetry};
use crate::status::{self, ERROR_PREFIX, Outcome, StatusStore};
use crate::store::{Desired, Object, Observed};

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
    /// A reconcile running longer is abandoned, counted, and retried with backoff.
    pub reconcile_timeout: Duration,
    /// Only this namespace's resources are known (`--namespace`): unused profiles are
    /// collected only when their name is one of this namespace's charm profiles, so that
    /// controllers of other namespaces on the same LXD keep theirs.
    pub namespace: Option<String>,
}

impl Options {
    /// The defaults of `run`.
    pub fn new(names: ProfileNames) -> Options {
        Options {
            machine: None,
            workers: 4,
            resync: Duration::from_secs(600),
            dry_run: false,
            backoff: BackoffConfig::default(),
            names,
            reconcile_timeout: Duration::from_secs(60),
            namespace: None,
        }
    }
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
    #[error("reconcile took longer than {0:?}")]
    Timeout(Duration),
}

impl ReconcileError {
    fn kind(&self) -> ErrorKind {
        match self {
            ReconcileError::Lxd(e) => e.category().into(),
            ReconcileError::MissingInstance(_) => ErrorKind::missing_instance,
            ReconcileError::Timeout(_) => ErrorKind::reconcile_timeout,
        }
    }
}

/// The controller's state, shared by its tasks.
pub struct Controller<L: LxdApi> {
    pub lxd: L,
    pub desired: RwLock<Desired>,
    pub observed: RwLock<Observed>,
    pub queue: WorkQueue<WorkKey>,
    pub status: Arc<dyn StatusStore>,
    pub metrics: Arc<Metrics>,
    pub opts: Options,
    locks: ProfileLocks,
    desired_loaded: AtomicBool,
    draining: AtomicBool,
    source_errors: std::sync::atomic::AtomicUsize,
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
    /// `telemetry.metrics` should observe `lxd`'s requests, for `/readyz` to see LXD.
    pub fn new(
        lxd: L,
        status: impl StatusStore + 'static,
        opts: Options,
        telemetry: &Telemetry,
    ) -> Arc<Self> {
        let queue =
            WorkQueue::new("lxd_mutater", opts.backoff).with_metrics(telemetry.queue.clone());
        Arc::new(Controller {
            lxd,
            desired: RwLock::new(Desired::default()),
            observed: RwLock::new(Observed::default()),
            queue,
            status: Arc::new(status),
            metrics: telemetry.metrics.clone(),
            opts,
            locks: ProfileLocks::default(),
            desired_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            source_errors: Default::default(),
        })
    }

    /// Stop taking work: the queue hands out nothing more; `/readyz` says so.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.queue.shutdown();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resource files that do not parse now (the source says).
    pub fn set_source_errors(&self, n: usize) {
        self.source_errors.store(n, Ordering::SeqCst);
        self.metrics.set_source_errors(n);
    }

    pub fn source_errors(&self) -> usize {
        self.source_errors.load(Ordering::SeqCst)
    }

    /// Whether this process manages `w`: with `--machine`, only the containers of that
    /// host.
    fn manages(&self, key: &ResourceKey, w: &Workload) -> bool {
        match (&self.opts.machine, key.kind) {
            (None, Kind::Machine | Kind::Container) => true,
            (Some(host), Kind::Container) => w.spec.machine.as_deref() == Some(host.as_str()),
            _ => false,
        }
    }

    /// Replaces the desired state with a full snapshot from the source; enqueues what
    /// changed and forgets what went away (LXD untouched for it).
    pub fn load_snapshot(&self, resources: Vec<Resource>) {
        let keep: HashSet<ResourceKey> = resources.iter().map(Resource::key).collect();
        let gone: Vec<ResourceKey> = read(&self.desired)
            .keys()
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        self.change(resources, &gone);
        self.set_loaded();
    }

    /// Applies a change from the source (work proportional to it): `upserts` added or
    /// replaced, `removed` forgotten (LXD untouched for them). Enqueues what it affects.
    pub fn change(&self, upserts: Vec<Resource>, removed: &[ResourceKey]) {
        let mut changed = Vec::new();
        {
            let mut d = write(&self.desired);
            for key in removed {
                changed.extend(d.remove(key));
                if key.kind != Kind::Application {
                    self.status.remove(key);
                    self.metrics.forget(key);
                }
            }
            for r in upserts {
                changed.extend(d.upsert(r));
            }
        }
        self.enqueue(changed);
    }

    /// The source has delivered its whole state once (`/readyz` waits for it).
    pub fn set_loaded(&self) {
        self.desired_loaded.store(true, Ordering::SeqCst);
    }

    fn enqueue(&self, keys: impl IntoIterator<Item = ResourceKey>) {
        for k in keys {
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
        self.enqueue(keys);
        self.queue.add(WorkKey::Collect);
    }

    /// Runs one key, within the reconcile timeout.
    pub async fn process(&self, key: &WorkKey) -> Result<Option<Reconciled>, ReconcileError> {
        match key {
            WorkKey::Collect => {
                self.collect().await;
                Ok(None)
            }
            WorkKey::Resource(k) => {
                let limit = self.opts.reconcile_timeout;
                tokio::time::timeout(limit, self.reconcile(k))
                    .await
                    .unwrap_or(Err(ReconcileError::Timeout(limit)))
            }
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
        let (phase, message, result) = match decision {
            Decision::Skip(why) => (Phase::Skipped, why, Ok(())),
            Decision::Pending => (Phase::Pending, String::new(), Ok(())),
            Decision::Invalid(why) => {
                self.metrics.error(key.kind, ErrorKind::invalid);
                (Phase::Error, format!("{ERROR_PREFIX}{why}"), Ok(()))
            }
            Decision::UnknownInstance(instance) => {
                let message = format!("{ERROR_PREFIX}instance {instance:?} not found");
                let e = Err(ReconcileError::MissingInstance(instance));
                (Phase::Error, message, e)
            }
            Decision::Act(p) => return self.act(key, &workload, p).await,
        };
        self.set_status(key, &workload, outcome(phase, &message, None, None));
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
        let settled = |phase_if_ok: Phase| match &foreign {
            Some(m) => (Phase::Error, m.clone()),
            None => (phase_if_ok, String::new()),
        };
        if p.is_empty() {
            let (phase, message) = settled(Phase::Applied);
            self.set_status(
                key,
                w,
                outcome(phase, &message, Some(p.current.clone()), None),
            );
            return Ok(Some(Reconciled { phase, message }));
        }
        // Drift of the list: LXD moved away from what was applied, the expected list
        // unchanged (a new revision or application is an update, not drift).
        let list_drift = p.list_differs()
            && prev.as_ref().is_some_and(|s| {
                matches!(s.phase, Phase::Applied | Phase::Drifted) && s.profiles == p.expected
            });
        if self.opts.dry_run {
            return Ok(Some(self.report_drift(
                key,
                w,
                &p,
                prev.as_ref(),
                list_drift,
            )));
        }
        let list_drift_text = list_drift.then(|| p.describe());
        if list_drift {
            self.metrics.drift_detected(key.kind, DriftKind::profiles);
        }
        self.set_status(
            key,
            w,
            outcome(
                Phase::Idle,
                "",
                Some(p.current.clone()),
                list_drift_text.clone(),
            ),
        );
        let started = Instant::now();
        match apply(&self.lxd, &p, &self.observed, &self.locks).await {
            Ok(applied) => {
                // Content drift is counted by the reconcile that rewrote the profile,
                // once, however many instances use it.
                for _ in &applied.rewritten {
                    self.metrics.drift_detected(key.kind, DriftKind::content);
                    self.metrics.drift_corrected(key.kind, DriftKind::content);
                }
                if list_drift && applied.list_set {
                    self.metrics.drift_corrected(key.kind, DriftKind::profiles);
                }
                info!(
                    resource = %key,
                    instance = %p.instance,
                    result = "applied",
                    current = ?p.current,
                    expected = ?p.expected,
                    drift = list_drift_text.as_deref().unwrap_or(""),
                    rewritten = ?applied.rewritten,
                    took_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
                let content_drift = (!applied.rewritten.is_empty())
                    .then(|| format!("profile content differs: {}", applied.rewritten.join(", ")));
                let (phase, message) = settled(Phase::Applied);
                let o = outcome(phase, &message, Some(applied.profiles), content_drift);
                self.set_status(key, w, o);
                if applied.list_set {
                    self.queue.add(WorkKey::Collect);
                }
                Ok(Some(Reconciled { phase, message }))
            }
            Err(e) => {
                let message = format!("{ERROR_PREFIX}{e}");
                warn!(
                    resource = %key,
                    instance = %p.instance,
                    result = "error",
                    current = ?p.current,
                    expected = ?p.expected,
                    error = %e,
                    took_ms = started.elapsed().as_millis() as u64,
                    "reconcile failed"
                );
                let now = read(&self.observed)
                    .instance_profiles(&p.instance)
                    .map(<[String]>::to_vec);
                self.set_status(key, w, outcome(Phase::Error, &message, now, None));
                Err(e.cause.into())
            }
        }
    }

    /// `--dry-run`: say what drifted, count a drift once (not on every pass), touch
    /// nothing.
    fn report_drift(
        &self,
        key: &ResourceKey,
        w: &Workload,
        p: &Plan,
        prev: Option<&crate::resource::Status>,
        list_drift: bool,
    ) -> Reconciled {
        let described = p.describe();
        let new = prev.and_then(|s| s.drift.as_ref()).map(|d| d.last.as_str())
            != Some(described.as_str());
        if new {
            if list_drift {
                self.metrics.drift_detected(key.kind, DriftKind::profiles);
            }
            if p.rewritten().next().is_some() {
                self.metrics.drift_detected(key.kind, DriftKind::content);
            }
        }
        let message = format!("drift: {described}");
        let o = outcome(
            Phase::Drifted,
            &message,
            Some(p.current.clone()),
            new.then_some(described),
        );
        self.set_status(key, w, o);
        Reconciled {
            phase: Phase::Drifted,
            message,
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
        let drifted = match o.phase {
            Phase::Drifted => true,
            Phase::Idle => o.drift.is_some() || self.metrics.is_drifted(key),
            Phase::Error => self.metrics.is_drifted(key),
            _ => false,
        };
        self.metrics.set_state(key, o.phase, drifted);
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

    /// Deletes owned charm profiles that no resource expects and that LXD reports unused.
    /// Never before both the desired state and a full listing are loaded.
    pub async fn collect(&self) {
        if !self.is_loaded() || self.opts.dry_run {
            return;
        }
        let expected = self.expected_everywhere();
        let doomed: Vec<String> =
            read(&self.observed)
                .profiles()
                .filter(|(name, p)| {
                    p.owned
                        && p.used_by.is_empty()
                        && self.opts.names.is_charm_profile(name)
                        && !expected.contains(name.as_str())
                        && self.opts.namespace.as_deref().is_none_or(|ns| {
                            self.opts.names.parse_charm_profile(name, ns).is_some()
                        })
                })
                .map(|(name, _)| name.clone())
                .collect();
        for name in doomed {
            let object = Object::Profile(name.clone());
            write(&self.observed).expect_echo(object.clone());
            match self.lxd.delete_profile(&name).await {
                Ok(()) => {
                    info!(profile = %name, "deleted unused profile");
                    write(&self.observed).remove_profile(&name);
                }
                Err(e) => {
                    write(&self.observed).cancel_echo(&object);
                    match e {
                        LxdError::NotFound { .. } => write(&self.observed).remove_profile(&name),
                        LxdError::InUse { .. } => debug!(profile = %name, "still in use: kept"),
                        e => warn!(profile = %name, error = %e, "cannot delete unused profile"),
                    }
                }
            }
        }
    }

    /// Every charm profile any resource expects (whatever the flavour filter: another
    /// host's containers still need theirs).
    fn expected_everywhere(&self) -> HashSet<String> {
        read(&self.desired).expected_charm_profiles(&self.opts.names)
    }

    /// An LXD lifecycle event: the cache learns what changed (one read of the object,
    /// only when a managed resource cares and the change is not our own write's echo),
    /// and exactly the affected resources are enqueued.
    pub async fn on_event(&self, event: &LifecycleEvent) -> Result<(), LxdError> {
        let name = event.name.as_str();
        match &event.action {
            LifecycleAction::InstanceCreated | LifecycleAction::InstanceUpdated => {
                let keys = read(&self.desired).keys_for_instance(name);
                let echo = write(&self.observed).take_echo(&Object::Instance(name.into()));
                if keys.is_empty() || echo {
                    return Ok(());
                }
                match self.lxd.get_instance(name).await {
                    Ok((i, _)) => write(&self.observed).set_instance_profiles(&i.name, &i.profiles),
                    Err(LxdError::NotFound { .. }) => write(&self.observed).remove_instance(name),
                    Err(e) => return Err(e),
                }
                self.enqueue(keys);
            }
            LifecycleAction::InstanceDeleted => {
                write(&self.observed).remove_instance(name);
                self.enqueue(read(&self.desired).keys_for_instance(name));
            }
            LifecycleAction::ProfileCreated | LifecycleAction::ProfileUpdated => {
                let keys = read(&self.desired).keys_for_profile(name, &self.opts.names);
                let echo = write(&self.observed).take_echo(&Object::Profile(name.into()));
                if keys.is_empty() || echo {
                    return Ok(());
                }
                match self.lxd.get_profile(name).await {
                    Ok((p, _)) => write(&self.observed).put_lxd_profile(p),
                    Err(LxdError::NotFound { .. }) => write(&self.observed).remove_profile(name),
                    Err(e) => return Err(e),
                }
                self.enqueue(keys);
            }
            LifecycleAction::ProfileDeleted => {
                let echo = write(&self.observed).take_echo(&Object::Profile(name.into()));
                write(&self.observed).remove_profile(name);
                if !echo {
                    self.enqueue(read(&self.desired).keys_for_profile(name, &self.opts.names));
                }
            }
            LifecycleAction::InstanceRenamed | LifecycleAction::ProfileRenamed => {
                // The event names one side only: a listing settles both.
                self.relisted().await?;
            }
            LifecycleAction::Other(_) => {}
        }
        Ok(())
    }

    /// After a (re)connect of the events stream: events may have been lost, so list
    /// again and look at everything.
    pub async fn relisted(&self) -> Result<(), LxdError> {
        self.relist().await?;
        write(&self.observed).forget_echoes();
        self.enqueue_all();
        Ok(())
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
                let started = Instant::now();
                let result = ctl.process(&key).await;
                let kind = match &key {
                    WorkKey::Resource(k) => Some(k.kind),
                    WorkKey::Collect => None,
                };
                let counted = match &result {
                    Ok(Some(r)) if r.phase == Phase::Error => ReconcileResult::error,
                    Ok(_) => ReconcileResult::success,
                    Err(ReconcileError::Lxd(LxdError::Conflict { .. })) => ReconcileResult::requeue,
                    Err(_) => ReconcileResult::error,
                };
                if let Some(kind) = kind {
                    ctl.metrics.reconciled(kind, counted, started.elapsed());
                    if let Err(e) = &result {
                        ctl.metrics.error(kind, e.kind());
                    }
                }
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
