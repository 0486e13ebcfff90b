//! The LXD daemon restarted under a running controller: `/readyz` says 503 while LXD is
//! down, the events stream reconnects, the relist on reconnect runs, and a drift made
//! while the controller was not connected is corrected.
//!
//! This is the only test in this file on purpose: cargo runs test binaries one after the
//! other, so restarting the shared daemon here disturbs no other test.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Daemon, TestProject, http_get, wait_until};

fn lxd_answers() -> bool {
    let socket = support::lxd_socket();
    Command::new("curl")
        .args(["-fsS", "--max-time", "2", "--unix-socket"])
        .arg(&socket)
        .arg("http://lxd/1.0")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn lxd_restart_reconnects_relists_and_corrects_drift_made_meanwhile() {
    let lxd = TestProject::new();
    lxd.empty_instance("i0");
    let resources = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("r.yaml"),
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one, namespace: m}\nspec: {revision: 3, lxdProfile: {config: {security.nesting: true}}}\n---\napiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {name: '0', namespace: m}\nspec: {instance: i0, applications: [one]}\n",
    )
    .unwrap();
    let daemon = Daemon::start(&lxd, resources.path(), state.path(), &["--resync", "1h"]);
    let expected = ["default", "juju-m", "juju-m-one-3"];
    wait_until("converged", Duration::from_secs(30), || {
        lxd.instance_profiles("i0") == expected
    });
    wait_until("ready", Duration::from_secs(10), || {
        daemon.get("/readyz").0 == 200
    });

    // Kill the daemon (as a crash would), see the controller not ready.
    let killed = Command::new("pkill")
        .args(["-9", "-x", "lxd"])
        .status()
        .unwrap();
    assert!(killed.success(), "no lxd process to kill");
    wait_until("LXD down", Duration::from_secs(10), || !lxd_answers());
    wait_until(
        "not ready while LXD is down",
        Duration::from_secs(10),
        || daemon.get("/readyz").0 == 503,
    );
    assert_eq!(daemon.get("/healthz").0, 200, "alive all the same");

    // Bring LXD back and drift at once, before the controller's events reconnect
    // (its backoff has grown while LXD was down).
    let up = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lxd-up.sh"))
        .status()
        .unwrap();
    assert!(up.success(), "scripts/lxd-up.sh failed");
    lxd.lxc(&["profile", "assign", "i0", "default"]);
    wait_until(
        "the drift made meanwhile corrected",
        Duration::from_secs(60),
        || lxd.instance_profiles("i0") == expected,
    );
    wait_until("ready again", Duration::from_secs(30), || {
        daemon.get("/readyz").0 == 200
    });
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", daemon.port));
    assert!(
        metrics.contains("lxd_mutater_lxd_requests_total{method=\"GET\",code=\"error\"}"),
        "requests while LXD was down are counted as errors"
    );
}
