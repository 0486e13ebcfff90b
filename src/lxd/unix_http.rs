//! HTTP/1.1 exchanges with the local daemon over its Unix socket, written here: a request
//! is one write, its answer is read into the connection's own buffer and parsed with
//! httparse, in the caller's task. Through reqwest (proxy matching, URL parsing, a pooled
//! client with its own connection task) a request cost twice the CPU of hyper's bare
//! connection, and hyper's still a quarter of the controller's CPU in an upgrade (its
//! dispatcher, a fresh read buffer per answer, header maps): a request per instance is
//! the controller's hot path, and LXD's answers need little of HTTP (a status, an ETag,
//! a body by length or in chunks).
//!
//! A connection that has carried an exchange is kept for the next one (`Pool`): a new
//! Unix connection per request cost the controller and LXD a connect, an accept and
//! LXD's look-up of the peer's credentials each time. Only a connection that has already
//! spoken is ever kept idle. LXD 5.0 stops accepting every new connection, from every
//! client, while one open connection has not sent its first bytes (canonical/lxd#18705;
//! seen here: one silent socket stalls `curl` until it closes), and hyper's own pool
//! parks such a connection (it races a new connection against a returning idle one and
//! keeps the loser, silent): here a connection is only opened to send at once.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// An answer's status line and headers longer than this are not LXD's.
const MAX_HEAD: usize = 64 * 1024;
/// Headers an answer may have (LXD sends about eight).
const MAX_HEADERS: usize = 64;
/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A body under this size is copied out of the connection's buffer, which is kept.
const SMALL_BODY: usize = 64 * 1024;

/// The daemon's socket and the connections to it that wait, idle and open, for the next
/// exchange.
pub struct Pool {
    socket: PathBuf,
    idle: Mutex<Vec<Conn>>,
    /// Writes in flight at once: at most one per core of the host, which is the daemon's
    /// (its socket is local). A write keeps a core of LXD busy for its whole time (the
    /// database, the instance's files); more at once than it has cores only makes them
    /// wait on each other's locks: on 2 cores, 4 list writes at a time took 3-4% longer
    /// over 200 instances than 2 at a time, with a longer tail of stalls. Reads are not
    /// held back.
    writes: tokio::sync::Semaphore,
}

impl Pool {
    pub fn new(socket: PathBuf) -> Pool {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Pool::with_writes(socket, cores)
    }

    fn with_writes(socket: PathBuf, writes: usize) -> Pool {
        Pool {
            socket,
            idle: Mutex::new(Vec::new()),
            writes: tokio::sync::Semaphore::new(writes.max(1)),
        }
    }

    /// The most recently used idle connection the daemon has not closed meanwhile.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::from_fn(|| idle.pop()).find(Conn::still_open)
    }

    fn keep(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// One connection and what was read from it; between exchanges the buffer is empty (an
/// answer followed by more bytes ends the connection's use).
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(socket: &std::path::Path) -> Result<Conn, Failure> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| no_answer(&e))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Whether it can carry another exchange: a look at the socket itself (not at the
    /// runtime's record of its readiness, which a close may not have reached yet) finds
    /// nothing to read and no end.
    fn still_open(&self) -> bool {
        use rustix::net::{RecvFlags, recv};
        let mut byte = [0u8; 1];
        matches!(
            recv(
                &self.stream,
                &mut byte[..],
                RecvFlags::PEEK | RecvFlags::DONTWAIT
            ),
            Err(rustix::io::Errno::AGAIN)
        )
    }

    /// Reads what the daemon sent next into the buffer; `Ok(0)` at its end.
    async fn read_more(&mut self, at_least: usize) -> std::io::Result<usize> {
        self.buf.reserve(at_least.max(READ_CHUNK));
        self.stream.read_buf(&mut self.buf).await
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
        exchange_now(pool, &method, path_and_query, body, if_match),
    )
    .await
    .unwrap_or(Err(Failure::Timeout))
}

