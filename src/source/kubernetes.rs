//! The three kinds from the API server, each through `kube::runtime::watcher`: a paged
//! list, then a watch from the list's resourceVersion with bookmarks; the watcher
//! watches again from the last version seen when a stream ends, and lists again on a
//! 410 (the version was compacted away). Each object goes through `convert` into the
//! controller's store, with only what changed, so that the work is proportional to the
//! change.
//!
//! Only spec, uid, label and annotation changes reach the store as changes (the resource
//! model holds nothing else): a status write comes back on the watch as a `Stored` event
//! (what the server holds), and enqueues nothing.
//!
//! It emits `SourceEvent`s and writes nothing, statuses included.
//!
//! The watcher yields objects and errors; this module adds, around its stream:
//! - what a relist no longer has is removed, once the relist is complete (`InitDone`):
//!   a relist that fails part-way removes nothing;
//! - `Loaded` once every kind has been listed in full;
//! - the crate's backoff after a failure (the watcher retries at once on the next poll),
//!   logged with the kind;
//! - a list page that gets no answer within `REQUEST_TIMEOUT` (60 s) drops the watcher and
//!   starts a new one (the watcher bounds only the reads of a watch stream, and the
//!   caller's client has no read timeout);
//! - a 410 in answer to the start of a watch (not as an event on its stream) starts a new
//!   watcher: the watcher would retry the same expired version for ever.
//!
//! A watch stream silent for longer than its timeout plus 5 s is dropped and started
//! again by the watcher itself, within the old limit of the timeout plus 30 s.
//!
//! Two behaviours of the hand-written loop are not kept. The watcher re-opens the watches
//! of a quiet kind and takes in their bookmarks without yielding anything, so from
//! outside its stream a quiet kind cannot be told from a stuck request or a spinning one:
//! - the start of a watch (the request, until its response headers) has no time limit:
//!   a dead connection fails it after the kernel's TCP retransmissions, and only a server
//!   that takes the request and never answers holds it. A limit on each item of the
//!   stream would catch that, but would also relist every quiet kind every few minutes;
//! - a watch the server ends at once, without an event, is re-opened at once rather than
//!   after a backoff (no API server does so; a broken proxy could).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::resource::{Kind, ResourceKey};

use super::bounded::KubeObject;
use super::{SourceEvent, convert};

/// Retry delays for the API server.
const RETRY: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

/// Objects per list page.
const PAGE: u32 = 500;
/// How long the API server may keep one watch open (it ends it then; the watcher watches
/// again). The watcher drops a stream silent for 5 s longer.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A list page that takes longer failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A failure this long after the last retry follows a healthy stretch (a watch that
/// lasted): it starts the backoff over rather than doubling it.
const HEALTHY: Duration = Duration::from_secs(10);

/// What the three kind watchers share.
pub struct Source {
    events: UnboundedSender<SourceEvent>,
    client: kube::Client,
    /// Only this namespace, or all.
    namespace: Option<String>,
    /// The kinds to watch (a controller of one flavour reads only what it needs).
    kinds: Vec<Kind>,
    /// Only the Containers of this host machine (a field selector on `spec.machine`:
    /// the API server filters, and a host's controller never reads the others').
    machine: Option<String>,
    /// Objects that do not load now (their last good version is kept).
    broken: Mutex<HashSet<ResourceKey>>,
    /// Kinds listed at least once; the desired state is loaded when all `kinds` are.
    listed: AtomicUsize,
}

/// One kind's view of what it has put in the store.
#[derive(Default)]
struct KindState {
    /// The keys of this kind in the store, to find what a relist no longer has.
    known: HashSet<ResourceKey>,
    /// The keys a relist has brought so far; `Some` from `Init` to `InitDone`.
    seen: Option<HashSet<ResourceKey>>,
    /// Listed in full at least once.
    loaded: bool,
}

