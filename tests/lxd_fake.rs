//! The LXD client against a hand-written fake server, for what the real LXD will not do
//! on demand: broken bodies, silence, resets, LXD 6.x style async operations, websocket
//! disconnections, a TLS server that is not the pinned one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lxd_mutater::lxd::{
    Endpoint, ErrorCategory, EventNotice, LifecycleAction, LxdApi, LxdClient, LxdError,
    ProfileContent, RequestObserver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_tungstenite::tungstenite::Message;

/// What the fake does with one request.
enum Reply {
    /// Send these bytes (a whole HTTP response) and keep the connection.
    Raw(String),
    /// A JSON body with this status.
    Json(u16, &'static str),
    /// Read the request and never answer.
    Silence,
    /// Send these bytes, then never finish.
    Stall(String),
    /// Close the connection without a word.
    Hangup,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A fake LXD on a Unix socket; `route` maps a request line to a reply.
struct FakeLxd {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLxd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLxd {
    fn start(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> FakeLxd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("unix.socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Seen::default();
        let route = Arc::new(route);
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let route = route.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    while let Some(line) = read_request(&mut stream).await {
                        recorded.0.lock().unwrap().push(line.clone());
                        match route(&line) {
                            Reply::Raw(bytes) => {
                                if stream.write_all(bytes.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Json(status, body) => {
                                let bytes = format!(
                                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                if stream.write_all(bytes.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Silence => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            Reply::Stall(bytes) => {
                                let _ = stream.write_all(bytes.as_bytes()).await;
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            Reply::Hangup => return,
                        }
                    }
                });
            }
        });
        FakeLxd {
            _dir: dir,
            socket,
            seen,
            task,
        }
    }

    fn client(&self, timeout: Duration) -> LxdClient {
        LxdClient::new(&Endpoint::Unix(self.socket.clone()), "p")
            .unwrap()
            .with_timeout(timeout)
    }
}

/// Reads one request (head and Content-Length body); returns its request line.
async fn read_request(stream: &mut tokio::net::UnixStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head.lines().next().unwrap_or_default().to_string())
}

const SHORT: Duration = Duration::from_secs(1);

fn nesting(value: &str) -> ProfileContent {
    let mut c = ProfileContent::default();
    c.config.insert("security.nesting".into(), value.into());
    c
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error() {
    let fake = FakeLxd::start(|_| {
        Reply::Raw("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"type\":".into())
    });
    let err = fake.client(SHORT).list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Protocol, "{err}");
}

#[tokio::test]
async fn metadata_of_the_wrong_shape_is_a_protocol_error() {
    let fake = FakeLxd::start(|_| {
        Reply::Json(
            200,
            r#"{"type":"sync","status_code":200,"metadata":{"not":"a list"}}"#,
        )
    });
    let err = fake.client(SHORT).list_instances().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Protocol, "{err}");
}

#[tokio::test]
async fn an_html_error_page_is_a_protocol_error() {
    let fake = FakeLxd::start(|_| {
        Reply::Raw("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 16\r\n\r\n<html>bad</html>".into())
    });
    let err = fake.client(SHORT).list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Protocol, "{err}");
    assert!(err.to_string().contains("502"), "{err}");
}

#[tokio::test]
async fn an_unknown_response_type_is_a_protocol_error() {
    let fake = FakeLxd::start(|_| Reply::Json(200, r#"{"type":"weird","metadata":null}"#));
    let err = fake.client(SHORT).delete_profile("x").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Protocol, "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let fake = FakeLxd::start(|_| Reply::Silence);
    let started = Instant::now();
    let err = fake.client(SHORT).list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("GET /1.0/profiles"), "{err}");
}

#[tokio::test]
async fn a_body_that_never_ends_times_out() {
    let fake = FakeLxd::start(|_| {
        Reply::Stall(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\":\"sync\",".into(),
        )
    });
    let started = Instant::now();
    let err = fake.client(SHORT).list_instances().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_unreachable_or_protocol() {
    let fake = FakeLxd::start(|_| Reply::Hangup);
    let started = Instant::now();
    let err = fake.client(SHORT).list_instances().await.unwrap_err();
    assert!(
        matches!(
            err.category(),
            ErrorCategory::Unreachable | ErrorCategory::Protocol
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_missing_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let client = LxdClient::new(&Endpoint::Unix(dir.path().join("none")), "p").unwrap();
    let err = client.list_instances().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Unreachable, "{err}");
}

const ASYNC: &str = r#"{"type":"async","status":"Operation created","status_code":100,"operation":"/1.0/operations/op-1?project=p","error_code":0,"error":"","metadata":{"id":"op-1","status":"Running","status_code":103}}"#;

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Option<u16>)>>);

impl RequestObserver for Recorder {
    fn observe(&self, method: &str, code: Option<u16>, _elapsed: Duration) {
        self.0.lock().unwrap().push((method.to_string(), code));
    }
}

#[tokio::test]
async fn an_async_put_waits_for_its_operation() {
    let fake = FakeLxd::start(|line| {
        if line.starts_with("PUT ") {
            Reply::Json(202, ASYNC)
        } else {
            Reply::Json(
                200,
                r#"{"type":"sync","status":"Success","status_code":200,"metadata":{"id":"op-1","status":"Success","status_code":200,"err":""}}"#,
            )
        }
    });
    let recorder = Arc::new(Recorder::default());
    let client = fake.client(SHORT).with_observer(recorder.clone());
    client
        .replace_profile("p-a", &nesting("true"), Some("\"etag\""))
        .await
        .unwrap();
    assert_eq!(
        fake.seen.lines(),
        [
            "PUT /1.0/profiles/p-a?project=p HTTP/1.1",
            "GET /1.0/operations/op-1/wait?project=p&timeout=1 HTTP/1.1",
        ]
    );
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            ("PUT".to_string(), Some(202)),
            ("GET".to_string(), Some(200))
        ]
    );
}

fn failed_operation(err: &'static str) -> impl Fn(&str) -> Reply + Send + Sync + 'static {
    move |line: &str| {
        if line.starts_with("PUT ") || line.starts_with("DELETE ") {
            Reply::Json(202, ASYNC)
        } else {
            let body = format!(
                r#"{{"type":"sync","status":"Success","status_code":200,"metadata":{{"id":"op-1","status":"Failure","status_code":400,"err":{}}}}}"#,
                serde_json::to_string(err).unwrap()
            );
            Reply::Raw(format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        }
    }
}

#[tokio::test]
async fn a_failed_operation_is_rejected_with_its_message() {
    let fake = FakeLxd::start(failed_operation(r#"Invalid value for a boolean "maybe""#));
    let err = fake
        .client(SHORT)
        .replace_profile("p-a", &nesting("maybe"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LxdError::Rejected { .. }), "{err:?}");
    assert_eq!(err.to_string(), r#"Invalid value for a boolean "maybe""#);
}

#[tokio::test]
async fn a_failed_operation_saying_in_use_is_in_use() {
    let fake = FakeLxd::start(failed_operation("Profile is currently in use"));
    let err = fake.client(SHORT).delete_profile("p-a").await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::InUse, "{err:?}");
}

#[tokio::test]
async fn an_operation_still_running_after_the_wait_is_a_timeout() {
    let fake = FakeLxd::start(|line| {
        if line.starts_with("PUT ") {
            Reply::Json(202, ASYNC)
        } else {
            Reply::Json(
                200,
                r#"{"type":"sync","status_code":200,"metadata":{"id":"op-1","status":"Running","status_code":103,"err":""}}"#,
            )
        }
    });
    let err = fake
        .client(SHORT)
        .replace_profile("p-a", &nesting("true"), None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Timeout, "{err:?}");
}

#[tokio::test]
async fn a_wait_that_never_answers_times_out_too() {
    let fake = FakeLxd::start(|line| {
        if line.starts_with("PUT ") {
            Reply::Json(202, ASYNC)
        } else {
            Reply::Silence
        }
    });
    let started = Instant::now();
    let err = fake
        .client(SHORT)
        .replace_profile("p-a", &nesting("true"), None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Timeout, "{err:?}");
    // The wait asks LXD for 1 s and allows the client timeout on top.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

// ---- events ----

/// A fake events endpoint: each accepted websocket gets `script(n)` run on it, n = 0, 1...
fn start_ws_fake<F, Fut>(script: F) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<()>)
where
    F: Fn(usize, tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unix.socket");
    let listener = UnixListener::bind(&socket).unwrap();
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                tokio::spawn(script(n, ws));
                n += 1;
            }
        }
    });
    (dir, socket, task)
}

fn lifecycle_json(action: &str, source: &str) -> Message {
    Message::text(format!(
        r#"{{"location":"none","metadata":{{"action":"{action}","source":"{source}"}},"project":"p","timestamp":"2026-11-25T12:36:11Z","type":"lifecycle"}}"#
    ))
}

async fn next_notice(events: &mut lxd_mutater::lxd::EventStream) -> EventNotice {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a notice within 5 s")
        .expect("the stream is alive")
}

#[tokio::test]
async fn events_reconnect_and_announce_it() {
    let (_dir, socket, task) = start_ws_fake(|n, mut ws| async move {
        let _ = ws
            .send(Message::text(r#"{"type":"logging","metadata":{}}"#))
            .await;
        let _ = ws.send(Message::text("garbage")).await;
        let name = format!("p-{n}");
        let _ = ws
            .send(lifecycle_json(
                "profile-updated",
                &format!("/1.0/profiles/{name}?project=p"),
            ))
            .await;
        if n == 0 {
            // The first connection just drops.
            drop(ws);
        } else {
            let _ = ws.next().await;
        }
    });
    let client = LxdClient::new(&Endpoint::Unix(socket), "p").unwrap();
    let mut events = client.events();
    for n in 0..2 {
        assert_eq!(next_notice(&mut events).await, EventNotice::Connected);
        let EventNotice::Lifecycle(e) = next_notice(&mut events).await else {
            panic!("expected an event")
        };
        assert_eq!(e.action, LifecycleAction::ProfileUpdated);
        assert_eq!(e.name, format!("p-{n}"));
        assert_eq!(e.project, "p");
    }
    drop(events);
    task.abort();
}

#[tokio::test]
async fn events_answer_pings() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let (_dir, socket, task) = start_ws_fake(move |_, mut ws| {
        let tx = tx.clone();
        async move {
            let _ = ws
                .send(Message::Ping(b"are you there".to_vec().into()))
                .await;
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Pong(payload) = frame {
                    let _ = tx.send(payload.to_vec()).await;
                }
            }
        }
    });
    let client = LxdClient::new(&Endpoint::Unix(socket), "p").unwrap();
    let mut events = client.events();
    assert_eq!(next_notice(&mut events).await, EventNotice::Connected);
    let pong = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a pong within 5 s");
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    drop(events);
    task.abort();
}

#[tokio::test]
async fn dropping_the_stream_closes_the_websocket() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (_dir, socket, task) = start_ws_fake(move |_, mut ws| {
        let closed_tx = closed_tx.clone();
        async move {
            while let Some(Ok(_)) = ws.next().await {}
            let _ = closed_tx.send(()).await;
        }
    });
    let client = LxdClient::new(&Endpoint::Unix(socket), "p").unwrap();
    let mut events = client.events();
    assert_eq!(next_notice(&mut events).await, EventNotice::Connected);
    drop(events);
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("the server sees the websocket end");
    task.abort();
}

