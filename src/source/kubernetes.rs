//! The three kinds from the API server: list, then watch from the list's
//! resourceVersion; on a 410 (the version was compacted away) list again; when a watch
//! stream ends, watch again from the last version seen. Each object goes through
//! `convert` into the controller's store, with only what changed, so that the work is
//! proportional to the change.
//!
//! Only spec, uid, label and annotation changes reach the store as changes (the resource
//! model holds nothing else): a status write comes back on the watch as a `Stored` event
//! (what the server holds), and enqueues nothing.
//!
//! It emits `SourceEvent`s and writes nothing, statuses included. The list/watch loop is
//! still this module's own, not `kube::runtime::watcher`'s: moving onto it is an open
//! step (the behaviours the tests pin, the silent-watch limit and the per-kind `Loaded`,
//! would have to be kept).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::resource::{Kind, ResourceKey};

use super::{SourceEvent, convert};

/// Retry delays for the API server.
const RETRY: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

/// Objects per list page.
const PAGE: u32 = 500;
/// How long the API server may keep one watch open (it ends it then; we watch again).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that sends nothing for this long (no event, no bookmark, no end) is dropped.
const SILENT_WATCH: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 30);
/// A list page or the start of a watch that takes longer failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What the three kind watchers share.
pub struct Source {
    events: UnboundedSender<SourceEvent>,
    client: kube::Client,
    /// Only this namespace, or all.
    namespace: Option<String>,
    /// Objects that do not load now (their last good version is kept).
    broken: Mutex<HashSet<ResourceKey>>,
    /// Kinds listed at least once; the desired state is loaded at three.
    listed: AtomicUsize,
}

