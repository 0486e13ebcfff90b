//! `lxd-mutater run --source kubernetes`, the built binary, against the fake API server
//! (crates/fake-apiserver: the real wire format, in this process) and the real LXD.
//!
//! No kube-apiserver can be installed here, so the API server is the fake; everything
//! on the LXD side is real. Each test has its own fake and its own LXD project.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Fault, Request};
use serde_json::{Value, json};
use support::{Daemon, TestProject, metric_value, wait_until};

const NS: &str = "m";
const API: &str = "lxdmutater.dev/v1alpha1";

/// A fake API server on its own runtime, and a folder for its kubeconfig and logs.
struct Cluster {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    // Declared last: dropped after the server's handle.
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn new() -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let api = rt.block_on(FakeApiServer::start());
        let dir = tempfile::tempdir().expect("a temp dir");
        api.kubeconfig(dir.path().join("kubeconfig"))
            .expect("writing the kubeconfig");
        Cluster { api, dir, rt }
    }

    /// Faults rebind the listener: inside the runtime.
    fn fault(&self, fault: Fault) {
        let _guard = self.rt.enter();
        self.api.set_fault(fault);
    }

    fn clear_fault(&self) {
        let _guard = self.rt.enter();
        self.api.clear_fault();
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn create(&self, obj: Value) {
        let _guard = self.rt.enter();
        self.api
            .create(obj)
            .unwrap_or_else(|e| panic!("create: {e:?}"));
    }

    fn patch_spec(&self, plural: &str, name: &str, spec: Value) {
        let _guard = self.rt.enter();
        self.api
            .patch_merge(API, plural, NS, name, &json!({ "spec": spec }))
            .unwrap_or_else(|e| panic!("patch {plural}/{name}: {e:?}"));
    }

    fn delete(&self, plural: &str, name: &str) {
        let _guard = self.rt.enter();
        self.api
            .delete(API, plural, NS, name)
            .unwrap_or_else(|e| panic!("delete {plural}/{name}: {e:?}"));
    }

    fn machine(&self, name: &str) -> Value {
        self.api
            .get(API, "machines", NS, name)
            .unwrap_or(Value::Null)
    }

    fn status(&self, name: &str) -> Value {
        self.machine(name)["status"].clone()
    }

    /// Requests that patched a Machine's status.
    fn status_patches(&self, name: &str) -> Vec<Request> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| {
                r.resource.as_ref().is_some_and(|a| {
                    a.verb == "patch"
                        && a.resource == "machines"
                        && a.subresource.as_deref() == Some("status")
                        && a.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// Lists of `plural` so far.
    fn lists(&self, plural: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| {
                r.resource
                    .as_ref()
                    .is_some_and(|a| a.verb == "list" && a.resource == plural)
            })
            .count()
    }
}

fn application(name: &str, revision: u64) -> Value {
    json!({
        "apiVersion": API, "kind": "Application",
        "metadata": {"name": name, "namespace": NS},
        // JSON scalars, as kubectl sends them: true is a boolean here.
        "spec": {"revision": revision, "lxdProfile": {"config": {"security.nesting": true}}},
    })
}

fn machine(name: &str, instance: &str, apps: &[&str]) -> Value {
    json!({
        "apiVersion": API, "kind": "Machine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"instance": instance, "applications": apps},
    })
}

/// A controller process on `cluster`; prints its log if the test fails.
struct Controller {
    daemon: Daemon,
    log: PathBuf,
}

impl Controller {
    fn start(lxd: &TestProject, cluster: &Cluster, name: &str, extra: &[&str]) -> Controller {
        let log = cluster.dir.path().join(format!("{name}.log"));
        let mut args = vec!["--source", "kubernetes", "--resync", "1h"];
        args.extend_from_slice(extra);
        // Its own kubeconfig, whose token names it: the fake records who asked.
        let kubeconfig = cluster.dir.path().join(format!("{name}.kubeconfig"));
        cluster
            .api
            .kubeconfig_as(&kubeconfig, name)
            .expect("writing a kubeconfig");
        let daemon = Daemon::run(
            lxd,
            &args,
            &[("KUBECONFIG", kubeconfig.as_path())],
            Some(&log),
        );
        Controller { daemon, log }
    }

    fn metric(&self, series: &str) -> f64 {
        let (code, body) = self.daemon.get("/metrics");
        if code != 200 {
            return 0.0;
        }
        metric_value(&body, series)
    }

    fn leads(&self) -> bool {
        self.metric("leader_election_master_status{name=\"lxd-mutater\"}") == 1.0
    }

    /// LXD writes this process sent (any method but GET), from its own metrics.
    fn lxd_writes(&self) -> f64 {
        let (_, body) = self.daemon.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with("lxd_mutater_lxd_requests_total{"))
            .filter(|l| !l.contains("method=\"GET\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.daemon.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// What an instance of a Machine running `one` (revision 1) ends with.
const ONE: &[&str] = &["default", "juju-m", "juju-m-one-1"];

/// The setting most tests start from: an LXD project with the empty instance `i0`, and a
/// fake API server with the Application `one` (revision 1) and the Machine `0` on `i0`.
fn one_machine() -> (TestProject, Cluster) {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    let cluster = Cluster::new();
    cluster.create(application("one", 1));
    cluster.create(machine("0", "i0", &["one"]));
    (lxd, cluster)
}

fn profiles(lxd: &TestProject, instance: &str) -> Vec<String> {
    lxd.instance_profiles(instance)
}

fn expect(lxd: &TestProject, instance: &str, want: &[&str], deadline: Duration) {
    wait_until(
        &format!("{instance} to have profiles {want:?}"),
        deadline,
        || profiles(lxd, instance) == want,
    );
}

#[test]
fn statuses_follow_generations_without_a_hot_loop() {
    let (lxd, cluster) = one_machine();
    let ctl = Controller::start(&lxd, &cluster, "ctl", &[]);

    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until(
        "status Applied at generation 1",
        Duration::from_secs(10),
        || {
            let s = cluster.status("0");
            s["phase"] == "Applied" && s["observedGeneration"] == 1
        },
    );
    let status = cluster.status("0");
    assert_eq!(
        status["profiles"],
        json!(["default", "juju-m", "juju-m-one-1"])
    );
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"]),
        (&json!("Ready"), &json!("True"))
    );
    // The JSON boolean reached LXD as LXD's text.
    assert_eq!(
        lxd.profile_json("juju-m-one-1")["config"]["security.nesting"],
        "true"
    );

    // After convergence: no status patch, no LXD write, no list for 3 s.
    let patches = cluster.status_patches("0").len();
    let writes = ctl.lxd_writes();
    let lists = cluster.lists("machines");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cluster.status_patches("0").len(),
        patches,
        "status patched again: a hot loop"
    );
    assert_eq!(ctl.lxd_writes(), writes);
    assert_eq!(cluster.lists("machines"), lists);

    // A spec edit that changes nothing in LXD (a default written out): exactly one status
    // patch, carrying the new observedGeneration; Ready keeps its transition time.
    cluster.patch_spec(
        "machines",
        "0",
        json!({"extraProfiles": [], "life": "alive"}),
    );
    assert_eq!(cluster.machine("0")["metadata"]["generation"], 2);
    wait_until("observedGeneration 2", Duration::from_secs(10), || {
        cluster.status("0")["observedGeneration"] == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = cluster.status_patches("0");
    assert_eq!(after.len(), patches + 1, "{after:?}");
    let status = cluster.status("0");
    assert_eq!(
        status["conditions"][0]["lastTransitionTime"],
        ready["lastTransitionTime"]
    );
    assert_eq!(status["conditions"][0]["observedGeneration"], 2);
    assert_eq!(ctl.lxd_writes(), writes);

    // An edit that changes LXD: a new revision of the application.
    cluster.patch_spec("applications", "one", json!({"revision": 2}));
    expect(
        &lxd,
        "i0",
        &["default", "juju-m", "juju-m-one-2"],
        Duration::from_secs(10),
    );
    wait_until(
        "status Applied with the new list",
        Duration::from_secs(10),
        || cluster.status("0")["profiles"] == json!(["default", "juju-m", "juju-m-one-2"]),
    );

    // A drift by hand: corrected, counted once, and the status ends Applied (not the
    // Idle written while correcting), Ready again.
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    expect(
        &lxd,
        "i0",
        &["default", "juju-m", "juju-m-one-2"],
        Duration::from_secs(10),
    );
    wait_until(
        "status Applied with the drift recorded",
        Duration::from_secs(10),
        || {
            let s = cluster.status("0");
            s["phase"] == "Applied" && s["drift"]["count"] == 1
        },
    );
    let patches = cluster.status_patches("0").len();
    std::thread::sleep(Duration::from_secs(1));
    let s = cluster.status("0");
    assert_eq!(
        (&s["phase"], &s["conditions"][0]["status"]),
        (&json!("Applied"), &json!("True"))
    );
    assert_eq!(cluster.status_patches("0").len(), patches);
}

#[test]
fn a_machine_deleted_and_created_again_is_reconciled() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    let cluster = Cluster::new();
    cluster.create(application("one", 1));
    cluster.create(application("two", 1));
    cluster.create(machine("0", "i0", &["one"]));
    let _ctl = Controller::start(&lxd, &cluster, "ctl", &[]);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    let first_uid = cluster.machine("0")["metadata"]["uid"].clone();

    cluster.delete("machines", "0");
    cluster.create(machine("0", "i0", &["two"]));
    assert_ne!(cluster.machine("0")["metadata"]["uid"], first_uid);
    expect(
        &lxd,
        "i0",
        &["default", "juju-m", "juju-m-two-1"],
        Duration::from_secs(10),
    );
    wait_until("the new object's status", Duration::from_secs(10), || {
        let s = cluster.status("0");
        s["phase"] == "Applied" && s["profiles"][2] == "juju-m-two-1"
    });
    // The profile nothing expects any more goes.
    wait_until(
        "juju-m-one-1 to be deleted",
        Duration::from_secs(10),
        || lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err(),
    );
}

#[test]
fn a_410_in_the_middle_of_a_watch_loses_nothing() {
    let lxd = TestProject::new();
    for i in ["i0", "i1", "i2"] {
        lxd.empty_instance(i);
    }
    let cluster = Cluster::new();
    cluster.create(application("one", 1));
    cluster.create(application("two", 1));
    cluster.create(machine("0", "i0", &["one"]));
    let ctl = Controller::start(&lxd, &cluster, "ctl", &[]);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    let lists = cluster.lists("machines");

    // The watches drop; meanwhile objects change and the history is compacted past the
    // version the controller saw, so its next watch gets 410 and it must list again.
    cluster.fault(Fault::Unreachable);
    // Changes made only once the controller's watches have failed, so that only a
    // relist can bring them.
    wait_until("the watches to fail", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        ["Machine", "Application"].iter().all(|k| {
            log.lines()
                .any(|l| l.contains("watch failed") && l.contains(&format!("kind={k}")))
        })
    });
    cluster.create(machine("1", "i1", &["one"]));
    cluster.create(machine("2", "i2", &["two"]));
    cluster.patch_spec("machines", "0", json!({"applications": ["two"]}));
    cluster.api.compact();
    cluster.clear_fault();

    expect(&lxd, "i1", ONE, Duration::from_secs(30));
    expect(
        &lxd,
        "i2",
        &["default", "juju-m", "juju-m-two-1"],
        Duration::from_secs(10),
    );
    expect(
        &lxd,
        "i0",
        &["default", "juju-m", "juju-m-two-1"],
        Duration::from_secs(10),
    );
    assert!(cluster.lists("machines") > lists, "no relist after the 410");
    let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
    assert!(
        log.contains("watch version expired (410): listing again kind=Machine"),
        "{log}"
    );
}

#[test]
fn watches_cut_every_2s_for_20s_still_converge_without_duplicate_writes() {
    const N: usize = 8;
    let lxd = TestProject::new();
    for i in 0..N {
        lxd.empty_instance(&format!("i{i}"));
    }
    let cluster = Cluster::new();
    cluster.create(application("one", 1));
    let ctl = Controller::start(&lxd, &cluster, "ctl", &[]);
    wait_until("ready", Duration::from_secs(30), || {
        ctl.daemon.get("/readyz").0 == 200
    });

    let start = Instant::now();
    let mut next_cut = Duration::from_secs(2);
    let mut created = 0;
    while start.elapsed() < Duration::from_secs(20) {
        // A machine about every 2 s, between the cuts.
        if created < N && start.elapsed() >= Duration::from_millis(2000 * created as u64 + 1000) {
            cluster.create(machine(
                &created.to_string(),
                &format!("i{created}"),
                &["one"],
            ));
            created += 1;
        }
        if start.elapsed() >= next_cut {
            cluster.api.cut_watches();
            next_cut += Duration::from_secs(2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..N {
        expect(&lxd, &format!("i{i}"), ONE, Duration::from_secs(10));
    }
    // One PATCH per instance, one POST per profile (juju-m, juju-m-one-1): no write twice.
    let patch = ctl.metric("lxd_mutater_lxd_requests_total{method=\"PATCH\",code=\"200\"}");
    let post = ctl.metric("lxd_mutater_lxd_requests_total{method=\"POST\",code=\"201\"}")
        + ctl.metric("lxd_mutater_lxd_requests_total{method=\"POST\",code=\"200\"}");
    assert_eq!((patch, post), (N as f64, 2.0), "{}", ctl.daemon.metrics());
}

#[test]
fn one_leader_writes_and_a_standby_takes_over_within_the_lease() {
    let (lxd, cluster) = one_machine();
    // A machine whose instance does not exist: Error, and an Event.
    cluster.create(machine("9", "nope", &["one"]));
    let flags = ["--leader-elect", "--lease-namespace", "lxd-mutater"];
    let a = Controller::start(&lxd, &cluster, "a", &flags);
    let b = Controller::start(&lxd, &cluster, "b", &flags);

    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until("one leader", Duration::from_secs(10), || {
        a.leads() != b.leads()
    });
    let (mut leader, standby) = if a.leads() { (a, b) } else { (b, a) };
    // The standby is ready, its caches are warm, and it writes nothing.
    wait_until("the standby ready", Duration::from_secs(10), || {
        standby.daemon.get("/readyz").0 == 200
    });
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    expect(&lxd, "i0", ONE, Duration::from_secs(10));
    assert!(leader.lxd_writes() > 0.0);
    assert_eq!(standby.lxd_writes(), 0.0);
    wait_until("machine 9 in Error", Duration::from_secs(10), || {
        cluster.status("9")["phase"] == "Error"
    });
    wait_until("an Event for machine 9", Duration::from_secs(10), || {
        cluster
            .api
            .list("v1", "events", Some(NS))
            .iter()
            .any(|e| e["involvedObject"]["name"] == "9" && e["type"] == "Warning")
    });

    // The leader dies without releasing: the standby leads once the lease expires, that
    // is within the lease (15 s) and 1 s of the dead leader's last renewal.
    let killed = Instant::now();
    leader.daemon.child.kill().expect("kill");
    let _ = leader.wait_exit(Duration::from_secs(5));
    let lease = cluster
        .api
        .get(
            "coordination.k8s.io/v1",
            "leases",
            "lxd-mutater",
            "lxd-mutater",
        )
        .expect("the Lease");
    let renewed = lease["spec"]["renewTime"]
        .as_str()
        .expect("renewTime")
        .to_string();
    let renewed = humantime::parse_rfc3339_weak(renewed.trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("renewTime {renewed}: {e}"));
    wait_until("the standby to lead", Duration::from_secs(20), || {
        standby.leads()
    });
    let since_renewal = std::time::SystemTime::now()
        .duration_since(renewed)
        .unwrap_or_default();
    eprintln!(
        "takeover {:?} after the kill, {since_renewal:?} after the last renewal",
        killed.elapsed()
    );
    // What the test adds on top: its 50 ms polling and a /metrics request.
    let slack = Duration::from_millis(300);
    assert!(
        since_renewal <= Duration::from_secs(16) + slack,
        "takeover {since_renewal:?} after the last renewal (lease 15 s)"
    );
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    expect(&lxd, "i0", ONE, Duration::from_secs(10));

    check_rbac_covers(&cluster.api.requests(), "deploy/kubernetes", "lxd-mutater");
}

#[test]
fn sigterm_drains_releases_the_lease_and_exits_zero() {
    let (lxd, cluster) = one_machine();
    let flags = ["--leader-elect"];
    let a = Controller::start(&lxd, &cluster, "a", &flags);
    let b = Controller::start(&lxd, &cluster, "b", &flags);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until("one leader", Duration::from_secs(10), || {
        a.leads() != b.leads()
    });
    let (mut leader, standby) = if a.leads() { (a, b) } else { (b, a) };

    let stopped = Instant::now();
    let pid = leader.daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exit = leader
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    // Released, not left to expire: the standby leads within a renew period or two.
    wait_until("the standby to lead", Duration::from_secs(6), || {
        standby.leads()
    });
    eprintln!("standby leads {:?} after SIGTERM", stopped.elapsed());
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    expect(&lxd, "i0", ONE, Duration::from_secs(10));
}

#[test]
fn a_leader_cut_off_from_the_api_server_stops_and_exits() {
    leader_steps_down_on(Fault::Unreachable);
}

#[test]
fn a_leader_whose_api_server_answers_503_stops_and_exits() {
    // kube's client retries a 503 for minutes by default: the lease must not.
    leader_steps_down_on(Fault::ServiceUnavailable);
}

fn leader_steps_down_on(fault: Fault) {
    let (lxd, cluster) = one_machine();
    let flags = ["--leader-elect"];
    let mut leader = Controller::start(&lxd, &cluster, "leader", &flags);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until("leading", Duration::from_secs(10), || leader.leads());

    // Unreachable for 3 s: the leader's next renew fails, it stops writing and exits.
    let cut = Instant::now();
    cluster.fault(fault);
    let exit = leader.wait_exit(Duration::from_secs(3));
    let took = cut.elapsed();
    let Some(exit) = exit else {
        panic!("the leader still runs 3 s after the API server went away");
    };
    assert!(
        !exit.success(),
        "exit {exit:?}: leaving the lead must not look like success"
    );
    eprintln!("stepped down after {took:?}");
    // Its last words say why.
    let log = std::fs::read_to_string(&leader.log).unwrap_or_default();
    assert!(log.contains("no longer the leader"), "{log}");
    // Nothing writes now: a drift stays until a leader comes back.
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(took));
    cluster.clear_fault();
    assert_eq!(profiles(&lxd, "i0"), ["default"]);
    // A new replica leads (the old lease expires) and corrects it.
    let fresh = Controller::start(&lxd, &cluster, "fresh", &flags);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    assert!(fresh.leads());
}

#[test]
fn kubectl_apply_of_an_edited_machine_converges() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    let cluster = Cluster::new();
    let _ctl = Controller::start(&lxd, &cluster, "ctl", &[]);
    let dir = cluster.dir.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let app = write(
        "app.yaml",
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one, namespace: m}\n\
         spec:\n  revision: 1\n  lxdProfile:\n    config: {security.nesting: true}\n",
    );
    let m = |apps: &str| {
        format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '0', namespace: m}}\n\
             spec: {{instance: i0, applications: [{apps}]}}\n"
        )
    };
    kubectl(&cluster.kubeconfig(), &app);
    kubectl(&cluster.kubeconfig(), &write("m.yaml", &m("")));
    wait_until("status Applied", Duration::from_secs(30), || {
        cluster.status("0")["phase"] == "Applied"
    });
    assert_eq!(profiles(&lxd, "i0"), ["default", "juju-m"]);
    kubectl(&cluster.kubeconfig(), &write("m.yaml", &m("one")));
    expect(&lxd, "i0", ONE, Duration::from_secs(10));
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["get", "machines", "-n", NS])
        .output()
        .expect("kubectl get");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains('0'), "{table}");
}

