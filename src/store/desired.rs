//! The desired state: every resource the source holds now, and indexes from each
//! Application, instance and extra profile to the Machines and Containers that name it,
//! so that a change or an LXD event enqueues exactly those (no scan of the fleet).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::hash::{HashMap, HashSet};
use crate::resource::{Kind, ProfileNames, Resource, ResourceKey, Workload};
use crate::store::PreparedApp;

/// Maps keyed by an application's identity, namespace (model) and name, read with
/// borrowed names: a lookup on the plan's path allocates nothing.
#[derive(Debug)]
struct ByApp<V>(HashMap<String, HashMap<String, V>>);

impl<V> Default for ByApp<V> {
    fn default() -> Self {
        ByApp(HashMap::default())
    }
}

impl<V> ByApp<V> {
    fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.0.get(namespace)?.get(name)
    }

    fn get_mut(&mut self, namespace: &str, name: &str) -> Option<&mut V> {
        self.0.get_mut(namespace)?.get_mut(name)
    }

    fn insert(&mut self, namespace: &str, name: &str, v: V) {
        match self.0.get_mut(namespace) {
            Some(m) => m.insert(name.to_string(), v),
            None => self
                .0
                .entry(namespace.to_string())
                .or_default()
                .insert(name.to_string(), v),
        };
    }

    fn get_or_default(&mut self, namespace: &str, name: &str) -> &mut V
    where
        V: Default,
    {
        self.0
            .entry(namespace.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<V> {
        let m = self.0.get_mut(namespace)?;
        let v = m.remove(name);
        if m.is_empty() {
            self.0.remove(namespace);
        }
        v
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str, &V)> {
        self.0
            .iter()
            .flat_map(|(ns, m)| m.iter().map(move |(n, v)| (ns.as_str(), n.as_str(), v)))
    }
}

/// The Machines and Containers in the order they were added: a pass over the fleet (a
/// resync, `plan` of every one) reads them in the order they were allocated, which the
/// CPU's prefetcher follows, instead of in key order, which jumps across the heap. The
/// hash index makes a look-up or an insert cost the same at any size (a `BTreeMap`'s
/// grows with the depth of the tree, a string comparison at each level).
#[derive(Debug, Default)]
struct Workloads {
    index: HashMap<ResourceKey, usize>,
    entries: Vec<(ResourceKey, Arc<Workload>)>,
}

impl Workloads {
    fn get(&self, key: &ResourceKey) -> Option<&Arc<Workload>> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Adds `w` at the end, or replaces the one under `key` in its place.
    fn insert(&mut self, key: ResourceKey, w: Arc<Workload>) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = w,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, w));
            }
        }
    }

    /// Removes `key`; the last entry takes its place.
    fn remove(&mut self, key: &ResourceKey) -> Option<Arc<Workload>> {
        let i = self.index.remove(key)?;
        let (_, w) = self.entries.swap_remove(i);
        if let Some((moved, _)) = self.entries.get(i) {
            self.index.insert(moved.clone(), i);
        }
        Some(w)
    }

    fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<Workload>)> {
        self.entries.iter().map(|(k, w)| (k, w))
    }

    fn keys(&self) -> impl Iterator<Item = &ResourceKey> {
        self.entries.iter().map(|(k, _)| k)
    }
}

#[derive(Debug, Default)]
pub struct Desired {
    apps: ByApp<Arc<PreparedApp>>,
    workloads: Workloads,
    by_app: ByApp<Keys>,
    by_instance: HashMap<Box<str>, Keys>,
    by_extra_profile: HashMap<Box<str>, Keys>,
    /// Per principal application, the names of its subordinates (`subordinateTo`).
    subordinates_of: ByApp<BTreeSet<String>>,
    /// How many Machines and Containers each namespace (model) holds.
    namespaces: BTreeMap<Box<str>, usize>,
}

/// The Machines and Containers indexed under one name. Most names have one (an instance
/// is named by one resource), held without a set: a one-key set costs a whole table (and
/// the rare set is boxed: an entry is two words). A hash set, not a tree: adding the
/// 1,000th user of an application hashes one key instead of comparing ten others, each a
/// pointer to follow.
#[derive(Debug)]
#[allow(clippy::box_collection)] // boxed on purpose: the set is rare, the entries many
enum Keys {
    One(ResourceKey),
    Many(Box<HashSet<ResourceKey>>),
}

