//! An LXD listing to resources: the instances whose profiles follow Juju's names, as LXD
//! holds them now, so that `diff` is in sync at once.
//!
//! Juju gives a machine the profiles `default`, `juju-<model>`, then one
//! `juju-<model>-<app>-<rev>` per application with a profile, in unit order; a container
//! on a host `default`, then its charm profiles. So an instance whose list is
//! `[default, juju-<model>, ...]` becomes a Machine of namespace `<model>`; with
//! `--machine HOST` an instance whose list is `[default, <charm profiles>...]` becomes a
//! Container of HOST (its model told by `--model`, or by the charm profiles' names when
//! only one model fits them all). Each charm profile becomes an Application with its
//! content; a profile that is neither the model profile nor a charm profile of the model
//! is kept as an extra profile. What the listing cannot say (charm names, subordinate
//! relations) is left out: the profile lists come out the same without it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Import, ImportError, Level, expected_list, natural_cmp};
use crate::lxd::{Instance, Profile};
use crate::resource::names::check_resource_name;
use crate::resource::profile::RESERVED_PREFIX;
use crate::resource::{
    Application, ApplicationSpec, InstanceSpec, Kind, LxdProfile, ProfileNames, Resource,
};
use crate::store::PreparedApp;

/// What to import, and how profiles are named.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub names: ProfileNames,
    /// Import Containers of this host machine, not Machines.
    pub machine: Option<String>,
    /// Only this model (required when the containers' model cannot be told).
    pub model: Option<String>,
    /// The LXD project, for the header.
    pub project: String,
}

/// Placeholders rendered into the templates to find where the model and the application
/// sit in a name: control characters, which no profile name may hold.
const MODEL_MARK: &str = "\u{1}";
const APP_MARK: &str = "\u{2}";

/// Turns a listing of one LXD project into resources.
pub fn convert(
    instances: &[Instance],
    profiles: &[Profile],
    opts: &Options,
) -> Result<Import, ImportError> {
    Converter::new(instances, profiles, opts).run()
}

/// An instance read as Juju's: its model and the profiles after the base ones.
struct Candidate<'a> {
    instance: &'a Instance,
    kind: Kind,
    /// Known for a Machine (its model profile); decided later for a Container.
    model: Option<String>,
    /// The profiles after `default` (and the model profile).
    rest: &'a [String],
}

struct Converter<'a> {
    instances: Vec<&'a Instance>,
    profiles: HashMap<&'a str, &'a Profile>,
    opts: &'a Options,
    out: Import,
}

impl<'a> Converter<'a> {
    fn new(instances: &'a [Instance], profiles: &'a [Profile], opts: &'a Options) -> Self {
        let mut instances: Vec<&Instance> = instances.iter().collect();
        instances.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        Converter {
            instances,
            profiles: profiles.iter().map(|p| (p.name.as_str(), p)).collect(),
            opts,
            out: Import::default(),
        }
    }

    fn names(&self) -> &ProfileNames {
        &self.opts.names
    }

    fn note(&mut self, level: Level, message: impl Into<String>) {
        self.out.note(level, String::new(), message);
    }

    fn run(mut self) -> Result<Import, ImportError> {
        self.out.header = vec![
            format!(
                "LXD project {:?}, imported by `lxd-mutater import lxd`.",
                self.opts.project
            ),
            "Keep these resources in a directory of their own: importing again replaces them."
                .into(),
        ];
        let candidates = self.candidates();
        let candidates = self.decide_container_model(candidates)?;
        let (workloads, used) = self.workloads(candidates);
        let apps = self.applications(&used);
        self.unused_profiles(&used);
        self.check(&workloads, &apps);
        for app in apps.into_values() {
            self.out.push(Resource::Application(app), Vec::new(), "");
        }
        for (kind, w, comments) in workloads {
            let r = match kind {
                Kind::Machine => Resource::Machine(w),
                _ => Resource::Container(w),
            };
            self.out.push(r, comments, "");
        }
        self.out.sort();
        Ok(self.out)
    }

