//! The LXD client against the real daemon: each test in its own LXD project. The client's
//! every call is also tried on the real Incus (`::incus`); HTTPS is tried on LXD only.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lxd_mutater::lxd::{
    Endpoint, ErrorCategory, EventNotice, EventStream, LifecycleAction, LxdApi, LxdClient,
    LxdError, ProfileContent, RequestObserver,
};
use support::{Backend, TestProject, TrustedClientCert, lxd_https_address, lxd_server_cert};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

fn content(config: &[(&str, &str)], devices: &[(&str, &[(&str, &str)])]) -> ProfileContent {
    ProfileContent {
        description: "test profile".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        devices: devices
            .iter()
            .map(|(name, kv)| {
                let map: BTreeMap<String, String> = kv
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (name.to_string(), map)
            })
            .collect(),
    }
}

fn kmsg() -> ProfileContent {
    content(
        &[("security.nesting", "true")],
        &[
            (
                "kmsg",
                &[
                    ("type", "unix-char"),
                    ("path", "/dev/kmsg"),
                    ("source", "/dev/kmsg"),
                ],
            ),
            (
                "tun",
                &[
                    ("type", "unix-char"),
                    ("path", "/dev/net/tun"),
                    ("source", "/dev/net/tun"),
                ],
            ),
        ],
    )
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

on_both!(async fn profile_is_created_read_replaced_and_deleted);
async fn profile_is_created_read_replaced_and_deleted(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();

    client.create_profile("p-kmsg", &kmsg()).await.unwrap();
    let (profile, etag) = client.get_profile("p-kmsg").await.unwrap();
    assert_eq!(profile.name, "p-kmsg");
    assert_eq!(profile.content, kmsg());
    assert!(etag.is_some(), "LXD sends an ETag for a profile");

    // Replace without the tun device and with another key: both really change in LXD.
    let mut smaller = kmsg();
    smaller.devices.remove("tun");
    smaller.config.clear();
    smaller
        .config
        .insert("user.lxd-mutater.owner".into(), "test".into());
    client
        .replace_profile("p-kmsg", &smaller, etag.as_deref())
        .await
        .unwrap();
    let seen = project.profile_json("p-kmsg");
    assert!(seen["devices"].get("tun").is_none(), "{seen}");
    assert!(seen["devices"].get("kmsg").is_some(), "{seen}");
    assert!(seen["config"].get("security.nesting").is_none(), "{seen}");
    assert_eq!(seen["config"]["user.lxd-mutater.owner"], "test");
    assert_eq!(
        client.get_profile("p-kmsg").await.unwrap().0.content,
        smaller
    );

    let names: Vec<_> = client
        .list_profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "p-kmsg"]);

    client.delete_profile("p-kmsg").await.unwrap();
    let err = client.get_profile("p-kmsg").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
    // LXD's own text, whatever its prefix ("Fetch profile: Profile not found" on 5.0).
    assert!(err.to_string().ends_with("Profile not found"), "{err}");
    let err = client.delete_profile("p-kmsg").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
    // LXD's own text, whatever its prefix ("Fetch profile: Profile not found" on 5.0).
    assert!(err.to_string().ends_with("Profile not found"), "{err}");
}

on_both!(async fn listings_carry_profiles_and_users);
async fn listings_carry_profiles_and_users(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    project.empty_instance("i-1");
    client.create_profile("p-a", &kmsg()).await.unwrap();
    project.lxc(&["profile", "add", "i-1", "p-a"]);

    let mut instances = client.list_instances().await.unwrap();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    let summary: Vec<_> = instances
        .iter()
        .map(|i| (i.name.as_str(), i.profiles.clone(), i.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("i-0", strings(&["default"]), "Stopped"),
            ("i-1", strings(&["default", "p-a"]), "Stopped"),
        ]
    );

    let profiles = client.list_profiles().await.unwrap();
    let users = |name: &str| -> Vec<String> {
        let mut users: Vec<String> = profiles
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no profile {name}"))
            .used_by_instances()
            .map(str::to_string)
            .collect();
        users.sort();
        users
    };
    assert_eq!(users("default"), ["i-0", "i-1"]);
    assert_eq!(users("p-a"), ["i-1"]);
}

on_both!(async fn profiles_are_assigned_in_the_order_given);
async fn profiles_are_assigned_in_the_order_given(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    client.create_profile("p-a", &kmsg()).await.unwrap();
    client
        .create_profile("p-b", &content(&[("user.x", "1")], &[]))
        .await
        .unwrap();

    for order in [["default", "p-b", "p-a"], ["default", "p-a", "p-b"]] {
        client
            .set_instance_profiles("i-0", &strings(&order), &Default::default(), None)
            .await
            .unwrap();
        assert_eq!(project.instance_profiles("i-0"), order);
        let (instance, _) = client.get_instance("i-0").await.unwrap();
        assert_eq!(instance.profiles, order);
    }
}