async fn exchange_now(
    pool: &Pool,
    method: &Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    if_match: Option<&str>,
) -> Result<Answer, Failure> {
    let request = encode_request(method, path_and_query, body.as_deref(), if_match)?;
    // Never closed: `None` would only mean no limit.
    let _write = match *method {
        Method::GET => None,
        _ => pool.writes.acquire().await.ok(),
    };
    // An idle connection first. One the daemon closed just before the request went out
    // refuses the write (a Unix socket whose peer is gone takes nothing): the request
    // goes on a new connection then. A request that went out and got no answer is not
    // sent again (it may have been carried out), except a GET on a kept connection that
    // the daemon closed without a byte of answer: the race of a request with the close of
    // an idle connection, which a read repeats safely (as Go's own client does).
    let mut reuse = true;
    let (mut conn, head) = loop {
        let (mut conn, fresh) = match reuse.then(|| pool.take()).flatten() {
            Some(conn) => (conn, false),
            None => (Conn::open(&pool.socket).await?, true),
        };
        match conn.stream.write_all(&request).await {
            Ok(()) => {}
            Err(e)
                if !fresh
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                continue;
            }
            Err(e) => return Err(no_answer(&e)),
        }
        match read_head(&mut conn, method).await {
            Ok(head) => break (conn, head),
            Err(Headless::Closed(_)) if !fresh && *method == Method::GET => reuse = false,
            Err(Headless::Closed(why)) => return Err(Failure::NoAnswer(why)),
            Err(Headless::Failed(failure)) => return Err(failure),
        }
    };
    let body = read_body(&mut conn, &head)
        .await
        .map_err(|reason| Failure::Cut {
            status: head.status,
            reason,
        })?;
    if head.keep_alive && conn.buf.is_empty() {
        // An idle connection does not hold on to a listing's worth of buffer.
        if conn.buf.capacity() > SMALL_BODY {
            conn.buf = Vec::new();
        }
        pool.keep(conn);
    }
    Ok(Answer {
        status: head.status,
        etag: head.etag,
        body: Bytes::from(body),
    })
}

