//! The full loop at scale (issue 15), a bench and not a test, so `#[ignore]`d: a `Pipeline`
//! on the in-memory LXD with 100,000 Machines, the real clock, the product's worker count
//! and a runtime with one thread per core, and the three things a fleet does: converge
//! from cold, a revision bump, an in-sync resync. Per phase: reconciles per second (counted
//! by the reconcile metric, not assumed), CPU seconds and peak RSS of the process, LXD
//! requests per method, and the double's own share of the time (`MemLxd::busy`).
//!
//! ```text
//! cargo test --release --lib testing::full_loop::full_loop_at_scale -- --ignored --exact --nocapture
//! ```
//!
//! It prints progress on stderr and one line `FULL_LOOP_JSON {...}` on stdout
//! (`bench/bench.py --full-loop` reads it). Settings, from the environment:
//! `FULL_LOOP_N` Machines (100000), `FULL_LOOP_WORKERS` (4, the default of `--workers`),
//! `FULL_LOOP_THREADS` runtime threads (1: one thread, as `run` builds it; more: a
//! multi-thread runtime),
//! `FULL_LOOP_NAMESPACES` (5), `FULL_LOOP_APPS` Applications in all (N/100, between
//! 10 per namespace and 1,000), `FULL_LOOP_LOG` the log level (`info`, the default of
//! `--log-level`; lines are formatted as `run` formats them and thrown away).
//!
//! The fleet: the Machines are spread over the namespaces; each runs its namespace's base
//! application and zero to two others (one to three in all, two on average); every
//! application has a charm profile. The instances start with `default` only. The bump is
//! a new revision of every namespace's base application (one upsert per namespace, every
//! Machine affected: N reconciles, N list writes, one profile created and one deleted per
//! namespace). The resync is what `run`'s timer does: a listing, then every key.
//!
//! Statuses go to `MemStatus` (in memory, through the reporter's writer thread as in
//! `run`); a phase ends when the queue is idle, every event of LXD has been handled, and
//! every status is stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lxd::EventNotice;
use crate::pipeline::Pipeline;
use crate::reconcile::Options;
use crate::resource::{
    API_VERSION, Application, ApplicationSpec, InstanceSpec, LxdProfile, Metadata, Object,
    ProfileNames, Resource, Workload,
};
use crate::source::SourceEvent;
use crate::status::metrics::Telemetry;

use super::{MemLxd, MemStatus};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// The fleet.

/// The fleet's shape; its resources are made on demand, so that the bench holds no copy
/// of them beside the store's (the RSS measured is the controller's).
struct Fleet {
    n: usize,
    namespaces: Vec<String>,
    /// Applications per namespace; `app-0` is the base one.
    apps_per_namespace: usize,
}

fn namespace_of(k: usize, n: usize, namespaces: usize) -> usize {
    k * namespaces / n
}

/// The applications of machine `k`: the base one and `k % 3` others, all distinct.
fn apps_of(k: usize, apps: usize) -> Vec<String> {
    let others = apps - 1;
    let first = 1 + k % others;
    let second = 1 + (k + 1 + k % 7) % others;
    let mut out = vec!["app-0".to_string()];
    if k % 3 >= 1 {
        out.push(format!("app-{first}"));
    }
    if k % 3 == 2 {
        out.push(format!("app-{second}"));
    }
    out
}

