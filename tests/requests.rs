//! What LXD is asked, request by request, for the work a controller does every day
//! (issue 15): a start lists LXD once, an upgrade of an application that N instances run
//! is exactly N+2 writes and not one read (the events of its own writes are recognised as
//! echoes), and a manual drift costs one read and one write. Through the built binary and
//! the real LXD; every request is counted by a proxy in front of the socket.

mod support;

#[allow(dead_code)]
#[path = "support/proxy.rs"]
mod proxy;

use std::time::Duration;

use proxy::{Controller, Exchange, FaultProxy, Faults};
use support::{TestProject, wait_until};

const N: usize = 6;

fn resources(revision: u64) -> String {
    let mut yaml = format!(
        "apiVersion: lxdmutater.dev/v1alpha1
kind: Application
metadata: {{name: one, namespace: m}}
spec:
  revision: {revision}
  lxdProfile: {{config: {{security.nesting: true}}}}
"
    );
    for k in 0..N {
        yaml.push_str(&format!(
            "---
apiVersion: lxdmutater.dev/v1alpha1
kind: Machine
metadata: {{name: '{k}', namespace: m}}
spec: {{instance: i{k}, applications: [one]}}
"
        ));
    }
    yaml
}

fn expected(revision: u64) -> Vec<String> {
    ["default", "juju-m", &format!("juju-m-one-{revision}")]
        .map(String::from)
        .to_vec()
}

/// `method path` of each request, the events stream left out, in order.
fn requests(exchanges: &[Exchange]) -> Vec<String> {
    exchanges
        .iter()
        .filter(|e| !e.path.starts_with("/1.0/events"))
        .map(|e| {
            let path = e.path.split('?').next().unwrap_or_default();
            format!("{} {path}", e.method)
        })
        .collect()
}

fn count(requests: &[String], prefix: &str) -> usize {
    requests.iter().filter(|r| r.starts_with(prefix)).count()
}

#[test]
fn a_start_lists_once_an_upgrade_is_n_plus_two_writes_and_a_drift_one_read_and_one_write() {
    let lxd = TestProject::new();
    for k in 0..N {
        lxd.empty_instance(&format!("i{k}"));
    }
    let dir = tempfile::tempdir().expect("a resources directory");
    let state = tempfile::tempdir().expect("a state directory");
    let file = dir.path().join("r.yaml");
    std::fs::write(&file, resources(1)).expect("write the resources");
    let proxy = FaultProxy::start(&support::lxd_socket(), Faults::default());
    let url = proxy.url();
    let args = [
        "--resources",
        dir.path().to_str().expect("a UTF-8 path"),
        "--state-dir",
        state.path().to_str().expect("a UTF-8 path"),
        "--lxd",
        &url,
        "--lxd-project",
        lxd.name(),
        "--resync",
        "1h",
    ];
    let controller = Controller::start(&args, None);
    let lists = || (0..N).map(|k| lxd.instance_profiles(&format!("i{k}")));
    wait_until("converged", Duration::from_secs(60), || {
        lists().all(|l| l == expected(1))
    });
    wait_until("ready and idle", Duration::from_secs(30), || {
        controller.get("/readyz").0 == 200
            && controller.metric("workqueue_depth{name=\"lxd_mutater\"}") == 0.0
    });

    // The start: what the project check reads, then one listing (instances and profiles),
    // not two: the events stream was up before it.
    let start = requests(&proxy.exchanges());
    eprintln!("the start: {start:#?}");
    assert_eq!(count(&start, "GET /1.0/instances"), 1, "{start:#?}");
    assert_eq!(count(&start, "GET /1.0/profiles"), 1, "{start:#?}");
    assert_eq!(count(&start, "PATCH /1.0/instances/"), N, "{start:#?}");
    assert_eq!(count(&start, "POST /1.0/profiles"), 2, "{start:#?}");
    let start_reads = count(&start, "GET ");
    assert!(
        start_reads <= 4,
        "server, project, two listings: {start:#?}"
    );

    // The upgrade: a new revision of the application every instance runs.
    let before = proxy.exchanges().len();
    std::fs::write(&file, resources(2)).expect("write the resources");
    wait_until("upgraded", Duration::from_secs(60), || {
        lists().all(|l| l == expected(2))
            && lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err()
    });
    // Events are handled in order: once the correction of a drift made after the
    // upgrade is seen, every event of the upgrade was handled (an echo not recognised
    // would have cost a GET by then).
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    wait_until("the drift corrected", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == expected(2)
    });
    wait_until(
        "the correction's PATCH seen",
        Duration::from_secs(10),
        || {
            count(
                &requests(&proxy.exchanges()[before..]),
                "PATCH /1.0/instances/",
            ) == N + 1
        },
    );
    let all = proxy.exchanges();
    let after = requests(&all[before..]);
    eprintln!("the upgrade, then one drift: {after:#?}");
    // The drift's two requests are the last.
    let (upgrade, drift) = after.split_at(after.len().saturating_sub(2));
    assert_eq!(upgrade.len(), N + 2, "exactly N+2 requests: {upgrade:#?}");
    assert_eq!(count(upgrade, "POST /1.0/profiles"), 1, "{upgrade:#?}");
    assert_eq!(count(upgrade, "PATCH /1.0/instances/"), N, "{upgrade:#?}");
    assert_eq!(
        count(upgrade, "DELETE /1.0/profiles/juju-m-one-1"),
        1,
        "{upgrade:#?}"
    );
    assert_eq!(
        drift,
        ["GET /1.0/instances/i0", "PATCH /1.0/instances/i0"],
        "a drift: one read, one write"
    );
    assert!(
        all.iter()
            .all(|e| e.succeeded() || e.path.starts_with("/1.0/events"))
    );
    drop(controller);
}
