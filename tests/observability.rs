//! What operators see: `/metrics` with every SPEC §8 series, drift counted exactly once
//! and corrected through LXD events (with the resync an hour away), `/readyz`, a real
//! Prometheus scraping the controller, and alert rules and a dashboard that use only
//! metrics the controller really exposes. Through the built binary and the real LXD, and
//! the real Incus (each scenario twice, `::lxd` and `::incus`).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Backend, Daemon, TestProject, http_get, wait_until};

const RESOURCES: &str = "apiVersion: lxdmutater.dev/v1alpha1
kind: Application
metadata: {name: one, namespace: m}
spec:
  revision: 3
  lxdProfile: {config: {security.nesting: true}}
---
apiVersion: lxdmutater.dev/v1alpha1
kind: Machine
metadata: {name: '0', namespace: m}
spec: {instance: i0, applications: [one]}
---
apiVersion: lxdmutater.dev/v1alpha1
kind: Machine
metadata: {name: '1', namespace: m}
spec: {instance: i1, applications: [one]}
---
apiVersion: lxdmutater.dev/v1alpha1
kind: Container
metadata: {name: 0-lxd-0, namespace: m}
spec: {machine: '0', instance: c0, applications: [one]}
";

const EXPECTED: [&str; 3] = ["default", "juju-m", "juju-m-one-3"];

struct Setup {
    lxd: TestProject,
    _resources: tempfile::TempDir,
    _state: tempfile::TempDir,
    daemon: Daemon,
}

/// A converged controller with the resync an hour away: whatever it corrects from here
/// on, it learned from LXD's events.
fn converged(backend: Backend) -> Setup {
    let lxd = TestProject::on(backend);
    for i in ["i0", "i1", "c0"] {
        lxd.empty_instance(i);
    }
    let resources = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(resources.path().join("r.yaml"), RESOURCES).unwrap();
    let daemon = Daemon::start(&lxd, resources.path(), state.path(), &["--resync", "1h"]);
    wait_until("ready", Duration::from_secs(30), || {
        daemon.get("/readyz").0 == 200
    });
    wait_until("converged", Duration::from_secs(30), || {
        ["i0", "i1"]
            .iter()
            .all(|i| lxd.instance_profiles(i) == EXPECTED)
    });
    Setup {
        lxd,
        _resources: resources,
        _state: state,
        daemon,
    }
}

const DETECTED_PROFILES: &str =
    "lxd_mutater_drift_detected_total{controller=\"machine\",kind=\"profiles\"}";
const CORRECTED_PROFILES: &str =
    "lxd_mutater_drift_corrected_total{controller=\"machine\",kind=\"profiles\"}";

