//! The REST client: on the local socket, connections kept only once they have spoken; on
//! HTTPS, a fresh one per request (see `LxdClient::new` for why); `?project=` on every
//! call, LXD's envelopes and operations turned into values or `LxdError`s.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::endpoint::Endpoint;
use super::error::LxdError;
use super::tls;
use super::types::{
    Instance, Profile, ProfileContent, ProjectInfo, ServerInfo, WireProfile, WireServer,
    encode_component,
};
use super::unix_http::{self, Answer, Failure};
use crate::leader::WriteFence;

/// The per-request timeout unless `with_timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The seam the reconciler is written against: the real client implements it, a fake
/// does in unit tests.
pub trait LxdApi: Send + Sync + 'static {
    /// `GET /1.0/instances?recursion=1`, handed to `each` one instance at a time as it is
    /// read: a fleet's listing is never held whole beside what the caller keeps of it.
    fn each_instance<F: FnMut(Instance) + Send>(
        &self,
        each: F,
    ) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `GET /1.0/profiles?recursion=1`, one profile at a time (the `used_by` of a
    /// fleet's profiles is the size of the fleet).
    fn each_profile<F: FnMut(Profile) + Send>(
        &self,
        each: F,
    ) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `GET /1.0/instances?recursion=1`, whole.
    fn list_instances(&self) -> impl Future<Output = Result<Vec<Instance>, LxdError>> + Send {
        async move {
            let mut all = Vec::new();
            self.each_instance(|i| all.push(i)).await?;
            Ok(all)
        }
    }
    /// `GET /1.0/profiles?recursion=1`, whole.
    fn list_profiles(&self) -> impl Future<Output = Result<Vec<Profile>, LxdError>> + Send {
        async move {
            let mut all = Vec::new();
            self.each_profile(|p| all.push(p)).await?;
            Ok(all)
        }
    }
    /// `PATCH /1.0/instances/<n>` with `{"profiles": [...]}` and, when `config` is not
    /// empty, `"config": {...}`, which LXD merges into the instance's config (the
    /// controller's claim): no other field of the instance can be clobbered. `if_match`
    /// is an ETag from `get_instance`.
    fn set_instance_profiles(
        &self,
        instance: &str,
        profiles: &[String],
        config: &BTreeMap<String, String>,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `POST /1.0/profiles`.
    fn create_profile(
        &self,
        name: &str,
        content: &ProfileContent,
    ) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `PUT /1.0/profiles/<n>`: the whole content, so removed devices and keys disappear
    /// (a `PATCH` cannot remove them). Synchronous on LXD 5.0, an operation from 6.x.
    fn replace_profile(
        &self,
        name: &str,
        content: &ProfileContent,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `DELETE /1.0/profiles/<n>`; a profile still in use gives `LxdError::InUse`.
    fn delete_profile(&self, name: &str) -> impl Future<Output = Result<(), LxdError>> + Send;
    /// `GET /1.0/instances/<n>`: one instance, and its ETag (for `If-Match`). For an
    /// event about one instance; a listing serves everything else.
    fn get_instance(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(Instance, Option<String>), LxdError>> + Send;
    /// `GET /1.0`: the API version, extensions and server version; also the cheapest
    /// way to ask whether LXD answers.
    fn server(&self) -> impl Future<Output = Result<ServerInfo, LxdError>> + Send;
    /// `GET /1.0/profiles/<n>`: one profile, and its ETag.
    fn get_profile(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(Profile, Option<String>), LxdError>> + Send;
}

/// Instrumentation hook: called once per HTTP request (an operation wait is a request of
/// its own, method `GET`). `code` is `None` when no response came.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, method: &str, code: Option<u16>, elapsed: Duration);
}

/// A client for one LXD project. Cheap to clone: clones share one HTTP client.
#[derive(Clone)]
pub struct LxdClient {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    transport: Transport,
    project: String,
    endpoint: Endpoint,
    /// The pinned TLS config, kept for the events websocket.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Checked before every request that is not a GET.
    fence: WriteFence,
}

impl std::fmt::Debug for LxdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LxdClient")
            .field("endpoint", &self.inner.endpoint.display())
            .field("project", &self.inner.project)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// How a request reaches LXD.
#[derive(Clone)]
enum Transport {
    /// The local daemon's socket: our own HTTP/1.1 exchanges on connections kept open
    /// (`unix_http`).
    Unix(Arc<unix_http::Pool>),
    /// A remote daemon, `https://host:port`, its certificate pinned.
    Https { http: reqwest::Client, base: String },
}

/// LXD's response envelope, all three types.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    operation: String,
    /// Kept as text, parsed once into what the caller wants: a listing's instances carry
    /// expanded config and devices that no caller reads, and a parse into a `Value`
    /// first would build every one of them.
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

/// The metadata of a sync answer, unparsed (`None`: none, or an operation's end).
type Metadata = Option<Box<RawValue>>;

/// The part of an operation that says how it ended.
#[derive(Deserialize)]
struct Operation {
    #[serde(default)]
    status: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    err: String,
}

#[derive(Serialize)]
struct NewProfile<'a> {
    name: &'a str,
    #[serde(flatten)]
    content: &'a ProfileContent,
}

#[derive(Serialize)]
struct ProfilesPatch<'a> {
    profiles: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    config: &'a BTreeMap<String, String>,
}

impl LxdClient {
    /// A client for `project` ("default" included) at `endpoint`. Reads and checks the
    /// certificate files of an HTTPS endpoint; does not connect.
    pub fn new(endpoint: &Endpoint, project: &str) -> Result<Self, LxdError> {
        if project.is_empty() {
            return Err(LxdError::Config {
                reason: "the LXD project name is empty".into(),
            });
        }
        // Never hyper's (or reqwest's) idle pool. LXD 5.0 stops accepting every new
        // connection, from every client, while one open connection has not sent its
        // first bytes (canonical/lxd#18705, seen here too: one silent socket stalls `curl`
        // until it closes). hyper's pool races a fresh connection against a returning idle
        // one and parks the loser idle and silent, so a pooled client stalls all of LXD
        // under concurrency. The local socket keeps only connections that have spoken
        // (`unix_http::Pool`); HTTPS opens a connection per request.
        let (transport, tls) = match endpoint {
            Endpoint::Unix(path) => (
                Transport::Unix(Arc::new(unix_http::Pool::new(path.clone()))),
                None,
            ),
            Endpoint::Https {
                url,
                client_cert,
                client_key,
                server_cert,
            } => {
                let config = tls::client_config(client_cert, client_key, server_cert)?;
                let http = reqwest::Client::builder()
                    .user_agent(concat!("lxd-mutater/", env!("CARGO_PKG_VERSION")))
                    .pool_max_idle_per_host(0)
                    .tls_backend_preconfigured((*config).clone())
                    .build()
                    .map_err(|e| LxdError::Config {
                        reason: format!("cannot build the HTTP client: {}", error_chain(&e)),
                    })?;
                let base = url.trim_end_matches('/').to_string();
                (Transport::Https { http, base }, Some(config))
            }
        };
        Ok(LxdClient {
            inner: Arc::new(Inner {
                transport,
                project: project.to_string(),
                endpoint: endpoint.clone(),
                tls,
                timeout: DEFAULT_TIMEOUT,
                observer: None,
                fence: WriteFence::open(),
            }),
        })
    }

    /// Reports every HTTP request to `observer` (metrics).
    pub fn with_observer(self, observer: Arc<dyn RequestObserver>) -> Self {
        self.map_inner(|inner| inner.observer = Some(observer))
    }

    /// The per-request timeout (connect, send and the whole body). An operation wait gets
    /// this on top of the time it asks LXD to wait.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.map_inner(|inner| inner.timeout = timeout)
    }

    /// Sends no write (any method but GET) while `fence` is closed: such a call fails
    /// with `LxdError::Fenced` before anything reaches LXD.
    pub fn with_fence(self, fence: WriteFence) -> Self {
        self.map_inner(|inner| inner.fence = fence)
    }

    fn map_inner(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        f(&mut inner);
        LxdClient {
            inner: Arc::new(inner),
        }
    }

    pub fn project(&self) -> &str {
        &self.inner.project
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub(crate) fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner.tls.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `GET /1.0/projects/<p>`: whether the project exists and isolates profiles. LXD 5.0
    /// lists no instances (rather than an error) for a project that does not exist, and
    /// without `features.profiles=true` profile calls silently use the default project's
    /// profiles: check this once at start-up.
    pub async fn get_project(&self) -> Result<ProjectInfo, LxdError> {
        let path = format!("/1.0/projects/{}", encode_component(&self.inner.project));
        let (_, metadata) = self.call(Method::GET, &path, &[], None, None).await?;
        decode(&path, metadata)
    }

    /// Sends one request; follows an async answer to the end of its operation. Returns
    /// the ETag and the metadata of a sync answer (none after an operation).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<(Option<String>, Metadata), LxdError> {
        // Named only when it is needed (an error, an operation): not per request.
        let what = || format!("{method} {path}");
        let (status, etag, envelope) = self
            .send(
                method.clone(),
                path,
                query,
                body,
                if_match,
                self.inner.timeout,
            )
            .await?;
        match envelope.kind.as_str() {
            "sync" if status < 400 => Ok((etag, envelope.metadata)),
            "async" if status < 400 => {
                self.wait_operation(&what(), &envelope.operation).await?;
                Ok((etag, None))
            }
            "error" => Err(LxdError::from_lxd(
                if envelope.error_code != 0 {
                    envelope.error_code
                } else {
                    status
                },
                &envelope.error,
            )),
            _ if status >= 400 => Err(LxdError::from_lxd(status, &envelope.error)),
            other => Err(LxdError::Protocol {
                what: what(),
                reason: format!("unknown response type {other:?} with HTTP {status}"),
            }),
        }
    }

    /// Waits for an operation with LXD's own long poll and turns its failure into an error.
    async fn wait_operation(&self, what: &str, operation: &str) -> Result<(), LxdError> {
        // The operation URL may carry its own `?project=`; ours is added anyway and agrees.
        let op_path = operation.split('?').next().unwrap_or_default();
        if !op_path.starts_with("/1.0/operations/") {
            return Err(LxdError::Protocol {
                what: what.to_string(),
                reason: format!("async answer without an operation URL ({operation:?})"),
            });
        }
        let wait_secs = self.inner.timeout.as_secs().max(1);
        let secs = wait_secs.to_string();
        let wait_path = format!("{op_path}/wait");
        let timeout = Duration::from_secs(wait_secs) + self.inner.timeout;
        let (status, _, envelope) = self
            .send(
                Method::GET,
                &wait_path,
                &[("timeout", &secs)],
                None,
                None,
                timeout,
            )
            .await?;
        if envelope.kind == "error" || status >= 400 {
            let code = if envelope.error_code != 0 {
                envelope.error_code
            } else {
                status
            };
            return Err(LxdError::from_lxd(code, &envelope.error));
        }
        let op: Operation = decode(&wait_path, envelope.metadata)?;
        match op.status_code {
            200 => Ok(()),
            // Still pending or running after the wait: LXD's clock ran out, not ours.
            100..=199 => Err(LxdError::Timeout {
                what: what.to_string(),
                after: Duration::from_secs(wait_secs),
            }),
            code => {
                let message = if op.err.is_empty() {
                    format!("operation {}", op.status.to_lowercase())
                } else {
                    op.err
                };
                Err(LxdError::from_lxd(code, &message))
            }
        }
    }

    /// One HTTP request, observed; the body is read completely within `timeout`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Option<String>, Envelope), LxdError> {
        if method != Method::GET && !self.inner.fence.is_open() {
            return Err(LxdError::Fenced);
        }
        let what = || format!("{method} {path}");
        let mut path_and_query =
            format!("{path}?project={}", encode_component(&self.inner.project));
        for (k, v) in query {
            path_and_query.push('&');
            path_and_query.push_str(k);
            path_and_query.push('=');
            path_and_query.push_str(&encode_component(v));
        }
        let started = Instant::now();
        let answer = match &self.inner.transport {
            Transport::Unix(pool) => {
                unix_http::exchange(
                    pool,
                    method.clone(),
                    &path_and_query,
                    body,
                    if_match,
                    timeout,
                )
                .await
            }
            Transport::Https { http, base } => {
                let url = format!("{base}{path_and_query}");
                https_exchange(http, method.clone(), &url, body, if_match, timeout).await
            }
        };
        if let Some(observer) = &self.inner.observer {
            let code = match &answer {
                Ok(a) => Some(a.status),
                Err(Failure::Cut { status, .. }) => Some(*status),
                Err(_) => None,
            };
            observer.observe(method.as_str(), code, started.elapsed());
        }
        let Answer {
            status,
            etag,
            body: bytes,
        } = answer.map_err(|failure| match failure {
            Failure::Timeout => LxdError::Timeout {
                what: what(),
                after: timeout,
            },
            // Refused, missing socket, TLS handshake, reset mid-answer: no usable answer.
            Failure::NoAnswer(reason) | Failure::Cut { reason, .. } => LxdError::Unreachable {
                endpoint: self.inner.endpoint.display(),
                reason,
            },
        })?;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|e| {
            let snippet: String = String::from_utf8_lossy(&bytes).chars().take(120).collect();
            LxdError::Protocol {
                what: what(),
                reason: format!(
                    "HTTP {status} with a body that is not LXD JSON ({e}): {snippet:?}"
                ),
            }
        })?;
        Ok((status, etag, envelope))
    }
}