impl Source {
    pub fn new(
        events: UnboundedSender<SourceEvent>,
        client: kube::Client,
        namespace: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Source {
            events,
            client,
            namespace,
            broken: Mutex::new(HashSet::new()),
            listed: AtomicUsize::new(0),
        })
    }

    /// Watches every kind until the process ends.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let me = self.clone();
                tokio::spawn(async move { me.run(kind).await })
            })
            .collect()
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        let resource = crate::resource::crd::api_resource(kind);
        match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// List, watch, and again, for one kind.
    async fn run(&self, kind: Kind) {
        let api = self.api(kind);
        // The keys of this kind in the store, to find what a relist no longer has.
        let mut known: HashSet<ResourceKey> = HashSet::new();
        let mut first = true;
        let mut delay = Backoff::new(RETRY);
        loop {
            let (objects, mut version) = match list(&api).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(kind = %kind, error = %e, "cannot list; retrying in {:?}", delay.peek());
                    delay.wait().await;
                    continue;
                }
            };
            delay.reset();
            let mut seen = HashSet::new();
            for obj in &objects {
                if let Some(key) = self.upsert(kind, obj) {
                    seen.insert(key);
                }
            }
            let gone: Vec<ResourceKey> = known.difference(&seen).cloned().collect();
            self.forget(&gone);
            known = seen;
            debug!(kind = %kind, objects = objects.len(), version = %version, "listed");
            if std::mem::take(&mut first)
                && self.listed.fetch_add(1, Ordering::SeqCst) + 1 == Kind::ALL.len()
            {
                info!("desired state loaded from the API server");
                self.emit(SourceEvent::Loaded);
            }

            // Watch until the version is too old (then list again).
            loop {
                let started = std::time::Instant::now();
                let mut events = 0;
                let end = self
                    .watch(kind, &api, &mut version, &mut known, &mut events)
                    .await;
                // A stream that carried something, or lasted, was healthy: start over.
                if events > 0 || started.elapsed() > Duration::from_secs(10) {
                    delay.reset();
                }
                match end {
                    WatchEnd::Ended
                        if events == 0 && started.elapsed() < Duration::from_secs(1) =>
                    {
                        debug!(kind = %kind, "watch ended at once; again in {:?}", delay.peek());
                        delay.wait().await;
                    }
                    WatchEnd::Ended => {}
                    WatchEnd::Gone => {
                        info!(kind = %kind, "watch version expired (410): listing again");
                        break;
                    }
                    WatchEnd::Failed(e) => {
                        warn!(kind = %kind, error = %e, "watch failed; again in {:?}", delay.peek());
                        delay.wait().await;
                    }
                }
            }
        }
    }

    /// One watch stream, to its end.
    async fn watch(
        &self,
        kind: Kind,
        api: &Api<DynamicObject>,
        version: &mut String,
        known: &mut HashSet<ResourceKey>,
        events: &mut usize,
    ) -> WatchEnd {
        let params = WatchParams {
            bookmarks: true,
            ..WatchParams::default()
        }
        .timeout(WATCH_TIMEOUT_SECS);
        let stream = match tokio::time::timeout(REQUEST_TIMEOUT, api.watch(&params, version)).await
        {
            Err(_) => return WatchEnd::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Ok(s)) => s,
            Ok(Err(kube::Error::Api(s))) if s.code == 410 => return WatchEnd::Gone,
            Ok(Err(e)) => return WatchEnd::Failed(e.to_string()),
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            // The server ends a watch after WATCH_TIMEOUT_SECS and sends bookmarks: a
            // stream silent for longer is a connection gone half-open.
            let Ok(next) = tokio::time::timeout(SILENT_WATCH, stream.next()).await else {
                return WatchEnd::Failed(format!("watch silent for {SILENT_WATCH:?}"));
            };
            let Some(event) = next else { break };
            *events += 1;
            match event {
                Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                    remember_version(version, &obj);
                    if let Some(key) = self.upsert(kind, &to_value(&obj)) {
                        known.insert(key);
                    }
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    remember_version(version, &obj);
                    if let Some(key) = convert::key(kind, &to_value(&obj)) {
                        known.remove(&key);
                        self.forget(&[key]);
                    }
                }
                Ok(WatchEvent::Bookmark(b)) => *version = b.metadata.resource_version,
                Ok(WatchEvent::Error(s)) if s.code == 410 => return WatchEnd::Gone,
                Ok(WatchEvent::Error(s)) => {
                    return WatchEnd::Failed(format!("{} ({})", s.message, s.code));
                }
                Err(e) => return WatchEnd::Failed(e.to_string()),
            }
        }
        WatchEnd::Ended
    }

    fn emit(&self, event: SourceEvent) {
        // The receiver lives as long as the process; a send after it is gone is moot.
        let _ = self.events.send(event);
    }

    /// Says what one object is now; its key, whether it loaded or not.
    fn upsert(&self, kind: Kind, obj: &Value) -> Option<ResourceKey> {
        let key = convert::key(kind, obj)?;
        if convert::has_status(kind) {
            let text = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
            self.emit(SourceEvent::Stored {
                key: key.clone(),
                uid: text("/metadata/uid"),
                version: text("/metadata/resourceVersion"),
                status: convert::status(obj),
            });
        }
        match convert::resource(kind, obj) {
            Ok(resource) => {
                if self.set_broken(&key, false) {
                    self.emit(SourceEvent::Valid(key.clone()));
                }
                self.emit(SourceEvent::Upsert(resource));
            }
            Err(problems) => {
                let generation = obj.pointer("/metadata/generation").and_then(Value::as_u64);
                let message: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                let words: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
                for m in &message {
                    warn!("{m}");
                }
                self.emit(SourceEvent::Invalid {
                    key: key.clone(),
                    generation,
                    message: words.join("; "),
                });
                self.set_broken(&key, true);
            }
        }
        Some(key)
    }

    fn forget(&self, keys: &[ResourceKey]) {
        for k in keys {
            self.set_broken(k, false);
            self.emit(SourceEvent::Remove(k.clone()));
        }
    }

    /// Whether the key's state changed; the count goes out when it did.
    fn set_broken(&self, key: &ResourceKey, broken: bool) -> bool {
        let mut b = self
            .broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if broken {
            b.insert(key.clone())
        } else {
            b.remove(key)
        };
        if changed {
            self.emit(SourceEvent::InvalidCount(b.len()));
        }
        changed
    }
}

#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

enum WatchEnd {
    /// The server ended the stream (timeout, restart): watch again from the same version.
    Ended,
    /// 410: the version is gone; list again.
    Gone,
    Failed(String),
}

fn to_value(obj: &DynamicObject) -> Value {
    // A DynamicObject is plain JSON data: it always serializes.
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

fn remember_version(version: &mut String, obj: &DynamicObject) {
    if let Some(v) = &obj.metadata.resource_version {
        version.clone_from(v);
    }
}

/// Every object of the kind, page by page, and the list's resourceVersion.
async fn list(api: &Api<DynamicObject>) -> Result<(Vec<Value>, String), ListError> {
    let mut objects = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    // Later pages continue the first page's snapshot: its version is the list's.
    let mut version = None;
    loop {
        let page = tokio::time::timeout(REQUEST_TIMEOUT, api.list(&params))
            .await
            .map_err(|_| ListError::Timeout)??;
        let version = version
            .get_or_insert_with(|| page.metadata.resource_version.clone().unwrap_or_default())
            .clone();
        objects.extend(page.items.iter().map(to_value));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok((objects, version)),
        }
    }
}
