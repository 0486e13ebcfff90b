//! The controller's Prometheus metrics (SPEC §8). Every label takes its value from a fixed
//! set: controller flavour, drift kind, phase, result, error category, HTTP method and
//! status code. Nothing is labelled per resource.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::hash::HashMap;
use crate::lxd::{ErrorCategory, RequestObserver};
use crate::resource::{Kind, Phase, ResourceKey};

/// Which worker: the machine ("environ") or the container flavour.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Flavour {
    machine,
    container,
}

impl Flavour {
    pub fn of(kind: Kind) -> Flavour {
        if kind == Kind::Container {
            Flavour::container
        } else {
            Flavour::machine
        }
    }
}

/// What drifted: an instance's profile list, or a profile's content.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DriftKind {
    profiles,
    content,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReconcileResult {
    success,
    error,
    requeue,
}

/// The fixed set of reconcile error causes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorKind {
    not_found,
    conflict,
    in_use,
    already_exists,
    rejected,
    unreachable,
    timeout,
    protocol,
    config,
    /// A write withheld because this replica is not the leader.
    fenced,
    /// The instance a resource names does not exist in LXD.
    missing_instance,
    /// The desired state is wrong (missing application, profile rules).
    invalid,
    /// A reconcile ran past --reconcile-timeout.
    reconcile_timeout,
    /// A status could not be persisted (a full or read-only state directory).
    status_write,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::not_found,
        ErrorKind::conflict,
        ErrorKind::in_use,
        ErrorKind::already_exists,
        ErrorKind::rejected,
        ErrorKind::unreachable,
        ErrorKind::timeout,
        ErrorKind::protocol,
        ErrorKind::config,
        ErrorKind::fenced,
        ErrorKind::missing_instance,
        ErrorKind::invalid,
        ErrorKind::reconcile_timeout,
        ErrorKind::status_write,
    ];
}