/// One request through reqwest (the HTTPS endpoint), the whole answer read within
/// `timeout`.
async fn https_exchange(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let mut request = http.request(method, url).timeout(timeout);
    if let Some(etag) = if_match {
        request = request.header(reqwest::header::IF_MATCH, etag);
    }
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let failure = |e: &reqwest::Error| {
        if e.is_timeout() {
            return Failure::Timeout;
        }
        // reqwest's own top line repeats the URL; the causes say what happened.
        Failure::NoAnswer(tls::certificate_failure(e).unwrap_or_else(|| {
            match std::error::Error::source(e) {
                Some(cause) => error_chain(cause),
                None => e.to_string(),
            }
        }))
    };
    let response = request.send().await.map_err(|e| failure(&e))?;
    let status = response.status().as_u16();
    let etag = (response.headers().get(reqwest::header::ETAG))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match response.bytes().await {
        Ok(body) => Ok(Answer { status, etag, body }),
        Err(e) => Err(match failure(&e) {
            Failure::NoAnswer(reason) => Failure::Cut { status, reason },
            other => other,
        }),
    }
}

/// An error and its causes on one line: reqwest's own text ("error sending request")
/// hides the cause that matters (refused, certificate, reset).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn decode<T: DeserializeOwned>(what: &str, metadata: Metadata) -> Result<T, LxdError> {
    let text = metadata.as_deref().map_or("null", RawValue::get);
    serde_json::from_str(text).map_err(|e| LxdError::Protocol {
        what: what.to_string(),
        reason: format!("unexpected metadata: {e}"),
    })
}

