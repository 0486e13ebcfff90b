//! LXD's lifecycle events as a stream that survives disconnections.
//!
//! `/1.0/events` is a websocket. Events are not replayed after a reconnect, so every
//! (re)connection is announced with `EventNotice::Connected`: the consumer relists then.
//! The same holds when the consumer falls behind: the task stops reading, LXD drops the
//! connection for unanswered pings, and the reconnect announces itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::{LxdClient, error_chain};
use super::endpoint::{Endpoint, host_for_url, split_authority};
use super::types::encode_component;
use crate::backoff::{Backoff, BackoffConfig};

/// What the stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventNotice {
    /// A (re)connection: events from before it may be lost, relist now.
    Connected,
    Lifecycle(LifecycleEvent),
}

/// One lifecycle event. LXD sends no bodies: the name says what to look at again.
#[derive(Clone, Debug)]
pub struct LifecycleEvent {
    pub action: LifecycleAction,
    /// The instance or profile name, from the event's `source` URL.
    pub name: String,
    pub project: String,
    /// When it came off the socket (tokio's clock), not when it is handled: whether it
    /// is the echo of a write is judged by the time between the two, which a backlog of
    /// events waiting to be handled must not lengthen.
    pub received: tokio::time::Instant,
}

impl LifecycleEvent {
    /// An event received now.
    pub fn new(action: LifecycleAction, name: String, project: String) -> LifecycleEvent {
        LifecycleEvent {
            action,
            name,
            project,
            received: tokio::time::Instant::now(),
        }
    }
}

/// The same event, whenever it was received.
impl PartialEq for LifecycleEvent {
    fn eq(&self, other: &LifecycleEvent) -> bool {
        (&self.action, &self.name, &self.project) == (&other.action, &other.name, &other.project)
    }
}

