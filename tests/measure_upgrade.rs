//! A measurement, not a test (ignored by default; `cargo test --release --test
//! measure_upgrade -- --ignored --nocapture`): 200 machines converged on one revision,
//! the revision bumped, the time to converge and the LXD requests it took, against the
//! minimum (create the new profile, one PATCH per instance, delete the old one).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lxd_mutater::lxd::RequestObserver;
use lxd_mutater::pipeline::Pipeline;
use lxd_mutater::reconcile::Options;
use lxd_mutater::resource::{ProfileNames, parse_str};
use lxd_mutater::status::files::StatusFiles;
use lxd_mutater::status::metrics::Telemetry;
use support::TestProject;

#[derive(Default)]
struct Count {
    all: AtomicUsize,
    writes: AtomicUsize,
}

impl RequestObserver for Count {
    fn observe(&self, method: &str, _code: Option<u16>, _elapsed: Duration) {
        self.all.fetch_add(1, Ordering::SeqCst);
        if method != "GET" {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn resources(n: usize, rev: u64) -> Vec<lxd_mutater::resource::Resource> {
    let mut yaml = format!(
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: one, namespace: m}}\nspec: {{revision: {rev}, lxdProfile: {{config: {{security.nesting: true}}}}}}\n---\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '{i}', namespace: m}}\nspec: {{instance: i{i}, applications: [one]}}\n---\n"
        ));
    }
    parse_str("m.yaml", &yaml)
        .resources
        .into_iter()
        .map(|l| l.resource)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn upgrade_of_200_machines() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let lxd = TestProject::new();
    let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
    for chunk in names.chunks(50) {
        for name in chunk {
            lxd.empty_instance(name);
        }
    }
    let state = tempfile::tempdir().unwrap();
    let count = Arc::new(Count::default());
    let ctl = Pipeline::new(
        lxd.client().with_observer(count.clone()),
        Arc::new(StatusFiles::open(state.path()).unwrap()),
        Options {
            workers,
            ..Options::new(ProfileNames::default())
        },
        &Telemetry::new(),
    );
    ctl.load(resources(n, 1));
    ctl.relist().await.unwrap();
    ctl.enqueue_all();
    let workers_task = tokio::spawn(ctl.worker.clone().run(false));
    let idle = |ctl: &Pipeline<_>| ctl.is_idle();
    while !idle(&ctl) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (all0, writes0) = (
        count.all.load(Ordering::SeqCst),
        count.writes.load(Ordering::SeqCst),
    );
    let started = Instant::now();
    ctl.load(resources(n, 2));
    tokio::time::sleep(Duration::from_millis(5)).await;
    while !idle(&ctl) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    ctl.queue.shutdown();
    let _ = workers_task.await;
    let all = count.all.load(Ordering::SeqCst) - all0;
    let writes = count.writes.load(Ordering::SeqCst) - writes0;
    let switched = names
        .iter()
        .filter(|i| lxd.instance_profiles(i) == ["default", "juju-m", "juju-m-one-2"])
        .count();
    let old_gone = lxd.try_lxc(&["profile", "show", "juju-m-one-1"]).is_err();
    println!(
        "upgrade of {n} machines, {workers} workers: {took:?}, {all} LXD requests ({writes} writes), minimum {}; switched {switched}/{n}; old profile deleted: {old_gone}",
        n + 2
    );
    assert_eq!(switched, n);
    assert!(old_gone);
}
