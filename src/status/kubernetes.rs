//! Statuses on Kubernetes: the status subresource of each object, written by one task.
//!
//! The status stage decides a status (`decide`, `Reporter`); this store only persists it:
//! it compares it with the one the API server holds (as the watch last showed it, or as
//! our last patch set it) and, only when it differs, queues one merge patch of the whole
//! status. Patches of one key coalesce: a status superseded before it was sent is never
//! sent. A status write changes neither generation nor anything the source compares, so
//! it never causes a reconcile.
//!
//! A Warning Event is posted when a resource goes into Error, and once per generation for
//! an object that does not load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::backoff::BackoffConfig;
use crate::leader::WriteFence;
use crate::resource::{Phase, ResourceKey, Status, Workload};

use super::StatusStore;
use super::decide::{ERROR_PREFIX, bounded, is_invalid_spec};

/// Retry delays of a status patch that failed.
const RETRY: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(30),
};
/// The field manager and event source of every write.
pub const MANAGER: &str = "lxd-mutater";

#[derive(Debug, Default)]
struct State {
    /// What the API server holds, per key: the status (None: none yet) and the uid.
    stored: HashMap<ResourceKey, Stored>,
    /// Decided and not yet sent.
    pending: HashMap<ResourceKey, Status>,
    /// Being sent: newer than `stored`, until the API server answers.
    in_flight: HashMap<ResourceKey, Status>,
    /// Objects that do not load, and the generation last reported (once each).
    invalid: HashMap<ResourceKey, Option<u64>>,
    /// The last Error each key was told about in an Event (one per distinct message,
    /// not one per retry), while it stays in Error.
    told: HashMap<ResourceKey, String>,
}

/// What the writer task sends.
#[derive(Debug)]
enum Job {
    /// The pending status of a key.
    Status(ResourceKey),
    /// A Warning Event on an object.
    Event {
        key: ResourceKey,
        reason: &'static str,
        message: String,
    },
}

#[derive(Clone, Debug, Default)]
struct Stored {
    status: Option<Status>,
    uid: Option<String>,
    /// The object's resourceVersion this was read at (an older echo is ignored).
    version: Option<String>,
}

