#!/usr/bin/env python3
"""make bench: converge time, requests and cost of lxd-mutater against the LXD floor and
against the tools operators use today, measured side by side in one run on one LXD.

Every figure that compares is a ratio measured in the same run (absolute times on a shared
2-core machine are noise). Prints one Markdown table and writes the same figures as JSON.

    python3 bench/bench.py [--instances N] [--quick] [--json FILE]

It works in its own LXD project (removed at the end, also on failure) and needs the
release binary (make bench builds it).
"""

import argparse
import glob
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "lxd-mutater")
MODEL = "bench"
OWNER = {"user.lxd-mutater.owner": "lxd-mutater"}
APP_CONTENT = {
    "a": {"config": {"security.nesting": "true"}, "devices": {}},
    "b": {"config": {"linux.kernel_modules": "overlay"},
          "devices": {"tun": {"type": "unix-char", "path": "/dev/net/tun"}}},
}


# The most a per-resource figure may grow from N to 100N and still count as flat (issue 15;
# benches/scale.rs says the same).
SCALE_FLAT = 1.3


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def lxd_socket():
    if os.environ.get("LXD_SOCKET"):
        return os.environ["LXD_SOCKET"]
    if os.environ.get("LXD_DIR"):
        return os.path.join(os.environ["LXD_DIR"], "unix.socket")
    snap = "/var/snap/lxd/common/lxd/unix.socket"
    return snap if os.path.exists(snap) else "/var/lib/lxd/unix.socket"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("lxd", timeout=120)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect(self.path)
        self.sock = s


class Lxd:
    """The simplest client: one keep-alive connection, sequential requests."""

    def __init__(self, project):
        self.project = project
        self.conn = UnixConnection(lxd_socket())

    def req(self, method, path, body=None, headers=None):
        sep = "&" if "?" in path else "?"
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, f"{path}{sep}project={self.project}", data, h)
        r = self.conn.getresponse()
        raw = r.read()
        doc = json.loads(raw) if raw else {}
        return r.status, r.getheader("ETag"), doc

    def ok(self, method, path, body=None, headers=None):
        status, etag, doc = self.req(method, path, body, headers)
        if doc.get("type") == "error" or status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {doc.get('error')}")
        if doc.get("type") == "async":
            self.wait(doc["operation"])
        return etag, doc

    def wait(self, op):
        status, _, doc = self.req("GET", f"{op}/wait?timeout=60")
        meta = doc.get("metadata") or {}
        if meta.get("status_code") not in (200, None):
            raise RuntimeError(f"operation {op}: {meta.get('err')}")

    def profiles_of_all(self):
        _, doc = self.ok("GET", "/1.0/instances?recursion=1")
        return {i["name"]: i["profiles"] for i in doc["metadata"]}