on_both!(async fn a_stale_etag_is_a_conflict);
async fn a_stale_etag_is_a_conflict(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    client.create_profile("p-a", &kmsg()).await.unwrap();

    let (_, etag) = client.get_instance("i-0").await.unwrap();
    let etag = etag.expect("LXD sends an ETag for an instance");
    // Someone else changes the instance after we read it.
    project.lxc(&["profile", "add", "i-0", "p-a"]);
    let err = client
        .set_instance_profiles(
            "i-0",
            &strings(&["default"]),
            &Default::default(),
            Some(&etag),
        )
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Conflict, "{err}");
    assert!(err.to_string().contains("ETag"), "{err}");
    assert_eq!(project.instance_profiles("i-0"), ["default", "p-a"]);

    let (_, fresh) = client.get_instance("i-0").await.unwrap();
    client
        .set_instance_profiles(
            "i-0",
            &strings(&["default"]),
            &Default::default(),
            fresh.as_deref(),
        )
        .await
        .unwrap();
    assert_eq!(project.instance_profiles("i-0"), ["default"]);

    // The same for a profile.
    let (_, profile_etag) = client.get_profile("p-a").await.unwrap();
    project.lxc(&["profile", "set", "p-a", "user.other=1"]);
    let err = client
        .replace_profile("p-a", &kmsg(), profile_etag.as_deref())
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Conflict, "{err}");
}

