//! The observed LXD state: instance profile lists and profiles, as last listed or written.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so that a paused test clock ages the expected echoes.
use tokio::time::Instant;

use crate::hash::{HashMap, HashSet};
use crate::lxd::{Instance, Profile, ProfileContent};
use crate::store::PackedContent;

/// Every key the controller records on LXD objects starts with this; such keys are not
/// content, and a resource may not set them (`resource::profile::RESERVED_PREFIX`).
pub use crate::resource::profile::RESERVED_PREFIX;

/// The controller that made a profile, or claims an instance: `--owner`. It never
/// rewrites or deletes a profile, nor touches an instance, whose owner is another.
pub const OWNER_KEY: &str = "user.lxd-mutater.owner";
/// The default `--owner`.
pub const OWNER_VALUE: &str = "lxd-mutater";
/// On a profile: the namespace (model) it was made for.
pub const NAMESPACE_KEY: &str = "user.lxd-mutater.namespace";
/// On a charm profile: the application and revision it was made for.
pub const APPLICATION_KEY: &str = "user.lxd-mutater.application";
pub const REVISION_KEY: &str = "user.lxd-mutater.revision";
/// On an instance: the resource that manages it (`Machine/m/0`), beside its owner.
pub const RESOURCE_KEY: &str = "user.lxd-mutater.resource";

/// Who made a profile and for what, as recorded on it: ownership is decided by these
/// values, not by parsing the profile's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub owner: Option<String>,
    pub namespace: Option<String>,
    pub application: Option<String>,
    pub revision: Option<u64>,
}

impl Stamp {
    /// Takes the record out of a profile's config (what is left is the content).
    fn take(config: &mut std::collections::BTreeMap<String, String>) -> Stamp {
        let stamp = Stamp {
            owner: config.get(OWNER_KEY).cloned(),
            namespace: config.get(NAMESPACE_KEY).cloned(),
            application: config.get(APPLICATION_KEY).cloned(),
            revision: config.get(REVISION_KEY).and_then(|r| r.parse().ok()),
        };
        config.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
        stamp
    }

    /// `content` as written to LXD: with the record.
    pub fn on(&self, content: &ProfileContent) -> ProfileContent {
        let mut c = content.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                c.config.insert(k.into(), v);
            }
        };
        put(OWNER_KEY, self.owner.clone());
        put(NAMESPACE_KEY, self.namespace.clone());
        put(APPLICATION_KEY, self.application.clone());
        put(REVISION_KEY, self.revision.map(|r| r.to_string()));
        c
    }
}

/// The resource an instance is claimed by, as recorded on it. Every instance of a fleet
/// has one, and they name one owner: the cache holds that name once (`Names`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: Arc<str>,
    pub resource: Box<str>,
}

impl Claim {
    fn of(config: &[(String, String)]) -> Option<Claim> {
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        Some(Claim {
            owner: get(OWNER_KEY)?.into(),
            resource: get(RESOURCE_KEY).unwrap_or_default().into(),
        })
    }