/// A JSON array's elements, each handed to `each` as soon as it is decoded (no `Vec` of
/// them all). `null` is an empty array, as `decode` reads it.
fn decode_each<T: DeserializeOwned>(
    what: &str,
    metadata: Metadata,
    each: impl FnMut(T),
) -> Result<(), LxdError> {
    struct Each<T, F>(F, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, F: FnMut(T)> serde::de::Visitor<'de> for Each<T, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element()? {
                (self.0)(item);
            }
            Ok(())
        }
    }
    let text = metadata.as_deref().map_or("null", RawValue::get);
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_any(&mut de, Each(each, std::marker::PhantomData))
        .and_then(|()| de.end())
        .map_err(|e| LxdError::Protocol {
            what: what.to_string(),
            reason: format!("unexpected metadata: {e}"),
        })
}

/// A request's JSON, written straight from `value` (no `Value` in between).
fn to_body<T: Serialize>(value: &T) -> Result<Vec<u8>, LxdError> {
    serde_json::to_vec(value).map_err(|e| LxdError::Protocol {
        what: "request body".into(),
        reason: e.to_string(),
    })
}

impl LxdApi for LxdClient {
    async fn server(&self) -> Result<ServerInfo, LxdError> {
        let (_, metadata) = self.call(Method::GET, "/1.0", &[], None, None).await?;
        let wire: WireServer = decode("/1.0", metadata)?;
        Ok(ServerInfo {
            api_version: wire.api_version,
            api_extensions: wire.api_extensions,
            server_version: wire.environment.server_version,
        })
    }

