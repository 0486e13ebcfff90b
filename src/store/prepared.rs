//! An Application as the desired state holds it: with what every plan needs of its charm
//! profile worked out once, when the application is loaded, instead of once per machine
//! that runs it. A plan then reads one packed buffer per charm profile, not the
//! application's maps (at 20,000 machines those are out of the CPU's cache: each plan
//! paid for walking them twice, once for Juju's rules and once to compare with LXD).

use std::ops::Deref;
use std::sync::Arc;

use crate::resource::{Application, LxdProfile, profile::check_rules};
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
