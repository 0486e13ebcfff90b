//! `juju status --format=yaml` (Juju 3.x) to resources: one namespace, the model; an
//! Application per application, its profile content taken from the machines'
//! `lxd-profiles`; a Machine per top-level machine, a Container per LXD container.
//!
//! The facts this follows (keys, nesting, how containers, subordinates, manual machines,
//! life and pending instances appear) are in shared/research/juju-status.md. In short:
//! - an application's profile content appears only under the `lxd-profiles` of the
//!   machines Juju applied it to, keyed by its `charm-profile`; when no machine has it
//!   (a refresh not applied yet) the Application is left out with an error, since an
//!   Application without a profile would make the controller take the profile off;
//! - a subordinate's units sit under its principal's units, with no `machine`; the
//!   subordinate gets `subordinateTo` (its principals), which puts its profile after
//!   theirs on every machine that runs one, as Juju's worker does;
//! - `instance-id: pending` is a machine not provisioned (no `spec.instance`);
//!   `manual:<host>` a manual machine (`manual: true`, which the controller skips);
//! - machine and unit life is `juju-status.life` (absent when alive); dead units do not
//!   count, dying ones do; application life is the application's own `life`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::{Import, ImportError, Level, expected_list, natural_cmp};
use crate::resource::names::{check_instance_name, check_resource_name};
use crate::resource::{
    Application, ApplicationSpec, InstanceSpec, Kind, Life, LxdProfile, ProfileNames, Resource,
};
use crate::store::PreparedApp;

/// The instance-id of a manual machine: `manual:<host>` (not an LXD instance).
const MANUAL_PREFIX: &str = "manual:";

/// Turns the text of `juju status --format=yaml` (read from `file`) into resources.
pub fn convert(file: &str, text: &str) -> Result<Import, ImportError> {
    refuse_colour(file, text)?;
    let status = parse(file, text)?;
    let ns = model_name(file, &status)?;
    Converter::new(file, ns).run(&status)
}

/// `juju status` colours its YAML on a terminal (3.x): those bytes are not YAML, and a
/// parser error about them would not say why.
fn refuse_colour(file: &str, text: &str) -> Result<(), ImportError> {
    let Some(at) = text.find("\u{1b}[") else {
        return Ok(());
    };
    let before = &text[..at];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
    Err(ImportError::Coloured {
        file: file.to_string(),
        line,
        column,
    })
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    // `juju status` of a large model: many nodes, little nesting (containers in
    // containers are the deepest part).
    budget.max_nodes = 4_000_000;
    budget.max_events = 10_000_000;
    budget.max_total_scalar_bytes = super::MAX_INPUT_BYTES as usize;
    budget.max_documents = 1;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o.with_snippet = false;
    o
}

fn parse(file: &str, text: &str) -> Result<Status, ImportError> {
    let first = match serde_saphyr::from_str_with_options::<Status>(text, options()) {
        Ok(status) => return Ok(status),
        Err(e) => e,
    };
    // Only now, to say where: the same text again with the path of each field tracked.
    // Keys are read as plain text for this pass (the tracker cannot see through the
    // positioned keys that the first pass keeps for its notes).
    let _plain = PlainKeys::set();
    let mut track = serde_path_to_error::Track::new();
    let second = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        Status::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    let (e, path) = match second {
        Err(e) => (e, track.path().to_string()),
        Ok(_) => (first, String::new()),
    };
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = yaml_message(&e);
    // `?` stands for a key the tracker did not see (a key that is itself at fault).
    let path = path.trim_end_matches(".?").to_string();
    let message = if path.is_empty() || path == "." || path == "?" {
        message
    } else {
        format!("{path}: {message}")
    };
    Err(ImportError::Yaml {
        file: file.to_string(),
        line,
        column,
        message,
    })
}

