//! The resource kinds of SPEC §2, as serde and schemars types.
//!
//! These types say what users write. They do no I/O and know nothing of files or
//! positions: `parse` turns text into them, `validate` checks their values.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::profile::LxdProfile;

/// The API group and version every resource carries.
pub const API_VERSION: &str = "lxdmutater.dev/v1alpha1";
pub const GROUP: &str = "lxdmutater.dev";
pub const VERSION: &str = "v1alpha1";
/// The namespace (Juju model) of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The three kinds of resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Application,
    Machine,
    Container,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Application, Kind::Machine, Kind::Container];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Application => "Application",
            Kind::Machine => "Machine",
            Kind::Container => "Container",
        }
    }

    /// The plural used in CRD names, `get` and the state directory.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Application => "applications",
            Kind::Machine => "machines",
            Kind::Container => "containers",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a resource: kind, namespace (the Juju model) and name.
///
/// One allocation that every copy shares (a copy is a pointer, and allocates nothing):
/// a key is copied into the store, each index, the work queue, the metrics and the
/// status store. Its parts read as fields (`key.kind`, `key.namespace`, `key.name`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey(Arc<KeyParts>);

/// The parts of a `ResourceKey`, in the order keys sort by, and their hash.
pub struct KeyParts {
    pub kind: Kind,
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// Worked out once: a key is hashed by every map it is put in or looked up in (the
    /// store's indexes, the queue, the status stages), and again each time a table
    /// grows, when the strings of keys made long ago are out of the CPU's cache. The
    /// seed is random per process, as the maps' own: collisions cannot be chosen.
    hash: u64,
}

static KEY_HASHER: std::sync::LazyLock<foldhash::fast::RandomState> =
    std::sync::LazyLock::new(Default::default);

impl ResourceKey {
    pub fn new(kind: Kind, namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        let (namespace, name) = (namespace.as_ref(), name.as_ref());
        ResourceKey(Arc::new(KeyParts {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            hash: std::hash::BuildHasher::hash_one(&*KEY_HASHER, (kind, namespace, name)),
        }))
    }
}

impl PartialEq for KeyParts {
    fn eq(&self, other: &KeyParts) -> bool {
        // Different hashes: different keys, without reading the strings.
        self.hash == other.hash
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

impl Eq for KeyParts {}

impl std::hash::Hash for KeyParts {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Ord for KeyParts {
    fn cmp(&self, other: &KeyParts) -> std::cmp::Ordering {
        (self.kind, &self.namespace, &self.name).cmp(&(other.kind, &other.namespace, &other.name))
    }
}

impl PartialOrd for KeyParts {
    fn partial_cmp(&self, other: &KeyParts) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for KeyParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyParts")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

impl std::ops::Deref for ResourceKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// `metadata`. Kubernetes' own bookkeeping fields are accepted (a resource copied from
/// `kubectl get -o yaml` loads) but anything else unknown is an error: a misspelt
/// `namespace` must not silently mean `default`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// `spec` of an Application: a charm deployed in a model, and its LXD profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSpec {
    /// The charm's name; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charm: Option<String>,
    /// The charm revision; part of the charm profile's name.
    #[serde(deserialize_with = "revision")]
    #[schemars(range(min = 0))]
    pub revision: u64,
    /// Whether the application is a subordinate; informational.
    #[serde(default)]
    pub subordinate: bool,
    /// The principal applications this subordinate runs beside: its profile goes on every
    /// Machine and Container running one of them, right after the first of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subordinate_to: Vec<String>,
    /// Skip the profile rules (SPEC §4), as `juju deploy --force`.
    #[serde(default)]
    pub force: bool,
    /// The charm's `lxd-profile.yaml`, pasted as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxd_profile: Option<LxdProfile>,
}

/// Whether a machine or container is still managed (Juju's life cycle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Life {
    #[default]
    Alive,
    Dying,
    /// Stop managing the instance; touch nothing.
    Dead,
}

/// `spec` of a Machine or a Container: an LXD instance and the applications on it.
///
/// One type serves both kinds, so that the reconciler has one path; `machine` is required
/// for a Container and not allowed for a Machine (checked by `validate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// Container only: the name of the host Machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The LXD instance name; absent while the machine is not provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Applications with units here, in unit order.
    #[serde(default)]
    pub applications: Vec<String>,
    /// Operator profiles to keep, after the base ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_profiles: Vec<String>,
    #[serde(default)]
    pub life: Life,
    /// Manual machines are skipped, as in Juju.
    #[serde(default)]
    pub manual: bool,
}

/// The phase a resource is in (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// No instance yet.
    Pending,
    /// Changes are being applied.
    Idle,
    /// LXD matches the resource.
    Applied,
    /// Drift found in `--dry-run`.
    Drifted,
    Error,
    /// Manual or dead: not managed.
    Skipped,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Idle,
        Phase::Applied,
        Phase::Drifted,
        Phase::Error,
        Phase::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Idle => "Idle",
            Phase::Applied => "Applied",
            Phase::Drifted => "Drifted",
            Phase::Error => "Error",
            Phase::Skipped => "Skipped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The drift record of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detected: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last: String,
}

