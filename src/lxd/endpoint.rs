//! Where LXD is: a Unix socket or an HTTPS address with a client certificate and a pinned
//! server certificate (SPEC §5). Incus 6.x speaks the same API at `/1.0` and is reached the
//! same way; the default search finds its socket when no LXD answers.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::error::LxdError;

/// The snap's socket, tried before Debian's when no URL or variable names one.
pub const SNAP_SOCKET: &str = "/var/snap/lxd/common/lxd/unix.socket";
/// Debian's (and a source build's) socket: the last resort.
pub const DEBIAN_SOCKET: &str = "/var/lib/lxd/unix.socket";
/// Incus' socket (Debian's bookworm-backports package, Zabbly's packages): taken when no
/// LXD socket answers.
pub const INCUS_SOCKET: &str = "/var/lib/incus/unix.socket";
/// LXD's default HTTPS port, used when an `https://` URL names none.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;

/// How to reach LXD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The local daemon's Unix socket.
    Unix(PathBuf),
    /// A remote daemon: `url` is `https://host:port`; the client authenticates with
    /// `client_cert`/`client_key` and accepts only a server presenting exactly
    /// `server_cert` (LXD's self-signed certificate names no host, so it is pinned).
    Https {
        url: String,
        client_cert: PathBuf,
        client_key: PathBuf,
        server_cert: PathBuf,
    },
}

impl Endpoint {
    /// Reads `--lxd` and its certificate flags. `None` discovers the local socket (see
    /// `discover_socket`). Files are only named here; `LxdClient::new` reads them.
    pub fn parse(
        url: Option<&str>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
        server_cert: Option<PathBuf>,
    ) -> Result<Endpoint, LxdError> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Endpoint::Unix(discover_socket(
                |name| std::env::var_os(name).map(PathBuf::from),
                probe_socket,
            )));
        };
        if let Some(path) = url.strip_prefix("unix://") {
            return unix_endpoint(url, path);
        }
        if url.starts_with('/') {
            return unix_endpoint(url, url);
        }
        if let Some(rest) = url.strip_prefix("https://") {
            let (host, port) = split_authority(rest).map_err(|reason| LxdError::Config {
                reason: format!("invalid LXD URL {url:?}: {reason}"),
            })?;
            let need = |file: Option<PathBuf>, what: &str| {
                file.ok_or_else(|| LxdError::Config {
                    reason: format!("an https:// LXD URL needs {what}"),
                })
            };
            return Ok(Endpoint::Https {
                url: format!("https://{}:{port}", host_for_url(&host)),
                client_cert: need(client_cert, "a client certificate (--lxd-client-cert)")?,
                client_key: need(client_key, "a client key (--lxd-client-key)")?,
                server_cert: need(
                    server_cert,
                    "the server certificate to pin (--lxd-server-cert)",
                )?,
            });
        }
        Err(LxdError::Config {
            reason: format!(
                "invalid LXD URL {url:?}: expected unix:///path/to/unix.socket or https://host:port"
            ),
        })
    }

    /// A short form for logs and error messages (no secrets in it).
    pub fn display(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Https { url, .. } => url.clone(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

fn unix_endpoint(url: &str, path: &str) -> Result<Endpoint, LxdError> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(LxdError::Config {
            reason: format!(
                "invalid LXD URL {url:?}: the socket path must be absolute (unix:///path)"
            ),
        });
    }
    Ok(Endpoint::Unix(path.to_path_buf()))
}

/// What is found at a socket's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SocketState {
    /// Nothing there.
    Absent,
    /// The file is there but nobody accepts on it: a daemon stopped or restarting (its
    /// socket file stays behind).
    Silent,
    /// A daemon accepts connections on it.
    Answers,
}

/// Connects and hangs up at once (an LXD 5.0 connection that stays open without a
/// request stalls the daemon, so nothing lingers).
fn probe_socket(path: &Path) -> SocketState {
    if UnixStream::connect(path).is_ok() {
        SocketState::Answers
    } else if path.exists() {
        SocketState::Silent
    } else {
        SocketState::Absent
    }
}

