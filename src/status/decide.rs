//! `decide(previous, outcome) -> Status`: pure. The one place that turns what a reconcile
//! (or a source, for an object that does not load) found into phase, message, the `Ready`
//! condition, `observedGeneration` and the drift record, keeping every timestamp still
//! unless what it describes changed, so that an unchanged status is never written.
//!
//! No I/O, no clock: the time comes in as an argument.

use crate::resource::{Condition, DriftStatus, Phase, Status};

/// The prefix of every Error message, in Juju's words.
pub const ERROR_PREFIX: &str = "cannot upgrade machine's lxd profile: ";
/// The condition type this controller maintains.
pub const READY: &str = "Ready";
/// The `Ready` reason of an object that does not load (its own Event says why).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// The longest message a status (or an Event) carries: a hostile spec's value echoed in
/// an error must not make a status larger than an API server takes (a condition's
/// message is capped at 32 KiB there).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message`, cut to `MAX_MESSAGE_BYTES` on a character boundary, saying so.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes, cut)", &message[..end], message.len())
}

/// What one reconcile found, typed: the status stage words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Manual or dead: touch nothing (why).
    Skipped(String),
    /// No instance named yet.
    Pending,
    /// The desired state is wrong (a missing application, a profile that breaks the
    /// rules): nothing was sent to LXD.
    Invalid(String),
    /// The object itself does not load and there is no good version to keep managing.
    InvalidSpec(String),
    /// The instance is not in LXD.
    MissingInstance(String),
    /// LXD refused or failed (its words); the list LXD holds now, when known.
    Failed {
        cause: String,
        profiles: Option<Vec<String>>,
    },
    /// Nothing to do. `foreign`: profiles with an expected name that are not ours and
    /// differ, left alone.
    InSync {
        profiles: Vec<String>,
        foreign: Vec<String>,
    },
    /// A plan is being applied; `list_drift` when LXD moved away from what was applied.
    Applying {
        profiles: Vec<String>,
        list_drift: Option<String>,
    },
    /// A plan was applied: the list LXD accepted, owned profiles whose drifted content was
    /// rewritten, whether a list drift was corrected.
    Applied {
        profiles: Vec<String>,
        rewritten: Vec<String>,
        list_drift_corrected: bool,
        foreign: Vec<String>,
    },
    /// `--dry-run`: drift found, nothing changed. `new` when it differs from the drift
    /// last recorded (counted once, not on every pass).
    Drifted {
        profiles: Vec<String>,
        described: String,
        new: bool,
        list_drift: bool,
        content_drift: bool,
    },
}

impl Outcome {
    /// The drift this outcome records in `status.drift`, if any.
    fn drift(&self) -> Option<String> {
        match self {
            Outcome::Applying { list_drift, .. } => list_drift.clone(),
            Outcome::Applied { rewritten, .. } if !rewritten.is_empty() => {
                Some(format!("profile content differs: {}", rewritten.join(", ")))
            }
            Outcome::Drifted {
                described,
                new: true,
                ..
            } => Some(described.clone()),
            _ => None,
        }
    }

    fn profiles(&self) -> Option<&[String]> {
        match self {
            Outcome::Failed { profiles, .. } => profiles.as_deref(),
            Outcome::InSync { profiles, .. }
            | Outcome::Applying { profiles, .. }
            | Outcome::Applied { profiles, .. }
            | Outcome::Drifted { profiles, .. } => Some(profiles),
            _ => None,
        }
    }

