//! Import: an existing Juju deployment turned into resources, so that it can be put under
//! the controller in one command (`lxd-mutater import`).
//!
//! Two sources, one result: `juju_status` reads what `juju status --format=yaml` prints
//! (Juju's record: units, machines, containers, the charm profiles it applied), `lxd`
//! reads an LXD listing (what is really on the instances). Both are pure: text or a
//! listing in, an `Import` out. Reading files, stdin and LXD is the command's job
//! (`cmd/import.rs`).
//!
//! An import never guesses in a way that would make the controller take a profile off an
//! instance: what it cannot know is left out with an error note (a Machine then names an
//! Application that does not exist, which the controller reports and does not act on),
//! and what it skips is said in a note, never silently. Every Machine and Container it
//! prints is checked against the controller's own expected list, and a note says when the
//! first `run` would change an instance.
//!
//! May not: talk to LXD, read files, or write anything.

pub mod juju_status;
pub mod lxd;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use crate::resource::validate::Severity;
use crate::resource::{
    API_VERSION, Application, ApplicationSpec, InstanceSpec, Kind, LxdProfile, Metadata, Object,
    ProfileNames, Resource, Workload,
};
use crate::store::PreparedApp;

/// How much a note matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something was skipped or adapted as designed (a manual machine, a pending one).
    Note,
    /// The output is usable, but `run` would change something, or the input looks odd.
    Warning,
    /// Something could not be imported: the output is incomplete and the command exits 1.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Note => "note",
            Level::Warning => "warning",
            Level::Error => "error",
        })
    }
}

/// One thing the user should know about an import, for stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: Level,
    /// Where in the input: `status.yaml:12` (empty for an LXD listing).
    pub at: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.level, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.level, self.message)
        }
    }
}

/// One resource of the output, with the comment lines printed above it.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub resource: Resource,
    pub comments: Vec<String>,
}

/// What an import produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Import {
    /// In output order: Applications, Machines, Containers; by namespace, then name.
    pub documents: Vec<Document>,
    pub notes: Vec<Note>,
    /// Printed at the top of the output (where it came from).
    pub header: Vec<String>,
}

impl Import {
    /// Whether something could not be imported (exit 1).
    pub fn has_errors(&self) -> bool {
        self.notes.iter().any(|n| n.level == Level::Error)
    }

    /// `Kind namespace/name` of each resource, in order: what the tests compare.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<String> {
        self.resources()
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r.kind(),
                    r.metadata().namespace,
                    r.metadata().name
                )
            })
            .collect()
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.documents.iter().map(|d| &d.resource)
    }

    /// The output: one YAML document per resource, with its comments.
    pub fn to_yaml(&self) -> Result<String, ImportError> {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(&comment(line));
        }
        for d in &self.documents {
            out.push_str("---\n");
            for line in &d.comments {
                out.push_str(&comment(line));
            }
            let text = match &d.resource {
                Resource::Application(a) => serde_saphyr::to_string(a),
                Resource::Machine(w) | Resource::Container(w) => serde_saphyr::to_string(w),
            }
            .map_err(|e| ImportError::Render(e.to_string()))?;
            out.push_str(text.trim_end());
            out.push('\n');
        }
        Ok(out)
    }

    /// Sorts the documents into output order (deterministic: the input's order never
    /// shows through).
    fn sort(&mut self) {
        fn rank(k: Kind) -> u8 {
            match k {
                Kind::Application => 0,
                Kind::Machine => 1,
                Kind::Container => 2,
            }
        }
        self.documents.sort_by(|a, b| {
            let (ma, mb) = (a.resource.metadata(), b.resource.metadata());
            rank(a.resource.kind())
                .cmp(&rank(b.resource.kind()))
                .then_with(|| ma.namespace.cmp(&mb.namespace))
                .then_with(|| natural_cmp(&ma.name, &mb.name))
        });
    }

    /// Adds a resource unless the product's own validation refuses it (an error note
    /// then says why), so that the output always loads.
    fn push(&mut self, resource: Resource, comments: Vec<String>, at: &str) {
        let invalid: Vec<String> = crate::resource::validate::check(&resource)
            .into_iter()
            .filter(|v| v.severity == Severity::Invalid)
            .map(|v| format!("{}: {}", v.dotted_path(), v.message))
            .collect();
        if invalid.is_empty() {
            self.documents.push(Document { resource, comments });
        } else {
            let key = resource.key();
            self.note(
                Level::Error,
                at,
                format!(
                    "{} {:?} not imported: {}",
                    key.kind,
                    key.name,
                    invalid.join("; ")
                ),
            );
        }
    }

    fn note(&mut self, level: Level, at: impl Into<String>, message: impl Into<String>) {
        self.notes.push(Note {
            level,
            at: at.into(),
            message: message.into(),
        });
    }
}