impl Keys {
    fn insert(&mut self, key: ResourceKey) {
        match self {
            Keys::One(k) if *k == key => {}
            Keys::One(k) => {
                let first = std::mem::replace(k, key.clone());
                *self = Keys::Many(Box::new([first, key].into_iter().collect()));
            }
            Keys::Many(set) => {
                set.insert(key);
            }
        }
    }

    /// Removes `key`; whether none is left.
    fn remove(&mut self, key: &ResourceKey) -> bool {
        match self {
            Keys::One(k) => k == key,
            Keys::Many(set) => {
                set.remove(key);
                if set.len() == 1
                    && let Some(last) = set.iter().next().cloned()
                {
                    *self = Keys::One(last);
                }
                // A set never empties: at one key it is `One` again.
                false
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &ResourceKey> {
        let (one, many) = match self {
            Keys::One(k) => (Some(k), None),
            Keys::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl ByApp<Keys> {
    /// Indexes `key` under the application `app` of `namespace`.
    fn add_key(&mut self, namespace: &str, app: &str, key: &ResourceKey) {
        match self.get_mut(namespace, app) {
            Some(keys) => keys.insert(key.clone()),
            None => self.insert(namespace, app, Keys::One(key.clone())),
        }
    }

    fn remove_key(&mut self, namespace: &str, app: &str, key: &ResourceKey) {
        if self
            .get_mut(namespace, app)
            .is_some_and(|keys| keys.remove(key))
        {
            self.remove(namespace, app);
        }
    }
}

/// Indexes `key` under `name`.
fn index_insert(map: &mut HashMap<Box<str>, Keys>, name: &str, key: &ResourceKey) {
    match map.get_mut(name) {
        Some(keys) => keys.insert(key.clone()),
        None => {
            map.insert(name.into(), Keys::One(key.clone()));
        }
    }
}

fn index_remove(map: &mut HashMap<Box<str>, Keys>, name: &str, key: &ResourceKey) {
    if map.get_mut(name).is_some_and(|keys| keys.remove(key)) {
        map.remove(name);
    }
}

impl Desired {
    /// Adds or replaces a resource. Returns the Machines and Containers whose desired
    /// profiles may have changed (none if the resource is unchanged).
    pub fn upsert(&mut self, resource: Resource) -> Vec<ResourceKey> {
        let key = resource.key();
        match resource {
            Resource::Application(a) => {
                let (ns, name) = (&*key.namespace, &*key.name);
                if self
                    .apps
                    .get(ns, name)
                    .is_some_and(|old| old.spec == a.spec && old.metadata == a.metadata)
                {
                    return vec![];
                }
                // Its users before (old principals) and after (new ones) are affected.
                let mut affected = self.users_of(ns, name);
                self.unindex_subordinate(ns, name);
                for p in &a.spec.subordinate_to {
                    self.subordinates_of
                        .get_or_default(ns, p)
                        .insert(name.to_string());
                }
                self.apps
                    .insert(ns, name, Arc::new(PreparedApp::new(Arc::new(a))));
                affected.extend(self.users_of(ns, name));
                affected.sort();
                affected.dedup();
                affected
            }
            Resource::Machine(w) | Resource::Container(w) => {
                if self
                    .workloads
                    .get(&key)
                    .is_some_and(|old| old.spec == w.spec && old.metadata == w.metadata)
                {
                    return vec![];
                }
                // Resources sharing the old or the new instance are affected too (one
                // instance, one resource: a conflict starts or ends).
                let mut affected = self.sharing_instance(&key);
                self.unindex(&key);
                for app in &w.spec.applications {
                    self.by_app.add_key(&key.namespace, app, &key);
                }
                if let Some(i) = &w.spec.instance {
                    index_insert(&mut self.by_instance, i, &key);
                }
                for p in &w.spec.extra_profiles {
                    index_insert(&mut self.by_extra_profile, p, &key);
                }
                // Counted in place when the namespace is known: its name is copied (an
                // allocation) once per namespace, not once per resource.
                match self.namespaces.get_mut(&*key.namespace) {
                    Some(n) => *n += 1,
                    None => {
                        self.namespaces.insert(key.namespace.clone(), 1);
                    }
                }
                self.workloads.insert(key.clone(), Arc::new(w));
                affected.extend(self.sharing_instance(&key));
                affected.push(key);
                affected.sort();
                affected.dedup();
                affected
            }
        }
    }

    /// Forgets a resource (it is no longer managed: nothing changes in LXD for it).
    /// Returns the keys to reconcile again.
    pub fn remove(&mut self, key: &ResourceKey) -> Vec<ResourceKey> {
        match key.kind {
            Kind::Application => {
                let (ns, name) = (&*key.namespace, &*key.name);
                let affected = self.users_of(ns, name);
                self.unindex_subordinate(ns, name);
                if self.apps.remove(ns, name).is_none() {
                    return vec![];
                }
                affected
            }
            Kind::Machine | Kind::Container => {
                let mut affected = self.sharing_instance(key);
                self.unindex(key);
                if self.workloads.remove(key).is_some() {
                    affected.push(key.clone());
                }
                affected
            }
        }
    }

    /// The other Machines and Containers naming the same instance as `key` does now.
    fn sharing_instance(&self, key: &ResourceKey) -> Vec<ResourceKey> {
        self.workloads
            .get(key)
            .and_then(|w| w.spec.instance.as_ref())
            .map(|i| self.keys_naming(i).filter(|k| *k != key).cloned().collect())
            .unwrap_or_default()
    }

    fn unindex(&mut self, key: &ResourceKey) {
        let Some(old) = self.workloads.get(key).cloned() else {
            return;
        };
        for app in &old.spec.applications {
            self.by_app.remove_key(&key.namespace, app, key);
        }
        if let Some(i) = &old.spec.instance {
            index_remove(&mut self.by_instance, i, key);
        }
        for p in &old.spec.extra_profiles {
            index_remove(&mut self.by_extra_profile, p, key);
        }
        if let Some(n) = self.namespaces.get_mut(&*key.namespace) {
            *n -= 1;
            if *n == 0 {
                self.namespaces.remove(&*key.namespace);
            }
        }
    }

    /// The Machines and Containers whose instance is `instance`, sorted.
    pub fn keys_for_instance(&self, instance: &str) -> Vec<ResourceKey> {
        let mut keys: Vec<ResourceKey> = self.keys_naming(instance).cloned().collect();
        keys.sort();
        keys
    }

    /// The same, lent and in no order: every reconcile asks whether another resource
    /// names its instance, and almost always none does.
    pub fn keys_naming(&self, instance: &str) -> impl Iterator<Item = &ResourceKey> {
        self.by_instance
            .get(instance)
            .into_iter()
            .flat_map(Keys::iter)
    }

    /// The Machines and Containers that expect a profile named `profile`: as a charm
    /// profile of one of their applications, as their model profile, as an extra profile,
    /// or (`default`) all of them.
    pub fn keys_for_profile(&self, profile: &str, names: &ProfileNames) -> Vec<ResourceKey> {
        if profile == "default" {
            return self.workloads.keys().cloned().collect();
        }
        let mut out: BTreeSet<ResourceKey> = self
            .by_extra_profile
            .get(profile)
            .into_iter()
            .flat_map(Keys::iter)
            .cloned()
            .collect();
        // Work per namespace (model), not per resource.
        for ns in self.namespaces.keys() {
            if let Some((app, _)) = names.parse_charm_profile(profile, ns) {
                out.extend(self.users_of(ns, &app));
            }
            if names.model_profile(ns) == profile {
                // Every Machine of the model: most of the fleet, read once.
                out.extend(
                    self.workloads
                        .keys()
                        .filter(|k| k.kind == Kind::Machine && k.namespace == *ns)
                        .cloned(),
                );
            }
        }
        out.into_iter().collect()
    }

    /// Every profile some Machine or Container expects beyond `default`: the charm
    /// profile of each application in use (the index knows which, not one look per
    /// resource), every `extraProfiles` entry (an operator may list an owned one), and the
    /// model profile of every namespace that holds a Machine or Container.
    pub fn expected_charm_profiles(
        &self,
        names: &ProfileNames,
    ) -> std::collections::HashSet<String> {
        let in_use = self.by_app.iter().flat_map(|(ns, app, _)| {
            std::iter::once((ns, app)).chain(
                self.subordinates(ns, app)
                    .into_iter()
                    .map(move |s| (ns, s.metadata.name.as_str())),
            )
        });
        in_use
            .filter_map(|(ns, app)| {
                let a = self.apps.get(ns, app)?;
                a.spec.lxd_profile.as_ref().filter(|p| !p.is_empty())?;
                Some(names.charm_profile(ns, app, a.spec.revision))
            })
            .chain(self.by_extra_profile.keys().map(|p| p.to_string()))
            .chain(self.namespaces.keys().map(|ns| names.model_profile(ns)))
            .collect()
    }

    /// The Machines and Containers that run `app`: those naming it, and, for a
    /// subordinate, those naming one of its principals.
    fn users_of(&self, namespace: &str, app: &str) -> Vec<ResourceKey> {
        let mut out: BTreeSet<ResourceKey> = (self.by_app.get(namespace, app).into_iter())
            .flat_map(Keys::iter)
            .cloned()
            .collect();
        if let Some(a) = self.apps.get(namespace, app) {
            for p in &a.spec.subordinate_to {
                if let Some(users) = self.by_app.get(namespace, p) {
                    out.extend(users.iter().cloned());
                }
            }
        }
        out.into_iter().collect()
    }

    fn unindex_subordinate(&mut self, namespace: &str, app: &str) {
        let Some(old) = self.apps.get(namespace, app).cloned() else {
            return;
        };
        for p in &old.spec.subordinate_to {
            if let Some(set) = self.subordinates_of.get_mut(namespace, p) {
                set.remove(app);
                if set.is_empty() {
                    self.subordinates_of.remove(namespace, p);
                }
            }
        }
    }

    /// The subordinate applications of `principal` in `namespace`.
    pub fn subordinates(&self, namespace: &str, principal: &str) -> Vec<&Arc<PreparedApp>> {
        self.subordinates_of
            .get(namespace, principal)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| self.apps.get(namespace, n))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn application(&self, namespace: &str, name: &str) -> Option<&Arc<PreparedApp>> {
        self.apps.get(namespace, name)
    }

    pub fn workload(&self, key: &ResourceKey) -> Option<&Arc<Workload>> {
        self.workloads.get(key)
    }

    pub fn workloads(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<Workload>)> {
        self.workloads.iter()
    }

    /// Every resource key held, for a source to compute what went away.
    pub fn keys(&self) -> Vec<ResourceKey> {
        let mut out: Vec<ResourceKey> = self.workloads.keys().cloned().collect();
        out.extend(
            self.apps
                .iter()
                .map(|(ns, n, _)| ResourceKey::new(Kind::Application, ns, n)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_str;

    fn res(yaml: &str) -> Resource {
        let p = parse_str("t.yaml", yaml);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.resources.into_iter().next().unwrap().resource
    }

    fn machine(name: &str, apps: &str) -> Resource {
        res(&format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\nmetadata: {{name: '{name}'}}\nspec: {{instance: i{name}, applications: [{apps}]}}\n"
        ))
    }

    fn app(name: &str, rev: u64) -> Resource {
        res(&format!(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{revision: {rev}}}\n"
        ))
    }

    #[test]
    fn a_changed_application_enqueues_exactly_the_machines_that_name_it() {
        let mut d = Desired::default();
        d.upsert(machine("0", "a, b"));
        d.upsert(machine("1", "b"));
        d.upsert(machine("2", "c"));
        let keys: Vec<String> = d
            .upsert(app("b", 1))
            .iter()
            .map(|k| k.name.to_string())
            .collect();
        assert_eq!(keys, vec!["0", "1"]);
        assert!(d.upsert(app("b", 1)).is_empty(), "unchanged: nothing to do");
        d.upsert(machine("1", "c"));
        let keys: Vec<String> = d
            .upsert(app("b", 2))
            .iter()
            .map(|k| k.name.to_string())
            .collect();
        assert_eq!(keys, vec!["0"], "the index follows the machine's edit");
        let keys: Vec<String> = d
            .remove(&ResourceKey::new(Kind::Application, "default", "b"))
            .iter()
            .map(|k| k.name.to_string())
            .collect();
        assert_eq!(keys, vec!["0"]);
    }

    #[test]
    fn instance_and_profile_events_find_the_resources_they_affect() {
        let mut d = Desired::default();
        d.upsert(machine("0", "a"));
        d.upsert(machine("1", "b"));
        let names = ProfileNames::default();
        let of = |keys: Vec<ResourceKey>| {
            keys.into_iter()
                .map(|k| k.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(d.keys_for_instance("i1")), vec!["1"]);
        assert_eq!(
            of(d.keys_for_profile("juju-default-b-7", &names)),
            vec!["1"]
        );
        assert_eq!(
            of(d.keys_for_profile("juju-default", &names)),
            vec!["0", "1"]
        );
        assert_eq!(of(d.keys_for_profile("default", &names)), vec!["0", "1"]);
        assert!(d.keys_for_profile("juju-default-nob-7", &names).is_empty());
        d.upsert(machine("1", "a"));
        assert!(
            d.keys_for_profile("juju-default-b-7", &names).is_empty(),
            "index follows edits"
        );
    }

    #[test]
    fn expected_profiles_are_those_of_applications_in_use_with_a_profile_and_the_model() {
        let mut d = Desired::default();
        d.upsert(machine("0", "a, b"));
        d.upsert(res("apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: a}\nspec: {revision: 2, lxdProfile: {config: {x: y}}}\n"));
        d.upsert(app("b", 1));
        d.upsert(res("apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: unused}\nspec: {revision: 2, lxdProfile: {config: {x: y}}}\n"));
        let mut got: Vec<String> = d
            .expected_charm_profiles(&ProfileNames::default())
            .into_iter()
            .collect();
        got.sort();
        assert_eq!(got, ["juju-default", "juju-default-a-2"]);
    }

    #[test]
    fn a_removed_machine_leaves_every_other_one_found_under_its_key() {
        let mut d = Desired::default();
        for i in 0..5 {
            d.upsert(machine(&i.to_string(), "a"));
        }
        let key = |n: &str| ResourceKey::new(Kind::Machine, "default", n);
        assert_eq!(d.remove(&key("1")), vec![key("1")]);
        assert!(d.remove(&key("1")).is_empty(), "gone: nothing to do");
        // The last one took the removed one's place.
        let order: Vec<&str> = d.workloads().map(|(k, _)| &*k.name).collect();
        assert_eq!(order, ["0", "4", "2", "3"]);
        for n in ["0", "2", "3", "4"] {
            let w = d.workload(&key(n)).expect("still held");
            assert_eq!(w.spec.instance.as_deref(), Some(format!("i{n}").as_str()));
        }
        d.remove(&key("3"));
        d.upsert(machine("3", "a"));
        assert_eq!(d.keys_for_instance("i3"), vec![key("3")]);
        assert_eq!(d.keys().len(), 4);
    }

    #[test]
    fn an_unchanged_machine_is_not_enqueued() {
        let mut d = Desired::default();
        assert_eq!(d.upsert(machine("0", "a")).len(), 1);
        assert!(d.upsert(machine("0", "a")).is_empty());
        assert_eq!(d.upsert(machine("0", "a, b")).len(), 1);
    }

    #[test]
    fn a_new_generation_uid_or_label_is_a_change_and_is_kept() {
        let mut d = Desired::default();
        d.upsert(machine("0", "a"));
        let mut relabelled = machine("0", "a");
        if let Resource::Machine(w) = &mut relabelled {
            w.metadata.labels.insert("team".into(), "x".into());
            w.metadata.generation = Some(2);
        }
        assert_eq!(d.upsert(relabelled.clone()).len(), 1);
        let key = relabelled.key();
        assert_eq!(d.workload(&key).unwrap().metadata.generation, Some(2));
        assert!(d.upsert(relabelled).is_empty());
    }
}
