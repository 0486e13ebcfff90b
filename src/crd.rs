//! The CustomResourceDefinitions of the three kinds, generated from the types, so that
//! `crds/` can never say something the code does not.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde_json::{Value, json};

use crate::resource::{ApplicationSpec, GROUP, InstanceSpec, Kind, Status, VERSION};

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

/// An OpenAPI v3 schema Kubernetes accepts: inlined, without JSON-Schema-only keys.
fn schema_for<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut v = generator.into_root_schema_for::<T>().to_value();
    clean(&mut v);
    v
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

fn columns(kind: Kind) -> Value {
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    match kind {
        Kind::Application => json!([
            {"name": "Charm", "type": "string", "jsonPath": ".spec.charm"},
            {"name": "Revision", "type": "integer", "jsonPath": ".spec.revision"},
            age
        ]),
        Kind::Machine | Kind::Container => json!([
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Instance", "type": "string", "jsonPath": ".spec.instance"},
            {"name": "Profiles", "type": "string", "jsonPath": ".status.profiles"},
            age
        ]),
    }
}

fn short_names(kind: Kind) -> Value {
    match kind {
        Kind::Application => json!(["lxdapp"]),
        Kind::Machine => json!(["lxdm"]),
        Kind::Container => json!(["lxdc"]),
    }
}

/// One CRD, as a JSON value.
pub fn crd(kind: Kind) -> Value {
    let spec = match kind {
        Kind::Application => schema_for::<ApplicationSpec>(),
        Kind::Machine | Kind::Container => schema_for::<InstanceSpec>(),
    };
    let plural = kind.plural();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": plural,
                "singular": kind.as_str().to_lowercase(),
                "shortNames": short_names(kind),
                "categories": ["lxd-mutater"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns(kind),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": spec,
                        "status": schema_for::<Status>(),
                    },
                }},
            }],
        },
    })
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
