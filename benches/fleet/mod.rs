//! The synthetic fleet both benches measure: N machines, N/10 applications with
//! profiles, and an observed LXD state in sync with them (no daemon).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::hint::black_box;

use lxd_mutater::lxd::{Instance, Profile, ProfileContent};
use lxd_mutater::reconcile::expected::{charm_content, model_profile_content};
use lxd_mutater::reconcile::{Decision, plan};
use lxd_mutater::resource::{
    API_VERSION, Application, ApplicationSpec, InstanceSpec, LxdProfile, Metadata, Object,
    ProfileNames, Resource, Workload,
};
use lxd_mutater::store::observed::Stamp;
use lxd_mutater::store::{Desired, Observed};

pub const NS: &str = "bench";

/// Resources, and an LXD listing in which every instance is in sync with them.
pub struct Fleet {
    pub apps: Vec<Resource>,
    pub machines: Vec<Resource>,
    pub instances: Vec<Instance>,
    pub profiles: Vec<Profile>,
}

pub fn metadata(name: String) -> Metadata {
    Metadata {
        name,
        namespace: NS.into(),
        ..Metadata::default()
    }
}

pub fn application(j: usize) -> Application {
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
pub fn apps_of(i: usize, apps: usize) -> [usize; 2] {
    [i % apps, (i + 1) % apps]
}

pub fn instance_name(i: usize) -> String {
    format!("juju-{NS}-{i}")
}

pub fn machine(i: usize, apps: usize) -> Workload {
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

pub fn used_by(instances: impl Iterator<Item = usize>) -> Vec<String> {
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
pub fn fleet(n: usize, apps: usize) -> Fleet {
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
                config: Default::default(),
            }
        })
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); apps];
    for i in 0..n {
        for j in apps_of(i, apps) {
            users[j].push(i);
        }
    }
    let owned = |c: &ProfileContent| {
        Stamp {
            owner: Some(lxd_mutater::store::OWNER_VALUE.into()),
            namespace: Some(NS.into()),
            ..Stamp::default()
        }
        .on(c)
    };
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

pub fn desired_of(resources: impl IntoIterator<Item = Resource>) -> Desired {
    let mut d = Desired::default();
    for r in resources {
        d.upsert(r);
    }
    d
}

/// Plans every workload as the controller's full pass does; returns how many are in sync.
pub fn plan_all(desired: &Desired, observed: &Observed, names: &ProfileNames) -> usize {
    let mut in_sync = 0;
    for (k, w) in desired.workloads() {
        let decision = plan(
            k.kind,
            w,
            |n| desired.application(&k.namespace, n).map(|a| a.as_ref()),
            |p| {
                desired
                    .subordinates(&k.namespace, p)
                    .into_iter()
                    .map(|a| a.as_ref())
                    .collect()
            },
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
