//! A charm's LXD profile (`lxdProfile`), read leniently as SPEC §2 says, and Juju's
//! profile rules (SPEC §4).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The content of an LXD profile as a charm declares it.
///
/// Reading is lenient: scalar values of any YAML type become LXD strings as written
/// (`true` -> `"true"`, `0fce` -> `"0fce"`), an empty value becomes `""`, and the `name`
/// and `used_by` keys that pasted `lxc profile show` dumps carry are dropped and
/// remembered in `ignored_keys` so that the caller can warn. Any other key is an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LxdProfile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::resource::crd::any_scalar_map")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::resource::crd::any_scalar_map_map")]
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// Keys that were read and dropped (`name`, `used_by`).
    #[serde(skip)]
    #[schemars(skip)]
    pub ignored_keys: Vec<String>,
}

impl LxdProfile {
    /// A profile with no config and no devices is empty and never written (as in Juju).
    pub fn is_empty(&self) -> bool {
        self.config.is_empty() && self.devices.is_empty()
    }
}

/// The config keys the controller records on LXD objects (owner, identity, claim): not
/// content, and never set by a resource.
pub const RESERVED_PREFIX: &str = "user.lxd-mutater.";

/// The keys of a pasted profile that are dropped with a warning.
pub const IGNORED_PROFILE_KEYS: [&str; 2] = ["name", "used_by"];
const PROFILE_KEYS: [&str; 5] = ["description", "config", "devices", "name", "used_by"];

/// A YAML scalar of any type, as the LXD string it stands for.
struct LxdString(String);

impl<'de> Deserialize<'de> for LxdString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML deserializers hand a plain scalar over as its text when asked for a string,
        // which keeps `0123` and `0fce` exactly as written.
        d.deserialize_option(OptionAsString)
    }
}

/// Asks for an option first so that `~` and empty values are seen as null, then for the
/// scalar's text.
struct OptionAsString;

impl<'de> Visitor<'de> for OptionAsString {
    type Value = LxdString;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar value (string, number or boolean)")
    }
    fn visit_none<E: de::Error>(self) -> Result<LxdString, E> {
        Ok(LxdString(String::new()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<LxdString, E> {
        Ok(LxdString(String::new()))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LxdString, D::Error> {
        d.deserialize_string(ScalarText).map(LxdString)
    }
}

/// Any YAML scalar as its text (`true`, `8`, `0.5`): for a visitor's
/// `deserialize_string`, here and wherever a hand-written file may leave a string
/// unquoted (`juju status` read by the importer).
pub(crate) struct ScalarText;

impl Visitor<'_> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar value (string, number or boolean)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// A map of scalars, where the map itself may be empty or null.
struct ScalarMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for ScalarMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: Option<BTreeMap<String, LxdString>> = Option::deserialize(d)?;
        Ok(ScalarMap(
            m.unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for LxdProfile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LxdProfile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LXD profile (description, config, devices)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<LxdProfile, E> {
                Ok(LxdProfile::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<LxdProfile, E> {
                Ok(LxdProfile::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LxdProfile, D::Error> {
                d.deserialize_map(V)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LxdProfile, A::Error> {
                let mut p = LxdProfile::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "description" => p.description = map.next_value::<LxdString>()?.0,
                        "config" => p.config = map.next_value::<ScalarMap>()?.0,
                        "devices" => {
                            let devices: Option<BTreeMap<String, ScalarMap>> = map.next_value()?;
                            p.devices = devices
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect();
                        }
                        k if IGNORED_PROFILE_KEYS.contains(&k) => {
                            map.next_value::<IgnoredAny>()?;
                            p.ignored_keys.push(key);
                        }
                        _ => return Err(de::Error::unknown_field(&key, &PROFILE_KEYS)),
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_option(V)
    }
}

/// Device types a charm profile may carry (Juju's allow list).
pub const ALLOWED_DEVICE_TYPES: [&str; 4] = ["unix-char", "unix-block", "gpu", "usb"];
/// Config key prefixes a charm profile may not set.
pub const FORBIDDEN_CONFIG_PREFIXES: [&str; 3] = ["boot", "limits", "migration"];

/// One breach of the profile rules, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleViolation {
    /// Juju's wording: `invalid lxd-profile: contains device type "disk"`.
    pub message: String,
    /// Where in the profile: `["config", "boot.autostart"]` or `["devices", "root", "type"]`.
    pub field: Vec<String>,
}

/// Juju's `ValidateConfigDevices`: every violation, sorted by message.
pub fn check_rules(profile: &LxdProfile) -> Vec<RuleViolation> {
    let mut out = Vec::new();
    for (name, device) in &profile.devices {
        if let Some(t) = device.get("type")
            && !ALLOWED_DEVICE_TYPES.contains(&t.as_str())
        {
            out.push(RuleViolation {
                message: format!("invalid lxd-profile: contains device type {t:?}"),
                field: vec!["devices".into(), name.clone(), "type".into()],
            });
        }
    }
    for key in profile.config.keys() {
        if FORBIDDEN_CONFIG_PREFIXES.iter().any(|p| key.starts_with(p)) {
            out.push(RuleViolation {
                message: format!("invalid lxd-profile: contains config value {key:?}"),
                field: vec!["config".into(), key.clone()],
            });
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> LxdProfile {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn scalars_of_any_type_become_lxd_strings_as_written() {
        let p = parse(
            "config:\n  security.nesting: true\n  a: 1\n  b: 0123\n  c: ''\n  d:\n  e: 1.50\n\
             devices:\n  sony: {type: usb, vendorid: 0fce, productid: 51da}\n",
        );
        assert_eq!(p.config["security.nesting"], "true");
        assert_eq!(p.config["a"], "1");
        assert_eq!(p.config["b"], "0123");
        assert_eq!(p.config["c"], "");
        assert_eq!(p.config["d"], "");
        assert_eq!(p.config["e"], "1.50");
        assert_eq!(p.devices["sony"]["vendorid"], "0fce");
    }

    #[test]
    fn pasted_name_and_used_by_are_dropped_and_remembered() {
        let p = parse("name: maas\nused_by: []\nconfig: {security.privileged: 'true'}\n");
        assert_eq!(p.ignored_keys, vec!["name", "used_by"]);
        assert_eq!(p.config.len(), 1);
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let e = serde_saphyr::from_str::<LxdProfile>("confg: {}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `confg`"), "{e}");
    }

    #[test]
    fn empty_and_null_profiles_are_empty() {
        assert!(parse("{}").is_empty());
        assert!(parse("config:\ndevices:\n").is_empty());
        assert!(parse("description: only words\n").is_empty());
    }

    #[test]
    fn rules_report_every_violation_sorted_in_jujus_words() {
        let p = parse(
            "config: {boot.autostart: true, limits.cpu: '2', migration.x: y, security.nesting: true}\n\
             devices:\n  root: {type: disk, path: /}\n  kvm: {type: unix-char, path: /dev/kvm}\n  eth0: {type: nic}\n  x: {path: /p}\n",
        );
        let got: Vec<String> = check_rules(&p).into_iter().map(|v| v.message).collect();
        assert_eq!(
            got,
            vec![
                "invalid lxd-profile: contains config value \"boot.autostart\"",
                "invalid lxd-profile: contains config value \"limits.cpu\"",
                "invalid lxd-profile: contains config value \"migration.x\"",
                "invalid lxd-profile: contains device type \"disk\"",
                "invalid lxd-profile: contains device type \"nic\"",
            ]
        );
    }
}