thread_local! {
    /// Set while a failed parse is repeated to find the path of the field at fault.
    static PLAIN_KEYS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keys are read without their position while this lives.
struct PlainKeys;

impl PlainKeys {
    fn set() -> PlainKeys {
        PLAIN_KEYS.with(|p| p.set(true));
        PlainKeys
    }
}

impl Drop for PlainKeys {
    fn drop(&mut self) {
        PLAIN_KEYS.with(|p| p.set(false));
    }
}

/// The library's message without the position it carries (ours is printed in front),
/// and in the product's words where the library's are advice to its own users.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    match crate::resource::parse::innermost(e) {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => {
            return format!("the key {k:?} appears twice in this mapping");
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            return "a key appears twice in this mapping".into();
        }
        serde_saphyr::Error::Budget { .. } => {
            return "larger or deeper than `juju status` output can be: refused".into();
        }
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
            return "aliases expand to more than `juju status` output holds: refused".into();
        }
        _ => {}
    }
    crate::resource::parse::unpositioned(e)
}

fn model_name(file: &str, status: &Status) -> Result<String, ImportError> {
    let input = |message: String| ImportError::Input {
        file: file.to_string(),
        message,
    };
    let model = match &status.model {
        Some(ModelField::Status { name, type_ }) => {
            if type_.as_deref() == Some("caas") {
                return Err(input(
                    "model type is caas (Kubernetes): it has no LXD machines to import".into(),
                ));
            }
            name.clone()
        }
        Some(ModelField::Name(name)) => {
            return Err(input(format!(
                "`model: {name}` is a plain name: this is `juju show-machine` or `juju machines` \
                 output, which has no applications; import `juju status --format=yaml`"
            )));
        }
        None if status.api_version.is_some() => {
            return Err(input(
                "this is a resource file (it has apiVersion), not `juju status` output: \
                 use it as it is"
                    .into(),
            ));
        }
        None => None,
    };
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return Err(input(
            "no model.name: not the output of `juju status --format=yaml`".into(),
        ));
    };
    check_resource_name("model name", &model).map_err(input)?;
    Ok(model)
}