    /// The model whose model profile `name` is, if it is one.
    fn model_of_model_profile(&self, name: &str) -> Option<String> {
        let rendered = self.names().model_profile(MODEL_MARK);
        let (prefix, suffix) = rendered.split_once(MODEL_MARK)?;
        let model = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if model.is_empty() || check_resource_name("model", model).is_err() {
            return None;
        }
        if let Some(wanted) = &self.opts.model {
            return (model == wanted).then(|| model.to_string());
        }
        // `juju-a-b-1` may be model `a-b-1`'s profile or a charm profile of model `a`: a
        // model profile it is when some profile is a charm profile of that model.
        if self.names().is_charm_profile(name)
            && !self
                .profiles
                .keys()
                .any(|p| self.names().parse_charm_profile(p, model).is_some())
        {
            return None;
        }
        Some(model.to_string())
    }

    /// The models `name` may be a charm profile of.
    fn models_of_charm_profile(&self, name: &str) -> BTreeSet<String> {
        if let Some(m) = &self.opts.model {
            return self
                .names()
                .parse_charm_profile(name, m)
                .map(|_| m.clone())
                .into_iter()
                .collect();
        }
        let rendered = self.names().charm_profile(MODEL_MARK, APP_MARK, 0);
        let Some((prefix, _)) = rendered.split_once(MODEL_MARK) else {
            return BTreeSet::new();
        };
        let Some(rest) = name.strip_prefix(prefix) else {
            return BTreeSet::new();
        };
        rest.char_indices()
            .skip(1)
            .map(|(i, _)| &rest[..i])
            .filter(|m| self.names().parse_charm_profile(name, m).is_some())
            .map(str::to_string)
            .collect()
    }

