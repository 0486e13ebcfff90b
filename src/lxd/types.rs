//! What the LXD layer hands out: instances, profiles and server facts, as the rest of the
//! controller needs them (not LXD's whole objects).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An LXD instance (container or VM), as much of it as profile reconciliation reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Instance {
    pub name: String,
    /// The profiles in the order LXD applies them.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// LXD's status text: `Running`, `Stopped`, ...
    #[serde(default)]
    pub status: String,
    /// The controller's keys of the instance's own config (`user.lxd-mutater.*`, where
    /// it records its claim), as pairs. The rest is not kept: a fleet's listing of
    /// instances with large configs would otherwise be held, then copied, in full (and a
    /// map of two keys costs a whole tree node).
    #[serde(default, deserialize_with = "reserved_keys_only")]
    pub config: Vec<(String, String)>,
}

/// The `user.lxd-mutater.*` entries of a config map; other values are skipped unread.
fn reserved_keys_only<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct Reserved;
    impl<'de> serde::de::Visitor<'de> for Reserved {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                if k.starts_with(crate::resource::profile::RESERVED_PREFIX) {
                    out.push((k.into_owned(), m.next_value::<String>()?));
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(out)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Reserved)
}

/// The part of a profile the controller writes: what a charm's `lxd-profile.yaml` holds.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProfileContent {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

/// An LXD profile with its content and the instances that use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub content: ProfileContent,
    /// LXD's raw URLs, e.g. `/1.0/instances/i-0?project=p`.
    pub used_by: Vec<String>,
}

impl Profile {
    /// The names of the instances in `used_by` (snapshots and other kinds of users are
    /// skipped).
    pub fn used_by_instances(&self) -> impl Iterator<Item = &str> {
        self.used_by
            .iter()
            .filter_map(|url| instance_name_from_url(url))
    }
}

/// An LXD project, from `GET /1.0/projects/<p>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ProjectInfo {
    pub name: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl ProjectInfo {
    /// Whether the project has profiles of its own (`features.profiles=true`; the
    /// `default` project always has). Otherwise its profile calls reach `default`'s.
    pub fn isolates_profiles(&self) -> bool {
        self.name == "default"
            || self.config.get("features.profiles").map(String::as_str) == Some("true")
    }
}

/// Facts about the server, from `GET /1.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub api_version: String,
    pub api_extensions: Vec<String>,
    pub server_version: String,
}

/// `/1.0/instances/<name>[?query]` -> `<name>`; anything deeper (snapshots) or elsewhere
/// -> None. Names are returned as LXD wrote them: LXD's names never need escaping, and a
/// `&str` borrowed from the URL cannot carry a decoded form.
pub(crate) fn instance_name_from_url(url: &str) -> Option<&str> {
    object_name_from_url(url, "/1.0/instances/")
}

/// `<prefix><name>[?query]` -> `<name>` when `<name>` is one non-empty path segment.
pub(crate) fn object_name_from_url<'a>(url: &'a str, prefix: &str) -> Option<&'a str> {
    let path = url.split(['?', '#']).next()?;
    let name = path.strip_prefix(prefix)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some(name)
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved characters pass).
pub(crate) fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// LXD's wire form of a profile (`GET /1.0/profiles?recursion=1`).
#[derive(Deserialize)]
pub(crate) struct WireProfile {
    pub name: String,
    #[serde(flatten)]
    pub content: ProfileContent,
    #[serde(default)]
    pub used_by: Option<Vec<String>>,
}

impl From<WireProfile> for Profile {
    fn from(w: WireProfile) -> Profile {
        Profile {
            name: w.name,
            content: w.content,
            used_by: w.used_by.unwrap_or_default(),
        }
    }
}

/// LXD's wire form of `GET /1.0`.
#[derive(Deserialize)]
pub(crate) struct WireServer {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub api_extensions: Vec<String>,
    #[serde(default)]
    pub environment: WireEnvironment,
}

#[derive(Deserialize, Default)]
pub(crate) struct WireEnvironment {
    #[serde(default)]
    pub server_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_by_instances_takes_instance_names_only() {
        let profile = Profile {
            name: "p".into(),
            content: ProfileContent::default(),
            used_by: vec![
                "/1.0/instances/i-0?project=p".into(),
                "/1.0/instances/i-1".into(),
                "/1.0/instances/i-2/snapshots/s0?project=p".into(),
                "/1.0/profiles/other".into(),
                "/1.0/instances/?project=p".into(),
            ],
        };
        let names: Vec<_> = profile.used_by_instances().collect();
        assert_eq!(names, ["i-0", "i-1"]);
    }

    #[test]
    fn a_project_isolates_profiles_only_with_the_feature() {
        let project = |name: &str, feature: Option<&str>| ProjectInfo {
            name: name.into(),
            config: feature
                .map(|v| ("features.profiles".to_string(), v.to_string()))
                .into_iter()
                .collect(),
        };
        assert!(project("default", None).isolates_profiles());
        assert!(project("t", Some("true")).isolates_profiles());
        assert!(!project("t", Some("false")).isolates_profiles());
        assert!(!project("t", None).isolates_profiles());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode_component("t-1_a.b~"), "t-1_a.b~");
        assert_eq!(encode_component("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn profile_content_round_trips_as_lxd_json() {
        let json = r#"{"name":"p","description":"d","config":{"a":"1"},"devices":{"k":{"type":"unix-char"}},"used_by":null}"#;
        let wire: WireProfile = serde_json::from_str(json).unwrap();
        let p = Profile::from(wire);
        assert_eq!(p.content.config["a"], "1");
        assert_eq!(p.content.devices["k"]["type"], "unix-char");
        assert!(p.used_by.is_empty());
    }

    #[test]
    fn an_instance_keeps_only_the_controllers_config_keys() {
        let json = r#"{"name":"i","profiles":["default"],"status":"Stopped","config":{"image.os":"busybox","user.lxd-mutater.owner":"blue","volatile.uuid":"x","user.other":{"nested":1}}}"#;
        let i: Instance = serde_json::from_str(json).unwrap();
        assert_eq!(
            i.config,
            [("user.lxd-mutater.owner".to_string(), "blue".to_string())]
        );
        let none: Instance = serde_json::from_str(r#"{"name":"i","config":null}"#).unwrap();
        assert!(none.config.is_empty());
    }
}
