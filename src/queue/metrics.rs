//! client-go's `workqueue_*` metric family (SPEC §8), labelled by queue `name`.
//!
//! Counters and histograms are updated as the queue works. Depth, unfinished work and the
//! longest running processor are read from each live queue when the registry is encoded
//! (a [`Collector`]), so they are exact at scrape time without a refresh call.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The one label of every `workqueue_*` series: the queue's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: String,
}

type HistogramFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

/// 1 ms doubling to about 9 minutes: a reconcile of one LXD profile sits well inside, and a
/// key parked behind the 5 minute backoff cap still lands in a bucket.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The `workqueue_*` metrics, shared by every queue that registers with them.
///
/// Register once per registry; give a clone to each queue with
/// [`WorkQueue::with_metrics`](super::WorkQueue::with_metrics). Queue names should be unique:
/// two queues with one name would expose the same series twice.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    collector: Arc<WorkqueueCollector>,
}

impl QueueMetrics {
    /// Registers the seven `workqueue_*` metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let collector = Arc::new(WorkqueueCollector {
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            queues: Mutex::new(Vec::new()),
        });
        registry.register_collector(Box::new(Arc::clone(&collector)));
        Self { collector }
    }

    /// The handles one queue writes to, and its entry in the scrape-time collector.
    pub(super) fn for_queue(&self, name: &str, probe: Weak<dyn QueueProbe>) -> QueueHandles {
        let c = &self.collector;
        c.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(probe);
        let labels = QueueLabels {
            name: name.to_owned(),
        };
        QueueHandles {
            adds: c.adds.get_or_create(&labels).clone(),
            retries: c.retries.get_or_create(&labels).clone(),
            queue_duration: c.queue_duration.get_or_create(&labels).clone(),
            work_duration: c.work_duration.get_or_create(&labels).clone(),
        }
    }
}

/// One queue's own series, resolved once so the hot path does no label lookups.
#[derive(Clone, Debug)]
pub(super) struct QueueHandles {
    pub(super) adds: Counter,
    pub(super) retries: Counter,
    pub(super) queue_duration: Histogram,
    pub(super) work_duration: Histogram,
}

/// What the collector reads from a queue at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct QueueSample {
    pub(super) name: String,
    pub(super) depth: i64,
    pub(super) unfinished_work_seconds: f64,
    pub(super) longest_running_processor_seconds: f64,
}

/// A queue seen without its key type, so one collector serves queues of any key.
pub(super) trait QueueProbe: Send + Sync {
    fn sample(&self) -> QueueSample;
}

/// Encodes all seven metrics on each scrape. The counters and histograms are encoded here
/// too, after the queues are sampled, because sampling moves due delayed keys to the ready
/// list (an add): encoded through the registry they would come out before it, one scrape
/// behind the depth.
#[derive(Debug)]
struct WorkqueueCollector {
    adds: Family<QueueLabels, Counter>,
    retries: Family<QueueLabels, Counter>,
    queue_duration: HistogramFamily,
    work_duration: HistogramFamily,
    /// The registered queues; a dropped queue disappears at the next scrape.
    queues: Mutex<Vec<Weak<dyn QueueProbe>>>,
}

impl WorkqueueCollector {
    fn samples(&self) -> Vec<QueueSample> {
        let live: Vec<Arc<dyn QueueProbe>> = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            queues.retain(|probe| probe.strong_count() > 0);
            queues.iter().filter_map(Weak::upgrade).collect()
        };
        // Sampled outside the list lock: each sample takes that queue's own lock.
        live.iter().map(|probe| probe.sample()).collect()
    }
}

fn encode_family<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &M,
) -> Result<(), std::fmt::Error> {
    family.encode(encoder.encode_descriptor(name, help, None, M::TYPE)?)
}

fn encode_gauges<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[QueueSample],
    value: impl Fn(&QueueSample) -> N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let mut metric = encoder.encode_descriptor(name, help, None, ConstGauge::<N>::TYPE)?;
    for sample in samples {
        let labels = QueueLabels {
            name: sample.name.clone(),
        };
        ConstGauge::new(value(sample)).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for WorkqueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples();
        // prometheus-client appends `_total` to counters.
        encode_family(
            &mut encoder,
            "workqueue_adds",
            "Total number of adds handled by the workqueue",
            &self.adds,
        )?;
        encode_family(
            &mut encoder,
            "workqueue_retries",
            "Total number of retries handled by the workqueue",
            &self.retries,
        )?;
        encode_family(
            &mut encoder,
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in the workqueue before being requested",
            &self.queue_duration,
        )?;
        encode_family(
            &mut encoder,
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from the workqueue takes",
            &self.work_duration,
        )?;
        encode_gauges(
            &mut encoder,
            "workqueue_depth",
            "Current depth of the workqueue",
            &samples,
            |s| s.depth,
        )?;
        encode_gauges(
            &mut encoder,
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been \
             observed by work_duration. Large values indicate stuck threads.",
            &samples,
            |s| s.unfinished_work_seconds,
        )?;
        encode_gauges(
            &mut encoder,
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for the workqueue been running.",
            &samples,
            |s| s.longest_running_processor_seconds,
        )
    }
}