fn kubectl(kubeconfig: &Path, file: &Path) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "--validate=false", "-f"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("kubectl is needed (scripts/k8s-tools.sh checks it): {e}"));
    assert!(
        out.status.success(),
        "kubectl apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every request is allowed by the RBAC rules that the kustomization `dir` binds to the
/// ServiceAccount `account` (ClusterRoles for the kinds and events, a Role for the Lease).
fn check_rbac_covers(requests: &[Request], dir: &str, account: &str) {
    let out = Command::new("kubectl")
        .args([
            "kustomize",
            &format!("{}/{dir}", env!("CARGO_MANIFEST_DIR")),
        ])
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap_or(Value::Null))
        .collect();
    // The (kind, name) of the roles bound to the account.
    let bound: Vec<(String, String)> = docs
        .iter()
        .filter(|v| {
            matches!(
                v["kind"].as_str(),
                Some("ClusterRoleBinding" | "RoleBinding")
            )
        })
        .filter(|v| {
            v["subjects"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
            })
        })
        .map(|v| {
            let r = &v["roleRef"];
            (
                r["kind"].as_str().unwrap_or_default().to_string(),
                r["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // (namespace of a Role, or None for a ClusterRole; its rules)
    let mut roles: Vec<(Option<String>, Vec<Value>)> = Vec::new();
    for v in &docs {
        let rules = v["rules"].as_array().cloned().unwrap_or_default();
        let (Some(kind), Some(name)) = (v["kind"].as_str(), v["metadata"]["name"].as_str()) else {
            continue;
        };
        if !bound.contains(&(kind.to_string(), name.to_string())) {
            continue;
        }
        match kind {
            "ClusterRole" => roles.push((None, rules)),
            "Role" => roles.push((v["metadata"]["namespace"].as_str().map(Into::into), rules)),
            _ => {}
        }
    }
    assert!(!roles.is_empty(), "no roles in the kustomize output");
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x == want || x == "*"))
    };
    let mut checked = 0;
    for r in requests {
        let Some(a) = &r.resource else { continue };
        let allowed = roles.iter().any(|(ns, rules)| {
            (ns.is_none() || ns.as_deref() == a.namespace.as_deref())
                && rules.iter().any(|rule| {
                    has(&rule["apiGroups"], &a.api_group)
                        && has(&rule["resources"], &a.rbac_resource())
                        && has(&rule["verbs"], a.verb)
                        && match rule["resourceNames"].as_array() {
                            None => true,
                            Some(names) if names.is_empty() => true,
                            Some(names) => a
                                .name
                                .as_deref()
                                .is_some_and(|n| names.iter().any(|x| x == n)),
                        }
                })
        });
        assert!(
            allowed,
            "RBAC does not allow {a:?} ({} {})",
            r.method, r.path
        );
        checked += 1;
    }
    assert!(checked > 0);
    let verbs: std::collections::BTreeSet<String> = requests
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|a| format!("{} {}", a.verb, a.rbac_resource()))
        .collect();
    eprintln!("RBAC covers {checked} requests: {verbs:?}");
}

