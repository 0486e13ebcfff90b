//! `plan(desired, observed) -> Decision`: pure. What must change in LXD for one Machine
//! or Container, as a list of steps that only `apply` carries out. `diff` and
//! `--dry-run` print it.

use std::fmt;

use crate::lxd::ProfileContent;
use crate::resource::{Kind, Life, ProfileNames, ResourceKey, Workload};
use crate::store::observed::{Claim, Stamp};
use crate::store::{Observed, PreparedApp};

use super::expected::{ExpectedError, expected_profiles, model_profile_content};

/// One write to LXD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `POST /1.0/profiles` (content without the record: apply writes `stamp` on it).
    CreateProfile {
        name: String,
        content: ProfileContent,
        stamp: Stamp,
    },
    /// `PUT /1.0/profiles/<name>` of an owned profile whose content drifted.
    ReplaceProfile {
        name: String,
        content: ProfileContent,
        stamp: Stamp,
    },
    /// `PATCH /1.0/instances/<instance>` with the whole list, and the claim recorded in
    /// the instance's config by the same request.
    SetProfiles { profiles: Vec<String>, claim: Claim },
    /// `DELETE /1.0/profiles/<name>` of an owned charm profile that nothing expects and
    /// LXD reports unused (planned by `collect`, never by `plan`).
    DeleteProfile { name: String },
}

/// What to do for an instance that exists: possibly nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub instance: String,
    pub current: Vec<String>,
    pub expected: Vec<String>,
    pub steps: Vec<Step>,
    /// Profiles with the expected name that the controller does not own and whose content
    /// differs: left alone, reported.
    pub foreign: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The instance's list differs from the expected one.
    pub fn list_differs(&self) -> bool {
        self.current != self.expected
    }

    /// Owned profiles whose content is rewritten.
    pub fn rewritten(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|s| match s {
            Step::ReplaceProfile { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// One line saying what differs, for status.drift.last and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.list_differs() {
            parts.push(format!(
                "instance profiles [{}] != expected [{}]",
                self.current.join(", "),
                self.expected.join(", ")
            ));
        }
        let rewritten: Vec<&str> = self.rewritten().collect();
        if !rewritten.is_empty() {
            parts.push(format!("profile content differs: {}", rewritten.join(", ")));
        }
        let created: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateProfile { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        if !created.is_empty() {
            parts.push(format!("missing profiles: {}", created.join(", ")));
        }
        parts.join("; ")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  instance: {}", self.instance)?;
        writeln!(f, "  current:  [{}]", self.current.join(", "))?;
        writeln!(f, "  expected: [{}]", self.expected.join(", "))?;
        for s in &self.steps {
            match s {
                Step::CreateProfile { name, content, .. } => {
                    writeln!(f, "  + create profile {name} ({})", summary(content))?
                }
                Step::ReplaceProfile { name, content, .. } => {
                    writeln!(f, "  ~ rewrite profile {name} ({})", summary(content))?
                }
                Step::SetProfiles { profiles, .. } => {
                    writeln!(f, "  ~ set profiles [{}]", profiles.join(", "))?
                }
                Step::DeleteProfile { name } => writeln!(f, "  - delete profile {name}")?,
            }
        }
        for p in &self.foreign {
            writeln!(
                f,
                "  ! profile {p} is not this controller's and differs: not attached, left alone"
            )?;
        }
        Ok(())
    }
}

fn summary(c: &ProfileContent) -> String {
    let config: Vec<String> = c.config.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let devices: Vec<&str> = c.devices.keys().map(String::as_str).collect();
    format!(
        "config: {{{}}}, devices: [{}]",
        config.join(", "),
        devices.join(", ")
    )
}

/// The outcome of planning one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Manual or dead: touch nothing.
    Skip(String),
    /// No instance named yet.
    Pending,
    /// The desired state itself is wrong (a missing application, a profile that breaks
    /// the rules): nothing is sent to LXD.
    Invalid(String),
    /// The cache does not know the instance: confirm with LXD before saying it is missing.
    UnknownInstance(String),
    Act(Plan),
}

