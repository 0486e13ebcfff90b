//! The status, as read (`read`), to resources: one namespace, the model; an Application
//! per application with a profile Juju applied; a Machine per top-level machine, a
//! Container per LXD container; and a note, with its line, for everything left out or
//! changed on the way.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::super::{Import, ImportError, Level, expected_list, natural_cmp};
use super::read::{AgentStatus, Entries, MachineStatus, Status};
use crate::resource::names::{check_instance_name, check_resource_name};
use crate::resource::{
    Application, ApplicationSpec, InstanceSpec, Kind, Life, LxdProfile, ProfileNames, Resource,
};
use crate::store::PreparedApp;

/// The instance-id of a manual machine: `manual:<host>` (not an LXD instance).
const MANUAL_PREFIX: &str = "manual:";

/// A machine or container of the status, flattened out of its nesting.
struct Host<'a> {
    /// Juju's id: `0`, `1/lxd/0`.
    id: String,
    line: u64,
    status: &'a MachineStatus,
    /// The id of the machine or container it is nested in.
    parent: Option<String>,
}

fn flatten<'a>(entries: &'a Entries<MachineStatus>, parent: Option<&str>, out: &mut Vec<Host<'a>>) {
    for e in entries.sorted() {
        out.push(Host {
            id: e.key.clone(),
            line: e.line,
            status: &e.value,
            parent: parent.map(str::to_string),
        });
        flatten(&e.value.containers, Some(&e.key), out);
    }
}

/// What the importer keeps of an application.
struct AppInfo {
    /// Its `charm-profile`, as Juju named it.
    charm_profile: Option<String>,
    /// Emitted as an Application (with a profile that is not empty, or none).
    emitted: Option<Application>,
}

/// A unit counted on a host: its application, and whether it is a subordinate's.
struct Counted {
    app: String,
    subordinate: bool,
}

pub(super) struct Converter {
    file: String,
    ns: String,
    out: Import,
}

/// Juju's word for a host of `kind` in its messages.
fn host_word(kind: Kind) -> &'static str {
    if kind == Kind::Machine {
        "machine"
    } else {
        "container"
    }
}

fn life_of(agent: &Option<AgentStatus>) -> Option<&str> {
    agent
        .as_ref()
        .and_then(|a| a.life.as_ref())
        .map(|t| t.0.as_str())
        .filter(|l| !l.is_empty())
}

impl Converter {
    pub(super) fn new(file: &str, ns: String) -> Converter {
        Converter {
            file: file.to_string(),
            ns,
            out: Import::default(),
        }
    }

    fn at(&self, line: u64) -> String {
        format!("{}:{line}", self.file)
    }

    fn note(&mut self, level: Level, line: u64, message: impl Into<String>) {
        let at = self.at(line);
        self.out.note(level, at, message);
    }

