//! A fake Kubernetes API server for lxd-mutater's tests and its cluster-free demo.
//!
//! It speaks the real wire format over plain HTTP, so kube-rs `Api<T>`, kube-runtime's
//! `watcher`, `kube-lease-manager` and `kubectl` work against it unchanged. It serves
//! the three `lxdmutater.dev/v1alpha1` kinds, Leases, both Event APIs and Namespaces by
//! default ([`ResourceType::defaults`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fake_apiserver::{FakeApiServer, Fault};
//! use serde_json::json;
//!
//! let server = FakeApiServer::start().await;
//! let client = server.client(); // a kube::Client talking to it over TCP
//! server.create(json!({
//!     "apiVersion": "lxdmutater.dev/v1alpha1", "kind": "Machine",
//!     "metadata": {"name": "0", "namespace": "demo"}, "spec": {"instance": "juju-0"},
//! }))?;
//! server.set_fault(Fault::Unreachable); // the client now gets connection errors
//! server.clear_fault();
//! let patched: Vec<_> = server
//!     .requests()
//!     .into_iter()
//!     .filter_map(|r| r.resource)
//!     .filter(|a| a.verb == "patch")
//!     .collect();
//! # Ok(()) }
//! ```
//!
//! What it simplifies, compared with a real API server:
//! - no authentication, authorization, admission, validation or defaulting; a
//!   namespaced write does not need its Namespace to exist;
//! - a strategic merge patch is a merge patch that honours `$patch` directives (lists are
//!   replaced whole);
//! - server-side apply is a merge patch that creates a missing object and tracks which
//!   manager applied which field, to answer 409 for a conflicting apply without `force`;
//!   fields a manager stops applying are not removed, and `managedFields` is not shown;
//! - later pages of a paged list show objects as they are now, not as of the first page;
//! - core `v1` and `events.k8s.io/v1` Events are stored apart;
//! - a watch with a label selector does not turn an object that stops matching into a
//!   `DELETED` event;
//! - JSON only: lists and `get` never answer `Table` (kubectl then prints NAME and AGE),
//!   and a protobuf body is 415, so `kubectl create namespace` fails where
//!   `kubectl apply` of a Namespace works; there is no OpenAPI document (kubectl needs
//!   `--validate=false`);
//! - the compaction floor moves only by [`FakeApiServer::compact`] (or past 100,000
//!   logged changes).
//!
//! Note for tests: kube 5's default client retries 429, 503 and 504 answers by itself,
//! for minutes, so [`Fault::ServiceUnavailable`] looks like a slow server to
//! [`FakeApiServer::client`]; set `default_retry = false` on [`FakeApiServer::config`]
//! to see the 503.

#![forbid(unsafe_code)]

mod filter;
mod handlers;
mod patch;
mod resources;
mod route;
mod server;
mod status;
mod store;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinHandle;

pub use resources::ResourceType;
pub use route::ResourceAttributes;
pub use server::{Fault, Request, RequestMatcher};
pub use status::Status;

use server::{Shared, lock};
use store::{Key, Part, Preconditions, Store};

