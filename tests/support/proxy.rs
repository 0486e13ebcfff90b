//! Fault helpers for `tests/faults.rs`: a Unix-socket proxy in front of LXD that delays
//! requests, cuts connections between the request and the answer, and records what LXD
//! answered; a private LXD daemon that a test may kill and restart; the controller as a
//! process with its own flags; a small tmpfs for a state directory that fills up.
//!
//! Everything is synchronous (std and command-line tools), and every guard cleans up in
//! `Drop`, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::support;

/// What the proxy does to each connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Waited before the request goes to LXD.
    pub delay: Duration,
    /// Every Nth connection (0: none) is cut once LXD has the whole request and has begun
    /// to answer, before one byte of the answer reaches the client: the client cannot
    /// know whether LXD did it.
    pub cut_every: usize,
    /// The first request of each of these methods is cut the same way, wherever it
    /// falls (so that a profile creation, say, is surely among the cut).
    pub cut_first: &'static [&'static str],
}

/// One request as LXD saw it.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `name` of a JSON body (a POST that creates something), if any.
    pub name: Option<String>,
    /// LXD's status code (None: LXD gave none).
    pub code: Option<u16>,
    /// The client never got the answer.
    pub cut: bool,
}

impl Exchange {
    pub fn succeeded(&self) -> bool {
        self.code.is_some_and(|c| (200..300).contains(&c))
    }

    /// A request that changes LXD (any method but GET).
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

struct Shared {
    faults: Mutex<Faults>,
    /// Methods whose first request since `set_faults` was cut already.
    cut_once: Mutex<Vec<String>>,
    connections: AtomicUsize,
    log: Mutex<Vec<Exchange>>,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy: give the controller `--lxd <url>`.
pub struct FaultProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: &Path, faults: Faults) -> FaultProxy {
        let dir = tempfile::tempdir().expect("a temporary directory for the proxy's socket");
        let path = dir.path().join("lxd.socket");
        let listener = UnixListener::bind(&path).expect("the proxy binds its socket");
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            cut_once: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let upstream = upstream.to_path_buf();
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = down else { continue };
                let (shared, upstream) = (accepting.clone(), upstream.clone());
                std::thread::spawn(move || serve(down, &upstream, &shared));
            }
        });
        FaultProxy {
            path,
            _dir: dir,
            shared,
        }
    }

    /// `unix:///...`, for `--lxd`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
        lock(&self.shared.cut_once).clear();
    }

    /// Every request so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.shared.log).clone()
    }

    /// Requests that change LXD, whatever LXD answered.
    pub fn writes(&self) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|e| e.is_write())
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees `stopping` and closes the listener.
        let _ = UnixStream::connect(&self.path);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const MAX_HEAD: usize = 1 << 20;

/// One connection, one request: the whole request is read first and only then is LXD dialled (LXD 5.0
/// stalls every new connection while one is open and silent, and the shared daemon serves
/// every other test), after the delay; LXD's status line is read and recorded; then the
/// connection is either cut or piped both ways until it ends.
fn serve(mut down: UnixStream, upstream: &Path, shared: &Shared) {
    let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let faults = *lock(&shared.faults);
    let mut request = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(&request, b"\r\n\r\n") {
            break i + 4;
        }
        match down.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => request.extend_from_slice(&buf[..k]),
        }
        if request.len() > MAX_HEAD {
            return;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length.min(MAX_HEAD) {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => request.extend_from_slice(&buf[..k]),
        }
    }
    let name = serde_json::from_slice::<serde_json::Value>(&request[head_end..])
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string));
    // One request per connection, as this proxy sees them: LXD is asked to close after
    // its answer, so a client that keeps connections (the controller does) opens the next
    // one here, where it is delayed, recorded and perhaps cut like the first.
    if !head.to_ascii_lowercase().contains("upgrade") {
        request.splice(head_end - 2..head_end - 2, *b"Connection: close\r\n");
    }
    std::thread::sleep(faults.delay);
    let first_of_method = faults.cut_first.contains(&method.as_str()) && {
        let mut seen = lock(&shared.cut_once);
        let first = !seen.contains(&method);
        if first {
            seen.push(method.clone());
        }
        first
    };
    let mut record = Exchange {
        cut: first_of_method || (faults.cut_every > 0 && n.is_multiple_of(faults.cut_every)),
        method,
        path,
        name,
        code: None,
    };
    let answer = forward(&mut down, &request, upstream, &mut record);
    let cut = record.cut;
    lock(&shared.log).push(record);
    let Some((mut up, answer)) = answer else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    if cut || down.write_all(&answer).is_err() {
        let _ = down.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
        return;
    }
    // The rest of the answer (or a websocket's frames) to the client.
    while let Ok(k) = up.read(&mut buf) {
        if k == 0 || down.write_all(&buf[..k]).is_err() {
            break;
        }
    }
    let _ = down.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
}

