//! `collect(desired, observed) -> Cleanup`: pure. Which owned charm profiles nothing
//! expects any more and LXD reports unused: `DeleteProfile` steps that only `apply`
//! carries out, and that `diff` shows.
//!
//! The caller plans a clean-up only once both the whole desired state and a full LXD
//! listing are loaded: never on a partial view.

use std::collections::HashSet;
use std::fmt;

use crate::resource::ProfileNames;
use crate::store::Observed;

use super::plan::Step;

/// Deletions of unused owned profiles, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub steps: Vec<Step>,
}

impl Cleanup {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            if let Step::DeleteProfile { name } = s {
                writeln!(
                    f,
                    "  - delete profile {name} (owned, unused, expected by no resource)"
                )?;
            }
        }
        Ok(())
    }
}

/// Plans the deletion of every profile that is owned (its recorded owner is this
/// controller), a charm profile or a model profile by its recorded identity, used by no
/// instance and expected by no resource (`expected`: every charm profile any
/// resource expects, whatever the flavour: another host's containers still need theirs).
/// With `namespace` (a controller of one namespace), only the charm profiles recorded
/// for that namespace: controllers of other namespaces on the same LXD keep theirs, even
/// when one namespace's name is a prefix of another's (`m`, `m-x`).
pub fn collect(
    observed: &Observed,
    expected: &HashSet<String>,
    names: &ProfileNames,
    namespace: Option<&str>,
) -> Cleanup {
    let mut doomed: Vec<String> = observed
        .profiles()
        .filter(|(name, p)| {
            let ours = match (&p.stamp.application, &p.stamp.namespace) {
                // Recorded identity: a charm profile of this namespace.
                (Some(_), Some(recorded)) => namespace.is_none_or(|ns| ns == recorded),
                // The model profile it created for a namespace (Juju leaves it behind,
                // juju/juju#20149): once no Machine or Container of that namespace remains.
                (None, Some(recorded)) => {
                    names.model_profile(recorded) == **name
                        && namespace.is_none_or(|ns| ns == recorded)
                }
                // Made before identities were recorded: only the name can tell.
                _ => {
                    names.is_charm_profile(name)
                        && namespace.is_none_or(|ns| names.parse_charm_profile(name, ns).is_some())
                }
            };
            p.owned && p.used_by.is_empty() && !expected.contains(*name) && ours
        })
        .map(|(name, _)| name.to_string())
        .collect();
    doomed.sort();
    Cleanup {
        steps: doomed
            .into_iter()
            .map(|name| Step::DeleteProfile { name })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lxd::Profile;

    fn profile(name: &str, owned: bool, used_by: &[&str]) -> Profile {
        crate::testing::lxd_profile(name, owned, used_by)
    }

    fn observed(profiles: Vec<Profile>) -> Observed {
        let mut o = Observed::default();
        o.replace(vec![], profiles);
        o
    }

    fn names(c: &Cleanup) -> Vec<&str> {
        c.steps
            .iter()
            .filter_map(|s| match s {
                Step::DeleteProfile { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_owned_unused_unexpected_charm_profiles_are_deleted() {
        let o = observed(vec![
            profile("juju-m-b-1", true, &[]),
            profile("juju-m-a-1", true, &[]),
            profile("juju-m-a-2", true, &[]),
            profile("juju-m-used-1", true, &["i0"]),
            profile("juju-m-theirs-1", false, &[]),
            profile("juju-m", true, &[]),
            profile("ops", true, &[]),
        ]);
        let expected: HashSet<String> = ["juju-m-a-2".to_string()].into();
        let c = collect(&o, &expected, &ProfileNames::default(), None);
        assert_eq!(names(&c), ["juju-m-a-1", "juju-m-b-1"]);
    }

    #[test]
    fn a_namespaced_controller_collects_only_its_namespace() {
        let o = observed(vec![
            profile("juju-m-a-1", true, &[]),
            profile("juju-other-a-1", true, &[]),
        ]);
        let c = collect(&o, &HashSet::new(), &ProfileNames::default(), Some("m"));
        assert_eq!(names(&c), ["juju-m-a-1"]);
    }

    #[test]
    fn the_model_profile_it_made_goes_with_the_last_resource_of_its_namespace() {
        let mut made = profile("juju-m", true, &[]);
        made.content
            .config
            .insert(crate::store::observed::NAMESPACE_KEY.into(), "m".into());
        let mut jujus = profile("juju-n", false, &[]);
        jujus
            .content
            .config
            .insert(crate::store::observed::NAMESPACE_KEY.into(), "n".into());
        let o = observed(vec![made, jujus]);
        let none = HashSet::new();
        assert_eq!(
            names(&collect(&o, &none, &ProfileNames::default(), None)),
            ["juju-m"]
        );
        // Still expected while a resource of the namespace remains.
        let in_use: HashSet<String> = ["juju-m".to_string()].into();
        assert!(collect(&o, &in_use, &ProfileNames::default(), None).is_empty());
    }

    #[test]
    fn the_plan_says_what_it_deletes() {
        let o = observed(vec![profile("juju-m-a-1", true, &[])]);
        let c = collect(&o, &HashSet::new(), &ProfileNames::default(), None);
        assert_eq!(
            c.to_string(),
            "  - delete profile juju-m-a-1 (owned, unused, expected by no resource)\n"
        );
    }
}
