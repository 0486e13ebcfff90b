//! Watches against kube-rs: replay from a resourceVersion, 410 below the compaction
//! floor, bookmarks, timeouts, silence for no-op writes, and kube-runtime's watcher
//! relisting after compaction and a cut.

use std::collections::BTreeSet;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use futures_util::{Stream, StreamExt};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);
const MACHINES: &str = "lxdmutater.dev/v1alpha1";

fn machines(server: &FakeApiServer) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("lxdmutater.dev", "v1alpha1", "Machine");
    Api::namespaced_with(
        server.client(),
        "demo",
        &ApiResource::from_gvk_with_plural(&gvk, "machines"),
    )
}

fn create(server: &FakeApiServer, name: &str) -> Value {
    server
        .create(json!({
            "apiVersion": MACHINES, "kind": "Machine",
            "metadata": {"name": name, "namespace": "demo"}, "spec": {"instance": name},
        }))
        .unwrap()
}

/// The next event, within the deadline; `None` when the stream ended.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("no watch event before the deadline")
}

/// `TYPE name` of a watch event, to compare sequences.
fn describe(event: &WatchEvent<DynamicObject>) -> String {
    let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
    match event {
        WatchEvent::Added(o) => format!("ADDED {}", name(o)),
        WatchEvent::Modified(o) => format!("MODIFIED {}", name(o)),
        WatchEvent::Deleted(o) => format!("DELETED {}", name(o)),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(s) => format!("ERROR {} {}", s.code, s.reason),
    }
}

#[tokio::test]
async fn watch_replays_every_change_after_its_resource_version_then_follows() {
    let server = FakeApiServer::start().await;
    create(&server, "0");
    let from = server.resource_version().to_string();
    create(&server, "1");
    server
        .patch_merge(
            MACHINES,
            "machines",
            "demo",
            "0",
            &json!({"spec": {"instance": "x"}}),
        )
        .unwrap();
    server.delete(MACHINES, "machines", "demo", "1").unwrap();

    let mut stream = machines(&server)
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next(&mut stream).await.unwrap().unwrap()));
    }
    assert_eq!(seen, ["ADDED 1", "MODIFIED 0", "DELETED 1"]);

    create(&server, "2");
    let live = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(describe(&live), "ADDED 2");
    let WatchEvent::Added(object) = live else {
        unreachable!()
    };
    assert_eq!(
        object.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
}

#[tokio::test]
async fn watch_from_before_the_floor_gets_410_expired_and_ends() {
    let server = FakeApiServer::start().await;
    create(&server, "0");
    let old = server.resource_version();
    server.compact();
    let mut stream = machines(&server)
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            let floor = server.resource_version();
            assert_eq!(
                status.message,
                format!("too old resource version: {old} ({floor})")
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(next(&mut stream).await.is_none());
    // From the floor itself, the watch is fine.
    let from = server.resource_version().to_string();
    let mut stream = machines(&server)
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    create(&server, "1");
    assert_eq!(
        describe(&next(&mut stream).await.unwrap().unwrap()),
        "ADDED 1"
    );
}

#[tokio::test]
async fn no_op_writes_emit_no_event() {
    let server = FakeApiServer::start().await;
    let api = machines(&server);
    create(&server, "0");
    let from = server.resource_version();
    let mut stream = api
        .watch(&WatchParams::default(), &from.to_string())
        .await
        .unwrap()
        .boxed();

    let same = Patch::Merge(json!({"spec": {"instance": "0"}, "status": {"ignored": true}}));
    api.patch("0", &PatchParams::default(), &same)
        .await
        .unwrap();
    assert_eq!(server.resource_version(), from);
    api.patch(
        "0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"instance": "y"}})),
    )
    .await
    .unwrap();
    // The first event is the real change: the no-op sent nothing.
    match next(&mut stream).await {
        Some(Ok(WatchEvent::Modified(o))) => assert_eq!(o.data["spec"]["instance"], "y"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_and_timeouts() {
    let server = FakeApiServer::start().await;
    server.set_bookmark_interval(Duration::from_millis(100));
    create(&server, "0");
    // kube-rs asks for bookmarks by default.
    let params = WatchParams::default().timeout(2);
    let mut stream = machines(&server).watch(&params, "0").await.unwrap().boxed();
    assert_eq!(
        describe(&next(&mut stream).await.unwrap().unwrap()),
        "ADDED 0"
    );
    let bookmark = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        describe(&bookmark),
        format!("BOOKMARK {}", server.resource_version())
    );
    // `timeoutSeconds` ends the stream.
    while let Some(event) = next(&mut stream).await {
        assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
    }
}

#[tokio::test]
async fn cut_ends_streams() {
    let server = FakeApiServer::start().await;
    let mut stream = machines(&server)
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    server.cut_watches();
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_a_cut() {
    let server = FakeApiServer::start().await;
    for name in ["a", "b"] {
        create(&server, name);
    }
    let mut events = watcher(machines(&server), watcher::Config::default()).boxed();
    let mut known = BTreeSet::new();
    let mut buffer = BTreeSet::new();
    let mut inits = 0;
    // Applies events until the watcher has completed `want_inits` (re)lists.
    let mut follow = async |known: &mut BTreeSet<String>, want_inits: usize, want: &[&str]| {
        while inits < want_inits || known.iter().map(String::as_str).ne(want.iter().copied()) {
            let name = |o: DynamicObject| o.metadata.name.unwrap_or_default();
            match next(&mut events).await.expect("the watcher ended") {
                Ok(watcher::Event::Init) => buffer.clear(),
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.insert(name(o));
                }
                Ok(watcher::Event::InitDone) => {
                    inits += 1;
                    *known = std::mem::take(&mut buffer);
                }
                Ok(watcher::Event::Apply(o)) => {
                    known.insert(name(o));
                }
                Ok(watcher::Event::Delete(o)) => {
                    known.remove(&name(o));
                }
                // The 410 that forces the relist.
                Err(e) => assert!(e.to_string().contains("Expired"), "{e}"),
            }
        }
    };
    follow(&mut known, 1, &["a", "b"]).await;
    create(&server, "c");
    follow(&mut known, 1, &["a", "b", "c"]).await;

    server.clear_requests();
    server.compact();
    server.cut_watches();
    create(&server, "d");
    server.delete(MACHINES, "machines", "demo", "a").unwrap();
    follow(&mut known, 2, &["b", "c", "d"]).await;

    let verbs: Vec<&str> = server
        .requests()
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|a| a.verb)
        .collect();
    assert!(verbs.starts_with(&["watch", "list"]), "{verbs:?}");
}