/// Sends the request to LXD, starts piping what the client sends next (a websocket's
/// frames), and reads LXD's first line: the stream and the bytes read so far.
fn forward(
    down: &mut UnixStream,
    request: &[u8],
    upstream: &Path,
    record: &mut Exchange,
) -> Option<(UnixStream, Vec<u8>)> {
    let mut up = UnixStream::connect(upstream).ok()?;
    up.write_all(request).ok()?;
    if let (Ok(mut from), Ok(mut to)) = (down.try_clone(), up.try_clone()) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(k) = from.read(&mut buf) {
                if k == 0 || to.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 16384];
    while find(&answer, b"\r\n").is_none() {
        match up.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => answer.extend_from_slice(&buf[..k]),
        }
        if answer.len() > MAX_HEAD {
            return None;
        }
    }
    record.code = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    Some((up, answer))
}

/// `lxd-mutater run` with exactly the flags given (plus `--listen`); killed on drop. Its
/// log (stderr) goes to a file; when the test fails, the end of it is printed.
pub struct Controller {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
}

impl Controller {
    /// `log`: where its stderr goes (default: a temporary file).
    pub fn start(args: &[&str], log: Option<&Path>) -> Controller {
        let port = support::free_port();
        let (log, log_dir) = match log {
            Some(path) => (path.to_path_buf(), None),
            None => {
                let dir = tempfile::tempdir().expect("a temporary directory for the log");
                (dir.path().join("controller.log"), Some(dir))
            }
        };
        let stderr = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("the log {}: {e}", log.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_lxd-mutater"))
            .arg("run")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lxd-mutater: {e}"));
        Controller {
            child,
            port,
            log,
            _log_dir: log_dir,
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An HTTP GET on its `--listen`: status code (0 when nothing answers within 20 s:
    /// these tests load a 2-core machine, where a scrape was seen to take 3 s) and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "-w", "\n%{http_code}", &url])
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn metrics(&self) -> String {
        let t = std::time::Instant::now();
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics, after {:?}: {body}", t.elapsed());
        body
    }

    /// One series (`name{labels}` exactly as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        support::metric_value(&self.metrics(), series)
    }

    /// The sum of every series whose text starts with `prefix` (`name{label="x"`).
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The whole log stays for whoever looks into the failure.
            if let Some(dir) = self._log_dir.take() {
                let _ = dir.keep();
            }
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- the end of the controller's log (all of it: {}) ---\n{tail}",
                self.log.display()
            );
        }
    }
}

