//! The workers: take a key from the queue, and run the chain for it:
//! snapshot (from the store) -> plan (pure) -> apply (the only LXD writes) -> report
//! (the status stage). The clean-up of unused profiles is a key of its own: collect
//! (pure) -> apply.
//!
//! A worker formats no status and decides no phase: it hands a typed `Outcome` to the
//! `Reporter`. It tells the queue whether a key succeeded (`forget`) or is to be retried
//! with backoff (`add_rate_limited`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::lxd::{LxdApi, LxdError};
use crate::queue::{BackoffConfig, WorkQueue};
use crate::resource::{Kind, Phase, ProfileNames, ResourceKey, Workload};
use crate::status::metrics::{ErrorKind, Metrics, ReconcileResult};
use crate::status::{Outcome, Reporter};
use crate::store::{LxdFeed, Snapshot, Store};

use super::apply::{ProfileLocks, apply, apply_cleanup};
use super::collect::{Cleanup, collect};
use super::plan::{Decision, Plan, plan};

/// What the queue holds: a resource to reconcile, or the clean-up of unused profiles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkKey {
    Resource(ResourceKey),
    /// Delete owned charm profiles that nothing expects and LXD reports unused.
    Collect,
}

/// Which of Juju's two workers a process is (SPEC §1).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// The model's Machines.
    Environ,
    /// The Containers of one host machine (`machine`).
    Container,
    /// Both, in one process.
    #[default]
    All,
}

impl Flavour {
    /// The kinds this flavour reconciles.
    pub fn workloads(self) -> &'static [Kind] {
        match self {
            Flavour::Environ => &[Kind::Machine],
            Flavour::Container => &[Kind::Container],
            Flavour::All => &[Kind::Machine, Kind::Container],
        }
    }

    /// The kinds a source must deliver for this flavour: its workloads and the
    /// Applications they run.
    pub fn reads(self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Application];
        kinds.extend_from_slice(self.workloads());
        kinds
    }
}

/// How the workers run.
#[derive(Clone, Debug)]
pub struct Options {
    pub flavour: Flavour,
    /// With the container flavour (or all), only the containers of this host machine.
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
    /// `--owner`: recorded on what this controller creates and claims; it touches only
    /// what carries it.
    pub owner: String,
}

impl Options {
    /// The defaults of `run`.
    pub fn new(names: ProfileNames) -> Options {
        Options {
            flavour: Flavour::All,
            machine: None,
            workers: 4,
            resync: Duration::from_secs(600),
            dry_run: false,
            backoff: BackoffConfig::default(),
            names,
            reconcile_timeout: Duration::from_secs(60),
            namespace: None,
            owner: crate::store::OWNER_VALUE.to_string(),
        }
    }

