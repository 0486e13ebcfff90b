//! One HTTP/1.1 exchange with the local daemon over a fresh Unix connection, driven in
//! the caller's task: hyper's connection and the request are polled together, so no task
//! is spawned and no pool is consulted. Through reqwest (proxy matching, URL parsing, a
//! pooled client with its own connection task) the same request cost twice the CPU, and
//! a request per instance is the controller's hot path in an upgrade.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, ETAG, HOST, IF_MATCH, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// What came back: the HTTP status, the ETag, the whole body.
pub struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Bytes,
}

/// Why no whole answer came.
pub enum Failure {
    /// Nothing complete within the timeout.
    Timeout,
    /// No answer at all (no socket, refused, closed before the status line).
    NoAnswer(String),
    /// A status line, then the body broke off.
    Cut { status: u16, reason: String },
}

/// `method path_and_query` with `body` (JSON) on a new connection to `socket`, the whole
/// answer read within `timeout`.
pub async fn exchange(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    tokio::time::timeout(
        timeout,
        exchange_now(socket, method, path_and_query, body, if_match),
    )
    .await
    .unwrap_or(Err(Failure::Timeout))
}

async fn exchange_now(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
) -> Result<Answer, Failure> {
    let no_answer = |e: &dyn std::error::Error| Failure::NoAnswer(super::client::error_chain(e));
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| no_answer(&e))?;
    let mut request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(HOST, "lxd")
        .header(
            USER_AGENT,
            concat!("lxd-mutater/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(etag) = if_match {
        request = request.header(IF_MATCH, etag);
    }
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| no_answer(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| no_answer(&e))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| no_answer(&e))?;
        let status = response.status().as_u16();
        let etag = (response.headers().get(ETAG))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Err(Failure::Cut {
                    status,
                    reason: super::client::error_chain(&e),
                });
            }
        };
        Ok(Answer { status, etag, body })
    };
    // The connection ends once the answer is read (LXD closes it, or hyper after a
    // one-request body); its own error shows in the answer's.
    let mut connection = std::pin::pin!(connection);
    let mut answer = std::pin::pin!(answer);
    let mut connected = true;
    loop {
        tokio::select! {
            biased;
            done = &mut answer => return done,
            _ = &mut connection, if connected => connected = false,
        }
    }
}
