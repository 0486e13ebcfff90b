//! The fake against kube-rs: every verb on a custom resource and on Leases, Kubernetes'
//! generation and resourceVersion rules, errors as Status bodies, the request log,
//! faults, and two lease managers sharing one Lease.

use std::time::Duration;

use fake_apiserver::{FakeApiServer, Fault};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::{Value, json};

fn machines(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("lxdmutater.dev", "v1alpha1", "Machine");
    Api::namespaced_with(
        client,
        "demo",
        &ApiResource::from_gvk_with_plural(&gvk, "machines"),
    )
}

fn machine(name: &str, spec: Value) -> DynamicObject {
    let object = json!({
        "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
        "metadata": {"name": name, "namespace": "demo", "labels": {"model": "demo"}},
        "spec": spec,
    });
    serde_json::from_value(object).unwrap()
}

/// The code and reason of a Status error.
fn status_of<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected a Status error, got {other:?}"),
    }
}

fn generation(object: &DynamicObject) -> Option<i64> {
    object.metadata.generation
}

fn rv(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap()
}

/// Waits for `condition`, polling, for at most ten seconds.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met before the deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_verb_on_a_custom_resource_follows_kubernetes_rules() {
    let server = FakeApiServer::start().await;
    let api = machines(server.client());
    let pp = PostParams::default();

    let created = api
        .create(&pp, &machine("0", json!({"instance": "juju-0"})))
        .await
        .unwrap();
    assert_eq!(generation(&created), Some(1));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(rv(&created), server.resource_version().to_string());
    assert_eq!(
        status_of(api.create(&pp, &machine("0", json!({}))).await),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        status_of(api.get("missing").await),
        (404, "NotFound".into())
    );

    // Replace: a spec change bumps generation; a stale resourceVersion conflicts.
    let mut edited = api.get("0").await.unwrap();
    edited.data["spec"]["instance"] = json!("juju-0-renamed");
    let replaced = api.replace("0", &pp, &edited).await.unwrap();
    assert_eq!(generation(&replaced), Some(2));
    assert_eq!(
        status_of(api.replace("0", &pp, &edited).await),
        (409, "Conflict".into())
    );

    // Merge patch, with and without a matching resourceVersion.
    let merge = Patch::Merge(json!({"spec": {"applications": ["telegraf"]}}));
    let patched = api
        .patch("0", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(generation(&patched), Some(3));
    assert_eq!(patched.data["spec"]["instance"], "juju-0-renamed");
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": rv(&created)}, "spec": {"x": 1}}));
    assert_eq!(
        status_of(api.patch("0", &PatchParams::default(), &stale).await),
        (409, "Conflict".into())
    );

    // JSON patch: a passing test applies, a failing one changes nothing.
    let ops = |value: &str| -> Patch<()> {
        Patch::Json(
            serde_json::from_value(json!([
                {"op": "test", "path": "/spec/instance", "value": value},
                {"op": "replace", "path": "/spec/instance", "value": "juju-0"},
                {"op": "add", "path": "/spec/applications/-", "value": "containerd"},
            ]))
            .unwrap(),
        )
    };
    let patched = api
        .patch("0", &PatchParams::default(), &ops("juju-0-renamed"))
        .await
        .unwrap();
    assert_eq!(
        patched.data["spec"]["applications"],
        json!(["telegraf", "containerd"])
    );
    assert_eq!(
        status_of(api.patch("0", &PatchParams::default(), &ops("nope")).await).0,
        422
    );

    // Server-side apply creates a missing object, then patches it.
    let apply = PatchParams::apply("test-manager");
    let applied = api
        .patch(
            "1",
            &apply,
            &Patch::Apply(machine("1", json!({"instance": "a"}))),
        )
        .await
        .unwrap();
    assert_eq!(generation(&applied), Some(1));
    let applied = api
        .patch(
            "1",
            &apply,
            &Patch::Apply(machine("1", json!({"instance": "b"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        (generation(&applied), &applied.data["spec"]["instance"]),
        (Some(2), &json!("b"))
    );

    // Delete returns the object; then it is gone.
    let deleted = api.delete("1", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        deleted.left().and_then(|o| o.metadata.name),
        Some("1".to_owned())
    );
    assert_eq!(status_of(api.get("1").await).0, 404);
    assert_eq!(
        status_of(api.delete("1", &DeleteParams::default()).await).0,
        404
    );
}

#[tokio::test]
async fn lists_really_page_and_filter_by_label() {
    let server = FakeApiServer::start().await;
    let api = machines(server.client());
    for i in 0..5 {
        let mut m = machine(&format!("m{i}"), json!({}));
        if i == 3 {
            m.metadata.labels = Some([("model".to_owned(), "other".to_owned())].into());
        }
        api.create(&PostParams::default(), &m).await.unwrap();
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        assert_eq!(
            page.metadata.resource_version,
            Some(server.resource_version().to_string())
        );
        names.extend(page.items.into_iter().filter_map(|o| o.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(
        (pages, names),
        (
            3,
            vec!["m0", "m1", "m2", "m3", "m4"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );

    let demo = api
        .list(&ListParams::default().labels("model=demo"))
        .await
        .unwrap();
    assert_eq!(demo.items.len(), 4);
    let all = Api::<DynamicObject>::all_with(
        server.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("lxdmutater.dev", "v1alpha1", "Machine"),
            "machines",
        ),
    );
    assert_eq!(
        all.list(&ListParams::default().fields("metadata.name=m4"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn status_writes_never_bump_generation_and_no_op_writes_bump_nothing() {
    let server = FakeApiServer::start().await;
    let api = machines(server.client());
    api.create(
        &PostParams::default(),
        &machine("0", json!({"instance": "a"})),
    )
    .await
    .unwrap();

    let status = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    let after_status = api
        .patch_status("0", &PatchParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(generation(&after_status), Some(1));
    assert_eq!(after_status.data["status"]["phase"], "Ready");

    // The main resource ignores status and metadata changes leave generation alone.
    let main =
        Patch::Merge(json!({"status": {"phase": "Lost"}, "metadata": {"labels": {"x": "y"}}}));
    let after_main = api
        .patch("0", &PatchParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(generation(&after_main), Some(1));
    assert_eq!(after_main.data["status"]["phase"], "Ready");
    assert_ne!(rv(&after_main), rv(&after_status));

    let same = Patch::Merge(json!({"spec": {"instance": "a"}}));
    let unchanged = api
        .patch("0", &PatchParams::default(), &same)
        .await
        .unwrap();
    assert_eq!(
        (rv(&unchanged), generation(&unchanged)),
        (rv(&after_main), Some(1))
    );
    let unchanged = api
        .patch_status("0", &PatchParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(rv(&unchanged), rv(&after_main));

    // The test API follows the same rules.
    let direct = server
        .patch_status(
            "lxdmutater.dev/v1alpha1",
            "machines",
            "demo",
            "0",
            &json!({"status": {"phase": "Gone"}}),
        )
        .unwrap();
    assert_eq!(direct["metadata"]["generation"], 1);
    let direct = server
        .patch_merge(
            "lxdmutater.dev/v1alpha1",
            "machines",
            "demo",
            "0",
            &json!({"spec": {"instance": "b"}}),
        )
        .unwrap();
    assert_eq!(direct["metadata"]["generation"], 2);
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let send = |method: &str, path: &str, content_type: &str, body: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap();
        client.request::<Value>(request)
    };
    let machines = "/apis/lxdmutater.dev/v1alpha1/namespaces/demo/machines";
    assert_eq!(
        status_of(send("POST", machines, "application/json", "{nope").await),
        (400, "BadRequest".into())
    );
    assert_eq!(
        status_of(send("POST", machines, "application/json", "[1]").await).0,
        400
    );
    let no_name = r#"{"apiVersion":"lxdmutater.dev/v1alpha1","kind":"Machine","metadata":{}}"#;
    assert_eq!(
        status_of(send("POST", machines, "application/json", no_name).await).0,
        422
    );
    let wrong_ns = r#"{"metadata":{"name":"a","namespace":"other"}}"#;
    assert_eq!(
        status_of(send("POST", machines, "application/json", wrong_ns).await).0,
        400
    );
    assert_eq!(
        status_of(send("GET", &format!("{machines}?limit=x"), "", "").await).0,
        400
    );
    assert_eq!(
        status_of(send("GET", &format!("{machines}?continue=zz"), "", "").await).0,
        400
    );
    assert_eq!(
        status_of(send("GET", &format!("{machines}?labelSelector=a+in+(b)"), "", "").await).0,
        400
    );
    assert_eq!(
        status_of(send("GET", "/apis/lxdmutater.dev/v1alpha1/widgets", "", "").await).0,
        404
    );
    assert_eq!(
        status_of(send("GET", &format!("{machines}/0/scale"), "", "").await).0,
        404
    );
    assert_eq!(status_of(send("GET", "/openapi/v2", "", "").await).0, 404);

    server
        .create(json!({"apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine", "metadata": {"name": "0", "namespace": "demo"}}))
        .unwrap();
    let one = format!("{machines}/0");
    assert_eq!(
        status_of(send("PATCH", &one, "text/plain", "{}").await).0,
        415
    );
    assert_eq!(
        status_of(send("PATCH", &one, "application/json-patch+json", "{}").await).0,
        400
    );
    assert_eq!(
        status_of(send("PATCH", &one, "application/apply-patch+yaml", "spec: {}").await).0,
        400
    );
    // Apply needs a field manager.
    assert_eq!(
        status_of(send("PATCH", &one, "application/apply-patch+yaml", "{}").await).0,
        400
    );
    assert_eq!(
        status_of(
            send(
                "PUT",
                &one,
                "application/json",
                r#"{"metadata":{"name":"1"}}"#
            )
            .await
        )
        .0,
        400
    );
    assert_eq!(
        status_of(send("POST", &one, "application/json", "{}").await).0,
        405
    );
    // The store is intact.
    assert!(
        server
            .get("lxdmutater.dev/v1alpha1", "machines", "demo", "0")
            .is_some()
    );
}

#[tokio::test]
async fn request_log_records_rbac_attributes() {
    let server = FakeApiServer::start().await;
    let api = machines(server.client());
    api.create(&PostParams::default(), &machine("0", json!({})))
        .await
        .unwrap();
    server.clear_requests();
    api.get("0").await.unwrap();
    api.patch_status(
        "0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {}})),
    )
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    leases.list(&ListParams::default()).await.unwrap();

    let seen: Vec<(String, &str, String, String, Option<String>)> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.resource)
        .map(|a| {
            (
                a.api_group.clone(),
                a.verb,
                a.rbac_resource(),
                a.namespace.unwrap_or_default(),
                a.name,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "lxdmutater.dev".into(),
                "get",
                "machines".into(),
                "demo".into(),
                Some("0".into())
            ),
            (
                "lxdmutater.dev".into(),
                "patch",
                "machines/status".into(),
                "demo".into(),
                Some("0".into())
            ),
            (
                "coordination.k8s.io".into(),
                "list",
                "leases".into(),
                "kube-system".into(),
                None
            ),
        ]
    );
    assert!(server.requests().iter().all(|r| r.code == 200));
}

#[tokio::test]
async fn leases_and_events_are_served() {
    let server = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::default_namespaced(server.client());
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}))
            .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let patch = Patch::Strategic(json!({"spec": {"holderIdentity": null, "leaseTransitions": 1}}));
    let patched = leases
        .patch("l", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let spec = patched.spec.unwrap_or_default();
    assert_eq!(
        (spec.holder_identity, spec.lease_transitions),
        (None, Some(1))
    );
    assert_eq!(
        status_of(leases.replace("l", &PostParams::default(), &created).await).0,
        409
    );

    let events: Api<CoreEvent> = Api::namespaced(server.client(), "demo");
    let event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"generateName": "machine-0."}, "reason": "Applied", "message": "done",
        "involvedObject": {"kind": "Machine", "name": "0"},
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &event).await.unwrap();
    assert!(
        created
            .metadata
            .name
            .is_some_and(|n| n.starts_with("machine-0.") && n.len() > 10)
    );
}

#[tokio::test]
async fn faults_fail_requests_and_clear() {
    let server = FakeApiServer::start().await;
    let api = machines(server.client());
    api.create(&PostParams::default(), &machine("0", json!({})))
        .await
        .unwrap();
    let mut watch = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();

    // Unreachable: open streams are cut and requests fail fast, not by hanging.
    server.set_fault(Fault::Unreachable);
    let get = tokio::time::timeout(Duration::from_secs(5), api.get("0")).await;
    assert!(matches!(get, Ok(Err(_))), "{get:?}");
    let fresh =
        tokio::time::timeout(Duration::from_secs(5), machines(server.client()).get("0")).await;
    assert!(matches!(fresh, Ok(Err(_))), "{fresh:?}");
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = watch.next().await {}
    });
    assert!(drained.await.is_ok(), "the watch outlived the server");
    server.clear_fault();
    assert!(api.get("0").await.is_ok());

    // kube-rs 5 retries 503s by itself (up to 15 times, for minutes): a default client
    // waits through the fault, one without retries sees the Status at once.
    server.set_fault(Fault::ServiceUnavailable);
    server.clear_requests();
    let retrying = tokio::spawn(async move { api.get("0").await });
    wait_until(|| server.requests().iter().filter(|r| r.code == 503).count() >= 2).await;
    server.clear_fault();
    let got = tokio::time::timeout(Duration::from_secs(10), retrying).await;
    assert!(matches!(got, Ok(Ok(Ok(_)))), "{got:?}");
    let mut config = server.config();
    config.default_retry = false;
    let no_retries = machines(Client::try_from(config).unwrap());
    server.set_fault(Fault::ServiceUnavailable);
    assert_eq!(
        status_of(no_retries.get("0").await),
        (503, "ServiceUnavailable".into())
    );
    server.clear_fault();
    let api = no_retries;

    // A matcher fails the next two status patches only.
    server.set_fault(Fault::fail(500, 2, |r| {
        r.resource
            .as_ref()
            .is_some_and(|a| a.verb == "patch" && a.subresource.as_deref() == Some("status"))
    }));
    let status = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    assert!(api.get("0").await.is_ok());
    assert_eq!(
        status_of(
            api.patch_status("0", &PatchParams::default(), &status)
                .await
        ),
        (500, "InternalError".into())
    );
    assert_eq!(
        status_of(
            api.patch_status("0", &PatchParams::default(), &status)
                .await
        )
        .0,
        500
    );
    assert!(
        api.patch_status("0", &PatchParams::default(), &status)
            .await
            .is_ok()
    );
    let codes: Vec<u16> = server
        .requests()
        .iter()
        .rev()
        .take(3)
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, [200, 500, 500]);
}

#[tokio::test]
async fn two_lease_managers_never_hold_the_lease_together() {
    let server = FakeApiServer::start().await;
    let manager = |identity: &str| {
        LeaseManagerBuilder::new(server.client(), "lxd-mutater")
            .with_identity(identity)
            .with_grace(1)
            .with_duration(2)
            .build()
    };
    let (a, b) = tokio::join!(manager("a"), manager("b"));
    let (mut a, a_task) = a.unwrap().watch().await;
    let (mut b, b_task) = b.unwrap().watch().await;

    // Watch both for over two lease durations: one leader, never two.
    let mut leader = None;
    let window = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            changed = a.changed() => changed.unwrap(),
            changed = b.changed() => changed.unwrap(),
        }
        let (holds_a, holds_b) = (*a.borrow(), *b.borrow());
        assert!(!(holds_a && holds_b), "both managers hold the lease");
        if holds_a || holds_b {
            let now = if holds_a { "a" } else { "b" };
            assert!(
                leader.is_none_or(|l| l == now),
                "the lease changed hands while held"
            );
            leader = Some(now);
        }
    }
    let leader = leader.expect("nobody acquired the lease");
    let lease = server
        .get("coordination.k8s.io/v1", "leases", "default", "lxd-mutater")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], leader);

    // The holder releases (dropping its receiver makes its task call `release()`).
    let (holder, holder_task, mut other, other_task) = if leader == "a" {
        (a, a_task, b, b_task)
    } else {
        (b, b_task, a, a_task)
    };
    drop(holder);
    holder_task.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(15), other.wait_for(|holds| *holds))
        .await
        .expect("the other manager never acquired the released lease")
        .unwrap();
    drop(other);
    other_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_in_process_client_speaks_the_same_api() {
    let server = FakeApiServer::start().await;
    let api = machines(server.in_process_client());
    let created = api
        .create(
            &PostParams::default(),
            &machine("0", json!({"instance": "i0"})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&created), Some(1));
    // A watch from the creation's version sees the next change, in process too.
    let stream = api
        .watch(&WatchParams::default().timeout(5), &rv(&created))
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let patch = json!({"spec": {"instance": "i1"}});
    api.patch("0", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(WatchEvent::Modified(o))) => assert_eq!(o.data["spec"]["instance"], "i1"),
        other => panic!("expected the change, got {other:?}"),
    }
    // Faults other than Unreachable apply; every request is logged.
    server.set_fault(Fault::fail(500, 1, |_| true));
    assert_eq!(status_of(api.get("0").await).0, 500);
    assert!(server.requests().len() >= 4);
}