    /// The config keys that record it, for the PATCH that sets the instance's profiles.
    pub fn config(&self) -> std::collections::BTreeMap<String, String> {
        [
            (OWNER_KEY.to_string(), self.owner.to_string()),
            (RESOURCE_KEY.to_string(), self.resource.to_string()),
        ]
        .into()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedProfile {
    /// The content, without the controller's record.
    pub content: PackedContent,
    pub stamp: Stamp,
    /// Made by this controller (its `--owner`).
    pub owned: bool,
    /// Instances that use the profile, ordered by address: a relisting asks, for each
    /// profile on each instance's list, whether the instance is in here (a `default`
    /// has the whole fleet), and ordered by text each question compared ~17 names, each
    /// a pointer to follow, at 100,000 (a set hashed by text read every name again
    /// each time it grew, and made a revision bump slower).
    pub used_by: BTreeSet<Interned>,
}

impl ObservedProfile {
    /// `p` as observed; of its users, those `known` says the caller has its own word on
    /// are left out.
    fn from_lxd(
        p: Profile,
        owner: &str,
        names: &mut Names,
        known: impl Fn(&str) -> bool,
    ) -> (String, ObservedProfile) {
        let used_by = (p.used_by_instances())
            .filter(|i| !known(i))
            .map(|i| Interned(names.get(i)))
            .collect();
        let mut content = p.content;
        let stamp = Stamp::take(&mut content.config);
        (
            p.name,
            ObservedProfile {
                content: PackedContent::of(&content),
                owned: stamp.owner.as_deref() == Some(owner),
                stamp,
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

/// A name from `Names`, compared and ordered by address: one copy per name, so the
/// same address is the same name, and a set of them never reads a name's text. The
/// order means nothing beyond this process; nothing shows it.
#[derive(Clone, Debug)]
pub struct Interned(Arc<str>);

impl PartialEq for Interned {
    fn eq(&self, other: &Interned) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Interned {}

impl Ord for Interned {
    fn cmp(&self, other: &Interned) -> std::cmp::Ordering {
        Arc::as_ptr(&self.0)
            .cast::<u8>()
            .cmp(&Arc::as_ptr(&other.0).cast::<u8>())
    }
}

impl PartialOrd for Interned {
    fn partial_cmp(&self, other: &Interned) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::ops::Deref for Interned {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Instance and profile names, one copy each: an instance's name is shared by its
/// entry, its claim and the `used_by` of each of its profiles, and a profile's name by
/// every instance list that holds it (a fleet has many instances and few profiles); the
/// owner of the claims likewise.
#[derive(Clone, Debug, Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(n.clone());
        n
    }

    fn list(&mut self, names: &[String]) -> Box<[Arc<str>]> {
        names.iter().map(|n| self.get(n)).collect()
    }

    /// Forgets the names nothing else holds now (each relisting).
    fn prune(&mut self) {
        self.0.retain(|n| Arc::strong_count(n) > 1);
    }
}

/// What a full listing has brought so far (`Observed::list_instance`).
#[derive(Debug, Default)]
pub struct Relisting {
    instances: HashSet<Arc<str>>,
    instances_done: bool,
    profiles: HashSet<String>,
}

impl Relisting {
    /// For a listing of about as many instances as `observed` holds: the set of those
    /// seen is made at its size once, not grown (and copied) as they come.
    pub fn like(observed: &Observed) -> Relisting {
        Relisting {
            instances: HashSet::with_capacity_and_hasher(
                observed.instances.len(),
                Default::default(),
            ),
            ..Relisting::default()
        }
    }
}

/// What LXD holds, as far as the controller knows.
#[derive(Clone, Debug)]
pub struct Observed {
    /// This controller's `--owner`.
    owner: String,
    instances: HashMap<Arc<str>, Box<[Arc<str>]>>,
    /// The claims recorded on instances.
    claims: HashMap<Arc<str>, Claim>,
    profiles: HashMap<Arc<str>, ObservedProfile>,
    listed: bool,
    /// Events our own writes will cause: they need no read-back (the write already
    /// updated this cache).
    echoes: HashMap<Object, Vec<Instant>>,
    names: Names,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed::with_owner(OWNER_VALUE)
    }
}

impl Observed {
    /// An empty cache for the controller `owner`.
    pub fn with_owner(owner: &str) -> Observed {
        Observed {
            owner: owner.to_string(),
            instances: HashMap::default(),
            claims: HashMap::default(),
            profiles: HashMap::default(),
            listed: false,
            echoes: HashMap::default(),
            names: Names::default(),
        }
    }

    /// This controller's `--owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Replaces everything with a full listing (`relisting` streams one in).
    pub fn replace(&mut self, instances: Vec<Instance>, profiles: Vec<Profile>) {
        let mut relisting = Relisting::default();
        for i in instances {
            self.list_instance(i, &mut relisting);
        }
        self.instances_listed(&mut relisting);
        for p in profiles {
            self.list_profile(p, &mut relisting);
        }
        self.profiles_listed(relisting);
    }

    // A relisting is merged into the state one object at a time, as the listing is read:
    // what did not change is left as it is (no copy of an in-sync fleet is made), and
    // neither the listing nor a second state is ever held whole. Instances first, then
    // profiles: an instance's own list is the truth for every instance the listing saw.

    /// One instance of a full listing.
    pub fn list_instance(&mut self, i: Instance, relisting: &mut Relisting) {
        let name = self.names.get(&i.name);
        let claim = Claim::of(&i.config);
        if self.claims.get(&name) != claim.as_ref() {
            match claim {
                Some(c) => self.set_claim(&i.name, c),
                None => {
                    self.claims.remove(&name);
                }
            };
        }
        let same = self.instances.get(&name).is_some_and(|old| {
            old.len() == i.profiles.len() && old.iter().zip(&i.profiles).all(|(a, b)| **a == **b)
        });
        if !same {
            self.set_instance_profiles(&i.name, &i.profiles);
        }
        relisting.instances.insert(name);
    }

    /// The instance listing is complete: the instances it did not have are gone.
    pub fn instances_listed(&mut self, relisting: &mut Relisting) {
        let gone: Vec<Arc<str>> = (self.instances.keys())
            .chain(self.claims.keys())
            .filter(|i| !relisting.instances.contains(*i))
            .cloned()
            .collect();
        for i in gone {
            self.remove_instance(&i);
        }
        // The names are held by the state now; the set goes before `profiles_listed`
        // counts who holds a name.
        relisting.instances = HashSet::default();
        relisting.instances_done = true;
    }

    /// One profile of a full listing, after the instances (`instances_listed`).
    pub fn list_profile(&mut self, p: Profile, relisting: &mut Relisting) {
        relisting.profiles.insert(p.name.clone());
        // The two listings are read at the same time, not atomically: an instance written
        // between them would count as a user of a profile it has just left (and that
        // profile would never be collected). The instances' own lists are the truth for
        // the instances the listing saw; `used_by` speaks only for the others (another
        // project's, when profiles are shared), and only those are taken from it.
        let instances = &self.instances;
        let listed = |i: &str| relisting.instances_done && instances.contains_key(i);
        let (name, mut op) = ObservedProfile::from_lxd(p, &self.owner, &mut self.names, listed);
        if let Some(old) = self.profiles.get_mut(&*name) {
            // Its users from the instances' lists are already right (`list_instance`);
            // those from the last listing's `used_by` are replaced by this one's.
            let mut used_by = std::mem::take(&mut old.used_by);
            used_by.retain(|u| {
                instances
                    .get(&**u)
                    .is_some_and(|list| list.iter().any(|n| **n == *name))
            });
            used_by.extend(std::mem::take(&mut op.used_by));
            op.used_by = used_by;
            *old = op;
        } else {
            self.profiles.insert(self.names.get(&name), op);
        }
    }

    /// The profile listing is complete: the profiles it did not have are gone, and every
    /// listed instance counts as a user of each profile on its list.
    pub fn profiles_listed(&mut self, relisting: Relisting) {
        self.profiles
            .retain(|name, _| relisting.profiles.contains(&**name));
        for (instance, list) in &self.instances {
            for p in list.iter() {
                if let Some(op) = self.profiles.get_mut(&**p)
                    && !op.used_by.contains(&Interned(instance.clone()))
                {
                    op.used_by.insert(Interned(instance.clone()));
                }
            }
        }
        self.names.prune();
        self.listed = true;
    }

    /// One instance read from LXD (an event's GET).
    pub fn put_instance(&mut self, i: &Instance) {
        match Claim::of(&i.config) {
            Some(c) => self.set_claim(&i.name, c),
            None => {
                self.claims.remove(i.name.as_str());
            }
        };
        self.set_instance_profiles(&i.name, &i.profiles);
    }

    /// The claim recorded on an instance.
    pub fn claim(&self, instance: &str) -> Option<&Claim> {
        self.claims.get(instance)
    }

    /// Our PATCH recorded `claim` on the instance.
    pub fn set_claim(&mut self, instance: &str, mut claim: Claim) {
        let name = self.names.get(instance);
        claim.owner = self.names.get(&claim.owner);
        self.claims.insert(name, claim);
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

    /// An event about `object`, `received` then, is being handled: whether it is the
    /// echo of our own write (and is consumed). An echo is expected for ECHO_TTL from the
    /// write to the event's arrival, however long the event then waited to be handled.
    pub fn take_echo(&mut self, object: &Object, received: Instant) -> bool {
        let Some(v) = self.echoes.get_mut(object) else {
            return false;
        };
        v.retain(|at| received.saturating_duration_since(*at) < ECHO_TTL);
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

    pub fn instance_profiles(&self, instance: &str) -> Option<&[Arc<str>]> {
        self.instances.get(instance).map(|l| &**l)
    }

    pub fn profile(&self, name: &str) -> Option<&ObservedProfile> {
        self.profiles.get(name)
    }

    pub fn profiles(&self) -> impl Iterator<Item = (&str, &ObservedProfile)> {
        self.profiles.iter().map(|(n, p)| (&**n, p))
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// An instance's profile list was set (by us, or seen in an event or a GET).
    /// Only the profiles that leave or join the list change their users: a fleet's
    /// `default` and model profile have every instance for a user, and taking the
    /// instance out of each and putting it back (a search of a 100,000-name set each)
    /// cost the full loop's revision bump 5.6 s of CPU against 4.8 s now.
    pub fn set_instance_profiles(&mut self, instance: &str, profiles: &[String]) {
        let name = Interned(self.names.get(instance));
        let old = self.instances.get(instance);
        let had = |p: &str| old.is_some_and(|o| o.iter().any(|q| **q == *p));
        for p in old.iter().flat_map(|o| o.iter()) {
            if !profiles.iter().any(|n| **n == **p)
                && let Some(op) = self.profiles.get_mut(&**p)
            {
                op.used_by.remove(&name);
            }
        }
        for p in profiles {
            if !had(p)
                && let Some(op) = self.profiles.get_mut(p.as_str())
            {
                op.used_by.insert(name.clone());
            }
        }
        let list = self.names.list(profiles);
        self.instances.insert(name.0, list);
    }

    pub fn remove_instance(&mut self, instance: &str) {
        self.claims.remove(instance);
        if let Some((name, old)) = self.instances.remove_entry(instance) {
            let name = Interned(name);
            for p in old.iter() {
                if let Some(op) = self.profiles.get_mut(&**p) {
                    op.used_by.remove(&name);
                }
            }
        }
    }

    /// A profile was created or its content replaced (content without the record).
    /// Its users are unchanged: those already known for a rewritten profile, none for a
    /// new one (LXD lists no instance under a profile that did not exist). Nothing here
    /// looks at every instance: a creation costs the same in a fleet of any size.
    pub fn set_profile(&mut self, name: &str, content: ProfileContent, stamp: Stamp) {
        let owned = stamp.owner.as_deref() == Some(self.owner.as_str());
        let used_by = self
            .profiles
            .remove(name)
            .map(|p| p.used_by)
            .unwrap_or_default();
        self.profiles.insert(
            self.names.get(name),
            ObservedProfile {
                content: PackedContent::of(&content),
                stamp,
                owned,
                used_by,
            },
        );
    }

    /// A profile read from LXD (an event or a GET).
    pub fn put_lxd_profile(&mut self, p: Profile) {
        let (name, op) = ObservedProfile::from_lxd(p, &self.owner, &mut self.names, |_| false);
        self.profiles.insert(self.names.get(&name), op);
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
        assert!(o.take_echo(&i, Instant::now()));
        assert!(
            !o.take_echo(&i, Instant::now()),
            "the next event is a real change"
        );
        assert!(!o.take_echo(&Object::Profile("i".into()), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_echo_is_judged_by_when_it_arrived_not_by_when_it_is_handled() {
        let mut o = Observed::default();
        let i = Object::Instance("i".into());
        o.expect_echo(i.clone());
        let arrived = Instant::now() + Duration::from_millis(20);
        // A backlog of events: this one is handled a minute after it arrived.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(o.take_echo(&i, arrived), "our write's event, handled late");
        // An event that arrived past ECHO_TTL after the write is a real change.
        let start = Instant::now();
        o.expect_echo(i.clone());
        tokio::time::advance(ECHO_TTL).await;
        assert!(!o.take_echo(&i, start + ECHO_TTL));
        assert!(o.echoes.is_empty(), "the stale echo is gone");
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
                .unpack()
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
            config: Default::default(),
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
        let ours = Stamp {
            owner: Some(OWNER_VALUE.into()),
            ..Stamp::default()
        };
        o.set_profile("b", ProfileContent::default(), ours);
        assert!(o.profile("b").unwrap().owned);
        o.set_instance_profiles("i", &["default".into(), "b".into()]);
        assert_eq!(o.profile("b").unwrap().used_by.len(), 1);
        // A rewrite keeps the users.
        let mut content = ProfileContent::default();
        content.config.insert("k".into(), "v".into());
        o.set_profile("b", content, o.profile("b").unwrap().stamp.clone());
        assert_eq!(o.profile("b").unwrap().used_by.len(), 1);
        o.remove_instance("i");
        assert!(o.profile("b").unwrap().used_by.is_empty());
    }

    #[test]
    fn ownership_is_the_recorded_owner_and_the_record_is_not_content() {
        let mut o = Observed::with_owner("blue");
        let mut theirs = profile("p", false, &[]);
        theirs
            .content
            .config
            .insert(OWNER_KEY.into(), "green".into());
        let mut mine = profile("q", false, &[]);
        mine.content.config.insert(OWNER_KEY.into(), "blue".into());
        mine.content.config.insert(NAMESPACE_KEY.into(), "m".into());
        mine.content
            .config
            .insert(APPLICATION_KEY.into(), "a".into());
        mine.content.config.insert(REVISION_KEY.into(), "7".into());
        o.replace(vec![], vec![theirs, mine]);
        assert!(!o.profile("p").unwrap().owned);
        let q = o.profile("q").unwrap();
        assert!(q.owned);
        assert_eq!(
            q.stamp,
            Stamp {
                owner: Some("blue".into()),
                namespace: Some("m".into()),
                application: Some("a".into()),
                revision: Some(7),
            }
        );
        let content = q.content.unpack();
        assert!(
            content
                .config
                .keys()
                .all(|k| !k.starts_with(RESERVED_PREFIX))
        );
        // Written back with the same record.
        assert_eq!(q.stamp.on(&content).config.len(), content.config.len() + 4);
    }

    #[test]
    fn an_instance_claim_is_read_from_its_config_and_forgotten_with_it() {
        let mut o = Observed::default();
        let mut i = Instance {
            name: "i".into(),
            profiles: vec!["default".into()],
            status: String::new(),
            config: Default::default(),
        };
        i.config.push((OWNER_KEY.into(), "green".into()));
        i.config.push((RESOURCE_KEY.into(), "Machine/m/0".into()));
        o.replace(vec![i], vec![]);
        assert_eq!(
            o.claim("i"),
            Some(&Claim {
                owner: "green".into(),
                resource: "Machine/m/0".into()
            })
        );
        o.remove_instance("i");
        assert_eq!(o.claim("i"), None);
    }

    #[test]
    fn a_listing_takes_an_instances_own_list_over_a_profiles_used_by() {
        // The instance left `old` between the two reads: the profile listing still names
        // it, the instance listing does not.
        let mut o = Observed::default();
        o.replace(
            vec![Instance {
                name: "i".into(),
                profiles: vec!["default".into(), "new".into()],
                status: String::new(),
                config: Default::default(),
            }],
            vec![
                profile("old", true, &["i"]),
                profile("new", true, &[]),
                profile("shared", true, &["elsewhere"]),
            ],
        );
        assert!(o.profile("old").unwrap().used_by.is_empty());
        assert_eq!(o.profile("new").unwrap().used_by.len(), 1);
        assert_eq!(o.profile("shared").unwrap().used_by.len(), 1);
    }

    #[test]
    fn a_relisting_over_a_known_state_keeps_only_what_lxd_still_holds() {
        let inst = |name: &str, profiles: &[&str]| Instance {
            name: name.into(),
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            status: String::new(),
            config: Default::default(),
        };
        let mut o = Observed::default();
        o.replace(
            vec![inst("i", &["default", "a"]), inst("j", &["default", "a"])],
            vec![
                profile("default", false, &["i", "j"]),
                profile("a", true, &["i", "j", "elsewhere"]),
                profile("b", true, &[]),
            ],
        );
        assert_eq!(o.profile("a").unwrap().used_by.len(), 3);
        // Since: `j` was deleted, `i` left `a` for `b`, `elsewhere` left `a`, `b`'s
        // content changed, and `c` was made for someone else's instance.
        let mut b = profile("b", true, &["i"]);
        b.content.config.insert("k".into(), "v".into());
        o.replace(
            vec![inst("i", &["default", "b"])],
            vec![
                profile("default", false, &["i"]),
                profile("a", true, &[]),
                b,
                profile("c", true, &["other"]),
            ],
        );
        assert_eq!(o.instance_count(), 1);
        assert_eq!(o.instance_profiles("j"), None);
        let users = |p: &str| -> Vec<String> {
            o.profile(p)
                .unwrap()
                .used_by
                .iter()
                .map(|u| u.to_string())
                .collect()
        };
        assert_eq!(users("default"), ["i"]);
        assert!(users("a").is_empty(), "a is collectable");
        assert_eq!(users("b"), ["i"]);
        assert_eq!(users("c"), ["other"]);
        assert_eq!(o.profile("b").unwrap().content.unpack().config["k"], "v");
        // A profile the listing no longer has is gone.
        o.replace(
            vec![inst("i", &["default"])],
            vec![profile("default", false, &["i"])],
        );
        assert!(o.profile("a").is_none());
        assert_eq!(o.profiles().count(), 1);
    }
}
