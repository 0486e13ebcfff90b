//! LXD out of reach under a running controller: `/readyz` says 503, the events stream
//! reconnects when LXD is back, the relist on reconnect runs, and a drift made while the
//! controller could not see LXD (its event was lost) is corrected.
//!
//! The controller reaches LXD through a Unix-socket proxy that the test switches off and
//! on: the shared LXD daemon itself is never restarted (a restart of LXD 5.0 re-runs the
//! autostart of every instance and can stall it for a minute, for every test at once).

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Daemon, TestProject, wait_until};

/// A proxy in front of LXD's socket that can refuse everything and cut what is open.
struct Proxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<UnixStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lxd.socket");
        let listener = UnixListener::bind(&path).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let upstream = support::lxd_socket();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upper) = UnixStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut open = open2.lock().unwrap();
                    open.extend(down.try_clone().ok());
                    open.extend(upper.try_clone().ok());
                }
                pipe(down.try_clone().unwrap(), upper.try_clone().unwrap());
                pipe(upper, down);
            }
        });
        Proxy {
            path,
            _dir: dir,
            up,
            open,
        }
    }

    /// LXD "goes away": open connections are cut and new ones refused.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn lxd_out_of_reach_makes_it_unready_and_drift_made_meanwhile_is_corrected_on_reconnect() {
    let lxd = TestProject::new();
    lxd.empty_instance("c0");
    let resources = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("r.yaml"),
        "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\nmetadata: {name: one, namespace: m}\nspec: {revision: 3, lxdProfile: {config: {security.nesting: true}}}\n---\napiVersion: lxdmutater.dev/v1alpha1\nkind: Container\nmetadata: {name: '0-lxd-0', namespace: m}\nspec: {machine: '0', instance: c0, applications: [one]}\n",
    )
    .unwrap();
    let proxy = Proxy::start();
    let url = format!("unix://{}", proxy.path.display());
    let daemon = Daemon::start(
        &lxd,
        resources.path(),
        state.path(),
        &["--resync", "1h", "--lxd", &url],
    );
    let expected = ["default", "juju-m-one-3"];
    wait_until("converged", Duration::from_secs(30), || {
        lxd.instance_profiles("c0") == expected
    });
    wait_until("ready", Duration::from_secs(10), || {
        daemon.get("/readyz").0 == 200
    });

    let t = std::time::Instant::now();
    proxy.down();
    wait_until(
        "not ready while LXD is out of reach",
        Duration::from_secs(10),
        || daemon.get("/readyz").0 == 503,
    );
    eprintln!("unready after {:?}", t.elapsed());
    assert_eq!(daemon.get("/healthz").0, 200, "alive all the same");
    // A drift the controller cannot hear about: its event is lost.
    lxd.lxc(&["profile", "assign", "c0", "default"]);

    proxy.up();
    let t = std::time::Instant::now();
    wait_until(
        "the drift made meanwhile corrected after the reconnect",
        Duration::from_secs(60),
        || lxd.instance_profiles("c0") == expected,
    );
    eprintln!("corrected {:?} after LXD was back", t.elapsed());
    wait_until("ready again", Duration::from_secs(30), || {
        daemon.get("/readyz").0 == 200
    });
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("lxd_mutater_lxd_requests_total{method=\"GET\",code=\"error\"}"),
        "requests while LXD was out of reach are counted as errors:\n{metrics}"
    );
}