/// How to start a [`FakeApiServer`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    pub resources: Vec<ResourceType>,
    /// Print one line per request to stderr.
    pub log_requests: bool,
    /// How often a watch with `allowWatchBookmarks=true` gets a bookmark.
    pub bookmark_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            resources: ResourceType::defaults(),
            log_requests: false,
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// A running fake API server. Dropping it stops it and closes every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves the default resources on `127.0.0.1` at a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound, which leaves a test nothing to do.
    pub async fn start() -> Self {
        match Self::start_with(Config::default()).await {
            Ok(server) => server,
            Err(e) => panic!("fake-apiserver: cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Serves `config.resources` at `config.listen`.
    pub async fn start_with(config: Config) -> io::Result<Self> {
        let listener = server::bind(config.listen)?;
        let (swaps, swapped) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(config.resources)),
            requests: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
            cuts: signal::Sender::new(0),
            drops: signal::Sender::new(0),
            swaps,
            bookmark_interval: Mutex::new(config.bookmark_interval),
            log_requests: config.log_requests,
            addr: listener.local_addr()?,
        });
        let accept = tokio::spawn(server::accept_loop(shared.clone(), listener, swapped));
        Ok(Self { shared, accept })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A kube client served in process: `kube::Client::new(service, "default")` with the
    /// server's request handling as the service, no socket in between. Every fault but
    /// `Unreachable` (a matter of sockets) applies to it.
    pub fn in_process_client(&self) -> kube::Client {
        let shared = self.shared.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let shared = shared.clone();
            async move { Ok::<_, std::convert::Infallible>(server::respond(&shared, req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// The kube client configuration for this server: plain HTTP, namespace `default`,
    /// kube's defaults otherwise (which retry 429, 503 and 504 answers, for minutes).
    pub fn config(&self) -> kube::Config {
        let uri: http::Uri = self
            .url()
            .parse()
            .unwrap_or_else(|e| panic!("fake-apiserver: own URL does not parse: {e}"));
        kube::Config::new(uri)
    }

    /// A kube client for this server, over TCP, built from [`Self::config`].
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config())
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot build a plain HTTP client: {e}"))
    }

    /// A kubeconfig for this server: no TLS, no credentials, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`, for a child process's `KUBECONFIG`.
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A kubeconfig like [`Self::kubeconfig_yaml`] whose user sends `token` as its bearer
    /// token: the requests it makes carry it in [`Request::user`].
    pub fn kubeconfig_as(&self, path: impl AsRef<Path>, token: &str) -> io::Result<()> {
        let yaml = self
            .kubeconfig_yaml()
            .replace("  user: {}\n", &format!("  user:\n    token: {token}\n"));
        std::fs::write(path, yaml)
    }

    /// Creates `object` (its type from `apiVersion` and `kind`, its namespace from
    /// `metadata.namespace`, else `default`) as a user would, with no request logged.
    pub fn create(&self, object: Value) -> Result<Value, Status> {
        let mut store = lock(&self.shared.store);
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = store
            .find_by_name(api_version, kind)
            .ok_or_else(|| Status::bad_request(format!("{api_version} {kind} is not served")))?;
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        store.create(resource, &namespace, object, false)
    }

    /// The object of type `api_version` + `plural` (or kind); `namespace` is ignored for
    /// cluster-scoped types.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let store = lock(&self.shared.store);
        let key = key(&store, api_version, plural, namespace, name).ok()?;
        store.get(&key).cloned()
    }

    /// Every object of a type, in `namespace` if given, ordered by namespace and name.
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = lock(&self.shared.store);
        match store.find_by_name(api_version, plural) {
            Some(resource) => store.list(resource, namespace, None).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// A merge patch of the main resource (any `status` in it is ignored when status is
    /// a subresource), with the same generation and resourceVersion rules as a request.
    pub fn patch_merge(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, Status> {
        self.patch(api_version, plural, namespace, name, patch, Part::Main)
    }

    /// A merge patch of the status subresource: changes only `status`.
    pub fn patch_status(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, Status> {
        self.patch(api_version, plural, namespace, name, patch, Part::Status)
    }

    fn patch(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
        part: Part,
    ) -> Result<Value, Status> {
        let mut store = lock(&self.shared.store);
        let key = key(&store, api_version, plural, namespace, name)?;
        let current = store
            .get(&key)
            .ok_or_else(|| Status::not_found(store.resource(key.resource), name))?;
        let proposed = patch::apply(current, patch, patch::PatchType::Merge)?;
        store.update(&key, part, proposed, false)
    }

    /// Deletes the object (or marks it, while it has finalizers).
    pub fn delete(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, Status> {
        let mut store = lock(&self.shared.store);
        let key = key(&store, api_version, plural, namespace, name)?;
        store.delete(&key, &Preconditions::default(), false)
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).revision()
    }

    /// Every request received since the start or the last [`Self::clear_requests`], in
    /// the order their responses began.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Forgets the change history: a watch or continue token from any resourceVersion
    /// handed out so far now gets 410 Expired, so clients must list again.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Ends every open watch stream now (cleanly, as at its timeout).
    pub fn cut_watches(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Injects `fault`, replacing any other.
    pub fn set_fault(&self, fault: Fault) {
        let unreachable = matches!(fault, Fault::Unreachable);
        let previous = lock(&self.shared.fault).replace(fault);
        self.reachability(matches!(previous, Some(Fault::Unreachable)), unreachable);
    }

    /// Removes the fault; an unreachable server listens on its port again.
    pub fn clear_fault(&self) {
        let previous = lock(&self.shared.fault).take();
        self.reachability(matches!(previous, Some(Fault::Unreachable)), false);
    }

    fn reachability(&self, was_unreachable: bool, unreachable: bool) {
        match (was_unreachable, unreachable) {
            (false, true) => server::play_dead(&self.shared),
            (true, false) => server::reopen(&self.shared),
            _ => {}
        }
    }

    /// How often watches that allow bookmarks get one; applies to watches started later.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.drops.send_modify(|n| *n += 1);
    }
}

fn key(
    store: &Store,
    api_version: &str,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Key, Status> {
    let resource = store
        .find_by_name(api_version, plural)
        .ok_or_else(|| Status::bad_request(format!("{api_version} {plural} is not served")))?;
    let namespace = if store.resource(resource).namespaced {
        namespace.to_owned()
    } else {
        String::new()
    };
    Ok(Key {
        resource,
        namespace,
        name: name.to_owned(),
    })
}
