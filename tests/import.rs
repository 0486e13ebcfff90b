//! `lxd-mutater import` through the built binary and the real LXD: an LXD project left as
//! Juju leaves it for the research file's composed example (tests/fixtures/import), the
//! import of its `juju status` and of the project itself, then `diff` and `run --once`
//! against it. The promise: importing an existing deployment and running the controller
//! on it writes nothing to LXD. LXD writes are counted by a proxy in front of the socket.

mod support;

#[allow(dead_code)]
#[path = "support/proxy.rs"]
mod proxy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use proxy::{FaultProxy, Faults};
use support::TestProject;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/import/juju-status-demo.yaml"
);

/// The example's instances and the profiles on them, in Juju's order.
const MACHINE_0: &str = "juju-4d5e6f-0";
const CONTAINER_1_LXD_0: &str = "juju-4d5e6f-1-lxd-0";
const KW: &str = "juju-demo-kubernetes-worker-198";
const CD: &str = "juju-demo-containerd-73";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lxd-mutater"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lxd-mutater ARGS` with `stdin` fed in.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lxd-mutater");
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(stdin)
        .expect("feed its stdin");
    child.wait_with_output().expect("lxd-mutater ends")
}

/// The project as Juju 3.x leaves it for the example: the model profile `juju-demo`
/// with Juju's content, the two charm profiles with the content `juju status` shows, no
/// ownership key anywhere; machine 0 with [default, juju-demo, kubernetes-worker,
/// containerd], container 1/lxd/0 (on the manual machine 1, whose LXD is this one here)
/// with [default, kubernetes-worker, containerd].
fn as_juju_left_it(p: &TestProject) {
    let create = |json: &str| {
        p.query("POST", "/1.0/profiles", Some(json))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    create(
        r#"{"name": "juju-demo", "config": {"boot.autostart": "true", "security.nesting": "true"}}"#,
    );
    create(&format!(
        r#"{{"name": "{KW}", "description": "kubernetes-worker on LXD",
            "config": {{"linux.kernel_modules": "ip_tables,ip6_tables,netlink_diag,nf_nat,overlay",
                        "security.nesting": "true", "security.privileged": "true"}},
            "devices": {{"kmsg": {{"path": "/dev/kmsg", "source": "/dev/kmsg", "type": "unix-char"}}}}}}"#
    ));
    create(&format!(
        r#"{{"name": "{CD}", "description": "containerd needs overlay and br_netfilter",
            "config": {{"linux.kernel_modules": "overlay,br_netfilter"}}}}"#
    ));
    for (instance, profiles) in [
        (MACHINE_0, vec!["default", "juju-demo", KW, CD]),
        (CONTAINER_1_LXD_0, vec!["default", KW, CD]),
    ] {
        p.empty_instance(instance);
        let body = serde_json::json!({ "profiles": profiles }).to_string();
        p.query("PATCH", &format!("/1.0/instances/{instance}"), Some(&body))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.instance_profiles(instance), profiles);
    }
}

/// What the project holds: each instance's list and each profile's config.
fn snapshot(p: &TestProject) -> (Vec<Vec<String>>, Vec<serde_json::Value>) {
    (
        vec![
            p.instance_profiles(MACHINE_0),
            p.instance_profiles(CONTAINER_1_LXD_0),
        ],
        ["juju-demo", KW, CD]
            .iter()
            .map(|n| p.profile_json(n)["config"].clone())
            .collect(),
    )
}

/// `diff` on `resources`: its exit code and stdout.
fn diff(p: &TestProject, resources: &Path) -> (Option<i32>, String) {
    let out = bin()
        .arg("diff")
        .arg("--resources")
        .arg(resources)
        .args(["--lxd-project", p.name()])
        .output()
        .expect("run diff");
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// `lxd-mutater <args>`, which must succeed: its stdout (the resources) and stderr.
fn import(args: &[&str]) -> (String, String) {
    let out = bin().args(args).output().expect("run import");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    (text(&out.stdout), err)
}

/// `run --once` on `resources` through a counting proxy: its exit code, its output, and
/// the requests LXD saw (writes and all).
fn run_once(p: &TestProject, resources: &Path) -> (Option<i32>, String, usize, usize) {
    let proxy = FaultProxy::start(&support::lxd_socket(), Faults::default());
    let state = tempfile::tempdir().expect("a state directory");
    let out = bin()
        .arg("run")
        .arg("--once")
        .arg("--resources")
        .arg(resources)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--lxd", &proxy.url(), "--lxd-project", p.name()])
        .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
        .output()
        .expect("run --once");
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
        proxy.writes(),
        proxy.exchanges().len(),
    )
}

/// A resources directory holding `yaml` as one file.
fn resources(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a resources directory");
    let file = dir.path().join("imported.yaml");
    std::fs::write(&file, yaml).expect("write the resources");
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn importing_jujus_status_then_running_the_controller_writes_nothing_to_lxd() {
    let p = TestProject::new();
    as_juju_left_it(&p);
    let before = snapshot(&p);

    let (yaml, err) = import(&["import", "juju-status", FIXTURE]);
    assert!(
        err.contains("machine \"1\" is a manual machine (manual:10.20.0.15)"),
        "the manual machine is said: {err}"
    );
    assert!(
        err.ends_with("imported 3 application(s), 2 machine(s), 1 container(s)\n"),
        "{err}"
    );
    // `-` reads stdin, and gives the same resources.
    let piped = run_with_stdin(
        &["import", "juju-status", "-"],
        &std::fs::read(FIXTURE).expect("the fixture"),
    );
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert_eq!(text(&piped.stdout), yaml);

    let (_dir, dir) = resources(&yaml);
    let validate = bin().arg("validate").arg(&dir).output().expect("validate");
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        text(&validate.stdout)
    );

    let (code, shown) = diff(&p, &dir);
    assert_eq!(code, Some(0), "diff is in sync at once:\n{shown}");
    for line in [
        "Machine demo/0: in sync",
        "Container demo/1-lxd-0: in sync",
        "Machine demo/1: skipped (manual machine: not managed)",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }

    let (code, shown, writes, requests) = run_once(&p, &dir);
    assert_eq!(code, Some(0), "{shown}");
    assert!(requests > 0, "run went through the proxy");
    assert_eq!(writes, 0, "no LXD write:\n{shown}");
    assert_eq!(snapshot(&p), before, "LXD as Juju left it");
    assert_eq!(diff(&p, &dir).0, Some(0));
}

