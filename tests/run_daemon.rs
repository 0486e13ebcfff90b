//! `lxd-mutater run` as a daemon, through the built binary against the real LXD: edits
//! are followed, SIGTERM drains and exits 0, and a SIGKILL in the middle of converging
//! loses nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Daemon, TestProject, wait_until};

fn start(project: &TestProject, resources: &std::path::Path, state: &std::path::Path) -> Daemon {
    Daemon::start(project, resources, state, &[])
}

fn app(rev: u64) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: one, namespace: m}}\nspec:\n  revision: {rev}\n  lxdProfile: {{config: {{security.nesting: true}}}}\n---\n"
    )
}

fn machine(i: usize) -> String {
    format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '{i}', namespace: m}}\nspec: {{instance: i{i}, applications: [one]}}\n---\n"
    )
}

#[test]
fn an_edit_is_followed_and_sigterm_exits_zero() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    let res = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(res.path().join("r.yaml"), app(1) + &machine(0)).unwrap();
    let mut d = start(&lxd, res.path(), state.path());
    let profiles = |i: &str| lxd.instance_profiles(i);
    wait_until("first converge", Duration::from_secs(30), || {
        profiles("i0") == ["default", "juju-m", "juju-m-one-1"]
    });
    // An edit: revision bump. Followed by the watcher, not by a resync (10 min).
    let edited = Instant::now();
    std::fs::write(res.path().join("r.yaml"), app(2) + &machine(0)).unwrap();
    wait_until("the edit to be applied", Duration::from_secs(10), || {
        profiles("i0") == ["default", "juju-m", "juju-m-one-2"]
    });
    eprintln!("edit to applied: {:?}", edited.elapsed());
    wait_until(
        "the old profile to be deleted",
        Duration::from_secs(10),
        || lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err(),
    );
    // A file that stops parsing keeps its last good resources: nothing changes.
    std::fs::write(res.path().join("r.yaml"), "apiVersion: [\n").unwrap();
    wait_until(
        "the broken file to be seen",
        Duration::from_secs(10),
        || d.metric("lxd_mutater_source_errors") == 1.0,
    );
    assert_eq!(profiles("i0"), ["default", "juju-m", "juju-m-one-2"]);
    // SIGTERM: drain and exit 0.
    let pid = d.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(35),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_in_the_middle_of_converging_fifty_machines_then_restart_converges_everything() {
    let lxd = TestProject::new();
    let n = 50;
    for i in 0..n {
        lxd.empty_instance(&format!("i{i}"));
    }
    let res = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let all: String = (0..n).map(machine).collect();
    std::fs::write(res.path().join("r.yaml"), app(1) + &all).unwrap();
    let d = start(&lxd, res.path(), state.path());
    let converged = |rev: u64| {
        let want = [
            "default".to_string(),
            "juju-m".into(),
            format!("juju-m-one-{rev}"),
        ];
        (0..n)
            .filter(|i| lxd.instance_profiles(&format!("i{i}")) == want)
            .count()
    };
    wait_until(
        "all converged on revision 1",
        Duration::from_secs(60),
        || converged(1) == n,
    );
    // Bump and kill while the switch is under way.
    std::fs::write(res.path().join("r.yaml"), app(2) + &all).unwrap();
    wait_until("the switch to start", Duration::from_secs(30), || {
        converged(2) > 0
    });
    drop(d); // SIGKILL
    let mid = converged(2);
    eprintln!("killed with {mid} of {n} switched");
    let _d = start(&lxd, res.path(), state.path());
    wait_until(
        "all converged on revision 2",
        Duration::from_secs(60),
        || converged(2) == n,
    );
    wait_until(
        "no owned profile left behind",
        Duration::from_secs(30),
        || lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err(),
    );
}
