//! Criterion benchmarks of the pure steady-state work, at N, 10N and 100N machines
//! (N = 200) against a synthetic observed state in sync (no LXD daemon):
//!
//! - `plan/<n>`: `plan` of every Machine, as the controller's full pass (`diff`, a
//!   relist) does it, looking applications up in `Desired`;
//! - `index/<n>`: a fresh `Desired` and `upsert` of every resource (applications, then
//!   machines).
//!
//! Both report `Throughput::Elements(n)`, so criterion prints the time per machine.
//! `benches/scale.rs` prints the same figures and the memory per resource as JSON.

use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use lxd_mutater::resource::{ProfileNames, Resource};
use lxd_mutater::store::Observed;

mod fleet;
use fleet::*;

const SIZES: [usize; 3] = [200, 2_000, 20_000];

/// Few samples, and a measurement time that grows with N: `cargo bench --bench plan`
/// stays well under two minutes on two cores.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if n >= 20_000 { 4 } else { 2 }))
        .throughput(Throughput::Elements(n as u64));
}

fn bench_plan(c: &mut Criterion) {
    let names = ProfileNames::default();
    let mut group = c.benchmark_group("plan");
    for n in SIZES {
        let f = fleet(n, (n / 10).max(2));
        let desired = desired_of(f.apps.into_iter().chain(f.machines));
        let mut observed = Observed::default();
        observed.replace(f.instances, f.profiles);
        assert_eq!(
            plan_all(&desired, &observed, &names),
            n,
            "every machine must be in sync with the synthetic observed state"
        );
        configure(&mut group, n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| plan_all(&desired, &observed, &names))
        });
    }
    group.finish();
}

fn bench_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for n in SIZES {
        let f = fleet(n, (n / 10).max(2));
        let resources: Vec<Resource> = f.apps.into_iter().chain(f.machines).collect();
        configure(&mut group, n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(|| resources.clone(), desired_of, BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan, bench_index);
criterion_main!(benches);