/// Plans one Machine or Container against the observed state.
pub fn plan<'a>(
    flavour: Kind,
    workload: &'a Workload,
    application: impl Fn(&str) -> Option<&'a PreparedApp>,
    subordinates: impl Fn(&str) -> Vec<&'a PreparedApp>,
    observed: &Observed,
    names: &ProfileNames,
) -> Decision {
    if workload.spec.manual {
        return Decision::Skip("manual machine: not managed".into());
    }
    if workload.spec.life == Life::Dead {
        return Decision::Skip("life is dead: not managed".into());
    }
    let Some(instance) = &workload.spec.instance else {
        return Decision::Pending;
    };
    let expected = match expected_profiles(flavour, workload, application, subordinates, names) {
        Ok(e) => e,
        Err(e @ ExpectedError::MissingApplication(..))
        | Err(e @ ExpectedError::InvalidProfile(_))
        | Err(e @ ExpectedError::InvalidName(_)) => return Decision::Invalid(e.to_string()),
    };
    let Some(current) = observed.instance_profiles(instance) else {
        return Decision::UnknownInstance(instance.clone());
    };
    let owner = observed.owner();
    if let Some(claim) = observed.claim(instance)
        && *claim.owner != *owner
    {
        return Decision::Invalid(format!(
            "instance {instance:?} is claimed by another controller ({} for {}): not touched",
            claim.owner, claim.resource
        ));
    }
    let namespace = &workload.metadata.namespace;
    let mut steps = Vec::new();
    let mut foreign = Vec::new();
    if let Some(model) = &expected.model_profile
        && observed.profile(model).is_none()
    {
        steps.push(Step::CreateProfile {
            name: model.clone(),
            content: model_profile_content(),
            stamp: Stamp {
                owner: Some(owner.to_string()),
                namespace: Some(namespace.clone()),
                ..Stamp::default()
            },
        });
    }
    for cp in &expected.charm_profiles {
        let stamp = || Stamp {
            owner: Some(owner.to_string()),
            namespace: Some(namespace.clone()),
            application: Some(cp.application.to_string()),
            revision: Some(cp.revision),
        };
        match observed.profile(&cp.name) {
            None => steps.push(Step::CreateProfile {
                name: cp.name.to_string(),
                content: cp.content(),
                stamp: stamp(),
            }),
            Some(op) if !cp.is_held_by(&op.content) => {
                if op.owned {
                    steps.push(Step::ReplaceProfile {
                        name: cp.name.to_string(),
                        content: cp.content(),
                        stamp: stamp(),
                    });
                } else {
                    foreign.push(cp.name.to_string());
                }
            }
            Some(_) => {}
        }
    }
    // A profile that is not ours and differs is never attached: the instance keeps its
    // list until an operator mends or removes that profile.
    let in_order = current
        .iter()
        .map(|p| &**p)
        .eq(expected.list.iter().map(String::as_str));
    if !in_order && foreign.is_empty() {
        let key = ResourceKey::new(flavour, namespace, &workload.metadata.name);
        steps.push(Step::SetProfiles {
            profiles: expected.list.clone(),
            claim: Claim {
                owner: owner.into(),
                resource: key.to_string().into(),
            },
        });
    }
    Decision::Act(Plan {
        instance: instance.clone(),
        current: current.iter().map(|p| String::from(&**p)).collect(),
        expected: expected.list,
        steps,
        foreign,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lxd::{Instance, Profile};
    use crate::resource::{Resource, parse_str};
    use crate::store::{OWNER_KEY, OWNER_VALUE};

    const APPS: &str = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one, namespace: m}\nspec: {revision: 3, lxdProfile: {config: {security.nesting: true}}}\n---\n";

    struct Fixture {
        resources: Vec<Resource>,
        observed: Observed,
    }

    fn fixture(yaml: &str, instance_profiles: &[&str], profiles: &[(&str, &str, bool)]) -> Fixture {
        let p = parse_str("t.yaml", yaml);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let mut observed = Observed::default();
        observed.replace(
            vec![Instance {
                name: "i0".into(),
                profiles: instance_profiles.iter().map(|s| s.to_string()).collect(),
                status: "Stopped".into(),
                config: Default::default(),
            }],
            profiles
                .iter()
                .map(|(name, nesting, owned)| {
                    let mut content = ProfileContent::default();
                    content
                        .config
                        .insert("security.nesting".into(), nesting.to_string());
                    if *owned {
                        content.config.insert(OWNER_KEY.into(), OWNER_VALUE.into());
                    }
                    Profile {
                        name: name.to_string(),
                        content,
                        used_by: vec![],
                    }
                })
                .collect(),
        );
        Fixture {
            resources: p.resources.into_iter().map(|l| l.resource).collect(),
            observed,
        }
    }

    fn decide(f: &Fixture) -> Decision {
        let (flavour, w) = f
            .resources
            .iter()
            .find_map(|r| match r {
                Resource::Machine(w) => Some((Kind::Machine, w)),
                Resource::Container(w) => Some((Kind::Container, w)),
                _ => None,
            })
            .unwrap();
        let apps: Vec<PreparedApp> = f
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::Application(a) => Some(PreparedApp::from(a.clone())),
                _ => None,
            })
            .collect();
        plan(
            flavour,
            w,
            |n| apps.iter().find(|a| a.metadata.name == n),
            |_| Vec::new(),
            &f.observed,
            &ProfileNames::default(),
        )
    }

    fn machine(spec: &str) -> String {
        format!(
            "{APPS}apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '0', namespace: m}}\nspec: {spec}\n"
        )
    }

    fn act(d: Decision) -> Plan {
        match d {
            Decision::Act(p) => p,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_machine_gets_its_profiles_created_then_one_list_write() {
        let f = fixture(
            &machine("{instance: i0, applications: [one]}"),
            &["default"],
            &[("default", "false", false)],
        );
        let p = act(decide(&f));
        let kinds: Vec<String> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::CreateProfile { name, .. } => format!("create {name}"),
                Step::ReplaceProfile { name, .. } => format!("replace {name}"),
                Step::SetProfiles { profiles, .. } => format!("set {}", profiles.join(",")),
                Step::DeleteProfile { name } => format!("delete {name}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "create juju-m",
                "create juju-m-one-3",
                "set default,juju-m,juju-m-one-3"
            ]
        );
        match &p.steps[0] {
            Step::CreateProfile { content, .. } => {
                assert_eq!(content.config["boot.autostart"], "true");
                assert_eq!(content.config["security.nesting"], "true");
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn in_sync_means_an_empty_plan() {
        let f = fixture(
            &machine("{instance: i0, applications: [one]}"),
            &["default", "juju-m", "juju-m-one-3"],
            &[
                ("default", "false", false),
                ("juju-m", "true", true),
                ("juju-m-one-3", "true", true),
            ],
        );
        assert!(act(decide(&f)).is_empty());
    }

    #[test]
    fn order_matters_a_reordered_list_is_drift() {
        let f = fixture(
            &machine("{instance: i0, applications: [one]}"),
            &["default", "juju-m-one-3", "juju-m"],
            &[
                ("default", "false", false),
                ("juju-m", "true", true),
                ("juju-m-one-3", "true", true),
            ],
        );
        let p = act(decide(&f));
        assert_eq!(p.steps.len(), 1);
        assert!(p.list_differs());
        assert_eq!(
            p.describe(),
            "instance profiles [default, juju-m-one-3, juju-m] != expected [default, juju-m, juju-m-one-3]"
        );
    }

    #[test]
    fn owned_profile_content_drift_is_rewritten_but_a_foreign_one_is_left_alone() {
        let yaml = machine("{instance: i0, applications: [one]}");
        let list = ["default", "juju-m", "juju-m-one-3"];
        let f = fixture(
            &yaml,
            &list,
            &[("juju-m", "true", true), ("juju-m-one-3", "false", true)],
        );
        let p = act(decide(&f));
        assert_eq!(p.rewritten().collect::<Vec<_>>(), vec!["juju-m-one-3"]);
        let f = fixture(
            &yaml,
            &list,
            &[("juju-m", "true", true), ("juju-m-one-3", "false", false)],
        );
        let p = act(decide(&f));
        assert!(p.is_empty());
        assert_eq!(p.foreign, vec!["juju-m-one-3"]);
    }

    #[test]
    fn a_foreign_profile_that_differs_is_never_attached() {
        // A new revision whose profile an operator made by hand, with other content.
        let f = fixture(
            &machine("{instance: i0, applications: [one]}"),
            &["default", "juju-m"],
            &[("juju-m", "true", true), ("juju-m-one-3", "false", false)],
        );
        let p = act(decide(&f));
        assert_eq!(p.steps, vec![]);
        assert_eq!(p.foreign, vec!["juju-m-one-3"]);
        // The same content without the owner key (Juju made it): used as it is.
        let f = fixture(
            &machine("{instance: i0, applications: [one]}"),
            &["default", "juju-m"],
            &[("juju-m", "true", true), ("juju-m-one-3", "true", false)],
        );
        let p = act(decide(&f));
        assert!(p.foreign.is_empty());
        assert!(matches!(p.steps.as_slice(), [Step::SetProfiles { .. }]));
    }

    #[test]
    fn the_model_profile_is_never_rewritten() {
        let f = fixture(
            &machine("{instance: i0, applications: []}"),
            &["default", "juju-m"],
            &[("juju-m", "false", true)],
        );
        assert!(act(decide(&f)).is_empty());
    }

    #[test]
    fn dead_and_manual_are_skipped_and_no_instance_is_pending() {
        let f = fixture(&machine("{instance: i0, life: dead}"), &[], &[]);
        assert!(matches!(decide(&f), Decision::Skip(_)));
        let f = fixture(&machine("{instance: i0, manual: true}"), &[], &[]);
        assert!(matches!(decide(&f), Decision::Skip(_)));
        let f = fixture(&machine("{applications: [one]}"), &[], &[]);
        assert_eq!(decide(&f), Decision::Pending);
    }

    #[test]
    fn a_missing_application_or_instance_is_reported() {
        let f = fixture(&machine("{instance: i0, applications: [ghost]}"), &[], &[]);
        assert_eq!(
            decide(&f),
            Decision::Invalid("application \"ghost\" not found in model \"m\"".into())
        );
        let f = fixture(&machine("{instance: other, applications: []}"), &[], &[]);
        assert_eq!(decide(&f), Decision::UnknownInstance("other".into()));
    }
}