/// The socket to use when no URL is given, with the environment and the probe passed in
/// so that the order can be tested:
/// 1. `$LXD_SOCKET`, else `$LXD_DIR/unix.socket`, else `$INCUS_SOCKET`, else
///    `$INCUS_DIR/unix.socket` (the variables each daemon's own client reads);
/// 2. the first of the snap's LXD socket, Debian's LXD socket and Incus' socket that
///    answers: LXD before Incus, so a machine that has both keeps talking to LXD;
/// 3. else the first of them that exists: a daemon that is restarting is waited for
///    rather than swapped for another;
/// 4. else Debian's LXD socket, which the error then names.
pub(crate) fn discover_socket(
    env: impl Fn(&str) -> Option<PathBuf>,
    probe: impl Fn(&Path) -> SocketState,
) -> PathBuf {
    let set = |name: &str| env(name).filter(|p| !p.as_os_str().is_empty());
    if let Some(socket) = set("LXD_SOCKET") {
        return socket;
    }
    if let Some(dir) = set("LXD_DIR") {
        return dir.join("unix.socket");
    }
    if let Some(socket) = set("INCUS_SOCKET") {
        return socket;
    }
    if let Some(dir) = set("INCUS_DIR") {
        return dir.join("unix.socket");
    }
    let mut silent = None;
    for candidate in [SNAP_SOCKET, DEBIAN_SOCKET, INCUS_SOCKET] {
        match probe(Path::new(candidate)) {
            SocketState::Answers => return PathBuf::from(candidate),
            SocketState::Silent => {
                silent.get_or_insert(candidate);
            }
            SocketState::Absent => {}
        }
    }
    PathBuf::from(silent.unwrap_or(DEBIAN_SOCKET))
}