#[test]
fn importing_a_juju_lxd_project_is_in_sync_at_once_for_machines_and_for_a_hosts_containers() {
    let p = TestProject::new();
    as_juju_left_it(&p);
    let before = snapshot(&p);

    let (yaml, err) = import(&["import", "lxd", "--lxd-project", p.name()]);
    assert!(
        yaml.contains("kind: Machine\nmetadata:\n  name: \"0\"\n  namespace: demo\nspec:\n  instance: juju-4d5e6f-0\n  applications:\n  - kubernetes-worker\n  - containerd\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("kind: Container"), "{yaml}");
    assert!(
        err.contains("instance \"juju-4d5e6f-1-lxd-0\": its profiles [default, juju-demo-kubernetes-worker-198, juju-demo-containerd-73] have no model profile"),
        "the container is said, not silently left: {err}"
    );
    let (_machines, machines) = resources(&yaml);
    let (code, shown) = diff(&p, &machines);
    assert_eq!(code, Some(0), "{shown}");
    let (code, shown, writes, _) = run_once(&p, &machines);
    assert_eq!((code, writes), (Some(0), 0), "{shown}");

    // The containers of host 1, for the container controller of that host.
    let (yaml, _) = import(&["import", "lxd", "--lxd-project", p.name(), "--machine", "1"]);
    assert!(
        yaml.contains("kind: Container\nmetadata:\n  name: 1-lxd-0\n  namespace: demo\nspec:\n  machine: \"1\"\n  instance: juju-4d5e6f-1-lxd-0\n  applications:\n  - kubernetes-worker\n  - containerd\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("kind: Machine"), "{yaml}");
    assert!(yaml.contains("name: kubernetes-worker"), "{yaml}");
    let (_containers, containers) = resources(&yaml);
    let (code, shown) = diff(&p, &containers);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("Container demo/1-lxd-0: in sync"), "{shown}");
    let (code, shown, writes, _) = run_once(&p, &containers);
    assert_eq!((code, writes), (Some(0), 0), "{shown}");

    assert_eq!(snapshot(&p), before, "LXD as Juju left it");
}

#[test]
fn import_lxd_names_a_project_that_does_not_exist() {
    let out = bin()
        .args([
            "import",
            "lxd",
            "--lxd-project",
            "no-such-project-for-import",
        ])
        .output()
        .expect("run import lxd");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("\"no-such-project-for-import\" does not exist"),
        "{err}"
    );
}

#[test]
fn coloured_or_malformed_status_is_refused_with_the_reason_and_exit_1() {
    // What `juju status` prints on a terminal.
    let coloured = b"model:\n  name: \x1b[1;34mdemo\x1b[0m\n  type: iaas\n";
    let out = run_with_stdin(&["import", "juju-status"], coloured);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no resources");
    assert_eq!(
        text(&out.stderr),
        "error: <stdin>:2:9: the input holds terminal colour codes (ESC [): run `juju status \
         --format=yaml --no-color` and import that\n"
    );

    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("status.yaml");
    std::fs::write(&file, "model:\n  name: demo\nmachines:\n  \"0\": [\n").expect("write");
    let out = bin()
        .args(["import", "juju-status"])
        .arg(&file)
        .output()
        .expect("run import");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    let prefix = format!("error: {}:4:", file.display());
    assert!(err.starts_with(&prefix), "file:line:column in {err}");

    std::fs::write(
        &file,
        "model: {name: demo}\napplications:\n  a:\n    charm-rev: 1\n    units: {a/0: {machine: [0]}}\n",
    )
    .expect("write");
    let out = bin()
        .args(["import", "juju-status"])
        .arg(&file)
        .output()
        .expect("run import");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let prefix = format!("error: {}:5:", file.display());
    assert!(err.starts_with(&prefix), "{err}");
    assert!(
        err.contains("applications.a.units.a/0.machine: "),
        "the field: {err}"
    );

    // A profile no machine shows: the rest is printed, the Application is not, exit 1.
    let missing = std::fs::read_to_string(FIXTURE)
        .expect("the fixture")
        .replace(
            "charm-profile: juju-demo-containerd-73",
            "charm-profile: juju-demo-containerd-74",
        )
        .replace("charm-rev: 73", "charm-rev: 74");
    let out = run_with_stdin(&["import", "juju-status", "-"], missing.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let (yaml, err) = (text(&out.stdout), text(&out.stderr));
    assert!(yaml.contains("name: kubernetes-worker"), "{yaml}");
    assert!(!yaml.contains("name: containerd"), "{yaml}");
    assert!(
        err.contains("error: application \"containerd\": no machine shows the content of its profile \"juju-demo-containerd-74\""),
        "{err}"
    );
    assert!(err.contains("some could not be"), "{err}");
}