fn application(namespace: &str, j: usize, revision: u64) -> Application {
    let mut config = BTreeMap::new();
    config.insert("security.nesting".to_string(), "true".to_string());
    config.insert(
        "linux.kernel_modules".to_string(),
        format!("ip_tables,overlay,mod{j}"),
    );
    let kmsg: BTreeMap<String, String> = [
        ("type", "unix-char"),
        ("path", "/dev/kmsg"),
        ("source", "/dev/kmsg"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Object {
        api_version: API_VERSION.into(),
        kind: "Application".into(),
        metadata: Metadata {
            name: format!("app-{j}"),
            namespace: namespace.to_string(),
            ..Metadata::default()
        },
        spec: ApplicationSpec {
            charm: Some(format!("charm-{j}")),
            revision,
            lxd_profile: Some(LxdProfile {
                description: format!("profile of app-{j}"),
                config,
                devices: [("kmsg".to_string(), kmsg)].into(),
                ignored_keys: vec![],
            }),
            ..ApplicationSpec::default()
        },
        status: None,
    }
}

fn instance_name(k: usize) -> String {
    format!("juju-{k}")
}

fn fleet(n: usize, namespaces: usize, apps: usize) -> Fleet {
    let apps_per_namespace = apps / namespaces;
    assert!(
        apps_per_namespace >= 9,
        "at least 9 applications per namespace (machines name up to three distinct ones)"
    );
    Fleet {
        n,
        namespaces: (0..namespaces).map(|j| format!("model-{j}")).collect(),
        apps_per_namespace,
    }
}

impl Fleet {
    fn machine(&self, k: usize) -> Workload {
        Object {
            api_version: API_VERSION.into(),
            kind: "Machine".into(),
            metadata: Metadata {
                name: k.to_string(),
                namespace: self.namespaces[namespace_of(k, self.n, self.namespaces.len())].clone(),
                ..Metadata::default()
            },
            spec: InstanceSpec {
                instance: Some(instance_name(k)),
                applications: apps_of(k, self.apps_per_namespace),
                ..InstanceSpec::default()
            },
            status: None,
        }
    }

    fn resources(&self, base_revision: u64) -> Vec<Resource> {
        let mut out: Vec<Resource> = Vec::new();
        for ns in &self.namespaces {
            for j in 0..self.apps_per_namespace {
                let rev = if j == 0 { base_revision } else { 1 };
                out.push(Resource::Application(application(ns, j, rev)));
            }
        }
        out.extend((0..self.n).map(|k| Resource::Machine(self.machine(k))));
        out
    }

    /// How many instances hold the list their Machine expects.
    fn converged(&self, lxd: &MemLxd, base_revision: u64) -> usize {
        let names = ProfileNames::default();
        (0..self.n)
            .map(|k| self.machine(k))
            .filter(|m| {
                let ns = &m.metadata.namespace;
                let mut expected = vec!["default".to_string(), names.model_profile(ns)];
                for a in &m.spec.applications {
                    let rev = if a == "app-0" { base_revision } else { 1 };
                    expected.push(names.charm_profile(ns, a, rev));
                }
                let instance = m.spec.instance.as_deref().unwrap_or_default();
                lxd.instance_profiles(instance).as_deref() == Some(expected.as_slice())
            })
            .count()
    }
}

// ---------------------------------------------------------------------------------------
// What the process costs, from /proc (no unsafe code, no libc).

/// CPU time per thread name, and the process total (threads that ended included).
#[derive(Clone, Debug, Default)]
struct Cpu {
    total: Duration,
    by_thread: BTreeMap<String, Duration>,
}

/// Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
const USER_HZ: f64 = 100.0;

fn stat_seconds(text: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn cpu() -> Cpu {
    let total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| stat_seconds(&t))
        .map(Duration::from_secs_f64)
        .unwrap_or_default();
    let mut by_thread = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            // schedstat: nanoseconds on the CPU, precise where stat counts ticks.
            let ns = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
            let spent = match ns {
                Some(ns) => Duration::from_nanos(ns),
                None => std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|t| stat_seconds(&t))
                    .map(Duration::from_secs_f64)
                    .unwrap_or_default(),
            };
            *by_thread.entry(name).or_default() += spent;
        }
    }
    Cpu { total, by_thread }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Resets the peak RSS to the current RSS (`echo 5 > /proc/self/clear_refs`), so that each
/// phase has its own peak; whether the kernel allowed it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---------------------------------------------------------------------------------------
// The counters of the pipeline's metrics.

/// The sum of every series of `name` (any labels) in the Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// The loop, and its phases.

struct Bench {
    pipeline: Arc<Pipeline<MemLxd>>,
    lxd: MemLxd,
    telemetry: Telemetry,
    /// Lifecycle events the events task has handled.
    handled: Arc<AtomicUsize>,
}

/// What a phase starts from.
struct Mark {
    at: Instant,
    cpu: Cpu,
    metrics: String,
    requests: BTreeMap<String, usize>,
    busy: Duration,
    hwm_reset: bool,
    monotonic: Option<f64>,
}

impl Bench {
    fn mark(&self) -> Mark {
        let hwm_reset = reset_peak_rss();
        Mark {
            at: Instant::now(),
            cpu: cpu(),
            metrics: self.telemetry.encode_text(),
            requests: self.lxd.request_counts(),
            busy: self.lxd.busy(),
            hwm_reset,
            monotonic: monotonic_seconds(),
        }
    }