    /// Whether this process manages `w`: the environ flavour takes Machines; the container
    /// flavour takes Containers, with `--machine` only that host's; all takes both (with
    /// `--machine`, only that host's Containers, as before the flavours).
    pub fn manages(&self, key: &ResourceKey, w: &Workload) -> bool {
        let this_host = || {
            self.machine
                .as_deref()
                .is_none_or(|host| w.spec.machine.as_deref() == Some(host))
        };
        match (self.flavour, key.kind) {
            (Flavour::Environ, Kind::Machine) => true,
            (Flavour::Container, Kind::Container) => this_host(),
            (Flavour::All, Kind::Machine) => self.machine.is_none(),
            (Flavour::All, Kind::Container) => this_host(),
            _ => false,
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

/// Keys a worker takes before it lets the other tasks run (the events task above all),
/// if nothing made it wait meanwhile: a yield costs a poll of the runtime's driver, and
/// LXD's events then wait for at most this many keys per worker.
const YIELD_EVERY: u32 = 16;

/// What the workers share.
pub struct Worker<L: LxdApi> {
    lxd: L,
    store: Arc<Store>,
    feed: Arc<LxdFeed<L>>,
    queue: WorkQueue<WorkKey>,
    report: Arc<Reporter>,
    metrics: Arc<Metrics>,
    opts: Options,
    locks: ProfileLocks,
}

impl<L: LxdApi> Worker<L> {
    pub fn new(
        lxd: L,
        store: Arc<Store>,
        feed: Arc<LxdFeed<L>>,
        queue: WorkQueue<WorkKey>,
        report: Arc<Reporter>,
        metrics: Arc<Metrics>,
        opts: Options,
    ) -> Arc<Worker<L>> {
        Arc::new(Worker {
            lxd,
            store,
            feed,
            queue,
            report,
            metrics,
            opts,
            locks: ProfileLocks::default(),
        })
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Runs `--workers` workers until the queue shuts down. With `once`, a failure is
    /// final (no backoff waits) except a conflict, retried at once, and the queue shuts
    /// down when it is empty.
    pub async fn run(self: Arc<Self>, once: bool) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.opts.workers.max(1) {
            let me = self.clone();
            tasks.spawn(async move {
                let mut since_yield = 0;
                while let Some(key) = me.queue.get().await {
                    me.process_and_settle(&key, once).await;
                    me.queue.done(&key);
                    if once && me.queue.is_empty() && me.queue.processing() == 0 {
                        me.queue.shutdown();
                    }
                    // The events task's turn every few keys: when LXD answers without
                    // making a worker wait, a backlog of keys would otherwise run before
                    // any event of their writes is handled, and every one of those events
                    // (with the echo it is to meet) would wait in memory meanwhile.
                    since_yield += 1;
                    if since_yield == YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One key: processed, counted, and settled with the queue.
    async fn process_and_settle(&self, key: &WorkKey, once: bool) {
        let started = Instant::now();
        let result = self.process(key).await;
        if let WorkKey::Resource(k) = key {
            let counted = match &result {
                Ok(Some(Phase::Error)) => ReconcileResult::error,
                Ok(_) => ReconcileResult::success,
                Err(ReconcileError::Lxd(LxdError::Conflict { .. })) => ReconcileResult::requeue,
                Err(_) => ReconcileResult::error,
            };
            self.metrics.reconciled(k.kind, counted, started.elapsed());
            if let Err(e) = &result {
                self.metrics.error(k.kind, e.kind());
            }
        }
        match result {
            Ok(_) => self.queue.forget(key),
            // A race (412): `--once` looks again at once; a running controller backs off
            // like any other failure, so that a fight with another writer cannot spin.
            Err(ReconcileError::Lxd(LxdError::Conflict { .. })) if once => {
                self.queue.add(key.clone())
            }
            Err(e) if !once => {
                debug!(key = ?key, error = %e, "requeued with backoff");
                self.queue.add_rate_limited(key.clone());
            }
            Err(_) => {}
        }
    }

    /// Runs one key, within the reconcile timeout; the phase it ended in (`None`: not
    /// managed, or the clean-up).
    pub async fn process(&self, key: &WorkKey) -> Result<Option<Phase>, ReconcileError> {
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

    fn plan(&self, key: &ResourceKey, snapshot: &Snapshot) -> Decision {
        if let Some(conflict) = self.sharing(key, &snapshot.workload) {
            return conflict;
        }
        plan(
            key.kind,
            &snapshot.workload,
            |n| snapshot.application(n),
            |p| snapshot.subordinates(p),
            &self.store.observed(),
            &self.opts.names,
        )
    }

    /// One instance, one resource: another managed resource naming the same instance makes
    /// both Error, each naming the other, and the instance is not written.
    fn sharing(&self, key: &ResourceKey, w: &Workload) -> Option<Decision> {
        let instance = w.spec.instance.as_ref()?;
        if w.spec.manual || w.spec.life == crate::resource::Life::Dead {
            return None;
        }
        let d = self.store.desired();
        // Empty (no allocation) unless another resource names the instance.
        let mut others: Vec<&ResourceKey> = d
            .keys_naming(instance)
            .filter(|k| *k != key)
            .filter(|k| {
                d.workload(k)
                    .is_some_and(|o| !o.spec.manual && o.spec.life != crate::resource::Life::Dead)
            })
            .collect();
        if others.is_empty() {
            return None;
        }
        others.sort();
        let others: Vec<String> = others.iter().map(|k| k.to_string()).collect();
        Some(Decision::Invalid(format!(
            "instance {instance:?} is also named by {}: one instance, one resource; not touched",
            others.join(", ")
        )))
    }

    /// Reconciles one Machine or Container: snapshot -> plan -> apply -> report.
    pub async fn reconcile(&self, key: &ResourceKey) -> Result<Option<Phase>, ReconcileError> {
        let Some(snapshot) = self.store.snapshot(key) else {
            return Ok(None); // deleted meanwhile: no longer managed
        };
        let w = &snapshot.workload;
        if !self.opts.manages(key, w) {
            return Ok(None);
        }
        let mut decision = self.plan(key, &snapshot);
        if let Decision::UnknownInstance(_) = &decision {
            // The cache may be older than the instance: list LXD again (two requests,
            // whatever the fleet's size) before saying it is missing.
            if let Err(e) = self.feed.relist().await {
                let failed = Outcome::Failed {
                    cause: e.to_string(),
                    profiles: None,
                };
                self.report.report(key, w, &failed);
                return Err(e.into());
            }
            decision = self.plan(key, &snapshot);
        }
        let (outcome, result) = match decision {
            Decision::Skip(why) => (Outcome::Skipped(why), Ok(())),
            Decision::Pending => (Outcome::Pending, Ok(())),
            Decision::Invalid(why) => {
                self.metrics.error(key.kind, ErrorKind::invalid);
                (Outcome::Invalid(why), Ok(()))
            }
            Decision::UnknownInstance(instance) => (
                Outcome::MissingInstance(instance.clone()),
                Err(ReconcileError::MissingInstance(instance)),
            ),
            Decision::Act(p) => return self.act(key, w, p).await.map(Some),
        };
        let phase = self.report.report(key, w, &outcome);
        result.map(|()| Some(phase))
    }

    /// Applies a plan for an instance that exists, and reports each stage.
    async fn act(
        &self,
        key: &ResourceKey,
        w: &Arc<Workload>,
        p: Plan,
    ) -> Result<Phase, ReconcileError> {
        if p.is_empty() {
            let outcome = Outcome::InSync {
                profiles: p.current,
                foreign: p.foreign,
            };
            return Ok(self.report.report(key, w, &outcome));
        }
        // Drift of the list: LXD moved away from what was applied, the expected list
        // unchanged (a new revision or application is an update, not drift).
        let list_drift = p.list_differs()
            && self.report.with_last(key, |s| {
                s.is_some_and(|s| {
                    matches!(s.phase, Phase::Applied | Phase::Drifted) && s.profiles == p.expected
                })
            });
        if self.opts.dry_run {
            return Ok(self.report_drift(key, w, &p, list_drift));
        }
        let list_drift_text = list_drift.then(|| p.describe());
        let applying = Outcome::Applying {
            profiles: p.current.clone(),
            list_drift: list_drift_text.clone(),
        };
        self.report.report(key, w, &applying);
        let started = Instant::now();
        match apply(&self.lxd, &p, &self.store, &self.locks).await {
            Ok(applied) => {
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
                let outcome = Outcome::Applied {
                    profiles: applied.profiles,
                    rewritten: applied.rewritten,
                    list_drift_corrected: list_drift && applied.list_set,
                    foreign: p.foreign.clone(),
                };
                let phase = self.report.report(key, w, &outcome);
                if applied.list_set {
                    self.queue.add(WorkKey::Collect);
                }
                Ok(phase)
            }
            Err(e) => {
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
                let now = self
                    .store
                    .observed()
                    .instance_profiles(&p.instance)
                    .map(|l| l.iter().map(|p| p.to_string()).collect());
                let failed = Outcome::Failed {
                    cause: e.to_string(),
                    profiles: now,
                };
                self.report.report(key, w, &failed);
                Err(e.cause.into())
            }
        }
    }

    /// `--dry-run`: say what drifted (counted once, not on every pass), touch nothing.
    fn report_drift(
        &self,
        key: &ResourceKey,
        w: &Arc<Workload>,
        p: &Plan,
        list_drift: bool,
    ) -> Phase {
        let described = p.describe();
        let new = self.report.with_last(key, |prev| {
            prev.and_then(|s| s.drift.as_ref()).map(|d| d.last.as_str()) != Some(&*described)
        });
        let outcome = Outcome::Drifted {
            profiles: p.current.clone(),
            described,
            new,
            list_drift,
            content_drift: p.rewritten().next().is_some(),
        };
        self.report.report(key, w, &outcome)
    }

    /// The clean-up to run now: nothing before both the desired state and a full listing
    /// are loaded, nothing while the source's view is partial.
    pub fn cleanup(&self) -> Cleanup {
        if !self.store.is_whole() {
            return Cleanup::default();
        }
        let expected = self
            .store
            .desired()
            .expected_charm_profiles(&self.opts.names);
        collect(
            &self.store.observed(),
            &expected,
            &self.opts.names,
            self.opts.namespace.as_deref(),
        )
    }

    /// Deletes owned charm profiles that no resource expects and that LXD reports unused.
    async fn collect(&self) {
        if self.opts.dry_run {
            return;
        }
        let cleanup = self.cleanup();
        if cleanup.is_empty() {
            return;
        }
        let done = apply_cleanup(&self.lxd, &cleanup, &self.store, &self.locks).await;
        for name in &done.deleted {
            info!(profile = %name, "deleted unused profile");
        }
        for name in &done.kept {
            debug!(profile = %name, "in use again: kept");
        }
        for (name, e) in &done.failed {
            warn!(profile = %name, error = %e, "cannot delete unused profile");
        }
    }

    /// The plans of every managed resource, without touching anything (for `diff`).
    pub fn plans(&self) -> Vec<(ResourceKey, Decision)> {
        self.store
            .workload_keys()
            .into_iter()
            .filter_map(|k| {
                let snapshot = self.store.snapshot(&k)?;
                self.opts
                    .manages(&k, &snapshot.workload)
                    .then(|| (k.clone(), self.plan(&k, &snapshot)))
            })
            .collect()
    }
}
