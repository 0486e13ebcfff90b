//! The expected profile list of an instance (SPEC §3), as a pure function.

use std::borrow::Cow;

use crate::lxd::ProfileContent;
use crate::resource::{Kind, LxdProfile, ProfileNames, Workload};
use crate::store::{PackedContent, PreparedApp};

/// A charm profile the instance needs: its name, and the application whose profile it
/// must hold (borrowed: a plan over the fleet copies no profile content; `content()`
/// makes the owned copy a write needs).
#[derive(Clone, Debug)]
pub struct CharmProfile<'a> {
    /// Borrowed from the application, which renders it once.
    pub name: Cow<'a, str>,
    app: &'a PreparedApp,
    /// The content, packed as the observed state holds LXD's.
    packed: &'a PackedContent,
    /// The application and revision it is made for (recorded on it).
    pub application: &'a str,
    pub revision: u64,
}

impl CharmProfile<'_> {
    /// The content the controller writes, owner key excluded.
    pub fn content(&self) -> ProfileContent {
        self.app
            .lxd_profile()
            .map(charm_content)
            .unwrap_or_default()
    }

    /// Whether `content` (a profile in LXD, owner key excluded) is this one's.
    pub fn is_held_by(&self, content: &PackedContent) -> bool {
        content == self.packed
    }
}

/// The instance's expected profile list, in order, and what it needs to exist.
#[derive(Clone, Debug)]
pub struct ExpectedProfiles<'a> {
    pub list: Vec<String>,
    /// The model profile, for a Machine (`juju-{model}`): created if missing.
    pub model_profile: Option<String>,
    pub charm_profiles: Vec<CharmProfile<'a>>,
}

/// Why an instance has no expected list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpectedError {
    #[error("application {0:?} not found in model {1:?}")]
    MissingApplication(String, String),
    /// A charm profile breaks Juju's rules (SPEC §4) and the application is not forced.
    #[error("{0}")]
    InvalidProfile(String),
    #[error("{0}")]
    InvalidName(String),
}

/// The content the controller writes for a charm profile, owner key excluded.
pub fn charm_content(p: &LxdProfile) -> ProfileContent {
    ProfileContent {
        description: p.description.clone(),
        config: p.config.clone(),
        devices: p.devices.clone(),
    }
}

/// Juju's content for the model profile.
pub fn model_profile_content() -> ProfileContent {
    let mut c = ProfileContent::default();
    c.config.insert("boot.autostart".into(), "true".into());
    c.config.insert("security.nesting".into(), "true".into());
    c
}

/// Base profiles (`default`, then `juju-{model}` for a Machine), then `extraProfiles`,
/// then the charm profile of each application whose profile is not empty, in list
/// order; duplicates dropped, the first kept.
pub fn expected_profiles<'a>(
    flavour: Kind,
    workload: &'a Workload,
    application: impl Fn(&str) -> Option<&'a PreparedApp>,
    subordinates: impl Fn(&str) -> Vec<&'a PreparedApp>,
    names: &ProfileNames,
) -> Result<ExpectedProfiles<'a>, ExpectedError> {
    let model = &workload.metadata.namespace;
    let spec = &workload.spec;
    let mut list: Vec<String> =
        Vec::with_capacity(2 + spec.extra_profiles.len() + spec.applications.len());
    list.push("default".into());
    let model_profile = (flavour == Kind::Machine).then(|| names.model_profile(model));
    list.extend(model_profile.clone());
    for p in &spec.extra_profiles {
        push_new(&mut list, p);
    }
    let mut charm_profiles: Vec<CharmProfile<'a>> = Vec::with_capacity(spec.applications.len());
    // Each application in list order, each followed by its subordinates (Juju counts a
    // subordinate's unit on its principal's machine): right after the first principal.
    // Each with its name as the workload spells it (equal to the application's own, and
    // already in the cache: a plan reads nothing of the application but its packed
    // profile and revision).
    let mut running: Vec<(&'a str, &'a PreparedApp)> = Vec::with_capacity(spec.applications.len());
    for app_name in &spec.applications {
        let app = application(app_name)
            .ok_or_else(|| ExpectedError::MissingApplication(app_name.clone(), model.clone()))?;
        running.push((app_name, app));
        let mut subs = subordinates(app_name);
        subs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        running.extend(subs.into_iter().map(|s| (s.metadata.name.as_str(), s)));
    }
    for (app_name, app) in running {
        let packed = match app.charm_profile() {
            None => continue,
            Some(Ok(p)) => p,
            Some(Err(why)) => {
                return Err(ExpectedError::InvalidProfile(format!(
                    "application {app_name:?}: {why}"
                )));
            }
        };
        debug_assert!(
            app.metadata.name == app_name && app.metadata.namespace == *model,
            "an application is looked up by the name and namespace its users spell"
        );
        let name = app
            .charm_profile_name(names)
            .map_err(ExpectedError::InvalidName)?;
        if charm_profiles.iter().any(|c| c.name == name) {
            continue;
        }
        push_new(&mut list, &name);
        charm_profiles.push(CharmProfile {
            name,
            app,
            packed,
            application: app_name,
            revision: app.revision(),
        });
    }
    Ok(ExpectedProfiles {
        list,
        model_profile,
        charm_profiles,
    })
}