def lxc(*args, check=True):
    r = subprocess.run(["lxc", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"lxc {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


# ----------------------------------------------------------------------------------------
# The project and its instances


class Project:
    def __init__(self, n):
        self.name = f"bench-{os.getpid()}"
        self.n = n
        self.instances = [f"i{k}" for k in range(n)]

    def __enter__(self):
        lxc("project", "create", self.name, "-c", "features.profiles=true", "-c", "features.images=false")
        lxc("profile", "device", "add", "default", "root", "disk", "path=/", "pool=default", "--project", self.name)
        lxd = Lxd(self.name)
        for name in self.instances:
            lxd.ok("POST", "/1.0/instances", {"name": name, "source": {"type": "none"}})
        return self

    def __exit__(self, *exc):
        lxd = Lxd(self.name)
        try:
            for name in lxd.profiles_of_all():
                lxd.req("PATCH", f"/1.0/instances/{name}", {"profiles": ["default"]})
                lxd.ok("DELETE", f"/1.0/instances/{name}")
            _, doc = lxd.ok("GET", "/1.0/profiles")
            for url in doc["metadata"]:
                name = url.rsplit("/", 1)[-1].split("?")[0]
                if name != "default":
                    lxd.req("DELETE", f"/1.0/profiles/{name}")
        finally:
            lxc("profile", "device", "remove", "default", "root", "--project", self.name, check=False)
            lxc("project", "delete", self.name, check=False)


# ----------------------------------------------------------------------------------------
# Resources and the controller


def resources_yaml(n, rev_a, rev_b=1, apps_of=None):
    docs = []
    for app, rev in (("a", rev_a), ("b", rev_b)):
        c = APP_CONTENT[app]
        docs.append(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Application\n"
            f"metadata: {{name: {app}, namespace: {MODEL}}}\n"
            f"spec: {{revision: {rev}, lxdProfile: {json.dumps(c)}}}\n"
        )
    for k in range(n):
        apps = (apps_of or {}).get(k, ["a", "b"])
        docs.append(
            "apiVersion: lxdmutater.dev/v1alpha1\nkind: Machine\n"
            f"metadata: {{name: 'm{k}', namespace: {MODEL}}}\n"
            f"spec: {{instance: i{k}, applications: [{', '.join(apps)}]}}\n"
        )
    return "---\n".join(docs)


def expected(rev_a, rev_b=1, apps=("a", "b")):
    revs = {"a": rev_a, "b": rev_b}
    return ["default", f"juju-{MODEL}"] + [f"juju-{MODEL}-{a}-{revs[a]}" for a in apps]


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), ".tmp-resources")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Controller:
    def __init__(self, project, resources_dir, workers, resync="1h", binary=BIN):
        self.port = free_port()
        self.state = tempfile.mkdtemp(prefix="lxdm-bench-state-")
        self.proc = subprocess.Popen(
            [binary, "run", "--resources", resources_dir, "--state-dir", self.state,
             "--lxd-project", project, "--listen", f"127.0.0.1:{self.port}",
             "--workers", str(workers), "--resync", resync, "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started = time.monotonic()

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
        finally:
            c.close()
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

    def wait(self, what, predicate, timeout=600, every=0.005, near=None, far=0.1):
        """Until `predicate` holds on /metrics, asked every `every` seconds; while `near`
        (if given) does not hold yet, every `far` seconds. A scrape costs the controller CPU
        (the series, /proc/self): at 200 a second it was a third of what the
        controller spent on an upgrade, so the fine polling is kept for the end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.metrics()
                if predicate(m):
                    return m
                close = near is None or near(m)
            except OSError:
                close = True
            time.sleep(every if close else far)
        raise RuntimeError(f"timed out waiting for {what}")

    def cpu_seconds(self):
        """The controller's CPU time: the scheduler's own runtime of each of its threads
        (/proc/PID/task/*/schedstat, nanoseconds), not /proc/PID/stat's utime and stime,
        which are 10 ms clock ticks charged to whichever thread runs at a tick (a
        controller that wakes briefly in step with the tick was charged 1 ms a second
        while idle; the scheduler says 0.01). Its threads live as long as it does, so
        none of their time is lost with an exited thread."""
        total = 0
        task_dir = f"/proc/{self.proc.pid}/task"
        for task in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return total / 1e9

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.state, ignore_errors=True)


def requests(m, method=None, code=None):
    total = 0.0
    for series, v in m.items():
        if not series.startswith("lxd_mutater_lxd_requests_total{"):
            continue
        if method and f'method="{method}"' not in series:
            continue
        if code and f'code="{code}"' not in series:
            continue
        total += v
    return total


def metric(m, series):
    return m.get(series, 0.0)


def settled(ctl, n):
    """Ready, one pass over every resource done, and every status stored (the writer
    thread stores them after the pass: a measurement started before would count it)."""
    ctl.wait("a first pass", lambda m: metric(m, 'lxd_mutater_reconcile_total{controller="machine",result="success"}') >= n
             and metric(m, 'workqueue_depth{name="lxd_mutater"}') == 0, timeout=300, every=0.05)
    deadline = time.monotonic() + 300
    while len(glob.glob(os.path.join(ctl.state, "*", "machines", "*.yaml"))) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("statuses not stored within 300 s")
        time.sleep(0.05)


def statuses_show(ctl, n, profile, timeout=60):
    """Until each of the `n` Machine status files lists `profile`."""
    deadline = time.monotonic() + timeout
    while True:
        files = glob.glob(os.path.join(ctl.state, "*", "machines", "*.yaml"))
        shown = 0
        for f in files:
            try:
                with open(f) as fh:
                    shown += profile in fh.read()
            except OSError:
                pass
        if shown >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n - shown} statuses without {profile} after {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------
# Baselines: the same upgrade (new profile, one list write per instance, old profile
# deleted), done by other clients on the same instances.


def new_list(old, rev):
    return [p if not p.startswith(f"juju-{MODEL}-a-") else f"juju-{MODEL}-a-{rev}" for p in old]


def profile_body(name):
    c = APP_CONTENT["a"]
    return {"name": name, "description": "", "config": {**c["config"], **OWNER}, "devices": c["devices"]}


def profile_swap(project, old_rev, rev, patch_all):
    """The floor's frame: create the new profile, `patch_all(current lists)`, delete the
    old one. Its time, the listing before it untimed."""
    lxd = Lxd(project)
    current = lxd.profiles_of_all()
    t = time.monotonic()
    lxd.ok("POST", "/1.0/profiles", profile_body(f"juju-{MODEL}-a-{rev}"))
    patch_all(current)
    lxd.ok("DELETE", f"/1.0/profiles/juju-{MODEL}-a-{old_rev}")
    return time.monotonic() - t


def floor(project, names, old_rev, rev, connections=1):
    def patch_all(current):
        def patch(chunk):
            c = Lxd(project)
            for name in chunk:
                c.ok("PATCH", f"/1.0/instances/{name}", {"profiles": new_list(current[name], rev)})

        chunks = [names[k::connections] for k in range(connections)]
        threads = [threading.Thread(target=patch, args=(c,)) for c in chunks]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    return profile_swap(project, old_rev, rev, patch_all), len(names) + 2


FLOOR_RS = os.path.join(ROOT, "bench", "floor.rs")
FLOOR_BIN = os.path.join(ROOT, "target", "bench", "floor")


def rust_floor(project, names, old_rev, rev, connections=2):
    """The floor's requests from bench/floor.rs (std only, built here with rustc): the
    time, the requests, and the client's CPU per instance, the cost of a request to a
    client that does nothing else (its process start, ~1 ms, included)."""
    if not os.path.exists(FLOOR_BIN) or os.path.getmtime(FLOOR_BIN) < os.path.getmtime(FLOOR_RS):
        os.makedirs(os.path.dirname(FLOOR_BIN), exist_ok=True)
        subprocess.run(["rustc", "-O", "--edition", "2021", "-o", FLOOR_BIN, FLOOR_RS], check=True)
    cpu = 0.0

    def patch_all(current):
        nonlocal cpu
        lines = "".join(f"{name}\t{json.dumps({'profiles': new_list(current[name], rev)})}\n" for name in names)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([FLOOR_BIN, lxd_socket(), project, str(connections)], input=lines,
                           capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise RuntimeError(f"bench/floor.rs: {r.stderr.strip()[-300:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    took = profile_swap(project, old_rev, rev, patch_all)
    return took, len(names) + 2, 1000 * cpu / len(names)


def juju_way(project, names, old_rev, rev):
    """Juju's instancemutater: GET the instance, PUT it whole with If-Match, wait."""
    lxd = Lxd(project)
    new_name = f"juju-{MODEL}-a-{rev}"
    t = time.monotonic()
    lxd.ok("POST", "/1.0/profiles", profile_body(new_name))
    n = 1
    for name in names:
        etag, doc = lxd.ok("GET", f"/1.0/instances/{name}")
        inst = doc["metadata"]
        inst["profiles"] = new_list(inst["profiles"], rev)
        body = {k: inst[k] for k in ("architecture", "config", "devices", "ephemeral", "profiles", "description")}
        lxd.ok("PUT", f"/1.0/instances/{name}", body, {"If-Match": etag} if etag else None)
        n += 3
    lxd.ok("DELETE", f"/1.0/profiles/juju-{MODEL}-a-{old_rev}")
    return time.monotonic() - t, n + 1


def lxc_loop(project, names, old_rev, rev):
    lxd = Lxd(project)
    current = lxd.profiles_of_all()
    new_name = f"juju-{MODEL}-a-{rev}"
    t = time.monotonic()
    lxc("profile", "create", new_name, "--project", project)
    for k, v in {**APP_CONTENT["a"]["config"], **OWNER}.items():
        lxc("profile", "set", new_name, k, v, "--project", project)
    for name in names:
        lxc("profile", "assign", name, ",".join(new_list(current[name], rev)), "--project", project)
    lxc("profile", "delete", f"juju-{MODEL}-a-{old_rev}", "--project", project)
    return time.monotonic() - t, None


PYLXD_SCRIPT = r"""
import sys, time, pylxd
project, old, new, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
config = dict(kv.split("=", 1) for kv in sys.argv[5].split(";"))
client = pylxd.Client(project=project)
t = time.monotonic()
client.profiles.create(new, config=config, devices={})
for name in names:
    inst = client.instances.get(name)
    inst.profiles = [new if p == old else p for p in inst.profiles]
    inst.save(wait=True)
client.profiles.get(old).delete()
print(time.monotonic() - t)
"""


def pylxd_available():
    r = subprocess.run([sys.executable, "-c", "import pylxd"], capture_output=True)
    if r.returncode == 0:
        return True
    log("installing pylxd from PyPI")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pylxd"], capture_output=True, text=True)
    if r.returncode != 0:
        log("pylxd cannot be installed:", r.stderr.strip()[-300:])
        return False
    return subprocess.run([sys.executable, "-c", "import pylxd"], capture_output=True).returncode == 0


def pylxd_way(project, names, old_rev, rev):
    config = ";".join(f"{k}={v}" for k, v in {**APP_CONTENT["a"]["config"], **OWNER}.items())
    r = subprocess.run([sys.executable, "-c", PYLXD_SCRIPT, project, f"juju-{MODEL}-a-{old_rev}",
                        f"juju-{MODEL}-a-{rev}", ",".join(names), config], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pylxd: {r.stderr.strip()[-500:]}")
    return float(r.stdout.strip().splitlines()[-1]), None


# ----------------------------------------------------------------------------------------


class Monitor:
    """The project's profile deletions, read off LXD's lifecycle events by `lxc monitor` in
    the background, each with the time it arrived: the bench sees an upgrade end from LXD
    itself. Polling the controller's /metrics for it charged the controller ~0.5 ms of CPU
    a scrape, a third of what it spent on the upgrade itself.

    The upgrade's end is the old profile's deletion: LXD refuses to delete a profile an
    instance still uses, so by then every PATCH that took it off has returned. Every other
    event is skipped with one substring test, unparsed: on 2 cores the instrument must not
    take from LXD what the floor it is compared with is not charged. Parsing each of an
    upgrade's instance events in this process (json.loads) slowed the 2-connection floor,
    run under it, by 4-9% in an alternating test; `lxc monitor` on its own did not measurably."""

    def __init__(self, project):
        self.deleted = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["lxc", "monitor", "--project", project, "--type", "lifecycle", "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        # Listening once LXD has sent it an event: a profile made and removed for it.
        probe = f"bench-probe-{os.getpid()}"
        lxd = Lxd(project)
        deadline = time.monotonic() + 30
        while not self.seen(f"/1.0/profiles/{probe}"):
            if time.monotonic() > deadline:
                raise RuntimeError("lxc monitor saw no event within 30 s")
            lxd.ok("POST", "/1.0/profiles", {"name": probe})
            lxd.ok("DELETE", f"/1.0/profiles/{probe}")
            with self.cond:
                self.cond.wait_for(lambda: self.seen(f"/1.0/profiles/{probe}"), 1)

    def _read(self):
        for line in self.proc.stdout:
            if "profile-deleted" not in line:
                continue
            t = time.monotonic()
            try:
                meta = json.loads(line).get("metadata") or {}
            except ValueError:
                continue
            if meta.get("action") != "profile-deleted":
                continue
            with self.cond:
                self.deleted.append((t, meta.get("source", "").split("?")[0]))
                self.cond.notify_all()

    def seen(self, source, since=0.0):
        """When `source` was deleted after `since`, or None."""
        return next((t for t, s in self.deleted if s == source and t >= since), None)

    def wait_upgrade(self, old_profile, since, timeout=600):
        """Until `old_profile` was deleted after `since`: the arrival time of its event."""
        gone = f"/1.0/profiles/{old_profile}"
        with self.cond:
            if not self.cond.wait_for(lambda: self.seen(gone, since) is not None, timeout):
                raise RuntimeError(f"the upgrade did not end within {timeout} s")
            return self.seen(gone, since)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def controller_upgrade(project, res_dir, res_file, n, rev, workers, binary=BIN):
    """The controller (`binary`), started on resources at `rev` and settled, then the
    resources at rev + 1: the time to the last PATCH and the DELETE, the controller's CPU
    per instance, and the LXD requests it sent meanwhile."""
    write_atomic(res_file, resources_yaml(n, rev))
    monitor = Monitor(project.name)
    ctl = Controller(project.name, res_dir, workers=workers, binary=binary)
    try:
        settled(ctl, n)
        before = ctl.metrics()
        cpu0 = ctl.cpu_seconds()
        t0 = time.monotonic()
        write_atomic(res_file, resources_yaml(n, rev + 1))
        # The end is read off LXD's events, not the controller's /metrics (whose scrapes
        # cost the controller CPU): the old profile deleted, after every PATCH returned.
        took = monitor.wait_upgrade(f"juju-{MODEL}-a-{rev}", t0) - t0
        # The CPU counts until every status shows the new revision (the writer stores
        # them after the last PATCH); the requests are scraped after it.
        statuses_show(ctl, n, f"juju-{MODEL}-a-{rev + 1}")
        cpu_ms = 1000 * (ctl.cpu_seconds() - cpu0) / n
        sent = requests(ctl.metrics()) - requests(before)
    finally:
        ctl.stop()
        monitor.close()
    lists = Lxd(project.name).profiles_of_all()
    assert all(lists[i] == expected(rev + 1) for i in project.instances), "upgrade incomplete"
    return took, cpu_ms, sent


def against(project, res_dir, res_file, n, other, pairs, rev=1):
    """Pairs of upgrades by this build and by `other`, which goes first alternating from
    pair to pair, each upgrade followed at once by the 2-connection floor on the same
    instances: per build, each upgrade's ratio to the floor after it and its CPU."""
    builds = {"this": BIN, "other": other}
    runs = {name: [] for name in builds}
    for k in range(pairs):
        order = ["this", "other"] if k % 2 == 0 else ["other", "this"]
        for name in order:
            took, cpu_ms, sent = controller_upgrade(project, res_dir, res_file, n, rev, 4, builds[name])
            rev += 1
            f2, _ = floor(project.name, project.instances, rev, rev + 1, connections=2)
            rev += 1
            lists = Lxd(project.name).profiles_of_all()
            assert all(lists[i] == expected(rev) for i in project.instances), "the floor incomplete"
            runs[name].append({"controller_s": took, "floor2_s": f2, "ratio": took / f2,
                               "cpu_ms_per_instance": cpu_ms, "requests": sent})
            log(f"pair {k + 1}, {name} build: {took:.2f} s, floor {f2:.2f} s: {took / f2:.3f}x, "
                f"{cpu_ms:.2f} ms CPU per instance, {sent:.0f} requests")
    return {"other_binary": other, "pairs": pairs, "runs": runs}


def report_against(ab):
    print(f"\n### This build against {ab['other_binary']}: {ab['pairs']} alternating pairs of upgrades "
          "(--workers 4), each followed by the 2-connection floor\n")
    print("| build | ratios to the floor | median | CPU per instance (median) |")
    print("|---|---|---|---|")
    for name, runs in ab["runs"].items():
        ratios = [r["ratio"] for r in runs]
        cpu = statistics.median(r["cpu_ms_per_instance"] for r in runs)
        print(f"| {name} | {', '.join(f'{x:.3f}' for x in ratios)} | {statistics.median(ratios):.3f}x | {cpu:.2f} ms |")


def full_loop(n):
    """The full loop on the in-memory LXD (src/testing/full_loop.rs), in release: its
    figures, or None when it cannot run."""
    log(f"full loop at {n} resources (cargo test --release; the first build takes minutes)")
    r = subprocess.run(["cargo", "test", "-q", "--release", "--lib", "testing::full_loop::full_loop_at_scale",
                        "--", "--ignored", "--exact", "--nocapture"], cwd=ROOT,
                       env={**os.environ, "FULL_LOOP_N": str(n)}, capture_output=True, text=True)
    for line in r.stderr.splitlines():
        if line.startswith("full loop:"):
            log(line)
    for line in r.stdout.splitlines():
        if line.startswith("FULL_LOOP_JSON "):
            return json.loads(line[len("FULL_LOOP_JSON "):])
    log("the full loop did not run:", r.stderr.strip()[-500:])
    return None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 instances, few samples")
    ap.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "results.json"))
    ap.add_argument("--workers", default="1,2,4", help="the --workers values tried for the upgrade")
    ap.add_argument("--rounds", type=int, default=3,
                    help="consecutive rounds of the controller's upgrade and the 2-connection floor (3)")
    ap.add_argument("--full-loop", type=int, default=100000, metavar="N",
                    help="resources of the full loop on the in-memory LXD (100000; 0: skip it)")
    ap.add_argument("--full-loop-only", action="store_true",
                    help="run only the full loop (no LXD needed) and merge it into the JSON")
    ap.add_argument("--against", metavar="BIN",
                    help="only an alternating comparison with another build of lxd-mutater: after the "
                         "converge, --pairs pairs of upgrades (--workers 4), this build's and BIN's in "
                         "alternating order, each followed by the 2-connection floor; prints each "
                         "build's ratios and CPU, and their medians (on a shared host, the only sound "
                         "way to say one build is faster)")
    ap.add_argument("--pairs", type=int, default=6, help="pairs of upgrades for --against (6)")
    args = ap.parse_args()
    if args.full_loop_only:
        results = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                results = json.load(f)
        results["full_loop"] = full_loop(args.full_loop or 100000)
        report_full_loop(results["full_loop"])
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        log("figures written to", args.json)
        return
    n = 20 if args.quick else args.instances
    samples = 10 if args.quick else 50
    steady_window = 12 if args.quick else 60
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release` (make bench does)")
    if args.against and not os.access(args.against, os.X_OK):
        sys.exit(f"--against {args.against}: not an executable file")
    results = {"instances": n, "rows": [], "controller": {}}
    rows = results["rows"]
    res_dir = tempfile.mkdtemp(prefix="lxdm-bench-res-")
    res_file = os.path.join(res_dir, "resources.yaml")
    with Project(n) as project:
        names = project.instances
        log(f"project {project.name}, {n} empty instances")

        # 1. Initial converge.
        write_atomic(res_file, resources_yaml(n, 1))
        ctl = Controller(project.name, res_dir, workers=2)
        m = ctl.wait("initial converge", lambda m: requests(m, "PATCH", "200") >= n, timeout=600, every=0.01)
        t_initial = time.monotonic() - ctl.started
        req_initial = requests(m)
        lists = Lxd(project.name).profiles_of_all()
        assert all(lists[i] == expected(1) for i in names), "initial converge incomplete"
        results["controller"]["initial_converge_s"] = t_initial
        results["controller"]["initial_requests"] = req_initial
        log(f"initial converge: {t_initial:.2f} s, {req_initial:.0f} requests")
        if args.against:
            ctl.stop()
            results["against"] = against(project, res_dir, res_file, n, args.against, args.pairs)
            report_against(results["against"])
            os.makedirs(os.path.dirname(args.json), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
            log("figures written to", args.json)
            shutil.rmtree(res_dir, ignore_errors=True)
            return

        # 2. Upgrade, for each --workers value.
        rev = 1
        best = None
        ctl.stop()
        for w in [int(x) for x in args.workers.split(",")]:
            took, cpu_ms, sent = controller_upgrade(project, res_dir, res_file, n, rev, w)
            rev += 1
            results["controller"][f"upgrade_workers_{w}_s"] = took
            results["controller"][f"upgrade_workers_{w}_requests"] = sent
            results["controller"][f"upgrade_workers_{w}_cpu_ms_per_instance"] = cpu_ms
            log(f"upgrade with --workers {w}: {took:.2f} s, {sent:.0f} requests, controller CPU {cpu_ms:.2f} ms per instance")
            if best is None or took < best[1]:
                best = (w, took, sent)

        # Baselines: the same upgrade by other clients, controller stopped.
        def baseline(label, fn, **kw):
            nonlocal rev
            took, sent = fn(project.name, names, rev, rev + 1, **kw)
            rev += 1
            lists = Lxd(project.name).profiles_of_all()
            assert all(lists[i] == expected(rev) for i in names), f"{label} incomplete"
            log(f"{label}: {took:.2f} s")
            return took, sent

        floor_s, floor_req = baseline("floor, 1 connection", floor)
        floor2_s, _ = baseline("floor, 2 connections", floor, connections=2)
        rust_s, rust_req, rust_cpu = rust_floor(project.name, names, rev, rev + 1)
        rev += 1
        lists = Lxd(project.name).profiles_of_all()
        assert all(lists[i] == expected(rev) for i in names), "the Rust floor incomplete"
        results["controller"]["rust_floor_cpu_ms_per_instance"] = rust_cpu
        log(f"floor in Rust, 2 connections: {rust_s:.2f} s, client CPU {rust_cpu:.3f} ms per instance")
        juju_s, juju_req = baseline("Juju's way", juju_way)
        lxc_s, _ = baseline("lxc loop", lxc_loop)
        pylxd_s = None
        pylxd_note = ""
        if pylxd_available():
            try:
                pylxd_s, _ = baseline("pylxd", pylxd_way)
            except RuntimeError as e:
                pylxd_note = str(e)[:200]
        else:
            pylxd_note = "pylxd could not be installed here"
        # Three consecutive rounds: the controller's upgrade (--workers 4), then the
        # 2-connection floor on the same instances right after it.
        rounds = []
        for r in range(args.rounds):
            took, cpu_ms, sent = controller_upgrade(project, res_dir, res_file, n, rev, 4)
            rev += 1
            f2, _ = baseline(f"round {r + 1}: floor, 2 connections", floor, connections=2)
            rounds.append({"controller_s": took, "floor2_s": f2, "ratio": took / f2,
                           "cpu_ms_per_instance": cpu_ms, "requests": sent})
            log(f"round {r + 1}: controller {took:.2f} s ({sent:.0f} requests, {cpu_ms:.2f} ms CPU per instance), "
                f"floor {f2:.2f} s: {took / f2:.3f}x")
        results["controller"]["rounds"] = rounds
        rows.append({"what": "floor: minimal requests, 1 connection (python http.client)", "seconds": floor_s, "requests": floor_req})
        rows.append({"what": "floor: same, 2 connections", "seconds": floor2_s, "requests": floor_req})
        rows.append({"what": f"floor: same in Rust (bench/floor.rs), 2 connections (client CPU {rust_cpu:.2f} ms per instance)",
                     "seconds": rust_s, "requests": rust_req})
        w, took, sent = best
        rows.append({"what": f"lxd-mutater upgrade (best --workers {w})", "seconds": took, "requests": sent})
        for wk in [int(x) for x in args.workers.split(",")]:
            rows.append({"what": f"lxd-mutater upgrade, --workers {wk} (controller CPU {results['controller'][f'upgrade_workers_{wk}_cpu_ms_per_instance']:.2f} ms per instance)",
                         "seconds": results["controller"][f"upgrade_workers_{wk}_s"],
                         "requests": results["controller"][f"upgrade_workers_{wk}_requests"]})
        rows.append({"what": "Juju's way: GET + PUT If-Match + wait, per instance", "seconds": juju_s, "requests": juju_req})
        rows.append({"what": "pylxd script (instance.save(wait=True))", "seconds": pylxd_s, "requests": None, "note": pylxd_note})
        rows.append({"what": "shell loop of lxc profile assign", "seconds": lxc_s, "requests": None})
        rows.append({"what": "Ansible community.general.lxd_container", "seconds": None, "requests": None,
                     "note": "not run: lxd_container applies a profile change only by (re)starting the instance, and these empty instances cannot start"})

        # The resources follow the baselines' last revision; the controller takes over.
        write_atomic(res_file, resources_yaml(n, rev))
        ctl = Controller(project.name, res_dir, workers=w)
        settled(ctl, n)

        # 3. Manual drift on 10% of the instances.
        k = max(1, n // 10)
        before = ctl.metrics()
        corrected_key = 'lxd_mutater_drift_corrected_total{controller="machine",kind="profiles"}'
        hand = Lxd(project.name)
        t0 = time.monotonic()
        for name in names[:k]:
            hand.ok("PATCH", f"/1.0/instances/{name}", {"profiles": ["default"]})
        ctl.wait("manual drift corrected", lambda m: metric(m, corrected_key) - metric(before, corrected_key) >= k)
        drift_s = time.monotonic() - t0
        results["controller"]["manual_drift_10pct_s"] = drift_s
        log(f"manual drift on {k}: corrected {drift_s:.2f} s after the first hand change")

        # 5. Latency: YAML edit to applied, manual drift to corrected.
        edit_lat = []
        for s in range(samples):
            before = ctl.metrics()
            apps = {0: ["a"]} if s % 2 == 0 else {}
            t0 = time.monotonic()
            write_atomic(res_file, resources_yaml(n, rev, apps_of=apps))
            ctl.wait("edit applied", lambda m: requests(m, "PATCH", "200") > requests(before, "PATCH", "200"), every=0.002)
            edit_lat.append(time.monotonic() - t0)
        drift_lat = []
        for s in range(samples):
            before = ctl.metrics()
            t0 = time.monotonic()
            hand.ok("PATCH", f"/1.0/instances/{names[-1]}", {"profiles": ["default"]})
            ctl.wait("drift corrected", lambda m: metric(m, corrected_key) > metric(before, corrected_key), every=0.002)
            drift_lat.append(time.monotonic() - t0)
        results["controller"]["edit_to_applied_median_s"] = statistics.median(edit_lat)
        results["controller"]["edit_to_applied_p95_s"] = pct(edit_lat, 0.95)
        results["controller"]["drift_to_corrected_median_s"] = statistics.median(drift_lat)
        results["controller"]["drift_to_corrected_p95_s"] = pct(drift_lat, 0.95)
        ctl.stop()

        # 4. Steady state: resync every 10 s, everything in sync.
        ctl = Controller(project.name, res_dir, workers=w, resync="10s")
        settled(ctl, n)
        m0, cpu0, t0 = ctl.metrics(), ctl.cpu_seconds(), time.monotonic()
        time.sleep(steady_window)  # a measurement window, not a wait for a condition
        m1, cpu1 = ctl.metrics(), ctl.cpu_seconds()
        passes = (metric(m1, 'lxd_mutater_reconcile_total{controller="machine",result="success"}')
                  - metric(m0, 'lxd_mutater_reconcile_total{controller="machine",result="success"}')) / n
        writes = sum(requests(m1, meth) - requests(m0, meth) for meth in ("POST", "PUT", "PATCH", "DELETE"))
        reads = requests(m1, "GET") - requests(m0, "GET")
        results["controller"].update({
            "steady_window_s": time.monotonic() - t0,
            "steady_resyncs": passes,
            "steady_requests_per_resync": (reads + writes) / passes if passes else None,
            "steady_writes": writes,
            "steady_cpu_ms_per_resync": 1000 * (cpu1 - cpu0) / passes if passes else None,
            "steady_rss_mib": ctl.rss_bytes() / 2**20,
        })
        ctl.stop()
    shutil.rmtree(res_dir, ignore_errors=True)

    # The pure parts at N, 10N and 100N, without a daemon.
    scale = subprocess.run(["cargo", "bench", "-q", "--bench", "scale"], cwd=ROOT,
                           env={**os.environ, "SCALE_N": f"{n},{10 * n},{100 * n}"},
                           capture_output=True, text=True)
    results["scale"] = [json.loads(l) for l in scale.stdout.splitlines() if l.startswith("{")]
    if args.full_loop:
        results["full_loop"] = full_loop(args.full_loop)

    report(results, floor_s)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    log("figures written to", args.json)
    svg = os.path.join(os.path.dirname(args.json), "upgrade.svg")
    with open(svg, "w") as f:
        f.write(upgrade_chart(results, floor_s))
    log("chart written to", svg)


def upgrade_chart(results, floor_s):
    """The upgrade comparison as an SVG bar chart: each client's time as a ratio to the
    1-connection floor (shorter is better; the floor's line at 1.0x). No dependency: the
    SVG is written by hand."""
    rows = [r for r in results["rows"] if r["seconds"] is not None]
    bar_h, gap, left, width = 22, 8, 330, 420
    top = 46
    height = top + len(rows) * (bar_h + gap) + 30
    most = max(r["seconds"] / floor_s for r in rows) if rows else 1.0
    scale = width / max(most, 1.0)

    def esc(t):
        return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">Upgrade of one application on '
           f'{results["instances"]} instances: time / LXD&#39;s 1-connection floor (shorter is better)</text>']
    for i, r in enumerate(rows):
        ratio = r["seconds"] / floor_s
        y = top + i * (bar_h + gap)
        ours = r["what"].startswith("lxd-mutater")
        floor = r["what"].startswith("floor")
        colour = "#2b7bb9" if ours else ("#8c8c8c" if floor else "#e08a2e")
        label = r["what"] if len(r["what"]) <= 48 else r["what"][:47] + "…"
        out.append(f'<text x="{left - 8}" y="{y + bar_h - 6}" text-anchor="end">{esc(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{ratio * scale:.1f}" height="{bar_h}" fill="{colour}"/>')
        out.append(f'<text x="{left + ratio * scale + 6:.1f}" y="{y + bar_h - 6}">{ratio:.2f}x</text>')
    x1 = left + scale
    out.append(f'<line x1="{x1:.1f}" y1="{top - 6}" x2="{x1:.1f}" y2="{height - 24}" stroke="black" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x1:.1f}" y="{height - 8}" text-anchor="middle">1.0x = floor</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def report_full_loop(fl):
    if not fl:
        return
    print(f"\n### The full loop on the in-memory LXD: {fl['n']} Machines, {fl['applications']} Applications, "
          f"{fl['threads']} threads, --workers {fl['workers']}\n")
    print("| phase | reconciles | reconciles per second | CPU | CPU per reconcile | peak RSS | LXD requests |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("converge", "converge from cold"), ("bump", "revision bump of every Machine's application"),
                        ("resync", "in-sync resync (listing + every key)")):
        p = fl["phases"].get(name)
        if not p:
            continue
        req = ", ".join(f"{v} {k}" for k, v in sorted(p["lxd_requests"].items()))
        print(f"| {label} | {p['reconciles']:.0f} | {p['reconciles_per_second']:.0f} | {p['cpu_seconds']:.2f} s | "
              f"{p['cpu_ms_per_reconcile'] * 1000:.0f} µs | {p['peak_rss_bytes'] / 2**20:.0f} MiB | {req} |")


def report(results, floor_s):
    n = results["instances"]
    c = results["controller"]
    print(f"\n### Upgrade of one application on {n} instances (create, {n} list writes, delete)\n")
    print("| client | time | vs floor | LXD requests |")
    print("|---|---|---|---|")
    for r in results["rows"]:
        if r["seconds"] is None:
            print(f"| {r['what']} | — | — | {r.get('note', '')} |")
            continue
        req = "" if r["requests"] is None else f"{r['requests']:.0f}"
        print(f"| {r['what']} | {r['seconds']:.2f} s | {r['seconds'] / floor_s:.2f}x | {req} |")
    print(f"\n### lxd-mutater, {n} instances\n")
    print("| scenario | figure |")
    print("|---|---|")
    print(f"| initial converge (start to last instance applied; 2 applications each) | {c['initial_converge_s']:.2f} s, {c['initial_requests']:.0f} requests (minimum {n + 6}: {n + 3} writes, the project check, one listing of instances and of profiles) |")
    print(f"| manual drift on 10% ({max(1, n // 10)} instances) to all corrected | {c['manual_drift_10pct_s']:.2f} s |")
    print(f"| YAML edit to applied | median {1000 * c['edit_to_applied_median_s']:.0f} ms, p95 {1000 * c['edit_to_applied_p95_s']:.0f} ms |")
    print(f"| manual drift to corrected (events) | median {1000 * c['drift_to_corrected_median_s']:.0f} ms, p95 {1000 * c['drift_to_corrected_p95_s']:.0f} ms |")
    rpr = c.get("steady_requests_per_resync")
    cpu = c.get("steady_cpu_ms_per_resync")
    print(f"| steady state, resync every 10 s ({c['steady_resyncs']:.1f} resyncs) | {rpr:.1f} requests per resync, {c['steady_writes']:.0f} writes, {cpu:.1f} ms CPU per resync, RSS {c['steady_rss_mib']:.1f} MiB |")
    rounds = c.get("rounds") or []
    if rounds:
        print("\n### Consecutive rounds: the controller's upgrade (--workers 4), then the 2-connection floor\n")
        print("| round | lxd-mutater | floor, 2 connections | ratio | controller CPU per instance | requests |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(rounds):
            print(f"| {i + 1} | {r['controller_s']:.2f} s | {r['floor2_s']:.2f} s | {r['ratio']:.3f}x | "
                  f"{r['cpu_ms_per_instance']:.2f} ms | {r['requests']:.0f} |")
    report_full_loop(results.get("full_loop"))
    if results.get("scale"):
        print("\n### Pure parts without a daemon (plan, index, memory per resource)\n")
        print("| resources | plan per resource | index per resource | memory per resource |")
        print("|---|---|---|---|")
        for s in results["scale"]:
            print(f"| {s.get('n')} | {s.get('plan_ns_per_resource', 0):.0f} ns | {s.get('index_ns_per_resource', 0):.0f} ns | {s.get('bytes_per_resource', 0):.0f} B |")
        first, last = results["scale"][0], results["scale"][-1]
        if len(results["scale"]) > 1:
            ratios = {what: last.get(key, 0) / (first.get(key) or 1) for what, key in (
                ("plan", "plan_ns_per_resource"), ("index", "index_ns_per_resource"),
                ("memory", "bytes_per_resource"))}
            growing = [w for w, r in ratios.items() if r > SCALE_FLAT]
            print(f"\nFrom {first.get('n')} to {last.get('n')}: "
                  + ", ".join(f"{w} {r:.2f}x" for w, r in ratios.items())
                  + (f"; NOT flat within {SCALE_FLAT}x: {', '.join(growing)}" if growing
                     else f"; flat within {SCALE_FLAT}x"))


if __name__ == "__main__":
    main()