/// `# text`, each line of it.
fn comment(text: &str) -> String {
    text.lines().map(|l| format!("# {l}\n")).collect()
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// `juju status` wrote colours: it was run on a terminal, or with colour forced.
    #[error(
        "{file}:{line}:{column}: the input holds terminal colour codes (ESC [): run `juju status --format=yaml --no-color` and import that"
    )]
    Coloured {
        file: String,
        line: u64,
        column: u64,
    },
    /// The text is not YAML, or a field has the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Yaml {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    /// YAML, but not what `juju status --format=yaml` prints, or a model this cannot
    /// import.
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    /// An LXD listing from which the model cannot be told.
    #[error("{0}")]
    Listing(String),
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: larger than {cap} bytes: not read (is this `juju status` output?)")]
    TooLarge { file: String, cap: u64 },
    #[error("{file}: not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("cannot write the resources as YAML: {0}")]
    Render(String),
}

/// Input larger than this is refused before more is read: `juju status` of a model with
/// a thousand machines is a few MiB.
pub const MAX_INPUT_BYTES: u64 = 32 * 1024 * 1024;

/// Compares names as yaml.v2 sorts Juju's map keys: runs of digits as numbers, so that
/// `2` comes before `10` and `app/2` before `app/10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                // Leading zeros aside, a longer run of digits is a larger number.
                let trim = |n: &[u8]| -> usize { n.iter().take_while(|c| **c == b'0').count() };
                let (ta, tb) = (&na[trim(na)..], &nb[trim(nb)..]);
                let o = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn metadata(namespace: &str, name: &str) -> Metadata {
    Metadata {
        name: name.to_string(),
        namespace: namespace.to_string(),
        ..Metadata::default()
    }
}

fn application(namespace: &str, name: &str, spec: ApplicationSpec) -> Application {
    Object {
        api_version: API_VERSION.into(),
        kind: Kind::Application.as_str().into(),
        metadata: metadata(namespace, name),
        spec,
        status: None,
    }
}

fn workload(kind: Kind, namespace: &str, name: &str, spec: InstanceSpec) -> Workload {
    Object {
        api_version: API_VERSION.into(),
        kind: kind.as_str().into(),
        metadata: metadata(namespace, name),
        spec,
        status: None,
    }
}

/// The profile list the controller will expect for `w`, from the imported Applications
/// (the same function the controller plans with), or why it has none.
fn expected_list(
    kind: Kind,
    w: &Workload,
    apps: &HashMap<(String, String), PreparedApp>,
    names: &ProfileNames,
) -> Result<Vec<String>, String> {
    let ns = &w.metadata.namespace;
    let subordinates = |principal: &str| {
        let mut subs: Vec<&PreparedApp> = apps
            .values()
            .filter(|a| &a.metadata.namespace == ns)
            .filter(|a| a.spec.subordinate_to.iter().any(|p| p == principal))
            .collect();
        subs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        subs
    };
    crate::reconcile::expected_profiles(
        kind,
        w,
        |name| apps.get(&(ns.clone(), name.to_string())),
        subordinates,
        names,
    )
    .map(|e| e.list)
    .map_err(|e| e.to_string())
}

/// Juju's charm profile rules on imported content: a profile that breaks them was
/// deployed with `--force`, so the Application says `force: true`.
fn needs_force(profile: &LxdProfile) -> Vec<String> {
    crate::resource::profile::check_rules(profile)
        .into_iter()
        .map(|v| v.message)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_juju_prints_them() {
        let mut v = vec![
            "10", "2", "1", "app/10", "app/2", "b", "a", "0-lxd-10", "0-lxd-9",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "0-lxd-9", "0-lxd-10", "1", "2", "10", "a", "app/2", "app/10", "b"
            ]
        );
        assert_eq!(natural_cmp("007", "7"), Ordering::Equal);
        assert_eq!(natural_cmp("x1y", "x1z"), Ordering::Less);
    }
}