/// A second LXD daemon with its own directory, storage pool and instances, for a test
/// that kills LXD: the shared daemon is never touched. Stopped and removed on drop.
pub struct PrivateLxd {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateLxd {
    pub fn start() -> PrivateLxd {
        let dir = PathBuf::from(format!(
            "/var/lib/lxd-fault-{}-{:04x}",
            std::process::id(),
            fastrand::u16(..)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // From here on Drop removes it, whatever fails next.
        let mut lxd = PrivateLxd { dir, child: None };
        lxd.launch();
        lxd.lxc(&["storage", "create", "default", "dir"])
            .unwrap_or_else(|e| panic!("{e}"));
        lxd.lxc(&[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=default",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        lxd
    }

    fn log(&self) -> PathBuf {
        self.dir.join("lxd.log")
    }

    /// Starts the daemon and waits until it answers.
    fn launch(&mut self) {
        let child = Command::new("lxd")
            .args(["--group", "root", "--logfile"])
            .arg(self.log())
            .env("LXD_DIR", &self.dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lxd: {e}"));
        self.child = Some(child);
        let ready = Command::new("lxd")
            .args(["waitready", "--timeout", "60"])
            .env("LXD_DIR", &self.dir)
            .output()
            .unwrap_or_else(|e| panic!("lxd waitready: {e}"));
        assert!(
            ready.status.success(),
            "the private LXD in {} did not come up: {}\n{}",
            self.dir.display(),
            String::from_utf8_lossy(&ready.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    /// `kill -9` of the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after `kill9`) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// For `--lxd`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.dir.join("unix.socket").display())
    }

    /// `LXD_DIR=... lxc ARGS` (given up after a minute); Err carries stderr.
    pub fn lxc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("timeout")
            .args(["--kill-after=5", "60", "lxc"])
            .args(args)
            .env("LXD_DIR", &self.dir)
            .output()
            .map_err(|e| format!("cannot run lxc: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "LXD_DIR={} lxc {} failed: {}",
                self.dir.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `lxc query` of an API path (`-X method`, `-d body`).
    pub fn query(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let mut args = vec!["query", "-X", method, path];
        if let Some(body) = body {
            args.extend(["-d", body]);
        }
        self.lxc(&args)
    }

    /// Every instance's profile list, in one listing.
    pub fn lists(&self) -> BTreeMap<String, Vec<String>> {
        let json = self
            .lxc(&["query", "/1.0/instances?recursion=1"])
            .unwrap_or_else(|e| panic!("{e}"));
        profile_lists(&json)
    }

    /// The names of its profiles.
    pub fn profiles(&self) -> Vec<String> {
        let json = self
            .lxc(&["query", "/1.0/profiles"])
            .unwrap_or_else(|e| panic!("{e}"));
        profile_names(&json)
    }
}

impl Drop for PrivateLxd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            eprintln!("--- the end of the private LXD's log ---\n{tail}");
        }
        if let Some(mut child) = self.child.take() {
            let stopped = Command::new("lxd")
                .args(["shutdown", "--timeout", "30"])
                .env("LXD_DIR", &self.dir)
                .output()
                .is_ok_and(|o| o.status.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // shmounts, devlxd and anything else LXD mounted under its directory, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup of the private LXD {}: {e}", self.dir.display());
        }
    }
}

/// `{instance: [profiles]}` from `GET /1.0/instances?recursion=1`.
pub fn profile_lists(json: &str) -> BTreeMap<String, Vec<String>> {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("instances {json:?}: {e}"));
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let name = i["name"].as_str()?.to_string();
            let profiles = i["profiles"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            Some((name, profiles))
        })
        .collect()
}

/// Names from `GET /1.0/profiles` (URLs).
pub fn profile_names(json: &str) -> Vec<String> {
    let urls: Vec<String> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("profiles {json:?}: {e}"));
    let mut names: Vec<String> = urls
        .iter()
        .filter_map(|u| u.split('?').next()?.strip_prefix("/1.0/profiles/"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Runs `f(0..n)` on `threads` threads (creating or deleting many instances: LXD takes
/// ~80 ms for each, most of it waiting).
pub fn in_parallel(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    f(i);
                }
            });
        }
    });
}

/// A tmpfs of a given size on a temporary directory (as root); unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory to mount on");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            &dir.path().display().to_string(),
        ]);
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes its size, keeping what it holds.
    pub fn resize(&self, size: &str) {
        mount(&[
            "-o",
            &format!("remount,size={size}"),
            &self.dir.path().display().to_string(),
        ]);
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
    assert!(
        out.status.success(),
        "mount {} failed (the test needs root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path().display().to_string();
        let unmounted = Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").args(["-l", &path]).status();
        }
    }
}
