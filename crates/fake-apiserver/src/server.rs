//! The HTTP side: the accept loop (which can play dead), one hyper connection per
//! client, faults, the request log, and the dispatch from path to discovery or
//! [`crate::handlers`]. Plain HTTP/1.1, as kube-rs and kubectl speak it to `http://`.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::handlers::{self, ResourceRequest};
use crate::resources;
use crate::route::{Query, ResourceAttributes, Route, route};
use crate::status::Status;
use crate::store::Store;

/// Kubernetes' own limit on a request body.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request the server received (requests refused while unreachable never arrive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// The response's status code (200 for a watch, whatever its stream then says).
    pub code: u16,
    /// `None` for non-resource paths: discovery, `/version`, `/openapi`.
    pub resource: Option<ResourceAttributes>,
    /// Who asked: the bearer token, as is (the fake authenticates no one; a test gives
    /// each client its own token to tell their requests apart).
    pub user: Option<String>,
}

/// Which requests a [`Fault::Fail`] fails.
pub type RequestMatcher = Arc<dyn Fn(&Request) -> bool + Send + Sync>;

/// A failure to inject; see [`crate::FakeApiServer::set_fault`].
#[derive(Clone)]
pub enum Fault {
    /// Like a server that is down: the port refuses connections and every open one,
    /// watches included, is dropped.
    Unreachable,
    /// Every request gets 503 ServiceUnavailable.
    ServiceUnavailable,
    /// The next `remaining` requests that `matches` accepts get a Status with `code`;
    /// the fault clears itself after the last one.
    Fail {
        code: u16,
        remaining: usize,
        matches: RequestMatcher,
    },
}

impl Fault {
    /// Fails the next `times` requests that `matches` accepts with `code`.
    pub fn fail(
        code: u16,
        times: usize,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::Fail {
            code,
            remaining: times,
            matches: Arc::new(matches),
        }
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("Unreachable"),
            Self::ServiceUnavailable => f.write_str("ServiceUnavailable"),
            Self::Fail {
                code, remaining, ..
            } => write!(f, "Fail {{ code: {code}, remaining: {remaining} }}"),
        }
    }
}

/// What the connections, the handlers and the test API share.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub requests: Mutex<Vec<Request>>,
    pub fault: Mutex<Option<Fault>>,
    /// Bumped to end every open watch.
    pub cuts: watch::Sender<u64>,
    /// Bumped to drop every open connection.
    pub drops: watch::Sender<u64>,
    /// Closes (`None`) or reopens the listening port.
    pub swaps: mpsc::UnboundedSender<Option<TcpListener>>,
    pub bookmark_interval: Mutex<Duration>,
    pub log_requests: bool,
    pub addr: SocketAddr,
}

/// Locks, ignoring poisoning: a panicking test thread must not take the server down.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections until aborted. A `None` from `swaps` closes the port (the
/// server plays dead); a `Some` listener opens it again.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut swaps: mpsc::UnboundedReceiver<Option<TcpListener>>,
) {
    let mut listener = Some(listener);
    loop {
        let event = match &listener {
            Some(open) => tokio::select! {
                accepted = open.accept() => Ok(accepted),
                swap = swaps.recv() => Err(swap),
            },
            None => Err(swaps.recv().await),
        };
        match event {
            Ok(Ok((stream, _))) => {
                tokio::spawn(connection(shared.clone(), stream));
            }
            // A failed accept affects one client; pause in case it is a lack of descriptors.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(Some(swap)) => listener = swap,
            Err(None) => return,
        }
    }
}

/// Binds `addr` with `SO_REUSEADDR`, so the port of a closed listener can be taken
/// again while its old connections linger in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Opens the port again after [`Fault::Unreachable`]; retries in the background if the
/// old listener has not let go of it yet.
pub(crate) fn reopen(shared: &Arc<Shared>) {
    if let Ok(listener) = bind(shared.addr) {
        let _ = shared.swaps.send(Some(listener));
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(listener) = bind(shared.addr) {
                let _ = shared.swaps.send(Some(listener));
                return;
            }
        }
        eprintln!(
            "fake-apiserver: could not bind {} again; staying unreachable",
            shared.addr
        );
    });
}

/// Closes the port and drops every open connection.
pub(crate) fn play_dead(shared: &Shared) {
    let _ = shared.swaps.send(None);
    shared.drops.send_modify(|n| *n += 1);
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut drops = shared.drops.subscribe();
    // Accepted just as the server went down: drop it like the others.
    if matches!(*lock(&shared.fault), Some(Fault::Unreachable)) {
        return;
    }
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes the socket, mid-stream if need be.
    tokio::select! {
        _ = conn => {}
        _ = drops.changed() => {}
    }
}

pub(crate) async fn respond<B>(shared: &Arc<Shared>, req: http::Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let route = route(&path);
    let mut record = Request {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query,
        code: 0,
        resource: match &route {
            Route::Resource(r) => Some(r.attributes(&method, &query)),
            _ => None,
        },
        user: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned),
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = match injected_fault(shared, &record) {
        Some(status) => status_response(&status),
        None => match read_body(req).await {
            Ok(body) => dispatch(shared, &method, route, &query, &content_type, &body),
            Err(status) => status_response(&status),
        },
    };
    record.code = response.status().as_u16();
    if shared.log_requests {
        let q = if record.query.is_empty() {
            String::new()
        } else {
            format!("?{}", record.query)
        };
        eprintln!("{} {}{q} -> {}", record.method, record.path, record.code);
    }
    lock(&shared.requests).push(record);
    response
}

fn injected_fault(shared: &Shared, request: &Request) -> Option<Status> {
    let mut fault = lock(&shared.fault);
    match fault.as_mut()? {
        Fault::Unreachable => None,
        Fault::ServiceUnavailable => Some(Status::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )),
        Fault::Fail {
            code,
            remaining,
            matches,
        } => {
            if !matches(request) {
                return None;
            }
            let status = Status::from_code(*code);
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                *fault = None;
            }
            Some(status)
        }
    }
}

async fn read_body<B>(req: http::Request<B>) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Status::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large",
        )),
        Err(e) => Err(Status::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    route: Route,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let discovery = |document: Option<Value>| match document {
        Some(document) if method == Method::GET => json_response(StatusCode::OK, &document),
        Some(_) => status_response(&Status::method_not_allowed()),
        None => status_response(&Status::page_not_found()),
    };
    match route {
        Route::Version => discovery(Some(resources::version())),
        Route::CoreVersions => discovery(Some(resources::core_versions(shared.addr))),
        Route::Groups => discovery(Some(resources::group_list(lock(&shared.store).resources()))),
        Route::ResourceList { group, version } => discovery(resources::resource_list(
            lock(&shared.store).resources(),
            &group,
            &version,
        )),
        // OpenAPI included: kubectl copes without it when `--validate=false`.
        Route::NotFound => status_response(&Status::page_not_found()),
        Route::Resource(path) => {
            let req = ResourceRequest {
                method,
                path: &path,
                query,
                content_type,
                body,
            };
            handlers::handle(shared, &req).unwrap_or_else(|status| status_response(&status))
        }
    }
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn status_response(status: &Status) -> Response<Body> {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &status.to_json())
}

/// A chunked response of newline-delimited JSON, one chunk per event.
pub(crate) fn stream_response(
    events: impl Stream<Item = Bytes> + Send + 'static,
) -> Response<Body> {
    let frames = events.map(|line| Ok::<_, Infallible>(Frame::data(line)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}