    /// Until the queue is idle and every event LXD sent has been handled, twice in a row
    /// 5 ms apart (an event handled may enqueue a key); the time it became so, and the
    /// most events seen waiting for the events task meanwhile.
    async fn settle(&self) -> (Instant, usize) {
        let mut quiet_since: Option<Instant> = None;
        let mut backlog = 0;
        loop {
            let waiting = self
                .lxd
                .writes_succeeded()
                .saturating_sub(self.handled.load(Ordering::SeqCst));
            backlog = backlog.max(waiting);
            let quiet = self.pipeline.is_idle() && waiting == 0;
            match (quiet, quiet_since) {
                (true, Some(at)) => return (at, backlog),
                (true, None) => quiet_since = Some(Instant::now()),
                (false, _) => quiet_since = None,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Until every status decided so far is stored (the writer thread's work is the
    /// controller's too).
    async fn flush(&self) {
        let report = self.pipeline.report.clone();
        let stored = tokio::task::spawn_blocking(move || report.flush(Duration::from_secs(600)))
            .await
            .unwrap_or(false);
        assert!(stored, "statuses not stored within 10 minutes");
    }

    /// The figures of the phase that began at `m`.
    fn figures(&self, m: &Mark, (idle, backlog): (Instant, usize), extra: Value) -> Value {
        let seconds = m.at.elapsed().as_secs_f64();
        let now = cpu();
        let text = self.telemetry.encode_text();
        let reconciles = metric_sum(&text, "lxd_mutater_reconcile_total")
            - metric_sum(&m.metrics, "lxd_mutater_reconcile_total");
        let errors = metric_sum(&text, "lxd_mutater_errors_total")
            - metric_sum(&m.metrics, "lxd_mutater_errors_total");
        let adds = metric(&text, "workqueue_adds_total{name=\"lxd_mutater\"}")
            - metric(&m.metrics, "workqueue_adds_total{name=\"lxd_mutater\"}");
        let requests: BTreeMap<String, usize> = self
            .lxd
            .request_counts()
            .into_iter()
            .map(|(kind, n)| {
                let before = m.requests.get(&kind).copied().unwrap_or(0);
                (kind, n - before)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut by_method: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, n) in &requests {
            let method = kind.split(' ').next().unwrap_or_default();
            *by_method.entry(method).or_default() += n;
        }
        let cpu_seconds = (now.total.saturating_sub(m.cpu.total)).as_secs_f64();
        let by_thread: BTreeMap<String, f64> = now
            .by_thread
            .iter()
            .map(|(name, t)| {
                let before = m.cpu.by_thread.get(name).copied().unwrap_or_default();
                (name.clone(), t.saturating_sub(before).as_secs_f64())
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        let threads_cpu: f64 = by_thread.values().sum();
        let busy = (self.lxd.busy().saturating_sub(m.busy)).as_secs_f64();
        let to_idle = idle.duration_since(m.at).as_secs_f64();
        let mut v = json!({
            "seconds": seconds,
            "seconds_to_idle": to_idle,
            "reconciles": reconciles,
            "reconciles_per_second": reconciles / seconds,
            "cpu_seconds": cpu_seconds,
            "cpu_seconds_by_thread": by_thread,
            "cpu_seconds_threads_sum": threads_cpu,
            "cpu_ms_per_reconcile": if reconciles > 0.0 { 1000.0 * threads_cpu / reconciles } else { 0.0 },
            "memlxd_busy_seconds": busy,
            "memlxd_share_of_cpu": if threads_cpu > 0.0 { busy / threads_cpu } else { 0.0 },
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_rss_is_this_phases": m.hwm_reset,
            "rss_bytes_end": rss_bytes(),
            "lxd_requests": by_method,
            "lxd_requests_by_path": requests,
            "queue_adds": adds,
            "errors": errors,
            "max_events_waiting": backlog,
            "monotonic_start": m.monotonic,
            "monotonic_end": monotonic_seconds(),
        });
        if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
            o.extend(e);
        }
        v
    }
}

fn log_phase(name: &str, v: &Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    eprintln!(
        "full loop: {name}: {:.0} reconciles in {:.2} s ({:.0}/s), CPU {:.2} s ({:.3} ms per reconcile, MemLxd {:.0}%), peak RSS {:.0} MiB, requests {}",
        f("reconciles"),
        f("seconds"),
        f("reconciles_per_second"),
        f("cpu_seconds"),
        f("cpu_ms_per_reconcile"),
        100.0 * f("memlxd_share_of_cpu"),
        f("peak_rss_bytes") / 1048576.0,
        v["lxd_requests_by_path"]
    );
}

/// CLOCK_MONOTONIC now, in seconds, for lining phases up with `perf record -k mono`
/// samples; read from `Instant`'s debug form (`Instant { tv_sec: 1, tv_nsec: 2 }` on
/// Linux), as std offers it no other way and the crate has no libc. `None` if the form
/// changes.
fn monotonic_seconds() -> Option<f64> {
    let text = format!("{:?}", Instant::now());
    let number = |field: &str| -> Option<f64> {
        let rest = text.split(field).nth(1)?;
        let digits: String = rest
            .trim_start_matches([':', ' '])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some(number("tv_sec")? + number("tv_nsec")? / 1e9)
}

/// `FULL_LOOP_PAUSE_MS` between phases (0): idle gaps that make them easy to tell apart
/// in a profile.
async fn pause() {
    let ms = setting("FULL_LOOP_PAUSE_MS", 0);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
}

async fn full_loop(n: usize, workers: usize, namespaces: usize, apps: usize) -> Value {
    let names = ProfileNames::default();
    let rss_start = rss_bytes();
    let fleet = fleet(n, namespaces, apps);
    let lxd = MemLxd::with_project("bench");
    lxd.log_requests(false);
    for k in 0..n {
        lxd.add_instance(&instance_name(k), &["default"]);
    }
    let rss_seeded = rss_bytes();
    let telemetry = Telemetry::new();
    let status = Arc::new(MemStatus::default());
    let opts = Options {
        workers,
        ..Options::new(names.clone())
    };
    let pipeline = Arc::new(Pipeline::new(lxd.clone(), status, opts, &telemetry));
    let bench = Bench {
        pipeline: pipeline.clone(),
        lxd: lxd.clone(),
        telemetry,
        handled: Arc::new(AtomicUsize::new(0)),
    };
    let mut phases = serde_json::Map::new();

    // Load: the source's whole state into the store (the indexes), as `run` does before
    // anything else; then, as `run` starts, the events stream's connect and one listing
    // after it.
    let resources = fleet.resources(1);
    let m = bench.mark();
    for r in resources {
        pipeline.on_source(SourceEvent::Upsert(r));
    }
    pipeline.on_source(SourceEvent::Loaded);
    let loaded = Instant::now();
    let mut events = lxd.events();
    assert_eq!(events.recv().await, Some(EventNotice::Connected));
    pipeline.relist().await.expect("listing");
    pipeline.enqueue_all();
    let load = bench.figures(
        &m,
        (Instant::now(), 0),
        json!({"load_seconds": loaded.duration_since(m.at).as_secs_f64(), "queued": pipeline.queue.len()}),
    );
    eprintln!(
        "full loop: load of {n} Machines and {apps} Applications, one listing: {:.2} s, CPU {:.2} s, RSS {:.0} MiB ({:.0} MiB before the double was seeded, {:.0} MiB after)",
        load["seconds"].as_f64().unwrap_or(0.0),
        load["cpu_seconds"].as_f64().unwrap_or(0.0),
        rss_bytes() as f64 / 1048576.0,
        rss_start as f64 / 1048576.0,
        rss_seeded as f64 / 1048576.0,
    );
    phases.insert("load".into(), load);

    // The events task, as `run`'s: each lifecycle event through the feed (echoes
    // recognised) into the queue.
    let events_task = {
        let pipeline = pipeline.clone();
        let handled = bench.handled.clone();
        tokio::spawn(async move {
            while let Some(notice) = events.recv().await {
                let result = match notice {
                    EventNotice::Connected => pipeline.feed.reconnected().await,
                    EventNotice::Lifecycle(e) => {
                        let r = pipeline.feed.on_event(&e).await;
                        handled.fetch_add(1, Ordering::SeqCst);
                        r
                    }
                };
                match result {
                    Ok(affected) => pipeline.on_lxd(affected),
                    Err(e) => eprintln!("full loop: handling an LXD event: {e}"),
                }
            }
        })
    };

    // 1. Converge from cold: every instance has `default` only.
    pause().await;
    let m = bench.mark();
    let workers_task = tokio::spawn(pipeline.worker.clone().run(false));
    let idle = bench.settle().await;
    bench.flush().await;
    let converge = bench.figures(&m, idle, json!({}));
    log_phase("converge from cold", &converge);
    let ok = fleet.converged(&lxd, 1);
    assert_eq!(ok, n, "converged instances after the cold start");
    phases.insert("converge".into(), converge);

    // 2. A revision bump of every namespace's base application, which every Machine runs.
    pause().await;
    let m = bench.mark();
    for ns in &fleet.namespaces {
        pipeline.on_source(SourceEvent::Upsert(Resource::Application(application(
            ns, 0, 2,
        ))));
    }
    let idle = bench.settle().await;
    bench.flush().await;
    let bump = bench.figures(
        &m,
        idle,
        json!({"what": format!("revision 1 -> 2 of app-0 in each of the {namespaces} namespaces: every Machine runs it")}),
    );
    log_phase("revision bump", &bump);
    assert_eq!(
        fleet.converged(&lxd, 2),
        n,
        "converged instances after the bump"
    );
    for ns in &fleet.namespaces {
        assert!(
            lxd.profile(&names.charm_profile(ns, "app-0", 1)).is_none(),
            "the old revision's profile is deleted"
        );
    }
    phases.insert("bump".into(), bump);

    // 3. An in-sync resync, as `run`'s timer does it: list, then every key.
    pause().await;
    let m = bench.mark();
    pipeline.relist().await.expect("listing");
    let listed = m.at.elapsed().as_secs_f64();
    pipeline.enqueue_all();
    let idle = bench.settle().await;
    bench.flush().await;
    let resync = bench.figures(&m, idle, json!({"relist_seconds": listed}));
    log_phase("in-sync resync", &resync);
    phases.insert("resync".into(), resync);

    pipeline.queue.shutdown();
    let _ = workers_task.await;
    events_task.abort();
    let peak_of_all = phases
        .values()
        .filter_map(|p| p["peak_rss_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    let profiles_now: usize = lxd.profile_names().len();
    json!({
        "n": n,
        "workers": workers,
        "namespaces": namespaces,
        "applications": apps,
        "profiles_at_end": profiles_now,
        "rss_bytes_before_seeding": rss_start,
        "rss_bytes_memlxd_seeded": rss_seeded,
        "peak_rss_bytes": peak_of_all,
        "phases": phases,
    })
}

#[test]
#[ignore = "a bench: bench/bench.py --full-loop, or cargo test --release --lib testing::full_loop -- --ignored --exact --nocapture"]
fn full_loop_at_scale() {
    let n = setting("FULL_LOOP_N", 100_000);
    let workers = setting("FULL_LOOP_WORKERS", 4);
    let threads = setting("FULL_LOOP_THREADS", 1);
    let namespaces = setting("FULL_LOOP_NAMESPACES", 5);
    let apps = setting("FULL_LOOP_APPS", (n / 100).clamp(10 * namespaces, 1000));
    let level = std::env::var("FULL_LOOP_LOG").unwrap_or_else(|_| "info".into());
    // As `run` logs (`cmd::init_logs`), into a sink: formatting is the cost measured,
    // not a terminal. One bench per process (`--exact`), so the global default is ours.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&level))
        .with_ansi(false)
        .with_writer(std::io::sink)
        .try_init();
    let rt = if threads == 1 {
        // As `run` builds it (`cmd::runtime`).
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("a runtime");
    // The driver runs on the runtime too, so that its threads are all the loop's.
    let result = rt
        .block_on(rt.spawn(full_loop(n, workers, namespaces, apps)))
        .expect("the bench ran");
    let mut result = result;
    result["threads"] = json!(threads);
    result["log_level"] = json!(level);
    println!("FULL_LOOP_JSON {result}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_run_one_to_three_distinct_applications_the_base_one_first() {
        for k in 0..5000 {
            let apps = apps_of(k, 10);
            assert!((1..=3).contains(&apps.len()));
            assert_eq!(apps[0], "app-0");
            let mut unique = apps.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), apps.len(), "{k}: {apps:?}");
        }
    }

    #[test]
    fn the_monotonic_clock_is_read_from_instant() {
        let a = monotonic_seconds().expect("Instant's debug form on Linux");
        let b = monotonic_seconds().expect("Instant's debug form on Linux");
        assert!(a > 0.0 && b >= a);
    }

    #[test]
    fn proc_stat_times_are_read_after_the_command_name() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert_eq!(stat_seconds(line), Some(4.0));
    }

    #[test]
    fn metric_sums_take_every_labelled_series_of_one_name_only() {
        let text =
            "# TYPE x counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 7\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 6.0);
        assert_eq!(metric(text, "x_total{a=\"2\"}"), 3.0);
    }
}
