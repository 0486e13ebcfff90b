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
        || d.metric("lxd_mutater_source_files_invalid") == 1.0,
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

/// The LXD writes a daemon has made so far (every method but GET, every answer).
fn lxd_writes(d: &Daemon) -> f64 {
    writes_where(d, |_| true)
}

fn writes_where(d: &Daemon, keep: impl Fn(&str) -> bool) -> f64 {
    let text = d.metrics();
    text.lines()
        .filter(|l| {
            l.starts_with("lxd_mutater_lxd_requests_total{") && !l.contains("method=\"GET\"")
        })
        .filter(|l| keep(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reproduction: the resources directory moved away under a running controller used to
/// empty its view: every status file deleted, every resource forgotten, and the clean-up
/// run on nothing. A directory that cannot be read is a partial view: the last good one
/// stays, /readyz says why, nothing is written, and all is as before once it is back.
#[test]
fn a_resources_directory_moved_away_forgets_nothing_and_writes_nothing() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    lxd.empty_instance("i1");
    let top = tempfile::tempdir().unwrap();
    let res = top.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(res.join("r.yaml"), app(1) + &machine(0) + &machine(1)).unwrap();
    let d = start(&lxd, &res, state.path());
    let want = ["default", "juju-m", "juju-m-one-1"];
    let statuses = state.path().join("m/machines");
    let applied = |m: &str| {
        std::fs::read_to_string(statuses.join(format!("{m}.yaml")))
            .is_ok_and(|t| t.contains("phase: Applied"))
    };
    // Converged: both lists right and both statuses Applied (the last write is done).
    wait_until("ready and converged", Duration::from_secs(30), || {
        d.get("/readyz").0 == 200
            && lxd.instance_profiles("i0") == want
            && lxd.instance_profiles("i1") == want
            && applied("0")
            && applied("1")
    });
    let writes = lxd_writes(&d);
    std::fs::rename(&res, top.path().join("elsewhere")).unwrap();
    wait_until(
        "/readyz to say the view is partial",
        Duration::from_secs(10),
        || {
            let (code, body) = d.get("/readyz");
            code == 503 && body.contains("partial")
        },
    );
    assert_eq!(d.metric("lxd_mutater_source_files_invalid"), 1.0);
    // The periodic rescan and a resync see the same partial view: nothing changes.
    assert_eq!(status_files(&statuses), 2);
    assert!(lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_ok());
    assert_eq!(lxd_writes(&d), writes);
    std::fs::rename(top.path().join("elsewhere"), &res).unwrap();
    wait_until("ready again", Duration::from_secs(40), || {
        d.get("/readyz").0 == 200
    });
    assert_eq!(d.metric("lxd_mutater_source_files_invalid"), 0.0);
    assert_eq!(status_files(&statuses), 2);
    assert_eq!(lxd_writes(&d), writes);
}

/// Two controllers, each with its own --owner and resources, on one LXD project, in
/// namespaces `m` and `m-x` (whose profile names `juju-m-x-...` also read as namespace
/// `m`'s): after converging, a minute of resyncs every 5 s in which neither writes, and
/// neither deletes or rewrites a profile of the other's when it moves on.
#[test]
fn two_controllers_with_their_own_owner_share_a_project_without_fighting() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    lxd.empty_instance("i1");
    let (res_a, res_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blue = |rev| in_namespace(&(app(rev) + &machine(0)), "m");
    let green = |rev| in_namespace(&(app(rev) + &machine(1)), "m-x");
    std::fs::write(res_a.path().join("r.yaml"), blue(1)).unwrap();
    std::fs::write(res_b.path().join("r.yaml"), green(1)).unwrap();
    let resync = ["--resync", "5s"];
    let a = Daemon::start(
        &lxd,
        res_a.path(),
        state_a.path(),
        &[&resync[..], &["--owner", "blue"]].concat(),
    );
    let b = Daemon::start(
        &lxd,
        res_b.path(),
        state_b.path(),
        &[&resync[..], &["--owner", "green"]].concat(),
    );
    wait_until("both converged", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == ["default", "juju-m", "juju-m-one-1"]
            && lxd.instance_profiles("i1") == ["default", "juju-m-x", "juju-m-x-one-1"]
    });
    let applied = |d: &Daemon| {
        d.metric("lxd_mutater_resources{controller=\"machine\",phase=\"Applied\"}") == 1.0
    };
    wait_until("both report Applied", Duration::from_secs(30), || {
        applied(&a) && applied(&b)
    });
    // Once converged, a minute (a dozen resyncs each) in which neither writes anything.
    let before = (lxd_writes(&a), lxd_writes(&b));
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(60) {
        assert_eq!(
            (lxd_writes(&a), lxd_writes(&b)),
            before,
            "a write {:?} after converging: a fight",
            window.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Each claims its own instance.
    let owner_of = |i: &str| {
        lxd.lxc(&["config", "get", i, "user.lxd-mutater.owner"])
            .trim()
            .to_string()
    };
    assert_eq!(
        (owner_of("i0"), owner_of("i1")),
        ("blue".into(), "green".into())
    );
    // Blue moves on to revision 2 and deletes its revision-1 profile; green's profiles,
    // whose names read as blue's namespace, stay, and green writes nothing.
    let green_writes = lxd_writes(&b);
    std::fs::write(res_a.path().join("r.yaml"), blue(2)).unwrap();
    wait_until(
        "blue on revision 2, its old profile gone",
        Duration::from_secs(30),
        || {
            lxd.instance_profiles("i0") == ["default", "juju-m", "juju-m-one-2"]
                && lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err()
        },
    );
    // And green, likewise, leaves blue's alone.
    let blue_writes = lxd_writes(&a);
    std::fs::write(res_b.path().join("r.yaml"), green(2)).unwrap();
    wait_until(
        "green on revision 2, its old profile gone",
        Duration::from_secs(30),
        || {
            lxd.instance_profiles("i1") == ["default", "juju-m-x", "juju-m-x-one-2"]
                && lxd.try_lxc(&["profile", "show", "juju-m-x-one-1"]).is_err()
        },
    );
    assert_eq!(
        lxd_writes(&a),
        blue_writes,
        "blue wrote after green's change"
    );
    assert!(lxd_writes(&b) > green_writes);
    for p in ["juju-m", "juju-m-one-2", "juju-m-x", "juju-m-x-one-2"] {
        assert!(lxd.try_lxc(&["profile", "show", p]).is_ok(), "{p} deleted");
    }
}

/// The resources of `text`, moved to `namespace`.
fn in_namespace(text: &str, namespace: &str) -> String {
    text.replace("namespace: m}", &format!("namespace: {namespace}}}"))
}

/// The status files in `dir` (their hidden shadows not counted).
fn status_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}