// ---- TLS pinning ----

struct TlsFake {
    port: u16,
    cert_pem: String,
    /// Bytes of plain text the server read after a completed handshake.
    plaintext: Arc<Mutex<Vec<u8>>>,
    handshake_errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_tls_fake() -> TlsFake {
    let certified = rcgen::generate_simple_self_signed(vec!["fake-lxd".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plaintext: Arc<Mutex<Vec<u8>>> = Arc::default();
    let handshake_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (pt, he) = (plaintext.clone(), handshake_errors.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            match acceptor.accept(tcp).await {
                Err(e) => he.lock().unwrap().push(e.to_string()),
                Ok(mut tls) => {
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = tls.read(&mut buf).await {
                        pt.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let body = r#"{"type":"sync","status_code":200,"metadata":[]}"#;
                    let _ = tls
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            }
        }
    });
    TlsFake {
        port,
        cert_pem,
        plaintext,
        handshake_errors,
        task,
    }
}

fn tls_client(fake: &TlsFake, pinned_pem: &str, dir: &tempfile::TempDir) -> LxdClient {
    let client = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    let pinned = dir.path().join("pinned.crt");
    std::fs::write(&cert, client.cert.pem()).unwrap();
    std::fs::write(&key, client.signing_key.serialize_pem()).unwrap();
    std::fs::write(&pinned, pinned_pem).unwrap();
    let endpoint = Endpoint::parse(
        Some(&format!("https://127.0.0.1:{}", fake.port)),
        Some(cert),
        Some(key),
        Some(pinned),
    )
    .unwrap();
    LxdClient::new(&endpoint, "p").unwrap().with_timeout(SHORT)
}

#[tokio::test]
async fn a_server_with_another_certificate_never_sees_a_request() {
    let fake = start_tls_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["fake-lxd".to_string()]).unwrap();
    let client = tls_client(&fake, &other.cert.pem(), &dir);

    let err = client.list_profiles().await.unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Unreachable, "{err}");
    assert!(
        err.to_string()
            .contains("TLS handshake refused: the server's certificate is not the pinned one"),
        "{err}"
    );
    // The server's side: the handshake failed (our client sent an alert), and not one
    // byte of HTTP reached it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.handshake_errors.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = fake.handshake_errors.lock().unwrap().clone();
    assert!(!errors.is_empty(), "the server saw no failed handshake");
    assert!(fake.plaintext.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_pinned_certificate_is_accepted_without_a_matching_host_name() {
    let fake = start_tls_fake().await;
    let dir = tempfile::tempdir().unwrap();
    // The certificate names "fake-lxd", the URL says 127.0.0.1: pinning ignores names.
    let client = tls_client(&fake, &fake.cert_pem.clone(), &dir);
    let profiles = client.list_profiles().await.unwrap();
    assert!(profiles.is_empty());
    let request = String::from_utf8_lossy(&fake.plaintext.lock().unwrap()).into_owned();
    assert!(
        request.starts_with("GET /1.0/profiles?project=p&recursion=1 HTTP/1.1"),
        "{request}"
    );
}

#[tokio::test]
async fn unreadable_certificate_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let endpoint = Endpoint::parse(
        Some("https://127.0.0.1:1"),
        Some(missing.clone()),
        Some(missing.clone()),
        Some(missing),
    )
    .unwrap();
    let err = LxdClient::new(&endpoint, "p").unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Config, "{err}");

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let endpoint = Endpoint::parse(
        Some("https://127.0.0.1:1"),
        Some(garbage.clone()),
        Some(garbage.clone()),
        Some(garbage),
    )
    .unwrap();
    let err = LxdClient::new(&endpoint, "p").unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Config, "{err}");
}
