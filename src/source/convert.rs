//! Objects from the API server into resources, through the same parser and validator as
//! files: the object is written out as YAML and read back, so that `true` in an LXD
//! config map means what it means in a file (SPEC §2: any scalar, kept as text), and a
//! problem is reported with the same words.

use serde_json::{Map, Value};

use crate::resource::{Kind, Problem, Resource, ResourceKey, Status, parse_str};

/// The metadata fields that the resource model keeps; the rest (resourceVersion,
/// managedFields, ...) is the API server's bookkeeping and must not make two reads of
/// an unchanged object differ.
const KEPT_METADATA: [&str; 6] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "generation",
];

/// The key of an object of `kind`, if it has a name.
pub fn key(kind: Kind, obj: &Value) -> Option<ResourceKey> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(crate::resource::DEFAULT_NAMESPACE);
    Some(ResourceKey::new(kind, namespace, name))
}

/// The status an object carries, if it parses (a status another writer mangled is
/// treated as none, and written again).
pub fn status(obj: &Value) -> Option<Status> {
    serde_json::from_value(obj.get("status")?.clone()).ok()
}

/// The resource an object describes, or the problems that stop it from loading, in the
/// validator's words, located at `kubernetes:<kind plural>/<namespace>/<name>`.
pub fn resource(kind: Kind, obj: &Value) -> Result<Resource, Vec<Problem>> {
    let origin = match key(kind, obj) {
        Some(k) => format!("kubernetes:{}/{}/{}", kind.plural(), k.namespace, k.name),
        None => format!("kubernetes:{}", kind.plural()),
    };
    let mut trimmed = Map::new();
    trimmed.insert(
        "apiVersion".into(),
        Value::String(crate::resource::API_VERSION.into()),
    );
    trimmed.insert("kind".into(), Value::String(kind.as_str().into()));
    if let Some(Value::Object(meta)) = obj.get("metadata") {
        let kept: Map<String, Value> = meta
            .iter()
            .filter(|(k, _)| KEPT_METADATA.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        trimmed.insert("metadata".into(), Value::Object(kept));
    }
    if let Some(spec) = obj.get("spec") {
        trimmed.insert("spec".into(), spec.clone());
    }
    let text = match serde_saphyr::to_string(&Value::Object(trimmed)) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Problem {
                file: origin,
                line: 0,
                column: 0,
                message: format!("cannot read the object: {e}"),
            }]);
        }
    };
    let mut parsed = parse_str(&origin, &text);
    if !parsed.errors.is_empty() {
        // Lines of the text written here would mean nothing to the object's author: the
        // message names the field.
        return Err(parsed
            .errors
            .into_iter()
            .map(|p| Problem {
                line: 0,
                column: 0,
                ..p
            })
            .collect());
    }
    match parsed.resources.pop() {
        Some(located) if parsed.resources.is_empty() => Ok(located.resource),
        _ => Err(vec![Problem {
            file: origin,
            line: 0,
            column: 0,
            message: "expected exactly one resource".into(),
        }]),
    }
}

/// Whether the kind's objects carry a status this controller writes.
pub fn has_status(kind: Kind) -> bool {
    matches!(kind, Kind::Machine | Kind::Container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn machine(spec: Value) -> Value {
        json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": "0", "namespace": "m", "uid": "u1", "generation": 3,
                "resourceVersion": "17", "creationTimestamp": "2026-11-25T10:00:00Z",
                "managedFields": [{"manager": "kubectl"}], "finalizers": ["x"]},
            "spec": spec,
            "status": {"phase": "Applied", "profiles": ["default"]},
        })
    }

    #[test]
    fn bookkeeping_fields_do_not_reach_the_resource() {
        let a = resource(
            Kind::Machine,
            &machine(json!({"instance": "i", "applications": []})),
        );
        let mut obj = machine(json!({"instance": "i", "applications": []}));
        obj["metadata"]["resourceVersion"] = json!("18");
        obj["status"]["phase"] = json!("Error");
        let b = resource(Kind::Machine, &obj);
        assert_eq!(a.unwrap(), b.unwrap());
    }

    #[test]
    fn generation_and_uid_are_kept() {
        let r = resource(Kind::Machine, &machine(json!({"instance": "i"}))).unwrap();
        assert_eq!(r.metadata().generation, Some(3));
        assert_eq!(r.metadata().uid.as_deref(), Some("u1"));
    }

    #[test]
    fn json_scalars_in_a_profile_read_as_in_a_file() {
        let obj = json!({
            "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": "k", "namespace": "m"},
            "spec": {"revision": 7, "lxdProfile": {
                "config": {"security.nesting": true, "linux.kernel_modules": "ip_tables", "n": 3},
                "devices": {"kmsg": {"type": "unix-char", "path": "/dev/kmsg", "major": 1}}}},
        });
        let Resource::Application(a) = resource(Kind::Application, &obj).unwrap() else {
            panic!("not an application");
        };
        let p = a.spec.lxd_profile.unwrap();
        assert_eq!(p.config["security.nesting"], "true");
        assert_eq!(p.config["n"], "3");
        assert_eq!(p.devices["kmsg"]["major"], "1");
    }

    #[test]
    fn a_bad_spec_is_reported_at_the_object() {
        let errs = resource(Kind::Machine, &machine(json!({"instanse": "i"}))).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("kubernetes:machines/m/0"),
            "{errs:?}"
        );
        assert!(errs[0].message.contains("instanse"), "{errs:?}");
    }
}