/// Appends `name` unless the list holds it (the first one is kept). A linear look: the
/// lists are a handful of names.
fn push_new(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, parse_str};

    fn load(yaml: &str) -> Vec<Resource> {
        let p = parse_str("t.yaml", yaml);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.resources.into_iter().map(|l| l.resource).collect()
    }

    fn expect(yaml: &str) -> Result<Vec<String>, ExpectedError> {
        let rs = load(yaml);
        let apps: Vec<PreparedApp> = rs
            .iter()
            .filter_map(|r| match r {
                Resource::Application(a) => Some(PreparedApp::from(a.clone())),
                _ => None,
            })
            .collect();
        let (flavour, w) = rs
            .iter()
            .find_map(|r| match r {
                Resource::Machine(w) => Some((Kind::Machine, w)),
                Resource::Container(w) => Some((Kind::Container, w)),
                _ => None,
            })
            .unwrap();
        expected_profiles(
            flavour,
            w,
            |n| apps.iter().find(|a| a.metadata.name == n),
            |p| {
                apps.iter()
                    .filter(|a| a.spec.subordinate_to.iter().any(|s| s == p))
                    .collect()
            },
            &ProfileNames::default(),
        )
        .map(|e| e.list)
    }

    const APPS: &str = "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one, namespace: m}\nspec: {revision: 3, lxdProfile: {config: {security.nesting: true}}}\n---\napiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: two, namespace: m}\nspec: {revision: 5, lxdProfile: {devices: {tun: {type: unix-char, path: /dev/net/tun}}}}\n---\napiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: none, namespace: m}\nspec: {revision: 1}\n---\napiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: empty, namespace: m}\nspec: {revision: 1, lxdProfile: {description: nothing, config: {}}}\n---\n";

    fn machine(spec: &str) -> String {
        format!(
            "{APPS}apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '0', namespace: m}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn machine_base_is_default_then_model_then_extras_then_charms_in_order() {
        assert_eq!(
            expect(&machine("{applications: [two, one], extraProfiles: [ops]}")).unwrap(),
            vec!["default", "juju-m", "ops", "juju-m-two-5", "juju-m-one-3"]
        );
    }

    #[test]
    fn a_subordinate_profile_follows_its_first_principal_on_the_machine() {
        let sub = |to: &str| {
            format!(
                "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: tel, namespace: m}}\nspec: {{revision: 2, subordinate: true, subordinateTo: [{to}], lxdProfile: {{config: {{security.privileged: true}}}}}}\n---\n"
            )
        };
        let on = |to: &str, apps: &str| {
            expect(&(sub(to) + &machine(&format!("{{applications: [{apps}]}}")))).unwrap()
        };
        assert_eq!(
            on("two, one", "one, two"),
            [
                "default",
                "juju-m",
                "juju-m-one-3",
                "juju-m-tel-2",
                "juju-m-two-5"
            ]
        );
        // Listed as well: once, where its first principal puts it.
        assert_eq!(
            on("one", "two, one, tel"),
            [
                "default",
                "juju-m",
                "juju-m-two-5",
                "juju-m-one-3",
                "juju-m-tel-2"
            ]
        );
        // No principal here: not here.
        assert_eq!(on("none", "one"), ["default", "juju-m", "juju-m-one-3"]);
    }

    #[test]
    fn container_base_is_default_only() {
        let yaml = format!(
            "{APPS}apiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {{name: c, namespace: m}}\nspec: {{machine: '0', applications: [one]}}\n"
        );
        assert_eq!(expect(&yaml).unwrap(), vec!["default", "juju-m-one-3"]);
    }

    #[test]
    fn applications_without_or_with_empty_profiles_add_nothing() {
        assert_eq!(
            expect(&machine("{applications: [none, empty, one]}")).unwrap(),
            vec!["default", "juju-m", "juju-m-one-3"]
        );
    }

    #[test]
    fn duplicates_are_dropped_keeping_the_first() {
        assert_eq!(
            expect(&machine(
                "{applications: [one, two, one], extraProfiles: [default, x, x]}"
            ))
            .unwrap(),
            vec!["default", "juju-m", "x", "juju-m-one-3", "juju-m-two-5"]
        );
    }

    #[test]
    fn a_missing_application_is_an_error() {
        assert_eq!(
            expect(&machine("{applications: [one, ghost]}")),
            Err(ExpectedError::MissingApplication(
                "ghost".into(),
                "m".into()
            ))
        );
    }

    #[test]
    fn a_profile_that_breaks_the_rules_is_an_error_unless_forced() {
        let bad = APPS.replace(
            "{config: {security.nesting: true}}",
            "{config: {limits.cpu: '2'}}",
        );
        let yaml = format!(
            "{bad}apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '0', namespace: m}}\nspec: {{applications: [one]}}\n"
        );
        assert_eq!(
            expect(&yaml),
            Err(ExpectedError::InvalidProfile(
                "application \"one\": invalid lxd-profile: contains config value \"limits.cpu\""
                    .into()
            ))
        );
        let forced = yaml.replace("spec: {revision: 3,", "spec: {force: true, revision: 3,");
        assert_eq!(
            expect(&forced).unwrap(),
            vec!["default", "juju-m", "juju-m-one-3"]
        );
    }
}
