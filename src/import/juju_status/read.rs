//! Reading `juju status --format=yaml`: the text to the status as Juju printed it, each
//! machine, container, application and unit with the line of its key, and an error that
//! names the file, line, column and field when the text is not such a status. Nothing
//! here decides what becomes a resource (`converter`).

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::super::{ImportError, natural_cmp};
use crate::resource::LxdProfile;
use crate::resource::names::check_resource_name;
use crate::resource::profile::ScalarText;

/// `juju status` colours its YAML on a terminal (3.x): those bytes are not YAML, and a
/// parser error about them would not say why.
pub(super) fn refuse_colour(file: &str, text: &str) -> Result<(), ImportError> {
    let Some(at) = text.find("\u{1b}[") else {
        return Ok(());
    };
    let before = &text[..at];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
    Err(ImportError::Coloured {
        file: file.to_string(),
        line,
        column,
    })
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    // `juju status` of a large model: many nodes, little nesting (containers in
    // containers are the deepest part).
    budget.max_nodes = 4_000_000;
    budget.max_events = 10_000_000;
    budget.max_total_scalar_bytes = super::super::MAX_INPUT_BYTES as usize;
    budget.max_documents = 1;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o.with_snippet = false;
    o
}

pub(super) fn parse(file: &str, text: &str) -> Result<Status, ImportError> {
    let first = match serde_saphyr::from_str_with_options::<Status>(text, options()) {
        Ok(status) => return Ok(status),
        Err(e) => e,
    };
    // Only now, to say where: the same text again with the path of each field tracked.
    // Keys are read as plain text for this pass (the tracker cannot see through the
    // positioned keys that the first pass keeps for its notes).
    let _plain = PlainKeys::set();
    let mut track = serde_path_to_error::Track::new();
    let second = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        Status::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    let (e, path) = match second {
        Err(e) => (e, track.path().to_string()),
        Ok(_) => (first, String::new()),
    };
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = yaml_message(&e);
    // `?` stands for a key the tracker did not see (a key that is itself at fault).
    let path = path.trim_end_matches(".?").to_string();
    let message = if path.is_empty() || path == "." || path == "?" {
        message
    } else {
        format!("{path}: {message}")
    };
    Err(ImportError::Yaml {
        file: file.to_string(),
        line,
        column,
        message,
    })
}

thread_local! {
    /// Set while a failed parse is repeated to find the path of the field at fault.
    static PLAIN_KEYS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keys are read without their position while this lives.
pub(super) struct PlainKeys;

impl PlainKeys {
    fn set() -> PlainKeys {
        PLAIN_KEYS.with(|p| p.set(true));
        PlainKeys
    }
}

impl Drop for PlainKeys {
    fn drop(&mut self) {
        PLAIN_KEYS.with(|p| p.set(false));
    }
}

/// The library's message without the position it carries (ours is printed in front),
/// and in the product's words where the library's are advice to its own users.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    match crate::resource::parse::innermost(e) {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => {
            return format!("the key {k:?} appears twice in this mapping");
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => {
            return "a key appears twice in this mapping".into();
        }
        serde_saphyr::Error::Budget { .. } => {
            return "larger or deeper than `juju status` output can be: refused".into();
        }
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
            return "aliases expand to more than `juju status` output holds: refused".into();
        }
        _ => {}
    }
    crate::resource::parse::unpositioned(e)
}

pub(super) fn model_name(file: &str, status: &Status) -> Result<String, ImportError> {
    let input = |message: String| ImportError::Input {
        file: file.to_string(),
        message,
    };
    let model = match &status.model {
        Some(ModelField::Status { name, type_ }) => {
            if type_.as_deref() == Some("caas") {
                return Err(input(
                    "model type is caas (Kubernetes): it has no LXD machines to import".into(),
                ));
            }
            name.clone()
        }
        Some(ModelField::Name(name)) => {
            return Err(input(format!(
                "`model: {name}` is a plain name: this is `juju show-machine` or `juju machines` \
                 output, which has no applications; import `juju status --format=yaml`"
            )));
        }
        None if status.api_version.is_some() => {
            return Err(input(
                "this is a resource file (it has apiVersion), not `juju status` output: \
                 use it as it is"
                    .into(),
            ));
        }
        None => None,
    };
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return Err(input(
            "no model.name: not the output of `juju status --format=yaml`".into(),
        ));
    };
    check_resource_name("model name", &model).map_err(input)?;
    Ok(model)
}