on_both!(async fn assigning_a_missing_profile_is_not_found_and_changes_nothing);
async fn assigning_a_missing_profile_is_not_found_and_changes_nothing(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    let err = client
        .set_instance_profiles(
            "i-0",
            &strings(&["default", "nope"]),
            &Default::default(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
    assert_eq!(err.to_string(), "Profile not found");
    assert_eq!(project.instance_profiles("i-0"), ["default"]);
}

on_both!(async fn deleting_a_profile_in_use_is_in_use);
async fn deleting_a_profile_in_use_is_in_use(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    client.create_profile("p-a", &kmsg()).await.unwrap();
    client
        .set_instance_profiles(
            "i-0",
            &strings(&["default", "p-a"]),
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    let err = client.delete_profile("p-a").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::InUse, "{err}");
    assert_eq!(err.to_string(), "Profile is currently in use");
    assert!(client.get_profile("p-a").await.is_ok());
}

on_both!(async fn invalid_content_is_rejected_with_lxds_message);
async fn invalid_content_is_rejected_with_lxds_message(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();

    let err = client
        .create_profile("p-bad", &content(&[("foo.bar", "1")], &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LxdError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "Unknown configuration key: foo.bar");
    assert!(client.get_profile("p-bad").await.is_err());

    client.create_profile("p-a", &kmsg()).await.unwrap();
    let err = client
        .replace_profile("p-a", &content(&[("security.nesting", "maybe")], &[]), None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Rejected, "{err:?}");
    assert_eq!(err.to_string(), r#"Invalid value for a boolean "maybe""#);
    // The profile kept its content.
    assert_eq!(client.get_profile("p-a").await.unwrap().0.content, kmsg());
}

on_both!(async fn a_missing_instance_is_not_found);
async fn a_missing_instance_is_not_found(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    let err = client.get_instance("ghost").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
    // The daemon's own text: Incus names the instance and the project.
    let text = match backend {
        Backend::Lxd => "Instance not found".to_string(),
        Backend::Incus => format!(
            "Failed to fetch instance \"ghost\" in project \"{}\": Instance not found",
            project.name()
        ),
    };
    assert_eq!(err.to_string(), text);
    let err = client
        .set_instance_profiles("ghost", &strings(&["default"]), &Default::default(), None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
}

on_both!(async fn server_info_names_the_api);
async fn server_info_names_the_api(backend: Backend) {
    let project = TestProject::on(backend);
    let info = project.client().server().await.unwrap();
    assert_eq!(info.api_version, "1.0");
    assert!(!info.server_version.is_empty());
    assert!(
        info.api_extensions.iter().any(|e| e == "projects"),
        "{:?}",
        info.api_extensions
    );
}

on_both!(async fn the_project_is_checked);
async fn the_project_is_checked(backend: Backend) {
    let project = TestProject::on(backend);
    let info = project.client().get_project().await.unwrap();
    assert_eq!(info.name, project.name());
    assert!(info.isolates_profiles());

    // LXD lists no instances for a project that does not exist; get_project tells.
    let ghost = LxdClient::new(&project.endpoint(), &format!("{}-ghost", project.name())).unwrap();
    let err = ghost.get_project().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Option<u16>)>>);

impl RequestObserver for Recorder {
    fn observe(&self, method: &str, code: Option<u16>, _elapsed: Duration) {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((method.to_string(), code));
        }
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Option<u16>)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

on_both!(async fn the_observer_sees_every_request_with_its_code);
async fn the_observer_sees_every_request_with_its_code(backend: Backend) {
    let project = TestProject::on(backend);
    project.empty_instance("i-0");
    let recorder = Arc::new(Recorder::default());
    let client = project.client().with_observer(recorder.clone());

    client.list_instances().await.unwrap();
    client.create_profile("p-a", &kmsg()).await.unwrap();
    client
        .set_instance_profiles(
            "i-0",
            &strings(&["default", "p-a"]),
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    client.delete_profile("p-a").await.unwrap_err();
    client.delete_profile("nope").await.unwrap_err();

    let seen = recorder.take();
    let want = [
        ("GET", Some(200)),
        ("POST", Some(201)),
        ("PATCH", Some(200)),
        ("DELETE", Some(500)),
        ("DELETE", Some(404)),
    ];
    let want: Vec<_> = want.iter().map(|(m, c)| (m.to_string(), *c)).collect();
    assert_eq!(seen, want);

    // No answer at all: code None.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = LxdClient::new(&Endpoint::Unix(dir.path().join("none.socket")), "default")
        .unwrap()
        .with_observer(recorder.clone());
    let err = nowhere.list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Unreachable, "{err}");
    assert_eq!(recorder.take(), [("GET".to_string(), None)]);
}

/// The next lifecycle notice matching `want`, skipping others; fails after `deadline`.
async fn expect_event(
    events: &mut EventStream,
    deadline: Duration,
    what: &str,
    want: impl Fn(&EventNotice) -> bool,
) -> EventNotice {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Err(_) => panic!("no {what} within {deadline:?}"),
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Ok(Some(notice)) if want(&notice) => return notice,
            Ok(Some(_)) => {}
        }
    }
}

fn lifecycle(action: LifecycleAction, name: &'static str) -> impl Fn(&EventNotice) -> bool {
    move |n| matches!(n, EventNotice::Lifecycle(e) if e.action == action && e.name == name)
}

const EVENT_DEADLINE: Duration = Duration::from_secs(10);

on_both!(async fn events_report_profile_and_instance_updates);
async fn events_report_profile_and_instance_updates(backend: Backend) {
    let project = TestProject::on(backend);
    let client = project.client();
    project.empty_instance("i-0");
    project.lxc(&["profile", "create", "p-a"]);

    let mut events = client.events();
    expect_event(&mut events, EVENT_DEADLINE, "Connected", |n| {
        *n == EventNotice::Connected
    })
    .await;

    project.lxc(&["profile", "set", "p-a", "user.x=1"]);
    let notice = expect_event(
        &mut events,
        EVENT_DEADLINE,
        "profile-updated p-a",
        lifecycle(LifecycleAction::ProfileUpdated, "p-a"),
    )
    .await;
    let EventNotice::Lifecycle(event) = notice else {
        unreachable!()
    };
    assert_eq!(event.project, project.name());

    project.lxc(&["profile", "add", "i-0", "p-a"]);
    expect_event(
        &mut events,
        EVENT_DEADLINE,
        "instance-updated i-0",
        lifecycle(LifecycleAction::InstanceUpdated, "i-0"),
    )
    .await;

    project.lxc(&["profile", "create", "p-b"]);
    expect_event(
        &mut events,
        EVENT_DEADLINE,
        "profile-created p-b",
        lifecycle(LifecycleAction::ProfileCreated, "p-b"),
    )
    .await;
}

/// A Unix-socket proxy in front of LXD whose live connections can be cut.
struct CuttableProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    fn start(upstream: PathBuf) -> CuttableProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.socket");
        let listener = UnixListener::bind(&path).unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let registry = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    let _ = down.shutdown().await;
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        CuttableProxy {
            path,
            _dir: dir,
            conns,
            accept,
        }
    }

    /// Drops every connection open now; new ones still work.
    fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let n = conns.len();
        for c in conns {
            c.abort();
        }
        n
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

on_both!(async fn events_come_back_after_the_connection_is_cut);
async fn events_come_back_after_the_connection_is_cut(backend: Backend) {
    let project = TestProject::on(backend);
    let proxy = CuttableProxy::start(backend.require());
    let client = LxdClient::new(&Endpoint::Unix(proxy.path.clone()), project.name()).unwrap();
    project.lxc(&["profile", "create", "p-a"]);

    let mut events = client.events();
    let connected = |n: &EventNotice| *n == EventNotice::Connected;
    expect_event(&mut events, EVENT_DEADLINE, "Connected", connected).await;
    project.lxc(&["profile", "set", "p-a", "user.x=1"]);
    expect_event(
        &mut events,
        EVENT_DEADLINE,
        "profile-updated",
        lifecycle(LifecycleAction::ProfileUpdated, "p-a"),
    )
    .await;

    assert_eq!(proxy.cut(), 1, "one websocket went through the proxy");
    let cut_at = Instant::now();
    expect_event(&mut events, EVENT_DEADLINE, "Connected again", connected).await;
    // The first retry waits 800 ms +-20%.
    assert!(
        cut_at.elapsed() >= Duration::from_millis(600),
        "{:?}",
        cut_at.elapsed()
    );

    project.lxc(&["profile", "set", "p-a", "user.x=2"]);
    expect_event(
        &mut events,
        EVENT_DEADLINE,
        "profile-updated after reconnecting",
        lifecycle(LifecycleAction::ProfileUpdated, "p-a"),
    )
    .await;
}

fn https_endpoint(cert: &TrustedClientCert, server_cert: PathBuf) -> Endpoint {
    Endpoint::parse(
        Some(&format!("https://{}", lxd_https_address())),
        Some(cert.cert.clone()),
        Some(cert.key.clone()),
        Some(server_cert),
    )
    .unwrap()
}

#[tokio::test]
async fn https_with_a_pinned_server_certificate_works() {
    let project = TestProject::new();
    let cert = TrustedClientCert::new(&project);
    project.empty_instance("i-0");
    let client = LxdClient::new(&https_endpoint(&cert, lxd_server_cert()), project.name()).unwrap();

    client.create_profile("p-a", &kmsg()).await.unwrap();
    client
        .set_instance_profiles(
            "i-0",
            &strings(&["default", "p-a"]),
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(project.instance_profiles("i-0"), ["default", "p-a"]);
    let names: Vec<_> = client
        .list_profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "p-a"]);

    // Events over the same pinned TLS.
    let mut events = client.events();
    expect_event(&mut events, EVENT_DEADLINE, "Connected over TLS", |n| {
        *n == EventNotice::Connected
    })
    .await;
    project.lxc(&["profile", "set", "p-a", "user.x=1"]);
    expect_event(
        &mut events,
        EVENT_DEADLINE,
        "profile-updated over TLS",
        lifecycle(LifecycleAction::ProfileUpdated, "p-a"),
    )
    .await;
}

