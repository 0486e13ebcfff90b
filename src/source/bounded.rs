//! Objects from the API server, read as plain JSON no deeper than a resource can be.
//!
//! A resource's spec is five levels deep at most (`spec.lxdProfile.devices.<name>.<key>`),
//! but an API server without the CRD's schema, or a schema that preserves unknown fields,
//! accepts objects nested thousands of levels deep. Read as a whole, one such object
//! breaks the JSON decoder's recursion limit for the whole list it is in, so that no
//! object of its kind loads at all. Read through `Bounded`, anything below `MAX_DEPTH` is
//! skipped without recursion and its container kept empty: the object still loads as far
//! as it goes, and the validator says which field is wrong, as it would for any value
//! of the wrong shape.

use std::borrow::Cow;
use std::fmt;

use kube::api::{ApiResource, ObjectMeta};
use kube::core::DynamicResourceScope;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Levels of nesting kept, counted from the object itself. Far past any field a resource
/// has (metadata's managedFields go deeper than the spec, and are not kept either), and
/// well inside the decoder's recursion limit of 128 and the YAML reader's budget of 32.
pub const MAX_DEPTH: usize = 16;

/// An object of one of the custom resources' kinds, as JSON (nothing below `MAX_DEPTH`).
#[derive(Clone, Debug)]
pub struct KubeObject {
    pub metadata: ObjectMeta,
    pub value: Value,
}

impl<'de> Deserialize<'de> for KubeObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KubeObject, D::Error> {
        let value = Bounded { depth: 0 }.deserialize(d)?;
        let metadata = value
            .get("metadata")
            .and_then(|m| serde_json::from_value::<ObjectMeta>(m.clone()).ok())
            .unwrap_or_else(|| scalar_metadata(&value));
        Ok(KubeObject { metadata, value })
    }
}

/// What metadata says in scalars, for an object whose metadata does not read whole (a
/// label of the wrong type): enough to name it and to keep watching.
fn scalar_metadata(value: &Value) -> ObjectMeta {
    let text = |k: &str| {
        value
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ObjectMeta {
        name: text("name"),
        namespace: text("namespace"),
        uid: text("uid"),
        resource_version: text("resourceVersion"),
        generation: value
            .pointer("/metadata/generation")
            .and_then(Value::as_i64),
        ..ObjectMeta::default()
    }
}

impl kube::Resource for KubeObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// JSON into a `Value`, with every array and object `depth` levels down or more kept
/// empty (their contents skipped by the decoder, which does that without recursion).
#[derive(Clone, Copy)]
pub struct Bounded {
    pub depth: usize,
}

impl Bounded {
    fn below(self) -> Bounded {
        Bounded {
            depth: self.depth + 1,
        }
    }
    fn at_limit(self) -> bool {
        self.depth >= MAX_DEPTH
    }
}

impl<'de> DeserializeSeed<'de> for Bounded {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        if self.at_limit() {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        } else {
            while let Some(v) = seq.next_element_seed(self.below())? {
                items.push(v);
            }
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        if self.at_limit() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        } else {
            while let Some(k) = map.next_key::<String>()? {
                let v = map.next_value_seed(self.below())?;
                fields.insert(k, v);
            }
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}\"x\"{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn a_list_with_one_object_nested_twenty_thousand_deep_still_reads_every_object() {
        let text = format!(
            r#"{{"items": [
                {{"metadata": {{"name": "deep", "resourceVersion": "7"}},
                  "spec": {{"lxdProfile": {{"config": {{"security.nesting": {}}}}}}}}},
                {{"metadata": {{"name": "good"}}, "spec": {{"revision": 1}}}}
            ]}}"#,
            nested(20_000)
        );
        #[derive(Deserialize)]
        struct List {
            items: Vec<KubeObject>,
        }
        let list: List = serde_json::from_str(&text).unwrap();
        assert_eq!(list.items.len(), 2);
        let deep = &list.items[0];
        assert_eq!(deep.metadata.name.as_deref(), Some("deep"));
        assert_eq!(deep.metadata.resource_version.as_deref(), Some("7"));
        assert!(depth(&deep.value) <= MAX_DEPTH + 1);
        // The field keeps its shape (an array where a scalar belongs), for the validator.
        assert!(deep.value["spec"]["lxdProfile"]["config"]["security.nesting"].is_array());
        assert_eq!(list.items[1].value["spec"]["revision"], 1);
    }

    #[test]
    fn an_object_within_the_limit_reads_as_it_is() {
        let text = r#"{"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"lxdProfile": {"devices": {"d": {"type": "disk"}}}}, "n": [1, -2, 2.5, null, true]}"#;
        let obj: KubeObject = serde_json::from_str(text).unwrap();
        assert_eq!(obj.value, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(obj.metadata.labels.unwrap()["x"], "y");
    }

    #[test]
    fn metadata_that_does_not_read_whole_still_names_the_object() {
        let text = r#"{"metadata": {"name": "a", "namespace": "m", "generation": 3, "labels": {"x": [1]}}}"#;
        let obj: KubeObject = serde_json::from_str(text).unwrap();
        assert_eq!(obj.metadata.name.as_deref(), Some("a"));
        assert_eq!(obj.metadata.namespace.as_deref(), Some("m"));
        assert_eq!(obj.metadata.generation, Some(3));
    }
}
