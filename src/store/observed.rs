//! The observed LXD state: instance profile lists and profiles, as last listed or written.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

// tokio's clock, so that a paused test clock ages the expected echoes.
use tokio::time::Instant;

use crate::lxd::{Instance, Profile, ProfileContent};

/// Profiles the controller creates carry this config key; it never rewrites or deletes a
/// profile without it, and ignores it when comparing content.
pub const OWNER_KEY: &str = "user.lxd-mutater.owner";
pub const OWNER_VALUE: &str = "lxd-mutater";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedProfile {
    /// The content, without the owner key.
    pub content: ProfileContent,
    pub owned: bool,
    /// Instances that use the profile.
    pub used_by: BTreeSet<String>,
}

impl ObservedProfile {
    fn from_lxd(p: Profile) -> (String, ObservedProfile) {
        let used_by = p.used_by_instances().map(str::to_string).collect();
        let mut content = p.content;
        let owned = content.config.remove(OWNER_KEY).is_some();
        (
            p.name,
            ObservedProfile {
                content,
                owned,
                used_by,
            },
        )
    }
}

/// An LXD object an event can be about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    Instance(String),
    Profile(String),
}

/// How long an expected echo of our own write is waited for. LXD sends the event while
/// the request runs; an echo that never came must not swallow a later, real change.
const ECHO_TTL: Duration = Duration::from_secs(5);

/// What LXD holds, as far as the controller knows.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    instances: HashMap<String, Vec<String>>,
    profiles: HashMap<String, ObservedProfile>,
    listed: bool,
    /// Events our own writes will cause: they need no read-back (the write already
    /// updated this cache).
    echoes: HashMap<Object, Vec<Instant>>,
}

impl Observed {
    /// Replaces everything with a full listing.
    pub fn replace(&mut self, instances: Vec<Instance>, profiles: Vec<Profile>) {
        self.instances = instances
            .into_iter()
            .map(|i| (i.name, i.profiles))
            .collect();
        self.profiles = profiles
            .into_iter()
            .map(ObservedProfile::from_lxd)
            .collect();
        self.listed = true;
    }

    /// A write that LXD will announce with one lifecycle event is about to be sent.
    pub fn expect_echo(&mut self, object: Object) {
        self.echoes.entry(object).or_default().push(Instant::now());
    }

    /// The write failed and LXD will announce nothing.
    pub fn cancel_echo(&mut self, object: &Object) {
        if let Some(v) = self.echoes.get_mut(object) {
            v.pop();
        }
    }

    /// An event about `object` arrived: whether it is the echo of our own write (and is
    /// consumed).
    pub fn take_echo(&mut self, object: &Object) -> bool {
        let Some(v) = self.echoes.get_mut(object) else {
            return false;
        };
        let now = Instant::now();
        v.retain(|at| now.duration_since(*at) < ECHO_TTL);
        let found = !v.is_empty();
        if found {
            v.remove(0);
        }
        if v.is_empty() {
            self.echoes.remove(object);
        }
        found
    }

    /// Events may have been lost (a reconnect): expected echoes mean nothing any more.
    pub fn forget_echoes(&mut self) {
        self.echoes.clear();
    }

    /// Whether a full listing has been loaded (no deletion before it).
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    pub fn instance_profiles(&self, instance: &str) -> Option<&[String]> {
        self.instances.get(instance).map(Vec::as_slice)
    }

    pub fn profile(&self, name: &str) -> Option<&ObservedProfile> {
        self.profiles.get(name)
    }

    pub fn profiles(&self) -> impl Iterator<Item = (&String, &ObservedProfile)> {
        self.profiles.iter()
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// An instance's profile list was set (by us, or seen in an event or a GET).
    pub fn set_instance_profiles(&mut self, instance: &str, profiles: &[String]) {
        if let Some(old) = self.instances.get(instance) {
            for p in old {
                if let Some(op) = self.profiles.get_mut(p) {
                    op.used_by.remove(instance);
                }
            }
        }
        for p in profiles {
            if let Some(op) = self.profiles.get_mut(p) {
                op.used_by.insert(instance.to_string());
            }
        }
        self.instances
            .insert(instance.to_string(), profiles.to_vec());
    }

    pub fn remove_instance(&mut self, instance: &str) {
        if let Some(old) = self.instances.remove(instance) {
            for p in old {
                if let Some(op) = self.profiles.get_mut(&p) {
                    op.used_by.remove(instance);
                }
            }
        }
    }

    /// A profile was created or its content replaced (content without the owner key).
    pub fn set_profile(&mut self, name: &str, content: ProfileContent, owned: bool) {
        let used_by = self
            .instances
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| p == name))
            .map(|(i, _)| i.clone())
            .collect();
        self.profiles.insert(
            name.to_string(),
            ObservedProfile {
                content,
                owned,
                used_by,
            },
        );
    }

    /// A profile read from LXD (an event or a GET).
    pub fn put_lxd_profile(&mut self, p: Profile) {
        let (name, op) = ObservedProfile::from_lxd(p);
        self.profiles.insert(name, op);
    }

    pub fn remove_profile(&mut self, name: &str) {
        self.profiles.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, owned: bool, used_by: &[&str]) -> Profile {
        crate::testing::lxd_profile(name, owned, used_by)
    }

    #[test]
    fn an_echo_is_taken_once_and_a_cancelled_one_not_at_all() {
        let mut o = Observed::default();
        let i = Object::Instance("i".into());
        o.expect_echo(i.clone());
        o.expect_echo(i.clone());
        o.cancel_echo(&i);
        assert!(o.take_echo(&i));
        assert!(!o.take_echo(&i), "the next event is a real change");
        assert!(!o.take_echo(&Object::Profile("i".into())));
    }

    #[test]
    fn owner_key_is_recognised_and_left_out_of_the_content() {
        let mut o = Observed::default();
        o.replace(
            vec![],
            vec![profile("a", true, &[]), profile("b", false, &["i"])],
        );
        assert!(o.profile("a").unwrap().owned);
        assert!(!o.profile("b").unwrap().owned);
        assert!(
            !o.profile("a")
                .unwrap()
                .content
                .config
                .contains_key(OWNER_KEY)
        );
        assert_eq!(o.profile("b").unwrap().used_by.len(), 1);
    }

    #[test]
    fn our_own_writes_keep_used_by_true() {
        let mut o = Observed::default();
        let i = Instance {
            name: "i".into(),
            profiles: vec!["default".into(), "a".into()],
            status: String::new(),
        };
        o.replace(
            vec![i],
            vec![
                profile("default", false, &["i"]),
                profile("a", true, &["i"]),
            ],
        );
        o.set_instance_profiles("i", &["default".into()]);
        assert!(o.profile("a").unwrap().used_by.is_empty());
        o.set_profile("b", ProfileContent::default(), true);
        o.set_instance_profiles("i", &["default".into(), "b".into()]);
        assert_eq!(o.profile("b").unwrap().used_by.len(), 1);
        o.remove_instance("i");
        assert!(o.profile("b").unwrap().used_by.is_empty());
    }
}