#[tokio::test]
async fn https_with_the_wrong_pinned_certificate_fails_in_the_handshake() {
    let project = TestProject::new();
    let cert = TrustedClientCert::new(&project);
    // Another self-signed certificate: LXD's is not it.
    let other = rcgen::generate_simple_self_signed(vec!["lxd".to_string()]).unwrap();
    let wrong = cert.dir.path().join("wrong.crt");
    std::fs::write(&wrong, other.cert.pem()).unwrap();

    let recorder = Arc::new(Recorder::default());
    let client = LxdClient::new(&https_endpoint(&cert, wrong), project.name())
        .unwrap()
        .with_observer(recorder.clone());
    let err = client.list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Unreachable, "{err}");
    // rustls refused the certificate: the handshake never completed, so no request
    // could have been sent (lxd_fake.rs shows the server side of this).
    let text = err.to_string();
    assert!(
        text.contains("the server's certificate is not the pinned one"),
        "{text}"
    );
    assert_eq!(recorder.take(), [("GET".to_string(), None)]);
}

/// 200 sequential PATCHes through the client vs. the same through one curl process on one
/// connection (`--next`). `cargo test --test lxd_client -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, about 10 s"]
async fn measure_200_patches_client_vs_curl() {
    const N: usize = 200;
    let project = TestProject::new();
    let client = project.client();
    let socket = support::require_lxd();
    let socket = socket.to_string_lossy().into_owned();
    client
        .create_profile("p-a", &content(&[("user.a", "1")], &[]))
        .await
        .unwrap();
    client
        .create_profile("p-b", &content(&[("user.b", "1")], &[]))
        .await
        .unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("i-{i}")).collect();

    // Create the instances with one curl process (each POST starts an operation).
    let create_url = format!("http://lxd/1.0/instances?project={}", project.name());
    let args = curl_next(
        &socket,
        names.iter().map(|name| {
            let body = format!(r#"{{"name":"{name}","source":{{"type":"none"}}}}"#);
            ("POST", create_url.clone(), Some(body))
        }),
    );
    run_curl(&args);
    let start = Instant::now();
    while client.list_instances().await.unwrap().len() < N {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "instances not created"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let list = |k: usize, flip: bool| -> Vec<String> {
        let other = if k.is_multiple_of(2) != flip {
            "p-a"
        } else {
            "p-b"
        };
        strings(&["default", other])
    };
    let mut results = Vec::new();
    for round in 0..2 {
        // Client: every PATCH changes the list (curl's last round set the other one).
        let t = Instant::now();
        for (k, name) in names.iter().enumerate() {
            client
                .set_instance_profiles(name, &list(k, false), &Default::default(), None)
                .await
                .unwrap();
        }
        let client_time = t.elapsed();

        let args = curl_next(
            &socket,
            names.iter().enumerate().map(|(k, name)| {
                let body = serde_json::json!({ "profiles": list(k, true) }).to_string();
                let url = format!("http://lxd/1.0/instances/{name}?project={}", project.name());
                ("PATCH", url, Some(body))
            }),
        );
        let t = Instant::now();
        let out = run_curl(&args);
        let curl_time = t.elapsed();
        let ok = out.lines().filter(|l| *l == "200").count();
        assert_eq!(ok, N, "curl: {out}");
        results.push((round, client_time, curl_time));
    }
    assert_eq!(project.instance_profiles("i-1"), list(1, true));
    for (round, c, u) in results {
        println!(
            "round {round}: {N} PATCHes: client {:.3} s, curl --next {:.3} s, ratio {:.2}",
            c.as_secs_f64(),
            u.as_secs_f64(),
            c.as_secs_f64() / u.as_secs_f64()
        );
    }

    // Leave nothing behind: delete the instances now (TestProject's Drop would do it
    // one `lxc` at a time).
    let args = curl_next(
        &socket,
        names.iter().map(|name| {
            let url = format!("http://lxd/1.0/instances/{name}?project={}", project.name());
            ("DELETE", url, None)
        }),
    );
    run_curl(&args);
    let start = Instant::now();
    while !client.list_instances().await.unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "instances not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Arguments for one curl process that sends every request in turn on one connection
/// (`--next`), printing each status code on its own line.
fn curl_next<'a>(
    socket: &str,
    requests: impl Iterator<Item = (&'a str, String, Option<String>)>,
) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for (k, (method, url, body)) in requests.enumerate() {
        if k > 0 {
            args.push("--next".into());
        }
        args.extend(
            [
                "-sS",
                "--unix-socket",
                socket,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
                "-X",
                method,
            ]
            .map(String::from),
        );
        if let Some(body) = body {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "-d".into(),
                body,
            ]);
        }
        args.push(url);
    }
    args
}