/// The request's bytes: the request line, the headers LXD reads, the body.
fn encode_request(
    method: &Method,
    path_and_query: &str,
    body: Option<&[u8]>,
    if_match: Option<&str>,
) -> Result<Vec<u8>, Failure> {
    // A request line or header with a line break in it would be two requests.
    if path_and_query.contains(['\r', '\n', ' '])
        || if_match.is_some_and(|e| e.contains(['\r', '\n']))
    {
        return Err(Failure::NoAnswer(format!(
            "invalid request: {path_and_query:?} cannot go into a request line"
        )));
    }
    let mut out = Vec::with_capacity(192 + body.map_or(0, <[u8]>::len));
    for part in [
        method.as_str(),
        " ",
        path_and_query,
        concat!(
            " HTTP/1.1\r\nHost: lxd\r\nUser-Agent: lxd-mutater/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ),
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if let Some(etag) = if_match {
        out.extend_from_slice(b"If-Match: ");
        out.extend_from_slice(etag.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// What the status line and headers say.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    etag: Option<String>,
    framing: Framing,
    /// The connection carries another exchange after this one.
    keep_alive: bool,
}

/// Where the body ends.
#[derive(Debug, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// At the connection's end.
    Close,
}

/// Why no head came.
enum Headless {
    /// The connection ended (closed or reset) before a byte of answer.
    Closed(String),
    Failed(Failure),
}

/// Reads the answer's head (skipping any `1xx`), leaving the buffer at its body.
async fn read_head(conn: &mut Conn, method: &Method) -> Result<Head, Headless> {
    let mut answered = false;
    loop {
        match parse_head(&conn.buf, method) {
            Ok(Some((len, head))) => {
                conn.buf.drain(..len);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            Ok(None) if conn.buf.len() > MAX_HEAD => {
                return Err(Headless::Failed(Failure::NoAnswer(format!(
                    "the answer's head is over {} KiB",
                    MAX_HEAD / 1024
                ))));
            }
            Ok(None) => {}
            Err(why) => return Err(Headless::Failed(Failure::NoAnswer(why))),
        }
        answered |= !conn.buf.is_empty();
        match conn.read_more(0).await {
            Ok(0) if !answered => {
                return Err(Headless::Closed(
                    "connection closed before an answer".into(),
                ));
            }
            Ok(0) => {
                return Err(Headless::Failed(Failure::NoAnswer(
                    "connection closed in the middle of the answer's head".into(),
                )));
            }
            Ok(_) => {}
            Err(e) if !answered && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Headless::Closed(super::client::error_chain(&e)));
            }
            Err(e) => return Err(Headless::Failed(no_answer(&e))),
        }
    }
}

/// The head at the start of `buf` and its length, `None` while it is incomplete.
fn parse_head(buf: &[u8], method: &Method) -> Result<Option<(usize, Head)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = answer.code.ok_or("an HTTP answer without a status")?;
    let mut etag = None;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut keep_alive = answer.version == Some(1);
    for h in answer.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| format!("header {} is not text", h.name))?
            .trim();
        if h.name.eq_ignore_ascii_case("etag") {
            etag = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| format!("Content-Length {value:?} is not a number"))?;
            if length.is_some_and(|m| m != n) {
                return Err("two different Content-Length headers".into());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 6.3: no body after HEAD, 1xx, 204 and 304; Transfer-Encoding over
    // Content-Length; an encoding other than chunked last, or no length: to the end.
    let framing = if *method == Method::HEAD
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if encoded {
        Framing::Close
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some((
        len,
        Head {
            status,
            etag,
            framing,
            keep_alive,
        },
    )))
}

/// Reads the body `head` announces; the buffer keeps what follows it.
async fn read_body(conn: &mut Conn, head: &Head) -> Result<Vec<u8>, String> {
    match head.framing {
        Framing::Length(n) => {
            while conn.buf.len() < n {
                if read_some(conn, n - conn.buf.len()).await? == 0 {
                    return Err(format!(
                        "connection closed after {} of {n} bytes of the body",
                        conn.buf.len()
                    ));
                }
            }
            // A small body is copied out and the buffer kept for the next answer; a large
            // one (a listing) takes the buffer with it.
            if n < SMALL_BODY {
                let body = conn.buf[..n].to_vec();
                conn.buf.drain(..n);
                Ok(body)
            } else {
                let rest = conn.buf.split_off(n);
                Ok(std::mem::replace(&mut conn.buf, rest))
            }
        }
        Framing::Close => {
            while read_some(conn, 0).await? != 0 {}
            Ok(std::mem::take(&mut conn.buf))
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                match dechunk(&conn.buf[at..], &mut body)? {
                    Dechunked::Done(used) => {
                        conn.buf.drain(..at + used);
                        return Ok(body);
                    }
                    Dechunked::More(used) => at += used,
                }
                // What was taken goes, so that the buffer holds about a chunk, not the body.
                if at >= SMALL_BODY {
                    conn.buf.drain(..at);
                    at = 0;
                }
                if read_some(conn, 0).await? == 0 {
                    return Err("connection closed in the middle of a chunked body".into());
                }
            }
        }
    }
}

async fn read_some(conn: &mut Conn, at_least: usize) -> Result<usize, String> {
    conn.read_more(at_least)
        .await
        .map_err(|e| super::client::error_chain(&e))
}

/// How far `dechunk` got.
#[derive(Debug, PartialEq)]
enum Dechunked {
    /// The last chunk and the trailers end this many bytes in.
    Done(usize),
    /// Whole chunks up to here were taken; the rest needs more bytes.
    More(usize),
}