    /// Phase and message.
    fn words(&self) -> (Phase, String) {
        let error = |why: String| (Phase::Error, format!("{ERROR_PREFIX}{why}"));
        let settled = |foreign: &[String]| {
            if foreign.is_empty() {
                (Phase::Applied, String::new())
            } else {
                error(format!(
                    "profile(s) {} exist, are not this controller's (no {} of its own) and \
                     differ from the application's profile: not attached, not rewritten",
                    foreign.join(", "),
                    crate::store::OWNER_KEY
                ))
            }
        };
        match self {
            Outcome::Skipped(why) => (Phase::Skipped, why.clone()),
            Outcome::Pending => (Phase::Pending, String::new()),
            Outcome::Invalid(why) => error(why.clone()),
            Outcome::InvalidSpec(why) => error(format!("invalid spec: {why}")),
            Outcome::MissingInstance(i) => error(format!("instance {i:?} not found")),
            Outcome::Failed { cause, .. } => error(cause.clone()),
            Outcome::InSync { foreign, .. } | Outcome::Applied { foreign, .. } => settled(foreign),
            Outcome::Applying { .. } => (Phase::Idle, String::new()),
            Outcome::Drifted { described, .. } => (Phase::Drifted, format!("drift: {described}")),
        }
    }
}

/// A decided status, and whether the resource counts as drifted now (the
/// `lxd_mutater_resources_drifted` gauge).
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub status: Status,
    pub drifted: bool,
}

/// The next status of a resource. `was_drifted`: whether it counted as drifted before
/// (a drift being corrected, or failing to be, is still drift).
pub fn decide(
    prev: Option<&Status>,
    outcome: &Outcome,
    observed_generation: u64,
    was_drifted: bool,
    now: &str,
) -> Decided {
    let (phase, message) = outcome.words();
    let message = bounded(message);
    let last_transition_time = match prev {
        Some(p) if p.phase == phase => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let mut drift = prev.and_then(|p| p.drift.clone());
    let found = outcome.drift();
    if let Some(d) = &found {
        let record = drift.get_or_insert_with(DriftStatus::default);
        record.count += 1;
        record.last_detected = Some(now.to_string());
        record.last = bounded(d.clone());
    }
    let drifted = match phase {
        Phase::Drifted => true,
        Phase::Idle => found.is_some() || was_drifted,
        Phase::Error => was_drifted,
        _ => false,
    };
    let reason = match outcome {
        Outcome::InvalidSpec(_) => REASON_INVALID_SPEC,
        _ => phase.as_str(),
    };
    let mut status = Status {
        phase,
        message,
        profiles: outcome
            .profiles()
            .map(<[String]>::to_vec)
            .or_else(|| prev.map(|p| p.profiles.clone()))
            .unwrap_or_default(),
        observed_generation: Some(observed_generation),
        last_transition_time,
        drift,
        conditions: Vec::new(),
    };
    status.conditions = vec![ready(&status, reason, prev, now)];
    Decided { status, drifted }
}

/// `Ready`: `True` in phase Applied, `False` otherwise; its time moves only when it flips.
fn ready(status: &Status, reason: &str, prev: Option<&Status>, now: &str) -> Condition {
    let ready = if status.phase == Phase::Applied {
        "True"
    } else {
        "False"
    };
    let before = prev.and_then(|p| p.conditions.iter().find(|c| c.type_ == READY));
    let last_transition_time = match before {
        Some(c) if c.status == ready => c.last_transition_time.clone(),
        _ => now.to_string(),
    };
    Condition {
        type_: READY.into(),
        status: ready.into(),
        observed_generation: status.observed_generation,
        last_transition_time,
        reason: reason.into(),
        message: status.message.clone(),
    }
}

/// Whether `status` says its object does not load (as opposed to a reconcile error).
pub fn is_invalid_spec(status: &Status) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == REASON_INVALID_SPEC)
}