impl Eq for LifecycleEvent {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleAction {
    ProfileCreated,
    ProfileUpdated,
    ProfileDeleted,
    ProfileRenamed,
    InstanceCreated,
    InstanceUpdated,
    InstanceDeleted,
    InstanceRenamed,
    /// Any other action, as LXD named it (`instance-started`, ...).
    Other(String),
}

impl LifecycleAction {
    pub fn from_lxd(action: &str) -> LifecycleAction {
        match action {
            "profile-created" => LifecycleAction::ProfileCreated,
            "profile-updated" => LifecycleAction::ProfileUpdated,
            "profile-deleted" => LifecycleAction::ProfileDeleted,
            "profile-renamed" => LifecycleAction::ProfileRenamed,
            "instance-created" => LifecycleAction::InstanceCreated,
            "instance-updated" => LifecycleAction::InstanceUpdated,
            "instance-deleted" => LifecycleAction::InstanceDeleted,
            "instance-renamed" => LifecycleAction::InstanceRenamed,
            other => LifecycleAction::Other(other.to_string()),
        }
    }
}

/// A running subscription. Dropping it stops the background task and closes the socket.
pub struct EventStream {
    rx: mpsc::Receiver<EventNotice>,
    task: JoinHandle<()>,
}

impl EventStream {
    /// The next notice; `None` only after the task ended (it does not end by itself).
    pub async fn next(&mut self) -> Option<EventNotice> {
        self.rx.recv().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reconnect delays: 800 ms doubling to 30 s, jittered (the one backoff of the crate).
pub const RECONNECT: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(800),
    cap: Duration::from_secs(30),
};
/// A connection that lived this long was healthy: the next failure starts over. Short
/// enough that LXD restarted twice within a minute does not leave the controller blind
/// for a 30 s backoff (the soak found it), long enough that a stream that connects and
/// drops at once still backs off.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Pings keep NATs and proxies open and detect a dead peer; LXD answers them.
const PING_EVERY: Duration = Duration::from_secs(20);
/// No frame at all for this long: the connection is dead even if TCP does not know.
const SILENT_LIMIT: Duration = Duration::from_secs(65);
const CHANNEL_CAPACITY: usize = 1024;

/// How to open the websocket; cloned into the task.
#[derive(Clone)]
enum Dialer {
    Unix(PathBuf),
    Tls {
        host: String,
        port: u16,
        config: Arc<rustls::ClientConfig>,
    },
    /// The endpoint could not be turned into a dialer (only with a broken URL, which
    /// `Endpoint::parse` rejects): every attempt fails with this text.
    Broken(String),
}

impl LxdClient {
    /// Subscribes to lifecycle events of this client's project. Must be called inside a
    /// tokio runtime. The first notice is `Connected` once the websocket is up.
    pub fn events(&self) -> EventStream {
        let dialer = match (self.endpoint(), self.tls_config()) {
            (Endpoint::Unix(path), _) => Dialer::Unix(path.clone()),
            (Endpoint::Https { url, .. }, Some(config)) => {
                match split_authority(url.trim_start_matches("https://")) {
                    Ok((host, port)) => Dialer::Tls { host, port, config },
                    Err(e) => Dialer::Broken(format!("invalid LXD URL {url:?}: {e}")),
                }
            }
            (Endpoint::Https { .. }, None) => Dialer::Broken("no TLS configuration".into()),
        };
        let query = format!(
            "/1.0/events?type=lifecycle&project={}",
            encode_component(self.project())
        );
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(run(
            dialer,
            query,
            self.project().to_string(),
            self.timeout(),
            tx,
        ));
        EventStream { rx, task }
    }
}

async fn run(
    dialer: Dialer,
    path_and_query: String,
    project: String,
    timeout: Duration,
    tx: mpsc::Sender<EventNotice>,
) {
    let mut backoff = Backoff::new(RECONNECT);
    loop {
        let connected_at = Instant::now();
        let outcome = match tokio::time::timeout(timeout, dial(&dialer, &path_and_query)).await {
            Err(_) => Err(format!("no websocket within {}s", timeout.as_secs_f64())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Socket::Unix(ws))) => pump(*ws, &tx, &project).await,
            Ok(Ok(Socket::Tls(ws))) => pump(*ws, &tx, &project).await,
        };
        match outcome {
            Ok(Ended::ConsumerGone) => return,
            Ok(Ended::Closed(why)) => tracing::warn!(reason = %why, "LXD events connection ended"),
            Err(why) => tracing::warn!(reason = %why, "cannot connect to LXD events"),
        }
        if connected_at.elapsed() > HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

enum Socket {
    Unix(Box<Ws<tokio::net::UnixStream>>),
    Tls(Box<Ws<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

async fn dial(dialer: &Dialer, path_and_query: &str) -> Result<Socket, String> {
    match dialer {
        Dialer::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                format!("ws://lxd{path_and_query}"),
                stream,
                Some(ws_config()),
            )
            .await
            .map_err(|e| error_chain(&e))?;
            Ok(Socket::Unix(Box::new(ws)))
        }
        Dialer::Tls { host, port, config } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("{host}:{port}: {e}"))?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let why =
                        super::tls::certificate_failure(&e).unwrap_or_else(|| error_chain(&e));
                    format!("TLS handshake with {host}:{port}: {why}")
                })?;
            let url = format!("wss://{}:{port}{path_and_query}", host_for_url(host));
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config()))
                .await
                .map_err(|e| error_chain(&e))?;
            Ok(Socket::Tls(Box::new(ws)))
        }
        Dialer::Broken(why) => Err(why.clone()),
    }
}

/// tungstenite zero-fills its whole read buffer before each read: at its default of
/// 128 KiB that was 128 KiB of memset per event (a lifecycle event is under 1 KiB), 3% of
/// the controller's CPU in an upgrade. A larger message still arrives, over several reads.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

enum Ended {
    ConsumerGone,
    Closed(String),
}

