#!/usr/bin/env python3
"""make soak: random edits, manual drifts and LXD restarts against a running lxd-mutater,
for a long time, on a private LXD daemon; converged at the end, and the controller alive.

    python3 bench/soak.py [--minutes 30] [--instances 200] [--restart-every MINUTES] [--seed N]

It brings up its own LXD daemon (LXD_DIR=/var/lib/lxd-soak-<pid>, a `dir` storage pool, a
project with features.profiles=true), so that killing and restarting it never disturbs the
shared daemon at /var/lib/lxd; it removes that daemon and its directory at the end, also on
failure or Ctrl-C. Needs the release binary (make soak builds it) and root.

Every 1-3 s one random action: a revision edited, an application added to or removed from a
machine, a hand-made `lxc profile assign` on an instance, a hand-made `lxc profile set` (or
device removal) on an owned charm profile; every ~5 minutes (less on short runs) a `kill -9`
of the private LXD and a restart. At the end: up to 5 minutes for every instance to carry its
expected list, every expected charm profile its content, and no owned charm profile left
that nothing expects. Prints a short report; exit 0 when converged and the controller
stayed up, 1 otherwise.
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "lxd-mutater")
MODEL = "m"
PROJECT = "soak"
OWNER_KEY = "user.lxd-mutater.owner"
OWNER = "lxd-mutater"
RESERVED = "user.lxd-mutater."

# The applications: their charm's lxd-profile.yaml (None: the charm has none).
APPS = {
    "nesting": {"config": {"security.nesting": True}},  # a YAML bool, LXD's "true"
    "tun": {"devices": {"tun": {"type": "unix-char", "path": "/dev/net/tun"}}},
    "kmsg": {"config": {"security.nesting": "true"},
             "devices": {"kmsg": {"type": "unix-char", "path": "/dev/kmsg", "source": "/dev/kmsg"}}},
    "plain": None,
}


def log(*a):
    print(f"soak [{time.strftime('%H:%M:%S')}]:", *a, file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


# ----------------------------------------------------------------------------------------
# LXD over its Unix socket: a fresh connection per request (LXD 5.0 stalls every client
# while an open connection has not sent its first bytes; none is ever parked here).


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("lxd", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Lxd:
    def __init__(self, socket_path, project):
        self.socket = socket_path
        self.project = project

    def get(self, path, timeout=60):
        sep = "&" if "?" in path else "?"
        conn = UnixConnection(self.socket, timeout)
        try:
            conn.request("GET", f"{path}{sep}project={self.project}")
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        doc = json.loads(raw) if raw else {}
        if r.status >= 400 or doc.get("type") == "error":
            raise RuntimeError(f"GET {path}: {r.status} {doc.get('error')}")
        return doc.get("metadata")

    def get_or_none(self, path, timeout=10):
        try:
            return self.get(path, timeout)
        except RuntimeError as e:
            if ": 404 " in str(e):
                return None
            raise

    def instances(self):
        return {i["name"]: i for i in self.get("/1.0/instances?recursion=1")}

    def profiles(self):
        return {p["name"]: p for p in self.get("/1.0/profiles?recursion=1")}


# ----------------------------------------------------------------------------------------
# The private daemon


class PrivateLxd:
    def __init__(self, work):
        self.dir = f"/var/lib/lxd-soak-{os.getpid()}"
        self.socket = os.path.join(self.dir, "unix.socket")
        self.logfile = os.path.join(work, "lxd.log")
        self.env = {**os.environ, "LXD_DIR": self.dir}
        self.env.pop("LXD_SOCKET", None)
        self.proc = None
        self.api = Lxd(self.socket, PROJECT)

    def lxc(self, *args, check=True, timeout=120):
        r = subprocess.run(["lxc", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"lxc {' '.join(args)}: {r.stderr.strip()}")
        return r

    def start(self):
        os.makedirs(self.dir, mode=0o711, exist_ok=True)
        with open(self.logfile, "a") as f:
            f.write(f"--- soak: starting lxd at {time.strftime('%H:%M:%S')}\n")
        self.proc = subprocess.Popen(
            ["lxd", "--group", "root", "--logfile", self.logfile], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        r = subprocess.run(["lxd", "waitready", "--timeout", "120"], env=self.env,
                           capture_output=True, text=True)
        if r.returncode != 0 or self.proc.poll() is not None:
            raise RuntimeError(f"private LXD did not come up: {r.stderr.strip()} (see {self.logfile})")

    def setup(self, n):
        self.start()
        self.lxc("storage", "create", "default", "dir")
        self.lxc("project", "create", PROJECT, "-c", "features.profiles=true", "-c", "features.images=false")
        self.lxc("profile", "device", "add", "default", "root", "disk", "path=/", "pool=default",
                 "--project", PROJECT)
        names = [f"i{k}" for k in range(n)]
        todo = list(names)
        lock = threading.Lock()
        errors = []

        def worker():
            while True:
                with lock:
                    if not todo or errors:
                        return
                    name = todo.pop()
                try:
                    self.lxc("init", "--empty", name, "-c", "boot.autostart=false", "--project", PROJECT)
                except Exception as e:  # noqa: BLE001 - reported below
                    with lock:
                        errors.append(str(e))

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"creating instances: {errors[0]}")
        return names

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def destroy(self):
        if self.alive():
            try:
                subprocess.run(["lxd", "shutdown", "--timeout", "30"], env=self.env,
                               capture_output=True, timeout=40)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.kill9()
        # Anything left that runs against this daemon's directory was started by this
        # script (its lxd, its lxc clients): end those, by their id.
        me = os.getpid()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"LXD_DIR={self.dir}".encode() in env:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        if os.path.isdir(self.dir):
            mounts = [os.path.join(self.dir, "shmounts"), os.path.join(self.dir, "devlxd")]
            try:
                with open("/proc/self/mountinfo") as f:
                    for line in f:
                        mp = line.split()[4].replace("\\040", " ")
                        if mp == self.dir or mp.startswith(self.dir + "/"):
                            mounts.append(mp)
            except OSError:
                pass
            for mp in sorted(set(mounts), key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Desired state: the resource files and the expectations they imply


class Desired:
    def __init__(self, res_dir, n, rng):
        self.dir = res_dir
        self.rng = rng
        self.revs = {a: rng.randint(1, 5) for a in APPS}
        names = list(APPS)
        self.machines = []
        for _ in range(n):
            apps = rng.sample(names, rng.randint(1, 3))
            self.machines.append(apps)
        os.makedirs(os.path.join(res_dir, "machines"), exist_ok=True)

    @staticmethod
    def _write(path, text):
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)

    def write_applications(self):
        docs = []
        for app, profile in APPS.items():
            spec = {"charm": app, "revision": self.revs[app]}
            if profile is not None:
                spec["lxdProfile"] = profile
            docs.append("apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\n"
                        f"metadata: {{name: {app}, namespace: {MODEL}}}\n"
                        f"spec: {json.dumps(spec)}\n")
        self._write(os.path.join(self.dir, "applications.yaml"), "---\n".join(docs))

    def write_machine(self, k):
        text = ("apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\n"
                f"metadata: {{name: \"{k}\", namespace: {MODEL}}}\n"
                f"spec: {{instance: i{k}, applications: {json.dumps(self.machines[k])}}}\n")
        self._write(os.path.join(self.dir, "machines", f"{k}.yaml"), text)

    def write_all(self):
        self.write_applications()
        for k in range(len(self.machines)):
            self.write_machine(k)

    def charm_profile(self, app):
        return f"juju-{MODEL}-{app}-{self.revs[app]}"

    def expected_list(self, k):
        out = ["default", f"juju-{MODEL}"]
        for app in self.machines[k]:
            if APPS[app] and self.charm_profile(app) not in out:
                out.append(self.charm_profile(app))
        return out

    def expected_profiles(self):
        """Charm profile name -> (config, devices) as LXD should hold them."""
        out = {}
        for apps in self.machines:
            for app in apps:
                p = APPS[app]
                if p:
                    config = {k: str(v).lower() if isinstance(v, bool) else str(v)
                              for k, v in (p.get("config") or {}).items()}
                    out[self.charm_profile(app)] = (config, p.get("devices") or {})
        return out


def check_converged(lxd, desired, names):
    """Returns the problems (empty when converged): lists, contents, leftovers."""
    problems = []
    insts = lxd.instances()
    for k, name in enumerate(names):
        want = desired.expected_list(k)
        have = insts.get(name, {}).get("profiles")
        if have != want:
            problems.append(f"{name}: {have} != expected {want}")
    profiles = lxd.profiles()
    expected = desired.expected_profiles()
    for pname, (config, devices) in expected.items():
        p = profiles.get(pname)
        if p is None:
            problems.append(f"profile {pname} missing")
            continue
        have = {k: v for k, v in p["config"].items() if not k.startswith(RESERVED)}
        if have != config or p["devices"] != devices:
            problems.append(f"profile {pname}: content {have} {p['devices']} != expected {config} {devices}")
    model = f"juju-{MODEL}"
    if model not in profiles:
        problems.append(f"profile {model} missing")
    for pname, p in profiles.items():
        if p["config"].get(OWNER_KEY) != OWNER or pname == model or pname in expected:
            continue
        problems.append(f"owned profile {pname} left behind (used_by {p.get('used_by') or []})")
    return problems


# ----------------------------------------------------------------------------------------
# The controller


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Controller:
    def __init__(self, work, res_dir, lxd_socket):
        self.port = free_port()
        self.state = os.path.join(work, "state")
        self.logfile = os.path.join(work, "controller.log")
        self.log = open(self.logfile, "w")
        self.proc = subprocess.Popen(
            [BIN, "run", "--resources", res_dir, "--state-dir", self.state,
             "--lxd", f"unix://{lxd_socket}", "--lxd-project", PROJECT,
             "--listen", f"127.0.0.1:{self.port}", "--resync", "1m", "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            start_new_session=True)
        self.started = time.monotonic()

    def alive(self):
        return self.proc.poll() is None

    def http(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def metrics_text(self):
        return self.http("/metrics")[1]

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            pass
    return out


def labels(series):
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


# ----------------------------------------------------------------------------------------
# The actions


class DriftWatch(threading.Thread):
    """Times each hand-made drift until the controller undoes it: an instance's list no
    longer the one assigned by hand, a profile's content no longer the one set by hand
    (or the profile gone: superseded by an edit). Polls every 100 ms."""

    def __init__(self, lxd):
        super().__init__(daemon=True)
        self.lxd = lxd
        self.lock = threading.Lock()
        self.pending = []
        self.results = []  # (kind, target, seconds or None, outcome, wall clock, since restart)
        self.stopping = threading.Event()
        self.last_restart = None

    def add(self, kind, target, drifted):
        with self.lock:
            # A second drift of the same object before the first was undone replaces it.
            self.pending = [p for p in self.pending if p["target"] != target]
            self.pending.append({"kind": kind, "target": target, "drifted": drifted,
                                 "t0": time.monotonic(), "wall": time.strftime("%H:%M:%S"),
                                 "since_restart": None if self.last_restart is None
                                 else time.monotonic() - self.last_restart})

    def state(self, item):
        if item["kind"] == "drift_assign":
            inst = self.lxd.get_or_none(f"/1.0/instances/{item['target']}")
            return None if inst is None else inst["profiles"]
        p = self.lxd.get_or_none(f"/1.0/profiles/{item['target']}")
        return None if p is None else (p["config"], p["devices"])

    def run(self):
        while not self.stopping.is_set():
            with self.lock:
                items = list(self.pending)
            for item in items:
                try:
                    now = self.state(item)
                except (OSError, RuntimeError, http.client.HTTPException, ValueError):
                    continue  # LXD down: still pending
                if now == item["drifted"]:
                    continue
                took = time.monotonic() - item["t0"]
                outcome = "gone" if now is None else "corrected"
                with self.lock:
                    self.pending.remove(item)
                    self.results.append((item["kind"], item["target"], took, outcome, item["wall"],
                                         item["since_restart"]))
            self.stopping.wait(0.1)

    def finish(self):
        self.stopping.set()
        self.join(timeout=5)
        with self.lock:
            for item in self.pending:
                self.results.append((item["kind"], item["target"], None, "never undone", item["wall"],
                                     item["since_restart"]))
            self.pending.clear()


class Soak:
    def __init__(self, lxd, desired, names, ctl, rng):
        self.lxd = lxd
        self.desired = desired
        self.names = names
        self.ctl = ctl
        self.rng = rng
        self.done = collections.Counter()
        self.failed = collections.Counter()
        self.failures = []
        self.downtimes = []
        self.drift_seq = 0
        self.watch = DriftWatch(lxd)
        self.rss_samples = []  # (seconds into the actions, KiB)

    def act(self, kind):
        fn = getattr(self, kind)
        try:
            note = fn()
            self.done[kind] += 1
            return note
        except Exception as e:  # noqa: BLE001 - a hand-made change that LXD refused is counted
            self.failed[kind] += 1
            why = " ".join(str(e).split())
            if len(self.failures) < 20:
                self.failures.append(f"{kind}: {why[:200]}")
            return f"failed: {why[:160]}"

    def edit_revision(self):
        app = self.rng.choice([a for a in APPS if APPS[a]] * 4 + ["plain"])
        self.desired.revs[app] += 1
        self.desired.write_applications()
        return f"{app} -> revision {self.desired.revs[app]}"

    def add_application(self):
        k = self.rng.randrange(len(self.names))
        apps = self.desired.machines[k]
        missing = [a for a in APPS if a not in apps]
        if not missing:
            return self.remove_application(k)
        app = self.rng.choice(missing)
        apps.insert(self.rng.randint(0, len(apps)), app)
        self.desired.write_machine(k)
        return f"machine {k}: {apps}"

    def remove_application(self, k=None):
        if k is None:
            k = self.rng.randrange(len(self.names))
        apps = self.desired.machines[k]
        if not apps:
            return self.add_application()
        apps.remove(self.rng.choice(apps))
        self.desired.write_machine(k)
        return f"machine {k}: {apps}"

    def drift_assign(self):
        k = self.rng.randrange(len(self.names))
        want = self.desired.expected_list(k)
        charms = want[2:]
        owned = [p for p, v in self.lxd.profiles().items()
                 if v["config"].get(OWNER_KEY) == OWNER and p.startswith(f"juju-{MODEL}-")]
        choices = [["default"], want[:1] + charms]
        if len(charms) >= 2:
            choices.append(want[:2] + list(reversed(charms)))
        if charms:
            choices.append(want[:2] + charms[1:])
        extra = [p for p in owned if p not in want]
        if extra:
            choices.append(want + [self.rng.choice(extra)])
        drift = self.rng.choice(choices)
        self.lxd_cli("profile", "assign", self.names[k], ",".join(drift), "--project", PROJECT)
        self.watch.add("drift_assign", self.names[k], drift)
        return f"{self.names[k]}: {drift}"

    def drift_content(self):
        owned = {p: v for p, v in self.lxd.profiles().items()
                 if v["config"].get(OWNER_KEY) == OWNER and p.startswith(f"juju-{MODEL}-")}
        if not owned:
            raise RuntimeError("no owned charm profile")
        name = self.rng.choice(sorted(owned))
        config = dict(owned[name]["config"])
        devices = dict(owned[name]["devices"])
        self.drift_seq += 1
        how = self.rng.choice(["nesting", "user", "device"])
        if how == "device" and devices:
            dev = sorted(devices)[0]
            del devices[dev]
            cmd = ("device", "remove", name, dev)
            note = f"device {dev} removed"
        elif how == "nesting":
            config["security.nesting"] = "false"
            cmd = ("set", name, "security.nesting", "false")
            note = "security.nesting=false"
        else:
            config["user.soak-drift"] = str(self.drift_seq)
            cmd = ("set", name, "user.soak-drift", str(self.drift_seq))
            note = f"user.soak-drift={self.drift_seq}"
        try:
            self.lxd_cli("profile", *cmd, "--project", PROJECT)
        except RuntimeError as e:
            # LXD saved the change but could not apply it to some instance (one the
            # controller was writing at that moment): the drift is there all the same.
            if "profile change still saved" not in str(e):
                raise
            note += " (saved; LXD failed to apply it to some instance)"
        self.watch.add("drift_content", name, (config, devices))
        return f"{name}: {note}"

    def lxd_cli(self, *args):
        self.daemon.lxc(*args, timeout=60)

    def lxd_restart(self):
        t0 = time.monotonic()
        self.daemon.kill9()
        note = "kill -9"
        # Sometimes the resources change while LXD is down.
        if self.rng.random() < 0.5:
            kind = self.rng.choice(["edit_revision", "add_application", "remove_application"])
            note += f", then {kind} ({self.act(kind)})"
        time.sleep(self.rng.uniform(0.5, 3))
        self.daemon.start()
        took = time.monotonic() - t0
        self.watch.last_restart = time.monotonic()
        self.downtimes.append(took)
        return f"{note}, ready again after {took:.1f} s"


def wait_converged(lxd, desired, names, ctl, timeout, what):
    t0 = time.monotonic()
    problems = ["not checked"]
    while time.monotonic() - t0 < timeout:
        if not ctl.alive():
            return None, [f"controller exited with {ctl.proc.returncode}"]
        try:
            problems = check_converged(lxd, desired, names)
        except (OSError, RuntimeError, http.client.HTTPException) as e:
            problems = [f"listing LXD: {e}"]
        if not problems:
            return time.monotonic() - t0, []
        time.sleep(1)
    log(f"{what}: not converged after {timeout:.0f} s")
    return None, problems


# ----------------------------------------------------------------------------------------
# The controller's log: warnings, errors and anything that is not a JSON line (a panic)


def log_summary(path):
    levels = collections.Counter()
    groups = collections.OrderedDict()
    raw = []
    try:
        f = open(path, errors="replace")
    except OSError:
        return levels, groups, raw
    with f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raw.append(line)
                continue
            level = str(doc.get("level", "?")).upper()
            levels[level] += 1
            if level not in ("WARN", "ERROR"):
                continue
            fields = doc.get("fields") or {}
            msg = str(fields.get("message", ""))
            detail = {k: v for k, v in fields.items() if k != "message"}
            cause = str(fields.get("error") or fields.get("reason") or "")
            cause = re.sub(r"unix://\S+|/\S+unix\.socket", "SOCKET", cause)
            key = (level, msg, re.sub(r"\d+", "N", cause)[:120])
            g = groups.setdefault(key, {"count": 0, "first": None, "last": None})
            g["count"] += 1
            sample = f"{doc.get('timestamp', '')} {msg}: {json.dumps(detail)}"
            g["first"] = g["first"] or sample
            g["last"] = sample
    return levels, groups, raw


# ----------------------------------------------------------------------------------------


METRIC_EXCERPTS = ("lxd_mutater_drift_detected_total", "lxd_mutater_drift_corrected_total",
                   "lxd_mutater_reconcile_errors_total", "lxd_mutater_resources{")


def report(args, soak, t_initial, t_final, problems, rss, metrics_text, ctl, alive_all_along,
           death, levels, groups, raw, elapsed):
    print(f"\n## Soak: {args.instances} instances, {elapsed / 60:.1f} minutes of actions (seed {args.seed})\n")
    print("actions (done / refused by LXD):")
    kinds = ["edit_revision", "add_application", "remove_application", "drift_assign",
             "drift_content", "lxd_restart"]
    for kind in kinds:
        print(f"  {kind:20} {soak.done[kind]:5d} / {soak.failed[kind]}")
    if soak.downtimes:
        print(f"  LXD down per restart: {min(soak.downtimes):.1f}-{max(soak.downtimes):.1f} s")
    for f in soak.failures[:5]:
        print(f"  refused: {f}")
    results = soak.watch.results
    if results:
        print("hand-made drift undone by the controller (seen by polling LXD every 100 ms):")
        for kind in ("drift_assign", "drift_content"):
            took = sorted(r[2] for r in results if r[0] == kind and r[3] == "corrected")
            if took:
                print(f"  {kind:20} {len(took)} undone: median {took[len(took) // 2]:.2f} s, "
                      f"p95 {took[min(len(took) - 1, int(len(took) * 0.95))]:.2f} s, max {took[-1]:.2f} s")
        gone = [r for r in results if r[3] == "gone"]
        if gone:
            print(f"  {len(gone)} drifted profiles deleted by a later edit before being rewritten")
        slow = [r for r in results if r[3] == "never undone" or (r[2] is not None and r[2] > 5)]
        for kind, target, took, outcome, wall, since in slow[:10]:
            when = "" if since is None else f", {since:.0f} s after an LXD restart"
            took = "never" if took is None else f"after {took:.1f} s"
            print(f"  slow: {kind} on {target} at {wall} undone {took} ({outcome}{when})")
    print(f"initial convergence: {t_initial:.1f} s" if t_initial is not None else "initial convergence: NO")
    if t_final is not None:
        print(f"final convergence: {t_final:.1f} s after the last action")
    else:
        print(f"final convergence: NOT within {args.converge_timeout:.0f} s; {len(problems)} problems, first ones:")
        for p in problems[:10]:
            print(f"  {p}")
    start, end, peak = rss
    fmt = lambda v: f"{v / 1024:.1f} MiB" if v else "?"  # noqa: E731
    print(f"controller RSS: start {fmt(start)}, end {fmt(end)}, peak sampled {fmt(peak)}")
    if len(soak.rss_samples) > 2:
        step = max(1, len(soak.rss_samples) // 10)
        picks = soak.rss_samples[::step]
        if picks[-1] != soak.rss_samples[-1]:
            picks.append(soak.rss_samples[-1])
        print("  over time: " + ", ".join(f"{t / 60:.1f} min {v / 1024:.1f}" for t, v in picks) + " (MiB)")
    if metrics_text:
        m = parse_metrics(metrics_text)
        print("metrics:")
        for series, v in m.items():
            if series.startswith(METRIC_EXCERPTS) and (v or 'phase="Error"' in series):
                print(f"  {series} {v:g}")
        by_method = collections.Counter()
        by_code = collections.Counter()
        for series, v in m.items():
            if series.startswith("lxd_mutater_lxd_requests_total{"):
                lb = labels(series)
                by_method[lb.get("method")] += v
                if not lb.get("code", "").startswith("2"):
                    by_code[f"{lb.get('method')} {lb.get('code')}"] += v
        print("  lxd_requests_total by method: " + ", ".join(f"{k} {v:g}" for k, v in sorted(by_method.items())))
        if by_code:
            print("  of which not 2xx: " + ", ".join(f"{k} {v:g}" for k, v in sorted(by_code.items())))
    if alive_all_along:
        probes = []
        for path in ("/healthz", "/readyz"):
            try:
                probes.append(f"{path} {ctl.http(path)[0]}")
            except OSError as e:
                probes.append(f"{path} {e}")
        print(f"controller: up the whole time (pid {ctl.proc.pid}; {', '.join(probes)})")
    else:
        print(f"controller: DIED ({death})")
    print("controller log: " + ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    for (level, _, _), g in sorted(groups.items(), key=lambda kv: -kv[1]["count"])[:12]:
        print(f"  {level} x{g['count']}, first: {g['first'][:600]}")
    for line in raw[:10]:
        print(f"  not JSON: {line[:300]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="how long the actions go on (fractions accepted)")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--restart-every", type=float, default=None,
                    help="minutes between LXD restarts (default 5, or a third of --minutes when shorter)")
    ap.add_argument("--converge-timeout", type=float, default=300, help="seconds for the final convergence")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep-logs", action="store_true", help="keep the logs even when it passes")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.restart_every is None:
        args.restart_every = min(5.0, args.minutes / 3)
    if os.geteuid() != 0:
        sys.exit("soak: needs root (it runs its own LXD daemon)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"soak: {BIN} missing: cargo build --release first")
    rng = random.Random(args.seed)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)

    work = tempfile.mkdtemp(prefix=f"lxdm-soak-{os.getpid()}-")
    res_dir = os.path.join(work, "resources")
    daemon = PrivateLxd(work)
    ctl = None
    passed = False
    try:
        log(f"private LXD in {daemon.dir}, logs in {work}, seed {args.seed}")
        t = time.monotonic()
        names = daemon.setup(args.instances)
        log(f"{len(names)} empty instances in project {PROJECT} ({time.monotonic() - t:.0f} s)")
        desired = Desired(res_dir, args.instances, rng)
        desired.write_all()
        ctl = Controller(work, res_dir, daemon.socket)
        lxd = daemon.api
        t_initial, problems = wait_converged(lxd, desired, names, ctl, 600, "initial convergence")
        if t_initial is None:
            log("initial convergence failed: " + "; ".join(problems[:5]))
            levels, groups, raw = log_summary(ctl.logfile)
            report(args, Soak(lxd, desired, names, ctl, rng), None, None, problems,
                   (ctl.rss_kib(), None, None), None, ctl, ctl.alive(), ctl.proc.returncode,
                   levels, groups, raw, 0)
            return 1
        time.sleep(2)  # let the first clean-ups and status writes finish before sampling
        rss_start = ctl.rss_kib()
        rss_peak = rss_start
        log(f"converged in {t_initial:.1f} s, controller RSS {rss_start} KiB")

        soak = Soak(lxd, desired, names, ctl, rng)
        soak.daemon = daemon
        soak.watch.start()
        soak.rss_samples.append((0, rss_start))
        weights = {"edit_revision": 2, "add_application": 3, "remove_application": 3,
                   "drift_assign": 4, "drift_content": 2}
        t0 = time.monotonic()
        deadline = t0 + args.minutes * 60
        every = args.restart_every * 60
        next_restart = t0 + every * rng.uniform(0.8, 1.2)
        next_rss = t0 + 30
        t_last_action = t0
        death = None
        while time.monotonic() < deadline:
            if not ctl.alive():
                death = f"exit status {ctl.proc.returncode} after {time.monotonic() - t0:.0f} s of actions"
                log("controller died:", death)
                break
            now = time.monotonic()
            if now >= next_rss:
                rss = ctl.rss_kib() or 0
                rss_peak = max(rss_peak or 0, rss)
                soak.rss_samples.append((now - t0, rss))
                next_rss = now + 30
            if now >= next_restart:
                kind = "lxd_restart"
                next_restart = now + every * rng.uniform(0.8, 1.2)
            else:
                kind = rng.choices(list(weights), list(weights.values()))[0]
            note = soak.act(kind)
            t_last_action = time.monotonic()
            log(f"{kind}: {note}")
            time.sleep(rng.uniform(1, 3))
        elapsed = time.monotonic() - t0
        if not daemon.alive():
            daemon.start()

        log("actions stopped; waiting for the final convergence")
        t_wait = time.monotonic()
        t_final, problems = (None, [death]) if death else wait_converged(
            lxd, desired, names, ctl, args.converge_timeout, "final convergence")
        if t_final is not None:
            t_final += t_wait - t_last_action
        soak.watch.finish()
        rss_end = ctl.rss_kib()
        if rss_end:
            soak.rss_samples.append((time.monotonic() - t0, rss_end))
        rss_peak = max(rss_peak or 0, rss_end or 0)
        metrics_text = None
        try:
            metrics_text = ctl.metrics_text()
        except OSError as e:
            log(f"/metrics: {e}")
        alive = ctl.alive() and death is None
        if not alive and death is None:
            death = f"exit status {ctl.proc.returncode}"
        levels, groups, raw = log_summary(ctl.logfile)
        report(args, soak, t_initial, t_final, problems, (rss_start, rss_end, rss_peak), metrics_text,
               ctl, alive, death, levels, groups, raw, elapsed)
        passed = alive and t_final is not None
        print(f"\nresult: {'PASS' if passed else 'FAIL'}")
        return 0 if passed else 1
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if ctl is not None:
            ctl.stop()
        log(f"removing the private LXD ({daemon.dir})")
        daemon.destroy()
        shutil.rmtree(res_dir, ignore_errors=True)
        shutil.rmtree(os.path.join(work, "state"), ignore_errors=True)
        if passed and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work} (controller.log, lxd.log)")


if __name__ == "__main__":
    sys.exit(main())