#[test]
fn with_a_namespace_other_namespaces_are_not_touched() {
    let (lxd, cluster) = one_machine();
    lxd.empty_instance("i1");
    let mut other = machine("1", "i1", &["one"]);
    other["metadata"]["namespace"] = json!("other");
    cluster.create(other);
    // Another namespace's charm profile, owned and unused: another controller's, which
    // this one must leave alone.
    // And one of m's that nothing expects: collected, which shows the collection ran.
    for p in ["juju-other-one-1", "juju-m-old-1"] {
        lxd.lxc(&["profile", "create", p]);
        lxd.lxc(&["profile", "set", p, "user.lxd-mutater.owner=lxd-mutater"]);
    }
    let ctl = Controller::start(&lxd, &cluster, "ctl", &["--namespace", NS]);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until("status of m/0", Duration::from_secs(10), || {
        cluster.status("0")["phase"] == "Applied"
    });
    // Listed and watched in `m` only: nothing read, written or reconciled in `other`.
    assert_eq!(profiles(&lxd, "i1"), ["default"]);
    let outside: Vec<Request> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            r.resource
                .as_ref()
                .is_some_and(|a| a.namespace.as_deref() != Some(NS) && a.resource != "leases")
        })
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    wait_until(
        "m's unused profile to be collected",
        Duration::from_secs(10),
        || lxd.try_lxc(&["profile", "show", "juju-m-old-1"]).is_err(),
    );
    assert!(
        lxd.try_lxc(&["profile", "show", "juju-other-one-1"])
            .is_ok()
    );
    assert!(
        cluster
            .api
            .get(API, "machines", "other", "1")
            .is_some_and(|m| m.get("status").is_none())
    );
    drop(ctl);
}