    /// The instances that look like Juju's, as Machines or (with --machine) Containers;
    /// every other one is said and skipped.
    fn candidates(&mut self) -> Vec<Candidate<'a>> {
        let mut out = Vec::new();
        let instances = self.instances.clone();
        for i in instances {
            let name = &i.name;
            let list = i.profiles.join(", ");
            if i.profiles.first().map(String::as_str) != Some("default") {
                self.note(
                    Level::Note,
                    format!(
                        "instance {name:?}: its profiles [{list}] do not start with default, as \
                         Juju's do: skipped"
                    ),
                );
                continue;
            }
            let model = i
                .profiles
                .get(1)
                .and_then(|p| self.model_of_model_profile(p));
            let juju_like = || {
                i.profiles.iter().any(|p| self.names().is_charm_profile(p))
                    || juju_instance(name).is_some()
            };
            match (&self.opts.machine, model) {
                (None, Some(model)) => out.push(Candidate {
                    instance: i,
                    kind: Kind::Machine,
                    model: Some(model),
                    rest: &i.profiles[2..],
                }),
                (None, None) if juju_like() => self.note(
                    Level::Note,
                    format!(
                        "instance {name:?}: its profiles [{list}] have no model profile: a \
                         container? Import those with --machine HOST: skipped"
                    ),
                ),
                (Some(_), Some(model)) => self.note(
                    Level::Note,
                    format!(
                        "instance {name:?} has the model profile of {model:?}: a Machine, which \
                         import without --machine takes: skipped"
                    ),
                ),
                (Some(host), None) if juju_like() => {
                    if let Some((h, _)) = juju_instance(name).and_then(container_host)
                        && h != host
                    {
                        self.note(
                            Level::Note,
                            format!(
                                "instance {name:?} is a container of machine {:?}, not {host:?}: \
                                 skipped",
                                h.replace('-', "/")
                            ),
                        );
                        continue;
                    }
                    out.push(Candidate {
                        instance: i,
                        kind: Kind::Container,
                        model: None,
                        rest: &i.profiles[1..],
                    });
                }
                _ => self.note(
                    Level::Note,
                    format!("instance {name:?}: no Juju profile among [{list}]: skipped"),
                ),
            }
        }
        out
    }

    /// Gives the Containers their model: `--model`, or the one model every charm profile
    /// on them can be of.
    fn decide_container_model(
        &mut self,
        mut candidates: Vec<Candidate<'a>>,
    ) -> Result<Vec<Candidate<'a>>, ImportError> {
        if !candidates.iter().any(|c| c.kind == Kind::Container) {
            return Ok(candidates);
        }
        let model = match &self.opts.model {
            Some(m) => Some(m.clone()),
            None => {
                let mut fits: Option<BTreeSet<String>> = None;
                for c in candidates.iter().filter(|c| c.kind == Kind::Container) {
                    for p in c.rest {
                        let models = self.models_of_charm_profile(p);
                        if models.is_empty() {
                            continue; // an operator's profile
                        }
                        fits = Some(match fits {
                            None => models,
                            Some(f) => f.intersection(&models).cloned().collect(),
                        });
                    }
                }
                let mut fits = fits.unwrap_or_default();
                if fits.len() > 1 {
                    // Prefer models whose model profile exists in the project.
                    let with_profile: BTreeSet<String> = fits
                        .iter()
                        .filter(|m| {
                            self.profiles
                                .contains_key(self.names().model_profile(m).as_str())
                        })
                        .cloned()
                        .collect();
                    if !with_profile.is_empty() {
                        fits = with_profile;
                    }
                }
                match fits.len() {
                    0 => None,
                    1 => fits.into_iter().next(),
                    _ => {
                        return Err(ImportError::Listing(format!(
                            "the containers' charm profiles fit more than one model ({}): give \
                             --model",
                            fits.into_iter().collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            }
        };
        let Some(model) = model else {
            let names: Vec<&str> = candidates
                .iter()
                .filter(|c| c.kind == Kind::Container)
                .map(|c| c.instance.name.as_str())
                .collect();
            return Err(ImportError::Listing(format!(
                "cannot tell the model of the containers {} from their profiles: give --model",
                names.join(", ")
            )));
        };
        if let Err(why) = check_resource_name("--model", &model) {
            return Err(ImportError::Listing(why));
        }
        for c in candidates.iter_mut().filter(|c| c.kind == Kind::Container) {
            c.model = Some(model.clone());
        }
        Ok(candidates)
    }

    /// The Machines and Containers, and the charm profiles they use: per (model,
    /// application), the revisions and the instances at each.
    #[allow(clippy::type_complexity)]
    fn workloads(
        &mut self,
        candidates: Vec<Candidate<'a>>,
    ) -> (
        Vec<(Kind, crate::resource::Workload, Vec<String>)>,
        BTreeMap<(String, String), BTreeMap<u64, Vec<String>>>,
    ) {
        let mut out = Vec::new();
        let mut used: BTreeMap<(String, String), BTreeMap<u64, Vec<String>>> = BTreeMap::new();
        let mut taken: HashSet<(Kind, String, String)> = HashSet::new();
        for c in candidates {
            let Some(model) = c.model.clone() else {
                continue;
            };
            let name = &c.instance.name;
            let mut spec = InstanceSpec {
                instance: Some(name.clone()),
                machine: self.opts.machine.clone(),
                ..InstanceSpec::default()
            };
            let mut late_extra = Vec::new();
            for p in c.rest {
                match self.names().parse_charm_profile(p, &model) {
                    Some((app, rev)) => {
                        spec.applications.push(app.clone());
                        used.entry((model.clone(), app))
                            .or_default()
                            .entry(rev)
                            .or_default()
                            .push(name.clone());
                    }
                    None => {
                        if !spec.applications.is_empty() {
                            late_extra.push(p.clone());
                        }
                        spec.extra_profiles.push(p.clone());
                    }
                }
            }
            if !late_extra.is_empty() {
                self.note(
                    Level::Warning,
                    format!(
                        "instance {name:?}: profiles [{}] come after its charm profiles, where \
                         the controller cannot keep them (extra profiles go before): the first \
                         `run` reorders them (see `diff`)",
                        late_extra.join(", ")
                    ),
                );
            }
            // `juju-<ns6>-<id>` is Juju's name for machine (or container) `<id>`.
            let mut resource = juju_instance(name).unwrap_or(name).to_string();
            if taken.contains(&(c.kind, model.clone(), resource.clone())) {
                self.note(
                    Level::Warning,
                    format!(
                        "instance {name:?}: another instance is {:?} of model {model:?} too: \
                         named after the instance instead",
                        resource
                    ),
                );
                resource = name.clone();
            }
            taken.insert((c.kind, model.clone(), resource.clone()));
            let w = super::workload(c.kind, &model, &resource, spec);
            out.push((c.kind, w, Vec::new()));
        }
        (out, used)
    }

    /// An Application per charm profile in use, with its content from LXD.
    fn applications(
        &mut self,
        used: &BTreeMap<(String, String), BTreeMap<u64, Vec<String>>>,
    ) -> BTreeMap<(String, String), Application> {
        let mut out = BTreeMap::new();
        for ((model, app), revisions) in used {
            let Some((&rev, _)) = revisions.iter().next_back() else {
                continue;
            };
            if revisions.len() > 1 {
                let older: Vec<String> = revisions
                    .iter()
                    .filter(|(r, _)| **r != rev)
                    .map(|(r, on)| format!("{r} on {}", on.join(", ")))
                    .collect();
                self.note(
                    Level::Warning,
                    format!(
                        "application {app:?} of model {model:?} is at revision {rev} and also {} \
                         (an upgrade under way?): imported at {rev}, so the first `run` moves \
                         those instances to it",
                        older.join("; ")
                    ),
                );
            }
            let name = self.names().charm_profile(model, app, rev);
            let Some(profile) = self.profiles.get(name.as_str()) else {
                self.note(
                    Level::Error,
                    format!(
                        "profile {name:?} is on instances but not in the listing: not imported"
                    ),
                );
                continue;
            };
            let content = LxdProfile {
                description: profile.content.description.clone(),
                config: profile
                    .content
                    .config
                    .iter()
                    .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                devices: profile.content.devices.clone(),
                ignored_keys: Vec::new(),
            };
            if content.is_empty() {
                self.note(
                    Level::Warning,
                    format!(
                        "profile {name:?} is empty (no config, no devices): Juju never writes \
                         one, and the controller takes an empty profile off its instances"
                    ),
                );
            }
            let mut spec = ApplicationSpec {
                revision: rev,
                lxd_profile: Some(content),
                ..ApplicationSpec::default()
            };
            let broken =
                super::needs_force(spec.lxd_profile.as_ref().unwrap_or(&LxdProfile::default()));
            if !broken.is_empty() {
                spec.force = true;
                self.note(
                    Level::Warning,
                    format!(
                        "profile {name:?} breaks Juju's rules ({}): imported with force: true",
                        broken.join("; ")
                    ),
                );
            }
            out.insert(
                (model.clone(), app.clone()),
                super::application(model, app, spec),
            );
        }
        out
    }

    /// Charm profiles of the imported models that no imported instance uses.
    fn unused_profiles(&mut self, used: &BTreeMap<(String, String), BTreeMap<u64, Vec<String>>>) {
        let models: BTreeSet<&String> = used.keys().map(|(m, _)| m).collect();
        let mut unused: Vec<&str> = self
            .profiles
            .keys()
            .copied()
            .filter(|p| {
                models.iter().any(|m| {
                    self.names()
                        .parse_charm_profile(p, m)
                        .is_some_and(|(app, rev)| {
                            !used
                                .get(&((*m).clone(), app))
                                .is_some_and(|r| r.contains_key(&rev))
                        })
                })
            })
            .collect();
        unused.sort_by(|a, b| natural_cmp(a, b));
        for p in unused {
            self.note(
                Level::Note,
                format!("profile {p:?} is on no imported instance: not imported"),
            );
        }
    }

    /// Says which instances the first `run` would change.
    fn check(
        &mut self,
        workloads: &[(Kind, crate::resource::Workload, Vec<String>)],
        apps: &BTreeMap<(String, String), Application>,
    ) {
        let by_key: HashMap<(String, String), PreparedApp> = apps
            .iter()
            .map(|(k, a)| (k.clone(), PreparedApp::from(a.clone())))
            .collect();
        let current: HashMap<&str, &Vec<String>> = self
            .instances
            .iter()
            .map(|i| (i.name.as_str(), &i.profiles))
            .collect();
        let mut notes = Vec::new();
        for (kind, w, _) in workloads {
            let Some(instance) = w.spec.instance.as_deref() else {
                continue;
            };
            let Some(now) = current.get(instance) else {
                continue;
            };
            match expected_list(*kind, w, &by_key, self.names()) {
                Ok(expected) if expected == **now => {}
                Ok(expected) => notes.push(format!(
                    "instance {instance:?}: the first `run` sets its profiles [{}] to [{}] (see \
                     `diff`)",
                    now.join(", "),
                    expected.join(", ")
                )),
                Err(why) => notes.push(format!(
                    "instance {instance:?}: the controller will report an error: {why}"
                )),
            }
        }
        for n in notes {
            self.note(Level::Warning, n);
        }
    }
}

/// `juju-<6 hex>-<id>` -> `<id>`: Juju's LXD instance names (the last six hex digits of
/// the model's UUID, then the machine id with `/` as `-`).
fn juju_instance(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("juju-")?;
    let (ns, id) = rest.split_at_checked(6)?;
    let id = id.strip_prefix('-')?;
    (ns.bytes().all(|b| b.is_ascii_hexdigit()) && !id.is_empty()).then_some(id)
}

/// `<host>-lxd-<n>` -> (`<host>`, `<n>`): a container's id, `/` written `-`.
fn container_host(id: &str) -> Option<(&str, &str)> {
    let (host, n) = id.rsplit_once("-lxd-")?;
    (!host.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then_some((host, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lxd::ProfileContent;
    use crate::resource::{Workload, parse_str};

    fn instance(name: &str, profiles: &[&str]) -> Instance {
        Instance {
            name: name.into(),
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            status: "Stopped".into(),
            config: Default::default(),
        }
    }

    fn profile(name: &str, config: &[(&str, &str)]) -> Profile {
        Profile {
            name: name.into(),
            content: ProfileContent {
                description: String::new(),
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                devices: Default::default(),
            },
            used_by: vec![],
        }
    }

    /// The example's project as Juju leaves it: machine 0 and container 1/lxd/0.
    fn demo() -> (Vec<Instance>, Vec<Profile>) {
        let mut kw = profile(
            "juju-demo-kubernetes-worker-198",
            &[
                (
                    "linux.kernel_modules",
                    "ip_tables,ip6_tables,netlink_diag,nf_nat,overlay",
                ),
                ("security.nesting", "true"),
                ("security.privileged", "true"),
            ],
        );
        kw.content.description = "kubernetes-worker on LXD".into();
        kw.content.devices.insert(
            "kmsg".into(),
            [
                ("path", "/dev/kmsg"),
                ("source", "/dev/kmsg"),
                ("type", "unix-char"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let profiles = vec![
            profile("default", &[]),
            profile(
                "juju-demo",
                &[("boot.autostart", "true"), ("security.nesting", "true")],
            ),
            kw,
            profile(
                "juju-demo-containerd-73",
                &[("linux.kernel_modules", "overlay,br_netfilter")],
            ),
        ];
        let instances = vec![
            instance(
                "juju-4d5e6f-0",
                &[
                    "default",
                    "juju-demo",
                    "juju-demo-kubernetes-worker-198",
                    "juju-demo-containerd-73",
                ],
            ),
            instance(
                "juju-4d5e6f-1-lxd-0",
                &[
                    "default",
                    "juju-demo-kubernetes-worker-198",
                    "juju-demo-containerd-73",
                ],
            ),
            instance("web", &["default"]),
        ];
        (instances, profiles)
    }

    fn opts(machine: Option<&str>, model: Option<&str>) -> Options {
        Options {
            names: ProfileNames::default(),
            machine: machine.map(str::to_string),
            model: model.map(str::to_string),
            project: "p".into(),
        }
    }

    fn workload<'a>(i: &'a Import, name: &str) -> &'a Workload {
        i.resources()
            .find_map(|r| match r {
                Resource::Machine(w) | Resource::Container(w) if w.metadata.name == name => Some(w),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} in {:?}", i.keys()))
    }

    fn messages(i: &Import) -> Vec<String> {
        i.notes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn machines_with_jujus_profiles_become_machines_and_their_charm_profiles_applications() {
        let (instances, profiles) = demo();
        let i = convert(&instances, &profiles, &opts(None, None)).unwrap();
        assert_eq!(
            i.keys(),
            [
                "Application demo/containerd",
                "Application demo/kubernetes-worker",
                "Machine demo/0"
            ]
        );
        let m = workload(&i, "0");
        assert_eq!(m.spec.instance.as_deref(), Some("juju-4d5e6f-0"));
        assert_eq!(m.spec.applications, ["kubernetes-worker", "containerd"]);
        let kw = i
            .resources()
            .find_map(|r| match r {
                Resource::Application(a) if a.metadata.name == "kubernetes-worker" => Some(a),
                _ => None,
            })
            .unwrap();
        assert_eq!(kw.spec.revision, 198);
        let p = kw.spec.lxd_profile.as_ref().unwrap();
        assert_eq!(p.description, "kubernetes-worker on LXD");
        assert_eq!(p.devices["kmsg"]["source"], "/dev/kmsg");
        assert_eq!(
            messages(&i),
            [
                "note: instance \"juju-4d5e6f-1-lxd-0\": its profiles [default, juju-demo-kubernetes-worker-198, juju-demo-containerd-73] have no model profile: a container? Import those with --machine HOST: skipped",
                "note: instance \"web\": no Juju profile among [default]: skipped",
            ]
        );
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert!(parsed.rule_violations.is_empty());
        let back: Vec<Resource> = parsed.resources.into_iter().map(|l| l.resource).collect();
        assert_eq!(back, i.resources().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn with_machine_the_hosts_containers_come_out_and_their_model_is_told_by_their_profiles() {
        let (instances, profiles) = demo();
        let i = convert(&instances, &profiles, &opts(Some("1"), None)).unwrap();
        assert_eq!(
            i.keys(),
            [
                "Application demo/containerd",
                "Application demo/kubernetes-worker",
                "Container demo/1-lxd-0"
            ]
        );
        let c = workload(&i, "1-lxd-0");
        assert_eq!(c.spec.machine.as_deref(), Some("1"));
        assert_eq!(c.spec.instance.as_deref(), Some("juju-4d5e6f-1-lxd-0"));
        assert_eq!(c.spec.applications, ["kubernetes-worker", "containerd"]);
        assert!(
            messages(&i)[0].contains("\"juju-4d5e6f-0\" has the model profile of \"demo\""),
            "{:?}",
            i.notes
        );
        // Another host's containers are not this one's.
        let i = convert(&instances, &profiles, &opts(Some("2"), None)).unwrap();
        assert!(i.keys().iter().all(|k| !k.starts_with("Container")));
        assert!(
            messages(&i)
                .iter()
                .any(|n| n.contains("is a container of machine \"1\", not \"2\"")),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn a_containers_model_that_cannot_be_told_needs_model() {
        let instances = vec![instance("c", &["default", "juju-a-b-c-1"])];
        let profiles = vec![profile("juju-a-b-c-1", &[("security.nesting", "true")])];
        let e = convert(&instances, &profiles, &opts(Some("0"), None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the containers' charm profiles fit more than one model (a, a-b): give --model"
        );
        let i = convert(&instances, &profiles, &opts(Some("0"), Some("a-b"))).unwrap();
        assert_eq!(
            i.keys(),
            ["Application a-b/c", "Container a-b/c"],
            "a name that is not Juju's names the resource"
        );
    }

    #[test]
    fn operator_profiles_are_kept_and_a_second_revision_is_said() {
        let (mut instances, mut profiles) = demo();
        instances[0].profiles.insert(2, "ops".into());
        instances.push(instance(
            "juju-4d5e6f-2",
            &["default", "juju-demo", "juju-demo-containerd-72", "late"],
        ));
        profiles.push(profile(
            "juju-demo-containerd-72",
            &[("security.nesting", "true")],
        ));
        profiles.push(profile("juju-demo-old-1", &[("security.nesting", "true")]));
        let i = convert(&instances, &profiles, &opts(None, None)).unwrap();
        assert_eq!(workload(&i, "0").spec.extra_profiles, ["ops"]);
        let notes = messages(&i);
        let said = |what: &str| {
            assert!(
                notes.iter().any(|n| n.contains(what)),
                "{what:?} in {notes:#?}"
            )
        };
        said(
            "application \"containerd\" of model \"demo\" is at revision 73 and also 72 on juju-4d5e6f-2",
        );
        said("instance \"juju-4d5e6f-2\": profiles [late] come after its charm profiles");
        said(
            "instance \"juju-4d5e6f-2\": the first `run` sets its profiles [default, juju-demo, juju-demo-containerd-72, late] to [default, juju-demo, late, juju-demo-containerd-73]",
        );
        said("note: profile \"juju-demo-old-1\" is on no imported instance: not imported");
        assert!(
            !notes
                .iter()
                .any(|n| n.contains("\"juju-4d5e6f-0\": the first")),
            "{notes:#?}"
        );
    }

    #[test]
    fn a_profile_with_the_owner_record_is_imported_without_it() {
        let (instances, mut profiles) = demo();
        profiles[3]
            .content
            .config
            .insert("user.lxd-mutater.owner".into(), "lxd-mutater".into());
        let i = convert(&instances, &profiles, &opts(None, None)).unwrap();
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    }

    #[test]
    fn model_picks_one_models_machines() {
        let (mut instances, mut profiles) = demo();
        instances.push(instance(
            "juju-000000-0",
            &["default", "juju-other", "juju-other-x-1"],
        ));
        profiles.push(profile("juju-other", &[]));
        profiles.push(profile("juju-other-x-1", &[("security.nesting", "true")]));
        let all = convert(&instances, &profiles, &opts(None, None)).unwrap();
        assert!(all.keys().contains(&"Machine other/0".to_string()));
        let demo_only = convert(&instances, &profiles, &opts(None, Some("demo"))).unwrap();
        assert_eq!(
            demo_only.keys(),
            [
                "Application demo/containerd",
                "Application demo/kubernetes-worker",
                "Machine demo/0"
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_listing_never_panics_and_what_comes_out_loads(
            lists in proptest::collection::vec(
                proptest::collection::vec("(default|juju-m|juju-m-a-1|juju-m-b-c-2|juju-é-1|juju-|ops|-)", 0..5),
                0..4,
            ),
            machine in proptest::option::of("(0|1|é)"),
        ) {
            let instances: Vec<Instance> = lists
                .iter()
                .enumerate()
                .map(|(n, l)| Instance {
                    name: format!("juju-abcdef-{n}"),
                    profiles: l.clone(),
                    status: String::new(),
                    config: Default::default(),
                })
                .collect();
            let names: BTreeSet<&String> = lists.iter().flatten().collect();
            let profiles: Vec<Profile> = names
                .into_iter()
                .map(|n| profile(n, &[("security.nesting", "true")]))
                .collect();
            let o = opts(machine.as_deref(), None);
            if let Ok(i) = convert(&instances, &profiles, &o) {
                let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
                proptest::prop_assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
            }
        }
    }

    #[test]
    fn juju_instance_names_give_the_machine_id() {
        assert_eq!(juju_instance("juju-4d5e6f-0"), Some("0"));
        assert_eq!(juju_instance("juju-4d5e6f-1-lxd-0"), Some("1-lxd-0"));
        assert_eq!(juju_instance("juju-demo-0"), None);
        assert_eq!(juju_instance("juju-4d5e6f"), None);
        assert_eq!(container_host("1-lxd-0"), Some(("1", "0")));
        assert_eq!(container_host("1-lxd-0-lxd-3"), Some(("1-lxd-0", "3")));
        assert_eq!(container_host("0"), None);
    }
}
