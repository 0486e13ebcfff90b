//! The resource types the fake serves and the discovery documents that describe them
//! (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`): enough for kubectl
//! to map `machines` or `lxdm` to a path. Owns no state.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

/// One served resource type, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// The API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural name used in paths, such as `machines`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    /// False for cluster-scoped types such as `namespaces`.
    pub namespaced: bool,
    /// With a status subresource, `status` is written only through `/status`, and
    /// generation moves only on changes outside `metadata` and `status`.
    pub status_subresource: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Fields a `fieldSelector` may name beside `metadata.name` and `metadata.namespace`
    /// (a CRD's `selectableFields`, as paths without the leading dot).
    pub selectable_fields: &'static [&'static str],
}

const CATEGORIES: &[&str] = &["lxd-mutater"];

impl ResourceType {
    const fn custom(plural: &'static str, singular: &'static str, kind: &'static str) -> Self {
        Self {
            group: "lxdmutater.dev",
            version: "v1alpha1",
            plural,
            singular,
            kind,
            namespaced: true,
            status_subresource: true,
            short_names: &[],
            categories: CATEGORIES,
            selectable_fields: &[],
        }
    }

    const fn builtin(group: &'static str, plural: &'static str, kind: &'static str) -> Self {
        Self {
            group,
            version: "v1",
            plural,
            singular: "",
            kind,
            namespaced: true,
            status_subresource: false,
            short_names: &[],
            categories: &[],
            selectable_fields: &[],
        }
    }

    /// lxd-mutater's `Machine`.
    pub const MACHINES: Self = Self {
        short_names: &["lxdm"],
        ..Self::custom("machines", "machine", "Machine")
    };
    /// lxd-mutater's `Container`.
    pub const CONTAINERS: Self = Self {
        short_names: &["lxdc"],
        selectable_fields: &["spec.machine"],
        ..Self::custom("containers", "container", "Container")
    };
    /// lxd-mutater's `Application`.
    pub const APPLICATIONS: Self = Self {
        short_names: &["lxdapp"],
        ..Self::custom("applications", "application", "Application")
    };
    /// `coordination.k8s.io/v1` leases, for leader election.
    pub const LEASES: Self = Self {
        singular: "lease",
        ..Self::builtin("coordination.k8s.io", "leases", "Lease")
    };
    /// Core `v1` events. Stored apart from `events.k8s.io` ones, unlike Kubernetes.
    pub const CORE_EVENTS: Self = Self {
        short_names: &["ev"],
        singular: "event",
        ..Self::builtin("", "events", "Event")
    };
    /// `events.k8s.io/v1` events.
    pub const EVENTS: Self = Self {
        short_names: &["ev"],
        singular: "event",
        ..Self::builtin("events.k8s.io", "events", "Event")
    };
    /// Core `v1` namespaces (cluster-scoped; not required to exist for namespaced writes).
    pub const NAMESPACES: Self = Self {
        short_names: &["ns"],
        singular: "namespace",
        namespaced: false,
        ..Self::builtin("", "namespaces", "Namespace")
    };

    /// What [`crate::Config::default`] serves.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::MACHINES,
            Self::CONTAINERS,
            Self::APPLICATIONS,
            Self::LEASES,
            Self::CORE_EVENTS,
            Self::EVENTS,
            Self::NAMESPACES,
        ]
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural`), as Kubernetes names the type in error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// `/version`: a Kubernetes 1.33 server, so kubectl 1.32 sees no skew warning.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub(crate) fn core_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

/// `/apis`: every named group, one version each (the first one listed is preferred).
pub(crate) fn group_list(resources: &[ResourceType]) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(r.group).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": entries, "preferredVersion": entries[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}`; `None` when nothing is served there.
pub(crate) fn resource_list(
    resources: &[ResourceType],
    group: &str,
    version: &str,
) -> Option<Value> {
    let served: Vec<Value> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(ResourceType::discovery_entries)
        .collect();
    if served.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": served,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_discoverable_by_short_name_with_a_status_subresource() {
        let list = resource_list(&ResourceType::defaults(), "lxdmutater.dev", "v1alpha1");
        let list = list.unwrap_or_default();
        assert_eq!(list["groupVersion"], "lxdmutater.dev/v1alpha1");
        assert_eq!(list["resources"][0]["shortNames"], json!(["lxdm"]));
        assert_eq!(list["resources"][1]["name"], "machines/status");
    }

    #[test]
    fn core_group_is_not_among_named_groups() {
        let groups = group_list(&ResourceType::defaults());
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["coordination.k8s.io", "events.k8s.io", "lxdmutater.dev"]
        );
        assert!(resource_list(&ResourceType::defaults(), "", "v1").is_some());
        assert!(resource_list(&ResourceType::defaults(), "apps", "v1").is_none());
    }
}