/// Appends the data of the whole chunks at the start of `input` to `body`.
fn dechunk(input: &[u8], body: &mut Vec<u8>) -> Result<Dechunked, String> {
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&input[at..]) else {
            return Ok(Dechunked::More(at));
        };
        let line = &input[at..at + line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| "a chunk size that is not text".to_string())?
            .trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?} is not hexadecimal"))?;
        let data = at + line_end + 2;
        if size == 0 {
            // Trailers, each a line, until an empty line.
            let mut t = data;
            loop {
                let Some(end) = find_crlf(&input[t..]) else {
                    return Ok(Dechunked::More(at));
                };
                t += end + 2;
                if end == 0 {
                    return Ok(Dechunked::Done(t));
                }
            }
        }
        let end = (data.checked_add(size))
            .filter(|end| end.checked_add(2).is_some())
            .ok_or("a chunk size past memory")?;
        if input.len() < end + 2 {
            return Ok(Dechunked::More(at));
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&input[data..end]);
        at = end + 2;
    }
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
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
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        match then {
            Then::AnswerAndKeep => answering(OK, OK.len(), false),
            Then::AnswerAndClose => answering(OK, OK.len(), true),
            Then::Close => serve(OK, 1, true, 0),
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

    /// A daemon that answers every request with `answer`, written in pieces of `piece`
    /// bytes (so every boundary of the head and the body can fall between two reads).
    /// With `close`, it closes the connection after its answer.
    fn answering(answer: &'static [u8], piece: usize, close: bool) -> Daemon {
        serve(answer, piece, close, usize::MAX)
    }

    /// `answering`, with at most `answers` answers per connection: a request after them
    /// is met with the connection's close, without an answer.
    fn serve(answer: &'static [u8], piece: usize, close: bool, answers: usize) -> Daemon {
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
                    let mut answered = 0;
                    while let Ok(k) = stream.read(&mut buf).await {
                        if k == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..k]);
                        if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        seen.clear();
                        r.fetch_add(1, Ordering::SeqCst);
                        if answered == answers {
                            return;
                        }
                        answered += 1;
                        for (k, part) in answer.chunks(piece).enumerate() {
                            if k > 0 {
                                tokio::task::yield_now().await;
                            }
                            if stream.write_all(part).await.is_err() {
                                return;
                            }
                            stream.flush().await.unwrap();
                        }
                        if close {
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

    #[tokio::test]
    async fn a_get_the_daemon_drops_on_a_kept_connection_goes_again_on_a_new_one() {
        let d = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            64,
            false,
            1,
        );
        for _ in 0..2 {
            assert!(get(&d).await.is_ok());
        }
        // The second GET went out on the kept connection, met its close, went again.
        assert_eq!(counts(&d), (2, 3), "(connections, requests)");
    }

    #[tokio::test]
    async fn a_write_the_daemon_drops_on_a_kept_connection_is_not_sent_again() {
        let d = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            64,
            false,
            1,
        );
        let patch = || {
            exchange(
                &d.pool,
                Method::PATCH,
                "/1.0/instances/c1",
                Some(b"{}".to_vec()),
                None,
                Duration::from_secs(5),
            )
        };
        assert!(patch().await.is_ok());
        assert!(matches!(patch().await, Err(Failure::NoAnswer(_))));
        assert_eq!(counts(&d), (1, 2), "(connections, requests)");
    }

    #[tokio::test]
    async fn a_chunked_body_read_a_byte_at_a_time_is_whole_and_the_connection_kept() {
        let d = answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e1\"\r\n\r\n\
              5\r\n{\"a\":\r\n3;ext=1\r\n12}\r\n0\r\nX-Trailer: t\r\n\r\n",
            1,
            false,
        );
        for _ in 0..2 {
            let a = get(&d).await.ok().expect("an answer");
            assert_eq!(
                (a.status, a.etag.as_deref(), &a.body[..]),
                (200, Some("\"e1\""), &b"{\"a\":12}"[..])
            );
        }
        assert_eq!(counts(&d), (1, 2), "(connections, requests)");
    }

    #[tokio::test]
    async fn connection_close_ends_the_connection_after_the_answer() {
        let d = answering(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            7,
            false,
        );
        for _ in 0..2 {
            let a = get(&d).await.ok().expect("an answer");
            assert_eq!((a.status, &a.body[..]), (404, &b"{}"[..]));
        }
        assert_eq!(counts(&d), (2, 2), "(connections, requests)");
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_cut() {
        let d = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", 64, true);
        match get(&d).await {
            Err(Failure::Cut { status, reason }) => {
                assert_eq!(status, 200);
                assert!(reason.contains("after 2 of 10 bytes"), "{reason}");
            }
            _ => panic!("expected a cut answer"),
        }
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_is_waited_for_until_the_timeout() {
        let d = answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            64,
            false,
        );
        // The daemon keeps the connection open: the timeout ends the wait.
        let got = exchange(
            &d.pool,
            Method::GET,
            "/1.0",
            None,
            None,
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(got, Err(Failure::Timeout)));
    }

    /// Until `done` holds; fails the test after 5 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn writes_in_flight_are_held_to_the_limit_and_reads_are_not() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lxd.socket");
        let listener = UnixListener::bind(&path).unwrap();
        // Requests read so far; a write is answered only once the test releases it.
        let seen = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (s, r) = (Arc::clone(&seen), Arc::clone(&release));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(k @ 1..) = stream.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..k]);
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let write = !seen.starts_with(b"GET ");
                        // The body ("{}") came with the head: this test's requests are tiny.
                        seen.drain(..(end + 4 + if write { 2 } else { 0 }).min(seen.len()));
                        s.fetch_add(1, Ordering::SeqCst);
                        if write {
                            r.acquire().await.unwrap().forget();
                        }
                        if stream.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = Arc::new(Pool::with_writes(path, 2));
        let write = |pool: &Arc<Pool>| {
            let pool = Arc::clone(pool);
            tokio::spawn(async move {
                let body = Some(b"{}".to_vec());
                let timeout = Duration::from_secs(10);
                exchange(
                    &pool,
                    Method::PATCH,
                    "/1.0/instances/i",
                    body,
                    None,
                    timeout,
                )
                .await
            })
        };
        let writes: Vec<_> = (0..3).map(|_| write(&pool)).collect();
        let count = || seen.load(Ordering::SeqCst);
        until("two writes at the daemon", || count() == 2).await;
        // A read goes out while both writes are held; the third write has not.
        let read = exchange(
            &pool,
            Method::GET,
            "/1.0",
            None,
            None,
            Duration::from_secs(5),
        );
        assert_eq!(read.await.ok().expect("an answer").status, 200);
        assert_eq!(count(), 3, "two writes and the read, not the third write");
        // One write answered: the third goes out.
        release.add_permits(1);
        until("the third write at the daemon", || count() == 4).await;
        release.add_permits(2);
        for w in writes {
            let answer = w.await.unwrap().ok().expect("every write answered");
            assert_eq!(answer.status, 200);
        }
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_no_answer() {
        let d = answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 64, false);
        match get(&d).await {
            Err(Failure::NoAnswer(why)) => assert!(why.contains("not an HTTP answer"), "{why}"),
            _ => panic!("expected no answer"),
        }
    }

    #[test]
    fn the_request_is_one_buffer_with_the_headers_lxd_reads() {
        let r = encode_request(
            &Method::PATCH,
            "/1.0/instances/c1?project=p",
            Some(b"{}"),
            Some("\"e\""),
        )
        .ok()
        .expect("encodes");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("PATCH /1.0/instances/c1?project=p HTTP/1.1\r\nHost: lxd\r\n"));
        assert!(text.contains("\r\nIf-Match: \"e\"\r\n"));
        assert!(text.ends_with("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(encode_request(&Method::GET, "/1.0\r\nX: y", None, None).is_err());
        assert!(encode_request(&Method::GET, "/1.0", None, Some("e\r\nX: y")).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let head = |text: &str| {
            parse_head(text.as_bytes(), &Method::GET)
                .unwrap()
                .unwrap()
                .1
        };
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(3), true));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
                .unwrap()
                .is_none()
        );
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &Method::GET
            )
            .is_err()
        );
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                &Method::GET
            )
            .is_err()
        );
    }

    #[test]
    fn dechunk_takes_whole_chunks_only() {
        let mut body = Vec::new();
        assert_eq!(
            dechunk(b"3\r\nabc\r\n4\r\nde", &mut body),
            Ok(Dechunked::More(8))
        );
        assert_eq!(body, b"abc");
        assert_eq!(dechunk(b"0\r\n\r\nrest", &mut body), Ok(Dechunked::Done(5)));
        assert!(dechunk(b"zz\r\n", &mut body).is_err());
        assert!(dechunk(b"2\r\nabXX", &mut body).is_err());
        assert!(dechunk(b"ffffffffffffffff\r\n", &mut body).is_err());
    }
}