on_both!(fn metrics_expose_every_spec_series_and_count_one_manual_drift_once);
fn metrics_expose_every_spec_series_and_count_one_manual_drift_once(backend: Backend) {
    let s = converged(backend);
    let text = s.daemon.metrics();
    for series in [
        "lxd_mutater_drift_detected_total{controller=\"machine\",kind=\"profiles\"}",
        "lxd_mutater_drift_detected_total{controller=\"container\",kind=\"content\"}",
        "lxd_mutater_drift_corrected_total{controller=\"machine\",kind=\"content\"}",
        "lxd_mutater_resources_drifted{controller=\"machine\"}",
        "lxd_mutater_resources{controller=\"machine\",phase=\"Applied\"} 2",
        "lxd_mutater_resources{controller=\"container\",phase=\"Applied\"} 1",
        "lxd_mutater_reconcile_total{controller=\"machine\",result=\"success\"}",
        "lxd_mutater_reconcile_errors_total{controller=\"machine\",category=\"reconcile_timeout\"} 0",
        "lxd_mutater_reconcile_duration_seconds_bucket{controller=\"machine\",le=",
        "lxd_mutater_reconcile_duration_seconds_count{controller=\"container\"}",
        "lxd_mutater_lxd_requests_total{method=\"GET\",code=\"200\"}",
        "lxd_mutater_lxd_requests_total{method=\"PATCH\",code=\"200\"}",
        "lxd_mutater_lxd_request_duration_seconds_count{method=\"PATCH\"}",
        "lxd_mutater_source_files_invalid 0",
        "lxd_mutater_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "workqueue_depth{name=\"lxd_mutater\"}",
        "workqueue_adds_total{name=\"lxd_mutater\"}",
        "workqueue_retries_total{name=\"lxd_mutater\"}",
        "workqueue_queue_duration_seconds_count{name=\"lxd_mutater\"}",
        "workqueue_work_duration_seconds_count{name=\"lxd_mutater\"}",
        "workqueue_unfinished_work_seconds{name=\"lxd_mutater\"}",
        "workqueue_longest_running_processor_seconds{name=\"lxd_mutater\"}",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    // No label takes a value per resource.
    for forbidden in ["i0", "juju-m-one", "name=\"0\""] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} in a label:\n{text}"
        );
    }

    let detected = s.daemon.metric(DETECTED_PROFILES);
    let corrected = s.daemon.metric(CORRECTED_PROFILES);
    s.lxd.lxc(&["profile", "assign", "i0", "default"]);
    wait_until("the list drift corrected", Duration::from_secs(10), || {
        s.lxd.instance_profiles("i0") == EXPECTED
    });
    wait_until("the correction counted", Duration::from_secs(5), || {
        s.daemon.metric(CORRECTED_PROFILES) == corrected + 1.0
    });
    assert_eq!(s.daemon.metric(DETECTED_PROFILES), detected + 1.0);

    // A profile used by three instances, edited by hand: one content drift.
    let content =
        |m: &str| format!("lxd_mutater_drift_{m}_total{{controller=\"machine\",kind=\"content\"}}");
    let content_any = |m: &str| {
        s.daemon.metric(&content(m))
            + s.daemon.metric(&format!(
                "lxd_mutater_drift_{m}_total{{controller=\"container\",kind=\"content\"}}"
            ))
    };
    assert_eq!(content_any("detected"), 0.0);
    s.lxd.lxc(&[
        "profile",
        "set",
        "juju-m-one-3",
        "security.nesting",
        "false",
    ]);
    wait_until(
        "the content drift corrected",
        Duration::from_secs(10),
        || s.lxd.profile_json("juju-m-one-3")["config"]["security.nesting"] == "true",
    );
    wait_until(
        "the content correction counted",
        Duration::from_secs(5),
        || content_any("corrected") == 1.0,
    );
    assert_eq!(content_any("detected"), 1.0);
    // Our own writes were not taken for drift: the counts have not moved since.
    assert_eq!(s.daemon.metric(DETECTED_PROFILES), detected + 1.0);
    assert_eq!(s.daemon.metric(CORRECTED_PROFILES), corrected + 1.0);
    assert_eq!(
        s.daemon
            .metric("lxd_mutater_resources_drifted{controller=\"machine\"}"),
        0.0
    );
}