#[test]
fn flags_that_do_not_go_together_are_refused_with_a_reason() {
    let run = |args: &[&str], kubeconfig: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_lxd-mutater"))
            .arg("run")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run the binary");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let res = dir.path().to_str().expect("utf-8");
    let (code, err) = run(&["--resources", res, "--leader-elect"], "/nonexistent");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--leader-elect and --namespace need --source kubernetes"),
        "{err}"
    );
    let (code, err) = run(&["--source", "kubernetes", "--once"], "/nonexistent");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--once works with --source files only"),
        "{err}"
    );
    let (code, err) = run(
        &[
            "--source",
            "kubernetes",
            "--lease-duration",
            "2s",
            "--lease-renew",
            "5s",
        ],
        "/nonexistent",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("must be shorter than --lease-duration"),
        "{err}"
    );
    let (code, err) = run(&["--source", "kubernetes"], "/nonexistent/kubeconfig");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no Kubernetes configuration"), "{err}");
}

#[test]
fn an_invalid_object_says_why_and_a_good_one_keeps_its_last_good_version() {
    let (lxd, cluster) = one_machine();
    lxd.empty_instance("i5");
    cluster.create(machine("5", "bad_name!", &["one"]));
    let ctl = Controller::start(&lxd, &cluster, "ctl", &[]);
    expect(&lxd, "i0", ONE, Duration::from_secs(30));

    // Never valid: status Error with the field and the reason, and a Warning Event.
    wait_until("machine 5 in Error", Duration::from_secs(10), || {
        cluster.status("5")["phase"] == "Error"
    });
    let message = cluster.status("5")["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.starts_with("cannot upgrade machine's lxd profile: invalid spec: spec.instance:"),
        "{message}"
    );
    let events = |name: &str, reason: &str| {
        cluster
            .api
            .list("v1", "events", Some(NS))
            .iter()
            .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
            .count()
    };
    wait_until("an InvalidSpec event", Duration::from_secs(10), || {
        events("5", "InvalidSpec") == 1
    });
    assert_eq!(ctl.metric("lxd_mutater_source_files_invalid"), 1.0);

    // A good object edited into a bad one keeps its last good version: LXD unchanged,
    // status unchanged, an event says why the edit is not applied. (Its Applied status
    // first: the status writer may lag the LXD write on a busy machine.)
    wait_until("machine 0 Applied", Duration::from_secs(10), || {
        cluster.status("0")["phase"] == "Applied"
    });
    cluster.patch_spec(
        "machines",
        "0",
        json!({"instance": "bad_name!", "applications": []}),
    );
    wait_until("an InvalidSpec event on 0", Duration::from_secs(10), || {
        events("0", "InvalidSpec") == 1
    });
    assert_eq!(cluster.status("0")["phase"], "Applied");
    assert_eq!(profiles(&lxd, "i0"), ["default", "juju-m", "juju-m-one-1"]);

    // Mended: managed again.
    cluster.patch_spec("machines", "5", json!({"instance": "i5"}));
    expect(&lxd, "i5", ONE, Duration::from_secs(10));
    wait_until("machine 5 Applied", Duration::from_secs(10), || {
        cluster.status("5")["phase"] == "Applied"
    });
    assert_eq!(events("5", "InvalidSpec"), 1);
    wait_until("one broken object left", Duration::from_secs(5), || {
        ctl.metric("lxd_mutater_source_files_invalid") == 1.0
    });
}