/// `host[:port][/]` -> (host, port). IPv6 literals come in brackets; the brackets are
/// dropped from the returned host.
pub(crate) fn split_authority(rest: &str) -> Result<(String, u16), String> {
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("only scheme, host and port are allowed".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the host".to_string())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "junk after the IPv6 address".to_string())?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => DEFAULT_HTTPS_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok((host.to_string(), port))
}

/// Puts IPv6 literals back into brackets for a URL.
pub(crate) fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
        (
            Some("c.crt".into()),
            Some("c.key".into()),
            Some("s.crt".into()),
        )
    }

    #[test]
    fn parses_unix_urls() {
        assert_eq!(
            Endpoint::parse(Some("unix:///var/lib/lxd/unix.socket"), None, None, None).unwrap(),
            Endpoint::Unix("/var/lib/lxd/unix.socket".into())
        );
        assert_eq!(
            Endpoint::parse(Some("/run/lxd.socket"), None, None, None).unwrap(),
            Endpoint::Unix("/run/lxd.socket".into())
        );
        let err = Endpoint::parse(Some("unix://relative.sock"), None, None, None).unwrap_err();
        assert!(matches!(err, LxdError::Config { .. }), "{err}");
    }

    #[test]
    fn parses_https_urls_and_requires_the_three_files() {
        let (c, k, s) = files();
        let e = Endpoint::parse(Some("https://10.0.0.1:9443/"), c, k, s).unwrap();
        assert_eq!(
            e,
            Endpoint::Https {
                url: "https://10.0.0.1:9443".into(),
                client_cert: "c.crt".into(),
                client_key: "c.key".into(),
                server_cert: "s.crt".into(),
            }
        );
        let (c, k, s) = files();
        let Endpoint::Https { url, .. } =
            Endpoint::parse(Some("https://lxd.example"), c, k, s).unwrap()
        else {
            panic!("not https")
        };
        assert_eq!(url, "https://lxd.example:8443");
        let (c, k, s) = files();
        let Endpoint::Https { url, .. } =
            Endpoint::parse(Some("https://[::1]:8444"), c, k, s).unwrap()
        else {
            panic!("not https")
        };
        assert_eq!(url, "https://[::1]:8444");

        let (c, k, _) = files();
        let err = Endpoint::parse(Some("https://h:1"), c, k, None).unwrap_err();
        assert!(err.to_string().contains("--lxd-server-cert"), "{err}");
        let err = Endpoint::parse(Some("https://h:1"), None, None, None).unwrap_err();
        assert!(err.to_string().contains("--lxd-client-cert"), "{err}");
    }

    #[test]
    fn rejects_other_urls() {
        for bad in [
            "http://h:8443",
            "lxd.example:8443",
            "https://h:0",
            "https://h:99999",
            "https://h:1/1.0",
            "https://:8443",
            "https://[::1",
        ] {
            let (c, k, s) = files();
            let err = Endpoint::parse(Some(bad), c, k, s).unwrap_err();
            assert!(matches!(err, LxdError::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn discovery_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        use SocketState::{Absent, Answers};
        let all = |_: &Path| Answers;
        // The variables win over any socket, LXD's over Incus'; an empty one is unset.
        assert_eq!(
            discover_socket(env(&[("LXD_SOCKET", "/a.sock"), ("LXD_DIR", "/d")]), all),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            discover_socket(
                env(&[
                    ("LXD_SOCKET", ""),
                    ("LXD_DIR", "/d"),
                    ("INCUS_SOCKET", "/i")
                ]),
                all
            ),
            PathBuf::from("/d/unix.socket")
        );
        assert_eq!(
            discover_socket(env(&[("INCUS_SOCKET", "/i"), ("INCUS_DIR", "/e")]), all),
            PathBuf::from("/i")
        );
        assert_eq!(
            discover_socket(env(&[("LXD_DIR", ""), ("INCUS_DIR", "/e")]), all),
            PathBuf::from("/e/unix.socket")
        );
        assert_eq!(
            discover_socket(env(&[]), |p| if p == Path::new(SNAP_SOCKET) {
                Answers
            } else {
                Absent
            }),
            PathBuf::from(SNAP_SOCKET)
        );
    }

    /// A probe that finds `answers` answering, `silent` there but silent, nothing else.
    fn probe(
        answers: &'static [&'static str],
        silent: &'static [&'static str],
    ) -> impl Fn(&Path) -> SocketState {
        move |p: &Path| {
            let is = |list: &[&str]| list.iter().any(|s| Path::new(s) == p);
            if is(answers) {
                SocketState::Answers
            } else if is(silent) {
                SocketState::Silent
            } else {
                SocketState::Absent
            }
        }
    }

    #[test]
    fn a_machine_with_lxd_and_incus_talks_to_lxd() {
        let none = |_: &str| None;
        assert_eq!(
            discover_socket(
                none,
                probe(&[SNAP_SOCKET, DEBIAN_SOCKET, INCUS_SOCKET], &[])
            ),
            PathBuf::from(SNAP_SOCKET)
        );
        assert_eq!(
            discover_socket(none, probe(&[DEBIAN_SOCKET, INCUS_SOCKET], &[])),
            PathBuf::from(DEBIAN_SOCKET)
        );
    }

    #[test]
    fn incus_is_found_when_no_lxd_answers() {
        let none = |_: &str| None;
        assert_eq!(
            discover_socket(none, probe(&[INCUS_SOCKET], &[])),
            PathBuf::from(INCUS_SOCKET)
        );
        // LXD stopped (its socket file stays) or removed after lxd-to-incus: Incus.
        assert_eq!(
            discover_socket(none, probe(&[INCUS_SOCKET], &[SNAP_SOCKET, DEBIAN_SOCKET])),
            PathBuf::from(INCUS_SOCKET)
        );
        // An answering Debian LXD beats a silent snap one.
        assert_eq!(
            discover_socket(none, probe(&[DEBIAN_SOCKET], &[SNAP_SOCKET])),
            PathBuf::from(DEBIAN_SOCKET)
        );
    }

    #[test]
    fn when_nothing_answers_the_first_socket_there_is_waited_for() {
        let none = |_: &str| None;
        assert_eq!(
            discover_socket(none, probe(&[], &[DEBIAN_SOCKET, INCUS_SOCKET])),
            PathBuf::from(DEBIAN_SOCKET)
        );
        assert_eq!(
            discover_socket(none, probe(&[], &[SNAP_SOCKET, INCUS_SOCKET])),
            PathBuf::from(SNAP_SOCKET)
        );
        assert_eq!(
            discover_socket(none, probe(&[], &[INCUS_SOCKET])),
            PathBuf::from(INCUS_SOCKET)
        );
        assert_eq!(
            discover_socket(none, probe(&[], &[])),
            PathBuf::from(DEBIAN_SOCKET)
        );
    }

    #[test]
    fn the_probe_tells_a_live_socket_from_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unix.socket");
        assert_eq!(probe_socket(&path), SocketState::Absent);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(probe_socket(&path), SocketState::Answers);
        // A daemon gone leaves its socket file: nobody accepts any more.
        drop(listener);
        assert!(path.exists());
        assert_eq!(probe_socket(&path), SocketState::Silent);
    }
}
