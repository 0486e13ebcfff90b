//! Shared support for the integration tests that talk to the real LXD daemon, and to the
//! real Incus daemon beside it (`Backend`).
//!
//! Every test works in its own `TestProject` (a fresh project with its own profiles, on
//! one daemon), so tests run in parallel and leave nothing behind: `Drop` cleans up even
//! after a panic. The only daemon state shared between tests is the storage pool `default`
//! and, for HTTPS tests (LXD only), `core.https_address` (set once, never unset).
//!
//! Everything here is synchronous (`lxc`/`incus` and std only), so `Drop` needs no runtime.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lxd_mutater::lxd::{Endpoint, LxdClient};

/// The real daemon a test runs on. Both speak LXD's API at `/1.0`, and their clients take
/// the same sub-commands (`lxc project create`, `incus project create`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// LXD 5.x (Debian's `lxd`), the default.
    Lxd,
    /// Incus 6.x (bookworm-backports' `incus`), beside LXD.
    Incus,
}

impl Backend {
    /// The daemon's command-line client.
    pub fn cli(self) -> &'static str {
        match self {
            Backend::Lxd => "lxc",
            Backend::Incus => "incus",
        }
    }

    pub fn socket(self) -> PathBuf {
        match self {
            Backend::Lxd => lxd_socket(),
            Backend::Incus => incus_socket(),
        }
    }

    /// Fails the test (does not skip it) when the daemon does not answer, saying how to
    /// start it.
    pub fn require(self) -> PathBuf {
        static LXD: OnceLock<Result<(), String>> = OnceLock::new();
        static INCUS: OnceLock<Result<(), String>> = OnceLock::new();
        let (checked, name, server, script) = match self {
            Backend::Lxd => (&LXD, "LXD", "lxd", "scripts/lxd-up.sh"),
            Backend::Incus => (&INCUS, "Incus", "incus", "scripts/incus-up.sh"),
        };
        let socket = self.socket();
        if let Err(why) = checked.get_or_init(|| lxd_answers(&socket, server)) {
            panic!(
                "{name} does not answer on {}: {why}\n\
                 Start it with `{script}` (as root; `make lxd` runs both), then run the tests again.",
                socket.display()
            );
        }
        socket
    }
}

/// `on_both!(fn scenario)` / `on_both!(async fn scenario)`: `scenario(backend: Backend)`
/// run as two tests, `scenario::lxd` and `scenario::incus` (`cargo test incus` runs every
/// Incus half).
#[macro_export]
macro_rules! on_both {
    (fn $scenario:ident) => {
        mod $scenario {
            #[test]
            fn lxd() {
                super::$scenario($crate::support::Backend::Lxd)
            }
            #[test]
            fn incus() {
                super::$scenario($crate::support::Backend::Incus)
            }
        }
    };
    (async fn $scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn lxd() {
                super::$scenario($crate::support::Backend::Lxd).await
            }
            #[tokio::test]
            async fn incus() {
                super::$scenario($crate::support::Backend::Incus).await
            }
        }
    };
}

/// LXD's socket for tests: `$LXD_SOCKET`, `$LXD_DIR/unix.socket`, the snap's socket if
/// present, else Debian's. The product's own search is not used: with no LXD answering it
/// would give Incus' socket, and an LXD test must fail then, not run on Incus.
pub fn lxd_socket() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(socket) = var("LXD_SOCKET") {
        return socket.into();
    }
    if let Some(dir) = var("LXD_DIR") {
        return PathBuf::from(dir).join("unix.socket");
    }
    let snap = Path::new("/var/snap/lxd/common/lxd/unix.socket");
    if snap.exists() {
        return snap.to_path_buf();
    }
    PathBuf::from("/var/lib/lxd/unix.socket")
}

/// Incus' socket for tests: `$INCUS_SOCKET`, `$INCUS_DIR/unix.socket`, else
/// `/var/lib/incus/unix.socket` (what the `incus` client reads too).
pub fn incus_socket() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(socket) = var("INCUS_SOCKET") {
        return socket.into();
    }
    let dir = var("INCUS_DIR").map_or_else(|| PathBuf::from("/var/lib/incus"), PathBuf::from);
    dir.join("unix.socket")
}