/// The adapter as a library, on `kube::Client::new(service)` with the fake in process: a
/// status write, ours or anyone's, never enqueues a reconcile.
#[test]
fn status_writes_never_enqueue_work_in_process() {
    use lxd_mutater::leader::WriteFence;
    use lxd_mutater::pipeline::Pipeline;
    use lxd_mutater::reconcile::Options;
    use lxd_mutater::resource::ProfileNames;
    use lxd_mutater::resource::names::{DEFAULT_CHARM_TEMPLATE, DEFAULT_MODEL_TEMPLATE};
    use lxd_mutater::source::kubernetes::Source;
    use lxd_mutater::status::kubernetes::KubeStatus;
    use lxd_mutater::status::metrics::Telemetry;

    let (lxd, cluster) = one_machine();
    let telemetry = Telemetry::new();
    let ctl = {
        let _guard = cluster.rt.enter();
        let client = cluster.api.in_process_client();
        let names = ProfileNames::new(DEFAULT_CHARM_TEMPLATE, DEFAULT_MODEL_TEMPLATE)
            .expect("the default templates");
        let fence = WriteFence::open();
        let (status, writer) = KubeStatus::new(client.clone(), fence, "in-process");
        let ctl = std::sync::Arc::new(Pipeline::new(
            lxd.client(),
            status,
            Options::new(names),
            &telemetry,
        ));
        tokio::spawn(writer.run());
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        Source::new(
            events,
            client,
            None,
            lxd_mutater::resource::Kind::ALL.to_vec(),
            None,
        )
        .spawn();
        let routed = ctl.clone();
        tokio::spawn(async move {
            while let Some(e) = received.recv().await {
                routed.on_source(e);
            }
        });
        cluster.rt.block_on(ctl.relist()).expect("listing LXD");
        wait_until("loaded", Duration::from_secs(10), || ctl.store.is_loaded());
        ctl.enqueue_all();
        tokio::spawn(ctl.worker.clone().run(false));
        ctl
    };
    expect(&lxd, "i0", ONE, Duration::from_secs(30));
    wait_until("status Applied", Duration::from_secs(10), || {
        cluster.status("0")["phase"] == "Applied"
    });
    let adds = || {
        metric_value(
            &telemetry.encode(),
            "workqueue_adds_total{name=\"lxd_mutater\"}",
        )
    };
    let before = adds();
    // Someone else's status write: the watch brings it, and nothing is enqueued.
    {
        let _guard = cluster.rt.enter();
        cluster
            .api
            .patch_status(
                API,
                "machines",
                NS,
                "0",
                &json!({"status": {"message": "hello"}}),
            )
            .expect("patch status");
    }
    wait_until("the watch to bring it", Duration::from_secs(10), || {
        ctl.report
            .last(&lxd_mutater::resource::ResourceKey::new(
                lxd_mutater::resource::Kind::Machine,
                NS,
                "0",
            ))
            .is_some_and(|s| s.message == "hello")
    });
    assert_eq!(adds(), before);
    ctl.drain();
}