    async fn get_instance(&self, name: &str) -> Result<(Instance, Option<String>), LxdError> {
        let path = format!("/1.0/instances/{}", encode_component(name));
        let (etag, metadata) = self.call(Method::GET, &path, &[], None, None).await?;
        Ok((decode(&path, metadata)?, etag))
    }

    async fn get_profile(&self, name: &str) -> Result<(Profile, Option<String>), LxdError> {
        let path = format!("/1.0/profiles/{}", encode_component(name));
        let (etag, metadata) = self.call(Method::GET, &path, &[], None, None).await?;
        let wire: WireProfile = decode(&path, metadata)?;
        Ok((wire.into(), etag))
    }

    async fn each_instance<F: FnMut(Instance) + Send>(&self, each: F) -> Result<(), LxdError> {
        let path = "/1.0/instances";
        let (_, metadata) = self
            .call(Method::GET, path, &[("recursion", "1")], None, None)
            .await?;
        decode_each(path, metadata, each)
    }

    async fn each_profile<F: FnMut(Profile) + Send>(&self, mut each: F) -> Result<(), LxdError> {
        let path = "/1.0/profiles";
        let (_, metadata) = self
            .call(Method::GET, path, &[("recursion", "1")], None, None)
            .await?;
        decode_each(path, metadata, |w: WireProfile| each(Profile::from(w)))
    }

