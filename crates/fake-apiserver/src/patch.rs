//! The four patch bodies Kubernetes accepts, turned into a proposed object. Pure: the
//! store decides what of the proposal it keeps.

use serde_json::{Map, Value};

use crate::status::Status;

/// A patch's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, served as a merge patch.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/apply-patch+yaml`, server-side apply (JSON bodies only).
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(content_type: &str) -> Result<Self, Status> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(Status::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format: {other}"),
            )),
        }
    }
}

/// Parses a patch body as JSON (an apply body must be YAML's JSON subset here).
pub(crate) fn parse_body(body: &[u8], kind: PatchType) -> Result<Value, Status> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if kind == PatchType::Apply {
            "apply body (only its JSON form is supported)"
        } else {
            "patch body"
        };
        Status::bad_request(format!("invalid {what}: {e}"))
    })
}

/// Applies `patch` of type `kind` to `current` and returns the proposed object.
pub(crate) fn apply(current: &Value, patch: &Value, kind: PatchType) -> Result<Value, Status> {
    let mut proposed = current.clone();
    match kind {
        PatchType::Merge | PatchType::Apply => {
            if !patch.is_object() {
                return Err(Status::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut proposed, patch);
        }
        PatchType::Strategic => strategic_merge(&mut proposed, patch)?,
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Status::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut proposed, &ops).map_err(|e| {
                // A failed `test` is a precondition failure, as Kubernetes reports it.
                Status::invalid(format!("the JSON patch could not be applied: {e}"))
            })?;
        }
    }
    Ok(proposed)
}

/// A merge patch that also honours `$patch: replace|delete` and drops the other `$`
/// directives (`$setElementOrder/...`, `$retainKeys`). Lists are replaced whole, which is
/// what Kubernetes does for lists without a merge key, and all that Leases need.
fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), Status> {
    let Value::Object(patch) = patch else {
        return Err(Status::bad_request(
            "a strategic merge patch must be a JSON object",
        ));
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = Value::Object(without_directives(patch));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        return Ok(());
    };
    for (key, value) in patch.iter().filter(|(k, _)| !k.starts_with('$')) {
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(inner)
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                map.remove(key);
            }
            Value::Object(_) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value)?;
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The fields server-side apply tracks in `object`, as JSON pointers to their values:
/// every scalar or list (lists are atomic) outside `apiVersion`, `kind` and `metadata`,
/// plus labels and annotations. Nulls are not fields.
pub(crate) fn fields(object: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    let Value::Object(map) = object else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    collect(&value[sub], format!("/metadata/{sub}"), &mut out);
                }
            }
            _ => collect(value, format!("/{}", escape(key)), &mut out),
        }
    }
    out
}

fn collect<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, inner) in map {
                collect(inner, format!("{path}/{}", escape(key)), out);
            }
        }
        other => out.push((path, other)),
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_removes_nulls_and_replaces_lists() {
        let current = json!({"spec": {"a": 1, "b": [1, 2], "c": "x"}});
        let patch = json!({"spec": {"a": null, "b": [3]}});
        let out = apply(&current, &patch, PatchType::Merge);
        assert_eq!(out, Ok(json!({"spec": {"b": [3], "c": "x"}})));
    }

    #[test]
    fn strategic_patch_ignores_directives() {
        let current = json!({"spec": {"holderIdentity": "a", "keep": 1}});
        let patch = json!({"$setElementOrder/x": [], "spec": {"holderIdentity": null, "n": 2}});
        let out = apply(&current, &patch, PatchType::Strategic);
        assert_eq!(out, Ok(json!({"spec": {"keep": 1, "n": 2}})));
    }

    #[test]
    fn json_patch_failed_test_is_refused() {
        let current = json!({"spec": {"a": 1}});
        let patch = json!([{"op": "test", "path": "/spec/a", "value": 2}]);
        let out = apply(&current, &patch, PatchType::Json);
        assert_eq!(out.map_err(|s| s.code), Err(422));
        let patch = json!([{"op": "add", "path": "/spec/b", "value": 2}, {"op": "remove", "path": "/spec/a"}]);
        assert_eq!(
            apply(&current, &patch, PatchType::Json),
            Ok(json!({"spec": {"b": 2}}))
        );
    }

    #[test]
    fn malformed_json_patch_is_a_bad_request() {
        let out = apply(&json!({}), &json!({"op": "add"}), PatchType::Json);
        assert_eq!(out.map_err(|s| s.code), Err(400));
        assert_eq!(
            parse_body(b"{", PatchType::Apply).map_err(|s| s.code),
            Err(400)
        );
    }

    #[test]
    fn fields_skip_server_metadata_and_keep_lists_whole() {
        let object = json!({
            "apiVersion": "v1", "kind": "X",
            "metadata": {"name": "n", "labels": {"a/b": "1"}},
            "spec": {"list": [1, 2], "gone": null},
        });
        let paths: Vec<String> = fields(&object).into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/metadata/labels/a~1b", "/spec/list"]);
    }
}
