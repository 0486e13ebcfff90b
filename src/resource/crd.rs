//! The CustomResourceDefinitions of the three kinds, generated from the types by kube's
//! derive, so that `crds/` can never say something the code does not.
//!
//! The derived types only describe the schema: objects read from the API server go
//! through the same parser and validator as files (`k8s::convert`).

use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApplicationSpec, InstanceSpec, Kind, Status};

/// Schema of an LXD config map: any scalar is accepted (SPEC §2 turns it into a string),
/// so values keep unknown fields instead of declaring a type that would reject `true`.
pub fn any_scalar_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// Schema of an LXD devices map: device name to a map of any scalars.
pub fn any_scalar_map_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
        }
    })
}

/// Drops what a structural schema may not hold: titles, `$schema`, definitions,
/// `additionalProperties: false`, and integer formats Kubernetes does not know.
fn clean(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("$schema");
            map.remove("title");
            map.remove("definitions");
            map.remove("$defs");
            // `deny_unknown_fields` says `additionalProperties: false`; Kubernetes forbids it
            // beside `properties` and prunes unknown fields itself.
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !matches!(f, "int32" | "int64" | "date-time"))
            {
                map.remove("format");
            }
            // schemars writes `minimum: 0.0` for unsigned integers.
            if let Some(m) = map.get("minimum").and_then(Value::as_f64)
                && m.fract() == 0.0
            {
                map.insert("minimum".into(), json!(m as i64));
            }
            collapse_string_enum(map);
            for (_, child) in map.iter_mut() {
                clean(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// A unit enum whose variants carry docs comes out as `oneOf` single-value enums, which
/// is not structural: fold it into one `type: string` with `enum`.
fn collapse_string_enum(map: &mut serde_json::Map<String, Value>) {
    let Some(Value::Array(variants)) = map.get("oneOf") else {
        return;
    };
    let mut values = Vec::new();
    for v in variants {
        match (v.get("type"), v.get("enum")) {
            (Some(t), Some(Value::Array(e))) if t == "string" => values.extend(e.iter().cloned()),
            _ => return,
        }
    }
    map.remove("oneOf");
    map.insert("type".into(), json!("string"));
    map.insert("enum".into(), Value::Array(values));
}

/// `spec` of an Application: a charm deployed in a model, and its LXD profile.
// Several `printcolumn(...)` share keys by design; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "lxdmutater.dev",
    version = "v1alpha1",
    kind = "Application",
    doc = "An application: its charm revision and LXD profile, applied to every machine and container it has units on.",
    plural = "applications",
    namespaced,
    status = "Status",
    shortname = "lxdapp",
    category = "lxd-mutater",
    printcolumn(name = "Charm", type_ = "string", json_path = ".spec.charm"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".spec.revision"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ApplicationCrdSpec {
    #[serde(flatten)]
    pub spec: ApplicationSpec,
}

/// Machine and Container share one spec (`InstanceSpec`), one set of columns and
/// everything else but their names.
macro_rules! instance_crd {
    ($(#[$spec_doc:meta])* $spec:ident, $kind:tt, $plural:tt, $short:tt, $doc:tt) => {
        $(#[$spec_doc])*
        // Several `printcolumn(...)` share keys by design; clippy reads them as duplicates.
        #[allow(clippy::duplicated_attributes)]
        #[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = "lxdmutater.dev",
            version = "v1alpha1",
            kind = $kind,
            doc = $doc,
            plural = $plural,
            namespaced,
            status = "Status",
            shortname = $short,
            category = "lxd-mutater",
            printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
            printcolumn(name = "Instance", type_ = "string", json_path = ".spec.instance"),
            printcolumn(name = "Profiles", type_ = "string", json_path = ".status.profiles"),
            printcolumn(
                name = "Age",
                type_ = "date",
                json_path = ".metadata.creationTimestamp"
            )
        )]
        pub struct $spec {
            #[serde(flatten)]
            pub spec: InstanceSpec,
        }
    };
}

instance_crd!(
    /// `spec` of a Machine: an LXD virtual machine or container that Juju provisioned, and
    /// the applications with units on it.
    MachineCrdSpec,
    "Machine",
    "machines",
    "lxdm",
    "A machine: the LXD instance whose profiles follow the applications on it."
);

instance_crd!(
    /// `spec` of a Container: an LXD container on a Machine, and the applications with units
    /// on it.
    ContainerCrdSpec,
    "Container",
    "containers",
    "lxdc",
    "A container on a machine: the LXD instance whose profiles follow the applications on it."
);

/// The `ApiResource` of a kind, for dynamic API calls.
pub fn api_resource(kind: Kind) -> kube::core::ApiResource {
    match kind {
        Kind::Application => kube::core::ApiResource::erase::<Application>(&()),
        Kind::Machine => kube::core::ApiResource::erase::<Machine>(&()),
        Kind::Container => kube::core::ApiResource::erase::<Container>(&()),
    }
}

/// One CRD, as a JSON value: kube's derive, then cleaned into a structural schema.
pub fn crd(kind: Kind) -> Value {
    let crd = match kind {
        Kind::Application => Application::crd(),
        Kind::Machine => Machine::crd(),
        Kind::Container => Container::crd(),
    };
    // Serializing a plain Kubernetes object cannot fail.
    let mut v = serde_json::to_value(crd).unwrap_or(Value::Null);
    if let Some(schema) = v.pointer_mut("/spec/versions/0/schema/openAPIV3Schema") {
        clean(schema);
    }
    // A host's container controller lists only its own Containers: the API server
    // filters on spec.machine (selectable fields: Kubernetes 1.31 and later).
    if kind == Kind::Container
        && let Some(Value::Object(version)) = v.pointer_mut("/spec/versions/0")
    {
        version.insert(
            "selectableFields".into(),
            serde_json::json!([{"jsonPath": ".spec.machine"}]),
        );
    }
    v
}

/// All three CRDs as one multi-document YAML stream (what `crds/crds.yaml` holds).
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for kind in Kind::ALL {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd(kind))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes rejects a schema that is not structural: every node needs a type unless
    /// it preserves unknown fields, and no `$ref` may remain.
    fn assert_structural(v: &Value, path: &str) {
        let Value::Object(map) = v else { return };
        assert!(!map.contains_key("$ref"), "{path}: $ref");
        let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        assert!(
            map.contains_key("type") || preserves,
            "{path}: no type in {v}"
        );
        if let Some(Value::Object(props)) = map.get("properties") {
            for (k, p) in props {
                assert_structural(p, &format!("{path}.{k}"));
            }
        }
        if let Some(items) = map.get("items") {
            assert_structural(items, &format!("{path}[]"));
        }
        if let Some(ap @ Value::Object(_)) = map.get("additionalProperties") {
            assert_structural(ap, &format!("{path}.*"));
        }
    }

    #[test]
    fn every_crd_schema_is_structural() {
        for kind in Kind::ALL {
            let c = crd(kind);
            let schema = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert_structural(schema, kind.as_str());
        }
    }

    #[test]
    fn checked_in_crds_are_not_stale() {
        let want = crds_yaml().unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/crds.yaml");
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "crds/crds.yaml is stale: run `cargo run -- crds > crds/crds.yaml`"
        );
    }
}
