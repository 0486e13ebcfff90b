//! Status: what the controller says about each resource (SPEC §2), and where it is kept.
//!
//! `next` is pure: it turns the previous status and an outcome into the new one, keeping
//! timestamps still unless the phase changes, so that an unchanged status is never
//! written. `files` keeps statuses under the state directory.

pub mod files;
pub mod http;
pub mod metrics;

use crate::resource::{DriftStatus, Phase, ResourceKey, Status};

/// Where statuses are kept: files under the state directory, or the status subresource
/// of the Kubernetes objects. Both remember the status last stored, so that an unchanged
/// one is never sent again.
pub trait StatusStore: Send + Sync {
    /// The status stored for `key` (what `next` starts from).
    fn get(&self, key: &ResourceKey) -> Option<Status>;
    /// Stores `status` unless it equals the one stored. `object` is the whole resource
    /// with that status, for stores that keep whole objects. Returns whether it stored.
    fn write(
        &self,
        key: &ResourceKey,
        object: &serde_json::Value,
        status: &Status,
    ) -> std::io::Result<bool>;
    /// The resource is no longer managed.
    fn remove(&self, key: &ResourceKey);
}

impl<T: StatusStore + ?Sized> StatusStore for std::sync::Arc<T> {
    fn get(&self, key: &ResourceKey) -> Option<Status> {
        (**self).get(key)
    }
    fn write(
        &self,
        key: &ResourceKey,
        object: &serde_json::Value,
        status: &Status,
    ) -> std::io::Result<bool> {
        (**self).write(key, object, status)
    }
    fn remove(&self, key: &ResourceKey) {
        (**self).remove(key)
    }
}

/// The prefix of every Error message, in Juju's words.
pub const ERROR_PREFIX: &str = "cannot upgrade machine's lxd profile: ";

/// The current time as RFC 3339, to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What a reconcile found, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub phase: Phase,
    pub message: String,
    /// The list LXD holds (accepted), when known.
    pub profiles: Option<Vec<String>>,
    /// A drift found now, described in one line.
    pub drift: Option<String>,
}

/// The next status, given the previous one. Timestamps move only when something they
/// describe changes.
pub fn next(
    prev: Option<&Status>,
    outcome: &Outcome,
    observed_generation: u64,
    now: &str,
) -> Status {
    let last_transition_time = match prev {
        Some(p) if p.phase == outcome.phase => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let mut drift = prev.and_then(|p| p.drift.clone());
    if let Some(d) = &outcome.drift {
        let record = drift.get_or_insert_with(DriftStatus::default);
        record.count += 1;
        record.last_detected = Some(now.to_string());
        record.last = d.clone();
    }
    Status {
        phase: outcome.phase,
        message: outcome.message.clone(),
        profiles: outcome
            .profiles
            .clone()
            .or_else(|| prev.map(|p| p.profiles.clone()))
            .unwrap_or_default(),
        observed_generation: Some(observed_generation),
        last_transition_time,
        drift,
        conditions: Vec::new(),
    }
}

/// A stable hash of a spec (FNV-1a over its JSON), the `observedGeneration` of a
/// resource read from files.
pub fn spec_hash<S: serde::Serialize>(spec: &S) -> u64 {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Kubernetes generations are int64: keep it positive there too.
    h >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(phase: Phase, drift: Option<&str>) -> Outcome {
        Outcome {
            phase,
            message: String::new(),
            profiles: Some(vec!["default".into()]),
            drift: drift.map(str::to_string),
        }
    }

    #[test]
    fn an_unchanged_outcome_gives_an_identical_status() {
        let a = next(None, &outcome(Phase::Applied, None), 7, "t1");
        let b = next(Some(&a), &outcome(Phase::Applied, None), 7, "t2");
        assert_eq!(a, b);
    }

    #[test]
    fn last_transition_time_moves_only_with_the_phase() {
        let a = next(None, &outcome(Phase::Idle, None), 7, "t1");
        let b = next(Some(&a), &outcome(Phase::Applied, None), 7, "t2");
        assert_eq!(b.last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn drift_is_counted_and_kept() {
        let a = next(None, &outcome(Phase::Applied, Some("x")), 7, "t1");
        let b = next(Some(&a), &outcome(Phase::Applied, Some("y")), 7, "t2");
        let c = next(Some(&b), &outcome(Phase::Applied, None), 7, "t3");
        let d = c.drift.unwrap();
        assert_eq!(
            (d.count, d.last.as_str(), d.last_detected.as_deref()),
            (2, "y", Some("t2"))
        );
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        assert_eq!(spec_hash(&vec!["a"]), spec_hash(&vec!["a"]));
        assert_ne!(spec_hash(&vec!["a"]), spec_hash(&vec!["b"]));
    }
}
