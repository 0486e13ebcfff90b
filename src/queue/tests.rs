//! Queue guarantees, each test named after the failure it prevents. Timing runs on tokio's
//! paused clock; no test sleeps in real time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::time::advance;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn queue() -> WorkQueue<&'static str> {
    WorkQueue::new("test", BackoffConfig::default())
}

/// The key `get` would hand out right now, without waiting.
fn ready_now<K>(queue: &WorkQueue<K>) -> Option<K>
where
    K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    queue.get().now_or_never().flatten()
}

#[tokio::test(start_paused = true)]
async fn key_waiting_is_not_added_twice() {
    let q = queue();
    q.add("a");
    q.add("a");
    q.add("b");
    q.add("a");
    assert_eq!(q.len(), 2);
    assert_eq!(ready_now(&q), Some("a"));
    assert_eq!(ready_now(&q), Some("b"));
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn ready_keys_come_out_in_fifo_order() {
    let q = queue();
    for key in ["c", "a", "d", "b"] {
        q.add(key);
    }
    // A dedup'd add does not move a key to the back.
    q.add("c");
    let order: Vec<_> = std::iter::from_fn(|| ready_now(&q)).collect();
    assert_eq!(order, ["c", "a", "d", "b"]);
}

#[tokio::test(start_paused = true)]
async fn key_added_while_processing_is_held_back_until_done_then_queued_once() {
    let q = queue();
    q.add("a");
    assert_eq!(ready_now(&q), Some("a"));
    assert_eq!(q.processing(), 1);

    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 0, "a key being processed must not be ready");
    assert_eq!(ready_now(&q), None, "a second worker must not get the key");

    q.done(&"a");
    assert_eq!(q.processing(), 0);
    assert_eq!(q.len(), 1, "the adds during processing queue the key once");
    assert_eq!(ready_now(&q), Some("a"));
    q.done(&"a");
    assert_eq!(q.len(), 0);
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn done_for_a_key_not_handed_out_does_not_duplicate_it() {
    let q = queue();
    q.add("a");
    q.done(&"a");
    assert_eq!(q.len(), 1);
    assert_eq!(ready_now(&q), Some("a"));
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn key_done_without_new_adds_is_not_processed_again() {
    let q = queue();
    q.add("a");
    assert_eq!(ready_now(&q), Some("a"));
    q.done(&"a");
    assert_eq!(q.len(), 0);
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn delayed_key_is_not_ready_before_its_deadline() {
    let q = queue();
    q.add_after("a", ms(300));
    advance(ms(299)).await;
    assert_eq!(q.len(), 0);
    assert_eq!(ready_now(&q), None);
    advance(ms(1)).await;
    assert_eq!(ready_now(&q), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn repeated_delayed_adds_keep_the_earliest_deadline() {
    let q = queue();
    q.add_after("a", ms(1_000));
    q.add_after("a", ms(200));
    q.add_after("a", ms(5_000));
    advance(ms(199)).await;
    assert_eq!(ready_now(&q), None);
    advance(ms(1)).await;
    assert_eq!(ready_now(&q), Some("a"));
    q.done(&"a");

    // The later deadlines were dropped, not kept as extra requeues.
    advance(ms(10_000)).await;
    assert_eq!(q.len(), 0);
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn add_makes_a_key_with_a_pending_delayed_add_ready_now() {
    let q = queue();
    q.add_after("a", ms(1_000));
    q.add("a");
    assert_eq!(ready_now(&q), Some("a"));
    q.done(&"a");
    advance(ms(2_000)).await;
    assert_eq!(ready_now(&q), None, "the delayed add was superseded");
}

#[tokio::test(start_paused = true)]
async fn delayed_add_of_a_waiting_key_does_not_requeue_it_later() {
    let q = queue();
    q.add("a");
    q.add_after("a", ms(100));
    assert_eq!(ready_now(&q), Some("a"));
    q.done(&"a");
    advance(ms(200)).await;
    assert_eq!(ready_now(&q), None);
}

#[tokio::test(start_paused = true)]
async fn delayed_key_that_falls_due_while_processing_waits_for_done() {
    let q = queue();
    q.add("a");
    assert_eq!(ready_now(&q), Some("a"));
    q.add_after("a", ms(100));
    advance(ms(100)).await;
    assert_eq!(ready_now(&q), None, "still being processed");
    q.done(&"a");
    assert_eq!(ready_now(&q), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn delayed_keys_become_ready_in_deadline_order() {
    let q = queue();
    q.add_after("late", ms(300));
    q.add_after("early", ms(100));
    q.add_after("middle", ms(200));
    advance(ms(300)).await;
    let order: Vec<_> = std::iter::from_fn(|| ready_now(&q)).collect();
    assert_eq!(order, ["early", "middle", "late"]);
}

#[tokio::test(start_paused = true)]
async fn waiting_getter_wakes_when_a_delayed_key_falls_due() {
    let q = queue();
    q.add_after("a", ms(700));
    let start = Instant::now();
    // The paused clock jumps to the getter's own timer: nothing else drives it.
    let key = q.get().await;
    assert_eq!(key, Some("a"));
    assert_eq!(start.elapsed(), ms(700));
}

#[tokio::test(start_paused = true)]
async fn waiting_getter_wakes_for_an_earlier_deadline_added_while_it_sleeps() {
    let q = queue();
    q.add_after("slow", ms(10_000));
    let getter = tokio::spawn({
        let q = q.clone();
        async move { (q.get().await, Instant::now()) }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    q.add_after("fast", ms(50));
    let (key, at) = getter.await.unwrap();
    assert_eq!(key, Some("fast"));
    assert_eq!(at - start, ms(50));
}

#[tokio::test(start_paused = true)]
async fn waiting_getter_wakes_on_add() {
    let q = queue();
    let getter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::task::yield_now().await;
    q.add("a");
    assert_eq!(getter.await.unwrap(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn cancelled_get_does_not_lose_a_key() {
    let q = queue();
    let waited = tokio::time::timeout(ms(10), q.get()).await;
    assert!(waited.is_err());
    q.add("a");
    assert_eq!(ready_now(&q), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn rate_limited_retries_follow_the_backoff_sequence() {
    let config = BackoffConfig::default();
    let q = WorkQueue::new("test", config).with_jitter_seed(11);
    let mut rng = fastrand::Rng::with_seed(11);
    for n in 1..=14 {
        let exact = config.delay_with_draw(n, 0.0);
        let expected = config.delay(n, &mut rng);
        assert!(expected >= exact && expected <= config.cap);

        q.add_rate_limited("a");
        assert_eq!(q.failures(&"a"), n);
        advance(expected - ms(1)).await;
        assert_eq!(ready_now(&q), None, "retry {n} early: before {expected:?}");
        advance(ms(1)).await;
        assert_eq!(ready_now(&q), Some("a"), "retry {n} late: at {expected:?}");
        q.done(&"a");
    }
    assert_eq!(
        (1..=12)
            .map(|n| config.delay_with_draw(n, 0.0))
            .collect::<Vec<_>>()[..5],
        [ms(500), ms(1_000), ms(2_000), ms(4_000), ms(8_000)]
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_key_is_not_ready_before_the_base_delay() {
    let q = queue();
    q.add_rate_limited("a");
    advance(ms(499)).await;
    assert_eq!(ready_now(&q), None);
    // 500 ms plus at most 10% jitter.
    advance(ms(51)).await;
    assert_eq!(ready_now(&q), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn forget_resets_backoff_to_the_base() {
    let q = queue();
    for _ in 0..4 {
        q.add_rate_limited("a");
        let _ = q.get().await;
        q.done(&"a");
    }
    assert_eq!(q.failures(&"a"), 4);
    q.forget(&"a");
    assert_eq!(q.failures(&"a"), 0);

    q.add_rate_limited("a");
    assert_eq!(q.failures(&"a"), 1);
    advance(ms(499)).await;
    assert_eq!(ready_now(&q), None);
    advance(ms(51)).await;
    assert_eq!(ready_now(&q), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn failures_are_counted_per_key() {
    let q = queue();
    q.add_rate_limited("a");
    q.add_rate_limited("a");
    q.add_rate_limited("b");
    assert_eq!(q.failures(&"a"), 2);
    assert_eq!(q.failures(&"b"), 1);
    assert_eq!(q.failures(&"c"), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_none_promptly_even_with_delayed_keys_pending() {
    let q = queue();
    q.add_after("a", ms(60_000));
    q.add_rate_limited("b");
    q.add("c");
    q.shutdown();
    assert!(q.is_shutting_down());
    let start = Instant::now();
    assert_eq!(q.get().await, None);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_blocked_getters() {
    let q = queue();
    q.add_after("a", ms(60_000));
    let getters: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        })
        .collect();
    tokio::task::yield_now().await;
    let start = Instant::now();
    q.shutdown();
    for getter in getters {
        assert_eq!(getter.await.unwrap(), None);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn adds_after_shutdown_are_ignored() {
    let q = queue();
    q.shutdown();
    q.add("a");
    q.add_after("b", ms(10));
    q.add_rate_limited("c");
    assert_eq!(q.len(), 0);
    assert_eq!(q.failures(&"c"), 0);
    assert_eq!(q.get().await, None);
}

#[tokio::test(start_paused = true)]
async fn done_after_shutdown_releases_the_key() {
    let q = queue();
    q.add("a");
    assert_eq!(q.get().await, Some("a"));
    q.add("a");
    q.shutdown();
    q.done(&"a");
    assert_eq!(q.processing(), 0);
    assert_eq!(q.get().await, None);
}

/// What the workers of a concurrency test saw.
#[derive(Default)]
struct Tracker {
    /// The version of each key's desired state; bumped before each add, as the store does.
    desired: HashMap<u32, u64>,
    /// The version each key's latest processing read at its start.
    observed: HashMap<u32, u64>,
    in_flight: HashSet<u32>,
    overlaps: usize,
    processings: usize,
    adds: usize,
}

impl Tracker {
    fn caught_up(&self) -> bool {
        self.desired
            .iter()
            .all(|(key, version)| self.observed.get(key) == Some(version))
    }
}

/// A new version of `key`'s desired state, written before the add as the store does.
fn bump(tracker: &Mutex<Tracker>, key: u32) {
    let mut t = tracker.lock().unwrap();
    *t.desired.entry(key).or_insert(0) += 1;
    t.adds += 1;
}

fn spawn_workers(
    q: &WorkQueue<u32>,
    tracker: &Arc<Mutex<Tracker>>,
    workers: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let q = q.clone();
            let tracker = Arc::clone(tracker);
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(worker as u64);
                while let Some(key) = q.get().await {
                    {
                        let mut t = tracker.lock().unwrap();
                        if !t.in_flight.insert(key) {
                            t.overlaps += 1;
                        }
                        t.processings += 1;
                        let version = t.desired.get(&key).copied().unwrap_or(0);
                        t.observed.insert(key, version);
                    }
                    for _ in 0..rng.usize(0..6) {
                        tokio::task::yield_now().await;
                    }
                    tracker.lock().unwrap().in_flight.remove(&key);
                    q.done(&key);
                }
            })
        })
        .collect()
}

/// How `drain_and_stop` waits for the workers to catch up.
#[derive(Clone, Copy)]
enum Clock {
    /// Real time: spin on `yield_now`, with a hang guard of a few seconds.
    Real,
    /// Paused: sleep, so the runtime idles and the clock jumps to the next deadline.
    Paused,
}

async fn drain_and_stop(
    q: &WorkQueue<u32>,
    tracker: &Arc<Mutex<Tracker>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    clock: Clock,
) {
    // A hang guard only: a lost add would otherwise never catch up. On the paused clock
    // it must outlast the 5 minute backoff cap.
    let guard = match clock {
        Clock::Real => Duration::from_secs(10),
        Clock::Paused => Duration::from_secs(3_600),
    };
    tokio::time::timeout(guard, async {
        while !tracker.lock().unwrap().caught_up() {
            match clock {
                Clock::Real => tokio::task::yield_now().await,
                Clock::Paused => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    })
    .await
    .expect("workers never processed the latest version of every key");
    q.shutdown();
    for worker in workers {
        worker.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_is_never_processed_by_two_workers_at_once() {
    let q: WorkQueue<u32> = WorkQueue::new("concurrent", BackoffConfig::default());
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let workers = spawn_workers(&q, &tracker, 6);

    let adders: Vec<_> = (0..3)
        .map(|adder| {
            let q = q.clone();
            let tracker = Arc::clone(&tracker);
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(100 + adder);
                for _ in 0..2_000 {
                    let key = rng.u32(0..8);
                    bump(&tracker, key);
                    q.add(key);
                    if rng.bool() {
                        tokio::task::yield_now().await;
                    }
                }
                // Sweeps over every key: some of these adds land while that key is being
                // processed, after its worker read the previous version.
                for _ in 0..3 {
                    for key in 0..8 {
                        bump(&tracker, key);
                        q.add(key);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for adder in adders {
        adder.await.unwrap();
    }
    drain_and_stop(&q, &tracker, workers, Clock::Real).await;

    let t = tracker.lock().unwrap();
    assert_eq!(t.overlaps, 0, "a key was processed by two workers at once");
    // Every add after a key's last processing start led to one more processing, which read
    // the latest version.
    assert!(t.caught_up());
    assert!(t.processings <= t.adds);
    assert_eq!(q.processing(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_workers_with_delayed_and_rate_limited_adds_process_every_latest_add() {
    let q: WorkQueue<u32> = WorkQueue::new("concurrent-delayed", BackoffConfig::default());
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let workers = spawn_workers(&q, &tracker, 4);

    let mut rng = fastrand::Rng::with_seed(5);
    for _ in 0..1_000 {
        let key = rng.u32(0..6);
        bump(&tracker, key);
        match rng.u8(0..3) {
            0 => q.add(key),
            1 => q.add_after(key, ms(rng.u64(1..200))),
            _ => q.add_rate_limited(key),
        }
        if rng.bool() {
            tokio::task::yield_now().await;
        }
        if rng.u8(0..10) == 0 {
            advance(ms(rng.u64(0..100))).await;
        }
    }
    // Sweeps over every key: some of these adds land while that key is being processed,
    // after its worker read the previous version.
    for sweep in 0..3 {
        for key in 0..6 {
            bump(&tracker, key);
            if sweep == 1 {
                q.add_after(key, ms(1));
            } else {
                q.add(key);
            }
        }
        tokio::task::yield_now().await;
    }
    drain_and_stop(&q, &tracker, workers, Clock::Paused).await;

    let t = tracker.lock().unwrap();
    assert_eq!(t.overlaps, 0, "a key was processed by two workers at once");
    assert!(t.caught_up());
    assert!(t.processings <= t.adds);
}

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

/// The value of the sample line `series` (name and labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn metrics_expose_all_client_go_workqueue_names() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::register(&mut registry);
    let q = WorkQueue::new("machines", BackoffConfig::default()).with_metrics(metrics);
    q.add("a");
    let key = q.get().await.unwrap();
    q.add_rate_limited(key);
    q.done(&key);

    let text = scrape(&registry);
    for name in [
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_retries_total",
        "workqueue_queue_duration_seconds",
        "workqueue_work_duration_seconds",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(name) && line.contains(r#"name="machines""#)),
            "{name} with name=\"machines\" missing from:\n{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_adds_once_per_dedup_and_retries_per_failure() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::register(&mut registry);
    let q = WorkQueue::new("q", BackoffConfig::default()).with_metrics(metrics);
    q.add("a");
    q.add("a");
    q.add("b");
    q.add_rate_limited("c");
    q.add_rate_limited("c");

    let text = scrape(&registry);
    assert_eq!(
        sample(&text, r#"workqueue_adds_total{name="q"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"workqueue_retries_total{name="q"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&text, r#"workqueue_depth{name="q"}"#), Some(2.0));

    // The delayed retry counts as an add, and as depth, once it falls due.
    advance(ms(1_100)).await;
    let text = scrape(&registry);
    assert_eq!(sample(&text, r#"workqueue_depth{name="q"}"#), Some(3.0));
    assert_eq!(
        sample(&text, r#"workqueue_adds_total{name="q"}"#),
        Some(3.0)
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_report_unfinished_work_and_longest_processor_at_scrape_time() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::register(&mut registry);
    let q = WorkQueue::new("q", BackoffConfig::default()).with_metrics(metrics);
    q.add("a");
    q.add("b");
    assert_eq!(q.get().await, Some("a"));
    advance(Duration::from_secs(2)).await;
    assert_eq!(q.get().await, Some("b"));
    advance(Duration::from_secs(1)).await;

    let text = scrape(&registry);
    let longest = r#"workqueue_longest_running_processor_seconds{name="q"}"#;
    let unfinished = r#"workqueue_unfinished_work_seconds{name="q"}"#;
    assert_eq!(sample(&text, longest), Some(3.0));
    assert_eq!(sample(&text, unfinished), Some(4.0));

    q.done(&"a");
    q.done(&"b");
    let text = scrape(&registry);
    assert_eq!(sample(&text, longest), Some(0.0));
    assert_eq!(sample(&text, unfinished), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn metrics_time_the_wait_in_queue_and_the_work() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::register(&mut registry);
    let q = WorkQueue::new("q", BackoffConfig::default()).with_metrics(metrics);
    q.add("a");
    advance(Duration::from_secs(2)).await;
    assert_eq!(q.get().await, Some("a"));
    advance(Duration::from_secs(3)).await;
    q.done(&"a");

    let text = scrape(&registry);
    let queued = r#"workqueue_queue_duration_seconds_sum{name="q"}"#;
    let worked = r#"workqueue_work_duration_seconds_sum{name="q"}"#;
    assert_eq!(sample(&text, queued), Some(2.0));
    assert_eq!(sample(&text, worked), Some(3.0));
    assert_eq!(
        sample(&text, r#"workqueue_work_duration_seconds_count{name="q"}"#),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_of_several_queues_are_kept_apart_and_dropped_queues_leave() {
    let mut registry = Registry::default();
    let metrics = QueueMetrics::register(&mut registry);
    let machines =
        WorkQueue::new("machines", BackoffConfig::default()).with_metrics(metrics.clone());
    let containers: WorkQueue<u32> =
        WorkQueue::new("containers", BackoffConfig::default()).with_metrics(metrics);
    machines.add("a");
    containers.add(1);
    containers.add(2);

    let text = scrape(&registry);
    assert_eq!(
        sample(&text, r#"workqueue_depth{name="machines"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"workqueue_depth{name="containers"}"#),
        Some(2.0)
    );

    drop(containers);
    let text = scrape(&registry);
    assert_eq!(sample(&text, r#"workqueue_depth{name="containers"}"#), None);
    assert_eq!(
        sample(&text, r#"workqueue_depth{name="machines"}"#),
        Some(1.0)
    );
}