    async fn set_instance_profiles(
        &self,
        instance: &str,
        profiles: &[String],
        config: &BTreeMap<String, String>,
        if_match: Option<&str>,
    ) -> Result<(), LxdError> {
        let path = format!("/1.0/instances/{}", encode_component(instance));
        let body = to_body(&ProfilesPatch { profiles, config })?;
        self.call(Method::PATCH, &path, &[], Some(body), if_match)
            .await
            .map(drop)
    }

    async fn create_profile(&self, name: &str, content: &ProfileContent) -> Result<(), LxdError> {
        let body = to_body(&NewProfile { name, content })?;
        self.call(Method::POST, "/1.0/profiles", &[], Some(body), None)
            .await
            .map(drop)
    }

    async fn replace_profile(
        &self,
        name: &str,
        content: &ProfileContent,
        if_match: Option<&str>,
    ) -> Result<(), LxdError> {
        let path = format!("/1.0/profiles/{}", encode_component(name));
        let body = to_body(content)?;
        self.call(Method::PUT, &path, &[], Some(body), if_match)
            .await
            .map(drop)
    }

    async fn delete_profile(&self, name: &str) -> Result<(), LxdError> {
        let path = format!("/1.0/profiles/{}", encode_component(name));
        self.call(Method::DELETE, &path, &[], None, None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    fn metadata(text: &str) -> Metadata {
        Some(RawValue::from_string(text.to_string()).expect("JSON"))
    }

    #[test]
    fn a_listing_is_handed_over_element_by_element_and_null_is_empty() {
        let mut got: Vec<String> = Vec::new();
        decode_each("/x", metadata(r#"["a","b"]"#), |s: String| got.push(s)).expect("an array");
        assert_eq!(got, ["a", "b"]);
        decode_each("/x", None, |s: String| got.push(s)).expect("nothing");
        decode_each("/x", metadata("null"), |s: String| got.push(s)).expect("null");
        assert_eq!(got.len(), 2);
        let e = decode_each("/x", metadata(r#"{"a":1}"#), |_: String| {}).unwrap_err();
        assert!(matches!(e, LxdError::Protocol { .. }), "{e:?}");
        let e = decode_each("/x", metadata(r#"["a",1]"#), |_: String| {}).unwrap_err();
        assert!(matches!(e, LxdError::Protocol { .. }), "{e:?}");
    }
}
