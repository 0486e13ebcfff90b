//! The object store: objects by (resource, namespace, name), the global resourceVersion,
//! the event log that watches replay, and the write rules of a Kubernetes API server
//! (uid, generation, status subresource, optimistic concurrency, finalizers, and
//! server-side apply's field ownership). Synchronous and free of I/O: the HTTP layer and
//! the test API hold its lock for one whole read-modify-write.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::patch;
use crate::resources::ResourceType;
use crate::status::Status;

/// Changes kept for watches to replay; past this the oldest go and the floor rises.
const LOG_CAPACITY: usize = 100_000;
/// Live changes a watch may fall behind by before it is ended (the client resumes).
const LIVE_CAPACITY: usize = 4096;

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// Where an object lives; `resource` indexes [`Store::resources`]. The order is the
/// order of lists, which paging relies on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub resource: usize,
    pub namespace: String,
    pub name: String,
}

/// One entry of the event log.
#[derive(Debug)]
pub(crate) struct Change {
    pub revision: u64,
    pub resource: usize,
    pub kind: &'static str,
    pub object: Value,
}

struct Stored {
    object: Value,
    /// Server-side apply managers and the fields (JSON pointers) each last applied.
    appliers: BTreeMap<String, BTreeSet<String>>,
}

/// Preconditions a `DELETE` body may carry.
#[derive(Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub(crate) struct Store {
    resources: Vec<ResourceType>,
    objects: BTreeMap<Key, Stored>,
    revision: u64,
    /// The oldest revision a watch may start from: every change after it is in `log`.
    floor: u64,
    log: VecDeque<Arc<Change>>,
    live: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub(crate) fn new(resources: Vec<ResourceType>) -> Self {
        Self {
            resources,
            objects: BTreeMap::new(),
            revision: 1,
            floor: 1,
            log: VecDeque::new(),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    pub(crate) fn resources(&self) -> &[ResourceType] {
        &self.resources
    }

    pub(crate) fn resource(&self, index: usize) -> &ResourceType {
        &self.resources[index]
    }

    /// The index of the type served at `group/version/plural`.
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The index of the type `apiVersion` + `plural` or `kind` names.
    pub(crate) fn find_by_name(&self, api_version: &str, plural_or_kind: &str) -> Option<usize> {
        self.resources.iter().position(|r| {
            r.api_version() == api_version
                && (r.plural == plural_or_kind || r.kind == plural_or_kind)
        })
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key).map(|s| &s.object)
    }

    /// Objects of `resource`, in `namespace` if given, strictly after `after` (a paging
    /// position of namespace and name).
    pub(crate) fn list<'a>(
        &'a self,
        resource: usize,
        namespace: Option<&'a str>,
        after: Option<(String, String)>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let start = match after {
            Some((namespace, name)) => Bound::Excluded(Key {
                resource,
                namespace,
                name,
            }),
            None => Bound::Included(Key {
                resource,
                namespace: String::new(),
                name: String::new(),
            }),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.resource == resource)
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, s)| &s.object)
    }

    /// Changes after `revision`, oldest first, and a receiver of the ones still to come.
    /// Taken under one lock, so nothing falls between the two.
    pub(crate) fn changes_since(
        &self,
        revision: u64,
    ) -> (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>) {
        let past = self
            .log
            .iter()
            .filter(|c| c.revision > revision)
            .cloned()
            .collect();
        (past, self.live.subscribe())
    }

    /// Forgets all history: the revision moves on by one and becomes the floor, so a
    /// watch or continue token from any revision handed out so far gets 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.revision += 1;
        self.floor = self.revision;
        self.log.clear();
    }

    pub(crate) fn create(
        &mut self,
        resource: usize,
        namespace: &str,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, Status> {
        let rt = self.resources[resource].clone();
        let Some(map) = object.as_object_mut() else {
            return Err(Status::bad_request("the body must be a JSON object"));
        };
        check_type(&rt, map)?;
        map.insert("apiVersion".into(), json!(rt.api_version()));
        map.insert("kind".into(), json!(rt.kind));
        if rt.status_subresource {
            // As for custom resources: create cannot set status.
            map.remove("status");
        }
        let meta = metadata_mut(map)?;
        let namespace = if rt.namespaced { namespace } else { "" };
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if rt.namespaced && !ns.is_empty() && ns != namespace => {
                return Err(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        let given = |field| str_field(meta, field).filter(|v| !v.is_empty());
        let name = match (given("name"), given("generateName")) {
            (Some(name), _) => name.to_owned(),
            (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
            (None, None) => {
                return Err(Status::invalid(
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        let key = Key {
            resource,
            namespace: namespace.to_owned(),
            name: name.clone(),
        };
        if self.objects.contains_key(&key) {
            return Err(Status::already_exists(&rt, &name));
        }
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            meta.remove(server_owned);
        }
        meta.insert("uid".into(), json!(random_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        Ok(self.commit(&key, object, "ADDED", dry_run))
    }

    /// Replaces `part` of the object at `key` with what `proposed` holds there, following
    /// Kubernetes' rules; returns the object as stored. A proposal that changes nothing
    /// changes nothing: same resourceVersion, no event.
    pub(crate) fn update(
        &mut self,
        key: &Key,
        part: Part,
        mut proposed: Value,
        dry_run: bool,
    ) -> Result<Value, Status> {
        let rt = self.resources[key.resource].clone();
        let Some(stored) = self.objects.get(key) else {
            return Err(Status::not_found(&rt, &key.name));
        };
        let old = &stored.object;
        let Some(map) = proposed.as_object_mut() else {
            return Err(Status::bad_request("the body must be a JSON object"));
        };
        check_type(&rt, map)?;
        let meta = metadata_mut(map)?;
        if let Some(name) = str_field(meta, "name")
            && name != key.name
        {
            return Err(Status::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        let current_rv = &old["metadata"]["resourceVersion"];
        if let Some(rv) = str_field(meta, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != current_rv.as_str()
        {
            return Err(Status::conflict(&rt, &key.name));
        }

        let mut new = match part {
            Part::Status => {
                let mut new = old.clone();
                set_or_remove(&mut new, "status", map.get("status"));
                new
            }
            Part::Main => {
                let mut new = proposed.clone();
                if rt.status_subresource {
                    set_or_remove(&mut new, "status", old.get("status"));
                }
                for field in ["apiVersion", "kind"] {
                    set_or_remove(&mut new, field, old.get(field));
                }
                let old_meta = &old["metadata"];
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    for field in [
                        "name",
                        "namespace",
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "resourceVersion",
                        "deletionTimestamp",
                        "deletionGracePeriodSeconds",
                    ] {
                        match old_meta.get(field) {
                            Some(v) => meta.insert(field.to_owned(), v.clone()),
                            None => meta.remove(field),
                        };
                    }
                }
                new
            }
        };
        if &new == old {
            return Ok(new);
        }
        if part == Part::Main && without_meta(old, &rt) != without_meta(&new, &rt) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        // The last finalizer gone from an object being deleted deletes it.
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            return Ok(self.commit(key, new, "DELETED", dry_run));
        }
        let changed = changed_fields(old, &new);
        if let Some(stored) = self.objects.get_mut(key).filter(|_| !dry_run) {
            // A plain write takes the fields it changed away from their appliers.
            for fields in stored.appliers.values_mut() {
                fields.retain(|f| !changed.contains(f));
            }
        }
        Ok(self.commit(key, new, "MODIFIED", dry_run))
    }

    /// Server-side apply, simplified: a merge patch that creates a missing object, with
    /// field ownership so that two managers applying different values to one field
    /// conflict (409) unless `force`. Returns the object and whether it was created.
    pub(crate) fn apply(
        &mut self,
        key: &Key,
        part: Part,
        patch: &Value,
        manager: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<(Value, bool), Status> {
        let rt = self.resources[key.resource].clone();
        let applied: Vec<(String, Value)> = patch::fields(patch)
            .into_iter()
            .filter(|(path, _)| {
                let is_status = path.starts_with("/status");
                !rt.status_subresource || (part == Part::Status) == is_status
            })
            .map(|(path, v)| (path, v.clone()))
            .collect();
        let (object, created) = match self.objects.get(key) {
            None if part == Part::Status => return Err(Status::not_found(&rt, &key.name)),
            None => {
                let mut object = patch.clone();
                if let Some(map) = object.as_object_mut() {
                    metadata_mut(map)?.insert("name".into(), json!(key.name));
                }
                (
                    self.create(key.resource, &key.namespace, object, dry_run)?,
                    true,
                )
            }
            Some(stored) => {
                if !force {
                    apply_conflicts(stored, &applied, manager)?;
                }
                let proposed = patch::apply(&stored.object, patch, patch::PatchType::Apply)?;
                (self.update(key, part, proposed, dry_run)?, false)
            }
        };
        if let Some(stored) = self.objects.get_mut(key).filter(|_| !dry_run) {
            let paths: BTreeSet<String> = applied.into_iter().map(|(p, _)| p).collect();
            if force {
                for fields in stored.appliers.values_mut() {
                    fields.retain(|f| !paths.contains(f));
                }
            }
            stored.appliers.insert(manager.to_owned(), paths);
        }
        Ok((object, created))
    }

    /// Deletes the object, or marks it for deletion while finalizers remain.
    pub(crate) fn delete(
        &mut self,
        key: &Key,
        preconditions: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, Status> {
        let rt = self.resources[key.resource].clone();
        let Some(stored) = self.objects.get(key) else {
            return Err(Status::not_found(&rt, &key.name));
        };
        let meta = &stored.object["metadata"];
        let mismatch = |field: &str, want: &Option<String>| {
            want.as_deref()
                .is_some_and(|w| meta[field].as_str() != Some(w))
        };
        if mismatch("uid", &preconditions.uid)
            || mismatch("resourceVersion", &preconditions.resource_version)
        {
            return Err(Status::conflict(&rt, &key.name));
        }
        let object = stored.object.clone();
        if finalizers(&object).is_empty() {
            return Ok(self.commit(key, object, "DELETED", dry_run));
        }
        if object["metadata"].get("deletionTimestamp").is_some() {
            return Ok(object);
        }
        let mut marked = object;
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        Ok(self.commit(key, marked, "MODIFIED", dry_run))
    }

    /// Stamps the next resourceVersion on `object` and, unless this is a dry run, stores
    /// it (or removes it, for `DELETED`) and logs the change.
    fn commit(&mut self, key: &Key, mut object: Value, kind: &'static str, dry_run: bool) -> Value {
        object["metadata"]["resourceVersion"] = json!((self.revision + 1).to_string());
        if dry_run {
            return object;
        }
        self.revision += 1;
        if kind == "DELETED" {
            self.objects.remove(key);
        } else {
            let stored = self.objects.entry(key.clone()).or_insert_with(|| Stored {
                object: Value::Null,
                appliers: BTreeMap::new(),
            });
            stored.object = object.clone();
        }
        let change = Arc::new(Change {
            revision: self.revision,
            resource: key.resource,
            kind,
            object: object.clone(),
        });
        if self.log.len() >= LOG_CAPACITY
            && let Some(oldest) = self.log.pop_front()
        {
            self.floor = oldest.revision;
        }
        self.log.push_back(change.clone());
        // No receiver is no error: nobody is watching.
        let _ = self.live.send(change);
        object
    }
}

/// 409 when another manager applied a field this apply would change.
fn apply_conflicts(
    stored: &Stored,
    applied: &[(String, Value)],
    manager: &str,
) -> Result<(), Status> {
    let mut conflicts = Vec::new();
    for (path, value) in applied {
        let differs = stored
            .object
            .pointer(path)
            .is_some_and(|current| current != value);
        if !differs {
            continue;
        }
        for (other, _) in stored
            .appliers
            .iter()
            .filter(|(m, fields)| m.as_str() != manager && fields.contains(path))
        {
            conflicts.push(format!(
                "conflict with \"{other}\": {}",
                path.replace('/', ".")
            ));
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    Err(Status::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{plural}: {}",
            conflicts.len(),
            conflicts.join("\n")
        ),
    ))
}

fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let old_fields: BTreeMap<String, &Value> = patch::fields(old).into_iter().collect();
    let new_fields: BTreeMap<String, &Value> = patch::fields(new).into_iter().collect();
    let mut changed: Vec<String> = new_fields
        .iter()
        .filter(|(p, v)| old_fields.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    changed.extend(
        old_fields
            .keys()
            .filter(|p| !new_fields.contains_key(*p))
            .cloned(),
    );
    changed
}

/// The object as generation sees it: without metadata, and without status when status
/// is a subresource.
fn without_meta(object: &Value, rt: &ResourceType) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        if rt.status_subresource {
            map.remove("status");
        }
    }
    object
}

fn check_type(rt: &ResourceType, map: &Map<String, Value>) -> Result<(), Status> {
    let matches = |field: &str, want: &str| {
        map.get(field)
            .and_then(Value::as_str)
            .is_none_or(|v| v == want)
    };
    if matches("apiVersion", &rt.api_version()) && matches("kind", rt.kind) {
        Ok(())
    } else {
        Err(Status::bad_request(format!(
            "the body is not a {} {}",
            rt.api_version(),
            rt.kind
        )))
    }
}

fn metadata_mut(map: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, Status> {
    map.entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| Status::bad_request("metadata must be an object"))
}

fn str_field<'a>(map: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    map.get(field).and_then(Value::as_str)
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<&Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => map.insert(field.to_owned(), v.clone()),
            None => map.remove(field),
        };
    }
}

fn finalizers(object: &Value) -> Vec<&Value> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().collect())
        .unwrap_or_default()
}

/// An RFC 3339 timestamp to the second, as `metav1.Time` is written.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_uid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        0x8000 | fastrand::u16(..0x4000),
        fastrand::u64(..1 << 48),
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": spec, "status": {"ignored": true},
        })
    }

    fn key(name: &str) -> Key {
        Key {
            resource: 0,
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    #[test]
    fn create_sets_server_fields_and_drops_status() {
        let mut store = Store::new(ResourceType::defaults());
        let created = store.create(0, "demo", machine("0", json!({"a": 1})), false);
        let created = created.unwrap_or_default();
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["metadata"]["resourceVersion"], "2");
        assert!(created["metadata"]["uid"].is_string());
        assert!(created.get("status").is_none());
        let again = store.create(0, "demo", machine("0", json!({})), false);
        assert_eq!(again.map_err(|s| s.reason), Err("AlreadyExists".to_owned()));
    }

    #[test]
    fn status_write_never_bumps_generation_and_main_write_ignores_status() {
        let mut store = Store::new(ResourceType::defaults());
        let created = store.create(0, "demo", machine("0", json!({"a": 1})), false);
        let mut proposed = created.unwrap_or_default();
        proposed["status"] = json!({"phase": "Ready"});
        let after_status = store.update(&key("0"), Part::Status, proposed.clone(), false);
        let after_status = after_status.unwrap_or_default();
        assert_eq!(after_status["metadata"]["generation"], 1);
        assert_eq!(after_status["status"]["phase"], "Ready");

        proposed["status"] = json!({"phase": "Lost"});
        proposed["metadata"]["resourceVersion"] =
            after_status["metadata"]["resourceVersion"].clone();
        let noop = store.update(&key("0"), Part::Main, proposed.clone(), false);
        assert_eq!(noop.as_ref().ok(), Some(&after_status));

        proposed["spec"]["a"] = json!(2);
        let bumped = store
            .update(&key("0"), Part::Main, proposed, false)
            .unwrap_or_default();
        assert_eq!(bumped["metadata"]["generation"], 2);
        assert_eq!(bumped["status"]["phase"], "Ready");
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut store = Store::new(ResourceType::defaults());
        let mut object = store
            .create(0, "demo", machine("0", json!({})), false)
            .unwrap_or_default();
        object["metadata"]["resourceVersion"] = json!("1");
        object["spec"] = json!({"b": 1});
        let out = store.update(&key("0"), Part::Main, object, false);
        assert_eq!(out.map_err(|s| s.code), Err(409));
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut store = Store::new(ResourceType::defaults());
        let mut object = machine("0", json!({}));
        object["metadata"]["finalizers"] = json!(["x"]);
        store.create(0, "demo", object, false).unwrap_or_default();
        let marked = store
            .delete(&key("0"), &Preconditions::default(), false)
            .unwrap_or_default();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        let mut cleared = marked.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        store
            .update(&key("0"), Part::Main, cleared, false)
            .unwrap_or_default();
        assert!(store.get(&key("0")).is_none());
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut store = Store::new(ResourceType::defaults());
        let lease_key = Key {
            resource: 3,
            ..key("l")
        };
        let lease = |holder: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                   "spec": {"holderIdentity": holder}})
        };
        let (_, created) = store
            .apply(&lease_key, Part::Main, &lease("a"), "a", false, false)
            .unwrap_or_default();
        assert!(created);
        let out = store.apply(&lease_key, Part::Main, &lease("b"), "b", false, false);
        let message = out.map_err(|s| s.message).err().unwrap_or_default();
        assert!(
            message.contains("conflict with \"a\": .spec.holderIdentity"),
            "{message}"
        );
        assert!(
            store
                .apply(&lease_key, Part::Main, &lease("b"), "b", true, false)
                .is_ok()
        );
        // The force took the field from "a": now "a" is the one that conflicts.
        assert!(
            store
                .apply(&lease_key, Part::Main, &lease("a"), "a", false, false)
                .is_err()
        );
        assert!(
            store
                .apply(&lease_key, Part::Main, &lease("b"), "b", false, false)
                .is_ok()
        );
    }

    #[test]
    fn compaction_moves_the_floor_past_every_revision_handed_out() {
        let mut store = Store::new(ResourceType::defaults());
        store
            .create(0, "demo", machine("0", json!({})), false)
            .unwrap_or_default();
        let before = store.revision();
        store.compact();
        assert!(store.floor() > before);
        assert_eq!(store.floor(), store.revision());
        assert!(store.changes_since(before).0.is_empty());
    }
}
