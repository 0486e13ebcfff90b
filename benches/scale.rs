//! How the steady-state cost grows with the fleet: plan, index and memory per resource at
//! N, 10N and 100N machines, against a synthetic observed state (no LXD daemon).
//!
//! `cargo bench --bench scale` prints one JSON object per N on stdout and a verdict on
//! stderr. `SCALE_N=200,2000` picks the sizes (default 200,2000,20000); `SCALE_APPS=K`
//! fixes the number of applications (default N/10, at least 2); `SCALE_ROUNDS=R` (default
//! 3) how many interleaved rounds of timings are taken, the best of them reported.
//!
//! Times are per machine (`*_per_resource`: a pass over all N divided by N, the median
//! of passes totalling at least 200 ms), except `keys_for_*_ns`, which are per call.
//!
//! Memory is counted by a `#[global_allocator]` that wraps the system allocator and keeps
//! the live byte count (requested sizes, without the allocator's own overhead); the
//! resident set size is printed too, for comparison, but it is noisy.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lxd_mutater::reconcile::expected_profiles;
use lxd_mutater::resource::{ProfileNames, Resource};
use lxd_mutater::store::{Desired, Observed};

// ---------------------------------------------------------------------------------------
// Counting allocator.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// Resident set size from `/proc/self/statm` (pages of 4096 bytes), 0 if unreadable.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

mod fleet;
use fleet::*;

/// The expected profile list of every workload (the pure part of plan, no observed state).
fn expected_all(desired: &Desired, names: &ProfileNames) -> usize {
    let mut ok = 0;
    for (k, w) in desired.workloads() {
        let e = expected_profiles(
            k.kind,
            w,
            |n| desired.application(&k.namespace, n).map(|a| a.as_ref()),
            |p| {
                desired
                    .subordinates(&k.namespace, p)
                    .into_iter()
                    .map(|a| a.as_ref())
                    .collect()
            },
            names,
        );
        ok += usize::from(e.is_ok());
        black_box(e).ok();
    }
    ok
}

// ---------------------------------------------------------------------------------------
// Measuring.

const MIN_MEASURE: Duration = Duration::from_millis(200);
const MIN_PASSES: usize = 5;
const WARM_UP: Duration = Duration::from_millis(100);

/// Set under `cargo test` (no `--bench` argument): a smoke run, small and untimed.
static SMOKE: AtomicBool = AtomicBool::new(false);

fn min_measure() -> Duration {
    if SMOKE.load(Ordering::Relaxed) {
        Duration::ZERO
    } else {
        MIN_MEASURE
    }
}

/// Runs `pass` for at least `WARM_UP` (once at least): caches, branch predictors and the
/// CPU clock settle before anything is timed.
fn warm_up(mut pass: impl FnMut()) {
    let t = Instant::now();
    pass();
    while !SMOKE.load(Ordering::Relaxed) && t.elapsed() < WARM_UP {
        pass();
    }
}

/// The median of the pass times, in nanoseconds. The median rather than the mean: on a
/// shared machine a pass now and then loses its core.
fn median_ns(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_nanos() as f64
}

/// Warms `pass` up, then runs it until at least `MIN_MEASURE` was spent in it
/// over at least `MIN_PASSES` passes; returns the median time of one pass in nanoseconds
/// and the allocations per pass.
fn time_passes(mut pass: impl FnMut()) -> (f64, f64) {
    warm_up(&mut pass);
    let mut times = Vec::new();
    let mut allocs = 0;
    while times.len() < MIN_PASSES || times.iter().sum::<Duration>() < min_measure() {
        let a = allocations();
        let t = Instant::now();
        pass();
        let elapsed = t.elapsed();
        allocs += allocations() - a;
        times.push(elapsed);
    }
    let allocs = allocs as f64 / times.len() as f64;
    (median_ns(times), allocs)
}

/// Like `time_passes`, for a pass that consumes a fresh input built (untimed) by `setup`
/// and whose output is dropped untimed.
fn time_batched<I, O>(mut setup: impl FnMut() -> I, mut pass: impl FnMut(I) -> O) -> f64 {
    warm_up(|| drop(pass(setup())));
    let mut times = Vec::new();
    while times.len() < MIN_PASSES || times.iter().sum::<Duration>() < min_measure() {
        let input = setup();
        let t = Instant::now();
        let out = pass(input);
        times.push(t.elapsed());
        drop(out);
    }
    median_ns(times)
}