/// Fails the test (does not skip it) when LXD does not answer, saying how to start it.
pub fn require_lxd() -> PathBuf {
    Backend::Lxd.require()
}

/// The built binary pointed at `backend`. Incus is named through `LXD_MUTATER_LXD`, so a
/// test's own `--lxd` still wins; LXD is left to the default socket search, which must find
/// it with Incus answering beside it.
pub fn mutater(backend: Backend) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lxd-mutater"));
    if backend == Backend::Incus {
        command.env(
            "LXD_MUTATER_LXD",
            format!("unix://{}", incus_socket().display()),
        );
    }
    command
}

/// Whether the daemon on `socket` answers `GET /1.0` and is the one expected: its
/// `environment.server` is `server` ("lxd" or "incus"), so that a variable pointing one
/// backend's tests at the other daemon fails instead of testing the wrong one.
fn lxd_answers(socket: &Path, server: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /1.0 HTTP/1.0\r\nHost: lxd\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    if !(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")) {
        return Err(format!(
            "unexpected answer: {:?}",
            answer.lines().next().unwrap_or("")
        ));
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("GET /1.0 is not JSON: {e}"))?;
    let found = &value["metadata"]["environment"]["server"];
    if found == server {
        Ok(())
    } else {
        Err(format!("the daemon there is {found}, not {server}"))
    }
}

/// Runs `lxc ARGS` (no project added); Err carries stderr.
pub fn try_lxc_global(args: &[&str]) -> Result<String, String> {
    try_cli_global(Backend::Lxd, args)
}

/// Runs `lxc ARGS` (no project added) and fails the test on error.
pub fn lxc_global(args: &[&str]) -> String {
    try_lxc_global(args).unwrap_or_else(|e| panic!("{e}"))
}

/// How long one client command may take. LXD 5.0.2's `lxc delete --force` now and then
/// never returns although the instance is gone (its wait on the operation misses the end):
/// a test's cleanup must not hang the whole run on it.
const CLI_DEADLINE: &str = "120";

