//! HTTP/1.1 exchanges with the local daemon over its Unix socket, each driven in the
//! caller's task: hyper's connection and the request are polled together, so no task is
//! spawned. Through reqwest (proxy matching, URL parsing, a pooled client with its own
//! connection task) the same request cost twice the CPU, and a request per instance is
//! the controller's hot path in an upgrade.
//!
//! A connection that has carried an exchange is kept for the next one (`Pool`): a new
//! Unix connection per request cost the controller and LXD a connect, an accept and
//! LXD's look-up of the peer's credentials each time. Only a connection that has already
//! spoken is ever kept idle. LXD 5.0 stops accepting every new connection, from every
//! client, while one open connection has not sent its first bytes (canonical/lxd#18705;
//! seen here: one silent socket stalls `curl` until it closes), and hyper's own pool
//! parks such a connection (it races a new connection against a returning idle one and
//! keeps the loser, silent): here a connection is only opened to send at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest, handshake};
use hyper::header::{CONTENT_TYPE, ETAG, HOST, IF_MATCH, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

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

/// Idle connections kept at most: one per concurrent request the controller makes (its
/// workers, the events task, a relisting), with room to spare.
const MAX_IDLE: usize = 16;

/// The daemon's socket and the connections to it that wait, idle and open, for the next
/// exchange.
pub struct Pool {
    socket: PathBuf,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub fn new(socket: PathBuf) -> Pool {
        Pool {
            socket,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle connection the daemon has not closed meanwhile.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::from_fn(|| idle.pop()).find_map(|mut c| c.still_open().then_some(c))
    }

    fn keep(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

type Body = Full<Bytes>;

/// One connection: the handle requests are sent through, and the connection itself,
/// which only makes progress while an exchange polls it.
struct Conn {
    sender: SendRequest<Body>,
    connection: Pin<Box<Connection<TokioIo<UnixStream>, Body>>>,
    open: bool,
}

impl Conn {
    async fn open(socket: &Path) -> Result<Conn, Failure> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| no_answer(&e))?;
        let (sender, connection) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| no_answer(&e))?;
        Ok(Conn {
            sender,
            connection: Box::pin(connection),
            open: true,
        })
    }

    /// Whether it can carry another exchange: the connection, polled once without
    /// waiting, has seen no close from the daemon while it was idle.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.open && self.connection.as_mut().poll(&mut cx).is_pending() && self.sender.is_ready()
    }
}

impl Conn {
    /// Whether hyper, having seen the exchange end, takes another request (not when the
    /// daemon closed the connection or said it would).
    async fn ready_again(&mut self) -> bool {
        if !self.open {
            return false;
        }
        tokio::select! {
            biased;
            ready = self.sender.ready() => ready.is_ok(),
            _ = self.connection.as_mut() => {
                self.open = false;
                false
            }
        }
    }
}

/// Awaits `work` while driving `connection` (in this task); an end of the connection is
/// noted in `open`, and its error shows in `work`'s.
async fn driving<T>(
    connection: &mut Pin<Box<Connection<TokioIo<UnixStream>, Body>>>,
    open: &mut bool,
    work: impl Future<Output = T>,
) -> T {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return done,
            _ = connection.as_mut(), if *open => *open = false,
        }
    }
}

fn no_answer(e: &dyn std::error::Error) -> Failure {
    Failure::NoAnswer(super::client::error_chain(e))
}

/// `method path_and_query` with `body` (JSON) to the daemon behind `pool`, the whole
/// answer read within `timeout`.
pub async fn exchange(
    pool: &Pool,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
    timeout: Duration,
) -> Result<Answer, Failure> {
    tokio::time::timeout(
        timeout,
        exchange_now(pool, method, path_and_query, body, if_match),
    )
    .await
    .unwrap_or(Err(Failure::Timeout))
}

async fn exchange_now(
    pool: &Pool,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
) -> Result<Answer, Failure> {
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
    let mut request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| no_answer(&e))?;
    // An idle connection first. One the daemon closed before the request went out gives
    // it back unsent; it goes on a new connection then. A request that went out and got
    // no answer is not sent again: it may have been carried out.
    let (mut conn, response) = loop {
        let (mut conn, fresh) = match pool.take() {
            Some(conn) => (conn, false),
            None => (Conn::open(&pool.socket).await?, true),
        };
        let sent = conn.sender.try_send_request(request);
        match driving(&mut conn.connection, &mut conn.open, sent).await {
            Ok(response) => break (conn, response),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !fresh => request = unsent,
                _ => return Err(no_answer(&e.into_error())),
            },
        }
    };
    let status = response.status().as_u16();
    let etag = (response.headers().get(ETAG))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = driving(
        &mut conn.connection,
        &mut conn.open,
        response.into_body().collect(),
    )
    .await;
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Err(Failure::Cut {
                status,
                reason: super::client::error_chain(&e),
            });
        }
    };
    if conn.ready_again().await {
        pool.keep(conn);
    }
    Ok(Answer { status, etag, body })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// What the test daemon does after reading a request.
    #[derive(Clone, Copy)]
    enum Then {
        /// Answers and keeps the connection open for the next request.
        AnswerAndKeep,
        /// Answers, then closes the connection without saying so.
        AnswerAndClose,
        /// Closes the connection without an answer.
        Close,
    }

    /// A daemon on a Unix socket that counts connections and requests.
    struct Daemon {
        _dir: tempfile::TempDir,
        pool: Pool,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    fn daemon(then: Then) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lxd.socket");
        let listener = UnixListener::bind(&path).unwrap();
        let (connections, requests): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(k) = stream.read(&mut buf).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..k]);
                        if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        seen.clear();
                        r.fetch_add(1, Ordering::SeqCst);
                        if let Then::AnswerAndKeep | Then::AnswerAndClose = then {
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                            stream.write_all(answer).await.unwrap();
                        }
                        if let Then::AnswerAndClose | Then::Close = then {
                            return;
                        }
                    }
                });
            }
        });
        Daemon {
            pool: Pool::new(path),
            _dir: dir,
            connections,
            requests,
        }
    }

    async fn get(d: &Daemon) -> Result<Answer, Failure> {
        exchange(
            &d.pool,
            Method::GET,
            "/1.0",
            None,
            None,
            Duration::from_secs(5),
        )
        .await
    }

    fn counts(d: &Daemon) -> (usize, usize) {
        (
            d.connections.load(Ordering::SeqCst),
            d.requests.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn a_connection_that_spoke_carries_the_next_exchange() {
        let d = daemon(Then::AnswerAndKeep);
        for _ in 0..3 {
            let a = get(&d).await.ok().expect("an answer");
            assert_eq!((a.status, &a.body[..]), (200, &b"{}"[..]));
        }
        assert_eq!(counts(&d), (1, 3), "(connections, requests)");
    }

    #[tokio::test]
    async fn a_connection_the_daemon_closed_while_idle_is_not_used_again() {
        let d = daemon(Then::AnswerAndClose);
        for _ in 0..3 {
            assert!(get(&d).await.is_ok());
        }
        assert_eq!(counts(&d), (3, 3), "(connections, requests)");
    }

    #[tokio::test]
    async fn a_request_that_went_out_without_an_answer_is_not_sent_again() {
        let d = daemon(Then::Close);
        assert!(matches!(get(&d).await, Err(Failure::NoAnswer(_))));
        assert_eq!(counts(&d), (1, 1), "(connections, requests)");
    }
}
