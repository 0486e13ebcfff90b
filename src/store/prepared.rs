//! An Application as the desired state holds it: with what every plan needs of its charm
//! profile worked out once, when the application is loaded, instead of once per machine
//! that runs it. A plan then reads one packed buffer per charm profile, not the
//! application's maps (at 20,000 machines those are out of the CPU's cache: each plan
//! paid for walking them twice, once for Juju's rules and once to compare with LXD).

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use crate::resource::names::check_profile_name;
use crate::resource::{Application, LxdProfile, ProfileNames, profile::check_rules};
use crate::store::PackedContent;

#[derive(Debug)]
pub struct PreparedApp {
    /// Apart, not inline: what a plan reads (revision, packed content) then shares one
    /// cache line instead of trailing a few hundred bytes of application (inline measured
    /// slower at 20,000 machines).
    app: Arc<Application>,
    /// The application's revision, beside the packed content: a plan reads both and
    /// nothing else of the application.
    revision: u64,
    charm: Charm,
    /// The charm profile's name, rendered and checked the first time a plan asks (the
    /// template is the controller's, not the application's). Rendering it for every
    /// machine was a third of a plan's instructions.
    charm_name: OnceLock<CharmName>,
}

/// A charm profile name and the template it was rendered with.
#[derive(Debug)]
struct CharmName {
    template: Box<str>,
    /// `Err` when the name breaks LXD's rules for a profile name.
    name: Result<Box<str>, String>,
}

#[derive(Debug)]
enum Charm {
    /// No profile, or an empty one: no charm profile.
    None,
    /// Breaks Juju's rules and is not forced: every violation, joined.
    Breaks(String),
    Packed(PackedContent),
}

impl PreparedApp {
    pub fn new(app: Arc<Application>) -> PreparedApp {
        let charm = match app.spec.lxd_profile.as_ref().filter(|p| !p.is_empty()) {
            None => Charm::None,
            Some(p) => {
                let violations = if app.spec.force {
                    vec![]
                } else {
                    check_rules(p)
                };
                if violations.is_empty() {
                    Charm::Packed(PackedContent::of_parts(
                        &p.description,
                        &p.config,
                        &p.devices,
                    ))
                } else {
                    let all: Vec<String> = violations.into_iter().map(|v| v.message).collect();
                    Charm::Breaks(all.join("; "))
                }
            }
        };
        PreparedApp {
            revision: app.spec.revision,
            app,
            charm,
            charm_name: OnceLock::new(),
        }
    }

    /// The name of this application's charm profile under `names` (its own namespace,
    /// name and revision: callers look it up by the name and namespace a workload
    /// spells, which are these), or why that name is not a valid profile name. Borrowed
    /// from the cache when `names` is the template it holds (a controller has one).
    pub fn charm_profile_name(&self, names: &ProfileNames) -> Result<Cow<'_, str>, String> {
        let render = || {
            let name =
                names.charm_profile(&self.metadata.namespace, &self.metadata.name, self.revision);
            check_profile_name(&name).map(|()| name)
        };
        let cached = self.charm_name.get_or_init(|| CharmName {
            template: names.charm_template().into(),
            name: render().map(String::into_boxed_str),
        });
        if *cached.template == *names.charm_template() {
            match &cached.name {
                Ok(name) => Ok(Cow::Borrowed(name)),
                Err(why) => Err(why.clone()),
            }
        } else {
            render().map(Cow::Owned)
        }
    }

    /// The charm profile this application needs, as LXD must hold it (packed); `None` if
    /// it has no profile (or an empty one); `Err` with every rule it breaks if it breaks
    /// Juju's rules and is not forced.
    pub fn charm_profile(&self) -> Option<Result<&PackedContent, &str>> {
        match &self.charm {
            Charm::None => None,
            Charm::Breaks(why) => Some(Err(why)),
            Charm::Packed(packed) => Some(Ok(packed)),
        }
    }

    /// The profile as the application spells it (for a write).
    pub fn lxd_profile(&self) -> Option<&LxdProfile> {
        self.app.spec.lxd_profile.as_ref()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }
}

impl Deref for PreparedApp {
    type Target = Application;

    fn deref(&self) -> &Application {
        &self.app
    }
}

impl From<Application> for PreparedApp {
    fn from(app: Application) -> PreparedApp {
        PreparedApp::new(Arc::new(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, parse_str};

    fn app(name: &str) -> PreparedApp {
        let yaml = format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: {name}, namespace: m}}\nspec: {{revision: 7, lxdProfile: {{config: {{security.nesting: true}}}}}}\n"
        );
        match parse_str("t.yaml", &yaml)
            .resources
            .pop()
            .map(|l| l.resource)
        {
            Some(Resource::Application(a)) => PreparedApp::from(a),
            other => panic!("not an application: {other:?}"),
        }
    }

    #[test]
    fn the_charm_profile_name_follows_the_template_it_is_asked_with() {
        let a = app("db");
        let default = ProfileNames::default();
        let short = ProfileNames::new("juju-{model}-1a2b3c-{app}-{rev}", "juju-{model}").unwrap();
        assert_eq!(a.charm_profile_name(&default).unwrap(), "juju-m-db-7");
        // Cached for the first template, rendered anew for another, cached still.
        assert_eq!(a.charm_profile_name(&short).unwrap(), "juju-m-1a2b3c-db-7");
        assert!(matches!(
            a.charm_profile_name(&default),
            Ok(Cow::Borrowed("juju-m-db-7"))
        ));
    }

    #[test]
    fn a_charm_profile_name_lxd_refuses_is_an_error_every_time() {
        let a = app("db");
        let long = "x".repeat(crate::resource::names::MAX_PROFILE_NAME);
        let names = ProfileNames::new(&format!("{long}-{{model}}-{{app}}-{{rev}}"), "juju-{model}")
            .unwrap();
        let first = a.charm_profile_name(&names).unwrap_err();
        assert!(first.contains("bytes long"), "{first}");
        assert_eq!(a.charm_profile_name(&names).unwrap_err(), first);
    }
}