/// `status`: written by the controller only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    /// The profile list LXD accepted.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The spec this status reflects: the Kubernetes generation, or a spec hash for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    /// When the phase last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    /// Kubernetes only: the `Ready` condition, for tools that wait on conditions
    /// (`kubectl wait --for=condition=Ready`). Status files do not carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes condition (the `metav1.Condition` shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// One CamelCase word: the phase.
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// One resource of a known kind, as written by a user (status is the controller's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    /// `API_VERSION` and the kind's name are held without a copy of their own (a store
    /// holds every resource); any other value is kept as written, for `validate`.
    #[serde(deserialize_with = "known_or_owned")]
    pub api_version: Cow<'static, str>,
    #[serde(deserialize_with = "known_or_owned")]
    pub kind: Cow<'static, str>,
    pub metadata: Metadata,
    pub spec: S,
    /// Boxed: the desired store holds every resource, and almost none carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

/// A string, borrowed when it is `API_VERSION` or a kind's name.
fn known_or_owned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Cow<'static, str>, D::Error> {
    let s = String::deserialize(d)?;
    let known = std::iter::once(API_VERSION)
        .chain(Kind::ALL.map(Kind::as_str))
        .find(|k| *k == s);
    Ok(known.map_or(Cow::Owned(s), Cow::Borrowed))
}

pub type Application = Object<ApplicationSpec>;
/// A Machine or a Container: see `InstanceSpec`.
pub type Workload = Object<InstanceSpec>;

/// Any resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Application(Application),
    Machine(Workload),
    Container(Workload),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Application(_) => Kind::Application,
            Resource::Machine(_) => Kind::Machine,
            Resource::Container(_) => Kind::Container,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Application(a) => &a.metadata,
            Resource::Machine(w) | Resource::Container(w) => &w.metadata,
        }
    }

    pub fn key(&self) -> ResourceKey {
        let m = self.metadata();
        ResourceKey::new(self.kind(), &m.namespace, &m.name)
    }

    pub fn status(&self) -> Option<&Status> {
        match self {
            Resource::Application(a) => a.status.as_deref(),
            Resource::Machine(w) | Resource::Container(w) => w.status.as_deref(),
        }
    }

    /// The whole object as JSON (for `get -o json` and the state files).
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Resource::Application(a) => serde_json::to_value(a),
            Resource::Machine(w) | Resource::Container(w) => serde_json::to_value(w),
        };
        // Serializing plain data structs with string keys cannot fail.
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// `revision`: a non-negative integer, with a message that says so (serde's own would
/// be `invalid u64`).
fn revision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer >= 0")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("revision must be an integer >= 0, not {v}")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // A whole number past u64 arrives as a float: printing the float would
            // misquote it (99999999999999999999999 reads back as 1e23).
            if v.is_finite() && v.fract() == 0.0 && v >= 0.0 {
                return Err(E::custom(format!(
                    "revision is too large: at most {}",
                    u64::MAX
                )));
            }
            Err(E::custom(format!(
                "revision must be an integer >= 0, not {v}"
            )))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            // YAML gives plain scalars as text when asked for "any": accept digits only.
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                return v
                    .parse()
                    .map_err(|_| E::custom(format!("revision {v} is too large")));
            }
            Err(E::custom(format!(
                "revision must be an integer >= 0, not {v:?}"
            )))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<u64, E> {
            Err(E::custom(format!(
                "revision must be an integer >= 0, not {v}"
            )))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<u64, E> {
            Err(E::custom("revision must be an integer >= 0, not empty"))
        }
    }
    d.deserialize_any(V)
}