/// Whether resourceVersion `a` is older than `b`. Versions are opaque to clients; every
/// API server in use hands out increasing integers, so those are compared, and anything
/// else is taken as newer.
fn older(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// The status subresource as a `StatusStore`.
pub struct KubeStatus {
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<Job>,
}

/// The task that sends the queued patches (run it with `run`).
pub struct StatusWriter {
    client: kube::Client,
    store: Arc<KubeStatus>,
    rx: mpsc::UnboundedReceiver<Job>,
    fence: WriteFence,
    identity: String,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KubeStatus {
    /// The store and its writer. Nothing is sent while `fence` is closed.
    pub fn new(
        client: kube::Client,
        fence: WriteFence,
        identity: &str,
    ) -> (Arc<Self>, StatusWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Arc::new(KubeStatus {
            state: Mutex::new(State::default()),
            tx,
        });
        let writer = StatusWriter {
            client,
            store: store.clone(),
            rx,
            fence,
            identity: identity.to_string(),
        };
        (store, writer)
    }

    /// The source saw the object: what the API server holds now. An echo older than what
    /// a patch of ours already returned is ignored; a new uid (the object was deleted and
    /// created again) drops what was decided for the old one.
    pub fn observe(
        &self,
        key: &ResourceKey,
        uid: Option<String>,
        version: Option<String>,
        status: Option<Status>,
    ) {
        let mut s = lock(&self.state);
        if let Some(old) = s.stored.get(key) {
            if old.uid == uid && older(version.as_deref(), old.version.as_deref()) {
                return;
            }
            if old.uid != uid {
                s.pending.remove(key);
            }
        }
        s.stored.insert(
            key.clone(),
            Stored {
                status,
                uid,
                version,
            },
        );
    }

    /// A patch of ours succeeded: the API server holds `status` now (unless the object
    /// went away meanwhile).
    fn patched(&self, key: &ResourceKey, status: &Status, version: Option<String>) {
        let mut s = lock(&self.state);
        if let Some(stored) = s.stored.get_mut(key) {
            stored.status = Some(status.clone());
            if !older(version.as_deref(), stored.version.as_deref()) {
                stored.version = version;
            }
        }
    }

    /// Whether nothing is waiting to be sent or being sent.
    pub fn is_idle(&self) -> bool {
        let s = lock(&self.state);
        s.pending.is_empty() && s.in_flight.is_empty()
    }

    /// Sends every status held back while this replica did not lead (call it once it
    /// leads).
    pub fn flush(&self) {
        let keys: Vec<ResourceKey> = lock(&self.state).pending.keys().cloned().collect();
        for key in keys {
            let _ = self.tx.send(Job::Status(key));
        }
    }

    /// The source saw the object: see `observe`.
    fn tell_invalid_once(&self, key: &ResourceKey, generation: Option<u64>, message: &str) {
        {
            let mut s = lock(&self.state);
            if s.invalid.get(key) == Some(&generation) {
                return;
            }
            s.invalid.insert(key.clone(), generation);
        }
        let _ = self.tx.send(Job::Event {
            key: key.clone(),
            reason: "InvalidSpec",
            message: bounded(format!("{ERROR_PREFIX}invalid spec: {message}")),
        });
    }
}

impl StatusStore for KubeStatus {
    fn with_status(&self, key: &ResourceKey, f: &mut dyn FnMut(Option<&Status>)) {
        let s = lock(&self.state);
        f(s.pending
            .get(key)
            .or_else(|| s.in_flight.get(key))
            .or_else(|| s.stored.get(key).and_then(|st| st.status.as_ref())))
    }

    fn write(
        &self,
        key: &ResourceKey,
        _workload: Option<&Workload>,
        status: &Arc<Status>,
    ) -> std::io::Result<bool> {
        if self.get(key).as_ref() == Some(&**status) {
            return Ok(false);
        }
        // Copied: the status travels on to the API server and back in this store's
        // own records.
        lock(&self.state)
            .pending
            .insert(key.clone(), Status::clone(status));
        // The writer lives as long as the process; a send after it is gone is moot.
        let _ = self.tx.send(Job::Status(key.clone()));
        Ok(true)
    }

    fn remove(&self, key: &ResourceKey) {
        let mut s = lock(&self.state);
        s.stored.remove(key);
        s.pending.remove(key);
        s.in_flight.remove(key);
        s.invalid.remove(key);
        s.told.remove(key);
    }

    fn stored(
        &self,
        key: &ResourceKey,
        uid: Option<String>,
        version: Option<String>,
        status: Option<Status>,
    ) {
        self.observe(key, uid, version, status);
    }

    /// A Warning Event, once per generation.
    fn tell_invalid(&self, key: &ResourceKey, generation: Option<u64>, message: &str) {
        self.tell_invalid_once(key, generation, message);
    }

    fn tell_valid(&self, key: &ResourceKey) {
        lock(&self.state).invalid.remove(key);
    }
}

impl StatusWriter {
    /// Sends queued statuses and events until the process ends. While the fence is
    /// closed nothing is sent: statuses stay pending (for `flush`), events are dropped.
    /// A failed patch is retried with its key's own backoff unless a newer status
    /// superseded it; a missing object, or an answer that retrying cannot change, drops it.
    pub async fn run(mut self) {
        let mut attempts: HashMap<ResourceKey, u32> = HashMap::new();
        let mut rng = fastrand::Rng::new();
        while let Some(job) = self.rx.recv().await {
            let key = match job {
                Job::Status(key) => key,
                Job::Event {
                    key,
                    reason,
                    message,
                } => {
                    let uid = lock(&self.store.state)
                        .stored
                        .get(&key)
                        .and_then(|s| s.uid.clone());
                    self.event(&key, uid.as_deref(), reason, &message).await;
                    continue;
                }
            };
            if !self.fence.is_open() {
                debug!(resource = %key, "not the leader: status held back");
                continue;
            }
            let (status, before) = {
                let mut s = lock(&self.store.state);
                let Some(status) = s.pending.remove(&key) else {
                    continue; // sent already, with a later request of the same key
                };
                s.in_flight.insert(key.clone(), status.clone());
                (status, s.stored.get(&key).cloned().unwrap_or_default())
            };
            let result = self.patch(&key, &status).await;
            lock(&self.store.state).in_flight.remove(&key);
            match result {
                Ok(version) => {
                    attempts.remove(&key);
                    self.store.patched(&key, &status, version);
                    let into_error = status.phase == Phase::Error
                        && before.status.as_ref().map(|s| s.phase) != Some(Phase::Error);
                    // An invalid spec has its own event.
                    let tell = {
                        let mut s = lock(&self.store.state);
                        if status.phase != Phase::Error {
                            s.told.remove(&key);
                        }
                        into_error
                            && !is_invalid_spec(&status)
                            && s.told.get(&key) != Some(&status.message)
                    };
                    if tell {
                        lock(&self.store.state)
                            .told
                            .insert(key.clone(), status.message.clone());
                        self.event(
                            &key,
                            before.uid.as_deref(),
                            "ReconcileError",
                            &status.message,
                        )
                        .await;
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    attempts.remove(&key);
                    debug!(resource = %key, "gone before its status was written");
                }
                Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => {
                    attempts.remove(&key);
                    warn!(resource = %key, code = e.code, error = %e.message, "status refused: not retried");
                }
                Err(e) => {
                    lock(&self.store.state)
                        .pending
                        .entry(key.clone())
                        .or_insert(status);
                    let n = attempts.entry(key.clone()).or_default();
                    *n = n.saturating_add(1);
                    let wait = RETRY.delay(*n, &mut rng);
                    warn!(resource = %key, error = %e, "cannot write status; retrying in {wait:?}");
                    let tx = self.store.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(Job::Status(key));
                    });
                }
            }
        }
    }

    fn api(&self, key: &ResourceKey) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &crate::resource::crd::api_resource(key.kind),
        )
    }

    /// One merge patch of the whole status to the status subresource; the object's new
    /// resourceVersion.
    async fn patch(
        &self,
        key: &ResourceKey,
        status: &Status,
    ) -> Result<Option<String>, kube::Error> {
        let body = json!({ "status": status });
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        self.api(key)
            .patch_status(&key.name, &params, &Patch::Merge(&body))
            .await
            .map(|o| o.metadata.resource_version)
    }

    /// A Warning Event on the object (core/v1, what `kubectl describe` shows). Failing
    /// to post one is logged and otherwise ignored.
    async fn event(&self, key: &ResourceKey, uid: Option<&str>, reason: &str, message: &str) {
        if !self.fence.is_open() {
            return;
        }
        use k8s_openapi::api::core::v1::Event;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let event: Event = match serde_json::from_value::<Event>(json!({
            "metadata": {"name": format!("{}.{stamp:x}", key.name), "namespace": key.namespace},
            "involvedObject": {
                "apiVersion": crate::resource::API_VERSION,
                "kind": key.kind.as_str(),
                "namespace": key.namespace,
                "name": key.name,
                "uid": uid,
            },
            "type": "Warning",
            "reason": reason,
            "message": message,
            "count": 1,
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": self.identity,
        })) {
            Ok(mut e) => {
                e.first_timestamp = Some(now.clone());
                e.last_timestamp = Some(now);
                e
            }
            Err(e) => return warn!(error = %e, "cannot build an event"),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!(resource = %key, error = %e, "cannot post an event");
        }
    }
}