/// Reads one connection until it ends. Ok(Closed) and Err both lead to a reconnect.
async fn pump<S>(
    mut ws: Ws<S>,
    tx: &mpsc::Sender<EventNotice>,
    project: &str,
) -> Result<Ended, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if tx.send(EventNotice::Connected).await.is_err() {
        return Ok(Ended::ConsumerGone);
    }
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_frame = Instant::now();
    loop {
        tokio::select! {
            frame = ws.next() => {
                last_frame = Instant::now();
                match frame {
                    None => return Ok(Ended::Closed("the server closed the connection".into())),
                    Some(Err(e)) => return Err(error_chain(&e)),
                    Some(Ok(Message::Text(text))) => {
                        if let Some(event) = parse_event(text.as_str(), project)
                            && tx.send(EventNotice::Lifecycle(event)).await.is_err() {
                                return Ok(Ended::ConsumerGone);
                            }
                    }
                    Some(Ok(Message::Ping(_))) => {
                        // tungstenite queued the pong; push it out now, not at the next read.
                        ws.flush().await.map_err(|e| error_chain(&e))?;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(Ended::Closed(match frame {
                            Some(f) => format!("closed by the server: {} {}", f.code, f.reason),
                            None => "closed by the server".into(),
                        }));
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_frame.elapsed() > SILENT_LIMIT {
                    return Err(format!("no frame for {}s", SILENT_LIMIT.as_secs()));
                }
                ws.send(Message::Ping(Vec::new().into())).await.map_err(|e| error_chain(&e))?;
            }
            _ = tx.closed() => {
                let _ = ws.close(None).await;
                return Ok(Ended::ConsumerGone);
            }
        }
    }
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    metadata: WireLifecycle,
}

#[derive(Deserialize, Default)]
struct WireLifecycle {
    #[serde(default)]
    action: String,
    #[serde(default)]
    source: String,
}

/// One websocket text frame -> a lifecycle event; anything else (other types, junk) is
/// skipped with a debug log, never an error: one odd frame must not cost the stream.
pub(crate) fn parse_event(text: &str, default_project: &str) -> Option<LifecycleEvent> {
    let wire: WireEvent = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "skipping an LXD event that does not parse");
            return None;
        }
    };
    if wire.kind != "lifecycle" || wire.metadata.action.is_empty() {
        return None;
    }
    let name = name_from_source(&wire.metadata.source).unwrap_or_default();
    let project = if wire.project.is_empty() {
        default_project.to_string()
    } else {
        wire.project
    };
    Some(LifecycleEvent::new(
        LifecycleAction::from_lxd(&wire.metadata.action),
        name,
        project,
    ))
}

/// `/1.0/<collection>/<name>[/...][?query]` -> `<name>`, percent-decoded.
fn name_from_source(source: &str) -> Option<String> {
    let path = source.split('?').next()?;
    let mut parts = path.strip_prefix("/1.0/")?.split('/');
    let _collection = parts.next()?;
    let name = parts.next().filter(|n| !n.is_empty())?;
    Some(percent_decode(name))
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&h), Some(&l)) if b == b'%' => hex(h).zip(hex(l)),
            _ => None,
        };
        if let Some((hi, lo)) = escaped {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_lxd_5_sends() {
        let profile = r#"{"location":"none","metadata":{"action":"profile-updated","requestor":{"address":"@","protocol":"unix","username":"root"},"source":"/1.0/profiles/p1?project=t-probe"},"project":"t-probe","timestamp":"2026-11-25T12:36:12.95547106Z","type":"lifecycle"}"#;
        assert_eq!(
            parse_event(profile, "x"),
            Some(LifecycleEvent::new(
                LifecycleAction::ProfileUpdated,
                "p1".into(),
                "t-probe".into()
            ))
        );
        let instance = r#"{"location":"none","metadata":{"action":"instance-updated","source":"/1.0/instances/i-0?project=t-probe"},"project":"t-probe","timestamp":"2026-11-25T12:36:11.84858908Z","type":"lifecycle"}"#;
        let e = parse_event(instance, "x").unwrap();
        assert_eq!(e.action, LifecycleAction::InstanceUpdated);
        assert_eq!(e.name, "i-0");
        let snapshot = r#"{"metadata":{"action":"instance-snapshot-created","source":"/1.0/instances/c%2D1/snapshots/s0"},"type":"lifecycle"}"#;
        let e = parse_event(snapshot, "dflt").unwrap();
        assert_eq!(
            e.action,
            LifecycleAction::Other("instance-snapshot-created".into())
        );
        assert_eq!(e.name, "c-1");
        assert_eq!(e.project, "dflt");
    }

    #[test]
    fn skips_what_is_not_a_lifecycle_event() {
        assert_eq!(parse_event("not json", "p"), None);
        assert_eq!(
            parse_event(r#"{"type":"logging","metadata":{}}"#, "p"),
            None
        );
        assert_eq!(parse_event(r#"{"type":"lifecycle"}"#, "p"), None);
        assert_eq!(
            parse_event(r#"{"type":"lifecycle","metadata":"x"}"#, "p"),
            None
        );
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("é%C3%A9"), "éé");
    }
}