fn run_curl(args: &[String]) -> String {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

on_both!(async fn a_closed_fence_sends_no_write_and_reads_go_on);
async fn a_closed_fence_sends_no_write_and_reads_go_on(backend: Backend) {
    let project = TestProject::on(backend);
    project.empty_instance("f0");
    project.lxc(&["profile", "create", "p-a"]);
    let fence = lxd_mutater::leader::WriteFence::closed();
    let lxd = project.client().with_fence(fence.clone());
    let refused = lxd
        .set_instance_profiles("f0", &strings(&[]), &Default::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, LxdError::Fenced), "{refused:?}");
    assert_eq!(refused.category(), ErrorCategory::Fenced);
    assert!(matches!(
        lxd.create_profile("fenced", &kmsg()).await,
        Err(LxdError::Fenced)
    ));
    assert_eq!(project.instance_profiles("f0"), ["default"]);
    assert!(project.try_lxc(&["profile", "show", "fenced"]).is_err());
    // Reads are not writes.
    assert_eq!(lxd.list_instances().await.unwrap().len(), 1);
    fence.lift();
    // Not an empty list: Incus refuses to leave an instance without a root disk
    // ("Invalid root disk device"), where LXD 5.0 lets a stopped one have none.
    let lifted = strings(&["default", "p-a"]);
    lxd.set_instance_profiles("f0", &lifted, &Default::default(), None)
        .await
        .unwrap();
    assert_eq!(project.instance_profiles("f0"), lifted);
}
