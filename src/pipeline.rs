//! The stages assembled: built once by `cmd::run` (and `cmd::diff`, and tests), each
//! stage given only the handles it needs. Its methods route one stage's output to the
//! next stage's input (a source's events into the store and the status stage, the keys
//! the store says are affected into the queue); it holds no logic of its own.
//!
//! ```text
//! source --SourceEvent--> store --keys--> queue --> worker: snapshot -> plan -> apply -> report
//!                          ^ LxdFeed: listings, events
//! ```

use std::sync::Arc;

use tracing::warn;

use crate::lxd::{LxdApi, LxdError};
use crate::queue::WorkQueue;
use crate::reconcile::{Options, WorkKey, Worker};
use crate::resource::{Resource, ResourceKey};
use crate::source::SourceEvent;
use crate::status::http::Endpoints;
use crate::status::metrics::{Metrics, Telemetry};
use crate::status::{Health, Reporter, StatusStore};
use crate::store::lxd_feed::Affected;
use crate::store::{LxdFeed, Store};

pub struct Pipeline<L: LxdApi + Clone> {
    pub store: Arc<Store>,
    pub queue: WorkQueue<WorkKey>,
    pub feed: Arc<LxdFeed<L>>,
    pub worker: Arc<Worker<L>>,
    pub report: Arc<Reporter>,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    lxd: L,
}

impl<L: LxdApi + Clone> Pipeline<L> {
    /// `telemetry.metrics` should observe `lxd`'s requests.
    pub fn new(
        lxd: L,
        status: Arc<dyn StatusStore>,
        opts: Options,
        telemetry: &Telemetry,
    ) -> Pipeline<L> {
        let store = Store::new(&opts.owner);
        let queue =
            WorkQueue::new("lxd_mutater", opts.backoff).with_metrics(telemetry.queue.clone());
        let metrics = telemetry.metrics.clone();
        metrics.reconciling(opts.flavour.workloads());
        let report = Reporter::new(status, metrics.clone());
        let feed = Arc::new(LxdFeed::new(lxd.clone(), store.clone(), opts.names.clone()));
        let worker = Worker::new(
            lxd.clone(),
            store.clone(),
            feed.clone(),
            queue.clone(),
            report.clone(),
            metrics.clone(),
            opts,
        );
        let health = Health::new();
        {
            let store = store.clone();
            health.watch_loaded(move || store.is_loaded());
            let queue = queue.clone();
            health.watch_reconciles(move || queue.longest_processing());
        }
        Pipeline {
            store,
            queue,
            feed,
            worker,
            report,
            health,
            metrics,
            lxd,
        }
    }

    pub fn lxd(&self) -> &L {
        &self.lxd
    }

    /// What `/metrics`, `/healthz` and `/readyz` read.
    pub fn endpoints(&self, telemetry: Arc<Telemetry>) -> Endpoints<L> {
        Endpoints {
            lxd: self.lxd.clone(),
            health: self.health.clone(),
            telemetry,
            reconcile_timeout: self.worker.options().reconcile_timeout,
        }
    }

    /// A source's event: into the store (and the affected keys into the queue), or into
    /// the status stage.
    pub fn on_source(&self, event: SourceEvent) {
        match event {
            SourceEvent::Upsert(r) => self.enqueue(self.store.upsert(r)),
            SourceEvent::Remove(key) => {
                let affected = self.store.remove(&key);
                self.report.forget(&key);
                self.enqueue(affected);
            }
            SourceEvent::Loaded => self.store.set_desired_loaded(),
            SourceEvent::Invalid {
                key,
                generation,
                message,
            } => {
                let has_good_version = self.store.holds(&key);
                if has_good_version {
                    warn!(resource = %key, "the object's last good version is kept");
                }
                self.report
                    .invalid(&key, generation, &message, has_good_version);
            }
            SourceEvent::Valid(key) => self.report.valid(&key),
            SourceEvent::InvalidCount(n) => {
                self.health.set_invalid_sources(n);
                self.metrics
                    .set_source_files_invalid(self.health.invalid_sources());
            }
            SourceEvent::Unreadable(why) => {
                self.store.set_desired_partial(why.is_some());
                self.health.set_unreadable(why);
                self.metrics
                    .set_source_files_invalid(self.health.invalid_sources());
            }
            SourceEvent::Stored {
                key,
                uid,
                version,
                status,
            } => self.report.store().stored(&key, uid, version, status),
        }
    }

    /// Replaces the whole desired state at once (`diff`, `--once`, tests).
    pub fn load(&self, resources: Vec<Resource>) {
        let (changed, gone) = self.store.replace_desired(resources);
        for key in &gone {
            self.report.forget(key);
        }
        self.enqueue(changed);
    }

    /// What the LXD feed found: the affected keys, or everything. A change LXD announced
    /// may have left an owned profile unused (a list our own PATCH set, whose answer was
    /// lost; an operator's edit): the clean-up looks again.
    pub fn on_lxd(&self, affected: Affected) {
        if affected.everything {
            self.enqueue_all();
        } else if !affected.keys.is_empty() {
            self.enqueue(affected.keys);
            self.queue.add(WorkKey::Collect);
        }
    }

    /// Lists LXD into the store.
    pub async fn relist(&self) -> Result<(), LxdError> {
        self.feed.relist().await
    }

    fn enqueue(&self, keys: impl IntoIterator<Item = ResourceKey>) {
        for k in keys {
            self.queue.add(WorkKey::Resource(k));
        }
    }

    /// Every Machine and Container, and the clean-up.
    pub fn enqueue_all(&self) {
        self.enqueue(self.store.workload_keys());
        self.queue.add(WorkKey::Collect);
    }

    /// Stop taking work: the queue hands out nothing more; `/readyz` says so.
    pub fn drain(&self) {
        self.health.set_draining();
        self.queue.shutdown();
    }

    /// Waits until the statuses decided so far are stored (`deadline` at most; a store
    /// that refuses writes ends the wait); whether all were.
    pub async fn store_statuses(&self, deadline: std::time::Duration) -> bool {
        let report = self.report.clone();
        tokio::task::spawn_blocking(move || report.flush(deadline))
            .await
            .unwrap_or(false)
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.queue.processing() == 0
    }
}