/// One fleet, built once and measured in every round.
struct Setup {
    n: usize,
    apps: usize,
    desired: Desired,
    observed: Observed,
    /// The same resources again, cloned for each timed index build.
    resources: Vec<Resource>,
    desired_bytes: f64,
    observed_bytes: f64,
    rss_bytes: f64,
}

/// Builds the desired and the observed state of `n` machines and counts what holding
/// each costs: the live bytes added, with its inputs consumed and every temporary (the
/// other half of the synthetic fleet, the input vectors, LXD's used_by URLs) freed.
fn build(n: usize, apps: usize) -> Setup {
    let names = ProfileNames::default();
    let rss0 = rss_bytes();
    let live0 = live_bytes();
    let desired = {
        let f = fleet(n, apps);
        drop((f.instances, f.profiles));
        desired_of(f.apps.into_iter().chain(f.machines))
    };
    let desired_bytes = (live_bytes() - live0) as f64;
    let live1 = live_bytes();
    let observed = {
        let f = fleet(n, apps);
        drop((f.apps, f.machines));
        let mut o = Observed::default();
        o.replace(f.instances, f.profiles);
        o
    };
    let observed_bytes = (live_bytes() - live1) as f64;
    let rss_bytes = rss_bytes().saturating_sub(rss0) as f64;
    assert_eq!(
        plan_all(&desired, &observed, &names),
        n,
        "every machine must be in sync with the synthetic observed state"
    );
    let f = fleet(n, apps);
    Setup {
        n,
        apps,
        desired,
        observed,
        resources: f.apps.into_iter().chain(f.machines).collect(),
        desired_bytes,
        observed_bytes,
        rss_bytes,
    }
}

/// The timings of one round for one fleet, in nanoseconds: per machine for the passes,
/// per call for the event look-ups.
#[derive(Clone, Copy, Debug)]
struct Times {
    plan: f64,
    plan_allocs: f64,
    expected: f64,
    index: f64,
    keys_for_instance: f64,
    keys_for_charm_profile: f64,
}

fn time_round(s: &Setup) -> Times {
    let names = ProfileNames::default();
    let n = s.n as f64;
    let (plan, plan_allocs) = time_passes(|| {
        black_box(plan_all(&s.desired, &s.observed, &names));
    });
    let (expected, _) = time_passes(|| {
        black_box(expected_all(&s.desired, &names));
    });
    // A fresh Desired and every resource upserted (clones made and the result dropped
    // untimed).
    let index = time_batched(|| s.resources.clone(), desired_of);
    // The event path's look-ups: which machines an instance event and a charm profile
    // event concern.
    let probe: Vec<String> = (0..64).map(|k| instance_name(k * s.n / 64)).collect();
    let (keys_for_instance, _) = time_passes(|| {
        for i in &probe {
            black_box(s.desired.keys_for_instance(i));
        }
    });
    let charm = names.charm_profile(NS, "app-1", 2);
    let (keys_for_charm_profile, _) = time_passes(|| {
        black_box(s.desired.keys_for_profile(&charm, &names));
    });
    Times {
        plan: plan / n,
        plan_allocs: plan_allocs / n,
        expected: expected / n,
        index: index / n,
        keys_for_instance: keys_for_instance / probe.len() as f64,
        keys_for_charm_profile,
    }
}

/// Per field, the best of the rounds: the host's speed drifts over seconds (a shared
/// virtual machine), and the fastest round is the one least disturbed.
fn best(rounds: &[Times]) -> Times {
    let min = |f: fn(&Times) -> f64| rounds.iter().map(f).fold(f64::INFINITY, f64::min);
    Times {
        plan: min(|t| t.plan),
        plan_allocs: min(|t| t.plan_allocs),
        expected: min(|t| t.expected),
        index: min(|t| t.index),
        keys_for_instance: min(|t| t.keys_for_instance),
        keys_for_charm_profile: min(|t| t.keys_for_charm_profile),
    }
}