/// What a failure asks of the loop.
enum Recovery {
    /// The watcher recovers on its next poll.
    Poll,
    /// The watcher cannot recover by itself: start a new one (it lists again).
    Restart,
}

impl Source {
    pub fn new(
        events: UnboundedSender<SourceEvent>,
        client: kube::Client,
        namespace: Option<String>,
        kinds: Vec<Kind>,
        machine: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Source {
            events,
            client,
            namespace,
            kinds,
            machine,
            broken: Mutex::new(HashSet::new()),
            listed: AtomicUsize::new(0),
        })
    }

    /// Watches every kind until the process ends.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.kinds
            .iter()
            .copied()
            .map(|kind| {
                let me = self.clone();
                tokio::spawn(async move { me.run(kind).await })
            })
            .collect()
    }

    fn api(&self, kind: Kind) -> Api<KubeObject> {
        let resource = crate::resource::crd::api_resource(kind);
        match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// One kind, until the process ends.
    async fn run(&self, kind: Kind) {
        let mut config = watcher::Config::default()
            .timeout(WATCH_TIMEOUT_SECS)
            .page_size(PAGE);
        if let (Kind::Container, Some(machine)) = (kind, &self.machine) {
            config = config.fields(&format!("spec.machine={machine}"));
        }
        let mut state = KindState::default();
        let mut delay = Backoff::new(RETRY);
        let mut resumed = Instant::now();
        loop {
            let mut stream = watcher(self.api(kind), config.clone()).boxed();
            loop {
                // Only while listing is each item due soon: while watching, the watcher
                // takes in bookmarks and re-opens streams without yielding anything.
                let next = if state.seen.is_some() {
                    let Ok(next) = tokio::time::timeout(REQUEST_TIMEOUT, stream.next()).await
                    else {
                        warn!(
                            kind = %kind,
                            "cannot list: no answer within {REQUEST_TIMEOUT:?}; retrying in {:?}",
                            delay.peek()
                        );
                        delay.wait().await;
                        resumed = Instant::now();
                        break;
                    };
                    next
                } else {
                    stream.next().await
                };
                // The watcher's stream has no end; were it to end, a new one must not
                // spin.
                let Some(next) = next else {
                    warn!(kind = %kind, "watcher ended; again in {:?}", delay.peek());
                    delay.wait().await;
                    resumed = Instant::now();
                    break;
                };
                match next {
                    Ok(event) => {
                        if self.apply(kind, &mut state, event) {
                            delay.reset();
                        }
                    }
                    Err(e) => {
                        if resumed.elapsed() > HEALTHY {
                            delay.reset();
                        }
                        let recovery = self.failed(kind, &e, &mut delay).await;
                        resumed = Instant::now();
                        if let Recovery::Restart = recovery {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Takes in one event of the watcher; whether it shows the server serving (a
    /// complete list or a change), so that the backoff starts over.
    fn apply(&self, kind: Kind, state: &mut KindState, event: Event<KubeObject>) -> bool {
        match event {
            Event::Init => {
                state.seen = Some(HashSet::new());
                false
            }
            // A page answered, but the list may still fail on the next one.
            Event::InitApply(obj) => {
                if let Some(key) = self.upsert(kind, &obj.value) {
                    if let Some(seen) = &mut state.seen {
                        seen.insert(key.clone());
                    }
                    state.known.insert(key);
                }
                false
            }
            Event::InitDone => {
                let seen = state.seen.take().unwrap_or_default();
                let gone: Vec<ResourceKey> = state.known.difference(&seen).cloned().collect();
                self.forget(&gone);
                state.known = seen;
                debug!(kind = %kind, objects = state.known.len(), "listed");
                if !std::mem::replace(&mut state.loaded, true)
                    && self.listed.fetch_add(1, Ordering::SeqCst) + 1 == self.kinds.len()
                {
                    info!("desired state loaded from the API server");
                    self.emit(SourceEvent::Loaded);
                }
                true
            }
            Event::Apply(obj) => {
                if let Some(key) = self.upsert(kind, &obj.value) {
                    state.known.insert(key);
                }
                true
            }
            Event::Delete(obj) => {
                if let Some(key) = convert::key(kind, &obj.value) {
                    state.known.remove(&key);
                    self.forget(&[key]);
                }
                true
            }
        }
    }

    /// Logs a failure of the watcher and waits as long as it asks.
    async fn failed(&self, kind: Kind, error: &watcher::Error, delay: &mut Backoff) -> Recovery {
        match error {
            // Listing again is the remedy, and nothing is wrong with the server.
            watcher::Error::WatchError(s) if s.code == 410 => {
                info!(kind = %kind, "watch version expired (410): listing again");
                Recovery::Poll
            }
            watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410 => {
                info!(kind = %kind, "watch version expired (410): listing again");
                Recovery::Restart
            }
            watcher::Error::InitialListFailed(e) => {
                warn!(kind = %kind, error = %e, "cannot list; retrying in {:?}", delay.peek());
                delay.wait().await;
                Recovery::Poll
            }
            other => {
                warn!(kind = %kind, error = %other, "watch failed; again in {:?}", delay.peek());
                delay.wait().await;
                Recovery::Poll
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::mpsc;

    fn source() -> (Arc<Source>, mpsc::UnboundedReceiver<SourceEvent>) {
        let url = "http://127.0.0.1:1".parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        (Source::new(tx, client, None, Kind::ALL.to_vec(), None), rx)
    }

    fn app(name: &str) -> KubeObject {
        serde_json::from_value(json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": "m", "resourceVersion": "1"},
            "spec": {"revision": 1},
        }))
        .unwrap()
    }

    fn removed(rx: &mut mpsc::UnboundedReceiver<SourceEvent>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let SourceEvent::Remove(key) = event {
                names.push(key.name.to_string());
            }
        }
        names
    }

    #[tokio::test]
    async fn only_a_complete_relist_removes_what_it_no_longer_has() {
        let (source, mut rx) = source();
        let kind = Kind::Application;
        let mut state = KindState::default();
        for event in [
            Event::Init,
            Event::InitApply(app("a")),
            Event::InitApply(app("b")),
            Event::InitDone,
        ] {
            source.apply(kind, &mut state, event);
        }
        assert!(removed(&mut rx).is_empty());

        // A relist that fails after its first page, then one that completes without `b`.
        for event in [Event::Init, Event::InitApply(app("a"))] {
            source.apply(kind, &mut state, event);
        }
        assert!(removed(&mut rx).is_empty());
        for event in [Event::Init, Event::InitApply(app("a")), Event::InitDone] {
            source.apply(kind, &mut state, event);
        }
        assert_eq!(removed(&mut rx), ["b"]);

        source.apply(kind, &mut state, Event::Delete(app("a")));
        assert_eq!(removed(&mut rx), ["a"]);
        source.apply(kind, &mut state, Event::Init);
        source.apply(kind, &mut state, Event::InitDone);
        assert!(removed(&mut rx).is_empty());
    }

    #[tokio::test]
    async fn loaded_once_when_every_kind_has_listed_in_full() {
        let (source, mut rx) = source();
        let mut states: Vec<KindState> = Kind::ALL.iter().map(|_| KindState::default()).collect();
        // Loaded events so far, after each kind's list, over two rounds of lists.
        let mut after_each = Vec::new();
        let mut loaded = 0;
        for _ in 0..2 {
            for (kind, state) in Kind::ALL.into_iter().zip(&mut states) {
                source.apply(kind, state, Event::Init);
                source.apply(kind, state, Event::InitDone);
                while let Ok(event) = rx.try_recv() {
                    loaded += usize::from(event == SourceEvent::Loaded);
                }
                after_each.push(loaded);
            }
        }
        assert_eq!(after_each, [0, 0, 1, 1, 1, 1]);
    }
}