impl From<ErrorCategory> for ErrorKind {
    fn from(c: ErrorCategory) -> Self {
        match c {
            ErrorCategory::NotFound => ErrorKind::not_found,
            ErrorCategory::Conflict => ErrorKind::conflict,
            ErrorCategory::InUse => ErrorKind::in_use,
            ErrorCategory::AlreadyExists => ErrorKind::already_exists,
            ErrorCategory::Rejected => ErrorKind::rejected,
            ErrorCategory::Unreachable => ErrorKind::unreachable,
            ErrorCategory::Timeout => ErrorKind::timeout,
            ErrorCategory::Protocol => ErrorKind::protocol,
            ErrorCategory::Config => ErrorKind::config,
            ErrorCategory::Fenced => ErrorKind::fenced,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: Flavour,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    controller: Flavour,
    kind: DriftKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    controller: Flavour,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: Flavour,
    result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: Flavour,
    category: ErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Cow<'static, str>,
    code: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: Cow<'static, str>,
}

/// A request's label values without an allocation per request for the usual ones.
fn method_label(method: &str) -> Cow<'static, str> {
    ["GET", "POST", "PUT", "PATCH", "DELETE"]
        .into_iter()
        .find(|m| *m == method)
        .map_or_else(|| Cow::Owned(method.to_string()), Cow::Borrowed)
}

fn code_label(code: Option<u16>) -> Cow<'static, str> {
    match code {
        None => Cow::Borrowed("error"),
        Some(200) => Cow::Borrowed("200"),
        Some(201) => Cow::Borrowed("201"),
        Some(202) => Cow::Borrowed("202"),
        Some(404) => Cow::Borrowed("404"),
        Some(c) => Cow::Owned(c.to_string()),
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 1 ms doubling to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Per resource, the phase and whether it is drifted: what the gauges are computed from.
/// One map, so that a reconcile that changed neither looks up its key once.
type Tracked = HashMap<ResourceKey, (Phase, bool)>;

/// Every controller metric, and the facts `/readyz` needs from the LXD side.
pub struct Metrics {
    drift_detected: Family<DriftLabels, Counter>,
    drift_corrected: Family<DriftLabels, Counter>,
    resources_drifted: Family<ControllerLabel, Gauge>,
    resources: Family<PhaseLabels, Gauge>,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histograms<ControllerLabel>,
    lxd_requests: Family<RequestLabels, Counter>,
    lxd_duration: Histograms<MethodLabel>,
    source_files_invalid: Gauge,
    tracked: Mutex<Tracked>,
    lxd_answering: AtomicBool,
    lxd_requests_seen: AtomicU64,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics {
            drift_detected: Family::default(),
            drift_corrected: Family::default(),
            resources_drifted: Family::default(),
            resources: Family::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(seconds),
            lxd_requests: Family::default(),
            lxd_duration: Family::new_with_constructor(seconds),
            source_files_invalid: Gauge::default(),
            tracked: Mutex::new(Tracked::default()),
            lxd_answering: AtomicBool::new(false),
            lxd_requests_seen: AtomicU64::new(0),
        };
        let r = registry;
        r.register(
            "lxd_mutater_drift_detected",
            "Drift found in LXD",
            m.drift_detected.clone(),
        );
        r.register(
            "lxd_mutater_drift_corrected",
            "Drift corrected in LXD",
            m.drift_corrected.clone(),
        );
        r.register(
            "lxd_mutater_resources_drifted",
            "Resources drifted now",
            m.resources_drifted.clone(),
        );
        r.register(
            "lxd_mutater_resources",
            "Resources by phase",
            m.resources.clone(),
        );
        r.register(
            "lxd_mutater_reconcile",
            "Reconciles by result",
            m.reconciles.clone(),
        );
        r.register(
            "lxd_mutater_reconcile_errors",
            "Reconcile errors by category",
            m.errors.clone(),
        );
        r.register(
            "lxd_mutater_reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.reconcile_duration.clone(),
        );
        r.register(
            "lxd_mutater_lxd_requests",
            "LXD requests by method and status code",
            m.lxd_requests.clone(),
        );
        r.register(
            "lxd_mutater_lxd_request_duration_seconds",
            "LXD request duration",
            m.lxd_duration.clone(),
        );
        r.register(
            "lxd_mutater_source_files_invalid",
            "Resource files (or objects) that do not load now, and the source itself while it cannot read its whole state",
            m.source_files_invalid.clone(),
        );
        Arc::new(m)
    }

    /// Every series of a fixed label set of the controllers that reconcile `kinds`
    /// exists from then on, at zero, so that rates and alerts see it before the first
    /// event; an environ controller has no container series, and the other way round.
    pub fn reconciling(&self, kinds: &[Kind]) {
        for controller in kinds.iter().map(|k| Flavour::of(*k)) {
            for kind in [DriftKind::profiles, DriftKind::content] {
                let _ = self
                    .drift_detected
                    .get_or_create(&DriftLabels { controller, kind });
                let _ = self
                    .drift_corrected
                    .get_or_create(&DriftLabels { controller, kind });
            }
            let _ = self
                .resources_drifted
                .get_or_create(&ControllerLabel { controller });
            for phase in Phase::ALL {
                let _ = self.resources.get_or_create(&PhaseLabels {
                    controller,
                    phase: phase.as_str().into(),
                });
            }
            for result in [
                ReconcileResult::success,
                ReconcileResult::error,
                ReconcileResult::requeue,
            ] {
                let _ = self
                    .reconciles
                    .get_or_create(&ResultLabels { controller, result });
            }
            let _ = self
                .reconcile_duration
                .get_or_create(&ControllerLabel { controller });
            for category in ErrorKind::ALL {
                let _ = self.errors.get_or_create(&ErrorLabels {
                    controller,
                    category,
                });
            }
        }
    }

    pub fn drift_detected(&self, kind: Kind, drift: DriftKind) {
        self.drift_detected
            .get_or_create(&DriftLabels {
                controller: Flavour::of(kind),
                kind: drift,
            })
            .inc();
    }

    pub fn drift_corrected(&self, kind: Kind, drift: DriftKind) {
        self.drift_corrected
            .get_or_create(&DriftLabels {
                controller: Flavour::of(kind),
                kind: drift,
            })
            .inc();
    }

    pub fn reconciled(&self, kind: Kind, result: ReconcileResult, took: Duration) {
        let controller = Flavour::of(kind);
        self.reconciles
            .get_or_create(&ResultLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }

    pub fn error(&self, kind: Kind, category: ErrorKind) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: Flavour::of(kind),
                category,
            })
            .inc();
    }

    /// The resource's phase now, and whether it is drifted now.
    pub fn set_state(&self, key: &ResourceKey, phase: Phase, drifted: bool) {
        let controller = Flavour::of(key.kind);
        let mut t = self
            .tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = match t.get_mut(key) {
            // The usual case, a reconcile that changed neither: no series touched.
            Some(&mut state) if state == (phase, drifted) => return,
            Some(state) => Some(std::mem::replace(state, (phase, drifted))),
            None => {
                t.insert(key.clone(), (phase, drifted));
                None
            }
        };
        if let Some((old, _)) = was {
            self.phase_gauge(controller, old).dec();
        }
        self.phase_gauge(controller, phase).inc();
        let was_drifted = was.is_some_and(|(_, d)| d);
        let g = self
            .resources_drifted
            .get_or_create(&ControllerLabel { controller });
        match (was_drifted, drifted) {
            (false, true) => {
                g.inc();
            }
            (true, false) => {
                g.dec();
            }
            _ => {}
        }
    }

    /// Whether the resource is drifted now.
    pub fn is_drifted(&self, key: &ResourceKey) -> bool {
        let t = self
            .tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.get(key).is_some_and(|&(_, drifted)| drifted)
    }

    /// The resource is no longer managed.
    pub fn forget(&self, key: &ResourceKey) {
        let controller = Flavour::of(key.kind);
        let mut t = self
            .tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((old, drifted)) = t.remove(key) else {
            return;
        };
        self.phase_gauge(controller, old).dec();
        if drifted {
            self.resources_drifted
                .get_or_create(&ControllerLabel { controller })
                .dec();
        }
    }

    fn phase_gauge(&self, controller: Flavour, phase: Phase) -> Gauge {
        self.resources
            .get_or_create(&PhaseLabels {
                controller,
                phase: phase.as_str().into(),
            })
            .clone()
    }

    pub fn set_source_files_invalid(&self, n: usize) {
        self.source_files_invalid
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether LXD answered the last request (any HTTP status counts as an answer).
    pub fn lxd_answering(&self) -> bool {
        self.lxd_answering.load(Ordering::SeqCst)
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, method: &str, code: Option<u16>, elapsed: Duration) {
        let method = method_label(method);
        self.lxd_requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                code: code_label(code),
            })
            .inc();
        self.lxd_duration
            .get_or_create(&MethodLabel { method })
            .observe(elapsed.as_secs_f64());
        self.lxd_answering.store(code.is_some(), Ordering::SeqCst);
        self.lxd_requests_seen.fetch_add(1, Ordering::Relaxed);
    }
}

