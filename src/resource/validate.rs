//! Checks on the values of one resource, beyond what its type already says.
//!
//! Each violation names the field it is about, as a path, so that the file parser can
//! point at the line and a Kubernetes client at the field.

use super::model::{Application, Resource, Workload};
use super::names::{check_instance_name, check_profile_name, check_resource_name};
use super::profile::check_rules;

/// What a violation means for the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The resource is malformed: it is not loaded.
    Invalid,
    /// The charm profile breaks Juju's rules (SPEC §4): the resource loads, and every
    /// machine that runs the application reports the error.
    ProfileRule,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub severity: Severity,
    /// The field, from the document's root: `["spec", "lxdProfile", "config", "boot.autostart"]`.
    pub path: Vec<String>,
    pub message: String,
}

impl Violation {
    fn invalid(path: &[&str], message: String) -> Self {
        Violation {
            severity: Severity::Invalid,
            path: path.iter().map(|s| s.to_string()).collect(),
            message,
        }
    }

    /// The path in the dotted form users read (`spec.extraProfiles[1]`).
    pub fn dotted_path(&self) -> String {
        dotted(&self.path)
    }
}

/// `["spec", "applications", "1"]` -> `spec.applications[1]`.
pub fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

/// Every violation in `resource`, sorted.
pub fn check(resource: &Resource) -> Vec<Violation> {
    let meta = resource.metadata();
    let mut out = Vec::new();
    if let Err(e) = check_resource_name("name", &meta.name) {
        out.push(Violation::invalid(&["metadata", "name"], e));
    } else if meta.name.len() > MAX_NAME_BYTES {
        // Its status file's shadow `.<name>.yaml.tmp` must fit a file name (255 bytes).
        out.push(Violation::invalid(
            &["metadata", "name"],
            format!(
                "name is {} bytes long, more than {MAX_NAME_BYTES}",
                meta.name.len()
            ),
        ));
    }
    if let Err(e) = check_resource_name("namespace", &meta.namespace) {
        out.push(Violation::invalid(&["metadata", "namespace"], e));
    }
    match resource {
        Resource::Application(a) => check_application(a, &mut out),
        Resource::Machine(w) => {
            if w.spec.machine.is_some() {
                out.push(Violation::invalid(
                    &["spec", "machine"],
                    "a Machine has no host machine: spec.machine is for Containers".into(),
                ));
            }
            check_workload(w, &mut out);
        }
        Resource::Container(w) => {
            match &w.spec.machine {
                None => out.push(Violation::invalid(
                    &["spec", "machine"],
                    "a Container needs spec.machine, the name of its host Machine".into(),
                )),
                Some(m) => {
                    if let Err(e) = check_resource_name("machine name", m) {
                        out.push(Violation::invalid(&["spec", "machine"], e));
                    }
                }
            }
            check_workload(w, &mut out);
        }
    }
    out.sort();
    out
}

/// The longest resource name: its status file's shadow, `.<name>.yaml.tmp`, fits a file name.
pub const MAX_NAME_BYTES: usize = 200;

fn check_application(a: &Application, out: &mut Vec<Violation>) {
    for (i, principal) in a.spec.subordinate_to.iter().enumerate() {
        if let Err(e) = check_resource_name("application name", principal) {
            out.push(Violation::invalid(
                &["spec", "subordinateTo", &i.to_string()],
                e,
            ));
        }
    }
    // The charm profile's name (with the default template) must be one LXD accepts.
    let profile = super::names::ProfileNames::default().charm_profile(
        &a.metadata.namespace,
        &a.metadata.name,
        a.spec.revision,
    );
    if a.metadata.name.len() <= MAX_NAME_BYTES
        && let Err(e) = check_profile_name(&profile)
    {
        out.push(Violation::invalid(
            &["metadata", "name"],
            format!(
                "{}: shorten the application or namespace name",
                e.replacen("profile name", "its charm profile name", 1)
            ),
        ));
    }
    let Some(profile) = &a.spec.lxd_profile else {
        return;
    };
    for (name, device) in &profile.devices {
        if name.is_empty() {
            out.push(Violation::invalid(
                &["spec", "lxdProfile", "devices"],
                "a device name must not be empty".into(),
            ));
        }
        if device.is_empty() {
            out.push(Violation::invalid(
                &["spec", "lxdProfile", "devices", name],
                format!("device {name:?} has no properties"),
            ));
        }
    }
    // The controller's ownership record: a profile carrying it could never match what
    // LXD holds (the record is not content), so it would be rewritten on every pass.
    for key in profile
        .config
        .keys()
        .filter(|k| k.starts_with(super::profile::RESERVED_PREFIX))
    {
        out.push(Violation::invalid(
            &["spec", "lxdProfile", "config", key],
            format!(
                "config key {key:?} is reserved: lxd-mutater records ownership under {:?}",
                super::profile::RESERVED_PREFIX
            ),
        ));
    }
    if profile.config.contains_key("") {
        out.push(Violation::invalid(
            &["spec", "lxdProfile", "config"],
            "a config key must not be empty".into(),
        ));
    }
    if !a.spec.force {
        for v in check_rules(profile) {
            let mut path = vec!["spec".to_string(), "lxdProfile".to_string()];
            path.extend(v.field);
            out.push(Violation {
                severity: Severity::ProfileRule,
                path,
                message: v.message,
            });
        }
    }
}

fn check_workload(w: &Workload, out: &mut Vec<Violation>) {
    if let Some(instance) = &w.spec.instance
        && let Err(e) = check_instance_name(instance)
    {
        out.push(Violation::invalid(&["spec", "instance"], e));
    }
    for (i, app) in w.spec.applications.iter().enumerate() {
        if let Err(e) = check_resource_name("application name", app) {
            out.push(Violation::invalid(
                &["spec", "applications", &i.to_string()],
                e,
            ));
        }
    }
    for (i, p) in w.spec.extra_profiles.iter().enumerate() {
        if let Err(e) = check_profile_name(p) {
            out.push(Violation::invalid(
                &["spec", "extraProfiles", &i.to_string()],
                e,
            ));
        }
    }
}