    pub(super) fn run(mut self, status: &Status) -> Result<Import, ImportError> {
        self.out.header = vec![
            format!(
                "Juju model {:?}, imported by `lxd-mutater import juju-status`.",
                self.ns
            ),
            "Keep these resources in a directory of their own: importing again replaces them."
                .into(),
        ];
        let mut hosts = Vec::new();
        flatten(&status.machines, None, &mut hosts);
        let (apps, names) = self.applications(status, &hosts);
        let counted = self.units(status);
        self.hosts(&hosts, &apps, &counted, &names);
        self.out.sort();
        // Notes in the order of the input, those about the whole status last.
        self.out.notes.sort_by_key(|n| {
            n.at.rsplit_once(':')
                .and_then(|(_, l)| l.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        Ok(self.out)
    }

    /// The Applications, and the profile name templates the status's names follow.
    fn applications(
        &mut self,
        status: &Status,
        hosts: &[Host<'_>],
    ) -> (HashMap<String, AppInfo>, ProfileNames) {
        let default_names = ProfileNames::default();
        let mut apps = HashMap::new();
        let mut short_ids = BTreeSet::new();
        for e in status.applications.sorted() {
            let (name, a, line) = (&e.key, &e.value, e.line);
            if let Some(err) = &a.status_error {
                self.note(
                    Level::Warning,
                    line,
                    format!(
                        "application {name:?}: Juju could not read it ({}): skipped",
                        err.0
                    ),
                );
                continue;
            }
            if let Err(why) = check_resource_name("application name", name) {
                self.note(Level::Warning, line, format!("{why}: skipped"));
                continue;
            }
            match a.life.as_ref().map(|l| l.0.as_str()) {
                None | Some("") | Some("alive") => {}
                Some("dying") => self.note(
                    Level::Note,
                    line,
                    format!(
                        "application {name:?} is dying: imported (its units count until they are dead)"
                    ),
                ),
                Some("dead") => {
                    self.note(
                        Level::Note,
                        line,
                        format!("application {name:?} is dead: skipped"),
                    );
                    continue;
                }
                Some(other) => self.note(
                    Level::Warning,
                    line,
                    format!("application {name:?} has life {other:?}, read as alive"),
                ),
            }
            let charm_profile = a
                .charm_profile
                .as_ref()
                .map(|t| t.0.clone())
                .filter(|p| !p.is_empty());
            let mut info = AppInfo {
                charm_profile: charm_profile.clone(),
                emitted: None,
            };
            let revision = match a.charm_rev.as_ref().map(|r| r.0.parse::<u64>()) {
                Some(Ok(r)) => r,
                other => {
                    let why = match (other, &a.charm_rev) {
                        (Some(Err(_)), Some(r)) => {
                            format!("charm-rev {:?} is not an integer >= 0", r.0)
                        }
                        _ => "no charm-rev".to_string(),
                    };
                    self.note(
                        Level::Error,
                        line,
                        format!("application {name:?}: {why}: not imported"),
                    );
                    apps.insert(name.clone(), info);
                    continue;
                }
            };
            let mut spec = ApplicationSpec {
                charm: a.charm_name.as_ref().map(|t| t.0.clone()),
                revision,
                ..ApplicationSpec::default()
            };
            for p in &a.subordinate_to {
                match check_resource_name("application name", &p.0) {
                    Ok(()) => spec.subordinate_to.push(p.0.clone()),
                    Err(why) => self.note(
                        Level::Warning,
                        line,
                        format!("application {name:?}: subordinate-to: {why}: left out"),
                    ),
                }
            }
            spec.subordinate = !spec.subordinate_to.is_empty();
            let mut comments = Vec::new();
            if let Some(profile) = &charm_profile {
                let expected = default_names.charm_profile(&self.ns, name, revision);
                if *profile != expected {
                    match short_id(profile, &self.ns, name, revision) {
                        Some(id) => {
                            short_ids.insert(id);
                        }
                        None => self.note(
                            Level::Warning,
                            line,
                            format!(
                                "application {name:?}: charm-profile {profile:?} is not {expected:?} \
                                 (juju-<model>-<app>-<charm-rev>): the controller will use {expected:?}"
                            ),
                        ),
                    }
                }
                match self.content(name, profile, hosts, line) {
                    Some(content) => {
                        let broken = super::super::needs_force(&content);
                        if !broken.is_empty() {
                            spec.force = true;
                            comments.push(format!(
                                "force: the profile breaks Juju's rules ({}): deployed with --force",
                                broken.join("; ")
                            ));
                            self.note(
                                Level::Warning,
                                line,
                                format!(
                                    "application {name:?}: its profile breaks Juju's rules ({}): \
                                     imported with force: true, as it was deployed with --force",
                                    broken.join("; ")
                                ),
                            );
                        }
                        spec.lxd_profile = Some(content);
                    }
                    None => {
                        apps.insert(name.clone(), info);
                        continue;
                    }
                }
            }
            if spec.subordinate {
                comments.push(format!(
                    "subordinate to {}: its profile follows theirs on every machine running one",
                    spec.subordinate_to.join(", ")
                ));
            }
            let app = super::super::application(&self.ns, name, spec);
            let at = self.at(line);
            let before = self.out.documents.len();
            self.out
                .push(Resource::Application(app.clone()), comments, &at);
            if self.out.documents.len() > before {
                info.emitted = Some(app);
            }
            apps.insert(name.clone(), info);
        }
        let names = match short_ids.len() {
            0 => default_names,
            1 => {
                let id = short_ids.iter().next().cloned().unwrap_or_default();
                let charm = format!("juju-{{model}}-{id}-{{app}}-{{rev}}");
                let model = format!("juju-{{model}}-{id}");
                self.out.note(
                    Level::Warning,
                    String::new(),
                    format!(
                        "the charm profiles carry the model's short id {id:?} (Juju 3.6's names): \
                         run the controller with --charm-profile-template '{charm}' \
                         --model-profile-template '{model}'"
                    ),
                );
                ProfileNames::new(&charm, &model).unwrap_or_default()
            }
            _ => {
                self.out.note(
                    Level::Warning,
                    String::new(),
                    format!(
                        "the charm profiles carry several model ids ({}): one controller's \
                         name templates cannot follow them all",
                        short_ids.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                );
                default_names
            }
        };
        (apps, names)
    }

    /// The content of charm profile `profile`, from the machines Juju applied it to. None
    /// (with an error) when no machine shows it or the copies differ: an Application
    /// without its profile would make the controller take the profile off.
    fn content(
        &mut self,
        app: &str,
        profile: &str,
        hosts: &[Host<'_>],
        line: u64,
    ) -> Option<LxdProfile> {
        let mut copies = hosts
            .iter()
            .filter_map(|h| h.status.lxd_profiles.get(profile).map(|p| (h, p)));
        let Some((first_host, first)) = copies.next() else {
            self.note(
                Level::Error,
                line,
                format!(
                    "application {app:?}: no machine shows the content of its profile {profile:?} \
                     (a refresh not applied yet?): not imported, and the machines running it \
                     will report it missing until you add it, for example from \
                     `lxc profile show {profile}` or the charm's lxd-profile.yaml"
                ),
            );
            return None;
        };
        for (h, p) in copies {
            if !same_content(p, first) {
                self.note(
                    Level::Error,
                    line,
                    format!(
                        "application {app:?}: machines {:?} and {:?} show different content for \
                         its profile {profile:?}: not imported",
                        first_host.id, h.id
                    ),
                );
                return None;
            }
        }
        let mut content = first.clone();
        content.ignored_keys.clear();
        Some(content)
    }

    /// The units on each host, in Juju's order as status shows it (application, then unit
    /// number; each principal followed by its subordinates). Dead units do not count.
    fn units(&mut self, status: &Status) -> HashMap<String, Vec<Counted>> {
        let mut on: HashMap<String, Vec<Counted>> = HashMap::new();
        for e in status.applications.sorted() {
            let (app, a) = (&e.key, &e.value);
            if a.status_error.is_some() || check_resource_name("application name", app).is_err() {
                continue;
            }
            if a.life.as_ref().is_some_and(|l| l.0 == "dead") {
                continue;
            }
            for u in a.units.sorted() {
                let (unit, line) = (&u.key, u.line);
                if let Some(err) = &u.value.status_error {
                    self.note(
                        Level::Warning,
                        line,
                        format!("unit {unit:?}: Juju could not read it ({}): skipped", err.0),
                    );
                    continue;
                }
                let Some(machine) = u.value.machine.as_ref().map(|m| m.0.clone()) else {
                    self.note(
                        Level::Note,
                        line,
                        format!("unit {unit:?} has no machine yet: nothing to import for it"),
                    );
                    continue;
                };
                if self.counts(unit, &u.value.juju_status, line) {
                    on.entry(machine.clone()).or_default().push(Counted {
                        app: app.clone(),
                        subordinate: false,
                    });
                }
                for s in u.value.subordinates.sorted() {
                    let (sub_unit, line) = (&s.key, s.line);
                    if let Some(err) = &s.value.status_error {
                        self.note(
                            Level::Warning,
                            line,
                            format!(
                                "unit {sub_unit:?}: Juju could not read it ({}): skipped",
                                err.0
                            ),
                        );
                        continue;
                    }
                    let sub_app = sub_unit.split('/').next().unwrap_or(sub_unit);
                    if let Err(why) = check_resource_name("application name", sub_app) {
                        self.note(Level::Warning, line, format!("{why}: skipped"));
                        continue;
                    }
                    if self.counts(sub_unit, &s.value.juju_status, line) {
                        on.entry(machine.clone()).or_default().push(Counted {
                            app: sub_app.to_string(),
                            subordinate: true,
                        });
                    }
                }
            }
        }
        on
    }

    /// Whether a unit counts for the profiles of its machine: dying ones do, dead ones do
    /// not (Juju's worker).
    fn counts(&mut self, unit: &str, agent: &Option<AgentStatus>, line: u64) -> bool {
        match life_of(agent) {
            None | Some("alive") => true,
            Some("dying") => {
                self.note(
                    Level::Note,
                    line,
                    format!("unit {unit:?} is dying: still counted, as Juju does"),
                );
                true
            }
            Some("dead") => {
                self.note(
                    Level::Note,
                    line,
                    format!("unit {unit:?} is dead: not counted, as Juju does"),
                );
                false
            }
            Some(other) => {
                self.note(
                    Level::Warning,
                    line,
                    format!("unit {unit:?} has life {other:?}: counted as alive"),
                );
                true
            }
        }
    }

    fn hosts(
        &mut self,
        hosts: &[Host<'_>],
        apps: &HashMap<String, AppInfo>,
        counted: &HashMap<String, Vec<Counted>>,
        names: &ProfileNames,
    ) {
        let known: HashSet<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
        let mut missing: Vec<&String> = counted
            .keys()
            .filter(|m| !known.contains(m.as_str()))
            .collect();
        missing.sort_by(|a, b| natural_cmp(a, b));
        for m in missing {
            self.out.note(
                Level::Warning,
                String::new(),
                format!(
                    "units are on machine {m:?}, which the status does not list (a filtered \
                     `juju status`?): not imported"
                ),
            );
        }
        let emitted: HashMap<(String, String), PreparedApp> = apps
            .iter()
            .filter_map(|(n, a)| {
                let app = PreparedApp::from(a.emitted.clone()?);
                Some(((self.ns.clone(), n.clone()), app))
            })
            .collect();
        let no_units = Vec::new();
        for h in hosts {
            let units = counted.get(&h.id).unwrap_or(&no_units);
            let Some((kind, name)) = self.host_identity(h, units) else {
                continue;
            };
            let what = host_word(kind);
            let id = &h.id;
            let mut comments = Vec::new();
            let mut spec = InstanceSpec {
                machine: h.parent.clone(),
                ..InstanceSpec::default()
            };
            match h.status.instance_id.as_ref().map(|t| t.0.as_str()) {
                None | Some("") | Some("pending") => {
                    self.note(
                        Level::Note,
                        h.line,
                        format!(
                            "{what} {id:?} is not provisioned yet (instance-id pending): imported \
                             without an instance (phase Pending)"
                        ),
                    );
                    comments.push("not provisioned yet: no instance".into());
                }
                Some(i) if i.starts_with(MANUAL_PREFIX) => {
                    spec.manual = true;
                    self.note(
                        Level::Note,
                        h.line,
                        format!(
                            "{what} {id:?} is a manual machine ({i}): imported with manual: true, \
                             which the controller skips, as Juju does"
                        ),
                    );
                    comments.push(format!("manual machine ({i}): the controller skips it"));
                }
                Some(i) => match check_instance_name(i) {
                    Ok(()) => spec.instance = Some(i.to_string()),
                    Err(why) => {
                        self.note(
                            Level::Warning,
                            h.line,
                            format!(
                                "{what} {id:?}: instance-id {i:?} is not an LXD instance name \
                                 ({why}; a machine on another cloud?): skipped"
                            ),
                        );
                        continue;
                    }
                },
            }
            spec.life = match life_of(&h.status.juju_status) {
                None | Some("alive") => Life::Alive,
                Some("dying") => {
                    self.note(
                        Level::Note,
                        h.line,
                        format!(
                            "{what} {id:?} is dying: imported with life: dying (still managed, as \
                             Juju does)"
                        ),
                    );
                    Life::Dying
                }
                Some("dead") => {
                    self.note(
                        Level::Note,
                        h.line,
                        format!(
                            "{what} {id:?} is dead: imported with life: dead, which the \
                             controller does not touch"
                        ),
                    );
                    comments.push("dead: the controller does not touch it".into());
                    Life::Dead
                }
                Some(other) => {
                    self.note(
                        Level::Warning,
                        h.line,
                        format!("{what} {id:?} has life {other:?}: read as alive"),
                    );
                    Life::Alive
                }
            };
            // Juju's order: every counted unit's application, the first kept.
            let mut order: Vec<&Counted> = Vec::new();
            for c in units {
                if !order.iter().any(|o| o.app == c.app) {
                    order.push(c);
                }
            }
            let listed: Vec<&str> = order.iter().map(|c| c.app.as_str()).collect();
            // A subordinate whose principal is listed is placed by its subordinateTo; one
            // whose principal is not (a filtered status) is listed itself, so that its
            // profile stays.
            spec.applications = order
                .iter()
                .filter(|c| {
                    let placed = c.subordinate
                        && apps
                            .get(&c.app)
                            .and_then(|a| a.emitted.as_ref())
                            .is_some_and(|a| {
                                a.spec
                                    .subordinate_to
                                    .iter()
                                    .any(|p| listed.contains(&p.as_str()))
                            });
                    !placed
                })
                .map(|c| c.app.clone())
                .collect();
            let w = super::super::workload(kind, &self.ns, &name, spec);
            self.check(kind, &w, h, &order, apps, &emitted, names);
            let at = self.at(h.line);
            let resource = match kind {
                Kind::Machine => Resource::Machine(w),
                _ => Resource::Container(w),
            };
            self.out.push(resource, comments, &at);
        }
    }

    /// The resource a host becomes, or None (with a note) when it is not imported.
    fn host_identity(&mut self, h: &Host<'_>, units: &[Counted]) -> Option<(Kind, String)> {
        let id = &h.id;
        let lost = if units.is_empty() {
            String::new()
        } else {
            let apps: BTreeSet<&str> = units.iter().map(|c| c.app.as_str()).collect();
            format!(
                " (with units of {})",
                apps.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        if let Some(err) = &h.status.status_error {
            self.note(
                Level::Warning,
                h.line,
                format!(
                    "machine {id:?}: Juju could not read it ({}): skipped{lost}",
                    err.0
                ),
            );
            return None;
        }
        let Some(parent) = &h.parent else {
            return match check_resource_name("machine name", id) {
                Ok(()) => Some((Kind::Machine, id.clone())),
                Err(why) => {
                    self.note(Level::Warning, h.line, format!("{why}: skipped{lost}"));
                    None
                }
            };
        };
        let segments: Vec<&str> = id.split('/').collect();
        let kind_segment = segments.len().checked_sub(2).map(|i| segments[i]);
        if kind_segment != Some("lxd") {
            self.note(
                Level::Note,
                h.line,
                format!(
                    "container {id:?} is not an LXD container (a {} one): skipped{lost}, as \
                     Juju's worker does",
                    kind_segment.unwrap_or("?")
                ),
            );
            return None;
        }
        if parent.contains('/') {
            self.note(
                Level::Warning,
                h.line,
                format!(
                    "container {id:?} is nested in container {parent:?}: skipped{lost} (a \
                     Container's host is a Machine)"
                ),
            );
            return None;
        }
        Some((Kind::Container, id.replace('/', "-")))
    }

    /// Says when the first `run` would change the instance: the controller's expected
    /// list against what Juju recorded on the machine (`lxd-profiles`, a set) in the
    /// order its units give.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        kind: Kind,
        w: &crate::resource::Workload,
        h: &Host<'_>,
        order: &[&Counted],
        apps: &HashMap<String, AppInfo>,
        emitted: &HashMap<(String, String), PreparedApp>,
        names: &ProfileNames,
    ) {
        if w.spec.instance.is_none() || w.spec.manual || w.spec.life == Life::Dead {
            return;
        }
        let what = host_word(kind);
        let id = &h.id;
        let expected = match expected_list(kind, w, emitted, names) {
            Ok(list) => list,
            Err(why) => {
                self.note(
                    Level::Warning,
                    h.line,
                    format!("{what} {id:?}: the controller will report an error: {why}"),
                );
                return;
            }
        };
        let base = if kind == Kind::Machine { 2 } else { 1 };
        let expected: Vec<String> = expected.into_iter().skip(base).collect();
        let recorded: BTreeSet<&str> = h
            .status
            .lxd_profiles
            .0
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        let mut juju: Vec<String> = order
            .iter()
            .filter_map(|c| apps.get(&c.app)?.charm_profile.clone())
            .filter(|p| recorded.contains(p.as_str()))
            .collect();
        for p in &recorded {
            if !juju.iter().any(|j| j == p) {
                juju.push(p.to_string());
            }
        }
        let exp_set: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let juju_set: BTreeSet<&str> = juju.iter().map(String::as_str).collect();
        if exp_set != juju_set {
            self.note(
                Level::Warning,
                h.line,
                format!(
                    "{what} {id:?}: Juju recorded the charm profiles [{}], the imported resources \
                     expect [{}]: the first `run` changes the instance (see `diff`)",
                    juju.join(", "),
                    expected.join(", ")
                ),
            );
        } else if expected != juju {
            self.note(
                Level::Warning,
                h.line,
                format!(
                    "{what} {id:?}: Juju's units give the order [{}], the controller's is [{}]: \
                     if LXD has Juju's, the first `run` reorders them (see `diff`)",
                    juju.join(", "),
                    expected.join(", ")
                ),
            );
        }
    }
}

/// Juju 3.6 names profiles `juju-<model>-<shortid>-<app>-<rev>`: the short id, when
/// `profile` is such a name.
fn short_id(profile: &str, model: &str, app: &str, rev: u64) -> Option<String> {
    let id = profile
        .strip_prefix(&format!("juju-{model}-"))?
        .strip_suffix(&format!("-{app}-{rev}"))?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_string())
}

fn same_content(a: &LxdProfile, b: &LxdProfile) -> bool {
    a.description == b.description && a.config == b.config && a.devices == b.devices
}