/// Runs the backend's client (`lxc` or `incus`) with ARGS (no project added), killed after
/// `CLI_DEADLINE` seconds; Err carries stderr.
pub fn try_cli_global(backend: Backend, args: &[&str]) -> Result<String, String> {
    let cli = backend.cli();
    let out = Command::new("timeout")
        .args(["--kill-after=5", CLI_DEADLINE, cli])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cli}: {e}"))?;
    if out.status.code() == Some(124) {
        return Err(format!(
            "{cli} {} did not end within {CLI_DEADLINE} s",
            args.join(" ")
        ));
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cli} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs the backend's client with ARGS (no project added) and fails the test on error.
pub fn cli_global(backend: Backend, args: &[&str]) -> String {
    try_cli_global(backend, args).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh project on LXD or Incus: `features.profiles=true`, `features.images=false`,
/// and a root disk on the pool `default` in its `default` profile so that instances can be
/// created.
pub struct TestProject {
    name: String,
    backend: Backend,
}

impl TestProject {
    /// A project on LXD.
    pub fn new() -> TestProject {
        TestProject::on(Backend::Lxd)
    }

    /// A project on `backend`.
    pub fn on(backend: Backend) -> TestProject {
        backend.require();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t-{}-{}-{:04x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        cli_global(
            backend,
            &[
                "project",
                "create",
                &name,
                "-c",
                "features.profiles=true",
                "-c",
                "features.images=false",
            ],
        );
        // From here on Drop cleans up, whatever fails next.
        let project = TestProject { name, backend };
        project.lxc(&[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=default",
        ]);
        project
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `lxc ARGS --project P` (`incus ARGS ...` on Incus: the same sub-commands); fails
    /// the test with the client's stderr on error.
    pub fn lxc(&self, args: &[&str]) -> String {
        self.try_lxc(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `lxc ARGS --project P` (or `incus`); Err carries stderr.
    pub fn try_lxc(&self, args: &[&str]) -> Result<String, String> {
        let mut all = args.to_vec();
        all.extend(["--project", self.name.as_str()]);
        try_cli_global(self.backend, &all)
    }

    /// The built binary pointed at this project's daemon (no `--lxd-project` added).
    pub fn mutater(&self) -> Command {
        mutater(self.backend)
    }

    /// `lxc query` (or `incus query`) on an API path of this project (`?project=` is added).
    pub fn query(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{path}{sep}project={}", self.name);
        let mut args = vec!["query", "-X", method, url.as_str()];
        if let Some(body) = body {
            args.extend(["-d", body]);
        }
        try_cli_global(self.backend, &args)
    }

    /// An instance with no image: it cannot start, but its profiles can be changed.
    pub fn empty_instance(&self, name: &str) {
        self.lxc(&["init", "--empty", name]);
    }

    /// The instance's profiles, read with `lxc` (not with the client under test).
    pub fn instance_profiles(&self, name: &str) -> Vec<String> {
        let json = self
            .query("GET", &format!("/1.0/instances/{name}"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| {
            panic!("lxc query gave {json:?}: {e}");
        });
        value["profiles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A profile as LXD's JSON, read with `lxc`.
    pub fn profile_json(&self, name: &str) -> serde_json::Value {
        let json = self
            .query("GET", &format!("/1.0/profiles/{name}"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("lxc query gave {json:?}: {e}"))
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.backend.require())
    }

    /// A client for this project over the Unix socket.
    pub fn client(&self) -> LxdClient {
        LxdClient::new(&self.endpoint(), &self.name).unwrap_or_else(|e| panic!("client: {e}"))
    }

    /// Names of a collection (`instances`, `profiles`) of this project, via the API.
    fn names(&self, collection: &str) -> Result<Vec<String>, String> {
        let json = self.query("GET", &format!("/1.0/{collection}"), None)?;
        let urls: Vec<String> =
            serde_json::from_str(&json).map_err(|e| format!("{json:?}: {e}"))?;
        let prefix = format!("/1.0/{collection}/");
        Ok(urls
            .iter()
            .filter_map(|u| u.split('?').next()?.strip_prefix(&prefix))
            .map(str::to_string)
            .collect())
    }

    fn cleanup(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut note = |r: Result<String, String>| {
            if let Err(e) = r {
                failures.push(e);
            }
        };
        match self.names("instances") {
            Ok(names) => {
                for name in names {
                    note(self.try_lxc(&["delete", "--force", &name]));
                }
            }
            Err(e) => note(Err(e)),
        }
        match self.names("profiles") {
            Ok(names) => {
                for name in names.iter().filter(|n| n.as_str() != "default") {
                    note(self.try_lxc(&["profile", "delete", name]));
                }
            }
            Err(e) => note(Err(e)),
        }
        note(self.try_lxc(&["profile", "device", "remove", "default", "root"]));
        note(try_cli_global(
            self.backend,
            &["project", "delete", &self.name],
        ));
        failures
    }
}

impl Default for TestProject {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestProject {
    fn drop(&mut self) {
        for failure in self.cleanup() {
            eprintln!(
                "cleanup of {:?} project {}: {failure}",
                self.backend, self.name
            );
        }
    }
}

/// Waits for `check` to hold, polling; fails the test with `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address LXD serves HTTPS on, as `host:port` to connect to. If
/// `core.https_address` is unset it is set to `127.0.0.1:<free port>`; a value already
/// there is reused. It is never unset: other tests (other processes) may rely on it.
pub fn lxd_https_address() -> String {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS
        .get_or_init(|| {
            require_lxd();
            // Serialise with other test processes that might set it at the same time.
            let _lock = CrossProcessLock::acquire("lxd-mutater-tests-https.lockdir");
            let current = lxc_global(&["config", "get", "core.https_address"])
                .trim()
                .to_string();
            let configured = if current.is_empty() {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .unwrap_or_else(|e| panic!("no free port: {e}"));
                let address = format!("127.0.0.1:{port}");
                lxc_global(&["config", "set", "core.https_address", &address]);
                address
            } else {
                current
            };
            let connect = connectable(&configured);
            wait_until(
                &format!("LXD to listen on {connect}"),
                Duration::from_secs(10),
                || std::net::TcpStream::connect(&connect).is_ok(),
            );
            connect
        })
        .clone()
}

/// A lock shared by test processes: a directory that exists while held. A holder that
/// died leaves it behind; after a minute it counts as stale.
struct CrossProcessLock(PathBuf);

impl CrossProcessLock {
    fn acquire(name: &str) -> CrossProcessLock {
        let path = std::env::temp_dir().join(name);
        let start = Instant::now();
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => return CrossProcessLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60));
                    if stale {
                        let _ = std::fs::remove_dir(&path);
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(90),
                        "cannot take {}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
}

impl Drop for CrossProcessLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `:8443`, `0.0.0.0:8443`, `[::]:8443` -> `127.0.0.1:8443`; a plain host is kept.
fn connectable(address: &str) -> String {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (address, "8443"),
    };
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "::" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{port}")
}

/// LXD's server certificate, the one to pin.
pub fn lxd_server_cert() -> PathBuf {
    let dir = std::env::var_os("LXD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            lxd_socket()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/var/lib/lxd"))
        });
    dir.join("server.crt")
}

/// A client certificate (rcgen) written to a temp dir and trusted by LXD for one project;
/// the trust is removed on drop.
pub struct TrustedClientCert {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    name: String,
}

impl TrustedClientCert {
    pub fn new(project: &TestProject) -> TrustedClientCert {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let key_pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let params = rcgen::CertificateParams::new(vec!["lxd-mutater-test".to_string()])
            .unwrap_or_else(|e| panic!("params: {e}"));
        let cert = params
            .self_signed(&key_pair)
            .unwrap_or_else(|e| panic!("cert: {e}"));
        let cert_path = dir.path().join("client.crt");
        let key_path = dir.path().join("client.key");
        std::fs::write(&cert_path, cert.pem()).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::write(&key_path, key_pair.serialize_pem())
            .unwrap_or_else(|e| panic!("write: {e}"));
        let name = format!("{}-client", project.name());
        let cert_arg = cert_path.to_string_lossy().into_owned();
        lxc_global(&[
            "config",
            "trust",
            "add",
            &cert_arg,
            "--name",
            &name,
            "--restricted",
            "--projects",
            project.name(),
        ]);
        TrustedClientCert {
            dir,
            cert: cert_path,
            key: key_path,
            name,
        }
    }

    fn fingerprints(&self) -> Result<Vec<String>, String> {
        let json = try_lxc_global(&["query", "/1.0/certificates?recursion=1"])?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("{json:?}: {e}"))?;
        Ok(value
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"].as_str() == Some(self.name.as_str()))
            .filter_map(|c| c["fingerprint"].as_str().map(str::to_string))
            .collect())
    }
}

impl Drop for TrustedClientCert {
    fn drop(&mut self) {
        match self.fingerprints() {
            Ok(fps) => {
                for fp in fps {
                    if let Err(e) = try_lxc_global(&["config", "trust", "remove", &fp]) {
                        eprintln!("cleanup of trusted certificate {}: {e}", self.name);
                    }
                }
            }
            Err(e) => eprintln!("cleanup of trusted certificate {}: {e}", self.name),
        }
    }
}

/// A port nobody listens on now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `lxd-mutater run` as a daemon on a project, with its HTTP port; killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub port: u16,
}

impl Daemon {
    /// Starts the built binary; `extra` are more flags (`--resync 1h`, ...).
    pub fn start(project: &TestProject, resources: &Path, state: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--resources".to_string(),
            resources.display().to_string(),
            "--state-dir".to_string(),
            state.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::run(project, &args, &[], None)
    }

    /// `lxd-mutater run` on `project` with `args`, environment `env`, and its log
    /// (stderr) in `log` if given.
    pub fn run(
        project: &TestProject,
        args: &[&str],
        env: &[(&str, &Path)],
        log: Option<&Path>,
    ) -> Daemon {
        let port = free_port();
        let stderr = match log {
            Some(path) => std::process::Stdio::from(
                std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
            None => std::process::Stdio::null(),
        };
        let child = project
            .mutater()
            .arg("run")
            .args(["--lxd-project", project.name(), "--workers", "2"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lxd-mutater: {e}"));
        Daemon { child, port }
    }

    /// An HTTP GET on the daemon: status code and body (0 when nothing answers).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// The value of one series (`name{labels}` exactly as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` in a Prometheus text exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A GET with curl: status code (0 when nothing answers) and body.
pub fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
