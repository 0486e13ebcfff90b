//! What a request asks for, read from its method, path and query alone, as the real
//! server's request-info step does before authorization: the discovery document or the
//! resource path, and the RBAC attributes the request log records.

use http::Method;
use percent_encoding::percent_decode_str;

use crate::status::Status;

/// Where a path points.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    CoreVersions,
    Groups,
    ResourceList { group: String, version: String },
    Resource(ResourcePath),
    NotFound,
}

/// `/api/v1/...` or `/apis/{group}/{version}/...` below the group version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// The attributes RBAC authorizes a resource request by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: &'static str,
    /// Empty for the core group.
    pub api_group: String,
    /// The plural, such as `machines`.
    pub resource: String,
    /// `status` for `/status` requests.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl ResourceAttributes {
    /// The resource as an RBAC rule names it: `machines` or `machines/status`.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

pub(crate) fn route(path: &str) -> Route {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [] => {
            return Route::ResourceList {
                group: group.to_owned(),
                version: version.to_owned(),
            };
        }
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name), None),
        [plural, name, sub] => (plural, Some(name), Some(sub)),
        _ => return Route::NotFound,
    };
    Route::Resource(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: (*plural).to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(|s| (*s).to_owned()),
        subresource: subresource.map(|s| (*s).to_owned()),
    })
}

impl ResourcePath {
    pub(crate) fn attributes(&self, method: &Method, query: &Query) -> ResourceAttributes {
        let verb = match (method.as_str(), &self.name) {
            ("GET" | "HEAD", Some(_)) => "get",
            ("GET" | "HEAD", None) if query.flag("watch") => "watch",
            ("GET" | "HEAD", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", Some(_)) => "delete",
            ("DELETE", None) => "deletecollection",
            _ => "unknown",
        };
        ResourceAttributes {
            verb,
            api_group: self.group.clone(),
            resource: self.plural.clone(),
            subresource: self.subresource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// The decoded query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A boolean parameter: `1` and `true` are true, as in Kubernetes.
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "true" | "True"))
    }

    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, Status> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Status::bad_request(format!("invalid {name}: {v:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> Option<ResourcePath> {
        match route(path) {
            Route::Resource(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn namespaced_status_path() {
        let r = resource("/apis/lxdmutater.dev/v1alpha1/namespaces/demo/machines/0/status");
        let r = r.map(|r| r.attributes(&Method::PATCH, &Query::default()));
        assert_eq!(
            r,
            Some(ResourceAttributes {
                verb: "patch",
                api_group: "lxdmutater.dev".into(),
                resource: "machines".into(),
                subresource: Some("status".into()),
                namespace: Some("demo".into()),
                name: Some("0".into()),
            })
        );
        assert_eq!(
            r.map(|r| r.rbac_resource()).as_deref(),
            Some("machines/status")
        );
    }

    #[test]
    fn namespaces_themselves_are_cluster_scoped() {
        let r = resource("/api/v1/namespaces/demo");
        assert_eq!(r.as_ref().map(|r| r.plural.as_str()), Some("namespaces"));
        assert_eq!(r.and_then(|r| r.name).as_deref(), Some("demo"));
        let all = resource("/apis/coordination.k8s.io/v1/leases");
        let watch = Query::parse("watch=1&resourceVersion=4");
        assert_eq!(
            all.map(|r| r.attributes(&Method::GET, &watch).verb),
            Some("watch")
        );
    }

    #[test]
    fn discovery_and_unknown_paths() {
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(route("/api/"), Route::CoreVersions);
        assert!(matches!(
            route("/apis/lxdmutater.dev/v1alpha1"),
            Route::ResourceList { .. }
        ));
        assert_eq!(route("/openapi/v2"), Route::NotFound);
        assert_eq!(route("/api/v1/namespaces/a/b/c/d/e"), Route::NotFound);
    }

    #[test]
    fn query_values_are_decoded_and_checked() {
        let q = Query::parse("labelSelector=app%3Dx&limit=two&watch=true");
        assert_eq!(q.get("labelSelector"), Some("app=x"));
        assert!(q.flag("watch"));
        assert_eq!(q.number("limit").map_err(|s| s.code), Err(400));
    }
}