// ------------------------------------------------------------------------------------
// What is read of the status. Every field is optional and unknown keys are ignored
// (Juju adds keys from one version to the next); an entity Juju could not read is
// printed as `{status-error: ...}`, which is read as an entity with only that field.

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub(super) struct Status {
    pub(super) model: Option<ModelField>,
    pub(super) machines: Entries<MachineStatus>,
    pub(super) applications: Entries<AppStatus>,
    #[serde(rename = "apiVersion")]
    pub(super) api_version: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub(super) struct MachineStatus {
    pub(super) juju_status: Option<AgentStatus>,
    pub(super) instance_id: Option<Text>,
    pub(super) containers: Entries<MachineStatus>,
    pub(super) lxd_profiles: Entries<LxdProfile>,
    pub(super) status_error: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub(super) struct AgentStatus {
    pub(super) life: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub(super) struct AppStatus {
    pub(super) charm_name: Option<Text>,
    pub(super) charm_rev: Option<Text>,
    pub(super) charm_profile: Option<Text>,
    pub(super) life: Option<Text>,
    pub(super) subordinate_to: Vec<Text>,
    pub(super) units: Entries<UnitStatus>,
    pub(super) status_error: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub(super) struct UnitStatus {
    pub(super) juju_status: Option<AgentStatus>,
    pub(super) machine: Option<Text>,
    pub(super) subordinates: Entries<UnitStatus>,
    pub(super) status_error: Option<Text>,
}

/// `model:` is a mapping in `juju status` and a plain name in `juju show-machine`.
pub(super) enum ModelField {
    Status {
        name: Option<String>,
        type_: Option<String>,
    },
    Name(String),
}

impl<'de> Deserialize<'de> for ModelField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the model's status (name, type, ...)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelField, E> {
                Ok(ModelField::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelField, A::Error> {
                let (mut name, mut type_) = (None, None);
                while let Some(key) = map.next_key::<Text>()? {
                    match key.0.as_str() {
                        "name" => name = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "type" => type_ = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(ModelField::Status { name, type_ })
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar as text: Juju quotes what YAML would read otherwise (`"0"`), but a hand-edited
/// status may not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Text(pub(super) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(ScalarText).map(Text)
    }
}

/// A mapping's entries in the order written, each with the line of its key.
pub(super) struct Entries<T>(pub(super) Vec<Entry<T>>);

pub(super) struct Entry<T> {
    pub(super) key: String,
    pub(super) line: u64,
    pub(super) value: T,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<T> Entries<T> {
    /// In the order Juju prints them (yaml.v2: numbers inside keys compare as numbers).
    pub(super) fn sorted(&self) -> Vec<&Entry<T>> {
        let mut v: Vec<&Entry<T>> = self.0.iter().collect();
        v.sort_by(|a, b| natural_cmp(&a.key, &b.key));
        v
    }

    pub(super) fn get(&self, key: &str) -> Option<&T> {
        self.0.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries<T>, E> {
                Ok(Entries::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Entries<T>, E> {
                Ok(Entries::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Entries<T>, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                loop {
                    let (name, line) = if PLAIN_KEYS.with(|p| p.get()) {
                        match map.next_key::<Text>()? {
                            Some(key) => (key.0, 0),
                            None => break,
                        }
                    } else {
                        match map.next_key::<Spanned<Text>>()? {
                            Some(key) => (key.value.0, key.referenced.line()),
                            None => break,
                        }
                    };
                    if !seen.insert(name.clone()) {
                        return Err(de::Error::custom(format!(
                            "the key {name:?} appears twice in this mapping"
                        )));
                    }
                    let value = map.next_value::<T>()?;
                    out.push(Entry {
                        key: name,
                        line,
                        value,
                    });
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_option(V(std::marker::PhantomData))
    }
}