fn sizes() -> Vec<usize> {
    let default = if SMOKE.load(Ordering::Relaxed) {
        "20,200"
    } else {
        "200,2000,20000"
    };
    let spec = std::env::var("SCALE_N").unwrap_or_else(|_| default.into());
    let sizes: Vec<usize> = spec
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SCALE_N: {s:?} is not a number"))
        })
        .collect();
    assert!(
        sizes.iter().all(|&n| n > 0),
        "SCALE_N: sizes must be positive"
    );
    sizes
}

fn env_number(name: &str) -> Option<usize> {
    let s = std::env::var(name).ok()?;
    Some(
        s.parse()
            .unwrap_or_else(|_| panic!("{name}: {s:?} is not a number")),
    )
}

/// The most a per-resource figure may grow from N to 100N and still count as flat (#15).
const FLAT: f64 = 1.3;

/// One per-machine figure, for the verdict.
type Figure = fn(&Setup, &Times) -> f64;

fn main() {
    // `cargo bench` passes `--bench`; `--list` (cargo test's discovery) runs nothing;
    // `cargo test --all-targets` passes neither and gets a quick smoke run (small sizes,
    // one round, no minimum measuring time): the figures it prints mean little.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        SMOKE.store(true, Ordering::Relaxed);
    }
    let fixed_apps = env_number("SCALE_APPS");
    let rounds = if SMOKE.load(Ordering::Relaxed) {
        1
    } else {
        env_number("SCALE_ROUNDS").unwrap_or(3).max(1)
    };
    let setups: Vec<Setup> = sizes()
        .into_iter()
        .map(|n| build(n, fixed_apps.unwrap_or(n / 10).max(2)))
        .collect();
    // Rounds interleave the sizes, so that a slow spell of the host does not land on one
    // size only.
    let mut times: Vec<Vec<Times>> = vec![Vec::new(); setups.len()];
    for _ in 0..rounds {
        for (s, t) in setups.iter().zip(&mut times) {
            t.push(time_round(s));
        }
    }
    let rows: Vec<(&Setup, Times)> = setups.iter().zip(times.iter().map(|t| best(t))).collect();
    for (s, t) in &rows {
        let n = s.n as f64;
        println!(
            "{{\"n\":{},\"applications\":{},\"plan_ns_per_resource\":{:.1},\
             \"plan_allocs_per_resource\":{:.2},\"expected_everywhere_ns_per_resource\":{:.1},\
             \"index_ns_per_resource\":{:.1},\"bytes_per_resource\":{:.1},\
             \"desired_bytes_per_resource\":{:.1},\"observed_bytes_per_resource\":{:.1},\
             \"rss_bytes_per_resource\":{:.1},\"keys_for_instance_ns\":{:.1},\
             \"keys_for_charm_profile_ns\":{:.1}}}",
            s.n,
            s.apps,
            t.plan,
            t.plan_allocs,
            t.expected,
            t.index,
            (s.desired_bytes + s.observed_bytes) / n,
            s.desired_bytes / n,
            s.observed_bytes / n,
            s.rss_bytes / n,
            t.keys_for_instance,
            t.keys_for_charm_profile,
        );
    }
    let (Some((first, ft)), Some((last, lt))) = (rows.first(), rows.last()) else {
        return;
    };
    if rows.len() < 2 {
        eprintln!("scale: one size only, nothing to compare");
        return;
    }
    let figures: [(&str, Figure); 5] = [
        ("plan", |_, t| t.plan),
        ("expected", |_, t| t.expected),
        ("index", |_, t| t.index),
        ("bytes", |s, _| {
            (s.desired_bytes + s.observed_bytes) / s.n as f64
        }),
        ("plan allocs", |_, t| t.plan_allocs),
    ];
    let ratios: Vec<(&str, f64)> = figures
        .iter()
        .map(|(name, get)| (*name, get(last, lt) / get(first, ft)))
        .collect();
    let growing: Vec<&str> = ratios
        .iter()
        .filter(|(_, r)| *r > FLAT)
        .map(|(n, _)| *n)
        .collect();
    let text: Vec<String> = ratios.iter().map(|(n, r)| format!("{n} x{r:.2}")).collect();
    eprintln!(
        "scale: per-resource figures from n={} to n={} ({}x, best of {rounds} rounds): {}; {}",
        first.n,
        last.n,
        last.n / first.n,
        text.join(", "),
        if growing.is_empty() {
            format!("flat (all within {FLAT}x)")
        } else {
            format!("NOT flat: {}", growing.join(", "))
        }
    );
}