// ------------------------------------------------------------------------------------
// What is read of the status. Every field is optional and unknown keys are ignored
// (Juju adds keys from one version to the next); an entity Juju could not read is
// printed as `{status-error: ...}`, which is read as an entity with only that field.

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct Status {
    model: Option<ModelField>,
    machines: Entries<MachineStatus>,
    applications: Entries<AppStatus>,
    #[serde(rename = "apiVersion")]
    api_version: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct MachineStatus {
    juju_status: Option<AgentStatus>,
    instance_id: Option<Text>,
    containers: Entries<MachineStatus>,
    lxd_profiles: Entries<LxdProfile>,
    status_error: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct AgentStatus {
    life: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct AppStatus {
    charm_name: Option<Text>,
    charm_rev: Option<Text>,
    charm_profile: Option<Text>,
    life: Option<Text>,
    subordinate_to: Vec<Text>,
    units: Entries<UnitStatus>,
    status_error: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct UnitStatus {
    juju_status: Option<AgentStatus>,
    machine: Option<Text>,
    subordinates: Entries<UnitStatus>,
    status_error: Option<Text>,
}

/// `model:` is a mapping in `juju status` and a plain name in `juju show-machine`.
enum ModelField {
    Status {
        name: Option<String>,
        type_: Option<String>,
    },
    Name(String),
}

impl<'de> Deserialize<'de> for ModelField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the model's status (name, type, ...)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelField, E> {
                Ok(ModelField::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelField, A::Error> {
                let (mut name, mut type_) = (None, None);
                while let Some(key) = map.next_key::<Text>()? {
                    match key.0.as_str() {
                        "name" => name = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "type" => type_ = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(ModelField::Status { name, type_ })
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar as text: Juju quotes what YAML would read otherwise (`"0"`), but a hand-edited
/// status may not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar (text or a number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_string(V)
    }
}

/// A mapping's entries in the order written, each with the line of its key.
struct Entries<T>(Vec<Entry<T>>);

struct Entry<T> {
    key: String,
    line: u64,
    value: T,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<T> Entries<T> {
    /// In the order Juju prints them (yaml.v2: numbers inside keys compare as numbers).
    fn sorted(&self) -> Vec<&Entry<T>> {
        let mut v: Vec<&Entry<T>> = self.0.iter().collect();
        v.sort_by(|a, b| natural_cmp(&a.key, &b.key));
        v
    }

    fn get(&self, key: &str) -> Option<&T> {
        self.0.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries<T>, E> {
                Ok(Entries::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Entries<T>, E> {
                Ok(Entries::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Entries<T>, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                loop {
                    let (name, line) = if PLAIN_KEYS.with(|p| p.get()) {
                        match map.next_key::<Text>()? {
                            Some(key) => (key.0, 0),
                            None => break,
                        }
                    } else {
                        match map.next_key::<Spanned<Text>>()? {
                            Some(key) => (key.value.0, key.referenced.line()),
                            None => break,
                        }
                    };
                    if !seen.insert(name.clone()) {
                        return Err(de::Error::custom(format!(
                            "the key {name:?} appears twice in this mapping"
                        )));
                    }
                    let value = map.next_value::<T>()?;
                    out.push(Entry {
                        key: name,
                        line,
                        value,
                    });
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_option(V(std::marker::PhantomData))
    }
}

// ------------------------------------------------------------------------------------

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

struct Converter {
    file: String,
    ns: String,
    out: Import,
}

fn life_of(agent: &Option<AgentStatus>) -> Option<&str> {
    agent
        .as_ref()
        .and_then(|a| a.life.as_ref())
        .map(|t| t.0.as_str())
        .filter(|l| !l.is_empty())
}

impl Converter {
    fn new(file: &str, ns: String) -> Converter {
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

    fn run(mut self, status: &Status) -> Result<Import, ImportError> {
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
                        let broken = super::needs_force(&content);
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
            let app = super::application(&self.ns, name, spec);
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
            let what = if kind == Kind::Machine {
                "machine"
            } else {
                "container"
            };
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
            let w = super::workload(kind, &self.ns, &name, spec);
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
        let what = if kind == Kind::Machine {
            "machine"
        } else {
            "container"
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Import;
    use crate::resource::{Workload, parse_str};

    /// The composed example of shared/research/juju-status.md (section 6), as it is.
    const DEMO: &str = include_str!("../../tests/fixtures/import/juju-status-demo.yaml");

    fn import(text: &str) -> Import {
        convert("status.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn notes(i: &Import, level: Level) -> Vec<String> {
        i.notes
            .iter()
            .filter(|n| n.level == level)
            .map(|n| n.to_string())
            .collect()
    }

    fn app<'a>(i: &'a Import, name: &str) -> Option<&'a Application> {
        i.resources().find_map(|r| match r {
            Resource::Application(a) if a.metadata.name == name => Some(a),
            _ => None,
        })
    }

    fn workload<'a>(i: &'a Import, kind: Kind, name: &str) -> Option<&'a Workload> {
        i.resources().find_map(|r| match r {
            Resource::Machine(w) if kind == Kind::Machine && w.metadata.name == name => Some(w),
            Resource::Container(w) if kind == Kind::Container && w.metadata.name == name => Some(w),
            _ => None,
        })
    }

    /// A status with model `m`: `machines` and `applications` are the indented entries.
    fn status(machines: &str, applications: &str) -> String {
        format!(
            "model:\n  name: m\n  type: iaas\nmachines:\n{machines}applications:\n{applications}storage: {{}}\n"
        )
    }

    const ONE_PROFILE: &str = "    lxd-profiles:\n      juju-m-a-1:\n        config:\n          security.nesting: \"true\"\n        description: \"\"\n        devices: {}\n";
    const APP_A: &str = "  a:\n    charm-name: a\n    charm-rev: 1\n    charm-profile: juju-m-a-1\n    units:\n      a/0:\n        machine: \"0\"\n";

    #[test]
    fn the_composed_example_becomes_applications_machines_and_a_container() {
        let i = import(DEMO);
        assert_eq!(
            i.keys(),
            [
                "Application demo/containerd",
                "Application demo/kubernetes-worker",
                "Application demo/ubuntu",
                "Machine demo/0",
                "Machine demo/1",
                "Container demo/1-lxd-0",
            ]
        );
        let kw = app(&i, "kubernetes-worker").unwrap();
        assert_eq!(kw.spec.revision, 198);
        assert_eq!(kw.spec.charm.as_deref(), Some("kubernetes-worker"));
        let p = kw.spec.lxd_profile.as_ref().unwrap();
        assert_eq!(p.description, "kubernetes-worker on LXD");
        assert_eq!(p.config["security.privileged"], "true");
        assert_eq!(p.devices["kmsg"]["type"], "unix-char");
        assert!(!kw.spec.force);
        let cd = app(&i, "containerd").unwrap();
        assert_eq!(cd.spec.revision, 73);
        assert!(cd.spec.subordinate);
        assert_eq!(cd.spec.subordinate_to, ["kubernetes-worker"]);
        assert_eq!(
            cd.spec.lxd_profile.as_ref().unwrap().config["linux.kernel_modules"],
            "overlay,br_netfilter"
        );
        let ubuntu = app(&i, "ubuntu").unwrap();
        assert_eq!(ubuntu.spec.revision, 24);
        assert_eq!(
            ubuntu.spec.lxd_profile, None,
            "no charm-profile, no profile"
        );

        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(m0.spec.instance.as_deref(), Some("juju-4d5e6f-0"));
        // containerd is placed by its subordinateTo, right after kubernetes-worker.
        assert_eq!(m0.spec.applications, ["kubernetes-worker"]);
        assert_eq!((m0.spec.life, m0.spec.manual), (Life::Alive, false));
        let m1 = workload(&i, Kind::Machine, "1").unwrap();
        assert!(m1.spec.manual);
        assert_eq!(m1.spec.instance, None, "manual:10.20.0.15 is no LXD name");
        assert_eq!(m1.spec.applications, ["ubuntu"]);
        let c = workload(&i, Kind::Container, "1-lxd-0").unwrap();
        assert_eq!(c.spec.machine.as_deref(), Some("1"));
        assert_eq!(c.spec.instance.as_deref(), Some("juju-4d5e6f-1-lxd-0"));
        assert_eq!(c.spec.applications, ["kubernetes-worker"]);

        // The manual machine is said, nothing else is worth a word.
        assert_eq!(
            notes(&i, Level::Note),
            [
                "status.yaml:60: note: machine \"1\" is a manual machine (manual:10.20.0.15): \
              imported with manual: true, which the controller skips, as Juju does"
            ]
        );
        assert!(notes(&i, Level::Warning).is_empty(), "{:?}", i.notes);
        assert!(!i.has_errors());
    }

    #[test]
    fn the_controller_expects_exactly_the_lists_juju_left_for_the_example() {
        let i = import(DEMO);
        let apps: HashMap<(String, String), PreparedApp> = i
            .resources()
            .filter_map(|r| match r {
                Resource::Application(a) => Some((
                    (a.metadata.namespace.clone(), a.metadata.name.clone()),
                    PreparedApp::from(a.clone()),
                )),
                _ => None,
            })
            .collect();
        let names = ProfileNames::default();
        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(
            expected_list(Kind::Machine, m0, &apps, &names).unwrap(),
            [
                "default",
                "juju-demo",
                "juju-demo-kubernetes-worker-198",
                "juju-demo-containerd-73"
            ]
        );
        let c = workload(&i, Kind::Container, "1-lxd-0").unwrap();
        assert_eq!(
            expected_list(Kind::Container, c, &apps, &names).unwrap(),
            [
                "default",
                "juju-demo-kubernetes-worker-198",
                "juju-demo-containerd-73"
            ]
        );
    }

    #[test]
    fn the_output_loads_through_the_products_own_parser_unchanged() {
        let i = import(DEMO);
        let yaml = i.to_yaml().unwrap();
        let parsed = parse_str("out.yaml", &yaml);
        assert!(parsed.errors.is_empty(), "{:?}\n{yaml}", parsed.errors);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert!(
            parsed.rule_violations.is_empty(),
            "{:?}",
            parsed.rule_violations
        );
        let back: Vec<Resource> = parsed.resources.into_iter().map(|l| l.resource).collect();
        let ours: Vec<Resource> = i.resources().cloned().collect();
        assert_eq!(back, ours);
        assert!(yaml.starts_with("# Juju model \"demo\""), "{yaml}");
        assert!(
            yaml.contains("---\n# manual machine (manual:10.20.0.15): the controller skips it\n"),
            "{yaml}"
        );
    }

    #[test]
    fn output_order_is_by_kind_then_name_as_juju_sorts_whatever_the_input_order() {
        let text = status(
            "  \"10\":\n    instance-id: juju-aaaaaa-10\n  \"2\":\n    instance-id: juju-aaaaaa-2\n",
            "  z:\n    charm-rev: 1\n    units:\n      z/10:\n        machine: \"10\"\n      z/2:\n        machine: \"2\"\n  b:\n    charm-rev: 3\n    units:\n      b/0:\n        machine: \"10\"\n",
        );
        let i = import(&text);
        assert_eq!(
            i.keys(),
            [
                "Application m/b",
                "Application m/z",
                "Machine m/2",
                "Machine m/10"
            ]
        );
        assert_eq!(
            workload(&i, Kind::Machine, "10").unwrap().spec.applications,
            ["b", "z"]
        );
        assert_eq!(import(&text).to_yaml().unwrap(), i.to_yaml().unwrap());
    }

    #[test]
    fn pending_dying_dead_and_unreadable_entities_are_said_never_skipped_silently() {
        let machines = "  \"0\":\n    juju-status: {current: started, life: dying}\n    instance-id: juju-aaaaaa-0\n    containers:\n      0/kvm/0:\n        instance-id: juju-aaaaaa-0-kvm-0\n      0/lxd/1:\n        instance-id: pending\n        containers:\n          0/lxd/1/lxd/0:\n            instance-id: juju-aaaaaa-0-lxd-1-lxd-0\n  \"1\":\n    juju-status: {current: stopped, life: dead}\n    instance-id: juju-aaaaaa-1\n  \"2\":\n    instance-id: pending\n  \"3\":\n    status-error: 'cannot get machine 3: boom'\n";
        let apps = "  a:\n    charm-rev: 1\n    units:\n      a/0:\n        juju-status: {current: executing, life: dying}\n        machine: \"0\"\n      a/1:\n        juju-status: {current: lost, life: dead}\n        machine: \"2\"\n      a/2:\n        machine: 0/kvm/0\n      a/3:\n        juju-status: {current: allocating}\n  gone:\n    charm-rev: 2\n    life: dead\n  broken:\n    status-error: 'cannot get application: boom'\n";
        let i = import(&status(machines, apps));
        assert_eq!(
            i.keys(),
            [
                "Application m/a",
                "Machine m/0",
                "Machine m/1",
                "Machine m/2",
                "Container m/0-lxd-1"
            ]
        );
        let m0 = workload(&i, Kind::Machine, "0").unwrap();
        assert_eq!(
            (m0.spec.life, m0.spec.applications.clone()),
            (Life::Dying, vec!["a".into()])
        );
        let m1 = workload(&i, Kind::Machine, "1").unwrap();
        assert_eq!(m1.spec.life, Life::Dead);
        let m2 = workload(&i, Kind::Machine, "2").unwrap();
        assert_eq!(m2.spec.instance, None);
        assert!(
            m2.spec.applications.is_empty(),
            "a dead unit does not count"
        );
        let c = workload(&i, Kind::Container, "0-lxd-1").unwrap();
        assert_eq!(c.spec.instance, None);
        let all: Vec<String> = i.notes.iter().map(|n| n.to_string()).collect();
        let said = |what: &str| {
            assert!(all.iter().any(|n| n.contains(what)), "{what:?} in {all:#?}");
        };
        said("note: machine \"0\" is dying: imported with life: dying");
        said("note: machine \"1\" is dead: imported with life: dead");
        said("note: machine \"2\" is not provisioned yet (instance-id pending)");
        said("note: container \"0/lxd/1\" is not provisioned yet");
        said(
            "warning: machine \"3\": Juju could not read it (cannot get machine 3: boom): skipped",
        );
        said(
            "note: container \"0/kvm/0\" is not an LXD container (a kvm one): skipped (with units of a)",
        );
        said("warning: container \"0/lxd/1/lxd/0\" is nested in container \"0/lxd/1\": skipped");
        said("note: unit \"a/0\" is dying: still counted");
        said("note: unit \"a/1\" is dead: not counted");
        said("note: unit \"a/3\" has no machine yet");
        said("note: application \"gone\" is dead: skipped");
        said(
            "warning: application \"broken\": Juju could not read it (cannot get application: boom): skipped",
        );
        // Each note carries the line of what it is about.
        assert!(
            all.iter()
                .any(|n| n.starts_with("status.yaml:19: note: machine \"2\"")),
            "{all:#?}"
        );
        assert!(!i.has_errors());
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    }

    #[test]
    fn a_profile_no_machine_shows_leaves_the_application_out_and_the_machine_naming_it() {
        // After `juju refresh`, before the worker applied the new revision: Juju names the
        // profile, no machine shows its content. Writing the Application without a
        // profile would take the old one off every instance.
        let text = status(
            "  \"0\":\n    instance-id: juju-aaaaaa-0\n",
            &APP_A
                .replace("charm-rev: 1", "charm-rev: 2")
                .replace("a-1", "a-2"),
        );
        let i = import(&text);
        assert!(i.has_errors());
        assert!(app(&i, "a").is_none());
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["a"],
            "the machine still names it: the controller reports it and writes nothing"
        );
        let errors = notes(&i, Level::Error);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("status.yaml:8: error: application \"a\": no machine shows the content of its profile \"juju-m-a-2\""),
            "{errors:?}"
        );
        assert!(notes(&i, Level::Warning).iter().any(|w| {
            w.contains("the controller will report an error: application \"a\" not found")
        }));
    }

    #[test]
    fn copies_of_a_profile_that_differ_are_an_error() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{ONE_PROFILE}  \"1\":\n    instance-id: juju-aaaaaa-1\n{}",
                ONE_PROFILE.replace("\"true\"", "\"false\"")
            ),
            APP_A,
        );
        let i = import(&text);
        assert!(app(&i, "a").is_none());
        assert!(
            notes(&i, Level::Error)[0].contains("machines \"0\" and \"1\" show different content"),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn coloured_input_is_refused_with_the_no_color_hint() {
        let text = "model:\n  name: \u{1b}[1;34mdemo\u{1b}[0m\n";
        let e = convert("status.yaml", text).unwrap_err();
        assert!(
            matches!(
                e,
                ImportError::Coloured {
                    line: 2,
                    column: 9,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("`juju status --format=yaml --no-color`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_input_names_the_file_line_and_field() {
        let e = convert(
            "status.yaml",
            &status("", "  a:\n    charm-rev: 1\n    units: [a/0]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("status.yaml:8:12: applications.a.units: expected mapping"),
            "{e}"
        );
        let i = import(&status("", "  a:\n    charm-rev: seven\n"));
        assert_eq!(
            notes(&i, Level::Error),
            [
                "status.yaml:6: error: application \"a\": charm-rev \"seven\" is not an integer >= 0: not imported"
            ]
        );
        let e = convert("status.yaml", "model:\n  name: demo\nmachines: [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("status.yaml:"), "{e}");
        assert!(!e.starts_with("status.yaml:0:"), "a position: {e}");
        let e = convert("status.yaml", &status("  \"0\": {}\n  \"0\": {}\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the key \"0\" appears twice"), "{e}");
        let e = convert("status.yaml", "just text\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("status.yaml:1:1: "), "{e}");
    }

    #[test]
    fn other_outputs_and_kubernetes_models_are_refused_with_the_reason() {
        let e = convert("s.yaml", "model: demo\nmachines: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`juju show-machine`"), "{e}");
        let e = convert("s.yaml", "model: {name: k, type: caas}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("caas"), "{e}");
        let e = convert(
            "s.yaml",
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("resource file"), "{e}");
        let e = convert("s.yaml", "machines: {}\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "s.yaml: no model.name: not the output of `juju status --format=yaml`"
        );
    }

    #[test]
    fn a_profile_breaking_jujus_rules_was_forced_and_is_imported_with_force() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{}",
                ONE_PROFILE.replace("security.nesting", "boot.autostart")
            ),
            APP_A,
        );
        let i = import(&text);
        let a = app(&i, "a").unwrap();
        assert!(a.spec.force);
        assert!(notes(&i, Level::Warning)[0].contains("contains config value \"boot.autostart\""));
        let parsed = parse_str("out.yaml", &i.to_yaml().unwrap());
        assert!(parsed.rule_violations.is_empty() && parsed.errors.is_empty());
    }

    #[test]
    fn juju_3_6_names_with_the_models_short_id_are_told_with_the_templates_to_run_with() {
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n{}",
                ONE_PROFILE.replace("juju-m-a-1", "juju-m-7b0768-a-1")
            ),
            &APP_A.replace("juju-m-a-1", "juju-m-7b0768-a-1"),
        );
        let i = import(&text);
        assert!(app(&i, "a").unwrap().spec.lxd_profile.is_some());
        let w = notes(&i, Level::Warning);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("--charm-profile-template 'juju-{model}-7b0768-{app}-{rev}' --model-profile-template 'juju-{model}-7b0768'"),
            "{w:?}"
        );
    }

    #[test]
    fn a_subordinate_counted_where_no_principal_of_it_is_listed_is_listed_itself() {
        // A filtered status: the principal `p` of `s` on machine 0 is not among s's
        // subordinate-to. s's profile must stay: s is listed on the machine.
        let apps = "  p:\n    charm-rev: 1\n    units:\n      p/0:\n        machine: \"0\"\n        subordinates:\n          s/0: {}\n  s:\n    charm-rev: 4\n    subordinate-to: [q]\n";
        let i = import(&status("  \"0\":\n    instance-id: juju-aaaaaa-0\n", apps));
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["p", "s"]
        );
        let apps = apps.replace("[q]", "[p]");
        let i = import(&status("  \"0\":\n    instance-id: juju-aaaaaa-0\n", &apps));
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["p"]
        );
    }

    #[test]
    fn a_machine_whose_recorded_profiles_differ_from_the_expected_ones_is_warned_about() {
        // Juju recorded nothing on machine 0 (the profile shows on machine 1 only): the
        // first run adds it there.
        let text = status(
            &format!(
                "  \"0\":\n    instance-id: juju-aaaaaa-0\n  \"1\":\n    instance-id: juju-aaaaaa-1\n{ONE_PROFILE}"
            ),
            &format!("{APP_A}      a/1:\n        machine: \"1\"\n"),
        );
        let i = import(&text);
        let w = notes(&i, Level::Warning);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("machine \"0\": Juju recorded the charm profiles [], the imported resources expect [juju-m-a-1]"),
            "{w:?}"
        );
    }

    #[test]
    fn unquoted_ids_and_json_input_are_read() {
        let text = "model: {name: m}\nmachines:\n  0: {instance-id: juju-aaaaaa-0}\napplications:\n  a: {charm-rev: 1, units: {a/0: {machine: 0}}}\n";
        let i = import(text);
        assert_eq!(
            workload(&i, Kind::Machine, "0").unwrap().spec.applications,
            ["a"]
        );
        let json = r#"{"model":{"name":"m","type":"iaas"},"machines":{"0":{"instance-id":"juju-aaaaaa-0"}},"applications":{"a":{"charm-rev":1,"units":{"a/0":{"machine":"0"}}}},"storage":{}}"#;
        assert_eq!(import(json).to_yaml().unwrap(), i.to_yaml().unwrap());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = convert("s.yaml", &text);
        }

        #[test]
        fn status_like_text_never_panics(text in "(model:\\n  name: m\\n|machines:\\n|  \"0\":\\n|    instance-id: (juju-a-0|pending|manual:x)\\n|applications:\\n|  a:\\n|    charm-rev: 1\\n|    units:\\n|      a/0:\\n|        machine: \"0\"\\n|    containers:\\n|      0/lxd/0: \\{\\}\\n|[a-z:\\- \\n]){0,40}") {
            let _ = convert("s.yaml", &text);
        }
    }
}
