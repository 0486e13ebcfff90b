//! The resource verbs on the wire: get, list (paged), watch, create, replace, patch and
//! delete, for the main resource and its `/status`. Turns requests into store calls and
//! store results into Kubernetes responses; holds the store lock for one call only.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::filter::Filter;
use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::route::{Query, ResourcePath};
use crate::server::{Body, Shared, json_response, lock, stream_response};
use crate::status::Status;
use crate::store::{Key, Part, Preconditions, Store};
use crate::watch::{self, WatchParams};

/// A resource request, its body already read.
pub(crate) struct ResourceRequest<'a> {
    pub method: &'a Method,
    pub path: &'a ResourcePath,
    pub query: &'a Query,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

pub(crate) fn handle(
    shared: &Arc<Shared>,
    req: &ResourceRequest<'_>,
) -> Result<Response<Body>, Status> {
    let (resource, part) = resolve(&lock(&shared.store), req.method, req.path)?;
    let namespace = req.path.namespace.clone().unwrap_or_default();
    let dry_run = req.query.get("dryRun") == Some("All");
    let key = |name: &str| Key {
        resource,
        namespace: namespace.clone(),
        name: name.to_owned(),
    };
    match (req.method, req.path.name.as_deref()) {
        (&Method::GET, None) if req.query.flag("watch") => watch(shared, resource, req),
        (&Method::GET, None) => list(&lock(&shared.store), resource, req),
        (&Method::GET, Some(name)) => {
            let store = lock(&shared.store);
            let object = store
                .get(&key(name))
                .ok_or_else(|| Status::not_found(store.resource(resource), name))?;
            Ok(json_response(StatusCode::OK, object))
        }
        (&Method::POST, None) => {
            let body = json_body(req)?;
            let created = lock(&shared.store).create(resource, &namespace, body, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::PUT, Some(name)) => {
            let body = json_body(req)?;
            let updated = lock(&shared.store).update(&key(name), part, body, dry_run)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = PatchType::from_content_type(req.content_type)?;
            let patch = patch::parse_body(req.body, kind)?;
            let mut store = lock(&shared.store);
            if kind == PatchType::Apply {
                let manager = req.query.get("fieldManager").ok_or_else(|| {
                    Status::bad_request("fieldManager is required for apply requests")
                })?;
                let force = req.query.flag("force");
                let (object, created) =
                    store.apply(&key(name), part, &patch, manager, force, dry_run)?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(json_response(code, &object));
            }
            let current = store
                .get(&key(name))
                .ok_or_else(|| Status::not_found(store.resource(resource), name))?;
            let proposed = patch::apply(current, &patch, kind)?;
            let updated = store.update(&key(name), part, proposed, dry_run)?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (&Method::DELETE, Some(name)) => {
            let options: Value = if req.body.is_empty() {
                json!({})
            } else {
                json_body(req)?
            };
            let preconditions = Preconditions {
                uid: options["preconditions"]["uid"].as_str().map(str::to_owned),
                resource_version: options["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(str::to_owned),
            };
            let dry_run = dry_run
                || options["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.contains(&json!("All")));
            let deleted = lock(&shared.store).delete(&key(name), &preconditions, dry_run)?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
        _ => Err(Status::method_not_allowed()),
    }
}

/// The served type a path names, and the part of its objects it addresses; 404 for an
/// unknown type, a wrong scope or an unknown subresource.
fn resolve(store: &Store, method: &Method, path: &ResourcePath) -> Result<(usize, Part), Status> {
    let resource = store
        .find(&path.group, &path.version, &path.plural)
        .ok_or_else(Status::page_not_found)?;
    let rt = store.resource(resource);
    let scope_ok = match (&path.namespace, rt.namespaced) {
        (Some(_), false) => false,
        // All-namespace paths serve only lists and watches.
        (None, true) => path.name.is_none() && method == Method::GET,
        _ => true,
    };
    let part = match path.subresource.as_deref() {
        None => Part::Main,
        Some("status") if rt.status_subresource => Part::Status,
        Some(_) => return Err(Status::page_not_found()),
    };
    if scope_ok {
        Ok((resource, part))
    } else {
        Err(Status::page_not_found())
    }
}

/// A JSON request body. Anything else is 415: `kubectl create namespace` sends protobuf,
/// which is not served (`kubectl apply` sends JSON).
fn json_body(req: &ResourceRequest<'_>) -> Result<Value, Status> {
    let media = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !media.is_empty() && media != "application/json" {
        return Err(Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (got {media})"
            ),
        ));
    }
    serde_json::from_slice(req.body)
        .map_err(|e| Status::bad_request(format!("invalid JSON body: {e}")))
}

fn filter(req: &ResourceRequest<'_>, rt: &ResourceType) -> Result<Filter, Status> {
    Filter::new(
        req.path.namespace.clone(),
        req.query.get("labelSelector"),
        req.query.get("fieldSelector"),
        rt.selectable_fields,
    )
}

/// A list, paged by `limit` and `continue`. Later pages show the objects as they are
/// now, not as of the first page; a token from before the compaction floor is 410.
fn list(
    store: &Store,
    resource: usize,
    req: &ResourceRequest<'_>,
) -> Result<Response<Body>, Status> {
    let rt = store.resource(resource);
    let filter = filter(req, rt)?;
    let limit = req.query.number("limit")?.filter(|l| *l > 0);
    let (revision, after) = match req.query.get("continue") {
        None => (store.revision(), None),
        Some(token) => {
            let (revision, position) = parse_continue(token)?;
            if revision < store.floor() {
                return Err(Status::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ));
            }
            (revision, Some(position))
        }
    };
    let mut items: Vec<&Value> = store
        .list(resource, filter.namespace.as_deref(), after)
        .filter(|o| filter.matches(o))
        .collect();
    let mut metadata = json!({"resourceVersion": store.revision().to_string()});
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            let ns = last["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = last["metadata"]["name"].as_str().unwrap_or_default();
            metadata["continue"] = json!(format!("{revision}/{ns}/{name}"));
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let list = json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// A continue token: `revision/namespace/name`; names hold no `/`.
fn parse_continue(token: &str) -> Result<(u64, (String, String)), Status> {
    let invalid = || Status::bad_request(format!("continue key is not valid: {token:?}"));
    let mut parts = token.splitn(3, '/');
    let revision = parts
        .next()
        .and_then(|r| r.parse().ok())
        .ok_or_else(invalid)?;
    let namespace = parts.next().ok_or_else(invalid)?;
    let name = parts.next().ok_or_else(invalid)?;
    Ok((revision, (namespace.to_owned(), name.to_owned())))
}

fn watch(
    shared: &Arc<Shared>,
    resource: usize,
    req: &ResourceRequest<'_>,
) -> Result<Response<Body>, Status> {
    let from = match req.query.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| Status::bad_request(format!("invalid resourceVersion: {rv:?}")))?,
        ),
    };
    let params = WatchParams {
        resource,
        filter: filter(req, lock(&shared.store).resource(resource))?,
        from,
        bookmarks: req.query.flag("allowWatchBookmarks"),
        send_initial_events: req.query.flag("sendInitialEvents"),
        timeout: req.query.number("timeoutSeconds")?.map(Duration::from_secs),
    };
    Ok(stream_response(watch::stream(shared, params)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            parse_continue("7/demo/a"),
            Ok((7, ("demo".into(), "a".into())))
        );
        assert_eq!(
            parse_continue("7//ns-a"),
            Ok((7, (String::new(), "ns-a".into())))
        );
        assert_eq!(parse_continue("x/demo/a").map_err(|s| s.code), Err(400));
        assert_eq!(parse_continue("7").map_err(|s| s.code), Err(400));
    }
}