/// The registry with every metric of the process registered: the controller's and the
/// work queue's. Built once, before the LXD client (whose requests it counts).
pub struct Telemetry {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub queue: crate::queue::QueueMetrics,
    /// `leader_election_master_status{name}`: 1 while this replica holds the lease
    /// `name` (client-go's metric). No series without leader election.
    pub leader: LeaderStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    rustc: String,
}

/// The leader election gauge.
#[derive(Clone, Debug, Default)]
pub struct LeaderStatus(Family<LeaseLabel, Gauge>);

impl crate::leader::LeadershipGauge for LeaderStatus {
    /// Whether this replica leads, on the lease `name` (one lease per process: one series).
    fn set(&self, name: &str, leading: bool) {
        self.0
            .get_or_create(&LeaseLabel {
                name: name.to_string(),
            })
            .set(i64::from(leading));
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let queue = crate::queue::QueueMetrics::register(&mut registry);
        let leader = LeaderStatus::default();
        registry.register(
            "leader_election_master_status",
            "Whether this replica leads (1) or stands by (0), per lease",
            leader.0.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: env!("LXD_MUTATER_REVISION").into(),
                rustc: env!("LXD_MUTATER_RUSTC").into(),
            })
            .set(1);
        registry.register(
            "lxd_mutater_build_info",
            "The version, git revision and compiler of this binary (always 1)",
            build,
        );
        registry.register_collector(Box::new(super::process::ProcessCollector));
        Telemetry {
            registry: Arc::new(registry),
            metrics,
            queue,
            leader,
        }
    }

    /// The OpenMetrics exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format (0.0.4) of every metric.
    pub fn encode_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn every_spec_name_is_exposed_with_its_labels_from_the_start() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.reconciling(&[Kind::Machine, Kind::Container]);
        m.observe("GET", Some(200), Duration::from_millis(3));
        m.error(Kind::Machine, ErrorKind::rejected);
        let text = scrape(&r);
        for line in [
            "lxd_mutater_drift_detected_total{controller=\"machine\",kind=\"profiles\"} 0",
            "lxd_mutater_drift_corrected_total{controller=\"container\",kind=\"content\"} 0",
            "lxd_mutater_resources_drifted{controller=\"machine\"} 0",
            "lxd_mutater_resources{controller=\"machine\",phase=\"Applied\"} 0",
            "lxd_mutater_reconcile_total{controller=\"machine\",result=\"requeue\"} 0",
            "lxd_mutater_reconcile_errors_total{controller=\"machine\",category=\"rejected\"} 1",
            "lxd_mutater_reconcile_duration_seconds_count{controller=\"machine\"} 0",
            "lxd_mutater_lxd_requests_total{method=\"GET\",code=\"200\"} 1",
            "lxd_mutater_lxd_request_duration_seconds_count{method=\"GET\"} 1",
            "lxd_mutater_source_files_invalid 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn each_flavour_exposes_only_its_own_controllers_series() {
        for (kinds, has, hasnt) in [
            (&[Kind::Machine][..], "machine", "container"),
            (&[Kind::Container][..], "container", "machine"),
        ] {
            let mut r = Registry::default();
            let m = Metrics::register(&mut r);
            m.reconciling(kinds);
            let text = scrape(&r);
            assert!(text.contains(&format!("controller=\"{has}\"")), "{text}");
            assert!(!text.contains(&format!("controller=\"{hasnt}\"")), "{text}");
        }
    }

    #[test]
    fn phase_and_drift_gauges_follow_each_resource_without_double_counting() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        let k = ResourceKey::new(Kind::Machine, "m", "0");
        m.set_state(&k, Phase::Idle, true);
        m.set_state(&k, Phase::Idle, true);
        let text = scrape(&r);
        assert!(text.contains("lxd_mutater_resources{controller=\"machine\",phase=\"Idle\"} 1"));
        assert!(text.contains("lxd_mutater_resources_drifted{controller=\"machine\"} 1"));
        m.set_state(&k, Phase::Applied, false);
        let text = scrape(&r);
        assert!(text.contains("lxd_mutater_resources{controller=\"machine\",phase=\"Idle\"} 0"));
        assert!(text.contains("lxd_mutater_resources{controller=\"machine\",phase=\"Applied\"} 1"));
        assert!(text.contains("lxd_mutater_resources_drifted{controller=\"machine\"} 0"));
        m.forget(&k);
        assert!(
            scrape(&r)
                .contains("lxd_mutater_resources{controller=\"machine\",phase=\"Applied\"} 0")
        );
    }
}