fn container(name: &str, host: &str, instance: &str, apps: &[&str]) -> Value {
    json!({
        "apiVersion": API, "kind": "Container",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"machine": host, "instance": instance, "applications": apps},
    })
}

/// The requests `user` made.
fn requests_of(cluster: &Cluster, user: &str) -> Vec<Request> {
    cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(user))
        .collect()
}

/// Juju's layout (SPEC §1): one environ controller for the model's Machines, and a
/// container controller per host machine for that host's Containers, each with its own
/// identity. Each converges only its own, reads only what it needs (a host's controller
/// lists its Containers through a field selector, never Machines, never another host's),
/// writes only its own statuses, stays within its RBAC, and counts only its own series.
#[test]
fn juju_layout_an_environ_and_two_container_controllers_each_touch_only_their_own() {
    let lxd = TestProject::new();
    for i in ["m0", "c0", "c1"] {
        lxd.empty_instance(i);
    }
    let cluster = Cluster::new();
    cluster.create(application("one", 1));
    cluster.create(machine("0", "m0", &["one"]));
    cluster.create(container("0-lxd-0", "0", "c0", &["one"]));
    cluster.create(container("1-lxd-0", "1", "c1", &["one"]));
    let environ = Controller::start(
        &lxd,
        &cluster,
        "environ",
        &["--flavour", "environ", "--owner", "environ"],
    );
    let hosts: Vec<Controller> = ["0", "1"]
        .iter()
        .map(|m| {
            Controller::start(
                &lxd,
                &cluster,
                &format!("host-{m}"),
                &[
                    "--flavour",
                    "container",
                    "--machine",
                    m,
                    "--owner",
                    &format!("host-{m}"),
                ],
            )
        })
        .collect();
    // A Container takes no model profile (Juju's container worker adds none).
    expect(&lxd, "m0", ONE, Duration::from_secs(30));
    for i in ["c0", "c1"] {
        expect(
            &lxd,
            i,
            &["default", "juju-m-one-1"],
            Duration::from_secs(30),
        );
    }
    let phase = |plural: &str, name: &str| {
        cluster
            .api
            .get(API, plural, NS, name)
            .map(|o| o["status"]["phase"].clone())
            .unwrap_or(Value::Null)
    };
    wait_until("every status Applied", Duration::from_secs(20), || {
        phase("machines", "0") == "Applied"
            && phase("containers", "0-lxd-0") == "Applied"
            && phase("containers", "1-lxd-0") == "Applied"
    });
    // Each instance is claimed by the controller that is its.
    for (instance, owner) in [("m0", "environ"), ("c0", "host-0"), ("c1", "host-1")] {
        assert_eq!(
            lxd.lxc(&["config", "get", instance, "user.lxd-mutater.owner"])
                .trim(),
            owner
        );
    }
    let touches =
        |r: &Request, plural: &str| r.resource.as_ref().is_some_and(|a| a.resource == plural);
    // The environ controller never reads nor writes a Container.
    let by_environ = requests_of(&cluster, "environ");
    assert!(!by_environ.is_empty());
    assert!(
        !by_environ.iter().any(|r| touches(r, "containers")),
        "{:?}",
        by_environ
            .iter()
            .filter(|r| touches(r, "containers"))
            .collect::<Vec<_>>()
    );
    check_rbac_covers(&by_environ, "deploy/kubernetes", "lxd-mutater");
    // A host's controller: no Machine, no Lease; its Containers listed and watched
    // through the field selector only; only its own Container's status patched.
    for (m, host) in ["0", "1"].iter().zip(&hosts) {
        let user = format!("host-{m}");
        let mine = requests_of(&cluster, &user);
        assert!(
            !mine
                .iter()
                .any(|r| touches(r, "machines") || touches(r, "leases"))
        );
        let container_reads: Vec<&Request> = mine
            .iter()
            .filter(|r| touches(r, "containers"))
            .filter(|r| {
                r.resource
                    .as_ref()
                    .is_some_and(|a| matches!(a.verb, "list" | "watch"))
            })
            .collect();
        assert!(!container_reads.is_empty());
        for r in &container_reads {
            assert!(
                r.query
                    .contains(&format!("fieldSelector=spec.machine%3D{m}")),
                "{user}: {} {}?{}",
                r.method,
                r.path,
                r.query
            );
        }
        let patched: std::collections::BTreeSet<String> = mine
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .filter(|a| a.verb == "patch" && a.subresource.as_deref() == Some("status"))
            .map(|a| format!("{}/{}", a.resource, a.name.clone().unwrap_or_default()))
            .collect();
        assert_eq!(patched, [format!("containers/{m}-lxd-0")].into());
        check_rbac_covers(
            &mine,
            "deploy/kubernetes/examples/juju-layout",
            "lxd-mutater-container",
        );
        // Its metrics speak for containers only.
        let (_, text) = host.daemon.get("/metrics");
        assert!(text.contains("controller=\"container\""));
        assert!(!text.contains("controller=\"machine\""), "{user}");
    }
    let (_, text) = environ.daemon.get("/metrics");
    assert!(!text.contains("controller=\"container\""));
}
