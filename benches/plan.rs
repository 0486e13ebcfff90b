//! Criterion benchmarks of the pure steady-state work, at N, 10N and 100N machines
//! (N = 200) against a synthetic observed state in sync (no LXD daemon):
//!
//! - `plan/<n>`: `plan` of every Machine, as the controller's full pass (`diff`, a
//!   relist) does it, looking applications up in `Desired`;
//! - `index/<n>`: a fresh `Desired` and `upsert` of every resource (applications, then
//!   machines).
//!
//! Both report `Throughput::Elements(n)`, so criterion prints the time per machine.
//! `benches/scale.rs` prints the same figures and the memory per resource as JSON.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use lxd_mutater::lxd::{Instance, Profile, ProfileContent};
use lxd_mutater::reconcile::expected::{charm_content, model_profile_content, owned};
use lxd_mutater::reconcile::{Decision, plan};
use lxd_mutater::resource::{
    API_VERSION, Application, ApplicationSpec, InstanceSpec, LxdProfile, Metadata, Object,
    ProfileNames, Resource, Workload,
};
use lxd_mutater::store::{Desired, Observed};

// The synthetic fleet (the same as in benches/scale.rs).

const NS: &str = "bench";

/// Resources, and an LXD listing in which every instance is in sync with them.
struct Fleet {
    apps: Vec<Resource>,
    machines: Vec<Resource>,
    instances: Vec<Instance>,
    profiles: Vec<Profile>,
}

fn metadata(name: String) -> Metadata {
    Metadata {
        name,
        namespace: NS.into(),
        ..Metadata::default()
    }
}

fn application(j: usize) -> Application {
    let mut config = BTreeMap::new();
    config.insert("security.nesting".to_string(), "true".to_string());
    config.insert(
        "linux.kernel_modules".to_string(),
        "ip_tables,overlay".to_string(),
    );
    let kmsg: BTreeMap<String, String> = [
        ("type", "unix-char"),
        ("path", "/dev/kmsg"),
        ("source", "/dev/kmsg"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut devices = BTreeMap::new();
    devices.insert("kmsg".to_string(), kmsg);
    Object {
        api_version: API_VERSION.into(),
        kind: "Application".into(),
        metadata: metadata(format!("app-{j}")),
        spec: ApplicationSpec {
            charm: Some(format!("charm-{j}")),
            revision: (j % 97) as u64 + 1,
            lxd_profile: Some(LxdProfile {
                description: format!("profile of app-{j}"),
                config,
                devices,
                ignored_keys: vec![],
            }),
            ..ApplicationSpec::default()
        },
        status: None,
    }
}

/// The two applications of machine `i`, among `apps`.
fn apps_of(i: usize, apps: usize) -> [usize; 2] {
    [i % apps, (i + 1) % apps]
}

fn instance_name(i: usize) -> String {
    format!("juju-{NS}-{i}")
}

fn machine(i: usize, apps: usize) -> Workload {
    Object {
        api_version: API_VERSION.into(),
        kind: "Machine".into(),
        metadata: metadata(i.to_string()),
        spec: InstanceSpec {
            instance: Some(instance_name(i)),
            applications: apps_of(i, apps)
                .iter()
                .map(|j| format!("app-{j}"))
                .collect(),
            ..InstanceSpec::default()
        },
        status: None,
    }
}

fn used_by(instances: impl Iterator<Item = usize>) -> Vec<String> {
    instances
        .map(|i| {
            format!(
                "/1.0/instances/{}?project=lxd-mutater-bench",
                instance_name(i)
            )
        })
        .collect()
}

/// `n` machines, each naming two of `apps` applications (all with a profile), and an
/// observed state in sync: every instance has the expected list, every profile exists
/// with the expected content (owned ones with the owner key) and lists its users.
fn fleet(n: usize, apps: usize) -> Fleet {
    assert!(apps >= 2, "a machine names two distinct applications");
    let names = ProfileNames::default();
    let applications: Vec<Application> = (0..apps).map(application).collect();
    let charm_name =
        |j: usize| names.charm_profile(NS, &format!("app-{j}"), applications[j].spec.revision);
    let model_profile = names.model_profile(NS);
    let instances = (0..n)
        .map(|i| {
            let mut profiles = vec!["default".to_string(), model_profile.clone()];
            profiles.extend(apps_of(i, apps).map(charm_name));
            Instance {
                name: instance_name(i),
                profiles,
                status: "Running".into(),
            }
        })
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); apps];
    for i in 0..n {
        for j in apps_of(i, apps) {
            users[j].push(i);
        }
    }
    let mut profiles = vec![
        Profile {
            name: "default".into(),
            content: ProfileContent::default(),
            used_by: used_by(0..n),
        },
        Profile {
            name: model_profile.clone(),
            content: owned(&model_profile_content()),
            used_by: used_by(0..n),
        },
    ];
    for (j, a) in applications.iter().enumerate() {
        let lxd_profile = a
            .spec
            .lxd_profile
            .as_ref()
            .expect("every app has a profile");
        profiles.push(Profile {
            name: charm_name(j),
            content: owned(&charm_content(lxd_profile)),
            used_by: used_by(users[j].iter().copied()),
        });
    }
    Fleet {
        apps: applications
            .into_iter()
            .map(Resource::Application)
            .collect(),
        machines: (0..n)
            .map(|i| Resource::Machine(machine(i, apps)))
            .collect(),
        instances,
        profiles,
    }
}

fn desired_of(resources: impl IntoIterator<Item = Resource>) -> Desired {
    let mut d = Desired::default();
    for r in resources {
        d.upsert(r);
    }
    d
}

/// Plans every workload as the controller's full pass does; returns how many are in sync.
fn plan_all(desired: &Desired, observed: &Observed, names: &ProfileNames) -> usize {
    let mut in_sync = 0;
    for (k, w) in desired.workloads() {
        let decision = plan(
            k.kind,
            w,
            |n| desired.application(&k.namespace, n).map(|a| a.as_ref()),
            observed,
            names,
        );
        if matches!(&decision, Decision::Act(p) if p.is_empty()) {
            in_sync += 1;
        }
        black_box(decision);
    }
    in_sync
}

const SIZES: [usize; 3] = [200, 2_000, 20_000];

/// Few samples, and a measurement time that grows with N: `cargo bench --bench plan`
/// stays well under two minutes on two cores.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if n >= 20_000 { 4 } else { 2 }))
        .throughput(Throughput::Elements(n as u64));
}

fn bench_plan(c: &mut Criterion) {
    let names = ProfileNames::default();
    let mut group = c.benchmark_group("plan");
    for n in SIZES {
        let f = fleet(n, (n / 10).max(2));
        let desired = desired_of(f.apps.into_iter().chain(f.machines));
        let mut observed = Observed::default();
        observed.replace(f.instances, f.profiles);
        assert_eq!(
            plan_all(&desired, &observed, &names),
            n,
            "every machine must be in sync with the synthetic observed state"
        );
        configure(&mut group, n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| plan_all(&desired, &observed, &names))
        });
    }
    group.finish();
}

fn bench_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for n in SIZES {
        let f = fleet(n, (n / 10).max(2));
        let resources: Vec<Resource> = f.apps.into_iter().chain(f.machines).collect();
        configure(&mut group, n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(|| resources.clone(), desired_of, BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan, bench_index);
criterion_main!(benches);
