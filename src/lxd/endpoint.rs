//! Where LXD is: a Unix socket or an HTTPS address with a client certificate and a pinned
//! server certificate (SPEC §5).

use std::path::{Path, PathBuf};

use super::error::LxdError;

/// The snap's socket, tried before Debian's when no URL or variable names one.
pub const SNAP_SOCKET: &str = "/var/snap/lxd/common/lxd/unix.socket";
/// Debian's (and a source build's) socket: the last resort.
pub const DEBIAN_SOCKET: &str = "/var/lib/lxd/unix.socket";
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
    /// Reads `--lxd` and its certificate flags. `None` discovers the local socket:
    /// `$LXD_SOCKET`, else `$LXD_DIR/unix.socket`, else the snap's socket if it exists,
    /// else Debian's. Files are only named here; `LxdClient::new` reads them.
    pub fn parse(
        url: Option<&str>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
        server_cert: Option<PathBuf>,
    ) -> Result<Endpoint, LxdError> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Endpoint::Unix(discover_socket(
                |name| std::env::var_os(name).map(PathBuf::from),
                |path| path.exists(),
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

/// The discovery order of SPEC §5, with the environment and the file system passed in so
/// that it can be tested.
pub(crate) fn discover_socket(
    env: impl Fn(&str) -> Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(socket) = env("LXD_SOCKET").filter(|p| !p.as_os_str().is_empty()) {
        return socket;
    }
    if let Some(dir) = env("LXD_DIR").filter(|p| !p.as_os_str().is_empty()) {
        return dir.join("unix.socket");
    }
    if exists(Path::new(SNAP_SOCKET)) {
        return PathBuf::from(SNAP_SOCKET);
    }
    PathBuf::from(DEBIAN_SOCKET)
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
        assert_eq!(
            discover_socket(env(&[("LXD_SOCKET", "/a.sock"), ("LXD_DIR", "/d")]), |_| {
                true
            }),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            discover_socket(env(&[("LXD_SOCKET", ""), ("LXD_DIR", "/d")]), |_| true),
            PathBuf::from("/d/unix.socket")
        );
        assert_eq!(
            discover_socket(env(&[]), |p| p == Path::new(SNAP_SOCKET)),
            PathBuf::from(SNAP_SOCKET)
        );
        assert_eq!(
            discover_socket(env(&[]), |_| false),
            PathBuf::from(DEBIAN_SOCKET)
        );
    }
}
