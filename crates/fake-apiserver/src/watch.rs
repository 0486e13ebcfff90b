//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events. A watch from
//! resourceVersion R replays the logged changes after R, then follows live ones; below
//! the compaction floor it gets one `ERROR` 410 event. Streams end at `timeoutSeconds`,
//! on [`crate::FakeApiServer::cut_watches`], or when they fall too far behind.

use std::collections::VecDeque;
use std::future::pending;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Interval, Sleep};

use crate::filter::Filter;
use crate::server::{Shared, lock};
use crate::status::Status;
use crate::store::Change;

/// What a watch request asked for.
pub(crate) struct WatchParams {
    pub resource: usize,
    pub filter: Filter,
    /// `None` (no resourceVersion, or "0"): start with the current objects as `ADDED`.
    pub from: Option<u64>,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial `ADDED` events with a bookmark that
    /// carries the `k8s.io/initial-events-end` annotation (streaming lists).
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

/// The body of a watch response.
pub(crate) fn stream(
    shared: &Arc<Shared>,
    params: WatchParams,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let state = start(shared, params);
    futures_util::stream::unfold(state, |mut state| async move {
        let line = state.next().await?;
        Some((line, state))
    })
}

struct WatchState {
    backlog: VecDeque<Bytes>,
    /// `None` once the stream is to end after its backlog (the 410 case).
    live: Option<broadcast::Receiver<Arc<Change>>>,
    resource: usize,
    filter: Filter,
    api_version: String,
    kind: &'static str,
    /// The revision this watch has seen every change up to: what bookmarks carry.
    position: u64,
    bookmarks: Option<Interval>,
    deadline: Option<Pin<Box<Sleep>>>,
    cut: watch::Receiver<u64>,
}

fn start(shared: &Arc<Shared>, params: WatchParams) -> WatchState {
    let store = lock(&shared.store);
    let rt = store.resource(params.resource);
    // An interval must not be zero.
    let period = (*lock(&shared.bookmark_interval)).max(Duration::from_millis(1));
    let mut state = WatchState {
        backlog: VecDeque::new(),
        live: None,
        resource: params.resource,
        filter: params.filter,
        api_version: rt.api_version(),
        kind: rt.kind,
        position: store.revision(),
        bookmarks: params
            .bookmarks
            .then(|| tokio::time::interval_at(Instant::now() + period, period)),
        deadline: params.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        cut: shared.cuts.subscribe(),
    };
    if let Some(from) = params.from
        && from < store.floor()
    {
        let status = Status::expired(format!(
            "too old resource version: {from} ({})",
            store.floor()
        ));
        state
            .backlog
            .push_back(event_line("ERROR", &status.to_json()));
        return state;
    }
    let (past, live) = store.changes_since(params.from.unwrap_or(store.revision()));
    state.live = Some(live);
    match params.from {
        None => {
            let namespace = state.filter.namespace.as_deref();
            for object in store.list(params.resource, namespace, None) {
                if state.filter.matches(object) {
                    state.backlog.push_back(event_line("ADDED", object));
                }
            }
            if params.send_initial_events {
                let end = state.bookmark(json!({"k8s.io/initial-events-end": "true"}));
                state.backlog.push_back(end);
            }
        }
        Some(_) => {
            for change in past {
                state.offer(&change);
            }
        }
    }
    state.position = store.revision();
    state
}

impl WatchState {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            // A cut wins over anything still to send; a dropped sender (the server is
            // gone) ends the stream too.
            if self.cut.has_changed().unwrap_or(true) {
                return None;
            }
            if let Some(line) = self.backlog.pop_front() {
                return Some(line);
            }
            let live = self.live.as_mut()?;
            tokio::select! {
                biased;
                _ = self.cut.changed() => return None,
                () = until(self.deadline.as_mut()) => return None,
                () = tick(self.bookmarks.as_mut()) => {
                    // Deliver what is pending first, so the bookmark skips nothing.
                    let mut pending = Vec::new();
                    while let Ok(change) = live.try_recv() {
                        pending.push(change);
                    }
                    for change in pending {
                        self.offer(&change);
                    }
                    let bookmark = self.bookmark(json!({}));
                    self.backlog.push_back(bookmark);
                }
                received = live.recv() => match received {
                    Ok(change) => self.offer(&change),
                    // Too far behind, or the store is gone: end, and let the client resume.
                    Err(_) => return None,
                },
            }
        }
    }

    /// Queues `change` if this watch wants it, and moves the position past it either way.
    fn offer(&mut self, change: &Change) {
        self.position = self.position.max(change.revision);
        if change.resource == self.resource && self.filter.matches(&change.object) {
            self.backlog
                .push_back(event_line(change.kind, &change.object));
        }
    }

    fn bookmark(&self, annotations: Value) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.position.to_string()});
        if annotations.as_object().is_some_and(|a| !a.is_empty()) {
            metadata["annotations"] = annotations;
        }
        let object =
            json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata});
        event_line("BOOKMARK", &object)
    }
}

async fn until(deadline: Option<&mut Pin<Box<Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => pending().await,
    }
}

async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => pending().await,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}