/// A stable hash of a spec (FNV-1a over its JSON), the `observedGeneration` of a
/// resource read from files. The JSON is streamed into the hash, never held: every
/// reconcile of a file resource computes it.
pub fn spec_hash<S: serde::Serialize>(spec: &S) -> u64 {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            for &b in bytes {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // Plain data with string keys, into a sink that cannot fail: no error to lose.
    let _ = serde_json::to_writer(&mut h, spec);
    // Kubernetes generations are int64: keep it positive there too.
    h.0 >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied() -> Outcome {
        Outcome::InSync {
            profiles: vec!["default".into()],
            foreign: vec![],
        }
    }

    fn applying(drift: Option<&str>) -> Outcome {
        Outcome::Applying {
            profiles: vec!["default".into()],
            list_drift: drift.map(str::to_string),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            cause: "Profile not found".into(),
            profiles: None,
        }
    }

    #[test]
    fn an_unchanged_outcome_gives_an_identical_status() {
        let a = decide(None, &applied(), 7, false, "t1").status;
        let b = decide(Some(&a), &applied(), 7, false, "t2").status;
        assert_eq!(a, b);
    }

    #[test]
    fn last_transition_time_moves_only_with_the_phase() {
        let a = decide(None, &applying(None), 7, false, "t1").status;
        let b = decide(Some(&a), &applied(), 7, false, "t2").status;
        assert_eq!(b.last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn drift_is_counted_and_kept() {
        let a = decide(None, &applying(Some("x")), 7, false, "t1").status;
        let b = decide(Some(&a), &applying(Some("y")), 7, true, "t2").status;
        let c = decide(Some(&b), &applied(), 7, true, "t3").status;
        let d = c.drift.unwrap();
        assert_eq!(
            (d.count, d.last.as_str(), d.last_detected.as_deref()),
            (2, "y", Some("t2"))
        );
    }

    #[test]
    fn a_drift_being_corrected_or_failing_stays_drifted_until_applied() {
        assert!(decide(None, &applying(Some("x")), 1, false, "t").drifted);
        assert!(decide(None, &applying(None), 1, true, "t").drifted);
        assert!(decide(None, &failed(), 1, true, "t").drifted);
        assert!(!decide(None, &failed(), 1, false, "t").drifted);
        assert!(!decide(None, &applied(), 1, true, "t").drifted);
    }

    #[test]
    fn errors_keep_jujus_words() {
        let s = decide(None, &failed(), 1, false, "t").status;
        assert_eq!(
            s.message,
            "cannot upgrade machine's lxd profile: Profile not found"
        );
        let s = decide(None, &Outcome::MissingInstance("i-0".into()), 1, false, "t").status;
        assert_eq!(
            s.message,
            "cannot upgrade machine's lxd profile: instance \"i-0\" not found"
        );
    }

    #[test]
    fn ready_keeps_its_time_until_it_flips() {
        let a = decide(None, &applied(), 2, false, "then").status;
        let b = decide(Some(&a), &applied(), 3, false, "later").status;
        assert_eq!(b.conditions[0].last_transition_time, "then");
        assert_eq!(b.conditions[0].status, "True");
        assert_eq!(b.conditions[0].observed_generation, Some(3));
        let c = decide(Some(&b), &failed(), 3, false, "now").status;
        assert_eq!(c.conditions[0].last_transition_time, "now");
        assert_eq!(
            (
                c.conditions[0].status.as_str(),
                c.conditions[0].reason.as_str()
            ),
            ("False", "Error")
        );
    }

    #[test]
    fn an_invalid_spec_is_told_apart_by_its_reason_not_its_text() {
        let s = decide(None, &Outcome::InvalidSpec("bad".into()), 1, false, "t").status;
        assert!(is_invalid_spec(&s));
        assert!(!is_invalid_spec(
            &decide(None, &failed(), 1, false, "t").status
        ));
    }

    #[test]
    fn a_huge_message_is_cut_on_a_character_boundary() {
        let s = decide(
            None,
            &Outcome::InvalidSpec("é".repeat(300_000)),
            1,
            false,
            "t",
        )
        .status;
        assert!(
            s.message.len() < MAX_MESSAGE_BYTES + 100,
            "{}",
            s.message.len()
        );
        assert!(
            s.message.ends_with(" bytes, cut)"),
            "{} bytes",
            s.message.len()
        );
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        assert_eq!(spec_hash(&vec!["a"]), spec_hash(&vec!["a"]));
        // Status files keep it across upgrades: the same value as every version before.
        assert_eq!(spec_hash(&vec!["a"]), 1_554_945_066_687_625_345);
        assert_ne!(spec_hash(&vec!["a"]), spec_hash(&vec!["b"]));
    }
}