on_both!(fn manual_drift_is_corrected_through_events_without_waiting_for_the_resync);
/// With the resync an hour away, 20 manual drifts are corrected through the events; the
/// time from `lxc profile assign` returning to the list being right again is printed.
fn manual_drift_is_corrected_through_events_without_waiting_for_the_resync(backend: Backend) {
    let s = converged(backend);
    let mut took = Vec::new();
    for k in 0..20 {
        let wrong = if k % 2 == 0 {
            "default"
        } else {
            "default,juju-m-one-3,juju-m"
        };
        s.lxd.lxc(&["profile", "assign", "i1", wrong]);
        let started = Instant::now();
        wait_until("drift corrected", Duration::from_secs(10), || {
            s.lxd.instance_profiles("i1") == EXPECTED
        });
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "manual drift to corrected, 20 times: median {:?}, worst {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

on_both!(fn readyz_is_503_while_lxd_does_not_answer_and_healthz_still_200);
fn readyz_is_503_while_lxd_does_not_answer_and_healthz_still_200(backend: Backend) {
    let lxd = TestProject::on(backend);
    let resources = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(resources.path().join("r.yaml"), RESOURCES).unwrap();
    let daemon = Daemon::start(
        &lxd,
        resources.path(),
        state.path(),
        &["--lxd", "unix:///nonexistent/lxd/unix.socket"],
    );
    wait_until("the HTTP endpoints", Duration::from_secs(10), || {
        daemon.get("/healthz").0 == 200
    });
    let (code, body) = daemon.get("/readyz");
    assert_eq!(code, 503, "{body}");
    // The same controller pointed at the real LXD becomes ready.
    drop(daemon);
    let daemon = Daemon::start(&lxd, resources.path(), state.path(), &[]);
    wait_until("ready", Duration::from_secs(30), || {
        daemon.get("/readyz").0 == 200
    });
}

on_both!(fn a_real_prometheus_scrapes_the_controller_and_the_rules_use_only_real_metrics);
fn a_real_prometheus_scrapes_the_controller_and_the_rules_use_only_real_metrics(backend: Backend) {
    let s = converged(backend);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");

    // The rules are valid, and every metric the rules and the dashboard use is exposed.
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(root.join("alerts.yaml"))
        .output()
        .expect("promtool (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let scrape = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(scrape.path(), s.daemon.metrics()).unwrap();
    // A real scrape passes promtool's lint with no complaint (names, help, types).
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(scrape.path()).unwrap())
        .output()
        .expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("python3")
        .arg(root.join("check-metric-names.py"))
        .arg(scrape.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A drift, so the counter is not zero.
    s.lxd.lxc(&["profile", "assign", "i0", "default"]);
    wait_until("drift corrected", Duration::from_secs(10), || {
        s.daemon.metric(DETECTED_PROFILES) >= 1.0
    });

    // A real Prometheus on loopback scrapes the controller every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: lxd-mutater\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            root.join("alerts.yaml").display(),
            s.daemon.port
        ),
    )
    .unwrap();
    let port = support::free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test-deps.sh installs it)");
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=lxd_mutater_drift_detected_total%7Bkind%3D%22profiles%22%2Ccontroller%3D%22machine%22%7D"
    );
    let mut answer = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (code, body) = http_get(&query);
        if code == 200 && body.contains("\"value\":[") {
            answer = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(
        answer.contains("\"__name__\":\"lxd_mutater_drift_detected_total\""),
        "Prometheus never returned the drift counter: {answer}"
    );
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let n: f64 = value["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 1.0, "{answer}");
}

on_both!(fn json_logs_have_one_line_per_change_and_none_for_a_pass_in_sync);
/// `--log-format json`: one line per reconcile that changed something, with the resource,
/// the result, the lists and the duration; nothing at info level for one that found
/// nothing to do.
fn json_logs_have_one_line_per_change_and_none_for_a_pass_in_sync(backend: Backend) {
    let lxd = TestProject::on(backend);
    for i in ["i0", "i1", "c0"] {
        lxd.empty_instance(i);
    }
    let resources = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(resources.path().join("r.yaml"), RESOURCES).unwrap();
    let once = || {
        let out = lxd
            .mutater()
            .args(["run", "--once", "--log-format", "json", "--resources"])
            .arg(resources.path())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--lxd-project", lxd.name()])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let logs = once();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "reconciled")
        .collect();
    assert_eq!(lines.len(), 3, "one line per resource changed:\n{logs}");
    let i0 = lines
        .iter()
        .find(|v| v["fields"]["instance"] == "i0")
        .expect("a line for i0");
    assert_eq!(i0["level"], "INFO");
    assert_eq!(i0["fields"]["result"], "applied");
    assert_eq!(i0["fields"]["resource"], "Machine/m/0");
    assert_eq!(i0["fields"]["current"], "[\"default\"]");
    assert_eq!(
        i0["fields"]["expected"],
        "[\"default\", \"juju-m\", \"juju-m-one-3\"]"
    );
    assert!(i0["fields"]["took_ms"].is_u64());
    // In sync: nothing at info level.
    let logs = once();
    assert!(
        !logs.contains("\"level\":\"INFO\""),
        "a pass in sync logs nothing at info level:\n{logs}"
    );
}
